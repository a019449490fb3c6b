//! The HTTP routes and their handlers.

use crate::api::Request;
use crate::errors::ApiError;
use crate::generate::{Choices, ChunkWriter, Collector, Ctx, Meta};
use crate::openai::{GenerationRequest, ModelCard, ModelList};
use crate::params::{self, Endpoint, Plan};
use crate::server::App;
use crate::{auth, backend::EventStream};
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{MatchedPath, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::stream::{self, StreamExt};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Frame, SizeHint};
use serde_json::json;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// SSE comments while a stream waits (queued, or a long prompt), so proxies keep the
/// connection open and a vanished client is noticed by the failed write.
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(10);

/// The CORS layer for `origins` (see `ServerConfig::cors_origins`); `None` when empty. The
/// layer sits outside the key check: a browser's preflight carries no credentials, and the
/// request that follows is checked as any other.
fn cors(origins: &[String]) -> Result<Option<CorsLayer>, String> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list = origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o.trim_end_matches('/'))
                    .map_err(|_| format!("CORS origin {o:?} is not a valid header value"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(list)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .max_age(Duration::from_secs(600)),
    ))
}

/// Checks `ServerConfig::cors_origins` (each a valid header value), for a caller to report
/// before it loads a model (`router` refuses them too).
pub fn check_cors_origins(origins: &[String]) -> Result<(), String> {
    cors(origins).map(|_| ())
}

/// The routes over `app`; an error for CORS origins that are no header values.
pub fn router(app: Arc<App>) -> Result<Router, String> {
    let cors = cors(&app.config.cors_origins)?;
    let protected = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{*model}", get(model))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_key));
    let router = Router::new()
        .merge(protected)
        .route("/health", get(health))
        .route("/", get(crate::page::index))
        .route("/chat.js", get(crate::page::chat_js))
        .route("/chat.css", get(crate::page::chat_css))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(app.clone(), track))
        .with_state(app);
    Ok(match cors {
        Some(c) => router.layer(c),
        None => router,
    })
}

/// Counts every response by route and status, and requests in flight.
async fn track(State(app): State<Arc<App>>, req: axum::extract::Request, next: Next) -> Response {
    // Label by route pattern only: raw paths are chosen by clients and would grow without
    // bound.
    let endpoint = match req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
    {
        Some("/v1/chat/completions") => "/v1/chat/completions",
        Some("/v1/completions") => "/v1/completions",
        Some("/v1/models") | Some("/v1/models/{*model}") => "/v1/models",
        Some("/health") => "/health",
        Some("/metrics") => "/metrics",
        Some("/" | "/chat.js" | "/chat.css") => "/",
        _ => "other",
    };
    let head = req.method() == Method::HEAD;
    let mut guard = Tracked::new(app, endpoint);
    // The guard goes into the response body: a request ends when its body has been sent (a
    // stream runs on long after its headers) or dropped, not when the handler returns. If
    // the client goes away first, this future or the body is dropped, and so is the guard.
    let resp = next.run(req).await;
    guard.status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    // A body of known length was made whole by the handler: the request is complete now
    // (and hyper may not poll it at all: HEAD, an empty body). A stream is complete only
    // once it has ended.
    guard.complete = head || body.size_hint().exact().is_some();
    Response::from_parts(parts, Body::new(TrackedBody { inner: body, guard }))
}

/// Status recorded for a request whose client went away before its response was complete
/// (nginx's 499, "client closed request"; also what nginx logs in front of this server).
pub const CLIENT_CLOSED: u16 = 499;

/// One request in `bitnet_requests_in_flight` until dropped; then counted in
/// `bitnet_requests_total` with its status, or [`CLIENT_CLOSED`] if it did not complete.
struct Tracked {
    app: Arc<App>,
    endpoint: &'static str,
    /// The response's status, once there is one.
    status: u16,
    /// The whole response was handed to the connection.
    complete: bool,
}

