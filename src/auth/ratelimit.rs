//! Per-client rate limits: a token bucket per client id (capacity `burst`,
//! refilled at `per_second`), answered 429 with `Retry-After` (RFC 6585 §4,
//! RFC 9110 §10.2.3) and an OperationOutcome (`throttled`) by the api layer.
//!
//! Invariant: a client's bucket is never shared with another client; the
//! limit of a client without a configured rate is unlimited.
//! (Buckets live in process memory: with several replicas each enforces its
//! own share.)

use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `{ per_second = 50, burst = 100 }`
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSpec {
    pub per_second: f64,
    pub burst: f64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Take one token for `client`; `Err(wait)` when the bucket is empty.
    pub fn check(&self, client: &str, spec: RateSpec, now: Instant) -> Result<(), Duration> {
        if spec.per_second <= 0.0 && spec.burst <= 0.0 {
            return Err(Duration::from_secs(60));
        }
        let mut m = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let b = m.entry(client.to_owned()).or_insert(Bucket { tokens: spec.burst.max(1.0), at: now });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * spec.per_second).min(spec.burst.max(1.0));
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = if spec.per_second > 0.0 { (1.0 - b.tokens) / spec.per_second } else { 60.0 };
            Err(Duration::from_secs_f64(wait.max(0.001)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills() {
        let l = RateLimiter::default();
        let spec = RateSpec { per_second: 2.0, burst: 3.0 };
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check("a", spec, t0).is_ok());
        }
        let wait = l.check("a", spec, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(500));
        assert!(l.check("b", spec, t0).is_ok(), "buckets are per client");
        assert!(l.check("a", spec, t0 + Duration::from_millis(600)).is_ok());
    }
}
