//! One settings type for every front end. Values come from, in increasing precedence:
//! built-in defaults, a TOML file, `BITNET_*` environment variables, then command-line flags.

use crate::error::{EngineError, Result};
use crate::sampler::SamplingParams;
use bitnet_backend::{Device, KvType};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Prompt tokens per forward batch when no layer sets `batch_size`.
pub const DEFAULT_BATCH_SIZE: usize = 512;
/// Tokens `run` (and a request without a limit) generates when no layer sets `max_tokens`.
pub const DEFAULT_MAX_TOKENS: usize = 128;
/// Tokens per answer in `chat` when no layer sets `max_tokens`: answers run longer than the
/// continuation of a one-line prompt.
pub const DEFAULT_CHAT_MAX_TOKENS: usize = 256;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// GGUF file or Hugging Face folder.
    pub model: Option<PathBuf>,
    /// Folder with tokenizer.json to use instead of the model's own tokenizer.
    pub tokenizer: Option<PathBuf>,
    /// Where the forward pass runs: `cpu`, `cuda` or `cuda:N`; default: the CPU.
    #[serde(with = "device_text")]
    pub device: Option<Device>,
    /// Worker threads; default: the number of physical cores.
    pub threads: Option<usize>,
    /// Context length in tokens (KV cache size); default: the model's trained context.
    pub ctx_size: Option<usize>,
    /// Tokens per prompt-processing batch; default [`DEFAULT_BATCH_SIZE`].
    pub batch_size: Option<usize>,
    /// Tokens to generate at most; default [`DEFAULT_MAX_TOKENS`] ([`DEFAULT_CHAT_MAX_TOKENS`]
    /// in chat).
    pub max_tokens: Option<usize>,
    /// KV cache element type: f16 or f32.
    pub kv_type: Option<KvType>,
    /// Use the weights from the file mapping where their layout allows instead of copying them
    /// into huge pages (default false: faster decoding; true: faster start, shared page cache).
    pub mmap: Option<bool>,
    pub sampling: SamplingOverrides,
}

/// Sampling fields that may be left unset at any layer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingOverrides {
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<usize>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<u64>,
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

macro_rules! overlay {
    ($dst:expr, $src:expr, $($f:ident),*) => { $( if $src.$f.is_some() { $dst.$f = $src.$f.clone(); } )* };
}

impl Settings {
    pub fn from_toml_str(text: &str) -> Result<Settings> {
        toml::from_str(text).map_err(|e| EngineError::Settings(format!("config file: {e}")))
    }

