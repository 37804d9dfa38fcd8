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
    let (proxy, proxy_url) = Proc::spawn(&["--child-proxy", &mock_url], &[], "ready ")?;
    let mut targets = vec![
        Target {
            name: "mock".into(),
            url: http_url("--mock-url", &format!("{mock_url}/chat/completions"))?,
            auth: Some(HeaderValue::from_static("Bearer sk-or-v1-load")),
            pid: None,
        },
        Target {
            name: "bare proxy".into(),
            url: http_url("bare proxy", &format!("{proxy_url}/v1/chat/completions"))?,
            auth: None,
            pid: Some(proxy.pid()),
        },
        Target {
            name: "gateway".into(),
            url: http_url("gateway", &format!("http://{gw_addr}/v1/chat/completions"))?,
            auth: None,
            pid: Some(gw.pid()),
        },
    ];
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
         connections; latency in ms (streams: to the first token); CPU is the target's user+system time over the row",
        o.duration.as_secs_f64(),
        o.connections
    );
    println!(
        "{:<6} {:>5} {:<10} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} | {:>9} {:>9} {:>9} | {:>8} {:>9} {:>9}",
        "mode",
        "rps",
        "target",
        "sent",
        "errors",
        "p50",
        "p99",
        "p99.9",
        "max",
        "lag p99",
        "added p50",
        "p99",
        "p99.9",
        "CPU s",
        "µs/req",
        "peak RSS"
    );
    for stream in [false, true] {
        for &rate in &o.rates {
            let mut base: Option<Outcome> = None;
            // (CPU µs per request, added p50, added p99) of the bare proxy and the gateway.
            let mut costs: Vec<(String, f64, f64, f64)> = Vec::new();
            for t in &targets {
                let pid = t.pid.filter(|&p| pid_alive(p));
                let cpu0 = pid.map(proc_cpu_seconds);
                if let Some(p) = pid {
                    reset_peak(p);
                }
                let r = open_loop(&c, t, stream, rate, o.duration, o.connections).await;
                let cost = pid.zip(cpu0).map(|(p, c0)| {
                    let cpu = proc_cpu_seconds(p) - c0;
                    format!(
                        "{:>8.2} {:>9.1} {:>5.1} MiB",
                        cpu,
                        cpu * 1e6 / r.sent.max(1) as f64,
                        proc_status_kib(p, "VmHWM") as f64 / 1024.0
                    )
                });
                let added = |q| match &base {
                    Some(a) => format!("{:>9.3}", ms(&r.latency, q) - ms(&a.latency, q)),
                    None => format!("{:>9}", ""),
                };
                println!(
                    "{:<6} {:>5} {:<10} {:>7} {:>6} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} | {} {} {} | {}",
                    if stream { "stream" } else { "whole" },
                    rate,
                    t.name,
                    r.sent,
                    r.errors,
                    ms(&r.latency, 0.5),
                    ms(&r.latency, 0.99),
                    ms(&r.latency, 0.999),
                    r.latency.max() as f64 / 1000.0,
                    ms(&r.lag, 0.99),
                    added(0.5),
                    added(0.99),
                    added(0.999),
                    cost.unwrap_or_default()
                );
                if let (Some(a), Some((p, c0))) = (&base, pid.zip(cpu0)) {
                    costs.push((
                        t.name.clone(),
                        (proc_cpu_seconds(p) - c0) * 1e6 / r.sent.max(1) as f64,
                        ms(&r.latency, 0.5) - ms(&a.latency, 0.5),
                        ms(&r.latency, 0.99) - ms(&a.latency, 0.99),
                    ));
                }
                if base.is_none() {
                    base = Some(r);
                }
            }
            let of = |name: &str| costs.iter().find(|c| c.0 == name);
            if let (Some(p), Some(g)) = (of("bare proxy"), of("gateway")) {
                println!(
                    "{:<6} {:>5} gateway / bare proxy: CPU per request x{:.2}, added p50 x{:.2}, added p99 x{:.2}",
                    "",
                    rate,
                    g.1 / p.1,
                    g.2 / p.2,
                    g.3 / p.3
                );
            }
        }
    }
    drop(gw);
    drop(proxy);
    drop(mock);
    Ok(())
}
