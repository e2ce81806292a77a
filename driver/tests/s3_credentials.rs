//! Per-volume S3 identities through the real CSI path: `hubfs csi --mode
//! node` beside a `hubfs mounter` (with the node's S3 data cache) on one
//! state dir, a real Garage on loopback with three keys, real kernel FUSE
//! and bind mounts. Two volumes of one bucket with different secrets get
//! two servers, each reading as its own key (a key whose access is revoked
//! fails its reads while the other still reads); a key without access to the
//! bucket never gets a mount; a killed server comes back with its identity;
//! and no secret is in any hubfs command line, the mount table, the state
//! file, the logs or the CSI answers. Needs root and /dev/fuse.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hubfs_e2e::csi::{mounter_metrics, s3_publish, start_s3_mounter};
use hubfs_e2e::garage::{client, Garage};
use hubfs_e2e::wait_until;
use hubfs_fuse::s3::store::ObjectStore;
use hubfs_proto::csi::{
    node_client::NodeClient, NodePublishVolumeRequest, NodeUnpublishVolumeRequest,
};
use tonic::transport::Channel;

/// A Garage key made for the test: id and secret chosen here.
struct Key {
    id: String,
    secret: String,
}

impl Key {
    fn import(g: &Garage, name: &str, tag: u8) -> Key {
        let k = Key {
            id: format!("GK{}", hex::encode([tag; 12])),
            secret: hex::encode([tag.wrapping_add(0x40); 32]),
        };
        g.cli(&["key", "import", "--yes", "-n", name, &k.id, &k.secret]);
        k
    }

    fn secrets(&self) -> HashMap<String, String> {
        HashMap::from([
            ("accessKeyID".into(), self.id.clone()),
            ("secretAccessKey".into(), self.secret.clone()),
        ])
    }
}

use hubfs_e2e::csi::NodeDriver as Driver;

/// The node plugin, logging at debug level into the state dir, beside
/// [`start_s3_mounter`]; pods' volume `pv`.
fn start(g: &Garage) -> Driver {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(dir.path().join("kubelet")).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let log = |name: &str| std::fs::File::create(state.join(name)).unwrap();
    let mounter = start_s3_mounter(g, dir.path());
    let mut plugin = hubfs_e2e::csi::node_plugin(dir.path(), &state);
    plugin
        .env("HUBFS_LOG", "hubfs=debug,info")
        .env_remove("RUST_LOG")
        .stdout(log("csi.log"))
        .stderr(log("csi.err.log"));
    Driver::start(dir, "pv", mounter, plugin)
}

async fn node(d: &Driver) -> NodeClient<Channel> {
    NodeClient::new(hubfs::server::connect_unix(&d.socket()).await.unwrap())
}

/// The pid of the server `pod`'s target shows.
fn server_of(d: &Driver, pod: &str) -> i32 {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(d.target(pod)).unwrap().dev();
    let s3 = d.state().join("s3");
    let id = std::fs::read_dir(&s3)
        .unwrap()
        .flatten()
        .find(|e| std::fs::metadata(e.path().join("mnt")).is_ok_and(|m| m.dev() == dev))
        .unwrap_or_else(|| panic!("no server under {} shows {pod}'s target", s3.display()))
        .file_name();
    let mnt = format!("/s3/{}/mnt", id.to_string_lossy());
    let servers = d.servers();
    servers
        .iter()
        .find(|(_, cmd)| cmd.contains(&mnt))
        .unwrap_or_else(|| panic!("no server process for {mnt}: {servers:#?}"))
        .0
}

fn request(
    d: &Driver,
    pod: &str,
    bucket: &str,
    g: &Garage,
    key: Option<&Key>,
) -> NodePublishVolumeRequest {
    let secrets = key.map(Key::secrets).unwrap_or_default();
    s3_publish(g, bucket, &format!("pv-{pod}"), &d.target(pod), secrets)
}

/// Every file below `dir` whose name ends in `.log` or is `servers.json`.
fn logs_and_state(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() && !hubfs_e2e::csi::is_mounted(&p) {
            logs_and_state(&p, out);
        } else if p.extension().is_some_and(|x| x == "log") || p.ends_with("servers.json") {
            out.push(p);
        }
    }
}

