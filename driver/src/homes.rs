//! Home directories on a share: creating, describing, archiving, deleting.
//!
//! Next to the homes (`<share>/<basePath>/<encoded user>`) the driver keeps a
//! small JSON description per user in `<share>/<basePath>/.hubfs/` holding the
//! PV name and the provisioned quota. It lives outside the home so the user
//! cannot edit it, on the share so every node and the quota controller read
//! the same value, and its name can never collide with a home because encoded
//! user names never start with a dot.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use hubfs_quota::UserKey;

use crate::error::{DriverError, Result};
use crate::volume::HomeVolume;

/// Directory of per-user descriptions below a users dir.
pub use hubfs_quota::identity::META_DIR;

/// What the controller recorded about a provisioned home.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HomeMeta {
    /// The CSI volume name (PV name) that provisioned it last.
    pub volume_name: String,
    /// The user name (decoded).
    pub user: String,
    /// The provisioned quota: the PVC capacity.
    pub capacity_bytes: u64,
    /// Optional inode limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inode_quota: Option<u64>,
    /// The PVC (from external-provisioner's `--extra-create-metadata`), so the
    /// quota controller can post its Events where `kubectl describe pvc` shows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc_namespace: Option<String>,
    /// How `user` was learnt (`annotation`: the real hub name; `pvc-name`
    /// or `volume-name`: a slug, as before hubfs read the annotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_from: Option<String>,
    /// When the directory was first created (RFC 3339).
    pub created: String,
    /// When this description was last written (RFC 3339).
    pub updated: String,
}

/// Path of the description of `vol` below a share root.
pub fn meta_path(vol: &HomeVolume, share_root: &Path) -> PathBuf {
    vol.users_dir(share_root)
        .join(META_DIR)
        .join(format!("{}.json", vol.user.encoded()))
}

/// Reads the description, `None` if there is none.
pub fn read_meta(vol: &HomeVolume, share_root: &Path) -> Result<Option<HomeMeta>> {
    let p = meta_path(vol, share_root);
    match std::fs::read(&p) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            DriverError::FailedPrecondition(format!(
                "home description {} is corrupt ({e}); fix or remove it",
                p.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DriverError::io("read", p, e)),
    }
}

/// Writes the description atomically (temp file, fsync, rename), so a crash
/// leaves either the old or the new one, never half of each.
pub fn write_meta(vol: &HomeVolume, share_root: &Path, meta: &HomeMeta) -> Result<()> {
    let p = meta_path(vol, share_root);
    let dir = p.parent().expect("meta path has a parent");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| DriverError::io("create", dir, e))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        vol.user.encoded(),
        std::process::id()
    ));
    let body = serde_json::to_vec_pretty(meta).expect("meta serializes");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &p)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        DriverError::io("write", &p, e)
    })
}

/// What [`adopt_legacy`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Adopted {
    /// No home under a legacy name.
    Nothing,
    /// The legacy home was renamed to the user's own name.
    Renamed { from: PathBuf },
    /// Homes exist under both names: nothing is moved, an admin decides.
    Both { legacy: PathBuf },
}

/// Whether the description beside a directory says it is a hub user's own
/// home (provisioned from an annotation), which is never taken for another's
/// legacy name even if the names collide (hub user `a-2eb` vs `a.b`).
fn is_own_home_of_someone(users_dir: &Path, encoded: &str, user: &str) -> bool {
    let p = users_dir.join(META_DIR).join(format!("{encoded}.json"));
    let Ok(bytes) = std::fs::read(&p) else {
        return false;
    };
    match serde_json::from_slice::<HomeMeta>(&bytes) {
        Ok(m) => m.user_from.as_deref() == Some("annotation") && m.user != user,
        Err(_) => true, // unreadable: do not touch
    }
}

