//! The unmount guardian: the one privileged remainder of a dropped server.
//!
//! Unmounting needs `CAP_SYS_ADMIN`, which a dropped server no longer has,
//! and fusermount3's setuid helper is no way out under `no_new_privs`. So
//! a server started by hand, before it drops, starts a guardian: its own
//! binary again (the caller's [`Command`], e.g. `hubfs unmount-guard`),
//! linked to it by a socket on the guardian's stdin. The guardian keeps
//! uid 0 with `CAP_SYS_ADMIN` only and `no_new_privs`, serves no request,
//! opens nothing under the mount, and waits:
//!
//! * the server asks it to unmount ([`Guardian::unmount`], on SIGTERM):
//!   it unmounts (lazily if busy) and answers;
//! * the server leaves the mount to someone else ([`Guardian::leave`]: a
//!   live takeover handed it on, or it was unmounted from outside): it
//!   exits and touches nothing;
//! * the server dies (the link closes without a word): it detaches the
//!   mount, as fusermount3's `auto_unmount` does — once the mount is the
//!   server's: a server taking a live mount over starts its guardian
//!   before it has the mount ([`Guardian::start_for_takeover`]) and says
//!   so once the old server let go ([`Guardian::own`]); if it dies or
//!   fails before, the old server serves on and its mount stays.
//!
//! It unmounts only the mount it was given: the one at the mountpoint whose
//! unique mount id (`statx` `STATX_MNT_ID_UNIQUE`, Linux 6.8; the reusable
//! `STATX_MNT_ID` before) is the one recorded at its start. A server the
//! mounter started needs no guardian: the mounter detaches its mounts.

use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use rustix::fs::{AtFlags, StatxFlags, CWD};
use rustix::mount::{unmount, UnmountFlags};

use crate::caps::Caps;
use crate::privileges::{drop_to, Privileges, SandboxError};

/// `STATX_MNT_ID_UNIQUE` (Linux 6.8): a mount id never reused.
const STATX_MNT_ID_UNIQUE: u32 = 0x4000;

const READY: u8 = b'R';
const OWN: u8 = b'M';
const UNMOUNT: u8 = b'U';
const LEAVE: u8 = b'L';
const DONE: u8 = b'0';
const FAILED: u8 = b'1';

/// What the guardian keeps: unmounting needs `CAP_SYS_ADMIN`, nothing else.
pub const GUARDIAN_CAPS: Caps = Caps::SYS_ADMIN;

/// The mount at `path`, as a number that names it and no other: the
/// unique mount id, or the (reusable) mount id on kernels before 6.8. It
/// asks the kernel's cached attributes only (`AT_STATX_DONT_SYNC`), so it
/// never waits on the FUSE server, even before it answers INIT.
pub fn mount_id(path: &Path) -> std::io::Result<u64> {
    let flags = AtFlags::STATX_DONT_SYNC | AtFlags::NO_AUTOMOUNT | AtFlags::SYMLINK_NOFOLLOW;
    let unique = StatxFlags::from_bits_retain(STATX_MNT_ID_UNIQUE);
    let st = rustix::fs::statx(CWD, path, flags, unique | StatxFlags::MNT_ID)?;
    Ok(st.stx_mnt_id)
}

/// The server's handle on its guardian.
#[derive(Debug)]
pub struct Guardian {
    child: Child,
    link: UnixStream,
    mountpoint: PathBuf,
}

impl Guardian {
    /// Starts `cmd` (a program that calls [`serve`] on its stdin) as the
    /// guardian of the mount at `mountpoint`, this server's own, confined
    /// to what it keeps, and waits until it has dropped to that and
    /// watches. Call it while still privileged, after mounting and before
    /// [`crate::drop_to`].
    pub fn start(cmd: Command, mountpoint: &Path) -> Result<Guardian, SandboxError> {
        Self::start_owning(cmd, mountpoint, true)
    }

    /// As [`Guardian::start`] for a server about to take over the live
    /// mount at `mountpoint`: until [`Guardian::own`], the server's death
    /// leaves the mount alone (the old server still serves it).
    pub fn start_for_takeover(cmd: Command, mountpoint: &Path) -> Result<Guardian, SandboxError> {
        Self::start_owning(cmd, mountpoint, false)
    }

    /// The takeover is done: the mount is this server's from now on.
    pub fn own(&mut self) -> std::io::Result<()> {
        self.link.write_all(&[OWN])
    }

