//! Directory listings of the home layer: `opendir` reads the whole
//! directory once, `readdir` hands it out from the kernel's offset on.

use std::ffi::OsString;
use std::sync::atomic::Ordering;

use super::error::HomeError;
use super::fs::{HomeFs, Result};
use super::syscalls as sys;

/// One directory entry as listed.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: u8,
    pub name: OsString,
}

impl HomeFs {
    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let entries = self.list(ino)?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs.lock().insert(fh, entries);
        Ok(fh)
    }

    fn list(&self, ino: u64) -> Result<Vec<DirEntry>> {
        let i = self.inode(ino)?;
        Ok(sys::list_dir(i.fd())?
            .into_iter()
            .map(|e| DirEntry {
                // What `stat` will show for it (see `inodes`).
                ino: self.inodes.listed_number(e.ino),
                kind: e.kind,
                name: e.name,
            })
            .collect())
    }

    /// Entries from `offset` on; offset 0 re-reads the directory (rewinddir).
    pub fn readdir(&self, ino: u64, fh: u64, offset: u64) -> Result<Vec<DirEntry>> {
        if offset == 0 {
            let fresh = self.list(ino)?;
            self.dirs.lock().insert(fh, fresh);
        }
        let dirs = self.dirs.lock();
        let entries = dirs.get(&fh).ok_or(HomeError::Os(libc::EBADF))?;
        Ok(entries.iter().skip(offset as usize).cloned().collect())
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().remove(&fh);
    }
}