/// Adopts a home made under a legacy name (KubeSpawner's slug of the user,
/// as hubfs keyed homes before it read the annotation, or the static-PVC EFS setup's
/// `subPath: home/{username}`): when the user's own directory does not exist
/// and exactly one candidate does, it is renamed to the user's own name (one
/// `rename(2)` on the share: nothing copied, nothing lost) together with its
/// description. `candidates` come first to last in order of preference.
pub fn adopt_legacy(vol: &HomeVolume, share_root: &Path, candidates: &[String]) -> Result<Adopted> {
    let users = vol.users_dir(share_root);
    let own = vol.home_dir(share_root);
    let found: Vec<(String, PathBuf)> = candidates
        .iter()
        .filter_map(|c| UserKey::new(c).ok())
        .map(|k| k.encoded().to_owned())
        .filter(|e| e != vol.user.encoded())
        .filter(|e| !is_own_home_of_someone(&users, e, vol.user.name()))
        .map(|e| {
            let p = users.join(&e);
            (e, p)
        })
        .filter(|(_, p)| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()))
        .collect();
    let Some((encoded, legacy)) = found.into_iter().next() else {
        return Ok(Adopted::Nothing);
    };
    if std::fs::symlink_metadata(&own).is_ok() {
        tracing::warn!(user = %vol.user, home = %own.display(), legacy = %legacy.display(),
            "the user has a home under both names; the legacy one is left alone (see docs/migration.md)");
        return Ok(Adopted::Both { legacy });
    }
    std::fs::rename(&legacy, &own).map_err(|e| DriverError::io("adopt", &legacy, e))?;
    let meta_dir = users.join(META_DIR);
    let old_meta = meta_dir.join(format!("{encoded}.json"));
    if old_meta.exists() {
        let aside = meta_dir.join(format!("{encoded}.json.adopted-by-{}", vol.user.encoded()));
        if let Err(e) = std::fs::rename(&old_meta, &aside) {
            tracing::warn!(file = %old_meta.display(), error = %e, "legacy description not moved aside");
        }
    }
    tracing::info!(user = %vol.user, from = %legacy.display(), to = %own.display(), "legacy home adopted");
    Ok(Adopted::Renamed { from: legacy })
}

