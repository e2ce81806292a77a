//! Search permission on the way to an inode: the check a native path walk
//! makes and the kernel no longer makes for this mount.
//!
//! The mount has no `default_permissions` (each request is judged by the
//! backing filesystem as its caller; see `identity`), so the kernel checks
//! no permission bits on a path walk itself, and a name it has cached
//! (for the entry TTL) is walked without asking the daemon. A LOOKUP, done
//! as the caller, needs search permission on the parent; but a cached name
//! may have been looked up by someone else, or before its directory's mode
//! changed. So every request that reaches an inode by a path (stat, open,
//! chmod, xattrs, create or remove in a directory...) first checks that
//! its caller may search every directory from the home's root down to the
//! inode, as the native walk would: an `openat2` of the inode's path below
//! the root with `O_PATH` (which needs nothing of the inode itself) and
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, as the caller.
//!
//! The answer is kept per inode and caller until a directory's permissions
//! change through this mount (mode, owner, access ACL), a directory is
//! renamed, or [`REACH_TTL`] passes (changes made on another node). A name
//! this mount looks up for a caller inherits its parent's answer, so a
//! fresh inode costs nothing. Requests on an open file (read, write,
//! fstat with a handle...) are not checked, as natively.

use std::ffi::CStr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::error::HomeError;
use std::os::unix::ffi::OsStringExt;

use super::fs::{HomeFs, Result, ROOT};
use super::identity;
use super::inodes::{self, Inode};
use super::syscalls as sys;

/// How long an answer stands without a change seen through this mount.
pub const REACH_TTL: Duration = Duration::from_secs(1);

/// Answers kept per inode (callers; a home has one or two).
const PER_INODE: usize = 8;

/// One caller's answer for one inode: (credentials, permission generation,
/// when).
pub type Reached = (u64, u64, Instant);

impl HomeFs {
    /// Whether the caller this thread serves may reach inode `ino` by a
    /// path: search permission on every directory above it in the home.
    pub fn reach(&self, ino: u64) -> Result<()> {
        if ino == ROOT || !self.switches_identity() {
            return Ok(());
        }
        let Some(creds) = identity::current() else {
            return Ok(());
        };
        let id = creds.id();
        let inode = self.inode(ino)?;
        let gen = self.perm_gen.load(Ordering::Acquire);
        let now = Instant::now();
        if inode
            .reached
            .lock()
            .iter()
            .any(|&(c, g, at)| c == id && g == gen && now.duration_since(at) < REACH_TTL)
        {
            return Ok(());
        }
        self.walk_to(&inode)?;
        remember(&inode, (id, gen, now));
        Ok(())
    }

    /// `child` was just looked up in `parent` by this thread's caller (the
    /// lookup itself needed search permission on `parent`): it is reached
    /// as far as `parent` is.
    pub(super) fn reached_via(&self, parent: &Inode, child: u64) {
        let Some(creds) = identity::current() else {
            return;
        };
        let id = creds.id();
        let gen = self.perm_gen.load(Ordering::Acquire);
        let at = if parent.number() == ROOT {
            Some(Instant::now())
        } else {
            parent
                .reached
                .lock()
                .iter()
                .find(|&&(c, g, _)| c == id && g == gen)
                .map(|&(_, _, at)| at)
        };
        if let (Some(at), Ok(child)) = (at, self.inode(child)) {
            remember(&child, (id, gen, at));
        }
    }

    /// A directory's permissions or place changed: every answer is void.
    pub(super) fn permissions_changed(&self) {
        self.perm_gen.fetch_add(1, Ordering::AcqRel);
    }

    /// Inode `ino` moved: its answers are void.
    pub(super) fn moved(&self, ino: u64) {
        if let Ok(i) = self.inode(ino) {
            i.reached.lock().clear();
        }
    }

    /// Non-directory `ino` was found or put at `parent/name` (see
    /// [`Inode::seen`]).
    pub(super) fn seen_at(&self, ino: u64, parent: u64, name: &CStr) {
        if let Ok(i) = self.inode(ino) {
            *i.seen.lock() = Some((parent, name.to_owned()));
        }
    }

    /// The walk itself, as the caller: its path below the root, opened
    /// `O_PATH` beneath the root without following symlinks.
    fn walk_to(&self, inode: &Inode) -> Result<()> {
        let st = sys::stat_fd(inode.fd()?.as_fd())?;
        if st.st_nlink == 0 {
            // Removed: reached only through what is open, as natively.
            return Ok(());
        }
        let root = self.inode(ROOT)?;
        let (path, top) = match (
            sys::fd_path(inode.fd()?.as_fd()),
            sys::fd_path(root.fd()?.as_fd()),
        ) {
            (Ok(p), Ok(r)) => (p, r),
            // A path longer than the kernel spells out (4 KiB): the
            // lookups along it were checked; nothing more to ask.
            (Err(HomeError::Os(libc::ENAMETOOLONG)), _) => return Ok(()),
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        let mut top = top.into_vec();
        top.push(b'/');
        match path.as_encoded_bytes().strip_prefix(top.as_slice()) {
            Some(rel) => sys::reach_beneath(root.fd()?.as_fd(), rel),
            // A file opened again from its handle without a path: by the
            // parent it was last seen in, if the name still leads to it.
            None if !sys::is_dir(&st) => self.walk_by_name(inode),
            // Moved out of the home (by another node): no path leads here.
            None => Err(HomeError::Os(libc::ENOENT)),
        }
    }

    /// Reaches a non-directory through the parent and name it was last
    /// seen at: the parent reached, then the name looked up in it as the
    /// caller (search permission on the parent) and found to be this inode.
    fn walk_by_name(&self, inode: &Inode) -> Result<()> {
        let gone = HomeError::Os(libc::ENOENT);
        let Some((parent, name)) = inode.seen.lock().clone() else {
            return Err(gone);
        };
        self.reach(parent)?;
        let p = self.inode(parent)?;
        let st = sys::stat_at(p.fd()?.as_fd(), &name)?;
        match inodes::key_of(&st) == inode.key() {
            true => Ok(()),
            false => Err(gone),
        }
    }
}

fn remember(inode: &Inode, r: Reached) {
    let mut v = inode.reached.lock();
    v.retain(|e| e.0 != r.0);
    if v.len() >= PER_INODE {
        v.remove(0);
    }
    v.push(r);
}
