//! Which I/O mode the kernel gets for each open file: passthrough, cached or
//! direct, chosen so that every write reaches the daemon.
//!
//! Reads need no accounting, so a file opened read-only is handed to the
//! kernel as a *passthrough* file (Linux ≥ 6.9, `FUSE_PASSTHROUGH`): its reads
//! and mmaps go straight to the backing file and never wake the daemon, which
//! is what brings large reads to native speed. Writes must stay in the
//! daemon, where they are accounted and refused past the quota, so no
//! writer is ever a plain passthrough file.
//!
//! The kernel keeps one I/O mode per inode (`fs/fuse/iomode.c`, 6.9 to
//! 6.18): while any passthrough file of an inode is open, every new open of
//! it must carry `FOPEN_PASSTHROUGH` with the same backing id (or it fails
//! with EIO), and while any cached file is open, no passthrough open can
//! start. A file opened with `FOPEN_DIRECT_IO` alone stays out of both (it
//! neither starts nor blocks a mode), but is still refused once a
//! passthrough file is open. So:
//!
//! * a reader passes through when no cached file of the inode is open (and
//!   the home is below its soft limit and not in cleanup mode), else it is
//!   cached;
//! * a writer that opens an inode in a passthrough period gets
//!   `FOPEN_PASSTHROUGH | FOPEN_DIRECT_IO`: the kernel accepts it, and
//!   `FOPEN_DIRECT_IO` overrides passthrough for `read_iter`, `write_iter`
//!   and both splice directions (`fs/fuse/file.c`: "FOPEN_DIRECT_IO overrides
//!   FOPEN_PASSTHROUGH"), so every write, `sendfile` and `splice` into it is
//!   a WRITE request the daemon accounts first; its mmap maps the backing
//!   file, which can change content but never size;
//! * a write-only open otherwise is `FOPEN_DIRECT_IO` alone: no page cache to
//!   keep coherent (it cannot be read or mmapped), neutral to the modes, and
//!   its writes skip the kernel's `security.capability` probe before each
//!   first write of an inode (`file_remove_privs` is not on the direct write
//!   path; the kernel sends `FUSE_WRITE_KILL_SUIDGID` instead);
//! * a read-write open otherwise is cached (page cache for its reads and
//!   mmaps; the kernel writes through, one WRITE per `write()`, and sends the
//!   dirty pages of a shared mapping as WRITEs too, none past the file's
//!   size).
//!
//! No open lets the kernel grow a file without a request, so the hard limit
//! holds by construction in every mode. (Servers before this one gave a
//! writer joining passthrough readers a plain passthrough file; a takeover
//! from one carries such writers over, and they are charged as they grow:
//! `HomeFs::settle_unmediated`.)
//!
//! This module keeps, per inode, the counts that decide the mode. Counts rise
//! before the open reply and fall at `release`, after the kernel has dropped
//! its side, so they never understate what the kernel holds.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

/// How an open uses the file (its `O_ACCMODE`, and `O_TRUNC`, which writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
}

impl Access {
    /// From open(2) flags: a read-only open with `O_TRUNC` writes.
    pub fn of(flags: i32) -> Access {
        match flags & libc::O_ACCMODE {
            libc::O_RDONLY if flags & libc::O_TRUNC == 0 => Access::Read,
            libc::O_WRONLY => Access::Write,
            _ => Access::ReadWrite,
        }
    }
}

/// What an open was granted (`B` is the backing-file token, fuser's
/// `BackingId` in the daemon).
#[derive(Debug)]
pub enum Grant<B> {
    /// A reader: the kernel reads the backing file itself.
    Passthrough(Arc<B>),
    /// A writer in a passthrough period: `FOPEN_PASSTHROUGH` (the only open
    /// the kernel accepts then) with `FOPEN_DIRECT_IO`, so its reads and
    /// writes are requests to the daemon.
    PassthroughDirect(Arc<B>),
    /// Served by the daemon through the page cache.
    Cached,
    /// A write-only open served by the daemon without the page cache
    /// (`FOPEN_DIRECT_IO`), neutral to the other modes.
    Direct,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Holds the passthrough period (readers and passthrough-direct writers).
    Passthrough,
    Cached,
    Direct,
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

/// What [`IoModes::export`] gives a takeover.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IoExport {
    /// (handle, inode, holds the passthrough period?) of every open handle.
    pub handles: Vec<(u64, u64, bool)>,
    /// (inode, backing id) of every inode in a passthrough period.
    pub backings: Vec<(u64, u32)>,
    /// The handles opened with `FOPEN_DIRECT_IO`.
    pub direct: Vec<u64>,
}