/// Creates the user's home if missing, owned by `uid:gid` with `mode`.
/// Returns whether it was created. An existing entry that is not a real
/// directory (a symlink planted by someone) is refused, not followed.
pub fn ensure_home(home: &Path, uid: u32, gid: u32, mode: u32) -> Result<bool> {
    match std::fs::symlink_metadata(home) {
        Ok(m) if m.is_dir() => return Ok(false),
        Ok(_) => {
            return Err(DriverError::FailedPrecondition(format!(
                "{} exists but is not a directory; refusing to use it as a home",
                home.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(DriverError::io("stat", home, e)),
    }
    let parent = home.parent().expect("home has a parent");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(parent)
        .map_err(|e| DriverError::io("create", parent, e))?;
    match std::fs::DirBuilder::new().mode(0o700).create(home) {
        Ok(()) => {}
        // Lost a race with another provisioner call: theirs is as good as ours.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(DriverError::io("create", home, e)),
    }
    std::os::unix::fs::lchown(home, Some(uid), Some(gid))
        .map_err(|e| DriverError::io("chown", home, e))?;
    std::fs::set_permissions(home, std::fs::Permissions::from_mode(mode))
        .map_err(|e| DriverError::io("chmod", home, e))?;
    Ok(true)
}

/// Renames a home to `<encoded>.archived-<UTC timestamp>` beside it.
pub fn archive_home(home: &Path, now: chrono::DateTime<chrono::Utc>) -> Result<Option<PathBuf>> {
    if std::fs::symlink_metadata(home).is_err() {
        return Ok(None);
    }
    let name = home.file_name().expect("home has a name").to_string_lossy();
    let dest = home.with_file_name(format!("{name}.archived-{}", now.format("%Y%m%dT%H%M%SZ")));
    std::fs::rename(home, &dest).map_err(|e| DriverError::io("archive", home, e))?;
    Ok(Some(dest))
}

/// Removes a home and everything in it (never following symlinks).
pub fn delete_home(home: &Path) -> Result<bool> {
    match std::fs::remove_dir_all(home) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(DriverError::io("delete", home, e)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::volume::{Backend, OnDelete};
    use std::os::unix::fs::MetadataExt;

    /// Owner of homes made by tests: another user as root; without root
    /// (`cargo test --lib` needs none) the caller, the only owner it may give.
    pub(crate) fn test_owner() -> (u32, u32) {
        let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
        match uid.is_root() {
            true => (1234, 4321),
            false => (uid.as_raw(), gid.as_raw()),
        }
    }

    fn vol(root: &Path) -> HomeVolume {
        HomeVolume {
            volume_name: "pvc-1".into(),
            backend: Backend::Local { root: root.into() },
            base_path: "users".into(),
            user: UserKey::new("alice").unwrap(),
            on_delete: OnDelete::Retain,
        }
    }

    #[test]
    fn meta_round_trips_and_corruption_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let v = vol(d.path());
        assert_eq!(read_meta(&v, d.path()).unwrap(), None);
        let m = HomeMeta {
            volume_name: "pvc-1".into(),
            user: "alice".into(),
            capacity_bytes: 5 << 30,
            inode_quota: None,
            pvc_name: Some("claim-alice".into()),
            pvc_namespace: Some("jhub".into()),
            user_from: Some("annotation".into()),
            created: "2026-01-01T00:00:00Z".into(),
            updated: "2026-01-01T00:00:00Z".into(),
        };
        write_meta(&v, d.path(), &m).unwrap();
        assert_eq!(read_meta(&v, d.path()).unwrap(), Some(m));
        std::fs::write(meta_path(&v, d.path()), b"{not json").unwrap();
        assert!(matches!(
            read_meta(&v, d.path()),
            Err(DriverError::FailedPrecondition(_))
        ));
    }

    #[test]
    fn homes_get_owner_and_mode_and_symlinks_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let home = d.path().join("users/alice");
        let (uid, gid) = test_owner();
        assert!(ensure_home(&home, uid, gid, 0o750).unwrap());
        assert!(!ensure_home(&home, uid, gid, 0o750).unwrap());
        let m = std::fs::metadata(&home).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (uid, gid, 0o750));
        let evil = d.path().join("users/mallory");
        std::os::unix::fs::symlink("/etc", &evil).unwrap();
        assert!(matches!(
            ensure_home(&evil, 1, 1, 0o700),
            Err(DriverError::FailedPrecondition(_))
        ));
    }

    #[test]
    fn archive_and_delete_are_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let home = d.path().join("alice");
        std::fs::create_dir(&home).unwrap();
        std::fs::write(home.join("f"), b"x").unwrap();
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
            .unwrap()
            .to_utc();
        let dest = archive_home(&home, now).unwrap().unwrap();
        assert_eq!(dest, d.path().join("alice.archived-20261122T100000Z"));
        assert_eq!(std::fs::read(dest.join("f")).unwrap(), b"x");
        assert_eq!(archive_home(&home, now).unwrap(), None);
        assert!(delete_home(&dest).unwrap());
        assert!(!delete_home(&dest).unwrap());
    }
}

#[cfg(test)]
mod adopt_tests {
    use super::*;
    use crate::volume::{Backend, OnDelete};

    fn vol(root: &Path, user: &str) -> HomeVolume {
        HomeVolume {
            volume_name: "pvc-2".into(),
            backend: Backend::Local { root: root.into() },
            base_path: "home".into(),
            user: UserKey::new(user).unwrap(),
            on_delete: OnDelete::Retain,
        }
    }

    fn legacy(user: &str) -> Vec<String> {
        hubfs_quota::identity::legacy_names(user)
    }

    #[test]
    fn an_escaped_subpath_home_is_renamed_with_its_files() {
        let d = tempfile::tempdir().unwrap();
        let v = vol(d.path(), "carol.smith@example.org");
        let old = d.path().join("home/carol-2esmith-40example-2eorg");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("notebook.ipynb"), b"{}").unwrap();
        assert_eq!(
            adopt_legacy(&v, d.path(), &legacy("carol.smith@example.org")).unwrap(),
            Adopted::Renamed { from: old.clone() }
        );
        let own = v.home_dir(d.path());
        assert_eq!(own, d.path().join("home/carol_2esmith_40example_2eorg"));
        assert_eq!(std::fs::read(own.join("notebook.ipynb")).unwrap(), b"{}");
        assert!(!old.exists());
        // Once adopted there is nothing left to adopt.
        assert_eq!(
            adopt_legacy(&v, d.path(), &legacy("carol.smith@example.org")).unwrap(),
            Adopted::Nothing
        );
    }

    #[test]
    fn a_slug_home_and_its_description_move_together() {
        let d = tempfile::tempdir().unwrap();
        let v = vol(d.path(), "jmiller@stsci.edu");
        let old = d.path().join("home/jmiller-stsci-edu---77689c6d");
        std::fs::create_dir_all(&old).unwrap();
        // As an earlier hubfs wrote it: the slug as the user, no `user_from`.
        let earlier = HomeMeta {
            volume_name: "pvc-1".into(),
            user: "jmiller-stsci-edu---77689c6d".into(),
            capacity_bytes: 1,
            inode_quota: None,
            pvc_name: Some("claim-jmiller-stsci-edu---77689c6d".into()),
            pvc_namespace: Some("jhub".into()),
            user_from: None,
            created: String::new(),
            updated: String::new(),
        };
        write_meta(
            &vol(d.path(), "jmiller-stsci-edu---77689c6d"),
            d.path(),
            &earlier,
        )
        .unwrap();
        assert!(matches!(
            adopt_legacy(&v, d.path(), &legacy("jmiller@stsci.edu")).unwrap(),
            Adopted::Renamed { .. }
        ));
        assert!(d
            .path()
            .join("home/.hubfs/jmiller-stsci-edu---77689c6d.json.adopted-by-jmiller_40stsci_2eedu")
            .is_file());
    }

    #[test]
    fn both_homes_or_someone_elses_home_are_never_touched() {
        let d = tempfile::tempdir().unwrap();
        let v = vol(d.path(), "a.b");
        // Hub user `a-2eb` provisioned from its annotation owns `a-2eb`,
        // which is also the escaped name of `a.b`.
        std::fs::create_dir_all(d.path().join("home/a-2eb")).unwrap();
        let m = HomeMeta {
            volume_name: "pvc-x".into(),
            user: "a-2eb".into(),
            capacity_bytes: 1,
            inode_quota: None,
            pvc_name: None,
            pvc_namespace: None,
            user_from: Some("annotation".into()),
            created: String::new(),
            updated: String::new(),
        };
        write_meta(&vol(d.path(), "a-2eb"), d.path(), &m).unwrap();
        assert_eq!(
            adopt_legacy(&v, d.path(), &legacy("a.b")).unwrap(),
            Adopted::Nothing
        );
        assert!(d.path().join("home/a-2eb").is_dir());
        // Both names present: left alone.
        let w = vol(d.path(), "zoë");
        std::fs::create_dir_all(d.path().join("home/zo-c3-ab")).unwrap();
        std::fs::create_dir_all(w.home_dir(d.path())).unwrap();
        assert!(matches!(
            adopt_legacy(&w, d.path(), &legacy("zoë")).unwrap(),
            Adopted::Both { .. }
        ));
        assert!(d.path().join("home/zo-c3-ab").is_dir());
        // A symlink planted under a legacy name is not adopted.
        let x = vol(d.path(), "x.y");
        std::os::unix::fs::symlink("/etc", d.path().join("home/x-2ey")).unwrap();
        assert_eq!(
            adopt_legacy(&x, d.path(), &legacy("x.y")).unwrap(),
            Adopted::Nothing
        );
    }
}
