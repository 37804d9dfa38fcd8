//! The priced objectives (`cheapest`, `weighted`): the order by price among the providers
//! that meet the tier's SLA.

use llm_layers_core::stats::normal_quantile;
use llm_layers_core::{ChatRequest, ProviderPlan};

use super::{Arm, LearnedOrder};
use crate::Objective;
use crate::tier::Sla;

/// The output a priced order assumes per choice when a call sets no limit.
const PRICED_OUTPUT: u64 = 256;

impl LearnedOrder {
    /// Orders `arms` by a priced objective: those that meet `sla` (by one Thompson draw of
    /// each one's belief, so one that may meet it is tried as often as it might) and do
    /// not fail more than it allows, by the objective's score at this call's token
    /// estimate; then the others, fastest first. The hedge races the same choice.
    pub(super) fn apply_priced(
        &self,
        req: &mut ChatRequest,
        arms: &[&Arm],
        objective: Objective,
        sla: Option<Sla>,
    ) {
        let body = req.body();
        let prompt = body.approx_prompt_tokens();
        let output = body
            .output_budget()
            .unwrap_or_else(|| PRICED_OUTPUT.saturating_mul(body.choices()));
        let z_rank = normal_quantile(self.cfg.quantile);
        // (score, meets the SLA, drawn ln-quantile, arm): lower scores first.
        let mut ranked: Vec<(f64, bool, f64, &Arm)> = arms
            .iter()
            .map(|a| {
                let drawn = a.mu + a.se * self.normal();
                let meets = sla.is_none_or(|sla| {
                    let at_sla = drawn + a.sigma * (normal_quantile(sla.quantile) - z_rank);
                    at_sla <= sla.ttft.as_secs_f64().max(1e-6).ln()
                        && 1.0 - a.error_rate >= sla.min_success
                });
                let cost = a
                    .price
                    .map_or(f64::INFINITY, |p| p.of_tokens(prompt, output).max(1e-12));
                let score = match objective {
                    Objective::Weighted { latency_weight } => cost.ln() + latency_weight * drawn,
                    _ => cost,
                };
                (score, meets, drawn, *a)
            })
            .collect();
        ranked.sort_by(|x, y| {
            y.1.cmp(&x.1).then_with(|| {
                if x.1 {
                    x.0.total_cmp(&y.0).then(x.2.total_cmp(&y.2))
                } else {
                    x.2.total_cmp(&y.2)
                }
            })
        });
        let order: Vec<String> = ranked.iter().map(|r| r.3.slug.to_string()).collect();
        let first = ranked[0].3;
        let plan = ProviderPlan::new(Some(first.name.clone())).hedge_order(order.clone().into());
        req.body_mut().provider_mut().order = Some(order);
        req.extensions_mut().insert(plan);
    }
}
