//! The Hugging Face cache layout, shared with `huggingface_hub`:
//! `models--owner--name/{blobs/<etag>, snapshots/<commit>/<path> -> ../../blobs/<etag>,
//! refs/<revision> = <commit>}`.

use crate::error::{HubError, Result};
use std::path::{Path, PathBuf};

pub fn repo_dir(cache: &Path, repo: &str) -> PathBuf {
    cache.join(format!("models--{}", repo.replace('/', "--")))
}

/// `<cache>/.locks/models--owner--name`, beside the repository folder `dir`.
pub(crate) fn lock_dir(dir: &Path) -> PathBuf {
    let cache = dir.parent().unwrap_or(dir);
    cache
        .join(".locks")
        .join(dir.file_name().unwrap_or_default())
}

/// A 40-hex-digit git commit: a revision that names a snapshot by itself.
pub fn is_commit(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

pub(crate) fn write_ref(dir: &Path, revision: &str, commit: &str) -> Result<()> {
    if revision == commit {
        return Ok(());
    }
    let path = dir.join("refs").join(revision);
    if std::fs::read_to_string(&path).is_ok_and(|c| c.trim() == commit) {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| HubError::io(parent, e))?;
    }
    // Written aside and renamed, so a reader never sees half a commit id.
    let tmp = unique_sibling(&path);
    std::fs::write(&tmp, commit).map_err(|e| HubError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        HubError::io(&path, e)
    })
}

/// A temporary name beside `path` that no other process or thread uses, so that two pulls of
/// the same model never rename each other's half-made files.
fn unique_sibling(path: &Path) -> PathBuf {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    path.with_file_name(format!(
        ".{}.{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ))
}

/// The commit a revision pointed to when it was last pulled.
pub(crate) fn read_ref(dir: &Path, revision: &str) -> Option<String> {
    if is_commit(revision) {
        return Some(revision.to_ascii_lowercase());
    }
    let c = std::fs::read_to_string(dir.join("refs").join(revision)).ok()?;
    let c = c.trim();
    is_commit(c).then(|| c.to_owned())
}

/// Points `snapshots/<commit>/<file>` at its blob (a relative symlink, as `huggingface_hub`
/// makes; a copy where the platform has no symlinks).
pub(crate) fn link_snapshot(dir: &Path, commit: &str, file: &str, blob: &Path) -> Result<PathBuf> {
    let link = dir.join("snapshots").join(commit).join(file);
    let parent = link.parent().unwrap_or(dir);
    std::fs::create_dir_all(parent).map_err(|e| HubError::io(parent, e))?;
    // Made under a name of its own and renamed over the link: two processes finishing the same
    // file at once both succeed, and a reader never finds the link missing.
    let tmp = unique_sibling(&link);
    make_link(blob, file, &tmp)?;
    std::fs::rename(&tmp, &link).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        HubError::io(&link, e)
    })?;
    Ok(link)
}

fn make_link(blob: &Path, file: &str, link: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        // snapshots/<commit>/a/b/file -> ../../../../blobs/<etag>
        let depth = file.split('/').count() + 1;
        let mut target = PathBuf::new();
        for _ in 0..depth {
            target.push("..");
        }
        target.push("blobs");
        target.push(blob.file_name().unwrap_or_default());
        std::os::unix::fs::symlink(&target, link).map_err(|e| HubError::io(link, e))?;
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        std::fs::copy(blob, link).map_err(|e| HubError::io(link, e))?;
    }
    Ok(())
}

/// Every file of a snapshot whose blob is present, as repository paths.
pub(crate) fn snapshot_files(snapshot: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if p.is_file() {
                if let Some(rel) = p.strip_prefix(root).ok().and_then(|r| r.to_str()) {
                    out.push(rel.replace(std::path::MAIN_SEPARATOR, "/"));
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(snapshot, snapshot, &mut out);
    out.sort();
    out
}

/// One cached repository.
#[derive(Debug, Clone)]
pub struct CachedRepo {
    pub repo: String,
    pub path: PathBuf,
    /// Bytes of its complete blobs (what `rm` frees, partial downloads included in `partial`).
    pub size: u64,
    /// Bytes of unfinished downloads (`blobs/*.incomplete`).
    pub partial: u64,
    /// `revision -> commit` for each ref, and the snapshots present.
    pub refs: Vec<(String, String)>,
    pub snapshots: Vec<String>,
}

/// The repositories in the cache, by name.
pub fn list(cache: &Path) -> Result<Vec<CachedRepo>> {
    let rd = match std::fs::read_dir(cache) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(HubError::io(cache, e)),
    };
    let mut out = Vec::new();
    for entry in rd.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("models--")) else {
            continue;
        };
        let Some((owner, model)) = rest.split_once("--") else {
            continue;
        };
        let path = entry.path();
        let (mut size, mut partial) = (0, 0);
        if let Ok(blobs) = std::fs::read_dir(path.join("blobs")) {
            for b in blobs.flatten() {
                let len = b.metadata().map(|m| m.len()).unwrap_or(0);
                let n = b.file_name();
                let n = n.to_string_lossy();
                if n.ends_with(".incomplete") {
                    partial += len;
                } else {
                    size += len;
                }
            }
        }
        let mut refs = Vec::new();
        collect_refs(&path.join("refs"), "", &mut refs);
        refs.sort();
        let mut snapshots: Vec<String> = std::fs::read_dir(path.join("snapshots"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        snapshots.sort();
        out.push(CachedRepo {
            repo: format!("{owner}/{model}"),
            path,
            size,
            partial,
            refs,
            snapshots,
        });
    }
    out.sort_by(|a, b| a.repo.cmp(&b.repo));
    Ok(out)
}

fn collect_refs(dir: &Path, prefix: &str, out: &mut Vec<(String, String)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = format!("{prefix}{}", e.file_name().to_string_lossy());
        let p = e.path();
        if p.is_dir() {
            collect_refs(&p, &format!("{name}/"), out);
        } else if let Ok(c) = std::fs::read_to_string(&p) {
            out.push((name, c.trim().to_owned()));
        }
    }
}

/// Removes a repository from the cache; returns the bytes freed.
pub fn remove(cache: &Path, repo: &str) -> Result<u64> {
    crate::model_ref::check_repo(repo).map_err(|e| HubError::BadReference(repo.to_owned(), e))?;
    let dir = repo_dir(cache, repo);
    let Some(found) = list(cache)?.into_iter().find(|r| r.path == dir) else {
        return Err(HubError::NotFound(format!(
            "{repo} is not in the cache ({})",
            cache.display()
        )));
    };
    std::fs::remove_dir_all(&dir).map_err(|e| HubError::io(&dir, e))?;
    let _ = std::fs::remove_dir_all(lock_dir(&dir));
    Ok(found.size + found.partial)
}
