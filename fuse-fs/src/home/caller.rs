//! Who asks, and which set-ID bits their change of a file takes away.
//!
//! The daemon does everything as root, and root keeps a file's set-user-ID
//! and set-group-ID bits where the caller would lose them: a native
//! filesystem clears them when someone without CAP_FSETID changes a file's
//! size or content (`file_remove_privs` in the kernel). The kernel does that
//! itself for FUSE writes and truncates, but not for `fallocate`, and an
//! ACL set through the daemon is judged by the daemon's credentials. This
//! module holds the caller and the kernel's rule, applied from the caller's
//! credentials as `/proc/<pid>/status` shows them.

use super::syscalls::Stat;

/// Who asks: taken from the FUSE request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// Filesystem uid and gid of the calling thread.
    pub uid: u32,
    pub gid: u32,
    /// The calling process (0 when the kernel itself asks).
    pub pid: u32,
}

impl Caller {
    pub const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: 0,
    };
}

/// What the kernel's rule needs to know of the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Credentials {
    fsgid: u32,
    groups: Vec<u32>,
    cap_fsetid: bool,
}

const CAP_FSETID: u32 = 4;

impl Credentials {
    /// From `/proc/<pid>/status`; without it (the process is gone, or the
    /// kernel asked), from the request alone: root is privileged.
    fn of(c: &Caller) -> Credentials {
        let fallback = Credentials {
            fsgid: c.gid,
            groups: Vec::new(),
            cap_fsetid: c.uid == 0,
        };
        if c.pid == 0 {
            return fallback;
        }
        match std::fs::read_to_string(format!("/proc/{}/status", c.pid)) {
            Ok(s) => Credentials::parse(&s, c).unwrap_or(fallback),
            Err(_) => fallback,
        }
    }

    fn parse(status: &str, c: &Caller) -> Option<Credentials> {
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
                .map(str::trim)
        };
        let groups = field("Groups")?
            .split_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect();
        let cap_eff = u64::from_str_radix(field("CapEff")?, 16).ok()?;
        Some(Credentials {
            // The request's gid is the caller's fsgid at the time of the call.
            fsgid: c.gid,
            groups,
            cap_fsetid: cap_eff & (1 << CAP_FSETID) != 0,
        })
    }

    fn in_group_or_capable(&self, gid: u32) -> bool {
        self.fsgid == gid || self.groups.contains(&gid) || self.cap_fsetid
    }
}

/// The set-ID bits that `c` changing the size or content of a file with
/// attributes `st` clears, as `setattr_should_drop_suidgid` decides: the
/// set-user-ID bit always, the set-group-ID bit if the group may execute
/// or the caller is outside the file's group; nothing for a caller with
/// CAP_FSETID or for anything but a regular file.
pub fn setid_bits_lost(st: &Stat, c: &Caller) -> u32 {
    let mode = st.st_mode;
    if mode & libc::S_IFMT != libc::S_IFREG || mode & (libc::S_ISUID | libc::S_ISGID) == 0 {
        return 0;
    }
    let creds = Credentials::of(c);
    if creds.cap_fsetid {
        return 0;
    }
    let mut kill = mode & libc::S_ISUID;
    if mode & libc::S_ISGID != 0
        && (mode & libc::S_IXGRP != 0 || !creds.in_group_or_capable(st.st_gid))
    {
        kill |= libc::S_ISGID;
    }
    kill
}

/// Whether setting an ACL keeps the set-group-ID bit of a file of group
/// `gid` (`posix_acl_update_mode`): only for a caller in that group or with
/// CAP_FSETID.
pub fn keeps_setgid_on_acl(gid: u32, c: &Caller) -> bool {
    Credentials::of(c).in_group_or_capable(gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attributes with the given mode and group (the rest from `/`).
    fn st(mode: u32, gid: u32) -> Stat {
        let mut s = nix::sys::stat::stat("/").unwrap();
        s.st_mode = mode;
        s.st_gid = gid;
        s
    }

    const USER: Caller = Caller {
        uid: 1000,
        gid: 1000,
        pid: 0,
    };

    #[test]
    fn the_kernel_rule_for_set_id_bits() {
        let reg = libc::S_IFREG;
        assert_eq!(
            setid_bits_lost(&st(reg | 0o4755, 1000), &USER),
            libc::S_ISUID
        );
        // group-executable: set-group-ID goes for everyone without CAP_FSETID
        assert_eq!(
            setid_bits_lost(&st(reg | 0o2775, 1000), &USER),
            libc::S_ISGID
        );
        // not group-executable: kept by a member of the group, lost otherwise
        assert_eq!(setid_bits_lost(&st(reg | 0o2666, 1000), &USER), 0);
        assert_eq!(setid_bits_lost(&st(reg | 0o2666, 50), &USER), libc::S_ISGID);
        assert_eq!(
            setid_bits_lost(&st(reg | 0o6777, 50), &USER),
            libc::S_ISUID | libc::S_ISGID
        );
        // root (no process to ask: privileged), directories, plain files
        assert_eq!(setid_bits_lost(&st(reg | 0o6777, 50), &Caller::ROOT), 0);
        assert_eq!(setid_bits_lost(&st(libc::S_IFDIR | 0o2775, 50), &USER), 0);
        assert_eq!(setid_bits_lost(&st(reg | 0o777, 50), &USER), 0);
    }

    #[test]
    fn credentials_come_from_proc_status() {
        let status =
            "Name:\tsh\nUid:\t1000\t1000\t1000\t1000\nGroups:\t50 60 \nCapEff:\t0000000000000010\n";
        let c = Credentials::parse(status, &USER).unwrap();
        assert_eq!(c.groups, vec![50, 60]);
        assert!(c.cap_fsetid, "bit 4 is CAP_FSETID");
        assert!(c.in_group_or_capable(7));
        let status = "Groups:\t\nCapEff:\t0000000000000000\n";
        let c = Credentials::parse(status, &USER).unwrap();
        assert!(c.in_group_or_capable(1000) && !c.in_group_or_capable(50));
        assert_eq!(Credentials::parse("Name: x\n", &USER), None);
        // this very process, as root
        if nix::unistd::geteuid().is_root() {
            let me = Caller {
                uid: 0,
                gid: 0,
                pid: std::process::id(),
            };
            assert!(Credentials::of(&me).cap_fsetid);
        }
    }
}
