//! Models from the Hugging Face Hub, into the cache layout `huggingface_hub` uses, so each
//! tool finds what the other pulled.
//!
//! Written on ureq rather than with the `hf-hub` crate: `hf-hub` 1.0 is async over reqwest 0.13
//! and Xet (a second HTTP stack and runtime in this workspace), restarts an interrupted download
//! from byte 0 instead of resuming it, does not check the SHA-256 the Hub reports, and its
//! errors do not separate what the CLI's exit codes must (missing, unauthorized, rate limited,
//! corrupt, disk full). What the Hub API needs here is small: one listing call, a `HEAD` and a
//! `GET` per file.
//!
//! ```no_run
//! let hub = bitnet_hub::Hub::new(bitnet_hub::HubConfig::from_env());
//! let r = bitnet_hub::ModelRef::parse("owner/model-gguf:tq2_0")?;
//! let pulled = hub.pull(&r)?;
//! println!("{}", pulled.path.display());
//! # Ok::<(), bitnet_hub::HubError>(())
//! ```

pub mod cache;
mod config;
mod download;
mod error;
mod http;
mod model_ref;
mod progress;
mod select;

pub use config::{HubConfig, DEFAULT_ENDPOINT};
pub use error::{HubError, Result};
pub use model_ref::{ModelRef, URI_SCHEME};
pub use select::{select, Selection};

use http::{Client, Method};
use model_ref::encode_segment;
use std::path::PathBuf;

/// A model present in the cache.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The GGUF file, or the snapshot folder of a checkpoint.
    pub path: PathBuf,
    pub commit: String,
    pub files: Vec<String>,
    /// Answered from the cache without asking the Hub (offline, or the Hub unreachable).
    pub from_cache: bool,
}

pub struct Hub {
    client: Client,
}

#[derive(serde::Deserialize)]
struct RepoInfo {
    sha: String,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(serde::Deserialize)]
struct Sibling {
    rfilename: String,
}

impl Hub {
    pub fn new(cfg: HubConfig) -> Hub {
        Hub {
            client: Client::new(&cfg),
        }
    }

    pub fn config(&self) -> &HubConfig {
        self.client.cfg()
    }

    /// Downloads what `r` names (or finds it in the cache) and returns where it is.
    pub fn pull(&self, r: &ModelRef) -> Result<Pulled> {
        if self.config().offline {
            return self.cached(r)?.ok_or_else(|| HubError::NotCached {
                what: r.to_string(),
                cache: self.config().cache.clone(),
            });
        }
        let info = match self.repo_info(r) {
            Ok(i) => i,
            // As `huggingface_hub` does: with the Hub out of reach, what was pulled before works.
            Err(e @ (HubError::Network { .. } | HubError::Server { .. })) => {
                return match self.cached(r)? {
                    Some(p) => {
                        eprintln!("warning: {e}; using the cached {r}");
                        Ok(p)
                    }
                    None => Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        if !cache::is_commit(&info.sha) {
            return Err(HubError::Protocol {
                url: self.config().endpoint.clone(),
                message: format!("commit {:?} is not a git sha", info.sha),
            });
        }
        let names: Vec<String> = info
            .siblings
            .into_iter()
            .map(|s| s.rfilename)
            .filter(|f| model_ref::check_file(f).is_ok())
            .collect();
        let selection = select(&names, r.file.as_deref(), &r.repo)?;
        let dir = cache::repo_dir(&self.config().cache, &r.repo);
        cache::write_ref(&dir, &r.revision, &info.sha)?;
        let files = selection.files();
        let mut paths = Vec::with_capacity(files.len());
        for f in &files {
            let meta = download::metadata(&self.client, &r.repo, &info.sha, f)?;
            paths.push(download::fetch(&self.client, &dir, &info.sha, f, &meta)?);
        }
        let path = match selection {
            Selection::Gguf(_) => paths.swap_remove(0),
            Selection::Folder(_) => dir.join("snapshots").join(&info.sha),
        };
        Ok(Pulled {
            path,
            commit: info.sha,
            files,
            from_cache: false,
        })
    }

    fn repo_info(&self, r: &ModelRef) -> Result<RepoInfo> {
        let url = format!(
            "{}/api/models/{}/revision/{}",
            self.config().endpoint,
            r.repo,
            encode_segment(&r.revision)
        );
        let what = format!("model {} at revision {}", r.repo, r.revision);
        let resp = self.client.send(Method::Get, &url, 0, &what)?;
        if !(200..300).contains(&resp.status().as_u16()) {
            return Err(HubError::Protocol {
                url,
                message: format!("HTTP status {} for the file listing", resp.status()),
            });
        }
        // A listing of a large repository is well under this; a larger answer is not the Hub.
        let text = resp
            .into_body()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| HubError::Network {
                url: url.clone(),
                message: e.to_string(),
            })?;
        serde_json::from_str(&text).map_err(|e| HubError::Protocol {
            url,
            message: format!("file listing: {e}"),
        })
    }

    /// The snapshot the cache holds for `r`, when it holds every file the selection needs.
    fn cached(&self, r: &ModelRef) -> Result<Option<Pulled>> {
        let dir = cache::repo_dir(&self.config().cache, &r.repo);
        let Some(commit) = cache::read_ref(&dir, &r.revision) else {
            return Ok(None);
        };
        let snapshot = dir.join("snapshots").join(&commit);
        let present = cache::snapshot_files(&snapshot);
        let Ok(selection) = select(&present, r.file.as_deref(), &r.repo) else {
            return Ok(None);
        };
        let files = selection.files();
        let path = match selection {
            Selection::Gguf(f) => snapshot.join(f),
            Selection::Folder(_) => snapshot,
        };
        Ok(Some(Pulled {
            path,
            commit,
            files,
            from_cache: true,
        }))
    }
}
