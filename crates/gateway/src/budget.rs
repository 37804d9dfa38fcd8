//! Budgets: USD a gateway key's tenant may spend per calendar window, checked **before** a
//! call and charged what the call really cost **after** it.
//!
//! - Before a call: its worst case is reserved — the prompt's estimated tokens at the
//!   model's prompt price, plus its output limit (`max_tokens`, the key's cap, else
//!   [`DEFAULT_OUTPUT`] per choice) at the completion price, plus the per-request price, all
//!   times [`EXTRA_ATTEMPTS`] (a hedge or an exploring race may send the call twice). A
//!   reservation that does not fit is refused with OpenAI's `429 insufficient_quota` and a
//!   `Retry-After` to the window's end; the call is never sent.
//! - After: the reservation settles to the call's cost (the upstream's `usage.cost`, else its
//!   usage at the catalog price). A call that failed before answering is charged nothing; a
//!   stream abandoned or broken before its usage is charged its prompt and what it
//!   delivered, estimated at the catalog price.
//! - A model with no price in the catalog cannot be called by a budgeted key (`400
//!   model_not_priced`): never a silent "free".
//!
//! Spend is kept in a [`Ledger`]: in Redis when replicas share state (`--redis-url`: one
//! budget for the fleet; with Redis unreachable each replica spends at most its share,
//! budget ÷ `--replicas`), else this process's memory.

use std::sync::Arc;

use llm_layers_core::ledger::{Held, Ledger, Window, nanos_to_usd, usd_to_nanos};
use llm_layers_core::price::{Cost, Price};
use llm_layers_core::{ChatRequest, GivenUp};
use serde::Deserialize;

use crate::error::ApiFailure;
use crate::prices::PriceBook;

/// The output tokens reserved per choice for a call that sets no limit.
pub const DEFAULT_OUTPUT: u64 = 4_096;

/// How many times a call's worst case is reserved: the call and one hedge or race.
pub const EXTRA_ATTEMPTS: f64 = 2.0;

/// A budget: USD per calendar window (UTC).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// The most the tenant may spend in one window.
    pub usd: f64,
    /// The window.
    pub per: Window,
}

/// A budget as a keys file says it: `"budget": {"usd": 25, "per": "day"}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetEntry {
    /// USD per window: above zero.
    pub usd: f64,
    /// `minute`, `hour`, `day` or `month`.
    pub per: String,
}

impl Budget {
    /// From a keys file's entry for `tenant`.
    ///
    /// ```
    /// use llm_layers_gateway::budget::{Budget, BudgetEntry};
    /// let e = |usd: f64| BudgetEntry { usd, per: "day".into() };
    /// assert!(Budget::from_entry("acme", &e(25.0)).is_ok());
    /// for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
    ///     let err = Budget::from_entry("acme", &e(bad)).unwrap_err();
    ///     assert!(err.contains("acme") && err.contains("usd"), "{err}");
    /// }
    /// assert!(Budget::from_entry("acme", &BudgetEntry { usd: 1.0, per: "week".into() }).is_err());
    /// ```
    ///
    /// # Errors
    ///
    /// A message naming the tenant and the field: a budget of zero, below zero or not a
    /// number, or a window that is not one of the four.
    pub fn from_entry(tenant: &str, e: &BudgetEntry) -> Result<Budget, String> {
        if !(e.usd.is_finite() && e.usd > 0.0) {
            return Err(format!(
                "the budget of {tenant}: usd must be a number of dollars above zero, not {}",
                e.usd
            ));
        }
        let per = Window::parse(&e.per).map_err(|err| format!("the budget of {tenant}: {err}"))?;
        Ok(Budget { usd: e.usd, per })
    }
}

/// The budgets' spend: one ledger for the process, kept across configuration reloads.
pub(crate) struct Spend {
    ledger: Arc<dyn Ledger>,
}

