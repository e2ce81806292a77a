//! Write-time usage accounting and enforcement for one home.
//!
//! The counters hold what the home stores (bytes charged and inodes) and are
//! changed by every operation that grows or shrinks it. Growth goes through a
//! reservation taken *before* the operation with a compare-and-swap against
//! the hard limit, so concurrent writers cannot jointly overshoot it: the
//! worst case is the rounding of one in-flight write. Shrinking is applied
//! unconditionally, so a user over quota can always clean up.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

/// Limits of one home. `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub bytes: Option<u64>,
    pub inodes: Option<u64>,
    /// Soft limit as a fraction of the hard one; crossing it is only reported.
    pub warn_fraction: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            bytes: None,
            inodes: None,
            warn_fraction: 0.8,
        }
    }
}

/// Why a growing operation was refused. Both map to EDQUOT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error("disk quota exceeded")]
    OverLimit,
    #[error("home is in cleanup mode: only deletes and truncates are allowed")]
    Cleanup,
}

/// Growth granted ahead of an operation; settled with what really happened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use = "a reservation must be settled or released"]
pub struct Reservation {
    bytes: i64,
    inodes: i64,
}

/// A point-in-time copy of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub bytes: i64,
    pub inodes: i64,
}

/// The counters of one mounted home.
#[derive(Debug)]
pub struct UsageCounters {
    bytes: AtomicI64,
    inodes: AtomicI64,
    /// Write-time changes not yet taken by the reporter.
    delta_bytes: AtomicI64,
    delta_inodes: AtomicI64,
    /// 0 = unlimited.
    limit_bytes: AtomicU64,
    limit_inodes: AtomicU64,
    warn_fraction: f64,
    cleanup: AtomicBool,
    baseline_known: AtomicBool,
}

fn enc(l: Option<u64>) -> u64 {
    l.unwrap_or(0)
}

fn dec(v: u64) -> Option<u64> {
    (v != 0).then_some(v)
}

impl UsageCounters {
    pub fn new(limits: Limits) -> Self {
        UsageCounters {
            bytes: AtomicI64::new(0),
            inodes: AtomicI64::new(0),
            delta_bytes: AtomicI64::new(0),
            delta_inodes: AtomicI64::new(0),
            limit_bytes: AtomicU64::new(enc(limits.bytes)),
            limit_inodes: AtomicU64::new(enc(limits.inodes)),
            warn_fraction: limits.warn_fraction,
            cleanup: AtomicBool::new(false),
            baseline_known: AtomicBool::new(false),
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            bytes: dec(self.limit_bytes.load(Ordering::Relaxed)),
            inodes: dec(self.limit_inodes.load(Ordering::Relaxed)),
            warn_fraction: self.warn_fraction,
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            bytes: self.bytes.load(Ordering::Acquire),
            inodes: self.inodes.load(Ordering::Acquire),
        }
    }

    /// True once the mount-time walk has been added in.
    pub fn baseline_known(&self) -> bool {
        self.baseline_known.load(Ordering::Acquire)
    }

    /// Adds the mount-time walk. Changes made while the walk ran are already
    /// in the counters, so this adds rather than overwrites.
    pub fn add_baseline(&self, bytes: u64, inodes: u64) {
        self.bytes.fetch_add(bytes as i64, Ordering::AcqRel);
        self.inodes.fetch_add(inodes as i64, Ordering::AcqRel);
        self.baseline_known.store(true, Ordering::Release);
    }

    /// Takes over the figures of the server this one replaces (a takeover):
    /// usage as it stood, nothing left to report.
    pub fn adopt(&self, s: Snapshot, baseline_known: bool, cleanup: bool) {
        self.bytes.store(s.bytes, Ordering::Release);
        self.inodes.store(s.inodes, Ordering::Release);
        self.baseline_known.store(baseline_known, Ordering::Release);
        self.cleanup.store(cleanup, Ordering::Release);
    }

    /// Cleanup (no-write) mode, switched by the quota controller.
    pub fn set_cleanup(&self, on: bool) {
        self.cleanup.store(on, Ordering::Release);
    }

    pub fn cleanup(&self) -> bool {
        self.cleanup.load(Ordering::Acquire)
    }

    /// Above the soft limit (warn fraction of the hard limit)?
    pub fn over_soft_limit(&self) -> bool {
        match self.limits().bytes {
            Some(l) => self.bytes.load(Ordering::Relaxed) as f64 > l as f64 * self.warn_fraction,
            None => false,
        }
    }

    /// Reserves growth of `bytes` and `inodes` or refuses it.
    pub fn reserve(&self, bytes: u64, inodes: u64) -> Result<Reservation, QuotaError> {
        if bytes == 0 && inodes == 0 {
            return Ok(Reservation::default());
        }
        if self.cleanup() {
            return Err(QuotaError::Cleanup);
        }
        let (b, i) = (
            bytes.min(i64::MAX as u64) as i64,
            inodes.min(i64::MAX as u64) as i64,
        );
        reserve_one(&self.bytes, b, self.limit_bytes.load(Ordering::Relaxed))?;
        if let Err(e) = reserve_one(&self.inodes, i, self.limit_inodes.load(Ordering::Relaxed)) {
            self.bytes.fetch_sub(b, Ordering::AcqRel);
            return Err(e);
        }
        Ok(Reservation {
            bytes: b,
            inodes: i,
        })
    }

