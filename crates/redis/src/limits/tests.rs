//! The local side of a shared bucket, decided without Redis: leases, cached refusals, holds,
//! the fallback share and its debt, the sweep. (Admission through a real Redis is in
//! `tests/limits.rs` and `tests/chaos.rs`.)

use super::*;

fn rate(amount: u64, period: Duration, burst: u64) -> Rate {
    Rate {
        amount,
        period,
        burst,
    }
}

fn key(k: &str) -> BucketKey {
    BucketKey {
        limit: LimitId::Requests(0),
        name: Arc::from("requests:test"),
        key: Arc::from(k),
    }
}

/// A store's shared state over a Redis nothing answers at; `ops` open (kept) or closed.
fn shared(mode: LimitMode, replicas: u64, max_keys: usize) -> (Arc<Shared>, mpsc::Receiver<Op>) {
    let redis = Redis::builder("redis://127.0.0.1:1")
        .build()
        .expect("a client (it connects lazily)");
    let (tx, rx) = mpsc::channel(16);
    let s = Arc::new(Shared {
        redis,
        mode,
        replicas,
        lease_for: Duration::from_millis(250),
        max_keys,
        local: MemoryStore::new(max_keys),
        keys: Mutex::new(HashMap::new()),
        scripts: Scripts::new(),
        ops: tx,
    });
    (s, rx)
}

fn ready(t: Take) -> Result<(), Duration> {
    match t {
        Take::Ready(r) => r,
        Take::Pending(_) => panic!("decided locally, without asking"),
    }
}

