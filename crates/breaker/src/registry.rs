//! The shared registry of breakers, keyed by (model, provider slug).

use llm_layers_core::hash::HashMap;
use llm_layers_core::sync::lock;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llm_layers_core::{ChatBody, ChatRequest, LlmError, slug_matches};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

mod blocked;
mod entry;
mod room;
mod shared;
pub(crate) use blocked::{Blocked, blocked_error};
use entry::{Entry, HOLD_PROBES, ModelEntry, OK_SHARE_WEIGHT, has};
use room::make_room;
pub use shared::Change;

/// The state of one breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Traffic flows; outcomes are counted.
    Closed,
    /// No traffic until `until`.
    Open {
        /// When it half-opens.
        until: Instant,
    },
    /// A bounded number of probe requests may go; one good result closes it.
    HalfOpen,
}

impl State {
    fn gauge(self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::HalfOpen => 1.0,
            State::Open { .. } => 2.0,
        }
    }
}

/// One row of [`Registry::snapshot`](crate::BreakerLayer::snapshot).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerInfo {
    /// The model.
    pub model: String,
    /// The provider slug, or `None` for the model as a whole.
    pub provider: Option<String>,
    /// Its state.
    pub state: State,
    /// How many times it tripped in a row (the backoff grows with it).
    pub trips: u32,
    /// Failures among the recent calls counted.
    pub recent_failures: usize,
    /// Recent calls counted.
    pub recent_calls: usize,
    /// Held (throttled: a 429 asked us to wait) until then; a hold is not a failure.
    pub held_until: Option<Instant>,
}

/// Validated configuration of the breakers.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) window: usize,
    pub(crate) min_calls: usize,
    pub(crate) failure_ratio: f64,
    pub(crate) consecutive: u32,
    pub(crate) open_base: Duration,
    pub(crate) open_max: Duration,
    pub(crate) jitter: f64,
    pub(crate) probes: u32,
    pub(crate) max_entries: usize,
    pub(crate) idle_ttl: Duration,
    pub(crate) default_hold: Duration,
    pub(crate) max_hold: Duration,
}

/// What a hold leaves a throttled request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hold {
    /// Another provider the request may use is free now.
    pub(crate) elsewhere: bool,
    /// This provider's holds are worth waiting for (its requests mostly succeed).
    pub(crate) worth_waiting: bool,
}

/// A probe slot: the provider (`None`: the model as a whole) and the half-open period.
pub(crate) type Probe = (Option<Arc<str>>, u32);

/// What `admit` decided for one request.
#[derive(Debug, Default)]
pub(crate) struct Admission {
    /// Slugs this request must not go to, and why.
    pub(crate) ignore: Vec<(String, Blocked)>,
    /// Half-open breakers this request probes, with their period (released when it ends).
    pub(crate) probes: Vec<Probe>,
    /// Held providers this request may go to anyway (a bounded trickle of probes during a
    /// hold, for a provider whose holds are followed by successes), released when it ends.
    pub(crate) hold_probes: Vec<Arc<str>>,
}

pub(crate) struct Registry {
    cfg: Config,
    map: Mutex<(HashMap<Arc<str>, ModelEntry>, usize)>,
    rng: Mutex<SmallRng>,
    /// Whether a sharer reads our changes ([`Registry::drain_changes`]).
    sharing: AtomicBool,
    outbox: Mutex<Vec<Change>>,
}

impl Registry {
    pub(crate) fn new(cfg: Config, seed: u64) -> Registry {
        Registry {
            cfg,
            map: Mutex::new((HashMap::default(), 0)),
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
            sharing: AtomicBool::new(false),
            outbox: Mutex::new(Vec::new()),
        }
    }

