//! Running one S3 mount: options, the FUSE session, signals and unmount.
//!
//! [`MountOptions`] is what the `hubfs mount s3` command line parses into and
//! what the CSI node service builds from a volume's attributes. The node
//! service runs each mount as a child process (`hubfs mount s3 --foreground`,
//! see [`MountOptions::command`]), so a crashed FUSE process shows up as
//! ENOTCONN on the mountpoint ([`crate::mountinfo::probe`]) and can be recreated.

use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::cache::{CacheOptions, DiskCache};
use super::confine;
use super::fs::{BucketSource, FsConfig, S3Fs};
use super::fuse::FuseAdapter;
use super::memory::MemoryLimiter;
use super::metrics::{Instrumented, S3Metrics};
use super::prefetch::PrefetchConfig;
use super::s3client::{S3Config, S3Store};
use super::store::ObjectStore;
use super::takeover;

/// Everything a mount needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub sources: Vec<BucketSource>,
    pub mountpoint: PathBuf,
    pub s3: S3Config,
    pub uid: u32,
    pub gid: u32,
    pub dir_mode: u16,
    pub file_mode: u16,
    pub allow_other: bool,
    /// `None`: indefinite (immutable buckets).
    pub metadata_ttl: Option<Duration>,
    pub negative_ttl: Option<Duration>,
    pub prefetch: PrefetchConfig,
    pub allow_writes: bool,
    pub allow_delete: bool,
    pub metrics_addr: Option<SocketAddr>,
    /// Also write the metrics text to this file every few seconds (for the
    /// mounter, which serves the metrics of all its servers on one port).
    pub metrics_file: Option<PathBuf>,
    /// FUSE worker threads reading kernel requests.
    pub fuse_threads: usize,
    /// Kernel readahead of the mount in KiB (0: the kernel's 128 KiB default).
    pub read_ahead_kb: u32,
    /// The local-disk data cache, if any.
    pub cache: Option<CacheOptions>,
    /// Listen here for a server that takes this mount over (an upgrade).
    pub control: Option<PathBuf>,
    /// The uid and gid the server drops to once mounted (with no
    /// capability left and `no_new_privs`).
    pub run_as: (u32, u32),
}

/// Who a bucket server becomes once mounted when not told otherwise: the
/// overflow user and group, `nobody`/`nogroup` on Debian.
pub const RUN_AS: (u32, u32) = (65534, 65534);

impl MountOptions {
    pub fn new(sources: Vec<BucketSource>, mountpoint: impl Into<PathBuf>) -> Self {
        Self {
            sources,
            mountpoint: mountpoint.into(),
            s3: S3Config::default(),
            uid: 0,
            gid: 0,
            dir_mode: 0o755,
            file_mode: 0o644,
            allow_other: false,
            metadata_ttl: Some(Duration::from_secs(60)),
            negative_ttl: Some(Duration::from_secs(60)),
            prefetch: PrefetchConfig::default(),
            allow_writes: false,
            allow_delete: false,
            metrics_addr: None,
            metrics_file: None,
            fuse_threads: 4,
            read_ahead_kb: 4096,
            cache: None,
            control: None,
            run_as: RUN_AS,
        }
    }

    fn fs_config(&self) -> FsConfig {
        let mut cfg = FsConfig::new(self.sources.clone());
        cfg.uid = self.uid;
        cfg.gid = self.gid;
        cfg.dir_mode = self.dir_mode;
        cfg.file_mode = self.file_mode;
        cfg.metadata_ttl = self.metadata_ttl.unwrap_or(Duration::MAX);
        cfg.negative_ttl = self.negative_ttl.unwrap_or(Duration::MAX);
        cfg.prefetch = self.prefetch.clone();
        // The kernel's readahead (0: its own 128 KiB) bounds how far out of
        // order a stream's reads arrive.
        cfg.prefetch.kernel_readahead = (u64::from(self.read_ahead_kb) << 10).max(128 << 10);
        cfg.allow_writes = self.allow_writes;
        cfg.allow_delete = self.allow_delete;
        cfg
    }

