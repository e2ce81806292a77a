//! Which I/O mode the kernel gets for each open file: passthrough, cached or
//! direct.
//!
//! Reads need no accounting, so a file opened read-only is handed to the
//! kernel as a *passthrough* file (Linux ≥ 6.9, `FUSE_PASSTHROUGH`): its reads
//! and mmaps go straight to the backing file and never wake the daemon, which
//! is what brings large reads to native speed. Writes must stay in the daemon,
//! where they are accounted and refused past the quota.
//!
//! The kernel keeps one I/O mode per inode and fails an `open()` with EIO if
//! a server mixes them (`fs/fuse/iomode.c`): while any passthrough file of an
//! inode is open, *every* open of it must be passthrough (and name the same
//! backing id), and while any cached file is open, a reader must be cached
//! too. So a writer that opens a file while a passthrough reader holds it is
//! itself passthrough: the kernel writes without us, and the home layer
//! charges the growth when it next looks (`HomeFs::settle_unmediated`, every
//! second, and at close) instead of refusing it up front. That is the one
//! case where a write can pass the hard limit by more than one request; to
//! keep it rare, readers only pass through while the home is below its soft
//! limit and not in cleanup mode (`--no-passthrough` closes it entirely).
//!
//! This module keeps, per inode, the counts that decide the mode. Counts rise
//! before the open reply and fall at `release`, after the kernel has dropped
//! its side, so they never understate what the kernel holds.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

/// What an open was granted (`B` is the backing-file token, fuser's
/// `BackingId` in the daemon).
#[derive(Debug)]
pub enum Grant<B> {
    /// The kernel reads (and, for a writer, writes) the backing file itself.
    Passthrough(Arc<B>),
    /// Served by the daemon through the page cache.
    Cached,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Passthrough,
    Cached,
}

struct InodeIo<B> {
    cached: u32,
    passthrough: u32,
    backing: Option<Arc<B>>,
}

impl<B> Default for InodeIo<B> {
    fn default() -> Self {
        InodeIo {
            cached: 0,
            passthrough: 0,
            backing: None,
        }
    }
}

/// (handle, inode, passthrough?) of every open handle and (inode, backing
/// id) of every passthrough period (see [`IoModes::export`]).
pub type IoExport = (Vec<(u64, u64, bool)>, Vec<(u64, u32)>);

/// Per-inode I/O modes of one mount.
pub struct IoModes<B> {
    inodes: Mutex<HashMap<u64, InodeIo<B>>>,
    handles: Mutex<HashMap<u64, (u64, Kind)>>,
}

impl<B> Default for IoModes<B> {
    fn default() -> Self {
        IoModes {
            inodes: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
        }
    }
}

impl<B> IoModes<B> {
    /// Decides the mode of a new open handle `fh` of inode `ino`. A reader
    /// may start a passthrough period only if `may_pass_through`; a writer
    /// joins one that is under way (the kernel leaves no choice). `backing`
    /// registers the backing file with the kernel; it is called at most once
    /// per passthrough period of an inode, and when it fails (no kernel
    /// support, no privilege) the open falls back to cached.
    pub fn open(
        &self,
        ino: u64,
        fh: u64,
        read_only: bool,
        may_pass_through: bool,
        backing: impl FnOnce() -> Option<B>,
    ) -> Grant<B> {
        let mut inodes = self.inodes.lock();
        let io = inodes.entry(ino).or_default();
        let (grant, kind) = if io.passthrough > 0 {
            let b = io
                .backing
                .clone()
                .expect("a passthrough period has a backing");
            io.passthrough += 1;
            (Grant::Passthrough(b), Kind::Passthrough)
        } else if !read_only || !may_pass_through || io.cached > 0 {
            io.cached += 1;
            (Grant::Cached, Kind::Cached)
        } else {
            let b = match &io.backing {
                Some(b) => Some(b.clone()),
                None => backing().map(Arc::new),
            };
            match b {
                Some(b) => {
                    io.backing = Some(b.clone());
                    io.passthrough += 1;
                    (Grant::Passthrough(b), Kind::Passthrough)
                }
                None => {
                    io.cached += 1;
                    (Grant::Cached, Kind::Cached)
                }
            }
        };
        if io.cached == 0 && io.passthrough == 0 {
            inodes.remove(&ino);
        }
        self.handles.lock().insert(fh, (ino, kind));
        grant
    }

    /// Forgets handle `fh`; the last passthrough handle of an inode closes
    /// its backing id (by dropping it).
    pub fn release(&self, fh: u64) {
        let Some((ino, kind)) = self.handles.lock().remove(&fh) else {
            return;
        };
        let mut inodes = self.inodes.lock();
        let Some(io) = inodes.get_mut(&ino) else {
            return;
        };
        match kind {
            Kind::Passthrough => io.passthrough = io.passthrough.saturating_sub(1),
            Kind::Cached => io.cached = io.cached.saturating_sub(1),
        }
        if io.passthrough == 0 {
            io.backing = None;
        }
        if io.cached == 0 && io.passthrough == 0 {
            inodes.remove(&ino);
        }
    }

