//! Special-token bookkeeping shared by the HF and GGUF loaders: end-of-turn
//! detection and the stop-id list.

/// Token texts llama.cpp treats as end-of-turn when the metadata names no EOT
/// id, highest priority first. (llama.cpp scans a hash map, so its choice among
/// several matches is arbitrary; a fixed order makes ours reproducible.)
pub(crate) const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];

/// Llama 3.1's end-of-message token (tool calls); generation stops on it too.
pub(crate) const EOM_TEXT: &str = "<|eom_id|>";

/// The first EOT text (in priority order) that the vocabulary knows.
pub(crate) fn find_eot(lookup: impl Fn(&str) -> Option<u32>) -> Option<u32> {
    EOT_TEXTS.iter().find_map(|t| lookup(t))
}

/// Order-preserving de-duplicated union of the given ids.
pub(crate) fn dedup_ids(ids: impl IntoIterator<Item = u32>) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    for id in ids {
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

/// Whether an added token's text looks like a control token although the
/// tokenizer does not flag it special (llama.cpp's converter promotes these to
/// CONTROL: `<|...|>`, `<｜...｜>`, `<unused..>`, and a few known names).
pub(crate) fn looks_special(text: &str) -> bool {
    matches!(text, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (text.starts_with("<|") && text.ends_with("|>"))
        || (text.starts_with("<｜") && text.ends_with("｜>"))
        || (text.starts_with("<unused") && text.ends_with('>'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eot_priority_and_dedup() {
        let vocab = ["<|end_of_text|>", "<|endoftext|>", "<|eot_id|>"];
        let lookup = |s: &str| vocab.iter().position(|t| *t == s).map(|p| p as u32);
        assert_eq!(find_eot(lookup), Some(2));
        assert_eq!(dedup_ids([1, 4, 1, 4, 7]), vec![1, 4, 7]);
        assert!(looks_special("<|eot_id|>"));
        assert!(!looks_special("<b>"));
    }
}
