//! The CSI node plugin as tests start it (alone, or with its mounter as a
//! [`NodeDriver`]), a mounter for S3 volumes and their publications, and
//! mount-table helpers for tests that mount: whether a path is a mount
//! point, and cleaning up the mounts a failed test leaves below its temp dir.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use hubfs_proto::csi::{
    volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume},
    NodePublishVolumeRequest, VolumeCapability,
};

use crate::garage::Garage;

/// `hubfs csi --mode node` as the node plugin container runs it beside a
/// `hubfs mounter` on `state`: node `n1`, kubelet's directory `dir/kubelet`,
/// the CSI socket `dir/csi.sock`, no Events (no API server), and no S3
/// identity of its own (the servers run in the mounter). Add output and
/// logging, then spawn it.
pub fn node_plugin(dir: &Path, state: &Path) -> Command {
    let mut c = Command::new(crate::hubfs_binary());
    c.args(["csi", "--mode", "node", "--node-id", "n1", "--no-events"])
        .arg("--endpoint")
        .arg(format!("unix://{}", dir.join("csi.sock").display()))
        .arg("--kubelet-dir")
        .arg(dir.join("kubelet"))
        .arg("--state-dir")
        .arg(state)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    c
}

/// A `hubfs mounter` on `dir/state` (which must exist) with the S3 data
/// cache in `dir/cache` (64 MiB), serving its metrics on a free port (its
/// address in `dir/metrics-addr`, see [`mounter_metrics`]) and logging at
/// debug level into the state dir. The node's own S3 identity (the default
/// chain) is Garage's default key.
pub fn start_s3_mounter(g: &Garage, dir: &Path) -> Child {
    let state = dir.join("state");
    let log = |name: &str| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(state.join(name))
            .unwrap()
    };
    let metrics_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    std::fs::write(dir.join("metrics-addr"), &metrics_addr).unwrap();
    let m = Command::new(crate::hubfs_binary())
        .arg("mounter")
        .arg("--state-dir")
        .arg(&state)
        .args(["--metrics-addr", &metrics_addr])
        .arg("--s3-cache-dir")
        .arg(dir.join("cache"))
        .args(["--s3-cache-size", "64Mi"])
        .env("AWS_ACCESS_KEY_ID", &g.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &g.secret_key)
        .env("HUBFS_LOG", "hubfs=debug,hubfs_fuse=debug,info")
        .env_remove("RUST_LOG")
        .env_remove("AWS_PROFILE")
        .stdout(log("mounter.log"))
        .stderr(log("mounter.err.log"))
        .spawn()
        .unwrap();
    crate::wait_for_socket(
        &state.join("mounter.sock"),
        Duration::from_secs(20),
        "the mounter's socket",
    );
    m
}

/// The `/metrics` of the mounter [`start_s3_mounter`] started last in `dir`.
pub fn mounter_metrics(dir: &Path) -> String {
    use std::io::{Read, Write};
    let addr = std::fs::read_to_string(dir.join("metrics-addr")).unwrap();
    let mut conn = std::net::TcpStream::connect(addr.trim()).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).unwrap();
    out
}

/// A read-only publication of `g`'s bucket `bucket` as volume `volume_id`
/// at `target`, with the volume's own credentials in `secrets` (none: the
/// node's identity).
pub fn s3_publish(
    g: &Garage,
    bucket: &str,
    volume_id: &str,
    target: &Path,
    secrets: HashMap<String, String>,
) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: volume_id.into(),
        target_path: target.display().to_string(),
        volume_capability: Some(VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode {
                mode: Mode::MultiNodeReaderOnly as i32,
            }),
        }),
        readonly: true,
        volume_context: HashMap::from([
            ("type".into(), "s3".into()),
            ("bucket".into(), bucket.into()),
            ("endpoint".into(), g.endpoint.clone()),
            ("region".into(), g.region.clone()),
        ]),
        secrets,
        ..Default::default()
    }
}

