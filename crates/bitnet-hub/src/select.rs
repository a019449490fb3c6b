//! Which files of a repository make the model: one GGUF when there is one (the ternary types
//! this engine runs fastest first), else the Hugging Face checkpoint folder.

use crate::error::{HubError, Result};

/// GGUF quantization tags by preference, as they appear in file names.
const GGUF_PREFERENCE: &[&str] = &["i2_s", "tq2_0", "tq1_0", "bf16", "f16", "f32"];

/// Non-weight files of a checkpoint folder that the loader reads when present.
const FOLDER_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "model.safetensors.index.json",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// One GGUF file (its path in the repository).
    Gguf(String),
    /// The files of a checkpoint folder (config, tokenizer, weights, shard index).
    Folder(Vec<String>),
}

impl Selection {
    pub fn files(&self) -> Vec<String> {
        match self {
            Selection::Gguf(f) => vec![f.clone()],
            Selection::Folder(fs) => fs.clone(),
        }
    }
}

/// `-00001-of-00003.gguf`: the loader reads whole files only.
fn is_split_part(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".gguf") else {
        return false;
    };
    let b = stem.as_bytes();
    // "-NNNNN-of-NNNNN" is 15 bytes.
    b.len() >= 15 && {
        let t = &b[b.len() - 15..];
        t[0] == b'-'
            && t[1..6].iter().all(u8::is_ascii_digit)
            && &t[6..10] == b"-of-"
            && t[10..].iter().all(u8::is_ascii_digit)
    }
}

fn normalized(name: &str) -> String {
    name.rsplit('/')
        .next()
        .unwrap_or(name)
        .to_ascii_lowercase()
        .replace('-', "_")
}

fn rank(name: &str) -> usize {
    let n = normalized(name);
    GGUF_PREFERENCE
        .iter()
        .position(|q| n.contains(q))
        .unwrap_or(GGUF_PREFERENCE.len())
}

/// Picks the model's files among `files` (every path in the repository at one revision).
/// `wanted` is a path (`model-tq2_0.gguf`) or a quantization name (`tq2_0`).
pub fn select(files: &[String], wanted: Option<&str>, repo: &str) -> Result<Selection> {
    let not_found = HubError::NotFound;
    let ggufs: Vec<&String> = files.iter().filter(|f| f.ends_with(".gguf")).collect();
    if let Some(w) = wanted {
        if files.iter().any(|f| f == w) {
            return Ok(Selection::Gguf(w.to_owned()));
        }
        let quant = normalized(w);
        let mut matching: Vec<&&String> = ggufs
            .iter()
            .filter(|f| !is_split_part(f) && normalized(f).contains(&quant))
            .collect();
        matching.sort_by_key(|f| (f.len(), f.as_str()));
        return match matching.first() {
            Some(f) => Ok(Selection::Gguf((**f).clone())),
            None => Err(not_found(format!(
                "{repo} has no file or GGUF quantization {w:?} (GGUF files: {})",
                if ggufs.is_empty() {
                    "none".to_owned()
                } else {
                    ggufs
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ))),
        };
    }
    let mut whole: Vec<&&String> = ggufs.iter().filter(|f| !is_split_part(f)).collect();
    whole.sort_by_key(|f| (rank(f), f.len(), f.as_str()));
    if let Some(f) = whole.first() {
        return Ok(Selection::Gguf((**f).clone()));
    }
    // A checkpoint folder: root-level files only (subfolders hold other formats or originals).
    let root: Vec<&String> = files.iter().filter(|f| !f.contains('/')).collect();
    let has = |n: &str| root.iter().any(|f| *f == n);
    let weights: Vec<String> = root
        .iter()
        .filter(|f| f.ends_with(".safetensors"))
        .map(|f| (*f).clone())
        .collect();
    if !has("config.json") || weights.is_empty() {
        return Err(not_found(format!(
            "{repo} has no GGUF file and no safetensors checkpoint (config.json and *.safetensors)"
        )));
    }
    let mut out: Vec<String> = FOLDER_FILES
        .iter()
        .filter(|n| has(n))
        .map(|n| (*n).to_owned())
        .collect();
    out.extend(weights);
    Ok(Selection::Folder(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn prefers_i2s_then_tq2_then_tq1() {
        let files = v(&[
            "README.md",
            "m-TQ1_0.gguf",
            "m-tq2_0.gguf",
            "m-f16.gguf",
            "ggml-model-i2_s.gguf",
            "m-Q4_K_M.gguf",
        ]);
        assert_eq!(
            select(&files, None, "r").unwrap(),
            Selection::Gguf("ggml-model-i2_s.gguf".into())
        );
        let no_i2s = v(&["m-TQ1_0.gguf", "m-tq2_0.gguf", "m-f16.gguf"]);
        assert_eq!(
            select(&no_i2s, None, "r").unwrap(),
            Selection::Gguf("m-tq2_0.gguf".into())
        );
        let tq1 = v(&["m-f16.gguf", "m-TQ1_0.gguf"]);
        assert_eq!(
            select(&tq1, None, "r").unwrap(),
            Selection::Gguf("m-TQ1_0.gguf".into())
        );
    }

    #[test]
    fn asked_by_file_or_quant_name() {
        let files = v(&["a/m-TQ1_0.gguf", "m-tq2_0.gguf", "ggml-model-i2_s.gguf"]);
        assert_eq!(
            select(&files, Some("tq1_0"), "r").unwrap(),
            Selection::Gguf("a/m-TQ1_0.gguf".into())
        );
        assert_eq!(
            select(&files, Some("TQ2-0"), "r").unwrap(),
            Selection::Gguf("m-tq2_0.gguf".into())
        );
        assert_eq!(
            select(&files, Some("m-tq2_0.gguf"), "r").unwrap(),
            Selection::Gguf("m-tq2_0.gguf".into())
        );
        let e = select(&files, Some("q4_k_m"), "r").unwrap_err();
        assert_eq!(e.exit_code(), 5);
        assert!(e.to_string().contains("m-tq2_0.gguf"), "{e}");
    }

    #[test]
    fn split_ggufs_are_skipped() {
        let files = v(&[
            "m-i2_s-00001-of-00002.gguf",
            "m-i2_s-00002-of-00002.gguf",
            "m-tq2_0.gguf",
        ]);
        assert_eq!(
            select(&files, None, "r").unwrap(),
            Selection::Gguf("m-tq2_0.gguf".into())
        );
    }

    #[test]
    fn falls_back_to_the_safetensors_folder() {
        let files = v(&[
            ".gitattributes",
            "README.md",
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "generation_config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "original/model.safetensors",
        ]);
        let Selection::Folder(got) = select(&files, None, "r").unwrap() else {
            panic!("expected a folder")
        };
        assert_eq!(
            got,
            v(&[
                "config.json",
                "generation_config.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "model.safetensors.index.json",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
            ])
        );
        let e = select(&v(&["README.md", "config.json"]), None, "r").unwrap_err();
        assert_eq!(e.exit_code(), 5);
    }
}
