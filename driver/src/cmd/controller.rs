//! `hubfs controller`: the quota controller (replaces the monitor and reaper
//! pods of the EFS quota monitor). Parses the flags, builds the
//! [`Controller`] (config, record store, hub client, event sink) and runs it:
//! the servers and loops live in `hubfs_quota::controller`.

use hubfs_quota::events::{EventSink, KubeEventSink, NoEvents};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use hubfs_quota::clock::{Clock, SystemClock};
use hubfs_quota::config::Config;
use hubfs_quota::controller::Controller;
use hubfs_quota::hub::{HubApi, HubClient, Token};
use hubfs_quota::notify::LogNotifier;
use hubfs_quota::store::Store;

#[derive(Args, Debug)]
pub struct ControllerArgs {
    /// Directory holding the per-user records (`<user>/quota.yaml`).
    #[arg(long, env = "HUBFS_CONTROL_DIR")]
    pub control_dir: PathBuf,
    /// Directory where the homes live (walked on schedule; `.hubfs/` there
    /// holds provisioned capacities). Without it no scheduled walks run.
    #[arg(long, env = "HUBFS_USERS_DIR")]
    pub users_dir: Option<PathBuf>,
    /// JupyterHub base URL (e.g. http://hub:8081). Without it the controller
    /// runs accounting and states only.
    #[arg(long, env = "HUBFS_HUB_URL")]
    pub hub_url: Option<String>,
    /// File holding the hub service token (else $JUPYTERHUB_API_TOKEN).
    #[arg(long, env = "HUBFS_HUB_TOKEN_FILE")]
    pub hub_token_file: Option<PathBuf>,
    /// Address of the hubfs.quota.v1 gRPC server.
    #[arg(long, default_value = "0.0.0.0:9500")]
    pub grpc_listen: SocketAddr,
    /// Address of the HTTP API (/v1/users/{name}, /healthz, /metrics).
    #[arg(long, default_value = "0.0.0.0:9501")]
    pub http_listen: SocketAddr,
    /// YAML config (defaults, schedule, policy); see docs/quota.md.
    #[arg(long, env = "HUBFS_QUOTA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Name of this replica in lock files (default: hostname and pid).
    #[arg(long, env = "HUBFS_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Run one walk pass and one reaper cycle, print a JSON summary, exit.
    #[arg(long)]
    pub once: bool,
}

/// The hub token from the file or the environment; never logged.
pub fn read_token(file: Option<&PathBuf>) -> anyhow::Result<Token> {
    let t = match file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("read hub token file {}", f.display()))?,
        None => std::env::var("JUPYTERHUB_API_TOKEN")
            .or_else(|_| std::env::var("HUBFS_HUB_TOKEN"))
            .context("no --hub-token-file and no JUPYTERHUB_API_TOKEN in the environment")?,
    };
    if t.trim().is_empty() {
        bail!("the hub token is empty");
    }
    Ok(Token::new(&t))
}

pub fn build(
    control_dir: &Path,
    users_dir: Option<&PathBuf>,
    hub_url: Option<&str>,
    token_file: Option<&PathBuf>,
    config: Option<&PathBuf>,
    replica: Option<String>,
    events: Arc<dyn EventSink>,
) -> anyhow::Result<Arc<Controller>> {
    let cfg = Config::load(config.map(|p| p.as_path()))?;
    let owner = replica.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        format!("{host}:{}", std::process::id())
    });
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = Store::open(
        control_dir,
        &owner,
        Duration::from_secs(cfg.locks.lease_seconds),
        Duration::from_secs(cfg.locks.wait_seconds),
        clock.clone(),
    )?;
    let hub: Option<Arc<dyn HubApi>> = match hub_url {
        Some(url) => {
            let token = read_token(token_file)?;
            Some(Arc::new(HubClient::new(url, token, cfg.hub.clone())?))
        }
        None => None,
    };
    // A users directory that does not exist yet is waited for (it appears
    // with the first provisioned home); a file in its place is a mistake.
    if let Some(d) = users_dir {
        if d.exists() && !d.is_dir() {
            bail!("--users-dir {} is not a directory", d.display());
        }
    }
    Ok(Arc::new(
        Controller::new(
            cfg,
            store,
            users_dir.cloned(),
            clock,
            hub,
            Arc::new(LogNotifier),
        )
        .with_events(events),
    ))
}

pub fn run(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        // Transitions and server stops become Events on the user's PVC when
        // a Kubernetes API server is reachable; otherwise they are only logged.
        let instance = args.replica_id.clone().unwrap_or_else(|| "hubfs-quota".into());
        let events: Arc<dyn EventSink> = match KubeEventSink::from_environment("hubfs-quota", &instance).await {
            Some(k) => Arc::new(k),
            None => Arc::new(NoEvents),
        };
        let ctrl = build(
            &args.control_dir,
            args.users_dir.as_ref(),
            args.hub_url.as_deref(),
            args.hub_token_file.as_ref(),
            args.config.as_ref(),
            args.replica_id.clone(),
            events,
        )?;
        if !ctrl.has_hub() {
            tracing::warn!("no --hub-url: running accounting and states only (no activity recorded, no servers stopped)");
        }
        if args.once {
            let s = ctrl.run_once().await?;
            let reaper = match s.reaper {
                Some(r) => serde_json::json!({
                    "hub_users": r.hub_users,
                    "records_updated": r.records_updated,
                    "servers_stopped": r.servers_stopped,
                    "seconds": r.seconds,
                }),
                None => serde_json::Value::Null,
            };
            println!("{}", serde_json::json!({ "walked": s.walked, "reaper": reaper }));
            return Ok(ExitCode::SUCCESS);
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let shutdown = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; exiting"),
                _ = term.recv() => tracing::info!("terminated; exiting"),
            }
        };
        ctrl.run(args.grpc_listen, args.http_listen, shutdown).await?;
        Ok(ExitCode::SUCCESS)
    })
}