impl Spend {
    pub(crate) fn new(ledger: Arc<dyn Ledger>) -> Spend {
        Spend { ledger }
    }

    /// What `tenant` holds in `budget`'s current window, USD.
    pub(crate) async fn spent(&self, tenant: &str, budget: Budget) -> f64 {
        nanos_to_usd(
            self.ledger
                .spent(tenant, budget.per, crate::now_secs())
                .await,
        )
    }

    /// Reserves `req`'s worst case against `tenant`'s `budget`, or the error to answer.
    pub(crate) async fn reserve(
        &self,
        tenant: &Arc<str>,
        budget: Budget,
        req: &ChatRequest,
        (prices, tiers): (&Arc<PriceBook>, &[llm_layers_router::TierConfig]),
    ) -> Result<Charge, ApiFailure> {
        let model = req.body().model.clone().unwrap_or_default();
        // A tier may route to any of its models: the dearest of them.
        let tier = model
            .strip_prefix(llm_layers_router::TIER_PREFIX)
            .and_then(|name| tiers.iter().find(|t| t.name == name));
        let models: Vec<&str> = match tier {
            Some(t) => t.models.iter().map(|m| m.model()).collect(),
            None => vec![model.as_str()],
        };
        let mut price: Option<Price> = None;
        for m in models {
            let Some(p) = prices.price_now(m).await else {
                return Err(ApiFailure::invalid(
                    http::StatusCode::BAD_REQUEST,
                    "model_not_priced",
                    format!(
                        "{m} has no price in the upstream's catalog: a key with a budget can \
                         only call priced models"
                    ),
                ));
            };
            price = Some(price.map_or(p, |q| Price {
                prompt: q.prompt.max(p.prompt),
                completion: q.completion.max(p.completion),
                request: q.request.max(p.request),
                cache_read: None,
            }));
        }
        let Some(price) = price else {
            return Err(ApiFailure::invalid(
                http::StatusCode::BAD_REQUEST,
                "model_not_priced",
                "a key with a budget can only call priced models",
            ));
        };
        let body = req.body();
        let prompt = body.approx_prompt_tokens();
        let output = body
            .output_budget()
            .unwrap_or_else(|| DEFAULT_OUTPUT.saturating_mul(body.choices()));
        let worst =
            (prompt as f64 * price.prompt + output as f64 * price.completion + price.request)
                * EXTRA_ATTEMPTS;
        let now = crate::now_secs();
        let limit = usd_to_nanos(budget.usd);
        match self
            .ledger
            .reserve(tenant, budget.per, usd_to_nanos(worst), limit, now)
            .await
        {
            Ok(held) => Ok(Charge {
                ledger: self.ledger.clone(),
                tenant: tenant.clone(),
                held: Some(held),
                price,
                prompt,
                delivered: 0,
                given_up: GivenUp::default(),
                answered: false,
                joined: false,
            }),
            Err(refused) => {
                metrics::counter!("llm_budget_refused_total").increment(1);
                Err(ApiFailure::insufficient_quota(
                    budget,
                    nanos_to_usd(refused.spent),
                    refused.period.ends.saturating_sub(now).max(1),
                ))
            }
        }
    }
}

/// One call's reservation: settled once, to what the call cost, or on drop to an estimate of
/// what it spent.
pub(crate) struct Charge {
    ledger: Arc<dyn Ledger>,
    tenant: Arc<str>,
    held: Option<Held>,
    price: Price,
    /// The prompt's estimated tokens.
    prompt: u64,
    /// Output chunks delivered so far (about a token each).
    delivered: u64,
    /// The call's attempts given up before their first token (hedges that lost, attempts
    /// cut by a first-token deadline): each charged its prompt.
    given_up: GivenUp,
    /// Whether an attempt answered (its stream began).
    answered: bool,
    /// Served from an identical call another caller started (coalesced): that caller pays it.
    joined: bool,
}

