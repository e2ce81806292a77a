//! Mounts outlive the node plugin, and recover in place when their server
//! dies. Real processes, real kernel FUSE and bind mounts, real Garage, as
//! root.
//!
//! Containers are simulated honestly: the node plugin (`hubfs csi`) and the
//! mounter (`hubfs mounter`) each run as PID 1 of their own PID namespace
//! (`unshare --pid --fork --kill-child`), so killing the `unshare` process
//! kills everything that container started, and a "restart" is the same
//! command again, as kubelet does with `restartPolicy: Always`. A notebook
//! container is a process in its own mount namespace holding an `rslave`
//! recursive bind of the pod's target path, as the container runtime makes
//! it for `mountPropagation: HostToContainer`; it reads and lists through its
//! own view (`nsenter --mount`). The quota controller is a local stand-in
//! serving `hubfs.quota.v1` that counts the usage reports it receives.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hubfs::mounter::{MounterClient, ServerStatus, Servers};
use hubfs_e2e::garage::{client, Garage};
use hubfs_e2e::wait_until;
use hubfs_fuse::s3::store::ObjectStore;
use hubfs_proto::csi::{
    controller_client::ControllerClient,
    node_client::NodeClient,
    volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume},
    CapacityRange, CreateVolumeRequest, NodePublishVolumeRequest, NodeStageVolumeRequest,
    NodeUnpublishVolumeRequest, VolumeCapability,
};
use hubfs_proto::quota::{
    quota_server::{Quota, QuotaServer},
    GetUserQuotaRequest, ReportUsageRequest, ReportUsageResponse, UserQuota,
};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

