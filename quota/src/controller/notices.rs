//! The words of the Kubernetes Events the controller posts on a user's PVC:
//! which transitions deserve one, and how usage reads in `kubectl describe`.

use crate::events::{Notice, Reason, Regarding};
use crate::record::{Enforcement, QuotaRecord, QuotaState};
use crate::state::Transition;
use crate::store;

use super::Controller;

impl Controller {
    pub(super) fn post_event(&self, rec: &QuotaRecord, reason: Reason, note: String) {
        let Some((name, namespace)) = self
            .users_dir
            .as_deref()
            .and_then(|d| store::provisioned_pvc(d, &rec.user))
        else {
            tracing::debug!(user = %rec.user, reason = reason.as_str(), "no PVC known; event not posted");
            return;
        };
        let notice = Notice {
            regarding: Regarding::Pvc {
                namespace,
                name,
                uid: None,
            },
            reason,
            note,
        };
        let events = self.events.clone();
        self.spawn("event", async move { events.post(notice).await });
    }

    pub(super) fn usage_words(rec: &QuotaRecord) -> String {
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
    pub(super) fn transition_events(&self, rec: &QuotaRecord, t: &Transition) {
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
}
