//! Lock files with leases, for record updates and walk claims shared by
//! several controller replicas over NFS.
//!
//! `flock`/`fcntl` locks are unreliable on NFS and vanish or linger with the
//! client that held them; a lock file created with `O_EXCL` (atomic on NFSv3+)
//! that carries its own expiry works everywhere and cannot outlive a dead
//! replica by more than one lease. A live holder renews the lease; anyone may
//! break an expired one.
//!
//! Expiry times are read from a [`Clock`] (so tests can expire a lease
//! exactly); waiting for a busy lock uses the monotonic clock.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::clock::Clock;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("{path} is held by {holder} (waited {waited:?})")]
    Busy {
        path: String,
        holder: String,
        waited: Duration,
    },
    #[error("lock {path}: {source}")]
    Io { path: String, source: io::Error },
}

#[derive(Debug, Serialize, Deserialize)]
struct LeaseBody {
    owner: String,
    token: String,
    /// Seconds since the epoch.
    expires: f64,
}

fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn clock_secs(t: DateTime<Utc>) -> f64 {
    t.timestamp_micros() as f64 / 1e6
}

/// A held lock; released on drop.
#[derive(Debug)]
pub struct Lease {
    path: PathBuf,
    owner: String,
    token: String,
    length: Duration,
    clock: Arc<dyn Clock>,
    released: bool,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LeaseError + '_ {
    move |source| LeaseError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Who holds a lock file, and whether their lease ran out. A body that does
/// not parse (a holder crashed between create and write) expires with the
/// file's mtime.
fn inspect(path: &Path, length: Duration, clock: &dyn Clock) -> io::Result<(String, bool)> {
    let meta = fs::metadata(path)?;
    let text = fs::read_to_string(path).unwrap_or_default();
    let now = clock_secs(clock.now());
    match serde_json::from_str::<LeaseBody>(&text) {
        Ok(b) => Ok((b.owner, now > b.expires)),
        Err(_) => {
            let mtime = meta.modified().map(epoch_secs).unwrap_or(0.0);
            Ok(("<unknown>".into(), now > mtime + length.as_secs_f64()))
        }
    }
}

impl Lease {
    /// One attempt: `Ok(None)` if someone else holds a live lease.
    pub fn try_acquire(
        path: &Path,
        owner: &str,
        length: Duration,
        clock: &Arc<dyn Clock>,
    ) -> Result<Option<Lease>, LeaseError> {
        let token = format!("{:016x}", rand::random::<u64>());
        for _ in 0..3 {
            match OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(mut f) => {
                    let body = LeaseBody {
                        owner: owner.into(),
                        token: token.clone(),
                        expires: clock_secs(clock.now()) + length.as_secs_f64(),
                    };
                    f.write_all(serde_json::to_string(&body).unwrap_or_default().as_bytes())
                        .map_err(io_err(path))?;
                    return Ok(Some(Lease {
                        path: path.to_path_buf(),
                        owner: owner.into(),
                        token,
                        length,
                        clock: clock.clone(),
                        released: false,
                    }));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let (holder, expired) = match inspect(path, length, clock.as_ref()) {
                        Ok(x) => x,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(io_err(path)(e)),
                    };
                    if !expired {
                        return Ok(None);
                    }
                    // Break it: only one breaker's rename can succeed.
                    let aside = path.with_extension(format!("lock.broken-{token}"));
                    match fs::rename(path, &aside) {
                        Ok(()) => {
                            tracing::warn!(lock = %path.display(), %holder, "broke an expired lock");
                            let _ = fs::remove_file(&aside);
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io_err(path)(e)),
                    }
                }
                Err(e) => return Err(io_err(path)(e)),
            }
        }
        Ok(None)
    }

