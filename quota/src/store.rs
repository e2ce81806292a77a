//! The record store: one `quota.yaml` per user under the control directory,
//! efs-quota's "poor man's database", shared by controller replicas.
//!
//! Every change is a read-modify-write under the user's lease lock, written to
//! a temporary file, fsynced and renamed over the old one, so readers (the
//! HTTP API, `check-quota` through the read-only mount) never see half a
//! record. A record that does not parse is never overwritten: it is renamed to
//! `quota.yaml.corrupt-<time>` for an admin and replaced by one in state
//! `error`, which enforces nothing.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::RwLock;

use crate::clock::Clock;
use crate::lease::{Lease, LeaseError};
use crate::record::{QuotaRecord, RecordError};
use crate::userkey::UserKey;

pub const RECORD_FILE: &str = "quota.yaml";
pub const LOCK_FILE: &str = "quota.lock";
pub const WALK_LOCK_FILE: &str = "walk.lock";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("user name {user:?} cannot name a record: {why}")]
    BadUser { user: String, why: String },
    #[error("record {path} is corrupt: {source}")]
    Corrupt { path: String, source: RecordError },
    #[error("record {path} belongs to {found:?}, not {wanted:?}")]
    UserMismatch {
        path: String,
        found: String,
        wanted: String,
    },
    #[error("record {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error(transparent)]
    Lock(#[from] LeaseError),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What `scan` found in one user directory.
#[derive(Debug)]
pub enum Scanned {
    Record(Box<QuotaRecord>),
    Bad { dir: PathBuf, error: StoreError },
}

/// The result of an update.
#[derive(Debug, Clone)]
pub struct Updated {
    pub record: QuotaRecord,
    pub created: bool,
    /// Where a corrupt predecessor was kept.
    pub quarantined: Option<PathBuf>,
    pub written: bool,
}

#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    owner: String,
    lease: Duration,
    wait: Duration,
    /// Lease expiry and the time stamp of a corrupt record kept aside.
    clock: Arc<dyn Clock>,
    /// user → directory, for efs-quota deployments whose directory names are not
    /// our encoding. Filled by `scan`.
    index: RwLock<HashMap<String, PathBuf>>,
}

