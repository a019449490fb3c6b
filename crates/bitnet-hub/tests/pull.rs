//! The Hub client end to end against a fake Hub on 127.0.0.1 (tests/support/fake_hub.rs) that
//! behaves like the real one (listing, resolve, LFS redirect to a CDN, ETags, Range) and
//! misbehaves on purpose. The invariant throughout: a path handed back is a whole, verified
//! file, and nothing partial or corrupt sits where a model is expected.

#[path = "support/fake_hub.rs"]
mod fake_hub;

use bitnet_hub::{cache, Hub, HubConfig, HubError, ModelRef};
use fake_hub::{FakeHub, Repo, RepoFile, COMMIT};
use std::path::Path;
use std::time::Duration;

/// Deterministic filler that differs from byte to byte (a corrupt byte must matter).
fn data(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn gguf_repo() -> Repo {
    Repo {
        id: "owner/model-GGUF".into(),
        commit: COMMIT.into(),
        files: vec![
            RepoFile::new("README.md", b"# a model\n".to_vec(), false),
            RepoFile::new("model-TQ1_0.gguf", data(150_000, 1), true),
            RepoFile::new("model-i2_s.gguf", data(300_000, 2), true),
            RepoFile::new("model-tq2_0.gguf", data(200_000, 3), true),
        ],
        token: None,
    }
}

fn file<'a>(repo: &'a Repo, name: &str) -> &'a RepoFile {
    repo.files.iter().find(|f| f.name == name).unwrap()
}

struct Setup {
    hub: FakeHub,
    cache: tempfile::TempDir,
    reference: Repo,
}

impl Setup {
    fn new(repos: Vec<Repo>) -> Setup {
        let reference = Repo {
            id: String::new(),
            commit: String::new(),
            files: repos.iter().flat_map(|r| r.files.clone()).collect(),
            token: None,
        };
        Setup {
            hub: FakeHub::start(repos),
            cache: tempfile::tempdir().unwrap(),
            reference,
        }
    }

    fn cfg(&self) -> HubConfig {
        let mut c = HubConfig::from_vars(|_| None);
        c.endpoint = self.hub.url.clone();
        c.cache = self.cache.path().to_owned();
        c.backoff = Duration::from_millis(10);
        c.timeout = Duration::from_secs(5);
        c.max_attempts = 3;
        c
    }

    fn pull(&self, r: &str) -> Result<bitnet_hub::Pulled, HubError> {
        self.pull_with(r, |_| {})
    }

    fn pull_with(
        &self,
        r: &str,
        f: impl FnOnce(&mut HubConfig),
    ) -> Result<bitnet_hub::Pulled, HubError> {
        let mut cfg = self.cfg();
        f(&mut cfg);
        Hub::new(cfg).pull(&ModelRef::parse(r).unwrap())
    }

    fn repo_dir(&self) -> std::path::PathBuf {
        cache::repo_dir(self.cache.path(), "owner/model-GGUF")
    }

