//! Time, behind a trait so the state machine and the graded policy (which count
//! days) can be tested without waiting days.

use chrono::{DateTime, Utc};

/// The controller's only source of "now".
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

#[cfg(any(test, feature = "test-util"))]
/// A clock that only moves when told to (tests; `test-util` feature).
#[derive(Debug, Clone)]
pub struct FakeClock {
    now: std::sync::Arc<parking_lot::Mutex<DateTime<Utc>>>,
}

#[cfg(any(test, feature = "test-util"))]
impl FakeClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: std::sync::Arc::new(parking_lot::Mutex::new(start)),
        }
    }

    /// Moves time forward (or backward with a negative duration).
    pub fn advance(&self, by: chrono::Duration) {
        *self.now.lock() += by;
    }

    pub fn set(&self, to: DateTime<Utc>) {
        *self.now.lock() = to;
    }
}

#[cfg(any(test, feature = "test-util"))]
impl Clock for FakeClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn fake_clock_moves_only_when_told() {
        let start = DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let c = FakeClock::new(start);
        assert_eq!(c.now(), start);
        c.advance(Duration::days(3));
        assert_eq!(c.now(), start + Duration::days(3));
        let shared = c.clone();
        shared.advance(Duration::hours(1));
        assert_eq!(c.now(), start + Duration::days(3) + Duration::hours(1));
    }
}
