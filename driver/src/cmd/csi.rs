//! `hubfs csi`: serve the CSI services on a unix socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use hubfs::controller::ControllerService;
use hubfs::identity::{valid_driver_name, IdentityService};
use hubfs::mounter::{self, MounterClient, Servers, Supervisor, SupervisorConfig};
use hubfs::mounts::SysMounts;
use hubfs::node::{NodeConfig, NodeService};
use hubfs::share::Shares;
use hubfs_proto::csi::{
    controller_server::ControllerServer, identity_server::IdentityServer, node_server::NodeServer,
};
use hubfs_quota::events::{EventSink, KubeEventSink, NoEvents};

/// Where the FUSE servers (fuse-accounted homes, shared bucket mounts) run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ServersAt {
    /// In the `hubfs mounter` process found through --state-dir: they outlive
    /// restarts of this plugin (the default with --mode node).
    Mounter,
    /// As children of this process (the default with --mode all: single-node
    /// installs, tests, the demo); they die with it.
    InProcess,
}

/// Which CSI services to serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Identity + Node (the DaemonSet on every notebook node).
    Node,
    /// Identity + Controller (beside external-provisioner).
    Controller,
    /// All three (single-node installs, tests, the demo).
    All,
}

#[derive(Args, Debug)]
pub struct CsiArgs {
    /// Socket to serve on, e.g. unix:///csi/csi.sock.
    #[arg(long, env = "CSI_ENDPOINT")]
    endpoint: String,
    /// This node's name, as NodeGetInfo reports it (usually the Kubernetes node name).
    #[arg(long, env = "NODE_ID")]
    node_id: String,
    /// Which services to serve.
    #[arg(long, value_enum, default_value_t = Mode::All)]
    mode: Mode,
    /// CSI driver name (must match the CSIDriver object).
    #[arg(long, default_value = hubfs::DEFAULT_DRIVER_NAME)]
    driver_name: String,
    /// Directory for share mounts and bookkeeping.
    #[arg(long, default_value = "/var/lib/hubfs")]
    state_dir: PathBuf,
    /// kubelet's root directory: staging and target paths must lie inside it (repeatable).
    #[arg(long = "kubelet-dir", default_value = "/var/lib/kubelet")]
    kubelet_dirs: Vec<PathBuf>,
    /// Directories a `backend: local` root may lie in (repeatable); volume ids naming
    /// anything else are refused.
    #[arg(long = "allowed-root", default_value = "/srv/hubfs")]
    allowed_roots: Vec<PathBuf>,
    /// The quota controller's gRPC endpoint (e.g. http://hubfs-quota:9500); home mounts
    /// with `accounting: fuse` report usage to it and learn enforcement from it.
    #[arg(long, env = "HUBFS_QUOTA_ENDPOINT")]
    quota_endpoint: Option<String>,
    /// Where FUSE servers run [default: mounter with --mode node, in-process otherwise].
    #[arg(long, value_enum)]
    servers: Option<ServersAt>,
    /// The S3 data cache of in-process servers (with `--servers mounter`,
    /// give these to `hubfs mounter`).
    #[command(flatten)]
    s3_cache: super::mounter::S3CacheArgs,
    /// Do not post Kubernetes Events (they are also skipped when no API server is configured).
    #[arg(long)]
    no_events: bool,
}

pub fn run(args: CsiArgs) -> anyhow::Result<ExitCode> {
    if !valid_driver_name(&args.driver_name) {
        bail!(
            "driver name {:?} is not a valid CSI name (letters, digits, '-', '.', '_'; starts and ends with a letter; at most 63)",
            args.driver_name
        );
    }
    let path = hubfs::server::socket_path(&args.endpoint)?;
    let abs = |what: &str, p: &PathBuf| -> anyhow::Result<PathBuf> {
        Ok(hubfs::paths::absolute(what, &p.to_string_lossy())?)
    };
    let kubelet_dirs = args
        .kubelet_dirs
        .iter()
        .map(|p| abs("--kubelet-dir", p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let allowed_roots = args
        .allowed_roots
        .iter()
        .map(|p| abs("--allowed-root", p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let state_dir = abs("--state-dir", &args.state_dir)?;
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("create {}", state_dir.display()))?;

    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let listener =
            hubfs::server::bind(&path).with_context(|| format!("bind {}", path.display()))?;
        let mounter = Arc::new(SysMounts);
        let events: Arc<dyn EventSink> = match args.no_events {
            true => Arc::new(NoEvents),
            false => {
                match KubeEventSink::from_environment(&args.driver_name, &args.node_id).await {
                    Some(k) => Arc::new(k),
                    None => Arc::new(NoEvents),
                }
            }
        };
        let mut router =
            tonic::transport::Server::builder().add_service(IdentityServer::new(IdentityService {
                driver_name: args.driver_name.clone(),
            }));
        if matches!(args.mode, Mode::Controller | Mode::All) {
            let shares = Shares::new(mounter.clone(), state_dir.clone(), allowed_roots.clone());
            let claims = hubfs::pvc::KubePvcReader::from_environment().await;
            router = router.add_service(ControllerServer::new(
                ControllerService::new(shares, events.clone()).with_pvc_reader(claims),
            ));
        }
        if matches!(args.mode, Mode::Node | Mode::All) {
            let at = args.servers.unwrap_or(match args.mode {
                Mode::Node => ServersAt::Mounter,
                _ => ServersAt::InProcess,
            });
            let servers: Arc<dyn Servers> = match at {
                ServersAt::Mounter => {
                    if args.s3_cache.s3_cache_dir.is_some() {
                        bail!("--s3-cache-dir belongs to `hubfs mounter` when the servers run there (--servers mounter)");
                    }
                    Arc::new(MounterClient::new(mounter::socket_path(&state_dir)))
                }
                ServersAt::InProcess => {
                    let exe = std::env::current_exe().context("locate the hubfs binary")?;
                    let mut cfg = SupervisorConfig::new(state_dir.clone(), exe);
                    cfg.s3_cache = args.s3_cache.config()?;
                    let sup = tokio::task::block_in_place(|| {
                        Supervisor::open(cfg, mounter.clone())
                    });
                    sup.watch();
                    sup
                }
            };
            tracing::info!(servers = ?at, "FUSE servers");
            let cfg = NodeConfig {
                node_id: args.node_id.clone(),
                allowed_targets: kubelet_dirs,
                state_dir: state_dir.clone(),
                allowed_roots,
                quota_endpoint: args.quota_endpoint.clone(),
            };
            router = router.add_service(NodeServer::new(NodeService::new(
                cfg, mounter, servers, events,
            )));
        }
        tracing::info!(endpoint = %path.display(), mode = ?args.mode, driver = %args.driver_name,
            node = %args.node_id, "serving CSI");
        router
            .serve_with_incoming_shutdown(listener, shutdown())
            .await
            .context("gRPC server")?;
        let _ = std::fs::remove_file(&path);
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("signal received, shutting down");
}
