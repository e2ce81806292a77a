//! Write-time usage accounting and enforcement for one home.
//!
//! The counters hold what the home stores (bytes charged and inodes) and are
//! changed by every operation that grows or shrinks it. Growth goes through a
//! reservation taken *before* the operation with a compare-and-swap against
//! the hard limit, so concurrent writers cannot jointly overshoot it: the
//! worst case is the rounding of one in-flight write. Shrinking is applied
//! unconditionally, so a user over quota can always clean up.
//!
//! The counters also know which [`Zone`] the home is in (under the warning
//! line, above it, full) and call the reporter's wake-up when that changes,
//! when growth is refused and when cleanup mode switches: the quota
//! controller hears of a crossing at once instead of at the next batch.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};

use parking_lot::RwLock;

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

/// Where usage stands against the limits (bytes or inodes, whichever is
/// further along). A change of zone is what the reporter sends at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Zone {
    /// Below the warning line (or no limit).
    Under = 0,
    /// At or above `warn_fraction` of a limit.
    Warning = 1,
    /// Full: less than 1 % of a limit left (but at least 1 MiB or one
    /// inode, and at most 5 %), so an ordinary write no longer fits.
    Full = 2,
}

impl Zone {
    /// The word in the `user.hubfs.usage` attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            Zone::Under => "under",
            Zone::Warning => "warning",
            Zone::Full => "full",
        }
    }

    /// The zone of `used` against `limit` (0 = unlimited); `slack_floor` is
    /// the least room left that still counts as not full.
    fn of(used: i64, limit: u64, warn_fraction: f64, slack_floor: u64) -> Zone {
        if limit == 0 {
            return Zone::Under;
        }
        let used = used.max(0) as u64;
        let slack = (limit / 100).max(slack_floor).min(limit / 20);
        if used >= limit - slack {
            Zone::Full
        } else if used as f64 >= warn_fraction * limit as f64 {
            Zone::Warning
        } else {
            Zone::Under
        }
    }
}

/// The wake-up called on a crossing (set by the reporter).
#[derive(Default)]
struct OnCrossing(RwLock<Option<Box<dyn Fn() + Send + Sync>>>);

impl std::fmt::Debug for OnCrossing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.read().is_some() {
            "OnCrossing(set)"
        } else {
            "OnCrossing(unset)"
        })
    }
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
    /// The last [`Zone`] seen, as a `u8`.
    zone: AtomicU8,
    on_crossing: OnCrossing,
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
            zone: AtomicU8::new(Zone::Under as u8),
            on_crossing: OnCrossing::default(),
        }
    }

    /// Sets what to call when the home crosses into another [`Zone`], growth
    /// is refused, or cleanup mode switches (the reporter's wake-up; it must
    /// not block: it runs inside filesystem operations). A later call
    /// replaces it.
    pub fn on_crossing(&self, wake: impl Fn() + Send + Sync + 'static) {
        *self.on_crossing.0.write() = Some(Box::new(wake));
    }

    fn wake(&self) {
        if let Some(w) = &*self.on_crossing.0.read() {
            w();
        }
    }

    /// The zone the counters are in now.
    pub fn zone(&self) -> Zone {
        let s = self.snapshot();
        let bytes = Zone::of(
            s.bytes,
            self.limit_bytes.load(Ordering::Relaxed),
            self.warn_fraction,
            1 << 20,
        );
        let inodes = Zone::of(
            s.inodes,
            self.limit_inodes.load(Ordering::Relaxed),
            self.warn_fraction,
            1,
        );
        bytes.max(inodes)
    }

    /// Recomputes the zone after a change; wakes the reporter if it moved.
    fn check_zone(&self) {
        let now = self.zone() as u8;
        if self.zone.swap(now, Ordering::AcqRel) != now {
            self.wake();
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
        self.check_zone();
    }

    /// Takes over the figures of the server this one replaces (a takeover):
    /// usage as it stood, nothing left to report.
    pub fn adopt(&self, s: Snapshot, baseline_known: bool, cleanup: bool) {
        self.bytes.store(s.bytes, Ordering::Release);
        self.inodes.store(s.inodes, Ordering::Release);
        self.baseline_known.store(baseline_known, Ordering::Release);
        self.cleanup.store(cleanup, Ordering::Release);
        self.zone.store(self.zone() as u8, Ordering::Release);
    }

    /// Cleanup (no-write) mode, switched by the quota controller (or by
    /// root by hand, which is reported at once).
    pub fn set_cleanup(&self, on: bool) {
        if self.cleanup.swap(on, Ordering::AcqRel) != on {
            self.wake();
        }
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
        // A refusal is news for the controller: the user just met the limit.
        if let Err(e) = reserve_one(&self.bytes, b, self.limit_bytes.load(Ordering::Relaxed)) {
            self.wake();
            return Err(e);
        }
        if let Err(e) = reserve_one(&self.inodes, i, self.limit_inodes.load(Ordering::Relaxed)) {
            self.bytes.fetch_sub(b, Ordering::AcqRel);
            self.wake();
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
        if bytes != 0 || inodes != 0 {
            self.check_zone();
        }
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
    fn zones_follow_the_warning_line_and_the_limit_both_ways() {
        let u = limited(100 << 20, 1000);
        let wakes = std::sync::Arc::new(AtomicU64::new(0));
        let w = wakes.clone();
        u.on_crossing(move || {
            w.fetch_add(1, Ordering::Relaxed);
        });
        let count = || wakes.load(Ordering::Relaxed);
        u.apply(50 << 20, 10);
        assert_eq!((u.zone(), count()), (Zone::Under, 0));
        u.apply(29 << 20, 10);
        assert_eq!((u.zone(), count()), (Zone::Under, 0), "79 MiB of 100");
        u.apply(1 << 20, 0);
        assert_eq!((u.zone(), count()), (Zone::Warning, 1), "80 %: the line");
        u.apply(5 << 20, 0);
        assert_eq!(count(), 1, "moving within a zone is no crossing");
        // Full: less than max(1 %, 1 MiB) left.
        let r = u.reserve(14 << 20, 0).unwrap();
        u.settle(r, 14 << 20, 0);
        assert_eq!((u.zone(), count()), (Zone::Full, 2));
        // A refusal wakes the reporter even without a change of zone.
        assert_eq!(u.reserve(2 << 20, 0), Err(QuotaError::OverLimit));
        assert_eq!(count(), 3);
        u.apply(-(30 << 20), 0);
        assert_eq!((u.zone(), count()), (Zone::Under, 4), "back under both");
        // Inodes cross too; the further of the two counts.
        u.apply(0, 780);
        assert_eq!((u.zone(), count()), (Zone::Warning, 5));
        u.apply(0, 199);
        assert_eq!((u.zone(), count()), (Zone::Full, 6), "one inode left");
        // Cleanup mode switching wakes it; setting it again does not.
        u.set_cleanup(true);
        u.set_cleanup(true);
        assert_eq!(count(), 7);
    }

    #[test]
    fn unlimited_homes_never_cross() {
        let u = UsageCounters::new(Limits::default());
        let wakes = std::sync::Arc::new(AtomicU64::new(0));
        let w = wakes.clone();
        u.on_crossing(move || {
            w.fetch_add(1, Ordering::Relaxed);
        });
        u.apply(i64::MAX / 2, 1 << 40);
        assert_eq!((u.zone(), wakes.load(Ordering::Relaxed)), (Zone::Under, 0));
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
