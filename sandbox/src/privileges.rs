//! The drop: a server gives up everything but the uid, groups and
//! capabilities its kind declares, for good, before it serves a request.
//!
//! [`drop_to`] sets, in this order: the bounding set (reduced to the kept
//! capabilities; this needs `CAP_SETPCAP`, so it comes first), the ambient
//! set (cleared), the supplementary groups, the gid, the uid (real,
//! effective, saved; `PR_SET_KEEPCAPS` carries kept capabilities across a
//! change away from uid 0), the permitted and effective sets (exactly the
//! kept ones; the inheritable set empty), `no_new_privs`, and, if asked, a
//! seccomp filter. Then it reads `/proc/thread-self/status` back and fails
//! unless the kernel shows exactly that.
//!
//! Capabilities, the bounding set, `no_new_privs` and seccomp filters
//! belong to a thread on Linux, and the raw `setresuid`/`setgroups` calls
//! used here change only the calling thread too. A drop made while other
//! threads run would leave them privileged, so [`drop_to`] refuses unless
//! the process has exactly one thread: drop before starting any runtime,
//! FUSE loop, reporter or metrics thread. Threads started afterwards
//! inherit the dropped state.

use std::time::{Duration, Instant};

use rustix::process::{Gid, Uid};
use rustix::thread as t;

use crate::caps::{self, Caps};
use crate::seccomp::Filter;
use crate::status::Status;

/// What a server keeps once it has dropped. Build one with
/// [`Privileges::user`] or [`Privileges::root_keeping`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Privileges {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (none unless given).
    pub groups: Vec<u32>,
    /// Capabilities kept in the permitted, effective and bounding sets.
    pub caps: Caps,
    /// A seccomp allow-list installed last, if any.
    pub seccomp: Option<Filter>,
}

impl Privileges {
    /// An unprivileged user: `uid`/`gid`, no supplementary group, no
    /// capability (a bucket server: `65534:65534` by default).
    pub fn user(uid: u32, gid: u32) -> Self {
        Self {
            uid,
            gid,
            groups: Vec::new(),
            caps: Caps::empty(),
            seccomp: None,
        }
    }

    /// uid and gid 0 keeping exactly `caps` (a home server keeps the list
    /// its layer declares; the unmount guardian keeps `CAP_SYS_ADMIN`).
    pub fn root_keeping(caps: Caps) -> Self {
        Self {
            caps,
            ..Self::user(0, 0)
        }
    }

    /// The same with these supplementary groups.
    pub fn with_groups(mut self, groups: Vec<u32>) -> Self {
        self.groups = groups;
        self
    }

    /// The same with a seccomp allow-list installed after everything else.
    pub fn with_seccomp(mut self, filter: Filter) -> Self {
        self.seccomp = Some(filter);
        self
    }
}

impl std::fmt::Display for Privileges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "uid {} gid {} capabilities {}",
            self.uid,
            self.gid,
            caps::describe(self.caps)
        )
    }
}

