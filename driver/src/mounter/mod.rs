//! Keeping FUSE servers alive beyond the node plugin's lifetime.
//!
//! Every FUSE filesystem the node service presents to pods (a home with
//! `accounting: fuse`, a shared S3 bucket mount) is a `hubfs mount ...
//! --foreground` server process. Those processes must not live in the CSI
//! node plugin's container: when it restarts (crash, OOM, upgrade), every
//! process it started dies, and every notebook's `$HOME` and `/s3/<bucket>`
//! would answer ENOTCONN until its pod is deleted. So the node plugin does
//! not start servers itself; it asks the [`Servers`] trait:
//!
//! - [`Supervisor`] is the real thing. It starts each server as its own
//!   child, mounts it once under the state directory and bind-mounts it onto
//!   every pod target, records all of that in a state file (atomic, versioned
//!   JSON, [`state`]), notices a server's death within a fraction of a
//!   second, and recovers in place: a new server, mounted fresh under the
//!   state directory, bind-mounted again ON TOP of each dead target
//!   (stacking), which reaches containers whose volumeMount has
//!   `mountPropagation: HostToContainer`. Restarted, it finds its servers in
//!   the state file and adopts the living or replaces the dead.
//! - `hubfs mounter --state-dir DIR` runs a Supervisor as its own long-lived
//!   process (its own container / DaemonSet) and serves it on
//!   `DIR/mounter.sock` ([`wire`]); `hubfs csi --mode node` talks to it through
//!   [`MounterClient`], so killing the plugin interrupts nothing.
//! - For single-node installs and tests (`hubfs csi --mode all`), the plugin
//!   can run the Supervisor in-process.
//! - A fake (unit tests only) records calls, so publish paths are testable
//!   without root.
//! - `hubfs mounter --take-over` upgrades a running mounter in place
//!   ([`takeover`]): every home server is handed to a new server process
//!   over its control socket with its live FUSE connection.

#[cfg(test)]
pub mod fake;
pub mod metrics;
pub mod secrets;
mod state;
mod supervisor;
pub mod takeover;
pub mod wire;

use std::path::{Path, PathBuf};

use hubfs_fuse::s3::credentials::StaticCredentials;
use serde::{Deserialize, Serialize};

use crate::error::{DriverError, Result};

pub use state::{State, StateFile, STATE_VERSION};
pub use supervisor::{S3Cache, Supervisor, SupervisorConfig};
pub use wire::MounterClient;

/// The control socket of a server (`hubfs mount home --control`), beside its
/// mountpoint: a new server takes the mount over through it.
pub fn control_path(state_dir: &Path, spec: &ServerSpec) -> PathBuf {
    spec.dir(state_dir).join("ctl.sock")
}

/// The socket a mounter serves on, inside its state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("mounter.sock")
}

/// Which filesystem a server runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `hubfs mount home`: a user's home through the accounting layer.
    Home,
    /// `hubfs mount s3`: one bucket/prefix, shared by every pod on the node.
    S3,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Home => "home",
            Kind::S3 => "s3",
        }
    }

    /// The capabilities a server of this kind keeps once it has dropped:
    /// none for a bucket server (it also leaves uid 0), the home layer's
    /// list for a home server (it stays uid 0). The launch bounds each
    /// server to these plus what mounting and the drop need
    /// ([`hubfs_sandbox::launch::launch_bounding`]).
    pub fn kept_capabilities(self) -> hubfs_sandbox::Caps {
        match self {
            Kind::Home => hubfs_fuse::home::SERVER_CAPABILITIES,
            Kind::S3 => hubfs_sandbox::Caps::empty(),
        }
    }

    /// The folder of the state directory holding this kind's servers.
    fn dir(self) -> &'static str {
        match self {
            Kind::Home => "homes",
            Kind::S3 => "s3",
        }
    }
}

/// What to run: enough to start the same server again after any crash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSpec {
    /// Stable name (lowercase hex and `-`): the same volume always gets the
    /// same server, and the name is the server's directory.
    pub id: String,
    pub kind: Kind,
    /// The `hubfs` arguments without the mountpoint, starting with
    /// `mount <kind> --foreground`; the mountpoint is chosen by the mounter.
    pub args: Vec<String>,
    /// Words for logs and errors ("the home layer of alice").
    pub what: String,
}