    /// Decides a request's fate: which open providers it must avoid, which half-open ones
    /// it probes, or a fast `CircuitOpen` when nothing is left.
    pub(crate) fn admit(&self, req: &ChatRequest, now: Instant) -> Result<Admission, LlmError> {
        let model = req.model();
        let mut guard = lock(&self.map);
        let me = match guard.0.get_mut(model) {
            Some(me) => me,
            None => guard.0.entry(Arc::from(model)).or_default(),
        };
        let mut adm = Admission::default();
        if let Some(m) = me.model.as_mut() {
            m.refresh(now);
            match m.state {
                // Opened by another replica and not called here since: its evidence may be
                // its own trouble (its egress, its DNS), so it never fails a call fast here,
                // as for a provider. Our own call decides ([`Registry::record`]).
                State::Open { .. } if m.remote => {}
                State::Open { until } => {
                    return Err(LlmError::circuit_open(
                        vec![model.to_owned()],
                        Some(until.saturating_duration_since(now)),
                    )
                    .with_message(format!("the circuit for model {model} is open")));
                }
                State::HalfOpen if m.probes_in_flight < self.cfg.probes => {
                    m.probes_in_flight += 1;
                    adm.probes.push((None, m.period));
                }
                State::HalfOpen => {
                    return Err(LlmError::circuit_open(vec![model.to_owned()], None)
                        .with_message(format!("model {model} is being probed")));
                }
                State::Closed => {}
            }
        }
        let prefs = req.body().provider.as_ref();
        let mut allowed_known = 0usize;
        let mut blocked: Vec<(String, Blocked)> = Vec::new();
        let mut suspected: Vec<Arc<str>> = Vec::new();
        for (slug, e) in me.providers.iter_mut() {
            if prefs.is_some_and(|p| !p.allows(slug)) {
                continue;
            }
            allowed_known += 1;
            e.refresh(now);
            if let Some(h) = e.held(now) {
                // Independent throttling (its recent requests mostly succeed): a few calls go
                // anyway, rather than every caller waiting out the hold.
                if e.worth_probing()
                    && e.hold_probes < HOLD_PROBES
                    && matches!(e.state, State::Closed)
                {
                    e.hold_probes += 1;
                    adm.hold_probes.push(slug.clone());
                    continue;
                }
                blocked.push((slug.to_string(), Blocked::Held(h, e.worth_probing())));
                continue;
            }
            match e.state {
                State::Closed => {}
                State::Open { until } => {
                    if e.remote {
                        suspected.push(slug.clone());
                    }
                    blocked.push((slug.to_string(), Blocked::Open(Some(until))))
                }
                State::HalfOpen if e.probes_in_flight < self.cfg.probes => {
                    e.probes_in_flight += 1;
                    adm.probes.push((Some(slug.clone()), e.period));
                }
                State::HalfOpen => {
                    if e.suspected {
                        suspected.push(slug.clone());
                    }
                    blocked.push((slug.to_string(), Blocked::Open(None)));
                }
            }
        }
        // The caller's `only` names providers we have not seen: nothing to say about them.
        let only_unknown = prefs.and_then(|p| p.only.as_ref()).is_some_and(|only| {
            only.iter()
                .any(|o| !me.providers.keys().any(|k| slug_matches(o, k)))
        });
        if allowed_known > 0 && blocked.len() == allowed_known && !suspected.is_empty() {
            // Only published doubts or other replicas' trips block the rest: no evidence of
            // ours, and the upstream may serve the model elsewhere. Let those through rather
            // than fail.
            blocked.retain(|(s, _)| !suspected.iter().any(|x| **x == **s));
        }
        if allowed_known > 0 && blocked.len() == allowed_known && !only_unknown {
            // Never ask the upstream for nothing: an ignore list of every provider we know
            // would come back as a 404 "no endpoints". Fail fast instead, saying when.
            drop(guard);
            self.release(model, &adm.probes);
            self.release_hold_probes(model, &adm.hold_probes);
            blocked.sort_by(|a, b| a.0.cmp(&b.0));
            return Err(blocked_error(model, &blocked, now));
        }
        // Sorted: the request body (and what an upstream makes of it) must not depend on
        // a hash map's order.
        blocked.sort_by(|a, b| a.0.cmp(&b.0));
        adm.ignore = blocked;
        me.in_flight += 1;
        Ok(adm)
    }

