//! The usage walker: how much a home holds, measured by walking it.
//!
//! A leaf crate on purpose: it depends on std, nix and rustix only, so the FUSE crate
//! (`hubfs-fuse`), the quota controller (`hubfs-quota`) and the driver can all
//! use it without the FUSE crate pulling in the controller's dependencies
//! (kube, reqwest). It must never depend on another hubfs crate.
//!
//! The EFS quota monitor hubfs replaces measured homes with `du` every four hours; on NFS a serial walk is
//! latency-bound (one round trip per `stat`), so this walker keeps several
//! `stat`s in flight by spreading directories over worker threads that share
//! one queue. It is used at mount time (the home layer's baseline), by the
//! scheduled reconciliation, by NodeGetVolumeStats and by `hubfs du`.
//!
//! Rules, matching `du --bytes -x` so admins can compare figures:
//! * apparent sizes of every inode (directories included), allocated blocks
//!   kept beside them; hard-linked files count once; symlinks are never
//!   followed (their own size counts); other filesystems are not entered;
//! * user extended attributes (`user.*` names and values) of every counted
//!   inode are counted beside the sizes ([`WalkStats::xattr_bytes`]): a user
//!   can store data in them, so the quota charges them (one `llistxattr`
//!   per file or directory; none at all on a filesystem without them, such
//!   as EFS, found out once at the root);
//! * an entry that vanishes or cannot be read mid-walk is counted in
//!   [`WalkErrors`], never fatal — a home is written to while it is walked;
//! * a deadline turns the result into a partial one marked `timed_out` (the
//!   EFS quota monitor's `timed-out` state), and a `stat` rate limit keeps a walk from
//!   starving a shared filesystem.
//!
//! A [`Gate`] lets the caller decide per inode whether the walk counts it:
//! the home layer walks a home that is being written to, and only it knows
//! which inodes its own changes have already accounted for.

use std::collections::HashSet;
use std::ffi::CStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode};

/// Threads used when none are configured: enough in-flight `stat`s to hide
/// NFS latency, few enough that a local warm-cache walk on two cores does not
/// drown in context switches.
pub const DEFAULT_THREADS: usize = 6;

/// How a walk is run.
#[derive(Debug, Clone)]
pub struct WalkOptions {
    /// Worker threads (at least 1).
    pub threads: usize,
    /// Stop and return a partial result after this long.
    pub timeout: Option<Duration>,
    /// At most this many `stat` calls per second (None: unlimited).
    pub stats_per_second: Option<u32>,
    /// Do not descend into other filesystems (like `du -x`). On by default:
    /// a home must not be charged for whatever is mounted inside it.
    pub one_file_system: bool,
    /// Count user extended attributes ([`WalkStats::xattr_bytes`]). On by
    /// default: the quota charges them.
    pub xattrs: bool,
}

impl Default for WalkOptions {
    fn default() -> Self {
        WalkOptions {
            threads: DEFAULT_THREADS,
            timeout: None,
            stats_per_second: None,
            one_file_system: true,
            xattrs: true,
        }
    }
}

/// Problems met during a walk; none of them stops it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct WalkErrors {
    /// Entries listed in a directory that were gone when stat'ed or opened.
    pub vanished: u64,
    /// Directories that could not be opened for lack of permission.
    pub denied: u64,
    /// Anything else (I/O errors, unreadable directory streams).
    pub other: u64,
}

impl WalkErrors {
    pub fn total(&self) -> u64 {
        self.vanished + self.denied + self.other
    }

    fn add(&mut self, o: &WalkErrors) {
        self.vanished += o.vanished;
        self.denied += o.denied;
        self.other += o.other;
    }

    fn count(&mut self, e: Errno) {
        match e {
            Errno::ENOENT | Errno::ENOTDIR | Errno::ESTALE => self.vanished += 1,
            Errno::EACCES | Errno::EPERM => self.denied += 1,
            _ => self.other += 1,
        }
    }
}