    fn blobs(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.repo_dir().join("blobs"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

fn assert_same_file(path: &Path, expected: &RepoFile) {
    let got = std::fs::read(path).unwrap();
    assert_eq!(got.len(), expected.data.len(), "{}", path.display());
    assert!(
        got == *expected.data,
        "{} differs from the served file",
        path.display()
    );
}

#[test]
fn pulls_the_i2s_gguf_through_the_lfs_redirect_into_the_hf_cache_layout() {
    let s = Setup::new(vec![gguf_repo()]);
    let pulled = s
        .pull_with("owner/model-GGUF", |c| c.token = Some("hf_secret".into()))
        .unwrap();
    let want = file(&s.reference, "model-i2_s.gguf");
    let dir = s.repo_dir();
    assert_eq!(
        pulled.path,
        dir.join("snapshots").join(COMMIT).join("model-i2_s.gguf")
    );
    assert_eq!(pulled.commit, COMMIT);
    assert!(!pulled.from_cache);
    assert_same_file(&pulled.path, want);
    // huggingface_hub's layout: a relative link into blobs/ named by the SHA-256, and the ref.
    assert_eq!(
        std::fs::read_link(&pulled.path).unwrap(),
        Path::new("../../blobs").join(want.sha256())
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("refs/main")).unwrap(),
        COMMIT
    );
    assert_eq!(
        s.blobs(),
        vec![want.sha256()],
        "only the chosen file, no leftovers"
    );
    // The token goes to the Hub, never to the CDN the Hub redirects to.
    let log = s.hub.log();
    assert!(log.iter().any(|l| l.role == "cdn"));
    for l in &log {
        match l.role {
            "hub" => assert_eq!(l.auth.as_deref(), Some("Bearer hf_secret"), "{l:?}"),
            _ => assert_eq!(l.auth, None, "{l:?}"),
        }
    }
    // Pulled again: the cache answers, nothing is downloaded twice.
    let again = s.pull("owner/model-GGUF").unwrap();
    assert_eq!(again.path, pulled.path);
    assert_eq!(s.hub.body_gets(&want.sha256()).len(), 1);
}

#[test]
fn a_file_or_quantization_can_be_asked_for_and_a_commit_pins_the_revision() {
    let s = Setup::new(vec![gguf_repo()]);
    let p = s.pull(&format!("owner/model-GGUF@{COMMIT}:tq1_0")).unwrap();
    assert!(p.path.ends_with("model-TQ1_0.gguf"), "{}", p.path.display());
    assert_same_file(&p.path, file(&s.reference, "model-TQ1_0.gguf"));
    assert!(!s.repo_dir().join("refs").exists(), "a commit needs no ref");
    let p = s.pull("owner/model-GGUF:README.md").unwrap();
    assert_same_file(&p.path, file(&s.reference, "README.md"));
    let e = s.pull("owner/model-GGUF:q4_k_m").unwrap_err();
    assert_eq!(e.exit_code(), 5, "{e}");
    let e = s.pull("owner/model-GGUF@v9").unwrap_err();
    assert_eq!(e.exit_code(), 5, "{e}");
}

#[test]
fn a_transfer_cut_in_the_middle_resumes_with_a_range_request() {
    let s = Setup::new(vec![gguf_repo()]);
    s.hub.faults(|f| f.cut = Some((100_000, 1)));
    let p = s.pull("owner/model-GGUF").unwrap();
    let want = file(&s.reference, "model-i2_s.gguf");
    assert_same_file(&p.path, want);
    let gets = s.hub.body_gets(&want.sha256());
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].range, None);
    assert_eq!(gets[1].range.as_deref(), Some("bytes=100000-"));
}

#[test]
fn a_partial_file_left_by_an_earlier_run_is_resumed_and_never_used_as_the_model() {
    let s = Setup::new(vec![gguf_repo()]);
    let want = file(&s.reference, "model-i2_s.gguf");
    s.hub.faults(|f| f.cut = Some((120_000, 1)));
    let e = s
        .pull_with("owner/model-GGUF", |c| c.max_attempts = 1)
        .unwrap_err();
    assert!(matches!(e, HubError::Network { .. }), "{e}");
    let snapshot = s
        .repo_dir()
        .join("snapshots")
        .join(COMMIT)
        .join("model-i2_s.gguf");
    assert!(
        !snapshot.exists(),
        "a partial download must not be where the model is expected"
    );
    let part = s
        .repo_dir()
        .join("blobs")
        .join(format!("{}.incomplete", want.sha256()));
    assert_eq!(std::fs::metadata(&part).unwrap().len(), 120_000);
    let p = s.pull("owner/model-GGUF").unwrap();
    assert_same_file(&p.path, want);
    let gets = s.hub.body_gets(&want.sha256());
    assert_eq!(gets.last().unwrap().range.as_deref(), Some("bytes=120000-"));
    assert!(!part.exists());
}

#[test]
fn a_server_that_ignores_range_is_read_again_from_the_start() {
    let s = Setup::new(vec![gguf_repo()]);
    s.hub.faults(|f| {
        f.cut = Some((100_000, 1));
        f.ignore_range = true;
    });
    let p = s.pull("owner/model-GGUF").unwrap();
    assert_same_file(&p.path, file(&s.reference, "model-i2_s.gguf"));
}

#[test]
fn a_wrong_checksum_is_an_error_and_leaves_nothing_behind() {
    let s = Setup::new(vec![gguf_repo()]);
    s.hub.faults(|f| f.corrupt = true);
    let e = s.pull("owner/model-GGUF").unwrap_err();
    assert!(matches!(e, HubError::ChecksumMismatch { .. }), "{e}");
    assert_eq!(e.exit_code(), 8);
    assert!(
        e.to_string()
            .contains(&file(&s.reference, "model-i2_s.gguf").sha256()),
        "{e}"
    );
    assert!(!s
        .repo_dir()
        .join("snapshots")
        .join(COMMIT)
        .join("model-i2_s.gguf")
        .exists());
    assert_eq!(s.blobs(), Vec::<String>::new(), "no blob, no .incomplete");
}

