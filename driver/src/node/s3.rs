//! Node side of S3 volumes (static PVs with `type: s3` volume attributes).
//!
//! Every bucket/prefix gets ONE FUSE mount per node, under the state dir,
//! served by a `hubfs mount s3 --foreground` process that the mounter (the
//! `hubfs mounter`) starts and watches; each pod gets a read-only bind of
//! it. The mounter records the pods' targets, so the last unpublish stops the
//! server even after any restart, and a server that dies is replaced and
//! bound onto every target again without a CSI call.
//!
//! Who the bucket is read as: the volume's own identity when its PV has a
//! `nodePublishSecretRef` (keys `accessKeyID`, `secretAccessKey`, optional
//! `sessionToken`), unsigned requests with `anonymous: "true"`, else the
//! node's default chain (IRSA, instance role, the mounter's environment).
//! Mounts are shared only between volumes with the same bucket, prefix,
//! settings **and** identity: an identity's server id carries an HMAC of
//! the credentials under a node-local key (`<state>/s3-identity.key`), so
//! the id names no key and a pod asking with another identity never lands
//! on its server.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hubfs_fuse::s3::credentials::StaticCredentials;
use hubfs_fuse::s3::fs::BucketSource;
use hubfs_fuse::s3::session::MountOptions;
use hubfs_proto::csi::{
    NodeGetVolumeStatsResponse, NodePublishVolumeRequest, NodeStageVolumeRequest, VolumeCondition,
};

use super::{publish_server, NodeService};
use crate::error::{DriverError, Result};
use crate::mounter::secrets::CREDENTIALS_ARGS;
use crate::mounter::{Kind, ServerSpec};

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

/// Who a volume's bucket is read as.
#[derive(Debug, PartialEq, Eq)]
pub enum Identity {
    /// The node's default chain: IRSA, the instance role, the mounter's env.
    Node,
    /// Unsigned requests (`anonymous: "true"`): public buckets.
    Anonymous,
    /// The volume's own credentials (its `nodePublishSecretRef`).
    Own(StaticCredentials),
}

/// The identity a publish asks for. Errors name the secret's key, never a value.
pub fn identity(
    ctx: &HashMap<String, String>,
    secrets: &HashMap<String, String>,
) -> Result<Identity> {
    let anonymous = flag(ctx, "anonymous")?;
    let own = StaticCredentials::from_secret(secrets)
        .map_err(|e| DriverError::Invalid(format!("the volume's nodePublishSecretRef: {e}")))?;
    match (anonymous, own) {
        (true, Some(_)) => Err(DriverError::Invalid(
            "an anonymous S3 volume must not have a nodePublishSecretRef (drop one of them)".into(),
        )),
        (true, None) => Ok(Identity::Anonymous),
        (false, Some(c)) => Ok(Identity::Own(c)),
        (false, None) => Ok(Identity::Node),
    }
}

/// The node-local key of identity digests: 32 random bytes made once, root
/// only. Losing it only makes later publications start new servers.
fn node_key(state_dir: &Path) -> Result<Vec<u8>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = state_dir.join("s3-identity.key");
    match std::fs::read(&path) {
        Ok(k) if k.len() == 32 => return Ok(k),
        Ok(_) => {
            tracing::warn!(file = %path.display(), "the identity key is damaged; making a new one");
            let _ = std::fs::remove_file(&path);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(DriverError::io("read", &path, e)),
    }
    std::fs::create_dir_all(state_dir).map_err(|e| DriverError::io("create", state_dir, e))?;
    let key: [u8; 32] = rand::random();
    let tmp = state_dir.join(format!(".s3-identity.key.{}", hex::encode(&key[..8])));
    let made = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&key).and_then(|()| f.sync_all()))
        // Never replacing: of publishes racing to make it, the first wins
        // and the others read its key.
        .and_then(|()| match std::fs::hard_link(&tmp, &path) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            r => r,
        });
    let _ = std::fs::remove_file(&tmp);
    made.map_err(|e| DriverError::io("write", &path, e))?;
    std::fs::read(&path).map_err(|e| DriverError::io("read", &path, e))
}

/// A keyed digest of an identity: equal for equal credentials on a node,
/// unrelated to the key id or the secret for anyone without the node key.
fn identity_digest(key: &[u8], c: &StaticCredentials) -> String {
    let text = format!(
        "hubfs-s3-identity\0{}\0{}\0{}",
        c.access_key_id,
        c.secret_access_key,
        c.session_token.as_deref().unwrap_or("")
    );
    crate::digest::keyed_hex(key, text.as_bytes(), 8)
}