    /// The arguments of `hubfs mount s3 --foreground ...` for these options.
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["mount".into(), "s3".into(), "--foreground".into()];
        let mut flag = |k: &str, v: String| {
            a.push(format!("--{k}").into());
            a.push(v.into());
        };
        if let Some(url) = &self.s3.endpoint_url {
            flag("endpoint-url", url.clone());
        }
        if let Some(r) = &self.s3.region {
            flag("region", r.clone());
        }
        flag("uid", self.uid.to_string());
        flag("gid", self.gid.to_string());
        flag("dir-mode", format!("{:o}", self.dir_mode));
        flag("file-mode", format!("{:o}", self.file_mode));
        let ttl = |t: Option<Duration>| match t {
            Some(d) => format!("{}", d.as_secs_f64()),
            None => "indefinite".to_string(),
        };
        flag("metadata-ttl", ttl(self.metadata_ttl));
        flag("negative-metadata-ttl", ttl(self.negative_ttl));
        flag("part-size", self.prefetch.part_size.to_string());
        flag("max-prefetch-window", self.prefetch.max_window.to_string());
        flag("max-memory", self.prefetch.max_memory.to_string());
        flag("max-attempts", self.s3.max_attempts.to_string());
        flag("fuse-threads", self.fuse_threads.to_string());
        flag("read-ahead-kb", self.read_ahead_kb.to_string());
        if let Some(addr) = self.metrics_addr {
            flag("metrics-addr", addr.to_string());
        }
        if let Some(f) = &self.metrics_file {
            flag("metrics-file", f.display().to_string());
        }
        if let Some(c) = &self.cache {
            flag("cache-dir", c.dir.display().to_string());
            flag("cache-size", c.max_bytes.to_string());
        }
        if let Some(c) = &self.control {
            flag("control", c.display().to_string());
        }
        if self.run_as != RUN_AS {
            flag("run-as", format!("{}:{}", self.run_as.0, self.run_as.1));
        }
        for (on, name) in [
            (self.s3.force_path_style, "--force-path-style"),
            (self.s3.anonymous, "--no-sign-request"),
            (self.allow_other, "--allow-other"),
            (self.allow_writes, "--allow-writes"),
            (self.allow_delete, "--allow-delete"),
        ] {
            if on {
                a.push(name.into());
            }
        }
        for s in &self.sources {
            a.push(if s.prefix.is_empty() {
                s.bucket.clone().into()
            } else {
                format!("{}:{}", s.bucket, s.prefix).into()
            });
        }
        a.push(self.mountpoint.clone().into_os_string());
        a
    }

    /// A command that runs this mount in the foreground: `hubfs_binary mount s3 ...`.
    /// Kill it with SIGTERM to unmount.
    pub fn command(&self, hubfs_binary: &Path) -> Command {
        let mut c = Command::new(hubfs_binary);
        c.args(self.args());
        c
    }
}

#[derive(Debug, Error)]
pub enum SessionError {
    #[error("invalid mount: {0}")]
    Invalid(String),
    #[error("cannot reach bucket {bucket}: {source}")]
    Bucket {
        bucket: String,
        #[source]
        source: super::error::ObjectError,
    },
    #[error("FUSE mount at {path} failed: {source}")]
    Mount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("cannot take over: {0}")]
    Takeover(#[from] crate::handoff::HandoffError),
}

pub use crate::mountinfo::{probe, MountState};

/// Whether `path` is a mountpoint according to /proc/self/mountinfo.
fn is_mountpoint(path: &Path) -> bool {
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    crate::mountinfo::read()
        .map(|e| crate::mountinfo::mount_at(&e, &abs).is_some())
        .unwrap_or(false)
}

