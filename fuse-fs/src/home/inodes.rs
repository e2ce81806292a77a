//! The inodes the kernel knows, and the numbers it knows them by.
//!
//! Every inode the kernel holds is reached through an `O_PATH` descriptor
//! on the backing inode (as libfuse's `passthrough_ll` does), so renames
//! and deep paths cost nothing and an inode stays valid however it is
//! renamed. The kernel may hold every inode it was ever shown (a `find`
//! over a million files leaves a million), so the descriptors are bounded
//! ([`Inode::fd`]): an inode also keeps its file handle
//! (`name_to_handle_at`, as virtiofsd's `--inode-file-handles`), and when
//! more descriptors are open than the bound (half the open-file limit, at
//! most 65,536) the least recently used ones that nothing else holds are
//! closed, to be opened again from the handle (`open_by_handle_at`, as the
//! server) when next used. A filesystem without handles keeps every
//! descriptor, as before.
//!
//! The FUSE number of an inode is the backing inode number itself, so that
//! what `stat` shows (`st_ino`) and what `readdir` lists (`d_ino`) agree, as
//! `find`, `rsync`, backup tools and `ls -i` expect. A backing filesystem
//! may give a number to a new file once the old one is gone; a handle
//! carries the inode's generation, so a number found again with another
//! handle is another inode, and gets a number of its own. Only what cannot
//! keep its number gets one from a separate range, remembered for the life
//! of the mount so `readdir` can give the same: the root (always FUSE
//! number 1), a backing inode numbered 1 or from that range, a reused
//! number, and inodes of another filesystem mounted inside the home.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::error::HomeError;
use super::syscalls::{self, FileHandle, Stat};
use super::usage::UsageCounters;

/// The FUSE inode number of the root.
pub const ROOT: u64 = 1;

/// Numbers given to inodes that cannot keep their own start here.
const OWN_RANGE: u64 = 1 << 63;

/// Identity of a backing inode: device and inode number.
pub type Key = (u64, u64);

pub fn key_of(st: &Stat) -> Key {
    (st.st_dev, st.st_ino)
}

/// Every inode but the root by number, the own-range numbers given, and the
/// next one to give (see [`InodeTable::export`]).
pub type TableExport = (Vec<(u64, Arc<Inode>)>, Vec<(Key, u64)>, u64);

/// The descriptors of one table, bounded.
struct Pool {
    /// A descriptor on the backing filesystem (the root's), for
    /// `open_by_handle_at`.
    mount: OwnedFd,
    /// Whether this filesystem gives handles and this server may open them.
    handles: bool,
    /// Descriptors open of inodes that have a handle (those may close).
    open: AtomicUsize,
    /// Of those, how many may stay open.
    cap: usize,
    tick: AtomicU64,
}

/// An inode known to the kernel.
pub struct Inode {
    /// The number the kernel knows it by.
    ino: u64,
    key: Key,
    /// Opens it again once its descriptor was closed; `None`: the
    /// descriptor stays open for the inode's life.
    handle: Option<FileHandle>,
    fd: Mutex<Option<Arc<OwnedFd>>>,
    /// When it was last used (a tick of the pool).
    used: AtomicU64,
    pool: Arc<Pool>,
    nlookup: AtomicU64,
    /// Serialises size-changing operations so the before/after sizes
    /// measured around each one belong to it alone.
    pub size_lock: Mutex<Unmediated>,
    /// Which callers may reach it by a path (see `reach`).
    pub reached: Mutex<Vec<super::reach::Reached>>,
    /// Where a non-directory was last looked up or moved to through this
    /// mount: (parent's number, name). Its descriptor opened again from
    /// its handle may have no path (a file whose backing dentry was
    /// pruned comes back disconnected; directories are reconnected), and
    /// `reach` then walks to the parent and the name instead.
    pub seen: Mutex<Option<(u64, std::ffi::CString)>>,
}

/// An inode's `O_PATH` descriptor, open while this is held.
pub struct InodeFd(Arc<OwnedFd>);

