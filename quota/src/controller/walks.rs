//! Scheduled walks: which homes are due a measurement, and walking one
//! (claimed against other replicas) into an absolute report.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hubfs_walker::{WalkOptions, Walker};

use crate::events::Reason;
use crate::record::{QuotaRecord, Source};
use crate::store::{Scanned, StoreError};
use crate::userkey::UserKey;

use super::{Controller, ControllerError, Report, CONTROLLER_NODE};

impl Controller {
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
            Ok(entries) => {
                if self.users_dir_missing.swap(false, Ordering::Relaxed) {
                    tracing::info!(dir = %users_dir.display(), "the users directory appeared");
                }
                entries
            }
            // A fresh install: the directory comes with the first home.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !self.users_dir_missing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(dir = %users_dir.display(), "the users directory does not exist yet (it appears with the first provisioned home); looking again at every scan");
                }
                return Ok(vec![]);
            }
            Err(e) => {
                return Err(ControllerError::Store(StoreError::Io {
                    path: users_dir.display().to_string(),
                    source: e,
                }))
            }
        };
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
}