/// Waits until a mount answers at `path`.
pub fn wait_mounted(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if probe(path) == MountState::Healthy {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Unmounts `path`, lazily if it is busy.
pub fn unmount(path: &Path) -> io::Result<()> {
    use nix::mount::{umount2, MntFlags};
    match umount2(path, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => {
            tracing::warn!(path = %path.display(), "mountpoint busy, unmounting lazily");
            umount2(path, MntFlags::MNT_DETACH).map_err(io::Error::from)
        }
        Err(nix::errno::Errno::EINVAL) if !is_mountpoint(path) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Mounts and serves until SIGTERM/SIGINT or an external unmount.
/// `ready` runs once the mount answers (daemonizing parents wait for it).
/// With `take_over`, adopts the live mount of the server listening there
/// (its `--control` socket) instead of mounting: same FUSE connection,
/// inodes and open files; that server exits without unmounting.
///
/// Started as root, the server does as root only what needs it (see
/// [`super::confine`]): it checks the buckets, mounts (or connects to the
/// old server), binds its control socket, opens its metrics file and the
/// readahead knob, hands its cache directory to `opts.run_as`, starts its
/// unmount guardian (`confine.guardian`; none under the mounter, which
/// unmounts), then drops to `opts.run_as` with no capability and
/// `no_new_privs`, while it still has one thread. Everything after that —
/// the takeover's state from the old server, the INIT handshake, every
/// request — is served unprivileged.
pub fn run(
    opts: MountOptions,
    take_over: Option<&Path>,
    confine: Confinement,
    ready: impl FnOnce(),
) -> Result<(), SessionError> {
    // A mask inherited from whatever started this server (the mounter blocks
    // its stop signals in every thread) would keep them from the runtime's
    // handlers.
    let mut stop = nix::sys::signal::SigSet::empty();
    for s in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
    ] {
        stop.add(s);
    }
    stop.thread_unblock().map_err(io::Error::from)?;
    // Before the drop: a runtime without worker threads, shut down before
    // the drop (which needs one thread). Fail at mount time, with the
    // reason, rather than on the first `ls` (and before a running server is
    // paused for a takeover); the identity is resolved here too, so a root
    // user's own credential files still count.
    let setup = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let metrics = S3Metrics::new();
    let s3 = Instrumented::new(setup.block_on(S3Store::new(&opts.s3)), metrics.clone());
    for s in &opts.sources {
        setup
            .block_on(s3.list_page(&s.bucket, &s.prefix, Some("/"), None, 1))
            .map_err(|e| SessionError::Bucket {
                bucket: s.bucket.clone(),
                source: e,
            })?;
    }
    let mut config = fuse_config(&opts);
    let mount_err = |source| SessionError::Mount {
        path: opts.mountpoint.clone(),
        source,
    };
    let prepared = confine::prepare(&opts, take_over, &config).map_err(mount_err)?;
    let guardian = match confine.guardian {
        Some(cmd) => {
            let started = match take_over {
                // Until the old server lets go, its mount is not ours.
                Some(_) => hubfs_sandbox::Guardian::start_for_takeover(cmd, &opts.mountpoint),
                None => hubfs_sandbox::Guardian::start(cmd, &opts.mountpoint),
            };
            match started {
                Ok(g) => Some(g),
                Err(e) => {
                    prepared.abandon(&opts.mountpoint);
                    return Err(SessionError::Invalid(format!("unmount guardian: {e}")));
                }
            }
        }
        None => None,
    };
    drop(setup);
    if let Err(e) = hubfs_sandbox::drop_to(&confine.privileges) {
        if let Some(g) = guardian {
            let _ = g.unmount();
        }
        return Err(SessionError::Invalid(format!(
            "cannot drop to {}: {e}",
            confine.privileges
        )));
    }
    tracing::info!(privileges = %confine.privileges, "dropped privilege");
    let mut guardian = Guardian(guardian);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name("hubfs-s3")
        .enable_all()
        .build()?;
    let confine::Prepared {
        dev,
        old,
        control,
        metrics_file,
        metrics_listener,
        read_ahead,
    } = prepared;
    // What an earlier server cached is kept: it is indexed (as the user
    // this server runs as, whose directory it is) before a server being
    // taken over is paused.
    let cache = match &opts.cache {
        Some(c) => Some(
            DiskCache::open(c, opts.prefetch.block_size, metrics.clone()).map_err(|e| {
                SessionError::Invalid(format!("data cache at {}: {e}", c.dir.display()))
            })?,
        ),
        None => None,
    };
    // From here on a server being taken over is paused.
    let adopted = old.map(takeover::request).transpose()?;
    let store = Arc::new(s3);
    let limiter =
        MemoryLimiter::with_gauge(opts.prefetch.max_memory, metrics.prefetch_bytes.clone());
    let mut fs = S3Fs::new(store, opts.fs_config(), limiter)
        .map_err(SessionError::Invalid)?
        .with_metrics(metrics.clone())
        .with_data_cache(cache);
    if let Some((_, state)) = &adopted {
        fs.adopt(state)?;
    }
    let fs = Arc::new(fs);
    let adapter = FuseAdapter::new(fs.clone(), rt.handle().clone());
    let in_flight = adapter.in_flight();
    let fsname = fs_name(&opts);
    let resumed = adopted.is_some();
    // The kernel enforces the mount's own access rule (allow_other or
    // not); fuser's second check would compare callers with the uid this
    // process has become.
    config.acl = fuser::SessionACL::All;
    let (session, control) = match (adopted, dev) {
        (Some((mut package, state)), _) => {
            let control = package.listener(state.control).or(control);
            let version = fuser::Version(state.proto.0, state.proto.1);
            let session =
                fuser::Session::resume(adapter, package.dev, config, version).map_err(mount_err)?;
            if let Err(e) = package.pending.ready() {
                // The old server serves on; this one never touched the connection.
                std::mem::forget(session);
                guardian.leave();
                return Err(e.into());
            }
            guardian.own();
            tracing::info!(
                inodes = state.nodes.len(),
                reads = state.reads.len(),
                dirs = state.dirs.len(),
                "took the mount over"
            );
            (session, control)
        }
        (None, Some(dev)) => {
            let acl = config.acl;
            match fuser::Session::from_fd(adapter, dev, acl, config) {
                Ok(s) => (s, control),
                Err(e) => {
                    guardian.unmount();
                    return Err(mount_err(e));
                }
            }
        }
        (None, None) => unreachable!("confine::prepare mounts unless taking over"),
    };
    let handover = Arc::new(takeover::Handover {
        fs,
        in_flight,
        pauser: session.pauser(),
        proto: session.proto_version().map_or((7, 31), |v| (v.0, v.1)),
        dev: session.as_fd().try_clone_to_owned().map_err(mount_err)?,
        done: AtomicBool::new(false),
    });
    let session = session.spawn().map_err(mount_err)?;
    if let Some(l) = control {
        handover.listen_in_background(l);
    }
    tracing::info!(mountpoint = %opts.mountpoint.display(), buckets = fsname, taken_over = resumed, "mounted");
    if let Some(knob) = read_ahead {
        if let Err(e) = knob.set(opts.read_ahead_kb) {
            tracing::warn!(error = %e, "cannot raise the kernel readahead; sequential reads will be slower");
        }
    }
    if let Some(addr) = opts.metrics_addr {
        rt.spawn(serve_metrics(addr, metrics_listener, metrics.clone()));
    }
    if let Some(file) = metrics_file {
        rt.spawn(write_metrics(file, metrics.clone()));
    }
    ready();

    let end = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = term.recv() => return Ok::<End, io::Error>(End::Signalled),
                _ = int.recv() => return Ok(End::Signalled),
                _ = tick.tick() => {
                    if handover.done.load(Ordering::Acquire) {
                        return Ok(End::HandedOver);
                    }
                    if session.guard.is_finished() {
                        return Ok(End::Unmounted);
                    }
                }
            }
        }
    })?;
    let mountpoint = &opts.mountpoint;
    match end {
        End::HandedOver => {
            tracing::info!(mountpoint = %mountpoint.display(), "handed over to a new server; exiting without unmounting");
            // The loops stay parked; the new server serves the connection.
            std::mem::forget(session);
            guardian.leave();
        }
        End::Signalled => {
            tracing::info!(mountpoint = %mountpoint.display(), "signal received, unmounting");
            // The guardian unmounts (lazily if files are still open: they
            // fail once this process exits); under the mounter, the mounter
            // detaches the mount once this process is gone.
            let unmounted = guardian.unmount();
            crate::unmounted::forget_session(
                session,
                if unmounted {
                    Duration::from_secs(5)
                } else {
                    Duration::ZERO
                },
            );
        }
        End::Unmounted => {
            tracing::info!(mountpoint = %mountpoint.display(), "unmounted from outside");
            // The path may hold another mount by now: leave it alone.
            crate::unmounted::forget_session(session, Duration::from_secs(5));
            guardian.leave();
        }
    }
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

