//! Reading a whole answer out of a stream ([`ChatStream::collect`](crate::ChatStream::collect)),
//! and the errors an answer can carry instead of (or with) its content.

use crate::chunk::{AssistantMessage, ChatChunk, ChatCompletion, Choice, StreamChunk, ToolCall};
use crate::error::{ApiError, LlmError, ProtocolKind};

/// The error a completion carries instead of (or with) its answer, if any.
pub(crate) fn completion_error(c: &ChatCompletion) -> Option<LlmError> {
    if let Some(e) = &c.error {
        let api = ApiError::from_value(e).unwrap_or_default();
        let mut err = LlmError::upstream(api);
        if err.provider().is_none() {
            if let Some(p) = &c.provider {
                err = err.with_provider(p.clone());
            }
        }
        return Some(err);
    }
    c.choices
        .iter()
        .find(|ch| ch.finish_reason.as_deref() == Some("error"))
        .map(|ch| choice_error(ch.error.as_ref(), c.provider.as_deref()))
}

/// The error for a choice that finished with `finish_reason: "error"`.
pub(crate) fn choice_error(error: Option<&serde_json::Value>, provider: Option<&str>) -> LlmError {
    let api = error
        .and_then(ApiError::from_value)
        .unwrap_or_else(|| ApiError {
            message: Some("the provider ended the answer with finish_reason \"error\"".into()),
            ..ApiError::default()
        });
    let mut err = LlmError::upstream(api);
    if err.provider().is_none() {
        if let Some(p) = provider {
            err = err.with_provider(p);
        }
    }
    err
}

/// How far past the tool calls seen so far a tool-call `index` may point (calls may arrive
/// out of order, but not thousands apart).
const MAX_TOOL_INDEX_GAP: usize = 64;

#[derive(Default)]
pub(crate) struct Collector {
    head: ChatChunk,
    seen_head: bool,
    choices: Vec<ChoiceAcc>,
    usage: Option<crate::chunk::Usage>,
}

#[derive(Default)]
struct ChoiceAcc {
    index: u32,
    role: Option<String>,
    content: Option<String>,
    reasoning: Option<String>,
    tools: Vec<ToolCall>,
    finish_reason: Option<String>,
    native_finish_reason: Option<String>,
    extra: serde_json::Map<String, serde_json::Value>,
}

/// The error a chunk carries (an `{"error": ...}` object in an answer or a stream event),
/// as an upstream error naming the chunk's provider when the error itself does not.
pub(crate) fn carried_error(chunk: &ChatChunk) -> Option<LlmError> {
    let e = chunk.error.as_ref()?;
    let err = LlmError::upstream(ApiError::from_value(e).unwrap_or_default());
    Some(match (&chunk.provider, err.provider().is_none()) {
        (Some(p), true) => err.with_provider(p.clone()),
        _ => err,
    })
}

impl Collector {
    /// Takes one item of a stream: a chunk read by its shape (a token in the middle of an
    /// answer) adds its content without the typed chunk being built.
    pub(crate) fn push_item(&mut self, item: StreamChunk) -> Result<(), LlmError> {
        if let Some((head, choice, content)) = item.shaped_parts() {
            let d = &choice.delta;
            let plain = d.reasoning.is_none()
                && d.tool_calls.is_none()
                && d.extra.is_empty()
                && choice.finish_reason.is_none()
                && choice.native_finish_reason.is_none()
                && choice.error.is_none();
            if plain {
                self.note_head(
                    &head.id,
                    head.created,
                    &head.model,
                    head.provider.as_deref(),
                    head.system_fingerprint.as_deref(),
                );
                let acc = self.choice(choice.index);
                if let Some(r) = &d.role {
                    if acc.role.as_ref() != Some(r) {
                        acc.role = Some(r.clone());
                    }
                }
                acc.content
                    .get_or_insert_with(String::new)
                    .push_str(content);
                return Ok(());
            }
        }
        self.push(item.into_chunk())
    }

    fn note_head(
        &mut self,
        id: &str,
        created: u64,
        model: &str,
        provider: Option<&str>,
        fingerprint: Option<&str>,
    ) {
        if !self.seen_head && !id.is_empty() {
            self.seen_head = true;
            id.clone_into(&mut self.head.id);
            self.head.created = created;
            model.clone_into(&mut self.head.model);
            self.head.provider = provider.map(str::to_owned);
            self.head.system_fingerprint = fingerprint.map(str::to_owned);
        }
    }

