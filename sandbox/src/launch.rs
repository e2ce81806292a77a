//! Confining a server before it even starts: what the mounter's one launch
//! function (`SupervisorConfig::server_command`) does to every child.
//!
//! A server drops itself once mounted ([`crate::drop_to`]); the launcher
//! does not rely on that alone. Before the child's `execve` it sets
//! `no_new_privs` (no setuid binary or file capability can raise it again)
//! and reduces the bounding set to [`launch_bounding`] of the kind: its
//! final capabilities plus [`SETUP`], what any server needs between exec and
//! its drop. Root's exec then grants that and nothing more, so a server
//! whose drop were skipped still could not reach the rest.

use std::os::unix::process::CommandExt;
use std::process::Command;

use rustix::thread as t;

use crate::caps::Caps;

/// What a server needs between its exec and its drop, whatever its kind:
/// `CAP_SYS_ADMIN` to mount (and for its unmount guardian to unmount),
/// `CAP_CHOWN`, `CAP_DAC_OVERRIDE` and `CAP_FOWNER` to prepare what it will
/// write (a cache directory, a metrics file) for the uid it becomes, and
/// `CAP_SETUID`, `CAP_SETGID`, `CAP_SETPCAP` for the drop itself.
pub const SETUP: Caps = Caps::SYS_ADMIN
    .union(Caps::CHOWN)
    .union(Caps::DAC_OVERRIDE)
    .union(Caps::FOWNER)
    .union(Caps::SETUID)
    .union(Caps::SETGID)
    .union(Caps::SETPCAP);

/// The bounding set of a launched server whose kind keeps `kept` after
/// its drop.
pub const fn launch_bounding(kept: Caps) -> Caps {
    kept.union(SETUP)
}

/// Makes the child of `cmd`, before its exec, set `no_new_privs` and reduce
/// its bounding set to `bounding`. The spawn fails if either is refused.
pub fn confine(cmd: &mut Command, bounding: Caps) -> &mut Command {
    // SAFETY: the closure runs in the forked child before exec; it makes
    // only raw prctl(2) calls through rustix (async-signal-safe: no
    // allocation, no lock) and touches no memory of the parent.
    unsafe { cmd.pre_exec(move || confine_self(bounding)) }
}

/// `no_new_privs`, then every capability outside `bounding` out of the
/// bounding set (async-signal-safe: see [`confine`]).
fn confine_self(bounding: Caps) -> std::io::Result<()> {
    for n in 0..64u32 {
        let cap = Caps::from_bits_retain(1u64 << n);
        let held = match t::capability_is_in_bounding_set(cap) {
            Ok(held) => held,
            // Past the kernel's last capability.
            Err(rustix::io::Errno::INVAL) => break,
            Err(e) => return Err(e.into()),
        };
        if held && !bounding.contains(cap) {
            t::remove_capability_from_bounding_set(cap)?;
        }
    }
    t::set_no_new_privs(true)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setup_set_is_what_mount_prepare_and_drop_need() {
        assert!(SETUP.contains(Caps::SYS_ADMIN | Caps::SETUID | Caps::SETGID | Caps::SETPCAP));
        assert!(!SETUP.contains(Caps::SYS_PTRACE));
        assert!(!SETUP.contains(Caps::NET_ADMIN));
        assert_eq!(launch_bounding(Caps::empty()), SETUP);
        assert_eq!(
            launch_bounding(Caps::MKNOD),
            SETUP | Caps::MKNOD,
            "a kind's own capabilities are added"
        );
    }
}
