//! One file from the Hub into the cache: its metadata from a `HEAD` on the `resolve` URL, then
//! the bytes into `blobs/<etag>.incomplete` under an exclusive lock, resumed with a `Range`
//! request after a drop (in this process or a later one), checked against the size and, for LFS
//! files, the SHA-256 the Hub reports, and only then renamed to `blobs/<etag>`. A model path
//! therefore never points at a partial or unverified file.

use crate::cache;
use crate::error::{HubError, Result};
use crate::http::{header, Client, Method};
use crate::model_ref::encode_path;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// What the Hub says about a file before it is fetched.
#[derive(Debug, Clone)]
pub(crate) struct FileMeta {
    /// `X-Linked-Etag` (an LFS file's SHA-256) or `ETag` (a git blob id), unquoted.
    pub etag: String,
    pub size: Option<u64>,
    /// Where the bytes are: the CDN an LFS file redirects to, or the resolve URL itself.
    pub url: String,
}

impl FileMeta {
    /// An LFS file's ETag is the SHA-256 of its content.
    fn sha256(&self) -> Option<&str> {
        (self.etag.len() == 64 && self.etag.bytes().all(|b| b.is_ascii_hexdigit()))
            .then_some(self.etag.as_str())
    }
}

fn unquote(etag: &str) -> String {
    etag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_owned()
}

pub(crate) fn resolve_url(endpoint: &str, repo: &str, commit: &str, file: &str) -> String {
    format!("{endpoint}/{repo}/resolve/{commit}/{}", encode_path(file))
}

pub(crate) fn metadata(client: &Client, repo: &str, commit: &str, file: &str) -> Result<FileMeta> {
    let mut url = resolve_url(&client.cfg().endpoint, repo, commit, file);
    let what = format!("{file} in {repo} at {commit}");
    // Relative redirects stay on the Hub (a renamed repository); an absolute one is the CDN,
    // and the answer that points there carries the LFS headers.
    for _ in 0..5 {
        let resp = client.send(Method::Head, &url, 0, &what)?;
        let location = header(&resp, "location");
        let status = resp.status().as_u16();
        if (300..400).contains(&status) {
            let Some(loc) = location else {
                return Err(HubError::Protocol {
                    url,
                    message: format!("redirect {status} without Location"),
                });
            };
            if loc.starts_with('/') && header(&resp, "x-linked-etag").is_none() {
                url = Client::absolute(&url, &loc);
                continue;
            }
            let etag = header(&resp, "x-linked-etag").or_else(|| header(&resp, "etag"));
            let size = header(&resp, "x-linked-size").and_then(|s| s.parse().ok());
            return finish_meta(&url, etag, size, Client::absolute(&url, &loc));
        }
        let etag = header(&resp, "x-linked-etag").or_else(|| header(&resp, "etag"));
        let size = header(&resp, "x-linked-size")
            .or_else(|| header(&resp, "content-length"))
            .and_then(|s| s.parse().ok());
        return finish_meta(&url, etag, size, url.clone());
    }
    Err(HubError::Protocol {
        url,
        message: "too many redirects".into(),
    })
}

