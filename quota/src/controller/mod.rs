//! The quota controller: applies usage reports from nodes and its own
//! scheduled walks to the records, decides transitions as reports arrive, runs
//! the reaper cycle (hub users' activity, stopping servers that must stop) and
//! the graded policy. Replaces the monitor and reaper pods of the EFS quota monitor.
//!
//! Records are the only shared state, so any number of replicas may run: each
//! change is a locked read-modify-write of one record, and walks are claimed
//! with a lease.

//! One file per job: `apply` (usage reports into records), `notices` (the
//! words of Kubernetes Events), `reaper` (hub activity and server stops),
//! `walks` (scheduled walks), `overquota` (the graded policy pass behind
//! `hubfs overquota`) and `run` (the loops and servers of `hubfs
//! controller`). Wire conversions live in [`crate::grpc`].

mod apply;
mod notices;
mod overquota;
mod reaper;
mod run;
mod walks;

pub use apply::Report;
pub use overquota::{OverquotaLine, OverquotaOptions};
pub use reaper::ReaperSummary;
pub use run::OnceSummary;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::config::Config;
use crate::events::{EventSink, NoEvents};
use crate::hub::{HubApi, HubError};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::record::QuotaRecord;
use crate::store::{self, Store, StoreError};

/// Node id used for the controller's own walks.
pub const CONTROLLER_NODE: &str = "controller";

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("bad report: {0}")]
    BadReport(String),
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error("no hub configured")]
    NoHub,
    #[error("internal: {0}")]
    Internal(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("the {what} server stopped: {why}")]
    Server { what: &'static str, why: String },
}

/// The quota controller: configuration, the record store and the outside
/// systems it talks to. Shared as `Arc<Controller>` by the servers and loops.
#[derive(Debug)]
pub struct Controller {
    pub cfg: Config,
    pub store: Store,
    users_dir: Option<PathBuf>,
    clock: Arc<dyn Clock>,
    hub: Option<Arc<dyn HubApi>>,
    notifier: Arc<dyn Notifier>,
    events: Arc<dyn EventSink>,
    pub metrics: Metrics,
    /// Hub users <-> legacy (slug) names of their homes and records.
    pub identities: crate::identity::Identities,
    /// Background tasks (server stops started by reports, Event posts);
    /// awaited by [`Controller::join_spawned`].
    spawned: Mutex<Vec<JoinHandle<()>>>,
    /// Set while `users_dir` does not exist yet (logged once).
    users_dir_missing: AtomicBool,
}

impl Controller {
    pub fn new(
        cfg: Config,
        store: Store,
        users_dir: Option<PathBuf>,
        clock: Arc<dyn Clock>,
        hub: Option<Arc<dyn HubApi>>,
        notifier: Arc<dyn Notifier>,
    ) -> Self {
        Self {
            cfg,
            store,
            users_dir,
            clock,
            hub,
            notifier,
            events: Arc::new(NoEvents),
            metrics: Metrics::new(),
            identities: Default::default(),
            spawned: Mutex::new(Vec::new()),
            users_dir_missing: AtomicBool::new(false),
        }
    }

    /// Posts Kubernetes Events on the user's PVC for every transition and
    /// server stop (the PVC is the one the CSI controller recorded).
    pub fn with_events(mut self, events: Arc<dyn EventSink>) -> Self {
        self.events = events;
        self
    }

    pub fn has_hub(&self) -> bool {
        self.hub.is_some()
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn init_record(&self, user: &str) -> QuotaRecord {
        QuotaRecord::new(user, &self.cfg.defaults)
    }

    fn provisioned(&self, user: &str) -> Option<i64> {
        self.users_dir
            .as_deref()
            .and_then(|d| store::provisioned_quota(d, user))
    }

    /// The record of a user, or what it would be without one.
    pub fn get(&self, user: &str) -> Result<(QuotaRecord, bool), ControllerError> {
        let user = &self.identities.canonical_in(&self.store, user);
        match self.store.load(user)? {
            Some(r) => Ok((r, true)),
            None => {
                let mut r = self.init_record(user);
                r.apply_limits(&self.cfg.defaults, self.provisioned(user));
                Ok((r, false))
            }
        }
    }

    fn handle_bad(&self, dir: &Path, error: &StoreError) {
        match error {
            StoreError::Corrupt { .. } => {
                match self.store.quarantine_dir(dir, |u| self.init_record(u)) {
                    Ok(Some((user, aside))) => {
                        self.metrics.corrupt_records.inc();
                        tracing::error!(user = ?user, kept = %aside.display(), %error, "corrupt record kept aside; user set to error");
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(dir = %dir.display(), error = %e, "cannot keep corrupt record aside")
                    }
                }
            }
            _ => tracing::error!(dir = %dir.display(), %error, "unreadable record left in place"),
        }
    }
}
