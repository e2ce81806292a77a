//! Who uses a shared resource, kept as marker files so that a restarted
//! process still knows.
//!
//! A shared thing on the node (an NFS share mounted once for every home on
//! it) is used by several kubelet paths; the last one to let go tears it
//! down. Each user is one file in the resource's claims directory, named by
//! a short hash of the user's path and holding that path: adding and
//! removing a claim are single atomic file operations, so a crash between
//! two calls never leaves a half-written record.

use std::path::{Path, PathBuf};

use crate::error::{DriverError, Result};

/// The claims on one resource: a directory of marker files.
#[derive(Clone, Debug)]
pub struct Claims {
    dir: PathBuf,
}

impl Claims {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn marker(&self, user: &Path) -> PathBuf {
        self.dir.join(crate::digest::short_hex(
            user.as_os_str().as_encoded_bytes(),
            12,
        ))
    }

    /// Records that `user` uses the resource (idempotent).
    pub fn add(&self, user: &Path) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| DriverError::io("create", &self.dir, e))?;
        let marker = self.marker(user);
        std::fs::write(&marker, user.as_os_str().as_encoded_bytes())
            .map_err(|e| DriverError::io("write", &marker, e))
    }

    /// Drops `user`'s claim (idempotent) and returns how many remain.
    pub fn remove(&self, user: &Path) -> Result<usize> {
        let marker = self.marker(user);
        match std::fs::remove_file(&marker) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DriverError::io("remove", &marker, e)),
        }
        Ok(self.users().len())
    }

    /// The paths that currently hold a claim.
    pub fn users(&self) -> Vec<PathBuf> {
        use std::os::unix::ffi::OsStrExt;
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| std::fs::read(e.path()).ok())
            .map(|b| PathBuf::from(std::ffi::OsStr::from_bytes(&b)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_release_sees_zero_and_a_new_instance_remembers() {
        let dir = tempfile::tempdir().unwrap();
        let c = Claims::new(dir.path().join("users"));
        assert_eq!(c.remove(Path::new("/never")).unwrap(), 0);
        c.add(Path::new("/stage/a")).unwrap();
        c.add(Path::new("/stage/a")).unwrap();
        c.add(Path::new("/stage/b c")).unwrap();
        // A restarted driver reads the same directory.
        let again = Claims::new(dir.path().join("users"));
        let mut users = again.users();
        users.sort();
        assert_eq!(
            users,
            vec![PathBuf::from("/stage/a"), PathBuf::from("/stage/b c")]
        );
        assert_eq!(again.remove(Path::new("/stage/a")).unwrap(), 1);
        assert_eq!(c.remove(Path::new("/stage/b c")).unwrap(), 0);
    }
}