/// The quota controller stand-in: counts reports, enforces nothing.
#[derive(Default)]
struct CountingQuota {
    reports: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl Quota for CountingQuota {
    async fn report_usage(
        &self,
        req: tonic::Request<ReportUsageRequest>,
    ) -> Result<tonic::Response<ReportUsageResponse>, tonic::Status> {
        let n = req.into_inner().reports.len() as u32;
        self.reports.fetch_add(n as u64, Ordering::SeqCst);
        Ok(tonic::Response::new(ReportUsageResponse {
            accepted: n,
            duplicates: 0,
            quotas: vec![],
        }))
    }

    async fn get_user_quota(
        &self,
        _: tonic::Request<GetUserQuotaRequest>,
    ) -> Result<tonic::Response<UserQuota>, tonic::Status> {
        Err(tonic::Status::not_found("no policy in this stand-in"))
    }
}

/// Serves the stand-in on a loopback port; returns its URL and report counter.
async fn quota_endpoint() -> (String, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = CountingQuota::default();
    let reports = svc.reports.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(QuotaServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (format!("http://{addr}"), reports)
}

/// A long-lived process as PID 1 of its own PID namespace.
struct Container {
    name: &'static str,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Container {
    fn start(name: &'static str, args: Vec<String>, env: Vec<(String, String)>) -> Self {
        let mut c = Self {
            name,
            args,
            env,
            child: None,
        };
        c.restart();
        c
    }

    /// Starts the same command again (kubelet's restartPolicy: Always).
    fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is still running", self.name);
        let child = Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "--"])
            .arg(env!("CARGO_BIN_EXE_hubfs"))
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("AWS_PROFILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL of the container: its PID 1 and everything under it die.
    fn kill(&mut self) {
        let mut c = self.child.take().expect("running");
        c.kill().unwrap();
        c.wait().unwrap();
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A notebook container: its own mount namespace with an `rslave` rbind of
/// a pod target at `view`, as `mountPropagation: HostToContainer` makes it.
struct Notebook {
    child: Child,
    view: PathBuf,
}

impl Notebook {
    fn start(target: &Path, view: &Path) -> Self {
        std::fs::create_dir_all(view).unwrap();
        let script = format!(
            "mount --make-rslave / && mount --rbind '{t}' '{v}' && mount --make-rslave '{v}' && echo ready && exec sleep 100000",
            t = target.display(),
            v = view.display()
        );
        let mut child = Command::new("unshare")
            .args(["--mount", "--propagation", "unchanged", "--", "sh", "-c"])
            .arg(script)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = [0u8; 6];
        child
            .stdout
            .as_mut()
            .unwrap()
            .read_exact(&mut ready)
            .unwrap();
        assert_eq!(&ready, b"ready\n");
        Self {
            child,
            view: view.to_owned(),
        }
    }

    /// Runs `sh -c script` inside the notebook's mount namespace, with
    /// `$V` set to its view of the volume.
    fn sh(&self, script: &str) -> Output {
        Command::new("nsenter")
            .args(["--mount", "--target"])
            .arg(self.child.id().to_string())
            .args(["--", "env"])
            .arg(format!("V={}", self.view.display()))
            .args(["sh", "-c", script])
            .output()
            .unwrap()
    }

    /// Whether the volume answers in the notebook's view: a listing and a read.
    fn works(&self, file: &str, want: &[u8]) -> bool {
        let o = self.sh(&format!("ls \"$V\" >/dev/null && cat \"$V/{file}\""));
        o.status.success() && o.stdout == want
    }
}

impl Drop for Notebook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node: the state, kubelet and share directories on a shared mount (as
/// /var/lib/kubelet is on a real node), the mounter and the plugin.
struct Node {
    dir: hubfs_e2e::csi::SharedDir,
    mounter: Container,
    plugin: Container,
    reports: Arc<AtomicU64>,
}

impl Node {
    async fn start(g: &Garage) -> Node {
        hubfs_e2e::require_root("these tests mount and make namespaces");
        let dir = hubfs_e2e::csi::SharedDir::new();
        let d = dir.path();
        for sub in ["share", "kubelet", "state", "views"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let (quota, reports) = quota_endpoint().await;
        let s = |p: &str| d.join(p).display().to_string();
        let aws = vec![
            ("AWS_ACCESS_KEY_ID".to_string(), g.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".to_string(), g.secret_key.clone()),
        ];
        let mounter = Container::start(
            "mounter",
            vec!["mounter".into(), "--state-dir".into(), s("state")],
            aws,
        );
        let plugin = Container::start(
            "plugin",
            vec![
                "csi".into(),
                "--mode".into(),
                "all".into(),
                "--servers".into(),
                "mounter".into(),
                "--node-id".into(),
                "n1".into(),
                "--no-events".into(),
                "--endpoint".into(),
                format!("unix://{}", s("csi.sock")),
                "--kubelet-dir".into(),
                s("kubelet"),
                "--allowed-root".into(),
                s("share"),
                "--state-dir".into(),
                s("state"),
                "--quota-endpoint".into(),
                quota,
            ],
            vec![],
        );
        let n = Node {
            dir,
            mounter,
            plugin,
            reports,
        };
        n.wait_for(&n.path("csi.sock"));
        n.wait_for(&n.path("state/mounter.sock"));
        n
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn wait_for(&self, socket: &Path) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "nothing answers on {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    async fn channel(&self) -> Channel {
        hubfs::server::connect_unix(&self.path("csi.sock"))
            .await
            .unwrap()
    }

    fn servers(&self) -> Vec<ServerStatus> {
        MounterClient::new(self.path("state/mounter.sock"))
            .status()
            .unwrap()
    }

    fn server_of(&self, target: &Path) -> ServerStatus {
        self.servers()
            .into_iter()
            .find(|s| s.targets.iter().any(|t| t == target))
            .unwrap_or_else(|| panic!("no server for {}", target.display()))
    }

    /// Stage and publish a fuse-accounted home for `user` into pod `pod`.
    async fn publish_home(&self, user: &str, pod: &str, quota: i64) -> PathBuf {
        let ch = self.channel().await;
        let mut ctl = ControllerClient::new(ch.clone());
        let mut node = NodeClient::new(ch);
        let params = HashMap::from([
            ("type".into(), "home".into()),
            ("backend".into(), "local".into()),
            ("root".into(), self.path("share").display().to_string()),
            ("basePath".into(), "/users".into()),
            ("accounting".into(), "fuse".into()),
            (
                "csi.storage.k8s.io/pvc/name".into(),
                format!("claim-{user}"),
            ),
            ("csi.storage.k8s.io/pvc/namespace".into(), "jhub".into()),
        ]);
        let vol = ctl
            .create_volume(CreateVolumeRequest {
                name: format!("pvc-{user}"),
                capacity_range: Some(CapacityRange {
                    required_bytes: quota,
                    limit_bytes: 0,
                }),
                volume_capabilities: vec![cap(Mode::SingleNodeWriter)],
                parameters: params,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        let staging = self.path(&format!("kubelet/plugins/hubfs/pv/pvc-{user}/globalmount"));
        let target = self.path(&format!(
            "kubelet/pods/{pod}/volumes/kubernetes.io~csi/pvc-{user}/mount"
        ));
        node.node_stage_volume(NodeStageVolumeRequest {
            volume_id: vol.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(cap(Mode::SingleNodeWriter)),
            volume_context: vol.volume_context.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        node.node_publish_volume(NodePublishVolumeRequest {
            volume_id: vol.volume_id,
            staging_target_path: staging.display().to_string(),
            target_path: target.display().to_string(),
            volume_capability: Some(cap(Mode::SingleNodeWriter)),
            volume_context: vol.volume_context,
            ..Default::default()
        })
        .await
        .unwrap();
        target
    }

    /// Publish the bucket read-only into pod `pod`.
    async fn publish_bucket(&self, g: &Garage, pod: &str) -> PathBuf {
        let mut node = NodeClient::new(self.channel().await);
        let target = self.path(&format!(
            "kubelet/pods/{pod}/volumes/kubernetes.io~csi/s3-data/mount"
        ));
        let request = hubfs_e2e::csi::s3_publish(g, &g.bucket, "s3-data", &target, HashMap::new());
        node.node_publish_volume(request).await.unwrap();
        target
    }

    async fn unpublish(&self, volume_id: &str, target: &Path) {
        let mut node = NodeClient::new(self.channel().await);
        node.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: volume_id.into(),
            target_path: target.display().to_string(),
        })
        .await
        .unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.plugin.child.take().map(|mut c| {
            let _ = c.kill();
            c.wait()
        });
        self.mounter.child.take().map(|mut c| {
            let _ = c.kill();
            c.wait()
        });
        // Servers die with the mounter's namespace; then nothing is busy.
        let deadline = Instant::now() + Duration::from_secs(10);
        while server_pids(self.dir.path()).next().is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Then `dir`, dropped next, detaches the mounts below it and itself.
    }
}

/// `hubfs mount` processes serving below `dir`.
fn server_pids(dir: &Path) -> impl Iterator<Item = u32> {
    let dir = dir.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(move |e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (cmd.contains(" mount ") && cmd.contains(&dir)).then_some(pid)
        })
}

/// The host's pid of a server: the mounter reports pids of its own PID
/// namespace, so find the process serving the same mountpoint whose
/// innermost pid (`NSpid`) is the reported one.
fn host_pid(s: &ServerStatus) -> i32 {
    let want = s.pid.expect("server running");
    let mp = s.mountpoint.display().to_string();
    let found: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let serves = cmd.split(|b| *b == 0).any(|a| a == mp.as_bytes());
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            let nspid = status.lines().find(|l| l.starts_with("NSpid:"))?;
            let inner: u32 = nspid.split_whitespace().last()?.parse().ok()?;
            (serves && inner == want).then_some(pid)
        })
        .collect();
    assert_eq!(found.len(), 1, "host pid of {} ({want}): {found:?}", s.id);
    found[0]
}

fn cap(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

/// Deterministic, incompressible-looking content.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut x = 0x9e37_79b9_u32 ^ seed as u32;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Writes `kib` KiB as the notebook user (uid 1000) with dd; the output.
fn dd(path: &Path, kib: u32) -> Output {
    Command::new("setpriv")
        .args(["--reuid", "1000", "--regid", "100", "--clear-groups"])
        .args(["dd", "if=/dev/zero", "bs=1024", "conv=fsync"])
        .arg(format!("count={kib}"))
        .arg(format!("of={}", path.display()))
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_plugin_interrupts_nothing() {
    let g = Garage::start("data");
    let s3 = client(&g, &g.endpoint).await;
    let object = pattern(6 << 20, 1);
    s3.put(&g.bucket, "big.bin", bytes::Bytes::from(object.clone()))
        .await
        .unwrap();
    let mut n = Node::start(&g).await;
    let home = n.publish_home("alice", "uid-a", 4 << 20).await;
    let bucket = n.publish_bucket(&g, "uid-a").await;
    let home_data = pattern(2 << 20, 2);
    std::fs::write(home.join("notes.bin"), &home_data).unwrap();
    let before = n.servers();
    assert_eq!(before.len(), 2, "{before:?}");

    // Another process (this one) holds a file open on each, half read.
    let mut open_home = std::fs::File::open(home.join("notes.bin")).unwrap();
    let mut open_s3 = std::fs::File::open(bucket.join("big.bin")).unwrap();
    let mut got_home = vec![0u8; 1 << 20];
    open_home.read_exact(&mut got_home).unwrap();
    let mut got_s3 = vec![0u8; 3 << 20];
    open_s3.read_exact(&mut got_s3).unwrap();
    // Wait for the first usage report, to see reports continue afterwards.
    wait_until("first usage report", Duration::from_secs(30), || {
        n.reports.load(Ordering::SeqCst) > 0
    });

    n.plugin.kill();
    let reports_at_kill = n.reports.load(Ordering::SeqCst);
    // With no plugin at all, and no CSI call: everything goes on.
    open_home.read_to_end(&mut got_home).unwrap();
    open_s3.read_to_end(&mut got_s3).unwrap();
    assert_eq!(sha(&got_home), sha(&home_data), "held home file reads on");
    assert_eq!(sha(&got_s3), sha(&object), "held S3 file reads on");
    assert_eq!(
        sha(&std::fs::read(bucket.join("big.bin")).unwrap()),
        sha(&object)
    );
    assert!(std::fs::read_dir(&bucket)
        .unwrap()
        .flatten()
        .any(|e| e.file_name() == "big.bin"));
    let w = dd(&home.join("after-kill"), 512);
    assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stderr));
    let over = dd(&home.join("too-much"), 2048);
    assert!(!over.status.success());
    assert!(
        String::from_utf8_lossy(&over.stderr).contains("Disk quota exceeded"),
        "{}",
        String::from_utf8_lossy(&over.stderr)
    );
    wait_until("a report after the kill", Duration::from_secs(30), || {
        n.reports.load(Ordering::SeqCst) > reports_at_kill
    });

    // The plugin comes back with the same flags and finds everything.
    n.plugin.restart();
    n.wait_for(&n.path("csi.sock"));
    let after = n.servers();
    assert_eq!(
        after
            .iter()
            .map(|s| (s.id.clone(), s.pid, s.restarts))
            .collect::<Vec<_>>(),
        before
            .iter()
            .map(|s| (s.id.clone(), s.pid, 0))
            .collect::<Vec<_>>(),
        "the same server processes, never restarted"
    );
    drop((open_home, open_s3));
    // The restarted plugin drives them: the last unpublish stops a server.
    n.unpublish("s3-data", &bucket).await;
    assert_eq!(n.servers().len(), 1);
    assert!(!bucket.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_servers_are_replaced_under_running_notebooks() {
    let g = Garage::start("data");
    let s3 = client(&g, &g.endpoint).await;
    s3.put(
        &g.bucket,
        "hello.txt",
        bytes::Bytes::from_static(b"hello\n"),
    )
    .await
    .unwrap();
    let mut n = Node::start(&g).await;
    let alice = n.publish_home("alice", "uid-a", 4 << 20).await;
    let bob = n.publish_home("bob", "uid-b", 4 << 20).await;
    let b1 = n.publish_bucket(&g, "uid-a").await;
    let b2 = n.publish_bucket(&g, "uid-b").await;
    std::fs::write(alice.join("a.txt"), b"alice\n").unwrap();
    std::fs::write(bob.join("b.txt"), b"bob\n").unwrap();
    let nb_alice = Notebook::start(&alice, &n.path("views/alice-home"));
    let nb_s3 = Notebook::start(&b1, &n.path("views/alice-s3"));
    assert!(nb_alice.works("a.txt", b"alice\n"));
    assert!(nb_s3.works("hello.txt", b"hello\n"));
    let bob_server = n.server_of(&bob);
    let mut held = std::fs::File::open(alice.join("a.txt")).unwrap();

    // kill -9 of alice's home server and of the bucket's server.
    let home_server = n.server_of(&alice);
    let s3_server = n.server_of(&b1);
    assert_eq!(n.server_of(&b2).id, s3_server.id, "one server per bucket");
    let victims = [host_pid(&home_server), host_pid(&s3_server)];
    let killed = Instant::now();
    for pid in victims {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    // Gone (reaped by the mounter) before anything is looked at.
    wait_until("both servers dead", Duration::from_secs(10), || {
        victims
            .iter()
            .all(|p| !Path::new(&format!("/proc/{p}")).exists())
    });
    wait_until(
        "alice's home in her notebook",
        Duration::from_secs(30),
        || nb_alice.works("a.txt", b"alice\n"),
    );
    let home_back = killed.elapsed();
    wait_until(
        "the bucket in alice's notebook",
        Duration::from_secs(30),
        || nb_s3.works("hello.txt", b"hello\n"),
    );
    let s3_back = killed.elapsed();
    eprintln!(
        "after kill -9, seen from the notebooks: home works again after {home_back:?}, bucket after {s3_back:?}"
    );
    // Every bind of the bucket came back, on the host too.
    assert_eq!(std::fs::read(b2.join("hello.txt")).unwrap(), b"hello\n");
    // The notebook writes through its own view; the quota holds (usage from a fresh walk).
    let o = nb_alice.sh("echo more > \"$V/new.txt\" && cat \"$V/new.txt\"");
    assert_eq!(
        o.stdout,
        b"more\n",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let over = dd(&alice.join("too-much"), 5000);
    assert!(
        String::from_utf8_lossy(&over.stderr).contains("Disk quota exceeded"),
        "{}",
        String::from_utf8_lossy(&over.stderr)
    );
    // A file held open across the crash never hangs: with FUSE passthrough
    // its reads go to the backing file and still work; without, they fail
    // with the dead connection's error.
    let mut buf = Vec::new();
    match held.read_to_end(&mut buf) {
        Ok(_) => assert_eq!(buf, b"alice\n"),
        Err(e) => assert!(
            matches!(
                e.raw_os_error(),
                Some(libc::ENOTCONN | libc::EIO | libc::ECONNABORTED)
            ),
            "{e}"
        ),
    }
    // Bob's home never noticed.
    let bob_now = n.server_of(&bob);
    assert_eq!((bob_now.pid, bob_now.restarts), (bob_server.pid, 0));
    let states: HashMap<_, _> = n.servers().into_iter().map(|s| (s.id.clone(), s)).collect();
    assert_eq!(states[&home_server.id].restarts, 1);
    assert_eq!(states[&s3_server.id].restarts, 1);
    assert_ne!(states[&home_server.id].pid, home_server.pid);

    // The mounter itself dies (all servers with it) and comes back.
    n.mounter.kill();
    wait_until(
        "servers gone with the mounter",
        Duration::from_secs(10),
        || server_pids(n.dir.path()).next().is_none(),
    );
    assert!(!nb_alice.works("a.txt", b"alice\n"));
    n.mounter.restart();
    let all_back = wait_until(
        "every volume after a mounter restart",
        Duration::from_secs(60),
        || {
            nb_alice.works("a.txt", b"alice\n")
                && nb_s3.works("hello.txt", b"hello\n")
                && std::fs::read(bob.join("b.txt")).is_ok_and(|b| b == b"bob\n")
                && std::fs::read(b2.join("hello.txt")).is_ok_and(|b| b == b"hello\n")
        },
    );
    eprintln!("mounter restart: every volume back after {all_back:?}");
    n.wait_for(&n.path("state/mounter.sock"));
    assert_eq!(n.servers().len(), 3);

    // Unpublishing through the (never restarted) plugin removes every layer.
    for (id, t) in [("s3-data", &b1), ("s3-data", &b2)] {
        n.unpublish(id, t).await;
        assert!(!t.exists());
    }
    assert_eq!(n.servers().len(), 2);
}