fn finish_meta(
    url: &str,
    etag: Option<String>,
    size: Option<u64>,
    target: String,
) -> Result<FileMeta> {
    let etag = etag.map(|e| unquote(&e)).filter(|e| {
        // The ETag becomes a file name in blobs/: nothing that could climb out of it.
        !e.is_empty()
            && e.len() <= 128
            && e.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    let Some(etag) = etag else {
        return Err(HubError::Protocol {
            url: url.to_owned(),
            message: "no usable ETag (is HF_ENDPOINT a Hugging Face Hub?)".into(),
        });
    };
    Ok(FileMeta {
        etag,
        size,
        url: target,
    })
}

/// Makes sure `blobs/<etag>` holds the verified file and `snapshots/<commit>/<file>` points
/// at it; returns the snapshot path.
pub(crate) fn fetch(
    client: &Client,
    dir: &Path,
    commit: &str,
    file: &str,
    meta: &FileMeta,
) -> Result<PathBuf> {
    let blobs = dir.join("blobs");
    let blob = blobs.join(&meta.etag);
    if !complete(&blob, meta) {
        std::fs::create_dir_all(&blobs).map_err(|e| HubError::io(&blobs, e))?;
        // Where huggingface_hub keeps its locks (`<cache>/.locks/models--o--n/<etag>.lock`), so
        // the two never write one blob at once. Lock files stay: deleting one while another
        // process waits on it would let a third lock a new file of the same name.
        let locks = cache::lock_dir(dir);
        std::fs::create_dir_all(&locks).map_err(|e| HubError::io(&locks, e))?;
        let lock_path = locks.join(format!("{}.lock", meta.etag));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| HubError::io(&lock_path, e))?;
        // std's advisory lock (flock on Unix, LockFileEx on Windows): the fs4/fd-lock crates
        // are no longer needed since Rust 1.89. Released when `lock` is dropped or the
        // process dies, so a crashed download never blocks the next one.
        if lock.try_lock().is_err() {
            eprintln!("{file}: another process is downloading it; waiting");
            lock.lock().map_err(|e| HubError::io(&lock_path, e))?;
        }
        // The other process may have finished it while we waited.
        if !complete(&blob, meta) {
            download(client, &blobs, file, meta)?;
        }
        drop(lock);
    }
    cache::link_snapshot(dir, commit, file, &blob)
}

fn complete(blob: &Path, meta: &FileMeta) -> bool {
    std::fs::metadata(blob).is_ok_and(|m| m.is_file() && meta.size.is_none_or(|s| m.len() == s))
}

fn download(client: &Client, blobs: &Path, file: &str, meta: &FileMeta) -> Result<()> {
    let part = blobs.join(format!("{}.incomplete", meta.etag));
    let blob = blobs.join(&meta.etag);
    let mut out = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&part)
        .map_err(|e| HubError::io(&part, e))?;
    let bar = crate::progress::bar(client.cfg().progress, file, meta.size);
    let mut failures = 0u32;
    loop {
        let have = out
            .seek(std::io::SeekFrom::End(0))
            .map_err(|e| HubError::io(&part, e))?;
        if meta.size.is_some_and(|s| have > s) {
            truncate(&mut out, &part)?;
            continue;
        }
        if meta.size == Some(have) && have > 0 {
            break;
        }
        bar.set_position(have);
        match transfer(client, &mut out, &part, meta, have, &bar)? {
            Transfer::Done => break,
            Transfer::Dropped { received, why } => {
                // A transfer that moved forward resets the count: a flaky line still finishes
                // a large file, while one that never delivers gives up.
                failures = if received > 0 && meta.size.is_some() {
                    1
                } else {
                    failures + 1
                };
                if failures >= client.cfg().max_attempts {
                    return Err(HubError::Network {
                        url: meta.url.clone(),
                        message: format!("{why}; {failures} attempts in a row without progress (the partial file is kept and the next pull resumes it)"),
                    });
                }
                client.pause(failures, None);
            }
        }
    }
    bar.finish_and_clear();
    out.sync_all().map_err(|e| HubError::io(&part, e))?;
    let len = out.metadata().map_err(|e| HubError::io(&part, e))?.len();
    if let Some(size) = meta.size {
        if len != size {
            let _ = std::fs::remove_file(&part);
            return Err(HubError::Protocol {
                url: meta.url.clone(),
                message: format!("{file}: received {len} bytes, the Hub reported {size}"),
            });
        }
    }
    if let Some(expected) = meta.sha256() {
        let actual = sha256_of(&mut out, &part)?;
        if !actual.eq_ignore_ascii_case(expected) {
            drop(out);
            let _ = std::fs::remove_file(&part);
            return Err(HubError::ChecksumMismatch {
                file: file.to_owned(),
                expected: expected.to_owned(),
                actual,
            });
        }
    }
    drop(out);
    std::fs::rename(&part, &blob).map_err(|e| HubError::io(&blob, e))
}

