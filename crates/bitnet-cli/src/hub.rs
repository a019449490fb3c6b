//! `bitnet pull`, `list` and `rm`, and `hf://` model names on every command: a thin front over
//! `bitnet_hub`.

use anyhow::Result;
use bitnet_hub::{cache, Hub, HubConfig, ModelRef, URI_SCHEME};
use clap::Args;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct PullArgs {
    /// owner/name[@revision][:FILE], FILE a path in the repository or a quantization (tq2_0)
    repo: String,
    /// Branch, tag or commit to pull [default: main]
    #[arg(long)]
    revision: Option<String>,
    /// Print nothing on stderr
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// owner/name of a cached repository
    repo: String,
}

pub fn config() -> HubConfig {
    let mut c = HubConfig::from_env();
    c.progress = std::io::stderr().is_terminal();
    c
}

/// Downloads (or finds in the cache) what `r` names; returns the GGUF file or checkpoint folder.
pub fn fetch(r: &ModelRef) -> Result<PathBuf> {
    Ok(Hub::new(config()).pull(r)?.path)
}

/// `path` itself, or where the model it names as `hf://...` is once pulled.
pub fn local(path: &Path) -> Result<PathBuf> {
    match path.to_str().filter(|p| p.starts_with(URI_SCHEME)) {
        Some(uri) => fetch(&ModelRef::parse(uri)?),
        None => Ok(path.to_owned()),
    }
}

/// `owner/name` for a snapshot folder of the HF cache (`models--owner--name/snapshots/<commit>`).
pub fn repo_of_snapshot(dir: &Path) -> Option<String> {
    let snapshots = dir.parent()?;
    if !dir.is_dir() || snapshots.file_name()? != "snapshots" {
        return None;
    }
    let repo = snapshots
        .parent()?
        .file_name()?
        .to_str()?
        .strip_prefix("models--")?;
    let (owner, name) = repo.split_once("--")?;
    Some(format!("{owner}/{name}"))
}

pub fn pull(a: PullArgs) -> Result<()> {
    let r = ModelRef::parse(&a.repo)?.at_revision(a.revision.as_deref())?;
    let hub = Hub::new(config());
    let p = hub.pull(&r)?;
    if !a.quiet {
        let snap = cache::repo_dir(&hub.config().cache, &r.repo)
            .join("snapshots")
            .join(&p.commit);
        let bytes: u64 = p
            .files
            .iter()
            .filter_map(|f| std::fs::metadata(snap.join(f)).ok())
            .map(|m| m.len())
            .sum();
        eprintln!(
            "{r}: {} at commit {} ({}){}",
            p.files.join(", "),
            p.commit.get(..12).unwrap_or(&p.commit),
            size(bytes),
            if p.from_cache { ", from the cache" } else { "" }
        );
    }
    // The path alone on stdout, so that `bitnet run -m "$(bitnet pull ...)"` works.
    println!("{}", p.path.display());
    Ok(())
}

pub fn list(_: ListArgs) -> Result<()> {
    use std::io::Write;
    let cfg = HubConfig::from_env();
    let repos = cache::list(&cfg.cache)?;
    let out = &mut std::io::stdout().lock();
    if repos.is_empty() {
        eprintln!("no models in {}", cfg.cache.display());
        return Ok(());
    }
    let w = repos.iter().map(|r| r.repo.len()).max().unwrap_or(4).max(4);
    writeln!(
        out,
        "{:<w$}  {:>10}  {:<24}  PATH",
        "REPO", "SIZE", "REVISIONS"
    )?;
    for r in repos {
        let mut revs: Vec<String> = r
            .refs
            .iter()
            .map(|(name, c)| format!("{name}@{}", short(c)))
            .collect();
        if revs.is_empty() {
            revs = r.snapshots.iter().map(|c| short(c).to_owned()).collect();
        }
        let mut sz = size(r.size);
        if r.partial > 0 {
            sz = format!("{sz} (+{} partial)", size(r.partial));
        }
        writeln!(
            out,
            "{:<w$}  {:>10}  {:<24}  {}",
            r.repo,
            sz,
            revs.join(","),
            r.path.display()
        )?;
    }
    Ok(())
}

pub fn rm(a: RmArgs) -> Result<()> {
    let cfg = HubConfig::from_env();
    let repo = a.repo.strip_prefix(URI_SCHEME).unwrap_or(&a.repo);
    let freed = cache::remove(&cfg.cache, repo)?;
    eprintln!("removed {repo} ({} freed)", size(freed));
    Ok(())
}

/// A commit abbreviated as git does; whatever a ref file holds, it is shown, not sliced mid-character.
fn short(commit: &str) -> &str {
    commit.get(..7).unwrap_or(commit)
}

fn size(b: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / (MIB * 1024.0))
    } else {
        format!("{:.1} MiB", b as f64 / MIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_folder_is_named_by_its_repository() {
        let cache = tempfile::tempdir().unwrap();
        let snap = cache
            .path()
            .join("models--owner--model/snapshots/0123456789abcdef0123456789abcdef01234567");
        std::fs::create_dir_all(&snap).unwrap();
        assert_eq!(repo_of_snapshot(&snap).as_deref(), Some("owner/model"));
        std::fs::write(snap.join("m.gguf"), b"").unwrap();
        assert_eq!(
            repo_of_snapshot(&snap.join("m.gguf")),
            None,
            "a file keeps its stem"
        );
        assert_eq!(repo_of_snapshot(cache.path()), None);
    }
}
