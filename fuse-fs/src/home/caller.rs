//! Who asks, and the credentials their request is served with.
//!
//! A FUSE request names its caller's filesystem uid and gid and the calling
//! thread; the rest of what the kernel would judge them by (supplementary
//! groups, capabilities) is read from `/proc/<pid>/status`, checked against
//! the request (the ids must be among the ones the status shows, else the
//! pid names another process: a caller outside the daemon's PID namespace,
//! or one that is gone), and kept for [`CACHE_TTL`] so that a busy caller
//! costs one read a second, not one per request. Each request is then served
//! by a thread switched to those credentials ([`super::identity`]), so the
//! backing filesystem's own rules decide what the caller may do.
//!
//! Staleness: a process that drops a group or a capability without changing
//! its uid or gid keeps what it had for at most [`CACHE_TTL`], and a new
//! process given a recycled pid within it, with the same ids, is served with
//! the old one's groups and capabilities. Both are the same user a moment
//! apart.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Who asks: taken from the FUSE request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Caller {
    /// Filesystem uid and gid of the calling thread.
    pub uid: u32,
    pub gid: u32,
    /// The calling thread (0 when the kernel itself asks, e.g. writeback).
    pub pid: u32,
}

impl Caller {
    pub const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: 0,
    };
}

/// Capability numbers (`<linux/capability.h>`).
pub mod cap {
    pub const CHOWN: u32 = 0;
    pub const DAC_OVERRIDE: u32 = 1;
    pub const DAC_READ_SEARCH: u32 = 2;
    pub const FOWNER: u32 = 3;
    pub const FSETID: u32 = 4;
    pub const SETGID: u32 = 6;
    pub const SETUID: u32 = 7;
    pub const MKNOD: u32 = 27;
    pub const SYS_ADMIN: u32 = 21;

    /// The bit of capability `n` in a capability set.
    pub const fn bit(n: u32) -> u64 {
        1 << n
    }
}

/// The capabilities a caller's request may use, of those the caller has:
/// the ones filesystem calls check. CAP_MKNOD serves `RENAME_WHITEOUT`
/// (device nodes are refused whatever the caller holds; see `fs::mknod`).
/// Never CAP_SYS_ADMIN (`trusted.*` attributes), CAP_SETUID or CAP_SETGID:
/// those stay the server's.
pub const CALLER_CAPS: u64 = cap::bit(cap::CHOWN)
    | cap::bit(cap::DAC_OVERRIDE)
    | cap::bit(cap::DAC_READ_SEARCH)
    | cap::bit(cap::FOWNER)
    | cap::bit(cap::FSETID)
    | cap::bit(cap::MKNOD);

/// The credentials a request is served with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Effective capabilities, within [`CALLER_CAPS`].
    pub caps: u64,
}

impl Credentials {
    /// A number naming these credentials (equal credentials, equal ids).
    pub fn id(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }

    /// What the request alone says: no supplementary groups; root's
    /// filesystem capabilities for uid 0 (the kernel asking for itself, or
    /// a caller whose process the daemon cannot see), none otherwise.
    pub fn from_request(c: &Caller) -> Credentials {
        Credentials {
            uid: c.uid,
            gid: c.gid,
            groups: Vec::new(),
            caps: if c.uid == 0 { CALLER_CAPS } else { 0 },
        }
    }

    /// The caller's, from `/proc/<pid>/status`; [`Self::from_request`]
    /// when it cannot be read or names another process.
    pub fn of(c: &Caller) -> Credentials {
        if c.pid == 0 {
            return Credentials::from_request(c);
        }
        std::fs::read_to_string(format!("/proc/{}/status", c.pid))
            .ok()
            .and_then(|s| Credentials::parse(&s, c))
            .unwrap_or_else(|| Credentials::from_request(c))
    }

