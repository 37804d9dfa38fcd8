//! [`MockChat::scenario`]: a [`Scenario`] played in process, with no sockets.

use llm_layers_core::sync::lock;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use http::StatusCode;
use llm_layers_core::{ApiError, ChatRequest, ErrorCode, ErrorKind, LlmError};

use crate::answer::{answer_pieces_as, whole_answer_tokens};
use crate::plan::{self, Cut, Outcome, Plan};
use crate::scenario::Scenario;
use crate::scripted::{MockChat, Script};

impl MockChat {
    /// A mock upstream that draws each call from `scenario` as
    /// [`MockServer`](crate::MockServer) does (same providers and weights, provider preferences honoured,
    /// same time to first token, gaps and faults, same answers, the same seeded draws per
    /// request body and repeat), and plays it in process: what the OpenRouter leaf would
    /// return for it, typed errors included, with no HTTP in between.
    ///
    /// Deterministic under `tokio::time::pause()` as sockets are not (a connect or a frame
    /// in flight is real I/O the paused clock can run past), so whole stacks can be tested
    /// on a scenario's real-world timings in no wall-clock time. Wire-level features
    /// (keep-alive comments, split writes, CRLF) have no meaning here and are ignored.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?.block_on(async {
    /// use llm_layers_core::{ChatRequest, Message};
    /// use llm_layers_mock::{MockChat, Scenario, expected_answer};
    /// use tower::ServiceExt;
    /// let mock = MockChat::scenario(Scenario::healthy().with_seed(3));
    /// let mut req = ChatRequest::new("mock/echo", vec![Message::user("hi")]);
    /// req.body_mut().max_tokens = Some(3);
    /// let want = expected_answer(req.body(), 3);
    /// let answer = mock.clone().oneshot(req).await?.collect().await?;
    /// assert_eq!(answer.choices[0].message.content.as_deref(), Some(want.as_str()));
    /// assert_eq!(mock.calls(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn scenario(scenario: Scenario) -> MockChat {
        let seen: Mutex<HashMap<u64, u64>> = Mutex::new(HashMap::new());
        MockChat::from_fn(move |req| {
            let bytes = serde_json::to_vec(req.body()).unwrap_or_default();
            let mut h = std::hash::DefaultHasher::new();
            bytes.hash(&mut h);
            let body_hash = h.finish();
            let repeat = {
                let mut seen = lock(&seen);
                if seen.len() > 100_000 {
                    seen.clear();
                }
                let n = seen.entry(body_hash).or_default();
                *n += 1;
                *n - 1
            };
            let mut rng = plan::request_rng(scenario.seed, body_hash, repeat);
            let plan = plan::draw(&scenario, req.body(), &mut rng);
            script_of(&scenario, req, &plan)
        })
    }
}

/// An upstream error as the leaf would make it from the mock server's answer.
fn api_error(code: u16, message: &str, error_type: &str, provider: Option<&str>) -> ApiError {
    let mut api = ApiError::default();
    api.code = Some(ErrorCode::Number(i64::from(code)));
    api.message = Some(message.to_owned());
    api.error_type = Some(error_type.to_owned());
    api.provider_name = provider.map(str::to_owned);
    api
}

/// The script of one drawn plan.
fn script_of(scenario: &Scenario, req: &ChatRequest, plan: &Plan) -> Script {
    let provider = plan.provider.map(|i| scenario.providers[i].name.as_str());
    let after = scenario.scaled(scenario.error_after_ms);
    let error = |e: LlmError| Script::new().wait(after).fail(e);
    match &plan.outcome {
        Outcome::NoEndpoints => {
            let mut api = api_error(
                404,
                "No endpoints found that can handle the requested parameters.",
                "not_found",
                None,
            );
            api.availability_code = Some("no_endpoints".into());
            api.retryable = Some(false);
            error(LlmError::status(StatusCode::NOT_FOUND, Some(api)))
        }
        Outcome::Status {
            code,
            retry_after_s,
        } => {
            let error_type = plan::error_type(*code);
            let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let api = api_error(
                *code,
                &format!("mock provider error {code}"),
                error_type,
                provider,
            );
            let mut e = LlmError::status(status, Some(api));
            if let Some(s) = retry_after_s {
                e = e.with_retry_after(std::time::Duration::from_secs(*s));
            }
            error(e)
        }
        Outcome::RefusePrefill => error(LlmError::status(
            StatusCode::BAD_REQUEST,
            Some(api_error(
                400,
                llm_layers_core::continuation::PREFILL_REFUSAL,
                "invalid_request",
                provider,
            )),
        )),
        Outcome::Reset => error(
            LlmError::new(ErrorKind::Transport)
                .with_message("the connection to the upstream broke before the response"),
        ),
        Outcome::Hang => Script::new().hang(),
        Outcome::Error200 => error(LlmError::status(
            StatusCode::BAD_GATEWAY,
            Some(api_error(
                502,
                "mock provider returned an error",
                "provider_unavailable",
                provider,
            )),
        )),
        Outcome::Answer { cut } => {
            let name = provider.unwrap_or_default();
            let from_scratch = plan
                .provider
                .is_some_and(|i| scenario.providers[i].prefill_from_scratch);
            let whole = whole_answer_tokens(req.body(), plan.tokens);
            let pieces = answer_pieces_as(req.body(), whole, from_scratch);
            let n = pieces.len() as u64;
            let mut s = Script::new().provider(name).wait(plan.ttft).role();
            for (i, piece) in (0u32..).zip(pieces) {
                if i > 0 {
                    s = s.wait(plan.gaps[i as usize]);
                }
                s = s.token(piece);
                if let Some((how, after)) = cut {
                    if i + 1 == *after {
                        if *how == Cut::Hang {
                            return s.hang();
                        }
                        return s.fail(match how {
                            Cut::ErrorEvent | Cut::ErrorEventEof => LlmError::upstream(api_error(
                                502,
                                "Provider disconnected",
                                "provider_unavailable",
                                Some(name),
                            )),
                            Cut::Reset | Cut::Hang => LlmError::new(ErrorKind::Truncated)
                                .with_message("connection broken mid-stream"),
                        });
                    }
                }
            }
            s.finish("stop").usage(req.body().approx_prompt_tokens(), n)
        }
    }
}
