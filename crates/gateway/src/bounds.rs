//! Bounds on everything a caller controls, checked before any state is touched.
//!
//! A model id becomes a metric label, a rate-limit bucket key, a latency-store key and a
//! breaker gauge; a tenant becomes a bucket key and a status-page row. The caps on those
//! stores bound how *many* values they keep; these bounds keep each value small, so that no
//! field of one request can grow the gateway's memory or its `/metrics` page. A request
//! over a bound is refused with a `400` in OpenAI's shape that names the field and its
//! limit (`param`, and a `code` as OpenAI spells it: `string_above_max_length`, ...).
//!
//! ```
//! use llm_layers_core::ChatRequest;
//! use llm_layers_gateway::bounds::Bounds;
//! let ok: ChatRequest = serde_json::from_str(r#"{"model":"openai/gpt-4o","messages":[{"role":"user","content":"hi"}]}"#)?;
//! assert!(Bounds::default().check(ok.body()).is_ok());
//! let long = format!(r#"{{"model":"{}","messages":[{{"role":"user","content":"hi"}}]}}"#, "a".repeat(4096));
//! let long: ChatRequest = serde_json::from_str(&long)?;
//! let refused = Bounds::default().check(long.body()).unwrap_err();
//! assert_eq!((refused.status.as_u16(), refused.param.as_deref()), (400, Some("model")));
//! # Ok::<(), serde_json::Error>(())
//! ```

use http::StatusCode;
use llm_layers_core::{ChatBody, Content};
use serde_json::Value;

use crate::error::ApiFailure;

/// The bounds a request must keep. The defaults admit every request OpenAI's and
/// OpenRouter's APIs admit in practice (OpenRouter's model ids are tens of bytes; OpenAI
/// takes at most 128 tools and 4 stop sequences).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Bounds {
    /// Longest `model` (and each `models` entry), in bytes (128).
    pub model_len: usize,
    /// Most entries in `models` (16).
    pub models: usize,
    /// Most `messages` (4,096).
    pub messages: usize,
    /// Longest message `role`, `name` or `tool_call_id`, in bytes (256).
    pub message_field_len: usize,
    /// Most content parts in one message (256).
    pub content_parts: usize,
    /// Most `tools` (128).
    pub tools: usize,
    /// Largest `n` (8): every choice is a whole answer upstream, billed.
    pub n: u64,
    /// Most `stop` sequences (4).
    pub stop: usize,
    /// Longest `stop` sequence, in bytes (256).
    pub stop_len: usize,
    /// Longest `user`, in bytes (256).
    pub user_len: usize,
    /// Longest tenant (`x-tenant`), in bytes (128).
    pub tenant_len: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            model_len: 128,
            models: 16,
            messages: 4096,
            message_field_len: 256,
            content_parts: 256,
            tools: 128,
            n: 8,
            stop: 4,
            stop_len: 256,
            user_len: 256,
            tenant_len: 128,
        }
    }
}

/// A `400` for `param`.
fn refuse(param: &str, code: &str, message: String) -> ApiFailure {
    ApiFailure::invalid(StatusCode::BAD_REQUEST, code, message).with_param(param)
}

fn too_long(param: &str, len: usize, max: usize) -> ApiFailure {
    refuse(
        param,
        "string_above_max_length",
        format!("'{param}' is {len} bytes long; at most {max} are allowed"),
    )
}

fn too_many(param: &str, len: usize, max: usize) -> ApiFailure {
    refuse(
        param,
        "array_above_max_length",
        format!("'{param}' has {len} entries; at most {max} are allowed"),
    )
}

/// Whether `c` may appear in a model id: what OpenRouter's and OpenAI-compatible ids use
/// (`author/slug-1.5:variant`, `tier:NAME`, `@preset/name`, `Org/Model_v2`).
fn model_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'/' | b':' | b'-' | b'_' | b'.' | b'@' | b'+' | b'~')
}

impl Bounds {
    /// Checks a model id (`param` names where it came from).
    pub fn check_model(&self, param: &str, model: &str) -> Result<(), ApiFailure> {
        if model.len() > self.model_len {
            return Err(too_long(param, model.len(), self.model_len));
        }
        if model.is_empty() || !model.bytes().all(model_char) {
            return Err(refuse(
                param,
                "invalid_value",
                format!("'{param}' must be a model id: letters, digits and / : - _ . @ + ~ only"),
            ));
        }
        Ok(())
    }

