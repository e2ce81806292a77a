//! Node service tests over the fake mount table and the fake FUSE-server mounter:
//! every RPC, its error codes, and repeated lifecycle calls. Real mounts are
//! covered by `driver/tests/csi.rs`, `s3_csi.rs` and `restart.rs`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hubfs_proto::csi::{
    volume_capability::{access_mode::Mode, AccessMode, AccessType, BlockVolume, MountVolume},
    volume_usage::Unit,
    NodeGetVolumeStatsRequest, NodePublishVolumeRequest, NodeStageVolumeRequest,
    NodeUnpublishVolumeRequest, NodeUnstageVolumeRequest, VolumeCapability,
};
use hubfs_quota::UserKey;
use tonic::Code;

use super::{NodeConfig, NodeService};
use crate::error::DriverError;
use crate::homes::{self, HomeMeta};
use crate::mounter::fake::{FakeServers, ServerCall};
use crate::mounter::Kind;
use crate::mounts::{FakeMounts, MountCall, Mounts};
use crate::volume::{Backend, HomeVolume, OnDelete};
use hubfs_quota::events::{FakeEventSink, Reason, Regarding};

struct Env {
    events: Arc<FakeEventSink>,
    _dir: tempfile::TempDir,
    root: PathBuf,
    kubelet: PathBuf,
    fake: FakeMounts,
    servers: Arc<FakeServers>,
    node: NodeService,
    vol: HomeVolume,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("share");
    let kubelet = dir.path().join("kubelet");
    std::fs::create_dir_all(&kubelet).unwrap();
    let vol = HomeVolume {
        volume_name: "pvc-1".into(),
        backend: Backend::Local { root: root.clone() },
        base_path: "users".into(),
        user: UserKey::new("alice").unwrap(),
        on_delete: OnDelete::Retain,
    };
    std::fs::create_dir_all(vol.home_dir(&root)).unwrap();
    homes::write_meta(
        &vol,
        &root,
        &HomeMeta {
            volume_name: "pvc-1".into(),
            user: "alice".into(),
            capacity_bytes: 1000,
            inode_quota: None,
            pvc_name: None,
            pvc_namespace: None,
            user_from: None,
            created: "x".into(),
            updated: "x".into(),
        },
    )
    .unwrap();
    let fake = FakeMounts::default();
    let servers = Arc::new(FakeServers::default());
    let events = Arc::new(FakeEventSink::default());
    let node = NodeService::new(
        NodeConfig {
            node_id: "n1".into(),
            allowed_targets: vec![kubelet.clone()],
            state_dir: dir.path().join("state"),
            allowed_roots: vec![dir.path().into()],
            quota_endpoint: Some("http://quota:9500".into()),
        },
        Arc::new(fake.clone()),
        servers.clone(),
        events.clone(),
    );
    Env {
        events,
        _dir: dir,
        root,
        kubelet,
        fake,
        servers,
        node,
        vol,
    }
}

fn mount_cap(mode: Mode) -> Option<VolumeCapability> {
    Some(VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    })
}

fn code(e: DriverError) -> Code {
    tonic::Status::from(e).code()
}

impl Env {
    fn staging(&self) -> PathBuf {
        self.kubelet.join("plugins/hubfs/pv/pvc-1/globalmount")
    }
    fn target(&self, pod: &str) -> PathBuf {
        self.kubelet
            .join(format!("pods/{pod}/volumes/kubernetes.io~csi/pvc-1/mount"))
    }
    fn stage_req(&self) -> NodeStageVolumeRequest {
        NodeStageVolumeRequest {
            volume_id: self.vol.id(),
            staging_target_path: self.staging().display().to_string(),
            volume_capability: mount_cap(Mode::MultiNodeMultiWriter),
            volume_context: HashMap::from([
                ("type".into(), "home".into()),
                ("accounting".into(), "bind".into()),
            ]),
            ..Default::default()
        }
    }
    fn publish_req(&self, pod: &str) -> NodePublishVolumeRequest {
        NodePublishVolumeRequest {
            volume_id: self.vol.id(),
            staging_target_path: self.staging().display().to_string(),
            target_path: self.target(pod).display().to_string(),
            volume_capability: mount_cap(Mode::MultiNodeMultiWriter),
            volume_context: HashMap::from([
                ("type".into(), "home".into()),
                ("accounting".into(), "bind".into()),
            ]),
            ..Default::default()
        }
    }
    fn unpublish_req(&self, pod: &str) -> NodeUnpublishVolumeRequest {
        NodeUnpublishVolumeRequest {
            volume_id: self.vol.id(),
            target_path: self.target(pod).display().to_string(),
        }
    }
    fn unstage_req(&self) -> NodeUnstageVolumeRequest {
        NodeUnstageVolumeRequest {
            volume_id: self.vol.id(),
            staging_target_path: self.staging().display().to_string(),
        }
    }
}

