//! Open files of the home layer: open, create, read, write and the other
//! calls on a file handle, each size change accounted through
//! `HomeFs::resize`, and the bookkeeping of passthrough writers adopted from
//! an older server in a takeover (see `iomode`).

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::error::HomeError;
use super::fs::{Entry, HomeFs, Result};
use super::inodes::{self, Inode, Unmediated};
use super::syscalls as sys;

/// One open file of the kernel.
pub(super) struct Handle {
    pub(super) file: File,
    pub(super) inode: Arc<Inode>,
    pub(super) append: bool,
    /// Written through this handle since the last flush: only then has a
    /// close anything to report.
    pub(super) dirty: AtomicBool,
    /// The kernel writes through this handle without us: a passthrough
    /// writer adopted from an older server (see `iomode`).
    pub(super) unmediated: AtomicBool,
}

thread_local! {
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Flags for opening the backing file on the caller's behalf: what only
/// the kernel's side of the open means (creation, truncation) is left out,
/// and so is O_DIRECT: the kernel already serves such an open without its
/// page cache, and the daemon's buffers meet no alignment rule a backing
/// filesystem may set for direct I/O (EINVAL for a 4 KiB `dd oflag=direct`).
fn open_flags(flags: i32) -> i32 {
    flags
        & !(libc::O_CREAT
            | libc::O_EXCL
            | libc::O_NOCTTY
            | libc::O_TRUNC
            | libc::O_DIRECT
            | FMODE_EXEC)
}

/// `__FMODE_EXEC`: the kernel opens the file to execute it.
const FMODE_EXEC: i32 = 0x20;

impl HomeFs {
    pub(super) fn handle(&self, fh: u64) -> Result<Arc<Handle>> {
        self.files
            .read()
            .get(&fh)
            .cloned()
            .ok_or(HomeError::Os(libc::EBADF))
    }

    /// Files the daemon holds open (the kernel releases them after close
    /// returns, in the background).
    pub fn open_files(&self) -> usize {
        self.files.read().len()
    }

    /// Registers an open file of `inode`. One whose last name already went
    /// (an open racing an unlink, the kernel still holding the inode) is
    /// charged again, as an orphan, until its last close: its writes must
    /// count, and it was uncharged with its name.
    fn add_handle(&self, file: File, inode: Arc<Inode>, flags: i32) -> u64 {
        {
            let mut g = inode.size_lock.lock();
            g.open += 1;
            if !g.orphan {
                if let Ok(st) = sys::stat_fd(file.as_fd()) {
                    if st.st_nlink == 0 && sys::is_reg(&st) {
                        g.orphan = true;
                        let (b, i) = self.charge_with(&st, || self.xattr_charge_fd(file.as_fd()));
                        self.usage.apply(b, i);
                    }
                }
            }
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let append = flags & libc::O_APPEND != 0;
        self.files.write().insert(
            fh,
            Arc::new(Handle {
                file,
                inode,
                append,
                dirty: false.into(),
                unmediated: false.into(),
            }),
        );
        fh
    }

    /// Opens inode `ino` for the caller. An open to execute needs only
    /// execute permission, as natively (a `--x` program runs): it is
    /// checked for the caller, and the file opened for reading by the
    /// server.
    pub fn open(&self, ino: u64, flags: i32) -> Result<u64> {
        let i = self.inode(ino)?;
        let file = if flags & FMODE_EXEC != 0 {
            sys::access(i.fd()?.as_fd(), libc::X_OK)?;
            super::identity::as_server(|| sys::reopen(i.fd()?.as_fd(), libc::O_RDONLY))??
        } else {
            sys::reopen(i.fd()?.as_fd(), open_flags(flags))?
        };
        let fh = self.add_handle(file, i.clone(), flags);
        if flags & libc::O_TRUNC != 0 && flags & libc::O_ACCMODE != libc::O_RDONLY {
            let h = self.handle(fh)?;
            if let Err(e) = self.truncate_file(&i, &h.file, 0) {
                self.release(fh);
                return Err(e);
            }
        }
        Ok(fh)
    }

    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Result<(Entry, u64)> {
        let p = self.inode(parent)?;
        let n = sys::name(name)?;
        // The kernel has followed any symlink already; one here appeared
        // since, and following it would create an inode nobody charged.
        let oflags = open_flags(flags | libc::O_CREAT) | libc::O_NOFOLLOW;
        // Unmasked: the backing filesystem applies the caller's umask, or
        // the directory's default ACL instead, as a native one does.
        let make = |oflags: i32, new: bool| {
            self.charged(0, new as u64, || {
                sys::with_umask(umask, || sys::create_at(p.fd()?.as_fd(), &n, oflags, mode))
            })
        };
        // No other change of this name through this mount meanwhile: what
        // was there before stays there (see `names`).
        let _names = self.names.names(&[(parent, &n)]);
        // Mostly the name is new: try that first (success means new). If
        // it exists after all (or the inode quota is full), open it as it
        // is, knowing what was there before.
        let (file, ledger, before) = match make(oflags | libc::O_EXCL, true) {
            Ok((f, l)) => (f, l, None),
            Err(e)
                if flags & libc::O_EXCL == 0
                    && matches!(e, HomeError::Os(libc::EEXIST) | HomeError::Quota(_)) =>
            {
                let before = sys::stat_at(p.fd()?.as_fd(), &n).ok();
                let (f, l) = make(oflags, before.is_none())?;
                (f, l, before)
            }
            Err(e) => return Err(e),
        };
        let mut st = sys::stat_fd(file.as_fd())?;
        if let (Some(l), None) = (&ledger, before) {
            l.born(inodes::key_of(&st));
        }
        drop(ledger);
        let e = self.remember_as(&p, &n, st)?;
        let i = self.inode(e.ino)?;
        if flags & libc::O_TRUNC != 0 && before.is_some() && st.st_size != 0 {
            self.truncate_file(&i, &file, 0)?;
            st = sys::stat_fd(file.as_fd())?;
        }
        let fh = self.add_handle(file, i, flags);
        Ok((Entry { ino: e.ino, st }, fh))
    }

    /// Reads into a per-thread buffer and hands the bytes to `reply`.
    pub fn read<R>(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        reply: impl FnOnce(Result<&[u8]>) -> R,
    ) -> R {
        let h = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply(Err(e)),
        };
        self.daemon_reads.fetch_add(1, Ordering::Relaxed);
        READ_BUF.with(|b| {
            let mut buf = b.borrow_mut();
            if buf.len() < size as usize {
                buf.resize(size as usize, 0);
            }
            match sys::pread(&h.file, &mut buf[..size as usize], offset) {
                Ok(n) => reply(Ok(&buf[..n])),
                Err(e) => reply(Err(e)),
            }
        })
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<usize> {
        let h = self.handle(fh)?;
        let end = |before: u64, n: u64| if h.append { before } else { offset } + n;
        let n = self.resize_to(
            &h.inode,
            &h.file,
            |before| end(before, data.len() as u64).saturating_sub(before),
            |before| {
                let n = sys::pwrite(&h.file, data, offset)?;
                Ok((n, Some(end(before, n as u64).max(before))))
            },
        )?;
        h.dirty.store(true, Ordering::Relaxed);
        Ok(n)
    }

    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> Result<()> {
        let h = self.handle(fh)?;
        let grows = mode & (libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE) == 0;
        self.resize(
            &h.inode,
            &h.file,
            |before| match grows {
                true => offset.saturating_add(length).saturating_sub(before),
                false => 0,
            },
            || sys::fallocate(&h.file, mode, offset, length),
        )
    }

    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> Result<usize> {
        let (hi, ho) = (self.handle(fh_in)?, self.handle(fh_out)?);
        let n = self.resize(
            &ho.inode,
            &ho.file,
            |before| off_out.saturating_add(len).saturating_sub(before),
            || sys::copy_file_range(&hi.file, off_in, &ho.file, off_out, len),
        )?;
        ho.dirty.store(true, Ordering::Relaxed);
        Ok(n)
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        sys::lseek(&self.handle(fh)?.file, offset, whence)
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        sys::sync(&self.handle(fh)?.file, datasync)
    }

    /// A `close()` of the caller: if the handle was written, closes a
    /// duplicate of the backing descriptor so a network filesystem's
    /// deferred write errors (NFS reports ENOSPC, EDQUOT, EIO at close)
    /// reach the caller's close, as libfuse's passthrough does.
    pub fn flush(&self, fh: u64) -> Result<()> {
        let h = self.handle(fh)?;
        if !h.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        sys::close_duplicate(&h.file)
    }

    /// Runs `f` on the backing file of an open handle.
    pub fn with_file<T>(&self, fh: u64, f: impl FnOnce(&File) -> T) -> Result<T> {
        Ok(f(&self.handle(fh)?.file))
    }

    /// The kernel is done with handle `fh`. The last close of a file whose
    /// last name went meanwhile (an orphan) uncharges it: its data leaves
    /// the share now.
    pub fn release(&self, fh: u64) {
        let Some(h) = self.files.write().remove(&fh) else {
            return;
        };
        let mut g = match h.unmediated.load(Ordering::Relaxed) {
            true => {
                let mut g = self.charge_unseen(&h);
                g.writers = g.writers.saturating_sub(1);
                g
            }
            false => h.inode.size_lock.lock(),
        };
        g.open = g.open.saturating_sub(1);
        if g.open == 0 && g.orphan {
            g.orphan = false;
            if let Ok(st) = sys::stat_fd(h.file.as_fd()) {
                let (b, i) = self.charge_with(&st, || self.xattr_charge_fd(h.file.as_fd()));
                self.usage.apply(-b, -i);
            }
        }
    }

    /// True if any open handle is a passthrough writer (adopted).
    pub fn has_unmediated(&self) -> bool {
        self.files
            .read()
            .values()
            .any(|h| h.unmediated.load(Ordering::Relaxed))
    }

    /// Charges what passthrough writers wrote since the last look (the
    /// mount calls it twice a second while there are any). Only a takeover
    /// from a server before `FOPEN_DIRECT_IO` writers brings such writers
    /// (see `iomode`); this server never makes one.
    pub fn settle_unmediated(&self) {
        let open: Vec<Arc<Handle>> = self
            .files
            .read()
            .values()
            .filter(|h| h.unmediated.load(Ordering::Relaxed))
            .cloned()
            .collect();
        for h in &open {
            drop(self.charge_unseen(h));
        }
    }

    /// Charges the size change of a passthrough writer's file since it was
    /// last seen; returns the inode's size lock, still held.
    fn charge_unseen<'a>(&self, h: &'a Handle) -> parking_lot::MutexGuard<'a, Unmediated> {
        let mut g = h.inode.size_lock.lock();
        if let Ok(st) = sys::stat_fd(h.file.as_fd()) {
            g.seen(&self.usage, st.st_size);
        }
        g
    }
}