impl ServerSpec {
    /// Refuses anything but a foreground `hubfs mount home|s3` with a plain id:
    /// the mounter's socket must not become a way to run other commands.
    pub fn validate(&self) -> Result<()> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 64
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b == b'-');
        if !id_ok {
            return Err(DriverError::Invalid(format!(
                "server id {:?} must be 1-64 lowercase letters, digits or '-'",
                self.id
            )));
        }
        let a = &self.args;
        if a.len() < 3
            || a[0] != "mount"
            || a[1] != self.kind.as_str()
            || !a.iter().any(|x| x == "--foreground")
        {
            return Err(DriverError::Invalid(format!(
                "server arguments must start with `mount {} --foreground`, got {:?}",
                self.kind.as_str(),
                a.iter().take(3).collect::<Vec<_>>()
            )));
        }
        if a.iter().any(|x| x.contains('\0')) {
            return Err(DriverError::Invalid("server arguments contain NUL".into()));
        }
        Ok(())
    }

    /// Where this server is mounted: `<state>/<kind dir>/<id>/mnt`.
    pub fn mountpoint(&self, state_dir: &Path) -> PathBuf {
        self.dir(state_dir).join("mnt")
    }

    fn dir(&self, state_dir: &Path) -> PathBuf {
        state_dir.join(self.kind.dir()).join(&self.id)
    }
}

/// One server as the mounter sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub id: String,
    pub what: String,
    pub mountpoint: PathBuf,
    pub pid: Option<u32>,
    /// The mountpoint answers (statfs).
    pub healthy: bool,
    /// Pod target paths bound to it.
    pub targets: Vec<PathBuf>,
    /// Times it was started again after dying, since the mounter started.
    pub restarts: u32,
}

/// Starting, stopping and watching FUSE servers for the node service.
pub trait Servers: Send + Sync + 'static {
    /// Makes sure `spec`'s server runs and that `target` shows it (a bind of
    /// its mount, read-only if asked), recording `target` as a user. Returns
    /// whether anything was mounted at `target` (false: already published).
    fn publish(&self, spec: &ServerSpec, target: &Path, read_only: bool) -> Result<bool>;
    /// [`Servers::publish`] for a server with its own S3 identity (its
    /// arguments hold `--credentials-file /dev/fd/0`): the mounter hands
    /// `credentials` to the server on a pipe and keeps them to start it
    /// again, never in its state file or logs ([`secrets`]).
    fn publish_with_credentials(
        &self,
        spec: &ServerSpec,
        target: &Path,
        read_only: bool,
        credentials: &StaticCredentials,
    ) -> Result<bool>;
    /// Unmounts `target` if it is a user of one of the servers, and stops a
    /// server that has no user left. Returns whether `target` was a user.
    fn unpublish(&self, target: &Path) -> Result<bool>;
    /// Every server, for health reporting and tests.
    fn status(&self) -> Result<Vec<ServerStatus>>;
    /// A new mounter takes the servers over (see [`takeover`]): stop
    /// watching, publishing and writing the state file until
    /// [`Servers::release_end`].
    fn release(&self) -> Result<()> {
        Err(DriverError::FailedPrecondition(
            "this mounter cannot hand its servers over".into(),
        ))
    }
    /// The takeover ended: `handed_over` (the new mounter owns everything
    /// now: stay frozen, and the process may exit), or failed (carry on).
    fn release_end(&self, _handed_over: bool) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, args: &[&str]) -> ServerSpec {
        ServerSpec {
            id: id.into(),
            kind: Kind::S3,
            args: args.iter().map(|s| s.to_string()).collect(),
            what: "x".into(),
        }
    }

    #[test]
    fn only_foreground_mounts_with_plain_ids_are_accepted() {
        spec("ab12-3", &["mount", "s3", "--foreground", "bkt"])
            .validate()
            .unwrap();
        for (id, args, word) in [
            ("../x", &["mount", "s3", "--foreground"][..], "id"),
            ("", &["mount", "s3", "--foreground"][..], "id"),
            ("AB", &["mount", "s3", "--foreground"][..], "id"),
            (
                &"a".repeat(65)[..],
                &["mount", "s3", "--foreground"][..],
                "id",
            ),
            ("ok", &["csi", "s3", "--foreground"][..], "mount s3"),
            ("ok", &["mount", "home", "--foreground"][..], "mount s3"),
            ("ok", &["mount", "s3", "bkt"][..], "mount s3"),
            ("ok", &["mount", "s3", "--foreground", "a\0b"][..], "NUL"),
        ] {
            let e = spec(id, args).validate().unwrap_err().to_string();
            assert!(e.contains(word), "{id:?} {args:?}: {e}");
        }
    }

    #[test]
    fn mountpoints_live_under_the_state_dir_by_kind() {
        let mut s = spec("k1", &["mount", "s3", "--foreground"]);
        assert_eq!(s.mountpoint(Path::new("/st")), Path::new("/st/s3/k1/mnt"));
        s.kind = Kind::Home;
        assert_eq!(
            s.mountpoint(Path::new("/st")),
            Path::new("/st/homes/k1/mnt")
        );
    }
}
