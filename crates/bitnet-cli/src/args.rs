//! Flags shared by the subcommands, and how they combine with `BITNET_*` variables and the
//! TOML config file into one [`Settings`].

use anyhow::Result;
use bitnet_inference::settings::{SamplingOverrides, Settings};
use clap::Args;
use std::path::{Path, PathBuf};

/// Where the model comes from: the flags every model command takes, `tokenize` included.
#[derive(Args, Debug, Clone, Default)]
pub struct ModelSourceArgs {
    /// GGUF file, Hugging Face folder (or a .safetensors/config.json file in one), or hf://owner/name[@revision][:FILE] to pull from the Hub [env: BITNET_MODEL] [default: the KJV demo model built into the binary]
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
    /// TOML settings file (same keys as the flags, snake_case; sampling keys under [sampling]) [env: BITNET_CONFIG]
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// The model and how it runs: the flags of the commands that evaluate it.
#[derive(Args, Debug, Clone, Default)]
pub struct ModelArgs {
    #[command(flatten)]
    pub source: ModelSourceArgs,
    /// Worker threads [env: BITNET_THREADS] [default: physical cores]
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// Context size in tokens (KV cache); above the model's trained context it warns, and it
    /// must fit the available memory and `ulimit -v` [env: BITNET_CTX_SIZE] [default: the model's]
    #[arg(short, long = "ctx-size")]
    pub ctx_size: Option<usize>,
    #[arg(short, long = "batch-size", help = help::batch_size())]
    pub batch_size: Option<usize>,
    #[arg(long = "kv-type", value_parser = parse_kv_type, help = help::kv_type())]
    pub kv_type: Option<bitnet_inference::KvType>,
    #[command(flatten)]
    pub placement: PlacementArgs,
}

/// Where the weights go and the forward pass runs (`--device`, `-ngl`, `--mmap`), shared by
/// [`ModelArgs`] and `bench`.
#[derive(Args, Debug, Clone, Default)]
pub struct PlacementArgs {
    /// Use the weights in place from the file mapping (faster start) instead of copying them into huge pages (faster decoding); the file must not be modified while it runs (a truncated mapping ends the process with exit code 3) [env: BITNET_MMAP]
    #[arg(long)]
    pub mmap: bool,
    /// Copy the weights out of the file mapping (the default; as llama.cpp's --no-mmap, and it
    /// overrides BITNET_MMAP=1 or `mmap = true` in the config file)
    #[arg(long = "no-mmap", conflicts_with = "mmap")]
    pub no_mmap: bool,
    /// Model layers to put on a GPU (llama.cpp's -ngl): any N > 0 runs every layer on the GPU
    /// (as --device cuda, unless --device says otherwise); partial offload is not supported
    #[arg(long = "n-gpu-layers", visible_alias = "gpu-layers", value_name = "N")]
    pub n_gpu_layers: Option<u32>,
    /// Where the forward pass runs: cpu, cuda (GPU 0) or cuda:N; a GPU that cannot be used is an error, never a silent run on the CPU [env: BITNET_DEVICE] [default: cpu]
    #[arg(long, value_name = "DEVICE", value_parser = bitnet_inference::Device::parse)]
    pub device: Option<bitnet_inference::Device>,
}

impl PlacementArgs {
    /// The flags' say on `mmap`: `None` leaves it to the environment and the config file.
    fn mmap(&self) -> Option<bool> {
        (self.mmap || self.no_mmap).then_some(self.mmap)
    }

    /// The flags' say on the device: `--device`, else `-ngl N` with N > 0 means the first GPU.
    fn device(&self) -> Option<bitnet_inference::Device> {
        self.device.or_else(|| {
            self.n_gpu_layers
                .filter(|&n| n > 0)
                .map(|_| bitnet_inference::Device::Cuda(0))
        })
    }
}

#[derive(Args, Debug, Clone, Default)]
pub struct SamplingArgs {
    #[arg(long = "temp", alias = "temperature", help = help::temperature())]
    pub temperature: Option<f32>,
    #[arg(long = "top-k", help = help::top_k())]
    pub top_k: Option<usize>,
    #[arg(long = "top-p", help = help::top_p())]
    pub top_p: Option<f32>,
    #[arg(long = "min-p", help = help::min_p())]
    pub min_p: Option<f32>,
    #[arg(long = "repeat-penalty", help = help::repeat_penalty())]
    pub repeat_penalty: Option<f32>,
    #[arg(long = "repeat-last-n", help = help::repeat_last_n())]
    pub repeat_last_n: Option<usize>,
    #[arg(long = "presence-penalty", help = help::presence_penalty())]
    pub presence_penalty: Option<f32>,
    #[arg(long = "frequency-penalty", help = help::frequency_penalty())]
    pub frequency_penalty: Option<f32>,
    /// Random seed for reproducible sampling [env: BITNET_SEED] [default: from the clock]
    #[arg(short, long)]
    pub seed: Option<u64>,
    #[arg(short = 'n', long = "max-tokens", alias = "n-predict", help = help::max_tokens())]
    pub max_tokens: Option<usize>,
}

/// Help texts that show a default, built from the one place each default lives
/// ([`Settings`]' constants and `SamplingParams::default()`), so `--help` cannot drift from
/// what the engine does.
pub mod help {
    use bitnet_inference::settings::{
        Settings, DEFAULT_BATCH_SIZE, DEFAULT_CHAT_MAX_TOKENS, DEFAULT_MAX_TOKENS,
    };
    use bitnet_inference::{KvType, SamplingParams};

    fn sampling() -> SamplingParams {
        Settings::default().sampling_params()
    }

