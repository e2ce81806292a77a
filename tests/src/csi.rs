//! The CSI node plugin as tests start it (alone, or with its mounter as a
//! [`NodeDriver`]), and mount-table helpers for tests that mount: whether a
//! path is a mount point, and cleaning up the mounts a failed test leaves
//! below its temp dir.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

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
