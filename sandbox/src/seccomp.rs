//! A seccomp allow-list: the system calls a dropped server may make.
//!
//! As virtiofsd does, a server that has dropped installs a classic BPF
//! filter that lets through the system calls its code makes and answers
//! every other one with [`Deny`] (an errno, or the death of the process).
//! The filter is built here from a list of syscall numbers (`libc::SYS_*`
//! of the target, so the list compiles per architecture) as a linear run
//! of comparisons, first listed first compared: put the hot calls (read,
//! write, futex, epoll) first. It checks the architecture, so an x32 or
//! 32-bit call into the same process is never mistaken for a listed one.
//!
//! A filter belongs to the thread that installs it and to the threads it
//! starts afterwards; [`crate::drop_to`] installs it last, with one thread,
//! after `no_new_privs`.

use crate::privileges::SandboxError;

/// What a call outside the list gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deny {
    /// Fails with this errno (the caller sees e.g. `EPERM`).
    Errno(i32),
    /// The whole process is killed (`SIGSYS`), as virtiofsd does by default.
    KillProcess,
    /// Allowed, and logged by the kernel's audit log: for finding out what
    /// a list misses, never for production.
    Log,
}

/// An allow-list ready to install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    allowed: Vec<u32>,
    deny: Deny,
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;

// Classic BPF opcodes.
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const RET_K: u16 = 0x06;
/// Offsets in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

impl Filter {
    /// Allows `syscalls` (`libc::SYS_*`; duplicates are ignored, the first
    /// place counts) and answers the rest with `deny`. At most 250 calls
    /// (one BPF jump reaches that far).
    pub fn allow(syscalls: &[libc::c_long], deny: Deny) -> Filter {
        let mut allowed: Vec<u32> = Vec::with_capacity(syscalls.len());
        for s in syscalls {
            let s = *s as u32;
            if !allowed.contains(&s) {
                allowed.push(s);
            }
        }
        assert!(allowed.len() <= 250, "a seccomp list of at most 250 calls");
        Filter { allowed, deny }
    }

    /// How many calls are allowed.
    pub fn len(&self) -> usize {
        self.allowed.len()
    }

    /// Whether nothing is allowed.
    pub fn is_empty(&self) -> bool {
        self.allowed.is_empty()
    }

    /// Whether `syscall` is on the list.
    pub fn allows(&self, syscall: libc::c_long) -> bool {
        self.allowed.contains(&(syscall as u32))
    }

    /// The BPF program: the architecture check, one comparison per
    /// allowed call, the deny and the allow returns.
    fn program(&self) -> Vec<libc::sock_filter> {
        let n = self.allowed.len();
        let deny = match self.deny {
            Deny::Errno(e) => RET_ERRNO | (e as u32 & 0xffff),
            Deny::KillProcess => RET_KILL_PROCESS,
            Deny::Log => RET_LOG,
        };
        let mut p = vec![
            stmt(LD_W_ABS, ARCH),
            libc::sock_filter {
                code: JEQ_K,
                jt: 1,
                jf: 0,
                k: AUDIT_ARCH,
            },
            stmt(RET_K, RET_KILL_PROCESS),
            stmt(LD_W_ABS, NR),
        ];
        for (i, nr) in self.allowed.iter().enumerate() {
            p.push(libc::sock_filter {
                code: JEQ_K,
                // To the allow return after the last comparison and the deny.
                jt: (n - i) as u8,
                jf: 0,
                k: *nr,
            });
        }
        p.push(stmt(RET_K, deny));
        p.push(stmt(RET_K, RET_ALLOW));
        p
    }

    /// Installs the filter on the calling thread (and the threads it starts
    /// later). Needs `no_new_privs` (or `CAP_SYS_ADMIN`).
    pub fn install(&self) -> Result<(), SandboxError> {
        let mut program = self.program();
        let prog = libc::sock_fprog {
            len: program.len() as u16,
            filter: program.as_mut_ptr(),
        };
        // SAFETY: seccomp(2) reads `prog` and the `len` instructions it
        // points to, which live until the call returns; the kernel copies
        // them.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_SET_MODE_FILTER,
                0 as libc::c_uint,
                &prog as *const libc::sock_fprog,
            )
        };
        if r != 0 {
            return Err(SandboxError::Denied {
                what: "install the seccomp filter".into(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_checks_the_arch_then_each_call_once() {
        let f = Filter::allow(
            &[libc::SYS_read, libc::SYS_write, libc::SYS_read],
            Deny::Errno(libc::EPERM),
        );
        assert_eq!(f.len(), 2, "duplicates are dropped");
        assert!(f.allows(libc::SYS_write) && !f.allows(libc::SYS_ptrace));
        let p = f.program();
        assert_eq!(p.len(), 4 + 2 + 2);
        assert_eq!((p[0].code, p[0].k), (LD_W_ABS, ARCH));
        assert_eq!((p[1].k, p[1].jt, p[1].jf), (AUDIT_ARCH, 1, 0));
        assert_eq!(p[2].k, RET_KILL_PROCESS, "another architecture dies");
        // read's comparison jumps over write's and the deny to the allow.
        assert_eq!((p[4].k, p[4].jt), (libc::SYS_read as u32, 2));
        assert_eq!((p[5].k, p[5].jt), (libc::SYS_write as u32, 1));
        assert_eq!(p[6].k, RET_ERRNO | libc::EPERM as u32);
        assert_eq!(p[7].k, RET_ALLOW);
        assert_eq!(
            Filter::allow(&[], Deny::KillProcess).program()[4].k,
            RET_KILL_PROCESS
        );
    }
}
