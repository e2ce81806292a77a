//! The in-memory [`Mounts`] for unit tests: a table of what is mounted
//! where, a log of calls, and injected failures. Compiled only for tests and
//! with the `test-util` feature, never into the shipped binary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use parking_lot::Mutex;

use super::{MountError, Mounted, Mounts};

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
pub struct FakeMounts {
    inner: Arc<Mutex<FakeState>>,
}

#[derive(Default)]
struct FakeState {
    table: HashMap<PathBuf, Mounted>,
    calls: Vec<MountCall>,
    fail_next: Option<Errno>,
}

impl FakeMounts {
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

impl Mounts for FakeMounts {
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
