//! Directory listings of the home layer: the first `readdir` (offset 0)
//! reads the whole directory once, later ones hand it out from the
//! kernel's offset on. `readdirplus` also looks every entry up, so the
//! kernel learns names and attributes of a whole batch in one request
//! (`ls -l`, `du`, `rm -rf`, `find` then send no LOOKUP per entry).

use std::ffi::OsString;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::error::HomeError;
use super::fs::{Entry, HomeFs, Result};
use super::syscalls as sys;

/// One directory entry as listed.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: u8,
    pub name: OsString,
}

impl DirEntry {
    /// `.` or `..`: listed, but never looked up (the kernel ignores their
    /// attributes in a READDIRPLUS reply and takes no reference to them).
    pub fn is_dot(&self) -> bool {
        self.name == "." || self.name == ".."
    }
}

/// A listing read at offset 0, shared by the batches that follow.
pub(super) type Listing = Arc<Vec<DirEntry>>;

impl HomeFs {
    /// Opens a directory handle for the caller, who needs read permission
    /// as natively; the listing is read by the first readdir.
    pub fn opendir(&self, ino: u64) -> Result<u64> {
        sys::access(self.inode(ino)?.fd(), libc::R_OK)?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs.lock().insert(fh, None);
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

    /// The listing of handle `fh`; offset 0 (or a handle not read yet)
    /// reads the directory afresh (rewinddir).
    fn listing(&self, ino: u64, fh: u64, offset: u64) -> Result<Listing> {
        {
            let dirs = self.dirs.lock();
            match dirs.get(&fh) {
                None => return Err(HomeError::Os(libc::EBADF)),
                Some(Some(l)) if offset != 0 => return Ok(l.clone()),
                Some(_) => {}
            }
        }
        let fresh: Listing = Arc::new(self.list(ino)?);
        if let Some(slot) = self.dirs.lock().get_mut(&fh) {
            *slot = Some(fresh.clone());
        }
        Ok(fresh)
    }

    /// Entries from `offset` on, each with the offset that follows it;
    /// `add` returns true when the reply is full.
    pub fn readdir(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(&DirEntry, u64) -> bool,
    ) -> Result<()> {
        let l = self.listing(ino, fh, offset)?;
        for (i, e) in l.iter().enumerate().skip(offset as usize) {
            if add(e, i as u64 + 1) {
                break;
            }
        }
        Ok(())
    }

    /// As [`Self::readdir`], each entry but `.` and `..` looked up (one
    /// more kernel reference, as a LOOKUP takes). An entry gone since the
    /// listing is left out; one the caller may not look up (no search
    /// permission on the directory) is listed without attributes (`None`:
    /// the kernel gets the name, no entry), as `ls` of such a directory
    /// natively shows names only; one that cannot be looked up for another
    /// reason ends the batch (or fails it, if it is the first). An entry
    /// that does not fit (`add` true) gives its reference back.
    pub fn readdirplus(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(&DirEntry, u64, Option<&Entry>) -> bool,
    ) -> Result<()> {
        let l = self.listing(ino, fh, offset)?;
        let dir = self.inode(ino)?;
        let mut added = 0;
        // "." and "..": their number and type are all the kernel uses, so
        // one stat of the directory serves both.
        let mut dot = None;
        for (i, e) in l.iter().enumerate().skip(offset as usize) {
            let next = i as u64 + 1;
            if e.is_dot() {
                let mut st = match dot {
                    Some(st) => st,
                    None => *dot.insert(sys::stat_fd(dir.fd())?),
                };
                st.st_ino = e.ino;
                if add(e, next, Some(&Entry { ino: e.ino, st })) {
                    break;
                }
                continue;
            }
            let Ok(n) = sys::name(&e.name) else { continue };
            let found = match self.remember(&dir, &n) {
                Ok(found) => found,
                // Gone since the listing: as if listed a moment later.
                Err(HomeError::Os(libc::ENOENT)) => continue,
                Err(HomeError::Os(libc::EACCES | libc::EPERM)) => {
                    if add(e, next, None) {
                        break;
                    }
                    continue;
                }
                // Anything else (EMFILE...) must not hide the entry: the
                // batch ends before it, and a batch that would be empty
                // reports the error.
                Err(e) if added == 0 => return Err(e),
                Err(_) => break,
            };
            added += 1;
            if add(e, next, Some(&found)) {
                self.inodes.forget(found.ino, 1);
                break;
            }
        }
        Ok(())
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().remove(&fh);
    }

    /// The names in directory `ino` whose inodes the kernel knows (it may
    /// hold them as cached names), listed with the server's credentials.
    pub fn known_children(&self, ino: u64) -> Result<Vec<OsString>> {
        let dir = self.inode(ino)?;
        let listed = super::identity::as_server(|| sys::list_dir(dir.fd()))??;
        let dev = dir.key().0;
        Ok(listed
            .into_iter()
            .filter(|e| e.name != "." && e.name != "..")
            .filter(|e| self.inodes.known((dev, e.ino)).is_some())
            .map(|e| e.name)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::home::usage::{Limits, UsageCounters};

    #[test]
    fn readdirplus_takes_one_reference_per_entry_it_hands_out() {
        let t = tempfile::tempdir().unwrap();
        for n in ["a", "b", "c"] {
            std::fs::write(t.path().join(n), n).unwrap();
        }
        let fs = HomeFs::new(t.path(), Arc::new(UsageCounters::new(Limits::default()))).unwrap();
        let root = super::super::fs::ROOT;
        let fh = fs.opendir(root).unwrap();
        let mut given = Vec::new();
        // The reply is "full" at the second real entry: it is given back.
        fs.readdirplus(root, fh, 0, |d, next, e| {
            let name = &d.name;
            if !d.is_dot() && given.len() == 1 {
                return true;
            }
            if !d.is_dot() {
                given.push((name.to_owned(), next, e.unwrap().ino));
            }
            false
        })
        .unwrap();
        assert_eq!(given.len(), 1);
        assert_eq!(fs.inodes.len(), 2, "the root and the one entry handed out");
        // The next batch starts after it and hands out the other two.
        let (_, after, _) = given[0].clone();
        let mut rest = Vec::new();
        fs.readdirplus(root, fh, after, |d, _, e| {
            if !d.is_dot() {
                rest.push(e.unwrap().ino);
            }
            false
        })
        .unwrap();
        assert_eq!(rest.len(), 2);
        assert_eq!(fs.inodes.len(), 4);
        // A file removed since the listing is left out, not an error.
        fs.readdir(root, fh, 0, |_, _| false).unwrap();
        std::fs::remove_file(t.path().join("b")).unwrap();
        let mut names = Vec::new();
        fs.readdirplus(root, fh, 1, |d, _, _| {
            names.push(d.name.to_owned());
            false
        })
        .unwrap();
        assert!(!names.iter().any(|n| n == "b"), "{names:?}");
        fs.releasedir(fh);
        assert_eq!(
            fs.readdir(root, fh, 0, |_, _| false).unwrap_err().errno(),
            libc::EBADF
        );
    }
}
