//! The CSI Node service: staging shares, publishing homes and buckets into
//! pods, and reporting usage.
//!
//! Every call is idempotent against what the kernel says is mounted (not
//! against memory), so a driver restart mid-operation converges on the next
//! retry. Paths from the CO must lie inside the kubelet directory; volume ids
//! are re-validated on every call. FUSE servers (homes with `accounting:
//! fuse`, shared bucket mounts) are started and watched through the
//! [`Servers`] trait (normally the `hubfs mounter` process), never as
//! children of this service, so they outlive its restarts.

mod home;
mod mounted;
mod s3;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hubfs_proto::csi::{
    node_server::Node, node_service_capability, volume_capability::access_mode::Mode,
    NodeExpandVolumeRequest, NodeExpandVolumeResponse, NodeGetCapabilitiesRequest,
    NodeGetCapabilitiesResponse, NodeGetInfoRequest, NodeGetInfoResponse,
    NodeGetVolumeStatsRequest, NodeGetVolumeStatsResponse, NodePublishVolumeRequest,
    NodePublishVolumeResponse, NodeServiceCapability, NodeStageVolumeRequest,
    NodeStageVolumeResponse, NodeUnpublishVolumeRequest, NodeUnpublishVolumeResponse,
    NodeUnstageVolumeRequest, NodeUnstageVolumeResponse, VolumeCapability,
};
use tonic::{Request, Response, Status};
use tracing::info_span;

use crate::controller::check_capabilities;
use crate::error::{DriverError, Result};
use crate::inflight::InFlight;
use crate::mounter::{ServerSpec, Servers};
use crate::mounts::Mounts;
use crate::paths;
use crate::server::blocking;
use crate::share::Shares;
use crate::stats::UsageCache;
use hubfs_fuse::s3::credentials::StaticCredentials;
use hubfs_quota::events::{post_in_background, EventSink, Notice, Reason};

/// Node service settings.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: String,
    /// Staging and target paths must lie inside these (kubelet's root dir).
    pub allowed_targets: Vec<PathBuf>,
    /// Where the driver keeps share mounts and markers.
    pub state_dir: PathBuf,
    /// Local-backend roots that volume ids may name.
    pub allowed_roots: Vec<PathBuf>,
    /// The quota controller's hubfs.quota.v1 endpoint, handed to home mounts
    /// (`accounting: fuse`) so they report usage; `None` accounts locally only.
    pub quota_endpoint: Option<String>,
}

/// Node service state.
#[derive(Clone)]
pub struct NodeService {
    inner: Arc<NodeInner>,
}

struct NodeInner {
    cfg: NodeConfig,
    events: Arc<dyn EventSink>,
    mounts: Arc<dyn Mounts>,
    /// Starts and keeps the FUSE servers (the mounter, or in-process).
    servers: Arc<dyn Servers>,
    shares: Shares,
    inflight: InFlight,
    stats: UsageCache,
}

fn required<'a>(what: &'static str, v: &'a str) -> Result<&'a str> {
    if v.is_empty() {
        Err(DriverError::Missing(what))
    } else {
        Ok(v)
    }
}

fn capability(c: Option<&VolumeCapability>) -> Result<&VolumeCapability> {
    let c = c.ok_or(DriverError::Missing("volume_capability"))?;
    check_capabilities(std::slice::from_ref(c))?;
    Ok(c)
}

/// Whether the CO asked for a read-only publication, by flag or access mode.
fn read_only(readonly: bool, c: &VolumeCapability) -> bool {
    readonly
        || c.access_mode.as_ref().is_some_and(|m| {
            m.mode == Mode::SingleNodeReaderOnly as i32
                || m.mode == Mode::MultiNodeReaderOnly as i32
        })
}

/// Asks the mounter to show `spec` at `target`, creating the directory; one
/// created here is removed again if that fails. `credentials` are the
/// server's own identity, if it has one. Returns false when `target`
/// already showed it (nothing was mounted).
fn publish_server(
    node: &NodeService,
    spec: &ServerSpec,
    target: &Path,
    read_only: bool,
    credentials: Option<&StaticCredentials>,
) -> Result<bool> {
    let created = !target.exists();
    std::fs::create_dir_all(target).map_err(|e| DriverError::io("create", target, e))?;
    let servers = &node.inner.servers;
    let res = match credentials {
        None => servers.publish(spec, target, read_only),
        Some(c) => servers.publish_with_credentials(spec, target, read_only, c),
    };
    if res.is_err() && created {
        let _ = std::fs::remove_dir(target);
    }
    res
}

