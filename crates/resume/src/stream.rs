//! The watched stream: passes chunks on, and when it breaks, sends a continuation and
//! splices its text on at a seam it proves.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures_core::Stream;
use llm_layers_core::continuation::{
    ChunkEnds, ContinueMode, continuation_body, continuation_limit, expected_start,
    is_prefill_refusal, kept_len,
};
use llm_layers_core::{
    ChatChunk, ChatRequest, ChatStream, ErrorKind, LlmError, StreamChunk, Usage, default_slug,
};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_service::Service;

use crate::ResumeReport;
use crate::layer::Shared;

type Connecting = Pin<Box<dyn Future<Output = Result<ChatStream, LlmError>> + Send>>;

/// Where the continuation joins what was delivered.
enum Seam {
    /// Joined (or no continuation yet): text passes.
    Clean,
    /// The continuation must write `expect` first (the tail held back from a prefill, or
    /// the overlap an instruction asked to be repeated); `got` is what it wrote so far.
    /// Nothing of it reaches the caller until it has written all of `expect`.
    Proof { expect: String, got: String },
}

fn count(outcome: &'static str) {
    metrics::counter!(crate::RESUMES, "outcome" => outcome).increment(1);
}

fn seam_error(why: &str) -> LlmError {
    LlmError::new(ErrorKind::Truncated).with_message(format!(
        "the answer broke mid-stream and its continuation {why}: ended rather than risk \
         a duplicated or missing text"
    ))
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
    /// This continuation was already asked again by instruction (after a prefill was
    /// refused or did not prove its seam).
    fell_back: bool,
    seam: Seam,
    /// The error being recovered from, given to the caller if the continuation fails.
    broken: Option<LlmError>,
    /// Content chunks of the current attempt (its completion tokens, estimated).
    attempt_chunks: u64,
    /// The current attempt's prompt, estimated: the caller's at first, a continuation's
    /// (the caller's and the text delivered, and its instruction) after a break.
    attempt_prompt: u64,
    /// Where the content chunks delivered over every attempt ended.
    ends: ChunkEnds,
    /// The usage of the attempts that broke: reported when they sent one, else estimated.
    earlier: Usage,
    /// The chunk carrying the current attempt's usage, held until the end is seen: usage
    /// goes out once, last, summed over the attempts.
    held: Option<StreamChunk>,
    /// Something to give before reading on (a held chunk's content, then an error).
    queued: Option<Result<StreamChunk, LlmError>>,
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
            fell_back: false,
            seam: Seam::Clean,
            broken: None,
            attempt_chunks: 0,
            attempt_prompt: 0,
            ends: ChunkEnds::default(),
            earlier: Usage::default(),
            held: None,
            queued: None,
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

    /// The attempt broke with `e`: ask for the rest. What it reported (a usage chunk held
    /// before the break) counts as its usage, else an estimate.
    fn begin(&mut self, e: LlmError, reported: Option<Usage>) {
        self.broken = Some(e);
        self.resumes += 1;
        let this_attempt = reported.unwrap_or_else(|| Usage {
            prompt_tokens: if self.resumes > 1 {
                self.attempt_prompt
            } else {
                self.request.body().approx_prompt_tokens()
            },
            completion_tokens: self.attempt_chunks,
            ..Usage::default()
        });
        self.earlier.add(&this_attempt);
        self.attempt_chunks = 0;
        self.fell_back = false;
        self.mode = self.shared.mode(&self.model, self.provider.as_deref());
        self.connect();
    }

    fn connect(&mut self) {
        let mut req = self.request.clone();
        let mut body = continuation_body(self.request.body(), &self.delivered, self.mode);
        // At most what is left of the caller's limit, less the chunks it keeps.
        let kept = self.ends.kept(kept_len(&self.delivered, self.mode));
        let left = |m: u32| continuation_limit(m, kept);
        body.max_tokens = body.max_tokens.map(left);
        body.max_completion_tokens = body.max_completion_tokens.map(left);
        self.attempt_prompt = body.approx_prompt_tokens();
        *req.body_mut() = body;
        if self.mode != ContinueMode::Instruction {
            // Prefill continues that provider's text: ask the one that served it.
            if let Some(p) = &self.provider {
                let prefs = req.body_mut().provider.get_or_insert_with(Default::default);
                prefs.only = Some(vec![default_slug(p)]);
                prefs.order = None;
            }
        }
        req.extensions_mut()
            .insert(llm_layers_core::AttemptKind::Continuation);
        tracing::debug!(
            mode = self.mode.as_str(),
            delivered_bytes = self.delivered.len() as u64,
            "continuation"
        );
        let mut service = self.service.clone();
        self.connecting = Some(Box::pin(async move {
            ServiceExt::ready(&mut service).await?;
            service.call(req).await
        }));
    }

    /// The continuation committed: read it through the seam.
    fn joined(&mut self, stream: ChatStream) {
        self.current = stream;
        self.seam = Seam::Proof {
            expect: expected_start(&self.delivered, self.mode).to_owned(),
            got: String::new(),
        };
    }

    /// A prefill continuation did not prove its seam (the provider answered from scratch,
    /// say): that (model, provider) continues by instruction from now on, and this one is
    /// asked again that way, once. `false`: nothing more to try.
    fn fall_back_to_instruction(&mut self) -> bool {
        if self.mode == ContinueMode::Instruction || self.fell_back {
            return false;
        }
        if let Some(p) = &self.provider {
            self.shared.learn_refusal(&self.model, p);
        }
        // The continuation that did not join was an upstream call too: its estimate counts.
        let written = match &self.seam {
            Seam::Proof { got, .. } => (got.len() as u64).div_ceil(4),
            Seam::Clean => 0,
        };
        self.earlier.add(&Usage {
            prompt_tokens: self.attempt_prompt,
            completion_tokens: written,
            ..Usage::default()
        });
        self.seam = Seam::Clean;
        self.fell_back = true;
        self.mode = ContinueMode::Instruction;
        self.connect();
        true
    }

    /// `text` of the continuation through the seam: what the caller gets now (`None`:
    /// nothing yet), or an error when the continuation started anywhere else.
    fn through_seam(&mut self, text: String) -> Result<Option<String>, LlmError> {
        let Seam::Proof { expect, got } = &mut self.seam else {
            return Ok(Some(text));
        };
        got.push_str(&text);
        if got.len() < expect.len() {
            return if expect.starts_with(got.as_str()) {
                Ok(None)
            } else {
                Err(seam_error("started elsewhere"))
            };
        }
        if !got.starts_with(expect.as_str()) {
            return Err(seam_error("started elsewhere"));
        }
        let rest = got[expect.len()..].to_owned();
        self.seam = Seam::Clean;
        count("joined");
        self.report.resumed_after(self.earlier.clone());
        Ok((!rest.is_empty()).then_some(rest))
    }

    /// One chunk: watched, and (after a resume) passed through the seam. `None`: nothing to
    /// give yet.
    fn on_chunk(&mut self, mut chunk: StreamChunk) -> Option<Result<StreamChunk, LlmError>> {
        // Read through the cheap accessors: a chunk of a first attempt that changes nothing
        // is passed on unparsed (the typed chunk is built only for a continuation's).
        if chunk.choice_count() > 1
            || chunk.choice_fields().is_some_and(|c| {
                c.index != 0
                    || c.delta.tool_calls.is_some()
                    || c.delta.reasoning.as_deref().is_some_and(|r| !r.is_empty())
            })
        {
            self.eligible = false;
        }
        // What the upstream sent (and bills), the text a continuation writes again
        // included: the attempt's completion tokens if it breaks.
        if chunk.content().is_some_and(|t| !t.is_empty()) {
            self.attempt_chunks += 1;
        }
        if self.resumes > 0 {
            // Only a chunk that changes is written from its fields: the rest of a
            // continuation goes out as the bytes it came in.
            if chunk.choices.iter().any(|c| c.delta.role.is_some()) {
                for c in &mut chunk.make_mut().choices {
                    c.delta.role = None;
                }
            }
            if matches!(self.seam, Seam::Proof { .. }) {
                if let Some(choice) = chunk.make_mut().choices.first_mut() {
                    let text = choice.delta.content.take().unwrap_or_default();
                    match self.through_seam(text) {
                        Err(e) => return Some(Err(e)),
                        Ok(Some(t)) => choice.delta.content = Some(t),
                        // All of it was text written again: so are its log probabilities.
                        Ok(None) => choice.logprobs = None,
                    }
                }
                let ending = chunk.choices.iter().any(|c| c.finish_reason.is_some())
                    || chunk.usage.is_some();
                if ending && matches!(self.seam, Seam::Proof { .. }) {
                    return Some(Err(seam_error("ended before writing where it joins")));
                }
            }
        }
        if chunk.has_finish() {
            self.finished = true;
        }
        if let Some(text) = chunk.content().filter(|t| !t.is_empty()) {
            self.delivered.push_str(text);
            self.ends.push(self.delivered.len());
        }
        if let Some(u) = chunk.usage() {
            self.report.attempt(u.clone());
            // Held until the end is seen: summed then, or taken back if the stream breaks.
            self.held = Some(chunk);
            return None;
        }
        if self.resumes > 0 && says_nothing(&chunk) {
            return None;
        }
        Some(Ok(chunk))
    }

    /// The held usage chunk, its usage summed over every attempt when there were several.
    fn release_held(&mut self) -> Option<StreamChunk> {
        let mut chunk = self.held.take()?;
        if self.resumes > 0 {
            if let Some(u) = chunk.make_mut().usage.as_mut() {
                let mut total = self.earlier.clone();
                total.add(u);
                total.total_tokens = total.prompt_tokens + total.completion_tokens;
                *u = total;
            }
        }
        Some(chunk)
    }
}