impl Charge {
    /// The count of the call's attempts given up before their first token (the request
    /// carries it to every attempt): an upstream may bill each for the prompt it read, so
    /// each is charged the prompt's estimate.
    pub(crate) fn given_up(&self) -> GivenUp {
        self.given_up.clone()
    }

    /// An attempt answered: the call's stream began.
    pub(crate) fn answered(&mut self) {
        self.answered = true;
    }

    /// The call was served from an identical call another caller started (coalesced): the
    /// upstream bills that call once, to the caller that started it; this one costs nothing.
    pub(crate) fn joined(&mut self) {
        self.joined = true;
    }

    /// An output chunk went to the caller.
    pub(crate) fn delivered(&mut self) {
        self.delivered += 1;
    }

    /// The call cost `cost`: the reservation settles to it.
    pub(crate) fn settle(&mut self, cost: Cost) {
        self.settle_usd(cost.usd());
    }

    /// The call failed before it answered: the upstream bills nothing for it.
    pub(crate) fn nothing(&mut self) {
        self.settle_usd(0.0);
    }

    fn settle_usd(&mut self, usd: f64) {
        let Some(held) = self.held.take() else { return };
        let given_up = f64::from(self.given_up.count());
        let usd = if self.joined {
            0.0
        } else {
            usd + given_up * self.prompt as f64 * self.price.prompt
        };
        let delta = usd_to_nanos(usd) - held.amount;
        // The memory ledger settles at once; a shared one finishes in the background.
        let mut settle = self.ledger.settle(&self.tenant, held, delta);
        if futures_util::FutureExt::now_or_never(&mut settle).is_none() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(settle);
            }
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.held.is_some() {
            // Abandoned or broken before its usage: the attempt that answered, its prompt
            // and what it delivered. Left before any answered, the attempt in flight was
            // given up (counted with the others; its own prompt when none was counted).
            let usd = if self.answered || self.given_up.count() == 0 {
                self.prompt as f64 * self.price.prompt
                    + self.delivered as f64 * self.price.completion
                    + self.price.request
            } else {
                0.0
            };
            self.settle_usd(usd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llm_layers_core::ledger::MemoryLedger;
    use llm_layers_core::{ChatRequest, Message};

    fn price() -> Price {
        Price {
            prompt: 0.000_001,
            completion: 0.000_002,
            request: 0.0,
            cache_read: None,
        }
    }

    /// A reservation held at its worst case, through the ledger's own calls.
    fn charge(ledger: &MemoryLedger, prompt: u64) -> Charge {
        let held = ledger
            .reserve_now(
                "t",
                Window::Day,
                usd_to_nanos(1.0),
                usd_to_nanos(10.0),
                crate::now_secs(),
            )
            .expect("fits");
        Charge {
            ledger: Arc::new(ledger.clone()),
            tenant: Arc::from("t"),
            held: Some(held),
            price: price(),
            prompt,
            delivered: 0,
            given_up: GivenUp::default(),
            answered: true,
            joined: false,
        }
    }

    fn spent(ledger: &MemoryLedger) -> f64 {
        nanos_to_usd(ledger.spent_now("t", Window::Day, crate::now_secs()))
    }

    #[test]
    fn a_charge_settles_once_to_the_cost_and_the_cancelled_attempts_prompts() {
        let ledger = MemoryLedger::default();
        let mut c = charge(&ledger, 1_000);
        assert!(
            (spent(&ledger) - 1.0).abs() < 1e-9,
            "the worst case is held"
        );
        c.given_up().add();
        c.given_up().add();
        c.settle(Cost::Reported(0.01));
        // 0.01 for the answer, 2 × 1,000 prompt tokens × 1e-6 for the hedges cancelled.
        assert!((spent(&ledger) - 0.012).abs() < 1e-9, "{}", spent(&ledger));
        c.settle(Cost::Reported(5.0));
        drop(c);
        assert!((spent(&ledger) - 0.012).abs() < 1e-9, "settled once");
    }

    #[test]
    fn an_abandoned_call_pays_its_prompt_and_what_it_delivered_and_a_failed_one_nothing() {
        let ledger = MemoryLedger::default();
        let mut c = charge(&ledger, 1_000);
        for _ in 0..10 {
            c.delivered();
        }
        drop(c);
        // 1,000 × 1e-6 + 10 × 2e-6
        assert!(
            (spent(&ledger) - 0.00102).abs() < 1e-9,
            "{}",
            spent(&ledger)
        );
        let ledger = MemoryLedger::default();
        let mut c = charge(&ledger, 1_000);
        c.nothing();
        drop(c);
        assert_eq!(spent(&ledger), 0.0);
    }

    #[tokio::test]
    async fn the_worst_case_is_the_prompt_and_the_output_limit_twice() {
        let ledger = MemoryLedger::default();
        let spend = Spend::new(Arc::new(ledger.clone()));
        let book = Arc::new(PriceBook::default());
        book.learn(&[serde_json::from_value(serde_json::json!({
            "id": "a/m", "pricing": {"prompt": "0.000001", "completion": "0.000002"}
        }))
        .unwrap()]);
        let mut req = ChatRequest::new("a/m", vec![Message::user("x".repeat(396))]);
        req.body_mut().max_tokens = Some(100);
        let budget = Budget {
            usd: 1.0,
            per: Window::Day,
        };
        let c = spend
            .reserve(&Arc::from("t"), budget, &req, (&book, &[]))
            .await;
        let prompt = req.body().approx_prompt_tokens() as f64;
        let want = (prompt * 0.000_001 + 100.0 * 0.000_002) * EXTRA_ATTEMPTS;
        assert!(
            (spent(&ledger) - want).abs() < 1e-9,
            "{} != {want}",
            spent(&ledger)
        );
        drop(c);
    }

    #[tokio::test]
    async fn a_tier_reserves_at_its_dearest_model_and_needs_every_one_priced() {
        let ledger = MemoryLedger::default();
        let spend = Spend::new(Arc::new(ledger.clone()));
        let book = Arc::new(PriceBook::default());
        book.learn(&[
            serde_json::from_value(serde_json::json!({
                "id": "a/m", "pricing": {"prompt": "0.000001", "completion": "0.000002"}
            }))
            .unwrap(),
            serde_json::from_value(serde_json::json!({
                "id": "b/m", "pricing": {"prompt": "0.000003", "completion": "0.000001"}
            }))
            .unwrap(),
        ]);
        let tiers: Vec<llm_layers_router::TierConfig> = serde_json::from_value(serde_json::json!([
            {"name": "both", "models": ["a/m", "b/m"], "sla": {"ttft_ms": 100}},
            {"name": "unpriced", "models": ["a/m", "c/free"], "sla": {"ttft_ms": 100}}
        ]))
        .unwrap();
        let mut req = ChatRequest::new("tier:both", vec![Message::user("x".repeat(396))]);
        req.body_mut().max_tokens = Some(100);
        let budget = Budget {
            usd: 1.0,
            per: Window::Day,
        };
        let c = spend
            .reserve(&Arc::from("t"), budget, &req, (&book, &tiers))
            .await
            .unwrap();
        let prompt = req.body().approx_prompt_tokens() as f64;
        // b's prompt price, a's completion price: the most either may cost.
        let want = (prompt * 0.000_003 + 100.0 * 0.000_002) * EXTRA_ATTEMPTS;
        assert!((spent(&ledger) - want).abs() < 1e-9, "{}", spent(&ledger));
        drop(c);
        req.body_mut().model = Some("tier:unpriced".into());
        let Err(f) = spend
            .reserve(&Arc::from("t"), budget, &req, (&book, &tiers))
            .await
        else {
            panic!("a tier with an unpriced model is refused");
        };
        assert!(format!("{f:?}").contains("c/free"), "{f:?}");
    }
}
