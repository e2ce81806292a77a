//! Prometheus metrics of the controller: per-user usage, quota, fraction and
//! state (what efs-quota's DataDog dashboards showed), walk durations and
//! timeouts, hub API errors, corrupt records.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::record::{QuotaRecord, QuotaState};

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

    pub fn observe(&self, rec: &QuotaRecord) {
        let u = UserLabel {
            user: rec.user.clone(),
        };
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
