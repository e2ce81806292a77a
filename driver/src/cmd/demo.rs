//! `hubfs demo`: everything on one machine, no cluster.
//!
//! Starts an in-process S3 server (s3s-fs) seeded with a sample dataset, the
//! quota controller and the CSI driver, then plays kubelet and
//! external-provisioner over the CSI socket to mount a bucket at
//! `<dir>/s3/<bucket>` and a home with a quota at `<dir>/home/<user>`. The
//! same code paths as in a cluster, so what the demo shows is what users get.
//! Ctrl-C unmounts and removes everything.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use futures::StreamExt;
use hubfs_fuse::s3::s3client::{S3Config, S3Store, StaticCredentials};
use hubfs_fuse::s3::store::ObjectStore;
use hubfs_proto::csi::{
    controller_client::ControllerClient,
    node_client::NodeClient,
    volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume},
    CapacityRange, CreateVolumeRequest, NodePublishVolumeRequest, NodeStageVolumeRequest,
    NodeUnpublishVolumeRequest, NodeUnstageVolumeRequest, VolumeCapability,
};
use hubfs_quota::{format_size, parse_size, UserKey};
use tonic::transport::Channel;

const BUCKET: &str = "demo-data";
const REGION: &str = "us-east-1";

/// Run hubfs on this machine with an embedded S3 server: a bucket as a folder
/// and a home with a quota (needs root and /dev/fuse; no cluster).
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where the demo lives; removed when it stops.
    #[arg(long, default_value = "/tmp/hubfs-demo")]
    dir: PathBuf,
    /// The notebook user whose home is mounted.
    #[arg(long, default_value = "jovyan")]
    user: String,
    /// The user's quota.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    quota: u64,
    /// Size of the large sample object.
    #[arg(long, default_value = "200MiB", value_parser = parse_size)]
    big_object: u64,
    /// Number of small sample objects (nested prefixes).
    #[arg(long, default_value_t = 3000)]
    small_objects: usize,
    /// Stop after this many seconds instead of waiting for Ctrl-C (scripts, tests).
    #[arg(long, value_name = "SECS")]
    exit_after: Option<u64>,
}

/// Children and mounts to undo, in reverse order, whatever happens.
struct Demo {
    dir: PathBuf,
    children: Vec<(String, Child)>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        for (name, mut c) in self.children.drain(..).rev() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
            tracing::debug!(name, "stopped");
        }
        // Detach anything still mounted below the demo dir, deepest first,
        // and only then remove the files: never delete across a mount.
        let mut left = mounts_below(&self.dir);
        left.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in &left {
            let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
        }
        if mounts_below(&self.dir).is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!(
                "hubfs demo: mounts remain below {}; not removing it",
                self.dir.display()
            );
        }
    }
}

fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    hubfs::mountinfo::read()
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.mount_point)
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect()
}

fn preflight() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("hubfs demo mounts filesystems and needs root: run it with sudo (or as root)");
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        bail!(
            "/dev/fuse is not usable ({e}): load the module with `modprobe fuse`, or in a container add `--device /dev/fuse --cap-add SYS_ADMIN`"
        );
    }
    Ok(())
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Where the embedded server tells how many requests of each S3 operation it
/// served (`GET`, unsigned: one `<Operation> <count>` line each). s3s checks
/// the path as a bucket name before routes see it, so it is one (not the
/// demo's bucket).
pub const REQUESTS_PATH: &str = "/hubfs-demo-requests";

/// Requests served, by S3 operation name.
type Counts = Arc<Mutex<BTreeMap<String, u64>>>;

/// Makes s3s-fs answer like S3 where it does not on its own, and counts
/// requests: a HEAD or GET of a key that is a directory in its store
/// (`catalog/2021` when `catalog/2021/...` objects exist) is a key that does
/// not exist, 404 NoSuchKey, where s3s-fs would fail with 500 and make every
/// client retry.
struct AnswerLikeS3 {
    root: PathBuf,
    counts: Counts,
}