    /// Parses a status file for caller `c`: `None` unless the request's uid
    /// and gid are among the process's (real, effective, saved, fs).
    pub fn parse(status: &str, c: &Caller) -> Option<Credentials> {
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
                .map(str::trim)
        };
        let ids = |k: &str| -> Option<Vec<u32>> {
            field(k)?
                .split_whitespace()
                .map(|v| v.parse().ok())
                .collect()
        };
        let (uids, gids) = (ids("Uid")?, ids("Gid")?);
        if uids.len() != 4 || gids.len() != 4 || !uids.contains(&c.uid) || !gids.contains(&c.gid) {
            return None;
        }
        let groups = ids("Groups")?;
        let cap_eff = u64::from_str_radix(field("CapEff")?, 16).ok()?;
        // The kernel asks with the real ids for access(2): then the
        // process's effective capabilities are not the ones it checks with.
        let caps = match (c.uid == uids[3], c.uid) {
            (true, _) => cap_eff,
            (false, 0) => CALLER_CAPS,
            (false, _) => 0,
        };
        Some(Credentials {
            uid: c.uid,
            gid: c.gid,
            groups,
            caps: caps & CALLER_CAPS,
        })
    }
}

/// How long credentials read from `/proc` are used for the same caller.
pub const CACHE_TTL: Duration = Duration::from_secs(1);

/// Callers remembered at most (a caller spawning processes by the thousand
/// only makes the daemon read their status files).
const CACHE_MAX: usize = 4096;

/// Callers' credentials by (pid, uid, gid), each for [`CACHE_TTL`].
#[derive(Default)]
pub struct CredentialCache {
    entries: Mutex<HashMap<Caller, (Arc<Credentials>, Instant)>>,
}

impl CredentialCache {
    /// The credentials of `c`, read again when older than [`CACHE_TTL`].
    pub fn get(&self, c: &Caller) -> Arc<Credentials> {
        let now = Instant::now();
        if let Some((creds, at)) = self.entries.lock().get(c) {
            if now.duration_since(*at) < CACHE_TTL {
                return creds.clone();
            }
        }
        let creds = Arc::new(Credentials::of(c));
        let mut e = self.entries.lock();
        if e.len() >= CACHE_MAX {
            e.retain(|_, (_, at)| now.duration_since(*at) < CACHE_TTL);
            if e.len() >= CACHE_MAX {
                e.clear();
            }
        }
        e.insert(*c, (creds.clone(), now));
        creds
    }

    /// Callers remembered (for tests).
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: Caller = Caller {
        uid: 1000,
        gid: 1000,
        pid: 4242,
    };

    #[test]
    fn credentials_come_from_proc_status() {
        let status = "Name:\tsh\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\nGroups:\t50 60 \nCapEff:\t0000000000000010\n";
        let c = Credentials::parse(status, &USER).unwrap();
        assert_eq!(c.groups, vec![50, 60]);
        assert_eq!(c.caps, cap::bit(cap::FSETID), "bit 4 is CAP_FSETID");
        // Capabilities the server never lends are dropped.
        let status = status.replace("0000000000000010", "000001ffffffffff");
        assert_eq!(
            Credentials::parse(&status, &USER).unwrap().caps,
            CALLER_CAPS
        );
    }

    #[test]
    fn a_status_of_another_process_is_not_used() {
        let status = "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t0\nCapEff:\t000001ffffffffff\n";
        assert_eq!(Credentials::parse(status, &USER), None);
        assert_eq!(Credentials::parse("Name: x\n", &USER), None);
        // The process of a pid this daemon cannot see: the request alone.
        let gone = Caller {
            pid: u32::MAX,
            ..USER
        };
        assert_eq!(
            Credentials::of(&gone),
            Credentials {
                uid: 1000,
                gid: 1000,
                groups: vec![],
                caps: 0
            }
        );
        assert_eq!(Credentials::of(&Caller::ROOT).caps, CALLER_CAPS);
    }

    #[test]
    fn access_with_the_real_ids_uses_no_effective_capabilities() {
        // A set-user-ID root program run by uid 1000 calls access(2): the
        // kernel asks with uid 1000, the process's fsuid is 0.
        let status = "Uid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\nGroups:\t\nCapEff:\t000001ffffffffff\n";
        let c = Credentials::parse(status, &USER).unwrap();
        assert_eq!((c.uid, c.caps), (1000, 0));
    }

    #[test]
    fn this_process_is_read_and_cached() {
        let me = Caller {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            pid: std::process::id(),
        };
        let cache = CredentialCache::default();
        let a = cache.get(&me);
        let b = cache.get(&me);
        assert!(Arc::ptr_eq(&a, &b), "the second look is cached");
        assert_eq!(cache.len(), 1);
        if me.uid == 0 {
            assert_eq!(a.caps & cap::bit(cap::FSETID), cap::bit(cap::FSETID));
        }
    }
}
