//! The watched stream: passes chunks on, and when it breaks, sends a continuation and
//! splices its text on at a seam it can prove.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures_core::Stream;
use llm_layers_core::continuation::{
    ContinueMode, INSTRUCTION_OVERLAP, continuation_body, overlap,
};
use llm_layers_core::{
    ChatChunk, ChatRequest, ChatStream, ErrorKind, LlmError, Usage, default_slug,
};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_service::Service;

use crate::ResumeReport;
use crate::layer::Shared;

type Connecting = Pin<Box<dyn Future<Output = Result<ChatStream, LlmError>> + Send>>;

/// Characters an instruction continuation is read past its minimum overlap before the seam
/// is chosen, so that a longer repeat is cut whole.
const OVERLAP_LOOKAHEAD: usize = 32;

/// Where the continuation joins what was delivered.
enum Seam {
    /// Joined (or no continuation yet): text passes.
    Clean,
    /// Prefill: the delivered text's trailing whitespace, trimmed from the prefill; the
    /// continuation usually sends it again, and it is cut once.
    Whitespace(String),
    /// Instruction: the continuation's text so far, until its overlap can be checked.
    Overlap(String),
}

fn count(outcome: &'static str) {
    metrics::counter!(crate::RESUMES, "outcome" => outcome).increment(1);
}

pub(crate) struct Resuming<S> {
    current: ChatStream,
    connecting: Option<Connecting>,
    service: S,
    request: ChatRequest,
    shared: Arc<Shared>,
    report: ResumeReport,
    model: String,
    provider: Option<String>,
    /// The text the caller has received.
    delivered: String,
    /// Plain assistant text so far (no tool call, no reasoning, one choice).
    eligible: bool,
    /// A finish reason was seen: the answer is whole, an error after it is not a break.
    finished: bool,
    resumes: u32,
    mode: ContinueMode,
    refused_once: bool,
    seam: Seam,
    /// The error being recovered from, given to the caller if the continuation fails.
    broken: Option<LlmError>,
    /// Content chunks of the current attempt (its completion tokens, estimated).
    attempt_chunks: u64,
    /// The estimated usage of the attempts that broke.
    earlier: Usage,
    done: bool,
}

