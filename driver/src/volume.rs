//! What a volume is: StorageClass parameters, volume ids and volume context.
//!
//! A home volume id carries everything DeleteVolume and the Node service need
//! (backend, share, base path, user, delete policy), so no lookup table is
//! ever needed and a controller restart loses nothing. Its fields are
//! percent-encoded and joined with `:`; parsing re-validates every path, since
//! anyone who can create a PersistentVolume can hand us a crafted id.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hubfs_quota::{parse_size, UserKey};

use crate::error::DriverError;
use crate::paths;

/// Volume context / parameter keys.
pub mod keys {
    pub const TYPE: &str = "type";
    pub const BACKEND: &str = "backend";
    pub const SERVER: &str = "server";
    pub const SHARE: &str = "share";
    pub const MOUNT_OPTIONS: &str = "mountOptions";
    pub const ROOT: &str = "root";
    pub const BASE_PATH: &str = "basePath";
    pub const UID: &str = "uid";
    pub const GID: &str = "gid";
    pub const MODE: &str = "mode";
    pub const ON_DELETE: &str = "onDelete";
    pub const QUOTA: &str = "quota";
    pub const INODE_QUOTA: &str = "inodeQuota";
    pub const USER_PREFIX: &str = "userPrefix";
    pub const ACCOUNTING: &str = "accounting";
    pub const USER: &str = "user";
    /// The PVC annotation naming the hub user (empty: never read the PVC).
    pub const USER_ANNOTATION: &str = "userAnnotation";
    /// The PVC annotation naming a named server.
    pub const SERVER_ANNOTATION: &str = "serverAnnotation";
    /// Set by external-provisioner with `--extra-create-metadata`.
    pub const PVC_NAME: &str = "csi.storage.k8s.io/pvc/name";
    pub const PVC_NAMESPACE: &str = "csi.storage.k8s.io/pvc/namespace";
    pub const PV_NAME: &str = "csi.storage.k8s.io/pv/name";
    /// Passed by kubelet at NodePublish when the CSIDriver has podInfoOnMount.
    pub const POD_NAME: &str = "csi.storage.k8s.io/pod.name";
    pub const POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";
    pub const POD_UID: &str = "csi.storage.k8s.io/pod.uid";
    /// Our own context keys naming the PVC, so node-side events can mention it.
    pub const CTX_PVC_NAME: &str = "pvcName";
    pub const CTX_PVC_NAMESPACE: &str = "pvcNamespace";
}

/// The EFS quota monitor's default quota: 200 GiB.
pub const DEFAULT_QUOTA: u64 = 200 << 30;
/// KubeSpawner names user PVCs `claim-<escaped user>`.
pub const DEFAULT_USER_PREFIX: &str = "claim-";
/// Where KubeSpawner puts the unescaped hub user name on the PVC.
pub const DEFAULT_USER_ANNOTATION: &str = "hub.jupyter.org/username";
/// Where KubeSpawner puts the unescaped server name of a named server.
pub const DEFAULT_SERVER_ANNOTATION: &str = "hub.jupyter.org/servername";
/// `jovyan` in the Jupyter docker stacks.
pub const DEFAULT_UID: u32 = 1000;
/// The `users` group of the Jupyter docker stacks.
pub const DEFAULT_GID: u32 = 100;
/// Owner full access, group read, others nothing: homes share one filesystem.
pub const DEFAULT_MODE: u32 = 0o750;

/// The pod a NodePublish is for, from podInfoOnMount, as an event target.
pub fn pod_of(ctx: &HashMap<String, String>) -> Option<hubfs_quota::events::Regarding> {
    Some(hubfs_quota::events::Regarding::Pod {
        namespace: ctx.get(keys::POD_NAMESPACE)?.clone(),
        name: ctx.get(keys::POD_NAME)?.clone(),
        uid: ctx.get(keys::POD_UID).cloned(),
    })
}

