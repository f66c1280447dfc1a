//! The per-connection send rate limit: a token bucket.

use std::time::Instant;

pub struct TokenBucket {
    per_second: f64,
    capacity: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// `per_second` tokens a second, at most `capacity` saved up; starts full.
    pub fn new(per_second: u32, capacity: u32) -> TokenBucket {
        TokenBucket {
            per_second: f64::from(per_second),
            capacity: f64::from(capacity),
            tokens: f64::from(capacity),
            updated: Instant::now(),
        }
    }

    /// Takes a token if there is one.
    pub fn try_take(&mut self) -> bool {
        self.take_at(Instant::now())
    }

    fn take_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.updated = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_to_capacity_then_refills_at_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(2, 4);
        bucket.updated = start;
        assert_eq!((0..6).filter(|_| bucket.take_at(start)).count(), 4);
        assert!(!bucket.take_at(start + Duration::from_millis(100)));
        assert!(bucket.take_at(start + Duration::from_millis(600)));
        assert!(!bucket.take_at(start + Duration::from_millis(600)));
    }
}
