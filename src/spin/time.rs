//! Time and chance from WASI: the wall clock (in milliseconds, which is what logs and
//! state need), the monotonic clock and timers on it driven by Spin's executor, and the
//! random source for jitter and ids.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};

use crate::clock::TimeSource;

/// The wall clock, to the millisecond.
pub fn now() -> DateTime<Utc> {
    let now = Utc::now();
    now.duration_trunc(chrono::Duration::milliseconds(1))
        .unwrap_or(now)
}

/// A random id, unique among ticks: 64 bits from the host's random source.
pub fn random_id() -> String {
    format!("{:016x}", wasi::random::random::get_random_u64())
}

/// Time from WASI's clocks, chance from its random source.
pub struct WasiTime;

impl TimeSource for WasiTime {
    fn wall(&self) -> DateTime<Utc> {
        now()
    }

    fn monotonic(&self) -> Duration {
        Duration::from_nanos(wasi::clocks::monotonic_clock::now())
    }

    async fn sleep(&self, duration: Duration) {
        Sleep::new(duration).await
    }

    fn random_fraction(&self) -> f64 {
        (wasi::random::random::get_random_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A timer on WASI's monotonic clock, driven by Spin's executor.
pub struct Sleep {
    deadline: u64,
    registration: Option<spin_executor::CancelOnDropToken>,
}

impl Sleep {
    pub fn new(duration: Duration) -> Self {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        Self {
            deadline: wasi::clocks::monotonic_clock::now().saturating_add(nanos),
            registration: None,
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if wasi::clocks::monotonic_clock::now() >= self.deadline {
            return Poll::Ready(());
        }
        let pollable = wasi::clocks::monotonic_clock::subscribe_instant(self.deadline);
        let token = spin_executor::push_waker_and_get_token(pollable, cx.waker().clone());
        // Replacing the token cancels the previous registration.
        self.registration = Some(token.into());
        Poll::Pending
    }
}
