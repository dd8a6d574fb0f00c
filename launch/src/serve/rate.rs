//! Per-caller rate limits: a token bucket per caller, named by its API key (the bearer
//! token, hashed) or else its address. A caller may spend a minute's allowance at once, then
//! one request per `60 / per_minute` seconds.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use sha2::{Digest, Sha256};

/// Callers remembered before the idle ones (full buckets) are forgotten.
const REMEMBERED: usize = 4096;

/// The buckets of every caller seen lately.
pub struct RateLimits {
    per_minute: f64,
    buckets: Mutex<HashMap<[u8; 32], Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimits {
    /// `per_minute` requests a minute per caller.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute: f64::from(per_minute.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The caller a request comes from: its bearer token if it sends one, else its address.
    pub fn caller(authorization: Option<&str>, address: Option<std::net::IpAddr>) -> [u8; 32] {
        let name = match (
            authorization.and_then(|a| a.strip_prefix("Bearer ")),
            address,
        ) {
            (Some(key), _) => format!("key:{key}"),
            (None, Some(ip)) => format!("ip:{ip}"),
            (None, None) => "unknown".to_owned(),
        };
        Sha256::digest(name.as_bytes()).into()
    }

    /// Takes a request from `caller`'s bucket at `now`; if it is empty, the whole seconds
    /// until it holds one.
    pub fn take(&self, caller: [u8; 32], now: Instant) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let per_second = self.per_minute / 60.0;
        let refill = |b: &Bucket| {
            (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_second)
                .min(self.per_minute)
        };
        if buckets.len() >= REMEMBERED && !buckets.contains_key(&caller) {
            buckets.retain(|_, b| refill(b) < self.per_minute);
            // Still full (a flood of callers within a minute): forget the one with the most
            // allowance left, which loses it the least.
            if buckets.len() >= REMEMBERED
                && let Some(idlest) = buckets
                    .iter()
                    .max_by(|x, y| refill(x.1).total_cmp(&refill(y.1)))
                    .map(|(k, _)| *k)
            {
                buckets.remove(&idlest);
            }
        }
        let bucket = buckets.entry(caller).or_insert(Bucket {
            tokens: self.per_minute,
            at: now,
        });
        bucket.tokens = refill(bucket);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / per_second).ceil() as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_caller_spends_its_minute_then_waits_and_others_are_not_held_up() {
        let limits = RateLimits::new(2);
        let (a, b) = (
            RateLimits::caller(Some("Bearer one"), None),
            RateLimits::caller(None, Some([127, 0, 0, 1].into())),
        );
        let t0 = Instant::now();
        assert_eq!(limits.take(a, t0), Ok(()));
        assert_eq!(limits.take(a, t0), Ok(()));
        assert_eq!(
            limits.take(a, t0),
            Err(30),
            "one request per 30 s at 2 a minute"
        );
        assert_eq!(
            limits.take(b, t0),
            Ok(()),
            "another caller has its own bucket"
        );
        assert_eq!(limits.take(a, t0 + Duration::from_secs(29)), Err(1));
        assert_eq!(limits.take(a, t0 + Duration::from_secs(31)), Ok(()));
    }

    #[test]
    fn many_callers_do_not_grow_memory_without_bound() {
        let limits = RateLimits::new(60);
        let t0 = Instant::now();
        for i in 0..3 * REMEMBERED as u32 {
            let caller = RateLimits::caller(Some(&format!("Bearer {i}")), None);
            // Each caller's bucket is full again a minute later: forgettable.
            let _ = limits.take(caller, t0 + Duration::from_secs(u64::from(i) * 60));
        }
        assert!(limits.buckets.lock().unwrap().len() <= REMEMBERED);
        // A flood of new callers within one second: still bounded.
        for i in 0..2 * REMEMBERED as u32 {
            let caller = RateLimits::caller(Some(&format!("Bearer flood {i}")), None);
            let _ = limits.take(caller, t0);
        }
        assert!(limits.buckets.lock().unwrap().len() <= REMEMBERED);
    }
}
