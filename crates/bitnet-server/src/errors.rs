//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the HTTP
//! status the official clients map to their exception types.

use crate::api::SubmitError;
use crate::params::Endpoint;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A request that ends in an error response.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds for `Retry-After` (503 only).
    pub retry_after: Option<u32>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: ErrorObject<'a>,
}

/// The `error` object, also sent as an SSE `data:` line when a stream fails midway.
#[derive(Serialize)]
pub struct ErrorObject<'a> {
    pub message: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub param: Option<&'a str>,
    pub code: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// A 400 that names the offending request field.
    pub fn invalid_param(param: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            param: Some(param.into()),
            ..ApiError::invalid(message)
        }
    }

    pub fn with_param(self, param: impl Into<String>) -> ApiError {
        ApiError {
            param: Some(param.into()),
            ..self
        }
    }

    pub fn unauthorized() -> ApiError {
        ApiError {
            code: Some("invalid_api_key"),
            ..ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "missing or incorrect API key: send it as 'Authorization: Bearer <key>'",
            )
        }
    }

    pub fn model_not_found(model: &str) -> ApiError {
        ApiError {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("the model '{model}' does not exist; GET /v1/models lists the one served"),
            )
        }
    }

    pub fn not_found(path: &str) -> ApiError {
        ApiError {
            code: Some("not_found"),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("no route for {path}"),
            )
        }
    }

    pub fn method_not_allowed() -> ApiError {
        ApiError {
            code: Some("method_not_allowed"),
            ..ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "method not allowed for this route",
            )
        }
    }

    pub fn too_large(limit: usize) -> ApiError {
        ApiError {
            code: Some("request_too_large"),
            ..ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("the request body is larger than the server's limit of {limit} bytes"),
            )
        }
    }

    pub fn body_timeout() -> ApiError {
        ApiError {
            code: Some("request_timeout"),
            ..ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                "the request body did not arrive in time",
            )
        }
    }

    pub fn unavailable(message: impl Into<String>, retry_after: u32) -> ApiError {
        ApiError {
            retry_after: Some(retry_after),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
        }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    pub fn context_length(message: impl Into<String>) -> ApiError {
        ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::invalid_param("messages", message)
        }
    }

    pub fn object(&self) -> ErrorObject<'_> {
        ErrorObject {
            message: &self.message,
            kind: self.kind,
            param: self.param.as_deref(),
            code: self.code,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(&Body {
            error: self.object(),
        })
        // Serializing strings and options cannot fail; keep a valid body regardless.
        .unwrap_or_else(|_| {
            r#"{"error":{"message":"error","type":"server_error","param":null,"code":null}}"#.into()
        })
    }
}

impl ApiError {
    /// A 400 for the engine's own check of a request's values, naming the request field when
    /// the message says which (the engine's messages start with their parameter's name).
    pub fn engine_invalid(message: &str, endpoint: Endpoint) -> ApiError {
        let name = message
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .next()
            .unwrap_or("");
        let param = match (name, endpoint) {
            ("repeat_penalty", _) => Some("repetition_penalty"),
            ("top_logprobs", Endpoint::Completions) => Some("logprobs"),
            (
                p @ ("temperature" | "top_p" | "top_k" | "min_p" | "presence_penalty"
                | "frequency_penalty" | "top_logprobs"),
                _,
            ) => Some(p),
            _ => None,
        };
        let e = ApiError::invalid(message);
        match param {
            Some(p) => e.with_param(p),
            None => e,
        }
    }

    pub fn from_submit(e: SubmitError, endpoint: Endpoint) -> ApiError {
        let prompt_param = endpoint.prompt_param();
        match &e {
            // One second is about how long a short request holds a slot on a small model.
            SubmitError::QueueFull(_) => ApiError::unavailable(e.to_string(), 1),
            SubmitError::ShuttingDown => ApiError::unavailable(e.to_string(), 5),
            SubmitError::PromptTooLong { .. } => {
                ApiError::context_length(e.to_string()).with_param(prompt_param)
            }
            SubmitError::EmptyPrompt | SubmitError::BadToken { .. } => {
                ApiError::invalid_param(prompt_param, e.to_string())
            }
            SubmitError::Invalid(msg) => ApiError {
                message: e.to_string(),
                ..ApiError::engine_invalid(msg, endpoint)
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            self.to_json(),
        )
            .into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of a body that stalled is not worth reading: drop the connection.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_is_openai() {
        let e = ApiError::invalid_param("temperature", "too hot");
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"message": "too hot", "type": "invalid_request_error",
                "param": "temperature", "code": null}})
        );
    }

    #[test]
    fn submit_errors_map_to_statuses() {
        use Endpoint::Completions;
        let full = ApiError::from_submit(SubmitError::QueueFull(3), Endpoint::Completions);
        assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(full.retry_after, Some(1));
        let resp = full.into_response();
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        let long = ApiError::from_submit(
            SubmitError::PromptTooLong { prompt: 9, ctx: 4 },
            Completions,
        );
        assert_eq!(long.status, StatusCode::BAD_REQUEST);
        assert_eq!(long.code, Some("context_length_exceeded"));
        assert_eq!(long.param.as_deref(), Some("prompt"));
        let bad = ApiError::from_submit(SubmitError::BadToken { id: 9, vocab: 4 }, Completions);
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        let down = ApiError::from_submit(SubmitError::ShuttingDown, Endpoint::Chat);
        assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn engine_invalid_names_the_request_field() {
        let param = |msg: &str, ep| {
            let e = ApiError::from_submit(SubmitError::Invalid(msg.into()), ep);
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.contains(msg), "{e:?}");
            e.param
        };
        let chat = Endpoint::Chat;
        let cmpl = Endpoint::Completions;
        assert_eq!(
            param("temperature must be >= 0, got -1", chat).as_deref(),
            Some("temperature")
        );
        assert_eq!(
            param("top_p must be in (0, 1], got 0", cmpl).as_deref(),
            Some("top_p")
        );
        assert_eq!(
            param("repeat_penalty must be > 0, got 0", cmpl).as_deref(),
            Some("repetition_penalty")
        );
        assert_eq!(
            param("top_logprobs must be at most 20, got 21", chat).as_deref(),
            Some("top_logprobs")
        );
        assert_eq!(
            param("top_logprobs must be at most 20, got 21", cmpl).as_deref(),
            Some("logprobs")
        );
        assert_eq!(param("something else", chat), None);
        assert_eq!(param("", chat), None);
    }

    #[test]
    fn unauthorized_asks_for_bearer() {
        let resp = ApiError::unauthorized().into_response();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
