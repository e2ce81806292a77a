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

use super::cache::{CacheOptions, CachedStore, DiskCache};
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
}

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
pub fn run(
    opts: MountOptions,
    take_over: Option<&Path>,
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name("hubfs-s3")
        .enable_all()
        .build()?;
    let metrics = S3Metrics::new();
    let s3 = Instrumented::new(rt.block_on(S3Store::new(&opts.s3)), metrics.clone());
    // Fail at mount time, with the reason, rather than on the first `ls`
    // (and before a running server is paused for a takeover).
    for s in &opts.sources {
        rt.block_on(s3.list_page(&s.bucket, &s.prefix, Some("/"), None, 1))
            .map_err(|e| SessionError::Bucket {
                bucket: s.bucket.clone(),
                source: e,
            })?;
    }
    // From here on a server being taken over is paused.
    let adopted = take_over.map(takeover::request).transpose()?;
    let cache = match &opts.cache {
        Some(c) => Some(DiskCache::new(c, metrics.clone()).map_err(|e| {
            SessionError::Invalid(format!("data cache at {}: {e}", c.dir.display()))
        })?),
        None => None,
    };
    let store = Arc::new(CachedStore::new(s3, cache));
    let limiter =
        MemoryLimiter::with_gauge(opts.prefetch.max_memory, metrics.prefetch_bytes.clone());
    let mut fs = S3Fs::new(store, opts.fs_config(), limiter)
        .map_err(SessionError::Invalid)?
        .with_metrics(metrics.clone());
    if let Some((_, state)) = &adopted {
        fs.adopt(state)?;
    }
    let fs = Arc::new(fs);
    let adapter = FuseAdapter::new(fs.clone(), rt.handle().clone());
    let in_flight = adapter.in_flight();

    let mut config = fuser::Config::default();
    let fsname = opts
        .sources
        .iter()
        .map(|s| s.bucket.as_str())
        .collect::<Vec<_>>()
        .join(",");
    config.mount_options = vec![
        fuser::MountOption::FSName(format!("hubfs-s3:{fsname}")),
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
    let mount_err = |source| SessionError::Mount {
        path: opts.mountpoint.clone(),
        source,
    };
    let resumed = adopted.is_some();
    let (session, control) = match adopted {
        Some((mut package, state)) => {
            let control = package.listener(state.control);
            let version = fuser::Version(state.proto.0, state.proto.1);
            let session =
                fuser::Session::resume(adapter, package.dev, config, version).map_err(mount_err)?;
            if let Err(e) = package.pending.ready() {
                // The old server serves on; this one never touched the connection.
                std::mem::forget(session);
                return Err(e.into());
            }
            tracing::info!(
                inodes = state.nodes.len(),
                reads = state.reads.len(),
                dirs = state.dirs.len(),
                "took the mount over"
            );
            let control = control.or_else(|| {
                opts.control
                    .as_deref()
                    .and_then(crate::handoff::listen_or_warn)
            });
            (session, control)
        }
        None => {
            let control = opts
                .control
                .as_deref()
                .and_then(crate::handoff::listen_or_warn);
            let session =
                fuser::Session::new(adapter, &opts.mountpoint, &config).map_err(mount_err)?;
            (session, control)
        }
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
    if opts.read_ahead_kb > 0 && !resumed {
        if let Err(e) = set_read_ahead(&opts.mountpoint, opts.read_ahead_kb) {
            tracing::warn!(error = %e, "cannot raise the kernel readahead; sequential reads will be slower");
        }
    }
    if let Some(addr) = opts.metrics_addr {
        rt.spawn(serve_metrics(addr, metrics.clone()));
    }
    if let Some(path) = opts.metrics_file.clone() {
        rt.spawn(write_metrics(path, metrics.clone()));
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
            // Dropping the session would unmount; the loops stay parked.
            std::mem::forget(session);
        }
        End::Signalled if resumed => {
            tracing::info!(mountpoint = %mountpoint.display(), "signal received, unmounting");
            // fuser holds no mount of a taken-over connection: ours to end.
            unmount(mountpoint)?;
            crate::unmounted::forget_session(session, Duration::from_secs(5));
        }
        End::Signalled => {
            tracing::info!(mountpoint = %mountpoint.display(), "signal received, unmounting");
            match session.umount_and_join() {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    // Files are still open: detach now; they fail once this
                    // process exits and the FUSE connection closes.
                    tracing::warn!(mountpoint = %mountpoint.display(), "mountpoint busy, unmounting lazily");
                    nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH)
                        .map_err(io::Error::from)?;
                }
                Err(e) => tracing::debug!(error = %e, "FUSE session ended with an error"),
            }
        }
        End::Unmounted => {
            tracing::info!(mountpoint = %mountpoint.display(), "unmounted from outside");
            // The path may hold another mount by now: leave it alone.
            crate::unmounted::forget_session(session, Duration::from_secs(5));
        }
    }
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

/// Why a server stops serving.
enum End {
    Signalled,
    Unmounted,
    HandedOver,
}

/// FUSE tells the kernel 128 KiB of readahead at most, so sequential reads
/// arrive as 128 KiB requests, one round trip each. The mount's backing
/// device info accepts a larger value afterwards (as gcsfuse recommends);
/// bigger kernel reads then keep the prefetcher's parallel GETs busy.
fn set_read_ahead(mountpoint: &Path, kb: u32) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(mountpoint)?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let path = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    std::fs::write(&path, kb.to_string())?;
    tracing::debug!(path, kb, "kernel readahead raised");
    Ok(())
}

/// How often `--metrics-file` is rewritten.
const METRICS_FILE_EVERY: Duration = Duration::from_secs(5);

/// Writes the metrics text to `path` now and every few seconds, whole
/// (written aside and renamed), so a reader never sees half of it.
async fn write_metrics(path: PathBuf, metrics: Arc<S3Metrics>) {
    let tmp = path.with_extension("tmp");
    let mut tick = tokio::time::interval(METRICS_FILE_EVERY);
    let mut warned = false;
    loop {
        tick.tick().await;
        let written = tokio::fs::write(&tmp, metrics.encode()).await;
        if let Err(e) = written.and(tokio::fs::rename(&tmp, &path).await) {
            if !std::mem::replace(&mut warned, true) {
                tracing::warn!(path = %path.display(), error = %e, "cannot write metrics file");
            }
        }
    }
}

/// A minimal `/metrics` endpoint: every request gets the registry text.
async fn serve_metrics(addr: SocketAddr, metrics: Arc<S3Metrics>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A server taking a mount over binds once the old one has let go.
    let mut tries = 0;
    let listener = loop {
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
