//! The node's S3 data cache across a bucket server's crash, through the
//! real CSI path: `hubfs csi --mode node` beside a `hubfs mounter` with
//! `--s3-cache-dir`, a real Garage on loopback, real kernel FUSE and bind
//! mounts. A pod reads a dataset (the server fills its cache directory); the
//! server is killed (SIGKILL) and the mounter starts it again with the same
//! flags; after the page cache is dropped, the pod reads the dataset whole
//! again and Garage serves no GetObject. Needs root and /dev/fuse.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use hubfs_e2e::csi::{s3_publish, start_s3_mounter, NodeDriver};
use hubfs_e2e::garage::{client, Garage};
use hubfs_e2e::{sha_of_file, wait_until};
use hubfs_fuse::s3::store::ObjectStore;
use hubfs_proto::csi::node_client::NodeClient;
use sha2::{Digest, Sha256};

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
    let mounter = start_s3_mounter(&g, dir.path());
    let mut plugin = hubfs_e2e::csi::node_plugin(dir.path(), &state);
    plugin
        .stdout(std::fs::File::create(state.join("csi.log")).unwrap())
        .stderr(std::fs::File::create(state.join("csi.err.log")).unwrap());
    let d = NodeDriver::start(dir, "pv", mounter, plugin);
    let mut node = NodeClient::new(hubfs::server::connect_unix(&d.socket()).await.unwrap());
    let target = d.target("pod");
    let request = s3_publish(&g, &g.bucket, "pv-course", &target, HashMap::new());
    node.node_publish_volume(request).await.unwrap();
    let file = d.target("pod").join("set.bin");
    assert_eq!(sha_of_file(&file, |_| {}), want);
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
    assert_eq!(sha_of_file(&file, |_| {}), want);
    assert_eq!(
        g.s3_requests("GetObject"),
        gets,
        "the restarted server read its warm cache: no GetObject"
    );
}