/// The PVC named in CreateVolume parameters (external-provisioner's
/// `--extra-create-metadata`), as an event target.
pub fn pvc_of(params: &HashMap<String, String>) -> Option<hubfs_quota::events::Regarding> {
    Some(hubfs_quota::events::Regarding::Pvc {
        namespace: params.get(keys::PVC_NAMESPACE)?.clone(),
        name: params.get(keys::PVC_NAME)?.clone(),
        uid: None,
    })
}

/// Which kind of volume a request is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeType {
    Home,
    S3,
}

impl VolumeType {
    /// Reads `type` from parameters or context; absent means `home`.
    pub fn from_map(m: &HashMap<String, String>) -> Result<Self, DriverError> {
        match m.get(keys::TYPE).map(String::as_str) {
            None | Some("home") => Ok(Self::Home),
            Some("s3") => Ok(Self::S3),
            Some(other) => Err(DriverError::Invalid(format!(
                "unknown volume type {other:?} (expected `home` or `s3`)"
            ))),
        }
    }
}

/// Where homes are stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A directory that is already present on the node (tests, single-node installs).
    Local { root: PathBuf },
    /// An NFS export (EFS), mounted once per node by the driver.
    Nfs { server: String, share: String },
}

impl Backend {
    /// A stable short name for the share, used for its mount point in the state dir.
    pub fn share_key(&self) -> String {
        let text = match self {
            Backend::Local { root } => format!("local:{}", root.display()),
            Backend::Nfs { server, share } => format!("nfs:{server}:{share}"),
        };
        crate::digest::short_hex(text.as_bytes(), 8)
    }
}

/// What DeleteVolume does with the user's directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnDelete {
    /// Leave everything (the default: homes outlive PVCs).
    #[default]
    Retain,
    /// Rename the directory to `<encoded>.archived-<UTC timestamp>`.
    Archive,
    /// Remove the directory and everything in it.
    Delete,
}

impl OnDelete {
    fn parse(s: &str) -> Result<Self, DriverError> {
        match s {
            "retain" => Ok(Self::Retain),
            "archive" => Ok(Self::Archive),
            "delete" => Ok(Self::Delete),
            _ => Err(DriverError::Invalid(format!(
                "onDelete must be retain, archive or delete, got {s:?}"
            ))),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Retain => "retain",
            Self::Archive => "archive",
            Self::Delete => "delete",
        }
    }
}

/// How NodePublish presents a home to the pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Accounting {
    /// A plain bind mount; usage is only known from walks.
    Bind,
    /// The home FUSE layer: write-time accounting and EDQUOT.
    #[default]
    Fuse,
}

impl Accounting {
    /// Parses the StorageClass `accounting` parameter.
    pub fn parse(s: &str) -> Result<Self, DriverError> {
        match s {
            "bind" => Ok(Self::Bind),
            "fuse" => Ok(Self::Fuse),
            _ => Err(DriverError::Invalid(format!(
                "accounting must be `fuse` or `bind`, got {s:?}"
            ))),
        }
    }

    /// The parameter value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bind => "bind",
            Self::Fuse => "fuse",
        }
    }
}

/// StorageClass parameters of a `type: home` class, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HomeParams {
    pub backend: Backend,
    /// NFS mount options (comma separated), empty for local.
    pub mount_options: String,
    pub base_path: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub on_delete: OnDelete,
    pub default_quota: u64,
    pub inode_quota: Option<u64>,
    pub user_prefix: String,
    pub accounting: Accounting,
    /// PVC annotation with the hub user; empty means "use the PVC name".
    pub user_annotation: String,
    pub server_annotation: String,
}

/// How the user of a home was learnt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserSource {
    /// The PVC's hub user annotation: the real hub name.
    Annotation,
    /// The PVC name minus the prefix (no API server, or no annotation).
    PvcName,
    /// The volume name (the provisioner passed no PVC metadata).
    VolumeName,
}

