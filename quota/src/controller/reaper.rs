//! The reaper: each cycle lists every hub user, records their activity and
//! server state in the records, and stops the servers of users that must
//! stop (also right after a report that locks a user out).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::config::PolicyMode;
use crate::events::Reason;
use crate::hub::HubUser;
use crate::record::{Enforcement, QuotaRecord, RecordTime};
use crate::store::Scanned;

use super::{Controller, ControllerError};

/// What the reaper did in one cycle.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReaperSummary {
    pub hub_users: usize,
    pub records_updated: usize,
    pub servers_stopped: usize,
    pub seconds: f64,
}

impl Controller {
    /// Should the reaper stop this user's server now?
    pub(super) fn must_stop(&self, rec: &QuotaRecord) -> bool {
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
                    r.server_stopped = RecordTime::at(now);
                    r.server_running = false;
                    true
                },
            )
        })
        .await
        .map_err(|e| ControllerError::Internal(e.to_string()))??;
        Ok(true)
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
            let activity = u
                .last_activity
                .map(RecordTime::at)
                .unwrap_or(RecordTime::NULL);
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
                        r.reaper_time = RecordTime::at(now);
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
}
