//! `hubfs mounter`: the long-lived process that owns the node's FUSE servers.
//!
//! It runs in its own container (a DaemonSet with `updateStrategy: OnDelete`),
//! so restarting or upgrading the CSI node plugin never interrupts a mounted
//! home or bucket. It starts each `hubfs mount home|s3` server as its child,
//! replaces any that dies (stacked onto the pod targets), and answers the
//! plugin on `<state-dir>/mounter.sock`. Restarted, it rebuilds everything
//! from `<state-dir>/servers.json`.
//!
//! Upgraded, with `--take-over` beside a running mounter (the chart's
//! `maxSurge: 1` rolling update starts the new pod before the old one
//! goes), it takes every home server over with its live FUSE connection
//! (`mounter::takeover`). The old mounter then idles, owning nothing and
//! writing nothing, until its pod is deleted (SIGTERM): exiting by itself
//! would make kubelet restart its container (restartPolicy: Always) beside
//! the new one. `--ready-file` is created once this mounter serves: the
//! chart's readiness probe, so that the old pod is deleted only then.
//!
//! SIGTERM/SIGINT: a mounter that is handing over finishes that first (at
//! most a minute); otherwise it exits 0 at once, and its servers go with its
//! container (the next mounter replaces them as after a crash), or — after
//! a takeover — were already someone else's.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use hubfs::mounter::{self, S3Cache, Servers, Supervisor, SupervisorConfig};
use hubfs::mounts::SysMounts;

#[derive(Args, Debug)]
pub struct MounterArgs {
    /// Directory shared with `hubfs csi --mode node` (same --state-dir): the
    /// socket, the state file, and the servers' mountpoints and logs.
    #[arg(long, default_value = "/var/lib/hubfs")]
    state_dir: PathBuf,
    /// Milliseconds between checks of the servers (a dead one is replaced
    /// after at most this long plus its start time).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    watch_ms: u64,
    /// If a mounter already serves --state-dir, take its servers over (an
    /// upgrade: homes keep their live FUSE connections) instead of waiting
    /// for it to go.
    #[arg(long)]
    take_over: bool,
    #[command(flatten)]
    s3_cache: S3CacheArgs,
    /// Serve Prometheus metrics here: the mounter's servers and restarts,
    /// and every bucket server's S3 and data-cache counters with a `server`
    /// label (e.g. 0.0.0.0:9810).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Create this file once serving (a readiness probe's; use a path
    /// inside the container, not under --state-dir).
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
}

/// The node's S3 data cache (`hubfs mounter`, and `hubfs csi` with in-process servers).
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct S3CacheArgs {
    /// Local-disk data cache of S3 mounts: every bucket server gets
    /// `--cache-dir <this>/<server id>` (one per bucket, prefix and identity),
    /// emptied when it starts and removed when its last pod goes.
    #[arg(long, help_heading = "S3 cache")]
    pub s3_cache_dir: Option<PathBuf>,
    /// Most bytes each S3 server's cache holds (`10Gi`, `500M`, ...).
    #[arg(long, default_value = "10Gi", value_parser = super::mount_s3::parse_size, help_heading = "S3 cache")]
    pub s3_cache_size: u64,
}

impl S3CacheArgs {
    /// The supervisor's setting; the directory must be absolute.
    pub fn config(&self) -> anyhow::Result<Option<S3Cache>> {
        let Some(dir) = &self.s3_cache_dir else {
            return Ok(None);
        };
        let dir = hubfs::paths::absolute("--s3-cache-dir", &dir.to_string_lossy())?;
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Some(S3Cache {
            dir,
            size: self.s3_cache_size,
        }))
    }
}

