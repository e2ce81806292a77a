//! Prometheus metrics of the controller: per-user usage, quota, fraction,
//! state, enforcement and grace left (what efs-quota's DataDog dashboards
//! showed, and the chart's Grafana dashboard's admin table), walk durations
//! and timeouts, hub API errors, corrupt records.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use chrono::{DateTime, Utc};

use crate::record::{Enforcement, QuotaRecord, QuotaState};
use crate::state::NextEnforcement;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UserLabel {
    pub user: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UserStateLabel {
    pub user: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UserEnforcementLabel {
    pub user: String,
    pub enforcement: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: String,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub used_bytes: Family<UserLabel, Gauge>,
    pub quota_bytes: Family<UserLabel, Gauge>,
    pub fraction_used: Family<UserLabel, Gauge<f64, AtomicU64>>,
    pub state: Family<UserStateLabel, Gauge>,
    pub enforcement: Family<UserEnforcementLabel, Gauge>,
    pub grace_seconds: Family<UserLabel, Gauge<f64, AtomicU64>>,
    pub walk_seconds: Histogram,
    pub walk_timeouts: Counter,
    pub hub_errors: Family<OpLabel, Counter>,
    pub corrupt_records: Counter,
    pub reports: Family<OpLabel, Counter>,
    pub transitions: Family<UserStateLabel, Counter>,
    pub servers_stopped: Counter,
    pub reaper_cycle_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("hubfs_quota");
        let m = Metrics {
            used_bytes: Family::default(),
            quota_bytes: Family::default(),
            fraction_used: Family::default(),
            state: Family::default(),
            enforcement: Family::default(),
            grace_seconds: Family::default(),
            walk_seconds: Histogram::new(exponential_buckets(0.01, 4.0, 10)),
            walk_timeouts: Counter::default(),
            hub_errors: Family::default(),
            corrupt_records: Counter::default(),
            reports: Family::default(),
            transitions: Family::default(),
            servers_stopped: Counter::default(),
            reaper_cycle_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 12)),
            registry: Registry::default(),
        };
        registry.register(
            "used_bytes",
            "Bytes used by the user's home",
            m.used_bytes.clone(),
        );
        registry.register(
            "limit_bytes",
            "The user's effective quota",
            m.quota_bytes.clone(),
        );
        registry.register("fraction_used", "used / quota", m.fraction_used.clone());
        registry.register(
            "state",
            "1 for the user's current quota_state",
            m.state.clone(),
        );
        registry.register(
            "enforcement",
            "1 for what is enforced on the user now (none, cleanup, blocked)",
            m.enforcement.clone(),
        );
        registry.register(
            "grace_seconds",
            "Seconds until the graded policy next gets stricter for the user (-1: nothing scheduled)",
            m.grace_seconds.clone(),
        );
        registry.register(
            "walk_seconds",
            "Duration of the controller's walks",
            m.walk_seconds.clone(),
        );
        registry.register(
            "walk_timeouts",
            "Walks stopped by the walk timeout",
            m.walk_timeouts.clone(),
        );
        registry.register(
            "hub_api_errors",
            "Failed hub API operations",
            m.hub_errors.clone(),
        );
        registry.register(
            "corrupt_records",
            "Unreadable records kept aside",
            m.corrupt_records.clone(),
        );
        registry.register(
            "reports",
            "Usage reports received, by kind",
            m.reports.clone(),
        );
        registry.register(
            "transitions",
            "Quota state transitions, by new state",
            m.transitions.clone(),
        );
        registry.register(
            "servers_stopped",
            "Servers stopped for quota",
            m.servers_stopped.clone(),
        );
        registry.register(
            "reaper_cycle_seconds",
            "Duration of reaper cycles (list users, record activity, enforce)",
            m.reaper_cycle_seconds.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Sets the user's gauges from their record; `next` is when the policy
    /// next gets stricter ([`crate::state::next_enforcement`]).
    pub fn observe(&self, rec: &QuotaRecord, next: Option<&NextEnforcement>, now: DateTime<Utc>) {
        let u = UserLabel {
            user: rec.user.clone(),
        };
        let grace = next.map_or(-1.0, |n| (n.at - now).num_seconds().max(0) as f64);
        self.grace_seconds.get_or_create(&u).set(grace);
        for (e, name) in [
            (Enforcement::None, "none"),
            (Enforcement::Cleanup, "cleanup"),
            (Enforcement::Blocked, "blocked"),
        ] {
            let l = UserEnforcementLabel {
                user: rec.user.clone(),
                enforcement: name.into(),
            };
            self.enforcement
                .get_or_create(&l)
                .set(i64::from(e == rec.enforcement));
        }
        self.used_bytes.get_or_create(&u).set(rec.actual_bytes);
        self.quota_bytes.get_or_create(&u).set(rec.quota_bytes);
        self.fraction_used.get_or_create(&u).set(rec.fraction_used);
        for s in QuotaState::ALL {
            let l = UserStateLabel {
                user: rec.user.clone(),
                state: s.as_str().into(),
            };
            self.state
                .get_or_create(&l)
                .set(i64::from(s == rec.quota_state));
        }
    }

    pub fn hub_error(&self, op: &str) {
        self.hub_errors
            .get_or_create(&OpLabel { op: op.into() })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Defaults;

    #[test]
    fn the_admin_table_gauges_show_enforcement_and_grace() {
        let m = Metrics::new();
        let now = Utc::now();
        let mut rec = QuotaRecord::new("jmiller@stsci.edu", &Defaults::default());
        rec.enforcement = Enforcement::Cleanup;
        let next = NextEnforcement {
            enforcement: Enforcement::Blocked,
            level: "HARD_ADMIN".into(),
            at: now + chrono::Duration::days(3),
            days_left: 3,
        };
        m.observe(&rec, Some(&next), now);
        let text = m.encode();
        assert!(
            text.contains("hubfs_quota_grace_seconds{user=\"jmiller@stsci.edu\"} 259200"),
            "{text}"
        );
        assert!(
            text.contains(
                "hubfs_quota_enforcement{user=\"jmiller@stsci.edu\",enforcement=\"cleanup\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "hubfs_quota_enforcement{user=\"jmiller@stsci.edu\",enforcement=\"none\"} 0"
            ),
            "{text}"
        );
        m.observe(&rec, None, now);
        assert!(m
            .encode()
            .contains("hubfs_quota_grace_seconds{user=\"jmiller@stsci.edu\"} -1"));
    }
}
