//! The passthrough core: POSIX operations on the backing directory, each one
//! accounted in [`UsageCounters`].
//!
//! Operations are `*at()` calls relative to the `O_PATH` descriptors of the
//! inode table ([`super::inodes`]), or go through `/proc/self/fd/N` where
//! Linux has no `*at()` form, all through the safe layer
//! ([`super::syscalls`]). This file holds the mount-wide state, the
//! namespace operations (lookup, create, link, rename, remove) and
//! attributes; open files are in [`super::files`], directory listings in
//! [`super::dirs`], extended attributes in [`super::xattr`].
//!
//! Every operation runs with its caller's credentials ([`HomeFs::act_as`],
//! see [`super::identity`]), so the backing filesystem checks permissions,
//! POSIX ACLs and ownership as it would for the caller, and what is made
//! belongs to the caller (inheriting a set-gid directory's group) exactly as
//! on the native filesystem.
//!
//! Accounting rules (the same as the walker's, so a fresh walk agrees):
//! bytes are apparent sizes of non-directories, a multiply-linked file counts
//! once, every file, directory and symlink is one inode.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use hubfs_walker::{WalkError, WalkStats, Walker};
use parking_lot::{MappedRwLockReadGuard, Mutex, RwLock, RwLockReadGuard};

use super::caller::CredentialCache;
use super::dirs::DirHandle;
use super::error::HomeError;
use super::files::Handle;
use super::identity;
use super::inodes::{self, Inode, InodeTable};
use super::ledger::{charge_of, Charge, Ledger};
use super::requests::RequestCounts;
use super::syscalls::{self as sys, FsFigures, Stat};
use super::usage::UsageCounters;

pub use super::caller::Caller;
pub use super::inodes::ROOT;
pub use sys::{Result, SetTime};

/// Extended attribute (on the root) that reads the accounted usage.
pub const XATTR_USAGE: &str = "user.hubfs.usage";
/// Extended attribute (on the root) that root may set to `cleanup` or
/// `normal` to switch no-write mode by hand.
pub const XATTR_MODE: &str = "user.hubfs.mode";
/// Extended attribute (on the root) that reads the FUSE requests served so
/// far, by kind (see [`super::requests`]).
pub const XATTR_REQUESTS: &str = "user.hubfs.requests";

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

impl SetAttr {
    /// Changes nothing (fill in what changes).
    pub const NONE: SetAttr = SetAttr {
        mode: None,
        uid: None,
        gid: None,
        size: None,
        atime: SetTime::Omit,
        mtime: SetTime::Omit,
    };
}

/// A looked-up inode: FUSE number and attributes.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub ino: u64,
    pub st: Stat,
}

/// The home passthrough filesystem.
pub struct HomeFs {
    pub(super) inodes: InodeTable,
    pub(super) files: RwLock<HashMap<u64, Arc<Handle>>>,
    /// Open directory handles (see `dirs`).
    pub(super) dirs: Mutex<HashMap<u64, Arc<DirHandle>>>,
    pub(super) next_fh: AtomicU64,
    pub(super) usage: Arc<UsageCounters>,
    root_dev: u64,
    /// Reads the daemon served (passthrough reads never get here).
    pub(super) daemon_reads: AtomicU64,
    /// FUSE requests served, by kind (counted by the adapter).
    pub requests: RequestCounts,
    /// The mount-time walk while it runs (see `ledger`); `walking` lets
    /// every operation after it skip the lock.
    walk: RwLock<Option<Arc<Ledger>>>,
    walking: AtomicBool,
    /// Callers' credentials, and whether this process can take them on
    /// (it runs as root; an unprivileged server serves as itself).
    creds: CredentialCache,
    switch_identity: bool,
    /// Bumped when a directory's permissions or place change (`reach`).
    pub(super) perm_gen: AtomicU64,
    /// Serialise changes of one name, and of one inode's links (`names`).
    pub(super) names: super::names::NameLocks,
    /// Tells the kernel an inode's attributes changed under it (its number).
    attr_changed: std::sync::OnceLock<AttrChanged>,
    /// The backing filesystem keeps extended attributes (EFS does not): the
    /// user ones are charged as bytes (see `xattr`).
    xattrs: bool,
}

