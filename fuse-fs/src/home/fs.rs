//! The passthrough core: POSIX operations on the backing directory, each one
//! accounted in [`Usage`].
//!
//! Every inode the kernel knows is held as an `O_PATH` file descriptor on the
//! backing inode (as libfuse's `passthrough_ll`), so renames and deep paths
//! cost nothing and an inode stays valid however it is renamed. Operations
//! are `*at()` calls relative to those descriptors, or go through
//! `/proc/self/fd/N` where Linux has no `*at()` form.
//!
//! The daemon runs as root. Permission checks are the kernel's (the mount
//! uses `default_permissions`, so they are made against the caller's uid,
//! gids and the mode bits we report); objects are created with the caller's
//! fsuid/fsgid so they belong to the caller (and inherit a set-gid
//! directory's group) exactly as on the native filesystem.
//!
//! Accounting rules (the same as the walker's, so a fresh walk agrees):
//! bytes are apparent sizes of non-directories, a multiply-linked file counts
//! once, every file, directory and symlink is one inode.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use hubfs_walker::{WalkError, WalkStats, Walker};
use parking_lot::{MappedRwLockReadGuard, Mutex, RwLock, RwLockReadGuard};

use super::error::HomeError;
use super::ledger::{charge_of, Ledger};
use super::usage::Usage;

pub type Result<T> = std::result::Result<T, HomeError>;

/// The FUSE inode number of the root.
pub const ROOT: u64 = 1;

/// Extended attribute (on the root) that reads the accounted usage.
pub const XATTR_USAGE: &str = "user.hubfs.usage";
/// Extended attribute (on the root) that root may set to `cleanup` or
/// `normal` to switch no-write mode by hand.
pub const XATTR_MODE: &str = "user.hubfs.mode";

/// Who asks: taken from the FUSE request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

impl Caller {
    pub const ROOT: Caller = Caller { uid: 0, gid: 0 };
}

/// A time to set: a specific one, now, or unchanged.
#[derive(Debug, Clone, Copy)]
pub enum SetTime {
    Omit,
    Now,
    At(SystemTime),
}

/// Attribute changes of one `setattr`.
#[derive(Debug, Clone, Copy)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: SetTime,
    pub mtime: SetTime,
}

/// An inode known to the kernel.
struct Inode {
    fd: OwnedFd,
    key: (u64, u64),
    nlookup: AtomicU64,
    /// Serialises size-changing operations so the before/after sizes
    /// measured around each one belong to it alone.
    size_lock: Mutex<Unmediated>,
}

/// Size changes the daemon does not see: a writer the kernel serves itself
/// (a passthrough file; see `iomode`). While such writers are open, the size
/// last accounted is kept, and the drift is charged whenever the daemon
/// looks: around its own size changes, by the periodic
/// [`HomeFs::settle_unmediated`], and when the writer closes.
#[derive(Default)]
struct Unmediated {
    writers: u32,
    baseline: i64,
}

impl Unmediated {
    /// The file is `now` bytes: charges what changed unseen.
    fn seen(&mut self, usage: &Usage, now: i64) {
        if self.writers > 0 {
            usage.apply(now - self.baseline, 0);
            self.baseline = now;
        }
    }

    /// The daemon's own change to `now` bytes is already charged.
    fn rebase(&mut self, now: i64) {
        if self.writers > 0 {
            self.baseline = now;
        }
    }
}

#[derive(Default)]
struct Table {
    by_ino: HashMap<u64, Arc<Inode>>,
    by_key: HashMap<(u64, u64), u64>,
    next: u64,
}

struct Handle {
    file: File,
    inode: Arc<Inode>,
    append: bool,
    /// Written through this handle since the last flush: only then has a
    /// close anything to report.
    dirty: AtomicBool,
    /// The kernel writes through this handle without us (passthrough).
    unmediated: AtomicBool,
}

/// One directory entry as listed.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: u8,
    pub name: OsString,
}

/// A looked-up inode: FUSE number and attributes.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub ino: u64,
    pub st: libc::stat,
}

/// The home passthrough filesystem.
pub struct HomeFs {
    inodes: RwLock<Table>,
    files: RwLock<HashMap<u64, Arc<Handle>>>,
    dirs: Mutex<HashMap<u64, Vec<DirEntry>>>,
    next_fh: AtomicU64,
    usage: Arc<Usage>,
    root_dev: u64,
    /// Reads the daemon served (passthrough reads never get here).
    daemon_reads: AtomicU64,
    /// The mount-time walk while it runs (see `ledger`); `walking` lets
    /// every operation after it skip the lock.
    walk: RwLock<Option<Arc<Ledger>>>,
    walking: AtomicBool,
}

/// Passes over the home when directories keep moving during the walk.
const MAX_WALK_PASSES: usize = 3;

fn errno() -> HomeError {
    HomeError::Os(
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

fn cvt(r: libc::c_int) -> Result<libc::c_int> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

fn cvt_isize(r: isize) -> Result<usize> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(r as usize)
    }
}

fn cname(name: &OsStr) -> Result<CString> {
    if name.is_empty() || name.as_bytes().contains(&b'/') {
        return Err(HomeError::Os(libc::EINVAL));
    }
    CString::new(name.as_bytes()).map_err(|_| HomeError::Os(libc::EINVAL))
}

