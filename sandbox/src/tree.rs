//! Handing a directory tree to the uid a server becomes, without following
//! anything the previous owner could have planted.
//!
//! A bucket server prepares its data cache for the uid it drops to while it
//! is still root; that directory may hold what an earlier (and possibly
//! compromised) server of another uid left. The walk goes by directory
//! descriptors: every entry is opened relative to its parent with
//! `O_NOFOLLOW`, and owners change with `fchownat(.., AT_SYMLINK_NOFOLLOW)`,
//! so a symlink swapped in for a directory mid-walk changes the link, never
//! what it points to.

use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, CWD};
use rustix::process::{Gid, Uid};

/// Creates `dir` (and its parents, owned by whoever runs this) if missing,
/// then makes it and everything below it owned by `uid`:`gid`. `dir` itself
/// must be a directory, not a symlink.
pub fn own_tree(dir: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let fd = rfs::openat(
        CWD,
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    rfs::fchown(&fd, Some(uid), Some(gid))?;
    own_below(fd, uid, gid, 0)
}

/// Deeper than this is not a cache hubfs wrote.
const MAX_DEPTH: usize = 64;

fn own_below(dir: OwnedFd, uid: Uid, gid: Gid, depth: usize) -> std::io::Result<()> {
    if depth > MAX_DEPTH {
        return Err(std::io::Error::other("directory tree deeper than 64"));
    }
    let mut subdirs = Vec::new();
    for entry in rfs::Dir::read_from(&dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        match rfs::chownat(&dir, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(()) => {}
            // Removed meanwhile.
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        }
        if entry.file_type() == FileType::Directory {
            subdirs.push(name.to_owned());
        }
    }
    for name in subdirs {
        let sub = rfs::openat(
            &dir,
            name.as_c_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        );
        match sub {
            Ok(fd) => own_below(fd, uid, gid, depth + 1)?,
            // Gone, or no longer a directory (a symlink swapped in): skip.
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) => {
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_tree_changes_owner_and_a_planted_symlink_is_not_followed() {
        if !rustix::process::geteuid().is_root() {
            panic!("needs root: chown to another uid");
        }
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::write(&outside, b"x").unwrap();
        let cache = t.path().join("cache");
        std::fs::create_dir_all(cache.join("a/b")).unwrap();
        std::fs::write(cache.join("a/b/block"), b"data").unwrap();
        std::os::unix::fs::symlink(&outside, cache.join("a/link")).unwrap();
        std::os::unix::fs::symlink(t.path(), cache.join("dirlink")).unwrap();
        own_tree(&cache, 65534, 65533).unwrap();
        for p in ["", "a", "a/b", "a/b/block"] {
            let m = std::fs::metadata(cache.join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (65534, 65533), "{p}");
        }
        let link = std::fs::symlink_metadata(cache.join("a/link")).unwrap();
        assert_eq!(link.uid(), 65534, "the link itself changes owner");
        let o = std::fs::metadata(&outside).unwrap();
        assert_eq!(o.uid(), 0, "what a symlink points to is left alone");
        assert_eq!(std::fs::metadata(t.path()).unwrap().uid(), 0);
        // A missing directory is made.
        own_tree(&t.path().join("new/cache"), 65534, 65534).unwrap();
        assert_eq!(
            std::fs::metadata(t.path().join("new/cache")).unwrap().uid(),
            65534
        );
        // A symlink as the directory itself is refused.
        assert!(own_tree(&cache.join("dirlink"), 65534, 65534).is_err());
    }
}