/// Tells the kernel the attributes of an inode (by number) changed.
pub type AttrChanged = Box<dyn Fn(u64) + Send + Sync>;

/// Passes over the home when directories keep moving during the walk.
const MAX_WALK_PASSES: usize = 3;

impl HomeFs {
    /// Opens `root` (the user's directory on the share) for serving.
    ///
    /// The inode table keeps descriptors of the inodes the kernel knows,
    /// within half the open-file limit (see `inodes`), so the process's
    /// soft limit of open files is raised to its hard one first.
    pub fn new(root: &Path, usage: Arc<UsageCounters>) -> Result<Self> {
        let open_files = raise_open_files_limit();
        let fd = sys::open_dir(root)?;
        let st = sys::stat_fd(std::os::fd::AsFd::as_fd(&fd))?;
        let xattrs = !matches!(
            rustix::fs::listxattr_query(sys::proc_path(std::os::fd::AsFd::as_fd(&fd)).as_c_str()),
            Err(rustix::io::Errno::OPNOTSUPP)
        );
        Ok(HomeFs {
            inodes: InodeTable::new(fd, &st, open_files),
            files: RwLock::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            usage,
            root_dev: st.st_dev,
            daemon_reads: AtomicU64::new(0),
            requests: RequestCounts::default(),
            walk: RwLock::new(None),
            walking: AtomicBool::new(false),
            creds: CredentialCache::default(),
            switch_identity: nix::unistd::geteuid().is_root(),
            perm_gen: AtomicU64::new(0),
            names: Default::default(),
            attr_changed: std::sync::OnceLock::new(),
            xattrs,
        })
    }

    /// Serves what this thread does next as caller `c` (see
    /// [`super::identity`]); an error refuses the request.
    pub fn act_as(&self, c: &Caller) -> Result<()> {
        if !self.switch_identity {
            return Ok(());
        }
        identity::become_caller(&self.creds.get(c))
    }

    /// Whether requests are served as their callers (the server is root).
    pub fn switches_identity(&self) -> bool {
        self.switch_identity
    }

    /// How to tell the kernel that an operation changed attributes it had
    /// no reply to learn them from (a write clearing set-ID bits).
    pub fn on_attr_changed(&self, f: AttrChanged) {
        let _ = self.attr_changed.set(f);
    }

    pub(super) fn attributes_changed(&self, inode: &Inode) {
        if let Some(f) = self.attr_changed.get() {
            f(inode.number());
        }
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
    pub(super) fn ledger(&self) -> Option<MappedRwLockReadGuard<'_, Ledger>> {
        if !self.walking.load(Ordering::Acquire) {
            return None;
        }
        // Recursive: an operation may look again while holding it, and a
        // waiting end_walk must not deadlock it.
        RwLockReadGuard::try_map(self.walk.read_recursive(), |w| w.as_deref()).ok()
    }

    /// `st` is about to change or go away (see [`Ledger::freeze`]);
    /// `xattrs` reads what its user extended attributes hold (asked only
    /// while the walk runs).
    pub(super) fn freeze(&self, st: &Stat, xattrs: impl FnOnce() -> i64) {
        if let Some(l) = self.ledger() {
            l.freeze(inodes::key_of(st), self.charge_with(st, xattrs));
        }
    }

    /// What the inode `st` is charged: its size and itself ([`charge_of`])
    /// and, for a regular file or directory (the only inodes the kernel
    /// lets carry user extended attributes), what `xattrs` reads they hold.
    pub(super) fn charge_with(&self, st: &Stat, xattrs: impl FnOnce() -> i64) -> Charge {
        let (b, i) = charge_of(st);
        match sys::is_reg(st) || sys::is_dir(st) {
            true => (b + xattrs(), i),
            false => (b, i),
        }
    }