    /// For a takeover (see `home::handoff`): every open handle as (handle,
    /// inode, passthrough?), and the backing of every inode in a
    /// passthrough period, as `id` names it.
    pub fn export(&self, id: impl Fn(&B) -> u32) -> IoExport {
        let handles = self
            .handles
            .lock()
            .iter()
            .map(|(&fh, &(ino, k))| (fh, ino, k == Kind::Passthrough))
            .collect();
        let backings = self
            .inodes
            .lock()
            .iter()
            .filter_map(|(&ino, io)| Some((ino, id(io.backing.as_deref()?))))
            .collect();
        (handles, backings)
    }

    /// Takes over what [`Self::export`] gave; `adopt` turns a backing id
    /// into the token (each id is adopted once).
    pub fn import(
        &self,
        handles: &[(u64, u64, bool)],
        backings: &[(u64, u32)],
        mut adopt: impl FnMut(u32) -> B,
    ) {
        let mut inodes = self.inodes.lock();
        for &(ino, id) in backings {
            inodes.entry(ino).or_default().backing = Some(Arc::new(adopt(id)));
        }
        let mut hs = self.handles.lock();
        for &(fh, ino, pt) in handles {
            let io = inodes.entry(ino).or_default();
            let kind = match pt {
                true => {
                    io.passthrough += 1;
                    Kind::Passthrough
                }
                false => {
                    io.cached += 1;
                    Kind::Cached
                }
            };
            hs.insert(fh, (ino, kind));
        }
        // A backing without a passthrough handle is closed, as at release.
        inodes.retain(|_, io| {
            if io.passthrough == 0 {
                io.backing = None;
            }
            io.cached > 0 || io.passthrough > 0
        });
    }

    /// Open handles of every mode (for tests and metrics).
    pub fn open_handles(&self) -> usize {
        self.handles.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn kind<B>(g: &Grant<B>) -> &'static str {
        match g {
            Grant::Passthrough(_) => "passthrough",
            Grant::Cached => "cached",
        }
    }

    #[test]
    fn readers_share_one_backing_and_a_writer_joins_them() {
        let io = IoModes::<u32>::default();
        let made = Cell::new(0);
        let mk = || {
            made.set(made.get() + 1);
            Some(7)
        };
        let a = io.open(5, 1, true, true, mk);
        let b = io.open(5, 2, true, true, || unreachable!("one backing per inode"));
        match (&a, &b) {
            (Grant::Passthrough(x), Grant::Passthrough(y)) => assert!(Arc::ptr_eq(x, y)),
            _ => panic!("readers should pass through: {} {}", kind(&a), kind(&b)),
        }
        assert_eq!(made.get(), 1);
        // Even past the soft limit: the kernel accepts nothing else now.
        assert_eq!(kind(&io.open(5, 3, false, false, || None)), "passthrough");
        io.release(1);
        io.release(2);
        assert_eq!(kind(&io.open(5, 4, false, true, || None)), "passthrough");
        io.release(3);
        io.release(4);
        assert_eq!(kind(&io.open(5, 5, false, true, || None)), "cached");
        io.release(5);
        assert_eq!(io.open_handles(), 0);
    }

    #[test]
    fn past_the_soft_limit_readers_stay_cached() {
        let io = IoModes::<u32>::default();
        let g = io.open(2, 1, true, false, || unreachable!("no passthrough asked"));
        assert_eq!(kind(&g), "cached");
    }

    #[test]
    fn a_reader_of_a_file_open_for_writing_is_cached() {
        let io = IoModes::<u32>::default();
        assert_eq!(kind(&io.open(9, 1, false, true, || None)), "cached");
        assert_eq!(
            kind(&io.open(9, 2, true, true, || unreachable!(
                "no passthrough while cached"
            ))),
            "cached"
        );
        io.release(1);
        // One cached reader is still open: still cached.
        assert_eq!(kind(&io.open(9, 3, true, true, || Some(1))), "cached");
        io.release(2);
        io.release(3);
        assert_eq!(kind(&io.open(9, 4, true, true, || Some(1))), "passthrough");
    }

    #[test]
    fn a_new_backing_is_made_after_the_last_passthrough_handle_closes() {
        let io = IoModes::<u32>::default();
        let first = io.open(3, 1, true, true, || Some(1));
        io.release(1);
        drop(first);
        match io.open(3, 2, true, true, || Some(2)) {
            Grant::Passthrough(b) => assert_eq!(*b, 2),
            g => panic!("{}", kind(&g)),
        }
    }

    #[test]
    fn no_kernel_support_falls_back_to_cached() {
        let io = IoModes::<u32>::default();
        assert_eq!(kind(&io.open(3, 1, true, true, || None)), "cached");
        assert_eq!(kind(&io.open(3, 2, false, true, || None)), "cached");
        io.release(1);
        io.release(2);
        io.release(2); // a repeated release is harmless
        assert_eq!(io.open_handles(), 0);
    }
}
