//! Rate limits: a token bucket per (limit, key), answered with M_LIMIT_EXCEEDED + retry_after_ms.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::{
    config::{RateLimit, RateLimitConfig},
    error::{Error, Result},
};

/// Which limit a request counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Limit {
    Login,
    Registration,
    Message,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

pub struct RateLimiter {
    config: RateLimitConfig,
    buckets: Mutex<HashMap<(Limit, String), Bucket>>,
}

/// Buckets idle this long are full again and can be dropped.
const IDLE: Duration = Duration::from_secs(600);

impl RateLimiter {
    pub fn new(config: RateLimitConfig) -> Self {
        Self { config, buckets: Mutex::default() }
    }

    fn limit(&self, limit: Limit) -> RateLimit {
        match limit {
            Limit::Login => self.config.login,
            Limit::Registration => self.config.registration,
            Limit::Message => self.config.message,
        }
    }

    /// Takes one token for `key`, or fails with the time until one is available.
    pub fn check(&self, limit: Limit, key: &str) -> Result<()> {
        if !self.config.enabled {
            return Ok(());
        }
        let settings = self.limit(limit);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 100_000 {
            buckets.retain(|_, b| now.duration_since(b.updated) < IDLE);
        }
        let bucket = buckets
            .entry((limit, key.to_owned()))
            .or_insert(Bucket { tokens: f64::from(settings.burst), updated: now });
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * settings.per_second).min(f64::from(settings.burst));
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / settings.per_second;
            Err(Error::limit_exceeded(Duration::from_secs_f64(wait).max(Duration::from_millis(1))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_limited_with_retry_after() {
        let mut config = RateLimitConfig::default();
        config.login = RateLimit { per_second: 1.0, burst: 2 };
        let limiter = RateLimiter::new(config);
        assert!(limiter.check(Limit::Login, "1.2.3.4").is_ok());
        assert!(limiter.check(Limit::Login, "1.2.3.4").is_ok());
        let error = limiter.check(Limit::Login, "1.2.3.4").unwrap_err();
        assert_eq!(error.status().as_u16(), 429);
        // Another key has its own bucket.
        assert!(limiter.check(Limit::Login, "5.6.7.8").is_ok());
    }

    #[test]
    fn disabled_limits_never_refuse() {
        let config = RateLimitConfig { enabled: false, ..RateLimitConfig::default() };
        let limiter = RateLimiter::new(config);
        for _ in 0..1000 {
            limiter.check(Limit::Registration, "x").unwrap();
        }
    }
}