    fn start_owning(
        mut cmd: Command,
        mountpoint: &Path,
        owned: bool,
    ) -> Result<Guardian, SandboxError> {
        let id = mount_id(mountpoint)?;
        let (link, theirs) = UnixStream::pair()?;
        crate::launch::confine(
            &mut cmd,
            GUARDIAN_CAPS | Caps::SETUID | Caps::SETGID | Caps::SETPCAP,
        );
        let child = cmd
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .spawn()?;
        let path = mountpoint.as_os_str().as_bytes();
        let mut head = Vec::with_capacity(13 + path.len());
        head.push(u8::from(owned));
        head.extend_from_slice(&id.to_le_bytes());
        head.extend_from_slice(&(path.len() as u32).to_le_bytes());
        head.extend_from_slice(path);
        let mut g = Guardian {
            child,
            link,
            mountpoint: mountpoint.to_owned(),
        };
        let started = g.link.write_all(&head).and_then(|()| {
            let mut b = [0u8];
            g.link.read_exact(&mut b).map(|()| b[0])
        });
        match started {
            Ok(READY) => Ok(g),
            _ => {
                let _ = g.child.kill();
                let status = g.child.wait()?;
                Err(SandboxError::Io(std::io::Error::other(format!(
                    "the unmount guardian of {} did not start ({status})",
                    mountpoint.display()
                ))))
            }
        }
    }

    /// The guardian's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks the guardian to unmount (lazily if the mount is busy) and waits
    /// for its answer and its exit.
    pub fn unmount(mut self) -> std::io::Result<()> {
        self.link.write_all(&[UNMOUNT])?;
        let mut answer = Vec::new();
        self.link.read_to_end(&mut answer)?;
        let _ = self.child.wait();
        match answer.split_first() {
            Some((&DONE, _)) => Ok(()),
            Some((&FAILED, why)) => Err(std::io::Error::other(format!(
                "unmount {}: {}",
                self.mountpoint.display(),
                String::from_utf8_lossy(why)
            ))),
            _ => Err(std::io::Error::other(format!(
                "the unmount guardian of {} went away without unmounting",
                self.mountpoint.display()
            ))),
        }
    }

    /// Tells the guardian to exit without unmounting (the mount was handed
    /// to a new server, or unmounted from outside), and waits for it.
    pub fn leave(mut self) {
        let _ = self.link.write_all(&[LEAVE]);
        let _ = self.link.shutdown(std::net::Shutdown::Write);
        let _ = self.child.wait();
    }
}

/// The guardian's side: reads which mount it guards from `link` (its
/// stdin), drops to uid 0 with [`GUARDIAN_CAPS`], says it is ready, and
/// acts on the server's one word or its death (see the module's doc).
/// Returns once it is done; the process should then exit.
pub fn serve(mut link: UnixStream) -> Result<(), SandboxError> {
    let mut head = [0u8; 13];
    link.read_exact(&mut head)?;
    let mut owned = head[0] == 1;
    let id = u64::from_le_bytes(head[1..9].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(head[9..].try_into().expect("4 bytes")) as usize;
    if len > 64 << 10 {
        return Err(SandboxError::Io(std::io::Error::other(
            "mountpoint longer than 64 KiB",
        )));
    }
    let mut path = vec![0u8; len];
    link.read_exact(&mut path)?;
    let mountpoint = PathBuf::from(std::ffi::OsStr::from_bytes(&path));
    drop_to(&Privileges::root_keeping(GUARDIAN_CAPS))?;
    link.write_all(&[READY])?;
    let word = loop {
        let mut word = [0u8];
        match link.read(&mut word) {
            Ok(1) if word[0] == OWN => owned = true,
            Ok(1) => break Some(word[0]),
            _ => break None,
        }
    };
    match word {
        Some(LEAVE) => Ok(()),
        // A takeover that never completed: the old server's mount stays.
        None if !owned => Ok(()),
        Some(UNMOUNT) => {
            let answer = match unmount_ours(&mountpoint, id, false) {
                Ok(()) => vec![DONE],
                Err(e) => [&[FAILED][..], e.to_string().as_bytes()].concat(),
            };
            link.write_all(&answer)?;
            Ok(())
        }
        // The server died (or sent garbage): detach what it left.
        _ => {
            if let Err(e) = unmount_ours(&mountpoint, id, true) {
                eprintln!(
                    "hubfs unmount guardian: cannot detach {}: {e}",
                    mountpoint.display()
                );
            }
            Ok(())
        }
    }
}

/// Unmounts the mount at `mountpoint` if it is still mount `id`: at once
/// (`lazy`), or normally and lazily only if busy. Another mount there (or
/// none) is left alone; asked to unmount, that is an error.
fn unmount_ours(mountpoint: &Path, id: u64, lazy: bool) -> std::io::Result<()> {
    match mount_id(mountpoint) {
        Ok(now) if now == id => {}
        // Gone, or replaced (a new server mounted there): not ours.
        _ if lazy => return Ok(()),
        _ => {
            return Err(std::io::Error::other(
                "the mount there is no longer the one this server mounted",
            ))
        }
    }
    let flags = if lazy {
        UnmountFlags::DETACH
    } else {
        UnmountFlags::empty()
    };
    match unmount(mountpoint, flags) {
        Err(rustix::io::Errno::BUSY) if !lazy => Ok(unmount(mountpoint, UnmountFlags::DETACH)?),
        r => Ok(r?),
    }
}