impl UserSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Annotation => "annotation",
            Self::PvcName => "pvc-name",
            Self::VolumeName => "volume-name",
        }
    }
}

/// Whose a home is: the hub user (and the named server, if the PVC is one's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub user: UserKey,
    pub server: Option<String>,
    pub source: UserSource,
}

fn parse_num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, DriverError> {
    v.parse()
        .map_err(|_| DriverError::Invalid(format!("parameter {key} must be a number, got {v:?}")))
}

impl HomeParams {
    /// Validates the parameters of CreateVolume. Unknown keys are refused so a
    /// typo (`basepath`) is an error, not a silently ignored setting.
    pub fn parse(p: &HashMap<String, String>) -> Result<Self, DriverError> {
        const KNOWN: &[&str] = &[
            keys::TYPE,
            keys::BACKEND,
            keys::SERVER,
            keys::SHARE,
            keys::MOUNT_OPTIONS,
            keys::ROOT,
            keys::BASE_PATH,
            keys::UID,
            keys::GID,
            keys::MODE,
            keys::ON_DELETE,
            keys::QUOTA,
            keys::INODE_QUOTA,
            keys::USER_PREFIX,
            keys::ACCOUNTING,
            keys::USER_ANNOTATION,
            keys::SERVER_ANNOTATION,
        ];
        for k in p.keys() {
            if !KNOWN.contains(&k.as_str()) && !k.starts_with("csi.storage.k8s.io/") {
                return Err(DriverError::Invalid(format!(
                    "unknown StorageClass parameter {k:?}"
                )));
            }
        }
        let get = |k: &str| p.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let backend_name = get(keys::BACKEND).unwrap_or(if get(keys::SERVER).is_some() {
            "nfs"
        } else {
            "local"
        });
        let backend = match backend_name {
            "local" => Backend::Local {
                root: paths::absolute(
                    "parameter root",
                    get(keys::ROOT).ok_or(DriverError::Invalid(
                        "backend local needs the parameter `root`".into(),
                    ))?,
                )?,
            },
            "nfs" => {
                let server = get(keys::SERVER).ok_or(DriverError::Invalid(
                    "backend nfs needs the parameter `server`".into(),
                ))?;
                if server.contains(['/', '\0', ' ']) {
                    return Err(DriverError::Invalid(format!(
                        "parameter server is not a host name: {server:?}"
                    )));
                }
                let share = paths::absolute("parameter share", get(keys::SHARE).unwrap_or("/"))?;
                Backend::Nfs {
                    server: server.to_owned(),
                    share: share.display().to_string(),
                }
            }
            other => {
                return Err(DriverError::Invalid(format!(
                    "backend must be `local` or `nfs`, got {other:?}"
                )))
            }
        };
        let mode = match get(keys::MODE) {
            None => DEFAULT_MODE,
            Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| {
                    DriverError::Invalid(format!(
                        "parameter mode must be octal like 0750, got {m:?}"
                    ))
                })?,
        };
        let size = |k: &str| -> Result<Option<u64>, DriverError> {
            get(k)
                .map(|v| {
                    parse_size(v).map_err(|e| DriverError::Invalid(format!("parameter {k}: {e}")))
                })
                .transpose()
        };
        Ok(Self {
            backend,
            mount_options: get(keys::MOUNT_OPTIONS).unwrap_or("").to_owned(),
            base_path: paths::relative(
                "parameter basePath",
                get(keys::BASE_PATH).unwrap_or("/users"),
            )?,
            uid: get(keys::UID)
                .map(|v| parse_num(keys::UID, v))
                .transpose()?
                .unwrap_or(DEFAULT_UID),
            gid: get(keys::GID)
                .map(|v| parse_num(keys::GID, v))
                .transpose()?
                .unwrap_or(DEFAULT_GID),
            mode,
            on_delete: get(keys::ON_DELETE)
                .map(OnDelete::parse)
                .transpose()?
                .unwrap_or_default(),
            default_quota: size(keys::QUOTA)?.unwrap_or(DEFAULT_QUOTA),
            inode_quota: size(keys::INODE_QUOTA)?,
            user_prefix: p
                .get(keys::USER_PREFIX)
                .cloned()
                .unwrap_or_else(|| DEFAULT_USER_PREFIX.to_owned()),
            accounting: get(keys::ACCOUNTING)
                .map(Accounting::parse)
                .transpose()?
                .unwrap_or_default(),
            user_annotation: p
                .get(keys::USER_ANNOTATION)
                .cloned()
                .unwrap_or_else(|| DEFAULT_USER_ANNOTATION.to_owned()),
            server_annotation: p
                .get(keys::SERVER_ANNOTATION)
                .cloned()
                .unwrap_or_else(|| DEFAULT_SERVER_ANNOTATION.to_owned()),
        })
    }

    /// Whose home a CreateVolume makes. With the PVC's annotations (read
    /// through the API server), the hub user in `userAnnotation`, checked by
    /// the same rules as any name (an annotation is input too); without them
    /// or without that annotation, today's fallback [`HomeParams::user_key`],
    /// logged so an admin sees which homes are keyed by a slug.
    pub fn owner(
        &self,
        volume_name: &str,
        p: &HashMap<String, String>,
        annotations: Option<&std::collections::BTreeMap<String, String>>,
    ) -> Result<Owner, DriverError> {
        let pvc = || {
            format!(
                "{}/{}",
                p.get(keys::PVC_NAMESPACE)
                    .map(String::as_str)
                    .unwrap_or("?"),
                p.get(keys::PVC_NAME).map(String::as_str).unwrap_or("?")
            )
        };
        if let Some(a) = annotations {
            let get = |k: &str| a.get(k).filter(|v| !k.is_empty() && !v.is_empty());
            if let Some(name) = get(&self.user_annotation) {
                let user = UserKey::new(name).map_err(|e| {
                    DriverError::Invalid(format!(
                        "annotation {} of PVC {} ({:?}) cannot name a home: {e}",
                        self.user_annotation,
                        pvc(),
                        name.escape_debug().to_string()
                    ))
                })?;
                let server = get(&self.server_annotation).cloned();
                if let Some(s) = &server {
                    if s.chars().any(char::is_control) || s.len() > 255 {
                        return Err(DriverError::Invalid(format!(
                            "annotation {} of PVC {} is not a server name",
                            self.server_annotation,
                            pvc()
                        )));
                    }
                }
                return Ok(Owner {
                    user,
                    server,
                    source: UserSource::Annotation,
                });
            }
            tracing::warn!(pvc = %pvc(), annotation = %self.user_annotation,
                "the PVC has no hub user annotation; the home is keyed by the PVC name minus the prefix");
        }
        let user = self.user_key(volume_name, p)?;
        let source = if p.get(keys::PVC_NAME).is_some_and(|v| !v.is_empty()) {
            UserSource::PvcName
        } else {
            UserSource::VolumeName
        };
        tracing::warn!(user = %user, from = source.as_str(),
            "home keyed by a name derived from the claim, not by the hub user (see docs/migration.md)");
        Ok(Owner {
            user,
            server: None,
            source,
        })
    }

    /// The user a CreateVolume is for: the PVC name without the prefix, or the
    /// volume name when the provisioner passes no PVC metadata.
    pub fn user_key(
        &self,
        volume_name: &str,
        p: &HashMap<String, String>,
    ) -> Result<UserKey, DriverError> {
        let raw = match p.get(keys::PVC_NAME).filter(|v| !v.is_empty()) {
            Some(pvc) => pvc
                .strip_prefix(self.user_prefix.as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or(pvc),
            None => volume_name,
        };
        UserKey::new(raw)
            .map_err(|e| DriverError::Invalid(format!("cannot derive a user from {raw:?}: {e}")))
    }
}