    /// Bytes of the names and values of the user extended attributes of
    /// the inode at `path` (`follow`: a `/proc/self/fd` link), as the walk
    /// counts them; 0 on a backing filesystem without them. The list needs
    /// no permission on the inode, so the values are read with the
    /// server's credentials only when there is one.
    pub(super) fn xattr_charge(&self, path: &CStr, follow: bool) -> i64 {
        if !self.xattrs {
            return 0;
        }
        let listed = match follow {
            true => rustix::fs::listxattr_query(path),
            false => rustix::fs::llistxattr_query(path),
        };
        if !matches!(listed, Ok(n) if n > 0) {
            return 0;
        }
        identity::as_server(|| hubfs_walker::user_xattr_bytes(path, follow)).unwrap_or(0) as i64
    }

    /// Whether the backing filesystem keeps extended attributes.
    pub(super) fn keeps_xattrs(&self) -> bool {
        self.xattrs
    }

    /// [`Self::xattr_charge`] of the inode behind `fd`.
    pub(super) fn xattr_charge_fd(&self, fd: BorrowedFd<'_>) -> i64 {
        self.xattr_charge(&sys::proc_path(fd), true)
    }

    /// [`Self::xattr_charge`] of the inode named `name` in the directory
    /// behind `dir`.
    pub(super) fn xattr_charge_at(&self, dir: BorrowedFd<'_>, name: &CStr) -> i64 {
        let mut p = sys::proc_path(dir).into_bytes();
        p.push(b'/');
        p.extend_from_slice(name.to_bytes());
        match CString::new(p) {
            Ok(p) => self.xattr_charge(&p, false),
            Err(_) => 0,
        }
    }

    pub fn usage(&self) -> &Arc<UsageCounters> {
        &self.usage
    }

    /// Read requests served by the daemon so far.
    pub fn daemon_reads(&self) -> u64 {
        self.daemon_reads.load(Ordering::Relaxed)
    }

    /// The device of the backing root (entries elsewhere are not accounted).
    pub fn root_dev(&self) -> u64 {
        self.root_dev
    }

    pub(super) fn inode(&self, ino: u64) -> Result<Arc<Inode>> {
        // Descriptors opened again since the last look may be over the bound.
        self.inodes.trim();
        self.inodes.get(ino).ok_or(HomeError::Os(libc::ESTALE))
    }

    /// Descriptors of inodes open now, and how many may stay open (see
    /// `inodes`).
    pub fn inode_descriptors(&self) -> (usize, usize) {
        self.inodes.descriptors()
    }

    /// Registers one more kernel reference to `parent/name` and returns it.
    pub(super) fn remember(&self, parent: &Inode, name: &CStr) -> Result<Entry> {
        let st = sys::stat_at(parent.fd()?.as_fd(), name)?;
        self.remember_as(parent, name, st)
    }

    /// As [`Self::remember`], with the entry's attributes already at hand.
    /// The caller found it in `parent`, so may reach it as far as `parent`.
    pub(super) fn remember_as(&self, parent: &Inode, name: &CStr, st: Stat) -> Result<Entry> {
        let handle = || sys::handle_at(parent.fd().ok()?.as_fd(), name).ok();
        let e = match self.inodes.find(&st, handle) {
            Some(ino) => Entry { ino, st },
            None => {
                let (fd, st) = inodes::open_entry(parent, name)?;
                Entry {
                    ino: self.inodes.insert(fd, &st),
                    st,
                }
            }
        };
        self.reached_via(parent, e.ino);
        if !sys::is_dir(&e.st) {
            self.seen_at(e.ino, parent.number(), name);
        }
        Ok(e)
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Entry> {
        let p = self.inode(parent)?;
        self.remember(&p, &sys::name(name)?)
    }

    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.forget(ino, n)
    }

    /// Whether the caller may access inode `ino` for `mask` (`access(2)`,
    /// `chdir(2)`).
    pub fn access(&self, ino: u64, mask: i32) -> Result<()> {
        sys::access(self.inode(ino)?.fd()?.as_fd(), mask)
    }

    pub fn getattr(&self, ino: u64) -> Result<Stat> {
        sys::stat_fd(self.inode(ino)?.fd()?.as_fd())
    }

