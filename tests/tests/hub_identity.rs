//! The right user whatever KubeSpawner named the claim, end to end: a real
//! JupyterHub (`hubfs_e2e::hub`), the real `hubfs csi` binary driven over its
//! unix socket as external-provisioner and kubelet drive it (real bind
//! mounts, so root), the quota controller, and a local stand-in for the
//! Kubernetes API server (`hubfs_e2e::kube`: no real API server runs on these
//! machines) answering the PVC GETs with KubeSpawner's annotations and taking
//! the Events.
//!
//! Three hub users: `jmiller@stsci.edu` (claim named by the `safe` slug
//! scheme), `carol.smith@example.org` (claim named by the legacy `escape`
//! scheme, with a home and a quota record made before under that slug) and
//! `bob`. Two go over quota: exactly their two servers are stopped, the
//! records name the hub users, the Events land on their PVCs, bob keeps his
//! server.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hubfs_e2e::hub::{Hub, HubOptions};
use hubfs_e2e::kube::{KubeStandIn, PostedEvent};
use hubfs_proto::csi::{
    controller_client::ControllerClient,
    node_client::NodeClient,
    volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume},
    CapacityRange, CreateVolumeRequest, NodePublishVolumeRequest, NodeStageVolumeRequest,
    VolumeCapability,
};
use hubfs_quota::clock::SystemClock;
use hubfs_quota::config::Config;
use hubfs_quota::controller::Controller;
use hubfs_quota::events::{EventSink, KubeEventSink};
use hubfs_quota::hub::{HubApi, HubClient, Token};
use hubfs_quota::notify::LogNotifier;
use hubfs_quota::record::QuotaRecord;
use hubfs_quota::store::Store;

const MIB: usize = 1 << 20;

/// (hub user, claim KubeSpawner made, encoded home directory)
const USERS: [(&str, &str, &str); 3] = [
    (
        "jmiller@stsci.edu",
        "claim-jmiller-stsci-edu---77689c6d",
        "jmiller_40stsci_2eedu",
    ),
    (
        "carol.smith@example.org",
        "claim-carol-2esmith-40example-2eorg",
        "carol_2esmith_40example_2eorg",
    ),
    ("bob", "claim-bob", "bob"),
];

struct Csi {
    child: Child,
    socket: PathBuf,
}

impl Drop for Csi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_csi(dir: &Path, kubeconfig: &Path, quota_endpoint: &str) -> Csi {
    let socket = dir.join("csi.sock");
    let child = Command::new(hubfs_e2e::garage::hubfs_binary())
        .args(["csi", "--endpoint"])
        .arg(format!("unix://{}", socket.display()))
        .args(["--node-id", "node-1", "--mode", "all"])
        .arg("--kubelet-dir")
        .arg(dir.join("kubelet"))
        .arg("--allowed-root")
        .arg(dir.join("share"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--quota-endpoint", quota_endpoint])
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    hubfs_e2e::wait_for_socket(&socket, Duration::from_secs(30), "the driver's socket");
    Csi { child, socket }
}

async fn channel(socket: &Path) -> tonic::transport::Channel {
    hubfs::server::connect_unix(socket).await.unwrap()
}

fn cap() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn events_about<'a>(events: &'a [PostedEvent], name: &str) -> Vec<&'a PostedEvent> {
    events.iter().filter(|e| e.name == name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_users_over_quota_are_stopped_by_their_hub_names_whatever_their_claims_are_called() {
    hubfs_e2e::require_root("this test mounts (bind mounts of published homes)");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for sub in ["share/users", "kubelet", "state", "control"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let users_dir = d.join("share/users");

    // Made before: carol's home and record under her escaped name (z2jh 3).
    let legacy_home = users_dir.join("carol-2esmith-40example-2eorg");
    std::fs::create_dir_all(&legacy_home).unwrap();
    std::fs::write(legacy_home.join("data.bin"), vec![7u8; 3 * MIB]).unwrap();
    let legacy_record = d.join("control/carol-2esmith-40example-2eorg");

    // The Kubernetes API: the three claims KubeSpawner made.
    let kube = KubeStandIn::start().await;
    for (user, claim, _) in USERS {
        kube.add_pvc("jhub", claim, &[("hub.jupyter.org/username", user)]);
    }
    let kubeconfig = kube.kubeconfig(d);

    // The hub, with the three users' servers running.
    let hub = Hub::start(HubOptions::default()).await;
    let names: Vec<String> = USERS.iter().map(|u| u.0.to_owned()).collect();
    hub.create_users(&names).await;
    for n in &names {
        hub.start_server(n).await;
    }

    // The quota controller, posting Events through the stand-in.
    let cfg = Config::default();
    let store = Store::open(
        &d.join("control"),
        "e2e",
        Duration::from_secs(60),
        Duration::from_secs(10),
        Arc::new(hubfs_quota::clock::SystemClock),
    )
    .unwrap();
    let slug = "carol-2esmith-40example-2eorg";
    store
        .update(slug, || QuotaRecord::new(slug, &cfg.defaults), |_| false)
        .unwrap();
    assert!(legacy_record.join("quota.yaml").is_file());
    let hub_api: Arc<dyn HubApi> = Arc::new(
        HubClient::new(&hub.url, Token::new(&hub.service_token), cfg.hub.clone()).unwrap(),
    );
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .unwrap(),
    )
    .unwrap();
    let events: Arc<dyn EventSink> = Arc::new(KubeEventSink::new(client, "hubfs-quota", "e2e"));
    let ctrl = Arc::new(
        Controller::new(
            cfg,
            store,
            Some(users_dir.clone()),
            Arc::new(SystemClock),
            Some(hub_api),
            Arc::new(LogNotifier),
        )
        .with_events(events),
    );
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = grpc.local_addr().unwrap();
    let svc = hubfs_quota::grpc::QuotaService::new(ctrl.clone()).server();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream_listener(grpc)),
    );