    /// Checks a tenant name (`x-tenant`, or a key's tenant): 1 to `tenant_len` bytes, no
    /// space or control character.
    pub fn check_tenant(&self, tenant: &str) -> Result<(), ApiFailure> {
        if tenant.len() > self.tenant_len {
            return Err(too_long("x-tenant", tenant.len(), self.tenant_len));
        }
        if tenant.is_empty() || tenant.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(refuse(
                "x-tenant",
                "invalid_value",
                "'x-tenant' must be 1 or more characters with no space or control character"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    /// Checks a request body against every bound.
    pub fn check(&self, body: &ChatBody) -> Result<(), ApiFailure> {
        if let Some(m) = &body.model {
            self.check_model("model", m)?;
        }
        if let Some(ms) = &body.models {
            if ms.len() > self.models {
                return Err(too_many("models", ms.len(), self.models));
            }
            for m in ms {
                self.check_model("models", m)?;
            }
        }
        if body.messages.len() > self.messages {
            return Err(too_many("messages", body.messages.len(), self.messages));
        }
        for m in &body.messages {
            for (param, v) in [
                ("messages.role", Some(&m.role)),
                ("messages.name", m.name.as_ref()),
                ("messages.tool_call_id", m.tool_call_id.as_ref()),
            ] {
                if let Some(v) = v.filter(|v| v.len() > self.message_field_len) {
                    return Err(too_long(param, v.len(), self.message_field_len));
                }
            }
            if let Some(Content::Parts(parts)) = &m.content {
                if parts.len() > self.content_parts {
                    return Err(too_many(
                        "messages.content",
                        parts.len(),
                        self.content_parts,
                    ));
                }
            }
        }
        if let Some(tools) = &body.tools {
            if tools.len() > self.tools {
                return Err(too_many("tools", tools.len(), self.tools));
            }
        }
        if let Some(n) = body.extra.get("n") {
            match n.as_u64() {
                Some(n @ 1..) if n <= self.n => {}
                _ => {
                    return Err(refuse(
                        "n",
                        "integer_above_max_value",
                        format!("'n' must be a whole number from 1 to {}", self.n),
                    ));
                }
            }
        }
        match &body.stop {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                if s.len() > self.stop_len {
                    return Err(too_long("stop", s.len(), self.stop_len));
                }
            }
            Some(Value::Array(a)) => {
                if a.len() > self.stop {
                    return Err(too_many("stop", a.len(), self.stop));
                }
                for s in a {
                    match s.as_str() {
                        Some(s) if s.len() > self.stop_len => {
                            return Err(too_long("stop", s.len(), self.stop_len));
                        }
                        Some(_) => {}
                        None => {
                            return Err(refuse(
                                "stop",
                                "invalid_type",
                                "'stop' must be a string or an array of strings".to_owned(),
                            ));
                        }
                    }
                }
            }
            Some(_) => {
                return Err(refuse(
                    "stop",
                    "invalid_type",
                    "'stop' must be a string or an array of strings".to_owned(),
                ));
            }
        }
        if let Some(u) = &body.user {
            if u.len() > self.user_len {
                return Err(too_long("user", u.len(), self.user_len));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llm_layers_core::ChatRequest;
    use serde_json::json;

    fn body(v: Value) -> ChatBody {
        let mut v = v;
        v["messages"] = json!([{"role": "user", "content": "hi"}]);
        serde_json::from_value::<ChatRequest>(v)
            .unwrap()
            .body()
            .clone()
    }

    #[test]
    fn each_field_over_its_bound_is_refused_by_name() {
        let b = Bounds::default();
        let cases = [
            (
                json!({"model": "m".repeat(129)}),
                "model",
                "string_above_max_length",
            ),
            (json!({"model": "openai/gpt 4o"}), "model", "invalid_value"),
            (json!({"model": "a\"b"}), "model", "invalid_value"),
            (
                json!({"models": vec!["a/b"; 17]}),
                "models",
                "array_above_max_length",
            ),
            (
                json!({"models": ["a/b", "x".repeat(200)]}),
                "models",
                "string_above_max_length",
            ),
            (
                json!({"tools": vec![json!({}); 129]}),
                "tools",
                "array_above_max_length",
            ),
            (json!({"n": 9}), "n", "integer_above_max_value"),
            (json!({"n": 0}), "n", "integer_above_max_value"),
            (json!({"n": "2"}), "n", "integer_above_max_value"),
            (
                json!({"stop": ["a", "b", "c", "d", "e"]}),
                "stop",
                "array_above_max_length",
            ),
            (
                json!({"stop": "s".repeat(257)}),
                "stop",
                "string_above_max_length",
            ),
            (json!({"stop": [1]}), "stop", "invalid_type"),
            (
                json!({"user": "u".repeat(257)}),
                "user",
                "string_above_max_length",
            ),
        ];
        for (v, param, code) in cases {
            let e = b.check(&body(v.clone())).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{v}");
            assert_eq!(e.param.as_deref(), Some(param), "{v}");
            assert_eq!(e.code, code, "{v}");
        }
        let many: Vec<Value> = (0..4097)
            .map(|_| json!({"role": "user", "content": "x"}))
            .collect();
        let req: ChatRequest =
            serde_json::from_value(json!({"model": "a/b", "messages": many})).unwrap();
        assert_eq!(
            b.check(req.body()).unwrap_err().param.as_deref(),
            Some("messages")
        );
        let parts: Vec<Value> = (0..257)
            .map(|_| json!({"type": "text", "text": "x"}))
            .collect();
        let req: ChatRequest =
            serde_json::from_value(json!({"messages": [{"role": "user", "content": parts}]}))
                .unwrap();
        assert_eq!(
            b.check(req.body()).unwrap_err().param.as_deref(),
            Some("messages.content")
        );
        let req: ChatRequest = serde_json::from_value(
            json!({"messages": [{"role": "r".repeat(300), "content": "x"}]}),
        )
        .unwrap();
        assert_eq!(
            b.check(req.body()).unwrap_err().param.as_deref(),
            Some("messages.role")
        );
    }

    /// Every bound admits exactly its limit and refuses one past it.
    #[test]
    fn every_bound_admits_exactly_its_limit() {
        let b = Bounds::default();
        let msgs = |n: usize, role: &str, name: &str, id: &str, parts: usize| {
            let content: Vec<Value> = (0..parts)
                .map(|_| json!({"type": "text", "text": "x"}))
                .collect();
            let m = json!({"role": role, "name": name, "tool_call_id": id, "content": content});
            json!(vec![m; n])
        };
        let at = |extra: Value| {
            let mut v = json!({"model": "a/b", "messages": msgs(1, "user", "n", "i", 1)});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            v
        };
        let field = "f".repeat(256);
        let cases: Vec<(Value, Value, &str)> = vec![
            (
                at(json!({"model": "m".repeat(128)})),
                at(json!({"model": "m".repeat(129)})),
                "model",
            ),
            (
                at(json!({"models": vec!["a/b"; 16]})),
                at(json!({"models": vec!["a/b"; 17]})),
                "models",
            ),
            (
                at(json!({"models": ["m".repeat(128)]})),
                at(json!({"models": ["m".repeat(129)]})),
                "models",
            ),
            (
                at(json!({"messages": msgs(4096, "user", "n", "i", 1)})),
                at(json!({"messages": msgs(4097, "user", "n", "i", 1)})),
                "messages",
            ),
            (
                at(json!({"messages": msgs(1, &field, "n", "i", 1)})),
                at(json!({"messages": msgs(1, &format!("{field}f"), "n", "i", 1)})),
                "messages.role",
            ),
            (
                at(json!({"messages": msgs(1, "user", &field, "i", 1)})),
                at(json!({"messages": msgs(1, "user", &format!("{field}f"), "i", 1)})),
                "messages.name",
            ),
            (
                at(json!({"messages": msgs(1, "user", "n", &field, 1)})),
                at(json!({"messages": msgs(1, "user", "n", &format!("{field}f"), 1)})),
                "messages.tool_call_id",
            ),
            (
                at(json!({"messages": msgs(1, "user", "n", "i", 256)})),
                at(json!({"messages": msgs(1, "user", "n", "i", 257)})),
                "messages.content",
            ),
            (
                at(json!({"tools": vec![json!({}); 128]})),
                at(json!({"tools": vec![json!({}); 129]})),
                "tools",
            ),
            (at(json!({"n": 8})), at(json!({"n": 9})), "n"),
            (
                at(json!({"stop": vec!["s"; 4]})),
                at(json!({"stop": vec!["s"; 5]})),
                "stop",
            ),
            (
                at(json!({"stop": [&field]})),
                at(json!({"stop": [format!("{field}s")]})),
                "stop",
            ),
            (
                at(json!({"stop": &field})),
                at(json!({"stop": format!("{field}s")})),
                "stop",
            ),
            (
                at(json!({"user": &field})),
                at(json!({"user": format!("{field}u")})),
                "user",
            ),
        ];
        for (ok, over, param) in cases {
            let ok: ChatRequest = serde_json::from_value(ok).unwrap();
            if let Err(e) = b.check(ok.body()) {
                panic!("{param} at its limit refused: {:?}", e.param);
            }
            let over: ChatRequest = serde_json::from_value(over).unwrap();
            let e = b.check(over.body()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{param} one past it");
        }
        assert!(b.check_tenant(&"t".repeat(128)).is_ok());
        assert!(b.check_tenant(&"t".repeat(129)).is_err());
    }

    #[test]
    fn real_ids_and_requests_pass() {
        let b = Bounds::default();
        for m in [
            "openai/gpt-4o",
            "meta-llama/llama-3.1-8b-instruct:free",
            "tier:fast",
            "Qwen/Qwen2.5-72B-Instruct",
            "@preset/my-preset",
            "ft:gpt-4o-mini:org:custom:id",
        ] {
            assert!(b.check_model("model", m).is_ok(), "{m}");
        }
        let ok = body(
            json!({"model": "a/b", "n": 8, "stop": ["x", "y", "z", "w"], "user": "u-1",
            "models": ["a/b", "c/d"], "tools": [{"type": "function"}]}),
        );
        assert!(b.check(&ok).is_ok());
        assert!(b.check_tenant("acme-prod_1").is_ok());
        assert_eq!(
            b.check_tenant(&"t".repeat(129))
                .unwrap_err()
                .param
                .as_deref(),
            Some("x-tenant")
        );
        assert!(b.check_tenant("a b").is_err() && b.check_tenant("").is_err());
    }
}