impl NodeService {
    pub fn new(
        cfg: NodeConfig,
        mounts: Arc<dyn Mounts>,
        servers: Arc<dyn Servers>,
        events: Arc<dyn EventSink>,
    ) -> Self {
        let shares = Shares::new(
            mounts.clone(),
            cfg.state_dir.clone(),
            cfg.allowed_roots.clone(),
        );
        Self {
            inner: Arc::new(NodeInner {
                cfg,
                events,
                mounts,
                servers,
                shares,
                inflight: InFlight::default(),
                stats: UsageCache::default(),
            }),
        }
    }

    fn co_path(&self, what: &'static str, v: &str) -> Result<PathBuf> {
        paths::inside(what, required(what, v)?, &self.inner.cfg.allowed_targets)
    }

    /// NodeStageVolume's body.
    pub fn stage(&self, r: NodeStageVolumeRequest) -> Result<()> {
        let id = required("volume_id", &r.volume_id)?;
        let staging = self.co_path("staging_target_path", &r.staging_target_path)?;
        capability(r.volume_capability.as_ref())?;
        let _g = self.inner.inflight.begin(id)?;
        match crate::volume::VolumeType::from_map(&r.volume_context)? {
            crate::volume::VolumeType::S3 => s3::stage(self, &r, &staging),
            crate::volume::VolumeType::Home => home::stage(self, id, &r.volume_context, &staging),
        }
    }

    /// NodeUnstageVolume's body.
    pub fn unstage(&self, r: NodeUnstageVolumeRequest) -> Result<()> {
        let id = required("volume_id", &r.volume_id)?;
        let staging = self.co_path("staging_target_path", &r.staging_target_path)?;
        let _g = self.inner.inflight.begin(id)?;
        self.unmount_all(&staging)?;
        home::release_share(self, id, &staging)
    }

    /// NodePublishVolume's body.
    pub fn publish(&self, r: NodePublishVolumeRequest) -> Result<()> {
        let id = required("volume_id", &r.volume_id)?;
        let target = self.co_path("target_path", &r.target_path)?;
        let cap = capability(r.volume_capability.as_ref())?;
        let ro = read_only(r.readonly, cap);
        let _g = self.inner.inflight.begin(id)?;
        let kind = crate::volume::VolumeType::from_map(&r.volume_context)?;
        let result = match kind {
            crate::volume::VolumeType::S3 => s3::publish(self, &r, &target, ro),
            crate::volume::VolumeType::Home => {
                // CSI: with STAGE_UNSTAGE_VOLUME, a missing staging path is FAILED_PRECONDITION.
                if r.staging_target_path.is_empty() {
                    return Err(DriverError::FailedPrecondition(
                        "staging_target_path is not set, but home volumes are staged first (STAGE_UNSTAGE_VOLUME)".into(),
                    ));
                }
                let staging = self.co_path("staging_target_path", &r.staging_target_path)?;
                home::publish(self, id, &r.volume_context, &staging, &target, ro)
            }
        };
        // Tell `kubectl describe pod` what happened, in the background.
        if let Some(pod) = crate::volume::pod_of(&r.volume_context) {
            let notice = match &result {
                Ok(Some(note)) => Some(Notice {
                    regarding: pod,
                    reason: match kind {
                        crate::volume::VolumeType::S3 => Reason::S3Mounted,
                        crate::volume::VolumeType::Home => Reason::HomeMounted,
                    },
                    note: note.clone(),
                }),
                Ok(None) => None, // already published: said before
                Err(DriverError::Busy(_)) => None,
                Err(e) => Some(Notice {
                    regarding: pod,
                    reason: Reason::MountFailed,
                    note: e.to_string(),
                }),
            };
            if let Some(n) = notice {
                post_in_background(&self.inner.events, n);
            }
        }
        result.map(|_| ())
    }

