//! Mid-stream resume for an [llm-layers] stack: a stream that breaks **after** its first
//! token (an error event, a reset, the idle deadline) continues where it stopped, and the
//! caller sees one answer: no duplicated text, no missing text, one end, usage summed.
//!
//! Before the first token, retry and hedge recover a failed call; after it, the caller
//! owns the stream and a break could only end it with an error. This layer watches the
//! committed stream; on a break it sends one **continuation** request through the layers
//! below it (so it is retried, hedged and kept off broken providers like any call) and
//! splices its text on:
//!
//! - **only plain assistant text** is continued: a stream with a tool-call delta, a
//!   reasoning block or several choices ends with its error as before;
//! - **how to continue** comes from a capability table per (model, provider): assistant
//!   prefill ([`ContinueMode::Prefill`]), the `prefix: true` flag
//!   ([`ContinueMode::Prefix`]), or an instruction ([`ContinueMode::Instruction`]); a
//!   `400` to a prefill teaches that pair to use an instruction, and the same continuation
//!   is sent again that way. [`ResumeLayerBuilder::pin`] fixes a pair's mode. A prefill is
//!   sent with `provider.only` naming the provider that served the first part; a text too
//!   short to hold a tail back is continued by instruction;
//! - **the seam** is proven, never guessed, in every mode: the continuation must write a
//!   known text first, and nothing of it reaches the caller until it has. A prefill holds
//!   back the delivered text's last
//!   [`HELD_BACK`](llm_layers_core::continuation::HELD_BACK) characters or more (from the
//!   start of a word, so it never ends with whitespace), which the continuation must write
//!   again; an instruction asks for the last
//!   [`INSTRUCTION_OVERLAP`](llm_layers_core::continuation::INSTRUCTION_OVERLAP) characters
//!   repeated, and exactly those are cut. A prefill answered from scratch (OpenAI's models
//!   read a trailing assistant message as a finished turn) fails the proof: that pair
//!   continues by instruction from then on, and the continuation is asked again that way,
//!   once. A continuation that starts anywhere else, or ends before it has written where it
//!   joins, ends the stream with an error, never a quiet end;
//! - a continuation asks for **at most what is left of the caller's `max_tokens`** (plus the
//!   text it writes again), so `finish_reason: "length"` still means the caller's limit (a
//!   stream cut after its last token asks for the overlap alone, and gets its finish);
//! - **only a `400` about the prefill** teaches a pair to use an instruction (a context too
//!   long does not);
//! - at most [`max_resumes`](ResumeLayerBuilder::max_resumes) continuations per call (1),
//!   none past the request's deadline, each one spending from the
//!   [budget](ResumeLayerBuilder::budget) when one is given (the retry budget, shared);
//! - **one usage chunk, last**: a chunk carrying usage is held until the end is seen, and its
//!   usage summed over the attempts, extras included (`cost`, `*_details`; an attempt that
//!   broke counts what it reported, else its prompt estimate and its delivered chunks); no
//!   delta but the text written again is ever dropped; and the stream's
//!   [`ResponseMeta::extensions`](llm_layers_core::ResponseMeta::extensions) carry a
//!   [`ResumeReport`]: how many continuations, what each attempt cost;
//! - opt-in per request: a [`ResumeChoice`] extension decides; without one, the layer's
//!   default ([`ResumeLayerBuilder::on_by_default`]);
//! - metric `llm_resumes_total{outcome}`: `joined`, `seam_failed`, `call_failed`,
//!   `prefill_refused`, `prefill_not_continued`, `not_eligible`, `exhausted`, `deadline`,
//!   `no_budget`.
//!
//! # Why a layer, not a retry policy
//!
//! Retry's future resolves at the commit point and is done; resuming happens later, inside
//! the stream the caller already holds, with state of its own (the delivered text, the
//! seam). So it is a layer of its own, **above** retry and hedge (a continuation is retried
//! and hedged like a call) and **below** the total timeout (which bounds the whole answer).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?.block_on(async {
//! use std::time::Duration;
//! use llm_layers_core::continuation::split_for_prefill;
//! use llm_layers_core::{ChatRequest, LlmError, Message};
//! use llm_layers_mock::{MockChat, Script};
//! use llm_layers_resume::{ResumeLayer, ResumeReport};
//! use tower::{Layer, ServiceExt};
//!
//! let mock = MockChat::new();
//! // The first answer breaks after its first sentence and a half ...
//! let delivered = "Once upon a time, there lived a fox ";
//! mock.push(Script::new().provider("P").token(delivered).fail(LlmError::truncated()));
//! // ... and is continued by prefill: the continuation writes the tail held back from the
//! // prefill again (which proves where it joins), then the rest.
//! let (prefill, held_back) = split_for_prefill(delivered);
//! mock.push(Script::new().provider("P").token(held_back).token("in a quiet wood.").finish("stop"));
//! let svc = ResumeLayer::new().layer(mock.clone());
//! let stream = svc.oneshot(ChatRequest::new("m", vec![Message::user("hi")])).await?;
//! let report = stream.meta().extensions.get::<ResumeReport>().cloned().ok_or("no report")?;
//! let answer = stream.collect().await?;
//! assert_eq!(
//!     answer.choices[0].message.content.as_deref(),
//!     Some("Once upon a time, there lived a fox in a quiet wood.")
//! );
//! assert_eq!(report.resumed(), 1);
//! let sent = &mock.requests()[1];
//! let last = sent.body().messages.last().ok_or("no message")?;
//! assert_eq!((last.role.as_str(), prefill), ("assistant", "Once upon a time,"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [llm-layers]: https://github.com/llm-layers/llm-layers

mod future;
mod layer;
mod service;
mod stream;

use std::sync::{Arc, Mutex};

use llm_layers_core::Usage;
use llm_layers_core::sync::lock;

pub use future::ResponseFuture;
pub use layer::{ResumeLayer, ResumeLayerBuilder};
pub use llm_layers_core::continuation::ContinueMode;
pub use service::Resume;

/// Continuations by outcome (see the crate docs for the outcomes).
pub const RESUMES: &str = "llm_resumes_total";

/// A request extension: resume this request's stream if it breaks, or not, whatever the
/// layer's default (the gateway sets it from `x-llm-resume: on|off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResumeChoice {
    /// Continue a broken stream.
    On,
    /// End a broken stream with its error.
    Off,
}

/// What resuming did for one stream, in its `meta().extensions`; read it once the stream
/// has ended.
#[derive(Debug, Clone, Default)]
pub struct ResumeReport(Arc<Mutex<Report>>);

#[derive(Debug, Default)]
struct Report {
    resumed: u32,
    broken: Usage,
    attempts: Vec<Usage>,
}

impl ResumeReport {
    /// How many continuations were joined on.
    pub fn resumed(&self) -> u32 {
        lock(&self.0).resumed
    }

    /// The usage of the attempts that broke, estimated (each one's prompt as it was sent, a
    /// continuation's with the text delivered, and one token per content chunk it sent, the
    /// text a continuation writes again included): the part of the summed usage no upstream
    /// reported.
    pub fn broken_usage(&self) -> Usage {
        lock(&self.0).broken.clone()
    }

    /// The usage each attempt that reached its end reported, in order.
    pub fn reported_usage(&self) -> Vec<Usage> {
        lock(&self.0).attempts.clone()
    }

    pub(crate) fn resumed_after(&self, broken: Usage) {
        let mut r = lock(&self.0);
        r.resumed += 1;
        r.broken = broken;
    }

    pub(crate) fn attempt(&self, usage: Usage) {
        lock(&self.0).attempts.push(usage);
    }
}
