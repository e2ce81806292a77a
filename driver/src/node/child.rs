//! FUSE filesystems run as child processes of the node driver.
//!
//! Both the S3 filesystem and the home layer are served by `hubfs mount ...
//! --foreground` children rather than threads: a crash in a filesystem
//! cannot take the driver (and every other mount on the node) down, a dead
//! mount is recognisable (ENOTCONN on statfs), and the child's log goes to a
//! file whose tail ends up in the error the CO shows.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::NodeService;
use crate::error::{DriverError, Result};

/// Whether something answers at a mount point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountState {
    Healthy,
    /// Mounted but the filesystem does not answer (its process died).
    Dead,
    NotMounted,
}

/// `statfs` always reaches the filesystem (a FUSE daemon), where `stat` may
/// be answered from the kernel's attribute cache long after the daemon died.
pub fn probe(node: &NodeService, mp: &Path) -> Result<MountState> {
    if node.inner.mounter.mounted_at(mp)?.is_none() {
        return Ok(MountState::NotMounted);
    }
    Ok(match nix::sys::statvfs::statvfs(mp) {
        Ok(_) => MountState::Healthy,
        Err(_) => MountState::Dead,
    })
}

/// The last lines of a child's log, joined on one line for an error message.
pub fn log_tail(path: &Path) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(2000)));
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    let lines: Vec<&str> = s.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// Starts `cmd` with its output in `log` and waits until it serves `mp`.
/// On failure the child is stopped and the error carries its last words.
pub fn spawn_mount(
    node: &NodeService,
    mut cmd: Command,
    mp: &Path,
    log: &Path,
    what: &str,
) -> Result<Child> {
    let file = std::fs::File::create(log).map_err(|e| DriverError::io("create", log, e))?;
    let out = file
        .try_clone()
        .map_err(|e| DriverError::io("dup", log, e))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(file)
        .spawn()
        .map_err(|e| DriverError::io("start", mp, e))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if probe(node, mp)? == MountState::Healthy {
            return Ok(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(DriverError::FailedPrecondition(format!(
                "{what} exited ({status}): {}",
                log_tail(log)
            )));
        }
        if Instant::now() > deadline {
            stop(child);
            return Err(DriverError::FailedPrecondition(format!(
                "{what} did not come up within 30 s: {}",
                log_tail(log)
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits briefly for a child whose mount was just unmounted (unmounting ends
/// the FUSE session), then makes sure it is gone and reaped.
pub fn stop(mut child: Child) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}