pub fn run(args: MounterArgs) -> anyhow::Result<ExitCode> {
    use nix::sys::signal::{SigSet, Signal};
    let state_dir = hubfs::paths::absolute("--state-dir", &args.state_dir.to_string_lossy())?;
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("create {}", state_dir.display()))?;
    let socket = mounter::socket_path(&state_dir);
    // Stop signals are taken by the wait at the end; every thread inherits
    // the mask. A bucket server unblocks its own at start (its runtime
    // handles them), whatever mask it was started with.
    let mut stop = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT] {
        stop.add(s);
    }
    stop.thread_block().context("blocking signals")?;
    let exe = std::env::current_exe().context("locate the hubfs binary")?;
    let mut taken = HashMap::new();
    let mut cfg = SupervisorConfig::new(state_dir.clone(), exe);
    cfg.watch_interval = Duration::from_millis(args.watch_ms);
    cfg.s3_cache = args.s3_cache.config()?;
    // One connection to the running mounter, if any: it carries the
    // release (none running: nothing to take over).
    let old = if args.take_over {
        std::os::unix::net::UnixStream::connect(&socket).ok()
    } else {
        None
    };
    if let Some(old) = old {
        match mounter::takeover::take_over(&cfg, old, Duration::from_secs(60)) {
            Ok((r, t)) => {
                tracing::info!(servers = t.len(), "took the running mounter's servers over");
                taken = t;
                // The old mounter idles now; its socket is replaced (it
                // keeps listening on the unlinked one, which nobody
                // reaches).
                if let Err(e) = r.done() {
                    tracing::warn!(error = %e, "the old mounter went away before the end of the takeover");
                }
                let _ = std::fs::remove_file(&socket);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the running mounter over; waiting for it to go");
                // Ready now, or a rolling update would wait for this pod
                // forever and never delete the old one (an old version
                // without takeover): its servers are replaced instead.
                if let Some(f) = &args.ready_file {
                    let _ = std::fs::write(f, b"waiting\n");
                }
            }
        }
    }
    // Bind first: a second mounter on the same directory must not touch the
    // servers. One that is still going away (its container being killed) is
    // waited for, a minute at most.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let listener = loop {
        match mounter::wire::bind(&socket) {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                tracing::warn!("{e}; waiting for it to go");
                std::thread::sleep(Duration::from_millis(500));
            }
            r => break r.with_context(|| format!("listen on {}", socket.display()))?,
        }
    };
    if let Some(c) = &cfg.s3_cache {
        tracing::info!(dir = %c.dir.display(), bytes_per_server = c.size, "S3 data cache");
    }
    let sup = Supervisor::open_with(cfg, Arc::new(SysMounts), taken);
    sup.watch();
    let servers: Arc<dyn Servers> = sup.clone();
    if let Some(addr) = args.metrics_addr {
        mounter::metrics::serve(addr, servers.clone())
            .with_context(|| format!("serve metrics on {addr}"))?;
    }
    tracing::info!(socket = %socket.display(), servers = sup.status().map(|s| s.len()).unwrap_or(0), "mounter serving");
    std::thread::Builder::new()
        .name("hubfs-mounter-sock".into())
        .spawn(move || mounter::wire::serve(listener, servers))
        .context("start serving the socket")?;
    if let Some(f) = &args.ready_file {
        std::fs::write(f, b"serving\n").with_context(|| format!("write {}", f.display()))?;
    }
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: 200_000_000,
    };
    let mut stopping: Option<std::time::Instant> = None;
    let mut idle = false;
    loop {
        if sup.handed_over() && !idle {
            idle = true;
            if let Some(f) = &args.ready_file {
                let _ = std::fs::remove_file(f);
            }
            tracing::info!("every server handed over to a new mounter; idle until stopped");
        }
        if let Some(t) = stopping {
            if idle || !sup.releasing() || t.elapsed() > Duration::from_secs(60) {
                tracing::info!("stopping; servers go with this container");
                return Ok(ExitCode::SUCCESS);
            }
        }
        // SAFETY: sigtimedwait with a valid signal set and timeout.
        let sig = unsafe { libc::sigtimedwait(stop.as_ref(), std::ptr::null_mut(), &timeout) };
        if sig > 0 && stopping.is_none() {
            tracing::info!(signal = sig, handing_over = sup.releasing(), "stop signal");
            stopping = Some(std::time::Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        cache: S3CacheArgs,
    }

    fn parse(args: &[&str]) -> Result<S3CacheArgs, clap::Error> {
        let mut all = vec!["hubfs"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).map(|c| c.cache)
    }

    #[test]
    fn the_s3_cache_flags_use_the_one_size_syntax_and_an_absolute_dir() {
        assert_eq!(parse(&[]).unwrap().config().unwrap(), None);
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("cache");
        let c = parse(&[
            "--s3-cache-dir",
            d.to_str().unwrap(),
            "--s3-cache-size",
            "500M",
        ])
        .unwrap()
        .config()
        .unwrap()
        .unwrap();
        assert_eq!(c.size, hubfs_quota::parse_size("500M").unwrap());
        assert_eq!(c.size, 500_000_000);
        assert!(d.is_dir(), "made at start");
        let default = parse(&["--s3-cache-dir", d.to_str().unwrap()]).unwrap();
        assert_eq!(default.s3_cache_size, 10 << 30);
        assert!(parse(&["--s3-cache-size", "lots"]).is_err());
        assert!(parse(&["--s3-cache-size", "0"]).is_err());
        let relative = parse(&["--s3-cache-dir", "cache"]).unwrap().config();
        assert!(relative.unwrap_err().to_string().contains("--s3-cache-dir"));
    }
}
