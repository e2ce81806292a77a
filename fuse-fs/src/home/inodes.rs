//! The inodes the kernel knows, and the numbers it knows them by.
//!
//! Every inode the kernel holds is kept as an `O_PATH` descriptor on the
//! backing inode (as libfuse's `passthrough_ll` does), so renames and deep
//! paths cost nothing and an inode stays valid however it is renamed.
//!
//! The FUSE number of an inode is the backing inode number itself, so that
//! what `stat` shows (`st_ino`) and what `readdir` lists (`d_ino`) agree, as
//! `find`, `rsync`, backup tools and `ls -i` expect. The descriptor held for
//! it pins the backing inode, so the backing filesystem cannot give that
//! number to another file while the kernel may still use it. Only what
//! cannot keep its number gets one from a separate range, remembered for
//! the life of the mount so `readdir` can give the same: the root (always
//! FUSE number 1), a backing inode numbered 1 or from that range, and
//! inodes of another filesystem mounted inside the home.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::syscalls::{self, Stat};
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

/// An inode known to the kernel.
pub struct Inode {
    /// The number the kernel knows it by.
    ino: u64,
    fd: OwnedFd,
    key: Key,
    nlookup: AtomicU64,
    /// Serialises size-changing operations so the before/after sizes
    /// measured around each one belong to it alone.
    pub size_lock: Mutex<Unmediated>,
    /// Which callers may reach it by a path (see `reach`).
    pub reached: Mutex<Vec<super::reach::Reached>>,
}

impl Inode {
    /// The `O_PATH` descriptor on the backing inode.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
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
}

impl InodeTable {
    /// A table holding the root, `fd` with attributes `st`.
    pub fn new(fd: OwnedFd, st: &Stat) -> Self {
        let key = key_of(st);
        let mut t = Table {
            next_own: OWN_RANGE,
            ..Default::default()
        };
        t.by_key.insert(key, ROOT);
        t.by_ino.insert(ROOT, new_inode(ROOT, fd, key));
        InodeTable {
            table: RwLock::new(t),
            root_key: key,
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
        if keeps_number(key, self.root_key.0) {
            return d_ino;
        }
        if let Some(&n) = self.table.read().own.get(&key) {
            return n;
        }
        own_number(&mut self.table.write(), key)
    }

    /// One more kernel reference to the inode `st` describes, if it is
    /// known already: its number.
    pub fn find(&self, st: &Stat) -> Option<u64> {
        let t = self.table.read();
        let ino = *t.by_key.get(&key_of(st))?;
        t.by_ino.get(&ino)?.nlookup.fetch_add(1, Ordering::AcqRel);
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
        let mut t = self.table.write();
        if let Some(&ino) = t.by_key.get(&key) {
            if let Some(i) = t.by_ino.get(&ino) {
                i.nlookup.fetch_add(1, Ordering::AcqRel);
                return ino;
            }
        }
        let ino = match t.own.get(&key) {
            Some(&n) => n,
            None if keeps_number(key, self.root_key.0) && !t.by_ino.contains_key(&key.1) => key.1,
            None => own_number(&mut t, key),
        };
        t.by_key.insert(key, ino);
        t.by_ino.insert(ino, new_inode(ino, fd, key));
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

    /// Every inode the kernel holds but the root, with its descriptor, and
    /// the numbers given from the own range (for a takeover; see
    /// `home::handoff`).
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
    /// kernel as `ino`, `nlookup` times.
    pub fn adopt(
        &self,
        ino: u64,
        fd: OwnedFd,
        key: Key,
        nlookup: u64,
        writers: u32,
        baseline: i64,
    ) {
        let mut t = self.table.write();
        let i = new_inode(ino, fd, key);
        i.nlookup.store(nlookup, Ordering::Release);
        *i.size_lock.lock() = Unmediated {
            writers,
            baseline,
            ..Unmediated::default()
        };
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

fn new_inode(ino: u64, fd: OwnedFd, key: Key) -> Arc<Inode> {
    Arc::new(Inode {
        ino,
        fd,
        key,
        nlookup: AtomicU64::new(1),
        size_lock: Mutex::new(Unmediated::default()),
        reached: Mutex::new(Vec::new()),
    })
}

/// Whether a backing inode is known to the kernel by its own number.
fn keeps_number(key: Key, root_dev: u64) -> bool {
    key.0 == root_dev && key.1 > ROOT && key.1 < OWN_RANGE
}

fn own_number(t: &mut Table, key: Key) -> u64 {
    if let Some(&n) = t.own.get(&key) {
        return n;
    }
    let n = t.next_own;
    t.next_own += 1;
    t.own.insert(key, n);
    n
}

/// Opens `dir/name` (not following a final symlink) and its attributes.
pub fn open_entry(dir: &Inode, name: &std::ffi::CStr) -> syscalls::Result<(OwnedFd, Stat)> {
    let fd = syscalls::open_path_at(dir.fd(), name)?;
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
        let table = InodeTable::new(fd, &st);
        assert_eq!(table.listed_number(st.st_ino), ROOT);
        let (afd, ast) = open(&t.path().join("a"));
        let n = table.insert(afd, &ast);
        assert_eq!(n, ast.st_ino);
        assert_eq!(table.listed_number(ast.st_ino), n);
        assert_eq!(table.find(&ast), Some(n));
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
        let table = InodeTable::new(fd, &st);
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
}