impl Store {
    pub fn open(
        dir: &Path,
        owner: &str,
        lease: Duration,
        wait: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            owner: owner.to_string(),
            lease,
            wait,
            clock,
            index: RwLock::new(HashMap::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The clock leases and record times are read from.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The directory holding a user's record.
    pub fn user_dir(&self, user: &str) -> Result<PathBuf, StoreError> {
        if let Some(d) = self.index.read().get(user) {
            return Ok(d.clone());
        }
        let key = UserKey::new(user).map_err(|e| StoreError::BadUser {
            user: user.into(),
            why: e.to_string(),
        })?;
        Ok(self.dir.join(key.encoded()))
    }

    /// Reads a record without locking (writes are atomic renames).
    pub fn load(&self, user: &str) -> Result<Option<QuotaRecord>, StoreError> {
        let path = self.user_dir(user)?.join(RECORD_FILE);
        match read_record(&path)? {
            None => Ok(None),
            Some(r) if r.user != user => Err(StoreError::UserMismatch {
                path: path.display().to_string(),
                found: r.user,
                wanted: user.into(),
            }),
            Some(r) => Ok(Some(r)),
        }
    }

    /// Every `*/quota.yaml`, trusting the `user` field inside.
    pub fn scan(&self) -> Result<Vec<Scanned>, StoreError> {
        let mut out = Vec::new();
        let mut index = HashMap::new();
        for entry in fs::read_dir(&self.dir).map_err(io_at(&self.dir))? {
            let entry = entry.map_err(io_at(&self.dir))?;
            let dir = entry.path();
            if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            match read_record(&dir.join(RECORD_FILE)) {
                Ok(None) => {}
                Ok(Some(r)) => {
                    index.insert(r.user.clone(), dir);
                    out.push(Scanned::Record(Box::new(r)));
                }
                Err(error) => out.push(Scanned::Bad { dir, error }),
            }
        }
        // Our own encoding wins when a user appears twice.
        for (user, dir) in index.iter_mut() {
            if let Ok(k) = UserKey::new(user) {
                let ours = self.dir.join(k.encoded());
                if ours.join(RECORD_FILE).exists() {
                    *dir = ours;
                }
            }
        }
        *self.index.write() = index;
        Ok(out)
    }

    /// Read-modify-write of one user's record under the lock. `init` makes a
    /// record for a user without one; `change` returns whether it changed.
    pub fn update(
        &self,
        user: &str,
        init: impl FnOnce() -> QuotaRecord,
        change: impl FnOnce(&mut QuotaRecord) -> bool,
    ) -> Result<Updated, StoreError> {
        let dir = self.user_dir(user)?;
        fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        let _lock = self.lock(&dir)?;
        let path = dir.join(RECORD_FILE);
        let mut created = false;
        let mut quarantined = None;
        let mut rec = match read_record(&path) {
            Ok(Some(r)) if r.user == user => r,
            Ok(Some(r)) => {
                return Err(StoreError::UserMismatch {
                    path: path.display().to_string(),
                    found: r.user,
                    wanted: user.into(),
                })
            }
            Ok(None) => {
                created = true;
                init()
            }
            Err(StoreError::Corrupt { source, .. }) => {
                let aside = quarantine(&path, self.clock.now())?;
                let mut r = init();
                r.error = Some(corrupt_note(&source, &aside));
                r.quota_state = crate::record::QuotaState::Error;
                quarantined = Some(aside);
                r
            }
            Err(e) => return Err(e),
        };
        let changed = change(&mut rec);
        let written = changed || created || quarantined.is_some();
        if written {
            write_atomic(&path, rec.to_yaml().as_bytes())?;
        }
        self.index.write().insert(user.to_string(), dir);
        Ok(Updated {
            record: rec,
            created,
            quarantined,
            written,
        })
    }

    /// Keeps a corrupt record found by `scan` aside. When the directory name
    /// decodes to a user, a record in state `error` takes its place so the
    /// user is visible (and not punished); otherwise only the file moves.
    pub fn quarantine_dir(
        &self,
        dir: &Path,
        init: impl FnOnce(&str) -> QuotaRecord,
    ) -> Result<Option<(Option<String>, PathBuf)>, StoreError> {
        let _lock = self.lock(dir)?;
        let path = dir.join(RECORD_FILE);
        let source = match read_record(&path) {
            Err(StoreError::Corrupt { source, .. }) => source,
            // Fixed or removed meanwhile, or unreadable (left in place).
            _ => return Ok(None),
        };
        let aside = quarantine(&path, self.clock.now())?;
        let user = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| UserKey::decode(n).ok())
            .map(|k| k.name().to_string());
        if let Some(u) = &user {
            let mut r = init(u);
            r.error = Some(corrupt_note(&source, &aside));
            r.quota_state = crate::record::QuotaState::Error;
            write_atomic(&path, r.to_yaml().as_bytes())?;
            self.index.write().insert(u.clone(), dir.to_path_buf());
        }
        Ok(Some((user, aside)))
    }

    /// Claims the walk of a user's home for this replica; `None` if another
    /// replica is walking it now.
    pub fn claim_walk(&self, user: &str) -> Result<Option<Lease>, StoreError> {
        let dir = self.user_dir(user)?;
        fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        Ok(Lease::try_acquire(
            &dir.join(WALK_LOCK_FILE),
            &self.owner,
            self.lease,
            &self.clock,
        )?)
    }

    /// Takes the record lock of a user directory, waiting up to `wait`.
    fn lock(&self, dir: &Path) -> Result<Lease, StoreError> {
        Ok(Lease::acquire(
            &dir.join(LOCK_FILE),
            &self.owner,
            self.lease,
            self.wait,
            &self.clock,
        )?)
    }
}

fn corrupt_note(source: &RecordError, aside: &Path) -> String {
    format!(
        "the previous record was unreadable ({source}) and was kept as {}; nothing is enforced until an admin checks it and removes this line",
        aside.display()
    )
}

fn read_record(path: &Path) -> Result<Option<QuotaRecord>, StoreError> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_at(path)(e)),
    };
    let text = String::from_utf8(text).map_err(|e| StoreError::Corrupt {
        path: path.display().to_string(),
        source: RecordError::Parse(format!("not UTF-8: {e}")),
    })?;
    QuotaRecord::from_yaml(&text)
        .map(Some)
        .map_err(|source| StoreError::Corrupt {
            path: path.display().to_string(),
            source,
        })
}