#[test]
fn full_lifecycle_is_idempotent() {
    let e = env();
    for _ in 0..3 {
        e.node.stage(e.stage_req()).unwrap();
    }
    for _ in 0..3 {
        e.node.publish(e.publish_req("p1")).unwrap();
    }
    let binds: Vec<_> = e
        .fake
        .calls()
        .into_iter()
        .filter(|c| matches!(c, MountCall::Bind { .. }))
        .collect();
    assert_eq!(
        binds.len(),
        2,
        "one stage bind and one publish bind: {binds:?}"
    );
    assert_eq!(
        binds[0],
        MountCall::Bind {
            source: e.vol.home_dir(&e.root),
            target: e.staging(),
            read_only: false
        }
    );
    assert!(e.target("p1").is_dir());
    for _ in 0..3 {
        e.node.unpublish(e.unpublish_req("p1")).unwrap();
    }
    assert!(!e.target("p1").exists(), "target removed on unpublish");
    for _ in 0..3 {
        e.node.unstage(e.unstage_req()).unwrap();
    }
    assert_eq!(e.fake.mount_count(), 0);
}

#[test]
fn read_only_by_flag_or_access_mode() {
    let e = env();
    e.node.stage(e.stage_req()).unwrap();
    let mut r = e.publish_req("ro1");
    r.readonly = true;
    e.node.publish(r).unwrap();
    let mut r = e.publish_req("ro2");
    r.volume_capability = mount_cap(Mode::MultiNodeReaderOnly);
    e.node.publish(r).unwrap();
    for pod in ["ro1", "ro2"] {
        assert!(
            e.fake
                .mounted_at(&e.target(pod))
                .unwrap()
                .unwrap()
                .read_only,
            "{pod}"
        );
    }
    // Same target again but read-write: a conflict, not a silent remount.
    let err = e.node.publish(e.publish_req("ro1")).unwrap_err();
    assert_eq!(code(err), Code::AlreadyExists);
}

#[test]
fn publish_before_stage_is_a_failed_precondition() {
    let e = env();
    let err = e.node.publish(e.publish_req("p1")).unwrap_err();
    assert_eq!(code(err), Code::FailedPrecondition);
    assert!(!e.target("p1").exists(), "no target left behind");
}

#[test]
fn missing_fields_are_invalid_arguments() {
    let e = env();
    let mut r = e.stage_req();
    r.volume_id.clear();
    assert!(matches!(
        e.node.stage(r),
        Err(DriverError::Missing("volume_id"))
    ));
    let mut r = e.stage_req();
    r.staging_target_path.clear();
    assert!(matches!(
        e.node.stage(r),
        Err(DriverError::Missing("staging_target_path"))
    ));
    let mut r = e.stage_req();
    r.volume_capability = None;
    assert!(matches!(
        e.node.stage(r),
        Err(DriverError::Missing("volume_capability"))
    ));
    let mut r = e.publish_req("p");
    r.target_path.clear();
    assert!(matches!(
        e.node.publish(r),
        Err(DriverError::Missing("target_path"))
    ));
    // CSI: "Staging target path not set" is FAILED_PRECONDITION for a
    // driver with STAGE_UNSTAGE_VOLUME.
    let mut r = e.publish_req("p");
    r.staging_target_path.clear();
    assert_eq!(
        code(e.node.publish(r).unwrap_err()),
        Code::FailedPrecondition
    );
    let mut r = e.unpublish_req("p");
    r.volume_id.clear();
    assert_eq!(
        code(e.node.unpublish(r).unwrap_err()),
        Code::InvalidArgument
    );
    let mut r = e.unstage_req();
    r.staging_target_path.clear();
    assert_eq!(code(e.node.unstage(r).unwrap_err()), Code::InvalidArgument);
    let r = NodeGetVolumeStatsRequest {
        volume_id: e.vol.id(),
        ..Default::default()
    };
    assert_eq!(
        code(e.node.volume_stats(r).unwrap_err()),
        Code::InvalidArgument
    );
}