impl Tracked {
    fn new(app: Arc<App>, endpoint: &'static str) -> Tracked {
        app.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        Tracked {
            app,
            endpoint,
            status: CLIENT_CLOSED,
            complete: false,
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let m = &self.app.metrics;
        m.in_flight.fetch_sub(1, Ordering::Relaxed);
        let status = if self.complete {
            self.status
        } else {
            CLIENT_CLOSED
        };
        m.request(self.endpoint, status);
    }
}

/// A response body that completes its request's [`Tracked`] when its last frame is taken,
/// and ends it when dropped.
struct TrackedBody {
    inner: Body,
    guard: Tracked,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.guard.complete = true,
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.guard.complete = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

async fn require_key(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    match &app.config.api_key {
        Some(key) if !auth::authorized(req.headers(), key) => {
            ApiError::unauthorized().into_response()
        }
        _ => next.run(req).await,
    }
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(uri.path())
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

async fn health(State(app): State<Arc<App>>) -> Response {
    let s = app.backend.stats();
    let body = |status: &str| {
        json!({"status": status, "running": s.running, "waiting": s.waiting}).to_string()
    };
    if app.shutting_down.load(Ordering::Relaxed) {
        let mut r = (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "application/json")],
            body("shutting down"),
        )
            .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(5u32));
        return r;
    }
    ([(header::CONTENT_TYPE, "application/json")], body("ok")).into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let text = app.metrics.render(&app.backend.stats());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn model_card(app: &App) -> ModelCard {
    ModelCard {
        id: app.config.model_alias.clone(),
        object: "model",
        created: app.started,
        owned_by: "bitnet-rs",
    }
}

async fn models(State(app): State<Arc<App>>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: vec![model_card(&app)],
    })
}

async fn model(State(app): State<Arc<App>>, Path(model): Path<String>) -> Response {
    if model == app.config.model_alias {
        Json(model_card(&app)).into_response()
    } else {
        ApiError::model_not_found(&model).into_response()
    }
}