/// The result of a walk.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct WalkStats {
    /// Apparent size of every inode counted, directories included (`du -sb`).
    pub bytes: u64,
    /// The part of `bytes` that is directories' own sizes. Directory sizes
    /// are filesystem bookkeeping (they differ between ext4, tmpfs and NFS
    /// for the same content), so the quota charges [`Self::usage_bytes`].
    pub dir_bytes: u64,
    /// Allocated space (`st_blocks * 512`), as `du -s --block-size=1`.
    pub allocated_bytes: u64,
    /// Names and values of the user extended attributes (`user.*`) of every
    /// inode counted (regular files and directories: the only ones the
    /// kernel lets carry them).
    pub xattr_bytes: u64,
    /// Non-directory inodes (regular files, symlinks, fifos...), once each.
    pub files: u64,
    /// Directories, the root included.
    pub dirs: u64,
    /// Names skipped because their inode had already been counted.
    pub extra_links: u64,
    pub errors: WalkErrors,
    /// The deadline passed: every figure is a lower bound.
    pub timed_out: bool,
    /// Wall time of the walk.
    #[serde(serialize_with = "secs")]
    pub elapsed: Duration,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl WalkStats {
    /// Bytes charged against the quota: apparent sizes of everything but
    /// directories, and user extended attributes.
    pub fn usage_bytes(&self) -> u64 {
        self.bytes - self.dir_bytes + self.xattr_bytes
    }

    /// Inodes charged against the quota: files and directories.
    pub fn inodes(&self) -> u64 {
        self.files + self.dirs
    }

    /// Adds the figures of another walk (a second pass over the same tree
    /// through the same [`Gate`]).
    pub fn add(&mut self, o: &WalkStats) {
        self.bytes += o.bytes;
        self.dir_bytes += o.dir_bytes;
        self.allocated_bytes += o.allocated_bytes;
        self.xattr_bytes += o.xattr_bytes;
        self.files += o.files;
        self.dirs += o.dirs;
        self.extra_links += o.extra_links;
        self.errors.add(&o.errors);
    }
}

/// Live counters of a running walk, for a progress line.
#[derive(Debug, Default)]
pub struct Progress {
    pub entries: AtomicU64,
    pub bytes: AtomicU64,
}

/// Asked once for every inode the walk would count (the root included,
/// hard links once): `false` leaves it out of the figures. Directories left
/// out are still descended into.
pub trait Gate: Sync {
    fn admit(&self, st: &libc::stat) -> bool;
}

/// Why a walk could not start at all.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("cannot stat {path}: {source}")]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A configured walker; cheap to clone and reuse.
#[derive(Debug, Clone, Default)]
pub struct Walker {
    opts: WalkOptions,
}

impl Walker {
    pub fn new(opts: WalkOptions) -> Self {
        Walker { opts }
    }

    /// Walks `root` and returns its usage.
    pub fn walk(&self, root: &Path) -> Result<WalkStats, WalkError> {
        self.walk_with(root, &Progress::default(), &AtomicBool::new(false))
    }

    /// Walks `root`, updating `progress` as it goes; setting `cancel` ends the
    /// walk early with a result marked `timed_out` (it is equally partial).
    pub fn walk_with(
        &self,
        root: &Path,
        progress: &Progress,
        cancel: &AtomicBool,
    ) -> Result<WalkStats, WalkError> {
        self.walk_gated(root, progress, cancel, None)
    }

    /// As [`Self::walk_with`], counting only the inodes `gate` admits.
    pub fn walk_gated(
        &self,
        root: &Path,
        progress: &Progress,
        cancel: &AtomicBool,
        gate: Option<&dyn Gate>,
    ) -> Result<WalkStats, WalkError> {
        let started = Instant::now();
        let st = nix::sys::stat::lstat(root).map_err(|e| WalkError::Root {
            path: root.to_path_buf(),
            source: e.into(),
        })?;
        let mut total = WalkStats::default();
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        let xattrs = self.opts.xattrs && xattrs_supported(root);
        if gate.is_none_or(|g| g.admit(&st)) {
            let size = st.st_size.max(0) as u64;
            total.bytes = size;
            if xattrs && may_carry_xattrs(&st) {
                if let Ok(p) = std::ffi::CString::new(root.as_os_str().as_bytes()) {
                    total.xattr_bytes = user_xattr_bytes(&p, false);
                }
            }
            total.allocated_bytes = st.st_blocks.max(0) as u64 * 512;
            if is_dir {
                total.dirs = 1;
                total.dir_bytes = size;
            } else {
                total.files = 1;
            }
        }
        if !is_dir {
            total.elapsed = started.elapsed();
            return Ok(total);
        }

        let shared = Shared {
            queue: Mutex::new(Queue {
                dirs: vec![root.to_path_buf()],
                idle: 0,
                done: false,
            }),
            wake: Condvar::new(),
            hungry: AtomicUsize::new(0),
            threads: self.opts.threads.max(1),
            seen: Mutex::new(HashSet::new()),
            root_dev: st.st_dev,
            xattrs,
            opts: &self.opts,
            deadline: self.opts.timeout.map(|t| started + t),
            limiter: self.opts.stats_per_second.map(|r| Limiter::new(r, started)),
            stop: cancel,
            timed_out: AtomicBool::new(false),
            progress,
            gate,
        };
        let threads = self.opts.threads.max(1);
        let parts: Vec<WalkStats> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads).map(|_| s.spawn(|| shared.work())).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        for p in &parts {
            total.add(p);
        }
        total.timed_out =
            shared.timed_out.load(Ordering::Relaxed) || cancel.load(Ordering::Relaxed);
        total.elapsed = started.elapsed();
        Ok(total)
    }
}

