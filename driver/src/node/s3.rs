//! Node side of S3 volumes (static PVs with `type: s3` volume attributes).
//!
//! Every bucket/prefix gets ONE FUSE mount per node, under the state dir,
//! served by a `hubfs mount s3 --foreground` process that the keeper (the
//! `hubfs mounter`) starts and watches; each pod gets a read-only bind of
//! it. The keeper records the pods' targets, so the last unpublish stops the
//! server even after any restart, and a server that dies is replaced and
//! bound onto every target again without a CSI call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hubfs_fuse::s3::fs::BucketSource;
use hubfs_fuse::s3::session::MountOptions;
use hubfs_proto::csi::{
    NodeGetVolumeStatsResponse, NodePublishVolumeRequest, NodeStageVolumeRequest, VolumeCondition,
};

use super::{publish_server, NodeService};
use crate::error::{DriverError, Result};
use crate::keeper::{Kind, ServerSpec};

fn flag(ctx: &HashMap<String, String>, key: &str) -> Result<bool> {
    match ctx
        .get(key)
        .map(|s| s.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("false") | Some("no") | Some("0") => Ok(false),
        Some("true") | Some("yes") | Some("1") => Ok(true),
        Some(other) => Err(DriverError::Invalid(format!(
            "volume attribute {key} must be true or false, got {other:?}"
        ))),
    }
}

fn num(ctx: &HashMap<String, String>, key: &str, default: u32) -> Result<u32> {
    ctx.get(key).map_or(Ok(default), |v| {
        v.parse().map_err(|_| {
            DriverError::Invalid(format!(
                "volume attribute {key} must be a number, got {v:?}"
            ))
        })
    })
}

/// Builds the mount from volume attributes: bucket, prefix, endpoint, region,
/// anonymous, uid, gid.
pub fn options(ctx: &HashMap<String, String>, mountpoint: PathBuf) -> Result<MountOptions> {
    let bucket = ctx
        .get("bucket")
        .filter(|b| !b.is_empty())
        .ok_or_else(|| DriverError::Invalid("s3 volume attributes need `bucket`".into()))?;
    let prefix = ctx.get("prefix").map(String::as_str).unwrap_or("");
    if prefix.split('/').any(|c| c == "..") || prefix.contains('\0') {
        return Err(DriverError::Invalid(format!(
            "s3 prefix {prefix:?} must not contain `..` or NUL"
        )));
    }
    let spec = if prefix.is_empty() {
        bucket.clone()
    } else {
        format!("{bucket}:{prefix}")
    };
    let source = BucketSource::parse(&spec).map_err(DriverError::Invalid)?;
    let mut o = MountOptions::new(vec![source], mountpoint);
    if let Some(ep) = ctx.get("endpoint").filter(|e| !e.is_empty()) {
        if !(ep.starts_with("http://") || ep.starts_with("https://"))
            || ep.contains(char::is_whitespace)
        {
            return Err(DriverError::Invalid(format!(
                "s3 endpoint must be an http(s) URL, got {ep:?}"
            )));
        }
        o.s3.endpoint_url = Some(ep.clone());
        // Custom endpoints (Garage, MinIO, proxies) rarely do virtual-host buckets.
        o.s3.force_path_style = true;
    }
    if let Some(r) = ctx.get("region").filter(|r| !r.is_empty()) {
        if !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(DriverError::Invalid(format!(
                "s3 region {r:?} is not a region name"
            )));
        }
        o.s3.region = Some(r.clone());
    }
    o.s3.anonymous = flag(ctx, "anonymous")?;
    o.uid = num(ctx, "uid", crate::volume::DEFAULT_UID)?;
    o.gid = num(ctx, "gid", crate::volume::DEFAULT_GID)?;
    // Pods run as other users than the driver.
    o.allow_other = true;
    Ok(o)
}

/// A stable name for one bucket/prefix/endpoint combination.
fn mount_key(o: &MountOptions) -> String {
    let args: Vec<String> = o
        .args()
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // The last argument is the mountpoint, which derives from the key itself.
    let text = args[..args.len() - 1].join("\0");
    crate::digest::short_hex(text.as_bytes(), 10)
}

pub(super) fn stage(
    _node: &NodeService,
    r: &NodeStageVolumeRequest,
    _staging: &Path,
) -> Result<()> {
    // Nothing to stage per volume: the shared mount is made at publish. Still
    // check the attributes, so a broken PV fails here with a clear message.
    options(&r.volume_context, PathBuf::from("/")).map(|_| ())
}

