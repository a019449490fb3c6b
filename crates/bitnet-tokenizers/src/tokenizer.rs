//! [`Tokenizer`]: encode/decode, special ids and chat templates over one
//! `tokenizers::Tokenizer`, whichever source (tokenizer.json or GGUF) it came from.

use std::collections::HashSet;
use std::path::Path;

use tokenizers::DecoderWrapper;

use crate::byte_level;
use crate::chat::{self, ChatMessage, Limits, RenderError};
use crate::gguf_build;
use crate::hf_files::{self, GenerationConfig, TokenizerConfig};
use crate::input_bound;
use crate::specials;
use crate::stream::StreamDecoder;
use crate::{GgufVocab, TokenizerError};

/// How the streaming decoder turns ids into text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DecodeMode {
    /// `ByteLevel` decoder: text is the lossy UTF-8 of the concatenated token
    /// bytes, so streaming can work on bytes exactly.
    ByteLevel,
    /// Any other decoder: stream by decoding windows of ids and diffing.
    Generic,
}

/// A text tokenizer for the engine: BPE encode/decode plus the special-token
/// facts (BOS/EOS/stop ids) and the chat template that go with a model.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    vocab_size: usize,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    add_bos: bool,
    stop_ids: Vec<u32>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    chat_template: Option<String>,
    /// Why the chat template was refused when the tokenizer was built, if it was.
    chat_template_error: Option<String>,
    special_ids: HashSet<u32>,
    decode_mode: DecodeMode,
    /// Most bytes of text one token can stand for (see `input_bound`).
    bytes_per_token: usize,
    /// The decoder writes SentencePiece's `▁` as a space (and strips the first one).
    metaspace: bool,
}

/// Special-token facts gathered by a loader before assembly.
struct Specials {
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    add_bos: bool,
    stop_ids: Vec<u32>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    chat_template: Option<String>,
}

impl Tokenizer {
    /// Loads a Hugging Face folder: `tokenizer.json` (required; a missing file is
    /// [`TokenizerError::Missing`] with its path), `tokenizer_config.json` (BOS/EOS
    /// token texts, `add_bos_token`, chat template; optional), `chat_template.jinja`
    /// (optional) and `generation_config.json` (`eos_token_id` list -> stop ids; optional).
    pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer, TokenizerError> {
        let path = dir.join(hf_files::TOKENIZER_JSON);
        let bytes = hf_files::read_required(&path)?;
        let json = hf_files::parse_json(&path, &bytes)?;
        let inner =
            tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| hf_files::bad_file(&path, e))?;
        let cfg = TokenizerConfig::load(dir)?;
        let gen = GenerationConfig::load(dir)?;

        let lookup = |s: &str| inner.token_to_id(s);
        let template = hf_files::template_specials(&json);
        let template_first = template.first.as_deref().and_then(lookup);
        let bos_id = cfg
            .bos_token
            .as_deref()
            .and_then(lookup)
            .or(template_first)
            .or(gen.bos_token_id);
        let eos_id = cfg
            .eos_token
            .as_deref()
            .and_then(lookup)
            .or(gen.eos_token_ids.first().copied());
        // An explicit `add_bos_token` wins; otherwise do what the post-processor
        // does under `add_special_tokens=True`.
        let add_bos = cfg
            .add_bos_token
            .unwrap_or(bos_id.is_some() && template_first == bos_id);
        let eot_id = specials::find_eot(lookup);
        let eom_id = lookup(specials::EOM_TEXT);
        let stop_ids = specials::dedup_ids(
            eos_id
                .into_iter()
                .chain(eot_id)
                .chain(eom_id)
                .chain(gen.eos_token_ids),
        );