/// A provisioned home, as named by its volume id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HomeVolume {
    /// The PV name that provisioned it: DeleteVolume of an older PV must not
    /// archive or delete a home that a newer PV has taken over.
    pub volume_name: String,
    pub backend: Backend,
    pub base_path: PathBuf,
    pub user: UserKey,
    pub on_delete: OnDelete,
}

const ID_PREFIX: &str = "home1";

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/@+=,".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unesc(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Why a volume id was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdError {
    /// Not a hubfs home id at all (another driver's, or garbage).
    Foreign,
    /// Looks like ours but a field is unacceptable (crafted or corrupt).
    Invalid(String),
}

impl From<IdError> for DriverError {
    fn from(e: IdError) -> Self {
        match e {
            IdError::Foreign => {
                DriverError::NotFound("volume id is not a hubfs home volume".into())
            }
            IdError::Invalid(m) => DriverError::Invalid(format!("invalid volume id: {m}")),
        }
    }
}

impl HomeVolume {
    /// The volume id: `home1:<onDelete>:<backend>:<a>:<b>:<basePath>:<user>:<pv name>`.
    pub fn id(&self) -> String {
        let (backend, a, b) = match &self.backend {
            Backend::Local { root } => ("local", root.display().to_string(), String::new()),
            Backend::Nfs { server, share } => ("nfs", server.clone(), share.clone()),
        };
        [
            ID_PREFIX,
            self.on_delete.as_str(),
            backend,
            &esc(&a),
            &esc(&b),
            &esc(&self.base_path.display().to_string()),
            self.user.encoded(),
            &esc(&self.volume_name),
        ]
        .join(":")
    }

