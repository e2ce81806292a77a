//! Usage reports into records: a batch from a node (or the controller's own
//! walk) is applied user by user under the record lock, the state machine and
//! the automatic policy steps settle the record, and what they decided
//! (actions, Events, an immediate server stop) runs after the write.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::levels::{Action, PolicyLevel};
use crate::metrics::{OpLabel, UserStateLabel};
use crate::policy::{self, Step};
use crate::record::{QuotaRecord, RecordTime, Source};
use crate::state::{self, Transition};

use super::{Controller, ControllerError};

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

impl Controller {
    /// Limits, state, policy clock and the automatic policy steps; the
    /// steps taken are returned for their actions to run after the write.
    fn settle(
        &self,
        rec: &mut QuotaRecord,
        provisioned: Option<i64>,
        now: DateTime<Utc>,
    ) -> (Option<Transition>, Vec<Step>) {
        rec.migrate_from_efs_quota(&self.cfg.defaults);
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
    pub(super) fn after_change(
        &self,
        rec: &QuotaRecord,
        transition: Option<&Transition>,
        steps: &[Step],
    ) {
        let now = self.now();
        self.metrics.observe(
            rec,
            state::next_enforcement(rec, &self.cfg, now).as_ref(),
            now,
        );
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
                self.spawn("server stop", async move {
                    if let Err(e) = this.enforce_user(&user, &[]).await {
                        tracing::warn!(%user, error = %e, "could not stop server now; the reaper will retry");
                    }
                });
            }
        }
        Ok(result)
    }
}

pub(super) fn merge(a: Option<Transition>, b: Option<Transition>) -> Option<Transition> {
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
    let at = RecordTime::at(r.measured_at);
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
            RecordTime::at(r.measured_at - chrono::Duration::milliseconds((secs * 1000.0) as i64));
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
