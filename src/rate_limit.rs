//! Requests per token per second: a token bucket per API token, refilled continuously. A
//! request beyond it is answered 429 with `Retry-After`, before any work is done.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Token buckets by API token id.
#[derive(Debug)]
pub struct RateLimiter {
    /// Sustained requests per second; 0 means no limit.
    per_second: f64,
    /// Requests that may arrive at once (twice the rate, at least one).
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// A limiter of `per_second` requests per token (0: none).
    pub fn new(per_second: u32) -> Self {
        let per_second = f64::from(per_second);
        RateLimiter {
            per_second,
            burst: (per_second * 2.0).max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The sustained rate.
    pub fn per_second(&self) -> f64 {
        self.per_second
    }

    /// Takes one request from `key`'s bucket, or says how many seconds until one is free.
    pub fn check(&self, key: &str) -> Result<(), f64> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = buckets.entry(key.to_string()).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * self.per_second).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - *tokens) / self.per_second)
        }
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter::new(DEFAULT_PER_SECOND)
    }
}

/// Requests per token per second unless `--rate-limit` says otherwise.
pub const DEFAULT_PER_SECOND: u32 = 100;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let limiter = RateLimiter::new(5);
        // A burst of 10 passes, the 11th waits about a fifth of a second.
        for _ in 0..10 {
            assert!(limiter.check("t").is_ok());
        }
        let wait = limiter.check("t").expect_err("over the burst");
        assert!(wait > 0.15 && wait <= 0.2, "{wait}");
        // Another token has its own bucket.
        assert!(limiter.check("u").is_ok());
        // No limit at 0.
        let open = RateLimiter::new(0);
        assert!((0..10_000).all(|_| open.check("t").is_ok()));
    }
}