    /// Errors name the file once: "invalid setting: PATH: ...", not the text parser's
    /// "config file" prefix inside it again.
    pub fn from_toml_file(path: &Path) -> Result<Settings> {
        let text = bitnet_common::read_regular_to_string(path)
            .map_err(|e| EngineError::Settings(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| EngineError::Settings(format!("{}: {e}", path.display())))
    }

    /// The batch size with the default filled in.
    pub fn batch_size_or_default(&self) -> usize {
        self.batch_size.unwrap_or(DEFAULT_BATCH_SIZE)
    }

    /// The generation limit with `default` ([`DEFAULT_MAX_TOKENS`] or
    /// [`DEFAULT_CHAT_MAX_TOKENS`]) filled in.
    pub fn max_tokens_or(&self, default: usize) -> usize {
        self.max_tokens.unwrap_or(default)
    }

    /// Reads `BITNET_MODEL`, `BITNET_THREADS`, `BITNET_CTX_SIZE`, `BITNET_TEMPERATURE`, ... (the
    /// field names upper-cased); malformed values are errors, not silently ignored.
    pub fn from_env_vars(vars: impl Iterator<Item = (String, String)>) -> Result<Settings> {
        let mut s = Settings::default();
        for (k, v) in vars {
            let Some(name) = k.strip_prefix("BITNET_") else {
                continue;
            };
            let bad = |e: &dyn std::fmt::Display| EngineError::Settings(format!("{k}={v}: {e}"));
            let sp = &mut s.sampling;
            match name {
                "MODEL" => s.model = Some(v.clone().into()),
                "TOKENIZER" => s.tokenizer = Some(v.clone().into()),
                "DEVICE" => s.device = Some(Device::parse(&v).map_err(|e| bad(&e))?),
                "THREADS" => s.threads = Some(v.parse().map_err(|e| bad(&e))?),
                "CTX_SIZE" => s.ctx_size = Some(v.parse().map_err(|e| bad(&e))?),
                "BATCH_SIZE" => s.batch_size = Some(v.parse().map_err(|e| bad(&e))?),
                "MAX_TOKENS" => s.max_tokens = Some(v.parse().map_err(|e| bad(&e))?),
                "MMAP" => {
                    s.mmap = Some(parse_bool(&v).ok_or_else(|| bad(&"expected 0/1/true/false"))?)
                }
                "KV_TYPE" => {
                    s.kv_type = Some(KvType::parse(&v).ok_or_else(|| bad(&"expected f16 or f32"))?)
                }
                "TEMPERATURE" => sp.temperature = Some(v.parse().map_err(|e| bad(&e))?),
                "TOP_K" => sp.top_k = Some(v.parse().map_err(|e| bad(&e))?),
                "TOP_P" => sp.top_p = Some(v.parse().map_err(|e| bad(&e))?),
                "MIN_P" => sp.min_p = Some(v.parse().map_err(|e| bad(&e))?),
                "REPEAT_PENALTY" => sp.repeat_penalty = Some(v.parse().map_err(|e| bad(&e))?),
                "REPEAT_LAST_N" => sp.repeat_last_n = Some(v.parse().map_err(|e| bad(&e))?),
                "PRESENCE_PENALTY" => sp.presence_penalty = Some(v.parse().map_err(|e| bad(&e))?),
                "FREQUENCY_PENALTY" => sp.frequency_penalty = Some(v.parse().map_err(|e| bad(&e))?),
                "SEED" => sp.seed = Some(v.parse().map_err(|e| bad(&e))?),
                // Other BITNET_* variables (BITNET_CONFIG, BITNET_FORCE_SCALAR, ...) belong to
                // other layers.
                _ => {}
            }
        }
        Ok(s)
    }

    /// `self` with every value that `over` sets replaced.
    pub fn overlay(mut self, over: &Settings) -> Settings {
        overlay!(
            self, over, model, tokenizer, device, threads, ctx_size, batch_size, max_tokens,
            kv_type, mmap
        );
        overlay!(
            self.sampling,
            over.sampling,
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty,
            repeat_last_n,
            presence_penalty,
            frequency_penalty,
            seed
        );
        self
    }

    /// Sampling parameters with defaults filled in.
    pub fn sampling_params(&self) -> SamplingParams {
        let d = SamplingParams::default();
        let o = &self.sampling;
        SamplingParams {
            temperature: o.temperature.unwrap_or(d.temperature),
            top_k: o.top_k.unwrap_or(d.top_k),
            top_p: o.top_p.unwrap_or(d.top_p),
            min_p: o.min_p.unwrap_or(d.min_p),
            repeat_penalty: o.repeat_penalty.unwrap_or(d.repeat_penalty),
            repeat_last_n: o.repeat_last_n.unwrap_or(d.repeat_last_n),
            presence_penalty: o.presence_penalty.unwrap_or(d.presence_penalty),
            frequency_penalty: o.frequency_penalty.unwrap_or(d.frequency_penalty),
            seed: o.seed,
        }
    }
}

/// `device = "cuda:1"` in the TOML file: the same spelling as `--device` and `BITNET_DEVICE`.
mod device_text {
    use bitnet_backend::Device;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Device>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Device>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| Device::parse(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Physical cores: hyper-threads share the core's memory bandwidth and SIMD units, and decode
/// is bandwidth-bound, so extra logical threads only add synchronisation. Not
/// `num_cpus::get_physical`: no crate in the tree counts physical cores (num_cpus would be new
/// for these 30 lines), and the count here is capped by `available_parallelism`, which honours
/// the process's CPU affinity and cgroup quota.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    #[cfg(target_os = "linux")]
    if let Ok(text) = std::fs::read_to_string("/proc/cpuinfo") {
        let mut cores = std::collections::HashSet::new();
        let (mut phys, mut core) = (None, None);
        for line in text.lines().chain(std::iter::once("")) {
            if line.trim().is_empty() {
                if let (Some(p), Some(c)) = (phys.take(), core.take()) {
                    cores.insert((p, c));
                }
                continue;
            }
            let mut kv = line.splitn(2, ':');
            let (k, v) = (
                kv.next().unwrap_or("").trim(),
                kv.next().unwrap_or("").trim(),
            );
            match k {
                "physical id" => phys = Some(v.to_string()),
                "core id" => core = Some(v.to_string()),
                _ => {}
            }
        }
        if !cores.is_empty() {
            return cores.len().min(logical);
        }
    }
    logical
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_is_flags_then_env_then_file() {
        let file = Settings::from_toml_str(
            "threads = 3\nctx_size = 256\n[sampling]\ntemperature = 0.5\ntop_k = 7\n",
        )
        .unwrap();
        let env = Settings::from_env_vars(
            [
                ("BITNET_THREADS", "5"),
                ("BITNET_TOP_K", "9"),
                ("PATH", "/bin"),
            ]
            .into_iter()
            .map(|(a, b)| (a.into(), b.into())),
        )
        .unwrap();
        let flags = Settings {
            threads: Some(1),
            ..Default::default()
        };
        let s = Settings::default()
            .overlay(&file)
            .overlay(&env)
            .overlay(&flags);
        assert_eq!(s.threads, Some(1));
        assert_eq!(s.ctx_size, Some(256));
        assert_eq!(s.sampling.top_k, Some(9));
        let p = s.sampling_params();
        assert_eq!(
            (p.temperature, p.top_k, p.top_p),
            (0.5, 9, SamplingParams::default().top_p)
        );
    }

    #[test]
    fn file_errors_name_the_file_once() {
        let dir = std::env::temp_dir().join(format!("bitnet-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("bad.toml");
        std::fs::write(&f, "max_tokenz = 3\n").unwrap();
        let e = Settings::from_toml_file(&f).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(e.matches("invalid setting").count(), 1, "{e}");
        assert!(!e.contains("config file"), "{e}");
        assert!(e.contains("bad.toml") && e.contains("max_tokenz"), "{e}");
    }

    #[test]
    fn defaults_fill_unset_values() {
        let s = Settings::default();
        assert_eq!(s.batch_size_or_default(), DEFAULT_BATCH_SIZE);
        assert_eq!(s.max_tokens_or(DEFAULT_MAX_TOKENS), DEFAULT_MAX_TOKENS);
        let s = Settings {
            batch_size: Some(7),
            max_tokens: Some(3),
            ..Default::default()
        };
        assert_eq!(
            (
                s.batch_size_or_default(),
                s.max_tokens_or(DEFAULT_MAX_TOKENS)
            ),
            (7, 3)
        );
    }

    #[test]
    fn device_comes_from_every_layer() {
        let file = Settings::from_toml_str("device = \"cuda:1\"\n").unwrap();
        assert_eq!(file.device, Some(Device::Cuda(1)));
        let env = Settings::from_env_vars(std::iter::once(("BITNET_DEVICE".into(), "cpu".into())))
            .unwrap();
        assert_eq!(file.overlay(&env).device, Some(Device::Cpu));
        let e = Settings::from_toml_str("device = \"tpu\"").unwrap_err();
        assert!(
            e.to_string().contains("expected cpu, cuda or cuda:N"),
            "{e}"
        );
        let e = Settings::from_env_vars(std::iter::once(("BITNET_DEVICE".into(), "gpu:x".into())))
            .unwrap_err();
        assert!(e.to_string().contains("BITNET_DEVICE=gpu:x"), "{e}");
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(Settings::from_toml_str("thread = 3").is_err());
        let e = Settings::from_env_vars(std::iter::once(("BITNET_THREADS".into(), "many".into())))
            .unwrap_err();
        assert!(e.to_string().contains("BITNET_THREADS=many"), "{e}");
        assert!(physical_cores() >= 1);
    }
}
