//! The inode table: the kernel's numbers for the keys and prefixes it knows.
//!
//! Each inode remembers where it lives in the store and the attributes a
//! listing or a HEAD reported, with the instant they expire. The kernel's
//! lookup count keeps an inode alive; `forget` lets it go. Negative lookups
//! are remembered too, so a missing file does not cost a request per `stat`.

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;

pub type Ino = u64;
pub const ROOT: Ino = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// Where an inode's data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The synthetic root of a mount of several buckets.
    Root,
    /// Every key under `prefix` ("" or ending in '/') of a source.
    Dir {
        source: usize,
        prefix: String,
    },
    File {
        source: usize,
        key: String,
    },
}

/// What the store last told us about an inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub size: u64,
    pub mtime: SystemTime,
    pub etag: Option<String>,
    /// After this instant the attributes must be fetched again.
    pub expiry: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub ino: Ino,
    pub parent: Ino,
    pub name: String,
    pub kind: Kind,
    pub loc: Location,
    pub stat: Stat,
    /// Exists only here so far: a `mkdir`ed directory without keys, or a
    /// file being written. Never expires while local.
    pub local: bool,
    lookups: u64,
    /// The ETag of the version last opened: the one the kernel's page cache
    /// of this inode may hold pages of.
    page_etag: Option<String>,
}

impl Inode {
    /// An inode known to the kernel `lookups` times: a new one (0), or one
    /// as another server knew it (a takeover).
    pub fn from_parts(ino: Ino, parent: Ino, name: String, c: NewChild, lookups: u64) -> Self {
        Inode {
            ino,
            parent,
            name,
            kind: c.kind,
            loc: c.loc,
            stat: c.stat,
            local: c.local,
            lookups,
            page_etag: None,
        }
    }

    /// How many times the kernel was told of this inode and not yet forgot it.
    pub fn lookups(&self) -> u64 {
        self.lookups
    }

    pub fn is_fresh(&self, now: Instant) -> bool {
        self.local || self.stat.expiry > now
    }
}

#[derive(Debug)]
struct Inner {
    next: Ino,
    nodes: HashMap<Ino, Inode>,
    children: HashMap<(Ino, String), Ino>,
    negative: HashMap<(Ino, String), Instant>,
}

/// The table, shared by all FUSE worker threads.
#[derive(Debug)]
pub struct InodeTable {
    inner: Mutex<Inner>,
}

/// A child to record, as a listing or a lookup found it.
#[derive(Debug, Clone)]
pub struct NewChild {
    pub kind: Kind,
    pub loc: Location,
    pub stat: Stat,
    pub local: bool,
}

impl NewChild {
    /// A directory of `source` whose keys start with `prefix`.
    pub fn dir(
        source: usize,
        prefix: String,
        mtime: SystemTime,
        expiry: Instant,
        local: bool,
    ) -> Self {
        NewChild {
            kind: Kind::Dir,
            loc: Location::Dir { source, prefix },
            stat: Stat {
                size: 0,
                mtime,
                etag: None,
                expiry,
            },
            local,
        }
    }
}

impl InodeTable {
    pub fn new(root_loc: Location, root_stat: Stat) -> Self {
        let root = Inode {
            ino: ROOT,
            parent: ROOT,
            name: String::new(),
            kind: Kind::Dir,
            loc: root_loc,
            stat: root_stat,
            local: false,
            lookups: 1,
            page_etag: None,
        };
        Self {
            inner: Mutex::new(Inner {
                next: ROOT + 1,
                nodes: HashMap::from([(ROOT, root)]),
                children: HashMap::new(),
                negative: HashMap::new(),
            }),
        }
    }

    pub fn get(&self, ino: Ino) -> Option<Inode> {
        self.inner.lock().nodes.get(&ino).cloned()
    }

    pub fn child(&self, parent: Ino, name: &str) -> Option<Inode> {
        let inner = self.inner.lock();
        let ino = inner.children.get(&(parent, name.to_string()))?;
        inner.nodes.get(ino).cloned()
    }

    /// Records a child; keeps its inode number if it is known with the same kind.
    pub fn upsert(&self, parent: Ino, name: &str, child: NewChild) -> Inode {
        self.upsert_with(parent, name, child, Inode::clone)
    }

