//! The mounter's state file: which servers run, for which pod targets.
//!
//! Both the mounter and a restarted node plugin rebuild everything from this
//! file, so it is written atomically (a temporary file, fsync, rename, fsync
//! of the directory): a crash leaves the old or the new version, never half.
//! It carries a version; a file this hubfs cannot read (corrupt, truncated
//! by a full disk, written by another version) is moved aside with one
//! clear log line and the mounter starts empty — never a crash loop. Pods
//! publish again through kubelet if needed; nothing on the share is lost.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ServerSpec;

/// The format version this hubfs writes and reads.
pub const STATE_VERSION: u32 = 1;

/// One server and its users.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    pub spec: ServerSpec,
    /// Pod target paths bound to the server, and whether read-only.
    pub targets: BTreeMap<PathBuf, bool>,
    /// The serving process when last started (to adopt it after a restart).
    pub pid: Option<u32>,
}

/// Everything the mounter persists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub servers: BTreeMap<String, ServerRecord>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            version: STATE_VERSION,
            servers: BTreeMap::new(),
        }
    }
}

/// Where the state lives, and how it is read and written.
#[derive(Clone, Debug)]
pub struct StateFile {
    path: PathBuf,
}

/// Why a state file was not used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read it: {0}")]
    Read(std::io::Error),
    #[error("it is not valid state JSON: {0}")]
    Parse(serde_json::Error),
    #[error("it has format version {found}; this hubfs reads version {STATE_VERSION}")]
    Version { found: u32 },
}

impl StateFile {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join("servers.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the state strictly: `Ok(None)` when there is no file yet.
    pub fn read(&self) -> Result<Option<State>, StateError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StateError::Read(e)),
        };
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let v: Versioned = serde_json::from_slice(&bytes).map_err(StateError::Parse)?;
        if v.version != STATE_VERSION {
            return Err(StateError::Version { found: v.version });
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(StateError::Parse)
    }

    /// Reads the state; anything unusable is moved aside (`.unusable`) with
    /// an error in the log, and the mounter starts from nothing.
    pub fn load(&self) -> State {
        match self.read() {
            Ok(Some(s)) => s,
            Ok(None) => State::default(),
            Err(e) => {
                let aside = self.path.with_extension("json.unusable");
                let moved = std::fs::rename(&self.path, &aside).is_ok();
                tracing::error!(
                    file = %self.path.display(),
                    kept_as = %if moved { aside.display().to_string() } else { "(could not move it)".into() },
                    "the mount state file is unusable ({e}); starting with no servers: \
                     pods published before keep whatever mount they have, and are not \
                     recovered if their server dies"
                );
                State::default()
            }
        }
    }

    /// Writes `state` atomically and durably.
    pub fn save(&self, state: &State) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".servers.json.{}.tmp", std::process::id()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &self.path)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::super::Kind;
    use super::*;

    fn sample() -> State {
        let mut s = State::default();
        s.servers.insert(
            "s3-1".into(),
            ServerRecord {
                spec: ServerSpec {
                    id: "s3-1".into(),
                    kind: Kind::S3,
                    args: vec!["mount".into(), "s3".into(), "--foreground".into()],
                    what: "the S3 mount of b".into(),
                },
                targets: BTreeMap::from([(PathBuf::from("/k/pods/a/mount"), true)]),
                pid: Some(42),
            },
        );
        s
    }

    #[test]
    fn round_trips_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path());
        assert_eq!(f.read().unwrap(), None);
        assert_eq!(f.load(), State::default());
        f.save(&sample()).unwrap();
        assert_eq!(f.load(), sample());
        let mut s2 = sample();
        s2.servers.clear();
        f.save(&s2).unwrap();
        assert_eq!(f.load(), s2);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["servers.json".to_string()]);
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_and_the_mounter_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path());
        for junk in [
            &b"{\"version\":1,\"servers\":{\"x\""[..], // truncated mid-write
            b"\0\0\0\0",
            b"[]",
            b"{\"version\":1,\"servers\":{\"a\":{\"spec\":7}}}",
        ] {
            std::fs::write(f.path(), junk).unwrap();
            assert!(matches!(f.read(), Err(StateError::Parse(_))));
            assert_eq!(f.load(), State::default());
            assert!(!f.path().exists());
            assert_eq!(
                std::fs::read(dir.path().join("servers.json.unusable")).unwrap(),
                junk
            );
            // The next start finds no file: no loop of failures.
            assert_eq!(f.read().unwrap(), None);
            f.save(&sample()).unwrap();
            assert_eq!(f.load(), sample());
        }
    }

    #[test]
    fn another_version_is_refused_by_name_and_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path());
        let mut text = serde_json::to_value(sample()).unwrap();
        text["version"] = 99.into();
        std::fs::write(f.path(), text.to_string()).unwrap();
        let e = f.read().unwrap_err();
        assert!(matches!(e, StateError::Version { found: 99 }));
        assert!(e.to_string().contains("version 99"), "{e}");
        assert_eq!(f.load(), State::default());
    }
}
