//! One mounted home: the FUSE session, the mount-time walk in the background
//! and the reporter, started and stopped together.
//!
//! The mount answers at once; the walk that gives the accounting its
//! starting figure runs beside it (bounded by a timeout) and is added in
//! when it ends, so a large home on a slow share never delays a notebook.
//!
//! A mount with a control socket can be taken over by a new server process
//! (an upgrade): see [`take_over`] and `home::handoff`.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use fuser::{
    BackgroundSession, BackingId, Config, INodeNo, MountOption, Notifier, Session, SessionACL,
    SessionPauser, Version,
};
use hubfs_walker::{WalkOptions, Walker};
use parking_lot::Mutex;

use super::adapter::HomeFuse;
use super::confine::{Confinement, Unmounter};
use super::error::HomeError;
use super::fs::HomeFs;
use super::handoff::HomeState;
use super::iomode::IoModes;
use super::sink::{ReportKind, Reporter, UsageReport, UsageSink};
use super::usage::{Limits, UsageCounters};
use crate::handoff::{self as wire, HandoffError};

/// How often growth by adopted passthrough writers is charged.
const SETTLE_EVERY: Duration = Duration::from_millis(500);

/// Everything needed to mount one home.
#[derive(Debug, Clone)]
pub struct HomeOptions {
    /// The user's directory on the share.
    pub source: PathBuf,
    pub mountpoint: PathBuf,
    /// The user key (hub user name), as reported to the controller.
    pub user: String,
    pub limits: Limits,
    /// How often accumulated changes are reported.
    pub report_interval: Duration,
    /// Bound of the mount-time walk.
    pub walk_timeout: Duration,
    /// Threads serving FUSE requests.
    pub fuse_threads: usize,
    /// Let the kernel serve read-only opens from the backing file (FUSE
    /// passthrough, Linux ≥ 6.9; falls back by itself where unavailable).
    pub passthrough: bool,
    /// Mount options for the kernel (`ro`, `noatime`...; see
    /// [`mount_option`]). The mount is always `nosuid,nodev`.
    pub mount_options: Vec<String>,
    /// Listen here for a server that takes this mount over (an upgrade).
    pub control: Option<PathBuf>,
}

/// The usual mount options a home takes (CSI read-only publishes, an
/// admin's `mountOptions`, fstests' cycle mounts), as the kernel flag they
/// set; `relatime` and `rw`, `atime`, `diratime`, `exec`, `async` are the
/// defaults and set nothing. The atime family reaches the kernel and
/// mountinfo; access times themselves are the backing filesystem's (the
/// kernel updates none of a FUSE inode's: the daemon's reads, and the
/// passthrough reads of the backing file, update them as the share's own
/// mount options say). `suid` and `dev` are refused: a home never honours
/// set-ID programs or devices.
pub fn mount_option(s: &str) -> Result<Option<MountOption>, String> {
    Ok(Some(match s {
        "ro" => MountOption::RO,
        "noatime" => MountOption::NoAtime,
        "nodiratime" => MountOption::NoDirAtime,
        "strictatime" => MountOption::StrictAtime,
        "lazytime" => MountOption::LazyTime,
        "noexec" => MountOption::NoExec,
        "nosuid" => MountOption::NoSuid,
        "nodev" => MountOption::NoDev,
        "sync" => MountOption::Sync,
        "dirsync" => MountOption::DirSync,
        "rw" | "relatime" | "atime" | "diratime" | "exec" | "async" | "defaults" => {
            return Ok(None)
        }
        "suid" | "dev" => return Err(format!("mount option {s:?}: a home is always nosuid,nodev")),
        _ => {
            return Err(format!(
                "unknown mount option {s:?} (known: ro, rw, noatime, relatime, atime, strictatime, lazytime, nodiratime, diratime, noexec, exec, nosuid, nodev, sync, async, dirsync)"
            ))
        }
    }))
}

