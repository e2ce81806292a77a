//! Directory listings of the home layer, read from the backing directory
//! as the kernel asks for them: a handle keeps the directory open (opened
//! for the caller at OPENDIR, which needs read permission as natively) and
//! at most one `getdents` batch of entries read but not handed out yet, so
//! a directory of a million entries costs a handle 8 KiB, not a listing
//! of a million names. An offset the kernel asks with is the backing
//! directory's own position (`d_off`) after the entry before it, so any
//! offset it was given works again (`seekdir`). `readdirplus` also looks
//! every entry up, so the kernel learns names and attributes of a whole
//! batch in one request (`ls -l`, `du`, `rm -rf`, `find` then send no
//! LOOKUP per entry).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::File;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::Mutex;

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

/// An open directory handle.
pub(super) enum DirHandle {
    /// The directory, read as the kernel asks.
    Open(Mutex<DirStream>),
    /// A whole listing handed over by a server before streamed listings,
    /// offsets being indexes into it.
    Snapshot(Arc<Vec<DirEntry>>),
    /// Handed over by such a server before its first read: the directory
    /// opens at the first read here.
    Later,
}

pub(super) struct DirStream {
    pub(super) dir: File,
    /// Read but not handed out yet, each with the offset after it.
    pending: VecDeque<(DirEntry, u64)>,
    /// The offset of `pending`'s first entry (or of the next entry to
    /// read); `None` when the descriptor's position is not known.
    pub(super) at: Option<u64>,
    eof: bool,
}

impl DirStream {
    pub(super) fn new(dir: File, at: Option<u64>) -> Self {
        DirStream {
            dir,
            pending: VecDeque::new(),
            at,
            eof: false,
        }
    }
}

impl HomeFs {
    /// Opens a directory handle: the directory opened for the caller, who
    /// needs read permission as natively.
    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let i = self.inode(ino)?;
        let flags = libc::O_RDONLY | libc::O_DIRECTORY;
        let dir = sys::reopen(i.fd()?.as_fd(), flags)?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let stream = DirStream::new(dir, Some(0));
        self.dirs
            .lock()
            .insert(fh, Arc::new(DirHandle::Open(Mutex::new(stream))));
        Ok(fh)
    }

    fn dir_handle(&self, ino: u64, fh: u64) -> Result<Arc<DirHandle>> {
        let h = self
            .dirs
            .lock()
            .get(&fh)
            .cloned()
            .ok_or(HomeError::Os(libc::EBADF))?;
        if !matches!(*h, DirHandle::Later) {
            return Ok(h);
        }
        let dir = sys::reopen(
            self.inode(ino)?.fd()?.as_fd(),
            libc::O_RDONLY | libc::O_DIRECTORY,
        )?;
        let open = Arc::new(DirHandle::Open(Mutex::new(DirStream::new(dir, Some(0)))));
        self.dirs.lock().insert(fh, open.clone());
        Ok(open)
    }

    /// Hands entries from `offset` on to `add` (with the offset after each)
    /// until it returns true (the reply is full: that entry stays for the
    /// next request) or the directory ends.
    fn each_entry(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(&DirEntry, u64) -> Result<bool>,
    ) -> Result<()> {
        let h = self.dir_handle(ino, fh)?;
        let s = match &*h {
            DirHandle::Snapshot(l) => {
                for (i, e) in l.iter().enumerate().skip(offset as usize) {
                    if add(e, i as u64 + 1)? {
                        break;
                    }
                }
                return Ok(());
            }
            DirHandle::Open(s) => s,
            DirHandle::Later => unreachable!("opened by dir_handle"),
        };
        let mut s = s.lock();
        if s.at != Some(offset) {
            sys::lseek(&s.dir, offset as i64, libc::SEEK_SET)?;
            s.pending.clear();
            s.eof = false;
            s.at = Some(offset);
        }
        loop {
            if s.pending.is_empty() {
                if s.eof {
                    return Ok(());
                }
                let batch = sys::read_dir_batch(s.dir.as_fd())?;
                if batch.is_empty() {
                    s.eof = true;
                    return Ok(());
                }
                for (e, next) in batch {
                    let listed = DirEntry {
                        // What `stat` will show for it (see `inodes`).
                        ino: self.inodes.listed_number(e.ino),
                        kind: e.kind,
                        name: e.name,
                    };
                    s.pending.push_back((listed, next));
                }
            }
            let (e, next) = s.pending.front().expect("filled above");
            let next = *next;
            if add(e, next)? {
                return Ok(());
            }
            s.pending.pop_front();
            s.at = Some(next);
        }
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
        self.each_entry(ino, fh, offset, |e, next| Ok(add(e, next)))
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
        let dir = self.inode(ino)?;
        let mut added = 0;
        // "." and "..": their number and type are all the kernel uses, so
        // one stat of the directory serves both.
        let mut dot = None;
        let r = self.each_entry(ino, fh, offset, |e, next| {
            if e.is_dot() {
                let mut st = match dot {
                    Some(st) => st,
                    None => *dot.insert(sys::stat_fd(dir.fd()?.as_fd())?),
                };
                st.st_ino = e.ino;
                return Ok(add(e, next, Some(&Entry { ino: e.ino, st })));
            }
            let Ok(n) = sys::name(&e.name) else {
                return Ok(false);
            };
            let found = match self.remember(&dir, &n) {
                Ok(found) => found,
                // Gone since it was read: as if read a moment later.
                Err(HomeError::Os(libc::ENOENT)) => return Ok(false),
                Err(HomeError::Os(libc::EACCES | libc::EPERM)) => return Ok(add(e, next, None)),
                // Anything else (EMFILE...) must not hide the entry: the
                // batch ends before it, and a batch that would be empty
                // reports the error.
                Err(err) if added == 0 => return Err(err),
                Err(_) => return Ok(true),
            };
            added += 1;
            if add(e, next, Some(&found)) {
                self.inodes.forget(found.ino, 1);
                return Ok(true);
            }
            Ok(false)
        });
        match r {
            // A batch ended by an error after some entries: they stand.
            Err(_) if added > 0 => Ok(()),
            r => r,
        }
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().remove(&fh);
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
