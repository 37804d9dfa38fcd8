//! Spend over calendar windows: what a budget is kept in.
//!
//! A [`Ledger`] holds, per key (a tenant) and per calendar [`Window`] (UTC), how much was spent,
//! in nano-dollars (integers: sums never drift). A call **reserves** its worst case before it
//! is sent ([`Ledger::reserve`]: refused when it does not fit under the limit) and
//! **settles** to what it really cost after ([`Ledger::settle`], with the difference). The
//! window is the one the call started in, whenever it ends.
//!
//! [`MemoryLedger`] keeps one process's spend; a shared one (Redis) lives in
//! `llm-layers-redis`.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
//! use llm_layers_core::ledger::{Ledger, MemoryLedger, Window, usd_to_nanos};
//! let ledger = MemoryLedger::default();
//! let day = Window::Day;
//! let now = 1_767_225_600; // 2026-01-01T00:00:00Z
//! let limit = usd_to_nanos(1.0);
//! let r = ledger.reserve("acme", day, usd_to_nanos(0.75), limit, now).await;
//! let held = r.expect("fits");
//! assert!(ledger.reserve("acme", day, usd_to_nanos(0.5), limit, now).await.is_err());
//! // It cost 0.10: 0.65 comes back, and the next call fits.
//! ledger.settle("acme", held, usd_to_nanos(0.10) - usd_to_nanos(0.75)).await;
//! assert!(ledger.reserve("acme", day, usd_to_nanos(0.5), limit, now).await.is_ok());
//! // The next day starts at zero.
//! assert!(ledger.reserve("acme", day, usd_to_nanos(0.9), limit, now + 86_400).await.is_ok());
//! # });
//! # Ok::<(), std::io::Error>(())
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::ConfigError;
use crate::sync::lock;

/// Nano-dollars in one dollar.
pub const NANOS_PER_USD: f64 = 1e9;

/// `usd` as nano-dollars (rounded; a negative or non-finite amount is 0).
pub fn usd_to_nanos(usd: f64) -> i64 {
    if usd.is_finite() && usd > 0.0 {
        (usd * NANOS_PER_USD).round().min(i64::MAX as f64) as i64
    } else {
        0
    }
}

/// `nanos` as dollars.
pub fn nanos_to_usd(nanos: i64) -> f64 {
    nanos as f64 / NANOS_PER_USD
}

/// A calendar window, in UTC: a budget per minute, hour, day or month starts again at the
/// start of each (not a rolling window: the reset time is the same for every replica and
/// can be told to a caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    /// From each minute's second 0.
    Minute,
    /// From each hour's minute 0.
    Hour,
    /// From midnight UTC.
    Day,
    /// From the first of each month, midnight UTC.
    Month,
}

/// One window: which (an index unique for the window kind) and when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Period {
    /// The window kind.
    pub window: Window,
    /// Which window of that kind (minutes, hours or days since 1970, or months since year 0).
    pub index: i64,
    /// When it ends, Unix seconds.
    pub ends: u64,
}

impl Window {
    /// From a config value: `minute`, `hour`, `day`, `month` (or `per_minute`, ...).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the values allowed.
    pub fn parse(s: &str) -> Result<Window, ConfigError> {
        match s.trim().trim_start_matches("per_") {
            "minute" => Ok(Window::Minute),
            "hour" => Ok(Window::Hour),
            "day" => Ok(Window::Day),
            "month" => Ok(Window::Month),
            other => Err(ConfigError::new(format!(
                "budget window {other:?}: say minute, hour, day or month"
            ))),
        }
    }

