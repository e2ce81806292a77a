//! The real `hubfs csi` binary on a temporary unix socket, driven over gRPC
//! exactly as kubelet and external-provisioner drive it, with real bind
//! mounts (`backend: local`). Needs root, as the driver does in a cluster.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hubfs_proto::csi::{
    controller_client::ControllerClient,
    identity_client::IdentityClient,
    node_client::NodeClient,
    volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume},
    volume_usage::Unit,
    CapacityRange, ControllerExpandVolumeRequest, CreateVolumeRequest, DeleteVolumeRequest,
    GetPluginInfoRequest, NodeGetVolumeStatsRequest, NodePublishVolumeRequest,
    NodeStageVolumeRequest, NodeUnpublishVolumeRequest, NodeUnstageVolumeRequest, ProbeRequest,
    VolumeCapability,
};
use tonic::transport::Channel;
use tonic::Code;

/// A running driver plus the directories it works in. Dropping it kills the
/// driver and detaches any mount a failed test left behind.
struct Driver {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Driver {
    fn start() -> Self {
        hubfs_e2e::require_root("the CSI driver bind-mounts volumes");
        let dir = tempfile::tempdir().unwrap();
        for d in ["share", "kubelet", "state"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let socket = dir.path().join("csi.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_hubfs"))
            .args(["csi", "--endpoint"])
            .arg(format!("unix://{}", socket.display()))
            .args([
                "--node-id",
                "node-1",
                "--mode",
                "all",
                "--log-format",
                "json",
                "--log-level",
                "info,hubfs=debug",
            ])
            .arg("--kubelet-dir")
            .arg(dir.path().join("kubelet"))
            .arg("--allowed-root")
            .arg(dir.path().join("share"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        hubfs_e2e::wait_for_socket(&socket, Duration::from_secs(20), "the driver's socket");
        Self { child, dir, socket }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    async fn channel(&self) -> Channel {
        hubfs::server::connect_unix(&self.socket).await.unwrap()
    }

    fn params(&self, on_delete: &str, pvc: &str) -> HashMap<String, String> {
        HashMap::from([
            ("type".into(), "home".into()),
            ("backend".into(), "local".into()),
            ("root".into(), self.path("share").display().to_string()),
            ("basePath".into(), "/users".into()),
            ("onDelete".into(), on_delete.into()),
            ("accounting".into(), "bind".into()),
            ("csi.storage.k8s.io/pvc/name".into(), pvc.into()),
            ("csi.storage.k8s.io/pvc/namespace".into(), "jhub".into()),
        ])
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        hubfs_e2e::csi::detach_mounts_below(self.dir.path());
    }
}

fn cap(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

fn is_mounted(p: &Path) -> bool {
    hubfs_e2e::csi::is_mounted(p)
}

fn create_req(
    d: &Driver,
    name: &str,
    pvc: &str,
    on_delete: &str,
    bytes: i64,
) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![cap(Mode::MultiNodeMultiWriter)],
        parameters: d.params(on_delete, pvc),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kubelet_lifecycle_with_real_bind_mounts() {
    let d = Driver::start();
    let ch = d.channel().await;
    let mut id = IdentityClient::new(ch.clone());
    let mut ctl = ControllerClient::new(ch.clone());
    let mut node = NodeClient::new(ch);

    let info = id
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "hubfs.csi.jupyter.org");
    assert_eq!(
        id.probe(ProbeRequest {}).await.unwrap().into_inner().ready,
        Some(true)
    );

    // external-provisioner: CreateVolume, retried as it does.
    let req = create_req(&d, "pvc-0001", "claim-alice", "delete", 1 << 20);
    let vol = ctl
        .create_volume(req.clone())
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    for _ in 0..3 {
        let again = ctl
            .create_volume(req.clone())
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        assert_eq!(again.volume_id, vol.volume_id);
    }
    let mut bigger = req.clone();
    bigger.capacity_range = Some(CapacityRange {
        required_bytes: 2 << 20,
        limit_bytes: 0,
    });
    assert_eq!(
        ctl.create_volume(bigger).await.unwrap_err().code(),
        Code::AlreadyExists
    );
    let home = d.path("share/users/alice");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path("share/users/.hubfs/alice.json")).unwrap())
            .unwrap();
    assert_eq!(meta["capacity_bytes"], 1 << 20);
    assert_eq!(
        (meta["pvc_name"].as_str(), meta["pvc_namespace"].as_str()),
        (Some("claim-alice"), Some("jhub"))
    );
    let md = std::fs::metadata(&home).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (1000, 100, 0o750));

