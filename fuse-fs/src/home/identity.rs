//! The serving thread's identity: each request runs with its caller's
//! credentials, never with the server's.
//!
//! Before a request touches the backing filesystem, the thread serving it
//! switches to the caller's credentials ([`super::caller::Credentials`]):
//! supplementary groups, effective gid and uid (and with them the
//! filesystem ids), and effective capabilities cut to what the caller has
//! of [`super::caller::CALLER_CAPS`]. The backing filesystem then decides
//! as it would for the caller: permissions and POSIX ACLs, ownership of
//! what is made, set-group-ID inheritance, clearing set-ID bits on write,
//! truncate and fallocate (CAP_FSETID semantics for a root caller). As
//! virtiofsd does, the switch uses the raw per-thread system calls
//! (`setgroups`, `setresgid`, `setresuid`, `capset`; glibc's wrappers would
//! change every thread of the process): the real and saved uid stay 0, so
//! the thread can switch back, and a user's process can neither signal nor
//! trace it.
//!
//! The switch is lazy: a thread keeps the last caller's credentials between
//! requests and switches only when the next request comes from someone
//! else, so a notebook's stream of requests costs no system call at all.
//! The few things only the server may do (registering a passthrough
//! backing file needs CAP_SYS_ADMIN) run inside [`as_server`]. Other threads
//! (the mount-time walk, the reporter, the takeover's control socket) never
//! switch.

use std::cell::RefCell;
use std::sync::Arc;

use rustix::process::{Gid, Uid};
use rustix::thread::{self as rt, CapabilitySet, CapabilitySets};

use super::caller::Credentials;
use super::error::HomeError;

/// What this thread runs as.
struct ThreadIdentity {
    /// The server's own sets, read at the thread's first switch.
    server: CapabilitySets,
    server_groups: Vec<Gid>,
    /// The caller it serves as; `None`: the server itself.
    caller: Option<Arc<Credentials>>,
}

thread_local! {
    static IDENTITY: RefCell<Option<ThreadIdentity>> = const { RefCell::new(None) };
}

fn err(e: rustix::io::Errno) -> HomeError {
    HomeError::Os(e.raw_os_error())
}

/// Switches this thread to `creds` (nothing to do if it already runs with
/// them). On failure the thread is back to the server's credentials and
/// the request must be refused: it is never served as anyone else.
pub fn become_caller(creds: &Arc<Credentials>) -> Result<(), HomeError> {
    IDENTITY.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(ThreadIdentity {
                server: rt::capabilities(None).map_err(err)?,
                server_groups: getgroups()?,
                caller: None,
            });
        }
        let id = slot.as_mut().expect("set above");
        if id.caller.as_deref() == Some(creds) {
            return Ok(());
        }
        if id.caller.is_some() {
            restore(id)?;
        }
        if let Err(e) = apply(id, creds) {
            let _ = restore(id);
            return Err(e);
        }
        id.caller = Some(creds.clone());
        Ok(())
    })
}

/// Runs `f` with the server's own credentials on this thread, then returns
/// to the caller's.
pub fn as_server<T>(f: impl FnOnce() -> T) -> Result<T, HomeError> {
    let caller = IDENTITY.with(|cell| -> Result<_, HomeError> {
        let mut slot = cell.borrow_mut();
        match slot.as_mut() {
            Some(id) if id.caller.is_some() => {
                let caller = id.caller.clone();
                restore(id)?;
                Ok(caller)
            }
            _ => Ok(None),
        }
    })?;
    let out = f();
    if let Some(c) = caller {
        become_caller(&c)?;
    }
    Ok(out)
}

/// The credentials this thread serves with now (`None`: the server's).
pub fn current() -> Option<Arc<Credentials>> {
    IDENTITY.with(|cell| cell.borrow().as_ref().and_then(|id| id.caller.clone()))
}

fn getgroups() -> Result<Vec<Gid>, HomeError> {
    Ok(nix::unistd::getgroups()?
        .into_iter()
        .map(|g| Gid::from_raw(g.as_raw()))
        .collect())
}