    /// Changes attributes; the backing filesystem clears set-ID bits as
    /// it does for the caller (a size change without CAP_FSETID, chown).
    pub fn setattr(&self, ino: u64, fh: Option<u64>, a: SetAttr) -> Result<Stat> {
        let inode = self.inode(ino)?;
        let handle = fh.and_then(|fh| self.handle(fh).ok());
        let file = handle.as_ref().map(|h| &h.file);
        if let Some(mode) = a.mode {
            match file {
                Some(f) => sys::chmod_file(f, mode)?,
                None => sys::chmod_inode(inode.fd()?.as_fd(), mode)?,
            }
        }
        if a.uid.is_some() || a.gid.is_some() {
            sys::chown_inode(inode.fd()?.as_fd(), a.uid, a.gid)?;
        }
        if let Some(size) = a.size {
            let truncate = |f: &File| {
                let grow = |before: u64| size.saturating_sub(before);
                let op = |_| sys::truncate(f, size).map(|()| ((), Some(size)));
                self.resize_to(&inode, f, grow, op).map(|_| ())
            };
            match file {
                Some(f) => truncate(f)?,
                None => truncate(&sys::reopen(inode.fd()?.as_fd(), libc::O_WRONLY)?)?,
            }
        }
        if !matches!((a.atime, a.mtime), (SetTime::Omit, SetTime::Omit)) {
            match file {
                Some(f) => sys::set_times_file(f, a.atime, a.mtime)?,
                None => sys::set_times_inode(inode.fd()?.as_fd(), a.atime, a.mtime)?,
            }
        }
        sys::stat_fd(inode.fd()?.as_fd())
    }

    /// Truncate (shrink always allowed, growth reserved first) for
    /// `O_TRUNC`.
    pub(super) fn truncate_file(&self, inode: &Inode, file: &File, size: u64) -> Result<()> {
        self.resize_to(
            inode,
            file,
            |before| size.saturating_sub(before),
            |_| sys::truncate(file, size).map(|()| ((), Some(size))),
        )
        .map(|_| ())
    }

    /// Runs `op`, which changes the size or content of `file`, under the
    /// inode's size lock: catches up on what passthrough writers wrote,
    /// reserves the growth `grow(size before)` first (EDQUOT past the
    /// limit), and charges the change that really happened. Tells the
    /// kernel when the backing filesystem cleared set-ID bits on the way
    /// (its cached mode would be stale, and no reply carries the new one).
    pub(super) fn resize<T>(
        &self,
        inode: &Inode,
        file: &File,
        grow: impl FnOnce(u64) -> u64,
        op: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        self.resize_to(inode, file, grow, |_| op().map(|v| (v, None)))
    }

