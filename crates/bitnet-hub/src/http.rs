//! One blocking HTTP client for the Hub: the token only for the Hub's own origin (never for the
//! CDN it redirects to), and retries with back-off for a busy server (429 honouring
//! `Retry-After`, 5xx) or a dropped connection. Redirects are followed here, not by ureq, so
//! the first answer's headers (the LFS ETag and size) stay readable.

use crate::config::HubConfig;
use crate::error::{HubError, Result};
use std::time::Duration;
use ureq::http::Response;
use ureq::Body;

pub(crate) struct Client {
    agent: ureq::Agent,
    cfg: HubConfig,
}

pub(crate) enum Method {
    Get,
    Head,
}

/// The header `huggingface_hub` reads to tell a missing repository from a missing file.
const ERROR_CODE: &str = "x-error-code";

impl Client {
    pub(crate) fn new(cfg: &HubConfig) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(cfg.timeout))
            .timeout_recv_response(Some(cfg.timeout))
            // An idle transfer, not a long one, is what times out: a large file may take hours.
            .timeout_per_read(Some(cfg.timeout))
            .user_agent(concat!("bitnet-rs/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Client {
            agent,
            cfg: cfg.clone(),
        }
    }

    pub(crate) fn cfg(&self) -> &HubConfig {
        &self.cfg
    }

    fn origin(url: &str) -> &str {
        let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
        match url[after_scheme..].find('/') {
            Some(i) => &url[..after_scheme + i],
            None => url,
        }
    }

    /// `Location` made absolute against the URL it answered.
    pub(crate) fn absolute(base: &str, location: &str) -> String {
        if location.contains("://") {
            location.to_owned()
        } else if location.starts_with('/') {
            format!("{}{location}", Client::origin(base))
        } else {
            let dir = &base[..base.rfind('/').map(|i| i + 1).unwrap_or(base.len())];
            format!("{dir}{location}")
        }
    }

    fn call(
        &self,
        method: &Method,
        url: &str,
        range_from: u64,
    ) -> std::result::Result<Response<Body>, ureq::Error> {
        let auth = self
            .cfg
            .token
            .as_ref()
            .filter(|_| Client::origin(url) == Client::origin(&self.cfg.endpoint))
            .map(|t| format!("Bearer {t}"));
        macro_rules! send {
            ($req:expr) => {{
                let mut r = $req;
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                if range_from > 0 {
                    r = r.header("Range", &format!("bytes={range_from}-"));
                }
                r.call()
            }};
        }
        match method {
            Method::Get => send!(self.agent.get(url)),
            Method::Head => send!(self.agent.head(url)),
        }
    }

    /// Sends one request, retrying what may pass (429, 5xx, connection failures) and mapping
    /// what will not (401/403, 404) to its error. `what` names the object for a 404.
    /// 2xx, 3xx and 416 come back as they are.
    pub(crate) fn send(
        &self,
        method: Method,
        url: &str,
        range_from: u64,
        what: &str,
    ) -> Result<Response<Body>> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let last = attempt >= self.cfg.max_attempts;
            let resp = match self.call(&method, url, range_from) {
                Ok(r) => r,
                Err(e) => {
                    if last {
                        return Err(HubError::Network {
                            url: url.to_owned(),
                            message: format!("{e} (after {attempt} attempts)"),
                        });
                    }
                    self.pause(attempt, None);
                    continue;
                }
            };
            let status = resp.status().as_u16();
            match status {
                200..=399 | 416 => return Ok(resp),
                401 | 403 | 404 => return Err(self.refusal(&resp, url, what)),
                429 => {
                    let after = retry_after(&resp);
                    if last || after.is_some_and(|a| a > self.cfg.max_retry_after) {
                        return Err(HubError::RateLimited {
                            url: url.to_owned(),
                            attempts: attempt,
                            retry_after: after.map(|a| a.as_secs()),
                        });
                    }
                    self.pause(attempt, after);
                }
                500..=599 => {
                    if last {
                        return Err(HubError::Server {
                            url: url.to_owned(),
                            status,
                            attempts: attempt,
                        });
                    }
                    self.pause(attempt, retry_after(&resp));
                }
                _ => {
                    return Err(HubError::Protocol {
                        url: url.to_owned(),
                        message: format!("HTTP status {status}"),
                    })
                }
            }
        }
    }

    fn refusal(&self, resp: &Response<Body>, url: &str, what: &str) -> HubError {
        let status = resp.status().as_u16();
        let code = resp
            .headers()
            .get(ERROR_CODE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        // The Hub answers 401 for a repository that does not exist *or* is private, so that
        // private names do not leak; its X-Error-Code says which it is allowed to say.
        match (status, code) {
            (404, _) | (_, "RepoNotFound" | "RevisionNotFound" | "EntryNotFound") => {
                let hint = if status == 401 && self.cfg.token.is_none() {
                    " (if it is private or gated, set HF_TOKEN)"
                } else {
                    ""
                };
                HubError::NotFound(format!("{what} on {}{hint}", self.cfg.endpoint))
            }
            _ => HubError::Unauthorized {
                status,
                url: url.to_owned(),
                hint: match (code, self.cfg.token.is_some()) {
                    ("GatedRepo", _) => "the repository is gated: accept its terms on the Hub with the account whose token HF_TOKEN holds",
                    (_, false) => "set HF_TOKEN (or log in with `huggingface-cli login`)",
                    (_, true) => "the token in HF_TOKEN (or $HF_HOME/token) was refused",
                },
            },
        }
    }

    /// Waits before another attempt: the server's `Retry-After` if it gave one, else an
    /// exponential back-off from `cfg.backoff` (capped at a minute).
    pub(crate) fn pause(&self, attempt: u32, retry_after: Option<Duration>) {
        let wait = retry_after.unwrap_or_else(|| {
            self.cfg
                .backoff
                .saturating_mul(1 << attempt.saturating_sub(1).min(6))
                .min(Duration::from_secs(60))
        });
        std::thread::sleep(wait);
    }
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(resp: &Response<Body>) -> Option<Duration> {
    let v = resp.headers().get("retry-after")?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

pub(crate) fn header(resp: &Response<Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve_against_the_request() {
        let base = "http://127.0.0.1:8/o/n/resolve/main/f.gguf";
        assert_eq!(Client::absolute(base, "/api/x"), "http://127.0.0.1:8/api/x");
        assert_eq!(
            Client::absolute(base, "https://cdn/x?a=1"),
            "https://cdn/x?a=1"
        );
        assert_eq!(
            Client::absolute(base, "g.gguf"),
            "http://127.0.0.1:8/o/n/resolve/main/g.gguf"
        );
        assert_eq!(Client::origin("http://h:1"), "http://h:1");
    }
}