/// Why a drop did not happen (the process must not serve then).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot drop privilege with {0} threads running: it must happen before any thread starts (capabilities are per thread)")]
    Threads(usize),
    #[error("cannot {what}: {source} (start the server as root)")]
    Denied {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the kernel shows {shown} after the drop, not {wanted}")]
    NotDropped { shown: String, wanted: String },
    #[error("cannot read back the process status: {0}")]
    Status(#[from] crate::status::StatusError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn denied(what: impl Into<String>) -> impl FnOnce(rustix::io::Errno) -> SandboxError {
    let what = what.into();
    move |e| SandboxError::Denied {
        what,
        source: e.into(),
    }
}

/// The threads of this process (`/proc/self/task`).
pub fn threads() -> std::io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// Waits (at most a second) until this process has one thread: threads
/// joined a moment ago may still be listed while the kernel reaps them.
fn wait_single_threaded() -> Result<(), SandboxError> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let n = threads()?;
        if n == 1 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(SandboxError::Threads(n));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Drops this process to `p`, for good (see the module's doc for the
/// order). Refuses with [`SandboxError::Threads`] unless the process has a
/// single thread; fails unless the kernel then shows exactly `p`.
pub fn drop_to(p: &Privileges) -> Result<(), SandboxError> {
    wait_single_threaded()?;
    let keep = p.caps;
    // The bounding set first: dropping from it needs CAP_SETPCAP.
    for n in 0..=caps::last_cap() {
        let cap = Caps::from_bits_retain(1u64 << n);
        if keep.contains(cap) {
            continue;
        }
        if t::capability_is_in_bounding_set(cap).unwrap_or(false) {
            t::remove_capability_from_bounding_set(cap).map_err(denied(format!(
                "drop {} from the bounding set",
                caps::name(n)
            )))?;
        }
    }
    t::clear_ambient_capability_set().map_err(denied("clear the ambient set"))?;
    let mut groups_now: Vec<u32> = rustix::process::getgroups()
        .map_err(denied("read the groups"))?
        .iter()
        .map(|g| g.as_raw())
        .collect();
    groups_now.sort_unstable();
    let mut want = p.groups.clone();
    want.sort_unstable();
    if groups_now != want {
        let groups: Vec<Gid> = p.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        t::set_thread_groups(&groups).map_err(denied("set the supplementary groups"))?;
    }
    let (uid, gid) = (Uid::from_raw(p.uid), Gid::from_raw(p.gid));
    t::set_thread_res_gid(gid, gid, gid).map_err(denied(format!("become gid {}", p.gid)))?;
    // Kept capabilities survive the change away from uid 0 only this way.
    let keepcaps = !keep.is_empty() && p.uid != 0;
    if keepcaps {
        t::set_keep_capabilities(true).map_err(denied("keep capabilities"))?;
    }
    t::set_thread_res_uid(uid, uid, uid).map_err(denied(format!("become uid {}", p.uid)))?;
    t::set_capabilities(
        None,
        t::CapabilitySets {
            effective: keep,
            permitted: keep,
            inheritable: Caps::empty(),
        },
    )
    .map_err(denied(format!("keep only {}", caps::describe(keep))))?;
    if keepcaps {
        t::set_keep_capabilities(false).map_err(denied("reset keep-capabilities"))?;
    }
    t::set_no_new_privs(true).map_err(denied("set no_new_privs"))?;
    if let Some(f) = &p.seccomp {
        f.install()?;
    }
    check(p)
}

/// Reads this thread's status back and compares it with `p`.
fn check(p: &Privileges) -> Result<(), SandboxError> {
    let s = Status::current_thread()?;
    let mut groups = s.groups.clone();
    groups.sort();
    let mut want = p.groups.clone();
    want.sort();
    let ok = s.runs_as(p.uid, p.gid)
        && groups == want
        && s.holds_exactly(p.caps)
        && s.no_new_privs
        && (p.seccomp.is_none() || s.seccomp == 2);
    if ok {
        return Ok(());
    }
    Err(SandboxError::NotDropped {
        shown: s.to_string(),
        wanted: format!(
            "{p} groups {want:?} no_new_privs 1{}",
            if p.seccomp.is_some() {
                " seccomp 2"
            } else {
                ""
            }
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_say_what_is_kept() {
        let u = Privileges::user(65534, 65534);
        assert!(u.caps.is_empty() && u.groups.is_empty() && u.seccomp.is_none());
        assert_eq!(u.to_string(), "uid 65534 gid 65534 capabilities none");
        let r = Privileges::root_keeping(Caps::SYS_ADMIN).with_groups(vec![5]);
        assert_eq!((r.uid, r.gid, r.groups.clone()), (0, 0, vec![5]));
        assert_eq!(r.to_string(), "uid 0 gid 0 capabilities CAP_SYS_ADMIN");
    }

    #[test]
    fn a_drop_with_threads_running_is_refused() {
        // The test harness runs this on a thread of its own: more than one.
        let e = drop_to(&Privileges::user(65534, 65534)).unwrap_err();
        assert!(matches!(e, SandboxError::Threads(n) if n > 1), "{e}");
        assert!(e.to_string().contains("before any thread starts"));
        // Nothing was changed.
        let s = Status::current_thread().unwrap();
        assert!(!s.runs_as(65534, 65534));
    }
}
