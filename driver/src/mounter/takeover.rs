//! Upgrading a mounter in place: `hubfs mounter --take-over`.
//!
//! The new mounter asks the old one (on `DIR/mounter.sock`) to release its
//! servers: the old one stops watching, publishing and writing
//! `servers.json`, writes it a last time and waits. The new one then starts,
//! for every server in the state file with a control socket, `hubfs mount
//! home|s3 ... --take-over <server dir>/ctl.sock` (a bucket server with its
//! own identity gets its credentials on stdin, as at a fresh start): a new
//! server process that adopts the live FUSE connection of the old server
//! (see `hubfs_fuse::handoff`), which exits without unmounting. Nothing a
//! notebook holds notices but a pause of a few milliseconds. When every
//! server is handed over, the new mounter tells the old one it is done (the
//! old one exits 0) and owns `servers.json`.
//!
//! A server whose takeover fails (a bucket server with an upload open, a
//! home whose walk still runs, a server of a version without a control
//! socket) stays with the old mounter and dies with its container; the new
//! mounter replaces it as after any crash (a new server stacked onto each
//! target). If the new mounter dies before it is done, the old one
//! supervises again.

use std::collections::HashMap;
use std::io::BufRead;
use std::os::unix::net::UnixStream;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::secrets::Secrets;
use super::state::StateFile;
use super::supervisor::{log_path, open_log};
use super::wire::Release;
use super::{control_path, socket_path, SupervisorConfig};
use crate::error::Result;

/// The line a `hubfs mount home|s3 --foreground` prints on stdout once it
/// serves: what a mounter taking servers over waits for.
pub const SERVING: &str = "serving";

/// Prints [`SERVING`] (a foreground server's readiness).
pub fn say_serving() {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{SERVING}");
}

/// Hands every server of the mounter serving `cfg.state_dir`, reached
/// through `old` (a connection to its socket), to a new server started as
/// `cfg` starts servers. Returns the old mounter's release (call
/// [`Release::done`] once this mounter serves) and the new servers by id.
pub fn take_over(
    cfg: &SupervisorConfig,
    old: UnixStream,
    timeout: Duration,
) -> Result<(Release, HashMap<String, Child>)> {
    let state_dir = cfg.state_dir.as_path();
    let release = Release::ask_on(old, &socket_path(state_dir))?;
    let state = StateFile::new(state_dir).load();
    let secrets = Secrets::new(state_dir);
    let mut started = Vec::new();
    for (id, rec) in &state.servers {
        let ctl = control_path(state_dir, &rec.spec);
        if !ctl.exists() {
            continue;
        }
        let err = match open_log(&log_path(state_dir, &rec.spec)) {
            Ok(f) => Stdio::from(f),
            Err(_) => Stdio::null(),
        };
        let extra = ["--take-over".into(), ctl.into_os_string()];
        let mut cmd = match cfg.server_command(&secrets, &rec.spec, &extra) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(server = %id, error = %e, "cannot take this server over");
                continue;
            }
        };
        let spawned = cmd.stdout(Stdio::piped()).stderr(err).spawn();
        match spawned {
            Ok(child) => started.push((id.clone(), child)),
            Err(e) => {
                tracing::error!(server = %id, error = %e, "cannot start a server to take over")
            }
        }
    }
    // All at once (each takes a pause of its own mount only), then wait.
    let (tx, rx) = mpsc::channel();
    let mut waiting = HashMap::new();
    for (id, mut child) in started {
        let out = child.stdout.take().expect("piped");
        let (tx, id2) = (tx.clone(), id.clone());
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(out).read_line(&mut line);
            let _ = tx.send((id2, line.trim_end() == SERVING));
        });
        waiting.insert(id, child);
    }
    drop(tx);
    let deadline = Instant::now() + timeout;
    let mut taken = HashMap::new();
    while !waiting.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((id, serving)) = rx.recv_timeout(left) else {
            break;
        };
        let Some(mut child) = waiting.remove(&id) else {
            continue;
        };
        if serving {
            tracing::info!(server = %id, pid = child.id(), "server taken over");
            taken.insert(id, child);
        } else {
            let status = child.wait().ok();
            tracing::error!(server = %id, ?status, "takeover failed; the old server serves on until the old mounter goes, then it is replaced");
        }
    }
    for (id, mut child) in waiting {
        tracing::error!(server = %id, "takeover did not finish in time; stopping the new server");
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok((release, taken))
}
