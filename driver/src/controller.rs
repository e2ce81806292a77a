//! The CSI Controller service: provisioning homes as directories on a share.
//!
//! CreateVolume turns a PVC of a `type: home` StorageClass into
//! `<share>/<basePath>/<encoded user>` owned by the notebook uid/gid, and
//! records the PVC capacity as the user's quota. DeleteVolume never destroys
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
use tonic::{Request, Response, Status};
use tracing::info_span;

use crate::error::{DriverError, Result};
use crate::homes::{self, HomeMeta};
use crate::inflight::InFlight;
use crate::server::blocking;
use crate::share::Shares;
use crate::volume::{keys, HomeParams, HomeVolume, IdError, OnDelete, VolumeType};
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

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl ControllerService {
    pub fn new(shares: Shares, events: Arc<dyn EventSink>) -> Self {
        Self {
            inner: Arc::new(Inner {
                shares,
                inflight: InFlight::default(),
                events,
            }),
        }
    }

    /// CreateVolume's body.
    pub fn create(&self, r: CreateVolumeRequest) -> Result<Volume> {
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
        let user = params.user_key(&r.name, &r.parameters)?;
        let capacity = capacity_of(r.capacity_range.as_ref(), params.default_quota)?;
        let _guard = self
            .inner
            .inflight
            .begin(&format!("user/{}", user.encoded()))?;
        let vol = HomeVolume {
            volume_name: r.name.clone(),
            backend: params.backend.clone(),
            base_path: params.base_path.clone(),
            user,
            on_delete: params.on_delete,
        };
        let root = self
            .inner
            .shares
            .root(&vol.backend, &params.mount_options)?;
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
            created: old.as_ref().map(|m| m.created.clone()).unwrap_or_else(now),
            updated: now(),
        };
        if old.as_ref().is_none_or(|m| {
            m.volume_name != meta.volume_name
                || m.capacity_bytes != meta.capacity_bytes
                || m.inode_quota != meta.inode_quota
                || m.pvc_name != meta.pvc_name
                || m.pvc_namespace != meta.pvc_namespace
        }) {
            homes::write_meta(&vol, &root, &meta)?;
        }
        if let Some(m) = old.filter(|m| m.volume_name != r.name) {
            tracing::info!(previous = %m.volume_name, "home taken over from an earlier volume");
        }
        tracing::info!(user = %vol.user, home = %home.display(), created, capacity, "home provisioned");
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
            let verb = if created { "created" } else { "reused" };
            post_in_background(
                &self.inner.events,
                Notice {
                    regarding: pvc,
                    reason: Reason::HomeProvisioned,
                    note: format!(
                        "home of {} {verb} at {} with a quota of {}",
                        vol.user,
                        home.display(),
                        hubfs_quota::format_size(capacity)
                    ),
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
                if let Some(dest) = homes::archive_home(&home, chrono::Utc::now())? {
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
            created: now(),
            updated: now(),
        });
        let before = meta.capacity_bytes;
        if before != capacity {
            meta.capacity_bytes = capacity;
            meta.updated = now();
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
        let this = self.clone();
        let volume = blocking(span, move || this.create(r)).await?;
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
mod tests {
    use super::*;
    use crate::mounter::FakeMounter;
    use hubfs_proto::csi::{volume_capability::AccessMode, CapacityRange};
    use hubfs_quota::events::FakeEventSink;
    use tonic::Code;

    fn service(root: &std::path::Path) -> (ControllerService, Arc<FakeEventSink>) {
        let events = Arc::new(FakeEventSink::default());
        let shares = Shares::new(
            Arc::new(FakeMounter::default()),
            root.join("state"),
            vec![root.to_owned()],
        );
        (ControllerService::new(shares, events.clone()), events)
    }

    fn mount_cap() -> VolumeCapability {
        VolumeCapability {
            access_type: Some(volume_capability::AccessType::Mount(Default::default())),
            access_mode: Some(AccessMode { mode: 5 }),
        }
    }

    fn create(root: &std::path::Path, name: &str, bytes: i64) -> CreateVolumeRequest {
        CreateVolumeRequest {
            name: name.into(),
            capacity_range: Some(CapacityRange {
                required_bytes: bytes,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![mount_cap()],
            parameters: HashMap::from([
                ("root".into(), root.join("share").display().to_string()),
                (keys::PVC_NAME.into(), "claim-erin".into()),
                (keys::PVC_NAMESPACE.into(), "jhub".into()),
            ]),
            ..Default::default()
        }
    }

    fn code(e: DriverError) -> Code {
        Status::from(e).code()
    }

    #[test]
    fn validate_confirms_mounts_and_explains_block() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("share")).unwrap();
        let (c, _) = service(d.path());
        let v = c.create(create(d.path(), "pvc-e", 1 << 20)).unwrap();
        let ok = c
            .validate(ValidateVolumeCapabilitiesRequest {
                volume_id: v.volume_id.clone(),
                volume_capabilities: vec![mount_cap()],
                ..Default::default()
            })
            .unwrap();
        assert!(ok.confirmed.is_some());
        let block = VolumeCapability {
            access_type: Some(volume_capability::AccessType::Block(Default::default())),
            access_mode: Some(AccessMode { mode: 1 }),
        };
        let no = c
            .validate(ValidateVolumeCapabilitiesRequest {
                volume_id: v.volume_id.clone(),
                volume_capabilities: vec![block],
                ..Default::default()
            })
            .unwrap();
        assert!(
            no.confirmed.is_none() && no.message.contains("block"),
            "{}",
            no.message
        );
        let missing = |id: &str, caps: Vec<VolumeCapability>| {
            c.validate(ValidateVolumeCapabilitiesRequest {
                volume_id: id.into(),
                volume_capabilities: caps,
                ..Default::default()
            })
            .map(|_| ())
            .unwrap_err()
        };
        assert_eq!(code(missing("", vec![mount_cap()])), Code::InvalidArgument);
        assert_eq!(code(missing(&v.volume_id, vec![])), Code::InvalidArgument);
        assert_eq!(
            code(missing("foreign-id", vec![mount_cap()])),
            Code::NotFound
        );
        std::fs::remove_dir(d.path().join("share/users/erin")).unwrap();
        assert_eq!(
            code(missing(&v.volume_id, vec![mount_cap()])),
            Code::NotFound
        );
    }

    #[test]
    fn expand_changes_the_recorded_quota() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("share")).unwrap();
        let (c, _) = service(d.path());
        let v = c.create(create(d.path(), "pvc-e", 1 << 20)).unwrap();
        let r = |bytes: i64| ControllerExpandVolumeRequest {
            volume_id: v.volume_id.clone(),
            capacity_range: Some(CapacityRange {
                required_bytes: bytes,
                limit_bytes: 0,
            }),
            ..Default::default()
        };
        assert_eq!(c.expand(r(5 << 20)).unwrap().capacity_bytes, 5 << 20);
        let vol = HomeVolume::parse_id(&v.volume_id).unwrap();
        let meta = homes::read_meta(&vol, &d.path().join("share"))
            .unwrap()
            .unwrap();
        assert_eq!(meta.capacity_bytes, 5 << 20);
        assert_eq!(meta.pvc_name.as_deref(), Some("claim-erin"));
        assert_eq!(code(c.expand(r(0)).unwrap_err()), Code::InvalidArgument);
        assert_eq!(code(c.expand(r(-1)).unwrap_err()), Code::OutOfRange);
        let mut no_range = r(1);
        no_range.capacity_range = None;
        assert_eq!(code(c.expand(no_range).unwrap_err()), Code::InvalidArgument);
        let mut other = r(1);
        other.volume_id = "foreign".into();
        assert_eq!(code(c.expand(other).unwrap_err()), Code::NotFound);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn create_is_idempotent_and_tells_the_pvc() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("share")).unwrap();
        let (c, events) = service(d.path());
        let (c2, root) = (c.clone(), d.path().to_owned());
        let (a, b, conflict, busy) = tokio::task::spawn_blocking(move || {
            let a = c2.create(create(&root, "pvc-e", 1 << 20)).unwrap();
            let b = c2.create(create(&root, "pvc-e", 1 << 20)).unwrap();
            let conflict = c2.create(create(&root, "pvc-e", 2 << 20)).unwrap_err();
            let _g = c2.inner.inflight.begin("user/erin").unwrap();
            let busy = c2.create(create(&root, "pvc-e", 1 << 20)).unwrap_err();
            (a, b, conflict, busy)
        })
        .await
        .unwrap();
        assert_eq!(a.volume_id, b.volume_id);
        assert_eq!(code(conflict), Code::AlreadyExists);
        assert_eq!(code(busy), Code::Aborted);
        assert_eq!(a.volume_context["pvcName"], "claim-erin");
        for _ in 0..200 {
            if events.posted().len() >= 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let posted = events.posted();
        assert_eq!(posted.len(), 2, "one notice per successful CreateVolume");
        assert!(posted
            .iter()
            .all(|n| n.reason == hubfs_quota::events::Reason::HomeProvisioned));
        // Background posts land in any order.
        let mut created: Vec<bool> = posted.iter().map(|n| n.note.contains("created")).collect();
        created.sort_unstable();
        assert_eq!(
            created,
            [false, true],
            "one created, one reused: {posted:?}"
        );
        let _ = c;
    }
}
