//! `hubfs mounter`: the long-lived process that owns the node's FUSE servers.
//!
//! It runs in its own container (a DaemonSet with `updateStrategy: OnDelete`),
//! so restarting or upgrading the CSI node plugin never interrupts a mounted
//! home or bucket. It starts each `hubfs mount home|s3` server as its child,
//! replaces any that dies (stacked onto the pod targets), and answers the
//! plugin on `<state-dir>/mounter.sock`. Restarted, it rebuilds everything
//! from `<state-dir>/servers.json`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use hubfs::keeper::{self, S3Cache, Servers, Supervisor, SupervisorConfig};
use hubfs::mounter::SysMounter;

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
    #[command(flatten)]
    s3_cache: S3CacheArgs,
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
    let state_dir = hubfs::paths::absolute("--state-dir", &args.state_dir.to_string_lossy())?;
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("create {}", state_dir.display()))?;
    let socket = keeper::socket_path(&state_dir);
    // Bind first: a second mounter on the same directory must not touch the
    // servers. One that is still going away (its container being killed) is
    // waited for, a minute at most.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let listener = loop {
        match keeper::wire::bind(&socket) {
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
    let exe = std::env::current_exe().context("locate the hubfs binary")?;
    let mut cfg = SupervisorConfig::new(state_dir.clone(), exe);
    cfg.watch_interval = Duration::from_millis(args.watch_ms);
    cfg.s3_cache = args.s3_cache.config()?;
    if let Some(c) = &cfg.s3_cache {
        tracing::info!(dir = %c.dir.display(), bytes_per_server = c.size, "S3 data cache");
    }
    let sup = Supervisor::open(cfg, Arc::new(SysMounter));
    sup.watch();
    let servers: Arc<dyn Servers> = sup.clone();
    tracing::info!(socket = %socket.display(), servers = sup.status().map(|s| s.len()).unwrap_or(0), "mounter serving");
    // Serves until the process ends. SIGTERM/SIGINT keep their default
    // action (no handler, no blocked mask: the servers started from here
    // inherit the signal mask, and must still stop on SIGTERM): the mounter
    // ends, its servers keep serving until its container's PID namespace
    // goes, and the next mounter adopts or replaces them.
    keeper::wire::serve(listener, servers);
    Ok(ExitCode::SUCCESS)
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