    /// Parses and re-validates a volume id.
    pub fn parse_id(id: &str) -> Result<Self, IdError> {
        let f: Vec<&str> = id.split(':').collect();
        if f.first() != Some(&ID_PREFIX) {
            return Err(IdError::Foreign);
        }
        if f.len() != 8 {
            return Err(IdError::Invalid(format!(
                "expected 8 fields, got {}",
                f.len()
            )));
        }
        let field = |i: usize| {
            unesc(f[i]).ok_or_else(|| IdError::Invalid(format!("field {i} is badly escaped")))
        };
        let inv = |e: DriverError| IdError::Invalid(e.to_string());
        let on_delete = OnDelete::parse(f[1]).map_err(inv)?;
        let backend = match f[2] {
            "local" => Backend::Local {
                root: paths::absolute("root", &field(3)?).map_err(inv)?,
            },
            "nfs" => {
                let server = field(3)?;
                if server.is_empty() || server.contains(['/', '\0', ' ']) {
                    return Err(IdError::Invalid("bad server".into()));
                }
                Backend::Nfs {
                    server,
                    share: paths::absolute("share", &field(4)?)
                        .map_err(inv)?
                        .display()
                        .to_string(),
                }
            }
            other => return Err(IdError::Invalid(format!("unknown backend {other:?}"))),
        };
        let base_path = paths::relative("basePath", &field(5)?).map_err(inv)?;
        let user = UserKey::decode(f[6]).map_err(|e| IdError::Invalid(e.to_string()))?;
        let volume_name = field(7)?;
        if volume_name.is_empty() || volume_name.chars().any(char::is_control) {
            return Err(IdError::Invalid("bad volume name".into()));
        }
        Ok(Self {
            volume_name,
            backend,
            base_path,
            user,
            on_delete,
        })
    }

    /// The directory holding every user's home below a share root.
    pub fn users_dir(&self, share_root: &Path) -> PathBuf {
        share_root.join(&self.base_path)
    }