impl AnswerLikeS3 {
    fn no_such_key_if_directory(&self, bucket: &str, key: &str) -> s3s::S3Result<()> {
        // Leave odd keys to s3s-fs, which resolves them within its root.
        if key.split('/').any(|c| c == "..") {
            return Ok(());
        }
        if self.root.join(bucket).join(key).is_dir() {
            return Err(s3s::s3_error!(NoSuchKey));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl s3s::access::S3Access for AnswerLikeS3 {
    async fn check(&self, cx: &mut s3s::access::S3AccessContext<'_>) -> s3s::S3Result<()> {
        *self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(cx.s3_op().name().to_string())
            .or_default() += 1;
        match cx.credentials() {
            Some(_) => Ok(()),
            None => Err(s3s::s3_error!(AccessDenied, "Signature is required")),
        }
    }

    async fn head_object(
        &self,
        req: &mut s3s::S3Request<s3s::dto::HeadObjectInput>,
    ) -> s3s::S3Result<()> {
        self.no_such_key_if_directory(&req.input.bucket, &req.input.key)
    }

    async fn get_object(
        &self,
        req: &mut s3s::S3Request<s3s::dto::GetObjectInput>,
    ) -> s3s::S3Result<()> {
        self.no_such_key_if_directory(&req.input.bucket, &req.input.key)
    }
}

/// Serves [`REQUESTS_PATH`].
struct RequestCounts(Counts);

#[async_trait::async_trait]
impl s3s::route::S3Route for RequestCounts {
    fn is_match(
        &self,
        method: &hyper::Method,
        uri: &hyper::Uri,
        _: &hyper::HeaderMap,
        _: &mut http::Extensions,
    ) -> bool {
        method == hyper::Method::GET && uri.path() == REQUESTS_PATH
    }

    async fn check_access(&self, _: &mut s3s::S3Request<s3s::Body>) -> s3s::S3Result<()> {
        Ok(()) // counts only, on loopback
    }

    async fn call(
        &self,
        _: s3s::S3Request<s3s::Body>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::Body>> {
        let counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let text: String = counts.iter().map(|(op, n)| format!("{op} {n}\n")).collect();
        Ok(s3s::S3Response::new(s3s::Body::from(text)))
    }
}

/// The embedded S3 server: s3s-fs over `<dir>/s3-store`, with a random key,
/// answering like S3 ([`AnswerLikeS3`]) and counting requests.
async fn start_s3(root: &Path) -> anyhow::Result<(String, StaticCredentials)> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let creds = StaticCredentials {
        access_key_id: format!("demo{}", std::process::id()),
        secret_access_key: hex::encode(rand::random::<[u8; 20]>()),
        session_token: None,
    };
    let fs = s3s_fs::FileSystem::new(root)
        .map_err(|e| anyhow::anyhow!("S3 store at {}: {e:?}", root.display()))?;
    let mut b = s3s::service::S3ServiceBuilder::new(fs);
    b.set_auth(s3s::auth::SimpleAuth::from_single(
        creds.access_key_id.clone(),
        creds.secret_access_key.clone(),
    ));
    let counts = Counts::default();
    b.set_access(AnswerLikeS3 {
        root: root.to_path_buf(),
        counts: counts.clone(),
    });
    b.set_route(RequestCounts(counts));
    let service = b.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let conn = http
                .serve_connection(TokioIo::new(socket), service.clone())
                .into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    });
    Ok((endpoint, creds))
}

/// Deterministic bytes that do not compress to nothing.
fn sample_bytes(len: usize, seed: u64) -> Bytes {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

/// Uploads the sample dataset through the S3 API.
async fn seed(store: &S3Store, small: usize, big: u64) -> anyhow::Result<()> {
    store
        .put(
            BUCKET,
            "README.txt",
            Bytes::from_static(b"Sample data served by the hubfs demo's embedded S3 server.\n"),
        )
        .await?;
    let puts = futures::stream::iter(0..small).map(|i| async move {
        let (year, month) = (2021 + i % 4, 1 + (i / 4) % 12);
        let key = format!("catalog/{year}/{month:02}/obs-{i:05}.json");
        let body = format!(
            "{{\"id\": {i}, \"year\": {year}, \"month\": {month}, \"flux\": {}}}\n",
            (i * 7919) % 1000
        );
        store
            .put(BUCKET, &key, Bytes::from(body))
            .await
            .with_context(|| format!("put {key}"))
    });
    let results: Vec<_> = puts.buffer_unordered(32).collect().await;
    results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let name = format!("images/cube-{}.bin", format_size(big).replace(' ', ""));
    store
        .put(BUCKET, &name, sample_bytes(big as usize, 42))
        .await
        .context("put the large object")?;
    Ok(())
}

async fn csi_channel(socket: &Path) -> anyhow::Result<Channel> {
    Ok(hubfs::server::connect_unix(socket).await?)
}

fn cap(mode: Mode) -> Option<VolumeCapability> {
    Some(VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    })
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !ok() {
        if Instant::now() > deadline {
            bail!("{what} did not come up within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    preflight()?;
    UserKey::new(&args.user).map_err(|e| anyhow::anyhow!("--user {:?}: {e}", args.user))?;
    let dir = hubfs::paths::absolute("--dir", &args.dir.to_string_lossy())?;
    if !mounts_below(&dir).is_empty() || dir.exists() {
        // A previous demo that was killed: clean it up first.
        drop(Demo {
            dir: dir.clone(),
            children: vec![],
        });
    }
    let store_dir = dir.join("s3-store");
    std::fs::create_dir_all(store_dir.join(BUCKET))?;
    for d in ["share/users", "control", "state"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    let mut demo = Demo {
        dir: dir.clone(),
        children: vec![],
    };
    let rt = tokio::runtime::Runtime::new()?;
    let exe = std::env::current_exe()?;

    println!(
        "hubfs demo: starting an S3 server and seeding {} objects + one of {} ...",
        args.small_objects + 1,
        format_size(args.big_object)
    );
    let (endpoint, creds) = rt.block_on(start_s3(&store_dir))?;
    let store = rt.block_on(S3Store::new(&S3Config {
        endpoint_url: Some(endpoint.clone()),
        region: Some(REGION.into()),
        force_path_style: true,
        anonymous: false,
        max_attempts: 3,
        credentials: Some(creds.clone()),
    }));
    rt.block_on(seed(&store, args.small_objects, args.big_object))?;

    let (grpc, http) = (free_addr()?, free_addr()?);
    let controller = Command::new(&exe)
        .args(["controller", "--control-dir"])
        .arg(dir.join("control"))
        .arg("--users-dir")
        .arg(dir.join("share/users"))
        .args([
            "--grpc-listen",
            &grpc.to_string(),
            "--http-listen",
            &http.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("state/controller.log"))?)
        .spawn()
        .context("start the quota controller")?;
    demo.children.push(("quota controller".into(), controller));
    wait_for("the quota controller", Duration::from_secs(30), || {
        std::net::TcpStream::connect(http).is_ok()
    })?;

    let socket = dir.join("state/csi.sock");
    let csi = Command::new(&exe)
        .args([
            "csi",
            "--mode",
            "all",
            "--node-id",
            "demo",
            "--no-events",
            "--endpoint",
        ])
        .arg(format!("unix://{}", socket.display()))
        .arg("--kubelet-dir")
        .arg(&dir)
        .arg("--allowed-root")
        .arg(dir.join("share"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--quota-endpoint", &format!("http://{grpc}")])
        .env("AWS_ACCESS_KEY_ID", &creds.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &creds.secret_access_key)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("state/csi.log"))?)
        .spawn()
        .context("start the CSI driver")?;
    demo.children.push(("CSI driver".into(), csi));
    wait_for("the CSI driver", Duration::from_secs(30), || {
        socket.exists()
    })?;

    let home = dir.join("home").join(&args.user);
    let bucket_dir = dir.join("s3").join(BUCKET);
    rt.block_on(async {
        let ch = csi_channel(&socket).await?;
        let mut ctl = ControllerClient::new(ch.clone());
        let mut node = NodeClient::new(ch);
        // external-provisioner: the user's PVC becomes a home with a quota.
        let vol = ctl
            .create_volume(CreateVolumeRequest {
                name: format!("pvc-demo-{}", UserKey::new(&args.user)?.encoded()),
                capacity_range: Some(CapacityRange {
                    required_bytes: args.quota as i64,
                    limit_bytes: 0,
                }),
                volume_capabilities: vec![cap(Mode::SingleNodeWriter).unwrap()],
                parameters: HashMap::from([
                    ("type".into(), "home".into()),
                    ("backend".into(), "local".into()),
                    ("root".into(), dir.join("share").display().to_string()),
                    ("accounting".into(), "fuse".into()),
                    (
                        "csi.storage.k8s.io/pvc/name".into(),
                        format!("claim-{}", args.user),
                    ),
                ]),
                ..Default::default()
            })
            .await?
            .into_inner()
            .volume
            .context("no volume")?;
        // kubelet: stage and publish the home, then the bucket.
        let staging = dir.join(".staging/home");
        node.node_stage_volume(NodeStageVolumeRequest {
            volume_id: vol.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: cap(Mode::SingleNodeWriter),
            volume_context: vol.volume_context.clone(),
            ..Default::default()
        })
        .await?;
        node.node_publish_volume(NodePublishVolumeRequest {
            volume_id: vol.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
            target_path: home.display().to_string(),
            volume_capability: cap(Mode::SingleNodeWriter),
            volume_context: vol.volume_context.clone(),
            ..Default::default()
        })
        .await?;
        let s3ctx = HashMap::from([
            ("type".to_string(), "s3".to_string()),
            ("bucket".into(), BUCKET.into()),
            ("endpoint".into(), endpoint.clone()),
            ("region".into(), REGION.into()),
        ]);
        node.node_publish_volume(NodePublishVolumeRequest {
            volume_id: format!("s3-{BUCKET}"),
            staging_target_path: dir.join(".staging/s3").display().to_string(),
            target_path: bucket_dir.display().to_string(),
            volume_capability: cap(Mode::MultiNodeReaderOnly),
            readonly: true,
            volume_context: s3ctx,
            ..Default::default()
        })
        .await?;
        anyhow::Ok(vol.volume_id)
    })
    .map(|volume_id| {
        let controller_url = format!("http://{http}");
        print_guide(&args, &dir, &endpoint, &controller_url);
        let stopped = rt.block_on(live_usage(&args, &home, &controller_url));
        println!(
            "\nhubfs demo: {stopped}; unmounting and cleaning up {}",
            dir.display()
        );
        rt.block_on(async {
            if let Ok(ch) = csi_channel(&socket).await {
                let mut node = NodeClient::new(ch);
                for (id, target) in [
                    (format!("s3-{BUCKET}"), &bucket_dir),
                    (volume_id.clone(), &home),
                ] {
                    let r = NodeUnpublishVolumeRequest {
                        volume_id: id,
                        target_path: target.display().to_string(),
                    };
                    if let Err(e) = node.node_unpublish_volume(r).await {
                        eprintln!(
                            "hubfs demo: unpublish {}: {}",
                            target.display(),
                            e.message()
                        );
                    }
                }
                let r = NodeUnstageVolumeRequest {
                    volume_id,
                    staging_target_path: dir.join(".staging/home").display().to_string(),
                };
                let _ = node.node_unstage_volume(r).await;
            }
        });
    })?;
    drop(demo);
    println!("hubfs demo: done");
    Ok(ExitCode::SUCCESS)
}

fn print_guide(args: &DemoArgs, dir: &Path, endpoint: &str, controller: &str) {
    let home = dir.join("home").join(&args.user);
    let bucket = dir.join("s3").join(BUCKET);
    let big = format!("cube-{}.bin", format_size(args.big_object).replace(' ', ""));
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "hubfs".into());
    println!(
        "
hubfs demo is ready.
  bucket  {bucket}   (S3 server at {endpoint}, read-only;
          requests it served: curl {endpoint}{requests})
  home    {home}   (quota {quota}, accounted as you write)
  quota controller  {controller}

Try, in another terminal (as root):
  ls {bucket}/catalog/2024/01 | head          # one LIST request per 1000 entries
  head {bucket}/catalog/2023/07/obs-00026.json # a path never listed: 2 requests a name
  ls -l {bucket}/images
  cp {bucket}/images/{big} {home}/
  df -h {home}                               # the size is the user's quota
  for i in 1 2 3 4 5 6; do cp {bucket}/images/{big} {home}/copy$i.bin || break; done
                                             # -> \"Disk quota exceeded\" at the quota
  {exe} check-quota --home {home} --user {user} --controller {controller}
                                             # the home's own figures, the controller's state
  rm {home}/copy*.bin                         # deleting always works, even over quota

Ctrl-C stops the demo, unmounts everything and removes {dir}.
",
        bucket = bucket.display(),
        home = home.display(),
        quota = format_size(args.quota),
        user = args.user,
        dir = dir.display(),
        requests = REQUESTS_PATH,
    );
}

/// Prints the usage of the home every few seconds until Ctrl-C, SIGTERM or
/// `--exit-after`; returns why it stopped.
async fn live_usage(args: &DemoArgs, home: &Path, controller: &str) -> String {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let limit = tokio::time::sleep(Duration::from_secs(args.exit_after.unwrap_or(u64::MAX / 4)));
    tokio::pin!(limit);
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("http client");
    let url = format!("{controller}/v1/users/{}", args.user);
    let mut last = String::new();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return "interrupted".into(),
            _ = term.recv() => return "terminated".into(),
            _ = &mut limit => return format!("--exit-after {} s reached", args.exit_after.unwrap_or(0)),
            _ = tick.tick() => {
                let Ok(s) = nix::sys::statvfs::statvfs(home) else { continue };
                let used = (s.blocks() - s.blocks_free()) * s.fragment_size();
                let state = match client.get(&url).send().await {
                    Ok(r) => r.json::<serde_json::Value>().await.ok()
                        .and_then(|v| v["quota_state"].as_str().map(str::to_owned))
                        .unwrap_or_else(|| "unknown".into()),
                    Err(_) => "controller unreachable".into(),
                };
                let line = format!("usage: {} of {} ({:.0}%), state {state}",
                    format_size(used), format_size(args.quota), used as f64 * 100.0 / args.quota as f64);
                if line != last {
                    println!("{line}");
                    last = line;
                }
            }
        }
    }
}
