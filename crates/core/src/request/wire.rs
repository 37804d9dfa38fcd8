//! The body as it goes on the wire: written straight from a borrowed [`ChatBody`], with
//! per-call overrides and, for an OpenAI-compatible upstream, without OpenRouter's fields.

use serde::Serialize;
use serde_json::{Map, Value};

use super::{ChatBody, Message, ProviderPreferences};

impl ChatBody {
    /// Serializes the body to JSON, with `stream` and a default output limit overridden,
    /// without copying the body (the leaf sends a shared body this way).
    ///
    /// `default_max_tokens` applies only when the caller set neither `max_tokens` nor
    /// `max_completion_tokens`.
    ///
    /// ```
    /// use llm_layers_core::{ChatBody, Message};
    /// let body = ChatBody { model: Some("m".into()), messages: vec![Message::user("hi")], ..Default::default() };
    /// let json = body.to_json_with(Some(true), Some(512))?;
    /// let v: serde_json::Value = serde_json::from_slice(&json)?;
    /// assert_eq!(v["stream"], true);
    /// assert_eq!(v["max_tokens"], 512);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn to_json_with(
        &self,
        stream: Option<bool>,
        default_max_tokens: Option<u32>,
    ) -> serde_json::Result<Vec<u8>> {
        write_wire(self.wire(
            stream,
            default_max_tokens,
            &self.model,
            Extra::All(&self.extra),
        ))
    }

    /// The JSON an OpenAI-compatible endpoint (OpenAI, vLLM, a provider's own API) takes:
    /// as [`to_json_with`](Self::to_json_with), with `model` as given and nothing only
    /// OpenRouter understands ([`OPENROUTER_ONLY_FIELDS`]: `provider`, `models`,
    /// `transforms`, `route`, `plugins`, `usage`, `reasoning`).
    ///
    /// ```
    /// use llm_layers_core::{ChatBody, ChatRequest, Message};
    /// let mut r = ChatRequest::new("openai/gpt-4o-mini:nitro", vec![Message::user("hi")]);
    /// r.body_mut().provider_mut().order = Some(vec!["openai".into()]);
    /// r.body_mut().extra.insert("transforms".into(), serde_json::json!(["middle-out"]));
    /// r.body_mut().extra.insert("logprobs".into(), serde_json::json!(true));
    /// let json = r.body().to_openai_json(Some(true), None, "gpt-4o-mini")?;
    /// let v: serde_json::Value = serde_json::from_slice(&json)?;
    /// assert_eq!(v["model"], "gpt-4o-mini");
    /// assert!(v.get("provider").is_none() && v.get("transforms").is_none());
    /// assert_eq!(v["logprobs"], true);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// When serde cannot serialize a value (a non-finite float).
    pub fn to_openai_json(
        &self,
        stream: Option<bool>,
        default_max_tokens: Option<u32>,
        model: &str,
    ) -> serde_json::Result<Vec<u8>> {
        let model = Some(model.to_owned());
        let mut wire = self.wire(
            stream,
            default_max_tokens,
            &model,
            Extra::Without(&self.extra, OPENROUTER_ONLY_FIELDS),
        );
        wire.provider = &None;
        wire.models = &None;
        write_wire(wire)
    }

    /// The body as sent, borrowed, with the per-call overrides.
    fn wire<'a>(
        &'a self,
        stream: Option<bool>,
        default_max_tokens: Option<u32>,
        model: &'a Option<String>,
        extra: Extra<'a>,
    ) -> WireBody<'a> {
        let max_tokens = match (self.max_tokens, self.max_completion_tokens) {
            (None, None) => default_max_tokens,
            (m, _) => m,
        };
        WireBody {
            model,
            messages: &self.messages,
            stream: stream.or(self.stream),
            max_tokens,
            max_completion_tokens: self.max_completion_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            stop: &self.stop,
            seed: self.seed,
            tools: &self.tools,
            tool_choice: &self.tool_choice,
            response_format: &self.response_format,
            user: &self.user,
            stream_options: &self.stream_options,
            provider: &self.provider,
            models: &self.models,
            extra,
        }
    }
}

/// [`ChatBody`] borrowed, with per-call overrides: what [`ChatBody::to_json_with`] writes.
#[derive(Serialize)]
struct WireBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    model: &'a Option<String>,
    messages: &'a [Message],
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: &'a Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: &'a Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: &'a Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: &'a Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: &'a Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider: &'a Option<ProviderPreferences>,
    #[serde(skip_serializing_if = "Option::is_none")]
    models: &'a Option<Vec<String>>,
    #[serde(flatten)]
    extra: Extra<'a>,
}

fn write_wire(wire: WireBody<'_>) -> serde_json::Result<Vec<u8>> {
    let mut out =
        Vec::with_capacity(256 + wire.messages.iter().map(Message::text_len).sum::<usize>());
    serde_json::to_writer(&mut out, &wire)?;
    Ok(out)
}

/// Request fields only OpenRouter understands: an OpenAI-compatible dialect leaves them out.
pub const OPENROUTER_ONLY_FIELDS: &[&str] = &[
    "provider",
    "models",
    "transforms",
    "route",
    "plugins",
    "usage",
    "reasoning",
];

/// The unmodelled fields, all of them or without some (no copy either way).
enum Extra<'a> {
    All(&'a Map<String, Value>),
    Without(&'a Map<String, Value>, &'a [&'a str]),
}

impl Serialize for Extra<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Extra::All(m) => s.collect_map(m.iter()),
            Extra::Without(m, skip) => {
                s.collect_map(m.iter().filter(|(k, _)| !skip.contains(&k.as_str())))
            }
        }
    }
}
