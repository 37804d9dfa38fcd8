//! `LlmError` to an OpenAI-shaped error: `{"error": {"message", "type", "code"}}` with the
//! right HTTP status and `Retry-After`.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use llm_layers_core::{ErrorKind, LlmError};
use serde_json::{Value, json};

/// An error as the gateway answers it.
#[derive(Debug, Clone)]
pub struct ApiFailure {
    /// The HTTP status.
    pub status: StatusCode,
    /// The OpenAI error `type`.
    pub kind: &'static str,
    /// The OpenAI error `code`.
    pub code: String,
    /// A human-readable message; never holds a secret.
    pub message: String,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u64>,
    /// The request field at fault (OpenAI's `param`), when one is.
    pub param: Option<String>,
}

impl ApiFailure {
    /// A failure of the caller's request.
    pub fn invalid(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiFailure {
            status,
            kind: "invalid_request_error",
            code: code.to_owned(),
            message: message.into(),
            retry_after: None,
            param: None,
        }
    }

    /// A missing, wrong or revoked gateway key: OpenAI's 401.
    pub fn unauthorized(message: &str) -> Self {
        ApiFailure {
            status: StatusCode::UNAUTHORIZED,
            kind: "invalid_request_error",
            code: "invalid_api_key".to_owned(),
            message: message.to_owned(),
            retry_after: None,
            param: None,
        }
    }

    /// The same failure, naming the request field at fault.
    #[must_use]
    pub fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_owned());
        self
    }

    /// A failure of the caller's permissions (`403`, `permission_error`).
    pub fn forbidden(code: &str, message: impl Into<String>) -> Self {
        ApiFailure {
            status: StatusCode::FORBIDDEN,
            kind: "permission_error",
            code: code.to_owned(),
            message: message.into(),
            retry_after: None,
            param: None,
        }
    }

    /// A tenant's budget is spent for this window: OpenAI's `429 insufficient_quota`, with
    /// the seconds until the window ends as `Retry-After`.
    pub fn insufficient_quota(
        budget: crate::budget::Budget,
        spent_usd: f64,
        reset_in: u64,
    ) -> Self {
        ApiFailure {
            status: StatusCode::TOO_MANY_REQUESTS,
            kind: "insufficient_quota",
            code: "insufficient_quota".to_owned(),
            message: format!(
                "this key's budget of ${} per {} is spent (${spent_usd:.6} used or reserved); \
                 it resets in {reset_in} s",
                budget.usd,
                budget.per.name()
            ),
            retry_after: Some(reset_in),
            param: None,
        }
    }

    /// The `{"error": ...}` body.
    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "code": self.code, "param": self.param}})
    }
}

fn openai_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

impl From<&LlmError> for ApiFailure {
    fn from(e: &LlmError) -> Self {
        let upstream = e.status_code().map(|s| s.as_u16());
        // A 402 about the key's own credit limit is the operator's to fix, not the caller's;
        // one about the account's balance against this request's size is the caller's.
        let key_out_of_credit = upstream == Some(402)
            && e.api_error().and_then(|a| a.limit_source()) == Some("openrouter_key_limit");
        let status = match e.kind() {
            ErrorKind::Status | ErrorKind::Upstream => match upstream {
                // Our key was refused: the caller can do nothing about it.
                Some(401) => StatusCode::BAD_GATEWAY,
                Some(402) if key_out_of_credit => StatusCode::SERVICE_UNAVAILABLE,
                Some(408 | 524) => StatusCode::GATEWAY_TIMEOUT,
                Some(429) => StatusCode::TOO_MANY_REQUESTS,
                Some(503 | 529) => StatusCode::SERVICE_UNAVAILABLE,
                Some(s @ 400..=499) => StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_GATEWAY),
                _ => StatusCode::BAD_GATEWAY,
            },
            ErrorKind::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::CircuitOpen => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            // 499: the client closed the request (nginx's code); nobody reads it.
            ErrorKind::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            _ => StatusCode::BAD_GATEWAY,
        };
        let code = e
            .api_error()
            .and_then(|a| a.error_type.clone())
            .unwrap_or_else(|| e.kind().as_str().to_owned());
        let message = match e.kind() {
            ErrorKind::Status if upstream == Some(401) => {
                "the upstream refused the gateway's API key".to_owned()
            }
            ErrorKind::Status if key_out_of_credit => {
                "the gateway's upstream API key has spent its credit limit".to_owned()
            }
            _ => e.to_string(),
        };
        ApiFailure {
            status,
            kind: openai_type(status),
            code,
            message,
            retry_after: e.retry_after().map(|d| d.as_secs_f64().ceil() as u64),
            param: None,
        }
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::try_from(s.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        r
    }
}
