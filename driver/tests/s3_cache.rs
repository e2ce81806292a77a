//! The node's S3 data cache across a bucket server's crash, through the
//! real CSI path: `hubfs csi --mode node` beside a `hubfs mounter` with
//! `--s3-cache-dir`, a real Garage on loopback, real kernel FUSE and bind
//! mounts. A pod reads a dataset (the server fills its cache directory); the
//! server is killed (SIGKILL) and the mounter starts it again with the same
//! flags; after the page cache is dropped, the pod reads the dataset whole
//! again and Garage serves no GetObject. Needs root and /dev/fuse.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use hubfs_e2e::csi::NodeDriver;
use hubfs_e2e::garage::{client, Garage};
use hubfs_e2e::wait_until;
use hubfs_fuse::s3::store::ObjectStore;
use hubfs_proto::csi::{
    node_client::NodeClient,
    volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume},
    NodePublishVolumeRequest, VolumeCapability,
};
use sha2::{Digest, Sha256};

/// A `hubfs mounter` on `dir/state` with the S3 data cache in `dir/cache`;
/// the node's identity is Garage's default key.
fn start_mounter(g: &Garage, dir: &Path) -> Child {
    let state = dir.join("state");
    let log = |name: &str| std::fs::File::create(state.join(name)).unwrap();
    let m = Command::new(env!("CARGO_BIN_EXE_hubfs"))
        .arg("mounter")
        .arg("--state-dir")
        .arg(&state)
        .arg("--s3-cache-dir")
        .arg(dir.join("cache"))
        .args(["--s3-cache-size", "64Mi"])
        .env("AWS_ACCESS_KEY_ID", &g.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &g.secret_key)
        .env_remove("AWS_PROFILE")
        .stdout(log("mounter.log"))
        .stderr(log("mounter.err.log"))
        .spawn()
        .unwrap();
    hubfs_e2e::wait_for_socket(
        &state.join("mounter.sock"),
        Duration::from_secs(20),
        "the mounter's socket",
    );
    m
}

fn sha_file(p: &Path) -> String {
    let mut f = std::fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read through the mount");
        if n == 0 {
            return hex::encode(h.finalize());
        }
        h.update(&buf[..n]);
    }
}

/// Bytes of block files in the servers' cache directories.
fn cached_bytes(cache: &Path) -> u64 {
    std::fs::read_dir(cache)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|server| std::fs::read_dir(server.path()).into_iter().flatten())
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_bucket_server_serves_its_warm_cache_with_zero_gets() {
    hubfs_e2e::require_root("FUSE and bind mounts");
    let g = Garage::start("course");
    let s3 = client(&g, &g.endpoint).await;
    let len = 24usize << 20;
    let body: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    s3.put(&g.bucket, "set.bin", bytes::Bytes::from(body.clone()))
        .await
        .unwrap();
    let want = hex::encode(Sha256::digest(&body));

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(dir.path().join("kubelet")).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let mounter = start_mounter(&g, dir.path());
    let mut plugin = hubfs_e2e::csi::node_plugin(dir.path(), &state);
    plugin
        .stdout(std::fs::File::create(state.join("csi.log")).unwrap())
        .stderr(std::fs::File::create(state.join("csi.err.log")).unwrap());
    let d = NodeDriver::start(dir, "pv", mounter, plugin);
    let mut node = NodeClient::new(hubfs::server::connect_unix(&d.socket()).await.unwrap());
    node.node_publish_volume(NodePublishVolumeRequest {
        volume_id: "pv-course".into(),
        target_path: d.target("pod").display().to_string(),
        volume_capability: Some(VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode {
                mode: Mode::MultiNodeReaderOnly as i32,
            }),
        }),
        readonly: true,
        volume_context: HashMap::from([
            ("type".into(), "s3".into()),
            ("bucket".into(), g.bucket.clone()),
            ("endpoint".into(), g.endpoint.clone()),
            ("region".into(), g.region.clone()),
        ]),
        ..Default::default()
    })
    .await
    .unwrap();
    let file = d.target("pod").join("set.bin");
    assert_eq!(sha_file(&file), want);
    let cache = d.dir.path().join("cache");
    wait_until(
        "the server's cache holds the dataset",
        Duration::from_secs(60),
        || cached_bytes(&cache) >= len as u64,
    );

    // The server crashes; the mounter starts it again with the same flags.
    let servers = d.servers();
    assert_eq!(servers.len(), 1, "{servers:#?}");
    let (pid, _) = servers[0].clone();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until(
        "the killed server comes back",
        Duration::from_secs(30),
        || {
            let now = d.servers();
            now.len() == 1 && now[0].0 != pid && std::fs::metadata(&file).is_ok()
        },
    );
    assert_eq!(d.servers()[0].1, servers[0].1, "the same flags");
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    let gets = g.s3_requests("GetObject");
    assert_eq!(sha_file(&file), want);
    assert_eq!(
        g.s3_requests("GetObject"),
        gets,
        "the restarted server read its warm cache: no GetObject"
    );
}