async fn chat_completions(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    generation(app, Endpoint::Chat, headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn completions(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    generation(app, Endpoint::Completions, headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Reads the whole body within the size limit and the read timeout: a client that trickles
/// its body must not hold a connection and its buffer for ever.
async fn read_body(app: &App, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let limit = app.config.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    match tokio::time::timeout(app.config.read_timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(ApiError::body_timeout()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::too_large(limit))
        }
        Ok(Err(e)) => Err(ApiError::invalid(format!(
            "could not read the request body: {e}"
        ))),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

/// Parses JSON into `T`; a wrong type or value names the field (`param`) it was found in.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // RFC 8259 lets a parser skip a byte order mark (Python's and nlohmann's do).
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    // A request is an object: serde would also fill a struct from an array of its fields in
    // order, and its error for one names Rust's struct ("struct GenerationRequest with 28
    // elements").
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') | None => {}
        Some(_) => {
            return Err(ApiError::invalid(
                "the request body must be a JSON object ({...})",
            ))
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::invalid(format!("the request body is not valid JSON: {inner}"))
        } else if path == "." {
            ApiError::invalid(format!("invalid request body: {inner}"))
        } else {
            ApiError::invalid_param(path.clone(), format!("invalid '{path}': {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::invalid(format!("the request body is not valid JSON: {e}")))?;
    Ok(value)
}

async fn generation(
    app: Arc<App>,
    endpoint: Endpoint,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&app, &headers, body).await?;
    let req: GenerationRequest = parse_json(&bytes)?;
    drop(bytes);
    if let Some(m) = &req.model {
        if *m != app.config.model_alias {
            return Err(ApiError::model_not_found(m));
        }
    }
    let plan = params::plan(&req, endpoint, app.backend.ctx_size(), &app.config.defaults)?;
    drop(req);

    // Chat templates and tokenizers are CPU work that can take milliseconds on long
    // prompts: keep it off the async workers.
    let backend = app.backend.clone();
    let (sources, echo) = (plan.prompts.clone(), plan.echo);
    let prompts = tokio::task::spawn_blocking(move || {
        let ctx = backend.ctx_size();
        sources
            .iter()
            .map(|s| params::tokenize(backend.tokenizer(), s, endpoint, echo, ctx))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|_| ApiError::internal("the tokenizer task failed"))??;

    let mut handles: Vec<EventStream> = Vec::with_capacity(prompts.len() * plan.n);
    for p in &prompts {
        for j in 0..plan.n {
            let req = Request {
                prompt: p.ids.clone(),
                options: plan.options_for(j),
                logprobs: plan.logprobs,
            };
            // On failure the handles already taken are dropped here, cancelling them.
            let h = app
                .backend
                .submit(req)
                .map_err(|e| ApiError::from_submit(e, endpoint))?;
            handles.push(h);
        }
    }

    let meta = Meta {
        id: app.next_id(endpoint),
        created: crate::server::unix_now(),
        model: app.config.model_alias.clone(),
        endpoint,
    };
    let echo: Vec<String> = if plan.echo {
        prompts.iter().map(|p| p.text.clone()).collect()
    } else {
        Vec::new()
    };
    let choices = Choices::new(plan.n, prompts.iter().map(|p| p.ids.len()).collect(), &echo);
    let events = stream::select_all(
        handles
            .into_iter()
            .enumerate()
            .map(|(c, h)| h.map(move |e| (c, e))),
    );
    if plan.stream {
        Ok(stream_response(app, meta, choices, &plan, events))
    } else {
        collect_response(&app, meta, choices, &plan, events).await
    }
}

/// Counts a generation as cancelled if it is dropped (the client went away) before it ended.
struct CancelGuard {
    app: Arc<App>,
    armed: bool,
}

impl CancelGuard {
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.armed {
            self.app.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn collect_response<S>(
    app: &Arc<App>,
    meta: Meta,
    choices: Choices,
    plan: &Plan,
    mut events: S,
) -> Result<Response, ApiError>
where
    S: futures::Stream<Item = (usize, crate::api::Event)> + Unpin,
{
    let mut guard = CancelGuard {
        app: app.clone(),
        armed: true,
    };
    let cx = Ctx {
        tok: app.backend.tokenizer(),
        metrics: &app.metrics,
    };
    let mut col = Collector {
        meta,
        choices,
        logprobs: plan.logprobs.is_some(),
    };
    let result = loop {
        if col.choices.all_done() {
            break Ok(());
        }
        match events.next().await {
            Some((c, ev)) => {
                if let Err(e) = col.event(cx, c, ev) {
                    break Err(e);
                }
            }
            None => {
                break Err(ApiError::internal(
                    "the engine ended a request without a result",
                ))
            }
        }
    };
    guard.disarm();
    result?;
    Ok(Json(col.body()).into_response())
}

struct StreamState<S> {
    app: Arc<App>,
    writer: ChunkWriter,
    events: S,
    pending: VecDeque<String>,
    guard: CancelGuard,
}

fn stream_response<S>(
    app: Arc<App>,
    meta: Meta,
    choices: Choices,
    plan: &Plan,
    events: S,
) -> Response
where
    S: futures::Stream<Item = (usize, crate::api::Event)> + Unpin + Send + 'static,
{
    let mut writer = ChunkWriter {
        meta,
        choices,
        logprobs: plan.logprobs.is_some(),
        include_usage: plan.include_usage,
        ended: false,
    };
    let pending = writer.start().into();
    let state = StreamState {
        guard: CancelGuard {
            app: app.clone(),
            armed: true,
        },
        app,
        writer,
        events,
        pending,
    };
    let sse = stream::unfold(state, |mut st| async move {
        loop {
            if let Some(p) = st.pending.pop_front() {
                return Some((Ok::<_, Infallible>(SseEvent::default().data(p)), st));
            }
            if st.writer.ended {
                st.guard.disarm();
                return None;
            }
            let cx = Ctx {
                tok: st.app.backend.tokenizer(),
                metrics: &st.app.metrics,
            };
            let out = match st.events.next().await {
                Some((c, ev)) => st.writer.event(cx, c, ev),
                None => vec![st.writer.error(&ApiError::internal(
                    "the engine ended a request without a result",
                ))],
            };
            st.pending.extend(out);
        }
    });
    let mut resp = Sse::new(sse)
        .keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE))
        .into_response();
    // Tells nginx not to buffer the stream.
    resp.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_an_object_and_may_start_with_a_byte_order_mark() {
        let ok = |b: &[u8]| parse_json::<GenerationRequest>(b).map(|r| r.prompt.is_some());
        assert!(ok(b"{\"prompt\":\"a\"}").unwrap());
        assert!(ok(b"\xef\xbb\xbf {\"prompt\":\"a\"}").unwrap());
        for body in [
            &b"[]"[..],
            b"[\"kjv\"]",
            b" null",
            b"\"x\"",
            b"\xef\xbb\xbf[1]",
        ] {
            let e = ok(body).unwrap_err();
            assert_eq!(e.status, 400, "{body:?}");
            assert!(e.message.contains("JSON object"), "{body:?}: {}", e.message);
        }
    }
}
