//! The quota controller: applies usage reports from nodes and its own
//! scheduled walks to the records, decides transitions as reports arrive, runs
//! the reaper cycle (hub users' activity, stopping servers that must stop) and
//! the graded policy. Replaces the seed's monitor and reaper pods.
//!
//! Records are the only shared state, so any number of replicas may run: each
//! change is a locked read-modify-write of one record, and walks are claimed
//! with a lease.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hubfs_proto::quota as pb;

use crate::clock::Clock;
use crate::config::{Config, PolicyMode};
use crate::events::{post_in_background, EventSink, NoEvents, Notice, Reason, Regarding};
use crate::hub::{HubApi, HubError, HubUser};
use crate::metrics::{Metrics, OpLabel, UserStateLabel};
use crate::notify::Notifier;
use crate::policy::{self, Action, PolicyLevel, Step};
use crate::record::{Enforcement, QuotaRecord, QuotaState, SeedTime, Source};
use crate::state::{self, Transition};
use crate::store::{self, Scanned, Store, StoreError};
use crate::userkey::UserKey;
use hubfs_walker::{WalkOptions, Walker};

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
}

/// One usage figure, decoded from the wire or from a local walk.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub user: String,
    pub absolute: bool,
    pub source: Source,
    pub bytes: i64,
    pub inodes: i64,
    pub measured_at: DateTime<Utc>,
    pub timed_out: bool,
    pub walk_seconds: f64,
    pub sequence: u64,
}

impl Report {
    pub fn from_proto(r: &pb::UsageReport, now: DateTime<Utc>) -> Result<Self, ControllerError> {
        UserKey::new(&r.user)
            .map_err(|e| ControllerError::BadReport(format!("user {:?}: {e}", r.user)))?;
        let absolute = match pb::ReportKind::try_from(r.kind) {
            Ok(pb::ReportKind::Delta) => false,
            Ok(pb::ReportKind::Absolute) => true,
            _ => {
                return Err(ControllerError::BadReport(format!(
                    "report for {} has no kind",
                    r.user
                )))
            }
        };
        let source = match pb::UsageSource::try_from(r.source) {
            Ok(pb::UsageSource::Write) => Source::Write,
            _ => Source::Walk,
        };
        if absolute && (r.bytes < 0 || r.inodes < 0) {
            return Err(ControllerError::BadReport(format!(
                "negative absolute usage for {}",
                r.user
            )));
        }
        let measured_at = r
            .measured_at
            .as_ref()
            .and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
            .unwrap_or(now);
        Ok(Report {
            user: r.user.clone(),
            absolute,
            source,
            bytes: r.bytes,
            inodes: r.inodes,
            measured_at,
            timed_out: r.timed_out,
            walk_seconds: r.walk_seconds,
            sequence: r.sequence,
        })
    }
}

/// What the reaper did in one cycle.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReaperSummary {
    pub hub_users: usize,
    pub records_updated: usize,
    pub servers_stopped: usize,
    pub seconds: f64,
}