    // external-provisioner: CreateVolume with --extra-create-metadata.
    let csi = start_csi(d, &kubeconfig, &format!("http://{grpc_addr}"));
    let ch = channel(&csi.socket).await;
    let mut ctl = ControllerClient::new(ch.clone());
    let mut node = NodeClient::new(ch);
    let mut volumes = Vec::new();
    for (i, (user, claim, encoded)) in USERS.iter().enumerate() {
        let req = CreateVolumeRequest {
            name: format!("pvc-000{i}"),
            capacity_range: Some(CapacityRange {
                required_bytes: MIB as i64,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![cap()],
            parameters: HashMap::from([
                ("type".into(), "home".into()),
                ("root".into(), d.join("share").display().to_string()),
                ("basePath".into(), "/users".into()),
                ("accounting".into(), "bind".into()),
                ("csi.storage.k8s.io/pvc/name".into(), claim.to_string()),
                ("csi.storage.k8s.io/pvc/namespace".into(), "jhub".into()),
            ]),
            ..Default::default()
        };
        let vol = ctl
            .create_volume(req)
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        assert_eq!(vol.volume_context["user"], *user, "{claim}");
        assert!(users_dir.join(encoded).is_dir(), "{encoded}");
        volumes.push(vol);
    }
    // carol's home was adopted with its data, not created beside it.
    assert!(!legacy_home.exists());
    assert_eq!(
        std::fs::metadata(users_dir.join("carol_2esmith_40example_2eorg/data.bin"))
            .unwrap()
            .len(),
        3 * MIB as u64
    );
    let gets: Vec<String> = kube
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET pvc"))
        .collect();
    assert_eq!(gets.len(), 3, "{gets:?}");

    // carol's home is measured before her pod mounts it (her data is old).
    ctrl.walk_user("carol.smith@example.org")
        .await
        .unwrap()
        .expect("walked");

    // kubelet: stage and publish each home into its pod.
    let mut targets = Vec::new();
    for (i, vol) in volumes.iter().enumerate() {
        let staging = d.join(format!("kubelet/plugins/hubfs/{i}/globalmount"));
        let target = d.join(format!(
            "kubelet/pods/uid-{i}/volumes/kubernetes.io~csi/pvc/mount"
        ));
        std::fs::create_dir_all(&staging).unwrap();
        node.node_stage_volume(NodeStageVolumeRequest {
            volume_id: vol.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(cap()),
            volume_context: vol.volume_context.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut ctx = vol.volume_context.clone();
        ctx.insert("csi.storage.k8s.io/pod.name".into(), format!("jupyter-{i}"));
        ctx.insert("csi.storage.k8s.io/pod.namespace".into(), "jhub".into());
        node.node_publish_volume(NodePublishVolumeRequest {
            volume_id: vol.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
            target_path: target.display().to_string(),
            volume_capability: Some(cap()),
            volume_context: ctx,
            ..Default::default()
        })
        .await
        .unwrap();
        targets.push(target);
    }
    // The users write through their mounts: jmiller past the quota, bob not.
    std::fs::write(targets[0].join("big.fits"), vec![1u8; 2 * MIB]).unwrap();
    std::fs::write(targets[2].join("small.txt"), vec![2u8; 64 * 1024]).unwrap();

    // The controller measures every home and acts; the reaper lists the hub.
    for (user, _, _) in USERS {
        ctrl.walk_user(user).await.unwrap().expect("walked");
    }
    let cycle = ctrl.reaper_cycle().await.unwrap();
    assert_eq!(cycle.hub_users, 3);
    for user in ["jmiller@stsci.edu", "carol.smith@example.org"] {
        hub.wait_for(user, "server stopped", |u| u["servers"].get("").is_none())
            .await;
    }
    assert!(hub.server_ready("bob").await, "bob keeps his server");

    // The records name the hub users; carol's old record was adopted.
    for (user, _, encoded) in USERS {
        let text =
            std::fs::read_to_string(d.join("control").join(encoded).join("quota.yaml")).unwrap();
        assert!(text.contains(&format!("user: {user}")), "{encoded}: {text}");
        let state = ctrl.get(user).unwrap().0;
        assert_eq!(state.user, user);
    }
    assert!(legacy_record
        .join("quota.yaml.adopted-by-carol_2esmith_40example_2eorg")
        .is_file());
    assert!(!legacy_record.join("quota.yaml").exists());
    // The slug finds the same record as the hub name.
    assert_eq!(
        ctrl.get("carol-2esmith-40example-2eorg").unwrap().0.user,
        "carol.smith@example.org"
    );

    // Events: on the two PVCs over quota, none of that kind on bob's.
    let stop_reasons = ["OverQuota", "ServerStopped"];
    wait_until("events of both stops", || {
        let ev = kube.events();
        USERS[..2].iter().all(|(_, claim, _)| {
            stop_reasons
                .iter()
                .all(|r| events_about(&ev, claim).iter().any(|e| e.reason == *r))
        })
    })
    .await;
    let ev = kube.events();
    for (user, claim, _) in &USERS[..2] {
        let stopped = events_about(&ev, claim)
            .into_iter()
            .find(|e| e.reason == "ServerStopped")
            .unwrap();
        assert_eq!(stopped.kind, "PersistentVolumeClaim");
        assert!(stopped.note.contains(user), "{}", stopped.note);
    }
    assert!(
        events_about(&ev, "claim-bob")
            .iter()
            .all(|e| !stop_reasons.contains(&e.reason.as_str())),
        "{ev:?}"
    );
    // Provisioning told each PVC whose home it is.
    for (user, claim, _) in USERS {
        assert!(
            events_about(&ev, claim)
                .iter()
                .any(|e| e.reason == "HomeProvisioned"
                    && e.note.contains(&format!("home of {user} "))),
            "{claim}: {ev:?}"
        );
    }
    // The mount told carol's pod whose home and how full (known at mount time).
    let carol_mount = ev
        .iter()
        .find(|e| e.reason == "HomeMounted" && e.name == "jupyter-1")
        .expect("HomeMounted on carol's pod");
    assert!(
        carol_mount
            .note
            .starts_with("home of carol.smith@example.org mounted: 3 MiB of 1 MiB used (300%)"),
        "{}",
        carol_mount.note
    );
    drop(csi);
    hubfs_e2e::csi::detach_mounts_below(d);
}

fn tokio_stream_listener(
    l: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(l, |l| async move {
        let r = l.accept().await.map(|(s, _)| s);
        Some((r, l))
    })
}
