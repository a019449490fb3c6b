//! The conversation: every message since the last `/reset` (what `/save` writes) and the part
//! of it that is still in the context window (what the model sees). When a new turn does not
//! fit, whole turns leave the window oldest first (llama.cpp's context shift, at turn
//! granularity) while the system message stays.

use bitnet_tokenizers::{ChatMessage, TokenizerError};

pub struct Conversation {
    system: Option<ChatMessage>,
    /// User and assistant messages alternating, oldest first; a user message waiting for its
    /// answer is last.
    turns: Vec<ChatMessage>,
    /// Index in `turns` of the first message still in the window; always a user message.
    start: usize,
}

/// Why a new user message cannot be sent even with every older turn dropped.
#[derive(Debug)]
pub enum FitError {
    /// The system message and the new message alone take more than the context.
    TooLong { tokens: usize, ctx: usize },
    /// The tokenizer refused the text unread (more bytes than the context can hold), or the
    /// template failed.
    Tokenizer(TokenizerError),
}

impl std::fmt::Display for FitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FitError::TooLong { tokens, ctx } => write!(
                f,
                "this message is too large for the context: {tokens} tokens with the system \
                 message, the context holds {ctx}"
            ),
            FitError::Tokenizer(e) => write!(f, "{e}"),
        }
    }
}

impl Conversation {
    pub fn new(system: Option<String>) -> Self {
        Conversation {
            system: system.map(|s| ChatMessage::new("system", s)),
            turns: Vec::new(),
            start: 0,
        }
    }

    /// Forgets every turn; the system message stays.
    pub fn reset(&mut self) {
        self.turns.clear();
        self.start = 0;
    }

    pub fn push(&mut self, role: &str, content: String) {
        self.turns.push(ChatMessage::new(role, content));
    }

    /// Takes back the last message (a user message that could not be sent).
    pub fn pop(&mut self) {
        self.turns.pop();
        self.start = self.start.min(self.turns.len());
    }

    /// What the model sees: the system message and the turns still in the window.
    pub fn window(&self) -> Vec<ChatMessage> {
        self.system
            .iter()
            .chain(&self.turns[self.start..])
            .cloned()
            .collect()
    }

    /// Everything since the last reset, dropped turns included.
    pub fn transcript(&self) -> Vec<ChatMessage> {
        self.system.iter().chain(&self.turns).cloned().collect()
    }

    /// Drops the oldest turn (a user message and its answer) from the window; false when
    /// the window holds only the newest user message.
    fn drop_oldest_turn(&mut self) -> bool {
        if self.turns.len() - self.start <= 1 {
            return false;
        }
        self.start = (self.start + 2).min(self.turns.len() - 1);
        true
    }

