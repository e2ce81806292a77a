//! What the kernel says a process holds: the privilege lines of
//! `/proc/PID/status`, parsed once for every test and figure.
//!
//! Every privilege test of hubfs (a server started by the mounter, restarted
//! after a crash, taken over; one started by hand) reads the server's status
//! through [`Status::of`] and asserts on its fields, and
//! [`crate::drop_to`] reads its own back through [`Status::current_thread`]
//! to check that the kernel did what it was asked.
//!
//! Capabilities, the bounding set, `no_new_privs` and seccomp filters are
//! per thread on Linux; `/proc/PID/status` shows the thread group leader's,
//! `/proc/PID/task/TID/status` any one thread's ([`Status::of_thread`]).

use std::fmt;
use std::path::Path;

use crate::caps::{describe, Caps};

/// The privilege of one process (or thread) as `/proc/.../status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// `Name:` (the command, at most 15 bytes).
    pub name: String,
    /// `Uid:` real, effective, saved, filesystem.
    pub uid: [u32; 4],
    /// `Gid:` real, effective, saved, filesystem.
    pub gid: [u32; 4],
    /// `Groups:` the supplementary groups.
    pub groups: Vec<u32>,
    pub cap_inh: Caps,
    pub cap_prm: Caps,
    pub cap_eff: Caps,
    pub cap_bnd: Caps,
    pub cap_amb: Caps,
    /// `NoNewPrivs:` set: execve can never grant more privilege.
    pub no_new_privs: bool,
    /// `Seccomp:` 0 none, 1 strict, 2 filter.
    pub seccomp: u8,
    /// `Seccomp_filters:` how many filters are attached (0 on kernels
    /// before 5.9, which do not say).
    pub seccomp_filters: u32,
    /// `Threads:` in the thread group.
    pub threads: u32,
}

/// Why a status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: line {field:?} missing or malformed")]
    Field { path: String, field: &'static str },
}

impl Status {
    /// The status of process `pid`.
    pub fn of(pid: u32) -> Result<Status, StatusError> {
        Self::read(&format!("/proc/{pid}/status"))
    }

    /// The status of thread `tid` of process `pid`.
    pub fn of_thread(pid: u32, tid: u32) -> Result<Status, StatusError> {
        Self::read(&format!("/proc/{pid}/task/{tid}/status"))
    }

    /// The calling thread's status (`/proc/thread-self/status`).
    pub fn current_thread() -> Result<Status, StatusError> {
        Self::read("/proc/thread-self/status")
    }

    fn read(path: &str) -> Result<Status, StatusError> {
        let text =
            std::fs::read_to_string(Path::new(path)).map_err(|source| StatusError::Read {
                path: path.into(),
                source,
            })?;
        Self::parse(&text).map_err(|field| StatusError::Field {
            path: path.into(),
            field,
        })
    }

    /// Parses the text of a status file; the error names the first line
    /// that is missing or malformed.
    pub fn parse(text: &str) -> Result<Status, &'static str> {
        let line = |key: &'static str| -> Result<&str, &'static str> {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .map(str::trim)
                .ok_or(key)
        };
        let ids = |key: &'static str| -> Result<[u32; 4], &'static str> {
            let v: Vec<u32> = line(key)?
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|_| key)?;
            v.try_into().map_err(|_| key)
        };
        let caps = |key: &'static str| -> Result<Caps, &'static str> {
            u64::from_str_radix(line(key)?, 16)
                .map(Caps::from_bits_retain)
                .map_err(|_| key)
        };
        let number = |key: &'static str| -> Result<u32, &'static str> {
            line(key)?.parse().map_err(|_| key)
        };
        Ok(Status {
            name: line("Name")?.to_string(),
            uid: ids("Uid")?,
            gid: ids("Gid")?,
            groups: line("Groups")?
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|_| "Groups")?,
            cap_inh: caps("CapInh")?,
            cap_prm: caps("CapPrm")?,
            cap_eff: caps("CapEff")?,
            cap_bnd: caps("CapBnd")?,
            cap_amb: caps("CapAmb")?,
            no_new_privs: number("NoNewPrivs")? == 1,
            seccomp: number("Seccomp")?.try_into().map_err(|_| "Seccomp")?,
            // Absent before Linux 5.9.
            seccomp_filters: line("Seccomp_filters")
                .map_or(Ok(0), |v| v.parse().map_err(|_| "Seccomp_filters"))?,
            threads: number("Threads")?,
        })
    }

    /// Whether every uid (real, effective, saved, filesystem) is `uid` and
    /// every gid `gid`.
    pub fn runs_as(&self, uid: u32, gid: u32) -> bool {
        self.uid.iter().all(|u| *u == uid) && self.gid.iter().all(|g| *g == gid)
    }

    /// Whether the permitted and effective sets are exactly `caps`, the
    /// bounding set holds no more, and the inheritable and ambient sets are
    /// empty: what [`crate::drop_to`] leaves.
    pub fn holds_exactly(&self, caps: Caps) -> bool {
        self.cap_prm == caps
            && self.cap_eff == caps
            && self.cap_bnd == caps
            && self.cap_inh.is_empty()
            && self.cap_amb.is_empty()
    }
}