    /// The accumulator of choice `index`.
    fn choice(&mut self, index: u32) -> &mut ChoiceAcc {
        let i = match self.choices.iter().position(|a| a.index == index) {
            Some(i) => i,
            None => {
                self.choices.push(ChoiceAcc {
                    index,
                    ..ChoiceAcc::default()
                });
                self.choices.len() - 1
            }
        };
        &mut self.choices[i]
    }

    pub(crate) fn push(&mut self, chunk: ChatChunk) -> Result<(), LlmError> {
        if let Some(err) = carried_error(&chunk) {
            return Err(err);
        }
        self.note_head(
            &chunk.id,
            chunk.created,
            &chunk.model,
            chunk.provider.as_deref(),
            chunk.system_fingerprint.as_deref(),
        );
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
        for c in chunk.choices {
            if c.finish_reason.as_deref() == Some("error") {
                return Err(choice_error(c.error.as_ref(), chunk.provider.as_deref()));
            }
            let acc = self.choice(c.index);
            let d = c.delta;
            if d.role.is_some() {
                acc.role = d.role;
            }
            if let Some(t) = d.content {
                acc.content.get_or_insert_with(String::new).push_str(&t);
            }
            if let Some(t) = d.reasoning {
                acc.reasoning.get_or_insert_with(String::new).push_str(&t);
            }
            for (k, v) in d.extra {
                acc.extra.insert(k, v);
            }
            for t in d.tool_calls.unwrap_or_default() {
                // The index comes from the upstream: a gap of more than a few calls is not an
                // answer but an attack on our memory (`index: 4294967295` would ask for
                // hundreds of GB), so it is refused as a protocol error.
                let i = t.index as usize;
                if i >= acc.tools.len() + MAX_TOOL_INDEX_GAP {
                    return Err(LlmError::protocol(
                        ProtocolKind::Json,
                        format!(
                            "tool call index {i} skips past the {} calls seen so far",
                            acc.tools.len()
                        ),
                    ));
                }
                if acc.tools.len() <= i {
                    acc.tools.resize_with(i + 1, ToolCall::default);
                }
                let call = &mut acc.tools[i];
                if let Some(id) = t.id {
                    call.id = id;
                }
                if let Some(kind) = t.kind {
                    call.kind = kind;
                }
                if let Some(f) = t.function {
                    if let Some(n) = f.name {
                        call.function.name.push_str(&n);
                    }
                    if let Some(a) = f.arguments {
                        call.function.arguments.push_str(&a);
                    }
                }
            }
            if c.finish_reason.is_some() {
                acc.finish_reason = c.finish_reason;
            }
            if c.native_finish_reason.is_some() {
                acc.native_finish_reason = c.native_finish_reason;
            }
        }
        Ok(())
    }

    /// The whole answer, or a [`Truncated`](crate::ErrorKind::Truncated) error when some
    /// choice never said why it ended: an upstream that sends `[DONE]` after a partial answer
    /// must not become a 200 with a cut answer. `provider` names the provider when no chunk did.
    pub(crate) fn finish(self, provider: Option<&str>) -> Result<ChatCompletion, LlmError> {
        if self.choices.is_empty() || self.choices.iter().any(|c| c.finish_reason.is_none()) {
            return Err(LlmError::truncated()
                .with_message("the answer ended without a finish_reason")
                .with_provider_opt(
                    self.head
                        .provider
                        .clone()
                        .or_else(|| provider.map(str::to_owned)),
                ));
        }
        Ok(self.complete())
    }

    fn complete(self) -> ChatCompletion {
        let mut choices: Vec<Choice> = self
            .choices
            .into_iter()
            .map(|a| {
                let has_tools = !a.tools.is_empty();
                Choice {
                    index: a.index,
                    message: AssistantMessage {
                        role: a.role.unwrap_or_else(|| "assistant".into()),
                        content: match a.content {
                            Some(c) => Some(c),
                            None if has_tools => None,
                            None => Some(String::new()),
                        },
                        reasoning: a.reasoning,
                        tool_calls: has_tools.then(|| {
                            a.tools
                                .into_iter()
                                .map(|mut t| {
                                    if t.kind.is_empty() {
                                        t.kind = "function".into();
                                    }
                                    t
                                })
                                .collect()
                        }),
                        extra: a.extra,
                    },
                    finish_reason: a.finish_reason,
                    native_finish_reason: a.native_finish_reason,
                    logprobs: None,
                    error: None,
                }
            })
            .collect();
        choices.sort_by_key(|c| c.index);
        ChatCompletion {
            id: self.head.id,
            object: "chat.completion".into(),
            created: self.head.created,
            model: self.head.model,
            provider: self.head.provider,
            choices,
            usage: self.usage,
            system_fingerprint: self.head.system_fingerprint,
            error: None,
        }
    }
}