    /// Holds `(model, provider)` until `until` (a throttle): kept out of requests, never
    /// counted as a failure. Returns whether another provider the request may use is known
    /// and neither held nor open, so a retry can go there at once, and whether this
    /// provider's holds are still worth waiting for.
    pub(crate) fn hold(
        &self,
        body: &ChatBody,
        provider: &str,
        until: Instant,
        now: Instant,
    ) -> Hold {
        let model = body.model.as_deref().unwrap_or("");
        let mut guard = lock(&self.map);
        let (map, count) = &mut *guard;
        if !has(map, model, Some(provider)) {
            if *count >= self.cfg.max_entries && !make_room(map, count, now, &self.cfg) {
                metrics::counter!("llm_breaker_dropped_outcomes_total").increment(1);
                return Hold {
                    elsewhere: false,
                    worth_waiting: true,
                };
            }
            *count += 1;
        }
        let me = map.entry(Arc::from(model)).or_default();
        let e = me
            .providers
            .entry(Arc::from(provider))
            .or_insert_with(|| Entry::new(now));
        e.last_used = now;
        e.ok_share *= 1.0 - OK_SHARE_WEIGHT;
        let worth_waiting = e.worth_probing();
        let mut until = until;
        if e.held(now).is_none() {
            // A new hold. One that follows a hold with no success since is twice as long
            // as the one before it asked (capped): a provider that throttles whatever we do
            // is asked once per hold.
            if e.streak > 0 {
                let asked = until.saturating_duration_since(now);
                let longer = asked
                    .saturating_mul(1u32 << e.streak.min(6))
                    .min(self.cfg.max_hold)
                    .max(asked);
                until = now + longer;
            }
            e.streak = e.streak.saturating_add(1);
        }
        e.held_until = Some(e.held_until.map_or(until, |h| h.max(until)));
        self.emit(|| Change::Held {
            model: Arc::from(model),
            provider: Arc::from(provider),
            held_for: until.saturating_duration_since(now),
        });
        let prefs = body.provider.as_ref();
        let elsewhere = me.providers.iter_mut().any(|(slug, e)| {
            &**slug != provider
                && prefs.is_none_or(|p| p.allows(slug))
                && e.held(now).is_none()
                && {
                    e.refresh(now);
                    !matches!(e.state, State::Open { .. })
                }
        });
        Hold {
            elsewhere,
            worth_waiting,
        }
    }

    /// How long a throttle holds: the `Retry-After` asked, or the default, capped.
    pub(crate) fn hold_for(&self, retry_after: Option<Duration>) -> Duration {
        retry_after
            .unwrap_or(self.cfg.default_hold)
            .min(self.cfg.max_hold)
    }

    /// A call admitted by `admit` resolved (committed, failed, or was dropped).
    pub(crate) fn resolved(&self, model: &str) {
        let mut guard = lock(&self.map);
        let Some(me) = guard.0.get_mut(model) else {
            return;
        };
        me.in_flight = me.in_flight.saturating_sub(1);
        if me.in_flight == 0 && me.model.is_none() && me.providers.is_empty() {
            guard.0.remove(model);
        }
    }

    /// Starts `(model, provider)` half-open (one probe at a time until a call succeeds)
    /// when its breaker has seen no call yet; returns whether it did.
    pub(crate) fn suspect(&self, model: &str, provider: &str, now: Instant) -> bool {
        let mut guard = lock(&self.map);
        let (map, count) = &mut *guard;
        if map
            .get(model)
            .and_then(|me| me.providers.get(provider))
            .is_some()
        {
            return false;
        }
        if !make_room(map, count, now, &self.cfg) {
            return false;
        }
        let me = map.entry(Arc::from(model)).or_default();
        let mut e = Entry::new(now);
        e.state = State::HalfOpen;
        e.period = 1;
        e.suspected = true;
        me.providers.insert(Arc::from(provider), e);
        *count += 1;
        metrics::gauge!(
            "llm_breaker_state",
            "gen_ai.request.model" => model.to_owned(),
            "openrouter.provider" => provider.to_owned(),
        )
        .set(State::HalfOpen.gauge());
        true
    }

