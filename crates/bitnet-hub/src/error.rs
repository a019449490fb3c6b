//! What can go wrong talking to the Hub, sorted by what the user can do about it. The CLI maps
//! each kind to its own exit code (see [`HubError::exit_code`]).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("bad model reference {0:?}: {1}")]
    BadReference(String, String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("{what}: not in the cache ({cache}) and HF_HUB_OFFLINE is set")]
    NotCached { what: String, cache: PathBuf },
    #[error("unauthorized ({status}) for {url}: {hint}")]
    Unauthorized {
        status: u16,
        url: String,
        hint: &'static str,
    },
    #[error("rate limited by {url} (429) after {attempts} attempts{}", retry_after.map(|s| format!("; the server asks to wait {s}s")).unwrap_or_default())]
    RateLimited {
        url: String,
        attempts: u32,
        retry_after: Option<u64>,
    },
    #[error("{file}: checksum mismatch: the Hub reports sha256 {expected}, the download has {actual}; nothing was kept")]
    ChecksumMismatch {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("disk full writing {path}")]
    DiskFull {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: server error {status} after {attempts} attempts")]
    Server {
        url: String,
        status: u16,
        attempts: u32,
    },
    #[error("{url}: {message}")]
    Network { url: String, message: String },
    #[error("{url}: unexpected answer: {message}")]
    Protocol { url: String, message: String },
    // The cause follows through `source` (anyhow prints "path: cause").
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl HubError {
    /// The CLI's exit code for this error (1 failure, 2 usage and 3/4 model and input codes are
    /// the CLI's own): 5 not found (or not cached while offline), 6 unauthorized, 7 rate
    /// limited, 8 checksum mismatch, 9 disk full; network, server and other errors are 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            HubError::BadReference(..) => 2,
            HubError::NotFound(_) | HubError::NotCached { .. } => 5,
            HubError::Unauthorized { .. } => 6,
            HubError::RateLimited { .. } => 7,
            HubError::ChecksumMismatch { .. } => 8,
            HubError::DiskFull { .. } => 9,
            HubError::Server { .. }
            | HubError::Network { .. }
            | HubError::Protocol { .. }
            | HubError::Io { .. } => 1,
        }
    }

    /// Wraps a file-system error, singling out a full disk (ENOSPC, or EDQUOT for a quota).
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> HubError {
        let path = path.into();
        let full = source.kind() == std::io::ErrorKind::StorageFull
            || source.kind() == std::io::ErrorKind::QuotaExceeded;
        if full {
            HubError::DiskFull { path, source }
        } else {
            HubError::Io { path, source }
        }
    }
}

pub type Result<T> = std::result::Result<T, HubError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_told_apart_from_other_write_errors() {
        // ENOSPC is 28 on Linux and macOS alike.
        let full = HubError::io("/x", std::io::Error::from_raw_os_error(28));
        assert!(matches!(full, HubError::DiskFull { .. }), "{full:?}");
        assert_eq!(full.exit_code(), 9);
        let denied = HubError::io("/x", std::io::Error::from_raw_os_error(13));
        assert!(matches!(denied, HubError::Io { .. }), "{denied:?}");
        assert_eq!(denied.exit_code(), 1);
    }
}