impl HomeOptions {
    pub fn new(source: PathBuf, mountpoint: PathBuf, user: &str) -> Self {
        HomeOptions {
            source,
            mountpoint,
            user: user.to_string(),
            limits: Limits::default(),
            report_interval: Duration::from_secs(5),
            walk_timeout: Duration::from_secs(3600),
            fuse_threads: 4,
            passthrough: true,
            mount_options: Vec::new(),
            control: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot open the home directory {path}: {source}")]
    Source { path: PathBuf, source: HomeError },
    #[error("{0}")]
    Option(String),
    #[error("cannot mount at {path}: {source}")]
    Mount {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {path}: {source}")]
    Control {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot take over: {0}")]
    Takeover(#[from] HandoffError),
    #[error("{0}")]
    Confine(String),
}

/// A mounted home; unmount with [`HomeMount::unmount`] (dropping it unmounts too).
pub struct HomeMount {
    session: Option<BackgroundSession>,
    fs: Arc<HomeFs>,
    reporter: Option<Reporter>,
    walk: Option<JoinHandle<()>>,
    settle: Option<JoinHandle<()>>,
    cancel: Arc<AtomicBool>,
    mountpoint: PathBuf,
    /// Who ends the mount (see `confine`).
    unmounter: Unmounter,
    handover: Arc<Handover>,
}

/// What a takeover of this mount needs, shared with the control thread.
struct Handover {
    fs: Arc<HomeFs>,
    io: Arc<IoModes<BackingId>>,
    passthrough: Arc<AtomicBool>,
    pauser: SessionPauser,
    proto: (u32, u32),
    /// A duplicate of the session's `/dev/fuse` descriptor.
    dev: OwnedFd,
    /// Set while the loops are parked for a handover (the settle thread
    /// charges nothing then) and for good once handed over.
    paused: AtomicBool,
    /// Held by the settle thread while it charges.
    settling: Mutex<()>,
    done: AtomicBool,
}

/// The kernel-side configuration of a home mount.
fn fuse_config(opts: &HomeOptions) -> Result<Config, MountError> {
    let mut extra = Vec::new();
    for o in &opts.mount_options {
        if let Some(o) = mount_option(o).map_err(MountError::Option)? {
            if !extra.contains(&o) && o != MountOption::NoDev && o != MountOption::NoSuid {
                extra.push(o);
            }
        }
    }
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!(
            "hubfs-home:{}",
            opts.user.replace([',', ' ', '\\'], "_")
        )),
        MountOption::Subtype("hubfs-home".into()),
        // No `default_permissions`: each request is served with its
        // caller's credentials (see `identity`), so the backing filesystem
        // judges it, and the kernel need not refresh a directory's
        // attributes after every change in it to judge the next one.
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    config.mount_options.extend(extra);
    // The daemon is root and the notebook is not: others must get in; each
    // request is served as its caller, which keeps them honest.
    config.acl = SessionACL::All;
    config.n_threads = Some(opts.fuse_threads.max(1));
    config.clone_fd = true;
    Ok(config)
}

fn open_fs(opts: &HomeOptions) -> Result<Arc<HomeFs>, MountError> {
    let usage = Arc::new(UsageCounters::new(opts.limits));
    let fs = HomeFs::new(&opts.source, usage).map_err(|source| MountError::Source {
        path: opts.source.clone(),
        source,
    })?;
    Ok(Arc::new(fs))
}

/// Mounts a home in this process, which keeps its privilege (tests, and
/// servers not started as root). `sink` receives usage reports (None:
/// account and enforce locally only).
pub fn mount(
    opts: &HomeOptions,
    sink: Option<Arc<dyn UsageSink>>,
) -> Result<HomeMount, MountError> {
    mount_as(opts, sink, None)
}

/// Mounts a home as root, then drops to `confine.privileges` before the
/// first request (see [`super::confine`]): `hubfs mount home`.
pub fn mount_confined(
    opts: &HomeOptions,
    sink: Option<Arc<dyn UsageSink>>,
    confine: Confinement,
) -> Result<HomeMount, MountError> {
    mount_as(opts, sink, Some(confine))
}

fn mount_as(
    opts: &HomeOptions,
    sink: Option<Arc<dyn UsageSink>>,
    confine: Option<Confinement>,
) -> Result<HomeMount, MountError> {
    let config = fuse_config(opts)?;
    let fs = open_fs(opts)?;
    let control = opts.control.as_deref().and_then(wire::listen_or_warn);
    // Changes made from the first request on must be known to the walk.
    fs.begin_walk();
    let fuse = HomeFuse::new(fs.clone(), opts.passthrough);
    let (io, passthrough) = fuse.shared();
    let mount_err = |source| MountError::Mount {
        path: opts.mountpoint.clone(),
        source,
    };
    let (session, unmounter) = match confine {
        None => (
            Session::new(fuse, &opts.mountpoint, &config).map_err(mount_err)?,
            Unmounter::Session,
        ),
        Some(c) => {
            // Resolved now: once mounted, a stat of the path would wait
            // for the INIT this process answers only after its drop.
            let mp = std::fs::canonicalize(&opts.mountpoint).map_err(mount_err)?;
            let dev =
                fuser::mount_device(&mp, &config.mount_options, config.acl).map_err(mount_err)?;
            let detach = || {
                let _ = nix::mount::umount2(&mp, nix::mount::MntFlags::MNT_DETACH);
            };
            let mut unmounter = Unmounter::start(c.guardian, &mp, false).map_err(|e| {
                detach();
                MountError::Confine(format!("unmount guardian: {e}"))
            })?;
            if let Err(e) = hubfs_sandbox::drop_to(&c.privileges) {
                if !unmounter.unmount_by_guardian() {
                    detach();
                }
                return Err(MountError::Confine(format!(
                    "cannot drop to {}: {e}",
                    c.privileges
                )));
            }
            tracing::info!(privileges = %c.privileges, "dropped privilege");
            let acl = config.acl;
            match Session::from_fd(fuse, dev, acl, config) {
                Ok(s) => (s, unmounter),
                Err(e) => {
                    unmounter.unmount_by_guardian();
                    return Err(mount_err(e));
                }
            }
        }
    };
    tell_the_kernel(&fs, session.notifier());
    let handover = Handover::new(&fs, io, passthrough, &session).map_err(mount_err)?;
    let session = session.spawn().map_err(mount_err)?;
    let serving = Serving {
        session,
        handover,
        control,
        resumed: false,
        unmounter,
    };
    Ok(start(opts, sink, fs, serving))
}

/// Takes over the mount a running server serves (it listens on `from`,
/// its `--control` socket) with the same FUSE connection: the kernel, and
/// every process using the mount, sees no change but a pause. `opts` must
/// name the same source and mountpoint; limits and reporting come from them.
/// The old server exits without unmounting once this one serves.
pub fn take_over(
    opts: &HomeOptions,
    sink: Option<Arc<dyn UsageSink>>,
    from: &Path,
) -> Result<HomeMount, MountError> {
    take_over_as(opts, sink, from, None)
}

/// As [`take_over`], started as root, dropping to `confine.privileges`
/// before it reads anything the old server sends (see [`super::confine`]).
pub fn take_over_confined(
    opts: &HomeOptions,
    sink: Option<Arc<dyn UsageSink>>,
    from: &Path,
    confine: Confinement,
) -> Result<HomeMount, MountError> {
    take_over_as(opts, sink, from, Some(confine))
}

fn take_over_as(
    opts: &HomeOptions,
    sink: Option<Arc<dyn UsageSink>>,
    from: &Path,
    confine: Option<Confinement>,
) -> Result<HomeMount, MountError> {
    let config = fuse_config(opts)?;
    let fs = open_fs(opts)?;
    // The old server's socket is root's: connected before the drop, read
    // after it, so an old server's bytes never reach a root process.
    let s = UnixStream::connect(from).map_err(|source| MountError::Control {
        path: from.to_path_buf(),
        source,
    })?;
    let mut unmounter = match confine {
        None => Unmounter::Resumed,
        Some(c) => {
            let mut u = Unmounter::start(c.guardian, &opts.mountpoint, true)
                .map_err(|e| MountError::Confine(format!("unmount guardian: {e}")))?;
            if let Err(e) = hubfs_sandbox::drop_to(&c.privileges) {
                u.leave();
                return Err(MountError::Confine(format!(
                    "cannot drop to {}: {e}",
                    c.privileges
                )));
            }
            tracing::info!(privileges = %c.privileges, "dropped privilege");
            u
        }
    };
    let mut package = wire::Package::request(s, "home").inspect_err(|_| unmounter.leave())?;
    let state = HomeState::decode(&package.state).inspect_err(|_| unmounter.leave())?;
    let control = package
        .listener(state.control)
        .or_else(|| opts.control.as_deref().and_then(wire::listen_or_warn));
    fs.adopt(&state, &mut package.fds)
        .inspect_err(|_| unmounter.leave())?;
    let dev = package.dev;
    let fuse = HomeFuse::new(fs.clone(), state.passthrough);
    let (io, passthrough) = fuse.shared();
    let mount_err = |source| MountError::Mount {
        path: opts.mountpoint.clone(),
        source,
    };
    let version = Version(state.proto.0, state.proto.1);
    let session = Session::resume(fuse, dev, config, version).map_err(|e| {
        unmounter.leave();
        mount_err(e)
    })?;
    tell_the_kernel(&fs, session.notifier());
    let modes = super::iomode::IoExport {
        handles: state.io_handles.clone(),
        backings: state.io_backings.clone(),
        direct: state.io_direct.clone(),
    };
    io.import(&modes, |id| session.adopt_backing(id));
    if let Err(e) = package.pending.ready() {
        // The old server serves on: the backing ids are its, not ours to
        // close (dropping them would).
        std::mem::forget(session);
        std::mem::forget(io);
        unmounter.leave();
        return Err(e.into());
    }
    unmounter.own();
    let handover = Handover::new(&fs, io, passthrough, &session).map_err(mount_err)?;
    let session = session.spawn().map_err(mount_err)?;
    tracing::info!(user = %opts.user, inodes = state.nodes.len(), open_files = state.files.len(), bytes = state.bytes, "took the mount over");
    let serving = Serving {
        session,
        handover,
        control,
        resumed: true,
        unmounter,
    };
    Ok(start(opts, sink, fs, serving))
}

/// Gives the filesystem the session's notifier, for what changes under the
/// kernel's caches without a reply to say so (set-ID bits a write cleared).
fn tell_the_kernel(fs: &HomeFs, n: Notifier) {
    fs.on_attr_changed(Box::new(move |ino| {
        if let Err(e) = n.inval_inode(INodeNo(ino), -1, 0) {
            tracing::debug!(error = %e, ino, "cannot invalidate cached attributes");
        }
    }));
}

/// A session serving, and what comes with it.
struct Serving {
    session: BackgroundSession,
    handover: Arc<Handover>,
    control: Option<UnixListener>,
    /// Taken over from another server (its usage came with it).
    resumed: bool,
    unmounter: Unmounter,
}

/// Starts what runs beside a serving session: the reporter, the mount-time
/// walk (not for a mount taken over: its usage came with it), the settle
/// thread and the control socket.
fn start(
    opts: &HomeOptions,
    sink: Option<Arc<dyn UsageSink>>,
    fs: Arc<HomeFs>,
    serving: Serving,
) -> HomeMount {
    let Serving {
        session,
        handover,
        control,
        resumed,
        unmounter,
    } = serving;
    let usage = fs.usage().clone();
    let reporter =
        sink.map(|s| Reporter::start(usage.clone(), s, &opts.user, opts.report_interval));
    let cancel = Arc::new(AtomicBool::new(false));
    let walk = (!resumed).then(|| {
        let (fs, cancel) = (fs.clone(), cancel.clone());
        let (source, user, timeout) = (opts.source.clone(), opts.user.clone(), opts.walk_timeout);
        let report = reporter.as_ref().map(|r| r.absolute_sender());
        std::thread::Builder::new()
            .name("hubfs-walk".into())
            .spawn(move || {
                let walker = Walker::new(WalkOptions {
                    timeout: Some(timeout),
                    ..WalkOptions::default()
                });
                match fs.walk_baseline(&source, &walker, &cancel) {
                    Ok((s, base)) => {
                        let now = fs.usage().snapshot();
                        tracing::info!(user = %user, walked_bytes = s.usage_bytes(), walked_inodes = s.inodes(), bytes = now.bytes, inodes = now.inodes, timed_out = s.timed_out, seconds = s.elapsed.as_secs_f64(), "mount-time walk done");
                        if let Some(send) = report {
                            send(UsageReport {
                                user: user.clone(),
                                kind: ReportKind::Absolute,
                                bytes: base.0 as i64,
                                inodes: base.1 as i64,
                                measured_at: SystemTime::now(),
                                timed_out: s.timed_out,
                                walk_seconds: s.elapsed.as_secs_f64(),
                                sequence: 0,
                            });
                        }
                    }
                    Err(e) => tracing::warn!(user = %user, error = %e, "mount-time walk failed"),
                }
            })
            .ok()
    });
    let walk = match walk {
        Some(None) => {
            tracing::warn!(user = %opts.user, "cannot start the mount-time walk; usage counts changes only");
            fs.end_walk(None);
            None
        }
        w => w.flatten(),
    };
    // Passthrough writers adopted from an older server grow files without
    // us; charge them as they go. This server makes none (see `iomode`), so
    // only a takeover may start the thread.
    let settle = fs
        .has_unmediated()
        .then(|| {
            let (h, cancel) = (handover.clone(), cancel.clone());
            std::thread::Builder::new()
                .name("hubfs-settle".into())
                .spawn(move || {
                    while !cancel.load(Ordering::Relaxed) {
                        std::thread::sleep(SETTLE_EVERY);
                        let _g = h.settling.lock();
                        if !h.paused.load(Ordering::Acquire) {
                            h.fs.settle_unmediated();
                        }
                    }
                })
                .ok()
        })
        .flatten();
    if let Some(l) = control {
        let h = handover.clone();
        wire::serve_control(l, move |s, control| h.hand_over(s, control));
    }
    HomeMount {
        session: Some(session),
        fs,
        reporter,
        walk,
        settle,
        cancel,
        mountpoint: opts.mountpoint.clone(),
        unmounter,
        handover,
    }
}

impl Handover {
    /// What a handover of `session` needs, before it runs.
    fn new(
        fs: &Arc<HomeFs>,
        io: Arc<IoModes<BackingId>>,
        passthrough: Arc<AtomicBool>,
        session: &Session<HomeFuse>,
    ) -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Handover {
            fs: fs.clone(),
            io,
            passthrough,
            pauser: session.pauser(),
            proto: session.proto_version().map_or((7, 31), |v| (v.0, v.1)),
            dev: session.as_fd().try_clone_to_owned()?,
            paused: AtomicBool::new(false),
            settling: Mutex::new(()),
            done: AtomicBool::new(false),
        }))
    }

    /// One takeover: park the loops, send everything, wait for the new
    /// server; on any failure before it is ready, serve on.
    fn hand_over(&self, mut s: UnixStream, control: BorrowedFd<'_>) -> Result<(), HandoffError> {
        let walking = || {
            self.fs
                .walk_running()
                .then(|| "the mount-time walk is still running; try again when it ends".to_string())
        };
        wire::serve_one(&mut s, "home", &self.pauser, walking, |s| {
            self.paused.store(true, Ordering::Release);
            // A settle under way finishes before the figures are taken.
            drop(self.settling.lock());
            let e = self.fs.export(
                &self.io,
                BackingId::raw_id,
                self.proto,
                self.passthrough.load(Ordering::Relaxed),
                Some(1),
                2,
            );
            let mut fds = vec![self.dev.as_fd(), control];
            fds.extend(e.fds());
            let r = wire::hand_over(s, &e.state.encode(), &fds);
            // Serving on (the loops resume after this): charge again.
            self.paused.store(r.is_ok(), Ordering::Release);
            r
        })?;
        self.done.store(true, Ordering::Release);
        Ok(())
    }
}

impl HomeMount {
    pub fn usage(&self) -> &Arc<UsageCounters> {
        self.fs.usage()
    }

