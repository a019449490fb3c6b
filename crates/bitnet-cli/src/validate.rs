//! Settings checked before anything is loaded, so a bad value costs no model load and prints
//! nothing on stdout: out-of-range sampling values, zero or absurd thread and batch counts, an
//! empty model path. These are usage errors (exit code 2), whichever layer (flag, `BITNET_*`
//! variable, config file) set them.

use bitnet_inference::Settings;

pub use bitnet_inference::MAX_THREADS;

/// A bad setting or flag value; `main` exits with code 2 for it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// A thread count in 1..=MAX_THREADS.
pub fn threads(what: &str, n: usize) -> anyhow::Result<()> {
    if n == 0 || n > MAX_THREADS {
        return Err(usage(format!(
            "{what} {n}: must be between 1 and {MAX_THREADS}"
        )));
    }
    Ok(())
}

/// A count that must be at least 1.
pub fn positive(what: &str, n: usize) -> anyhow::Result<()> {
    if n == 0 {
        return Err(usage(format!("{what} must be at least 1")));
    }
    Ok(())
}

/// `convert` writes GGUF only: an output named like another format (`out.safetensors`) would
/// be a GGUF file under a misleading name, so it is refused before anything is loaded.
pub fn gguf_output(path: &std::path::Path) -> anyhow::Result<()> {
    const OTHER_FORMATS: &[&str] = &[
        "safetensors",
        "bin",
        "pt",
        "pth",
        "ckpt",
        "onnx",
        "npz",
        "h5",
        "json",
    ];
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    if let Some(ext) = ext.filter(|e| OTHER_FORMATS.contains(&e.as_str())) {
        return Err(usage(format!(
            "{}: convert writes GGUF only, not .{ext} (there is no {ext} exporter); name the \
             output .gguf",
            path.display()
        )));
    }
    Ok(())
}

pub fn settings(s: &Settings) -> anyhow::Result<()> {
    if s.model.as_ref().is_some_and(|m| m.as_os_str().is_empty()) {
        return Err(usage(
            "the model path is empty (an empty -m or BITNET_MODEL); name a GGUF file or Hugging Face folder",
        ));
    }
    if s.tokenizer
        .as_ref()
        .is_some_and(|t| t.as_os_str().is_empty())
    {
        return Err(usage(
            "the tokenizer path is empty (--tokenizer or BITNET_TOKENIZER)",
        ));
    }
    if let Some(t) = s.threads {
        threads("threads (-t / BITNET_THREADS)", t)?;
    }
    if let Some(b) = s.batch_size {
        positive("batch size (-b / BITNET_BATCH_SIZE)", b)?;
    }
    if let Some(c) = s.ctx_size {
        positive("context size (-c / BITNET_CTX_SIZE)", c)?;
    }
    s.sampling_params()
        .validate()
        .map_err(|e| usage(format!("sampling: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: Settings) -> String {
        settings(&s).unwrap_err().to_string()
    }

    #[test]
    fn bad_values_are_usage_errors_naming_the_setting() {
        settings(&Settings::default()).unwrap();
        assert!(err(Settings {
            threads: Some(0),
            ..Default::default()
        })
        .contains("threads"));
        assert!(err(Settings {
            threads: Some(100_000),
            ..Default::default()
        })
        .contains("1024"));
        assert!(err(Settings {
            batch_size: Some(0),
            ..Default::default()
        })
        .contains("batch size"));
        assert!(err(Settings {
            ctx_size: Some(0),
            ..Default::default()
        })
        .contains("context size"));
        assert!(err(Settings {
            model: Some("".into()),
            ..Default::default()
        })
        .contains("BITNET_MODEL"));
        let mut s = Settings::default();
        s.sampling.top_p = Some(7.0);
        assert!(err(s).contains("top_p"));
        let mut s = Settings::default();
        s.sampling.temperature = Some(f32::NAN);
        assert!(err(s).contains("temperature"));
        let e = settings(&Settings {
            threads: Some(0),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.downcast_ref::<UsageError>().is_some());
    }
}