        let specials = Specials {
            bos_token: cfg
                .bos_token
                .clone()
                .or_else(|| bos_id.and_then(|id| inner.id_to_token(id))),
            eos_token: cfg
                .eos_token
                .clone()
                .or_else(|| eos_id.and_then(|id| inner.id_to_token(id))),
            bos_id,
            eos_id,
            add_bos,
            stop_ids,
            chat_template: cfg.chat_template,
        };
        Ok(Tokenizer::assemble(inner, specials))
    }

    /// Builds the tokenizer from GGUF metadata. Model "gpt2" is byte-level BPE
    /// with the pre-tokenizer `pre` selects (a missing/"default" `pre` on a Llama
    /// 3 vocabulary uses the Llama 3 regex); model "llama" is SentencePiece BPE
    /// rebuilt from the scores.
    pub fn from_gguf_vocab(v: &GgufVocab) -> Result<Tokenizer, TokenizerError> {
        let built = match v.model.as_str() {
            "gpt2" => gguf_build::build_gpt2(v)?,
            "llama" => gguf_build::build_llama(v)?,
            other => {
                return Err(TokenizerError::Unsupported(format!(
                    "GGUF tokenizer model '{other}'"
                )))
            }
        };
        let n = v.tokens.len();
        let check = |key: &str, id: Option<u32>| match id {
            Some(id) if id as usize >= n => Err(TokenizerError::InvalidVocab(format!(
                "tokenizer.ggml.{key} = {id} is outside the vocabulary ({n} tokens)"
            ))),
            _ => Ok(id),
        };
        let bos_id = check("bos_token_id", v.bos_id)?;
        let eos_id = check("eos_token_id", v.eos_id)?;
        let inner = built.inner;
        let lookup = |s: &str| inner.token_to_id(s);
        let eot_id = check("eot_token_id", v.eot_id)?.or_else(|| specials::find_eot(lookup));
        let eom_id = lookup(specials::EOM_TEXT);
        let add_bos = v.add_bos.unwrap_or(built.add_bos_default) && bos_id.is_some();
        let token_text = |id: Option<u32>| id.and_then(|id| v.tokens.get(id as usize)).cloned();
        let specials = Specials {
            bos_token: token_text(bos_id),
            eos_token: token_text(eos_id),
            bos_id,
            eos_id,
            add_bos,
            stop_ids: specials::dedup_ids(eos_id.into_iter().chain(eot_id).chain(eom_id)),
            chat_template: v.chat_template.clone(),
        };
        Ok(Tokenizer::assemble(inner, specials))
    }

    fn assemble(inner: tokenizers::Tokenizer, s: Specials) -> Tokenizer {
        let vocab = inner.get_vocab(true);
        // Ids can have gaps, so the size is one past the largest id, not a count.
        let vocab_size = vocab.values().max().map_or(0, |&m| m as usize + 1);
        let longest = vocab.keys().map(String::len).max().unwrap_or(0);
        let bytes_per_token = input_bound::bytes_per_token(&inner, longest);
        let chat_template_error = s
            .chat_template
            .as_deref()
            .and_then(|t| chat::check(t, s.bos_token.as_deref(), s.eos_token.as_deref()).err());
        let special_ids = inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(&id, _)| id)
            .collect();
        let decode_mode = match inner.get_decoder() {
            Some(DecoderWrapper::ByteLevel(_)) => DecodeMode::ByteLevel,
            _ => DecodeMode::Generic,
        };
        let metaspace = metaspace_decoder(inner.get_decoder());
        Tokenizer {
            inner,
            vocab_size,
            bos_id: s.bos_id,
            eos_id: s.eos_id,
            add_bos: s.add_bos,
            stop_ids: s.stop_ids,
            bos_token: s.bos_token,
            eos_token: s.eos_token,
            chat_template: s.chat_template,
            chat_template_error,
            special_ids,
            decode_mode,
            metaspace,
            bytes_per_token,
        }
    }

    /// Encodes text. Special tokens written in the text (`<|eot_id|>`) are
    /// recognised as such. With `add_bos`, BOS is prepended unless the text
    /// already produced it as its first token, so it never appears twice.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(TokenizerError::backend)?;
        let mut ids = encoding.get_ids().to_vec();
        if add_bos {
            let bos = self.bos_id.ok_or_else(|| {
                TokenizerError::InvalidVocab(
                    "BOS requested but the tokenizer has no BOS token".into(),
                )
            })?;
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    /// The most bytes of text that can possibly fit `ctx` tokens: `ctx` times the most text one
    /// token stands for (its longest vocabulary string, or 4 times that for tokenizers that may
    /// drop text, such as BERT's). A longer text cannot fit, so it is refused before the
    /// expensive tokenization (tokenizing takes about 120 bytes of memory per byte of text).
    pub fn max_input_bytes(&self, ctx: usize) -> usize {
        ctx.saturating_mul(self.bytes_per_token)
    }

    /// [`encode`](Self::encode) for a prompt that must fit a context of `ctx` tokens: a text
    /// longer than [`max_input_bytes`](Self::max_input_bytes) is refused unread with
    /// [`TokenizerError::InputTooLarge`]. The ids may still be more than `ctx` (the caller
    /// compares, as before).
    pub fn encode_within(
        &self,
        text: &str,
        add_bos: bool,
        ctx: usize,
    ) -> Result<Vec<u32>, TokenizerError> {
        self.check_input_len(text.len(), ctx)?;
        self.encode(text, add_bos)
    }

    /// Refuses `bytes` of text that cannot fit `ctx` tokens (for callers that read the text:
    /// check the size first, read no more than [`max_input_bytes`](Self::max_input_bytes)).
    pub fn check_input_len(&self, bytes: usize, ctx: usize) -> Result<(), TokenizerError> {
        let limit = self.max_input_bytes(ctx);
        if bytes > limit {
            return Err(TokenizerError::InputTooLarge(format!(
                "{bytes} bytes of text cannot fit {ctx} tokens (a token covers at most {} bytes, \
                 so at most {limit} bytes fit)",
                self.bytes_per_token
            )));
        }
        Ok(())
    }

    /// Decodes ids to text; `skip_special` drops control tokens (BOS, EOT, ...).
    /// Ids outside the vocabulary are an error rather than silently dropped.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        for &id in ids {
            self.check_id(id)?;
        }
        self.inner
            .decode(ids, skip_special)
            .map_err(TokenizerError::backend)
    }

    pub(crate) fn check_id(&self, id: u32) -> Result<(), TokenizerError> {
        if (id as usize) < self.vocab_size {
            Ok(())
        } else {
            Err(TokenizerError::UnknownId {
                id,
                vocab_size: self.vocab_size,
            })
        }
    }

    /// One past the largest token id (special tokens included).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Whether prompts should start with BOS by default (post-processor /
    /// `add_bos_token` / GGUF `add_bos_token`).
    pub fn add_bos_default(&self) -> bool {
        self.add_bos
    }

    /// Ids that end generation: EOS, EOT (`<|eot_id|>` and llama.cpp's other
    /// end-of-turn texts), `<|eom_id|>`, and every `eos_token_id` of
    /// generation_config.json; de-duplicated, in that order.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// The id of a token given its vocabulary string (byte-level form for BPE).
    pub fn token_to_id(&self, s: &str) -> Option<u32> {
        self.inner.token_to_id(s)
    }

    /// The vocabulary string of a token id (byte-level form for BPE, e.g. `Ġthe`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The bytes one token stands for, as OpenAI's `logprobs` report them: a token can hold
    /// part of a UTF-8 character, so its text alone can be lossy. `None` for ids without a
    /// token.
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        let token = self.inner.id_to_token(id)?;
        let mut out = Vec::new();
        match self.decode_mode {
            DecodeMode::ByteLevel => byte_level::push_token_bytes(&token, &mut out),
            DecodeMode::Generic => match sentencepiece_byte(&token) {
                Some(b) => out.push(b),
                // Not decoded alone: SentencePiece decoders strip the space that starts the
                // text, which would turn `▁the` into "the" and break the concatenation.
                None if self.metaspace => {
                    out.extend_from_slice(token.replace(SPM_SPACE, " ").as_bytes())
                }
                None => out.extend_from_slice(self.decode(&[id], false).ok()?.as_bytes()),
            },
        }
        Some(out)
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Why the chat template was refused when the tokenizer was built (it does not compile, or
    /// cannot render a one-message chat within the limits); `None` if it was not.
    pub fn chat_template_error(&self) -> Option<&str> {
        self.chat_template_error.as_deref()
    }

    /// Text of the BOS token, as chat templates see it (`bos_token`).
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// Text of the EOS token, as chat templates see it (`eos_token`).
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Renders the chat template (minijinja, with transformers' settings:
    /// `trim_blocks`, `lstrip_blocks`, `raise_exception`, `strftime_now`, Python
    /// string methods). The result already holds whatever BOS the template
    /// writes, so encode it with `add_bos = false` (see [`Tokenizer::encode_chat`]).
    ///
    /// Templates come from model files and run under limits proportional to the conversation
    /// (work and memory through minijinja's fuel, and rendered size); a template past them, or
    /// one refused when the tokenizer was built, is [`TokenizerError::InvalidTemplate`].
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        self.render_chat(messages, add_generation_prompt, None)
    }

    /// [`apply_chat_template`](Self::apply_chat_template) for a prompt that must fit `ctx`
    /// tokens: rendering stops as soon as the text passes
    /// [`max_input_bytes`](Self::max_input_bytes)`(ctx)`, with
    /// [`TokenizerError::InputTooLarge`].
    pub fn apply_chat_template_within(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        ctx: usize,
    ) -> Result<String, TokenizerError> {
        self.render_chat(messages, add_generation_prompt, Some(ctx))
    }

    fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        ctx: Option<usize>,
    ) -> Result<String, TokenizerError> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or(TokenizerError::NoChatTemplate)?;
        if let Some(e) = &self.chat_template_error {
            return Err(TokenizerError::InvalidTemplate(format!(
                "refused when the tokenizer loaded: {e}"
            )));
        }
        let ctx_limit = ctx.map(|c| self.max_input_bytes(c));
        if let (Some(limit), Some(ctx)) = (ctx_limit, ctx) {
            // Messages larger than the context can hold are refused without rendering: a
            // template writes them out (one that drops most of a chat is not worth the cost).
            let content = messages
                .iter()
                .map(|m| m.content.len())
                .fold(0, usize::saturating_add);
            if content > limit {
                return Err(TokenizerError::InputTooLarge(format!(
                    "the messages hold {content} bytes of text, which cannot fit {ctx} tokens \
                     (at most {limit} bytes fit)"
                )));
            }
        }
        let (bos, eos) = (self.bos_token.as_deref(), self.eos_token.as_deref());
        let mut limits = Limits::for_input(messages, &[bos, eos]);
        if let Some(l) = ctx_limit {
            limits.output = limits.output.min(l);
        }
        match chat::render(template, messages, bos, eos, add_generation_prompt, limits) {
            Ok(text) => Ok(text),
            // The context, not the template, set the limit that was hit.
            Err(RenderError::Output(n)) if ctx_limit == Some(n) => {
                Err(TokenizerError::InputTooLarge(format!(
                    "the chat renders to more than {n} bytes, which cannot fit {} tokens",
                    ctx.unwrap_or(0)
                )))
            }
            Err(e) => Err(e.into_tokenizer_error()),
        }
    }

    /// Renders the chat template and encodes the result without adding BOS, as
    /// transformers' `apply_chat_template(tokenize=True)` does.
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let text = self.apply_chat_template(messages, add_generation_prompt)?;
        self.encode(&text, false)
    }

    /// [`encode_chat`](Self::encode_chat) for a prompt that must fit `ctx` tokens (see
    /// [`apply_chat_template_within`](Self::apply_chat_template_within)).
    pub fn encode_chat_within(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        ctx: usize,
    ) -> Result<Vec<u32>, TokenizerError> {
        let text = self.apply_chat_template_within(messages, add_generation_prompt, ctx)?;
        self.encode(&text, false)
    }

    /// An incremental decoder for streaming output, skipping special tokens
    /// (its output equals `decode(ids, true)`).
    pub fn stream_decoder(&self) -> StreamDecoder<&Tokenizer> {
        StreamDecoder::new(self, true)
    }

    /// Like [`Tokenizer::stream_decoder`], choosing whether special tokens are
    /// skipped (output equals `decode(ids, skip_special)`).
    pub fn stream_decoder_with(&self, skip_special: bool) -> StreamDecoder<&Tokenizer> {
        StreamDecoder::new(self, skip_special)
    }

    /// The underlying Hugging Face tokenizer, for anything not wrapped here.
    pub fn backend(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    pub(crate) fn decode_mode(&self) -> DecodeMode {
        self.decode_mode
    }

    pub(crate) fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }
}