/// One line of `hubfs overquota`.
#[derive(Debug, Clone)]
pub struct OverquotaLine {
    pub user: String,
    pub quota_state: QuotaState,
    pub current: policy::PolicyStatus,
    pub due: Option<Step>,
    pub next: Option<(PolicyLevel, DateTime<Utc>)>,
    /// What was done (with `--run` / `--repeat`).
    pub performed: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct OverquotaOptions {
    pub users: Vec<String>,
    pub states: Vec<PolicyLevel>,
    pub run: bool,
    pub repeat: bool,
}

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
        }
    }

    /// Posts Kubernetes Events on the user's PVC for every transition and
    /// server stop (the PVC is the one the CSI controller recorded).
    pub fn with_events(mut self, events: Arc<dyn EventSink>) -> Self {
        self.events = events;
        self
    }

    fn post_event(&self, rec: &QuotaRecord, reason: Reason, note: String) {
        let Some((name, namespace)) = self
            .users_dir
            .as_deref()
            .and_then(|d| store::provisioned_pvc(d, &rec.user))
        else {
            tracing::debug!(user = %rec.user, reason = reason.as_str(), "no PVC known; event not posted");
            return;
        };
        post_in_background(
            &self.events,
            Notice {
                regarding: Regarding::Pvc {
                    namespace,
                    name,
                    uid: None,
                },
                reason,
                note,
            },
        );
    }

    fn usage_words(rec: &QuotaRecord) -> String {
        let pct = if rec.quota_bytes > 0 {
            rec.actual_bytes as f64 * 100.0 / rec.quota_bytes as f64
        } else {
            0.0
        };
        format!(
            "{} of {} used ({pct:.0}%)",
            crate::format_size(rec.actual_bytes.max(0) as u64),
            crate::format_size(rec.quota_bytes.max(0) as u64)
        )
    }

    /// The Events a transition deserves, in the words `kubectl describe` shows.
    fn transition_events(&self, rec: &QuotaRecord, t: &Transition) {
        use QuotaState as S;
        let usage = Self::usage_words(rec);
        let over = |s: S| matches!(s, S::Violation | S::Lockout);
        if t.from != t.to {
            match t.to {
                S::NearingLimit if !over(t.from) => self.post_event(
                    rec,
                    Reason::NearingLimit,
                    format!("{} is nearing the quota: {usage}", rec.user),
                ),
                s if over(s) && !over(t.from) => self.post_event(
                    rec,
                    Reason::OverQuota,
                    format!("{} is over the quota: {usage}", rec.user),
                ),
                S::Ok | S::NearingLimit if over(t.from) => self.post_event(
                    rec,
                    Reason::BackUnderQuota,
                    format!(
                        "{} is back under the quota: {usage}; writes are allowed again",
                        rec.user
                    ),
                ),
                S::TimedOut => self.post_event(
                    rec,
                    Reason::WalkTimedOut,
                    format!(
                        "measuring the home of {} timed out; the partial figure is never enforced",
                        rec.user
                    ),
                ),
                _ => {}
            }
        }
        if t.enforcement_to != t.enforcement_from && t.enforcement_to == Enforcement::Cleanup {
            self.post_event(
                rec,
                Reason::CleanupMode,
                format!("home of {} is in cleanup mode: deleting works, writing fails until usage is under the quota ({usage})", rec.user),
            );
        }
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

    /// Limits, state, policy clock and the automatic policy steps; the
    /// steps taken are returned for their actions to run after the write.
    fn settle(
        &self,
        rec: &mut QuotaRecord,
        provisioned: Option<i64>,
        now: DateTime<Utc>,
    ) -> (Option<Transition>, Vec<Step>) {
        rec.migrate_seed(&self.cfg.defaults);
        rec.apply_limits(&self.cfg.defaults, provisioned);
        let mut transition = state::reevaluate(rec, &self.cfg, now);
        let mut steps = Vec::new();
        let p = policy::plan(rec, &self.cfg.policy, now);
        if let Some(step) = p.due {
            // The controller always makes the OK <-> OVERQUOTA moves (the
            // Astakos hook's job); further escalation only with autoRun.
            let automatic = step.to == PolicyLevel::Ok
                || (step.from.level == PolicyLevel::Ok && step.to == PolicyLevel::Overquota)
                || self.cfg.policy.auto_run;
            let step = if !automatic && step.from.level == PolicyLevel::Ok {
                Step {
                    to: PolicyLevel::Overquota,
                    actions: self.cfg.policy.overquota.actions.clone(),
                    ..step
                }
            } else {
                step
            };
            if automatic || step.to == PolicyLevel::Overquota {
                policy::apply_step(rec, &step, now);
                let again = state::reevaluate(rec, &self.cfg, now);
                transition = merge(transition, again);
                if step.actions.contains(&Action::InformUser) {
                    rec.last_notice = Some(format!(
                        "{}: {}",
                        step.to,
                        state::message(rec, &self.cfg, now)
                    ));
                }
                steps.push(step);
            }
        }
        (transition, steps)
    }

    /// Runs a policy step's actions and logs the transition (after the write).
    fn after_change(&self, rec: &QuotaRecord, transition: Option<&Transition>, steps: &[Step]) {
        self.metrics.observe(rec);
        if let Some(t) = transition {
            if t.from != t.to {
                self.metrics
                    .transitions
                    .get_or_create(&UserStateLabel {
                        user: rec.user.clone(),
                        state: t.to.as_str().into(),
                    })
                    .inc();
            }
            tracing::info!(
                user = %rec.user,
                from = %t.from,
                to = %t.to,
                enforcement = ?t.enforcement_to,
                used = rec.actual_bytes,
                quota = rec.quota_bytes,
                "quota transition"
            );
            self.transition_events(rec, t);
        }
        for step in steps {
            self.run_actions(rec, step);
        }
    }

    fn run_actions(&self, rec: &QuotaRecord, step: &Step) {
        let now = self.now();
        for a in &step.actions {
            match a {
                Action::InformUser => self
                    .notifier
                    .inform_user(&rec.user, &state::message(rec, &self.cfg, now)),
                Action::InformAdmin => self.notifier.inform_admin(
                    &rec.user,
                    &format!(
                        "{} reached overquota state {} ({}); enforcement now {:?}",
                        rec.user,
                        rec.overquota_state,
                        state::usage_line(rec),
                        rec.enforcement
                    ),
                ),
                // Enforcement follows from the level reached (policy::enforcement).
                Action::Enforce => {}
            }
        }
    }

    /// Applies a batch of reports from one node; returns (accepted,
    /// duplicates, the resulting quotas).
    pub fn apply_reports(
        &self,
        node_id: &str,
        reports: &[Report],
    ) -> Result<(u32, u32, Vec<QuotaRecord>), ControllerError> {
        let mut by_user: BTreeMap<String, Vec<&Report>> = BTreeMap::new();
        for r in reports {
            let user = self.identities.canonical_in(&self.store, &r.user);
            by_user.entry(user).or_default().push(r);
        }
        let (mut accepted, mut duplicates) = (0u32, 0u32);
        let mut out = Vec::new();
        for (user, rs) in by_user {
            let user = user.as_str();
            let now = self.now();
            let provisioned = self.provisioned(user);
            let mut transition = None;
            let mut steps = Vec::new();
            let mut acc = 0;
            let mut dup = 0;
            let updated = self.store.update(
                user,
                || self.init_record(user),
                |rec| {
                    for r in rs {
                        if r.sequence > 0 {
                            let last = rec.sequences.entry(node_id.to_string()).or_insert(0);
                            if r.sequence <= *last {
                                dup += 1;
                                continue;
                            }
                            *last = r.sequence;
                        }
                        acc += 1;
                        self.metrics
                            .reports
                            .get_or_create(&OpLabel {
                                op: if r.absolute { "absolute" } else { "delta" }.into(),
                            })
                            .inc();
                        if r.absolute {
                            // Node and controller walks alike.
                            self.metrics.walk_seconds.observe(r.walk_seconds.max(0.0));
                            if r.timed_out {
                                self.metrics.walk_timeouts.inc();
                            }
                        }
                        apply_one(rec, r);
                    }
                    let (t, s) = self.settle(rec, provisioned, now);
                    transition = t;
                    steps = s;
                    true
                },
            )?;
            accepted += acc;
            duplicates += dup;
            if let Some(q) = &updated.quarantined {
                self.metrics.corrupt_records.inc();
                tracing::error!(%user, kept = %q.display(), "corrupt record replaced by an error record");
            }
            self.after_change(&updated.record, transition.as_ref(), &steps);
            out.push(updated.record);
        }
        Ok((accepted, duplicates, out))
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

    pub fn to_proto(&self, rec: &QuotaRecord) -> pb::UserQuota {
        let enforcement = match rec.enforcement {
            Enforcement::None => pb::Enforcement::None,
            Enforcement::Cleanup => pb::Enforcement::Cleanup,
            Enforcement::Blocked => pb::Enforcement::Blocked,
        };
        pb::UserQuota {
            user: rec.user.clone(),
            quota_bytes: rec.quota_bytes,
            quota_inodes: rec.quota_inodes,
            warn_fraction: rec.warn_fraction,
            quota_enabled: rec.quota_enabled,
            lockout_enabled: rec.lockout_enabled,
            quota_state: rec.quota_state.as_str().into(),
            enforcement: enforcement as i32,
            used_bytes: rec.actual_bytes,
            used_inodes: rec.actual_inodes,
            message: state::message(rec, &self.cfg, self.now()),
            policy_state: if rec.overquota_state.level == PolicyLevel::Ok {
                String::new()
            } else {
                rec.overquota_state.to_string()
            },
            measured_at: rec.measured_at.get().map(|t| prost_types::Timestamp {
                seconds: t.timestamp(),
                nanos: t.timestamp_subsec_nanos() as i32,
            }),
        }
    }

    /// Should the reaper stop this user's server now?
    fn must_stop(&self, rec: &QuotaRecord) -> bool {
        match rec.enforcement {
            Enforcement::Blocked => true,
            // Cleanup mode: stop once when lockout begins (a runaway writer
            // is interrupted), then let the user back in to clean up.
            Enforcement::Cleanup => {
                self.cfg.policy.mode == PolicyMode::Immediate
                    && rec.server_stopped < rec.state_since
            }
            Enforcement::None => false,
        }
    }

    /// Stops the servers of a user that must stop and notes it in the record.
    pub async fn enforce_user(
        self: &Arc<Self>,
        user: &str,
        servers: &[String],
    ) -> Result<bool, ControllerError> {
        let Some(hub) = self.hub.clone() else {
            return Ok(false);
        };
        let this = self.clone();
        let u = user.to_string();
        let rec = tokio::task::spawn_blocking(move || this.store.load(&u))
            .await
            .map_err(|e| ControllerError::Internal(e.to_string()))??;
        let Some(rec) = rec else { return Ok(false) };
        if !self.must_stop(&rec) {
            return Ok(false);
        }
        let default = [String::new()];
        let servers = if servers.is_empty() {
            &default[..]
        } else {
            servers
        };
        for s in servers {
            match hub.stop_server(user, s).await {
                Ok(outcome) => {
                    tracing::warn!(%user, server = %s, ?outcome, state = %rec.quota_state, enforcement = ?rec.enforcement, "stopped server for quota");
                }
                Err(e) => {
                    self.metrics.hub_error("stop_server");
                    return Err(e.into());
                }
            }
        }
        self.metrics.servers_stopped.inc();
        self.post_event(
            &rec,
            Reason::ServerStopped,
            format!(
                "stopped the notebook server of {} because the home is over its quota ({})",
                user,
                Self::usage_words(&rec)
            ),
        );
        let this = self.clone();
        let u = user.to_string();
        let now = self.now();
        tokio::task::spawn_blocking(move || {
            this.store.update(
                &u,
                || this.init_record(&u),
                |r| {
                    r.server_stopped = SeedTime::at(now);
                    r.server_running = false;
                    true
                },
            )
        })
        .await
        .map_err(|e| ControllerError::Internal(e.to_string()))??;
        Ok(true)
    }

    /// Reports from a node, then immediate enforcement of what they decided.
    pub async fn report(
        self: &Arc<Self>,
        node_id: String,
        reports: Vec<Report>,
    ) -> Result<(u32, u32, Vec<QuotaRecord>), ControllerError> {
        let this = self.clone();
        let result = tokio::task::spawn_blocking(move || this.apply_reports(&node_id, &reports))
            .await
            .map_err(|e| ControllerError::Internal(e.to_string()))??;
        for rec in &result.2 {
            if self.hub.is_some() && self.must_stop(rec) {
                let this = self.clone();
                let user = rec.user.clone();
                tokio::spawn(async move {
                    if let Err(e) = this.enforce_user(&user, &[]).await {
                        tracing::warn!(%user, error = %e, "could not stop server now; the reaper will retry");
                    }
                });
            }
        }
        Ok(result)
    }

    /// One reaper cycle: list every hub user (all pages, or nothing is
    /// decided), record activity and server state, stop servers that must stop.
    pub async fn reaper_cycle(self: &Arc<Self>) -> Result<ReaperSummary, ControllerError> {
        let started = Instant::now();
        let hub = self.hub.clone().ok_or(ControllerError::NoHub)?;
        let users = match hub.list_users().await {
            Ok(u) => u,
            Err(e) => {
                self.metrics.hub_error("list_users");
                tracing::warn!(error = %e, "hub listing failed; no decision this cycle");
                return Err(e.into());
            }
        };
        let this = self.clone();
        let users2 = users.clone();
        let (updated, to_stop) = tokio::task::spawn_blocking(move || this.record_activity(&users2))
            .await
            .map_err(|e| ControllerError::Internal(e.to_string()))??;
        let mut stopped = 0;
        let running: HashMap<&str, &HubUser> = users.iter().map(|u| (u.name.as_str(), u)).collect();
        for user in to_stop {
            let servers = running
                .get(user.as_str())
                .map(|u| u.running.clone())
                .unwrap_or_default();
            match self.enforce_user(&user, &servers).await {
                Ok(true) => stopped += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(%user, error = %e, "could not stop server"),
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        self.metrics.reaper_cycle_seconds.observe(seconds);
        let summary = ReaperSummary {
            hub_users: users.len(),
            records_updated: updated,
            servers_stopped: stopped,
            seconds,
        };
        tracing::info!(?summary, "reaper cycle");
        Ok(summary)
    }

    /// The blocking half of the reaper: write activity into the records that
    /// changed, and list the users whose running servers must stop.
    fn record_activity(&self, users: &[HubUser]) -> Result<(usize, Vec<String>), ControllerError> {
        self.identities.learn_hub_users(&self.store, users);
        let now = self.now();
        let mut records: HashMap<String, QuotaRecord> = HashMap::new();
        for s in self.store.scan()? {
            match s {
                Scanned::Record(r) => {
                    records.insert(r.user.clone(), *r);
                }
                Scanned::Bad { dir, error } => self.handle_bad(&dir, &error),
            }
        }
        let mut updated = 0;
        let mut to_stop = Vec::new();
        for u in users {
            let Some(rec) = records.get(&u.name) else {
                continue;
            };
            let activity = u.last_activity.map(SeedTime::at).unwrap_or(SeedTime::NULL);
            let running = u.server_running();
            if (activity != rec.last_activity && !activity.is_null())
                || running != rec.server_running
            {
                let res = self.store.update(
                    &u.name,
                    || self.init_record(&u.name),
                    |r| {
                        if !activity.is_null() {
                            r.last_activity = activity;
                        }
                        r.server_running = running;
                        r.reaper_time = SeedTime::at(now);
                        true
                    },
                );
                match res {
                    Ok(_) => updated += 1,
                    Err(e) => {
                        tracing::warn!(user = %u.name, error = %e, "could not record activity")
                    }
                }
            }
            if running && self.must_stop(rec) {
                to_stop.push(u.name.clone());
            }
        }
        Ok((updated, to_stop))
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

    /// Users whose home is due a walk: never measured, stale (older than
    /// `staleAfterSeconds`), or active since their last walk and older than
    /// `activeEverySeconds`.
    pub fn due_walks(&self) -> Result<Vec<String>, ControllerError> {
        let Some(users_dir) = &self.users_dir else {
            return Ok(vec![]);
        };
        let now = self.now();
        let mut records = HashMap::new();
        for s in self.store.scan()? {
            match s {
                Scanned::Record(r) => {
                    records.insert(r.user.clone(), *r);
                }
                Scanned::Bad { dir, error } => self.handle_bad(&dir, &error),
            }
        }
        let mut due = Vec::new();
        let entries = match std::fs::read_dir(users_dir) {
            // Appears with the first provisioned home; checked again next scan.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            r => r,
        };
        let entries = entries.map_err(|e| {
            ControllerError::Store(StoreError::Io {
                path: users_dir.display().to_string(),
                source: e,
            })
        })?;
        let stale = chrono::Duration::seconds(self.cfg.schedule.stale_after_seconds as i64);
        let active = chrono::Duration::seconds(self.cfg.schedule.active_every_seconds as i64);
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') || !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let Ok(key) = UserKey::decode(name) else {
                continue;
            };
            let user = self.identities.canonical(key.name());
            let is_due = match records.get(&user) {
                None => true,
                Some(r) => match r.stopped.get() {
                    None => true,
                    Some(last_walk) => {
                        let was_active = r.server_running
                            || r.last_activity.get().is_some_and(|a| a > last_walk);
                        now - last_walk >= stale || (was_active && now - last_walk >= active)
                    }
                },
            };
            if is_due {
                due.push(user);
            }
        }
        due.sort();
        due.dedup(); // a home under its own and a legacy name is one user
        Ok(due)
    }

    /// Walks one user's home now (claiming it against other replicas) and
    /// applies the result. `Ok(None)` if another replica holds the claim.
    pub async fn walk_user(
        self: &Arc<Self>,
        user: &str,
    ) -> Result<Option<QuotaRecord>, ControllerError> {
        let Some(users_dir) = self.users_dir.clone() else {
            return Ok(None);
        };
        let key = UserKey::new(user).map_err(|e| ControllerError::BadReport(e.to_string()))?;
        let this = self.clone();
        let u = user.to_string();
        let claim = tokio::task::spawn_blocking(move || this.store.claim_walk(&u))
            .await
            .map_err(|e| ControllerError::Internal(e.to_string()))??;
        let Some(mut claim) = claim else {
            return Ok(None);
        };
        let home = crate::identity::home_dir(&users_dir, key.name());
        let timeout = Duration::from_secs(self.cfg.schedule.walk_timeout_seconds);
        let started = self.now();
        let walk = tokio::task::spawn_blocking(move || {
            Walker::new(WalkOptions {
                timeout: Some(timeout),
                ..WalkOptions::default()
            })
            .walk(&home)
        });
        tokio::pin!(walk);
        let renew_every = (self.store.lease() / 3).max(Duration::from_millis(100));
        let stats = loop {
            tokio::select! {
                r = &mut walk => break r.map_err(|e| ControllerError::Internal(e.to_string()))?,
                _ = tokio::time::sleep(renew_every) => {
                    if let Err(e) = claim.renew() {
                        tracing::warn!(%user, error = %e, "lost the walk claim; result will still be applied");
                    }
                }
            }
        };
        drop(claim);
        let stats = match stats {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%user, error = %e, "walk failed");
                return Ok(None);
            }
        };
        let report = Report {
            user: user.to_string(),
            absolute: true,
            source: Source::ScheduledWalk,
            bytes: stats.usage_bytes() as i64,
            inodes: stats.inodes() as i64,
            measured_at: started + chrono::Duration::from_std(stats.elapsed).unwrap_or_default(),
            timed_out: stats.timed_out,
            walk_seconds: stats.elapsed.as_secs_f64(),
            sequence: 0,
        };
        let (_, _, mut recs) = self.report(CONTROLLER_NODE.into(), vec![report]).await?;
        let rec = recs.pop();
        if let Some(r) = rec.as_ref().filter(|_| !stats.timed_out) {
            // Repeats of this notice fold into one Event series per PVC.
            self.post_event(
                r,
                Reason::UsageMeasured,
                format!(
                    "measured the home of {user} in {:.1} s: {}",
                    stats.elapsed.as_secs_f64(),
                    Self::usage_words(r)
                ),
            );
        }
        Ok(rec)
    }

    /// One pass of the walk scheduler.
    pub async fn walk_cycle(self: &Arc<Self>) -> Result<usize, ControllerError> {
        let this = self.clone();
        let due = tokio::task::spawn_blocking(move || this.due_walks())
            .await
            .map_err(|e| ControllerError::Internal(e.to_string()))??;
        let sem = Arc::new(tokio::sync::Semaphore::new(
            self.cfg.schedule.walk_concurrency,
        ));
        let mut tasks = tokio::task::JoinSet::new();
        for user in due {
            let this = self.clone();
            let sem = sem.clone();
            tasks.spawn(async move {
                let _permit = sem.acquire_owned().await;
                match this.walk_user(&user).await {
                    Ok(r) => r.is_some(),
                    Err(e) => {
                        tracing::warn!(%user, error = %e, "scheduled walk failed");
                        false
                    }
                }
            });
        }
        let mut walked = 0;
        while let Some(r) = tasks.join_next().await {
            walked += usize::from(r.unwrap_or(false));
        }
        Ok(walked)
    }

    /// The graded policy pass behind `hubfs overquota`.
    pub fn overquota(
        &self,
        opts: &OverquotaOptions,
    ) -> Result<Vec<OverquotaLine>, ControllerError> {
        let mut lines = Vec::new();
        let now = self.now();
        let mut users: Vec<QuotaRecord> = Vec::new();
        for s in self.store.scan()? {
            match s {
                Scanned::Record(r) => users.push(*r),
                Scanned::Bad { dir, error } => {
                    tracing::error!(dir = %dir.display(), %error, "unreadable record skipped (the controller keeps it aside)")
                }
            }
        }
        users.sort_by(|a, b| a.user.cmp(&b.user));
        for mut rec in users {
            if !opts.users.is_empty()
                && !opts
                    .users
                    .iter()
                    .any(|u| crate::identity::names_match(u, &rec.user))
            {
                continue;
            }
            // Plan on the record as it would be settled now (limits, state).
            let provisioned = self.provisioned(&rec.user);
            rec.migrate_seed(&self.cfg.defaults);
            rec.apply_limits(&self.cfg.defaults, provisioned);
            state::reevaluate(&mut rec, &self.cfg, now);
            if !opts.states.is_empty() && !opts.states.contains(&rec.overquota_state.level) {
                continue;
            }
            let p = policy::plan(&rec, &self.cfg.policy, now);
            let mut line = OverquotaLine {
                user: rec.user.clone(),
                quota_state: rec.quota_state,
                current: p.current,
                due: p.due.clone(),
                next: p.next,
                performed: vec![],
            };
            if opts.run || opts.repeat {
                let mut steps = Vec::new();
                let mut transition = None;
                let repeat = opts.repeat;
                let run = opts.run;
                let cfg = &self.cfg;
                let updated = self.store.update(
                    &rec.user,
                    || self.init_record(&rec.user),
                    |r| {
                        r.migrate_seed(&cfg.defaults);
                        r.apply_limits(&cfg.defaults, provisioned);
                        transition = state::reevaluate(r, cfg, now);
                        if run {
                            if let Some(step) = policy::plan(r, &cfg.policy, now).due {
                                policy::apply_step(r, &step, now);
                                steps.push(step);
                            }
                        }
                        if repeat && steps.is_empty() {
                            if let Some(step) = policy::repeat(r, &cfg.policy) {
                                steps.push(step);
                            }
                        }
                        transition = merge(transition.take(), state::reevaluate(r, cfg, now));
                        if let Some(last) = steps.last() {
                            r.last_notice =
                                Some(format!("{}: {}", last.to, state::message(r, cfg, now)));
                        }
                        true
                    },
                )?;
                for s in &steps {
                    let acts: Vec<String> = s.actions.iter().map(|a| a.to_string()).collect();
                    line.performed.push(format!(
                        "{} -> {} [{}]",
                        s.from,
                        updated.record.overquota_state,
                        acts.join(", ")
                    ));
                }
                self.after_change(&updated.record, transition.as_ref(), &steps);
                line.current = updated.record.overquota_state;
            }
            lines.push(line);
        }
        Ok(lines)
    }
}