    /// Releases the hold probes `admit` let through.
    pub(crate) fn release_hold_probes(&self, model: &str, slugs: &[Arc<str>]) {
        if slugs.is_empty() {
            return;
        }
        let mut guard = lock(&self.map);
        let Some(me) = guard.0.get_mut(model) else {
            return;
        };
        for s in slugs {
            if let Some(e) = me.providers.get_mut(&**s) {
                e.hold_probes = e.hold_probes.saturating_sub(1);
            }
        }
    }

    /// Releases probe slots taken by `admit`.
    pub(crate) fn release(&self, model: &str, probes: &[Probe]) {
        if probes.is_empty() {
            return;
        }
        let mut guard = lock(&self.map);
        let Some(me) = guard.0.get_mut(model) else {
            return;
        };
        for (p, period) in probes {
            let e = match p {
                None => me.model.as_mut(),
                Some(s) => me.providers.get_mut(&**s),
            };
            if let Some(e) = e.filter(|e| e.period == *period && e.state == State::HalfOpen) {
                e.probes_in_flight = e.probes_in_flight.saturating_sub(1);
            }
        }
    }

    /// Records one outcome for `(model, provider)` (`None`: the model as a whole). A success
    /// through any provider also counts for the model as a whole: it proves the model
    /// reachable, so unattributed failures (first-token timeouts of a hung provider, landing
    /// together) cannot trip the whole model while its other providers answer.
    pub(crate) fn record(&self, model: &str, provider: Option<&str>, failure: bool, now: Instant) {
        if provider.is_some() && !failure {
            self.record(model, None, false, now);
        }
        let mut guard = lock(&self.map);
        let (map, count) = &mut *guard;
        if !has(map, model, provider) {
            if *count >= self.cfg.max_entries && !make_room(map, count, now, &self.cfg) {
                metrics::counter!("llm_breaker_dropped_outcomes_total").increment(1);
                return;
            }
            *count += 1;
        }
        let me = map.entry(Arc::from(model)).or_default();
        // Unresolved calls count as not failed (yet): fast failures must not outrun slow
        // successes. Spread over the providers known, for a provider's ratio.
        let in_flight = me.in_flight;
        // Capped at one window: past that, the calls in flight would outweigh any record
        // and a provider failing at once could never trip under sustained load.
        let pending = match provider {
            None => in_flight,
            Some(_) => in_flight.div_ceil(me.providers.len().max(1)),
        }
        .min(self.cfg.window);
        let e = me.entry(provider, now);
        e.last_used = now;
        e.suspected = false;
        if provider.is_some() {
            let ok = if failure { 0.0 } else { 1.0 };
            e.ok_share = e.ok_share * (1.0 - OK_SHARE_WEIGHT) + OK_SHARE_WEIGHT * ok;
            if !failure {
                e.streak = 0;
                // A success while held: the throttling was one request's, not the
                // provider's (it serves): the hold is over.
                if e.held(now).is_some() && e.worth_probing() {
                    e.held_until = None;
                }
            }
        }
        let remote = std::mem::replace(&mut e.remote, false);
        e.refresh(now);
        let before = e.state;
        match e.state {
            // Another replica's trip that our own call just disproved: closed here.
            State::Open { .. } if remote && !failure => {
                e.state = State::Closed;
                e.trips = 0;
                e.recent.clear();
                e.failures = 0;
                e.consecutive = 0;
            }
            State::Open { .. } => return, // a late result from before the trip
            State::HalfOpen => {
                if failure {
                    let until = now + self.backoff(e.trips);
                    e.trips += 1;
                    e.state = State::Open { until };
                } else {
                    e.state = State::Closed;
                    e.trips = 0;
                    e.recent.clear();
                    e.failures = 0;
                    e.consecutive = 0;
                }
            }
            State::Closed => {
                e.recent.push_back(failure);
                e.failures += usize::from(failure);
                if e.recent.len() > self.cfg.window {
                    let old = e.recent.pop_front().unwrap_or(false);
                    e.failures -= usize::from(old);
                }
                e.consecutive = if failure { e.consecutive + 1 } else { 0 };
                // The model as a whole (failures no provider is named for: first-token
                // timeouts of a hung provider, resets) trips only when its window holds no
                // success at all: while any provider answers, blocking the whole model would
                // make callers worse off than no breaker.
                let by_ratio = e.recent.len() >= self.cfg.min_calls
                    && e.failures as f64
                        >= self.cfg.failure_ratio * (e.recent.len() + pending) as f64
                    && (provider.is_some() || e.failures == e.recent.len());
                // A run of failures means something for one provider's sequential calls. Under
                // concurrency, unrelated failures land together (fast errors before slow
                // successes, hung calls timing out at one instant), so the run rule applies
                // only when no other call is in flight, and never to the model as a whole.
                let by_run =
                    provider.is_some() && in_flight == 0 && e.consecutive >= self.cfg.consecutive;
                if failure && (by_run || by_ratio) {
                    let until = now + self.backoff(e.trips);
                    e.trips += 1;
                    e.state = State::Open { until };
                    e.recent.clear();
                    e.failures = 0;
                    e.consecutive = 0;
                }
            }
        }
        if e.state != before {
            let labels = [
                ("gen_ai.request.model", model.to_owned()),
                (
                    "openrouter.provider",
                    provider.unwrap_or("_model").to_owned(),
                ),
            ];
            metrics::gauge!("llm_breaker_state", &labels).set(e.state.gauge());
            if matches!(e.state, State::Open { .. }) {
                metrics::counter!("llm_breaker_trips_total", &labels).increment(1);
            }
            let (state, provider) = (e.state, provider.map(Arc::from));
            self.emit(|| match state {
                State::Open { until } => Change::Opened {
                    model: Arc::from(model),
                    provider,
                    open_for: until.saturating_duration_since(now),
                },
                _ => Change::Closed {
                    model: Arc::from(model),
                    provider,
                },
            });
        }
    }

