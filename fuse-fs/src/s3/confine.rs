//! What a bucket server does as root before it drops, and nothing more.
//!
//! `hubfs mount s3` is started as root (by the mounter, or by hand) because
//! mounting needs `CAP_SYS_ADMIN`; it keeps root only for the steps below,
//! then drops to its `--run-as` uid with no capability
//! ([`super::session::run`], [`hubfs_sandbox::drop_to`]):
//!
//! * connect to the old server's control socket (root-only, 0600) for a
//!   takeover; the request and the state it answers are read after the
//!   drop, so an old server's bytes never reach a root process;
//! * bind the new control socket (root-owned, 0600: only root can take the
//!   mount over);
//! * hand the data cache directory to the uid it becomes
//!   ([`hubfs_sandbox::tree::own_tree`]);
//! * open the metrics file (rewritten in place later: a dropped server
//!   cannot rename in the root-owned server directory) and bind the metrics
//!   port if it is free;
//! * mount: `/dev/fuse` and mount(2) (`fuser::mount_device`); the INIT
//!   handshake waits for the dropped server;
//! * open the mount's readahead knob in sysfs (root-only; written once INIT
//!   has set the kernel's own value).
//!
//! [`allowed_syscalls`] is its seccomp allow-list, installed last by the drop.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use super::session::MountOptions;

/// What the server holds from its privileged start.
pub(super) struct Prepared {
    /// The new mount's `/dev/fuse` (none when taking over).
    pub dev: Option<OwnedFd>,
    /// Connected to the old server's control socket (a takeover).
    pub old: Option<UnixStream>,
    /// The new control socket (a takeover brings the old one's instead).
    pub control: Option<UnixListener>,
    pub metrics_file: Option<File>,
    /// The metrics port, if it was free.
    pub metrics_listener: Option<std::net::TcpListener>,
    pub read_ahead: Option<ReadAhead>,
}

impl Prepared {
    /// Undoes the mount when the server cannot go on (still root).
    pub fn abandon(self, mountpoint: &Path) {
        if self.dev.is_some() {
            let _ = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Does the privileged steps of a start (see the module's doc), mounting
/// last so that a failure before leaves nothing mounted.
pub(super) fn prepare(
    opts: &MountOptions,
    take_over: Option<&Path>,
    config: &fuser::Config,
) -> io::Result<Prepared> {
    let old = take_over.map(UnixStream::connect).transpose()?;
    let control = match old {
        Some(_) => None,
        None => opts
            .control
            .as_deref()
            .and_then(crate::handoff::listen_or_warn),
    };
    if let Some(c) = &opts.cache {
        hubfs_sandbox::tree::own_tree(&c.dir, opts.run_as.0, opts.run_as.1).map_err(|e| {
            io::Error::new(e.kind(), format!("data cache at {}: {e}", c.dir.display()))
        })?;
        reachable(&c.dir, opts.run_as)?;
    }
    let metrics_file = match &opts.metrics_file {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?,
        ),
        None => None,
    };
    let metrics_listener = opts
        .metrics_addr
        .and_then(|a| std::net::TcpListener::bind(a).ok());
    let (dev, read_ahead) = match old {
        Some(_) => (None, None),
        None => {
            // Resolved now: once mounted, a stat of the path would wait for
            // the INIT this process answers only after its drop.
            let mountpoint = std::fs::canonicalize(&opts.mountpoint)?;
            let acl = config.acl;
            let dev = fuser::mount_device(&mountpoint, &config.mount_options, acl)?;
            let knob = (opts.read_ahead_kb > 0)
                .then(|| ReadAhead::open(&mountpoint))
                .and_then(|r| {
                    r.inspect_err(|e| tracing::warn!(error = %e, "no readahead knob"))
                        .ok()
                });
            (Some(dev), knob)
        }
    };
    Ok(Prepared {
        dev,
        old,
        control,
        metrics_file,
        metrics_listener,
        read_ahead,
    })
}

/// Fails, with the reason, unless `uid:gid` may search every directory
/// above `dir` (checked now, as root, rather than as a bare EACCES after
/// the drop).
fn reachable(dir: &Path, (uid, gid): (u32, u32)) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    for a in dir.ancestors().skip(1) {
        let Ok(m) = std::fs::metadata(a) else {
            continue;
        };
        let bit = if m.uid() == uid {
            0o100
        } else if m.gid() == gid {
            0o010
        } else {
            0o001
        };
        if m.mode() & bit == 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "data cache at {}: uid {uid} (--run-as) cannot reach it: {} is mode {:o}, owner {}:{}",
                    dir.display(),
                    a.display(),
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid()
                ),
            ));
        }
    }
    Ok(())
}

