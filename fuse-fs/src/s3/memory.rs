//! The mount's read-buffer budget (`--max-memory`).
//!
//! Every block of object data held in memory — fetched ahead of a reader,
//! awaited by one, or kept for a reader behind — holds a [`Reservation`] of
//! its bytes from the one [`MemoryLimiter`] of the mount. Read-ahead only
//! starts when it fits under the limit; the data a reader is blocked on is
//! reserved even past it (bounded by one read per reader), so a reader never
//! waits for memory held by another that stopped reading.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Accounts the bytes held by read buffers.
#[derive(Debug)]
pub struct MemoryLimiter {
    max: u64,
    used: AtomicU64,
    peak: AtomicU64,
    gauge: Option<prometheus_client::metrics::gauge::Gauge>,
}

impl MemoryLimiter {
    pub fn new(max: u64) -> Arc<Self> {
        Arc::new(Self {
            max,
            used: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            gauge: None,
        })
    }

    pub fn with_gauge(max: u64, gauge: prometheus_client::metrics::gauge::Gauge) -> Arc<Self> {
        Arc::new(Self {
            max,
            used: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            gauge: Some(gauge),
        })
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// Highest `used` seen so far.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }

    /// Reserves `n` bytes if they fit under the limit.
    pub fn try_reserve(self: &Arc<Self>, n: u64) -> Option<Reservation> {
        let mut cur = self.used.load(Ordering::SeqCst);
        loop {
            if cur + n > self.max {
                return None;
            }
            match self
                .used
                .compare_exchange(cur, cur + n, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return Some(self.reserved(cur + n, n)),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Reserves `n` bytes even past the limit: the data a reader waits for now.
    pub fn reserve_forced(self: &Arc<Self>, n: u64) -> Reservation {
        let now = self.used.fetch_add(n, Ordering::SeqCst) + n;
        self.reserved(now, n)
    }

    fn reserved(self: &Arc<Self>, now: u64, n: u64) -> Reservation {
        self.peak.fetch_max(now, Ordering::SeqCst);
        if let Some(g) = &self.gauge {
            g.set(now as i64);
        }
        Reservation {
            limiter: self.clone(),
            n,
        }
    }
}

/// Bytes held until dropped.
#[derive(Debug)]
pub struct Reservation {
    limiter: Arc<MemoryLimiter>,
    n: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let now = self.limiter.used.fetch_sub(self.n, Ordering::SeqCst) - self.n;
        if let Some(g) = &self.limiter.gauge {
            g.set(now as i64);
        }
    }
}