#[test]
fn missing_private_and_refused_are_told_apart() {
    let mut private = gguf_repo();
    private.id = "owner/private".into();
    private.token = Some("hf_right".into());
    let s = Setup::new(vec![gguf_repo(), private]);
    // The Hub answers 401 + RepoNotFound for a repository it does not admit exists.
    let e = s.pull("owner/nope").unwrap_err();
    assert!(matches!(e, HubError::NotFound(_)), "{e}");
    assert!(e.to_string().contains("HF_TOKEN"), "{e}");
    let e = s.pull("owner/private").unwrap_err();
    assert!(
        matches!(e, HubError::Unauthorized { status: 401, .. }),
        "{e}"
    );
    assert_eq!(e.exit_code(), 6);
    assert!(e.to_string().contains("set HF_TOKEN"), "{e}");
    let e = s
        .pull_with("owner/private", |c| c.token = Some("hf_wrong".into()))
        .unwrap_err();
    assert_eq!(e.exit_code(), 6, "{e}");
    assert!(e.to_string().contains("refused"), "{e}");
    let p = s
        .pull_with("owner/private", |c| c.token = Some("hf_right".into()))
        .unwrap();
    assert!(p.path.ends_with("model-i2_s.gguf"));
}

#[test]
fn rate_limits_wait_for_retry_after_then_give_up_with_their_own_error() {
    let s = Setup::new(vec![gguf_repo()]);
    s.hub.faults(|f| f.api_script.push_back((429, Some("1"))));
    s.pull("owner/model-GGUF").unwrap();
    let api = |s: &Setup| {
        s.hub
            .log()
            .iter()
            .filter(|l| l.path.starts_with("/api/"))
            .count()
    };
    assert_eq!(api(&s), 2, "one 429, then the retry");

    let s = Setup::new(vec![gguf_repo()]);
    s.hub.faults(|f| f.api_script.extend([(429, Some("0")); 3]));
    let e = s.pull("owner/model-GGUF").unwrap_err();
    assert!(
        matches!(e, HubError::RateLimited { attempts: 3, .. }),
        "{e}"
    );
    assert_eq!(e.exit_code(), 7);

    // A wait longer than worth waiting fails at once and says how long.
    let s = Setup::new(vec![gguf_repo()]);
    s.hub
        .faults(|f| f.api_script.push_back((429, Some("3600"))));
    let e = s.pull("owner/model-GGUF").unwrap_err();
    assert!(
        matches!(
            e,
            HubError::RateLimited {
                attempts: 1,
                retry_after: Some(3600),
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("3600s"), "{e}");
}

#[test]
fn server_errors_are_retried_then_reported() {
    let s = Setup::new(vec![gguf_repo()]);
    s.hub
        .faults(|f| f.api_script.extend([(500, None), (503, None)]));
    s.pull("owner/model-GGUF").unwrap();

    let s = Setup::new(vec![gguf_repo()]);
    s.hub.faults(|f| f.api_script.extend([(500, None); 3]));
    let e = s.pull("owner/model-GGUF").unwrap_err();
    assert!(
        matches!(
            e,
            HubError::Server {
                status: 500,
                attempts: 3,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.exit_code(), 1);
}

#[test]
fn a_stalled_transfer_times_out_and_resumes() {
    let s = Setup::new(vec![gguf_repo()]);
    s.hub
        .faults(|f| f.stall = Some((50_000, Duration::from_secs(3), 1)));
    let p = s
        .pull_with("owner/model-GGUF", |c| {
            c.timeout = Duration::from_millis(400)
        })
        .unwrap();
    let want = file(&s.reference, "model-i2_s.gguf");
    assert_same_file(&p.path, want);
    let gets = s.hub.body_gets(&want.sha256());
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[1].range.as_deref(), Some("bytes=50000-"));
}

#[test]
fn a_slow_trickle_is_not_a_timeout() {
    let s = Setup::new(vec![gguf_repo()]);
    // 300 KB in 30 pieces 100 ms apart: 3 s in all, longer than the 1 s timeout, but never
    // idle for that long; only an idle (per-read) timeout lets it through.
    s.hub
        .faults(|f| f.trickle = Some((10_000, Duration::from_millis(100))));
    let p = s
        .pull_with("owner/model-GGUF", |c| c.timeout = Duration::from_secs(1))
        .unwrap();
    let want = file(&s.reference, "model-i2_s.gguf");
    assert_same_file(&p.path, want);
    assert_eq!(s.hub.body_gets(&want.sha256()).len(), 1);
}

#[test]
fn concurrent_pulls_of_one_file_download_it_once() {
    let s = Setup::new(vec![gguf_repo()]);
    // Both clients have asked for the file's metadata before any bytes flow, so the second
    // finds the first holding the lock.
    s.hub.faults(|f| f.hold_until_heads = Some(2));
    let paths: Vec<_> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..2)
            .map(|_| sc.spawn(|| s.pull("owner/model-GGUF")))
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap().unwrap().path)
            .collect()
    });
    assert_eq!(paths[0], paths[1]);
    let want = file(&s.reference, "model-i2_s.gguf");
    assert_same_file(&paths[0], want);
    assert_eq!(
        s.hub.body_gets(&want.sha256()).len(),
        1,
        "the lock holder downloads; the other waits"
    );
    assert_eq!(s.blobs(), vec![want.sha256()]);
}