    /// Read requests the daemon served (passthrough reads are not among them).
    pub fn daemon_reads(&self) -> u64 {
        self.fs.daemon_reads()
    }

    /// Descriptors of inodes open now, and their bound (see `inodes`).
    pub fn inode_descriptors(&self) -> (usize, usize) {
        self.fs.inode_descriptors()
    }

    /// Files the daemon holds open; see [`HomeFs::open_files`].
    pub fn open_files(&self) -> usize {
        self.fs.open_files()
    }

    /// True once a new server took this mount over: end the process with
    /// [`HomeMount::leave`], never by unmounting.
    pub fn handed_over(&self) -> bool {
        self.handover.done.load(Ordering::Acquire)
    }

    /// After a takeover: sends the last usage report and lets go of the
    /// connection without unmounting (the new server serves it).
    pub fn leave(mut self) {
        // Dropping the session would unmount and close the backing ids;
        // dropping `self` then stops the threads and sends the last report.
        std::mem::forget(self.session.take());
        self.unmounter.leave();
    }

    /// True once the kernel has dropped the mount (e.g. `umount` from outside).
    pub fn finished(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.guard.is_finished())
    }

    /// Waits for the mount-time walk (tests and tools that need the figure).
    pub fn wait_baseline(&mut self) {
        if let Some(w) = self.walk.take() {
            let _ = w.join();
        }
    }