impl InodeFd {
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl Inode {
    /// The `O_PATH` descriptor on the backing inode, opened again from its
    /// handle if it was closed (ESTALE if the inode is gone since).
    pub fn fd(&self) -> syscalls::Result<InodeFd> {
        let tick = self.pool.tick.fetch_add(1, Ordering::Relaxed);
        self.used.store(tick, Ordering::Relaxed);
        let mut g = self.fd.lock();
        if let Some(fd) = g.as_ref() {
            return Ok(InodeFd(fd.clone()));
        }
        let h = self.handle.as_ref().ok_or(HomeError::Os(libc::ESTALE))?;
        // Opening by handle needs CAP_DAC_READ_SEARCH: the server's.
        let fd = super::identity::as_server(|| syscalls::open_handle(self.pool.mount.as_fd(), h))??;
        let fd = Arc::new(fd);
        *g = Some(fd.clone());
        self.pool.open.fetch_add(1, Ordering::Relaxed);
        Ok(InodeFd(fd))
    }

    /// Closes its descriptor if it can be opened again and nothing but the
    /// table holds the inode; true if it did.
    fn let_go(&self) -> bool {
        if self.handle.is_none() {
            return false;
        }
        let closed = self.fd.lock().take().is_some();
        if closed {
            self.pool.open.fetch_sub(1, Ordering::Relaxed);
        }
        closed
    }

    /// The descriptor if it is open now (for a takeover).
    fn open_fd(&self) -> Option<Arc<OwnedFd>> {
        self.fd.lock().clone()
    }

    pub fn key(&self) -> Key {
        self.key
    }

    /// The number the kernel knows this inode by.
    pub fn number(&self) -> u64 {
        self.ino
    }

    /// References the kernel holds.
    pub fn lookups(&self) -> u64 {
        self.nlookup.load(Ordering::Acquire)
    }
}

impl Drop for Inode {
    fn drop(&mut self) {
        if self.handle.is_some() && self.fd.get_mut().is_some() {
            self.pool.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// What the size lock guards besides the order of size changes: the files
/// of this mount open on the inode, whether its last name went while they
/// were (an orphan, charged until the last closes; see `names`), and size
/// changes the daemon does not see: a passthrough writer adopted from an
/// older server (see `iomode`). While such writers are open, the size last
/// accounted is kept, and the drift is charged whenever the daemon looks:
/// around its own size changes, by the periodic
/// `HomeFs::settle_unmediated`, and when the writer closes.
#[derive(Default)]
pub struct Unmediated {
    pub writers: u32,
    pub baseline: i64,
    pub open: u32,
    pub orphan: bool,
}

impl Unmediated {
    /// The file is `now` bytes: charges what changed unseen.
    pub fn seen(&mut self, counters: &UsageCounters, now: i64) {
        if self.writers > 0 {
            counters.apply(now - self.baseline, 0);
            self.baseline = now;
        }
    }

    /// The daemon's own change to `now` bytes is already charged.
    pub fn rebase(&mut self, now: i64) {
        if self.writers > 0 {
            self.baseline = now;
        }
    }
}

#[derive(Default)]
struct Table {
    by_ino: HashMap<u64, Arc<Inode>>,
    by_key: HashMap<Key, u64>,
    /// Numbers from `OWN_RANGE`, kept for the life of the mount.
    own: HashMap<Key, u64>,
    next_own: u64,
}

/// The inode table of one mount.
pub struct InodeTable {
    table: RwLock<Table>,
    root_key: Key,
    pool: Arc<Pool>,
}

/// What an inode handed to another server carries: its open descriptor,
/// or its handle (a closed descriptor opens again from it).
pub enum Carried {
    Fd(Arc<OwnedFd>),
    Handle(FileHandle),
}

impl InodeTable {
    /// A table holding the root, `fd` with attributes `st`; descriptors
    /// bounded by half of `open_files` (the process's limit).
    pub fn new(fd: OwnedFd, st: &Stat, open_files: u64) -> Self {
        let key = key_of(st);
        // `open_by_handle_at` takes no `O_PATH` descriptor for the mount.
        let mount = syscalls::reopen(fd.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)
            .map(OwnedFd::from)
            .or_else(|_| fd.try_clone())
            .expect("a descriptor of the root");
        // Handles are used only if this filesystem gives them and this
        // server may open them again (root, CAP_DAC_READ_SEARCH).
        let handles = syscalls::handle_at(fd.as_fd(), c"")
            .and_then(|h| syscalls::open_handle(mount.as_fd(), &h))
            .is_ok();
        let pool = Arc::new(Pool {
            mount,
            handles,
            open: AtomicUsize::new(0),
            cap: (open_files / 2).clamp(64, 65_536) as usize,
            tick: AtomicU64::new(0),
        });
        let mut t = Table {
            next_own: OWN_RANGE,
            ..Default::default()
        };
        t.by_key.insert(key, ROOT);
        // The root's descriptor stays open (no handle).
        t.by_ino.insert(ROOT, new_inode(ROOT, fd, None, key, &pool));
        InodeTable {
            table: RwLock::new(t),
            root_key: key,
            pool,
        }
    }

    pub fn get(&self, ino: u64) -> Option<Arc<Inode>> {
        self.table.read().by_ino.get(&ino).cloned()
    }

    /// The FUSE number an entry listed with backing number `d_ino` in a
    /// directory of this home has (or will have once looked up).
    pub fn listed_number(&self, d_ino: u64) -> u64 {
        let key = (self.root_key.0, d_ino);
        if key == self.root_key {
            return ROOT;
        }
        if let Some(&n) = self.table.read().own.get(&key) {
            return n;
        }
        if keeps_number(key, self.root_key.0) {
            return d_ino;
        }
        own_number(&mut self.table.write(), key)
    }

    /// One more kernel reference to the inode `st` describes, if it is
    /// known already: its number. An entry whose descriptor was closed
    /// might name an inode gone since, its number given to `st`'s: then
    /// `handle` (of the inode `st` describes) tells them apart.
    pub fn find(&self, st: &Stat, handle: impl FnOnce() -> Option<FileHandle>) -> Option<u64> {
        let t = self.table.read();
        let ino = *t.by_key.get(&key_of(st))?;
        let i = t.by_ino.get(&ino)?;
        if i.handle.is_some() && i.fd.lock().is_none() && handle() != i.handle {
            return None;
        }
        i.nlookup.fetch_add(1, Ordering::AcqRel);
        Some(ino)
    }

    /// The number of the inode with identity `key`, if the kernel knows it
    /// (no reference taken).
    pub fn known(&self, key: Key) -> Option<u64> {
        self.table.read().by_key.get(&key).copied()
    }

    /// One more kernel reference to the inode open as `fd` with attributes
    /// `st`: its number (`fd` is dropped if the inode was known meanwhile).
    pub fn insert(&self, fd: OwnedFd, st: &Stat) -> u64 {
        let key = key_of(st);
        let handle = self
            .pool
            .handles
            .then(|| syscalls::handle_at(fd.as_fd(), c"").ok())
            .flatten();
        let ino = {
            let mut t = self.table.write();
            let same = t
                .by_key
                .get(&key)
                .and_then(|ino| t.by_ino.get(ino))
                .filter(|i| i.handle.is_none() || handle.is_none() || i.handle == handle);
            if let Some(i) = same {
                i.nlookup.fetch_add(1, Ordering::AcqRel);
                return i.ino;
            }
            // A number known but for an inode gone since: the new inode
            // gets one of its own (the kernel may still use the old one).
            let reused = t.by_key.contains_key(&key);
            let ino = match t.own.get(&key) {
                Some(&n) if !t.by_ino.contains_key(&n) => n,
                _ if !reused
                    && keeps_number(key, self.root_key.0)
                    && !t.by_ino.contains_key(&key.1) =>
                {
                    key.1
                }
                _ => fresh_own_number(&mut t, key),
            };
            t.by_key.insert(key, ino);
            let inode = new_inode(ino, fd, handle, key, &self.pool);
            t.by_ino.insert(ino, inode);
            ino
        };
        self.trim();
        ino
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let mut t = self.table.write();
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

    /// When more descriptors are open than the bound, closes the least
    /// recently used a quarter of the bound's worth of those nothing but
    /// the table holds (they open again from their handles).
    pub fn trim(&self) {
        let cap = self.pool.cap;
        let open = self.pool.open.load(Ordering::Relaxed);
        if open <= cap {
            return;
        }
        let t = self.table.read();
        let mut idle: Vec<(u64, &Arc<Inode>)> = t
            .by_ino
            .values()
            .filter(|i| i.handle.is_some() && Arc::strong_count(i) == 1 && i.fd.lock().is_some())
            .map(|i| (i.used.load(Ordering::Relaxed), i))
            .collect();
        let want = (open - cap + cap / 4).min(idle.len());
        if want == 0 {
            return;
        }
        idle.select_nth_unstable_by_key(want - 1, |(used, _)| *used);
        for (_, i) in &idle[..want] {
            i.let_go();
        }
    }

    /// Descriptors of inodes open now (those that may close), and how many
    /// may stay open.
    pub fn descriptors(&self) -> (usize, usize) {
        (self.pool.open.load(Ordering::Relaxed), self.pool.cap)
    }

    /// Whether inodes keep file handles (their descriptors may close).
    pub fn uses_handles(&self) -> bool {
        self.pool.handles
    }

    /// Closes every descriptor that can open again and nothing but the
    /// table holds, as if over the bound (for tests); how many it closed.
    #[cfg(test)]
    pub fn let_go_idle(&self) -> usize {
        let t = self.table.read();
        t.by_ino
            .values()
            .filter(|i| Arc::strong_count(i) == 1)
            .filter(|i| i.let_go())
            .count()
    }

    /// Every inode the kernel holds but the root, and the numbers given
    /// from the own range (for a takeover; see `home::handoff`).
    pub fn export(&self) -> TableExport {
        let t = self.table.read();
        let inodes = t
            .by_ino
            .iter()
            .filter(|(&ino, _)| ino != ROOT)
            .map(|(&ino, i)| (ino, i.clone()))
            .collect();
        let own = t.own.iter().map(|(&k, &n)| (k, n)).collect();
        (inodes, own, t.next_own)
    }

    /// Adopts an inode the previous server of this connection gave the
    /// kernel as `ino`, `nlookup` times: by its descriptor, or its handle.
    pub fn adopt(
        &self,
        ino: u64,
        carried: Carried,
        key: Key,
        nlookup: u64,
        writers: u32,
        baseline: i64,
    ) {
        let (fd, handle) = match carried {
            Carried::Fd(fd) => {
                let handle = self
                    .pool
                    .handles
                    .then(|| syscalls::handle_at(fd.as_fd(), c"").ok())
                    .flatten();
                (Some(fd), handle)
            }
            Carried::Handle(h) => (None, Some(h)),
        };
        let i = Arc::new(Inode {
            ino,
            key,
            handle,
            fd: Mutex::new(None),
            used: AtomicU64::new(0),
            pool: self.pool.clone(),
            nlookup: AtomicU64::new(nlookup),
            size_lock: Mutex::new(Unmediated {
                writers,
                baseline,
                ..Unmediated::default()
            }),
            reached: Mutex::new(Vec::new()),
            seen: Mutex::new(None),
        });
        if let Some(fd) = fd {
            if i.handle.is_some() {
                self.pool.open.fetch_add(1, Ordering::Relaxed);
            }
            *i.fd.lock() = Some(fd);
        }
        let mut t = self.table.write();
        t.by_key.insert(key, ino);
        t.by_ino.insert(ino, i);
    }

    /// Adopts the numbers the previous server gave from the own range.
    pub fn adopt_own(&self, own: &[(Key, u64)], next_own: u64) {
        let mut t = self.table.write();
        t.own.extend(own.iter().copied());
        t.next_own = t.next_own.max(next_own);
    }

    /// The root's identity.
    pub fn root_key(&self) -> Key {
        self.root_key
    }

    /// Inodes held (the root included).
    pub fn len(&self) -> usize {
        self.table.read().by_ino.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inode {
    /// What a takeover hands to the next server for it.
    pub fn carried(&self) -> Option<Carried> {
        match (self.open_fd(), &self.handle) {
            (Some(fd), _) => Some(Carried::Fd(fd)),
            (None, Some(h)) => Some(Carried::Handle(h.clone())),
            (None, None) => None,
        }
    }

    pub fn handle(&self) -> Option<&FileHandle> {
        self.handle.as_ref()
    }
}

fn new_inode(
    ino: u64,
    fd: OwnedFd,
    handle: Option<FileHandle>,
    key: Key,
    pool: &Arc<Pool>,
) -> Arc<Inode> {
    if handle.is_some() {
        pool.open.fetch_add(1, Ordering::Relaxed);
    }
    Arc::new(Inode {
        ino,
        key,
        handle,
        fd: Mutex::new(Some(Arc::new(fd))),
        used: AtomicU64::new(pool.tick.fetch_add(1, Ordering::Relaxed)),
        pool: pool.clone(),
        nlookup: AtomicU64::new(1),
        size_lock: Mutex::new(Unmediated::default()),
        reached: Mutex::new(Vec::new()),
        seen: Mutex::new(None),
    })
}

/// Whether a backing inode is known to the kernel by its own number.
fn keeps_number(key: Key, root_dev: u64) -> bool {
    key.0 == root_dev && key.1 > ROOT && key.1 < OWN_RANGE
}

fn own_number(t: &mut Table, key: Key) -> u64 {
    match t.own.get(&key) {
        Some(&n) => n,
        None => fresh_own_number(t, key),
    }
}

/// A new number from the own range for `key`, remembered.
fn fresh_own_number(t: &mut Table, key: Key) -> u64 {
    let n = t.next_own;
    t.next_own += 1;
    t.own.insert(key, n);
    n
}

/// Opens `dir/name` (not following a final symlink) and its attributes.
pub fn open_entry(dir: &Inode, name: &std::ffi::CStr) -> syscalls::Result<(OwnedFd, Stat)> {
    let fd = syscalls::open_path_at(dir.fd()?.as_fd(), name)?;
    let st = syscalls::stat_fd(fd.as_fd())?;
    Ok((fd, st))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(p: &std::path::Path) -> (OwnedFd, Stat) {
        let fd = syscalls::open_dir(p).unwrap();
        let st = syscalls::stat_fd(fd.as_fd()).unwrap();
        (fd, st)
    }

    #[test]
    fn inodes_keep_their_backing_number_and_the_root_is_one() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("a")).unwrap();
        let (fd, st) = open(t.path());
        let table = InodeTable::new(fd, &st, 1024);
        assert_eq!(table.listed_number(st.st_ino), ROOT);
        let (afd, ast) = open(&t.path().join("a"));
        let n = table.insert(afd, &ast);
        assert_eq!(n, ast.st_ino);
        assert_eq!(table.listed_number(ast.st_ino), n);
        assert_eq!(table.find(&ast, || None), Some(n));
        table.forget(n, 1);
        assert!(table.get(n).is_some(), "one reference left");
        table.forget(n, 1);
        assert!(table.get(n).is_none());
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn numbers_that_cannot_be_kept_come_from_the_own_range_and_stay() {
        let t = tempfile::tempdir().unwrap();
        let (fd, st) = open(t.path());
        let table = InodeTable::new(fd, &st, 1024);
        // a backing inode numbered 1 (the root's FUSE number)
        let listed = table.listed_number(1);
        assert!(listed >= OWN_RANGE);
        let (fd2, mut st2) = open(t.path());
        st2.st_ino = 1;
        assert_eq!(table.insert(fd2, &st2), listed, "readdir and stat agree");
        // another filesystem inside the home
        let (fd3, mut st3) = open(t.path());
        st3.st_dev ^= 1;
        let n = table.insert(fd3, &st3);
        assert!(n >= OWN_RANGE && n != listed);
    }

    /// Descriptors stay within the bound however many inodes the kernel
    /// holds; a closed one opens again from its handle when used.
    #[test]
    fn descriptors_are_bounded_and_open_again_from_handles() {
        let t = tempfile::tempdir().unwrap();
        let (fd, st) = open(t.path());
        let table = InodeTable::new(fd, &st, 128);
        if !table.pool.handles {
            // Not root (open_by_handle_at needs CAP_DAC_READ_SEARCH): no
            // handles, so every descriptor stays open, whatever the bound.
            assert!(!nix::unistd::geteuid().is_root(), "root has handles here");
            let (afd, ast) = open(t.path());
            let n = table.insert(afd, &ast);
            assert!(!table.get(n).unwrap().let_go(), "no handle: it stays");
            assert!(table.get(n).unwrap().open_fd().is_some());
            return;
        }
        let cap = table.descriptors().1;
        let mut numbers = Vec::new();
        for i in 0..300 {
            let p = t.path().join(format!("f{i}"));
            std::fs::write(&p, format!("{i}")).unwrap();
            let fd = syscalls::open_path_at(
                syscalls::open_dir(t.path()).unwrap().as_fd(),
                &std::ffi::CString::new(format!("f{i}")).unwrap(),
            )
            .unwrap();
            let st = syscalls::stat_fd(fd.as_fd()).unwrap();
            numbers.push((table.insert(fd, &st), st));
            assert!(
                table.descriptors().0 <= cap + 1,
                "{:?}",
                table.descriptors()
            );
        }
        // The first ones were closed; used again, they open from handles.
        let (n, st) = numbers[0];
        let i = table.get(n).unwrap();
        assert!(i.open_fd().is_none(), "the least recently used was closed");
        let again = syscalls::stat_fd(i.fd().unwrap().as_fd()).unwrap();
        assert_eq!(key_of(&again), key_of(&st));
        // A number whose inode went and came back as another (another
        // handle) is another inode: found no more, inserted with its own.
        drop(i);
        table.trim();
        let other = table.get(numbers[1].0).unwrap();
        other.let_go();
        let foreign = table.get(numbers[2].0).unwrap().handle().cloned();
        assert_eq!(table.find(&numbers[1].1, || foreign.clone()), None);
        let fd = syscalls::open_dir(t.path()).unwrap();
        let renumbered = table.insert(fd, &numbers[1].1);
        assert!(renumbered >= OWN_RANGE, "{renumbered}");
    }
}
