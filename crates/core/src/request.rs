//! [`ChatRequest`]: the OpenAI-compatible body plus OpenRouter routing and per-request
//! extensions.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod extensions;
mod wire;
pub use extensions::{
    Alternatives, AttemptKind, Deadline, GivenUp, KeyId, Priority, ProviderPlan, Tenant,
    UpstreamName, WholeAnswer,
};
use serde_json::{Map, Value};
use tokio::time::Instant;
pub use wire::OPENROUTER_ONLY_FIELDS;

/// One chat completion request, as it flows through the stack.
///
/// The body sits behind an [`Arc`], so cloning a request (which retry and hedge do per
/// attempt) is one reference-count increment, and so are the extensions: a layer that
/// rewrites the body (a breaker adding to `provider.ignore`) copies it once with
/// [`body_mut`](ChatRequest::body_mut), and a layer that adds an extension to a shared
/// request copies the extensions once with [`extensions_mut`](ChatRequest::extensions_mut).
///
/// ```
/// use llm_layers_core::{ChatRequest, Message};
/// let req = ChatRequest::new("openai/gpt-4o", vec![Message::user("Hello")]);
/// let copy = req.clone(); // cheap: the body is shared
/// assert_eq!(copy.body().model.as_deref(), Some("openai/gpt-4o"));
/// let json = serde_json::to_string(&req)?;
/// assert!(json.contains(r#""content":"Hello""#));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct ChatRequest {
    body: Arc<ChatBody>,
    /// Shared by clones until one of them writes; `None` until the first write.
    extensions: Option<Arc<http::Extensions>>,
}

impl ChatRequest {
    /// A request for `model` with `messages`.
    pub fn new(model: impl Into<String>, messages: Vec<Message>) -> ChatRequest {
        ChatRequest::from_body(ChatBody {
            model: Some(model.into()),
            messages,
            ..ChatBody::default()
        })
    }

    /// Wraps a body.
    pub fn from_body(body: ChatBody) -> ChatRequest {
        ChatRequest {
            body: Arc::new(body),
            extensions: None,
        }
    }

    /// The body, shared.
    pub fn body(&self) -> &ChatBody {
        &self.body
    }

    /// The body, copied first if another clone shares it.
    pub fn body_mut(&mut self) -> &mut ChatBody {
        Arc::make_mut(&mut self.body)
    }

    /// The shared body handle itself.
    pub fn shared_body(&self) -> &Arc<ChatBody> {
        &self.body
    }

    /// The model id, or `""` when the body names none (the account default).
    pub fn model(&self) -> &str {
        self.body.model.as_deref().unwrap_or("")
    }

    /// Whether the caller asked for a stream.
    pub fn is_stream(&self) -> bool {
        self.body.stream.unwrap_or(false)
    }

    /// Per-request extensions (deadline, tenant, priority, or your own types).
    pub fn extensions(&self) -> &http::Extensions {
        static NONE: LazyLock<http::Extensions> = LazyLock::new(http::Extensions::new);
        self.extensions.as_deref().unwrap_or(&NONE)
    }

    /// Per-request extensions, mutably: copied first if another clone shares them.
    ///
    /// ```
    /// use llm_layers_core::{ChatRequest, Message};
    /// let mut a = ChatRequest::new("openai/gpt-4o", vec![Message::user("hi")]);
    /// a.extensions_mut().insert(7u32);
    /// let mut b = a.clone();
    /// assert!(std::ptr::eq(a.extensions(), b.extensions()), "a clone shares them");
    /// b.extensions_mut().insert(8u32); // b's own copy now
    /// assert_eq!(a.extensions().get::<u32>(), Some(&7));
    /// assert_eq!(b.extensions().get::<u32>(), Some(&8));
    /// ```
    pub fn extensions_mut(&mut self) -> &mut http::Extensions {
        Arc::make_mut(self.extensions.get_or_insert_with(Default::default))
    }

    /// The request's deadline, if one was set by the caller or a timeout layer.
    pub fn deadline(&self) -> Option<Instant> {
        self.extensions().get::<Deadline>().map(|d| d.0)
    }

    /// Sets the deadline, or tightens it if one earlier than `at` is already set.
    pub fn tighten_deadline(&mut self, at: Instant) {
        let at = match self.deadline() {
            Some(existing) if existing <= at => existing,
            _ => at,
        };
        self.extensions_mut().insert(Deadline(at));
    }

    /// Time left before the deadline from `now` (`None` when there is no deadline).
    pub fn time_left(&self, now: Instant) -> Option<Duration> {
        self.deadline().map(|d| d.saturating_duration_since(now))
    }
}