/// The text of `path` once it reads, within 30 s.
fn read_eventually(path: &Path) -> String {
    let mut text = None;
    wait_until(
        &format!("{} reads", path.display()),
        Duration::from_secs(30),
        || {
            text = std::fs::read_to_string(path).ok();
            text.is_some()
        },
    );
    text.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_volume_reads_with_its_own_identity_and_no_secret_leaks() {
    hubfs_e2e::require_root("FUSE and bind mounts");
    let g = Garage::start("course");
    let s3 = client(&g, &g.endpoint).await;
    for (key, body) in [
        ("a.txt", "first file\n"),
        ("b.txt", "second file\n"),
        ("c.txt", "third\n"),
    ] {
        s3.put(&g.bucket, key, bytes::Bytes::from(body))
            .await
            .unwrap();
    }
    g.create_bucket("research");
    // The node's identity (the mounter's environment) may not read the course
    // bucket: whatever reads it below reads with a volume's own key.
    g.cli(&["bucket", "deny", "--read", "course", "--key", &g.access_key]);
    // Key A and key B may read the course bucket; key C only the research one.
    let (a, b, c) = (
        Key::import(&g, "a", 0xa1),
        Key::import(&g, "b", 0xb2),
        Key::import(&g, "c", 0xc3),
    );
    for (bucket, key) in [("course", &a), ("course", &b), ("research", &c)] {
        g.cli(&["bucket", "allow", "--read", bucket, "--key", &key.id]);
    }
    let mut d = start(&g);
    let mut node = node(&d).await;
    let mut answers = Vec::new();

    for (pod, key) in [("pa", &a), ("pa2", &a), ("pb", &b)] {
        let r = node
            .node_publish_volume(request(&d, pod, "course", &g, Some(key)))
            .await
            .unwrap();
        answers.push(format!("{r:?}"));
    }
    // Two identities, two servers; the second pod of A shares A's.
    let servers = d.servers();
    assert_eq!(servers.len(), 2, "{servers:#?}");
    for pod in ["pa", "pa2", "pb"] {
        assert_eq!(
            read_eventually(&d.target(pod).join("a.txt")),
            "first file\n"
        );
    }
    // Each server has its own cache directory, named by its id.
    let cache = d.dir.path().join("cache");
    for (_, cmd) in &servers {
        assert!(
            cmd.contains(&format!("--cache-dir {}/", cache.display())),
            "{cmd}"
        );
        assert!(cmd.contains("--credentials-file /dev/fd/0"), "{cmd}");
    }
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 2);
    // Both servers' S3 and cache counters reach the mounter's one /metrics,
    // each sample labelled with its server (servers rewrite them every 5 s).
    let ids: Vec<String> = std::fs::read_dir(d.state().join("s3"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let text = mounter_metrics(d.dir.path());
        let each = ids.iter().all(|id| {
            text.contains(&format!(
                "hubfs_s3_requests_total{{server=\"{id}\",op=\"GetObject\"}}"
            )) && text.contains(&format!("hubfs_s3_cache_misses_total{{server=\"{id}\"}}"))
        });
        if each {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "servers' metrics missing:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(metrics.contains("hubfs_mounter_servers 2\n"), "{metrics}");
    assert_eq!(
        metrics.matches("# TYPE hubfs_s3_requests counter").count(),
        1
    );
    answers.push(metrics);

    // B loses its access: B's pods fail to read what A's pods still read.
    g.cli(&["bucket", "deny", "--read", "course", "--key", &b.id]);
    // (Garage applies it within moments: wait until a name never asked for
    // before stops being a plain "not found".)
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in 0.. {
        match std::fs::read_to_string(d.target("pb").join(format!("probe.{n}"))) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                assert!(Instant::now() < deadline, "B still lists the bucket");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => break,
            Ok(_) => panic!("a name that does not exist was read"),
        }
    }
    let err = std::fs::read_to_string(d.target("pb").join("b.txt")).unwrap_err();
    assert!(
        matches!(err.raw_os_error(), Some(libc::EACCES | libc::EIO)),
        "reading as B after the deny: {err}"
    );
    assert_eq!(
        std::fs::read_to_string(d.target("pa").join("b.txt")).unwrap(),
        "second file\n"
    );

    // C cannot read the bucket: it gets no mount at all, and no server.
    let e = node
        .node_publish_volume(request(&d, "pc", "course", &g, Some(&c)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{}", e.message());
    answers.push(e.message().to_string());
    assert!(!d.target("pc").exists());
    assert_eq!(d.servers().len(), 2);
    // A malformed secret is refused by key name.
    let mut bad = request(&d, "px", "course", &g, Some(&a));
    bad.secrets
        .insert("secretAccessKey".into(), format!("{}\0", a.secret));
    let e = node.node_publish_volume(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("secretAccessKey"), "{}", e.message());
    answers.push(e.message().to_string());

    // A's server dies: the mounter starts it again with A's identity.
    let a_pid = server_of(&d, "pa");
    assert_eq!(server_of(&d, "pa2"), a_pid);
    assert_ne!(server_of(&d, "pb"), a_pid);
    let before = d.servers();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(a_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until(
        &format!("the killed server comes back (before {before:#?})"),
        Duration::from_secs(30),
        || {
            let now = d.servers();
            now.len() == 2 && now.iter().all(|(p, _)| *p != a_pid)
        },
    );
    // With its identity: A reads again, B stays denied.
    for pod in ["pa", "pa2"] {
        assert_eq!(read_eventually(&d.target(pod).join("c.txt")), "third\n");
    }
    assert_ne!(server_of(&d, "pa"), a_pid);
    assert!(std::fs::read_to_string(d.target("pb").join("c.txt")).is_err());

    // The mounter itself goes, and A's server dies while it is away: the
    // next mounter, which was never told A's secret, starts A's server
    // again from its root-only file, with A's identity.
    let _ = d.mounter.kill();
    let _ = d.mounter.wait();
    let a_pid = server_of(&d, "pa");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(a_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    d.mounter = start_s3_mounter(&g, d.dir.path());
    for pod in ["pa", "pa2"] {
        assert_eq!(
            read_eventually(&d.target(pod).join("b.txt")),
            "second file\n"
        );
    }
    assert_ne!(server_of(&d, "pa"), a_pid);
    assert_eq!(d.servers().len(), 2, "B's server adopted, A's replaced");

    // The secrets are nowhere they must not be.
    let mut places: Vec<(String, String)> = hubfs_e2e::csi::hubfs_processes(|_| true)
        .into_iter()
        .map(|(pid, cmd)| (format!("/proc/{pid}/cmdline"), cmd))
        .collect();
    places.push((
        "/proc/self/mountinfo".into(),
        std::fs::read_to_string("/proc/self/mountinfo").unwrap(),
    ));
    let mut files = Vec::new();
    logs_and_state(&d.state(), &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("servers.json")),
        "{files:?}"
    );
    assert!(files.iter().any(|f| f.ends_with("server.log")), "{files:?}");
    assert!(
        files.iter().any(|f| f.ends_with("mounter.err.log")),
        "{files:?}"
    );
    for f in files {
        places.push((
            f.display().to_string(),
            std::fs::read_to_string(&f).unwrap(),
        ));
    }
    for (i, answer) in answers.iter().enumerate() {
        places.push((format!("CSI answer {i}"), answer.clone()));
    }
    let debug_logged = places
        .iter()
        .any(|(p, text)| p.ends_with("mounter.err.log") && text.contains("mounter request"));
    assert!(debug_logged, "the mounter logged its requests (at debug)");
    for key in [&a, &b, &c] {
        for (place, text) in &places {
            assert!(!text.contains(&key.secret), "a secret key is in {place}");
        }
    }
    // The credentials rest only in the server's root-only file.
    let kept: Vec<PathBuf> = std::fs::read_dir(d.state().join("s3"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("credentials"))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(kept.len(), 2);
    for p in &kept {
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600, "{}", p.display());
    }

    // The last pod of each identity goes: servers, credentials and caches go too.
    for pod in ["pa", "pa2", "pb"] {
        node.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: format!("pv-{pod}"),
            target_path: d.target(pod).display().to_string(),
        })
        .await
        .unwrap();
    }
    wait_until(
        "no server runs after the last unpublish",
        Duration::from_secs(10),
        || d.servers().is_empty(),
    );
    assert!(kept.iter().all(|p| !p.exists()), "credentials left behind");
    assert_eq!(
        std::fs::read_dir(&cache).unwrap().count(),
        0,
        "caches left behind"
    );
}
