//! Node side of home volumes.
//!
//! Stage: make the share reachable (NFS mounted once per node) and bind the
//! user's directory onto kubelet's staging path. Publish: present the staged
//! home at the pod's target, by bind mount or through the home FUSE layer
//! (`accounting: fuse`). Stats: the accounted usage against the quota, so
//! `kubectl describe` and kubelet metrics agree with the quota controller.

use std::collections::HashMap;
use std::path::Path;

use hubfs_proto::csi::{
    volume_usage::Unit, NodeGetVolumeStatsResponse, VolumeCondition, VolumeUsage,
};

use super::{publish_server, NodeService};
use crate::error::{DriverError, Result};
use crate::homes;
use crate::mounter::{Kind, ServerSpec};
use crate::volume::{keys, Accounting, HomeVolume, IdError};

fn parse(id: &str) -> Result<HomeVolume> {
    HomeVolume::parse_id(id).map_err(DriverError::from)
}

/// Binds the user's home onto `staging`.
pub(super) fn stage(
    node: &NodeService,
    id: &str,
    ctx: &HashMap<String, String>,
    staging: &Path,
) -> Result<()> {
    let vol = parse(id)?;
    let opts = ctx
        .get(keys::MOUNT_OPTIONS)
        .map(String::as_str)
        .unwrap_or("");
    let root = node.inner.shares.root(&vol.backend, opts)?;
    let home = vol.home_dir(&root);
    if !std::fs::symlink_metadata(&home).is_ok_and(|m| m.is_dir()) {
        return Err(DriverError::NotFound(format!(
            "the home of {} ({}) does not exist on the share",
            vol.user,
            home.display()
        )));
    }
    let m = &node.inner.mounts;
    if let Some(existing) = m.mounted_at(staging)? {
        let want = m.bind_identity(&home)?;
        if existing.device == want.device && existing.root == want.root {
            return Ok(());
        }
        return Err(DriverError::AlreadyExists(format!(
            "{} is already mounted from {}:{}",
            staging.display(),
            existing.source,
            existing.root.display()
        )));
    }
    std::fs::create_dir_all(staging).map_err(|e| DriverError::io("create", staging, e))?;
    node.inner.shares.acquire(&vol.backend, staging)?;
    m.bind(&home, staging, false)?;
    tracing::info!(user = %vol.user, home = %home.display(), "home staged");
    Ok(())
}

