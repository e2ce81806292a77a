//! The mount syscalls, behind a trait.
//!
//! The real [`SysMounts`] calls `mount(2)`/`umount2(2)` through `nix` and
//! reads `/proc/self/mountinfo`; `FakeMounts` (in `mounts/fake.rs`, built
//! only for tests or with the `test-util` feature) keeps a table in memory so
//! every CSI call can be unit-tested without root. Both answer "what is
//! mounted at this path" the same way, which is what makes Node calls
//! idempotent.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use crate::mountinfo::{self, MountEntry};

/// A failed mount operation, with the syscall's errno.
#[derive(Debug, thiserror::Error)]
#[error("{op} {target}: {errno} ({desc})", target = target.display(), desc = errno.desc())]
pub struct MountError {
    pub op: &'static str,
    pub target: PathBuf,
    pub errno: Errno,
}

impl MountError {
    pub(crate) fn new(op: &'static str, target: &Path, errno: Errno) -> Self {
        Self {
            op,
            target: target.to_owned(),
            errno,
        }
    }

    /// Whether the failure is a lack of privilege (not root, no CAP_SYS_ADMIN).
    pub fn is_permission(&self) -> bool {
        matches!(self.errno, Errno::EPERM | Errno::EACCES)
    }
}

/// What is mounted at a path, as far as idempotency checks need to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mounted {
    /// `major:minor` of the filesystem (empty for the fake).
    pub device: String,
    /// Directory of that filesystem mounted here (bind mounts) or `/`.
    pub root: PathBuf,
    pub fs_type: String,
    pub source: String,
    pub read_only: bool,
}

impl From<&MountEntry> for Mounted {
    fn from(e: &MountEntry) -> Self {
        Self {
            device: e.device.clone(),
            root: e.root.clone(),
            fs_type: e.fs_type.clone(),
            source: e.source.clone(),
            read_only: e.read_only(),
        }
    }
}

/// Mounting, unmounting and asking what is mounted.
pub trait Mounts: Send + Sync + 'static {
    /// Mounts a filesystem (`nfs`, `nfs4`, `tmpfs`, ...) with comma-separated `data` options.
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fs_type: &str,
        data: &str,
    ) -> Result<(), MountError>;
    /// Bind-mounts `source` on `target`, read-only if asked (a bind mount needs a
    /// remount to become read-only; both steps happen here).
    fn bind(&self, source: &Path, target: &Path, read_only: bool) -> Result<(), MountError>;
    /// Unmounts `target`; falls back to a lazy unmount when it is busy.
    fn unmount(&self, target: &Path) -> Result<(), MountError>;
    /// What is mounted exactly at `target`, if anything.
    fn mounted_at(&self, target: &Path) -> Result<Option<Mounted>, MountError>;
    /// What `target` would show if `source` were bind-mounted there: used to
    /// tell "already published from the same source" from a conflict.
    fn bind_identity(&self, source: &Path) -> Result<Mounted, MountError>;
}

/// The real mounter: Linux syscalls, root required.
#[derive(Clone, Copy, Debug, Default)]
pub struct SysMounts;

impl Mounts for SysMounts {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fs_type: &str,
        data: &str,
    ) -> Result<(), MountError> {
        let data = (!data.is_empty()).then_some(data);
        nix::mount::mount(Some(source), target, Some(fs_type), MsFlags::empty(), data)
            .map_err(|e| MountError::new("mount", target, e))
    }

    fn bind(&self, source: &Path, target: &Path, read_only: bool) -> Result<(), MountError> {
        nix::mount::mount(
            Some(source),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| MountError::new("bind mount", target, e))?;
        if read_only {
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            if let Err(e) =
                nix::mount::mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
            {
                // Never leave a writable mount behind when read-only was asked for.
                let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
                return Err(MountError::new("remount read-only", target, e));
            }
        }
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<(), MountError> {
        match nix::mount::umount2(target, MntFlags::empty()) {
            Ok(()) => Ok(()),
            Err(Errno::EBUSY) => {
                tracing::warn!(target = %target.display(), "mount busy, detaching lazily");
                nix::mount::umount2(target, MntFlags::MNT_DETACH)
                    .map_err(|e| MountError::new("lazy unmount", target, e))
            }
            Err(e) => Err(MountError::new("unmount", target, e)),
        }
    }

    fn mounted_at(&self, target: &Path) -> Result<Option<Mounted>, MountError> {
        let entries = mountinfo::read()
            .map_err(|e| MountError::new("read mountinfo", target, errno_of(&e)))?;
        Ok(mountinfo::mount_at(&entries, target).map(Mounted::from))
    }

    fn bind_identity(&self, source: &Path) -> Result<Mounted, MountError> {
        let entries = mountinfo::read()
            .map_err(|e| MountError::new("read mountinfo", source, errno_of(&e)))?;
        let m = mountinfo::containing(&entries, source)
            .ok_or_else(|| MountError::new("find mount of", source, Errno::ENOENT))?;
        let rel = source.strip_prefix(&m.mount_point).unwrap_or(source);
        let mut id = Mounted::from(m);
        id.root = if rel.as_os_str().is_empty() {
            m.root.clone()
        } else {
            m.root.join(rel)
        };
        Ok(id)
    }
}

fn errno_of(e: &std::io::Error) -> Errno {
    e.raw_os_error().map(Errno::from_raw).unwrap_or(Errno::EIO)
}

#[cfg(any(test, feature = "test-util"))]
mod fake;
#[cfg(any(test, feature = "test-util"))]
pub use fake::{FakeMounts, MountCall};