    /// NodeUnpublishVolume's body: unmount and remove the target we created.
    pub fn unpublish(&self, r: NodeUnpublishVolumeRequest) -> Result<()> {
        let id = required("volume_id", &r.volume_id)?;
        let target = self.co_path("target_path", &r.target_path)?;
        let _g = self.inner.inflight.begin(id)?;
        // A FUSE-served target (or one whose server is gone): the mounter
        // unmounts it and stops a server nobody uses any more. Plain binds
        // are unmounted here, without asking the mounter.
        let plain = self
            .inner
            .mounts
            .mounted_at(&target)?
            .is_some_and(|m| !m.fs_type.starts_with("fuse"));
        if !plain {
            self.inner.servers.unpublish(&target)?;
        }
        self.unmount_all(&target)?;
        match std::fs::remove_dir(&target) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                Err(DriverError::FailedPrecondition(format!(
                    "target {} is not mounted but not empty; refusing to delete data",
                    target.display()
                )))
            }
            Err(e) => Err(DriverError::io("remove", target, e)),
        }
    }

    /// NodeGetVolumeStats's body. NOT_FOUND for any `volume_path` that is
    /// not a publication of volume `volume_id` on this node (CSI; the sanity
    /// suite sends `some/path` for an unknown volume and for a published
    /// one), relative, missing and foreign paths alike.
    pub fn volume_stats(&self, r: NodeGetVolumeStatsRequest) -> Result<NodeGetVolumeStatsResponse> {
        let id = required("volume_id", &r.volume_id)?;
        let raw = required("volume_path", &r.volume_path)?;
        let not_found = |why: &str| {
            DriverError::NotFound(format!("volume {id} is not published at {raw}: {why}"))
        };
        let path =
            paths::absolute("volume_path", raw).map_err(|_| not_found("not an absolute path"))?;
        if std::fs::symlink_metadata(&path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
        {
            return Err(not_found("it does not exist"));
        }
        if !self.published_at(id, &path)? {
            return Err(not_found("nothing of it is mounted there"));
        }
        match crate::volume::HomeVolume::parse_id(id) {
            // Static S3 PVs have ids chosen by the admin, never ours.
            Err(crate::volume::IdError::Foreign) => s3::stats(&path),
            _ => home::stats(self, id, &path),
        }
    }

    /// Whether volume `id` is published at `path`: a recorded target of its
    /// FUSE server (a home's layer, or a bucket server for a static S3 PV;
    /// dead or alive: its condition says which), or a bind of its home.
    fn published_at(&self, id: &str, path: &Path) -> Result<bool> {
        let servers = self.inner.servers.status()?;
        let owner = servers
            .iter()
            .find(|s| s.targets.iter().any(|t| t == path))
            .map(|s| s.id.clone());
        let vol = match crate::volume::HomeVolume::parse_id(id) {
            // A bucket server's ids name the bucket and identity, not the PV.
            Err(crate::volume::IdError::Foreign) => {
                return Ok(owner.is_some_and(|o| !home::is_server_id(&o)))
            }
            Err(e) => return Err(e.into()),
            Ok(vol) => vol,
        };
        if let Some(o) = owner {
            return Ok(o == home::server_id(id));
        }
        let Some(shown) = self.inner.mounts.mounted_at(path)? else {
            return Ok(false);
        };
        let Ok(root) = self.inner.shares.root(&vol.backend, "") else {
            // The share is not reachable: a mount is there, assume it is this one.
            return Ok(true);
        };
        let want = self.inner.mounts.bind_identity(&vol.home_dir(&root))?;
        Ok(shown.device == want.device && shown.root == want.root)
    }

    /// Unmounts everything stacked on `path` (a retried publish can leave two).
    fn unmount_all(&self, path: &std::path::Path) -> Result<()> {
        for _ in 0..8 {
            if self.inner.mounts.mounted_at(path)?.is_none() {
                return Ok(());
            }
            self.inner.mounts.unmount(path)?;
            tracing::info!(path = %path.display(), "unmounted");
        }
        Err(DriverError::FailedPrecondition(format!(
            "{} is still mounted after 8 unmounts",
            path.display()
        )))
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        req: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        let r = req.into_inner();
        let span = info_span!("NodeStageVolume", volume_id = %r.volume_id, target = %r.staging_target_path);
        let this = self.clone();
        blocking(span, move || this.stage(r)).await?;
        Ok(Response::new(NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        req: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        let r = req.into_inner();
        let span = info_span!("NodeUnstageVolume", volume_id = %r.volume_id, target = %r.staging_target_path);
        let this = self.clone();
        blocking(span, move || this.unstage(r)).await?;
        Ok(Response::new(NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        req: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let r = req.into_inner();
        let span =
            info_span!("NodePublishVolume", volume_id = %r.volume_id, target = %r.target_path);
        let this = self.clone();
        blocking(span, move || this.publish(r)).await?;
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let r = req.into_inner();
        let span =
            info_span!("NodeUnpublishVolume", volume_id = %r.volume_id, target = %r.target_path);
        let this = self.clone();
        blocking(span, move || this.unpublish(r)).await?;
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let r = req.into_inner();
        let span =
            info_span!("NodeGetVolumeStats", volume_id = %r.volume_id, target = %r.volume_path);
        let this = self.clone();
        Ok(Response::new(
            blocking(span, move || this.volume_stats(r)).await?,
        ))
    }

    async fn node_expand_volume(
        &self,
        _: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "NodeExpandVolume is not needed: a quota change applies without touching the mount",
        ))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        use node_service_capability::{rpc::Type, Rpc, Type as Cap};
        let cap = |t: Type| NodeServiceCapability {
            r#type: Some(Cap::Rpc(Rpc { r#type: t as i32 })),
        };
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: vec![
                cap(Type::StageUnstageVolume),
                cap(Type::GetVolumeStats),
                cap(Type::VolumeCondition),
            ],
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.inner.cfg.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}

#[cfg(test)]
mod tests;