#[test]
fn offline_answers_from_the_cache_and_so_does_an_unreachable_hub() {
    let s = Setup::new(vec![gguf_repo()]);
    let e = s
        .pull_with("owner/model-GGUF", |c| c.offline = true)
        .unwrap_err();
    assert!(matches!(e, HubError::NotCached { .. }), "{e}");
    assert_eq!(e.exit_code(), 5);
    assert!(s.hub.log().is_empty(), "offline means no request at all");
    let online = s.pull("owner/model-GGUF").unwrap();
    let n = s.hub.log().len();
    let off = s
        .pull_with("owner/model-GGUF", |c| c.offline = true)
        .unwrap();
    assert_eq!(
        (off.path.as_path(), off.from_cache),
        (online.path.as_path(), true)
    );
    assert_eq!(s.hub.log().len(), n);
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let p = s
        .pull_with("owner/model-GGUF", |c| {
            c.endpoint = format!("http://{closed}");
            c.max_attempts = 1;
        })
        .unwrap();
    assert!(p.from_cache);
    assert_eq!(p.path, online.path);
}

#[test]
fn without_a_gguf_the_safetensors_folder_is_pulled() {
    let repo = Repo {
        id: "owner/model".into(),
        commit: COMMIT.into(),
        files: vec![
            RepoFile::new(
                ".gitattributes",
                b"*.safetensors filter=lfs\n".to_vec(),
                false,
            ),
            RepoFile::new("config.json", b"{}".to_vec(), false),
            RepoFile::new("tokenizer.json", b"{\"t\":1}".to_vec(), false),
            RepoFile::new("model-00001-of-00002.safetensors", data(70_000, 4), true),
            RepoFile::new("model-00002-of-00002.safetensors", data(50_000, 5), true),
            RepoFile::new(
                "model.safetensors.index.json",
                b"{\"weight_map\":{}}".to_vec(),
                false,
            ),
        ],
        token: None,
    };
    let s = Setup::new(vec![repo]);
    let p = s.pull("owner/model").unwrap();
    let snap = cache::repo_dir(s.cache.path(), "owner/model")
        .join("snapshots")
        .join(COMMIT);
    assert_eq!(p.path, snap);
    for f in &s.reference.files[1..] {
        assert_same_file(&snap.join(&f.name), f);
    }
    assert!(!snap.join(".gitattributes").exists());
}

#[test]
fn list_shows_sizes_and_rm_frees_them() {
    let s = Setup::new(vec![gguf_repo()]);
    s.pull("owner/model-GGUF").unwrap();
    s.pull("owner/model-GGUF:tq2_0").unwrap();
    let listed = cache::list(s.cache.path()).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].repo, "owner/model-GGUF");
    assert_eq!(listed[0].size, 300_000 + 200_000);
    assert_eq!(listed[0].refs, vec![("main".to_owned(), COMMIT.to_owned())]);
    assert_eq!(
        cache::remove(s.cache.path(), "owner/model-GGUF").unwrap(),
        500_000
    );
    assert!(cache::list(s.cache.path()).unwrap().is_empty());
    let e = cache::remove(s.cache.path(), "owner/model-GGUF").unwrap_err();
    assert_eq!(e.exit_code(), 5);
}
