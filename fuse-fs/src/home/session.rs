//! One mounted home: the FUSE session, the mount-time walk in the background
//! and the reporter, started and stopped together.
//!
//! The mount answers at once; the walk that gives the accounting its
//! starting figure runs beside it (bounded by a timeout) and is added in
//! when it ends, so a large home on a slow share never delays a notebook.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use fuser::{BackgroundSession, Config, MountOption, SessionACL};
use hubfs_walker::{WalkOptions, Walker};

use super::adapter::HomeFuse;
use super::error::HomeError;
use super::fs::HomeFs;
use super::sink::{ReportKind, Reporter, UsageReport, UsageSink};
use super::usage::{Limits, UsageCounters};

/// How often growth by passthrough writers is charged.
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
}

/// The usual mount options a home takes (CSI read-only publishes, an
/// admin's `mountOptions`), as the kernel flag they set; `relatime` and
/// `rw`, `atime`, `exec`, `async` are the defaults and set nothing. `suid`
/// and `dev` are refused: a home never honours set-ID programs or devices.
pub fn mount_option(s: &str) -> Result<Option<MountOption>, String> {
    Ok(Some(match s {
        "ro" => MountOption::RO,
        "noatime" => MountOption::NoAtime,
        "noexec" => MountOption::NoExec,
        "nosuid" => MountOption::NoSuid,
        "nodev" => MountOption::NoDev,
        "sync" => MountOption::Sync,
        "dirsync" => MountOption::DirSync,
        "rw" | "relatime" | "atime" | "exec" | "async" | "defaults" => return Ok(None),
        "suid" | "dev" => return Err(format!("mount option {s:?}: a home is always nosuid,nodev")),
        _ => {
            return Err(format!(
                "unknown mount option {s:?} (known: ro, rw, noatime, relatime, atime, noexec, exec, nosuid, nodev, sync, async, dirsync)"
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
}

/// Mounts a home. `sink` receives usage reports (None: account and enforce
/// locally only).
pub fn mount(
    opts: &HomeOptions,
    sink: Option<Arc<dyn UsageSink>>,
) -> Result<HomeMount, MountError> {
    let mut extra = Vec::new();
    for o in &opts.mount_options {
        if let Some(o) = mount_option(o).map_err(MountError::Option)? {
            if !extra.contains(&o) && o != MountOption::NoDev && o != MountOption::NoSuid {
                extra.push(o);
            }
        }
    }
    let usage = Arc::new(UsageCounters::new(opts.limits));
    let fs = Arc::new(HomeFs::new(&opts.source, usage.clone()).map_err(|source| {
        MountError::Source {
            path: opts.source.clone(),
            source,
        }
    })?);
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!(
            "hubfs-home:{}",
            opts.user.replace([',', ' ', '\\'], "_")
        )),
        MountOption::Subtype("hubfs-home".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    config.mount_options.extend(extra);
    // The daemon is root and the notebook is not: others must get in; the
    // kernel's permission checks (default_permissions) keep them honest.
    config.acl = SessionACL::All;
    config.n_threads = Some(opts.fuse_threads.max(1));
    config.clone_fd = true;
    // Changes made from the first request on must be known to the walk.
    fs.begin_walk();
    let session = fuser::spawn_mount(
        HomeFuse::new(fs.clone(), opts.passthrough),
        &opts.mountpoint,
        &config,
    )
    .map_err(|source| MountError::Mount {
        path: opts.mountpoint.clone(),
        source,
    })?;
    let reporter =
        sink.map(|s| Reporter::start(usage.clone(), s, &opts.user, opts.report_interval));
    let cancel = Arc::new(AtomicBool::new(false));
    let walk = {
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
    };
    if walk.is_none() {
        tracing::warn!(user = %opts.user, "cannot start the mount-time walk; usage counts changes only");
        fs.end_walk(None);
    }
    // Passthrough writers grow files without us; charge them as they go.
    // Without passthrough there are none, and no thread to wake.
    let settle = opts
        .passthrough
        .then(|| {
            let (fs, cancel) = (fs.clone(), cancel.clone());
            std::thread::Builder::new()
                .name("hubfs-settle".into())
                .spawn(move || {
                    while !cancel.load(std::sync::atomic::Ordering::Relaxed) {
                        std::thread::sleep(SETTLE_EVERY);
                        fs.settle_unmediated();
                    }
                })
                .ok()
        })
        .flatten();
    Ok(HomeMount {
        session: Some(session),
        fs,
        reporter,
        walk,
        settle,
        cancel,
        mountpoint: opts.mountpoint.clone(),
    })
}

impl HomeMount {
    pub fn usage(&self) -> &Arc<UsageCounters> {
        self.fs.usage()
    }

    /// Read requests the daemon served (passthrough reads are not among them).
    pub fn daemon_reads(&self) -> u64 {
        self.fs.daemon_reads()
    }

    /// Files the daemon holds open; see [`HomeFs::open_files`].
    pub fn open_files(&self) -> usize {
        self.fs.open_files()
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
        self.cancel
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let r = match self.session.take() {
            // Unmounted from outside: the path may hold another mount now.
            Some(s) if s.guard.is_finished() => {
                crate::unmounted::forget_session(s, Duration::from_secs(5));
                Ok(())
            }
            Some(s) => s.umount_and_join().inspect_err(|_| {
                // Busy or already gone: detach so the session can end.
                let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
            }),
            None => Ok(()),
        };
        if let Some(w) = self.walk.take() {
            let _ = w.join();
        }
        if let Some(t) = self.settle.take() {
            let _ = t.join();
        }
        self.fs.settle_unmediated();
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
        assert!(mount_option("suid").unwrap_err().contains("nosuid"));
        assert!(mount_option("bogus").unwrap_err().contains("known: ro"));
        assert!(mount_option("ro,noatime").is_err(), "one option at a time");
    }
}
