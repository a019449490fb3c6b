//! A stand-in for the Hugging Face Hub on 127.0.0.1: the listing API, `resolve` URLs with the
//! Hub's headers (`X-Repo-Commit`, `ETag`, and for LFS files `X-Linked-Etag` = SHA-256 and
//! `X-Linked-Size` with a 302 to a separate "CDN" listener that serves `Range`), and faults on
//! demand: transfers cut short or stalled, a corrupt file, a slow trickle, scripted 401/404/
//! 429/500 answers, and downloads held until several clients have asked (to make pulls overlap).
//! Shared by bitnet-hub's and bitnet-cli's tests (`#[path]`), std only, one thread per connection.
#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

#[derive(Clone)]
pub struct RepoFile {
    pub name: String,
    pub data: Arc<Vec<u8>>,
    /// Stored in LFS: served through the CDN, identified by its SHA-256.
    pub lfs: bool,
}

impl RepoFile {
    pub fn new(name: &str, data: Vec<u8>, lfs: bool) -> RepoFile {
        RepoFile {
            name: name.into(),
            data: Arc::new(data),
            lfs,
        }
    }
    pub fn sha256(&self) -> String {
        hex(&Sha256::digest(&*self.data))
    }
    /// Stands in for the git blob id the Hub gives non-LFS files (40 hex digits).
    fn git_id(&self) -> String {
        self.sha256()[..40].to_owned()
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub struct Repo {
    pub id: String,
    pub commit: String,
    pub files: Vec<RepoFile>,
    /// Private: the API and resolve answer 401 without this bearer token.
    pub token: Option<String>,
}

#[derive(Default)]
pub struct Faults {
    /// Statuses (with an optional Retry-After) for the next requests to the listing API.
    pub api_script: VecDeque<(u16, Option<&'static str>)>,
    /// Cut the next `n` file bodies after this many bytes: (bytes, n).
    pub cut: Option<(usize, usize)>,
    /// Send this many bytes, then fall silent for this long before the rest: (bytes, pause, n).
    pub stall: Option<(usize, Duration, usize)>,
    /// Serve LFS files with one byte changed (the headers still announce the true SHA-256).
    pub corrupt: bool,
    /// Write bodies in pieces of this many bytes with a pause between.
    pub trickle: Option<(usize, Duration)>,
    /// Hold every file body until this many HEAD requests for files have arrived.
    pub hold_until_heads: Option<usize>,
    /// Answer 200 with the whole file whatever the Range.
    pub ignore_range: bool,
}

#[derive(Debug, Clone)]
pub struct Logged {
    pub role: &'static str,
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub auth: Option<String>,
}

struct State {
    repos: Vec<Repo>,
    faults: Faults,
    log: Vec<Logged>,
}

#[derive(Clone)]
pub struct FakeHub {
    pub url: String,
    pub cdn_url: String,
    state: Arc<Mutex<State>>,
}

impl FakeHub {
    pub fn start(repos: Vec<Repo>) -> FakeHub {
        let hub = TcpListener::bind("127.0.0.1:0").expect("bind hub");
        let cdn = TcpListener::bind("127.0.0.1:0").expect("bind cdn");
        let fh = FakeHub {
            url: format!("http://{}", hub.local_addr().unwrap()),
            cdn_url: format!("http://{}", cdn.local_addr().unwrap()),
            state: Arc::new(Mutex::new(State {
                repos,
                faults: Faults::default(),
                log: Vec::new(),
            })),
        };
        for (listener, role) in [(hub, "hub"), (cdn, "cdn")] {
            let me = fh.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming().flatten() {
                    let me = me.clone();
                    std::thread::spawn(move || me.serve(conn, role));
                }
            });
        }
        fh
    }

    pub fn faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.state.lock().unwrap().faults);
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    /// File-body GETs (from the CDN or resolve) whose path ends with `suffix`.
    pub fn body_gets(&self, suffix: &str) -> Vec<Logged> {
        self.log()
            .into_iter()
            .filter(|l| {
                let path = l.path.split('?').next().unwrap_or("");
                l.method == "GET" && path.ends_with(suffix) && !path.starts_with("/api/")
            })
            .collect()
    }