/// `FS_IOC_GETFLAGS` (and its 32-bit twin) and `FS_IOC_FSGETXATTR`.
pub const FS_IOC_GETFLAGS: u32 = 0x8008_6601;
pub const FS_IOC32_GETFLAGS: u32 = 0x8004_6601;
pub use sys::FS_IOC_FSGETXATTR;

impl HomeFs {
    /// Answers an inode-flag ioctl (`lsattr`, `FS_IOC_FSGETXATTR`) on
    /// handle `fh` of `ino` from the backing inode, at most `out_size`
    /// bytes; `None` for any other command. The kernel asks with a
    /// directory handle for directories: the inode is opened for it then.
    pub fn flags_ioctl(
        &self,
        ino: u64,
        fh: u64,
        cmd: u32,
        out_size: u32,
    ) -> Option<Result<Vec<u8>>> {
        if ![FS_IOC_GETFLAGS, FS_IOC32_GETFLAGS, FS_IOC_FSGETXATTR].contains(&cmd) {
            return None;
        }
        let answer = |f: &File| -> Result<Vec<u8>> {
            let mut v = match cmd {
                FS_IOC_FSGETXATTR => sys::fs_xattr(f)?.to_bytes().to_vec(),
                _ => sys::inode_flags(f)?.to_ne_bytes().to_vec(),
            };
            v.resize(out_size as usize, 0);
            Ok(v)
        };
        Some(match self.handle(fh) {
            Ok(h) => answer(&h.file),
            Err(_) => self.inode(ino).and_then(|i| {
                let flags = libc::O_RDONLY | libc::O_NONBLOCK;
                answer(&sys::reopen(i.fd()?.as_fd(), flags)?)
            }),
        })
    }
}
