//! The per-user quota record, `quota.yaml`, in the efs-quota format.
//!
//! **The efs-quota format** is the record of the EFS quota monitor that hubfs
//! replaces: in an existing JupyterHub deployment on AWS EFS, a monitor pod
//! ran `du` over every `$HOME` and a reaper pod stopped servers over quota,
//! the two sharing one `quota.yaml` per user on the file system. A record has
//! thirteen keys in alphabetical order (`actual_bytes` ... `warn_fraction`;
//! the example from its documentation is
//! `quota/tests/fixtures/efs-quota-example.yaml`), `quota_state` is one of
//! `ok | nearing-limit | violation | lockout | timed-out`, timestamps are
//! quoted naive ISO 8601 UTC strings with [`NULL_TIME`] for none, and sizes
//! are bytes with [`UNDEFINED`] for not measured. Its constants (200 GiB
//! default quota, 0.8 warning fraction, periods and timeouts) are the
//! defaults in [`crate::config`]. In this crate "efs-quota" and "the EFS
//! quota monitor" always mean that system.
//!
//! Its fields keep their names and meanings so an existing deployment's
//! files load unchanged (and its tools can still read ours); what hubfs adds
//! (inodes, where and when a figure was measured, admin overrides, the graded
//! policy state) sits in extra keys that default when absent.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::Defaults;
pub use crate::levels::Enforcement;
use crate::levels::PolicyStatus;

/// efs-quota's `NULL_TIME`: how an empty timestamp is written.
pub const NULL_TIME: &str = "0001-01-01T01:01";
/// efs-quota's `UNDEFINED_BYTES`: not measured yet.
pub const UNDEFINED: i64 = -1;
/// Top-level keys holding timestamps (written quoted, as efs-quota did).
const TIME_KEYS: [&str; 9] = [
    "last_activity",
    "reaper_time",
    "started",
    "stopped",
    "measured_at",
    "state_since",
    "overquota_since",
    "overquota_state_since",
    "server_stopped",
];
/// Version of the hubfs additions; 0 = a record written by efs-quota.
pub const FORMAT_VERSION: u32 = 1;

/// A timestamp in a record, in the efs-quota format: naive ISO 8601 in UTC
/// with microseconds
/// (`2022-08-15T20:52:14.403000`), `NULL_TIME` when empty. Reading also
/// accepts RFC 3339 (what the hub API returns) and YAML nulls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct RecordTime(pub Option<DateTime<Utc>>);

impl RecordTime {
    pub const NULL: RecordTime = RecordTime(None);

    pub fn at(t: DateTime<Utc>) -> Self {
        RecordTime(Some(t))
    }

    pub fn get(&self) -> Option<DateTime<Utc>> {
        self.0
    }

    pub fn is_null(&self) -> bool {
        self.0.is_none()
    }

    /// Parses any timestamp form found in efs-quota records or hub replies.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() || s == NULL_TIME || s.starts_with("0001-01-01") {
            return Ok(RecordTime(None));
        }
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            return Ok(RecordTime(Some(t.with_timezone(&Utc))));
        }
        for fmt in [
            "%Y-%m-%dT%H:%M:%S%.f",
            "%Y-%m-%d %H:%M:%S%.f",
            "%Y-%m-%dT%H:%M",
        ] {
            if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
                return Ok(RecordTime(Some(t.and_utc())));
            }
        }
        Err(format!("not a timestamp: {s:?}"))
    }
}

impl fmt::Display for RecordTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str(NULL_TIME),
            Some(t) => write!(f, "{}", t.naive_utc().format("%Y-%m-%dT%H:%M:%S%.6f")),
        }
    }
}

impl Serialize for RecordTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for RecordTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v: Option<String> = Option::deserialize(d)?;
        match v {
            None => Ok(RecordTime(None)),
            Some(s) => RecordTime::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// efs-quota's `quota_state` values, plus `error` for a record that could not
/// be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, Default)]
#[serde(rename_all = "kebab-case")]
pub enum QuotaState {
    #[default]
    Ok,
    NearingLimit,
    Violation,
    Lockout,
    TimedOut,
    Error,
}

impl QuotaState {
    pub const ALL: [QuotaState; 6] = [
        QuotaState::Ok,
        QuotaState::NearingLimit,
        QuotaState::Violation,
        QuotaState::Lockout,
        QuotaState::TimedOut,
        QuotaState::Error,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            QuotaState::Ok => "ok",
            QuotaState::NearingLimit => "nearing-limit",
            QuotaState::Violation => "violation",
            QuotaState::Lockout => "lockout",
            QuotaState::TimedOut => "timed-out",
            QuotaState::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|q| q.as_str() == s)
    }
}