fn merge(a: Option<Transition>, b: Option<Transition>) -> Option<Transition> {
    match (a, b) {
        (Some(a), Some(b)) => Some(Transition {
            from: a.from,
            to: b.to,
            enforcement_from: a.enforcement_from,
            enforcement_to: b.enforcement_to,
        }),
        (a, b) => a.or(b),
    }
}

/// Applies one report's figure to a record.
fn apply_one(rec: &mut QuotaRecord, r: &Report) {
    let at = SeedTime::at(r.measured_at);
    if r.absolute {
        // A walk older than the one we hold is stale news.
        if !rec.stopped.is_null() && at < rec.stopped {
            return;
        }
        rec.actual_bytes = r.bytes;
        rec.actual_inodes = r.inodes;
        rec.timed_out = r.timed_out;
        let secs = r.walk_seconds.max(0.0);
        rec.started =
            SeedTime::at(r.measured_at - chrono::Duration::milliseconds((secs * 1000.0) as i64));
        rec.stopped = at;
        rec.measured_at = at;
        rec.measurement_source = Some(r.source);
    } else {
        // Writes the last walk already saw are not counted again.
        if !rec.stopped.is_null() && at <= rec.stopped {
            return;
        }
        rec.actual_bytes = (rec.actual_bytes.max(0) + r.bytes).max(0);
        rec.actual_inodes = (rec.actual_inodes.max(0) + r.inodes).max(0);
        if at > rec.measured_at {
            rec.measured_at = at;
        }
        rec.measurement_source = Some(Source::Write);
    }
}
