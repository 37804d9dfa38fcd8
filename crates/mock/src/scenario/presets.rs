//! The built-in presets (`healthy`, `fat_tail`, `outage`, ...), by name.

use super::*;

impl Scenario {
    /// A built-in preset by name: `healthy`, `fat_tail`, `outage`, `rate_limited`, `chaos`.
    pub fn preset(name: &str) -> Option<Scenario> {
        Some(match name {
            "healthy" => Scenario::healthy(),
            "fat_tail" => Scenario::fat_tail(),
            "outage" => Scenario::outage(),
            "rate_limited" => Scenario::rate_limited(),
            "chaos" => Scenario::chaos(),
            "all_down" => Scenario::all_down(),
            "dead_throttled" => Scenario::dead_throttled(),
            "hanging" => Scenario::hanging(),
            "priced" => Scenario::priced(),
            _ => return None,
        })
    }

    /// The names of the presets.
    pub const PRESETS: [&'static str; 9] = [
        "healthy",
        "fat_tail",
        "outage",
        "rate_limited",
        "chaos",
        "all_down",
        "dead_throttled",
        "hanging",
        "priced",
    ];

    fn base(providers: Vec<ProviderSpec>) -> Scenario {
        Scenario {
            seed: 0,
            time_scale: 1.0,
            models: default_models(),
            providers,
            keepalive_ms: 0.0,
            error_after_ms: 50.0,
            crlf: false,
            split_writes: false,
            coalesce_writes: true,
            default_tokens: default_tokens(),
            max_tokens: max_tokens_cap(),
            require_auth: true,
            strict_openai: false,
            key_statuses: std::collections::BTreeMap::new(),
            moderation_flag: None,
            affordable_tokens: None,
            report_cost: true,
        }
    }

    fn provider(name: &str, weight: f64, ttft: Dist) -> ProviderSpec {
        ProviderSpec {
            name: name.into(),
            slug: name.to_ascii_lowercase(),
            weight,
            ttft,
            gap: Dist::Uniform {
                min_ms: 10.0,
                max_ms: 30.0,
            },
            faults: Faults::default(),
            refuses_prefill: false,
            prefill_from_scratch: false,
            published_ttft: None,
            price: None,
        }
    }

    /// Three quick providers: TTFT lognormal p50 200 ms, p99 800 ms; errors (in the presets
    /// built on it) come back after 50 ms.
    pub fn healthy() -> Scenario {
        let ttft = Dist::Lognormal {
            p50_ms: 200.0,
            p99_ms: 800.0,
            cap_ms: 5_000.0,
        };
        Scenario::base(vec![
            Scenario::provider("Alpha", 1.0, ttft.clone()),
            Scenario::provider("Beta", 1.0, ttft.clone()),
            Scenario::provider("Gamma", 1.0, ttft),
        ])
    }

    /// OpenRouter's jitter: three providers with TTFT p50 1.1 s / p99 5 s and one in ten
    /// requests to a slow provider (p50 8 s / p99 45 s), so the mixture has p50 ≈ 1.2 s,
    /// p95 ≈ 8 s, p99 ≈ 20 s. Keep-alive comments every 2 s while waiting.
    pub fn fat_tail() -> Scenario {
        let fast = Dist::Lognormal {
            p50_ms: 1_100.0,
            p99_ms: 5_000.0,
            cap_ms: 90_000.0,
        };
        let slow = Dist::Lognormal {
            p50_ms: 8_000.0,
            p99_ms: 45_000.0,
            cap_ms: 90_000.0,
        };
        let mut s = Scenario::base(vec![
            Scenario::provider("Alpha", 0.3, fast.clone()),
            Scenario::provider("Beta", 0.3, fast.clone()),
            Scenario::provider("Gamma", 0.3, fast),
            Scenario::provider("Sloth", 0.1, slow),
        ]);
        s.keepalive_ms = 2_000.0;
        s
    }

    /// Like `healthy`, plus two bad providers of four: `Down` answers every request with
    /// 502, `Stuck` sends its headers and then nothing, ever (no first token).
    pub fn outage() -> Scenario {
        let mut s = Scenario::healthy();
        s.providers[2].name = "Down".into();
        s.providers[2].slug = "down".into();
        s.providers[2].faults.status.push(StatusFault {
            code: 502,
            rate: 1.0,
            retry_after_s: None,
        });
        let mut stuck = s.providers[0].clone();
        stuck.name = "Stuck".into();
        stuck.slug = "stuck".into();
        stuck.faults.hang_after_headers = 1.0;
        s.providers.push(stuck);
        s
    }