impl fmt::Display for QuotaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the current usage figure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// A walk reported by a node (mount time).
    Walk,
    /// The last absolute figure adjusted by write-time deltas from nodes.
    Write,
    /// The controller's own scheduled walk.
    ScheduledWalk,
}

/// Values an admin set for one user. They win over provisioned capacity and
/// config defaults, and measurement never touches them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_inodes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warn_fraction: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lockout_enabled: Option<bool>,
    /// Exempt from enforcement and the graded policy; still measured.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub exempt: bool,
    /// Why (for the next admin).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Overrides {
    pub fn is_empty(&self) -> bool {
        *self == Overrides::default()
    }
}

/// One user's record. The first thirteen fields are efs-quota's, in its
/// (alphabetical) order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QuotaRecord {
    pub actual_bytes: i64,
    pub fraction_used: f64,
    pub last_activity: RecordTime,
    pub lockout_enabled: bool,
    pub quota_bytes: i64,
    pub quota_enabled: bool,
    pub quota_state: QuotaState,
    pub reaper_time: RecordTime,
    pub started: RecordTime,
    pub stopped: RecordTime,
    pub timed_out: bool,
    pub user: String,
    pub warn_fraction: f64,

    /// hubfs format version; 0 (absent) = written by efs-quota.
    pub hubfs_format: u32,
    pub actual_inodes: i64,
    /// 0 = no inode limit.
    pub quota_inodes: i64,
    pub measured_at: RecordTime,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measurement_source: Option<Source>,
    /// When `quota_state` last changed.
    pub state_since: RecordTime,
    pub enforcement: Enforcement,
    #[serde(skip_serializing_if = "Overrides::is_empty")]
    pub overrides: Overrides,
    /// Graded policy state, e.g. `SOFT_USER:1`.
    pub overquota_state: PolicyStatus,
    /// When the user first went over quota (the policy's day 0).
    pub overquota_since: RecordTime,
    /// When the current graded state was entered.
    pub overquota_state_since: RecordTime,
    /// When the controller last stopped this user's server for quota.
    pub server_stopped: RecordTime,
    /// Whether the user's server was running at the last reaper cycle.
    pub server_running: bool,
    /// Set when the record could not be trusted (e.g. the previous file was
    /// corrupt and was kept aside): the state stays `error`, nothing is
    /// enforced, until an admin removes this line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The last message sent to the user by the policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_notice: Option<String>,
    /// Highest report sequence applied per node, so a retried batch is not
    /// counted twice.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub sequences: BTreeMap<String, u64>,
}