/// Per-inode I/O modes of one mount.
pub struct IoModes<B> {
    inodes: Mutex<HashMap<u64, InodeIo<B>>>,
    handles: Mutex<HashMap<u64, (u64, Kind, bool)>>,
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
    /// joins one that is under way as a passthrough-direct file (the kernel
    /// leaves no other choice). `backing` registers the backing file with
    /// the kernel; it is called at most once per passthrough period of an
    /// inode, and when it fails (no kernel support, no privilege) the open
    /// falls back to cached.
    pub fn open(
        &self,
        ino: u64,
        fh: u64,
        access: Access,
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
            match access {
                Access::Read => (Grant::Passthrough(b), Kind::Passthrough),
                _ => (Grant::PassthroughDirect(b), Kind::Passthrough),
            }
        } else if access == Access::Write {
            (Grant::Direct, Kind::Direct)
        } else if access == Access::ReadWrite || !may_pass_through || io.cached > 0 {
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
        let direct = matches!(grant, Grant::Direct | Grant::PassthroughDirect(_));
        self.handles.lock().insert(fh, (ino, kind, direct));
        grant
    }

    /// Forgets handle `fh`; the last passthrough handle of an inode closes
    /// its backing id (by dropping it).
    pub fn release(&self, fh: u64) {
        let Some((ino, kind, _)) = self.handles.lock().remove(&fh) else {
            return;
        };
        let mut inodes = self.inodes.lock();
        let Some(io) = inodes.get_mut(&ino) else {
            return;
        };
        match kind {
            Kind::Passthrough => io.passthrough = io.passthrough.saturating_sub(1),
            Kind::Cached => io.cached = io.cached.saturating_sub(1),
            Kind::Direct => {}
        }
        if io.passthrough == 0 {
            io.backing = None;
        }
        if io.cached == 0 && io.passthrough == 0 {
            inodes.remove(&ino);
        }
    }

    /// For a takeover (see `home::handoff`): every open handle and the
    /// backing of every inode in a passthrough period, as `id` names it.
    pub fn export(&self, id: impl Fn(&B) -> u32) -> IoExport {
        let hs = self.handles.lock();
        let handles = hs
            .iter()
            .map(|(&fh, &(ino, k, _))| (fh, ino, k == Kind::Passthrough))
            .collect();
        let direct = hs.iter().filter(|(_, h)| h.2).map(|(&fh, _)| fh).collect();
        let backings = self
            .inodes
            .lock()
            .iter()
            .filter_map(|(&ino, io)| Some((ino, id(io.backing.as_deref()?))))
            .collect();
        IoExport {
            handles,
            backings,
            direct,
        }
    }