impl<S> Resuming<S>
where
    S: Service<ChatRequest, Response = ChatStream, Error = LlmError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    pub(crate) fn new(
        first: ChatStream,
        service: S,
        request: ChatRequest,
        shared: Arc<Shared>,
        report: ResumeReport,
        model: String,
        provider: Option<String>,
    ) -> Self {
        let mode = shared.default_mode;
        Resuming {
            current: first,
            connecting: None,
            service,
            request,
            shared,
            report,
            model,
            provider,
            delivered: String::new(),
            eligible: true,
            finished: false,
            resumes: 0,
            mode,
            refused_once: false,
            seam: Seam::Clean,
            broken: None,
            attempt_chunks: 0,
            earlier: Usage::default(),
            done: false,
        }
    }

    /// Whether the stream may be continued after `e`; spends a budget unit when it may.
    fn may_resume(&self, e: &LlmError) -> bool {
        if matches!(e.kind(), ErrorKind::Cancelled | ErrorKind::BadRequest) || self.finished {
            return false;
        }
        if !self.eligible {
            count("not_eligible");
            return false;
        }
        if self.resumes >= self.shared.max_resumes {
            count("exhausted");
            return false;
        }
        if self.request.deadline().is_some_and(|d| Instant::now() >= d) {
            count("deadline");
            return false;
        }
        if self.shared.budget.as_ref().is_some_and(|b| !b.withdraw()) {
            count("no_budget");
            return false;
        }
        true
    }

    /// The stream broke with `e`: ask for the rest.
    fn begin(&mut self, e: LlmError) {
        self.broken = Some(e);
        self.resumes += 1;
        self.earlier.prompt_tokens += self.request.body().approx_prompt_tokens();
        self.earlier.completion_tokens += self.attempt_chunks;
        self.attempt_chunks = 0;
        if !self.refused_once {
            self.mode = self.shared.mode(&self.model, self.provider.as_deref());
        }
        self.connect();
    }

    fn connect(&mut self) {
        let mut req = self.request.clone();
        *req.body_mut() = continuation_body(self.request.body(), &self.delivered, self.mode);
        if self.mode != ContinueMode::Instruction {
            // Prefill continues that provider's text: ask the one that served it.
            if let Some(p) = &self.provider {
                let prefs = req.body_mut().provider.get_or_insert_with(Default::default);
                prefs.only = Some(vec![default_slug(p)]);
                prefs.order = None;
            }
        }
        let mut service = self.service.clone();
        self.connecting = Some(Box::pin(async move {
            ServiceExt::ready(&mut service).await?;
            service.call(req).await
        }));
    }

    /// The continuation committed: read it through the seam.
    fn joined(&mut self, stream: ChatStream) {
        self.current = stream;
        self.seam = match self.mode {
            ContinueMode::Instruction => Seam::Overlap(String::new()),
            _ => Seam::Whitespace(self.delivered[self.delivered.trim_end().len()..].to_owned()),
        };
        self.report.resumed_after(self.earlier.clone());
    }

    /// `text` of the continuation through the seam: what the caller gets now (`None`:
    /// held until more comes), or an error when the seam cannot be proven.
    fn through_seam(&mut self, text: String, ending: bool) -> Result<Option<String>, LlmError> {
        match &mut self.seam {
            Seam::Clean => Ok(Some(text)),
            Seam::Whitespace(ws) => {
                let common: usize = ws
                    .chars()
                    .zip(text.chars())
                    .take_while(|(a, b)| a == b)
                    .map(|(a, _)| a.len_utf8())
                    .sum();
                ws.drain(..common);
                if common == text.len() && !ws.is_empty() && !ending {
                    return Ok(None);
                }
                self.seam = Seam::Clean;
                count("joined");
                Ok(Some(text[common..].to_owned()))
            }
            Seam::Overlap(buf) => {
                buf.push_str(&text);
                let need = INSTRUCTION_OVERLAP.min(self.delivered.len());
                if buf.len() < need + OVERLAP_LOOKAHEAD && !ending {
                    return Ok(None);
                }
                match overlap(&self.delivered, buf, INSTRUCTION_OVERLAP) {
                    Some(k) => {
                        let rest = buf[k..].to_owned();
                        self.seam = Seam::Clean;
                        count("joined");
                        Ok(Some(rest))
                    }
                    None => {
                        count("seam_failed");
                        Err(LlmError::new(ErrorKind::Truncated).with_message(
                            "the answer broke mid-stream and its continuation did not join \
                             what was delivered: ended rather than risk a duplicated or \
                             missing text",
                        ))
                    }
                }
            }
        }
    }

    /// One chunk: watched, and (after a resume) passed through the seam with its usage
    /// summed. `None`: nothing to give yet.
    fn on_chunk(&mut self, mut chunk: ChatChunk) -> Option<Result<ChatChunk, LlmError>> {
        if chunk.choices.len() > 1
            || chunk.choices.iter().any(|c| {
                c.index != 0
                    || c.delta.tool_calls.is_some()
                    || c.delta.reasoning.as_deref().is_some_and(|r| !r.is_empty())
            })
        {
            self.eligible = false;
        }
        let ending =
            chunk.choices.iter().any(|c| c.finish_reason.is_some()) || chunk.usage.is_some();
        if self.resumes > 0 {
            for c in &mut chunk.choices {
                c.delta.role = None;
            }
            let held = !matches!(self.seam, Seam::Clean);
            if let Some(choice) = chunk.choices.first_mut() {
                let text = choice.delta.content.take().unwrap_or_default();
                if held || !text.is_empty() {
                    match self.through_seam(text, ending) {
                        Err(e) => return Some(Err(e)),
                        Ok(Some(t)) => choice.delta.content = Some(t),
                        Ok(None) if !ending => return None,
                        Ok(None) => {}
                    }
                }
            }
            if let Some(u) = chunk.usage.as_mut() {
                self.report.attempt(u.clone());
                u.prompt_tokens += self.earlier.prompt_tokens;
                u.completion_tokens += self.earlier.completion_tokens;
                u.total_tokens = u.prompt_tokens + u.completion_tokens;
            }
        } else if let Some(u) = &chunk.usage {
            self.report.attempt(u.clone());
        }
        if chunk.choices.iter().any(|c| c.finish_reason.is_some()) {
            self.finished = true;
        }
        if let Some(text) = chunk
            .choices
            .first()
            .and_then(|c| c.delta.content.as_deref())
        {
            if !text.is_empty() {
                self.delivered.push_str(text);
                self.attempt_chunks += 1;
            }
        }
        Some(Ok(chunk))
    }
}

// No field is pinned: the service is only cloned, the streams and futures are boxed.
impl<S> Unpin for Resuming<S> {}

impl<S> Stream for Resuming<S>
where
    S: Service<ChatRequest, Response = ChatStream, Error = LlmError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Item = Result<ChatChunk, LlmError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(fut) = this.connecting.as_mut() {
                let result = ready!(fut.as_mut().poll(cx));
                this.connecting = None;
                match result {
                    Ok(stream) => {
                        this.joined(stream);
                        continue;
                    }
                    Err(e) => {
                        let refused = e.status_code() == Some(http::StatusCode::BAD_REQUEST)
                            && this.mode != ContinueMode::Instruction
                            && !this.refused_once;
                        if refused {
                            // "does not support assistant message prefill": ask again as an
                            // instruction, and remember it for this (model, provider).
                            count("prefill_refused");
                            if let Some(p) = &this.provider {
                                this.shared.learn_refusal(&this.model, p);
                            }
                            this.refused_once = true;
                            this.mode = ContinueMode::Instruction;
                            this.connect();
                            continue;
                        }
                        count("call_failed");
                        this.done = true;
                        return Poll::Ready(Some(Err(this.broken.take().unwrap_or(e))));
                    }
                }
            }
            match ready!(Pin::new(&mut this.current).poll_next(cx)) {
                None => {
                    this.done = true;
                    if !matches!(this.seam, Seam::Clean) {
                        if let Err(e) = this.through_seam(String::new(), true) {
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                    return Poll::Ready(None);
                }
                Some(Ok(chunk)) => match this.on_chunk(chunk) {
                    None => continue,
                    Some(Err(e)) => {
                        this.done = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                    Some(ok) => return Poll::Ready(Some(ok)),
                },
                Some(Err(e)) => {
                    if this.may_resume(&e) {
                        this.begin(e);
                        continue;
                    }
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}
