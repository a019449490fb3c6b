//! `owner/name[@revision][:FILE]`, as typed after `bitnet pull` or `-m hf://`.

use crate::error::{HubError, Result};

pub const URI_SCHEME: &str = "hf://";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    /// `owner/name`.
    pub repo: String,
    /// A file in the repository, or a quantization name (`tq2_0`) picking among its GGUFs.
    pub file: Option<String>,
    /// Branch, tag or commit sha (`main` unless given).
    pub revision: String,
}

impl ModelRef {
    /// Parses `owner/name[@revision][:FILE]`; `hf://` in front is accepted and ignored.
    pub fn parse(s: &str) -> Result<ModelRef> {
        let bad = |why: &str| HubError::BadReference(s.to_owned(), why.to_owned());
        let rest = s.strip_prefix(URI_SCHEME).unwrap_or(s);
        let (head, file) = match rest.split_once(':') {
            Some((h, f)) => (h, Some(f.to_owned())),
            None => (rest, None),
        };
        let (repo, revision) = match head.split_once('@') {
            Some((r, v)) => (r, v.to_owned()),
            None => (head, "main".to_owned()),
        };
        check_repo(repo).map_err(|e| bad(&e))?;
        check_revision(&revision).map_err(|e| bad(&e))?;
        if let Some(f) = &file {
            check_file(f).map_err(|e| bad(&e))?;
        }
        Ok(ModelRef {
            repo: repo.to_owned(),
            file,
            revision,
        })
    }

    /// With the revision replaced, when one is given.
    pub fn at_revision(mut self, revision: Option<&str>) -> Result<ModelRef> {
        if let Some(r) = revision {
            check_revision(r).map_err(|e| HubError::BadReference(r.to_owned(), e))?;
            self.revision = r.to_owned();
        }
        Ok(self)
    }
}

impl std::fmt::Display for ModelRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.repo)?;
        if self.revision != "main" {
            write!(f, "@{}", self.revision)?;
        }
        if let Some(file) = &self.file {
            write!(f, ":{file}")?;
        }
        Ok(())
    }
}

/// The Hub's own rule for repository ids: `owner/name` of letters, digits, `-`, `_`, `.`,
/// neither part starting or ending with `-` or `.`, no `--` or `..` (which the cache folder
/// name `models--owner--name` relies on).
pub(crate) fn check_repo(repo: &str) -> std::result::Result<(), String> {
    let parts: Vec<&str> = repo.split('/').collect();
    if parts.len() != 2 {
        return Err("expected owner/name".into());
    }
    for p in parts {
        if p.is_empty() || p.len() > 96 {
            return Err("owner and name must be 1 to 96 characters".into());
        }
        if !p
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err("only letters, digits, '-', '_' and '.' are allowed".into());
        }
        if p.starts_with(['-', '.'])
            || p.ends_with(['-', '.'])
            || p.contains("--")
            || p.contains("..")
        {
            return Err("no leading or trailing '-' or '.', and no '--' or '..'".into());
        }
    }
    Ok(())
}

fn check_revision(r: &str) -> std::result::Result<(), String> {
    let ok = !r.is_empty()
        && r.len() <= 256
        && !r
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        && r.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(())
    } else {
        Err(
            "a revision is a branch, tag or commit of letters, digits, '-', '_', '.' and '/'"
                .into(),
        )
    }
}

/// A path inside the repository; it becomes a path in the cache, so nothing may climb out.
pub(crate) fn check_file(f: &str) -> std::result::Result<(), String> {
    let ok = !f.is_empty()
        && f.len() <= 1024
        && !f.contains('\\')
        && !f.contains('\0')
        && !f
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..");
    if ok {
        Ok(())
    } else {
        Err("a file is a relative path inside the repository".into())
    }
}

/// Percent-encodes one URL path segment (RFC 3986 unreserved characters stay).
pub(crate) fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes a path, keeping its `/` separators.
pub(crate) fn encode_path(s: &str) -> String {
    s.split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repo_revision_and_file() {
        let r = ModelRef::parse("hf://owner/name@v1.0:sub/model-i2_s.gguf").unwrap();
        assert_eq!(r.repo, "owner/name");
        assert_eq!(r.revision, "v1.0");
        assert_eq!(r.file.as_deref(), Some("sub/model-i2_s.gguf"));
        assert_eq!(r.to_string(), "owner/name@v1.0:sub/model-i2_s.gguf");
        let r = ModelRef::parse("owner/name:TQ2_0").unwrap();
        assert_eq!(
            (r.revision.as_str(), r.file.as_deref()),
            ("main", Some("TQ2_0"))
        );
        let r = ModelRef::parse("owner/name")
            .unwrap()
            .at_revision(Some("refs/pr/3"))
            .unwrap();
        assert_eq!(r.revision, "refs/pr/3");
    }

    #[test]
    fn rejects_what_could_escape_the_cache_or_the_url() {
        for bad in [
            "name",
            "a/b/c",
            "../x/y",
            "a/..",
            "a/b--c",
            "a/-b",
            "a/b c",
            "a/b:../../etc/passwd",
            "a/b:/abs",
            "a/b:x//y",
            "a/b@",
            "a/b@..",
            "a/b@x y",
            "a/b:",
            "",
        ] {
            let e = ModelRef::parse(bad).expect_err(bad);
            assert_eq!(e.exit_code(), 2, "{bad}: {e}");
        }
    }

    #[test]
    fn encodes_path_segments() {
        assert_eq!(encode_path("a b/c%d.gguf"), "a%20b/c%25d.gguf");
        assert_eq!(encode_segment("refs/pr/1"), "refs%2Fpr%2F1");
    }
}