    /// The open time after `trips` earlier trips in a row: doubling from the base, capped,
    /// with jitter.
    fn backoff(&self, trips: u32) -> Duration {
        let base = self.cfg.open_base.as_secs_f64() * 2f64.powi(trips.min(30) as i32);
        let capped = base.min(self.cfg.open_max.as_secs_f64());
        let j = self.cfg.jitter;
        let factor = if j > 0.0 {
            lock(&self.rng).random_range(1.0 - j..=1.0 + j)
        } else {
            1.0
        };
        Duration::from_secs_f64(capped * factor)
    }

    pub(crate) fn snapshot(&self, now: Instant) -> Vec<BreakerInfo> {
        let mut guard = lock(&self.map);
        let mut out = Vec::new();
        for (model, me) in guard.0.iter_mut() {
            let rows = me.model.iter_mut().map(|e| (None, e)).chain(
                me.providers
                    .iter_mut()
                    .map(|(p, e)| (Some(p.to_string()), e)),
            );
            for (provider, e) in rows {
                e.refresh(now);
                out.push(BreakerInfo {
                    model: model.to_string(),
                    provider,
                    state: e.state,
                    trips: e.trips,
                    recent_failures: e.failures,
                    recent_calls: e.recent.len(),
                    held_until: e.held(now),
                });
            }
        }
        out.sort_by(|a, b| (&a.model, &a.provider).cmp(&(&b.model, &b.provider)));
        out
    }

    pub(crate) fn entries(&self) -> usize {
        lock(&self.map).1
    }
}