    /// Its name in config and on the status page.
    pub fn name(self) -> &'static str {
        match self {
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Month => "month",
        }
    }

    /// The window of this kind that holds `unix_secs`.
    ///
    /// ```
    /// use llm_layers_core::ledger::Window;
    /// // 2026-02-28T23:59:59Z: February ends at March's first second.
    /// let p = Window::Month.at(1_772_323_199);
    /// assert_eq!(p.ends, 1_772_323_200);
    /// assert_eq!(Window::Month.at(1_772_323_200).index, p.index + 1);
    /// assert_eq!(Window::Day.at(1_772_323_199).ends, 1_772_323_200);
    /// ```
    pub fn at(self, unix_secs: u64) -> Period {
        let secs = unix_secs as i64;
        let fixed = |len: i64| {
            let index = secs.div_euclid(len);
            Period {
                window: self,
                index,
                ends: ((index + 1) * len) as u64,
            }
        };
        match self {
            Window::Minute => fixed(60),
            Window::Hour => fixed(3_600),
            Window::Day => fixed(86_400),
            Window::Month => {
                let (y, m, _) = civil_from_days(secs.div_euclid(86_400));
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                Period {
                    window: self,
                    index: y * 12 + (m - 1),
                    ends: (days_from_civil(ny, nm, 1) * 86_400) as u64,
                }
            }
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A reservation that fit: settle it with what the call really cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a reservation is settled to what the call cost"]
pub struct Held {
    /// The window it was taken in.
    pub period: Period,
    /// What was reserved, nano-dollars.
    pub amount: i64,
    /// Taken from a shared ledger's local fall-back (its store did not answer): settled
    /// there too.
    pub local: bool,
}

/// A reservation that did not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// The window that is full.
    pub period: Period,
    /// What it holds already (spent and reserved), nano-dollars.
    pub spent: i64,
}

/// A boxed future of a ledger.
pub type LedgerFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where spend is kept: one process's ([`MemoryLedger`]) or a fleet's.
pub trait Ledger: Send + Sync + 'static {
    /// Reserves `amount` for `key` in the `window` holding `now` (Unix seconds), when what it
    /// holds plus `amount` is at most `limit`.
    fn reserve(
        &self,
        key: &str,
        window: Window,
        amount: i64,
        limit: i64,
        now: u64,
    ) -> LedgerFuture<'_, Result<Held, Refused>>;

    /// Adds `delta` (what the call cost less what it reserved: negative gives back) to the
    /// window `held` was taken in. The future owns what it needs (it may be run on a task of
    /// its own); a ledger that can settle at once does so before returning it.
    fn settle(&self, key: &str, held: Held, delta: i64) -> LedgerFuture<'static, ()>;

    /// What `key` holds in the `window` holding `now`, nano-dollars.
    fn spent(&self, key: &str, window: Window, now: u64) -> LedgerFuture<'_, i64>;
}

/// A key's spend in one window: the key, the window kind and its index.
type Slot = (Arc<str>, Window, i64);

/// One process's ledger. Windows that ended are forgotten as new ones are written.
#[derive(Debug, Default, Clone)]
pub struct MemoryLedger {
    spent: Arc<Mutex<HashMap<Slot, i64>>>,
}

impl MemoryLedger {
    /// Reserves synchronously (what [`Ledger::reserve`] does).
    ///
    /// # Errors
    ///
    /// [`Refused`] when `amount` does not fit under `limit`.
    pub fn reserve_now(
        &self,
        key: &str,
        window: Window,
        amount: i64,
        limit: i64,
        now: u64,
    ) -> Result<Held, Refused> {
        let period = window.at(now);
        let mut map = lock(&self.spent);
        // Forget ended windows of this kind (a map that only grows would be a leak).
        if map.len() > 1024 {
            map.retain(|(_, w, i), _| *w != window || *i >= period.index);
        }
        let slot = map
            .entry((Arc::from(key), window, period.index))
            .or_default();
        if slot.saturating_add(amount) > limit {
            return Err(Refused {
                period,
                spent: *slot,
            });
        }
        *slot = slot.saturating_add(amount);
        Ok(Held {
            period,
            amount,
            local: false,
        })
    }

    /// Settles synchronously (what [`Ledger::settle`] does).
    pub fn settle_now(&self, key: &str, held: Held, delta: i64) {
        let mut map = lock(&self.spent);
        let slot = map
            .entry((Arc::from(key), held.period.window, held.period.index))
            .or_default();
        *slot = slot.saturating_add(delta).max(0);
    }

