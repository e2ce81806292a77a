//! The CSI Controller service: provisioning homes as directories on a share.
//!
//! CreateVolume turns a PVC of a `type: home` StorageClass into
//! `<share>/<basePath>/<encoded user>` owned by the notebook uid/gid, and
//! records the PVC capacity as the user's quota. The user is the hub user
//! named by the PVC's annotation (read through [`PvcReader`]); a home made
//! before under KubeSpawner's slug of that name is adopted, not duplicated.
//! Named servers' PVCs share their user's home and never delete it. DeleteVolume never destroys
//! data unless the class says `onDelete: delete`. Everything a later call
//! needs is in the volume id, so there is no controller-side state.

use std::collections::HashMap;
use std::sync::Arc;

use hubfs_proto::csi::{
    controller_server::Controller, controller_service_capability,
    validate_volume_capabilities_response::Confirmed, volume_capability,
    ControllerExpandVolumeRequest, ControllerExpandVolumeResponse,
    ControllerGetCapabilitiesRequest, ControllerGetCapabilitiesResponse,
    ControllerGetVolumeRequest, ControllerGetVolumeResponse, ControllerModifyVolumeRequest,
    ControllerModifyVolumeResponse, ControllerPublishVolumeRequest,
    ControllerPublishVolumeResponse, ControllerServiceCapability, ControllerUnpublishVolumeRequest,
    ControllerUnpublishVolumeResponse, CreateSnapshotRequest, CreateSnapshotResponse,
    CreateVolumeRequest, CreateVolumeResponse, DeleteSnapshotRequest, DeleteSnapshotResponse,
    DeleteVolumeRequest, DeleteVolumeResponse, GetCapacityRequest, GetCapacityResponse,
    ListSnapshotsRequest, ListSnapshotsResponse, ListVolumesRequest, ListVolumesResponse,
    ValidateVolumeCapabilitiesRequest, ValidateVolumeCapabilitiesResponse, Volume,
    VolumeCapability,
};
use std::collections::BTreeMap;

use hubfs_quota::clock::{Clock, SystemClock};
use tonic::{Request, Response, Status};
use tracing::{info_span, Instrument};

use crate::error::{DriverError, Result};
use crate::homes::{self, Adopted, HomeMeta};
use crate::inflight::InFlight;
use crate::pvc::{NoCluster, PvcError, PvcReader};
use crate::server::blocking;
use crate::share::Shares;
use crate::volume::{keys, HomeParams, HomeVolume, IdError, OnDelete, UserSource, VolumeType};
use hubfs_quota::events::{post_in_background, EventSink, Notice, Reason};

/// Controller service state.
#[derive(Clone)]
pub struct ControllerService {
    inner: Arc<Inner>,
}

struct Inner {
    shares: Shares,
    inflight: InFlight,
    events: Arc<dyn EventSink>,
    claims: Arc<dyn PvcReader>,
    clock: Arc<dyn Clock>,
}

/// Checks that every capability is a filesystem mount: homes are directories.
pub fn check_capabilities(caps: &[VolumeCapability]) -> Result<()> {
    if caps.is_empty() {
        return Err(DriverError::Missing("volume_capabilities"));
    }
    for c in caps {
        match &c.access_type {
            Some(volume_capability::AccessType::Mount(_)) => {}
            Some(volume_capability::AccessType::Block(_)) => {
                return Err(DriverError::Invalid(
                    "block access is not supported: hubfs volumes are filesystems".into(),
                ))
            }
            None => {
                return Err(DriverError::Invalid(
                    "volume capability has no access type".into(),
                ))
            }
        }
        if c.access_mode.as_ref().is_none_or(|m| m.mode == 0) {
            return Err(DriverError::Invalid(
                "volume capability has no access mode".into(),
            ));
        }
    }
    Ok(())
}