/// Releases the share claim of a staged home (after the staging unmount).
pub(super) fn release_share(node: &NodeService, id: &str, staging: &Path) -> Result<()> {
    match HomeVolume::parse_id(id) {
        Ok(vol) => node.inner.shares.release(&vol.backend, staging),
        Err(IdError::Foreign) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Presents the staged home at `target`. Returns what to tell the pod's
/// events when something was mounted, `None` when it already was.
pub(super) fn publish(
    node: &NodeService,
    id: &str,
    ctx: &HashMap<String, String>,
    staging: &Path,
    target: &Path,
    read_only: bool,
) -> Result<Option<String>> {
    let vol = parse(id)?;
    let m = &node.inner.mounts;
    if m.mounted_at(staging)?.is_none() {
        return Err(DriverError::FailedPrecondition(format!(
            "volume is not staged at {}; NodeStageVolume must come first",
            staging.display()
        )));
    }
    let accounting = ctx
        .get(keys::ACCOUNTING)
        .map(|a| Accounting::parse(a))
        .transpose()?
        .unwrap_or_default();
    // A read-only home cannot grow: nothing to account, a bind does.
    let fuse = accounting == Accounting::Fuse && !read_only;
    if fuse {
        // The mounter knows whether the target already shows this home.
        let spec = home_layer(node, id, &vol, ctx, staging)?;
        if !publish_server(node, &spec, target, false, None)? {
            return Ok(None);
        }
    } else {
        if let Some(existing) = m.mounted_at(target)? {
            let want = m.bind_identity(staging)?;
            if existing.device == want.device
                && existing.root == want.root
                && existing.read_only == read_only
            {
                return Ok(None);
            }
            return Err(DriverError::AlreadyExists(format!(
                "{} is already published with a different source or access mode",
                target.display()
            )));
        }
        let created = !target.exists();
        std::fs::create_dir_all(target).map_err(|e| DriverError::io("create", target, e))?;
        if let Err(e) = m.bind(staging, target, read_only) {
            if created {
                let _ = std::fs::remove_dir(target);
            }
            return Err(e.into());
        }
    }
    tracing::info!(user = %vol.user, read_only, accounting = accounting.as_str(), "home published");
    let quota = ctx.get(keys::QUOTA).and_then(|q| q.parse::<u64>().ok());
    let used = node.inner.stats.last(id).map(|u| u.bytes);
    let endpoint = node.inner.cfg.quota_endpoint.as_deref();
    let answer = super::mounted::ask_controller(endpoint, vol.user.name());
    let at = super::mounted::AtMount::new(vol.user.name(), answer, used, quota);
    Ok(Some(at.note(read_only)))
}

/// The `hubfs mount home` server of a staged home: one FUSE session per
/// home volume on the node (every pod of it shares one ledger), accounting
/// writes and enforcing the quota.
fn home_layer(
    node: &NodeService,
    id: &str,
    vol: &HomeVolume,
    ctx: &HashMap<String, String>,
    staging: &Path,
) -> Result<ServerSpec> {
    let quota = match ctx.get(keys::QUOTA).and_then(|q| q.parse::<u64>().ok()) {
        Some(q) => q,
        None => {
            let root = node.inner.shares.root(&vol.backend, "")?;
            homes::read_meta(vol, &root)?
                .map(|m| m.capacity_bytes)
                .ok_or_else(|| {
                    DriverError::FailedPrecondition(format!(
                        "no quota is recorded for {}",
                        vol.user
                    ))
                })?
        }
    };
    let mut args: Vec<String> = ["mount", "home", "--foreground", "--user", vol.user.name()]
        .into_iter()
        .map(str::to_owned)
        .collect();
    args.extend([
        "--quota".into(),
        quota.to_string(),
        "--node-id".into(),
        node.inner.cfg.node_id.clone(),
    ]);
    if let Some(n) = ctx.get(keys::INODE_QUOTA) {
        args.extend(["--inode-quota".into(), n.clone()]);
    }
    if let Some(ep) = &node.inner.cfg.quota_endpoint {
        args.extend(["--report-to".into(), ep.clone()]);
    }
    args.push(staging.to_string_lossy().into_owned());
    Ok(ServerSpec {
        id: server_id(id),
        kind: Kind::Home,
        args,
        what: format!("the home layer of {}", vol.user),
    })
}

/// The id of the home layer server of volume `id` (one per home volume on
/// the node).
pub(super) fn server_id(id: &str) -> String {
    format!("home-{}", crate::digest::short_hex(id.as_bytes(), 10))
}

/// Whether a server id is a home layer's ([`server_id`]).
pub(super) fn is_server_id(server: &str) -> bool {
    server.starts_with("home-")
}

/// Why a path cannot be used, in the words kubelet shows to people.
/// `statfs` reaches the filesystem itself (a FUSE daemon, the NFS server)
/// where `stat` may be answered from a cache.
fn condition_of(path: &Path) -> Option<String> {
    use nix::errno::Errno;
    match nix::sys::statvfs::statvfs(path) {
        Ok(_) => None,
        Err(Errno::ENOTCONN | Errno::ECONNABORTED) => {
            Some("the filesystem process died (ENOTCONN); the mount must be recreated".into())
        }
        Err(Errno::ESTALE) => {
            Some("stale file handle (ESTALE): the share was changed under the mount".into())
        }
        Err(Errno::EIO) => Some("I/O error (EIO) on the volume".into()),
        Err(e) => Some(format!("volume path is unusable: {e}")),
    }
}

/// Usage and quota of a published home.
pub(super) fn stats(
    node: &NodeService,
    id: &str,
    path: &Path,
) -> Result<NodeGetVolumeStatsResponse> {
    let vol = parse(id)?;
    let mut abnormal = condition_of(path);
    if abnormal.is_none() && node.inner.mounts.mounted_at(path)?.is_none() {
        abnormal = Some("volume path is not mounted".into());
    }
    let usage = if abnormal.is_none() {
        node.inner.stats.get(id, path)
    } else {
        node.inner.stats.last(id)
    };
    // The quota lives on the share; an unreadable description means "unknown", not zero.
    let quota = node
        .inner
        .shares
        .root(&vol.backend, "")
        .ok()
        .and_then(|root| homes::read_meta(&vol, &root).ok().flatten())
        .map(|m| m.capacity_bytes);
    let mut out = Vec::new();
    if let Some(u) = usage {
        let total = quota.unwrap_or(0);
        out.push(VolumeUsage {
            available: total.saturating_sub(u.bytes) as i64,
            total: total as i64,
            used: u.bytes as i64,
            unit: Unit::Bytes as i32,
        });
        let (itotal, ifree) = match nix::sys::statvfs::statvfs(path) {
            Ok(s) => (s.files() as i64, s.files_available() as i64),
            Err(_) => (0, 0),
        };
        out.push(VolumeUsage {
            available: ifree,
            total: itotal,
            used: u.inodes as i64,
            unit: Unit::Inodes as i32,
        });
    }
    Ok(NodeGetVolumeStatsResponse {
        usage: out,
        volume_condition: Some(VolumeCondition {
            abnormal: abnormal.is_some(),
            message: abnormal.unwrap_or_else(|| "ok".into()),
        }),
    })
}
