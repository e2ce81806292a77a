//! The CSI publish/unpublish path of an S3 volume against a real S3 server
//! (Garage on loopback) and real kernel FUSE and bind mounts: the node
//! plugin (`hubfs csi --mode node`) beside a `hubfs mounter` on the same
//! state dir, one shared `hubfs mount s3` per bucket per node, read-only
//! binds into pods, a dead FUSE process replaced under every pod without a
//! CSI call, the last unpublish removing the shared mount. Needs root and
//! /dev/fuse.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hubfs_e2e::garage::{client, Garage};
use hubfs_fuse::s3::store::ObjectStore;
use hubfs_proto::csi::{
    node_client::NodeClient,
    volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume},
    NodeGetVolumeStatsRequest, NodePublishVolumeRequest, NodeStageVolumeRequest,
    NodeUnpublishVolumeRequest, VolumeCapability,
};
use tonic::transport::Channel;

use hubfs_e2e::csi::NodeDriver as Driver;

/// The node plugin beside a mounter with the node's credentials (Garage's
/// default key), pods' volume `s3-data`.
fn start(g: &Garage) -> Driver {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("kubelet")).unwrap();
    let mounter = Command::new(env!("CARGO_BIN_EXE_hubfs"))
        .arg("mounter")
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        // The node's credentials reach the FUSE servers through the mounter's environment.
        .env("AWS_ACCESS_KEY_ID", &g.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &g.secret_key)
        .env_remove("AWS_PROFILE")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut plugin = hubfs_e2e::csi::node_plugin(dir.path(), &dir.path().join("state"));
    plugin.stdout(Stdio::null());
    Driver::start(dir, "s3-data", mounter, plugin)
}

async fn node(d: &Driver) -> NodeClient<Channel> {
    NodeClient::new(hubfs::server::connect_unix(&d.socket()).await.unwrap())
}

/// Asserts that the volume stats of `pod`'s target report a normal
/// condition.
async fn assert_healthy(d: &Driver, node: &mut NodeClient<Channel>, pod: &str) {
    let c = node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: "s3-data".into(),
            volume_path: d.target(pod).display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .volume_condition
        .unwrap();
    assert!(!c.abnormal, "{}", c.message);
}

/// `hubfs mount s3` processes serving this driver's state dir.
fn fuse_children(d: &Driver) -> Vec<i32> {
    d.servers().into_iter().map(|(pid, _)| pid).collect()
}

fn ctx(g: &Garage, pod: &str) -> HashMap<String, String> {
    HashMap::from([
        ("type".into(), "s3".into()),
        ("bucket".into(), g.bucket.clone()),
        ("endpoint".into(), g.endpoint.clone()),
        ("region".into(), g.region.clone()),
        ("csi.storage.k8s.io/pod.name".into(), pod.into()),
        ("csi.storage.k8s.io/pod.namespace".into(), "jhub".into()),
    ])
}

fn cap() -> Option<VolumeCapability> {
    Some(VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode {
            mode: Mode::MultiNodeReaderOnly as i32,
        }),
    })
}

fn publish_req(d: &Driver, g: &Garage, pod: &str) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: "s3-data".into(),
        staging_target_path: d
            .dir
            .path()
            .join("kubelet/plugins/stage")
            .display()
            .to_string(),
        target_path: d.target(pod).display().to_string(),
        volume_capability: cap(),
        readonly: true,
        volume_context: ctx(g, pod),
        ..Default::default()
    }
}

fn mounted(p: &Path) -> bool {
    hubfs_e2e::csi::is_mounted(p)
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_volume_is_one_shared_mount_per_node() {
    hubfs_e2e::require_root("FUSE and bind mounts");
    let g = Garage::start("data");
    let s3 = client(&g, &g.endpoint).await;
    s3.put(
        &g.bucket,
        "hst/readme.txt",
        bytes::Bytes::from_static(b"hello from S3\n"),
    )
    .await
    .unwrap();
    s3.put(
        &g.bucket,
        "top.csv",
        bytes::Bytes::from_static(b"a,b\n1,2\n"),
    )
    .await
    .unwrap();
    let d = start(&g);
    let mut node = node(&d).await;

    node.node_stage_volume(NodeStageVolumeRequest {
        volume_id: "s3-data".into(),
        staging_target_path: d
            .dir
            .path()
            .join("kubelet/plugins/stage")
            .display()
            .to_string(),
        volume_capability: cap(),
        volume_context: ctx(&g, "p1"),
        ..Default::default()
    })
    .await
    .unwrap();
    for pod in ["p1", "p2", "p1"] {
        node.node_publish_volume(publish_req(&d, &g, pod))
            .await
            .unwrap();
    }
    for pod in ["p1", "p2"] {
        let t = d.target(pod);
        assert_eq!(
            std::fs::read_to_string(t.join("hst/readme.txt")).unwrap(),
            "hello from S3\n"
        );
        assert_eq!(
            std::fs::read_to_string(t.join("top.csv")).unwrap(),
            "a,b\n1,2\n"
        );
        let err = std::fs::write(t.join("new.txt"), b"x").unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EROFS),
            "pods get a read-only view"
        );
    }
    assert_eq!(
        fuse_children(&d).len(),
        1,
        "one FUSE process for the bucket on this node"
    );

    assert_healthy(&d, &mut node, "p1").await;

    // The FUSE process dies: the mounter replaces it and binds it onto every
    // pod's target again, with no CSI call.
    let pid = fuse_children(&d)[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    for pod in ["p1", "p2"] {
        while std::fs::read_to_string(d.target(pod).join("top.csv"))
            .ok()
            .as_deref()
            != Some("a,b\n1,2\n")
        {
            assert!(Instant::now() < deadline, "{pod}'s target never came back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_healthy(&d, &mut node, "p2").await;
    assert_eq!(fuse_children(&d).len(), 1);
    assert_ne!(fuse_children(&d)[0], pid, "a new server");
    node.node_publish_volume(publish_req(&d, &g, "p3"))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(d.target("p3").join("top.csv")).unwrap(),
        "a,b\n1,2\n"
    );
    assert_eq!(fuse_children(&d).len(), 1);

    // Unpublishing everyone removes the shared mount and its process.
    for pod in ["p1", "p2", "p3", "p3"] {
        node.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: "s3-data".into(),
            target_path: d.target(pod).display().to_string(),
        })
        .await
        .unwrap();
        assert!(!d.target(pod).exists());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fuse_children(&d).is_empty() {
        assert!(
            Instant::now() < deadline,
            "FUSE process still running after the last unpublish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shared = std::fs::read_dir(d.dir.path().join("state/s3"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path()
        .join("mnt");
    assert!(!mounted(&shared));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_bucket_fails_the_publish_with_the_reason() {
    let g = Garage::start("exists");
    let d = start(&g);
    let mut node = node(&d).await;
    let mut r = publish_req(&d, &g, "p1");
    r.volume_context
        .insert("bucket".into(), "no-such-bucket".into());
    let e = node.node_publish_volume(r).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{}", e.message());
    assert!(e.message().contains("no-such-bucket"), "{}", e.message());
    assert!(!d.target("p1").exists());
    assert!(fuse_children(&d).is_empty());
}
