//! [`ChatChunk`] (one stream event) and [`ChatCompletion`] (a whole answer).

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

mod item;
mod json;
pub use item::StreamChunk;
pub(crate) use item::{HeadFields, Shaped, Tailed};
pub use json::ChunkWriter;
pub(crate) use json::plain_bytes;

fn str_is_empty(s: &str) -> bool {
    s.is_empty()
}

/// The `object` of a chunk: the values the API sends are borrowed statics (one allocation
/// fewer per chunk), anything else is kept as sent.
fn known_object<'de, D: Deserializer<'de>>(d: D) -> Result<Cow<'static, str>, D::Error> {
    struct Object;
    impl serde::de::Visitor<'_> for Object {
        type Value = Cow<'static, str>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(match v {
                "chat.completion.chunk" => Cow::Borrowed("chat.completion.chunk"),
                "chat.completion" => Cow::Borrowed("chat.completion"),
                "" => Cow::Borrowed(""),
                other => Cow::Owned(other.to_owned()),
            })
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(Cow::Borrowed(""))
        }
    }
    d.deserialize_any(Object)
}

/// One parsed `data:` event of a chat completion stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatChunk {
    /// The generation id (`gen-…`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// `chat.completion.chunk`. Borrowed (no allocation) for the values the API sends.
    #[serde(
        default,
        skip_serializing_if = "str_is_empty",
        deserialize_with = "known_object"
    )]
    pub object: Cow<'static, str>,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// The model that served.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model: String,
    /// The upstream provider's display name (`"OpenAI"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Deltas, one per choice index; empty on the final usage chunk.
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    /// Token usage, sent once in the last chunk before `[DONE]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// A mid-stream error (the stream ends after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
    /// `system_fingerprint`, when sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
}

impl ChatChunk {
    /// Whether this chunk is the commit point: a delta with non-empty content, reasoning or
    /// tool calls, or a finish reason. Role-only and empty deltas are not.
    pub fn is_token(&self) -> bool {
        is_token(&self.choices)
    }

    /// Whether this chunk carries output: non-empty content, reasoning or tool calls (a
    /// finish-only or role-only chunk does not). Latency counts these as output chunks.
    pub fn has_output(&self) -> bool {
        has_output(&self.choices)
    }

    /// The content text of choice 0, if any.
    pub fn content(&self) -> Option<&str> {
        self.choices.first()?.delta.content.as_deref()
    }

    /// The finish reason of choice 0, if any.
    pub fn finish_reason(&self) -> Option<&str> {
        self.choices.first()?.finish_reason.as_deref()
    }
}

/// [`ChatChunk::is_token`] of a chunk with these choices.
pub(crate) fn is_token(choices: &[ChunkChoice]) -> bool {
    has_output(choices) || has_finish(choices)
}

/// [`ChatChunk::has_output`] of a chunk with these choices.
pub(crate) fn has_output(choices: &[ChunkChoice]) -> bool {
    choices.iter().any(|c| {
        c.delta.content.as_deref().is_some_and(|s| !s.is_empty())
            || c.delta.reasoning.as_deref().is_some_and(|s| !s.is_empty())
            || c.delta.tool_calls.as_ref().is_some_and(|t| !t.is_empty())
    })
}

/// Whether some choice says why it finished.
pub(crate) fn has_finish(choices: &[ChunkChoice]) -> bool {
    choices.iter().any(|c| c.finish_reason.is_some())
}

/// One choice of a [`ChatChunk`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    /// The choice index.
    #[serde(default)]
    pub index: u32,
    /// What this chunk adds.
    #[serde(default)]
    pub delta: Delta,
    /// `stop`, `length`, `tool_calls`, `content_filter` or `error`.
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// The provider's raw finish reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native_finish_reason: Option<String>,
    /// Log probabilities, passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Value>,
    /// A per-choice error (`finish_reason: "error"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

/// The incremental part of a streamed message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// `assistant` on the first chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Text to append.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Reasoning text to append.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    /// Tool call fragments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
    /// Every other field (`reasoning_details`, `annotations`, `refusal`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A fragment of a tool call; fragments with the same `index` are concatenated.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolCallDelta {
    /// Which tool call this continues.
    #[serde(default)]
    pub index: u32,
    /// The call id, on the first fragment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `function`, on the first fragment.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name and argument fragments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionDelta>,
}