    /// Replaces a reservation by the change that really happened.
    pub fn settle(&self, r: Reservation, bytes: i64, inodes: i64) {
        self.bytes.fetch_add(bytes - r.bytes, Ordering::AcqRel);
        self.inodes.fetch_add(inodes - r.inodes, Ordering::AcqRel);
        self.delta_bytes.fetch_add(bytes, Ordering::AcqRel);
        self.delta_inodes.fetch_add(inodes, Ordering::AcqRel);
    }

    /// The operation failed: nothing changed.
    pub fn release(&self, r: Reservation) {
        self.settle(r, 0, 0);
    }

    /// Applies a change that needs no permission (deletes, shrinking).
    pub fn apply(&self, bytes: i64, inodes: i64) {
        self.settle(Reservation::default(), bytes, inodes);
    }

    /// Takes the write-time change accumulated since the last call.
    pub fn take_delta(&self) -> Snapshot {
        Snapshot {
            bytes: self.delta_bytes.swap(0, Ordering::AcqRel),
            inodes: self.delta_inodes.swap(0, Ordering::AcqRel),
        }
    }

    /// Gives back a delta the reporter could not deliver.
    pub fn restore_delta(&self, d: Snapshot) {
        self.delta_bytes.fetch_add(d.bytes, Ordering::AcqRel);
        self.delta_inodes.fetch_add(d.inodes, Ordering::AcqRel);
    }
}

fn reserve_one(counter: &AtomicI64, amount: i64, limit: u64) -> Result<(), QuotaError> {
    if amount == 0 {
        return Ok(());
    }
    if limit == 0 {
        counter.fetch_add(amount, Ordering::AcqRel);
        return Ok(());
    }
    let limit = limit.min(i64::MAX as u64) as i64;
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
            cur.checked_add(amount).filter(|n| *n <= limit)
        })
        .map(|_| ())
        .map_err(|_| QuotaError::OverLimit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(bytes: u64, inodes: u64) -> UsageCounters {
        UsageCounters::new(Limits {
            bytes: Some(bytes),
            inodes: Some(inodes),
            ..Limits::default()
        })
    }

    #[test]
    fn growth_past_the_hard_limit_is_refused_and_shrinking_always_works() {
        let u = limited(100, 10);
        let r = u.reserve(60, 1).unwrap();
        u.settle(r, 60, 1);
        assert_eq!(u.reserve(41, 0), Err(QuotaError::OverLimit));
        let r = u.reserve(40, 0).unwrap();
        u.settle(r, 40, 0);
        assert_eq!(
            u.snapshot(),
            Snapshot {
                bytes: 100,
                inodes: 1
            }
        );
        u.apply(-100, -1);
        assert_eq!(u.snapshot(), Snapshot::default());
    }

    #[test]
    fn a_refused_inode_gives_back_its_bytes() {
        let u = limited(100, 1);
        let r = u.reserve(0, 1).unwrap();
        u.settle(r, 0, 1);
        assert_eq!(u.reserve(10, 1), Err(QuotaError::OverLimit));
        assert_eq!(
            u.snapshot(),
            Snapshot {
                bytes: 0,
                inodes: 1
            }
        );
    }

    #[test]
    fn settle_corrects_a_reservation_and_release_undoes_it() {
        let u = limited(100, 10);
        let r = u.reserve(50, 0).unwrap();
        u.settle(r, 20, 0);
        let r = u.reserve(50, 0).unwrap();
        u.release(r);
        assert_eq!(u.snapshot().bytes, 20);
        assert_eq!(
            u.take_delta(),
            Snapshot {
                bytes: 20,
                inodes: 0
            }
        );
        assert_eq!(u.take_delta(), Snapshot::default());
    }

    #[test]
    fn cleanup_mode_refuses_growth_only() {
        let u = UsageCounters::new(Limits::default());
        u.apply(500, 5);
        u.set_cleanup(true);
        assert_eq!(u.reserve(1, 0), Err(QuotaError::Cleanup));
        assert_eq!(u.reserve(0, 1), Err(QuotaError::Cleanup));
        assert!(u.reserve(0, 0).is_ok());
        u.apply(-100, -1);
        u.set_cleanup(false);
        assert!(u.reserve(1, 1).is_ok());
    }

    #[test]
    fn baseline_adds_to_changes_made_during_the_walk() {
        let u = UsageCounters::new(Limits::default());
        u.apply(10, 1);
        assert!(!u.baseline_known());
        u.add_baseline(1000, 20);
        assert!(u.baseline_known());
        assert_eq!(
            u.snapshot(),
            Snapshot {
                bytes: 1010,
                inodes: 21
            }
        );
        // the baseline is reported as an absolute figure, not as a delta
        assert_eq!(
            u.take_delta(),
            Snapshot {
                bytes: 10,
                inodes: 1
            }
        );
    }

    #[test]
    fn concurrent_writers_never_pass_the_limit() {
        let u = std::sync::Arc::new(limited(10_000, 0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let u = u.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        if let Ok(r) = u.reserve(7, 0) {
                            u.settle(r, 7, 0);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let b = u.snapshot().bytes;
        assert!(b <= 10_000 && b > 10_000 - 7, "{b}");
    }

    #[test]
    fn soft_limit_is_a_fraction_of_the_hard_one() {
        let u = limited(1000, 0);
        u.apply(800, 0);
        assert!(!u.over_soft_limit());
        u.apply(1, 0);
        assert!(u.over_soft_limit());
    }
}