    /// Waits up to `wait` for the lock.
    pub fn acquire(
        path: &Path,
        owner: &str,
        length: Duration,
        wait: Duration,
        clock: &Arc<dyn Clock>,
    ) -> Result<Lease, LeaseError> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(2);
        loop {
            if let Some(l) = Self::try_acquire(path, owner, length, clock)? {
                return Ok(l);
            }
            if start.elapsed() >= wait {
                let holder = inspect(path, length, clock.as_ref())
                    .map(|h| h.0)
                    .unwrap_or_default();
                return Err(LeaseError::Busy {
                    path: path.display().to_string(),
                    holder,
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(pause + Duration::from_micros(rand::random::<u64>() % 2000));
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// Extends the lease; fails if the lock was broken and taken by another.
    pub fn renew(&mut self) -> Result<(), LeaseError> {
        self.check_ours()?;
        let body = LeaseBody {
            owner: self.owner.clone(),
            token: self.token.clone(),
            expires: clock_secs(self.clock.now()) + self.length.as_secs_f64(),
        };
        let tmp = self
            .path
            .with_extension(format!("lock.renew-{}", self.token));
        fs::write(&tmp, serde_json::to_string(&body).unwrap_or_default())
            .map_err(io_err(&self.path))?;
        fs::rename(&tmp, &self.path).map_err(io_err(&self.path))
    }

    fn check_ours(&self) -> Result<(), LeaseError> {
        let text = fs::read_to_string(&self.path).map_err(io_err(&self.path))?;
        match serde_json::from_str::<LeaseBody>(&text) {
            Ok(b) if b.token == self.token => Ok(()),
            Ok(b) => Err(LeaseError::Busy {
                path: self.path.display().to_string(),
                holder: b.owner,
                waited: Duration::ZERO,
            }),
            Err(e) => Err(io_err(&self.path)(io::Error::new(
                io::ErrorKind::InvalidData,
                e,
            ))),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn release_inner(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        match self.check_ours() {
            Ok(()) => {
                let _ = fs::remove_file(&self.path);
            }
            Err(e) => tracing::warn!(error = %e, "lock was taken from us (lease expired?)"),
        }
    }

    pub fn release(mut self) {
        self.release_inner();
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.release_inner();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{FakeClock, SystemClock};

    fn wall() -> Arc<dyn Clock> {
        Arc::new(SystemClock)
    }

    #[test]
    fn second_holder_waits_and_release_frees() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("quota.lock");
        let a = Lease::try_acquire(&p, "a", Duration::from_secs(60), &wall())
            .unwrap()
            .unwrap();
        assert!(
            Lease::try_acquire(&p, "b", Duration::from_secs(60), &wall())
                .unwrap()
                .is_none()
        );
        let e = Lease::acquire(
            &p,
            "b",
            Duration::from_secs(60),
            Duration::from_millis(50),
            &wall(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("held by a"), "{e}");
        a.release();
        assert!(!p.exists());
        assert!(
            Lease::try_acquire(&p, "b", Duration::from_secs(60), &wall())
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn a_dead_holders_lock_expires() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("quota.lock");
        // What a replica that died mid-walk leaves behind.
        fs::write(&p, r#"{"owner":"dead-pod","token":"1","expires":1000.0}"#).unwrap();
        let l = Lease::try_acquire(&p, "alive", Duration::from_secs(60), &wall())
            .unwrap()
            .unwrap();
        assert!(fs::read_to_string(&p).unwrap().contains("alive"));
        drop(l);
        // An empty body (crash between create and write) expires by mtime.
        fs::write(&p, "").unwrap();
        assert!(
            Lease::try_acquire(&p, "x", Duration::from_secs(60), &wall())
                .unwrap()
                .is_none()
        );
        assert!(Lease::try_acquire(&p, "x", Duration::ZERO, &wall())
            .unwrap()
            .is_some());
    }

    #[test]
    fn renew_fails_once_the_lock_was_taken() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("walk.lock");
        let mut a = Lease::try_acquire(&p, "a", Duration::from_secs(60), &wall())
            .unwrap()
            .unwrap();
        a.renew().unwrap();
        fs::write(&p, r#"{"owner":"b","token":"2","expires":9e12}"#).unwrap();
        assert!(a.renew().is_err());
        drop(a);
        // b's lock survives a's release.
        assert!(fs::read_to_string(&p).unwrap().contains("\"b\""));
    }

    /// A lock path in a fresh directory, and a fake clock (twice: to move
    /// it, and as the leases see it).
    fn on_fake_clock() -> (tempfile::TempDir, PathBuf, FakeClock, Arc<dyn Clock>) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("walk.lock");
        let fake = FakeClock::new(
            DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
        );
        let clock: Arc<dyn Clock> = Arc::new(fake.clone());
        (d, p, fake, clock)
    }

    #[test]
    fn a_live_lease_expires_exactly_after_its_length() {
        let (_d, p, fake, clock) = on_fake_clock();
        let held = Lease::try_acquire(&p, "a", Duration::from_secs(60), &clock)
            .unwrap()
            .unwrap();
        let body: LeaseBody = serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(body.expires, clock_secs(fake.now()) + 60.0);
        fake.advance(chrono::Duration::seconds(59));
        assert!(Lease::try_acquire(&p, "b", Duration::from_secs(60), &clock)
            .unwrap()
            .is_none());
        fake.advance(chrono::Duration::seconds(2));
        let taken = Lease::try_acquire(&p, "b", Duration::from_secs(60), &clock)
            .unwrap()
            .unwrap();
        assert!(fs::read_to_string(&p).unwrap().contains("\"b\""));
        // The old holder notices: its release leaves b's lock in place.
        drop(held);
        assert!(p.exists());
        drop(taken);
        assert!(!p.exists());
    }

    #[test]
    fn renewing_extends_the_lease_by_a_full_length_from_now() {
        let (_d, p, fake, clock) = on_fake_clock();
        let mut a = Lease::try_acquire(&p, "a", Duration::from_secs(60), &clock)
            .unwrap()
            .unwrap();
        fake.advance(chrono::Duration::seconds(50));
        a.renew().unwrap();
        // 100 s after taking it, 50 s after the renewal: still a's.
        fake.advance(chrono::Duration::seconds(50));
        assert!(Lease::try_acquire(&p, "b", Duration::from_secs(60), &clock)
            .unwrap()
            .is_none());
        fake.advance(chrono::Duration::seconds(11));
        let _b = Lease::try_acquire(&p, "b", Duration::from_secs(60), &clock)
            .unwrap()
            .unwrap();
        assert!(matches!(a.renew(), Err(LeaseError::Busy { .. })));
    }
}
