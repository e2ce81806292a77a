//! A home server's own privilege: what it keeps once mounted, and who
//! unmounts its mount then (the agreement in `LAUNCH.md`, shared with the
//! bucket servers through `hubfs_sandbox`).
//!
//! `hubfs mount home`, started as root (by the mounter or by hand), opens
//! the home directory, binds its control socket and mounts (or connects to
//! the server it takes over from) as root; starts its unmount guardian when
//! no mounter unmounts for it; then, while it still has one thread, drops
//! to uid 0 with [`SERVER_CAPABILITIES`] only (less CAP_SYS_ADMIN without
//! passthrough) and `no_new_privs` ([`hubfs_sandbox::drop_to`]). Every
//! request is then served on a thread switched to its caller's
//! credentials (`identity`), so the kept capabilities are the server's own
//! and those a root caller may lend: no request ever runs with them all.

use std::path::Path;

use hubfs_sandbox::{Caps, Privileges};

/// The capabilities a home server keeps once mounted (it stays uid 0, so
/// that its serving threads can switch to any caller and back), each for
/// one reason:
///
/// * `CAP_SETUID`, `CAP_SETGID`: switching a serving thread to the caller's
///   uid, gid and supplementary groups (`identity`);
/// * `CAP_CHOWN`, `CAP_DAC_OVERRIDE`, `CAP_FOWNER`, `CAP_FSETID`,
///   `CAP_MKNOD`: lent to a root caller that holds them itself (chown,
///   bypassing permissions, others' files' modes and times, keeping set-ID
///   bits, `RENAME_WHITEOUT`), as its request needs them natively;
/// * `CAP_DAC_READ_SEARCH`: the same for a root caller, and the server's own
///   reading of every directory of the home (the mount-time walk, the size
///   of an inode's extended attributes, execute-only programs);
/// * `CAP_SYS_ADMIN`: registering passthrough backing files with the kernel
///   (`FUSE_DEV_IOC_BACKING_OPEN` asks for it), only around that call; a
///   server with `--no-passthrough` does not keep it.
///
/// The mounter's launch function bounds every home server to these plus
/// what mounting and the drop need (`hubfs_sandbox::launch::launch_bounding`).
pub const SERVER_CAPABILITIES: Caps = Caps::SETUID
    .union(Caps::SETGID)
    .union(Caps::CHOWN)
    .union(Caps::DAC_OVERRIDE)
    .union(Caps::DAC_READ_SEARCH)
    .union(Caps::FOWNER)
    .union(Caps::FSETID)
    .union(Caps::MKNOD)
    .union(Caps::SYS_ADMIN);

/// What a home server drops to: uid and gid 0, no supplementary group,
/// [`SERVER_CAPABILITIES`] (without CAP_SYS_ADMIN unless it passes reads
/// through), `no_new_privs`.
pub fn server_privileges(passthrough: bool) -> Privileges {
    let caps = match passthrough {
        true => SERVER_CAPABILITIES,
        false => SERVER_CAPABILITIES.difference(Caps::SYS_ADMIN),
    };
    Privileges::root_keeping(caps)
}

/// Who a home server becomes once mounted, and who unmounts its mount.
#[derive(Debug)]
pub struct Confinement {
    pub privileges: Privileges,
    /// The command of its unmount guardian (`hubfs unmount-guard`), or
    /// `None` when whoever started it unmounts (the mounter).
    pub guardian: Option<std::process::Command>,
}

/// Who ends a mount.
pub(super) enum Unmounter {
    /// An unconfined server (in-process tests): fuser's session unmounts.
    Session,
    /// An unconfined server that took the mount over: `umount2` by itself.
    Resumed,
    /// A confined server: its guardian, or (none) whoever started it.
    Guardian(Option<hubfs_sandbox::Guardian>),
}

impl Unmounter {
    /// Starts the guardian of `mountpoint` (a fresh mount, or one taken
    /// over: then it is not the server's until [`Self::own`]).
    pub fn start(
        cmd: Option<std::process::Command>,
        mountpoint: &Path,
        taking_over: bool,
    ) -> Result<Unmounter, hubfs_sandbox::SandboxError> {
        let g = match (cmd, taking_over) {
            (None, _) => None,
            (Some(c), false) => Some(hubfs_sandbox::Guardian::start(c, mountpoint)?),
            (Some(c), true) => Some(hubfs_sandbox::Guardian::start_for_takeover(c, mountpoint)?),
        };
        Ok(Unmounter::Guardian(g))
    }

    /// The mount taken over is this server's now.
    pub fn own(&mut self) {
        if let Unmounter::Guardian(Some(g)) = self {
            if let Err(e) = g.own() {
                tracing::warn!(error = %e, "the unmount guardian is gone");
            }
        }
    }

    /// Someone else ends the mount (a new server took it over, or it was
    /// unmounted from outside): the guardian exits touching nothing.
    pub fn leave(&mut self) {
        if let Unmounter::Guardian(g) = self {
            if let Some(g) = g.take() {
                g.leave();
            }
        }
    }

    /// Unmounts through the guardian (lazily if files are open); false
    /// without one (the mounter detaches the mount once this process is
    /// gone) or if it failed.
    pub fn unmount_by_guardian(&mut self) -> bool {
        let Unmounter::Guardian(g) = self else {
            return false;
        };
        match g.take().map(hubfs_sandbox::Guardian::unmount) {
            Some(Ok(())) => true,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "the unmount guardian could not unmount");
                false
            }
            None => false,
        }
    }
}
