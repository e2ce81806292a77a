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