/// The bucket server's seccomp allow-list ([`super::confine::allowed_syscalls`]):
/// any other system call fails with EPERM, as under Docker's default profile.
pub fn seccomp_filter() -> hubfs_sandbox::seccomp::Filter {
    hubfs_sandbox::seccomp::Filter::allow(
        &super::confine::allowed_syscalls(),
        hubfs_sandbox::seccomp::Deny::Errno(libc::EPERM),
    )
}

/// Who a server becomes once mounted, and who unmounts its mount then.
#[derive(Debug)]
pub struct Confinement {
    /// What the server keeps (a bucket server: `opts.run_as`, nothing else).
    pub privileges: hubfs_sandbox::Privileges,
    /// The command of its unmount guardian (`hubfs unmount-guard`), or
    /// `None` when whoever started it unmounts (the mounter).
    pub guardian: Option<std::process::Command>,
}

/// The server's guardian, if it has one.
struct Guardian(Option<hubfs_sandbox::Guardian>);

impl Guardian {
    /// Unmounts through the guardian; false without one (or if it failed).
    fn unmount(self) -> bool {
        match self.0.map(hubfs_sandbox::Guardian::unmount) {
            Some(Ok(())) => true,
            // Unmounted from outside meanwhile, or something else mounted
            // there since: not this server's to unmount.
            Some(Err(e)) => {
                tracing::info!(error = %e, "the unmount guardian left the mountpoint alone");
                false
            }
            None => false,
        }
    }