impl Serialize for ChatRequest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.body.serialize(s)
    }
}

impl<'de> Deserialize<'de> for ChatRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ChatBody::deserialize(d).map(ChatRequest::from_body)
    }
}

/// The JSON body of `POST /chat/completions`.
///
/// Fields we do not model are kept in [`extra`](ChatBody::extra) and sent on unchanged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatBody {
    /// `"author/slug"` plus an optional variant suffix. Absent: the account default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The conversation.
    #[serde(default)]
    pub messages: Vec<Message>,
    /// Stream the answer as server-sent events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Maximum tokens to generate (deprecated upstream in favour of the next field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Maximum tokens to generate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// Sampling temperature, 0 to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Stop sequences: a string or an array of strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Value>,
    /// Sampling seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// Tool (function) definitions, in the OpenAI shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Value>>,
    /// `"none"`, `"auto"`, `"required"` or `{type:"function",function:{name}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    /// `{type:"json_object"}` or `{type:"json_schema", ...}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    /// An end-user id for abuse monitoring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `{include_usage}`: deprecated and ignored by OpenRouter, kept for passthrough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<Value>,
    /// OpenRouter provider routing preferences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderPreferences>,
    /// OpenRouter model fallback list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// Every other field, sent on unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatBody {
    /// A rough count of the prompt's tokens: its message text in bytes / 4, plus one. What
    /// a token limit reserves before the real usage is known (and what the mock bills).
    ///
    /// ```
    /// use llm_layers_core::{ChatRequest, Message};
    /// let r = ChatRequest::new("m", vec![Message::user("twelve bytes")]);
    /// assert_eq!(r.body().approx_prompt_tokens(), 4);
    /// ```
    pub fn approx_prompt_tokens(&self) -> u64 {
        self.messages
            .iter()
            .map(|m| m.text_len() as u64)
            .sum::<u64>()
            / 4
            + 1
    }

    /// The generation limit the caller set (`max_completion_tokens`, else `max_tokens`).
    pub fn max_output_tokens(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// How many choices the caller asked for (`n`, 1 when absent or not a whole number).
    pub fn choices(&self) -> u64 {
        self.extra
            .get("n")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .max(1)
    }

    /// The most output tokens this request can cost: the larger of `max_tokens` and
    /// `max_completion_tokens` (an upstream may honour either), times `n`; `None` when the
    /// caller set no limit. What a token budget must reserve.
    ///
    /// ```
    /// use llm_layers_core::{ChatRequest, Message};
    /// let mut r = ChatRequest::new("m", vec![Message::user("hi")]);
    /// let b = r.body_mut();
    /// b.max_completion_tokens = Some(1);
    /// b.max_tokens = Some(100);
    /// b.extra.insert("n".into(), 3.into());
    /// assert_eq!(r.body().output_budget(), Some(300));
    /// ```
    pub fn output_budget(&self) -> Option<u64> {
        let most = match (self.max_tokens, self.max_completion_tokens) {
            (None, None) => return None,
            (a, b) => a.max(b).unwrap_or(0),
        };
        Some(u64::from(most).saturating_mul(self.choices()))
    }

    /// The provider preferences, created empty if absent.
    pub fn provider_mut(&mut self) -> &mut ProviderPreferences {
        self.provider
            .get_or_insert_with(ProviderPreferences::default)
    }
}