    /// The token ids of the window, which ends with a new user message, leaving `reserve`
    /// tokens of the `ctx` for the answer: older turns are dropped until it fits, and the
    /// number dropped is returned with the ids. When the newest turn alone leaves less than
    /// `reserve` but still fits, it is sent (the answer may end at the context's end). When
    /// it does not fit at all, the window is left as it was and the message is refused.
    pub fn fit(
        &mut self,
        ctx: usize,
        reserve: usize,
        encode: impl Fn(&[ChatMessage]) -> Result<Vec<u32>, TokenizerError>,
    ) -> Result<(Vec<u32>, usize), FitError> {
        let start = self.start;
        let mut dropped = 0;
        loop {
            let refusal = match encode(&self.window()) {
                Ok(ids) if ids.len().saturating_add(reserve) <= ctx => return Ok((ids, dropped)),
                Ok(ids) => {
                    if self.drop_oldest_turn() {
                        dropped += 1;
                        continue;
                    }
                    if ids.len() <= ctx {
                        return Ok((ids, dropped));
                    }
                    FitError::TooLong {
                        tokens: ids.len(),
                        ctx,
                    }
                }
                // Too many bytes for the context: dropping turns may help, as above.
                Err(e @ TokenizerError::InputTooLarge(_)) => {
                    if self.drop_oldest_turn() {
                        dropped += 1;
                        continue;
                    }
                    FitError::Tokenizer(e)
                }
                Err(e) => FitError::Tokenizer(e),
            };
            self.start = start;
            return Err(refusal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One token per byte of content plus one per message: simple enough to count by hand.
    fn encode(limit: usize) -> impl Fn(&[ChatMessage]) -> Result<Vec<u32>, TokenizerError> {
        move |msgs| {
            let bytes: usize = msgs.iter().map(|m| m.content.len()).sum();
            if bytes > limit {
                return Err(TokenizerError::InputTooLarge(format!("{bytes} bytes")));
            }
            Ok(vec![0; bytes + msgs.len()])
        }
    }

    fn chat(system: Option<&str>, turns: &[(&str, &str)], next: &str) -> Conversation {
        let mut c = Conversation::new(system.map(String::from));
        for (u, a) in turns {
            c.push("user", u.to_string());
            c.push("assistant", a.to_string());
        }
        c.push("user", next.to_string());
        c
    }

    fn contents(m: &[ChatMessage]) -> Vec<&str> {
        m.iter().map(|m| m.content.as_str()).collect()
    }

    #[test]
    fn a_fitting_window_is_sent_whole() {
        let mut c = chat(Some("sys"), &[("u1", "a1")], "u2");
        // 3+2+2+2 bytes + 4 messages = 13 tokens.
        let (ids, dropped) = c.fit(20, 7, encode(1000)).unwrap();
        assert_eq!((ids.len(), dropped), (13, 0));
        assert_eq!(contents(&c.window()), ["sys", "u1", "a1", "u2"]);
    }

    #[test]
    fn oldest_whole_turns_leave_first_and_the_system_message_stays() {
        let mut c = chat(
            Some("sys"),
            &[("u1", "a1"), ("u2", "a2"), ("u3", "a3")],
            "u4",
        );
        // Whole window: 3 + 7*2 bytes + 8 messages = 25 tokens; 19 with one turn less,
        // 13 with two less.
        let (ids, dropped) = c.fit(20, 5, encode(1000)).unwrap();
        assert_eq!((ids.len(), dropped), (13, 2));
        assert_eq!(contents(&c.window()), ["sys", "u3", "a3", "u4"]);
        // /save still has everything.
        assert_eq!(c.transcript().len(), 8);
        // The next turn goes on from the shifted window.
        c.push("assistant", "a4".into());
        c.push("user", "u5".into());
        let (_, dropped) = c.fit(20, 5, encode(1000)).unwrap();
        assert_eq!(dropped, 1);
        assert_eq!(contents(&c.window()), ["sys", "u4", "a4", "u5"]);
    }

    #[test]
    fn the_newest_turn_alone_is_sent_when_it_fits_without_room_to_answer() {
        let mut c = chat(None, &[("u1", "a1")], "0123456789");
        let (ids, dropped) = c.fit(12, 8, encode(1000)).unwrap();
        assert_eq!((ids.len(), dropped), (11, 1));
        assert_eq!(contents(&c.window()), ["0123456789"]);
    }

    #[test]
    fn a_turn_that_cannot_fit_is_refused_and_the_window_kept() {
        let mut c = chat(Some("sys"), &[("u1", "a1")], "0123456789");
        let err = c.fit(10, 2, encode(1000)).unwrap_err();
        assert!(
            matches!(
                err,
                FitError::TooLong {
                    tokens: 15,
                    ctx: 10
                }
            ),
            "{err}"
        );
        c.pop();
        assert_eq!(contents(&c.window()), ["sys", "u1", "a1"]);

        // Refused unread by the tokenizer: older turns are dropped first, as for tokens.
        let mut c = chat(None, &[("u1", "a1")], "0123456789");
        let (_, dropped) = c.fit(100, 0, encode(12)).unwrap();
        assert_eq!(dropped, 1);
        let mut c = chat(None, &[("u1", "a1")], "0123456789abc");
        assert!(matches!(
            c.fit(100, 0, encode(12)),
            Err(FitError::Tokenizer(TokenizerError::InputTooLarge(_)))
        ));
        assert_eq!(contents(&c.window()), ["u1", "a1", "0123456789abc"]);
    }

    #[test]
    fn reset_keeps_the_system_message() {
        let mut c = chat(Some("sys"), &[("u1", "a1")], "u2");
        c.reset();
        assert_eq!(contents(&c.window()), ["sys"]);
        assert_eq!(contents(&c.transcript()), ["sys"]);
    }
}
