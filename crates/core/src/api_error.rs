//! The upstream's error body ([`ApiError`]) and its `Retry-After` ([`parse_retry_after`]).

use std::fmt;
use std::time::{Duration, SystemTime};

use http::StatusCode;
use serde_json::{Map, Value};

/// The `code` of an OpenRouter error body: a number in current docs, a string in older ones.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCode {
    /// `"code": 429`
    Number(i64),
    /// `"code": "server_error"`
    Text(String),
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorCode::Number(n) => write!(f, "{n}"),
            ErrorCode::Text(s) => f.write_str(s),
        }
    }
}

/// The parsed OpenRouter error object (`{"error": {...}}`), pre-stream or mid-stream.
///
/// Every field is optional and unknown fields are kept in [`ApiError::metadata`] or ignored:
/// upstreams differ and the docs changed shape over time.
///
/// ```
/// use llm_layers_core::ApiError;
/// let body = br#"{"error":{"code":429,"message":"Rate limit exceeded",
///   "metadata":{"error_type":"rate_limit_exceeded","provider_name":"OpenAI"}}}"#;
/// let e = ApiError::from_body(body).ok_or("not an error body")?;
/// assert_eq!(e.message.as_deref(), Some("Rate limit exceeded"));
/// assert_eq!(e.error_type.as_deref(), Some("rate_limit_exceeded"));
/// assert_eq!(e.provider_name.as_deref(), Some("OpenAI"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ApiError {
    /// `error.code`, a number or a string.
    pub code: Option<ErrorCode>,
    /// `error.message`.
    pub message: Option<String>,
    /// `error.metadata.error_type` (or `error.error_type`).
    pub error_type: Option<String>,
    /// `error.metadata.provider_name` (or `error.provider_name`).
    pub provider_name: Option<String>,
    /// `error.availability.retryable`, when present: overrides the status table.
    pub retryable: Option<bool>,
    /// `error.availability.code` (`capacity_exhausted`, `model_not_found`, ...).
    pub availability_code: Option<String>,
    /// `error.metadata` as sent, a loose map.
    pub metadata: Option<Map<String, Value>>,
}

impl ApiError {
    /// Parses a whole error body: OpenRouter's and OpenAI's `{"error": {...}}`,
    /// Anthropic's `{"type": "error", "error": {"type": ..., "message": ...}}`, or vLLM's
    /// flat `{"object": "error", "message": ..., "type": ..., "code": 400}`; `None` if it is
    /// none of them.
    ///
    /// ```
    /// use llm_layers_core::ApiError;
    /// let anthropic = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    /// let e = ApiError::from_body(anthropic).unwrap_or_default();
    /// assert_eq!(e.error_type.as_deref(), Some("overloaded_error"));
    /// let vllm = br#"{"object":"error","message":"bad","type":"BadRequestError","param":null,"code":400}"#;
    /// let e = ApiError::from_body(vllm).unwrap_or_default();
    /// assert_eq!((e.message.as_deref(), e.status_code().map(|s| s.as_u16())), (Some("bad"), Some(400)));
    /// ```
    pub fn from_body(body: &[u8]) -> Option<ApiError> {
        let v: Value = serde_json::from_slice(body).ok()?;
        match v.get("error") {
            Some(e) => ApiError::from_value(e),
            None if v.get("object").and_then(Value::as_str) == Some("error") => {
                ApiError::from_value(&v)
            }
            None => None,
        }
    }

    /// Parses the inner error object (the value of the `error` key).
    pub fn from_value(v: &Value) -> Option<ApiError> {
        let obj = match v {
            Value::Object(o) => o,
            Value::String(s) => {
                return Some(ApiError {
                    message: Some(s.clone()),
                    ..ApiError::default()
                });
            }
            _ => return None,
        };
        let code = match obj.get("code") {
            Some(Value::Number(n)) => n.as_i64().map(ErrorCode::Number),
            Some(Value::String(s)) => Some(ErrorCode::Text(s.clone())),
            _ => None,
        };
        let metadata = obj.get("metadata").and_then(Value::as_object).cloned();
        let str_field = |key: &str| -> Option<String> {
            metadata
                .as_ref()
                .and_then(|m| m.get(key))
                .or_else(|| obj.get(key))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let availability = obj.get("availability").and_then(Value::as_object);
        Some(ApiError {
            code,
            message: obj
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned),
            // OpenRouter's `metadata.error_type`; OpenAI's, Anthropic's and vLLM's `type`.
            error_type: str_field("error_type")
                .or_else(|| obj.get("type").and_then(Value::as_str).map(str::to_owned)),
            provider_name: str_field("provider_name"),
            retryable: availability
                .and_then(|a| a.get("retryable"))
                .and_then(Value::as_bool),
            availability_code: availability
                .and_then(|a| a.get("code"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            metadata,
        })
    }

    /// `error.code` as an HTTP status, when it is a number in the status range.
    pub fn status_code(&self) -> Option<StatusCode> {
        match &self.code {
            Some(ErrorCode::Number(n)) => u16::try_from(*n)
                .ok()
                .and_then(|n| StatusCode::from_u16(n).ok()),
            _ => None,
        }
    }

    /// `error.metadata.limit_source` of a `402`: whose money ran out.
    /// `openrouter_key_limit` is the key's credit limit (the key's fault, until its reset);
    /// `openrouter_credits` is the account's balance against *this request's* estimated cost
    /// (a smaller request may pass: the call's); `openrouter_in_flight_budget` passes after
    /// its `Retry-After`.
    ///
    /// ```
    /// use llm_layers_core::ApiError;
    /// let body = br#"{"error":{"code":402,"message":"no","metadata":{"limit_source":"openrouter_key_limit"}}}"#;
    /// assert_eq!(ApiError::from_body(body).unwrap_or_default().limit_source(), Some("openrouter_key_limit"));
    /// ```
    pub fn limit_source(&self) -> Option<&str> {
        self.metadata
            .as_ref()?
            .get("limit_source")
            .and_then(Value::as_str)
    }
}

/// Parses a `Retry-After` value: delay-seconds (`"30"`, or `"1.5"` leniently) or an
/// HTTP date, relative to `now`. A date in the past gives zero; garbage gives `None`.
///
/// ```
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// use llm_layers_core::parse_retry_after;
/// let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
/// assert_eq!(parse_retry_after("30", now), Some(Duration::from_secs(30)));
/// assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now), Some(Duration::from_secs(30)));
/// assert_eq!(parse_retry_after("soon", now), None);
/// ```
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).ok();
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}