/// SentencePiece's word-boundary mark, U+2581.
const SPM_SPACE: char = '\u{2581}';

/// Whether a decoder turns SentencePiece's `▁` into a space (HF `Metaspace`, or llama's
/// `Replace` + `ByteFallback` + `Fuse` + `Strip` sequence that GGUF vocabularies get): found
/// by asking it, so any arrangement of decoders that behaves so is recognised.
fn metaspace_decoder(decoder: Option<&DecoderWrapper>) -> bool {
    use tokenizers::Decoder;
    decoder
        .and_then(|d| d.decode(vec!["x".into(), format!("{SPM_SPACE}y")]).ok())
        .is_some_and(|s| s == "x y")
}

/// SentencePiece's byte-fallback tokens are written `<0xAB>`.
fn sentencepiece_byte(token: &str) -> Option<u8> {
    let hex = token.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("add_bos", &self.add_bos)
            .field("stop_ids", &self.stop_ids)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::decoders::byte_level::ByteLevel;
    use tokenizers::decoders::metaspace::Metaspace;

    #[test]
    fn metaspace_decoders_are_recognised() {
        assert!(metaspace_decoder(Some(&DecoderWrapper::Metaspace(
            Metaspace::default()
        ))));
        assert!(!metaspace_decoder(Some(&DecoderWrapper::ByteLevel(
            ByteLevel::default()
        ))));
        assert!(!metaspace_decoder(None));
    }
}
