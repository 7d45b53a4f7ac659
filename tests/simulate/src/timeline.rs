//! Virtual time. Nothing in the simulation waits for real: a [`Timeline`] holds the
//! simulated moment and the timers set on it, and [`run`] polls every task until none can
//! move, then jumps to the earliest timer. A simulated day costs only the CPU time of the
//! work done in it, and the same seed gives the same day.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::executor::LocalPool;

/// The simulated moment (time since the simulation began) and the timers set on it.
#[derive(Default)]
pub struct Timeline {
    now: Cell<Duration>,
    next_id: Cell<u64>,
    /// Deadlines of the timers, earliest first; a timer dropped before it fired stays
    /// here without a waker and is skipped.
    due: RefCell<BinaryHeap<Reverse<(Duration, u64)>>>,
    wakers: RefCell<HashMap<u64, Waker>>,
}

impl Timeline {
    pub fn now(&self) -> Duration {
        self.now.get()
    }

    pub fn sleep(&self, duration: Duration) -> Sleep<'_> {
        self.sleep_until(self.now() + duration)
    }

    pub fn sleep_until(&self, deadline: Duration) -> Sleep<'_> {
        Sleep {
            timeline: self,
            deadline,
            id: None,
        }
    }

    /// Moves to the earliest timer still waited on and wakes every timer due by then;
    /// `false` when no timer is left.
    fn advance(&self) -> bool {
        let woken = {
            let mut due = self.due.borrow_mut();
            let mut wakers = self.wakers.borrow_mut();
            while let Some(Reverse((_, id))) = due.peek() {
                if wakers.contains_key(id) {
                    break;
                }
                due.pop();
            }
            let Some(Reverse((deadline, _))) = due.peek().copied() else {
                return false;
            };
            self.now.set(self.now.get().max(deadline));
            let mut woken = Vec::new();
            while let Some(Reverse((deadline, id))) = due.peek().copied() {
                if deadline > self.now.get() {
                    break;
                }
                due.pop();
                woken.extend(wakers.remove(&id));
            }
            woken
        };
        woken.into_iter().for_each(Waker::wake);
        true
    }

    fn register(&self, id: &mut Option<u64>, deadline: Duration, waker: &Waker) {
        let id = *id.get_or_insert_with(|| {
            let id = self.next_id.get();
            self.next_id.set(id + 1);
            self.due.borrow_mut().push(Reverse((deadline, id)));
            id
        });
        self.wakers.borrow_mut().insert(id, waker.clone());
    }

    fn cancel(&self, id: u64) {
        self.wakers.borrow_mut().remove(&id);
    }
}

/// A timer on the [`Timeline`].
pub struct Sleep<'a> {
    timeline: &'a Timeline,
    deadline: Duration,
    id: Option<u64>,
}

impl Future for Sleep<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.timeline.now() >= this.deadline {
            if let Some(id) = this.id.take() {
                this.timeline.cancel(id);
            }
            return Poll::Ready(());
        }
        this.timeline
            .register(&mut this.id, this.deadline, cx.waker());
        Poll::Pending
    }
}

impl Drop for Sleep<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.timeline.cancel(id);
        }
    }
}

/// Runs every task of `pool` to its end, moving time on whenever all of them wait.
/// Returns when no task can move and no timer is left.
pub fn run(pool: &mut LocalPool, timeline: &Timeline) {
    loop {
        pool.run_until_stalled();
        if !timeline.advance() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::task::LocalSpawnExt;
    use std::rc::Rc;

    /// Two tasks sleeping in turn: each wakes at its own simulated moment, in order, and
    /// the day ends at the last timer, however long it is.
    #[test]
    fn time_jumps_to_the_earliest_timer() {
        let timeline = Rc::new(Timeline::default());
        let woke = Rc::new(RefCell::new(Vec::new()));
        let mut pool = LocalPool::new();
        for (name, step) in [("a", 3u64), ("b", 5)] {
            let (timeline, woke) = (timeline.clone(), woke.clone());
            let task = async move {
                for _ in 0..2 {
                    timeline.sleep(Duration::from_secs(step)).await;
                    woke.borrow_mut().push((name, timeline.now().as_secs()));
                }
            };
            pool.spawner().spawn_local(task).unwrap();
        }
        run(&mut pool, &timeline);
        assert_eq!(
            woke.borrow().as_slice(),
            [("a", 3), ("b", 5), ("a", 6), ("b", 10)]
        );
        assert_eq!(timeline.now(), Duration::from_secs(10));
    }

    /// A timer dropped before it fires (a request that lost a race) moves time nowhere.
    #[test]
    fn a_dropped_timer_is_forgotten() {
        let timeline = Rc::new(Timeline::default());
        let mut pool = LocalPool::new();
        let inner = timeline.clone();
        let task = async move {
            let long = inner.sleep(Duration::from_secs(3600));
            let short = inner.sleep(Duration::from_secs(1));
            futures::pin_mut!(long, short);
            futures::future::select(long, short).await;
        };
        pool.spawner().spawn_local(task).unwrap();
        run(&mut pool, &timeline);
        assert_eq!(timeline.now(), Duration::from_secs(1));
    }
}