    // kubelet: stage, publish (twice, as after a kubelet restart).
    let staging = d.path("kubelet/plugins/kubernetes.io/csi/hubfs/abc/globalmount");
    std::fs::create_dir_all(&staging).unwrap();
    let target = d.path("kubelet/pods/uid-1/volumes/kubernetes.io~csi/pvc-0001/mount");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let stage = NodeStageVolumeRequest {
        volume_id: vol.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(cap(Mode::MultiNodeMultiWriter)),
        volume_context: vol.volume_context.clone(),
        ..Default::default()
    };
    let publish = NodePublishVolumeRequest {
        volume_id: vol.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(cap(Mode::MultiNodeMultiWriter)),
        volume_context: vol.volume_context.clone(),
        ..Default::default()
    };
    for _ in 0..2 {
        node.node_stage_volume(stage.clone()).await.unwrap();
        node.node_publish_volume(publish.clone()).await.unwrap();
    }
    assert!(is_mounted(&staging) && is_mounted(&target));

    // The notebook (uid 1000) writes through the target; the file lands in the home.
    let status = Command::new("setpriv")
        .args([
            "--reuid",
            "1000",
            "--regid",
            "100",
            "--clear-groups",
            "sh",
            "-c",
        ])
        .arg(format!(
            "head -c 4096 /dev/zero > '{}/notebook.ipynb'",
            target.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    let f = std::fs::metadata(home.join("notebook.ipynb")).unwrap();
    assert_eq!((f.len(), f.uid()), (4096, 1000));

    // NodeGetVolumeStats sees it against the 1 MiB quota. The first call
    // waits a little for the walk; a slow machine may need another call, as
    // kubelet would make.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let stats = loop {
        let stats = node
            .node_get_volume_stats(NodeGetVolumeStatsRequest {
                volume_id: vol.volume_id.clone(),
                volume_path: target.display().to_string(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if !stats.usage.is_empty() || std::time::Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let bytes = stats
        .usage
        .iter()
        .find(|u| u.unit == Unit::Bytes as i32)
        .unwrap();
    assert_eq!(
        (bytes.used, bytes.total, bytes.available),
        (4096, 1 << 20, (1 << 20) - 4096)
    );
    assert!(!stats.volume_condition.unwrap().abnormal);

    // Resize: the quota follows the PVC.
    let exp = ctl
        .controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: vol.volume_id.clone(),
            capacity_range: Some(CapacityRange {
                required_bytes: 3 << 20,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exp.capacity_bytes, 3 << 20);
    assert!(!exp.node_expansion_required);

    // Tear down, each step repeated.
    let unpublish = NodeUnpublishVolumeRequest {
        volume_id: vol.volume_id.clone(),
        target_path: target.display().to_string(),
    };
    for _ in 0..3 {
        node.node_unpublish_volume(unpublish.clone()).await.unwrap();
    }
    assert!(!target.exists(), "target removed");
    let unstage = NodeUnstageVolumeRequest {
        volume_id: vol.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
    };
    for _ in 0..3 {
        node.node_unstage_volume(unstage.clone()).await.unwrap();
    }
    assert!(!is_mounted(&staging));
    assert!(
        home.join("notebook.ipynb").exists(),
        "data survives unmounting"
    );

    // onDelete: delete removes the home; repeating is fine; unknown ids are OK.
    for _ in 0..2 {
        ctl.delete_volume(DeleteVolumeRequest {
            volume_id: vol.volume_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    assert!(!home.exists());
    ctl.delete_volume(DeleteVolumeRequest {
        volume_id: "not-ours".into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn retain_and_archive_keep_the_data() {
    let d = Driver::start();
    let mut ctl = ControllerClient::new(d.channel().await);
    let users = d.path("share/users");

    let v = ctl
        .create_volume(create_req(&d, "pvc-r", "claim-bob", "retain", 1 << 20))
        .await
        .unwrap();
    let id = v.into_inner().volume.unwrap().volume_id;
    std::fs::write(users.join("bob/thesis.tex"), b"chapter 1").unwrap();
    ctl.delete_volume(DeleteVolumeRequest {
        volume_id: id,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        std::fs::read(users.join("bob/thesis.tex")).unwrap(),
        b"chapter 1"
    );

    // A new PVC for the returning user adopts the retained home.
    let v = ctl
        .create_volume(create_req(&d, "pvc-r2", "claim-bob", "archive", 1 << 20))
        .await
        .unwrap();
    let id = v.into_inner().volume.unwrap().volume_id;
    assert_eq!(
        std::fs::read(users.join("bob/thesis.tex")).unwrap(),
        b"chapter 1"
    );
    ctl.delete_volume(DeleteVolumeRequest {
        volume_id: id,
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(!users.join("bob").exists());
    let archived: Vec<_> = std::fs::read_dir(&users)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("bob.archived-"))
        .collect();
    assert_eq!(archived.len(), 1);
    assert_eq!(
        std::fs::read(archived[0].path().join("thesis.tex")).unwrap(),
        b"chapter 1"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_old_volume_never_touches_an_adopted_home() {
    let d = Driver::start();
    let mut ctl = ControllerClient::new(d.channel().await);
    let old = ctl
        .create_volume(create_req(&d, "pvc-old", "claim-carol", "delete", 1 << 20))
        .await
        .unwrap();
    let old_id = old.into_inner().volume.unwrap().volume_id;
    ctl.create_volume(create_req(&d, "pvc-new", "claim-carol", "delete", 1 << 20))
        .await
        .unwrap();
    std::fs::write(d.path("share/users/carol/keep"), b"x").unwrap();
    ctl.delete_volume(DeleteVolumeRequest {
        volume_id: old_id,
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(d.path("share/users/carol/keep").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_input_gets_clear_errors_and_never_escapes() {
    let d = Driver::start();
    let ch = d.channel().await;
    let mut ctl = ControllerClient::new(ch.clone());
    let mut node = NodeClient::new(ch);
    let users = d.path("share/users");

    // Names that must be encoded into a single safe directory below basePath.
    for (i, pvc) in [
        "claim-..",
        "claim-../../etc",
        "claim-a/b",
        "claim-Zoë",
        "claim-.",
        "claim-.hubfs",
    ]
    .iter()
    .enumerate()
    {
        let v = ctl
            .create_volume(create_req(&d, &format!("pvc-h{i}"), pvc, "delete", 1 << 20))
            .await
            .unwrap_or_else(|e| panic!("{pvc}: {e}"))
            .into_inner()
            .volume
            .unwrap();
        let user = &v.volume_context["user"];
        assert_eq!(format!("claim-{user}"), *pvc);
    }
    for entry in std::fs::read_dir(&users).unwrap() {
        let e = entry.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(name == ".hubfs" || !name.starts_with('.'), "{name}");
        assert!(e.path().starts_with(&users));
    }
    assert!(!d.path("etc").exists() && !d.path("share/etc").exists());

    // Refused with INVALID_ARGUMENT: NUL, 300 characters, bad parameters.
    let long = format!("claim-{}", "u".repeat(300));
    for pvc in ["claim-a\0b", long.as_str()] {
        let e = ctl
            .create_volume(create_req(&d, "pvc-bad", pvc, "delete", 1 << 20))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{pvc:?}: {}", e.message());
    }
    let mut r = create_req(&d, "pvc-bad", "claim-x", "delete", 1 << 20);
    r.parameters.insert("basePath".into(), "/../../etc".into());
    assert_eq!(
        ctl.create_volume(r).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut r = create_req(&d, "pvc-bad", "claim-x", "delete", 1 << 20);
    r.parameters.insert("root".into(), "/etc".into());
    let e = ctl.create_volume(r).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("allowed root"), "{}", e.message());
    let mut r = create_req(&d, "", "claim-x", "delete", 1 << 20);
    r.name.clear();
    assert_eq!(
        ctl.create_volume(r).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut r = create_req(&d, "pvc-x", "claim-x", "delete", 1 << 20);
    r.volume_capabilities.clear();
    assert_eq!(
        ctl.create_volume(r).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let r = create_req(&d, "pvc-neg", "claim-x", "delete", -5);
    assert_eq!(
        ctl.create_volume(r).await.unwrap_err().code(),
        Code::OutOfRange
    );

    // Crafted volume ids: refused, nothing outside the share is touched.
    let root = d.path("share").display().to_string();
    for id in [
        format!("home1:delete:local:{root}::..:_2e_2e:pv"),
        format!("home1:delete:local:{root}::users%2F..%2F..:x:pv"),
        "home1:delete:local:/etc::.:passwd:pv".to_string(),
    ] {
        let e = ctl
            .delete_volume(DeleteVolumeRequest {
                volume_id: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{id}: {}", e.message());
        let stage = NodeStageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: d.path("kubelet/stage").display().to_string(),
            volume_capability: Some(cap(Mode::SingleNodeWriter)),
            ..Default::default()
        };
        assert_eq!(
            node.node_stage_volume(stage).await.unwrap_err().code(),
            Code::InvalidArgument,
            "{id}"
        );
    }
    assert!(Path::new("/etc/passwd").exists());

    // Targets outside kubelet's directory are refused before anything is created.
    let v = ctl
        .create_volume(create_req(&d, "pvc-t", "claim-tgt", "delete", 1 << 20))
        .await
        .unwrap();
    let vol = v.into_inner().volume.unwrap();
    for bad in [
        d.path("elsewhere/mount"),
        PathBuf::from("/etc/hubfs-test"),
        d.path("kubelet/../escape"),
    ] {
        let r = NodePublishVolumeRequest {
            volume_id: vol.volume_id.clone(),
            staging_target_path: d.path("kubelet/stage").display().to_string(),
            target_path: bad.display().to_string(),
            volume_capability: Some(cap(Mode::SingleNodeWriter)),
            volume_context: vol.volume_context.clone(),
            ..Default::default()
        };
        assert_eq!(
            node.node_publish_volume(r).await.unwrap_err().code(),
            Code::InvalidArgument,
            "{bad:?}"
        );
        assert!(!bad.exists());
    }
}

#[test]
fn a_stale_socket_is_replaced_and_a_bad_driver_name_refused() {
    let d = Driver::start();
    let out = Command::new(env!("CARGO_BIN_EXE_hubfs"))
        .args([
            "csi",
            "--endpoint",
            "unix:///tmp/x.sock",
            "--node-id",
            "n",
            "--driver-name",
            "1bad",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid CSI name"));
    // Kill the driver without cleanup; a second one must bind the same socket.
    let socket = d.socket.clone();
    let mut d = d;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    d.child.wait().unwrap();
    assert!(socket.exists(), "SIGKILL leaves the socket behind");
    let mut second = Command::new(env!("CARGO_BIN_EXE_hubfs"))
        .args(["csi", "--endpoint"])
        .arg(socket.display().to_string())
        .args(["--node-id", "n", "--state-dir"])
        .arg(d.path("state"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "second driver never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    second.kill().unwrap();
    second.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn accounting_fuse_publishes_the_home_layer_and_enforces_the_quota() {
    let d = Driver::start();
    let ch = d.channel().await;
    let mut ctl = ControllerClient::new(ch.clone());
    let mut node = NodeClient::new(ch);
    let mut req = create_req(&d, "pvc-fuse", "claim-dora", "retain", 1 << 20);
    req.parameters.insert("accounting".into(), "fuse".into());
    let vol = ctl
        .create_volume(req)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(vol.volume_context["accounting"], "fuse");
    let staging = d.path("kubelet/plugins/stage-dora");
    let target = d.path("kubelet/pods/uid-d/volumes/kubernetes.io~csi/pvc-fuse/mount");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    node.node_stage_volume(NodeStageVolumeRequest {
        volume_id: vol.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(cap(Mode::SingleNodeWriter)),
        volume_context: vol.volume_context.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let publish = NodePublishVolumeRequest {
        volume_id: vol.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(cap(Mode::SingleNodeWriter)),
        volume_context: vol.volume_context.clone(),
        ..Default::default()
    };
    node.node_publish_volume(publish.clone()).await.unwrap();
    node.node_publish_volume(publish).await.unwrap();
    let fs_type = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(&target.display().to_string()))
        .and_then(|l| {
            l.split(" - ")
                .nth(1)
                .map(|p| p.split(' ').next().unwrap().to_owned())
        })
        .unwrap();
    assert!(
        fs_type.starts_with("fuse"),
        "home layer mounted, got {fs_type}"
    );

    // The notebook user writes: fine under the quota, EDQUOT past it.
    let dd = |name: &str, kib: u32| {
        Command::new("setpriv")
            .args([
                "--reuid",
                "1000",
                "--regid",
                "100",
                "--clear-groups",
                "dd",
                "if=/dev/zero",
                "bs=1024",
            ])
            .arg(format!("count={kib}"))
            .arg(format!("of={}/{name}", target.display()))
            .output()
            .unwrap()
    };
    assert!(dd("small", 512).status.success());
    let big = dd("big", 2048);
    assert!(!big.status.success());
    assert!(
        String::from_utf8_lossy(&big.stderr).contains("Disk quota exceeded"),
        "{}",
        String::from_utf8_lossy(&big.stderr)
    );
    let vfs = nix::sys::statvfs::statvfs(&target).unwrap();
    assert_eq!(
        vfs.blocks() as u64 * vfs.fragment_size() as u64,
        1 << 20,
        "df shows the quota as the size"
    );
    assert!(
        d.path("share/users/dora/small").exists(),
        "writes land in the home on the share"
    );

    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: vol.volume_id.clone(),
        target_path: target.display().to_string(),
    })
    .await
    .unwrap();
    assert!(!target.exists());
    let leftover = std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(&*target.display().to_string()))
            .unwrap_or(false)
    });
    assert!(!leftover, "the home layer process is gone after unpublish");
}