fn proc_path(fd: RawFd) -> CString {
    CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL in a number")
}

const EMPTY: &CStr = c"";

fn stat_at(dir: RawFd, name: &CStr, flags: libc::c_int) -> Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: st is a valid out-pointer for one stat struct.
    cvt(unsafe {
        libc::fstatat(
            dir,
            name.as_ptr(),
            st.as_mut_ptr(),
            flags | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded, so st is initialised.
    Ok(unsafe { st.assume_init() })
}

fn stat_fd(fd: RawFd) -> Result<libc::stat> {
    stat_at(fd, EMPTY, libc::AT_EMPTY_PATH)
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Runs `f` with the caller's filesystem uid/gid on this thread, so what it
/// creates belongs to the caller. setfsuid is per thread on Linux.
fn as_caller<T>(c: Caller, f: impl FnOnce() -> T) -> T {
    if c == Caller::ROOT {
        return f();
    }
    // SAFETY: raw syscalls changing only this thread's fs credentials; the
    // libc wrappers would do the same. Restored right after.
    unsafe {
        libc::syscall(libc::SYS_setfsgid, c.gid);
        libc::syscall(libc::SYS_setfsuid, c.uid);
    }
    let r = f();
    // SAFETY: as above, back to root.
    unsafe {
        libc::syscall(libc::SYS_setfsuid, 0);
        libc::syscall(libc::SYS_setfsgid, 0);
    }
    r
}

fn timespec(t: SetTime) -> libc::timespec {
    match t {
        SetTime::Omit => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        SetTime::Now => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        SetTime::At(t) => {
            let (sec, nsec) = match t.duration_since(SystemTime::UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i64),
                Err(e) => {
                    let d = e.duration();
                    let (s, n) = (-(d.as_secs() as i64), d.subsec_nanos() as i64);
                    if n == 0 {
                        (s, 0)
                    } else {
                        (s - 1, 1_000_000_000 - n)
                    }
                }
            };
            libc::timespec {
                tv_sec: sec,
                tv_nsec: nsec,
            }
        }
    }
}

thread_local! {
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl HomeFs {
    /// Opens `root` (the user's directory on the share) for serving.
    pub fn new(root: &Path, usage: Arc<Usage>) -> Result<Self> {
        let c =
            CString::new(root.as_os_str().as_bytes()).map_err(|_| HomeError::Os(libc::EINVAL))?;
        // SAFETY: plain open of a NUL-terminated path.
        let fd = cvt(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: fd was just returned by open and is owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let st = stat_fd(fd.as_raw_fd())?;
        let key = (st.st_dev, st.st_ino);
        let mut t = Table {
            next: ROOT + 1,
            ..Default::default()
        };
        t.by_key.insert(key, ROOT);
        t.by_ino.insert(
            ROOT,
            Arc::new(Inode {
                fd,
                key,
                nlookup: AtomicU64::new(1),
                size_lock: Mutex::new(Unmediated::default()),
            }),
        );
        Ok(HomeFs {
            inodes: RwLock::new(t),
            files: RwLock::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            usage,
            root_dev: st.st_dev,
            daemon_reads: AtomicU64::new(0),
            walk: RwLock::new(None),
            walking: AtomicBool::new(false),
        })
    }

    /// Starts recording the daemon's changes for a mount-time walk; call it
    /// before the mount serves anything, then [`Self::walk_baseline`].
    pub fn begin_walk(&self) -> Arc<Ledger> {
        let l = Arc::new(Ledger::new(self.root_dev));
        *self.walk.write() = Some(l.clone());
        self.walking.store(true, Ordering::Release);
        l
    }

    /// Walks `root` (this home's directory) and adds what it holds to the
    /// counters, each inode counted once whether the walk or a change made
    /// meanwhile got to it first. Walks again if a directory moved during
    /// a pass. Returns the walk's own figures and the baseline it added
    /// (bytes, inodes): what the home held, less the changes since the mount.
    pub fn walk_baseline(
        &self,
        root: &Path,
        walker: &Walker,
        cancel: &AtomicBool,
    ) -> std::result::Result<(WalkStats, (u64, u64)), WalkError> {
        let running = self.walk.read().clone();
        let ledger = running.unwrap_or_else(|| self.begin_walk());
        let mut total = WalkStats::default();
        for pass in 1..=MAX_WALK_PASSES {
            let s = match walker.walk_gated(root, &Default::default(), cancel, Some(&*ledger)) {
                Ok(s) => s,
                Err(e) => {
                    self.end_walk(None);
                    return Err(e);
                }
            };
            total.add(&s);
            total.elapsed += s.elapsed;
            total.timed_out |= s.timed_out;
            if total.timed_out || !ledger.take_disturbed() {
                break;
            }
            if pass == MAX_WALK_PASSES {
                tracing::warn!(
                    passes = pass,
                    "directories kept moving during the walk; usage may be low until the next reconciliation"
                );
            } else {
                tracing::debug!(pass, "a directory moved during the walk; walking again");
            }
        }
        let base = self.end_walk(Some(&total)).unwrap_or_default();
        Ok((total, base))
    }

    /// Stops recording; with figures, adds the baseline in the same step,
    /// so no change falls between the ledger and the counters.
    pub(super) fn end_walk(&self, walked: Option<&WalkStats>) -> Option<(u64, u64)> {
        let mut w = self.walk.write();
        self.walking.store(false, Ordering::Release);
        let (l, s) = (w.take()?, walked?);
        let (b, i) = l.baseline(s);
        self.usage.add_baseline(b, i);
        Some((b, i))
    }

    /// The running walk's ledger, if any. Held across an operation that
    /// creates an inode so that the walk cannot end between the creation
    /// and [`Ledger::born`].
    fn ledger(&self) -> Option<MappedRwLockReadGuard<'_, Ledger>> {
        if !self.walking.load(Ordering::Acquire) {
            return None;
        }
        // Recursive: an operation may look again while holding it, and a
        // waiting end_walk must not deadlock it.
        RwLockReadGuard::try_map(self.walk.read_recursive(), |w| w.as_deref()).ok()
    }

    /// `st` is about to change or go away (see [`Ledger::freeze`]).
    fn freeze(&self, st: &libc::stat) {
        if let Some(l) = self.ledger() {
            l.freeze((st.st_dev, st.st_ino), charge_of(st));
        }
    }

    pub fn usage(&self) -> &Arc<Usage> {
        &self.usage
    }

    /// Read requests served by the daemon so far.
    pub fn daemon_reads(&self) -> u64 {
        self.daemon_reads.load(Ordering::Relaxed)
    }

    /// Files the daemon holds open (the kernel releases them after close
    /// returns, in the background).
    pub fn open_files(&self) -> usize {
        self.files.read().len()
    }

    fn inode(&self, ino: u64) -> Result<Arc<Inode>> {
        self.inodes
            .read()
            .by_ino
            .get(&ino)
            .cloned()
            .ok_or(HomeError::Os(libc::ESTALE))
    }

    fn handle(&self, fh: u64) -> Result<Arc<Handle>> {
        self.files
            .read()
            .get(&fh)
            .cloned()
            .ok_or(HomeError::Os(libc::EBADF))
    }

    /// Registers one more kernel reference to `parent/name` and returns it.
    fn remember(&self, parent: &Inode, name: &CStr) -> Result<Entry> {
        let st = stat_at(parent.fd.as_raw_fd(), name, 0)?;
        self.remember_as(parent, name, st)
    }

    /// As [`Self::remember`], with the entry's attributes already at hand.
    fn remember_as(&self, parent: &Inode, name: &CStr, st: libc::stat) -> Result<Entry> {
        let key = (st.st_dev, st.st_ino);
        {
            let t = self.inodes.read();
            if let Some(i) = t.by_key.get(&key).and_then(|ino| t.by_ino.get(ino)) {
                i.nlookup.fetch_add(1, Ordering::AcqRel);
                return Ok(Entry {
                    ino: t.by_key[&key],
                    st,
                });
            }
        }
        // SAFETY: openat relative to a valid O_PATH directory descriptor.
        let fd = cvt(unsafe {
            libc::openat(
                parent.fd.as_raw_fd(),
                name.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: fd was just returned by openat and is owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let st = stat_fd(fd.as_raw_fd())?;
        let key = (st.st_dev, st.st_ino);
        let mut t = self.inodes.write();
        if let Some(&ino) = t.by_key.get(&key) {
            if let Some(i) = t.by_ino.get(&ino) {
                i.nlookup.fetch_add(1, Ordering::AcqRel);
                return Ok(Entry { ino, st });
            }
        }
        let ino = t.next;
        t.next += 1;
        t.by_key.insert(key, ino);
        t.by_ino.insert(
            ino,
            Arc::new(Inode {
                fd,
                key,
                nlookup: AtomicU64::new(1),
                size_lock: Mutex::new(Unmediated::default()),
            }),
        );
        Ok(Entry { ino, st })
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Entry> {
        let p = self.inode(parent)?;
        self.remember(&p, &cname(name)?)
    }

    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let mut t = self.inodes.write();
        let gone = match t.by_ino.get(&ino) {
            Some(i) => {
                let left = i.nlookup.load(Ordering::Acquire).saturating_sub(n);
                i.nlookup.store(left, Ordering::Release);
                (left == 0).then_some(i.key)
            }
            None => None,
        };
        if let Some(key) = gone {
            t.by_ino.remove(&ino);
            if t.by_key.get(&key) == Some(&ino) {
                t.by_key.remove(&key);
            }
        }
    }

    pub fn getattr(&self, ino: u64) -> Result<libc::stat> {
        stat_fd(self.inode(ino)?.fd.as_raw_fd())
    }

    pub fn setattr(&self, ino: u64, fh: Option<u64>, a: SetAttr) -> Result<libc::stat> {
        let inode = self.inode(ino)?;
        let handle = fh.and_then(|fh| self.handle(fh).ok());
        let path = proc_path(inode.fd.as_raw_fd());
        if let Some(mode) = a.mode {
            match &handle {
                // SAFETY: fchmod on an open descriptor.
                Some(h) => cvt(unsafe { libc::fchmod(h.file.as_raw_fd(), mode & 0o7777) })?,
                // SAFETY: chmod of a NUL-terminated path.
                None => cvt(unsafe { libc::chmod(path.as_ptr(), mode & 0o7777) })?,
            };
        }
        if a.uid.is_some() || a.gid.is_some() {
            let uid = a.uid.unwrap_or(u32::MAX);
            let gid = a.gid.unwrap_or(u32::MAX);
            // SAFETY: fchownat with AT_EMPTY_PATH on a valid descriptor.
            cvt(unsafe {
                libc::fchownat(
                    inode.fd.as_raw_fd(),
                    EMPTY.as_ptr(),
                    uid,
                    gid,
                    libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
        }
        if let Some(size) = a.size {
            match &handle {
                Some(h) => self.truncate_fd(&inode, h.file.as_raw_fd(), size)?,
                None => {
                    // SAFETY: open of a NUL-terminated path.
                    let fd = cvt(unsafe {
                        libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC)
                    })?;
                    // SAFETY: fd was just returned by open and is owned here.
                    let f = unsafe { File::from_raw_fd(fd) };
                    self.truncate_fd(&inode, f.as_raw_fd(), size)?;
                }
            }
        }
        if !matches!((a.atime, a.mtime), (SetTime::Omit, SetTime::Omit)) {
            let times = [timespec(a.atime), timespec(a.mtime)];
            match &handle {
                // SAFETY: futimens with a two-element array.
                Some(h) => cvt(unsafe { libc::futimens(h.file.as_raw_fd(), times.as_ptr()) })?,
                // SAFETY: utimensat of a NUL-terminated path with a two-element array.
                None => cvt(unsafe {
                    libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0)
                })?,
            };
        }
        stat_fd(inode.fd.as_raw_fd())
    }

    /// Truncate (shrink always allowed, growth reserved first).
    fn truncate_fd(&self, inode: &Inode, fd: RawFd, size: u64) -> Result<()> {
        self.resize(
            inode,
            fd,
            |before| size.saturating_sub(before),
            // SAFETY: ftruncate on an open descriptor.
            || cvt(unsafe { libc::ftruncate(fd, size as libc::off_t) }).map(drop),
        )
    }

    /// Runs `op`, which changes the size of the file open as `fd`, under
    /// the inode's size lock: catches up on what passthrough writers wrote,
    /// reserves the growth `grow(size before)` first (EDQUOT past the
    /// limit), and charges the change that really happened.
    fn resize<T>(
        &self,
        inode: &Inode,
        fd: RawFd,
        grow: impl FnOnce(u64) -> u64,
        op: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let mut g = inode.size_lock.lock();
        let st = stat_fd(fd)?;
        let before = st.st_size.max(0) as u64;
        g.seen(&self.usage, before as i64);
        self.freeze(&st);
        let want = grow(before);
        let r = self.usage.reserve(want, 0)?;
        let out = match op() {
            Ok(v) => v,
            Err(e) => {
                self.usage.release(r);
                return Err(e);
            }
        };
        let after = stat_fd(fd)
            .map(|s| s.st_size)
            .unwrap_or((before + want) as i64);
        self.usage.settle(r, after - before as i64, 0);
        g.rebase(after);
        Ok(out)
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let i = self.inode(ino)?;
        let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
        // SAFETY: readlinkat into a buffer of the given length.
        let n = cvt_isize(unsafe {
            libc::readlinkat(
                i.fd.as_raw_fd(),
                EMPTY.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        })?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Creates a non-regular node (fifo, socket, device) or a directory.
    pub fn mknod(
        &self,
        c: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> Result<Entry> {
        let p = self.inode(parent)?;
        let n = cname(name)?;
        let r = self.usage.reserve(0, 1)?;
        let ledger = self.ledger();
        let res = as_caller(c, || {
            // SAFETY: *at calls relative to a valid directory descriptor.
            cvt(unsafe {
                if mode & libc::S_IFMT == libc::S_IFDIR {
                    libc::mkdirat(p.fd.as_raw_fd(), n.as_ptr(), mode & !umask & 0o7777)
                } else {
                    libc::mknodat(
                        p.fd.as_raw_fd(),
                        n.as_ptr(),
                        mode & !umask,
                        rdev as libc::dev_t,
                    )
                }
            })
        });
        if let Err(e) = res {
            self.usage.release(r);
            return Err(e);
        }
        self.usage.settle(r, 0, 1);
        let e = self.remember(&p, &n)?;
        if let Some(l) = ledger {
            l.born((e.st.st_dev, e.st.st_ino));
        }
        Ok(e)
    }

    pub fn mkdir(
        &self,
        c: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> Result<Entry> {
        self.mknod(c, parent, name, (mode & 0o7777) | libc::S_IFDIR, umask, 0)
    }

    pub fn symlink(&self, c: Caller, parent: u64, name: &OsStr, target: &Path) -> Result<Entry> {
        let p = self.inode(parent)?;
        let n = cname(name)?;
        let t =
            CString::new(target.as_os_str().as_bytes()).map_err(|_| HomeError::Os(libc::EINVAL))?;
        let len = t.as_bytes().len() as u64;
        let r = self.usage.reserve(len, 1)?;
        let ledger = self.ledger();
        // SAFETY: symlinkat with NUL-terminated strings and a valid directory.
        let res = as_caller(c, || {
            cvt(unsafe { libc::symlinkat(t.as_ptr(), p.fd.as_raw_fd(), n.as_ptr()) })
        });
        if let Err(e) = res {
            self.usage.release(r);
            return Err(e);
        }
        self.usage.settle(r, len as i64, 1);
        let e = self.remember(&p, &n)?;
        if let Some(l) = ledger {
            l.born((e.st.st_dev, e.st.st_ino));
        }
        Ok(e)
    }

    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Result<Entry> {
        let i = self.inode(ino)?;
        let p = self.inode(newparent)?;
        let n = cname(newname)?;
        // A new name for a counted inode: nothing to charge (hard links count once).
        // SAFETY: linkat with AT_EMPTY_PATH on valid descriptors (root has
        // CAP_DAC_READ_SEARCH, which it needs).
        cvt(unsafe {
            libc::linkat(
                i.fd.as_raw_fd(),
                EMPTY.as_ptr(),
                p.fd.as_raw_fd(),
                n.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        })?;
        self.remember(&p, &n)
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        let p = self.inode(parent)?;
        let n = cname(name)?;
        let st = stat_at(p.fd.as_raw_fd(), &n, 0)?;
        self.freeze(&st);
        // SAFETY: unlinkat relative to a valid directory descriptor.
        cvt(unsafe { libc::unlinkat(p.fd.as_raw_fd(), n.as_ptr(), 0) })?;
        if st.st_nlink <= 1 {
            let (b, i) = charge_of(&st);
            self.usage.apply(-b, -i);
        }
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        let p = self.inode(parent)?;
        let n = cname(name)?;
        if self.walking.load(Ordering::Acquire) {
            self.freeze(&stat_at(p.fd.as_raw_fd(), &n, 0)?);
        }
        // SAFETY: unlinkat relative to a valid directory descriptor.
        cvt(unsafe { libc::unlinkat(p.fd.as_raw_fd(), n.as_ptr(), libc::AT_REMOVEDIR) })?;
        self.usage.apply(0, -1);
        Ok(())
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        let p = self.inode(parent)?;
        let np = self.inode(newparent)?;
        let (n, nn) = (cname(name)?, cname(newname)?);
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let src = stat_at(p.fd.as_raw_fd(), &n, 0)?;
        let target = if exchange {
            None
        } else {
            stat_at(np.fd.as_raw_fd(), &nn, 0).ok()
        };
        if let Some(l) = self.ledger() {
            // A name moving between parts of the tree the walk has and has
            // not reached yet could be counted twice or not at all.
            let other = match exchange {
                true => stat_at(np.fd.as_raw_fd(), &nn, 0).ok(),
                false => target,
            };
            for st in std::iter::once(&src).chain(other.as_ref()) {
                l.freeze((st.st_dev, st.st_ino), charge_of(st));
                if is_dir(st) {
                    l.disturb();
                }
            }
        }
        // SAFETY: renameat2 relative to valid directory descriptors.
        cvt(unsafe {
            libc::renameat2(
                p.fd.as_raw_fd(),
                n.as_ptr(),
                np.fd.as_raw_fd(),
                nn.as_ptr(),
                flags,
            )
        })?;
        if let Some(t) = target {
            let same = (t.st_dev, t.st_ino) == (src.st_dev, src.st_ino);
            if !same && (is_dir(&t) || t.st_nlink <= 1) {
                let (b, i) = charge_of(&t);
                self.usage.apply(-b, -i);
            }
        }
        Ok(())
    }

    fn open_flags(flags: i32) -> i32 {
        (flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_TRUNC)) | libc::O_CLOEXEC
    }

    fn add_handle(&self, file: File, inode: Arc<Inode>, flags: i32) -> u64 {
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

    pub fn open(&self, ino: u64, flags: i32) -> Result<u64> {
        let i = self.inode(ino)?;
        let path = proc_path(i.fd.as_raw_fd());
        // SAFETY: open of a NUL-terminated path.
        let fd = cvt(unsafe { libc::open(path.as_ptr(), Self::open_flags(flags)) })?;
        // SAFETY: fd was just returned by open and is owned here.
        let file = unsafe { File::from_raw_fd(fd) };
        if flags & libc::O_TRUNC != 0 && flags & libc::O_ACCMODE != libc::O_RDONLY {
            self.truncate_fd(&i, file.as_raw_fd(), 0)?;
        }
        Ok(self.add_handle(file, i, flags))
    }

    pub fn create(
        &self,
        c: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Result<(Entry, u64)> {
        let p = self.inode(parent)?;
        let n = cname(name)?;
        // With O_EXCL success means new, so the stat is only for the others.
        let before = if flags & libc::O_EXCL != 0 {
            None
        } else {
            stat_at(p.fd.as_raw_fd(), &n, 0).ok()
        };
        let r = self.usage.reserve(0, before.is_none() as u64)?;
        let ledger = self.ledger();
        // The kernel has followed any symlink already; one here appeared
        // since, and following it would create an inode nobody charged.
        let oflags = (flags & !(libc::O_NOCTTY | libc::O_TRUNC))
            | libc::O_CREAT
            | libc::O_NOFOLLOW
            | libc::O_CLOEXEC;
        let res = as_caller(c, || {
            // SAFETY: openat relative to a valid directory descriptor.
            cvt(unsafe {
                libc::openat(
                    p.fd.as_raw_fd(),
                    n.as_ptr(),
                    oflags,
                    (mode & !umask & 0o7777) as libc::c_uint,
                )
            })
        });
        let fd = match res {
            Ok(fd) => fd,
            Err(e) => {
                self.usage.release(r);
                return Err(e);
            }
        };
        // SAFETY: fd was just returned by openat and is owned here.
        let file = unsafe { File::from_raw_fd(fd) };
        self.usage.settle(r, 0, before.is_none() as i64);
        let mut st = stat_fd(file.as_raw_fd())?;
        if let (Some(l), None) = (&ledger, before) {
            l.born((st.st_dev, st.st_ino));
        }
        drop(ledger);
        let e = self.remember_as(&p, &n, st)?;
        let i = self.inode(e.ino)?;
        if flags & libc::O_TRUNC != 0 && before.is_some() && st.st_size != 0 {
            self.truncate_fd(&i, file.as_raw_fd(), 0)?;
            st = stat_fd(file.as_raw_fd())?;
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
            // SAFETY: pread into a buffer at least `size` bytes long.
            let n = cvt_isize(unsafe {
                libc::pread(
                    h.file.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    size as usize,
                    offset as libc::off_t,
                )
            });
            match n {
                Ok(n) => reply(Ok(&buf[..n])),
                Err(e) => reply(Err(e)),
            }
        })
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<usize> {
        let h = self.handle(fh)?;
        let fd = h.file.as_raw_fd();
        let n = self.resize(
            &h.inode,
            fd,
            |before| {
                let end = if h.append { before } else { offset } + data.len() as u64;
                end.saturating_sub(before)
            },
            // SAFETY: pwrite from a slice of the given length.
            || {
                cvt_isize(unsafe {
                    libc::pwrite(fd, data.as_ptr().cast(), data.len(), offset as libc::off_t)
                })
            },
        )?;
        h.dirty.store(true, Ordering::Relaxed);
        Ok(n)
    }

    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> Result<()> {
        let h = self.handle(fh)?;
        let fd = h.file.as_raw_fd();
        let grows = mode & (libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE) == 0;
        self.resize(
            &h.inode,
            fd,
            |before| {
                if grows {
                    (offset + length).saturating_sub(before)
                } else {
                    0
                }
            },
            // SAFETY: fallocate on an open descriptor.
            || {
                cvt(unsafe {
                    libc::fallocate(fd, mode, offset as libc::off_t, length as libc::off_t)
                })
                .map(drop)
            },
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
        let fd = ho.file.as_raw_fd();
        let (mut oi, mut oo) = (off_in as i64, off_out as i64);
        let n = self.resize(
            &ho.inode,
            fd,
            |before| (off_out + len).saturating_sub(before),
            // SAFETY: copy_file_range between open descriptors with valid offsets.
            || {
                cvt_isize(unsafe {
                    libc::copy_file_range(
                        hi.file.as_raw_fd(),
                        &mut oi,
                        fd,
                        &mut oo,
                        len as usize,
                        0,
                    )
                } as isize)
            },
        )?;
        ho.dirty.store(true, Ordering::Relaxed);
        Ok(n)
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        let h = self.handle(fh)?;
        // SAFETY: lseek on an open descriptor.
        let r = unsafe { libc::lseek(h.file.as_raw_fd(), offset, whence) };
        if r < 0 {
            Err(errno())
        } else {
            Ok(r)
        }
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        let h = self.handle(fh)?;
        // SAFETY: (f)datasync on an open descriptor.
        cvt(unsafe {
            if datasync {
                libc::fdatasync(h.file.as_raw_fd())
            } else {
                libc::fsync(h.file.as_raw_fd())
            }
        })?;
        Ok(())
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
        // SAFETY: dup of an open descriptor; the duplicate is closed at once.
        let d = cvt(unsafe { libc::dup(h.file.as_raw_fd()) })?;
        // SAFETY: d was just returned by dup and is closed only here.
        cvt(unsafe { libc::close(d) })?;
        Ok(())
    }

    /// Runs `f` on the backing file of an open handle.
    pub fn with_file<T>(&self, fh: u64, f: impl FnOnce(&File) -> T) -> Result<T> {
        Ok(f(&self.handle(fh)?.file))
    }

    pub fn release(&self, fh: u64) {
        let Some(h) = self.files.write().remove(&fh) else {
            return;
        };
        if h.unmediated.load(Ordering::Relaxed) {
            let mut g = self.charge_unseen(&h);
            g.writers = g.writers.saturating_sub(1);
        }
    }

    /// The kernel will write through `fh` without us (a passthrough
    /// writer): from now on its size changes are charged when we look.
    pub fn unmediated_writer(&self, fh: u64) -> Result<()> {
        let h = self.handle(fh)?;
        let mut g = h.inode.size_lock.lock();
        let st = stat_fd(h.file.as_raw_fd())?;
        // It will change without us asking: the walk must not count it.
        self.freeze(&st);
        if g.writers == 0 {
            g.baseline = st.st_size;
        }
        g.writers += 1;
        h.unmediated.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Charges what passthrough writers wrote since the last look (the
    /// mount calls it twice a second).
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
        if let Ok(st) = stat_fd(h.file.as_raw_fd()) {
            g.seen(&self.usage, st.st_size);
        }
        g
    }

    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let entries = self.list(ino)?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs.lock().insert(fh, entries);
        Ok(fh)
    }

    fn list(&self, ino: u64) -> Result<Vec<DirEntry>> {
        let i = self.inode(ino)?;
        let path = proc_path(i.fd.as_raw_fd());
        let mut dir = nix::dir::Dir::open(
            path.as_c_str(),
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| HomeError::Os(e as i32))?;
        let mut out = Vec::new();
        for e in dir.iter() {
            let e = e.map_err(|e| HomeError::Os(e as i32))?;
            use nix::dir::Type as T;
            let kind = match e.file_type() {
                Some(T::Directory) => libc::DT_DIR,
                Some(T::File) => libc::DT_REG,
                Some(T::Symlink) => libc::DT_LNK,
                Some(T::Fifo) => libc::DT_FIFO,
                Some(T::Socket) => libc::DT_SOCK,
                Some(T::CharacterDevice) => libc::DT_CHR,
                Some(T::BlockDevice) => libc::DT_BLK,
                None => libc::DT_UNKNOWN,
            };
            out.push(DirEntry {
                ino: e.ino(),
                kind,
                name: OsString::from_vec(e.file_name().to_bytes().to_vec()),
            });
        }
        Ok(out)
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

    /// Filesystem figures: the quota as the size, quota minus usage as free
    /// space (never more than the share really has free).
    pub fn statfs(&self) -> Result<libc::statvfs> {
        let root = self.inode(ROOT)?;
        let mut sv = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
        // SAFETY: fstatvfs into a valid out-pointer.
        cvt(unsafe { libc::fstatvfs(root.fd.as_raw_fd(), sv.as_mut_ptr()) })?;
        // SAFETY: fstatvfs succeeded.
        let mut sv = unsafe { sv.assume_init() };
        let limits = self.usage.limits();
        let used = self.usage.snapshot();
        let frsize = sv.f_frsize.max(1);
        if let Some(q) = limits.bytes {
            let free = q.saturating_sub(used.bytes.max(0) as u64);
            let share_free = sv.f_bavail.saturating_mul(frsize);
            sv.f_blocks = q / frsize;
            sv.f_bfree = free.min(share_free) / frsize;
            sv.f_bavail = sv.f_bfree;
        }
        if let Some(q) = limits.inodes {
            let free = q.saturating_sub(used.inodes.max(0) as u64);
            sv.f_files = q;
            sv.f_ffree = free.min(sv.f_favail);
            sv.f_favail = sv.f_ffree;
        }
        if self.usage.cleanup() {
            sv.f_bfree = 0;
            sv.f_bavail = 0;
        }
        Ok(sv)
    }

    /// The accounted usage as text (the `user.hubfs.usage` attribute).
    pub fn usage_text(&self) -> String {
        let s = self.usage.snapshot();
        let l = self.usage.limits();
        format!(
            "bytes={} inodes={} quota_bytes={} quota_inodes={} baseline={} mode={}",
            s.bytes,
            s.inodes,
            l.bytes.unwrap_or(0),
            l.inodes.unwrap_or(0),
            self.usage.baseline_known() as u8,
            if self.usage.cleanup() {
                "cleanup"
            } else {
                "normal"
            },
        )
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>> {
        if ino == ROOT && name == XATTR_USAGE {
            return Ok(self.usage_text().into_bytes());
        }
        let i = self.inode(ino)?;
        let path = proc_path(i.fd.as_raw_fd());
        let n = CString::new(name.as_bytes()).map_err(|_| HomeError::Os(libc::EINVAL))?;
        let mut buf = vec![0u8; 64 * 1024];
        // SAFETY: getxattr into a buffer of the given length.
        let len = cvt_isize(unsafe {
            libc::getxattr(
                path.as_ptr(),
                n.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        })?;
        buf.truncate(len);
        Ok(buf)
    }

    pub fn setxattr(
        &self,
        c: Caller,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> Result<()> {
        if ino == ROOT && name == XATTR_MODE {
            if c.uid != 0 {
                return Err(HomeError::Os(libc::EPERM));
            }
            match value {
                b"cleanup" => self.usage.set_cleanup(true),
                b"normal" => self.usage.set_cleanup(false),
                _ => return Err(HomeError::Os(libc::EINVAL)),
            }
            return Ok(());
        }
        if ino == ROOT && name == XATTR_USAGE {
            return Err(HomeError::Os(libc::EPERM));
        }
        let i = self.inode(ino)?;
        let path = proc_path(i.fd.as_raw_fd());
        let n = CString::new(name.as_bytes()).map_err(|_| HomeError::Os(libc::EINVAL))?;
        // SAFETY: setxattr from a slice of the given length.
        cvt(unsafe {
            libc::setxattr(
                path.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        })?;
        Ok(())
    }

    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let i = self.inode(ino)?;
        let path = proc_path(i.fd.as_raw_fd());
        let mut buf = vec![0u8; 64 * 1024];
        // SAFETY: listxattr into a buffer of the given length.
        let len = cvt_isize(unsafe {
            libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        })?;
        buf.truncate(len);
        Ok(buf)
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> Result<()> {
        let i = self.inode(ino)?;
        let path = proc_path(i.fd.as_raw_fd());
        let n = CString::new(name.as_bytes()).map_err(|_| HomeError::Os(libc::EINVAL))?;
        // SAFETY: removexattr of NUL-terminated strings.
        cvt(unsafe { libc::removexattr(path.as_ptr(), n.as_ptr()) })?;
        Ok(())
    }

    /// The device of the backing root (entries elsewhere are not accounted).
    pub fn root_dev(&self) -> u64 {
        self.root_dev
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::home::usage::Limits;

    fn fs_with(limit: Option<u64>) -> (tempfile::TempDir, HomeFs) {
        let t = tempfile::tempdir().unwrap();
        let u = Arc::new(Usage::new(Limits {
            bytes: limit,
            ..Limits::default()
        }));
        let fs = HomeFs::new(t.path(), u).unwrap();
        (t, fs)
    }

    #[test]
    fn create_write_truncate_unlink_are_accounted() {
        let (t, fs) = fs_with(None);
        let (e, fh) = fs
            .create(
                Caller::ROOT,
                ROOT,
                OsStr::new("f"),
                0o644,
                0o022,
                libc::O_RDWR,
            )
            .unwrap();
        assert_eq!(e.st.st_mode & 0o777, 0o644);
        assert_eq!(fs.write(fh, 0, &[7u8; 5000]).unwrap(), 5000);
        assert_eq!(
            fs.write(fh, 1000, &[8u8; 10]).unwrap(),
            10,
            "overwrite does not grow"
        );
        assert_eq!(fs.usage().snapshot().bytes, 5000);
        assert_eq!(fs.usage().snapshot().inodes, 1);
        fs.setattr(
            e.ino,
            Some(fh),
            SetAttr {
                mode: None,
                uid: None,
                gid: None,
                size: Some(100),
                atime: SetTime::Omit,
                mtime: SetTime::Omit,
            },
        )
        .unwrap();
        assert_eq!(fs.usage().snapshot().bytes, 100);
        fs.release(fh);
        assert_eq!(std::fs::metadata(t.path().join("f")).unwrap().len(), 100);
        fs.unlink(ROOT, OsStr::new("f")).unwrap();
        assert_eq!(fs.usage().snapshot(), Default::default());
    }

    #[test]
    fn writes_past_the_limit_get_edquot_and_deletes_still_work() {
        let (_t, fs) = fs_with(Some(10_000));
        let (_, fh) = fs
            .create(Caller::ROOT, ROOT, OsStr::new("f"), 0o644, 0, libc::O_RDWR)
            .unwrap();
        fs.write(fh, 0, &[1u8; 8000]).unwrap();
        let err = fs.write(fh, 8000, &[1u8; 4000]).unwrap_err();
        assert_eq!(err.errno(), libc::EDQUOT);
        assert_eq!(fs.usage().snapshot().bytes, 8000);
        fs.release(fh);
        fs.unlink(ROOT, OsStr::new("f")).unwrap();
        assert_eq!(fs.usage().snapshot().bytes, 0);
    }

    #[test]
    fn hard_links_count_once_and_rename_over_frees_the_target() {
        let (_t, fs) = fs_with(None);
        let (a, fh) = fs
            .create(Caller::ROOT, ROOT, OsStr::new("a"), 0o644, 0, libc::O_RDWR)
            .unwrap();
        fs.write(fh, 0, &[1u8; 300]).unwrap();
        fs.release(fh);
        fs.link(a.ino, ROOT, OsStr::new("b")).unwrap();
        assert_eq!(fs.usage().snapshot().bytes, 300);
        fs.unlink(ROOT, OsStr::new("a")).unwrap();
        assert_eq!(fs.usage().snapshot().bytes, 300, "b still holds the data");
        let (_, fh) = fs
            .create(Caller::ROOT, ROOT, OsStr::new("c"), 0o644, 0, libc::O_RDWR)
            .unwrap();
        fs.write(fh, 0, &[1u8; 50]).unwrap();
        fs.release(fh);
        fs.rename(ROOT, OsStr::new("c"), ROOT, OsStr::new("b"), 0)
            .unwrap();
        assert_eq!(fs.usage().snapshot().bytes, 50);
        assert_eq!(fs.usage().snapshot().inodes, 1);
    }

    #[test]
    fn hostile_names_are_refused() {
        let (_t, fs) = fs_with(None);
        for bad in ["", "a/b"] {
            let e = fs.lookup(ROOT, OsStr::new(bad)).unwrap_err();
            assert_eq!(e.errno(), libc::EINVAL);
        }
        assert_eq!(
            fs.lookup(999, OsStr::new("x")).unwrap_err().errno(),
            libc::ESTALE
        );
    }

    #[test]
    fn statfs_reports_the_quota() {
        let (_t, fs) = fs_with(Some(1 << 30));
        fs.usage().apply(1 << 28, 1);
        let sv = fs.statfs().unwrap();
        assert_eq!(sv.f_blocks * sv.f_frsize, 1 << 30);
        assert!(sv.f_bavail * sv.f_frsize <= 3 << 28);
    }
}