/// The keeper's description of the shared mount for `opts`.
fn server(opts: &MountOptions) -> ServerSpec {
    let mut args: Vec<String> = opts
        .args()
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // The keeper appends the mountpoint, which it chooses.
    args.pop();
    ServerSpec {
        id: mount_key(opts),
        kind: Kind::S3,
        args,
        what: format!("the S3 mount of {}", opts.sources[0].bucket),
    }
}

pub(super) fn publish(
    node: &NodeService,
    r: &NodePublishVolumeRequest,
    target: &Path,
    _ro: bool,
) -> Result<Option<String>> {
    let opts = options(&r.volume_context, PathBuf::new())?;
    let spec = server(&opts);
    // Buckets are read-mostly data shared by every pod on the node: always read-only here.
    if !publish_server(node, &spec, target, true)? {
        return Ok(None);
    }
    let src = &opts.sources[0];
    tracing::info!(bucket = %src.bucket, target = %target.display(), "S3 bucket published");
    Ok(Some(format!(
        "S3 bucket {}{} mounted read-only",
        src.bucket,
        if src.prefix.is_empty() {
            String::new()
        } else {
            format!(" (prefix {})", src.prefix)
        }
    )))
}

/// Condition of an S3 publication: usage is not meaningful for a bucket.
pub(super) fn stats(path: &Path) -> Result<NodeGetVolumeStatsResponse> {
    if std::fs::symlink_metadata(path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
        return Err(DriverError::NotFound(format!(
            "volume path {} does not exist",
            path.display()
        )));
    }
    let message = match nix::sys::statvfs::statvfs(path) {
        // ECONNABORTED while the kernel tears the connection down, ENOTCONN after.
        Err(nix::errno::Errno::ENOTCONN | nix::errno::Errno::ECONNABORTED) => Some(
            "the S3 filesystem process died (ENOTCONN); the hubfs mounter replaces it within seconds"
                .to_owned(),
        ),
        Err(e) => Some(format!("volume path is unusable: {e}")),
        Ok(_) => None,
    };
    Ok(NodeGetVolumeStatsResponse {
        usage: vec![],
        volume_condition: Some(VolumeCondition {
            abnormal: message.is_some(),
            message: message.unwrap_or_else(|| "ok".into()),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn attributes_become_mount_options() {
        let o = options(
            &ctx(&[
                ("bucket", "stpubdata"),
                ("prefix", "hst/public"),
                ("region", "us-east-1"),
                ("anonymous", "true"),
            ]),
            "/m".into(),
        )
        .unwrap();
        assert_eq!(o.sources[0].bucket, "stpubdata");
        assert_eq!(o.sources[0].prefix, "hst/public/");
        assert!(o.s3.anonymous && o.allow_other);
        assert_eq!((o.uid, o.gid), (1000, 100));
        assert!(!o.s3.force_path_style);
        let o = options(
            &ctx(&[("bucket", "b12"), ("endpoint", "http://127.0.0.1:3900")]),
            "/m".into(),
        )
        .unwrap();
        assert!(o.s3.force_path_style);
    }

    #[test]
    fn bad_attributes_are_named() {
        for (kv, word) in [
            (&[][..], "bucket"),
            (&[("bucket", "B!")][..], "bucket"),
            (&[("bucket", "bkt"), ("prefix", "../x")][..], "prefix"),
            (
                &[("bucket", "bkt"), ("endpoint", "ftp://x")][..],
                "endpoint",
            ),
            (&[("bucket", "bkt"), ("region", "us east")][..], "region"),
            (
                &[("bucket", "bkt"), ("anonymous", "maybe")][..],
                "anonymous",
            ),
            (&[("bucket", "bkt"), ("uid", "root")][..], "uid"),
        ] {
            let e = options(&ctx(kv), "/m".into()).unwrap_err().to_string();
            assert!(e.contains(word), "{kv:?}: {e}");
        }
    }

    #[test]
    fn one_key_per_bucket_prefix_and_endpoint() {
        let k = |kv: &[(&str, &str)]| mount_key(&options(&ctx(kv), "/x".into()).unwrap());
        assert_eq!(k(&[("bucket", "bkt")]), k(&[("bucket", "bkt")]));
        assert_ne!(
            k(&[("bucket", "bkt")]),
            k(&[("bucket", "bkt"), ("prefix", "p")])
        );
        assert_ne!(
            k(&[("bucket", "bkt")]),
            k(&[("bucket", "bkt"), ("endpoint", "http://h:1")])
        );
    }
}
