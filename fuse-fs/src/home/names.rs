//! Names coming and going: unlink, rmdir, rename, and the locks that keep
//! the counters exact while they race.
//!
//! An inode is charged while it has a name (or an open file of this mount
//! holds it: see below), so removing a name must know whether it was the
//! last, and what the inode held then. Two removals of two hard links of
//! one inode, or a rename over a name while a writer grows the file, would
//! each see a stale answer if they ran unsynchronised (an `fsstress` run
//! left the counters megabytes off). So every operation that adds or
//! removes a name holds the lock of that name (parent and name, striped),
//! and one that adds or removes a link of an existing inode also holds the
//! lock of that inode (striped by device and number) while it looks at the
//! inode's link count and size and makes the change, with the inode's size
//! lock (writes and truncates hold it) when this mount knows the inode.
//! Locks are taken names first (in stripe order), then the inode: no cycle.
//!
//! A file whose last name goes while this mount still has it open stays on
//! the share until its last close, so it stays charged until then (an
//! orphan: `inodes::Unmediated::orphan`); what it grows meanwhile is
//! charged as any growth is.

use std::ffi::{CStr, OsStr};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use super::fs::{HomeFs, Result};
use super::inodes::{self, Inode, Key};
use super::syscalls::{self as sys, Stat};

const STRIPES: usize = 64;

/// The striped locks of names and inodes.
pub(super) struct NameLocks {
    names: Vec<Mutex<()>>,
    inodes: Vec<Mutex<()>>,
}

impl Default for NameLocks {
    fn default() -> Self {
        NameLocks {
            names: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            inodes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }
}

fn stripe(h: impl Hash) -> usize {
    let mut s = std::collections::hash_map::DefaultHasher::new();
    h.hash(&mut s);
    (s.finish() % STRIPES as u64) as usize
}

/// Held locks (released when dropped).
pub(super) struct Held<'a>(#[allow(dead_code)] Vec<MutexGuard<'a, ()>>);

impl NameLocks {
    /// The locks of the names `(parent, name)` (one or two), in stripe order.
    pub fn names(&self, which: &[(u64, &CStr)]) -> Held<'_> {
        let mut idx: Vec<usize> = which.iter().map(|(p, n)| stripe((p, n))).collect();
        idx.sort_unstable();
        idx.dedup();
        Held(idx.into_iter().map(|i| self.names[i].lock()).collect())
    }

    /// The lock of the inode `key`.
    pub fn inode(&self, key: Key) -> MutexGuard<'_, ()> {
        self.inodes[stripe(key)].lock()
    }
}