    /// Takes over what [`Self::export`] gave; `adopt` turns a backing id
    /// into the token (each id is adopted once).
    pub fn import(&self, e: &IoExport, mut adopt: impl FnMut(u32) -> B) {
        let mut inodes = self.inodes.lock();
        for &(ino, id) in &e.backings {
            inodes.entry(ino).or_default().backing = Some(Arc::new(adopt(id)));
        }
        let mut hs = self.handles.lock();
        for &(fh, ino, pt) in &e.handles {
            let direct = e.direct.contains(&fh);
            let io = inodes.entry(ino).or_default();
            let kind = match (pt, direct) {
                (true, _) => {
                    io.passthrough += 1;
                    Kind::Passthrough
                }
                (false, true) => Kind::Direct,
                (false, false) => {
                    io.cached += 1;
                    Kind::Cached
                }
            };
            hs.insert(fh, (ino, kind, direct));
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

    use Access::{Read, ReadWrite, Write};

    fn kind<B>(g: &Grant<B>) -> &'static str {
        match g {
            Grant::Passthrough(_) => "passthrough",
            Grant::PassthroughDirect(_) => "passthrough-direct",
            Grant::Cached => "cached",
            Grant::Direct => "direct",
        }
    }

    #[test]
    fn access_comes_from_the_open_flags() {
        assert_eq!(Access::of(libc::O_RDONLY), Read);
        assert_eq!(Access::of(libc::O_RDONLY | libc::O_TRUNC), ReadWrite);
        assert_eq!(Access::of(libc::O_WRONLY | libc::O_APPEND), Write);
        assert_eq!(Access::of(libc::O_RDWR), ReadWrite);
    }

    #[test]
    fn readers_share_one_backing_and_writers_join_them_direct() {
        let io = IoModes::<u32>::default();
        let made = Cell::new(0);
        let mk = || {
            made.set(made.get() + 1);
            Some(7)
        };
        let a = io.open(5, 1, Read, true, mk);
        let b = io.open(5, 2, Read, true, || unreachable!("one backing per inode"));
        match (&a, &b) {
            (Grant::Passthrough(x), Grant::Passthrough(y)) => assert!(Arc::ptr_eq(x, y)),
            _ => panic!("readers should pass through: {} {}", kind(&a), kind(&b)),
        }
        assert_eq!(made.get(), 1);
        // Even past the soft limit: the kernel accepts nothing else now,
        // and the writer's reads and writes still come to the daemon.
        for (fh, access) in [(3, Write), (4, ReadWrite)] {
            match io.open(5, fh, access, false, || None) {
                Grant::PassthroughDirect(x) => assert_eq!(*x, 7),
                g => panic!("{access:?}: {}", kind(&g)),
            }
        }
        io.release(1);
        io.release(2);
        io.release(3);
        assert_eq!(
            kind(&io.open(5, 5, Read, true, || None)),
            "passthrough",
            "the writer still holds the period"
        );
        io.release(4);
        io.release(5);
        assert_eq!(kind(&io.open(5, 6, ReadWrite, true, || None)), "cached");
        io.release(6);
        assert_eq!(io.open_handles(), 0);
    }

    #[test]
    fn a_write_only_open_is_direct_and_neutral() {
        let io = IoModes::<u32>::default();
        assert_eq!(kind(&io.open(8, 1, Write, true, || None)), "direct");
        // A reader may still pass through beside it...
        assert_eq!(kind(&io.open(8, 2, Read, true, || Some(3))), "passthrough");
        // ...and the next writer joins that period.
        assert_eq!(
            kind(&io.open(8, 3, Write, true, || None)),
            "passthrough-direct"
        );
        for fh in 1..=3 {
            io.release(fh);
        }
        assert_eq!(io.open_handles(), 0);
    }

    #[test]
    fn past_the_soft_limit_readers_stay_cached() {
        let io = IoModes::<u32>::default();
        let g = io.open(2, 1, Read, false, || unreachable!("no passthrough asked"));
        assert_eq!(kind(&g), "cached");
    }

    #[test]
    fn a_reader_of_a_file_open_for_reading_and_writing_is_cached() {
        let io = IoModes::<u32>::default();
        assert_eq!(kind(&io.open(9, 1, ReadWrite, true, || None)), "cached");
        assert_eq!(
            kind(&io.open(9, 2, Read, true, || unreachable!(
                "no passthrough while cached"
            ))),
            "cached"
        );
        io.release(1);
        // One cached reader is still open: still cached.
        assert_eq!(kind(&io.open(9, 3, Read, true, || Some(1))), "cached");
        io.release(2);
        io.release(3);
        assert_eq!(kind(&io.open(9, 4, Read, true, || Some(1))), "passthrough");
    }

    #[test]
    fn a_new_backing_is_made_after_the_last_passthrough_handle_closes() {
        let io = IoModes::<u32>::default();
        let first = io.open(3, 1, Read, true, || Some(1));
        io.release(1);
        drop(first);
        match io.open(3, 2, Read, true, || Some(2)) {
            Grant::Passthrough(b) => assert_eq!(*b, 2),
            g => panic!("{}", kind(&g)),
        }
    }

    #[test]
    fn no_kernel_support_falls_back_to_cached() {
        let io = IoModes::<u32>::default();
        assert_eq!(kind(&io.open(3, 1, Read, true, || None)), "cached");
        assert_eq!(kind(&io.open(3, 2, ReadWrite, true, || None)), "cached");
        io.release(1);
        io.release(2);
        io.release(2); // a repeated release is harmless
        assert_eq!(io.open_handles(), 0);
    }

    #[test]
    fn a_takeover_keeps_every_mode() {
        let io = IoModes::<u32>::default();
        let _ = io.open(5, 1, Read, true, || Some(42));
        let _ = io.open(5, 2, Write, true, || None);
        let _ = io.open(6, 3, Write, true, || None);
        let _ = io.open(7, 4, ReadWrite, true, || None);
        let e = io.export(|b| *b);
        assert_eq!(e.backings, vec![(5, 42)]);
        let new = IoModes::<u32>::default();
        new.import(&e, |id| id);
        // Inode 6 has only a direct writer: a reader may pass through.
        assert_eq!(kind(&new.open(6, 5, Read, true, || Some(9))), "passthrough");
        // Inode 7 is cached, inode 5 still in its period.
        assert_eq!(kind(&new.open(7, 6, Read, true, || None)), "cached");
        assert_eq!(
            kind(&new.open(5, 7, ReadWrite, true, || None)),
            "passthrough-direct"
        );
        assert_eq!(new.export(|b| *b).direct.len(), 3);
    }
}
