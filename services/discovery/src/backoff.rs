//! Jittered, capped exponential backoff and a small token bucket, shared by the loops that talk
//! to Consul so that many instances never retry in lockstep.

use std::time::Duration;

// tokio's clock, so that the loops paced by a bucket can be tested on paused time.
use tokio::time::Instant;

/// Delay before retry number `attempt` (1-based): doubles from `base` up to `cap`, then a random
/// point between half and all of it ("equal jitter"), so retries spread but never collapse to 0.
pub fn delay(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let ceiling = exp.min(cap);
    let half = ceiling / 2;
    half + half.mul_f64(fastrand::f64())
}

/// Allows `burst` events at once and `per_second` on average; `wait` says how long to hold off.
pub(crate) struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    refreshed: Instant,
}

impl TokenBucket {
    pub(crate) fn new(burst: u32, per_second: u32) -> Self {
        TokenBucket {
            capacity: burst as f64,
            per_second: per_second as f64,
            tokens: burst as f64,
            refreshed: Instant::now(),
        }
    }

    /// Takes one token, returning how long to wait before the event may happen.
    pub(crate) fn take(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.refreshed).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.refreshed = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_second)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_stay_under_the_cap() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(5);
        for _ in 0..100 {
            let first = delay(1, base, cap);
            assert!(
                first >= Duration::from_millis(50) && first <= base,
                "{first:?}"
            );
            let late = delay(40, base, cap);
            assert!(late >= cap / 2 && late <= cap, "{late:?}");
        }
    }

    #[test]
    fn the_bucket_lets_a_burst_through_then_paces() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(3, 10);
        for _ in 0..3 {
            assert_eq!(bucket.take(start), Duration::ZERO);
        }
        let wait = bucket.take(start);
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // A second later the bucket is full again.
        let later = start + Duration::from_secs(1);
        assert_eq!(bucket.take(later), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_paced_by_the_bucket_runs_a_burst_at_once_then_at_the_rate() {
        let mut bucket = TokenBucket::new(3, 10);
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..6 {
            tokio::time::sleep(bucket.take(Instant::now())).await;
            at.push(start.elapsed().as_millis());
        }
        assert_eq!(at, [0, 0, 0, 100, 200, 300]);
    }
}
