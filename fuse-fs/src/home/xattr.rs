//! Extended attributes of the home layer: passed through to the backing
//! inode (set and read as the caller), but for the ones on the root that
//! read the accounted usage ([`XATTR_USAGE`]), the requests served
//! ([`super::fs::XATTR_REQUESTS`]) and switch cleanup mode by hand
//! ([`XATTR_MODE`]). POSIX ACLs are extended attributes too
//! (`system.posix_acl_*`), which the backing filesystem applies.
//!
//! A user can store data in extended attributes, so the quota counts the
//! user ones (`user.*`) as bytes: their names and values, charged when set
//! (EDQUOT past the hard limit, as a write), given back when removed or
//! when their inode goes, and counted by the walk that gives a home its
//! figure (`hubfs_walker::user_xattr_bytes`). On a backing filesystem
//! without extended attributes (EFS) there is nothing to count. What one
//! inode may carry is also bounded: [`XATTR_PER_INODE`] bytes of names and
//! values of every namespace, ext4's own limit for a 4 KiB block; past it
//! a set fails with ENOSPC, as ext4's does.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use super::error::HomeError;
use super::fs::{Caller, HomeFs, Result, ROOT, XATTR_MODE, XATTR_REQUESTS, XATTR_USAGE};
use super::syscalls as sys;

/// Bytes of extended attribute names and values one inode may carry
/// through this layer.
pub const XATTR_PER_INODE: usize = 4096;

impl HomeFs {
    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>> {
        if ino == ROOT && name == XATTR_USAGE {
            return Ok(self.usage_text().into_bytes());
        }
        if ino == ROOT && name == XATTR_REQUESTS {
            return Ok(self.requests.text().into_bytes());
        }
        let i = self.inode(ino)?;
        sys::get_xattr(i.fd()?.as_fd(), &sys::cstring(name.as_bytes())?)
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
        if ino == ROOT && (name == XATTR_USAGE || name == XATTR_REQUESTS) {
            return Err(HomeError::Os(libc::EPERM));
        }
        let i = self.inode(ino)?;
        let n = sys::cstring(name.as_bytes())?;
        // The inode's attributes with this one set: counted by the server
        // (the caller may lack read permission) under the size lock, so
        // two setters cannot both pass the bound.
        let _g = i.size_lock.lock();
        let held = super::identity::as_server(|| xattr_bytes(i.fd()?.as_fd(), &n))??;
        if held + name.len() + value.len() > XATTR_PER_INODE {
            return Err(HomeError::Os(libc::ENOSPC));
        }
        // Set as the caller: the backing filesystem updates the mode an
        // access ACL implies, and drops the set-group-ID bit of an owner
        // outside the file's group, as natively.
        let fd = i.fd()?;
        let set = || sys::set_xattr(fd.as_fd(), &n, value, flags);
        if !charged(name) {
            return set();
        }
        // Charged: what it holds over the value it replaces.
        let old = self.user_xattr(fd.as_fd(), &n)?;
        self.freeze(&sys::stat_fd(fd.as_fd())?, || {
            self.xattr_charge_fd(fd.as_fd())
        });
        let delta = (name.len() + value.len()) as i64 - old;
        if delta <= 0 {
            set()?;
            self.usage.apply(delta, 0);
            return Ok(());
        }
        let r = self.usage.reserve(delta as u64, 0)?;
        match set() {
            Ok(()) => self.usage.settle(r, delta, 0),
            Err(e) => {
                self.usage.release(r);
                return Err(e);
            }
        }
        Ok(())
    }

    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        sys::list_xattr(self.inode(ino)?.fd()?.as_fd())
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> Result<()> {
        let i = self.inode(ino)?;
        let n = sys::cstring(name.as_bytes())?;
        let fd = i.fd()?;
        if !charged(name) {
            return sys::remove_xattr(fd.as_fd(), &n);
        }
        let _g = i.size_lock.lock();
        let old = self.user_xattr(fd.as_fd(), &n)?;
        self.freeze(&sys::stat_fd(fd.as_fd())?, || {
            self.xattr_charge_fd(fd.as_fd())
        });
        sys::remove_xattr(fd.as_fd(), &n)?;
        self.usage.apply(-old, 0);
        Ok(())
    }

    /// What the user attribute `name` of the inode behind `fd` is charged
    /// (its name and value; 0 if it has none), read as the server.
    fn user_xattr(&self, fd: std::os::fd::BorrowedFd<'_>, name: &std::ffi::CStr) -> Result<i64> {
        if !self.keeps_xattrs() {
            return Ok(0);
        }
        let len = super::identity::as_server(|| {
            rustix::fs::getxattr_query(sys::proc_path(fd).as_c_str(), name)
        })?;
        Ok(match len {
            Ok(v) => (name.to_bytes().len() + v) as i64,
            Err(_) => 0,
        })
    }
}

/// Whether the attribute `name` is charged against the quota: the user
/// namespace, where anyone may store anything (the others hold ACLs,
/// capabilities and labels the kernel bounds).
fn charged(name: &OsStr) -> bool {
    name.as_bytes().starts_with(b"user.")
}

/// Bytes of the names and values of the extended attributes of the inode
/// behind `fd`, but for `except` (about to be replaced).
fn xattr_bytes(fd: std::os::fd::BorrowedFd<'_>, except: &std::ffi::CStr) -> Result<usize> {
    let names = match sys::list_xattr(fd) {
        Ok(n) => n,
        Err(HomeError::Os(libc::EOPNOTSUPP)) => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut total = 0;
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if name == except.to_bytes() {
            continue;
        }
        let value = match sys::get_xattr(fd, &sys::cstring(name)?) {
            Ok(v) => v.len(),
            // Gone meanwhile, or not readable even to the server.
            Err(_) => 0,
        };
        total += name.len() + value;
    }
    Ok(total)
}
