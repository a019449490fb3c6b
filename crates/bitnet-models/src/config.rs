//! Model hyper-parameters, read from a Hugging Face `config.json` or from GGUF metadata.

use crate::error::{ModelError, Result};
use bitnet_gguf::{GgufFile, MetadataValue};
use serde::Deserialize;

/// The two BitNet b1.58 families. They differ only in the FFN activation, the GGUF
/// architecture name and a few defaults; the block structure (with sub-norms) is shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// microsoft/bitnet-b1.58-2B-4T: squared-ReLU gated FFN. GGUF name `bitnet-b1.58`
    /// (bitnet.cpp; `bitnet-25` is its older alias).
    BitnetB158,
    /// 1bitLLM/bitnet_b1_58-*: gated SiLU FFN. GGUF name `bitnet` (mainline llama.cpp).
    Bitnet,
}

impl Arch {
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::BitnetB158 => "bitnet-b1.58",
            Arch::Bitnet => "bitnet",
        }
    }

    pub fn from_gguf_name(name: &str) -> Result<Arch> {
        match name {
            "bitnet-b1.58" | "bitnet-25" => Ok(Arch::BitnetB158),
            "bitnet" => Ok(Arch::Bitnet),
            other => Err(ModelError::UnsupportedArch(other.to_string())),
        }
    }

    pub fn activation(self) -> Activation {
        match self {
            Arch::BitnetB158 => Activation::Relu2,
            Arch::Bitnet => Activation::Silu,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// relu(x)^2
    Relu2,
    /// x * sigmoid(x)
    Silu,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f32,
    pub rms_norm_eps: f32,
    pub tie_word_embeddings: bool,
}

/// Sizes above these are not models but corrupt or hostile headers; refusing them early keeps
/// every later allocation bounded.
const MAX_DIM: usize = 1 << 20;
const MAX_LAYERS: usize = 1024;
const MAX_VOCAB: usize = 1 << 22;
const MAX_CTX: usize = 1 << 24;

impl ModelConfig {
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    pub fn activation(&self) -> Activation {
        self.arch.activation()
    }

    /// Checks the invariants the forward pass relies on.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        for (name, v, max) in [
            ("hidden_size", self.hidden_size, MAX_DIM),
            ("intermediate_size", self.intermediate_size, MAX_DIM),
            ("num_hidden_layers", self.num_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_heads, MAX_DIM),
            ("num_key_value_heads", self.num_kv_heads, MAX_DIM),
            ("head_dim", self.head_dim, MAX_DIM),
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                MAX_CTX,
            ),
        ] {
            if v == 0 || v > max {
                return bad(format!("{name} = {v} is out of range (1..={max})"));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head_dim ({}) must be even for RoPE",
                self.head_dim
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(format!("rope_theta ({}) must be positive", self.rope_theta));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return bad(format!(
                "rms_norm_eps ({}) must be non-negative",
                self.rms_norm_eps
            ));
        }
        Ok(())
    }

    /// From a Hugging Face `config.json` (transformers `BitNetConfig`, or the 1bitLLM
    /// `BitnetForCausalLM` / llama-style configs).
    pub fn from_hf_json(text: &str) -> Result<ModelConfig> {
        let c: HfConfig = serde_json::from_str(text)
            .map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
        let arch_names = c.architectures.clone().unwrap_or_default();
        let model_type = c.model_type.clone().unwrap_or_default();
        let is_bitnet = model_type == "bitnet"
            || arch_names
                .iter()
                .any(|a| a.eq_ignore_ascii_case("BitnetForCausalLM"));
        if !is_bitnet {
            return Err(ModelError::UnsupportedArch(format!(
                "model_type '{model_type}', architectures {arch_names:?}"
            )));
        }
        let act = c.hidden_act.as_deref().unwrap_or("relu2");
        let arch = match act {
            "relu2" => Arch::BitnetB158,
            "silu" | "swish" => Arch::Bitnet,
            other => {
                return Err(ModelError::Config(format!(
                    "hidden_act '{other}' is not supported (relu2 or silu)"
                )))
            }
        };
        // The sizes have no default: a missing one is named (not reported as "0 is out of
        // range").
        let need = |v: Option<usize>, name: &str| {
            v.ok_or_else(|| ModelError::Config(format!("config.json has no {name}")))
        };
        let hidden_size = need(c.hidden_size, "hidden_size")?;
        let intermediate_size = need(c.intermediate_size, "intermediate_size")?;
        let num_layers = need(c.num_hidden_layers, "num_hidden_layers")?;
        let num_heads = need(c.num_attention_heads, "num_attention_heads")?;
        let vocab_size = need(c.vocab_size, "vocab_size")?;
        let head_dim = match c.head_dim {
            Some(h) => h,
            None if num_heads > 0 => hidden_size / num_heads,
            None => 0,
        };
        let rope_theta = c
            .rope_theta
            .or_else(|| c.rope_parameters.as_ref().and_then(|p| p.rope_theta))
            .unwrap_or(10000.0);
        // transformers 4 writes `rope_scaling` (`type` or `rope_type`, `factor`), 5 folds it
        // into `rope_parameters`; either way a scaled RoPE this engine does not apply would
        // load and attend wrongly without a word, so it is refused.
        for (what, p) in [
            ("rope_scaling", c.rope_scaling.as_ref()),
            ("rope_parameters", c.rope_parameters.as_ref()),
        ] {
            if let Some(p) = p {
                let kind = p.rope_type.as_deref().or(p.r#type.as_deref());
                check_rope_scaling(&format!("config.json {what}"), kind, p.factor)?;
            }
        }
        let cfg = ModelConfig {
            arch,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads: c.num_key_value_heads.unwrap_or(num_heads),
            head_dim,
            vocab_size,
            max_position_embeddings: c.max_position_embeddings.unwrap_or(2048),
            rope_theta: rope_theta as f32,
            rms_norm_eps: c.rms_norm_eps.unwrap_or(1e-5) as f32,
            // transformers' default for tie_word_embeddings is true.
            tie_word_embeddings: c.tie_word_embeddings.unwrap_or(true),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// From GGUF metadata with llama.cpp's key names (`{arch}.embedding_length`, ...).
    /// Whether the head is tied is decided by the loader (absence of `output.weight`).
    pub fn from_gguf(file: &GgufFile) -> Result<ModelConfig> {
        let arch_name = file
            .architecture()
            .ok_or_else(|| ModelError::Config("missing general.architecture".into()))?
            .to_string();
        let arch = Arch::from_gguf_name(&arch_name)?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let get_usize = |k: &str| -> Result<usize> {
            let v = file
                .get(&key(k))
                .ok_or_else(|| ModelError::Config(format!("missing metadata key {}", key(k))))?;
            usize_of(v).ok_or_else(|| {
                ModelError::Config(format!(
                    "metadata key {} is not a valid count: {v:?}",
                    key(k)
                ))
            })
        };
        let get_opt_f32 = |k: &str| -> Result<Option<f32>> {
            match file.get(&key(k)) {
                None => Ok(None),
                Some(v) => v.as_f64().map(|x| Some(x as f32)).ok_or_else(|| {
                    ModelError::Config(format!("metadata key {} is not a number", key(k)))
                }),
            }
        };
        let hidden_size = get_usize("embedding_length")?;
        let num_heads = get_usize("attention.head_count")?;
        let num_kv_heads = match file.get(&key("attention.head_count_kv")) {
            Some(v) => usize_of(v).ok_or_else(|| {
                ModelError::Config(format!(
                    "{} is not a valid count",
                    key("attention.head_count_kv")
                ))
            })?,
            None => num_heads,
        };
        let head_dim = match file.get(&key("rope.dimension_count")) {
            Some(v) => usize_of(v)
                .ok_or_else(|| ModelError::Config("rope.dimension_count is invalid".into()))?,
            None if num_heads > 0 => hidden_size / num_heads,
            None => 0,
        };
        let vocab_size = match file.get(&key("vocab_size")) {
            Some(v) => {
                usize_of(v).ok_or_else(|| ModelError::Config("vocab_size is invalid".into()))?
            }
            None => file
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(|a| a.len())
                .or_else(|| {
                    file.tensor("token_embd.weight")
                        .and_then(|t| t.dims.get(1).copied())
                        .and_then(|d| usize::try_from(d).ok())
                })
                .ok_or_else(|| ModelError::Config("cannot determine vocab size".into()))?,
        };
        let cfg = ModelConfig {
            arch,
            hidden_size,
            intermediate_size: get_usize("feed_forward_length")?,
            num_layers: get_usize("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size,
            max_position_embeddings: get_usize("context_length")?,
            rope_theta: get_opt_f32("rope.freq_base")?.unwrap_or(10000.0),
            rms_norm_eps: get_opt_f32("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
            tie_word_embeddings: file.tensor("output.weight").is_none(),
        };
        // llama.cpp reads a missing `rope.scaling.type` as linear, which a factor of 1 (or none)
        // leaves plain.
        let scaling = match file.get(&key("rope.scaling.type")) {
            None => None,
            Some(v) => Some(v.as_str().ok_or_else(|| {
                ModelError::Config(format!(
                    "metadata key {} is not a string",
                    key("rope.scaling.type")
                ))
            })?),
        };
        check_rope_scaling(
            &format!("metadata key {}", key("rope.scaling.type")),
            scaling,
            get_opt_f32("rope.scaling.factor")?.map(f64::from),
        )?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The `{arch}.*` keys llama.cpp and bitnet.cpp read, for the GGUF writer.
    pub fn gguf_metadata(&self) -> Vec<(String, MetadataValue)> {
        let a = self.arch.gguf_name();
        let u = |v: usize| MetadataValue::U32(v as u32);
        vec![
            (format!("{a}.vocab_size"), u(self.vocab_size)),
            (
                format!("{a}.context_length"),
                u(self.max_position_embeddings),
            ),
            (format!("{a}.embedding_length"), u(self.hidden_size)),
            (format!("{a}.block_count"), u(self.num_layers)),
            (
                format!("{a}.feed_forward_length"),
                u(self.intermediate_size),
            ),
            (format!("{a}.rope.dimension_count"), u(self.head_dim)),
            (format!("{a}.attention.head_count"), u(self.num_heads)),
            (format!("{a}.attention.head_count_kv"), u(self.num_kv_heads)),
            (
                format!("{a}.attention.layer_norm_rms_epsilon"),
                MetadataValue::F32(self.rms_norm_eps),
            ),
            (
                format!("{a}.rope.freq_base"),
                MetadataValue::F32(self.rope_theta),
            ),
        ]
    }
}

/// Refuses a file with tensors of more layers than its config declares: the extra layers would
/// be silently dropped and the model run truncated.
pub(crate) fn check_layer_count<'a>(
    names: impl Iterator<Item = &'a str>,
    prefix: &str,
    layers: usize,
    key: &str,
) -> Result<()> {
    let deepest = names
        .filter_map(|n| {
            let l = n
                .strip_prefix(prefix)?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()?;
            Some((l, n))
        })
        .max_by_key(|&(l, _)| l);
    match deepest {
        Some((l, name)) if l >= layers => Err(ModelError::Config(format!(
            "{key} = {layers}, but the file has tensors of layer {l} ({name}); the layer count does not match the weights"
        ))),
        _ => Ok(()),
    }
}

fn usize_of(v: &MetadataValue) -> Option<usize> {
    v.as_u64().and_then(|x| usize::try_from(x).ok())
}

#[derive(Deserialize)]
struct HfConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    hidden_act: Option<String>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    rope_scaling: Option<RopeParameters>,
    rms_norm_eps: Option<f64>,
    tie_word_embeddings: Option<bool>,
}

#[derive(Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
    r#type: Option<String>,
    factor: Option<f64>,
}

/// Plain RoPE is all this engine applies: a scaling kind other than none / default (linear
/// only with a factor of 1, which scales nothing) is an error naming what the file asks for.
fn check_rope_scaling(what: &str, kind: Option<&str>, factor: Option<f64>) -> Result<()> {
    let plain_factor = factor.is_none_or(|f| f == 1.0 || f == 0.0);
    let ok = match kind {
        None | Some("linear") => plain_factor,
        Some("none") | Some("default") => true,
        Some(_) => false,
    };
    if ok {
        return Ok(());
    }
    let factor = factor.map(|f| format!(", factor {f}")).unwrap_or_default();
    Err(ModelError::Config(format!(
        "{what} asks for RoPE scaling '{}'{factor}, which is not supported (plain RoPE only)",
        kind.unwrap_or("linear")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kjv_config() {
        let text = std::fs::read_to_string("../../../shared/models/bitnet-b1.58-kjv/config.json")
            .expect("shared model present");
        let c = ModelConfig::from_hf_json(&text).unwrap();
        assert_eq!(c.arch, Arch::BitnetB158);
        assert_eq!(
            (c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads),
            (512, 6, 8, 2)
        );
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.rope_theta, 500000.0);
        assert!(c.tie_word_embeddings);
    }

    #[test]
    fn rejects_bad_configs_with_clear_errors() {
        let e = ModelConfig::from_hf_json(r#"{"model_type":"llama"}"#).unwrap_err();
        assert!(e.to_string().contains("unsupported architecture"), "{e}");
        let e = ModelConfig::from_hf_json(
            r#"{"model_type":"bitnet","hidden_size":64,"intermediate_size":64,"num_hidden_layers":1,
               "num_attention_heads":3,"num_key_value_heads":2,"vocab_size":10}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("multiple"), "{e}");
        let e = ModelConfig::from_hf_json(
            r#"{"model_type":"bitnet","hidden_size":64,"intermediate_size":64,"num_hidden_layers":1,
               "num_attention_heads":4,"vocab_size":1000000000000}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("vocab_size"), "{e}");
        assert!(ModelConfig::from_hf_json("not json").is_err());
        let e = ModelConfig::from_hf_json(
            r#"{"model_type":"bitnet","intermediate_size":64,"num_hidden_layers":1,
               "num_attention_heads":4,"vocab_size":10}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("has no hidden_size"), "{e}");
    }

    #[test]
    fn a_scaled_rope_is_refused_and_a_plain_one_accepted() {
        let kjv = std::fs::read_to_string("../../../shared/models/bitnet-b1.58-kjv/config.json")
            .expect("shared model present");
        let with = |key: &str, value: &str| {
            let mut v: serde_json::Value = serde_json::from_str(&kjv).unwrap();
            v[key] = serde_json::from_str(value).unwrap();
            ModelConfig::from_hf_json(&v.to_string())
        };
        for (key, value, kind) in [
            (
                "rope_scaling",
                r#"{"type":"linear","factor":4.0}"#,
                "linear",
            ),
            (
                "rope_scaling",
                r#"{"rope_type":"llama3","factor":8.0}"#,
                "llama3",
            ),
            (
                "rope_scaling",
                r#"{"type":"dynamic","rope_type":"dynamic","factor":2.0}"#,
                "dynamic",
            ),
            (
                "rope_parameters",
                r#"{"rope_theta":500000,"rope_type":"yarn","factor":4}"#,
                "yarn",
            ),
        ] {
            let e = with(key, value).unwrap_err();
            assert!(
                e.to_string().contains(&format!("RoPE scaling '{kind}'")),
                "{key} {value}: {e}"
            );
        }
        for (key, value) in [
            ("rope_scaling", "null"),
            ("rope_scaling", r#"{"type":"linear","factor":1.0}"#),
            ("rope_scaling", r#"{"rope_type":"default"}"#),
            (
                "rope_parameters",
                r#"{"rope_theta":10000,"rope_type":"default"}"#,
            ),
        ] {
            with(key, value).unwrap_or_else(|e| panic!("{key} {value}: {e}"));
        }
    }
}