struct Queue {
    dirs: Vec<PathBuf>,
    /// Workers waiting for work; when it reaches the thread count the walk is over.
    idle: usize,
    done: bool,
}

struct Shared<'a> {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Mirrors `Queue::idle` so busy workers can see, without the lock,
    /// that someone is starving and share part of their own stack.
    hungry: AtomicUsize,
    threads: usize,
    /// (dev, ino) of multiply-linked files already counted.
    seen: Mutex<HashSet<(u64, u64)>>,
    root_dev: u64,
    /// Count user extended attributes (asked for, and the root has them).
    xattrs: bool,
    opts: &'a WalkOptions,
    deadline: Option<Instant>,
    limiter: Option<Limiter>,
    stop: &'a AtomicBool,
    timed_out: AtomicBool,
    progress: &'a Progress,
    gate: Option<&'a dyn Gate>,
}

impl Shared<'_> {
    fn should_stop(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) || self.timed_out.load(Ordering::Relaxed) {
            return true;
        }
        if let Some(d) = self.deadline {
            if Instant::now() >= d {
                self.timed_out.store(true, Ordering::Relaxed);
                return true;
            }
        }
        false
    }

    /// Blocks until there is shared work, or returns None when every worker
    /// is idle (the walk is complete) or the walk must stop.
    fn steal(&self) -> Option<PathBuf> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.idle += 1;
        self.hungry.fetch_add(1, Ordering::Relaxed);
        let got = loop {
            if q.done || self.should_stop() {
                q.done = true;
                break None;
            }
            if let Some(d) = q.dirs.pop() {
                break Some(d);
            }
            if q.idle == self.threads {
                q.done = true;
                break None;
            }
            // Bounded wait so a deadline is noticed even when nobody pushes.
            q = self
                .wake
                .wait_timeout(q, Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        };
        q.idle -= 1;
        self.hungry.fetch_sub(1, Ordering::Relaxed);
        if got.is_none() {
            self.wake.notify_all();
        }
        got
    }

    /// Gives half of a worker's own stack to starving workers.
    fn share(&self, local: &mut Vec<PathBuf>) {
        let give = local.len() / 2;
        if give == 0 {
            return;
        }
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.dirs.extend(local.drain(..give));
        drop(q);
        self.wake.notify_all();
    }

    fn work(&self) -> WalkStats {
        let mut acc = WalkStats::default();
        // Depth-first on a private stack: no lock per directory; the shared
        // queue is only touched when some worker has nothing to do.
        let mut local = Vec::new();
        loop {
            let dir = match local.pop() {
                Some(d) => d,
                None => match self.steal() {
                    Some(d) => d,
                    None => break,
                },
            };
            if self.should_stop() {
                break;
            }
            self.read_dir(&dir, &mut acc, &mut local);
            if self.hungry.load(Ordering::Relaxed) > 0 && local.len() > 1 {
                self.share(&mut local);
            }
        }
        acc
    }

    fn admit(&self, st: &libc::stat) -> bool {
        self.gate.is_none_or(|g| g.admit(st))
    }

    fn read_dir(&self, path: &Path, acc: &mut WalkStats, found: &mut Vec<PathBuf>) {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut dir = match Dir::open(path, flags, Mode::empty()) {
            Ok(d) => d,
            Err(e) => {
                acc.errors.count(e);
                return;
            }
        };
        let (mut bytes, mut entries) = (0u64, 0u64);
        let fd = dir.as_fd().try_clone_to_owned();
        let fd = match fd {
            Ok(fd) => fd,
            Err(_) => {
                acc.errors.other += 1;
                return;
            }
        };
        for (i, entry) in dir.iter().enumerate() {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    acc.errors.count(e);
                    break;
                }
            };
            let name: &CStr = entry.file_name();
            let nb = name.to_bytes();
            if nb == b"." || nb == b".." {
                continue;
            }
            if i % 256 == 255 && self.should_stop() {
                break;
            }
            if let Some(l) = &self.limiter {
                l.acquire();
            }
            let st = match fstatat(&fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(e) => {
                    acc.errors.count(e);
                    continue;
                }
            };
            if self.opts.one_file_system && st.st_dev != self.root_dev {
                continue;
            }
            let size = st.st_size.max(0) as u64;
            if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                found.push(path.join(std::ffi::OsStr::from_bytes(nb)));
                if !self.admit(&st) {
                    continue;
                }
                acc.dirs += 1;
                acc.dir_bytes += size;
            } else {
                if st.st_nlink > 1 {
                    let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                    if !seen.insert((st.st_dev, st.st_ino)) {
                        acc.extra_links += 1;
                        continue;
                    }
                }
                if !self.admit(&st) {
                    continue;
                }
                acc.files += 1;
            }
            if self.xattrs && may_carry_xattrs(&st) {
                let mut p = path.as_os_str().as_bytes().to_vec();
                p.push(b'/');
                p.extend_from_slice(nb);
                if let Ok(p) = std::ffi::CString::new(p) {
                    acc.xattr_bytes += user_xattr_bytes(&p, false);
                }
            }
            acc.bytes += size;
            acc.allocated_bytes += st.st_blocks.max(0) as u64 * 512;
            bytes += size;
            entries += 1;
        }
        self.progress.entries.fetch_add(entries, Ordering::Relaxed);
        self.progress.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Whether the filesystem of `root` keeps extended attributes at all (EFS
/// and NFS before 4.2 answer EOPNOTSUPP: nothing to count there, and no
/// call per inode).
fn xattrs_supported(root: &Path) -> bool {
    !matches!(
        rustix::fs::llistxattr_query(root),
        Err(rustix::io::Errno::OPNOTSUPP)
    )
}

/// Only regular files and directories may carry user extended attributes
/// (the kernel refuses them elsewhere).
fn may_carry_xattrs(st: &libc::stat) -> bool {
    matches!(st.st_mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFDIR)
}

/// Bytes of the names and values of the `user.*` extended attributes of
/// `path` (following a final symlink if `follow`: a `/proc/self/fd/N`
/// link reaches the inode of descriptor N); 0 if they cannot be read
/// (the entry went meanwhile). The figure the quota charges for them.
pub fn user_xattr_bytes(path: &CStr, follow: bool) -> u64 {
    let list = |buf: &mut [u8]| match follow {
        true => rustix::fs::listxattr(path, buf),
        false => rustix::fs::llistxattr(path, buf),
    };
    let query = || match follow {
        true => rustix::fs::listxattr_query(path),
        false => rustix::fs::llistxattr_query(path),
    };
    // The list's size first: nothing to read for most inodes (one call).
    let size = match query() {
        Ok(0) | Err(_) => return 0,
        Ok(n) => n,
    };
    let mut names = vec![0u8; size];
    let n = match list(&mut names[..]) {
        Ok(n) => n,
        Err(_) => return 0,
    };
    let mut total = 0;
    for name in names[..n].split(|&b| b == 0) {
        if !name.starts_with(b"user.") {
            continue;
        }
        let Ok(c) = std::ffi::CString::new(name) else {
            continue;
        };
        let len = match follow {
            true => rustix::fs::getxattr_query(path, c.as_c_str()),
            false => rustix::fs::lgetxattr_query(path, c.as_c_str()),
        };
        if let Ok(len) = len {
            total += (name.len() + len) as u64;
        }
    }
    total
}

/// Spaces `stat` calls evenly: call n may start no earlier than start + n/rate.
/// Lock-free, so it costs nothing measurable when the rate is never reached.
struct Limiter {
    start: Instant,
    per_call: Duration,
    calls: AtomicU64,
}

impl Limiter {
    fn new(rate: u32, start: Instant) -> Self {
        Limiter {
            start,
            per_call: Duration::from_secs(1) / rate.max(1),
            calls: AtomicU64::new(0),
        }
    }

    fn acquire(&self) {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let due = self.start + self.per_call.saturating_mul(n.min(u32::MAX as u64) as u32);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("a/b/c")).unwrap();
        fs::write(r.join("a/one"), vec![1u8; 1000]).unwrap();
        fs::write(r.join("a/b/two"), vec![2u8; 2000]).unwrap();
        fs::write(r.join("a/b/c/three"), vec![3u8; 3000]).unwrap();
        t
    }

    #[test]
    fn counts_user_xattrs_of_files_and_directories_once() {
        let t = tree();
        let r = t.path();
        let set = |p: &Path, name: &str, len: usize| {
            rustix::fs::setxattr(
                p,
                name,
                &vec![7u8; len][..],
                rustix::fs::XattrFlags::empty(),
            )
        };
        if let Err(e) = set(&r.join("a/one"), "user.a", 100) {
            // tmpfs before 6.6 and some overlays keep none: nothing to count.
            assert_eq!(e, rustix::io::Errno::OPNOTSUPP, "setxattr: {e}");
            assert_eq!(Walker::default().walk(r).unwrap().xattr_bytes, 0);
            return;
        }
        set(&r.join("a/one"), "user.bb", 1000).unwrap();
        set(&r.join("a/b"), "user.dir", 50).unwrap();
        // A second name of a file is not a second set of attributes.
        fs::hard_link(r.join("a/one"), r.join("a/b/again")).unwrap();
        let want = (6 + 100) + (7 + 1000) + (8 + 50);
        for xattrs in [true, false] {
            let s = Walker::new(WalkOptions {
                xattrs,
                ..Default::default()
            })
            .walk(r)
            .unwrap();
            let x = if xattrs { want } else { 0 };
            assert_eq!(s.xattr_bytes, x as u64);
            assert_eq!(s.usage_bytes(), 6000 + x as u64);
        }
    }

    #[test]
    fn counts_files_dirs_and_bytes() {
        let t = tree();
        for threads in [1, 4] {
            let s = Walker::new(WalkOptions {
                threads,
                ..Default::default()
            })
            .walk(t.path())
            .unwrap();
            assert_eq!(s.files, 3);
            assert_eq!(s.dirs, 4);
            assert_eq!(s.usage_bytes(), 6000);
            assert!(s.bytes > s.usage_bytes(), "directory sizes are in bytes");
            assert_eq!(s.errors.total(), 0);
            assert!(!s.timed_out);
        }
    }

    #[test]
    fn hard_links_once_and_symlinks_not_followed() {
        let t = tree();
        let r = t.path();
        fs::hard_link(r.join("a/one"), r.join("a/b/one-again")).unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("big"), vec![0u8; 100_000]).unwrap();
        symlink(outside.path(), r.join("escape")).unwrap();
        let s = Walker::default().walk(r).unwrap();
        let target_len = outside.path().as_os_str().len() as u64;
        assert_eq!(s.files, 4, "3 files + 1 symlink");
        assert_eq!(s.extra_links, 1);
        assert_eq!(s.usage_bytes(), 6000 + target_len);
    }

    #[test]
    fn a_gate_leaves_inodes_out_but_their_directories_are_still_entered() {
        use std::os::unix::fs::MetadataExt;
        struct Refuse(Vec<u64>);
        impl Gate for Refuse {
            fn admit(&self, st: &libc::stat) -> bool {
                !self.0.contains(&st.st_ino)
            }
        }
        let t = tree();
        let r = t.path();
        let all = Walker::default().walk(r).unwrap();
        let ino = |p: &str| fs::metadata(r.join(p)).unwrap().ino();
        let gate = Refuse(vec![ino("a/one"), ino("a/b"), ino("")]);
        let s = Walker::default()
            .walk_gated(
                r,
                &Progress::default(),
                &AtomicBool::new(false),
                Some(&gate),
            )
            .unwrap();
        assert_eq!(s.files, all.files - 1);
        assert_eq!(s.dirs, all.dirs - 2, "a/b and the root left out");
        assert_eq!(
            s.usage_bytes(),
            all.usage_bytes() - 1000,
            "a/b/* still counted"
        );
    }

    #[test]
    fn single_file_root() {
        let t = tree();
        let s = Walker::default().walk(&t.path().join("a/one")).unwrap();
        assert_eq!((s.files, s.dirs, s.bytes), (1, 0, 1000));
    }

    #[test]
    fn missing_root_is_an_error() {
        let e = Walker::default().walk(Path::new("/nonexistent/hubfs/x"));
        assert!(matches!(e, Err(WalkError::Root { .. })));
    }

    #[test]
    fn cancel_marks_partial() {
        let t = tree();
        let cancel = AtomicBool::new(true);
        let s = Walker::default()
            .walk_with(t.path(), &Progress::default(), &cancel)
            .unwrap();
        assert!(s.timed_out);
        assert_eq!(s.files, 0);
    }

    #[test]
    fn rate_limit_spaces_stats() {
        let t = tree();
        // 6 stats below the root (a, one, b, two, c, three) at 20/s: the last
        // may start no earlier than 5/20 s in.
        let s = Walker::new(WalkOptions {
            stats_per_second: Some(20),
            ..Default::default()
        })
        .walk(t.path())
        .unwrap();
        assert_eq!(s.files, 3);
        assert!(s.elapsed >= Duration::from_millis(250), "{:?}", s.elapsed);
    }
}
