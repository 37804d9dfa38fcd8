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
//!   sent with `provider.only` naming the provider that served the first part;
//! - **the seam** is proven, never guessed: a prefill continues exactly the text sent
//!   (its trailing whitespace is trimmed before sending, as some APIs require, and cut once
//!   from the continuation, which sends it again); an instruction continuation must start
//!   with the last [`INSTRUCTION_OVERLAP`](llm_layers_core::continuation::INSTRUCTION_OVERLAP)
//!   characters of the delivered text (a minimum overlap: the longest repeat found is cut).
//!   When the overlap is not there, the stream ends with an error, never a quiet end;
//! - at most [`max_resumes`](ResumeLayerBuilder::max_resumes) continuations per call (1),
//!   none past the request's deadline, each one spending from the
//!   [budget](ResumeLayerBuilder::budget) when one is given (the retry budget, shared);
//! - usage in the last chunk is summed over the attempts (an attempt that broke counts its
//!   prompt estimate and its delivered chunks), and the stream's
//!   [`ResponseMeta::extensions`](llm_layers_core::ResponseMeta::extensions) carry a
//!   [`ResumeReport`]: how many continuations, what each attempt cost;
//! - opt-in per request: a [`ResumeChoice`] extension decides; without one, the layer's
//!   default ([`ResumeLayerBuilder::on_by_default`]);
//! - metric `llm_resumes_total{outcome}`: `joined`, `seam_failed`, `call_failed`,
//!   `prefill_refused`, `not_eligible`, `exhausted`, `deadline`, `no_budget`.
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
//! use llm_layers_core::{ChatRequest, ErrorKind, LlmError, Message};
//! use llm_layers_mock::{MockChat, Script};
//! use llm_layers_resume::{ResumeLayer, ResumeReport};
//! use tower::{Layer, ServiceExt};
//!
//! let mock = MockChat::new();
//! // The first answer breaks after "Hello, ", the continuation says the rest.
//! mock.push(Script::new().provider("P").token("Hello, ").fail(LlmError::truncated()));
//! mock.push(Script::new().provider("P").token(" world").finish("stop"));
//! let svc = ResumeLayer::new().layer(mock.clone());
//! let stream = svc.oneshot(ChatRequest::new("m", vec![Message::user("hi")])).await?;
//! let report = stream.meta().extensions.get::<ResumeReport>().cloned().ok_or("no report")?;
//! let answer = stream.collect().await?;
//! assert_eq!(answer.choices[0].message.content.as_deref(), Some("Hello, world"));
//! assert_eq!(report.resumed(), 1);
//! // The continuation was a prefill of the delivered text, trailing space trimmed.
//! let sent = &mock.requests()[1];
//! assert_eq!(sent.body().messages.last().map(|m| m.role.as_str()), Some("assistant"));
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

    /// The usage of the attempts that broke, estimated (their prompt, and one token per
    /// content chunk delivered): the part of the summed usage no upstream reported.
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