/// Whether a chunk of a continuation carries nothing for the caller (its text was all
/// written again, its role dropped).
fn says_nothing(c: &ChatChunk) -> bool {
    c.usage.is_none()
        && c.error.is_none()
        && c.choices.iter().all(|ch| {
            ch.finish_reason.is_none()
                && ch.logprobs.is_none()
                && ch.error.is_none()
                && ch.delta.content.as_deref().is_none_or(str::is_empty)
                && ch.delta.reasoning.as_deref().is_none_or(str::is_empty)
                && ch.delta.tool_calls.is_none()
                && ch.delta.extra.is_empty()
        })
}

// No field is pinned: the service is only cloned, the streams and futures are boxed.
impl<S> Unpin for Resuming<S> {}

impl<S> Stream for Resuming<S>
where
    S: Service<ChatRequest, Response = ChatStream, Error = LlmError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Item = Result<StreamChunk, LlmError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(item) = this.queued.take() {
                return Poll::Ready(Some(item));
            }
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
                    // "does not support assistant message prefill": ask again as an
                    // instruction, and remember it for this (model, provider). Any other
                    // 400 (a context too long) says nothing about how it continues.
                    Err(e) if is_prefill_refusal(&e) && this.fall_back_to_instruction() => {
                        count("prefill_refused");
                        continue;
                    }
                    Err(e) => {
                        count("call_failed");
                        this.done = true;
                        return Poll::Ready(Some(Err(this.broken.take().unwrap_or(e))));
                    }
                }
            }
            match ready!(Pin::new(&mut this.current).poll_next(cx)) {
                None => {
                    // The end resolves the seam: proven, or an error; never a quiet end.
                    if matches!(this.seam, Seam::Proof { .. }) {
                        if this.fall_back_to_instruction() {
                            count("prefill_not_continued");
                            continue;
                        }
                        count("seam_failed");
                        this.done = true;
                        return Poll::Ready(Some(Err(seam_error(
                            "ended before writing where it joins",
                        ))));
                    }
                    this.done = true;
                    return Poll::Ready(this.release_held().map(Ok));
                }
                Some(Ok(chunk)) => {
                    // A usage chunk that was not the last: it goes out as it came.
                    let held = this.held.take();
                    match this.on_chunk(chunk) {
                        None => {
                            if let Some(h) = held {
                                return Poll::Ready(Some(Ok(h)));
                            }
                        }
                        Some(Err(e))
                            if this.mode != ContinueMode::Instruction
                                && matches!(this.seam, Seam::Proof { .. })
                                && this.fall_back_to_instruction() =>
                        {
                            // A prefill answered from scratch: asked again by instruction.
                            drop(e);
                            count("prefill_not_continued");
                            if let Some(h) = held {
                                return Poll::Ready(Some(Ok(h)));
                            }
                        }
                        Some(Err(e)) => {
                            count("seam_failed");
                            this.done = true;
                            if let Some(h) = held {
                                this.queued = Some(Err(e));
                                return Poll::Ready(Some(Ok(h)));
                            }
                            return Poll::Ready(Some(Err(e)));
                        }
                        Some(ok) => match held {
                            Some(h) => {
                                this.queued = Some(ok);
                                return Poll::Ready(Some(Ok(h)));
                            }
                            None => return Poll::Ready(Some(ok)),
                        },
                    }
                }
                Some(Err(e)) => {
                    let reported = this.held.as_ref().and_then(|h| h.usage.clone());
                    if this.may_resume(&e) {
                        // The held chunk's usage was this attempt's; the rest of it (its
                        // text, counted as delivered) goes out now.
                        if let Some(mut h) = this.held.take() {
                            h.make_mut().usage = None;
                            if !says_nothing(&h) {
                                this.queued = Some(Ok(h));
                            }
                        }
                        this.begin(e, reported);
                        continue;
                    }
                    this.done = true;
                    if let Some(h) = this.release_held() {
                        this.queued = Some(Err(e));
                        return Poll::Ready(Some(Ok(h)));
                    }
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}