    /// What `key` holds now (what [`Ledger::spent`] says).
    pub fn spent_now(&self, key: &str, window: Window, now: u64) -> i64 {
        let period = window.at(now);
        lock(&self.spent)
            .get(&(Arc::from(key), window, period.index))
            .copied()
            .unwrap_or(0)
    }
}

impl Ledger for MemoryLedger {
    fn reserve(
        &self,
        key: &str,
        window: Window,
        amount: i64,
        limit: i64,
        now: u64,
    ) -> LedgerFuture<'_, Result<Held, Refused>> {
        let r = self.reserve_now(key, window, amount, limit, now);
        Box::pin(std::future::ready(r))
    }

    fn settle(&self, key: &str, held: Held, delta: i64) -> LedgerFuture<'static, ()> {
        self.settle_now(key, held, delta);
        Box::pin(std::future::ready(()))
    }

    fn spent(&self, key: &str, window: Window, now: u64) -> LedgerFuture<'_, i64> {
        Box::pin(std::future::ready(self.spent_now(key, window, now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_dates_round_trip() {
        for z in [-800_000, -1, 0, 1, 59, 365, 11_016, 20_454, 2_932_896] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z, "{z}: {y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        // A leap day.
        assert_eq!(civil_from_days(days_from_civil(2028, 2, 29)), (2028, 2, 29));
    }

    #[test]
    fn windows_start_on_the_calendar() {
        let jan1 = 1_767_225_600; // 2026-01-01T00:00:00Z
        assert_eq!(Window::Minute.at(jan1 + 59).ends, jan1 + 60);
        assert_eq!(Window::Hour.at(jan1 + 3_599).ends, jan1 + 3_600);
        assert_eq!(Window::Day.at(jan1).ends, jan1 + 86_400);
        assert_eq!(Window::Month.at(jan1).ends, jan1 + 31 * 86_400);
        assert_eq!(
            Window::Month.at(jan1 - 1).ends,
            jan1,
            "December ends at January"
        );
        assert_eq!(Window::Month.at(jan1).index, 2026 * 12);
        assert_ne!(Window::Day.at(jan1 - 1).index, Window::Day.at(jan1).index);
    }

    #[test]
    fn parse_names_what_it_takes() {
        assert_eq!(Window::parse("per_day").ok(), Some(Window::Day));
        assert_eq!(Window::parse("month").ok(), Some(Window::Month));
        let e = Window::parse("fortnight").unwrap_err().to_string();
        assert!(e.contains("fortnight") && e.contains("month"), "{e}");
    }

    #[test]
    fn a_settle_gives_back_and_never_goes_below_zero() {
        let l = MemoryLedger::default();
        let now = 1_767_225_600;
        let held = l.reserve_now("t", Window::Day, 100, 100, now).unwrap();
        assert_eq!(l.spent_now("t", Window::Day, now), 100);
        assert!(l.reserve_now("t", Window::Day, 1, 100, now).is_err());
        assert_eq!(l.spent_now("other", Window::Day, now), 0, "keys apart");
        l.settle_now("t", held, -60);
        assert_eq!(l.spent_now("t", Window::Day, now), 40);
        l.settle_now("t", held, -1_000);
        assert_eq!(l.spent_now("t", Window::Day, now), 0);
        // Over the reservation: the window goes past the limit (the call ran), and refuses.
        let held = l.reserve_now("t", Window::Day, 50, 100, now).unwrap();
        l.settle_now("t", held, 70);
        assert_eq!(l.spent_now("t", Window::Day, now), 120);
        let refused = l.reserve_now("t", Window::Day, 1, 100, now).unwrap_err();
        assert_eq!(refused.spent, 120);
        assert_eq!(refused.period.ends, now + 86_400);
    }

    #[test]
    fn dollars_are_nanos() {
        assert_eq!(usd_to_nanos(1.5), 1_500_000_000);
        assert_eq!(usd_to_nanos(-1.0), 0);
        assert_eq!(usd_to_nanos(f64::NAN), 0);
        assert_eq!(nanos_to_usd(2_500_000_000), 2.5);
    }
}