fn capacity_of(range: Option<&hubfs_proto::csi::CapacityRange>, default: u64) -> Result<u64> {
    let Some(r) = range else { return Ok(default) };
    if r.required_bytes < 0 || r.limit_bytes < 0 {
        return Err(DriverError::OutOfRange(
            "capacity must not be negative".into(),
        ));
    }
    if r.limit_bytes > 0 && r.required_bytes > r.limit_bytes {
        return Err(DriverError::OutOfRange(format!(
            "required_bytes {} exceeds limit_bytes {}",
            r.required_bytes, r.limit_bytes
        )));
    }
    Ok(match (r.required_bytes as u64, r.limit_bytes as u64) {
        (0, 0) => default,
        (0, limit) => limit.min(default),
        (required, _) => required,
    })
}

impl ControllerService {
    /// A controller without an API server ([`NoCluster`]) on the wall clock.
    pub fn new(shares: Shares, events: Arc<dyn EventSink>) -> Self {
        Self {
            inner: Arc::new(Inner {
                shares,
                inflight: InFlight::default(),
                events,
                claims: Arc::new(NoCluster),
                clock: Arc::new(SystemClock),
            }),
        }
    }

    fn rebuild(self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Arc::try_unwrap(self.inner)
            .unwrap_or_else(|_| panic!("with_* is called before the service is shared"));
        f(&mut inner);
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Reads PVC annotations through `claims` (the Kubernetes API).
    pub fn with_pvc_reader(self, claims: Arc<dyn PvcReader>) -> Self {
        self.rebuild(|i| i.claims = claims)
    }

    /// Takes "now" from `clock`.
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        self.rebuild(|i| i.clock = clock)
    }

    fn now(&self) -> String {
        self.inner
            .clock
            .now()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }

    /// The annotations of the PVC a CreateVolume is for, `None` when there
    /// is nothing to read (no PVC metadata, no API server, the class says
    /// `userAnnotation: ""`): then the home is keyed by the PVC name.
    /// A cluster that cannot answer now is an error the provisioner retries,
    /// never a reason to key a home by the wrong name.
    pub async fn claim_annotations(
        &self,
        r: &CreateVolumeRequest,
    ) -> Result<Option<BTreeMap<String, String>>> {
        let Ok(params) = HomeParams::parse(&r.parameters) else {
            return Ok(None); // create reports the parameter error
        };
        if params.user_annotation.is_empty()
            || VolumeType::from_map(&r.parameters).ok() != Some(VolumeType::Home)
        {
            return Ok(None);
        }
        let get = |k: &str| r.parameters.get(k).filter(|v| !v.is_empty());
        let (Some(namespace), Some(name)) = (get(keys::PVC_NAMESPACE), get(keys::PVC_NAME)) else {
            tracing::warn!("no PVC name in the parameters (is csi-provisioner run with --extra-create-metadata?); the home is keyed by the volume name");
            return Ok(None);
        };
        match self.inner.claims.annotations(namespace, name).await {
            Ok(a) => Ok(Some(a)),
            Err(PvcError::NoCluster) => {
                tracing::warn!(pvc = %format!("{namespace}/{name}"),
                    "no Kubernetes API server: the hub user is taken from the PVC name");
                Ok(None)
            }
            Err(e @ PvcError::Forbidden { .. }) => {
                Err(DriverError::FailedPrecondition(e.to_string()))
            }
            Err(e) => Err(DriverError::Unavailable(e.to_string())),
        }
    }

