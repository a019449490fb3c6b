//! What the HTTP layer needs from the engine, as a trait so the failure paths (a full queue,
//! a request failing midway) can be tested without making the real scheduler fail.

use crate::api::{Event, Request, SchedulerStats, SubmitError};
use bitnet_tokenizers::Tokenizer;
use futures::Stream;
use std::pin::Pin;

/// The events of one submitted request; dropping it cancels the request.
pub type EventStream = Pin<Box<dyn Stream<Item = Event> + Send>>;

pub trait Backend: Send + Sync + 'static {
    /// Queues a request without blocking.
    fn submit(&self, req: Request) -> Result<EventStream, SubmitError>;
    fn stats(&self) -> SchedulerStats;
    fn tokenizer(&self) -> &Tokenizer;
    /// The longest prompt plus generation one sequence can hold.
    fn ctx_size(&self) -> usize;
    /// Refuses new requests and ends running ones.
    fn shutdown(&self);
}

impl Backend for bitnet_inference::Scheduler {
    fn submit(&self, req: Request) -> Result<EventStream, SubmitError> {
        bitnet_inference::Scheduler::submit(self, req).map(|h| Box::pin(h) as EventStream)
    }

    fn stats(&self) -> SchedulerStats {
        bitnet_inference::Scheduler::stats(self)
    }

    fn tokenizer(&self) -> &Tokenizer {
        self.engine().tokenizer()
    }

    fn ctx_size(&self) -> usize {
        bitnet_inference::Scheduler::ctx_size(self)
    }

    fn shutdown(&self) {
        bitnet_inference::Scheduler::shutdown(self)
    }
}