    /// Like `healthy`, but every provider answers about half of all requests (each request
    /// independently) with 429 and `Retry-After: 1`, as OpenRouter's shared free and
    /// capacity-limited endpoints do.
    pub fn rate_limited() -> Scenario {
        let mut s = Scenario::healthy();
        for p in &mut s.providers {
            p.faults.status.push(StatusFault {
                code: 429,
                rate: 0.5,
                retry_after_s: Some(1),
            });
        }
        s
    }

    /// Every provider answers every request with 502: nothing can succeed, and the stack
    /// must say so fast instead of hammering the upstream.
    pub fn all_down() -> Scenario {
        let mut s = Scenario::healthy();
        for p in &mut s.providers {
            p.faults.status.push(StatusFault {
                code: 502,
                rate: 1.0,
                retry_after_s: None,
            });
        }
        s
    }

    /// A dead model whose last provider throttles: two providers answer every request with
    /// 502 and 503, the third with 429 and `Retry-After: 2`. Nothing can succeed; a stack
    /// must say so fast, and not turn each call into a retry storm.
    pub fn dead_throttled() -> Scenario {
        let mut s = Scenario::healthy();
        for (p, (code, after)) in
            s.providers
                .iter_mut()
                .zip([(502, None), (503, None), (429, Some(2))])
        {
            p.faults.status.push(StatusFault {
                code,
                rate: 1.0,
                retry_after_s: after,
            });
        }
        s
    }

    /// Like `healthy`, but one request in twenty gets its headers and then nothing: whole
    /// answers and streams alike must be cut and retried in seconds, not ride a 30 s timeout.
    pub fn hanging() -> Scenario {
        let mut s = Scenario::healthy();
        for p in &mut s.providers {
            p.faults.hang_after_headers = 0.05;
        }
        s
    }

    /// Speed at a price: `Swift` is the fastest and the dearest (TTFT p50 250 ms / p99
    /// 700 ms, 4× `Steady`'s price), `Steady` is mid-priced and meets a 1.5 s p95 (p50
    /// 600 ms / p99 1.4 s, so p95 ≈ 1.1 s), `Thrifty` is the cheapest and misses it (p50
    /// 1.5 s / p99 6 s, p95 ≈ 4 s; a third of `Steady`'s price). What a cost-aware router
    /// must find: every call to `Steady`, none to `Swift`.
    pub fn priced() -> Scenario {
        let lognormal = |p50_ms: f64, p99_ms: f64| Dist::Lognormal {
            p50_ms,
            p99_ms,
            cap_ms: 60_000.0,
        };
        let priced = |mut p: ProviderSpec, prompt: f64, completion: f64| {
            p.price = Some(super::PriceSpec { prompt, completion });
            p
        };
        Scenario::base(vec![
            priced(
                Scenario::provider("Swift", 1.0, lognormal(250.0, 700.0)),
                0.000_004,
                0.000_012,
            ),
            priced(
                Scenario::provider("Steady", 1.0, lognormal(600.0, 1_400.0)),
                0.000_001,
                0.000_003,
            ),
            priced(
                Scenario::provider("Thrifty", 1.0, lognormal(1_500.0, 6_000.0)),
                0.000_000_3,
                0.000_001,
            ),
        ])
    }

    /// Every fault at a few percent, keep-alives, split writes and CRLF.
    pub fn chaos() -> Scenario {
        let mut s = Scenario::healthy();
        s.keepalive_ms = 50.0;
        s.crlf = true;
        s.split_writes = true;
        for p in &mut s.providers {
            p.faults = Faults {
                status: [429, 500, 502, 503, 524, 529]
                    .into_iter()
                    .map(|code| StatusFault {
                        code,
                        rate: 0.01,
                        retry_after_s: (code == 429 || code == 503).then_some(1),
                    })
                    .collect(),
                reset_before_headers: 0.02,
                hang_after_headers: 0.01,
                midstream_error: 0.02,
                midstream_error_eof: 0.02,
                truncate: 0.02,
                hang_midstream: 0.01,
                error_200: 0.02,
            };
        }
        s
    }
}