#[test]
fn a_key_is_idle_only_when_it_holds_nothing_and_nothing_is_pending() {
    let now = Instant::now();
    let later = now + Duration::from_secs(1);
    assert!(Local::default().idle(now));
    let cases: [(Local, bool); 7] = [
        (
            Local {
                lease: 1,
                ..Local::default()
            },
            false,
        ),
        (
            Local {
                debt: 1,
                ..Local::default()
            },
            false,
        ),
        (
            Local {
                refused: Some((later, 1)),
                ..Local::default()
            },
            false,
        ),
        (
            Local {
                refused: Some((now, 1)),
                ..Local::default()
            },
            true,
        ),
        (
            Local {
                hold: Some(later),
                ..Local::default()
            },
            false,
        ),
        (
            Local {
                hold: Some(now),
                ..Local::default()
            },
            true,
        ),
        (
            Local {
                refused: Some((now, 1)),
                hold: Some(now),
                leased_at: Some(now),
                spent: 3,
                ..Local::default()
            },
            true,
        ),
    ];
    for (i, (l, idle)) in cases.iter().enumerate() {
        assert_eq!(l.idle(now), *idle, "case {i}: {l:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_fallback_share_is_the_limit_divided_by_the_replicas() {
    let (s, _ops) = shared(LimitMode::Exact, 4, 100);
    let r = s.share(&rate(40, Duration::from_secs(60), 20));
    assert_eq!(
        (r.amount, r.period, r.burst),
        (10, Duration::from_secs(60), 5)
    );
    let r = s.share(&rate(3, Duration::from_secs(60), 2));
    assert_eq!((r.amount, r.burst), (1, 1), "never below one");
}

#[tokio::test(start_paused = true)]
async fn a_lease_is_about_the_local_rate_over_a_lease_period_within_its_caps() {
    let (s, _ops) = shared(LimitMode::Lease, 1, 100);
    let now = Instant::now();
    // 1,000 per second: at most 250 in a lease period of 250 ms; burst 1,600: at most 100.
    let r = rate(1000, Duration::from_secs(1), 1600);
    let mut l = Local::default();
    assert_eq!(
        s.lease_size(&mut l, 2, &r, now),
        1,
        "no rate known yet: one ahead"
    );
    assert_eq!(l.spent, 2, "what this take spends starts the next count");
    // 20 spent in the 100 ms since the last lease: 50 in a lease period.
    let mut l = Local {
        leased_at: Some(now - Duration::from_millis(100)),
        spent: 20,
        ..Local::default()
    };
    assert_eq!(s.lease_size(&mut l, 1, &r, now), 50);
    // 80 in 100 ms would be 200: capped at a sixteenth of the burst.
    l.leased_at = Some(now - Duration::from_millis(100));
    l.spent = 80;
    assert_eq!(s.lease_size(&mut l, 1, &r, now), 100);
    // A limit of 100 per half second allows 50 in a lease period: capped there.
    let slow = rate(100, Duration::from_millis(500), 1600);
    l.leased_at = Some(now - Duration::from_millis(100));
    l.spent = 80;
    assert_eq!(s.lease_size(&mut l, 1, &slow, now), 50);
    // A burst under 16, or under one unit per lease period: nothing ahead.
    assert_eq!(
        s.lease_size(&mut l, 1, &rate(1000, Duration::from_secs(1), 15), now),
        0
    );
    assert_eq!(
        s.lease_size(&mut l, 1, &rate(3, Duration::from_secs(1), 1600), now),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn a_take_decides_locally_from_holds_leases_refusals_and_a_full_table() {
    let (s, _ops) = shared(LimitMode::Lease, 1, 2);
    let r = rate(100, Duration::from_secs(1), 100);
    let now = Instant::now();
    let a = key("a");
    // Held: refused for what is left of the hold; a hold ending now no longer holds.
    lock(&s.keys).entry(a.clone()).or_default().hold = Some(now + Duration::from_secs(5));
    assert_eq!(ready(s.take(&a, 1, &r, now)), Err(Duration::from_secs(5)));
    // A lease pays for the take: units and what was spent move by the cost.
    {
        let mut keys = lock(&s.keys);
        let l = keys.get_mut(&a).unwrap();
        l.hold = Some(now);
        l.lease = 5;
        l.spent = 2;
    }
    assert_eq!(ready(s.take(&a, 3, &r, now)), Ok(()));
    {
        let keys = lock(&s.keys);
        let l = &keys[&a];
        assert_eq!((l.lease, l.spent), (2, 5));
    }
    // A cached refusal holds for the cost it was refused at or more, until it ends.
    {
        let mut keys = lock(&s.keys);
        let l = keys.get_mut(&a).unwrap();
        l.lease = 0;
        l.refused = Some((now + Duration::from_secs(2), 3));
    }
    assert_eq!(ready(s.take(&a, 3, &r, now)), Err(Duration::from_secs(2)));
    assert_eq!(ready(s.take(&a, 4, &r, now)), Err(Duration::from_secs(2)));
    // A smaller cost than the one refused may fit: it is asked (not decided here).
    assert!(matches!(s.take(&a, 2, &r, now), Take::Pending(_)));
    lock(&s.keys).get_mut(&a).unwrap().flight = None;
    // A full table: a new key is decided by the fallback (this replica's share), a known
    // key is not.
    lock(&s.keys).entry(key("b")).or_default();
    let c = key("c");
    for _ in 0..100 {
        assert_eq!(ready(s.take(&c, 1, &r, now)), Ok(()));
    }
    assert!(
        ready(s.take(&c, 1, &r, now)).is_err(),
        "the share's burst spent"
    );
    assert!(!lock(&s.keys).contains_key(&c), "no entry past the cap");
    assert_eq!(
        RedisStore { shared: s.clone() }.len(),
        2,
        "keys held locally"
    );
    lock(&s.keys).get_mut(&a).unwrap().refused = Some((now, 3));
    assert!(
        matches!(s.take(&a, 3, &r, now), Take::Pending(_)),
        "a known key is asked, and a refusal ending now no longer holds"
    );
}

#[tokio::test(start_paused = true)]
async fn what_the_fallback_admits_is_owed_unless_the_store_may_have_taken_it() {
    let (s, _ops) = shared(LimitMode::Exact, 2, 2);
    let r = rate(10, Duration::from_secs(60), 4);
    let a = key("a");
    assert_eq!(s.fallback(&a, 1, &r, true), Ok(()));
    assert_eq!(
        s.fallback(&a, 1, &r, false),
        Ok(()),
        "a late answer: not owed"
    );
    assert_eq!(lock(&s.keys)[&a].debt, 1);
    assert_eq!(lock(&s.keys)[&a].debt_rate.map(|r| r.amount), Some(10));
    // The share's burst (2) is spent: a refusal owes nothing.
    assert!(s.fallback(&a, 1, &r, true).is_err());
    assert_eq!(lock(&s.keys)[&a].debt, 1);
    // A full table takes no new debtor, but a known one still owes.
    let b = key("b");
    assert_eq!(s.fallback(&b, 1, &r, true), Ok(()));
    let c = key("c");
    assert_eq!(s.fallback(&c, 1, &r, true), Ok(()));
    assert!(!lock(&s.keys).contains_key(&c));
    assert_eq!(lock(&s.keys)[&b].debt, 1);
    // The share refills at the share's rate: 10 a minute for 2 replicas is 5 a minute.
    tokio::time::advance(Duration::from_secs(12)).await;
    assert_eq!(s.fallback(&a, 1, &r, true), Ok(()), "one unit per 12 s");
    assert!(s.fallback(&a, 1, &r, true).is_err());
}

#[tokio::test(start_paused = true)]
async fn ops_the_store_cannot_run_are_applied_to_the_local_bucket() {
    let (s, _ops) = shared(LimitMode::Exact, 1, 100);
    let r = rate(10, Duration::from_secs(60), 2);
    let a = key("a");
    let now = Instant::now();
    s.apply_locally(&Op::Hold(a.clone(), Duration::from_secs(3)));
    assert_eq!(
        s.local.take_now(&a, 1, &r, now),
        Err(Duration::from_secs(3)),
        "held locally for as long as asked"
    );
    let b = key("b");
    assert_eq!(s.local.take_now(&b, 2, &r, now), Ok(()));
    assert!(s.local.take_now(&b, 1, &r, now).is_err());
    // A settle of +1 gives a unit back (a returned lease, a refund), -1 charges one.
    s.apply_locally(&Op::Settle(b.clone(), 1, r));
    assert_eq!(
        s.local.take_now(&b, 1, &r, now),
        Ok(()),
        "a refund, locally"
    );
    s.apply_locally(&Op::Settle(b.clone(), -1, r));
    assert_eq!(
        s.local.take_now(&b, 1, &r, now),
        Err(Duration::from_secs(12)),
        "a charge, locally: two intervals of 6 s to wait"
    );
    // A closed queue: the op is applied at once.
    drop(_ops);
    let c = key("c");
    s.send(Op::Hold(c.clone(), Duration::from_secs(1)));
    assert!(s.local.take_now(&c, 1, &r, now).is_err());
}

#[tokio::test(start_paused = true)]
async fn the_sweep_returns_expired_leases_charges_debts_and_forgets_idle_keys() {
    let (s, _ops) = shared(LimitMode::Lease, 2, 8);
    let r = rate(100, Duration::from_secs(1), 40);
    let now = Instant::now();
    {
        let mut keys = lock(&s.keys);
        // Leased exactly one lease period ago: expired.
        keys.insert(
            key("expired"),
            Local {
                lease: 7,
                leased_at: Some(now - Duration::from_millis(250)),
                rate: Some(r),
                ..Local::default()
            },
        );
        // Leased a moment less: kept.
        keys.insert(
            key("fresh"),
            Local {
                lease: 5,
                leased_at: Some(now - Duration::from_millis(249)),
                rate: Some(r),
                ..Local::default()
            },
        );
        // Owes more than its share of a burst (20 of 40 for 2 replicas).
        keys.insert(
            key("debtor"),
            Local {
                debt: 30,
                debt_rate: Some(r),
                ..Local::default()
            },
        );
        keys.insert(key("idle"), Local::default());
    }
    let settled = |ops: &[Op]| -> Vec<(String, i64)> {
        let mut v: Vec<(String, i64)> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Settle(k, n, _) => Some((k.key.to_string(), *n)),
                Op::Hold(..) => None,
            })
            .collect();
        v.sort();
        v
    };
    // The store is down: debts wait, leases go back; four keys are not over half the table
    // (8): none forgotten.
    s.redis.inner.health.failed(&"test");
    let ops = s.sweep(now);
    assert_eq!(settled(&ops), [("expired".to_owned(), 7)]);
    {
        let keys = lock(&s.keys);
        assert_eq!(keys.len(), 4);
        assert_eq!(
            (keys[&key("expired")].lease, keys[&key("fresh")].lease),
            (0, 5)
        );
        assert_eq!(keys[&key("debtor")].debt, 30);
    }
    // Back up: the debt is charged (at most the share of one burst), and once over half the
    // table the keys that hold nothing are forgotten.
    s.redis.inner.health.ok();
    lock(&s.keys).insert(key("idle2"), Local::default());
    let ops = s.sweep(now);
    assert_eq!(settled(&ops), [("debtor".to_owned(), -20)]);
    let keys = lock(&s.keys);
    let mut left: Vec<&str> = keys.keys().map(|k| &*k.key).collect();
    left.sort_unstable();
    assert_eq!(
        left,
        ["fresh"],
        "idle keys (the debtor, paid up, too) forgotten, the lease kept"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refusal_is_kept_until_it_fits_and_with_leases_until_a_lease_is_back() {
    let r = rate(10, Duration::from_secs(1), 10);
    let (exact, _a) = shared(LimitMode::Exact, 1, 100);
    let (lease, _b) = shared(LimitMode::Lease, 1, 100);
    let second = Duration::from_secs(1);
    assert_eq!(exact.refused_for(second, &r, 30, 10), second);
    // 20 units beyond the one asked for, at 100 ms each.
    assert_eq!(
        lease.refused_for(second, &r, 30, 10),
        Duration::from_secs(2)
    );
    assert_eq!(
        lease.refused_for(Duration::from_secs(3), &r, 30, 10),
        Duration::from_secs(3)
    );
}

#[tokio::test(start_paused = true)]
async fn a_paid_debt_costs_no_more_round_trips() {
    let (s, _ops) = shared(LimitMode::Exact, 1, 100);
    let r = rate(100, Duration::from_secs(1), 40);
    let now = Instant::now();
    lock(&s.keys).insert(
        key("debtor"),
        Local {
            debt: 3,
            debt_rate: Some(r),
            // Still refused for a while: kept in the table.
            refused: Some((now + Duration::from_secs(9), 1)),
            ..Local::default()
        },
    );
    s.redis.inner.health.ok();
    assert_eq!(s.sweep(now).len(), 1, "the debt charged");
    assert!(
        s.sweep(now).is_empty(),
        "then nothing: no settle of zero units"
    );
}