    pub fn batch_size() -> String {
        format!("Prompt tokens per batch [env: BITNET_BATCH_SIZE] [default: {DEFAULT_BATCH_SIZE}]")
    }
    pub fn bench_batch_size() -> String {
        format!(
            "Prompt tokens per batch in the pp tests, as llama-bench's -b [env: BITNET_BATCH_SIZE] [default: {DEFAULT_BATCH_SIZE}]"
        )
    }
    pub fn kv_type() -> String {
        format!(
            "KV cache type: f16 or f32 [env: BITNET_KV_TYPE] [default: {}]",
            format!("{:?}", KvType::default()).to_ascii_lowercase()
        )
    }
    pub fn temperature() -> String {
        format!(
            "Temperature; 0 = greedy [env: BITNET_TEMPERATURE] [default: {}]",
            sampling().temperature
        )
    }
    pub fn top_k() -> String {
        format!(
            "Top-k; 0 = off [env: BITNET_TOP_K] [default: {}]",
            sampling().top_k
        )
    }
    pub fn top_p() -> String {
        format!(
            "Top-p (nucleus); 1 = off [env: BITNET_TOP_P] [default: {}]",
            sampling().top_p
        )
    }
    pub fn min_p() -> String {
        format!(
            "Min-p; 0 = off [env: BITNET_MIN_P] [default: {}]",
            sampling().min_p
        )
    }
    pub fn repeat_penalty() -> String {
        format!(
            "Repetition penalty; 1 = off [env: BITNET_REPEAT_PENALTY] [default: {}]",
            sampling().repeat_penalty
        )
    }
    pub fn repeat_last_n() -> String {
        format!(
            "Tokens the repetition penalty looks back over [env: BITNET_REPEAT_LAST_N] [default: {}]",
            sampling().repeat_last_n
        )
    }
    pub fn presence_penalty() -> String {
        format!(
            "Presence penalty (OpenAI semantics) [env: BITNET_PRESENCE_PENALTY] [default: {}]",
            sampling().presence_penalty
        )
    }
    pub fn frequency_penalty() -> String {
        format!(
            "Frequency penalty (OpenAI semantics) [env: BITNET_FREQUENCY_PENALTY] [default: {}]",
            sampling().frequency_penalty
        )
    }
    pub fn max_tokens() -> String {
        format!(
            "Maximum tokens to generate (per answer in chat) [env: BITNET_MAX_TOKENS] [default: {DEFAULT_MAX_TOKENS}; chat: {DEFAULT_CHAT_MAX_TOKENS}]"
        )
    }
}

/// Defaults < TOML file < environment < flags.
///
/// Why not clap's `env` attribute for the `BITNET_*` variables: it fills the flag's own field,
/// so an environment value could no longer be told from a flag, and for the `--mmap` switch
/// `BITNET_MMAP=0` would read as "flag absent" and let a config file's `mmap = true` win,
/// breaking environment > file. `Settings::from_env_vars` keeps every variable a layer of its
/// own, with errors that name the variable and its value.
pub fn resolve(model: &ModelArgs, sampling: Option<&SamplingArgs>) -> Result<Settings> {
    let s = resolve_layers(model, sampling)?;
    // A device this build cannot drive is refused before anything is read or loaded.
    bitnet_inference::check_device(s.device.unwrap_or_default())?;
    Ok(s)
}

fn resolve_layers(model: &ModelArgs, sampling: Option<&SamplingArgs>) -> Result<Settings> {
    let src = &model.source;
    let config_path = src
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
        model: src.model.clone(),
        tokenizer: src.tokenizer.clone(),
        device: model.placement.device(),
        threads: model.threads,
        ctx_size: model.ctx_size,
        batch_size: model.batch_size,
        kv_type: model.kv_type,
        mmap: model.placement.mmap(),
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
    if let Some(repo) = &src.hf_repo {
        let mut r = bitnet_hub::ModelRef::parse(repo)?;
        if let Some(f) = &src.hf_file {
            r.file = Some(f.clone());
        }
        out.model = Some(crate::hub::fetch(&r)?);
    } else if let Some(m) = &out.model {
        out.model = Some(model_location(&crate::hub::local(m)?)?);
    }
    crate::validate::settings(&out)?;
    Ok(out)
}

/// Settings for a command that only reads the model (`tokenize`): no runtime flags, and no
/// device (a `BITNET_DEVICE` meant for the commands that run the model does not concern it).
pub fn resolve_source(src: &ModelSourceArgs) -> Result<Settings> {
    resolve_layers(
        &ModelArgs {
            source: src.clone(),
            ..Default::default()
        },
        None,
    )
}

/// The model a path names. A file inside a Hugging Face checkpoint folder (`model.safetensors`,
/// a shard, its index, `config.json`) names the folder: the weights alone cannot be loaded
/// without the config and tokenizer beside them, and the GGUF reader would only say "not a
/// GGUF file".
pub fn model_location(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let in_checkpoint = name.ends_with(".safetensors")
        || name.ends_with(".safetensors.index.json")
        || name == "config.json";
    if !in_checkpoint || !path.is_file() {
        return Ok(path.to_owned());
    }
    let dir = match path.parent() {
        Some(d) if d.as_os_str().is_empty() => Path::new("."),
        Some(d) => d,
        None => return Ok(path.to_owned()),
    };
    if !dir.join("config.json").is_file() {
        return Err(bitnet_models::ModelError::Config(format!(
            "{} is a Hugging Face checkpoint file, but its folder {} has no config.json; name a \
             GGUF file or a complete checkpoint folder",
            path.display(),
            dir.display()
        ))
        .into());
    }
    Ok(dir.to_owned())
}

pub fn parse_kv_type(s: &str) -> std::result::Result<bitnet_inference::KvType, String> {
    bitnet_inference::KvType::parse(s)
        .ok_or_else(|| format!("unknown KV cache type {s} (f16, f32)"))
}