impl Default for QuotaRecord {
    fn default() -> Self {
        let d = Defaults::default();
        Self {
            actual_bytes: UNDEFINED,
            fraction_used: 0.0,
            last_activity: RecordTime::NULL,
            lockout_enabled: d.lockout_enabled,
            quota_bytes: d.quota_bytes,
            quota_enabled: d.quota_enabled,
            quota_state: QuotaState::Ok,
            reaper_time: RecordTime::NULL,
            started: RecordTime::NULL,
            stopped: RecordTime::NULL,
            timed_out: false,
            user: String::new(),
            warn_fraction: d.warn_fraction,
            hubfs_format: 0,
            actual_inodes: UNDEFINED,
            quota_inodes: 0,
            measured_at: RecordTime::NULL,
            measurement_source: None,
            state_since: RecordTime::NULL,
            enforcement: Enforcement::None,
            overrides: Overrides::default(),
            overquota_state: PolicyStatus::default(),
            overquota_since: RecordTime::NULL,
            overquota_state_since: RecordTime::NULL,
            server_stopped: RecordTime::NULL,
            server_running: false,
            error: None,
            last_notice: None,
            sequences: BTreeMap::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("not a quota record: {0}")]
    Parse(String),
    #[error("quota record has no user")]
    NoUser,
    #[error("quota record field {field} is invalid: {why}")]
    Invalid { field: &'static str, why: String },
}

impl QuotaRecord {
    /// A new record for a user never seen before.
    pub fn new(user: &str, defaults: &Defaults) -> Self {
        Self {
            user: user.to_string(),
            lockout_enabled: defaults.lockout_enabled,
            quota_bytes: defaults.quota_bytes,
            quota_enabled: defaults.quota_enabled,
            quota_inodes: defaults.quota_inodes,
            warn_fraction: defaults.warn_fraction,
            hubfs_format: FORMAT_VERSION,
            ..Self::default()
        }
    }

    pub fn from_yaml(text: &str) -> Result<Self, RecordError> {
        let rec: QuotaRecord =
            serde_yaml::from_str(text).map_err(|e| RecordError::Parse(e.to_string()))?;
        rec.validate()?;
        Ok(rec)
    }

    pub fn to_yaml(&self) -> String {
        // Serialising plain data to YAML cannot fail (no maps with non-string keys).
        let text = serde_yaml::to_string(self)
            .unwrap_or_else(|e| format!("# unserialisable record: {e}\n"));
        // efs-quota's tools read records with PyYAML, which turns an unquoted
        // ISO timestamp into a datetime; efs-quota wrote them quoted, as strings.
        let mut out = String::with_capacity(text.len() + 64);
        for line in text.lines() {
            match line.split_once(": ") {
                Some((key, value)) if TIME_KEYS.contains(&key) && !value.starts_with('\'') => {
                    out.push_str(&format!("{key}: '{value}'"));
                }
                _ => out.push_str(line),
            }
            out.push('\n');
        }
        out
    }

    fn validate(&self) -> Result<(), RecordError> {
        if self.user.trim().is_empty() {
            return Err(RecordError::NoUser);
        }
        if !self.warn_fraction.is_finite() || !(0.0..=1.0).contains(&self.warn_fraction) {
            return Err(RecordError::Invalid {
                field: "warn_fraction",
                why: format!("{} is not between 0 and 1", self.warn_fraction),
            });
        }
        if let Some(w) = self.overrides.warn_fraction {
            if !w.is_finite() || !(0.0..=1.0).contains(&w) {
                return Err(RecordError::Invalid {
                    field: "overrides.warn_fraction",
                    why: format!("{w} is not between 0 and 1"),
                });
            }
        }
        if let Some(q) = self.overrides.quota_bytes {
            if q <= 0 {
                return Err(RecordError::Invalid {
                    field: "overrides.quota_bytes",
                    why: format!("{q} is not positive"),
                });
            }
        }
        Ok(())
    }

    /// Turns a record written by efs-quota into a hubfs one: efs-quota had no
    /// overrides section, an admin changed the top-level fields, so values
    /// that differ from the defaults are taken as the admin's overrides.
    pub fn migrate_from_efs_quota(&mut self, defaults: &Defaults) {
        if self.hubfs_format != 0 {
            return;
        }
        let o = &mut self.overrides;
        if self.quota_bytes > 0 && self.quota_bytes != defaults.quota_bytes {
            o.quota_bytes.get_or_insert(self.quota_bytes);
        }
        if (self.warn_fraction - defaults.warn_fraction).abs() > f64::EPSILON {
            o.warn_fraction.get_or_insert(self.warn_fraction);
        }
        if self.quota_enabled != defaults.quota_enabled {
            o.quota_enabled.get_or_insert(self.quota_enabled);
        }
        if self.lockout_enabled != defaults.lockout_enabled {
            o.lockout_enabled.get_or_insert(self.lockout_enabled);
        }
        self.hubfs_format = FORMAT_VERSION;
    }

    /// Recomputes the effective limits: admin override, else the capacity
    /// provisioned for the user's volume, else the config default.
    pub fn apply_limits(&mut self, defaults: &Defaults, provisioned: Option<i64>) {
        let o = &self.overrides;
        self.quota_bytes = o
            .quota_bytes
            .or(provisioned.filter(|p| *p > 0))
            .unwrap_or(defaults.quota_bytes);
        self.quota_inodes = o.quota_inodes.unwrap_or(defaults.quota_inodes);
        self.warn_fraction = o.warn_fraction.unwrap_or(defaults.warn_fraction);
        self.quota_enabled = o.quota_enabled.unwrap_or(defaults.quota_enabled);
        self.lockout_enabled = o.lockout_enabled.unwrap_or(defaults.lockout_enabled);
        self.fraction_used = if self.actual_bytes >= 0 && self.quota_bytes > 0 {
            self.actual_bytes as f64 / self.quota_bytes as f64
        } else {
            0.0
        };
    }

    pub fn is_measured(&self) -> bool {
        self.actual_bytes >= 0
    }
}

/// A record's byte figure for people: [`crate::format_size`], or "unknown"
/// for [`UNDEFINED`] (not measured yet).
pub fn human_bytes(b: i64) -> String {
    match u64::try_from(b) {
        Ok(b) => crate::format_size(b),
        Err(_) => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example `quota.yaml` from the EFS quota monitor's documentation,
    /// byte for byte (the one copy, shared with the store's and the CLI's
    /// tests).
    pub const EFS_QUOTA_EXAMPLE: &str = include_str!("../tests/fixtures/efs-quota-example.yaml");

    #[test]
    fn efs_quota_example_loads_unchanged() {
        let r = QuotaRecord::from_yaml(EFS_QUOTA_EXAMPLE).unwrap();
        assert_eq!(r.user, "jmiller@stsci.edu");
        assert_eq!(r.actual_bytes, 2469232);
        assert_eq!(r.quota_bytes, 214748364800);
        assert_eq!(r.fraction_used, 1.1498257517814636e-05);
        assert!(r.lockout_enabled && r.quota_enabled && !r.timed_out);
        assert_eq!(r.quota_state, QuotaState::Ok);
        assert_eq!(r.warn_fraction, 0.8);
        assert_eq!(r.hubfs_format, 0);
        assert_eq!(r.last_activity.to_string(), "2022-08-15T20:52:14.403000");
        assert_eq!(r.stopped.to_string(), "2022-08-15T20:27:57.527531");
        // Our output keeps efs-quota's fields with the same values and forms
        // (the float may be spelled differently; it is the same number).
        let out = r.to_yaml();
        for line in EFS_QUOTA_EXAMPLE
            .lines()
            .filter(|l| !l.starts_with("fraction_used"))
        {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }
        assert_eq!(QuotaRecord::from_yaml(&out).unwrap(), r);
    }

    #[test]
    fn efs_quota_states_and_null_times_parse() {
        for s in ["ok", "nearing-limit", "violation", "lockout", "timed-out"] {
            let text = EFS_QUOTA_EXAMPLE
                .replace("quota_state: ok", &format!("quota_state: {s}"))
                .replace("'2022-08-15T20:27:57.049991'", "'0001-01-01T01:01'");
            let r = QuotaRecord::from_yaml(&text).unwrap();
            assert_eq!(r.quota_state.as_str(), s);
            assert!(r.started.is_null());
            assert!(r.to_yaml().contains("started: '0001-01-01T01:01'"));
        }
    }

    #[test]
    fn hostile_records_are_refused_with_a_reason() {
        for (text, needle) in [
            ("", "no user"),
            ("[1, 2", "not a quota record"),
            ("user: a\nactual_bytes: lots\n", "not a quota record"),
            ("user: a\nwarn_fraction: 7\n", "warn_fraction"),
            ("user: a\nlast_activity: yesterday\n", "timestamp"),
            ("user: a\nquota_state: furious\n", "not a quota record"),
            (
                "user: a\noverrides:\n  quota_bytes: -5\n",
                "overrides.quota_bytes",
            ),
        ] {
            let e = QuotaRecord::from_yaml(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn efs_quota_admin_edits_become_overrides() {
        let text = EFS_QUOTA_EXAMPLE
            .replace("quota_bytes: 214748364800", "quota_bytes: 536870912000")
            .replace("lockout_enabled: true", "lockout_enabled: false");
        let mut r = QuotaRecord::from_yaml(&text).unwrap();
        let d = Defaults::default();
        r.migrate_from_efs_quota(&d);
        assert_eq!(r.overrides.quota_bytes, Some(536870912000));
        assert_eq!(r.overrides.lockout_enabled, Some(false));
        assert_eq!(r.overrides.quota_enabled, None);
        // A provisioned capacity does not beat the admin's figure.
        r.apply_limits(&d, Some(10 << 30));
        assert_eq!(r.quota_bytes, 536870912000);
        assert!(!r.lockout_enabled);
        // An efs-quota record at the defaults takes the provisioned capacity.
        let mut plain = QuotaRecord::from_yaml(EFS_QUOTA_EXAMPLE).unwrap();
        plain.migrate_from_efs_quota(&d);
        assert!(plain.overrides.is_empty());
        plain.apply_limits(&d, Some(10 << 30));
        assert_eq!(plain.quota_bytes, 10 << 30);
        plain.apply_limits(&d, None);
        assert_eq!(plain.quota_bytes, d.quota_bytes);
    }

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(200 << 30), "200 GiB");
        assert_eq!(human_bytes((41.2 * (1u64 << 30) as f64) as i64), "41.2 GiB");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(-1), "unknown");
    }

    #[test]
    fn hub_timestamps_parse() {
        let t = RecordTime::parse("2026-11-22T10:00:00.123456Z").unwrap();
        assert_eq!(t.to_string(), "2026-11-22T10:00:00.123456");
        assert!(RecordTime::parse("").unwrap().is_null());
    }
}
