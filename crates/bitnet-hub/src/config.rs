//! Where the Hub is, who we are to it, and where its files go: the variables `huggingface_hub`
//! reads, with its defaults, so a model pulled here is found by Python tools and vice versa.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

#[derive(Debug, Clone)]
pub struct HubConfig {
    /// `HF_ENDPOINT`, without a trailing slash.
    pub endpoint: String,
    /// `HF_TOKEN`, else the token file `huggingface-cli login` writes (`$HF_HOME/token`).
    pub token: Option<String>,
    /// `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
    /// `~/.cache/huggingface/hub`.
    pub cache: PathBuf,
    /// `HF_HUB_OFFLINE`: answer from the cache only, never touch the network.
    pub offline: bool,
    /// Give up on a connection, or on a transfer that sends nothing, after this long
    /// (`HF_HUB_DOWNLOAD_TIMEOUT` seconds, as in `huggingface_hub`; default 10).
    pub timeout: Duration,
    /// Attempts per request when the server is busy (429, 5xx) or the connection drops; a
    /// dropped transfer resumes where it stopped (`BITNET_HUB_MAX_RETRIES`, default 5).
    pub max_attempts: u32,
    /// First back-off wait; it doubles per attempt. A `Retry-After` from the server wins.
    pub backoff: Duration,
    /// The longest `Retry-After` worth waiting for; a longer one fails at once with the wait named.
    pub max_retry_after: Duration,
    /// Draw a progress bar (the CLI turns it on only when stderr is a terminal).
    pub progress: bool,
}

impl HubConfig {
    /// The configuration the environment describes.
    pub fn from_env() -> HubConfig {
        HubConfig::from_vars(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// As [`HubConfig::from_env`], reading variables through `var` (tests pass a map).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> HubConfig {
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|h| Path::new(&h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"))
                .join("huggingface")
        });
        let cache = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token = var("HF_TOKEN").or_else(|| {
            let path = var("HF_TOKEN_PATH")
                .map(PathBuf::from)
                .unwrap_or_else(|| hf_home.join("token"));
            std::fs::read_to_string(path)
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
        });
        let endpoint = var("HF_ENDPOINT")
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned())
            .trim_end_matches('/')
            .to_owned();
        let truthy = |k: &str| {
            var(k).is_some_and(|v| {
                matches!(v.to_ascii_lowercase().as_str(), "1" | "on" | "yes" | "true")
            })
        };
        let timeout = var("HF_HUB_DOWNLOAD_TIMEOUT")
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64)
            .unwrap_or(Duration::from_secs(10));
        let max_attempts = var("BITNET_HUB_MAX_RETRIES")
            .and_then(|v| v.parse::<u32>().ok())
            .map(|r| r.saturating_add(1))
            .unwrap_or(6);
        HubConfig {
            endpoint,
            token,
            cache,
            offline: truthy("HF_HUB_OFFLINE"),
            timeout,
            max_attempts,
            backoff: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(60),
            progress: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> HubConfig {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HubConfig::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn cache_follows_huggingface_hub_precedence() {
        assert_eq!(
            cfg(&[("HOME", "/h")]).cache,
            Path::new("/h/.cache/huggingface/hub")
        );
        assert_eq!(
            cfg(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x")]).cache,
            Path::new("/x/huggingface/hub")
        );
        assert_eq!(
            cfg(&[("HOME", "/h"), ("HF_HOME", "/hf")]).cache,
            Path::new("/hf/hub")
        );
        assert_eq!(
            cfg(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/c")]).cache,
            Path::new("/c")
        );
    }

    #[test]
    fn endpoint_token_offline_and_timeouts() {
        let c = cfg(&[
            ("HF_ENDPOINT", "http://127.0.0.1:9/"),
            ("HF_TOKEN", "hf_x"),
            ("HF_HUB_OFFLINE", "1"),
            ("HF_HUB_DOWNLOAD_TIMEOUT", "2.5"),
            ("BITNET_HUB_MAX_RETRIES", "0"),
        ]);
        assert_eq!(c.endpoint, "http://127.0.0.1:9");
        assert_eq!(c.token.as_deref(), Some("hf_x"));
        assert!(c.offline);
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(c.max_attempts, 1);
        let d = cfg(&[("HF_HUB_OFFLINE", "0"), ("HF_HOME", "/nonexistent")]);
        assert_eq!(d.endpoint, DEFAULT_ENDPOINT);
        assert!(!d.offline);
        assert_eq!(d.token, None);
    }

    #[test]
    fn token_file_is_read_when_no_variable_is_set() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "hf_file\n").unwrap();
        let c = cfg(&[("HF_HOME", dir.path().to_str().unwrap())]);
        assert_eq!(c.token.as_deref(), Some("hf_file"));
    }
}