#[test]
fn block_access_is_refused() {
    let e = env();
    let mut r = e.stage_req();
    r.volume_capability = Some(VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    });
    assert_eq!(code(e.node.stage(r).unwrap_err()), Code::InvalidArgument);
}

#[test]
fn paths_outside_kubelet_are_refused() {
    let e = env();
    for bad in ["/etc", "relative/path", "/tmp/../etc"] {
        let mut r = e.stage_req();
        r.staging_target_path = bad.into();
        assert_eq!(
            code(e.node.stage(r).unwrap_err()),
            Code::InvalidArgument,
            "{bad}"
        );
        let mut r = e.publish_req("p");
        r.target_path = bad.into();
        assert_eq!(
            code(e.node.publish(r).unwrap_err()),
            Code::InvalidArgument,
            "{bad}"
        );
    }
    let mut r = e.publish_req("p");
    r.target_path = format!("{}/../../etc", e.kubelet.display());
    assert_eq!(code(e.node.publish(r).unwrap_err()), Code::InvalidArgument);
    assert_eq!(e.fake.mount_count(), 0);
}

#[test]
fn unknown_and_crafted_volumes() {
    let e = env();
    let mut r = e.stage_req();
    r.volume_id = "some-other-driver-id".into();
    assert_eq!(code(e.node.stage(r).unwrap_err()), Code::NotFound);
    // A well-formed id for a user without a home.
    let mut ghost = e.vol.clone();
    ghost.user = UserKey::new("ghost").unwrap();
    let mut r = e.stage_req();
    r.volume_id = ghost.id();
    assert_eq!(code(e.node.stage(r).unwrap_err()), Code::NotFound);
    // A crafted id naming a root outside the allowed roots.
    let mut evil = e.vol.clone();
    evil.backend = Backend::Local {
        root: "/etc".into(),
    };
    let mut r = e.stage_req();
    r.volume_id = evil.id();
    assert_eq!(code(e.node.stage(r).unwrap_err()), Code::InvalidArgument);
    let mut r = e.stage_req();
    r.volume_id = "home1:retain:local:/::..:alice:pv".into();
    assert_eq!(code(e.node.stage(r).unwrap_err()), Code::InvalidArgument);
    assert_eq!(e.fake.mount_count(), 0);
}

#[test]
fn s3_volumes_with_bad_attributes_are_refused_before_mounting() {
    let e = env();
    let mut r = e.publish_req("p");
    r.volume_id = "s3-bucket".into();
    r.volume_context = HashMap::from([("type".into(), "s3".into()), ("bucket".into(), "b".into())]);
    let err = e.node.publish(r).unwrap_err();
    assert_eq!(
        code(err),
        Code::InvalidArgument,
        "bucket names are at least 3 characters"
    );
    let mut r = e.stage_req();
    r.volume_id = "s3-bucket".into();
    r.volume_context = HashMap::from([("type".into(), "s3".into())]);
    assert_eq!(code(e.node.stage(r).unwrap_err()), Code::InvalidArgument);
    assert!(!e.target("p").exists());
    assert_eq!(e.fake.mount_count(), 0);
}

#[test]
fn concurrent_operations_on_one_volume_are_aborted() {
    let e = env();
    let _held = e.node.inner.inflight.begin(&e.vol.id()).unwrap();
    assert_eq!(
        code(e.node.stage(e.stage_req()).unwrap_err()),
        Code::Aborted
    );
    assert_eq!(
        code(e.node.unpublish(e.unpublish_req("p")).unwrap_err()),
        Code::Aborted
    );
}

#[test]
fn mount_failures_leave_no_target_behind() {
    let e = env();
    e.node.stage(e.stage_req()).unwrap();
    e.fake.fail_next(nix::errno::Errno::EPERM);
    let err = e.node.publish(e.publish_req("p")).unwrap_err();
    assert_eq!(code(err), Code::PermissionDenied);
    assert!(!e.target("p").exists());
}

#[test]
fn unpublish_refuses_to_delete_data_in_an_unmounted_target() {
    let e = env();
    let t = e.target("p");
    std::fs::create_dir_all(&t).unwrap();
    std::fs::write(t.join("precious"), b"x").unwrap();
    assert_eq!(
        code(e.node.unpublish(e.unpublish_req("p")).unwrap_err()),
        Code::FailedPrecondition
    );
    assert!(t.join("precious").exists());
}