impl HomeFs {
    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        let p = self.inode(parent)?;
        let n = sys::name(name)?;
        let _names = self.names.names(&[(parent, &n)]);
        let st = sys::stat_at(p.fd()?.as_fd(), &n)?;
        self.drop_name(&p, &n, &st, || sys::unlink_at(p.fd()?.as_fd(), &n, false))
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        let p = self.inode(parent)?;
        let n = sys::name(name)?;
        let _names = self.names.names(&[(parent, &n)]);
        let pfd = p.fd()?;
        // What its extended attributes hold leaves with it.
        let xattrs = self.xattr_charge_at(pfd.as_fd(), &n);
        if self.walk_running() {
            self.freeze(&sys::stat_at(pfd.as_fd(), &n)?, || xattrs);
        }
        sys::unlink_at(pfd.as_fd(), &n, true)?;
        self.usage.apply(-xattrs, -1);
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
        let (n, nn) = (sys::name(name)?, sys::name(newname)?);
        let _names = self.names.names(&[(parent, &n), (newparent, &nn)]);
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let src = sys::stat_at(p.fd()?.as_fd(), &n)?;
        let other = sys::stat_at(np.fd()?.as_fd(), &nn).ok();
        if let Some(l) = self.ledger() {
            // A name moving between parts of the tree the walk has and has
            // not reached yet could be counted twice or not at all.
            let (pfd, npfd) = (p.fd()?, np.fd()?);
            let mut at = vec![(&src, pfd.as_fd(), n.as_c_str())];
            if let Some(t) = other.as_ref() {
                at.push((t, npfd.as_fd(), nn.as_c_str()));
            }
            for (st, dir, name) in at {
                let charge = self.charge_with(st, || self.xattr_charge_at(dir, name));
                l.freeze(inodes::key_of(st), charge);
                if sys::is_dir(st) {
                    l.disturb();
                }
            }
        }
        // RENAME_WHITEOUT leaves a whiteout (a character device 0/0) where
        // the source was: one more inode, reserved first like a create, and
        // told to the walk as born (its later unlink takes it back).
        let whiteout = flags & libc::RENAME_WHITEOUT != 0;
        let rename = || {
            let ((), ledger) = self.charged(0, whiteout as u64, || {
                sys::rename_at(p.fd()?.as_fd(), &n, np.fd()?.as_fd(), &nn, flags)
            })?;
            if let (true, Some(l)) = (whiteout, ledger) {
                if let Ok(st) = sys::stat_at(p.fd()?.as_fd(), &n) {
                    l.born(inodes::key_of(&st));
                }
            }
            Ok(())
        };
        // A target that is not the source itself loses its name.
        match other {
            Some(t) if !exchange && inodes::key_of(&t) != inodes::key_of(&src) => {
                if sys::is_dir(&t) {
                    let xattrs = self.xattr_charge_at(np.fd()?.as_fd(), &nn);
                    rename()?;
                    self.usage.apply(-xattrs, -1);
                } else {
                    self.drop_name(&np, &nn, &t, rename)?;
                }
            }
            _ => rename()?,
        }
        // Where the moved non-directories are now (`reach`).
        if !sys::is_dir(&src) {
            if let Some(ino) = self.inodes.known(inodes::key_of(&src)) {
                self.seen_at(ino, newparent, &nn);
            }
        }
        if let Some(t) = other.as_ref().filter(|t| exchange && !sys::is_dir(t)) {
            if let Some(ino) = self.inodes.known(inodes::key_of(t)) {
                self.seen_at(ino, parent, &n);
            }
        }
        // What the moved inodes are reachable through changed (`reach`).
        if sys::is_dir(&src) || exchange {
            self.permissions_changed();
        } else if let Some(ino) = self.inodes.known(inodes::key_of(&src)) {
            self.moved(ino);
        }
        Ok(())
    }

    /// `op` removes the name `dir/name` of the non-directory `st`, with the
    /// name's lock held by the caller. Under the inode's lock (and its size
    /// lock, if this mount knows it), looks at its link count and size
    /// afresh, runs `op`, and charges the removal if that was the last
    /// link: at once, or at the last close if this mount has it open.
    fn drop_name<T>(
        &self,
        dir: &Inode,
        name: &CStr,
        st: &Stat,
        op: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let key = inodes::key_of(st);
        let _inode = self.names.inode(key);
        let known: Option<Arc<Inode>> = self.inodes.known(key).and_then(|i| self.inode(i).ok());
        let mut sizes = known.as_ref().map(|i| i.size_lock.lock());
        // Afresh, under the locks: links made or removed meanwhile count.
        let now = match known.as_ref().and_then(|i| i.fd().ok()) {
            Some(fd) => sys::stat_fd(fd.as_fd())?,
            // Not known, or its descriptor cannot open again (gone).
            None => sys::stat_at(dir.fd()?.as_fd(), name)?,
        };
        // What its extended attributes hold, read while it has this name.
        let xattrs = match known.as_ref().and_then(|i| i.fd().ok()) {
            Some(fd) => self.xattr_charge_fd(fd.as_fd()),
            None => self.xattr_charge_at(dir.fd()?.as_fd(), name),
        };
        self.freeze(&now, || xattrs);
        let out = op()?;
        if now.st_nlink <= 1 {
            match sizes.as_mut() {
                Some(s) if s.open > 0 => s.orphan = true,
                _ => {
                    let (b, i) = self.charge_with(&now, || xattrs);
                    self.usage.apply(-b, -i);
                }
            }
        }
        Ok(out)
    }

    /// A new name for an existing inode (`link`): under the inode's lock,
    /// so a removal of another of its names counts the links right.
    pub(super) fn adding_link<T>(&self, key: Key, op: impl FnOnce() -> Result<T>) -> Result<T> {
        let _inode = self.names.inode(key);
        op()
    }
}
