//! An in-memory [`Servers`] for unit tests: records every call, keeps the
//! targets per server, and can be told to fail the next call.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hubfs_fuse::s3::credentials::StaticCredentials;
use parking_lot::Mutex;

use super::{ServerSpec, ServerStatus, Servers};
use crate::error::{DriverError, Result};

/// A recorded call: the same calls the mounter's socket carries.
pub type ServerCall = super::wire::Request;

#[derive(Default)]
struct FakeState {
    servers: BTreeMap<String, (ServerSpec, BTreeMap<PathBuf, bool>)>,
    calls: Vec<ServerCall>,
    fail_next: Option<DriverError>,
    /// How the last release ended (None: none ended yet).
    release_end: Option<bool>,
}

#[derive(Default)]
pub struct FakeServers {
    inner: Mutex<FakeState>,
}

impl FakeServers {
    pub fn calls(&self) -> Vec<ServerCall> {
        self.inner.lock().calls.clone()
    }

    /// Makes the next publish fail with `e`.
    pub fn fail_next(&self, e: DriverError) {
        self.inner.lock().fail_next = Some(e);
    }

    /// How the last release ended: handed over or not (None: not yet).
    pub fn release_ended(&self) -> Option<bool> {
        self.inner.lock().release_end
    }

    /// Ids of the servers that have users.
    pub fn running(&self) -> Vec<String> {
        self.inner.lock().servers.keys().cloned().collect()
    }
}

impl FakeServers {
    fn record(
        &self,
        spec: &ServerSpec,
        target: &Path,
        read_only: bool,
        credentials: Option<&StaticCredentials>,
    ) -> Result<bool> {
        spec.validate()?;
        super::secrets::check_credentials(spec, credentials)?;
        let mut s = self.inner.lock();
        s.calls.push(ServerCall::Publish {
            spec: spec.clone(),
            target: target.into(),
            read_only,
            credentials: credentials.map(Into::into),
        });
        if let Some(e) = s.fail_next.take() {
            return Err(e);
        }
        if s.servers
            .iter()
            .any(|(id, (_, t))| id != &spec.id && t.contains_key(target))
        {
            return Err(DriverError::AlreadyExists(format!(
                "{} is already published from another server",
                target.display()
            )));
        }
        let entry = s
            .servers
            .entry(spec.id.clone())
            .or_insert_with(|| (spec.clone(), BTreeMap::new()));
        Ok(entry.1.insert(target.into(), read_only).is_none())
    }
}

impl Servers for FakeServers {
    fn release(&self) -> Result<()> {
        self.inner.lock().calls.push(ServerCall::Release);
        Ok(())
    }

    fn release_end(&self, handed_over: bool) {
        self.inner.lock().release_end = Some(handed_over);
    }

    fn publish(&self, spec: &ServerSpec, target: &Path, read_only: bool) -> Result<bool> {
        self.record(spec, target, read_only, None)
    }

    fn publish_with_credentials(
        &self,
        spec: &ServerSpec,
        target: &Path,
        read_only: bool,
        credentials: &StaticCredentials,
    ) -> Result<bool> {
        self.record(spec, target, read_only, Some(credentials))
    }

    fn unpublish(&self, target: &Path) -> Result<bool> {
        let mut s = self.inner.lock();
        s.calls.push(ServerCall::Unpublish {
            target: target.into(),
        });
        let mut was = false;
        s.servers.retain(|_, (_, t)| {
            was |= t.remove(target).is_some();
            !t.is_empty()
        });
        Ok(was)
    }

    fn status(&self) -> Result<Vec<ServerStatus>> {
        let mut s = self.inner.lock();
        s.calls.push(ServerCall::Status);
        Ok(s.servers
            .iter()
            .map(|(id, (spec, t))| ServerStatus {
                id: id.clone(),
                what: spec.what.clone(),
                mountpoint: PathBuf::from("/fake").join(id),
                pid: None,
                healthy: true,
                targets: t.keys().cloned().collect(),
                restarts: 0,
            })
            .collect())
    }
}