    /// Unmounts, stops the walk and sends the last report.
    pub fn unmount(mut self) -> std::io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> std::io::Result<()> {
        self.cancel.store(true, Ordering::Relaxed);
        let r = match (self.session.take(), &mut self.unmounter) {
            // Unmounted from outside: the path may hold another mount now.
            (Some(s), u) if s.guard.is_finished() => {
                crate::unmounted::forget_session(s, Duration::from_secs(5));
                u.leave();
                Ok(())
            }
            // Confined: the guardian unmounts (lazily if files are still
            // open); without one, whoever started this server (the
            // mounter) detaches the mount once this process is gone.
            (Some(s), u @ Unmounter::Guardian(_)) => {
                let wait = match u.unmount_by_guardian() {
                    true => Duration::from_secs(5),
                    false => Duration::ZERO,
                };
                crate::unmounted::forget_session(s, wait);
                Ok(())
            }
            // Taken over: the mount is ours to end.
            (Some(s), Unmounter::Resumed) => {
                let r = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::empty())
                    .map_err(std::io::Error::from);
                if r.is_ok() {
                    let _ = s.join();
                } else {
                    let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
                    crate::unmounted::forget_session(s, Duration::from_secs(5));
                }
                r
            }
            (Some(s), Unmounter::Session) => s.umount_and_join().inspect_err(|_| {
                // Busy or already gone: detach so the session can end.
                let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
            }),
            (None, _) => Ok(()),
        };
        if let Some(w) = self.walk.take() {
            let _ = w.join();
        }
        if let Some(t) = self.settle.take() {
            let _ = t.join();
        }
        if !self.handed_over() {
            self.fs.settle_unmediated();
        }
        if let Some(rep) = self.reporter.take() {
            rep.stop();
        }
        r
    }
}

impl Drop for HomeMount {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usual_mount_options_and_clear_refusals() {
        assert_eq!(mount_option("ro"), Ok(Some(MountOption::RO)));
        assert_eq!(mount_option("noatime"), Ok(Some(MountOption::NoAtime)));
        assert_eq!(mount_option("relatime"), Ok(None), "the kernel default");
        // fstests generic/003 cycle-mounts with nodiratime.
        assert_eq!(
            mount_option("nodiratime"),
            Ok(Some(MountOption::NoDirAtime))
        );
        assert_eq!(
            mount_option("strictatime"),
            Ok(Some(MountOption::StrictAtime))
        );
        assert_eq!(mount_option("lazytime"), Ok(Some(MountOption::LazyTime)));
        assert_eq!(mount_option("diratime"), Ok(None));
        assert!(mount_option("suid").unwrap_err().contains("nosuid"));
        assert!(mount_option("bogus").unwrap_err().contains("known: ro"));
        assert!(mount_option("ro,noatime").is_err(), "one option at a time");
    }
}