/// A node plugin ([`node_plugin`]) beside a `hubfs mounter` on
/// `dir/state`, both in `dir`. Dropping it kills both, detaches every mount
/// below `dir` and kills the `hubfs mount s3` servers of the state dir.
pub struct NodeDriver {
    pub child: Child,
    pub mounter: Child,
    pub dir: tempfile::TempDir,
    volume: String,
}

impl NodeDriver {
    /// Spawns `plugin` (made by [`node_plugin`] on `dir`) beside `mounter`
    /// and waits until both sockets accept connections. Pods' targets are
    /// those of the CSI volume `volume`.
    pub fn start(
        dir: tempfile::TempDir,
        volume: &str,
        mounter: Child,
        mut plugin: Command,
    ) -> Self {
        let child = plugin.spawn().unwrap();
        let d = Self {
            child,
            mounter,
            dir,
            volume: volume.to_owned(),
        };
        let within = Duration::from_secs(20);
        crate::wait_for_socket(&d.socket(), within, "the driver's socket");
        crate::wait_for_socket(
            &d.state().join("mounter.sock"),
            within,
            "the mounter's socket",
        );
        d
    }

    /// The CSI socket, `dir/csi.sock`.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("csi.sock")
    }

    /// The state dir of the plugin and the mounter, `dir/state`.
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Where kubelet asks for the volume in `pod`.
    pub fn target(&self, pod: &str) -> PathBuf {
        self.dir.path().join(format!(
            "kubelet/pods/{pod}/volumes/kubernetes.io~csi/{}/mount",
            self.volume
        ))
    }

    /// Command lines of the `hubfs mount s3` servers of this state dir, by pid.
    pub fn servers(&self) -> Vec<(i32, String)> {
        let state = self.state().display().to_string();
        hubfs_processes(|cmd| cmd.contains(" mount s3 ") && cmd.contains(&state))
    }
}

impl Drop for NodeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.mounter.kill();
        let _ = self.mounter.wait();
        detach_mounts_below(self.dir.path());
        for (pid, _) in self.servers() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Every process whose command line mentions hubfs and passes `filter`,
/// with that command line (NULs as spaces), from /proc/*/cmdline.
pub fn hubfs_processes(filter: impl Fn(&str) -> bool) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("hubfs") && filter(&cmd) {
            out.push((pid, cmd));
        }
    }
    out
}

/// A temp dir bind-mounted on itself and made a shared mount (recursively),
/// as /var/lib/kubelet is on a real node: mounts made below it in one mount
/// namespace show in the others. Dropping it lazily detaches every mount
/// below it and then itself, so a test that fails half-way cleans up too.
pub struct SharedDir {
    dir: tempfile::TempDir,
}

impl SharedDir {
    pub fn new() -> Self {
        use nix::mount::{mount, MsFlags};
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        mount(Some(d), d, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
        // From here on, Drop undoes the bind mount.
        let shared = Self { dir };
        mount(
            None::<&str>,
            shared.path(),
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
        .unwrap();
        shared
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for SharedDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        detach_mounts_below(self.path());
        let _ = nix::mount::umount2(self.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Mount points strictly below `dir`, from /proc/self/mountinfo.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect()
}

/// Lazily detaches every mount below `dir`, deepest first, so the temp dir
/// can be removed after a test failed half-way.
pub fn detach_mounts_below(dir: &Path) {
    let mut mine = mounts_below(dir);
    mine.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in mine {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The ids of the mounts exactly at `p`, bottom first (a stacked mount
/// shows two), from /proc/self/mountinfo.
pub fn mount_ids_at(p: &Path) -> Vec<u32> {
    hubfs_fuse::mountinfo::read()
        .expect("read /proc/self/mountinfo")
        .into_iter()
        .filter(|e| e.mount_point == p)
        .map(|e| e.mount_id)
        .collect()
}

/// Whether `p` is exactly a mount point.
pub fn is_mounted(p: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*p.display().to_string()))
}
