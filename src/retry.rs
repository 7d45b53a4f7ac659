//! Retries in the AWS SDKs' standard mode: only retryable errors, a bounded number of
//! attempts, exponential backoff with full jitter, capped, and never past the tick's
//! deadline (on the monotonic clock). Whether the lease still covers an attempt is the
//! write's own gate's question, asked right before each request is sent.

use std::future::Future;
use std::time::Duration;

use crate::aws::AwsError;
use crate::clock::{Clock, Instant, TimeSource};

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    /// The standard mode's numbers: 3 attempts, 1 s base, 20 s cap.
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (1-based): `fraction · min(cap, base · 2^(attempt-1))`.
    pub fn backoff(&self, attempt: u32, fraction: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(31);
        let ceiling = self.base.saturating_mul(1u32 << exponent).min(self.cap);
        ceiling.mul_f64(fraction.clamp(0.0, 1.0))
    }
}

/// A failed attempt, as reported to the caller's log.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedAttempt<'a> {
    pub attempt: u32,
    pub error: &'a AwsError,
    /// When the next attempt starts, or `None` when this was the last.
    pub retry_in: Option<Duration>,
}

/// Runs `operation` until it succeeds, fails for good, runs out of attempts, or the next
/// attempt could not start before `deadline`. Every failed attempt is reported.
pub async fn with_retries<T, Fut, S: TimeSource>(
    policy: &RetryPolicy,
    clock: &Clock<S>,
    deadline: Instant,
    mut operation: impl FnMut() -> Fut,
    mut report: impl FnMut(FailedAttempt<'_>),
) -> Result<T, AwsError>
where
    Fut: Future<Output = Result<T, AwsError>>,
{
    let mut attempt = 1;
    loop {
        let error = match operation().await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let wait = policy.backoff(attempt, clock.random_fraction());
        let in_time = clock.instant() + wait < deadline;
        let retry = error.is_retryable() && attempt < policy.max_attempts && in_time;
        report(FailedAttempt {
            attempt,
            error: &error,
            retry_in: retry.then_some(wait),
        });
        if !retry {
            return Err(error);
        }
        clock.sleep(wait).await;
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::tests::ManualClock;
    use std::cell::RefCell;

    #[test]
    fn backoff_is_exponential_capped_and_fully_jittered() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.backoff(1, 1.0), Duration::from_secs(1));
        assert_eq!(policy.backoff(2, 1.0), Duration::from_secs(2));
        assert_eq!(policy.backoff(3, 1.0), Duration::from_secs(4));
        assert_eq!(policy.backoff(6, 1.0), Duration::from_secs(20));
        assert_eq!(policy.backoff(40, 1.0), Duration::from_secs(20));
        assert_eq!(policy.backoff(3, 0.5), Duration::from_secs(2));
        assert_eq!(policy.backoff(3, 0.0), Duration::ZERO);
        assert_eq!(policy.backoff(1, 7.0), Duration::from_secs(1));
    }

    fn throttled() -> AwsError {
        AwsError::service(400, "Throttling", "Rate exceeded", None)
    }

    /// What a retried operation came to: its result, each report (attempt, retry_in),
    /// and the time slept.
    type Outcome = (
        Result<u32, AwsError>,
        Vec<(u32, Option<Duration>)>,
        Duration,
    );

    fn run(outcomes: Vec<Result<u32, AwsError>>, deadline_secs: u64) -> Outcome {
        let clock = ManualClock::manual(0.5);
        let outcomes = RefCell::new(outcomes.into_iter());
        let mut reports = Vec::new();
        let deadline = clock.instant() + Duration::from_secs(deadline_secs);
        let result = futures::executor::block_on(with_retries(
            &RetryPolicy::default(),
            &clock,
            deadline,
            || {
                let next = outcomes.borrow_mut().next().expect("no more outcomes");
                async move { next }
            },
            |failed| reports.push((failed.attempt, failed.retry_in)),
        ));
        (result, reports, clock.slept())
    }

    #[test]
    fn retryable_errors_are_retried_with_backoff() {
        let (result, reports, slept) = run(vec![Err(throttled()), Err(throttled()), Ok(7)], 600);
        assert_eq!(result, Ok(7));
        let half = Duration::from_millis(500);
        assert_eq!(reports, [(1, Some(half)), (2, Some(2 * half))]);
        assert_eq!(slept, 3 * half);
    }

    #[test]
    fn attempts_are_bounded() {
        let (result, reports, _) = run(
            vec![Err(throttled()), Err(throttled()), Err(throttled())],
            600,
        );
        assert_eq!(result, Err(throttled()));
        assert_eq!(reports.last(), Some(&(3, None)));
    }

    #[test]
    fn errors_that_retrying_cannot_fix_fail_at_once() {
        let denied = AwsError::service(403, "AccessDenied", "", None);
        let (result, reports, slept) = run(vec![Err(denied.clone())], 600);
        assert_eq!(result, Err(denied));
        assert_eq!(reports, [(1, None)]);
        assert_eq!(slept, Duration::ZERO);
    }

    #[test]
    fn no_retry_past_the_deadline() {
        let (result, reports, slept) = run(vec![Err(throttled())], 0);
        assert!(result.is_err());
        assert_eq!(reports, [(1, None)]);
        assert_eq!(slept, Duration::ZERO);
    }
}
