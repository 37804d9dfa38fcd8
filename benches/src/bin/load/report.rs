//! The load rows, run and printed as a table.

use super::*;

pub(crate) async fn load(o: &Opts) -> Result<(), String> {
    let (mock, mock_url) = match &o.mock_url {
        Some(url) => (None, url.clone()),
        None => {
            let (p, url) = Proc::spawn(&["--child-mock", "healthy"], &[], "ready ")?;
            (Some(p), url)
        }
    };
    let (gw, gw_addr) = gateway(&mock_url, &[])?;
    let (leaf_gw, leaf_addr) = gateway(&mock_url, &["--stack", "leaf"])?;
    let (proxy, proxy_url) = Proc::spawn(&["--child-proxy", &mock_url], &[], "ready ")?;
    let mut targets = vec![
        Target {
            name: "mock".into(),
            url: http_url("--mock-url", &format!("{mock_url}/chat/completions"))?,
            auth: Some(HeaderValue::from_static("Bearer sk-or-v1-load")),
            pid: None,
            headers: Vec::new(),
        },
        Target {
            name: "bare proxy".into(),
            url: http_url("bare proxy", &format!("{proxy_url}/v1/chat/completions"))?,
            auth: None,
            pid: Some(proxy.pid()),
            headers: Vec::new(),
        },
        Target {
            name: "leaf only".into(),
            url: http_url(
                "leaf only",
                &format!("http://{leaf_addr}/v1/chat/completions"),
            )?,
            auth: None,
            pid: Some(leaf_gw.pid()),
            headers: Vec::new(),
        },
        Target {
            name: "gateway".into(),
            url: http_url("gateway", &format!("http://{gw_addr}/v1/chat/completions"))?,
            auth: None,
            pid: Some(gw.pid()),
            headers: Vec::new(),
        },
    ];
    // The same request limit (twice the highest rate: it never refuses, every call takes a
    // decision) on the memory store and on Redis, leased and exact, for what sharing state
    // costs per call.
    let mut limited = Vec::new();
    if let Some(redis) = &o.redis_url {
        let per_minute = (o.rates.iter().copied().max().unwrap_or(1000) * 120).to_string();
        let limit = ["--requests-per-minute", per_minute.as_str()];
        for (name, extra) in [
            ("lim memory", vec![]),
            (
                "lim lease",
                vec!["--redis-url", redis.as_str(), "--redis-limits", "lease"],
            ),
            (
                "lim exact",
                vec!["--redis-url", redis.as_str(), "--redis-limits", "exact"],
            ),
        ] {
            let args: Vec<&str> = limit.iter().copied().chain(extra).collect();
            let (p, addr) = gateway(&mock_url, &args)?;
            targets.push(Target {
                name: name.into(),
                url: http_url(name, &format!("http://{addr}/v1/chat/completions"))?,
                auth: None,
                pid: Some(p.pid()),
                headers: Vec::new(),
            });
            limited.push(p);
        }
    }
    for other in &o.others {
        targets.push(other.clone());
    }
    let c = client();
    // Warm every path (connections, the gateway's latency store): a second at the lowest
    // rate of the run, so a slower gateway does not start its rows behind.
    let warm_rate = o.rates.iter().copied().min().unwrap_or(100).min(1000);
    for t in &targets {
        for stream in [false, true] {
            let w = open_loop(
                &c,
                t,
                stream,
                warm_rate,
                Duration::from_secs(1),
                o.connections,
            )
            .await;
            if w.errors > 0 {
                eprintln!("load: warm-up against {} had {} errors", t.name, w.errors);
            }
        }
    }
    println!(
        "open-loop load, healthy preset at time scale 0 (no upstream delay), {:.0} s a row, at most {} client \
         connections; the targets' rows interleaved (mock, bare proxy, gateway with no layer, gateway), {} times, \
         medians shown with the range over the runs in brackets; latency in ms (streams: to the first token); \
         CPU is the target's user+system time over its rows",
        o.duration.as_secs_f64(),
        o.connections,
        o.repeats
    );
    println!(
        "{:<6} {:>5} {:<10} {:>6} {:>8} {:>8} {:>18} {:>8} {:>8} | {:>9} {:>18} | {:>18} {:>9}",
        "mode",
        "rps",
        "target",
        "errors",
        "p50",
        "p99",
        "(range)",
        "p99.9",
        "lag p99",
        "added p50",
        "added p99 (range)",
        "µs/req (range)",
        "peak RSS"
    );
    for stream in [false, true] {
        // Per target: the highest rate of the run with its added p99 (median) under 1 ms.
        let mut under_1ms: Vec<Option<u64>> = vec![None; targets.len()];
        for &rate in &o.rates {
            // Per target, per run: (p50, p99, p99.9, lag p99, CPU µs per request, errors, peak RSS MiB).
            let mut runs: Vec<Vec<[f64; 7]>> = vec![Vec::new(); targets.len()];
            for _ in 0..o.repeats {
                for (i, t) in targets.iter().enumerate() {
                    let pid = t.pid.filter(|&p| pid_alive(p));
                    let cpu0 = pid.map(CpuSnapshot::of);
                    if let Some(p) = pid {
                        reset_peak(p);
                    }
                    let r = open_loop(&c, t, stream, rate, o.duration, o.connections).await;
                    let (cpu_us, rss) = pid.zip(cpu0).map_or((f64::NAN, f64::NAN), |(p, c0)| {
                        (
                            c0.seconds_until(&CpuSnapshot::of(p)) * 1e6 / r.sent.max(1) as f64,
                            proc_status_kib(p, "VmHWM") as f64 / 1024.0,
                        )
                    });
                    runs[i].push([
                        ms(&r.latency, 0.5),
                        ms(&r.latency, 0.99),
                        ms(&r.latency, 0.999),
                        ms(&r.lag, 0.99),
                        cpu_us,
                        r.errors as f64,
                        rss,
                    ]);
                }
            }
            let median = |xs: &mut Vec<f64>| {
                xs.sort_by(f64::total_cmp);
                xs[xs.len() / 2]
            };
            let col = |i: usize, k: usize| runs[i].iter().map(|r| r[k]).collect::<Vec<f64>>();
            let range = |xs: &[f64]| {
                let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                format!("({lo:.3}–{hi:.3})")
            };
            // Added latency per run against the mock's same run, then the median of those.
            let added = |i: usize, k: usize| -> Vec<f64> {
                runs[i]
                    .iter()
                    .zip(&runs[0])
                    .map(|(r, m)| r[k] - m[k])
                    .collect()
            };
            let mut summary: Vec<(String, f64, f64, f64)> = Vec::new();
            for (i, t) in targets.iter().enumerate() {
                let cpu = col(i, 4);
                let a99 = added(i, 1);
                // A row with errors has no latency to compare (a failed request is not fast).
                let failed = col(i, 5).iter().sum::<f64>() > 0.0;
                let (cpu_m, a50_m, a99_m) = (
                    median(&mut cpu.clone()),
                    median(&mut added(i, 0)),
                    median(&mut a99.clone()),
                );
                println!(
                    "{:<6} {:>5} {:<10} {:>6} {:>8.3} {:>8.3} {:>18} {:>8.3} {:>8.3} | {:>9} {:>18} | {:>18} {:>9}",
                    if stream { "stream" } else { "whole" },
                    rate,
                    t.name,
                    col(i, 5).iter().sum::<f64>(),
                    median(&mut col(i, 0)),
                    median(&mut col(i, 1)),
                    range(&col(i, 1)),
                    median(&mut col(i, 2)),
                    median(&mut col(i, 3)),
                    if i == 0 {
                        String::new()
                    } else if failed {
                        "errors".into()
                    } else {
                        format!("{a50_m:.3}")
                    },
                    if i == 0 {
                        String::new()
                    } else if failed {
                        "errors".into()
                    } else {
                        format!("{a99_m:.3} {}", range(&a99))
                    },
                    if cpu_m.is_nan() {
                        String::new()
                    } else {
                        format!("{cpu_m:.1} {}", range(&cpu).replace(".000", ""))
                    },
                    if cpu_m.is_nan() {
                        String::new()
                    } else {
                        format!("{:.1} MiB", median(&mut col(i, 6)))
                    },
                );
                summary.push((t.name.clone(), cpu_m, a50_m, a99_m));
                if i > 0 && a99_m < 1.0 && !failed {
                    under_1ms[i] = Some(under_1ms[i].map_or(rate, |r| r.max(rate)));
                }
            }
            let of = |name: &str| summary.iter().find(|c| c.0 == name);
            if let Some(p) = of("bare proxy") {
                for name in ["leaf only", "gateway"] {
                    if let Some(g) = of(name) {
                        println!(
                            "{:<6} {:>5} {name} / bare proxy: CPU per request x{:.2}, added p50 x{:.2}, added p99 x{:.2}",
                            "",
                            rate,
                            g.1 / p.1,
                            g.2 / p.2,
                            g.3 / p.3
                        );
                    }
                }
            }
        }
        let mode = if stream { "stream" } else { "whole" };
        let rate_of = |name: &str| {
            targets
                .iter()
                .position(|t| t.name == name)
                .and_then(|i| under_1ms[i])
        };
        let shown: Vec<String> = targets
            .iter()
            .zip(&under_1ms)
            .skip(1)
            .map(|(t, r)| match r {
                Some(r) => format!("{} {r}", t.name),
                None => format!("{} none", t.name),
            })
            .collect();
        let ratio = match (rate_of("gateway"), rate_of("bare proxy")) {
            (Some(g), Some(b)) => format!("gateway / bare proxy x{:.2}", g as f64 / b as f64),
            _ => "no ratio (a target never stayed under 1 ms at these rates)".into(),
        };
        println!(
            "{mode:<6} highest rate of this run with added p99 under 1 ms: {}; {ratio}",
            shown.join(", ")
        );
    }
    drop(gw);
    drop(leaf_gw);
    drop(proxy);
    drop(mock);
    Ok(())
}