fn quarantine(path: &Path, now: DateTime<Utc>) -> Result<PathBuf, StoreError> {
    let stamp = now.format("%Y%m%dT%H%M%S%.6fZ");
    let aside = path.with_file_name(format!("{RECORD_FILE}.corrupt-{stamp}"));
    fs::rename(path, &aside).map_err(io_at(path))?;
    tracing::error!(record = %path.display(), kept = %aside.display(), "corrupt quota record kept aside");
    Ok(aside)
}

/// temp file + fsync + rename + fsync of the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{:016x}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("record"),
        rand::random::<u64>()
    ));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_at(path))
}

/// The capacity the CSI controller provisioned for a user's volume
/// (`<users-dir>/.hubfs/<encoded>.json`, `capacity_bytes`), if any.
/// The PVC the CSI controller recorded for `user` (name, namespace), so quota
/// Events land where `kubectl describe pvc` shows them.
pub fn provisioned_pvc(users_dir: &Path, user: &str) -> Option<(String, String)> {
    let path = crate::identity::meta_file(users_dir, user)?;
    let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(path).ok()?).ok()?;
    Some((
        v.get("pvc_name")?.as_str()?.to_owned(),
        v.get("pvc_namespace")?.as_str()?.to_owned(),
    ))
}

pub fn provisioned_quota(users_dir: &Path, user: &str) -> Option<i64> {
    let path = crate::identity::meta_file(users_dir, user)?;
    let text = fs::read_to_string(&path).ok()?;
    let v: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "unreadable provisioned-volume file ignored");
            return None;
        }
    };
    v.get("capacity_bytes")
        .and_then(|c| c.as_i64())
        .filter(|c| *c > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{FakeClock, SystemClock};
    use crate::config::Defaults;
    use crate::record::QuotaState;

    /// The EFS quota monitor's example record (the shared fixture).
    const EFS_QUOTA_EXAMPLE: &str = include_str!("../tests/fixtures/efs-quota-example.yaml");

    fn store(dir: &Path) -> Store {
        store_with_clock(dir, Arc::new(SystemClock))
    }

    fn store_with_clock(dir: &Path, clock: Arc<dyn Clock>) -> Store {
        Store::open(
            dir,
            "test",
            Duration::from_secs(60),
            Duration::from_secs(20),
            clock,
        )
        .unwrap()
    }

    fn init(u: &str) -> QuotaRecord {
        QuotaRecord::new(u, &Defaults::default())
    }

    #[test]
    fn efs_quota_deployment_directory_loads_by_user_field() {
        let d = tempfile::tempdir().unwrap();
        // efs-quota's own encoding, not ours: trust the user field inside.
        fs::create_dir_all(d.path().join("efs-quota-style-jmiller")).unwrap();
        fs::write(
            d.path().join("efs-quota-style-jmiller/quota.yaml"),
            EFS_QUOTA_EXAMPLE,
        )
        .unwrap();
        let s = store(d.path());
        let found = s.scan().unwrap();
        assert_eq!(found.len(), 1);
        let Scanned::Record(r) = &found[0] else {
            panic!("{found:?}")
        };
        assert_eq!(r.user, "jmiller@stsci.edu");
        assert_eq!(r.actual_bytes, 2469232);
        let r = s.load("jmiller@stsci.edu").unwrap().unwrap();
        assert_eq!(r.reaper_time.to_string(), "2022-08-15T20:52:58.469571");
        // Updates go to the same file.
        s.update(
            "jmiller@stsci.edu",
            || init("x"),
            |r| {
                r.actual_bytes = 5;
                true
            },
        )
        .unwrap();
        let text = fs::read_to_string(d.path().join("efs-quota-style-jmiller/quota.yaml")).unwrap();
        assert!(text.contains("actual_bytes: 5"), "{text}");
        assert!(text.contains("user: jmiller@stsci.edu"));
    }

    #[test]
    fn corrupt_record_is_kept_aside_and_user_is_not_punished() {
        let d = tempfile::tempdir().unwrap();
        let at = DateTime::parse_from_rfc3339("2026-11-22T10:04:05.25Z")
            .unwrap()
            .with_timezone(&Utc);
        let s = store_with_clock(d.path(), Arc::new(FakeClock::new(at)));
        let dir = s.user_dir("ada").unwrap();
        fs::create_dir_all(&dir).unwrap();
        let garbage = "actual_bytes: [oops\nuser: ada\n";
        fs::write(dir.join(RECORD_FILE), garbage).unwrap();
        assert!(matches!(s.load("ada"), Err(StoreError::Corrupt { .. })));
        let u = s
            .update(
                "ada",
                || init("ada"),
                |r| {
                    r.actual_bytes = 999 << 30;
                    true
                },
            )
            .unwrap();
        let aside = u.quarantined.unwrap();
        assert_eq!(fs::read_to_string(&aside).unwrap(), garbage);
        assert_eq!(
            aside.file_name().unwrap(),
            "quota.yaml.corrupt-20261122T100405.250000Z"
        );
        assert_eq!(u.record.quota_state, QuotaState::Error);
        assert!(u.record.error.as_deref().unwrap().contains("kept as"));
        // The error survives the next update until an admin clears it.
        let again = s.update("ada", || init("ada"), |_| true).unwrap();
        assert!(again.record.error.is_some());
        assert!(again.quarantined.is_none());
    }

    #[test]
    fn scan_quarantines_corrupt_records_it_can_name() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        let dir = s.user_dir("bob").unwrap();
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(RECORD_FILE), b"\xff\xfe\x00binary").unwrap();
        let found = s.scan().unwrap();
        let Scanned::Bad { dir: bad, error } = &found[0] else {
            panic!()
        };
        assert!(error.to_string().contains("UTF-8"));
        let (user, aside) = s.quarantine_dir(bad, init).unwrap().unwrap();
        assert_eq!(user.as_deref(), Some("bob"));
        assert!(aside.exists());
        assert_eq!(
            s.load("bob").unwrap().unwrap().quota_state,
            QuotaState::Error
        );
    }

    #[test]
    fn provisioned_capacity_is_read() {
        let d = tempfile::tempdir().unwrap();
        let key = UserKey::new("ada@example.org").unwrap();
        fs::create_dir_all(d.path().join(".hubfs")).unwrap();
        fs::write(
            d.path()
                .join(".hubfs")
                .join(format!("{}.json", key.encoded())),
            r#"{"volume_name":"pvc-1","user":"ada@example.org","capacity_bytes":10737418240}"#,
        )
        .unwrap();
        assert_eq!(
            provisioned_quota(d.path(), "ada@example.org"),
            Some(10 << 30)
        );
        assert_eq!(provisioned_quota(d.path(), "bob"), None);
    }

    /// Set in the two child processes of `two_processes_never_lose_an_update`.
    const CHILD_DIR_ENV: &str = "HUBFS_STORE_CHILD_DIR";

    /// Two processes (this test binary, run again with `--exact` on this
    /// test and [`CHILD_DIR_ENV`] set, which makes it a writer) add 1 to the
    /// same record 150 times each while this one reads: every update lands
    /// and no read sees a torn record.
    #[test]
    fn two_processes_never_lose_an_update() {
        if let Ok(dir) = std::env::var(CHILD_DIR_ENV) {
            let s = store(Path::new(&dir));
            for _ in 0..150 {
                s.update(
                    "shared",
                    || init("shared"),
                    |r| {
                        r.actual_bytes = r.actual_bytes.max(0) + 1;
                        true
                    },
                )
                .unwrap();
            }
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let spawn = || {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "store::tests::two_processes_never_lose_an_update",
                    "--test-threads=1",
                ])
                .env(CHILD_DIR_ENV, d.path())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        };
        let (mut a, mut b) = (spawn(), spawn());
        // This process reads while they write: never a torn record.
        let s = store(d.path());
        let mut reads = 0;
        while reads < 2000 {
            if let Ok(Some(r)) = s.load("shared") {
                assert!(r.actual_bytes >= 1);
            }
            reads += 1;
            if a.try_wait().unwrap().is_some() && b.try_wait().unwrap().is_some() {
                break;
            }
        }
        assert!(a.wait().unwrap().success());
        assert!(b.wait().unwrap().success());
        assert_eq!(s.load("shared").unwrap().unwrap().actual_bytes, 300);
        let dir = s.user_dir("shared").unwrap();
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != RECORD_FILE)
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
