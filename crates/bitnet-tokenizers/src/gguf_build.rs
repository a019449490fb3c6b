//! Building an in-memory `tokenizers::Tokenizer` from [`GgufVocab`], so GGUF
//! files tokenize with the same engine (and the same results) as tokenizer.json.

use std::collections::HashMap;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, SplitDelimiterBehavior};

use crate::gguf_vocab::{id_u32, token_type};
use crate::pretokenizer::{self, PreTokenizerSpec};
use crate::{GgufVocab, TokenizerError};

/// SentencePiece's visible space.
const SPM_SPACE: &str = "\u{2581}";

/// A backend tokenizer plus llama.cpp's `add_bos` default for its kind.
pub(crate) struct Built {
    pub inner: tokenizers::Tokenizer,
    pub add_bos_default: bool,
}

/// Byte-level BPE ("gpt2"), pre-tokenized as `tokenizer.ggml.pre` says.
pub(crate) fn build_gpt2(v: &GgufVocab) -> Result<Built, TokenizerError> {
    let tokens = checked_tokens(v)?;
    let types = checked_types(v)?;
    let spec = pretokenizer::spec_for_gguf_pre(
        v.pre.as_deref(),
        pretokenizer::looks_llama3(tokens.iter().map(String::as_str)),
    )?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), id_u32(i)))
        .collect();
    let merges = parse_merges(&v.merges, &vocab);
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(spec.ignore_merges)
        .build()
        .map_err(TokenizerError::backend)?;

    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(byte_level_pre_tokenizer(&spec)?));
    inner.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
    add_special_tokens(&mut inner, &tokens, &types)?;
    Ok(Built {
        inner,
        add_bos_default: spec.add_bos,
    })
}

/// SentencePiece BPE ("llama"), rebuilt the way transformers converts a
/// SentencePiece model to tokenizer.json: merges ranked by the score of the
/// merged piece, byte fallback for unknown characters, `▁` for spaces with one
/// prepended to each text segment (llama.cpp's `add_space_prefix`, which it also
/// applies after every special token).
pub(crate) fn build_llama(v: &GgufVocab) -> Result<Built, TokenizerError> {
    let tokens = checked_tokens(v)?;
    let types = checked_types(v)?;
    let scores = match &v.scores {
        Some(s) if s.len() >= tokens.len() => s.clone(),
        Some(s) => {
            return Err(TokenizerError::InvalidVocab(format!(
                "{} scores for {} tokens",
                s.len(),
                tokens.len()
            )))
        }
        None => vec![0.0; tokens.len()],
    };
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), id_u32(i)))
        .collect();
    let merges = merges_from_scores(&tokens, &types, &scores, &vocab)?;
    let unk = types
        .iter()
        .position(|&t| t == token_type::UNKNOWN)
        .and_then(|i| tokens.get(i))
        .cloned();
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let bpe = builder.build().map_err(TokenizerError::backend)?;

    let mut inner = tokenizers::Tokenizer::new(bpe);
    let normalizer = NormalizerSequence::new(vec![
        NormalizerWrapper::Prepend(Prepend::new(SPM_SPACE.to_string())),
        NormalizerWrapper::Replace(Replace::new(" ", SPM_SPACE).map_err(TokenizerError::backend)?),
    ]);
    inner
        .with_normalizer(Some(normalizer))
        .map_err(TokenizerError::backend)?;
    let decoder = DecoderSequence::new(vec![
        DecoderWrapper::Replace(Replace::new(SPM_SPACE, " ").map_err(TokenizerError::backend)?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
        DecoderWrapper::Strip(Strip::new(' ', 1, 0)),
    ]);
    inner.with_decoder(Some(DecoderWrapper::Sequence(decoder)));
    add_special_tokens(&mut inner, &tokens, &types)?;
    Ok(Built {
        inner,
        add_bos_default: true,
    })
}

/// Token strings with llama.cpp's fix-ups: empty strings get a placeholder,
/// duplicates are an error (llama.cpp refuses them too).
fn checked_tokens(v: &GgufVocab) -> Result<Vec<String>, TokenizerError> {
    if v.tokens.is_empty() {
        return Err(TokenizerError::InvalidVocab(
            "tokenizer.ggml.tokens is empty".into(),
        ));
    }
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(v.tokens.len());
    for (i, t) in v.tokens.iter().enumerate() {
        if t.is_empty() {
            continue;
        }
        if let Some(first) = seen.insert(t.as_str(), i) {
            return Err(TokenizerError::InvalidVocab(format!(
                "duplicate token {t:?} at ids {first} and {i}"
            )));
        }
    }
    Ok(v.tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if t.is_empty() {
                format!("[EMPTY_{i}]")
            } else {
                t.clone()
            }
        })
        .collect())
}

fn checked_types(v: &GgufVocab) -> Result<Vec<i32>, TokenizerError> {
    match &v.token_types {
        None => Ok(vec![token_type::NORMAL; v.tokens.len()]),
        Some(t) if t.len() >= v.tokens.len() => Ok(t[..v.tokens.len()].to_vec()),
        Some(t) => Err(TokenizerError::InvalidVocab(format!(
            "{} token types for {} tokens",
            t.len(),
            v.tokens.len()
        ))),
    }
}

/// Parses "left right" merges the way llama.cpp does (split at the first space
/// after the first byte, so a left part may itself start with a space).
///
/// Merges that name tokens missing from the vocabulary are dropped: llama.cpp
/// tolerates them (they can never fire usefully), while `tokenizers` would
/// refuse to build.
fn parse_merges(merges: &[String], vocab: &Vocab) -> Vec<(String, String)> {
    merges
        .iter()
        .filter_map(|m| {
            let pos = m.bytes().skip(1).position(|b| b == b' ')? + 1;
            // `pos` indexes an ASCII space, so both slices are on char boundaries.
            let (a, b) = (m.get(..pos)?, m.get(pos + 1..)?);
            let merged = format!("{a}{b}");
            (vocab.contains_key(a) && vocab.contains_key(b) && vocab.contains_key(&merged))
                .then(|| (a.to_string(), b.to_string()))
        })
        .collect()
}