    /// CreateVolume: the PVC's annotations, then [`ControllerService::provision`].
    pub async fn create(&self, r: CreateVolumeRequest) -> Result<Volume> {
        let annotations = self.claim_annotations(&r).await?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.provision(r, annotations))
            .await
            .map_err(|e| DriverError::FailedPrecondition(format!("CreateVolume panicked: {e}")))?
    }

    /// CreateVolume's body, given the PVC's annotations (if any were read).
    pub fn provision(
        &self,
        r: CreateVolumeRequest,
        annotations: Option<BTreeMap<String, String>>,
    ) -> Result<Volume> {
        if r.name.is_empty() {
            return Err(DriverError::Missing("name"));
        }
        if r.name.chars().any(char::is_control) {
            return Err(DriverError::Invalid(
                "volume name contains a control character".into(),
            ));
        }
        check_capabilities(&r.volume_capabilities)?;
        if VolumeType::from_map(&r.parameters)? == VolumeType::S3 {
            return Err(DriverError::Invalid(
                "s3 volumes are not provisioned: create a static PersistentVolume with volumeAttributes (bucket, prefix, endpoint, region, anonymous)".into(),
            ));
        }
        if r.volume_content_source.is_some() {
            return Err(DriverError::Invalid(
                "cloning and snapshots are not supported".into(),
            ));
        }
        let params = HomeParams::parse(&r.parameters)?;
        let owner = params.owner(&r.name, &r.parameters, annotations.as_ref())?;
        let capacity = capacity_of(r.capacity_range.as_ref(), params.default_quota)?;
        let _guard = self
            .inner
            .inflight
            .begin(&format!("user/{}", owner.user.encoded()))?;
        // A named server's PVC shares its user's home: deleting the server
        // must never archive or delete the user's data.
        let on_delete = match &owner.server {
            Some(server) if params.on_delete != OnDelete::Retain => {
                tracing::info!(user = %owner.user, %server, "named server's volume: the home is retained when it is deleted");
                OnDelete::Retain
            }
            _ => params.on_delete,
        };
        let vol = HomeVolume {
            volume_name: r.name.clone(),
            backend: params.backend.clone(),
            base_path: params.base_path.clone(),
            user: owner.user.clone(),
            on_delete,
        };
        let root = self
            .inner
            .shares
            .root(&vol.backend, &params.mount_options)?;
        let pvc_slug = r
            .parameters
            .get(keys::PVC_NAME)
            .and_then(|p| p.strip_prefix(params.user_prefix.as_str()))
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let adopted = if owner.source == UserSource::Annotation {
            let mut candidates: Vec<String> = Vec::new();
            if owner.server.is_none() {
                candidates.extend(pvc_slug.clone());
            } else if let Some(s) = &pvc_slug {
                let dir = vol.users_dir(&root).join(s);
                if dir.is_dir() && !s.is_empty() {
                    tracing::warn!(user = %owner.user, server = ?owner.server, legacy = %dir.display(),
                        "a named server's home from before is not merged into the user's home; move its files by hand (docs/migration.md)");
                }
            }
            candidates.extend(hubfs_quota::identity::legacy_names(owner.user.name()));
            homes::adopt_legacy(&vol, &root, &candidates)?
        } else {
            Adopted::Nothing
        };
        let old = homes::read_meta(&vol, &root)?;
        if let Some(m) = &old {
            if m.volume_name == r.name && m.capacity_bytes != capacity {
                return Err(DriverError::AlreadyExists(format!(
                    "volume {} already exists with capacity {} bytes, requested {capacity}",
                    r.name, m.capacity_bytes
                )));
            }
        }
        let home = vol.home_dir(&root);
        let created = homes::ensure_home(&home, params.uid, params.gid, params.mode)?;
        let meta = HomeMeta {
            volume_name: r.name.clone(),
            user: vol.user.name().to_owned(),
            capacity_bytes: capacity,
            inode_quota: params.inode_quota,
            pvc_name: r.parameters.get(keys::PVC_NAME).cloned(),
            pvc_namespace: r.parameters.get(keys::PVC_NAMESPACE).cloned(),
            user_from: Some(owner.source.as_str().to_owned()),
            created: old
                .as_ref()
                .map(|m| m.created.clone())
                .unwrap_or_else(|| self.now()),
            updated: self.now(),
        };
        // A named server's volume records the quota only for a user without
        // one: the default server's PVC stays the one quota Events go to.
        let named_server_defers =
            owner.server.is_some() && old.as_ref().is_some_and(|m| m.volume_name != r.name);
        if !named_server_defers
            && old.as_ref().is_none_or(|m| {
                m.volume_name != meta.volume_name
                    || m.capacity_bytes != meta.capacity_bytes
                    || m.inode_quota != meta.inode_quota
                    || m.pvc_name != meta.pvc_name
                    || m.pvc_namespace != meta.pvc_namespace
                    || m.user_from != meta.user_from
            })
        {
            homes::write_meta(&vol, &root, &meta)?;
        }
        if let Some(m) = old.filter(|m| m.volume_name != r.name) {
            tracing::info!(previous = %m.volume_name, "home taken over from an earlier volume");
        }
        tracing::info!(user = %vol.user, server = ?owner.server, user_from = owner.source.as_str(),
            home = %home.display(), created, capacity, "home provisioned");
        let mut ctx = HashMap::from([
            (keys::TYPE.to_owned(), "home".to_owned()),
            (keys::USER.to_owned(), vol.user.name().to_owned()),
            (keys::QUOTA.to_owned(), capacity.to_string()),
            (
                keys::ACCOUNTING.to_owned(),
                params.accounting.as_str().to_owned(),
            ),
            (keys::UID.to_owned(), params.uid.to_string()),
            (keys::GID.to_owned(), params.gid.to_string()),
        ]);
        if !params.mount_options.is_empty() {
            ctx.insert(keys::MOUNT_OPTIONS.to_owned(), params.mount_options.clone());
        }
        for (from, to) in [
            (keys::PVC_NAME, keys::CTX_PVC_NAME),
            (keys::PVC_NAMESPACE, keys::CTX_PVC_NAMESPACE),
        ] {
            if let Some(v) = r.parameters.get(from) {
                ctx.insert(to.to_owned(), v.clone());
            }
        }
        if let Some(pvc) = crate::volume::pvc_of(&r.parameters) {
            let verb = match (&adopted, created) {
                (Adopted::Renamed { from }, _) => format!(
                    "adopted from {}",
                    from.file_name().unwrap_or_default().to_string_lossy()
                ),
                (_, true) => "created".to_owned(),
                (_, false) => "reused".to_owned(),
            };
            let server = owner
                .server
                .as_ref()
                .map(|s| format!(" (server {s:?})"))
                .unwrap_or_default();
            let mut note = format!(
                "home of {}{server} {verb} at {} with a quota of {}",
                vol.user,
                home.display(),
                hubfs_quota::format_size(capacity)
            );
            if let Adopted::Both { legacy } = &adopted {
                note.push_str(&format!(
                    "; an older home exists at {} and was left alone",
                    legacy.display()
                ));
            }
            if owner.source != UserSource::Annotation {
                note.push_str("; keyed by the claim name, not the hub user");
            }
            post_in_background(
                &self.inner.events,
                Notice {
                    regarding: pvc,
                    reason: Reason::HomeProvisioned,
                    note,
                },
            );
        }
        if let Some(n) = params.inode_quota {
            ctx.insert(keys::INODE_QUOTA.to_owned(), n.to_string());
        }
        Ok(Volume {
            capacity_bytes: capacity as i64,
            volume_id: vol.id(),
            volume_context: ctx,
            content_source: None,
            accessible_topology: vec![],
        })
    }

    /// DeleteVolume's body. Unknown ids succeed, as the spec asks.
    pub fn delete(&self, r: DeleteVolumeRequest) -> Result<()> {
        if r.volume_id.is_empty() {
            return Err(DriverError::Missing("volume_id"));
        }
        let vol = match HomeVolume::parse_id(&r.volume_id) {
            Ok(v) => v,
            Err(IdError::Foreign) => {
                tracing::info!("not a hubfs home volume id; nothing to delete");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let _guard = self
            .inner
            .inflight
            .begin(&format!("user/{}", vol.user.encoded()))?;
        if vol.on_delete == OnDelete::Retain {
            tracing::info!(user = %vol.user, "volume deleted, home retained");
            return Ok(());
        }
        let root = self.inner.shares.root(&vol.backend, "")?;
        if let Some(m) = homes::read_meta(&vol, &root)? {
            if m.volume_name != vol.volume_name {
                tracing::warn!(user = %vol.user, owner = %m.volume_name,
                    "home now belongs to another volume; leaving it in place");
                return Ok(());
            }
        }
        let home = vol.home_dir(&root);
        match vol.on_delete {
            OnDelete::Archive => {
                if let Some(dest) = homes::archive_home(&home, self.inner.clock.now())? {
                    tracing::info!(user = %vol.user, archive = %dest.display(), "home archived");
                }
            }
            OnDelete::Delete => {
                if homes::delete_home(&home)? {
                    tracing::info!(user = %vol.user, "home deleted");
                }
            }
            OnDelete::Retain => unreachable!("handled above"),
        }
        let meta = homes::meta_path(&vol, &root);
        match std::fs::remove_file(&meta) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DriverError::io("remove", meta, e)),
        }
    }

    fn existing(&self, id: &str) -> Result<(HomeVolume, std::path::PathBuf)> {
        if id.is_empty() {
            return Err(DriverError::Missing("volume_id"));
        }
        let vol = HomeVolume::parse_id(id)?;
        let root = self.inner.shares.root(&vol.backend, "")?;
        let home = vol.home_dir(&root);
        if !std::fs::symlink_metadata(&home).is_ok_and(|m| m.is_dir()) {
            return Err(DriverError::NotFound(format!(
                "home of {} does not exist",
                vol.user
            )));
        }
        Ok((vol, root))
    }

    /// ValidateVolumeCapabilities's body.
    pub fn validate(
        &self,
        r: ValidateVolumeCapabilitiesRequest,
    ) -> Result<ValidateVolumeCapabilitiesResponse> {
        if r.volume_capabilities.is_empty() {
            // Check the id first so a missing id is reported before missing caps.
            if r.volume_id.is_empty() {
                return Err(DriverError::Missing("volume_id"));
            }
            return Err(DriverError::Missing("volume_capabilities"));
        }
        self.existing(&r.volume_id)?;
        Ok(match check_capabilities(&r.volume_capabilities) {
            Ok(()) => ValidateVolumeCapabilitiesResponse {
                confirmed: Some(Confirmed {
                    volume_context: r.volume_context,
                    volume_capabilities: r.volume_capabilities,
                    parameters: r.parameters,
                    mutable_parameters: r.mutable_parameters,
                }),
                message: String::new(),
            },
            Err(e) => ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: e.to_string(),
            },
        })
    }

    /// ControllerExpandVolume's body: the new capacity becomes the quota.
    pub fn expand(
        &self,
        r: ControllerExpandVolumeRequest,
    ) -> Result<ControllerExpandVolumeResponse> {
        if r.volume_id.is_empty() {
            return Err(DriverError::Missing("volume_id"));
        }
        let range = r
            .capacity_range
            .ok_or(DriverError::Missing("capacity_range"))?;
        let capacity = capacity_of(Some(&range), 0)?;
        if capacity == 0 {
            return Err(DriverError::Invalid(
                "capacity_range asks for no capacity".into(),
            ));
        }
        let (vol, root) = self.existing(&r.volume_id)?;
        let _guard = self
            .inner
            .inflight
            .begin(&format!("user/{}", vol.user.encoded()))?;
        let mut meta = homes::read_meta(&vol, &root)?.unwrap_or_else(|| HomeMeta {
            volume_name: vol.volume_name.clone(),
            user: vol.user.name().to_owned(),
            capacity_bytes: 0,
            inode_quota: None,
            pvc_name: None,
            pvc_namespace: None,
            user_from: None,
            created: self.now(),
            updated: self.now(),
        });
        let before = meta.capacity_bytes;
        if before != capacity {
            meta.capacity_bytes = capacity;
            meta.updated = self.now();
            homes::write_meta(&vol, &root, &meta)?;
        }
        tracing::info!(user = %vol.user, before, after = capacity, "quota changed");
        Ok(ControllerExpandVolumeResponse {
            capacity_bytes: capacity as i64,
            node_expansion_required: false,
        })
    }
}

