//! The allowance for waiting out throttles, per model: a share of the model's recent
//! successes and a small floor, as tower's retry budget counts them.

use llm_layers_core::hash::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llm_layers_core::sync::lock;
use tower::retry::budget::{Budget, TpsBudget};

/// Models tracked at most; past it, the table starts over (a fresh allowance is the floor).
const MAX_MODELS: usize = 1024;

/// Throttle waits per model: one per success of the model over 10 s, and ten a second
/// whatever the traffic.
pub(crate) struct ThrottleWaits {
    models: Mutex<HashMap<Arc<str>, Arc<TpsBudget>>>,
}

impl ThrottleWaits {
    pub(crate) fn new() -> ThrottleWaits {
        ThrottleWaits {
            models: Mutex::new(HashMap::default()),
        }
    }

    fn budget(&self, model: &str) -> Arc<TpsBudget> {
        let mut models = lock(&self.models);
        if let Some(b) = models.get(model) {
            return b.clone();
        }
        if models.len() >= MAX_MODELS {
            models.clear();
        }
        let b = Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 1.0));
        models.insert(Arc::from(model), b.clone());
        b
    }

    /// A call of `model` succeeded.
    pub(crate) fn deposit(&self, model: &str) {
        self.budget(model).deposit();
    }

    /// Whether a call of `model` may wait out a throttle now.
    pub(crate) fn withdraw(&self, model: &str) -> bool {
        self.budget(model).withdraw()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn each_model_has_its_own_allowance_refilled_by_its_successes() {
        let w = ThrottleWaits::new();
        let spent = |w: &ThrottleWaits, m: &str| (0..1000).take_while(|_| w.withdraw(m)).count();
        let floor = spent(&w, "m");
        assert_eq!(floor, 100, "ten a second over 10 s");
        assert!(!w.withdraw("m"));
        // Another model's use changes nothing for m.
        assert_eq!(spent(&w, "x"), 100);
        assert!(!w.withdraw("m"));
        // m's successes give it waits again, one each.
        for _ in 0..3 {
            w.deposit("m");
        }
        assert_eq!(spent(&w, "m"), 3);
    }
}
