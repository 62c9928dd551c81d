//! Requests this node sent to sockets of other nodes, waiting for their
//! answers (`Header::Ask`, `Header::Answer`): numbered, each with a
//! deadline that this node enforces on a thread of its own, since the
//! socket's node may die before it answers.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::adapter::lock;
use crate::app::{deadline_after, AskDone, SocketAnswer};

/// The requests waiting for an answer. Dropping it (or [`stop`](Self::stop))
/// ends the timer thread, with every waiting request unanswered.
pub(super) struct Asks {
    shared: Arc<Shared>,
}

struct Shared {
    table: Mutex<Table>,
    /// Rung when a request with an earlier deadline comes, or at a stop.
    changed: Condvar,
}

#[derive(Default)]
struct Table {
    next: u64,
    pending: HashMap<u64, AskDone>,
    deadlines: BTreeSet<(Instant, u64)>,
    timer_started: bool,
    stopped: bool,
}

impl Asks {
    pub(super) fn new() -> Asks {
        Asks { shared: Arc::new(Shared { table: Mutex::default(), changed: Condvar::new() }) }
    }

    /// Registers a request answered by `done`, or with `None` after
    /// `within`; its number, or `done` back once stopped (or when the timer
    /// thread cannot start).
    pub(super) fn start(&self, within: Duration, done: AskDone) -> Result<u64, AskDone> {
        let mut table = lock(&self.shared.table);
        if table.stopped {
            return Err(done);
        }
        if !table.timer_started {
            let shared = self.shared.clone();
            if thread::Builder::new().name("emitws-redis-asks".into()).spawn(move || expire(&shared)).is_err() {
                return Err(done);
            }
            table.timer_started = true;
        }
        table.next += 1;
        let number = table.next;
        table.pending.insert(number, done);
        let deadline = deadline_after(within);
        let earliest = table.deadlines.first().map_or(true, |(first, _)| deadline < *first);
        table.deadlines.insert((deadline, number));
        if earliest {
            self.shared.changed.notify_one();
        }
        Ok(number)
    }

    /// Hands `answer` to request `number`, unless it timed out already.
    pub(super) fn settle(&self, number: u64, answer: SocketAnswer) {
        let done = lock(&self.shared.table).pending.remove(&number);
        // The deadline stays, to be skipped: cheaper than finding it.
        if let Some(done) = done {
            done(Some(answer));
        }
    }

    /// Ends the timer; the waiting requests get no answer (`None`) now.
    pub(super) fn stop(&self) {
        let waiting: Vec<AskDone> = {
            let mut table = lock(&self.shared.table);
            table.stopped = true;
            table.deadlines.clear();
            table.pending.drain().map(|(_, done)| done).collect()
        };
        self.shared.changed.notify_one();
        waiting.into_iter().for_each(|done| done(None));
    }

    /// How many requests wait (for tests).
    #[cfg(test)]
    fn waiting(&self) -> usize {
        lock(&self.shared.table).pending.len()
    }
}

impl Drop for Asks {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The timer thread: answers `None` to every request past its deadline,
/// until stopped.
fn expire(shared: &Shared) {
    let mut table = lock(&shared.table);
    loop {
        if table.stopped {
            return;
        }
        let now = Instant::now();
        let mut expired = Vec::new();
        while let Some(&(at, number)) = table.deadlines.first() {
            if at > now {
                break;
            }
            table.deadlines.pop_first();
            expired.extend(table.pending.remove(&number));
        }
        if !expired.is_empty() {
            // Answered outside the lock: a `done` may ask again.
            drop(table);
            expired.into_iter().for_each(|done| done(None));
            table = lock(&shared.table);
            continue;
        }
        table = match table.deadlines.first() {
            Some(&(at, _)) => {
                let wait = at.saturating_duration_since(now);
                shared.changed.wait_timeout(table, wait).unwrap_or_else(|p| p.into_inner()).0
            }
            None => shared.changed.wait(table).unwrap_or_else(|p| p.into_inner()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::GroupOutcome;
    use std::sync::mpsc;

    fn recorder() -> (AskDone, mpsc::Receiver<Option<SocketAnswer>>) {
        let (send, receive) = mpsc::channel();
        (Box::new(move |answer| drop(send.send(answer))), receive)
    }

    #[test]
    fn an_answer_settles_once_and_a_silent_request_times_out() {
        let asks = Asks::new();
        let (answered, answer) = recorder();
        let (silent, timeout) = recorder();
        let first = asks.start(Duration::from_secs(30), answered).ok().expect("started");
        asks.start(Duration::from_millis(50), silent).ok().expect("started");
        let done = SocketAnswer::Group(GroupOutcome::Done { changed: true });
        asks.settle(first, done.clone());
        asks.settle(first, done.clone()); // a second answer is ignored
        assert_eq!(answer.recv_timeout(Duration::from_secs(1)), Ok(Some(done)));
        assert_eq!(timeout.recv_timeout(Duration::from_secs(5)), Ok(None));
        assert_eq!(asks.waiting(), 0);
        assert!(answer.try_recv().is_err());
    }

    #[test]
    fn a_stop_answers_the_waiting_none_and_refuses_new_ones() {
        let asks = Asks::new();
        let (waiting, answer) = recorder();
        asks.start(Duration::from_secs(30), waiting).ok().expect("started");
        asks.stop();
        assert_eq!(answer.recv_timeout(Duration::from_secs(1)), Ok(None));
        let (late, _) = recorder();
        assert!(asks.start(Duration::from_secs(1), late).is_err());
    }
}