    /// The mount taken over is this server's now.
    fn own(&mut self) {
        if let Some(g) = &mut self.0 {
            if let Err(e) = g.own() {
                tracing::warn!(error = %e, "the unmount guardian is gone");
            }
        }
    }

    fn leave(self) {
        if let Some(g) = self.0 {
            g.leave();
        }
    }
}

/// The mount's source name: `hubfs-s3:<bucket>[,<bucket>...]`'s buckets.
fn fs_name(opts: &MountOptions) -> String {
    opts.sources
        .iter()
        .map(|s| s.bucket.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// fuser's settings of the mount: its name, type and flags.
fn fuse_config(opts: &MountOptions) -> fuser::Config {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(format!("hubfs-s3:{}", fs_name(opts))),
        fuser::MountOption::Subtype("hubfs-s3".into()),
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoAtime,
        fuser::MountOption::DefaultPermissions,
        if opts.allow_writes {
            fuser::MountOption::RW
        } else {
            fuser::MountOption::RO
        },
    ];
    if opts.allow_other {
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(opts.fuse_threads.max(1));
    config
}

/// Why a server stops serving.
enum End {
    Signalled,
    Unmounted,
    HandedOver,
}

/// How often `--metrics-file` is rewritten.
const METRICS_FILE_EVERY: Duration = Duration::from_secs(5);

/// Rewrites the metrics text into `file` (opened before the drop) now and
/// every few seconds, in place under an exclusive `flock`: a dropped server
/// cannot rename in the root-owned directory, and a reader that takes the
/// shared lock (the mounter) never sees half of it.
async fn write_metrics(file: std::fs::File, metrics: Arc<S3Metrics>) {
    let mut tick = tokio::time::interval(METRICS_FILE_EVERY);
    let mut warned = false;
    let file = Arc::new(file);
    loop {
        tick.tick().await;
        let (f, text) = (file.clone(), metrics.encode());
        let written =
            tokio::task::spawn_blocking(move || confine::rewrite_locked(&f, text.as_bytes()))
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e)));
        if let Err(e) = written {
            if !std::mem::replace(&mut warned, true) {
                tracing::warn!(error = %e, "cannot write metrics file");
            }
        }
    }
}

/// A minimal `/metrics` endpoint: every request gets the registry text.
/// `bound` is the listener bound before the drop, if the address was free
/// then (a privileged port needs that).
async fn serve_metrics(
    addr: SocketAddr,
    bound: Option<std::net::TcpListener>,
    metrics: Arc<S3Metrics>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut bound = bound.and_then(|l| {
        l.set_nonblocking(true).ok()?;
        tokio::net::TcpListener::from_std(l).ok()
    });
    // A server taking a mount over binds once the old one has let go.
    let mut tries = 0;
    let listener = loop {
        if let Some(l) = bound.take() {
            break l;
        }
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && tries < 150 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e, "cannot serve metrics");
                return;
            }
        }
    };
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            // Read the whole request head: closing with unread bytes resets
            // the connection before the client sees the answer.
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 << 10 {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let body = metrics.encode();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
        });
    }
}