enum Transfer {
    Done,
    Dropped { received: u64, why: String },
}

/// One GET from `have` on, appended to `out`. Network trouble is a `Dropped` to resume;
/// a write failure (a full disk) is an error.
fn transfer(
    client: &Client,
    out: &mut File,
    part: &Path,
    meta: &FileMeta,
    have: u64,
    bar: &indicatif::ProgressBar,
) -> Result<Transfer> {
    let mut url = meta.url.clone();
    let mut resp = None;
    for _ in 0..5 {
        let r = match client.send(Method::Get, &url, have, &url) {
            Ok(r) => r,
            Err(HubError::Network { message, .. }) => {
                return Ok(Transfer::Dropped {
                    received: 0,
                    why: message,
                })
            }
            Err(e) => return Err(e),
        };
        let status = r.status().as_u16();
        if (300..400).contains(&status) {
            match header(&r, "location") {
                Some(loc) => url = Client::absolute(&url, &loc),
                None => {
                    return Err(HubError::Protocol {
                        url,
                        message: format!("redirect {status} without Location"),
                    })
                }
            }
            continue;
        }
        resp = Some(r);
        break;
    }
    let Some(resp) = resp else {
        return Err(HubError::Protocol {
            url,
            message: "too many redirects".into(),
        });
    };
    match resp.status().as_u16() {
        206 => {
            // The range must start where the file ends, or the bytes would land in the wrong place.
            let start = header(&resp, "content-range").and_then(|c| {
                c.strip_prefix("bytes ")?
                    .split('-')
                    .next()?
                    .parse::<u64>()
                    .ok()
            });
            if start != Some(have) {
                truncate(out, part)?;
                return Ok(Transfer::Dropped {
                    received: 0,
                    why: format!("the server answered a range from {start:?} instead of {have}"),
                });
            }
        }
        200 if have > 0 => {
            // The server ignored Range: start over.
            truncate(out, part)?;
            bar.set_position(0);
        }
        200 => {}
        416 => {
            // Nothing after `have`: either the file is whole, which the checks after the loop
            // establish, or the partial file is longer than the server's.
            if meta.size.is_none() {
                return Ok(Transfer::Done);
            }
            truncate(out, part)?;
            return Ok(Transfer::Dropped {
                received: 0,
                why: "range not satisfiable".into(),
            });
        }
        s => {
            return Err(HubError::Protocol {
                url,
                message: format!("HTTP status {s} for a download"),
            })
        }
    }
    let mut body = resp.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut received = 0u64;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Ok(Transfer::Dropped {
                    received,
                    why: e.to_string(),
                })
            }
        };
        out.write_all(&buf[..n])
            .map_err(|e| HubError::io(part, e))?;
        received += n as u64;
        bar.inc(n as u64);
    }
    let len = out.stream_position().map_err(|e| HubError::io(part, e))?;
    match meta.size {
        Some(size) if len < size => Ok(Transfer::Dropped {
            received,
            why: format!("connection closed at byte {len} of {size}"),
        }),
        _ => Ok(Transfer::Done),
    }
}

fn truncate(out: &mut File, part: &Path) -> Result<()> {
    out.set_len(0).map_err(|e| HubError::io(part, e))?;
    out.seek(std::io::SeekFrom::Start(0))
        .map_err(|e| HubError::io(part, e))?;
    Ok(())
}

fn sha256_of(f: &mut File, path: &Path) -> Result<String> {
    f.seek(std::io::SeekFrom::Start(0))
        .map_err(|e| HubError::io(path, e))?;
    let mut h = Sha256::new();
    std::io::copy(f, &mut h).map_err(|e| HubError::io(path, e))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
