//! [`StreamDecoder`]: incremental detokenization for streamed generation.

use crate::byte_level;
use crate::tokenizer::{DecodeMode, Tokenizer};
use crate::TokenizerError;
use std::ops::Deref;

/// Incremental detokenizer: push one id at a time and get the text that became
/// complete. A byte-level token can end in the middle of a multi-byte UTF-8
/// character, so bytes are held back until the character is complete; the
/// concatenation of every chunk plus [`StreamDecoder::finish`] equals
/// `Tokenizer::decode` of all the ids (with the same `skip_special`).
///
/// Not `tokenizers`' `decode_stream`, which runs the same window-and-diff algorithm as the
/// `Generic` mode here but has no flush (bytes of a character still incomplete when generation
/// stops are never emitted, so the chunks would not add up to `decode`), borrows the tokenizer
/// (a decoder could not live in a request beside the `Arc` that owns it), fails with
/// `InvalidPrefix` where this one waits, and re-decodes a window per token where byte-level
/// vocabularies (every GGUF-built tokenizer) need only the token's bytes.
///
/// `T` is how the decoder reaches its tokenizer: a borrow (`&Tokenizer`, from
/// [`Tokenizer::stream_decoder`]) or any owning handle that dereferences to one (an `Arc`, an
/// engine), so a decoder can live inside a request that outlives the caller's borrow.
pub struct StreamDecoder<T: Deref<Target = Tokenizer>> {
    tok: T,
    skip_special: bool,
    state: State,
}

enum State {
    /// Raw bytes not yet emitted: an incomplete UTF-8 sequence at the end.
    Bytes { pending: Vec<u8> },
    /// Ids since the last emitted chunk, plus one id of context before them
    /// (`prefix..read` has been emitted already; decoders such as SentencePiece's
    /// strip a leading space only at the very start, so context matters).
    Window {
        ids: Vec<u32>,
        prefix: usize,
        read: usize,
    },
}

impl<T: Deref<Target = Tokenizer>> StreamDecoder<T> {
    /// A decoder over `tok`; skips special tokens when `skip_special`.
    pub fn new(tok: T, skip_special: bool) -> Self {
        let state = match tok.decode_mode() {
            DecodeMode::ByteLevel => State::Bytes {
                pending: Vec::new(),
            },
            DecodeMode::Generic => State::Window {
                ids: Vec::new(),
                prefix: 0,
                read: 0,
            },
        };
        StreamDecoder {
            tok,
            skip_special,
            state,
        }
    }
}

impl<T: Deref<Target = Tokenizer>> StreamDecoder<T> {
    /// Adds one id; returns the newly completed text (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        self.tok.check_id(id)?;
        match &mut self.state {
            State::Bytes { pending } => {
                if self.skip_special && self.tok.is_special(id) {
                    return Ok(String::new());
                }
                // Ids inside the range but without a token (gaps) decode to nothing, as in `decode`.
                if let Some(token) = self.tok.id_to_token(id) {
                    byte_level::push_token_bytes(&token, pending);
                }
                Ok(drain_utf8(pending, false))
            }
            State::Window { ids, prefix, read } => {
                ids.push(id);
                let done = self.tok.decode(&ids[*prefix..*read], self.skip_special)?;
                let all = self.tok.decode(&ids[*prefix..], self.skip_special)?;
                // Wait while the text is unchanged or ends in a replacement
                // character (an incomplete byte-fallback sequence).
                if all.len() > done.len() && !all.ends_with('\u{FFFD}') {
                    if let Some(new) = all.strip_prefix(done.as_str()) {
                        let new = new.to_string();
                        *prefix = *read;
                        *read = ids.len();
                        // Only the ids from `prefix` on are needed from now on.
                        ids.drain(..*prefix);
                        *read -= *prefix;
                        *prefix = 0;
                        return Ok(new);
                    }
                }
                Ok(String::new())
            }
        }
    }

    /// Flushes whatever is held back (an incomplete character becomes U+FFFD,
    /// exactly as in `decode`) and resets the decoder.
    pub fn finish(&mut self) -> Result<String, TokenizerError> {
        match &mut self.state {
            State::Bytes { pending } => Ok(drain_utf8(pending, true)),
            State::Window { ids, prefix, read } => {
                let done = self.tok.decode(&ids[*prefix..*read], self.skip_special)?;
                let all = self.tok.decode(&ids[*prefix..], self.skip_special)?;
                let rest = all
                    .strip_prefix(done.as_str())
                    .unwrap_or(all.as_str())
                    .to_string();
                ids.clear();
                *prefix = 0;
                *read = 0;
                Ok(rest)
            }
        }
    }
}

/// Removes and returns the longest prefix of `pending` that is decided: valid
/// UTF-8, with each invalid sequence replaced by one U+FFFD exactly as
/// `String::from_utf8_lossy` (which `decode` uses) does. An incomplete sequence at
/// the end stays pending unless `at_end`.
fn drain_utf8(pending: &mut Vec<u8>, at_end: bool) -> String {
    let mut out = String::new();
    let mut start = 0;
    while start < pending.len() {
        let rest = &pending[start..];
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                start = pending.len();
            }
            Err(e) => {
                let valid = e.valid_up_to();
                // The first `valid` bytes are valid UTF-8, so this is a borrow, never a replacement.
                out.push_str(&String::from_utf8_lossy(&rest[..valid]));
                match e.error_len() {
                    Some(bad) => {
                        out.push('\u{FFFD}');
                        start += valid + bad;
                    }
                    None if at_end => {
                        out.push('\u{FFFD}');
                        start = pending.len();
                    }
                    None => {
                        start += valid;
                        break;
                    }
                }
            }
        }
    }
    pending.drain(..start);
    out
}

#[cfg(test)]
mod tests {
    use super::drain_utf8;

    fn stream_bytes(chunks: &[&[u8]]) -> (Vec<String>, String) {
        let mut pending = Vec::new();
        let mut out = Vec::new();
        for c in chunks {
            pending.extend_from_slice(c);
            out.push(drain_utf8(&mut pending, false));
        }
        let tail = drain_utf8(&mut pending, true);
        (out, tail)
    }

    #[test]
    fn matches_lossy_decoding_on_any_split() {
        let samples: &[&[u8]] = &[
            "héllo 世界 🙂".as_bytes(),
            b"\xe4\xb8",
            b"\xe4\xb8A",
            b"\xff\xfe ok \xf0\x9f\x99",
            b"\xed\xa0\x80x",
            b"\xc3",
        ];
        for s in samples {
            for cut in 0..=s.len() {
                for cut2 in cut..=s.len() {
                    let (chunks, tail) = stream_bytes(&[&s[..cut], &s[cut..cut2], &s[cut2..]]);
                    let joined: String = chunks.concat() + &tail;
                    assert_eq!(
                        joined,
                        String::from_utf8_lossy(s),
                        "{s:?} cut at {cut},{cut2}"
                    );
                }
            }
        }
    }
}