    /// The user's home below a share root.
    pub fn home_dir(&self, share_root: &Path) -> PathBuf {
        self.users_dir(share_root).join(self.user.encoded())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_fit_a_jupyter_notebook() {
        let p = HomeParams::parse(&params(&[("root", "/srv/share")])).unwrap();
        assert_eq!(
            p.backend,
            Backend::Local {
                root: "/srv/share".into()
            }
        );
        assert_eq!(p.base_path, Path::new("users"));
        assert_eq!((p.uid, p.gid, p.mode), (1000, 100, 0o750));
        assert_eq!(p.on_delete, OnDelete::Retain);
        assert_eq!(p.default_quota, 200 << 30);
        assert_eq!(p.user_prefix, "claim-");
        assert_eq!(p.accounting, Accounting::Fuse);
        assert_eq!(p.user_annotation, "hub.jupyter.org/username");
        assert_eq!(p.server_annotation, "hub.jupyter.org/servername");
    }

    #[test]
    fn owner_is_the_annotated_hub_user_or_the_claim_name() {
        let p = HomeParams::parse(&params(&[("root", "/s")])).unwrap();
        let meta = params(&[
            (keys::PVC_NAME, "claim-jmiller-stsci-edu---77689c6d"),
            (keys::PVC_NAMESPACE, "jhub"),
        ]);
        let ann = |kv: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let o = p
            .owner(
                "pvc-1",
                &meta,
                Some(&ann(&[("hub.jupyter.org/username", "jmiller@stsci.edu")])),
            )
            .unwrap();
        assert_eq!(
            (o.user.name(), o.server, o.source),
            ("jmiller@stsci.edu", None, UserSource::Annotation)
        );
        assert_eq!(o.user.encoded(), "jmiller_40stsci_2eedu");
        let o = p
            .owner(
                "pvc-1",
                &meta,
                Some(&ann(&[
                    ("hub.jupyter.org/username", "jmiller@stsci.edu"),
                    ("hub.jupyter.org/servername", "gpu"),
                ])),
            )
            .unwrap();
        assert_eq!(o.server.as_deref(), Some("gpu"));
        // No annotation, or no API server: today's behaviour.
        for a in [Some(ann(&[("other", "x")])), None] {
            let o = p.owner("pvc-1", &meta, a.as_ref()).unwrap();
            assert_eq!(
                (o.user.name(), o.source),
                ("jmiller-stsci-edu---77689c6d", UserSource::PvcName)
            );
        }
        // A hostile annotation is refused with its name, never used as a path.
        for evil in ["a\0b".to_owned(), "a\nb".to_owned(), "x".repeat(300)] {
            let e = p
                .owner(
                    "pvc-1",
                    &meta,
                    Some(&ann(&[("hub.jupyter.org/username", &evil)])),
                )
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("hub.jupyter.org/username") && e.contains("jhub/claim-"),
                "{e}"
            );
        }
        let o = p
            .owner(
                "pvc-1",
                &meta,
                Some(&ann(&[("hub.jupyter.org/username", "../../etc")])),
            )
            .unwrap();
        assert_eq!(o.user.encoded(), "_2e_2e_2f_2e_2e_2fetc");
        // A class that names another annotation, or none.
        let p2 = HomeParams::parse(&params(&[
            ("root", "/s"),
            ("userAnnotation", "example.org/owner"),
        ]))
        .unwrap();
        let o = p2
            .owner("pvc-1", &meta, Some(&ann(&[("example.org/owner", "zoë")])))
            .unwrap();
        assert_eq!(o.user.name(), "zoë");
        let p3 = HomeParams::parse(&params(&[("root", "/s"), ("userAnnotation", "")])).unwrap();
        let o = p3
            .owner(
                "pvc-1",
                &meta,
                Some(&ann(&[("hub.jupyter.org/username", "zoë")])),
            )
            .unwrap();
        assert_eq!(o.source, UserSource::PvcName);
    }