#[test]
fn stats_report_usage_against_the_quota() {
    let e = env();
    let home = e.vol.home_dir(&e.root);
    std::fs::write(home.join("f"), vec![0u8; 300]).unwrap();
    e.node.stage(e.stage_req()).unwrap();
    e.node.publish(e.publish_req("p")).unwrap();
    // The fake mount table does not show the home at the target, so measure the
    // home itself: register the home dir as a "mounted" volume path.
    e.fake.bind(&home, &home, false).unwrap();
    let r = NodeGetVolumeStatsRequest {
        volume_id: e.vol.id(),
        volume_path: home.display().to_string(),
        ..Default::default()
    };
    // The first call waits a little for the walk; a slow machine may need
    // another call, as kubelet would make.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let s = loop {
        let s = e.node.volume_stats(r.clone()).unwrap();
        if !s.usage.is_empty() || std::time::Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let bytes = s
        .usage
        .iter()
        .find(|u| u.unit == Unit::Bytes as i32)
        .unwrap();
    assert_eq!((bytes.used, bytes.total, bytes.available), (300, 1000, 700));
    let inodes = s
        .usage
        .iter()
        .find(|u| u.unit == Unit::Inodes as i32)
        .unwrap();
    assert_eq!(inodes.used, 2);
    assert!(!s.volume_condition.unwrap().abnormal);
}

#[test]
fn stats_of_missing_or_unmounted_paths() {
    let e = env();
    let r = NodeGetVolumeStatsRequest {
        volume_id: e.vol.id(),
        volume_path: e.target("nope").display().to_string(),
        ..Default::default()
    };
    assert_eq!(code(e.node.volume_stats(r).unwrap_err()), Code::NotFound);
    let t = e.target("unmounted");
    std::fs::create_dir_all(&t).unwrap();
    let r = NodeGetVolumeStatsRequest {
        volume_id: e.vol.id(),
        volume_path: t.display().to_string(),
        ..Default::default()
    };
    // A directory where the volume was never published is not the volume.
    let e2 = e.node.volume_stats(r).unwrap_err();
    assert_eq!(code(e2), Code::NotFound);
    let _ = Path::new("");
}

