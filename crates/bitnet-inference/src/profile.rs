//! Where a forward pass spends its time, stage by stage (`bitnet bench --profile`).
//!
//! Off by default: the forward pass then pays one relaxed atomic load per stage boundary.
//! When on, each stage's wall time is added to a process-wide counter, so the breakdown covers
//! every call (prompt and decode alike) until [`take`] reads and clears it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// The forward pass's stages, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Embed,
    /// The previous layer's residual add, RMSNorm and int8 quantization before q/k/v.
    AttnNorm,
    Qkv,
    /// RoPE and the KV cache write.
    Rope,
    Attention,
    /// attn_sub_norm + quantization before the output projection.
    AttnSubNorm,
    Wo,
    /// The attention's residual add, RMSNorm and quantization before gate/up.
    FfnNorm,
    GateUp,
    /// Activation, ffn_sub_norm and quantization before the down projection.
    FfnAct,
    Down,
    /// The last residual add (rows with logits), final norm and LM head.
    Head,
}

impl Stage {
    pub const ALL: [Stage; 12] = [
        Stage::Embed,
        Stage::AttnNorm,
        Stage::Qkv,
        Stage::Rope,
        Stage::Attention,
        Stage::AttnSubNorm,
        Stage::Wo,
        Stage::FfnNorm,
        Stage::GateUp,
        Stage::FfnAct,
        Stage::Down,
        Stage::Head,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Embed => "embed",
            Stage::AttnNorm => "add+attn norm+quant",
            Stage::Qkv => "q/k/v matmul",
            Stage::Rope => "rope+kv write",
            Stage::Attention => "attention",
            Stage::AttnSubNorm => "attn sub-norm+quant",
            Stage::Wo => "o matmul",
            Stage::FfnNorm => "add+ffn norm+quant",
            Stage::GateUp => "gate/up matmul",
            Stage::FfnAct => "act+sub-norm+quant",
            Stage::Down => "down matmul",
            Stage::Head => "add+final norm+head",
        }
    }
}

static ON: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; Stage::ALL.len()] = [const { AtomicU64::new(0) }; Stage::ALL.len()];

/// Turns the counters on or off.
pub fn enable(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// The time per stage since the last call (in [`Stage::ALL`] order), and clears it.
pub fn take() -> Vec<(Stage, std::time::Duration)> {
    Stage::ALL
        .iter()
        .zip(&NANOS)
        .map(|(&s, n)| {
            (
                s,
                std::time::Duration::from_nanos(n.swap(0, Ordering::Relaxed)),
            )
        })
        .collect()
}

/// Times consecutive stages: each [`Timer::stage`] call closes the stage that just ran.
pub(crate) struct Timer(Option<Instant>);

impl Timer {
    pub(crate) fn start() -> Timer {
        Timer(ON.load(Ordering::Relaxed).then(Instant::now))
    }

    #[inline]
    pub(crate) fn stage(&mut self, s: Stage) {
        if let Some(t0) = self.0 {
            let now = Instant::now();
            NANOS[s as usize].fetch_add((now - t0).as_nanos() as u64, Ordering::Relaxed);
            self.0 = Some(now);
        }
    }
}