/// Work allowed to find SentencePiece merges, in bytes hashed per byte of vocabulary (plus
/// [`MERGE_FLOOR`]). Checking every split of a piece of L bytes and C characters hashes about
/// L × C bytes: real vocabularies average under 10 per byte (their pieces are short), while one
/// holding every `'a' * 1..4096` (17 MB as GGUF) needs 23 G, which took minutes and 3.9 GB.
const MERGE_WORK_PER_BYTE: usize = 64;
/// Bytes of merge strings allowed per byte of vocabulary (plus [`MERGE_FLOOR`]). Each found
/// merge holds its piece's bytes; real vocabularies have about 2 merges per piece.
const MERGE_BYTES_PER_BYTE: usize = 16;
/// Room any small vocabulary gets whatever its shape.
const MERGE_FLOOR: usize = 1 << 24;

/// SentencePiece merges: every split of a normal piece into two vocabulary
/// pieces, ranked by the merged piece's score (higher first). This is what
/// transformers' `SentencePieceExtractor` does, and it reproduces llama.cpp's
/// "merge the adjacent pair whose union has the best score" loop.
///
/// The work and the merges kept are bounded by the vocabulary's size (see
/// [`MERGE_WORK_PER_BYTE`]); a vocabulary built to need more is refused.
fn merges_from_scores(
    tokens: &[String],
    types: &[i32],
    scores: &[f32],
    vocab: &Vocab,
) -> Result<Vec<(String, String)>, TokenizerError> {
    let eligible = |i: usize| {
        matches!(
            types[i],
            token_type::NORMAL | token_type::USER_DEFINED | token_type::UNDEFINED
        )
    };
    let vocab_bytes = tokens
        .iter()
        .map(String::len)
        .fold(0, usize::saturating_add);
    let budget = |per_byte: usize| {
        vocab_bytes
            .saturating_mul(per_byte)
            .saturating_add(MERGE_FLOOR)
    };
    // Measured from the lengths alone, before any of the work is done.
    let work = tokens
        .iter()
        .enumerate()
        .filter(|&(i, _)| eligible(i))
        .map(|(_, t)| t.len().saturating_mul(t.chars().count().saturating_sub(1)))
        .fold(0, usize::saturating_add);
    let (work_budget, bytes_budget) = (budget(MERGE_WORK_PER_BYTE), budget(MERGE_BYTES_PER_BYTE));
    if work > work_budget {
        let longest = tokens.iter().map(String::len).max().unwrap_or(0);
        return Err(TokenizerError::InvalidVocab(format!(
            "rebuilding SentencePiece merges would hash {work} bytes, more than the {work_budget} \
             allowed for {} tokens of {vocab_bytes} bytes (the longest is {longest} bytes)",
            tokens.len()
        )));
    }
    // (score, piece id, left id, right id, split offset); strings are made once, at the end.
    let mut ranked: Vec<(f32, usize, u32, u32, usize)> = Vec::new();
    let mut merge_bytes = 0usize;
    for (i, piece) in tokens.iter().enumerate() {
        if !eligible(i) {
            continue;
        }
        for (split, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(split);
            if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                merge_bytes = merge_bytes.saturating_add(piece.len());
                if merge_bytes > bytes_budget {
                    return Err(TokenizerError::InvalidVocab(format!(
                        "its SentencePiece merges would take more than {bytes_budget} bytes for {} \
                         tokens of {vocab_bytes} bytes",
                        tokens.len()
                    )));
                }
                ranked.push((scores[i], i, li, ri, split));
            }
        }
    }
    ranked.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then((a.1, a.2, a.3).cmp(&(b.1, b.2, b.3)))
    });
    Ok(ranked
        .into_iter()
        .map(|(_, i, _, _, split)| {
            let (l, r) = tokens[i].split_at(split);
            (l.to_string(), r.to_string())
        })
        .collect())
}

fn byte_level_pre_tokenizer(spec: &PreTokenizerSpec) -> Result<PreSequence, TokenizerError> {
    let mut steps: Vec<PreTokenizerWrapper> = Vec::with_capacity(spec.splits.len() + 1);
    for regex in &spec.splits {
        let split = Split::new(
            SplitPattern::Regex((*regex).to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(TokenizerError::backend)?;
        steps.push(PreTokenizerWrapper::Split(split));
    }
    steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
        false,
        true,
        spec.byte_level_regex,
    )));
    Ok(PreSequence::new(steps))
}

/// Registers control, user-defined and unknown tokens as added tokens so they
/// are matched verbatim in text (llama.cpp's special-token partition).
/// Control/unknown ones are "special" (dropped by `decode(.., skip_special)`),
/// user-defined ones are not. None are normalized: llama.cpp stores them
/// pre-normalized and matches raw text.
fn add_special_tokens(
    inner: &mut tokenizers::Tokenizer,
    tokens: &[String],
    types: &[i32],
) -> Result<(), TokenizerError> {
    let added: Vec<AddedToken> = tokens
        .iter()
        .zip(types)
        .filter(|(_, &ty)| {
            matches!(
                ty,
                token_type::CONTROL | token_type::USER_DEFINED | token_type::UNKNOWN
            )
        })
        .map(|(t, &ty)| {
            AddedToken::from(t.clone(), ty != token_type::USER_DEFINED).normalized(false)
        })
        .collect();
    inner.add_tokens(added).map_err(TokenizerError::backend)?;
    Ok(())
}