    /// As [`Self::upsert`], returning `f` of the recorded inode (no copy).
    pub fn upsert_with<T>(
        &self,
        parent: Ino,
        name: &str,
        child: NewChild,
        f: impl FnOnce(&Inode) -> T,
    ) -> T {
        let mut inner = self.inner.lock();
        let key = (parent, name.to_string());
        if !inner.negative.is_empty() {
            inner.negative.remove(&key);
        }
        if let Some(&ino) = inner.children.get(&key) {
            if let Some(node) = inner.nodes.get_mut(&ino) {
                if node.kind == child.kind && node.loc == child.loc {
                    // A file being written is newer than any listing of it.
                    if !node.local || child.local {
                        node.stat = child.stat;
                        node.local = child.local;
                    }
                    return f(node);
                }
            }
        }
        let ino = inner.next;
        inner.next += 1;
        let node = Inode::from_parts(ino, parent, name.to_string(), child, 0);
        let out = f(&node);
        inner.children.insert(key, ino);
        inner.nodes.insert(ino, node);
        out
    }

    /// Updates attributes of a known inode (after a HEAD or an upload).
    pub fn set_stat(&self, ino: Ino, stat: Stat, local: bool) -> Option<Inode> {
        let mut inner = self.inner.lock();
        let node = inner.nodes.get_mut(&ino)?;
        node.stat = stat;
        node.local = local;
        Some(node.clone())
    }

    /// `ino` is opened for reading at version `etag`: whether the pages the
    /// kernel may have cached of it are of that version (then it may keep
    /// them), remembering it for the next open. An unknown version never
    /// keeps them.
    pub fn open_version(&self, ino: Ino, etag: Option<&str>) -> bool {
        let mut inner = self.inner.lock();
        let Some(n) = inner.nodes.get_mut(&ino) else {
            return false;
        };
        let keep = etag.is_some() && n.page_etag.as_deref() == etag;
        n.page_etag = etag.map(str::to_string);
        keep
    }

    /// The store's copy changed: the next getattr or open asks it again.
    pub fn expire(&self, ino: Ino) {
        if let Some(n) = self.inner.lock().nodes.get_mut(&ino) {
            n.stat.expiry = Instant::now();
        }
    }

    /// The kernel now holds one more reference to `ino`.
    pub fn remember(&self, ino: Ino) {
        if let Some(n) = self.inner.lock().nodes.get_mut(&ino) {
            n.lookups += 1;
        }
    }

    /// The kernel dropped `n` references; an unreferenced inode is removed.
    pub fn forget(&self, ino: Ino, n: u64) {
        if ino == ROOT {
            return;
        }
        let mut inner = self.inner.lock();
        let Some(node) = inner.nodes.get_mut(&ino) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups > 0 || node.local {
            return;
        }
        let key = (node.parent, node.name.clone());
        inner.nodes.remove(&ino);
        if inner.children.get(&key) == Some(&ino) {
            inner.children.remove(&key);
        }
    }

    /// Unlinks a child name (delete, rmdir); the inode lives on until forgotten.
    pub fn unlink(&self, parent: Ino, name: &str) {
        let mut inner = self.inner.lock();
        let key = (parent, name.to_string());
        if let Some(ino) = inner.children.remove(&key) {
            if let Some(node) = inner.nodes.get_mut(&ino) {
                node.local = false;
            }
        }
    }

    pub fn set_negative(&self, parent: Ino, name: &str, until: Instant) {
        self.inner
            .lock()
            .negative
            .insert((parent, name.to_string()), until);
    }