fn unimplemented<T>(what: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!(
        "{what} is not supported by hubfs"
    )))
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        req: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        let r = req.into_inner();
        let span = info_span!("CreateVolume", volume_name = %r.name);
        let annotations = self
            .claim_annotations(&r)
            .instrument(span.clone())
            .await
            .map_err(|e| {
                span.in_scope(|| tracing::warn!(error = %e, "cannot read the PVC"));
                Status::from(e)
            })?;
        let this = self.clone();
        let volume = blocking(span, move || this.provision(r, annotations)).await?;
        Ok(Response::new(CreateVolumeResponse {
            volume: Some(volume),
        }))
    }

    async fn delete_volume(
        &self,
        req: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        let r = req.into_inner();
        let span = info_span!("DeleteVolume", volume_id = %r.volume_id);
        let this = self.clone();
        blocking(span, move || this.delete(r)).await?;
        Ok(Response::new(DeleteVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        req: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        let r = req.into_inner();
        let span = info_span!("ValidateVolumeCapabilities", volume_id = %r.volume_id);
        let this = self.clone();
        Ok(Response::new(
            blocking(span, move || this.validate(r)).await?,
        ))
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        use controller_service_capability::{rpc::Type, Rpc, Type as Cap};
        let cap = |t: Type| ControllerServiceCapability {
            r#type: Some(Cap::Rpc(Rpc { r#type: t as i32 })),
        };
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities: vec![cap(Type::CreateDeleteVolume), cap(Type::ExpandVolume)],
        }))
    }

    async fn controller_expand_volume(
        &self,
        req: Request<ControllerExpandVolumeRequest>,
    ) -> Result<Response<ControllerExpandVolumeResponse>, Status> {
        let r = req.into_inner();
        let span = info_span!("ControllerExpandVolume", volume_id = %r.volume_id);
        let this = self.clone();
        Ok(Response::new(blocking(span, move || this.expand(r)).await?))
    }

    async fn controller_publish_volume(
        &self,
        _: Request<ControllerPublishVolumeRequest>,
    ) -> Result<Response<ControllerPublishVolumeResponse>, Status> {
        unimplemented("ControllerPublishVolume")
    }
    async fn controller_unpublish_volume(
        &self,
        _: Request<ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<ControllerUnpublishVolumeResponse>, Status> {
        unimplemented("ControllerUnpublishVolume")
    }
    async fn list_volumes(
        &self,
        _: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesResponse>, Status> {
        unimplemented("ListVolumes")
    }
    async fn get_capacity(
        &self,
        _: Request<GetCapacityRequest>,
    ) -> Result<Response<GetCapacityResponse>, Status> {
        unimplemented("GetCapacity")
    }
    async fn create_snapshot(
        &self,
        _: Request<CreateSnapshotRequest>,
    ) -> Result<Response<CreateSnapshotResponse>, Status> {
        unimplemented("CreateSnapshot")
    }
    async fn delete_snapshot(
        &self,
        _: Request<DeleteSnapshotRequest>,
    ) -> Result<Response<DeleteSnapshotResponse>, Status> {
        unimplemented("DeleteSnapshot")
    }
    async fn list_snapshots(
        &self,
        _: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        unimplemented("ListSnapshots")
    }
    async fn controller_get_volume(
        &self,
        _: Request<ControllerGetVolumeRequest>,
    ) -> Result<Response<ControllerGetVolumeResponse>, Status> {
        unimplemented("ControllerGetVolume")
    }
    async fn controller_modify_volume(
        &self,
        _: Request<ControllerModifyVolumeRequest>,
    ) -> Result<Response<ControllerModifyVolumeResponse>, Status> {
        unimplemented("ControllerModifyVolume")
    }
}

#[cfg(test)]
mod tests;