/// csi-sanity's NodeGetVolumeStats cases (pkg/sanity/node.go), reproduced:
/// no id or no path is INVALID_ARGUMENT; an unknown volume at `some/path`,
/// a published volume at `some/path` (relative) or at another volume's
/// target is NOT_FOUND; the published volume at its target answers.
#[test]
fn stats_answer_not_found_for_any_path_that_is_not_a_publication_of_the_volume() {
    let e = env();
    let stats = |id: &str, path: &str| {
        e.node.volume_stats(NodeGetVolumeStatsRequest {
            volume_id: id.into(),
            volume_path: path.into(),
            ..Default::default()
        })
    };
    assert_eq!(
        code(stats("", "some/path").unwrap_err()),
        Code::InvalidArgument
    );
    assert_eq!(
        code(stats(&e.vol.id(), "").unwrap_err()),
        Code::InvalidArgument
    );
    // "should fail when volume is not found"
    let unknown = stats("id", "some/path").unwrap_err();
    assert_eq!(code(unknown), Code::NotFound);
    e.node.stage(e.stage_req()).unwrap();
    e.node.publish(e.publish_req("p")).unwrap();
    let target = e.target("p").display().to_string();
    // "should fail when volume does not exist on the specified path"
    let relative = stats(&e.vol.id(), "some/path").unwrap_err();
    assert_eq!(code(relative), Code::NotFound);
    for path in ["/", "/tmp", "some/../../path", "./p"] {
        assert_eq!(
            code(stats(&e.vol.id(), path).unwrap_err()),
            Code::NotFound,
            "{path}"
        );
    }
    // Another volume's id (another home, a static S3 PV) at this target.
    let other = crate::volume::HomeVolume {
        user: UserKey::new("bob").unwrap(),
        ..e.vol.clone()
    };
    assert_eq!(
        code(stats(&other.id(), &target).unwrap_err()),
        Code::NotFound
    );
    assert_eq!(
        code(stats("static-s3-pv", &target).unwrap_err()),
        Code::NotFound
    );
    // "should be possible to get node volume stats"
    let ok = stats(&e.vol.id(), &target).unwrap();
    assert!(ok.volume_condition.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_tells_the_pod_what_happened() {
    let e = env();
    let pod_ctx = |r: &mut NodePublishVolumeRequest| {
        r.volume_context
            .insert("csi.storage.k8s.io/pod.name".into(), "jupyter-alice".into());
        r.volume_context
            .insert("csi.storage.k8s.io/pod.namespace".into(), "jhub".into());
        r.volume_context.insert("quota".into(), "1000".into());
    };
    let node = e.node.clone();
    let mut early = e.publish_req("p0");
    pod_ctx(&mut early);
    // Not staged yet: a MountFailed warning with the reason in plain words.
    tokio::task::spawn_blocking(move || node.publish(early))
        .await
        .unwrap()
        .unwrap_err();
    let node = e.node.clone();
    let stage = e.stage_req();
    let mut ok = e.publish_req("p1");
    pod_ctx(&mut ok);
    let again = ok.clone();
    tokio::task::spawn_blocking(move || {
        node.stage(stage).unwrap();
        node.publish(ok).unwrap();
        node.publish(again).unwrap();
    })
    .await
    .unwrap();
    let posted = e.events.wait_posted(2).await;
    assert_eq!(posted.len(), 2, "{posted:#?}");
    // Background posts land in any order.
    let failed = posted
        .iter()
        .find(|n| n.reason == Reason::MountFailed)
        .expect("MountFailed");
    let mounted = posted
        .iter()
        .find(|n| n.reason == Reason::HomeMounted)
        .expect("HomeMounted");
    assert!(failed.note.contains("not staged"), "{}", failed.note);
    assert_eq!(
        mounted.regarding,
        Regarding::Pod {
            namespace: "jhub".into(),
            name: "jupyter-alice".into(),
            uid: None
        }
    );
    assert!(
        mounted.note.contains("home of alice mounted"),
        "{}",
        mounted.note
    );
}

#[test]
fn a_fuse_home_is_handed_to_the_mounter_with_everything_to_restart_it() {
    let e = env();
    e.node.stage(e.stage_req()).unwrap();
    let mut r = e.publish_req("p");
    r.volume_context.insert("accounting".into(), "fuse".into());
    r.volume_context.insert("inodeQuota".into(), "50".into());
    for _ in 0..2 {
        e.node.publish(r.clone()).unwrap();
    }
    let mut r2 = e.publish_req("q");
    r2.volume_context = r.volume_context.clone();
    e.node.publish(r2).unwrap();
    let calls = e.servers.calls();
    assert_eq!(calls.len(), 3);
    let ServerCall::Publish {
        spec,
        target,
        read_only,
        credentials: None,
    } = &calls[0]
    else {
        panic!("{calls:?}")
    };
    assert_eq!((target, *read_only), (&e.target("p"), false));
    assert_eq!(spec.kind, Kind::Home);
    let args = spec.args.join(" ");
    for want in [
        "mount home --foreground --user alice",
        "--quota 1000",
        "--node-id n1",
        "--inode-quota 50",
        "--report-to http://quota:9500",
    ] {
        assert!(args.contains(want), "{want} in {args}");
    }
    assert!(args.ends_with(&e.staging().display().to_string()), "{args}");
    // One server per home volume, shared by its pods on this node.
    assert_eq!(e.servers.running().len(), 1);
    assert!(matches!(&calls[2], ServerCall::Publish { spec: s2, .. } if s2 == spec));
    // The plugin itself mounted nothing: the mounter did.
    assert_eq!(e.fake.mount_count(), 1, "only the staging bind");
    e.node.unpublish(e.unpublish_req("p")).unwrap();
    assert_eq!(e.servers.running().len(), 1, "pod q still uses it");
    e.node.unpublish(e.unpublish_req("q")).unwrap();
    assert!(e.servers.running().is_empty());
    assert!(!e.target("p").exists() && !e.target("q").exists());
}

#[test]
fn a_mounter_failure_leaves_no_target_and_keeps_its_code() {
    let e = env();
    e.node.stage(e.stage_req()).unwrap();
    let mut r = e.publish_req("p");
    r.volume_context.insert("accounting".into(), "fuse".into());
    e.servers
        .fail_next(DriverError::Unavailable("mounter down".into()));
    assert_eq!(
        code(e.node.publish(r.clone()).unwrap_err()),
        Code::Unavailable
    );
    assert!(!e.target("p").exists());
    // A read-only publication of a fuse home is a plain bind: nothing to account.
    r.readonly = true;
    e.node.publish(r).unwrap();
    assert!(e.servers.running().is_empty());
    assert_eq!(e.fake.mount_count(), 2);
}

#[test]
fn s3_publications_share_one_mounter_server_per_bucket() {
    let e = env();
    let ctx = |bucket: &str| {
        HashMap::from([
            ("type".to_string(), "s3".to_string()),
            ("bucket".to_string(), bucket.to_string()),
            ("endpoint".to_string(), "http://127.0.0.1:3900".to_string()),
        ])
    };
    for (pod, bucket) in [("p1", "data"), ("p2", "data"), ("p3", "other")] {
        let mut r = e.publish_req(pod);
        r.volume_id = format!("s3-{bucket}");
        r.volume_context = ctx(bucket);
        e.node.publish(r).unwrap();
    }
    assert_eq!(e.servers.running().len(), 2);
    for c in e.servers.calls() {
        let ServerCall::Publish {
            spec, read_only, ..
        } = c
        else {
            panic!()
        };
        assert!(read_only, "pods get buckets read-only");
        assert_eq!(spec.kind, Kind::S3);
        assert_eq!(&spec.args[..3], &["mount", "s3", "--foreground"]);
        assert!(
            !spec.args.iter().any(|a| a.contains("mnt")),
            "{:?}",
            spec.args
        );
    }
    for pod in ["p1", "p2", "p3"] {
        let mut r = e.unpublish_req(pod);
        r.volume_id = "s3-x".into();
        e.node.unpublish(r).unwrap();
    }
    assert!(e.servers.running().is_empty());
}

#[test]
fn stats_of_a_missing_path_are_not_found_whatever_the_id() {
    let e = env();
    for id in [e.vol.id(), "static-s3-pv".into(), "home1:garbage".into()] {
        let r = NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: e.target("gone").display().to_string(),
            ..Default::default()
        };
        assert_eq!(
            code(e.node.volume_stats(r).unwrap_err()),
            Code::NotFound,
            "{id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_servers_are_shared_per_identity_and_secrets_stay_out_of_specs_and_events() {
    const SECRET_A: &str = "course-secret-aaaaaaaaaaaaaaaaaaaa";
    const SECRET_B: &str = "research-secret-bbbbbbbbbbbbbbbbbb";
    let e = env();
    let req = |pod: &str, secret: &[(&str, &str)]| {
        let mut r = e.publish_req(pod);
        r.volume_id = "s3-data".into();
        r.volume_context = HashMap::from([
            ("type".to_string(), "s3".to_string()),
            ("bucket".to_string(), "data".to_string()),
            ("endpoint".to_string(), "http://127.0.0.1:3900".to_string()),
            ("csi.storage.k8s.io/pod.name".into(), pod.to_string()),
            ("csi.storage.k8s.io/pod.namespace".into(), "jhub".into()),
        ]);
        r.secrets = secret
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        r
    };
    let a = [("accessKeyID", "GKcourse"), ("secretAccessKey", SECRET_A)];
    let b = [("accessKeyID", "GKresearch"), ("secretAccessKey", SECRET_B)];
    let node = e.node.clone();
    let reqs = [
        req("p1", &a),
        req("p2", &a),
        req("p3", &b),
        req("p4", &[]),
        req(
            "bad",
            &[("accessKeyID", "GKcourse"), ("secretAccessKey", "")],
        ),
    ];
    let bad = tokio::task::spawn_blocking(move || {
        let mut it = reqs.into_iter();
        for r in it.by_ref().take(4) {
            node.publish(r).unwrap();
        }
        node.publish(it.next().unwrap()).unwrap_err()
    })
    .await
    .unwrap();
    assert_eq!(code(bad), Code::InvalidArgument);
    // Identity A (twice), identity B, the node's: three servers.
    assert_eq!(e.servers.running().len(), 3);
    let mut with_creds = 0;
    for c in e.servers.calls() {
        let ServerCall::Publish {
            spec,
            target,
            credentials,
            ..
        } = c
        else {
            panic!()
        };
        let pod_has_secret = !target.to_string_lossy().contains("/p4/");
        assert_eq!(credentials.is_some(), pod_has_secret, "{target:?}");
        with_creds += usize::from(credentials.is_some());
        let saved = serde_json::to_string(&spec).unwrap();
        for s in [SECRET_A, SECRET_B, "GKcourse", "GKresearch"] {
            assert!(!saved.contains(s), "{saved}");
        }
    }
    assert_eq!(with_creds, 3);
    let posted = e.events.wait_posted(5).await;
    assert_eq!(posted.len(), 5, "{posted:#?}");
    let shown = format!("{posted:?}");
    assert!(shown.contains("secretAccessKey is empty"), "{shown}");
    for s in [SECRET_A, SECRET_B, "GKcourse", "GKresearch"] {
        assert!(!shown.contains(s), "{shown}");
    }
}