fn apply(id: &ThreadIdentity, c: &Credentials) -> Result<(), HomeError> {
    let groups: Vec<Gid> = c.groups.iter().map(|&g| Gid::from_raw(g)).collect();
    rt::set_thread_groups(&groups).map_err(err)?;
    rt::set_thread_res_gid(None, Some(Gid::from_raw(c.gid)), None).map_err(err)?;
    rt::set_thread_res_uid(None, Some(Uid::from_raw(c.uid)), None).map_err(err)?;
    // A non-zero uid cleared the effective set; uid 0 kept the server's.
    // Either way it becomes the caller's, within what the server holds.
    let effective = CapabilitySet::from_bits_retain(c.caps) & id.server.permitted;
    rt::set_capabilities(
        None,
        CapabilitySets {
            effective,
            permitted: id.server.permitted,
            inheritable: id.server.inheritable,
        },
    )
    .map_err(err)
}

fn restore(id: &mut ThreadIdentity) -> Result<(), HomeError> {
    // Back to uid 0 (allowed: the real and saved uid are 0), which copies
    // the permitted capabilities into the effective set; then the server's
    // effective set exactly, its gid and groups.
    rt::set_thread_res_uid(None, Some(Uid::ROOT), None).map_err(err)?;
    rt::set_capabilities(None, id.server).map_err(err)?;
    rt::set_thread_res_gid(None, Some(Gid::ROOT), None).map_err(err)?;
    rt::set_thread_groups(&id.server_groups).map_err(err)?;
    id.caller = None;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::home::caller::{cap, CALLER_CAPS};

    fn status() -> String {
        std::fs::read_to_string("/proc/thread-self/status").unwrap()
    }

    fn line(s: &str, k: &str) -> String {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Switches a fresh thread to uid 1000 and back, and to a root caller
    /// without CAP_FSETID; other threads are never touched.
    #[test]
    fn a_thread_serves_as_the_caller_and_returns() {
        if !nix::unistd::geteuid().is_root() {
            return; // the switch needs root; the system tests run it as root
        }
        let before = line(&status(), "Uid:");
        std::thread::spawn(move || {
            let user = Arc::new(Credentials {
                uid: 1000,
                gid: 1000,
                groups: vec![50, 1000],
                caps: 0,
            });
            become_caller(&user).unwrap();
            let s = status();
            assert_eq!(line(&s, "Uid:"), "0\t1000\t0\t1000");
            assert_eq!(line(&s, "Gid:"), "0\t1000\t0\t1000");
            assert_eq!(line(&s, "Groups:"), "50 1000");
            assert_eq!(line(&s, "CapEff:"), "0000000000000000");
            assert_ne!(line(&s, "CapPrm:"), "0000000000000000", "kept to return");
            // A file made now belongs to the caller.
            let t = tempfile::tempdir().unwrap();
            std::fs::set_permissions(
                t.path(),
                std::os::unix::fs::PermissionsExt::from_mode(0o777),
            )
            .unwrap();
            std::fs::write(t.path().join("f"), b"x").unwrap();
            let md = std::fs::metadata(t.path().join("f")).unwrap();
            assert_eq!(std::os::unix::fs::MetadataExt::uid(&md), 1000);
            // The server's own work in between.
            let inside = as_server(|| line(&status(), "Uid:")).unwrap();
            assert_eq!(inside, "0\t0\t0\t0");
            assert_eq!(current().as_deref(), Some(&*user));
            let root = Arc::new(Credentials {
                uid: 0,
                gid: 0,
                groups: vec![],
                caps: CALLER_CAPS & !cap::bit(cap::FSETID),
            });
            become_caller(&root).unwrap();
            let eff = u64::from_str_radix(&line(&status(), "CapEff:"), 16).unwrap();
            assert_eq!(eff, CALLER_CAPS & !cap::bit(cap::FSETID));
            assert_eq!(line(&status(), "Uid:"), "0\t0\t0\t0");
        })
        .join()
        .unwrap();
        assert_eq!(line(&status(), "Uid:"), before, "other threads keep theirs");
    }
}
