//! The graded policy pass behind `hubfs overquota`: a dry run of what the
//! policy would do for each user, or (`--run` / `--repeat`) doing it.

use chrono::{DateTime, Utc};

use crate::levels::{PolicyLevel, PolicyStatus};
use crate::policy::{self, Step};
use crate::record::{QuotaRecord, QuotaState};
use crate::state;
use crate::store::Scanned;

use super::apply::merge;
use super::{Controller, ControllerError};

/// One line of `hubfs overquota`.
#[derive(Debug, Clone)]
pub struct OverquotaLine {
    pub user: String,
    pub quota_state: QuotaState,
    pub current: PolicyStatus,
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

impl Controller {
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
            rec.migrate_from_efs_quota(&self.cfg.defaults);
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
                        r.migrate_from_efs_quota(&cfg.defaults);
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