/// The function part of a [`ToolCallDelta`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FunctionDelta {
    /// The function name, on the first fragment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A fragment of the JSON arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

/// Token usage of one call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Input tokens.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Output tokens.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Both.
    #[serde(default)]
    pub total_tokens: u64,
    /// Everything else (`cost`, `prompt_tokens_details`, ...), passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Usage {
    /// Adds `other` to this usage: the token counts, and every number among the extras
    /// (`cost`, `prompt_tokens_details.cached_tokens`, ...), nested objects field by field;
    /// an extra only `other` has is taken as it is. What several attempts of one call cost.
    ///
    /// ```
    /// use llm_layers_core::Usage;
    /// let mut a: Usage = serde_json::from_str(r#"{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,
    ///   "cost":0.25,"prompt_tokens_details":{"cached_tokens":4}}"#)?;
    /// let b: Usage = serde_json::from_str(r#"{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19,
    ///   "cost":0.5,"prompt_tokens_details":{"cached_tokens":1},"is_byok":false}"#)?;
    /// a.add(&b);
    /// assert_eq!((a.prompt_tokens, a.completion_tokens, a.total_tokens), (22, 12, 34));
    /// assert_eq!(a.extra["cost"], 0.75);
    /// assert_eq!(a.extra["prompt_tokens_details"]["cached_tokens"], 5);
    /// assert_eq!(a.extra["is_byok"], false);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn add(&mut self, other: &Usage) {
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(other.completion_tokens);
        self.total_tokens = self.total_tokens.saturating_add(other.total_tokens);
        add_extras(&mut self.extra, &other.extra);
    }
}

fn add_extras(to: &mut Map<String, Value>, from: &Map<String, Value>) {
    for (k, v) in from {
        match (to.get_mut(k), v) {
            (Some(Value::Number(a)), Value::Number(b)) => {
                let sum = match (a.as_u64(), b.as_u64()) {
                    (Some(x), Some(y)) => Value::from(x.saturating_add(y)),
                    _ => serde_json::Number::from_f64(
                        a.as_f64().unwrap_or(0.0) + b.as_f64().unwrap_or(0.0),
                    )
                    .map_or(Value::Null, Value::Number),
                };
                *a = match sum {
                    Value::Number(n) => n,
                    _ => a.clone(),
                };
            }
            (Some(Value::Object(a)), Value::Object(b)) => add_extras(a, b),
            (Some(_), _) => {}
            (None, v) => {
                to.insert(k.clone(), v.clone());
            }
        }
    }
}

/// A whole (non-streaming) chat completion.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletion {
    /// The generation id.
    #[serde(default)]
    pub id: String,
    /// `chat.completion`.
    #[serde(default)]
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// The model that served.
    #[serde(default)]
    pub model: String,
    /// The provider's display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The answers.
    #[serde(default)]
    pub choices: Vec<Choice>,
    /// Token usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// `system_fingerprint`, when sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    /// A top-level error carried by a 200 (a failure, not an answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

/// One answer of a [`ChatCompletion`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// The choice index.
    #[serde(default)]
    pub index: u32,
    /// The assistant message.
    #[serde(default)]
    pub message: AssistantMessage,
    /// Why generation stopped.
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// The provider's raw finish reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native_finish_reason: Option<String>,
    /// Log probabilities, passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Value>,
    /// A per-choice error (`finish_reason: "error"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

/// The message of a [`Choice`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AssistantMessage {
    /// `assistant`.
    #[serde(default)]
    pub role: String,
    /// The text; `null` when the answer is only tool calls.
    #[serde(default)]
    pub content: Option<String>,
    /// Reasoning text, when the model reasons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    /// Complete tool calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// Every other field, passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A complete tool call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call id.
    #[serde(default)]
    pub id: String,
    /// `function`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Name and JSON arguments.
    #[serde(default)]
    pub function: FunctionCall,
}

/// The function part of a [`ToolCall`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// The function name.
    #[serde(default)]
    pub name: String,
    /// The arguments, as a JSON string.
    #[serde(default)]
    pub arguments: String,
}
