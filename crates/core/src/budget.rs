//! The budget a retry or hedge layer spends from: tower's
//! [`tower::retry::budget::Budget`] trait, built from named parameters or given
//! whole (to share one budget between layers).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};

use crate::ConfigError;

/// The parameters of a [`TpsBudget`]: extra calls may be at most `ratio` of requests plus
/// `min_per_sec`, counted over `ttl`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TpsParams {
    /// The window counted over (1 to 60 s).
    pub ttl: Duration,
    /// Extra calls allowed per second whatever the traffic.
    pub min_per_sec: u32,
    /// Extra calls per request.
    pub ratio: f32,
}

impl TpsParams {
    /// Over a 10 s window.
    pub fn new(min_per_sec: u32, ratio: f32) -> TpsParams {
        TpsParams {
            ttl: Duration::from_secs(10),
            min_per_sec,
            ratio,
        }
    }
}

/// The budget a builder will build: from parameters (checked at `build`), unless a budget
/// was given whole, which wins.
#[derive(Clone)]
pub struct BudgetChoice {
    /// The parameters of the budget built when none is given.
    pub params: TpsParams,
    /// A budget given whole, possibly shared.
    pub given: Option<Arc<dyn Budget + Send + Sync>>,
}

impl fmt::Debug for BudgetChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.given {
            Some(_) => f.write_str("BudgetChoice::Given"),
            None => self.params.fmt(f),
        }
    }
}

impl BudgetChoice {
    /// A budget from these parameters.
    pub fn new(params: TpsParams) -> BudgetChoice {
        BudgetChoice {
            params,
            given: None,
        }
    }

    /// The budget: the given one, or one from the parameters, checked. `what` names the
    /// layer in the error, `max_ratio` bounds the ratio.
    ///
    /// # Errors
    ///
    /// A window outside 1 to 60 s, a ratio outside `0..=max_ratio`, or a floor that
    /// [`TpsBudget`] cannot represent (it would panic).
    pub fn build(
        self,
        what: &str,
        max_ratio: f32,
    ) -> Result<Arc<dyn Budget + Send + Sync>, ConfigError> {
        if let Some(b) = self.given {
            return Ok(b);
        }
        let p = self.params;
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&p.ttl) {
            return Err(ConfigError::new(format!(
                "{what} budget window must be 1 to 60 seconds"
            )));
        }
        if !(p.ratio.is_finite() && (0.0..=max_ratio).contains(&p.ratio)) {
            return Err(ConfigError::new(format!(
                "{what} budget ratio must be in 0..={max_ratio}"
            )));
        }
        if p.min_per_sec >= i32::MAX as u32 {
            return Err(ConfigError::new(format!(
                "{what} budget floor per second is too large"
            )));
        }
        Ok(Arc::new(TpsBudget::new(p.ttl, p.min_per_sec, p.ratio)))
    }

    /// The budget: the given one, or a [`ShareBudget`] from the parameters (a hard cap:
    /// `ratio` of calls, or the floor's `min_per_sec` × the window when that is more),
    /// checked as [`build`](Self::build) checks.
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build).
    pub fn build_capped(
        self,
        what: &str,
        max_ratio: f32,
    ) -> Result<Arc<dyn Budget + Send + Sync>, ConfigError> {
        if let Some(b) = self.given {
            return Ok(b);
        }
        let p = self.params;
        // The same checks (a TpsBudget is cheap to build and drop).
        BudgetChoice::new(p).build(what, max_ratio)?;
        let floor = p.min_per_sec.saturating_mul(p.ttl.as_secs() as u32);
        Ok(Arc::new(ShareBudget::new(p.ttl, f64::from(p.ratio), floor)))
    }
}