/// A stable name for one bucket/prefix/endpoint combination, followed by
/// the identity's digest when the volume has its own.
fn mount_key(o: &MountOptions, identity: Option<&str>) -> String {
    let args: Vec<String> = o
        .args()
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // The last argument is the mountpoint, which derives from the key itself.
    let text = args[..args.len() - 1].join("\0");
    let base = crate::digest::short_hex(text.as_bytes(), 10);
    match identity {
        Some(d) => format!("{base}-{d}"),
        None => base,
    }
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

/// The mounter's description of the shared mount for `opts`, read with the
/// identity whose digest is `identity` (the default chain or anonymous: none).
fn server(opts: &MountOptions, identity: Option<&str>) -> ServerSpec {
    let mut args: Vec<String> = opts
        .args()
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // The mounter appends the mountpoint, which it chooses.
    args.pop();
    if identity.is_some() {
        // After `mount s3 --foreground`: the mounter pipes the credentials in.
        args.splice(3..3, CREDENTIALS_ARGS.map(String::from));
    }
    ServerSpec {
        id: mount_key(opts, identity),
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
    let who = identity(&r.volume_context, &r.secrets)?;
    // Buckets are read-mostly data shared by every pod on the node: always read-only here.
    let mounted = match &who {
        Identity::Own(c) => {
            let digest = identity_digest(&node_key(&node.inner.cfg.state_dir)?, c);
            publish_server(node, &server(&opts, Some(&digest)), target, true, Some(c))?
        }
        Identity::Node | Identity::Anonymous => {
            publish_server(node, &server(&opts, None), target, true, None)?
        }
    };
    if !mounted {
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
        let k = |kv: &[(&str, &str)]| mount_key(&options(&ctx(kv), "/x".into()).unwrap(), None);
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

#[cfg(test)]
mod identity_tests {
    use super::*;

    const SECRET_A: &str = "secret-of-course-key-aaaaaaaaaaaa";
    const SECRET_B: &str = "secret-of-research-key-bbbbbbbbbb";

    fn map(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn own(id: &str, secret: &str) -> StaticCredentials {
        let Identity::Own(c) = identity(
            &map(&[("bucket", "bkt1")]),
            &map(&[("accessKeyID", id), ("secretAccessKey", secret)]),
        )
        .unwrap() else {
            panic!("not an own identity")
        };
        c
    }

    #[test]
    fn identities_come_from_the_secret_or_the_anonymous_attribute() {
        let b = map(&[("bucket", "bkt1")]);
        assert_eq!(identity(&b, &HashMap::new()).unwrap(), Identity::Node);
        let anon = map(&[("bucket", "bkt1"), ("anonymous", "true")]);
        assert_eq!(
            identity(&anon, &HashMap::new()).unwrap(),
            Identity::Anonymous
        );
        let c = own("GK1", SECRET_A);
        assert_eq!((c.access_key_id.as_str(), c.session_token), ("GK1", None));
        let e = identity(
            &anon,
            &map(&[("accessKeyID", "GK1"), ("secretAccessKey", SECRET_A)]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("anonymous"), "{e}");
    }

    #[test]
    fn malformed_secrets_are_invalid_and_name_the_key_not_the_value() {
        let b = map(&[("bucket", "bkt1")]);
        for (secret, key) in [
            (map(&[("accessKeyID", "GK1")]), "secretAccessKey"),
            (map(&[("secretAccessKey", SECRET_A)]), "accessKeyID"),
            (
                map(&[("accessKeyID", ""), ("secretAccessKey", SECRET_A)]),
                "accessKeyID",
            ),
            (
                map(&[
                    ("accessKeyID", "GK1"),
                    ("secretAccessKey", "secret-of\0course"),
                ]),
                "secretAccessKey",
            ),
            (
                map(&[
                    ("accessKeyID", "GK1"),
                    ("secretAccessKey", SECRET_A),
                    ("sessionToken", "tok\nen-secret"),
                ]),
                "sessionToken",
            ),
        ] {
            let e = identity(&b, &secret).unwrap_err();
            let text = e.to_string();
            assert_eq!(tonic::Status::from(e).code(), tonic::Code::InvalidArgument);
            assert!(text.contains(key), "{text}");
            assert!(
                !text.contains("secret-of") && !text.contains("en-secret"),
                "{text}"
            );
        }
    }

    #[test]
    fn the_sharing_key_separates_identities_and_names_no_key() {
        let dir = tempfile::tempdir().unwrap();
        // Publishes racing to make the key agree on one.
        let keys: Vec<Vec<u8>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| s.spawn(|| node_key(dir.path()).unwrap()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let key = keys[0].clone();
        assert!(keys.iter().all(|k| *k == key && k.len() == 32));
        assert_eq!(node_key(dir.path()).unwrap(), key, "made once, then read");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("s3-identity.key"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let opts = options(&map(&[("bucket", "bkt1")]), "/x".into()).unwrap();
        let spec = |c: Option<&StaticCredentials>| {
            server(&opts, c.map(|c| identity_digest(&key, c)).as_deref())
        };
        let (a, a2, b) = (
            own("GKA", SECRET_A),
            own("GKA", SECRET_A),
            own("GKB", SECRET_B),
        );
        // Same bucket, same identity: one server. Another identity, the
        // node's, or the same key id with another secret: another server.
        assert_eq!(spec(Some(&a)).id, spec(Some(&a2)).id);
        let ids = [
            spec(Some(&a)).id,
            spec(Some(&b)).id,
            spec(None).id,
            spec(Some(&own("GKA", SECRET_B))).id,
        ];
        for (i, x) in ids.iter().enumerate() {
            for y in &ids[i + 1..] {
                assert_ne!(x, y);
            }
        }
        let with = spec(Some(&a));
        with.validate().unwrap();
        assert!(crate::mounter::secrets::wants_credentials(&with));
        assert!(!crate::mounter::secrets::wants_credentials(&spec(None)));
        // The default chain keeps the id it had before identities existed.
        assert_eq!(spec(None).id, mount_key(&opts, None));
        // Nothing of the credentials shows in what is logged and saved.
        let shown = format!("{with:?} {}", serde_json::to_string(&with).unwrap());
        for s in [SECRET_A, "GKA"] {
            assert!(!shown.contains(s), "{shown}");
        }
        // Another node (another key) names the same identity differently.
        let other = tempfile::tempdir().unwrap();
        assert_ne!(
            identity_digest(&node_key(other.path()).unwrap(), &a),
            identity_digest(&key, &a)
        );
    }
}
