//! Flags shared by the subcommands, and how they combine with `BITNET_*` variables and the
//! TOML config file into one [`Settings`].

use anyhow::Result;
use bitnet_inference::settings::{SamplingOverrides, Settings};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug, Clone, Default)]
pub struct ModelArgs {
    /// GGUF file, Hugging Face folder, or hf://owner/name[@revision][:FILE] to pull from the Hub [env: BITNET_MODEL] [default: the KJV demo model built into the binary]
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// Hugging Face repository to pull the model from: owner/name[@revision][:FILE or quantization] (as llama.cpp's -hf)
    #[arg(long = "hf-repo", visible_alias = "hf", conflicts_with = "model")]
    pub hf_repo: Option<String>,
    /// File in --hf-repo, or a quantization name (i2_s, tq2_0, tq1_0) [default: the I2_S GGUF, else TQ2_0, TQ1_0, else the safetensors folder]
    #[arg(long = "hf-file", requires = "hf_repo")]
    pub hf_file: Option<String>,
    /// Folder with tokenizer.json to use instead of the model's own tokenizer [env: BITNET_TOKENIZER]
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Worker threads [env: BITNET_THREADS] [default: physical cores]
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// Context size in tokens (KV cache); above the model's trained context it warns, and it
    /// must fit the available memory and `ulimit -v` [env: BITNET_CTX_SIZE] [default: the model's]
    #[arg(short, long = "ctx-size")]
    pub ctx_size: Option<usize>,
    /// Prompt tokens per batch [env: BITNET_BATCH_SIZE] [default: 512]
    #[arg(short, long = "batch-size")]
    pub batch_size: Option<usize>,
    /// KV cache type: f16 or f32 [env: BITNET_KV_TYPE] [default: f16]
    #[arg(long = "kv-type", value_parser = parse_kv_type)]
    pub kv_type: Option<bitnet_inference::KvType>,
    /// Use the weights in place from the file mapping (faster start) instead of copying them into huge pages (faster decoding); the file must not be modified while it runs (a truncated mapping ends the process with exit code 3) [env: BITNET_MMAP]
    #[arg(long)]
    pub mmap: bool,
    /// TOML settings file (same keys as the flags, snake_case; sampling keys under [sampling]) [env: BITNET_CONFIG]
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct SamplingArgs {
    /// Temperature; 0 = greedy [env: BITNET_TEMPERATURE] [default: 0.8]
    #[arg(long = "temp", alias = "temperature")]
    pub temperature: Option<f32>,
    /// Top-k; 0 = off [env: BITNET_TOP_K] [default: 40]
    #[arg(long = "top-k")]
    pub top_k: Option<usize>,
    /// Top-p (nucleus); 1 = off [env: BITNET_TOP_P] [default: 0.95]
    #[arg(long = "top-p")]
    pub top_p: Option<f32>,
    /// Min-p; 0 = off [env: BITNET_MIN_P] [default: 0.05]
    #[arg(long = "min-p")]
    pub min_p: Option<f32>,
    /// Repetition penalty; 1 = off [env: BITNET_REPEAT_PENALTY] [default: 1.0]
    #[arg(long = "repeat-penalty")]
    pub repeat_penalty: Option<f32>,
    /// Tokens the repetition penalty looks back over [env: BITNET_REPEAT_LAST_N] [default: 64]
    #[arg(long = "repeat-last-n")]
    pub repeat_last_n: Option<usize>,
    /// Presence penalty (OpenAI semantics) [env: BITNET_PRESENCE_PENALTY] [default: 0]
    #[arg(long = "presence-penalty")]
    pub presence_penalty: Option<f32>,
    /// Frequency penalty (OpenAI semantics) [env: BITNET_FREQUENCY_PENALTY] [default: 0]
    #[arg(long = "frequency-penalty")]
    pub frequency_penalty: Option<f32>,
    /// Random seed for reproducible sampling [env: BITNET_SEED]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Maximum tokens to generate [env: BITNET_MAX_TOKENS] [default: 128]
    #[arg(short = 'n', long = "max-tokens", alias = "n-predict")]
    pub max_tokens: Option<usize>,
}

/// Defaults < TOML file < environment < flags.
pub fn resolve(model: &ModelArgs, sampling: Option<&SamplingArgs>) -> Result<Settings> {
    let config_path = model
        .config
        .clone()
        .or_else(|| std::env::var_os("BITNET_CONFIG").map(PathBuf::from));
    let file = match config_path {
        Some(p) => Settings::from_toml_file(&p)?,
        None => Settings::default(),
    };
    // vars_os: a non-UTF-8 variable elsewhere in the environment must not abort the program;
    // a non-UTF-8 BITNET_* value is reported like any other malformed setting.
    let vars = std::env::vars_os().filter_map(|(k, v)| {
        let k = k.into_string().ok()?;
        k.starts_with("BITNET_")
            .then(|| (k, v.to_string_lossy().into_owned()))
    });
    let env = Settings::from_env_vars(vars)?;
    let s = sampling.cloned().unwrap_or_default();
    let flags = Settings {
        model: model.model.clone(),
        tokenizer: model.tokenizer.clone(),
        threads: model.threads,
        ctx_size: model.ctx_size,
        batch_size: model.batch_size,
        kv_type: model.kv_type,
        mmap: model.mmap.then_some(true),
        max_tokens: s.max_tokens,
        sampling: SamplingOverrides {
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            min_p: s.min_p,
            repeat_penalty: s.repeat_penalty,
            repeat_last_n: s.repeat_last_n,
            presence_penalty: s.presence_penalty,
            frequency_penalty: s.frequency_penalty,
            seed: s.seed,
        },
    };
    let mut out = Settings::default()
        .overlay(&file)
        .overlay(&env)
        .overlay(&flags);
    // No model named: `crate::load_model` takes the built-in one.
    if let Some(repo) = &model.hf_repo {
        let mut r = bitnet_hub::ModelRef::parse(repo)?;
        if let Some(f) = &model.hf_file {
            r.file = Some(f.clone());
        }
        out.model = Some(crate::hub::fetch(&r)?);
    } else if let Some(m) = &out.model {
        out.model = Some(crate::hub::local(m)?);
    }
    crate::validate::settings(&out)?;
    Ok(out)
}

fn parse_kv_type(s: &str) -> std::result::Result<bitnet_inference::KvType, String> {
    bitnet_inference::KvType::parse(s)
        .ok_or_else(|| format!("unknown KV cache type {s} (f16, f32)"))
}