/// FUSE tells the kernel 128 KiB of readahead at most, so sequential reads
/// arrive as 128 KiB requests, one round trip each. The mount's backing
/// device info accepts a larger value once INIT has set the kernel's (as
/// gcsfuse recommends); bigger kernel reads then keep the prefetcher's
/// parallel GETs busy. The sysfs file is root's: opened before the drop.
pub(super) struct ReadAhead(File);

impl ReadAhead {
    /// Opens `/sys/class/bdi/<major:minor>/read_ahead_kb` of the mount at
    /// `mountpoint` (found in mountinfo, never by a stat of the mount).
    fn open(mountpoint: &Path) -> io::Result<ReadAhead> {
        let entries = crate::mountinfo::read()?;
        let m = crate::mountinfo::mount_at(&entries, mountpoint)
            .ok_or_else(|| io::Error::other("the new mount is not in mountinfo"))?;
        let path = format!("/sys/class/bdi/{}/read_ahead_kb", m.device);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map(ReadAhead)
            .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))
    }

    /// Sets the readahead (after INIT).
    pub fn set(&self, kb: u32) -> io::Result<()> {
        self.0.write_all_at(kb.to_string().as_bytes(), 0)?;
        tracing::debug!(kb, "kernel readahead raised");
        Ok(())
    }
}

/// Replaces the whole content of `file` with `text` under an exclusive
/// `flock` (readers take a shared one and never see half of it).
pub(super) fn rewrite_locked(file: &File, text: &[u8]) -> io::Result<()> {
    use rustix::fs::{flock, FlockOperation};
    flock(file, FlockOperation::LockExclusive)?;
    let r = file
        .write_all_at(text, 0)
        .and_then(|()| file.set_len(text.len() as u64));
    flock(file, FlockOperation::Unlock)?;
    r
}

