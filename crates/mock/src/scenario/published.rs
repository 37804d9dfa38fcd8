//! What the mock publishes about its providers (`GET /models/{id}/endpoints`), truthfully
//! or not.

use super::{Dist, Scenario};

impl Scenario {
    /// Makes the published endpoint stats lie: each provider publishes the TTFT of its
    /// mirror in the ranking by median (the slowest is published as the fastest and the
    /// fastest as the slowest), as stale or everyone-else's stats can.
    pub fn with_wrong_stats(mut self) -> Self {
        let mut by_speed: Vec<usize> = (0..self.providers.len()).collect();
        by_speed.sort_by(|&a, &b| {
            self.providers[a]
                .ttft
                .quantile_ms(0.5)
                .total_cmp(&self.providers[b].ttft.quantile_ms(0.5))
        });
        let dists: Vec<Dist> = self.providers.iter().map(|p| p.ttft.clone()).collect();
        for (rank, &i) in by_speed.iter().enumerate() {
            let mirror = by_speed[by_speed.len() - 1 - rank];
            self.providers[i].published_ttft = Some(dists[mirror].clone());
        }
        self
    }

    /// What `GET /models/{id}/endpoints` answers: per provider its published TTFT
    /// percentiles (seconds, at this time scale), throughput from its token gap, and an
    /// uptime of 100 % less its error-status rates.
    pub fn endpoint_stats(&self, model: &str) -> serde_json::Value {
        let scale = self.time_scale;
        let endpoints: Vec<serde_json::Value> = self
            .providers
            .iter()
            .map(|p| {
                let d = p.published_ttft.as_ref().unwrap_or(&p.ttft);
                let secs = |q: f64| d.quantile_ms(q) * scale / 1000.0;
                // Tokens per second: its p99 is the slow end, so the gap's p99.
                let tps = |q: f64| {
                    let gap = p.gap.quantile_ms(q) * scale / 1000.0;
                    if gap > 0.0 { 1.0 / gap } else { 10_000.0 }
                };
                let failing: f64 = p.faults.status.iter().map(|f| f.rate).sum::<f64>()
                    + p.faults.reset_before_headers
                    + p.faults.hang_after_headers;
                let uptime = 100.0 * (1.0 - failing.min(1.0));
                let price = p.price();
                serde_json::json!({
                    "name": format!("{} | {model}", p.name),
                    "model_name": model,
                    "provider_name": p.name,
                    "tag": p.slug,
                    "status": if uptime < 50.0 { -2 } else { 0 },
                    "context_length": 128_000,
                    "latency_last_30m": {"p50": secs(0.5), "p75": secs(0.75), "p90": secs(0.9), "p99": secs(0.99)},
                    "throughput_last_30m": {"p50": tps(0.5), "p75": tps(0.75), "p90": tps(0.9), "p99": tps(0.99)},
                    "uptime_last_5m": uptime,
                    "uptime_last_30m": uptime,
                    "uptime_last_1d": uptime,
                    "pricing": {"prompt": price.prompt.to_string(),
                                "completion": price.completion.to_string(), "request": "0"},
                })
            })
            .collect();
        serde_json::json!({"data": {"id": model, "name": model, "endpoints": endpoints}})
    }
}
