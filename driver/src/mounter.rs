//! The mount syscalls, behind a trait.
//!
//! The real [`SysMounter`] calls `mount(2)`/`umount2(2)` through `nix` and
//! reads `/proc/self/mountinfo`; [`FakeMounter`] keeps a table in memory so
//! every CSI call can be unit-tested without root. Both answer "what is
//! mounted at this path" the same way, which is what makes Node calls
//! idempotent.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use parking_lot::Mutex;

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
    fn new(op: &'static str, target: &Path, errno: Errno) -> Self {
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
pub trait Mounter: Send + Sync + 'static {
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
pub struct SysMounter;

impl Mounter for SysMounter {
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

/// A recorded call on the fake mounter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountCall {
    Mount {
        source: String,
        target: PathBuf,
        fs_type: String,
        data: String,
    },
    Bind {
        source: PathBuf,
        target: PathBuf,
        read_only: bool,
    },
    Unmount {
        target: PathBuf,
    },
}

/// In-memory mounter for unit tests: remembers what is mounted where, and
/// can be told to fail the next calls.
#[derive(Clone, Default)]
pub struct FakeMounter {
    inner: Arc<Mutex<FakeState>>,
}

#[derive(Default)]
struct FakeState {
    table: HashMap<PathBuf, Mounted>,
    calls: Vec<MountCall>,
    fail_next: Option<Errno>,
}

impl FakeMounter {
    /// Every call made so far, in order.
    pub fn calls(&self) -> Vec<MountCall> {
        self.inner.lock().calls.clone()
    }

    /// Number of mounts currently in the table.
    pub fn mount_count(&self) -> usize {
        self.inner.lock().table.len()
    }

    /// Makes the next mount or bind fail with `errno`.
    pub fn fail_next(&self, errno: Errno) {
        self.inner.lock().fail_next = Some(errno);
    }

    fn take_failure(&self, op: &'static str, target: &Path) -> Result<(), MountError> {
        match self.inner.lock().fail_next.take() {
            Some(e) => Err(MountError::new(op, target, e)),
            None => Ok(()),
        }
    }
}

impl Mounter for FakeMounter {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fs_type: &str,
        data: &str,
    ) -> Result<(), MountError> {
        self.take_failure("mount", target)?;
        let mut s = self.inner.lock();
        s.calls.push(MountCall::Mount {
            source: source.into(),
            target: target.into(),
            fs_type: fs_type.into(),
            data: data.into(),
        });
        s.table.insert(
            target.into(),
            Mounted {
                device: String::new(),
                root: "/".into(),
                fs_type: fs_type.into(),
                source: source.into(),
                read_only: data.split(',').any(|o| o == "ro"),
            },
        );
        Ok(())
    }

    fn bind(&self, source: &Path, target: &Path, read_only: bool) -> Result<(), MountError> {
        self.take_failure("bind mount", target)?;
        let id = self.bind_identity(source)?;
        let mut s = self.inner.lock();
        s.calls.push(MountCall::Bind {
            source: source.into(),
            target: target.into(),
            read_only,
        });
        s.table.insert(target.into(), Mounted { read_only, ..id });
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<(), MountError> {
        let mut s = self.inner.lock();
        s.calls.push(MountCall::Unmount {
            target: target.into(),
        });
        match s.table.remove(target) {
            Some(_) => Ok(()),
            None => Err(MountError::new("unmount", target, Errno::EINVAL)),
        }
    }

    fn mounted_at(&self, target: &Path) -> Result<Option<Mounted>, MountError> {
        Ok(self.inner.lock().table.get(target).cloned())
    }

    fn bind_identity(&self, source: &Path) -> Result<Mounted, MountError> {
        // A bind of a bind shows the original source, as the kernel does.
        if let Some(m) = self.inner.lock().table.get(source) {
            return Ok(m.clone());
        }
        Ok(Mounted {
            device: String::new(),
            root: source.into(),
            fs_type: "fake".into(),
            source: source.display().to_string(),
            read_only: false,
        })
    }
}