/// The system calls a dropped bucket server makes, hot ones first (the
/// filter compares in this order): serving FUSE requests and S3 over
/// tokio, hyper and rustls, its data cache, metrics, control socket and
/// takeover, threads and signals. Found by tracing a server (`strace -f`)
/// through reads, listings, writes, deletes, the metrics file and port, a
/// takeover and a SIGTERM, plus the calls of the same paths on other
/// kernels and library versions (the `*at` forms, `clone`/`clone3`,
/// `poll`/`ppoll`, `statx`/`fstat`). No `utimensat` or `fchmod`: the data
/// cache keeps its order of use in memory and reads the kernel's access
/// times at start ([`super::cache`]), and never sets a file's times or
/// mode. Absent on purpose: `execve`,
/// `ptrace`, `mount`, the set*id calls, `unshare`, `setns`, `bpf`,
/// `keyctl`, module and kexec calls, `process_vm_*`, `open_by_handle_at`.
pub fn allowed_syscalls() -> Vec<libc::c_long> {
    use libc::*;
    let mut v = vec![
        SYS_read,
        SYS_write,
        SYS_writev,
        SYS_readv,
        SYS_futex,
        SYS_epoll_pwait,
        SYS_recvfrom,
        SYS_sendto,
        SYS_recvmsg,
        SYS_sendmsg,
        SYS_pread64,
        SYS_pwrite64,
        SYS_preadv,
        SYS_pwritev,
        SYS_sched_yield,
        SYS_madvise,
        SYS_mmap,
        SYS_munmap,
        SYS_mprotect,
        SYS_mremap,
        SYS_brk,
        SYS_clock_gettime,
        SYS_clock_nanosleep,
        SYS_nanosleep,
        SYS_epoll_ctl,
        SYS_close,
        SYS_openat,
        SYS_statx,
        SYS_newfstatat,
        SYS_fstat,
        SYS_lseek,
        SYS_fcntl,
        SYS_ioctl,
        SYS_getrandom,
        SYS_gettid,
        SYS_getpid,
        SYS_tgkill,
        SYS_rt_sigaction,
        SYS_rt_sigprocmask,
        SYS_rt_sigreturn,
        SYS_sigaltstack,
        SYS_ppoll,
        SYS_socket,
        SYS_connect,
        SYS_accept4,
        SYS_bind,
        SYS_listen,
        SYS_getsockname,
        SYS_getpeername,
        SYS_getsockopt,
        SYS_setsockopt,
        SYS_shutdown,
        SYS_socketpair,
        SYS_getdents64,
        SYS_mkdirat,
        SYS_unlinkat,
        SYS_renameat,
        SYS_renameat2,
        SYS_ftruncate,
        SYS_fsync,
        SYS_fdatasync,
        SYS_flock,
        SYS_readlinkat,
        SYS_faccessat,
        SYS_faccessat2,
        SYS_fstatfs,
        SYS_statfs,
        SYS_clone,
        SYS_clone3,
        SYS_set_robust_list,
        SYS_rseq,
        SYS_exit,
        SYS_exit_group,
        SYS_sched_getaffinity,
        SYS_prctl,
        SYS_eventfd2,
        SYS_epoll_create1,
        SYS_pipe2,
        SYS_dup,
        SYS_dup3,
        SYS_geteuid,
        SYS_getuid,
        SYS_getegid,
        SYS_getgid,
        SYS_uname,
        SYS_sysinfo,
        SYS_prlimit64,
        SYS_restart_syscall,
    ];
    // The older x86-64 forms some libraries still call.
    #[cfg(target_arch = "x86_64")]
    v.extend([
        SYS_epoll_wait,
        SYS_poll,
        SYS_open,
        SYS_stat,
        SYS_lstat,
        SYS_access,
        SYS_readlink,
        SYS_unlink,
        SYS_rename,
        SYS_mkdir,
        SYS_rmdir,
        SYS_pipe,
        SYS_dup2,
        SYS_getrlimit,
    ]);
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_allow_list_has_no_way_out_of_the_sandbox() {
        let f = super::super::session::seccomp_filter();
        assert!(f.len() > 50 && f.len() <= 250);
        for (name, nr) in [
            ("execve", libc::SYS_execve),
            ("execveat", libc::SYS_execveat),
            ("ptrace", libc::SYS_ptrace),
            ("mount", libc::SYS_mount),
            ("umount2", libc::SYS_umount2),
            ("setuid", libc::SYS_setuid),
            ("setresuid", libc::SYS_setresuid),
            ("capset", libc::SYS_capset),
            ("unshare", libc::SYS_unshare),
            ("setns", libc::SYS_setns),
            ("bpf", libc::SYS_bpf),
            ("keyctl", libc::SYS_keyctl),
            ("init_module", libc::SYS_init_module),
            ("process_vm_writev", libc::SYS_process_vm_writev),
            ("open_by_handle_at", libc::SYS_open_by_handle_at),
            ("kill", libc::SYS_kill),
        ] {
            assert!(!f.allows(nr), "{name} is allowed");
        }
        for nr in [
            libc::SYS_read,
            libc::SYS_writev,
            libc::SYS_futex,
            libc::SYS_clone3,
        ] {
            assert!(f.allows(nr));
        }
    }
}