    fn serve(&self, conn: TcpStream, role: &'static str) {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
        let mut reader = BufReader::new(match conn.try_clone() {
            Ok(c) => c,
            Err(_) => return,
        });
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            return;
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
            return;
        };
        let (method, path) = (method.to_owned(), path.to_owned());
        let (mut range, mut auth) = (None, None);
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let v = v.trim().to_owned();
                match k.to_ascii_lowercase().as_str() {
                    "range" => range = Some(v),
                    "authorization" => auth = Some(v),
                    _ => {}
                }
            }
        }
        self.state.lock().unwrap().log.push(Logged {
            role,
            method: method.clone(),
            path: path.clone(),
            range: range.clone(),
            auth: auth.clone(),
        });
        let mut w = conn;
        let head = method == "HEAD";
        let path = path.split('?').next().unwrap_or("").to_owned();
        if role == "cdn" {
            return self.cdn(&mut w, &path, range.as_deref(), head);
        }
        if let Some(rest) = path.strip_prefix("/api/models/") {
            return self.api(&mut w, rest, auth.as_deref());
        }
        self.resolve(&mut w, &path, auth.as_deref(), head, range.as_deref());
    }

    fn api(&self, w: &mut TcpStream, rest: &str, auth: Option<&str>) {
        let scripted = self.state.lock().unwrap().faults.api_script.pop_front();
        if let Some((status, retry_after)) = scripted {
            let extra = retry_after
                .map(|r| format!("Retry-After: {r}\r\n"))
                .unwrap_or_default();
            return respond(w, status, &extra, b"{\"error\":\"scripted\"}", false);
        }
        // owner/name/revision/<rev>
        let seg: Vec<&str> = rest.splitn(4, '/').collect();
        if seg.len() != 4 || seg[2] != "revision" {
            return respond(w, 404, "", b"{}", false);
        }
        let id = format!("{}/{}", seg[0], seg[1]);
        let rev = seg[3].replace("%2F", "/");
        let st = self.state.lock().unwrap();
        let Some(repo) = st.repos.iter().find(|r| r.id == id) else {
            // The Hub answers 401 for a repository it will not admit exists.
            return respond(w, 401, "X-Error-Code: RepoNotFound\r\n", b"{}", false);
        };
        if let Err(s) = check_token(repo, auth) {
            return respond(w, s, "", b"{}", false);
        }
        if rev != "main" && rev != repo.commit {
            return respond(w, 404, "X-Error-Code: RevisionNotFound\r\n", b"{}", false);
        }
        let siblings: Vec<String> = repo
            .files
            .iter()
            .map(|f| format!("{{\"rfilename\":\"{}\"}}", f.name))
            .collect();
        let body = format!(
            "{{\"id\":\"{}\",\"sha\":\"{}\",\"siblings\":[{}]}}",
            repo.id,
            repo.commit,
            siblings.join(",")
        );
        respond(
            w,
            200,
            "Content-Type: application/json\r\n",
            body.as_bytes(),
            false,
        );
    }

    fn resolve(
        &self,
        w: &mut TcpStream,
        path: &str,
        auth: Option<&str>,
        head: bool,
        range: Option<&str>,
    ) {
        // /owner/name/resolve/<commit>/<file>
        let seg: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
        if seg.len() != 5 || seg[2] != "resolve" {
            return respond(w, 404, "", b"", head);
        }
        let id = format!("{}/{}", seg[0], seg[1]);
        let file = seg[4].replace("%20", " ");
        let found = {
            let st = self.state.lock().unwrap();
            let Some(repo) = st.repos.iter().find(|r| r.id == id) else {
                return respond(w, 401, "X-Error-Code: RepoNotFound\r\n", b"", head);
            };
            if let Err(s) = check_token(repo, auth) {
                return respond(w, s, "", b"", head);
            }
            if seg[3] != repo.commit && seg[3] != "main" {
                return respond(w, 404, "X-Error-Code: RevisionNotFound\r\n", b"", head);
            }
            repo.files
                .iter()
                .find(|f| f.name == file)
                .cloned()
                .map(|f| (f, repo.commit.clone()))
        };
        let Some((f, commit)) = found else {
            return respond(w, 404, "X-Error-Code: EntryNotFound\r\n", b"", head);
        };
        if f.lfs {
            let sha = f.sha256();
            let extra = format!(
                "X-Repo-Commit: {commit}\r\nX-Linked-Etag: \"{sha}\"\r\nX-Linked-Size: {}\r\nETag: \"{}\"\r\nLocation: {}/cdn/{sha}?X-Amz-Signature=x\r\n",
                f.data.len(),
                f.git_id(),
                self.cdn_url
            );
            return respond(w, 302, &extra, b"", head);
        }
        let extra = format!("X-Repo-Commit: {commit}\r\nETag: \"{}\"\r\n", f.git_id());
        if head {
            return respond_len(w, 200, &extra, f.data.len());
        }
        self.body(w, &f, range, &extra);
    }

    fn cdn(&self, w: &mut TcpStream, path: &str, range: Option<&str>, head: bool) {
        let sha = path.strip_prefix("/cdn/").unwrap_or("");
        let found = {
            let st = self.state.lock().unwrap();
            st.repos
                .iter()
                .flat_map(|r| r.files.iter())
                .find(|f| f.lfs && f.sha256() == sha)
                .cloned()
        };
        let Some(f) = found else {
            return respond(w, 404, "", b"", head);
        };
        if head {
            return respond_len(w, 200, "", f.data.len());
        }
        self.body(w, &f, range, "");
    }

    /// A file body: the whole file, or from `bytes=N-`; with whatever faults are armed.
    fn body(&self, w: &mut TcpStream, f: &RepoFile, range: Option<&str>, extra: &str) {
        let hold = self.state.lock().unwrap().faults.hold_until_heads;
        if let Some(n) = hold {
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(20) {
                let heads = self
                    .log()
                    .iter()
                    .filter(|l| l.method == "HEAD" && l.path.contains("/resolve/"))
                    .count();
                if heads >= n {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let (cut, stall, corrupt, trickle, ignore_range) = {
            let mut st = self.state.lock().unwrap();
            let fl = &mut st.faults;
            let cut = fl.cut.map(|(b, n)| {
                fl.cut = (n > 1).then_some((b, n - 1));
                b
            });
            let stall = fl.stall.map(|(b, d, n)| {
                fl.stall = (n > 1).then_some((b, d, n - 1));
                (b, d)
            });
            (cut, stall, fl.corrupt && f.lfs, fl.trickle, fl.ignore_range)
        };
        let mut data = f.data.to_vec();
        if corrupt {
            let mid = data.len() / 2;
            data[mid] ^= 0x55;
        }
        let len = data.len();
        let start = range.filter(|_| !ignore_range).and_then(|r| {
            r.strip_prefix("bytes=")?
                .strip_suffix('-')?
                .parse::<usize>()
                .ok()
        });
        let (status, from, extra) = match start {
            Some(s) if s >= len => {
                return respond(
                    w,
                    416,
                    &format!("Content-Range: bytes */{len}\r\n"),
                    b"",
                    false,
                )
            }
            Some(s) => (
                206,
                s,
                format!("{extra}Content-Range: bytes {s}-{}/{len}\r\n", len - 1),
            ),
            None => (200, 0, extra.to_owned()),
        };
        let body = &data[from..];
        let header = format!(
            "HTTP/1.1 {status} X\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        if w.write_all(header.as_bytes()).is_err() {
            return;
        }
        let limit = cut.unwrap_or(body.len()).min(body.len());
        let piece = trickle.map(|t| t.0).unwrap_or(1 << 16).max(1);
        // A stall splits the body: silence after its first bytes, then the rest as if nothing
        // happened (a client without an idle timeout would sit it out and get one whole body).
        let split = stall.map(|s| s.0.min(limit)).unwrap_or(limit);
        for (i, part) in [&body[..split], &body[split..limit]]
            .into_iter()
            .enumerate()
        {
            if i == 1 {
                if let Some((_, pause)) = stall {
                    std::thread::sleep(pause);
                }
            }
            for chunk in part.chunks(piece) {
                if w.write_all(chunk).is_err() {
                    return;
                }
                let _ = w.flush();
                if let Some((_, d)) = trickle {
                    std::thread::sleep(d);
                }
            }
        }
        // After a cut the connection just ends, short of Content-Length.
        let _ = w.shutdown(std::net::Shutdown::Both);
    }
}

fn check_token(repo: &Repo, auth: Option<&str>) -> Result<(), u16> {
    match &repo.token {
        None => Ok(()),
        Some(t) if auth == Some(format!("Bearer {t}").as_str()) => Ok(()),
        Some(_) => Err(401),
    }
}

fn respond(w: &mut TcpStream, status: u16, extra: &str, body: &[u8], head: bool) {
    let header = format!(
        "HTTP/1.1 {status} X\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = w.write_all(header.as_bytes());
    if !head {
        let _ = w.write_all(body);
    }
    let _ = w.flush();
}

fn respond_len(w: &mut TcpStream, status: u16, extra: &str, len: usize) {
    let header =
        format!("HTTP/1.1 {status} X\r\n{extra}Content-Length: {len}\r\nConnection: close\r\n\r\n");
    let _ = w.write_all(header.as_bytes());
    let _ = w.flush();
}
