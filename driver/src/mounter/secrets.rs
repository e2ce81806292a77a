//! The S3 identities of servers, kept apart from everything that is logged
//! or saved in clear.
//!
//! A bucket volume with a `nodePublishSecretRef` runs its server with
//! `--credentials-file /dev/fd/0`: the mounter writes the credentials into a
//! pipe that becomes the server's stdin, so they are never in a command line,
//! an environment, a mount option or the state file (`servers.json` holds
//! only the spec, whose id carries a keyed digest of the identity, never the
//! identity). To start the same server again after it crashed — or after the
//! mounter itself restarted, when kubelet will not publish again — the mounter
//! keeps them in memory and in `<state>/s3/<id>/credentials`, a root-only
//! (0600) file written atomically and removed with the server's last user.
//! The trade-off: the credentials rest on the node's disk while a pod uses
//! them (as readable as kubelet's own copy of the secret for the pod, to
//! root only), in exchange for servers that come back without a new
//! NodePublish. A server whose file is gone is not started with another
//! identity: its start fails until the next NodePublish brings them again.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use hubfs_fuse::s3::credentials::StaticCredentials;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::ServerSpec;
use crate::error::{DriverError, Result};

/// The argument pair of a server that reads its identity from the mounter.
pub const CREDENTIALS_ARGS: [&str; 2] = ["--credentials-file", "/dev/fd/0"];

/// Credentials as they cross the mounter's socket. Its `Debug` shows nothing.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireCredentials {
    access_key_id: String,
    secret_access_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    session_token: Option<String>,
}

impl std::fmt::Debug for WireCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WireCredentials(<redacted>)")
    }
}

impl From<&StaticCredentials> for WireCredentials {
    fn from(c: &StaticCredentials) -> Self {
        Self {
            access_key_id: c.access_key_id.clone(),
            secret_access_key: c.secret_access_key.clone(),
            session_token: c.session_token.clone(),
        }
    }
}

impl From<WireCredentials> for StaticCredentials {
    fn from(c: WireCredentials) -> Self {
        Self {
            access_key_id: c.access_key_id,
            secret_access_key: c.secret_access_key,
            session_token: c.session_token,
        }
    }
}

/// Whether `spec`'s server takes its identity from the mounter.
pub fn wants_credentials(spec: &ServerSpec) -> bool {
    spec.args
        .windows(2)
        .any(|w| w[0] == CREDENTIALS_ARGS[0] && w[1] == CREDENTIALS_ARGS[1])
}

/// Checks that `credentials` come with a server that takes them (see
/// [`wants_credentials`]), and only with one.
pub fn check_credentials(spec: &ServerSpec, credentials: Option<&StaticCredentials>) -> Result<()> {
    if wants_credentials(spec) != credentials.is_some() {
        return Err(DriverError::Invalid(format!(
            "{}: credentials must come with `--credentials-file /dev/fd/0`, and only then",
            spec.what
        )));
    }
    Ok(())
}

/// Credentials of the servers, in memory and in root-only files.
pub struct Secrets {
    state_dir: PathBuf,
    mem: Mutex<HashMap<String, StaticCredentials>>,
}

impl Secrets {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            state_dir: state_dir.to_owned(),
            mem: Mutex::default(),
        }
    }

    fn path(&self, spec: &ServerSpec) -> PathBuf {
        spec.mountpoint(&self.state_dir)
            .with_file_name("credentials")
    }

    /// Keeps `c` for `spec`'s server (idempotent).
    pub fn put(&self, spec: &ServerSpec, c: &StaticCredentials) -> Result<()> {
        let path = self.path(spec);
        let dir = path.parent().expect("server dir");
        std::fs::create_dir_all(dir).map_err(|e| DriverError::io("create", dir, e))?;
        let tmp = dir.join(".credentials.tmp");
        let _ = std::fs::remove_file(&tmp);
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(c.to_text().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| DriverError::io("write", &path, e))?;
        self.mem.lock().insert(spec.id.clone(), c.clone());
        Ok(())
    }

    /// The credentials of `spec`'s server: from memory, else from its file.
    pub fn get(&self, spec: &ServerSpec) -> Result<StaticCredentials> {
        if let Some(c) = self.mem.lock().get(&spec.id) {
            return Ok(c.clone());
        }
        let path = self.path(spec);
        let c = StaticCredentials::read_file(&path).map_err(|e| {
            DriverError::FailedPrecondition(format!(
                "the credentials of {} are not available ({e}); the next NodePublish of a volume using it brings them again",
                spec.what
            ))
        })?;
        self.mem.lock().insert(spec.id.clone(), c.clone());
        Ok(c)
    }

    /// Forgets the credentials of a server that stopped for good.
    pub fn forget(&self, spec: &ServerSpec) {
        self.mem.lock().remove(&spec.id);
        let _ = std::fs::remove_file(self.path(spec));
    }

    /// The read end of a pipe holding `spec`'s credentials, to become the
    /// server's stdin (`/dev/fd/0`).
    pub fn pipe(&self, spec: &ServerSpec) -> Result<std::os::fd::OwnedFd> {
        let c = self.get(spec)?;
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| DriverError::io("make the credentials pipe of", &spec.id, e.into()))?;
        // A few hundred bytes: far below the pipe's buffer, so this never blocks.
        std::fs::File::from(w)
            .write_all(c.to_text().as_bytes())
            .map_err(|e| DriverError::io("write the credentials pipe of", &spec.id, e))?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Kind;
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn spec() -> ServerSpec {
        ServerSpec {
            id: "abc-1".into(),
            kind: Kind::S3,
            args: [
                "mount",
                "s3",
                "--foreground",
                CREDENTIALS_ARGS[0],
                CREDENTIALS_ARGS[1],
            ]
            .map(String::from)
            .to_vec(),
            what: "the S3 mount of b".into(),
        }
    }

    fn creds() -> StaticCredentials {
        StaticCredentials {
            access_key_id: "GK1234".into(),
            secret_access_key: SECRET.into(),
            session_token: None,
        }
    }

    #[test]
    fn kept_root_only_found_again_by_a_new_mounter_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let s = Secrets::new(dir.path());
        assert!(wants_credentials(&spec()));
        assert!(s.get(&spec()).is_err());
        s.put(&spec(), &creds()).unwrap();
        let file = dir.path().join("s3/abc-1/credentials");
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A restarted mounter reads the file.
        let again = Secrets::new(dir.path());
        assert_eq!(again.get(&spec()).unwrap(), creds());
        // The pipe carries exactly the text the server parses.
        let mut text = String::new();
        std::fs::File::from(again.pipe(&spec()).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(StaticCredentials::parse(&text).unwrap(), creds());
        again.forget(&spec());
        assert!(!file.exists());
        assert!(again.get(&spec()).is_err());
    }

    #[test]
    fn the_wire_form_round_trips_and_never_shows_in_debug() {
        let w = WireCredentials::from(&creds());
        let json = serde_json::to_string(&w).unwrap();
        let back: WireCredentials = serde_json::from_str(&json).unwrap();
        assert_eq!(StaticCredentials::from(back), creds());
        let shown = format!("{w:?}");
        assert!(
            !shown.contains(SECRET) && !shown.contains("GK1234"),
            "{shown}"
        );
    }
}
