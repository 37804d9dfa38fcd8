//! One shared upstream call and the callers following it: the chunks kept for them, who has
//! read how far, and when the flight ends.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};

use llm_layers_core::sync::lock;
use llm_layers_core::{LlmError, ResponseMeta, StreamChunk};
use tokio::sync::Notify;

/// A caller of a flight: where it is in the chunks, and the one waker to wake for it.
#[derive(Default)]
pub(crate) struct Follower {
    pub(crate) next: usize,
    pub(crate) waker: Option<Waker>,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) meta: Option<ResponseMeta>,
    /// The chunks kept, the first of them chunk number `base`.
    pub(crate) chunks: VecDeque<StreamChunk>,
    pub(crate) base: usize,
    /// About how many bytes `chunks` hold.
    pub(crate) bytes: usize,
    /// How it ended: `Some(Ok)` cleanly, `Some(Err)` with an error (before or after the
    /// first token).
    pub(crate) end: Option<Result<(), LlmError>>,
    /// Whether a new caller may join: not once every caller left, not once it ended with
    /// an error, not past the replay limit.
    pub(crate) joinable: bool,
    pub(crate) callers: HashMap<u64, Follower>,
    pub(crate) next_id: u64,
}

impl State {
    /// Lets go of the chunks every caller has read, once no one can join any more.
    pub(crate) fn trim(&mut self) {
        if self.joinable {
            return;
        }
        let upto = self
            .callers
            .values()
            .map(|f| f.next)
            .min()
            .unwrap_or(self.base + self.chunks.len());
        while self.base < upto {
            match self.chunks.pop_front() {
                Some(c) => self.bytes = self.bytes.saturating_sub(c.weight()),
                None => break,
            }
            self.base += 1;
        }
    }
}

/// One upstream call and the callers sharing it.
pub(crate) struct Flight {
    pub(crate) state: Mutex<State>,
    /// Told when the last caller leaves.
    pub(crate) abandoned: Notify,
    pub(crate) replay_limit: usize,
}

impl Flight {
    pub(crate) fn new(replay_limit: usize) -> Flight {
        Flight {
            state: Mutex::new(State {
                joinable: true,
                ..State::default()
            }),
            abandoned: Notify::new(),
            replay_limit,
        }
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut State)) {
        let wakers: Vec<Waker> = {
            let mut st = lock(&self.state);
            f(&mut st);
            st.callers
                .values_mut()
                .filter_map(|c| c.waker.take())
                .collect()
        };
        for w in wakers {
            w.wake();
        }
    }

    pub(crate) fn push(&self, c: StreamChunk) {
        let limit = self.replay_limit;
        self.update(|st| {
            st.bytes += c.weight();
            st.chunks.push_back(c);
            if st.bytes > limit && st.joinable {
                st.joinable = false;
                metrics::counter!("llm_coalesce_replay_full_total").increment(1);
            }
            st.trim();
        });
    }

    /// Joins this flight, unless it takes no more callers: joining and leaving are decided
    /// under one lock, so a flight whose last caller left never takes a joiner.
    pub(crate) fn join(self: &Arc<Self>) -> Option<Ticket> {
        let mut st = lock(&self.state);
        if !st.joinable {
            return None;
        }
        let id = st.next_id;
        st.next_id += 1;
        st.callers.insert(id, Follower::default());
        Some(Ticket {
            flight: self.clone(),
            id,
        })
    }
}

/// A caller's share of a flight: leaving (dropping it) may end the flight.
pub(crate) struct Ticket {
    pub(crate) flight: Arc<Flight>,
    pub(crate) id: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let last = {
            let mut st = lock(&self.flight.state);
            st.callers.remove(&self.id);
            let last = st.callers.is_empty();
            if last {
                // No caller left: no one may join it, and its task stops.
                st.joinable = false;
            }
            st.trim();
            last
        };
        if last {
            self.flight.abandoned.notify_one();
        }
    }
}

/// Keeps one waker per caller: the latest.
pub(crate) fn park(st: &mut State, id: u64, cx: &Context<'_>) {
    if let Some(f) = st.callers.get_mut(&id) {
        match &f.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => f.waker = Some(cx.waker().clone()),
        }
    }
}