    /// As [`Self::resize`], for an `op` that knows the size it leaves
    /// (given the size before): a write or truncate. That saves asking the
    /// backing filesystem again, unless the kernel writes the file without
    /// us meanwhile (passthrough writers), when only a look is exact.
    pub(super) fn resize_to<T>(
        &self,
        inode: &Inode,
        file: &File,
        grow: impl FnOnce(u64) -> u64,
        op: impl FnOnce(u64) -> Result<(T, Option<u64>)>,
    ) -> Result<T> {
        let mut g = inode.size_lock.lock();
        let st = sys::stat_fd(std::os::fd::AsFd::as_fd(file))?;
        let before = st.st_size.max(0) as u64;
        if st.st_nlink == 0 && !g.orphan {
            if g.open == 0 {
                // Nameless and open in no file of this mount (a truncate
                // of an inode an unlink just took): not charged, and gone
                // when this operation's own descriptor closes.
                drop(g);
                return op(before).map(|(out, _)| out);
            }
            // Its last name went while a file of it was opening: charged
            // again until its last close (see `names`).
            g.orphan = true;
            let fd = std::os::fd::AsFd::as_fd(file);
            let (b, i) = self.charge_with(&st, || self.xattr_charge_fd(fd));
            self.usage.apply(b, i);
        }
        g.seen(&self.usage, before as i64);
        self.freeze(&st, || self.xattr_charge_fd(std::os::fd::AsFd::as_fd(file)));
        let want = grow(before);
        let r = match self.usage.reserve(want, 0) {
            Ok(r) => r,
            // Past the backing filesystem's largest file the quota is not
            // the reason: answer what the filesystem would.
            Err(e) => {
                sys::size_allowed(file, before.saturating_add(want))?;
                return Err(e.into());
            }
        };
        let (out, known) = match op(before) {
            Ok(v) => v,
            Err(e) => {
                self.usage.release(r);
                return Err(e);
            }
        };
        let setid = sys::is_reg(&st) && st.st_mode & (libc::S_ISUID | libc::S_ISGID) != 0;
        let now = match known {
            Some(size) if g.writers == 0 && !setid => Ok((size as i64, st.st_mode)),
            _ => sys::stat_fd(std::os::fd::AsFd::as_fd(file)).map(|s| (s.st_size, s.st_mode)),
        };
        let (after, mode) = now.unwrap_or(((before + want) as i64, st.st_mode));
        self.usage.settle(r, after - before as i64, 0);
        g.rebase(after);
        drop(g);
        if mode != st.st_mode {
            self.attributes_changed(inode);
        }
        Ok(out)
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        sys::readlink(self.inode(ino)?.fd()?.as_fd())
    }

    /// Creates a non-regular node (fifo, socket) or a directory. Device
    /// nodes are refused whoever asks (a home is `nodev`, and the share
    /// must never hold one another host might open), but for whiteouts
    /// (character device 0/0, which opens nothing).
    pub fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> Result<Entry> {
        let kind = mode & libc::S_IFMT;
        if kind == libc::S_IFBLK || (kind == libc::S_IFCHR && rdev != 0) {
            return Err(HomeError::Os(libc::EPERM));
        }
        let p = self.inode(parent)?;
        let n = sys::name(name)?;
        // Unmasked: the backing filesystem applies the caller's umask, or
        // the directory's default ACL instead, as a native one does.
        self.create_node(&p, &n, 0, || {
            sys::with_umask(umask, || {
                if kind == libc::S_IFDIR {
                    sys::mkdir_at(p.fd()?.as_fd(), &n, mode)
                } else {
                    sys::mknod_at(p.fd()?.as_fd(), &n, mode, rdev.into())
                }
            })
        })
    }

    /// Runs `make`, which adds `bytes` and `inodes` to the home: reserved
    /// first, charged if it succeeds, released if it fails. Returns its
    /// result with the walk's ledger, taken before `make` ran, so the caller
    /// can tell the walk about what it made.
    pub(super) fn charged<T>(
        &self,
        bytes: u64,
        inodes: u64,
        make: impl FnOnce() -> Result<T>,
    ) -> Result<(T, Option<MappedRwLockReadGuard<'_, Ledger>>)> {
        let r = self.usage.reserve(bytes, inodes)?;
        let ledger = self.ledger();
        match make() {
            Ok(v) => {
                self.usage.settle(r, bytes as i64, inodes as i64);
                Ok((v, ledger))
            }
            Err(e) => {
                self.usage.release(r);
                Err(e)
            }
        }
    }

