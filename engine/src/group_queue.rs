//! [`GroupQueue`]: work handed to a writer thread that commits it in
//! groups, waking at once only for work someone waits for.

use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// The writer's work, in order. Only an urgent push (someone waits for
/// it) wakes the writer at once; other work waits for company, at most
/// `linger`, so that many pushes in quick succession cost one commit.
pub(crate) struct GroupQueue<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
    linger: Duration,
    max_group: usize,
}

struct State<T> {
    ops: Vec<T>,
    /// Someone waits for an op in `ops`.
    urgent: bool,
    /// The owner is gone: hand out what is left, then stop.
    closed: bool,
}

impl<T> GroupQueue<T> {
    /// A queue whose groups hold at most `max_group` ops, and whose ops
    /// wait at most `linger` for company.
    pub(crate) fn new(linger: Duration, max_group: usize) -> Self {
        Self {
            state: Mutex::new(State {
                ops: Vec::new(),
                urgent: false,
                closed: false,
            }),
            ready: Condvar::new(),
            linger,
            max_group: max_group.max(1),
        }
    }

    pub(crate) fn push(&self, op: T, urgent: bool) {
        let mut state = self.state.lock();
        let was_empty = state.ops.is_empty();
        state.ops.push(op);
        if urgent && !state.urgent {
            state.urgent = true;
            self.ready.notify_one();
        } else if was_empty {
            // The writer sleeps without a deadline while there is nothing.
            self.ready.notify_one();
        }
    }

    pub(crate) fn close(&self) {
        self.state.lock().closed = true;
        self.ready.notify_one();
    }

    /// The next group: waits until someone waits for a queued op, an op
    /// has waited `linger`, or the queue closes. `None`: closed and done.
    pub(crate) fn next_group(&self) -> Option<Vec<T>> {
        let mut state = self.state.lock();
        let mut deadline = None;
        loop {
            if state.ops.is_empty() {
                if state.closed {
                    return None;
                }
                deadline = None;
                self.ready.wait(&mut state);
                continue;
            }
            let due = *deadline.get_or_insert_with(|| Instant::now() + self.linger);
            if state.urgent
                || state.closed
                || state.ops.len() >= self.max_group
                || self.ready.wait_until(&mut state, due).timed_out()
            {
                break;
            }
        }
        state.urgent = false;
        let split = state.ops.len().min(self.max_group);
        let rest = state.ops.split_off(split);
        let group = std::mem::replace(&mut state.ops, rest);
        if !state.ops.is_empty() {
            // More than one group's worth: the next follows at once.
            state.urgent = true;
        }
        Some(group)
    }
}
