//! Extended attributes of the home layer: passed through to the backing
//! inode, but for the two on the root that read the accounted usage
//! ([`XATTR_USAGE`]), the requests served ([`super::fs::XATTR_REQUESTS`]) and switch cleanup mode by hand ([`XATTR_MODE`]).
//! POSIX ACLs are extended attributes too (`system.posix_acl_*`); the
//! kernel checks permissions against them itself (`FUSE_POSIX_ACL`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use super::caller;
use super::error::HomeError;
use super::fs::{Caller, HomeFs, Result, ROOT, XATTR_MODE, XATTR_REQUESTS, XATTR_USAGE};
use super::syscalls as sys;

/// The POSIX access ACL, which also sets the mode.
const ACL_ACCESS: &str = "system.posix_acl_access";

impl HomeFs {
    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>> {
        if ino == ROOT && name == XATTR_USAGE {
            return Ok(self.usage_text().into_bytes());
        }
        if ino == ROOT && name == XATTR_REQUESTS {
            return Ok(self.requests.text().into_bytes());
        }
        let i = self.inode(ino)?;
        sys::get_xattr(i.fd(), &sys::cstring(name.as_bytes())?)
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
        sys::set_xattr(i.fd(), &sys::cstring(name.as_bytes())?, value, flags)?;
        if name == ACL_ACCESS {
            // Set as root, the backing filesystem kept the set-group-ID bit
            // that the caller's own setfacl loses outside the file's group.
            let st = sys::stat_fd(i.fd())?;
            if st.st_mode & libc::S_ISGID != 0 && !caller::keeps_setgid_on_acl(st.st_gid, &c) {
                sys::chmod_inode(i.fd(), st.st_mode & !libc::S_ISGID)?;
            }
        }
        Ok(())
    }

    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        sys::list_xattr(self.inode(ino)?.fd())
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> Result<()> {
        let i = self.inode(ino)?;
        sys::remove_xattr(i.fd(), &sys::cstring(name.as_bytes())?)
    }
}
