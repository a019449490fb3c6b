//! The chat page at `/`: plain HTML, JavaScript and CSS from `web/`, compiled into the binary
//! (no build step, nothing fetched from elsewhere). The page itself needs no key: it holds no
//! data, and it sends the key the user enters with each API request.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

pub const INDEX_HTML: &str = include_str!("../web/index.html");
pub const CHAT_JS: &str = include_str!("../web/chat.js");
pub const CHAT_CSS: &str = include_str!("../web/chat.css");

/// Only this server's own files and API: model output can never pull in a script, and
/// the page cannot be framed by another site.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let h = r.headers_mut();
    // Revalidate each time: a new server version must not be paired with an old cached page.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub async fn chat_js() -> Response {
    asset("text/javascript; charset=utf-8", CHAT_JS)
}

pub async fn chat_css() -> Response {
    asset("text/css; charset=utf-8", CHAT_CSS)
}