/// A hard cap on extra requests as a share of calls, counted the way a bill counts them:
/// over the last `window`, the extra requests withdrawn may be at most `ratio` of the calls
/// deposited, or `floor` when that is more (so a quiet service still gets a few).
///
/// Unlike tower's [`TpsBudget`] (a reserve that refills: its floor is *added* to the ratio
/// and is per second, so at low traffic it allows far more than the ratio), nothing is
/// added: at any traffic above `floor / ratio` calls per window, extra requests stay within
/// `ratio` of calls. Counted in ten slots of a tenth of the window; one short lock per call.
///
/// ```
/// use std::time::Duration;
/// use llm_layers_core::budget::ShareBudget;
/// use tower::retry::budget::Budget;
/// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?.block_on(async {
/// let b = ShareBudget::new(Duration::from_secs(10), 0.05, 2);
/// assert!(b.withdraw() && b.withdraw(), "the floor");
/// assert!(!b.withdraw());
/// for _ in 0..100 {
///     b.deposit();
/// }
/// assert_eq!((0..10).filter(|_| b.withdraw()).count(), 3, "5 of 100 calls, 2 spent");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ShareBudget {
    ratio: f64,
    floor: u32,
    slot: Duration,
    slots: std::sync::Mutex<Slots>,
}

const SLOTS: usize = 10;

#[derive(Debug)]
struct Slots {
    start: tokio::time::Instant,
    /// The slot now being counted, in slots since `start`.
    head: u64,
    calls: [u32; SLOTS],
    extras: [u32; SLOTS],
}

impl ShareBudget {
    /// At most `ratio` extra requests per call over `window`, or `floor` per window.
    ///
    /// # Panics
    ///
    /// When `window` is zero or `ratio` is not a finite number from 0 to 1 (see
    /// [`BudgetChoice::build_capped`] for a checked construction).
    pub fn new(window: Duration, ratio: f64, floor: u32) -> ShareBudget {
        assert!(!window.is_zero(), "a budget window must not be zero");
        assert!(
            ratio.is_finite() && (0.0..=1.0).contains(&ratio),
            "a budget ratio must be in 0..=1"
        );
        ShareBudget {
            ratio,
            floor,
            slot: window / SLOTS as u32,
            slots: std::sync::Mutex::new(Slots {
                start: tokio::time::Instant::now(),
                head: 0,
                calls: [0; SLOTS],
                extras: [0; SLOTS],
            }),
        }
    }

    /// (calls, extra requests) over the window now.
    pub fn counts(&self) -> (u64, u64) {
        let mut s = crate::sync::lock(&self.slots);
        s.advance(self.slot);
        (
            s.calls.iter().map(|&c| u64::from(c)).sum(),
            s.extras.iter().map(|&c| u64::from(c)).sum(),
        )
    }
}

impl Slots {
    fn advance(&mut self, slot: Duration) {
        let now = tokio::time::Instant::now();
        let at =
            (now.saturating_duration_since(self.start).as_nanos() / slot.as_nanos().max(1)) as u64;
        // Past slots are cleared as the head moves over them (all of them after a long gap).
        for _ in 0..at.saturating_sub(self.head).min(SLOTS as u64) {
            self.head += 1;
            let i = (self.head % SLOTS as u64) as usize;
            self.calls[i] = 0;
            self.extras[i] = 0;
        }
        self.head = self.head.max(at);
    }
}

impl Budget for ShareBudget {
    fn deposit(&self) {
        let mut s = crate::sync::lock(&self.slots);
        s.advance(self.slot);
        let i = (s.head % SLOTS as u64) as usize;
        s.calls[i] = s.calls[i].saturating_add(1);
    }

    fn withdraw(&self) -> bool {
        let mut s = crate::sync::lock(&self.slots);
        s.advance(self.slot);
        let calls: u64 = s.calls.iter().map(|&c| u64::from(c)).sum();
        let extras: u64 = s.extras.iter().map(|&c| u64::from(c)).sum();
        let allowed = (self.ratio * calls as f64).max(f64::from(self.floor));
        if (extras + 1) as f64 > allowed {
            return false;
        }
        let i = (s.head % SLOTS as u64) as usize;
        s.extras[i] = s.extras[i].saturating_add(1);
        true
    }
}