/// One message of the conversation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool` or `developer`.
    pub role: String,
    /// A string or an array of content parts; `null` for a tool-calling assistant turn
    /// (always sent, as `null` when absent).
    #[serde(default)]
    pub content: Option<Content>,
    /// An optional participant name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// For `tool` messages: which call this answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// For `assistant` messages: the tool calls it made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<Value>>,
    /// Every other field, sent on unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Message {
    /// A message with `role` and text `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: Some(Content::Text(content.into())),
            ..Message::default()
        }
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Message {
        Message::new("user", content)
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Message {
        Message::new("system", content)
    }

    /// A rough size of the text in this message, in bytes (for prompt-size buckets and
    /// token estimates).
    pub fn text_len(&self) -> usize {
        match &self.content {
            Some(Content::Text(s)) => s.len(),
            Some(Content::Parts(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .map(str::len)
                .sum(),
            None => 0,
        }
    }
}

/// Message content: a string, or an array of parts (`{type:"text",text}`, images, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content parts, kept as JSON.
    Parts(Vec<Value>),
}

/// OpenRouter's `provider` object: which upstream providers may serve, and in what order.
///
/// Slugs are lowercase (`"deepinfra"`, `"google-vertex/us-east5"`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProviderPreferences {
    /// Provider slugs to try, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Vec<String>>,
    /// Only these providers may serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only: Option<Vec<String>>,
    /// These providers may not serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore: Option<Vec<String>>,
    /// Whether providers outside `order` may serve when those fail (default true upstream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_fallbacks: Option<bool>,
    /// Only providers supporting every request parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_parameters: Option<bool>,
    /// `"price"`, `"throughput"`, `"latency"`, or `{by, partition}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort: Option<ProviderSort>,
    /// `"allow"` or `"deny"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_collection: Option<String>,
    /// Zero data retention endpoints only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zdr: Option<bool>,
    /// Allowed quantizations (`int4`, `fp8`, `bf16`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantizations: Option<Vec<String>>,
    /// `{prompt, completion, request?, image?}` in USD per million tokens (numbers or
    /// strings: both are accepted upstream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_price: Option<Value>,
    /// A number or `{p50,p75,p90,p99}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_min_throughput: Option<Value>,
    /// A number or `{p50,p75,p90,p99}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_max_latency: Option<Value>,
    /// Every other field, sent on unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ProviderPreferences {
    /// Adds `slug` to `ignore` unless it is there already.
    pub fn add_ignore(&mut self, slug: &str) {
        let list = self.ignore.get_or_insert_with(Vec::new);
        if !list.iter().any(|s| s.eq_ignore_ascii_case(slug)) {
            list.push(slug.to_owned());
        }
    }

    /// Whether these preferences allow `slug` to serve (by `only` and `ignore`; a base slug
    /// such as `deepinfra` matches its endpoints such as `deepinfra/turbo`).
    pub fn allows(&self, slug: &str) -> bool {
        let matches = |pat: &String| slug_matches(pat, slug);
        if let Some(only) = &self.only {
            if !only.iter().any(matches) {
                return false;
            }
        }
        if let Some(ignore) = &self.ignore {
            if ignore.iter().any(matches) {
                return false;
            }
        }
        true
    }
}

/// Whether the preference slug `pattern` covers the endpoint slug `slug`
/// (`deepinfra` covers `deepinfra/turbo`; case-insensitive).
pub fn slug_matches(pattern: &str, slug: &str) -> bool {
    match (slug.get(..pattern.len()), slug.get(pattern.len()..)) {
        (Some(head), Some(rest)) => {
            head.eq_ignore_ascii_case(pattern) && (rest.is_empty() || rest.starts_with('/'))
        }
        _ => false,
    }
}

/// OpenRouter's model variant suffixes: each changes how a model is served, and some what
/// it costs (`:online` adds a paid web search, `:nitro` and `:floor` sort providers by
/// speed or price, `:free` is a separate, rate-limited model).
pub const MODEL_VARIANTS: &[&str] = &[
    ":nitro",
    ":floor",
    ":free",
    ":online",
    ":extended",
    ":thinking",
    ":exacto",
];

/// A model id split into its base and its variant suffix (`:online`, `:free`, ... or any
/// other `:suffix` after the id's last `/`); ids without a `/` (`tier:fast`, a fine-tuned
/// `ft:gpt-4o:org:id`) have no variant.
///
/// ```
/// use llm_layers_core::split_variant;
/// assert_eq!(split_variant("openai/gpt-4o:online"), ("openai/gpt-4o", Some(":online")));
/// assert_eq!(split_variant("openai/gpt-4o"), ("openai/gpt-4o", None));
/// assert_eq!(split_variant("tier:fast"), ("tier:fast", None));
/// ```
pub fn split_variant(model: &str) -> (&str, Option<&str>) {
    let Some(slash) = model.rfind('/') else {
        return (model, None);
    };
    match model[slash..].find(':') {
        Some(colon) => {
            let (base, variant) = model.split_at(slash + colon);
            (base, Some(variant))
        }
        None => (model, None),
    }
}

/// A provider display name (`"Google Vertex"`, as responses name providers) to the routing
/// slug OpenRouter uses for most of them (`"google-vertex"`): lowercase, spaces to dashes.
/// Where exactness matters, map through the catalog (`GET /providers`) instead.
///
/// ```
/// assert_eq!(llm_layers_core::default_slug("Google Vertex"), "google-vertex");
/// assert_eq!(llm_layers_core::default_slug("DeepInfra"), "deepinfra");
/// ```
pub fn default_slug(display: &str) -> String {
    display.trim().to_ascii_lowercase().replace(' ', "-")
}

/// `provider.sort`: a plain strategy or an object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ProviderSort {
    /// `"price"`, `"throughput"` or `"latency"`.
    Simple(String),
    /// `{by, partition}` and anything else given.
    Object(Map<String, Value>),
}