    /// Runs `make`, which creates `parent/name` holding `bytes`, as one
    /// more inode: reserved first, charged after, told to the walk.
    fn create_node(
        &self,
        parent: &Inode,
        name: &CStr,
        bytes: u64,
        make: impl FnOnce() -> Result<()>,
    ) -> Result<Entry> {
        let _names = self.names.names(&[(parent.number(), name)]);
        let ((), ledger) = self.charged(bytes, 1, make)?;
        let e = self.remember(parent, name)?;
        if let Some(l) = ledger {
            l.born(inodes::key_of(&e.st));
        }
        Ok(e)
    }

    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, umask: u32) -> Result<Entry> {
        self.mknod(parent, name, (mode & 0o7777) | libc::S_IFDIR, umask, 0)
    }

    pub fn symlink(&self, parent: u64, name: &OsStr, target: &Path) -> Result<Entry> {
        let p = self.inode(parent)?;
        let n = sys::name(name)?;
        let t = sys::cstring(target.as_os_str().as_bytes())?;
        let len = t.as_bytes().len() as u64;
        self.create_node(&p, &n, len, || sys::symlink_at(&t, p.fd()?.as_fd(), &n))
    }

    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Result<Entry> {
        let i = self.inode(ino)?;
        let p = self.inode(newparent)?;
        let n = sys::name(newname)?;
        let _names = self.names.names(&[(newparent, &n)]);
        // A new name for a counted inode: nothing to charge (hard links
        // count once), but a removal of another of its names must see it.
        self.adding_link(i.key(), || {
            sys::link_at(i.fd()?.as_fd(), p.fd()?.as_fd(), &n)
        })?;
        self.remember(&p, &n)
    }

    /// Filesystem figures: the quota as the size, quota minus usage as free
    /// space (never more than the share really has free).
    pub fn statfs(&self) -> Result<FsFigures> {
        let root = self.inode(ROOT)?;
        let mut sv = sys::statvfs(root.fd()?.as_fd())?;
        let limits = self.usage.limits();
        let used = self.usage.snapshot();
        let frsize = sv.frsize.max(1);
        if let Some(q) = limits.bytes {
            let free = q.saturating_sub(used.bytes.max(0) as u64);
            let share_free = sv.bavail.saturating_mul(frsize);
            sv.blocks = q / frsize;
            sv.bfree = free.min(share_free) / frsize;
            sv.bavail = sv.bfree;
        }
        if let Some(q) = limits.inodes {
            let free = q.saturating_sub(used.inodes.max(0) as u64);
            sv.files = q;
            sv.ffree = free.min(sv.favail);
            sv.favail = sv.ffree;
        }
        if self.usage.cleanup() {
            sv.bfree = 0;
            sv.bavail = 0;
        }
        Ok(sv)
    }

    /// The accounted usage as text (the `user.hubfs.usage` attribute).
    pub fn usage_text(&self) -> String {
        let s = self.usage.snapshot();
        let l = self.usage.limits();
        format!(
            "bytes={} inodes={} quota_bytes={} quota_inodes={} baseline={} mode={} zone={}",
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
            self.usage.zone().as_str(),
        )
    }
}

/// Raises the soft limit of open files to the hard one, once per process
/// (failing leaves the limit as it was); returns the soft limit then.
fn raise_open_files_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
            if soft < hard {
                if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                    tracing::info!(error = %e, soft, hard, "cannot raise the open files limit");
                }
            }
        }
    });
    getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::home::usage::Limits;

    fn fs_with(limit: Option<u64>) -> (tempfile::TempDir, HomeFs) {
        let t = tempfile::tempdir().unwrap();
        let u = Arc::new(UsageCounters::new(Limits {
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
            .create(ROOT, OsStr::new("f"), 0o644, 0o022, libc::O_RDWR)
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
        let shrink = SetAttr {
            size: Some(100),
            ..SetAttr::NONE
        };
        fs.setattr(e.ino, Some(fh), shrink).unwrap();
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
            .create(ROOT, OsStr::new("f"), 0o644, 0, libc::O_RDWR)
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
            .create(ROOT, OsStr::new("a"), 0o644, 0, libc::O_RDWR)
            .unwrap();
        fs.write(fh, 0, &[1u8; 300]).unwrap();
        fs.release(fh);
        fs.link(a.ino, ROOT, OsStr::new("b")).unwrap();
        assert_eq!(fs.usage().snapshot().bytes, 300);
        fs.unlink(ROOT, OsStr::new("a")).unwrap();
        assert_eq!(fs.usage().snapshot().bytes, 300, "b still holds the data");
        let (_, fh) = fs
            .create(ROOT, OsStr::new("c"), 0o644, 0, libc::O_RDWR)
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
        assert_eq!(sv.blocks * sv.frsize, 1 << 30);
        assert!(sv.bavail * sv.frsize <= 3 << 28);
    }
}