    pub fn is_negative(&self, parent: Ino, name: &str, now: Instant) -> bool {
        let mut inner = self.inner.lock();
        let key = (parent, name.to_string());
        match inner.negative.get(&key) {
            Some(&until) if until > now => true,
            Some(_) => {
                inner.negative.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Children created locally (mkdir, files being written) of a directory.
    pub fn local_children(&self, parent: Ino) -> Vec<Inode> {
        let inner = self.inner.lock();
        inner
            .nodes
            .values()
            .filter(|n| n.parent == parent && n.local && n.ino != ROOT)
            .filter(|n| inner.children.get(&(parent, n.name.clone())) == Some(&n.ino))
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().nodes.len()
    }

    /// Every known inode, and the next free number (a takeover hands them
    /// over; negative entries are not kept). The flag says whether the
    /// node's name still points at it (not unlinked).
    pub fn export(&self) -> (Vec<(Inode, bool)>, Ino) {
        let inner = self.inner.lock();
        let mut nodes: Vec<(Inode, bool)> = inner
            .nodes
            .values()
            .map(|n| {
                let linked = inner.children.get(&(n.parent, n.name.clone())) == Some(&n.ino);
                (n.clone(), linked)
            })
            .collect();
        nodes.sort_by_key(|(n, _)| n.ino);
        (nodes, inner.next)
    }

    /// Replaces the table with inodes another server exported (see
    /// [`Self::export`]); a node's name is linked in its parent unless an
    /// unlinked (deleted) one.
    pub fn import(&self, nodes: Vec<(Inode, bool)>, next: Ino) {
        let mut inner = self.inner.lock();
        inner.nodes.clear();
        inner.children.clear();
        inner.negative.clear();
        for (n, linked) in nodes {
            if n.ino != ROOT && linked {
                inner.children.insert((n.parent, n.name.clone()), n.ino);
            }
            inner.next = inner.next.max(n.ino + 1);
            inner.nodes.insert(n.ino, n);
        }
        inner.next = inner.next.max(next);
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn stat(size: u64, ttl: Duration) -> Stat {
        Stat {
            size,
            mtime: SystemTime::UNIX_EPOCH,
            etag: None,
            expiry: Instant::now() + ttl,
        }
    }

    fn file(key: &str, size: u64) -> NewChild {
        NewChild {
            kind: Kind::File,
            loc: Location::File {
                source: 0,
                key: key.into(),
            },
            stat: stat(size, Duration::from_secs(60)),
            local: false,
        }
    }

    fn table() -> InodeTable {
        InodeTable::new(
            Location::Dir {
                source: 0,
                prefix: String::new(),
            },
            stat(0, Duration::from_secs(3600)),
        )
    }

    #[test]
    fn same_name_same_kind_keeps_its_number() {
        let t = table();
        let a = t.upsert(ROOT, "a", file("a", 1));
        let b = t.upsert(ROOT, "a", file("a", 2));
        assert_eq!(a.ino, b.ino);
        assert_eq!(t.get(a.ino).unwrap().stat.size, 2);
    }

    #[test]
    fn a_directory_replacing_a_file_gets_a_new_number() {
        let t = table();
        let a = t.upsert(ROOT, "a", file("a", 1));
        let d = t.upsert(
            ROOT,
            "a",
            NewChild {
                kind: Kind::Dir,
                loc: Location::Dir {
                    source: 0,
                    prefix: "a/".into(),
                },
                stat: stat(0, Duration::from_secs(60)),
                local: false,
            },
        );
        assert_ne!(a.ino, d.ino);
        assert_eq!(t.child(ROOT, "a").unwrap().kind, Kind::Dir);
    }

    #[test]
    fn negative_entries_expire_and_are_cleared_by_upsert() {
        let t = table();
        let now = Instant::now();
        t.set_negative(ROOT, "x", now + Duration::from_secs(10));
        assert!(t.is_negative(ROOT, "x", now));
        assert!(!t.is_negative(ROOT, "x", now + Duration::from_secs(11)));
        t.set_negative(ROOT, "y", now + Duration::from_secs(10));
        t.upsert(ROOT, "y", file("y", 0));
        assert!(!t.is_negative(ROOT, "y", now));
    }

    proptest! {
        /// Any sequence of lookups and forgets leaves exactly the inodes the
        /// kernel still references (plus the root), and numbers are never reused.
        #[test]
        fn lookups_and_forgets_balance(ops in proptest::collection::vec((0usize..8, any::<bool>()), 1..200)) {
            let t = table();
            let mut refs = [0u64; 8];
            let mut inos = [0u64; 8];
            let mut all = std::collections::HashSet::new();
            for (i, is_lookup) in ops {
                let name = format!("f{i}");
                if is_lookup {
                    let n = t.upsert(ROOT, &name, file(&name, i as u64));
                    t.remember(n.ino);
                    if refs[i] > 0 {
                        prop_assert_eq!(n.ino, inos[i]);
                    } else {
                        prop_assert!(all.insert(n.ino) || n.ino == inos[i]);
                    }
                    inos[i] = n.ino;
                    refs[i] += 1;
                } else if refs[i] > 0 {
                    t.forget(inos[i], 1);
                    refs[i] -= 1;
                }
            }
            let live = refs.iter().filter(|r| **r > 0).count();
            prop_assert_eq!(t.len(), live + 1);
        }
    }
}
