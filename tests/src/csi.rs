//! The CSI node plugin as tests start it, and mount-table helpers for tests
//! that mount: whether a path is a mount point, and cleaning up the mounts a
//! failed test leaves below its temp dir.

use std::path::{Path, PathBuf};
use std::process::Command;

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
