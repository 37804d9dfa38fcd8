//! The shared budget: checked construction, and the capped share over a sliding window.

use std::time::Duration;

use llm_layers_core::budget::{BudgetChoice, ShareBudget, TpsParams};
use tower::retry::budget::Budget;

#[test]
fn a_budget_out_of_range_is_refused_naming_what_is_wrong() {
    let build = |ttl: u64, floor: u32, ratio: f32, capped: bool| {
        let mut p = TpsParams::new(floor, ratio);
        p.ttl = Duration::from_secs(ttl);
        let c = BudgetChoice::new(p);
        let r = if capped {
            c.build_capped("hedge", 1.0)
        } else {
            c.build("hedge", 1.0)
        };
        r.err().map(|e| e.message().to_owned())
    };
    for capped in [false, true] {
        assert_eq!(build(10, 2, 0.05, capped), None);
        assert_eq!(build(1, 0, 0.0, capped), None, "both ends of the ranges");
        assert_eq!(build(60, 0, 1.0, capped), None);
        for (ttl, floor, ratio, names) in [
            (0, 2, 0.05, "window"),
            (61, 2, 0.05, "window"),
            (10, 2, 1.5, "ratio"),
            (10, 2, -0.1, "ratio"),
            (10, 2, f32::NAN, "ratio"),
            (10, u32::MAX, 0.05, "floor"),
        ] {
            let e = build(ttl, floor, ratio, capped).expect("refused");
            assert!(e.contains("hedge") && e.contains(names), "{e}");
        }
    }
}

/// Calls and extras are counted over the window, slot by slot: what is older than the
/// window no longer counts, for or against.
#[tokio::test(start_paused = true)]
async fn the_share_slides_with_the_window() {
    let b = ShareBudget::new(Duration::from_secs(10), 0.1, 0);
    for _ in 0..50 {
        b.deposit();
    }
    assert_eq!(b.counts(), (50, 0));
    assert_eq!((0..10).filter(|_| b.withdraw()).count(), 5, "a tenth of 50");
    assert_eq!(b.counts(), (50, 5));
    // Half a window on: all of it still counts.
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(b.counts(), (50, 5));
    for _ in 0..50 {
        b.deposit();
    }
    assert_eq!(
        (0..10).filter(|_| b.withdraw()).count(),
        5,
        "a tenth of 100, 5 spent"
    );
    // Past the first half's window: only the second half counts.
    tokio::time::advance(Duration::from_secs(6)).await;
    assert_eq!(b.counts(), (50, 5));
    assert!(!b.withdraw());
    // A long gap clears everything.
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(b.counts(), (0, 0));
}