impl fmt::Display for Status {
    /// One line for logs and figures: `uid 65534 gid 65534 groups none
    /// eff none prm none inh none bnd none amb none no_new_privs 1 seccomp 2`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let groups = match self.groups.is_empty() {
            true => "none".to_string(),
            false => self
                .groups
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
        };
        write!(
            f,
            "uid {} gid {} groups {groups} eff {} prm {} inh {} bnd {} amb {} no_new_privs {} seccomp {}",
            self.uid[1],
            self.gid[1],
            describe(self.cap_eff),
            describe(self.cap_prm),
            describe(self.cap_inh),
            describe(self.cap_bnd),
            describe(self.cap_amb),
            u8::from(self.no_new_privs),
            self.seccomp,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `hubfs mount s3` on f238bfb, read after a request (issue 19).
    const ROOT: &str = "Name:\thubfs\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\n\
        Pid:\t4242\nPPid:\t1\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nFDSize:\t64\nGroups:\t \n\
        Threads:\t11\nCapInh:\t0000000000000000\nCapPrm:\t000001fffeffffff\n\
        CapEff:\t000001fffeffffff\nCapBnd:\t000001fffeffffff\nCapAmb:\t0000000000000000\n\
        NoNewPrivs:\t0\nSeccomp:\t0\nSeccomp_filters:\t0\n";

    #[test]
    fn a_root_server_of_the_old_main_reads_as_such() {
        let s = Status::parse(ROOT).unwrap();
        assert_eq!(s.name, "hubfs");
        assert!(s.runs_as(0, 0));
        assert!(s.groups.is_empty());
        assert_eq!(s.cap_eff.bits(), 0x1fffeffffff);
        assert!(s.cap_eff.contains(Caps::SYS_ADMIN));
        assert!(!s.cap_eff.contains(Caps::SYS_RESOURCE));
        assert!(!s.no_new_privs);
        assert_eq!((s.seccomp, s.seccomp_filters, s.threads), (0, 0, 11));
        assert!(!s.holds_exactly(Caps::empty()));
    }

    #[test]
    fn a_dropped_server_reads_as_such() {
        let text = ROOT
            .replace("Uid:\t0\t0\t0\t0", "Uid:\t65534\t65534\t65534\t65534")
            .replace("Gid:\t0\t0\t0\t0", "Gid:\t65534\t65534\t65534\t65534")
            .replace("Groups:\t ", "Groups:\t65534 ")
            .replace("000001fffeffffff", "0000000000000000")
            .replace("NoNewPrivs:\t0", "NoNewPrivs:\t1")
            .replace("Seccomp:\t0", "Seccomp:\t2")
            .replace("Seccomp_filters:\t0", "Seccomp_filters:\t1");
        let s = Status::parse(&text).unwrap();
        assert!(s.runs_as(65534, 65534));
        assert_eq!(s.groups, [65534]);
        assert!(s.holds_exactly(Caps::empty()));
        assert!(s.no_new_privs);
        assert_eq!((s.seccomp, s.seccomp_filters), (2, 1));
        assert_eq!(
            s.to_string(),
            "uid 65534 gid 65534 groups 65534 eff none prm none inh none bnd none amb none no_new_privs 1 seccomp 2"
        );
    }

    #[test]
    fn a_cut_or_garbled_status_names_its_line() {
        assert_eq!(
            Status::parse(&ROOT[..ROOT.find("CapAmb").unwrap()]),
            Err("CapAmb")
        );
        assert_eq!(
            Status::parse(&ROOT.replace("Uid:\t0\t0\t0\t0", "Uid:\t0\t0")),
            Err("Uid")
        );
        assert_eq!(
            Status::parse(&ROOT.replace("CapEff:\t000001fffeffffff", "CapEff:\tzz")),
            Err("CapEff")
        );
        // Kernels before 5.9 have no Seccomp_filters line.
        let old = ROOT.replace("Seccomp_filters:\t0\n", "");
        assert_eq!(Status::parse(&old).unwrap().seccomp_filters, 0);
    }

    #[test]
    fn this_thread_reads_back() {
        let me = Status::current_thread().unwrap();
        let pid = std::process::id();
        let whole = Status::of(pid).unwrap();
        assert_eq!(me.uid, whole.uid);
        assert!(whole.threads >= 1);
        assert!(Status::of(u32::MAX).is_err());
    }
}