    #[test]
    fn bad_parameters_are_named_in_the_error() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "root"),
            (&[("root", "relative/dir")], "absolute"),
            (&[("root", "/s"), ("basePath", "../../etc")], "basePath"),
            (&[("root", "/s"), ("mode", "rwx")], "mode"),
            (&[("root", "/s"), ("uid", "-1")], "uid"),
            (&[("root", "/s"), ("onDelete", "shred")], "onDelete"),
            (&[("root", "/s"), ("quota", "lots")], "quota"),
            (&[("root", "/s"), ("basepath", "/x")], "basepath"),
            (&[("backend", "nfs")], "server"),
            (&[("backend", "nfs"), ("server", "a/b")], "server"),
            (&[("backend", "ceph")], "backend"),
        ];
        for (kv, word) in cases {
            let e = HomeParams::parse(&params(kv)).unwrap_err().to_string();
            assert!(e.contains(word), "{kv:?}: {e}");
        }
    }

    #[test]
    fn user_comes_from_the_pvc_name() {
        let p = HomeParams::parse(&params(&[("root", "/s")])).unwrap();
        let k = p
            .user_key("pvc-1", &params(&[(keys::PVC_NAME, "claim-alice")]))
            .unwrap();
        assert_eq!(k.name(), "alice");
        let k = p
            .user_key("pvc-1", &params(&[(keys::PVC_NAME, "data")]))
            .unwrap();
        assert_eq!(k.name(), "data");
        let k = p.user_key("pvc-1", &params(&[])).unwrap();
        assert_eq!(k.name(), "pvc-1");
        assert!(p
            .user_key("pvc-1", &params(&[(keys::PVC_NAME, "claim-a\0b")]))
            .is_err());
    }

    #[test]
    fn ids_round_trip() {
        for backend in [
            Backend::Local {
                root: "/srv/my share:1".into(),
            },
            Backend::Nfs {
                server: "fs-1.efs.aws".into(),
                share: "/".into(),
            },
        ] {
            let v = HomeVolume {
                volume_name: "pvc-0f:1".into(),
                backend,
                base_path: "users/home".into(),
                user: UserKey::new("Zoë@x.org").unwrap(),
                on_delete: OnDelete::Archive,
            };
            let id = v.id();
            assert_eq!(HomeVolume::parse_id(&id).unwrap(), v, "{id}");
        }
    }

    #[test]
    fn an_encoded_dotdot_user_stays_inside() {
        let v = HomeVolume::parse_id("home1:retain:local:/srv::users:_2e_2e_2f:pv").unwrap();
        assert_eq!(v.user.name(), "../");
        assert_eq!(
            v.home_dir(Path::new("/srv")),
            Path::new("/srv/users/_2e_2e_2f")
        );
    }

    #[test]
    fn crafted_ids_are_refused() {
        assert_eq!(HomeVolume::parse_id("some-id"), Err(IdError::Foreign));
        assert_eq!(HomeVolume::parse_id(""), Err(IdError::Foreign));
        for id in [
            "home1:retain:local:/srv:::..:pv",
            "home1:retain:local:/srv::..:alice:pv",
            "home1:retain:local:/srv::users%2F..:alice:pv",
            "home1:retain:local:relative::users:alice:pv",
            "home1:retain:local:/srv/../etc::users:alice:pv",
            "home1:retain:local:/srv::users:a/b:pv",
            "home1:retain:nfs:::users:alice:pv",
            "home1:shred:local:/srv::users:alice:pv",
            "home1:retain:local:/srv::users:alice:pv:extra",
            "home1:retain:local:/srv::users:alice:",
            "home1:retain:local:/srv::users:alice:p%0Av",
            "home1:retain:local:%zz::users:alice:pv",
            "home1:retain:local:/s%00rv::users:alice:pv",
        ] {
            assert!(
                matches!(HomeVolume::parse_id(id), Err(IdError::Invalid(_))),
                "{id}"
            );
        }
    }
}
