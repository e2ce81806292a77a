//! The controller's YAML configuration. Every field has a default, and the
//! defaults are the EFS quota monitor's constants (see [`crate::record`]), so an empty file (or no file)
//! behaves like the monitor/reaper pods it replaces.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::levels::{Action, PolicyLevel};

/// efs-quota's `DEFAULT_QUOTA_G = 200`, in bytes.
pub const DEFAULT_QUOTA_BYTES: i64 = 200 * 1024 * 1024 * 1024;
/// efs-quota's `WARN_FRACTION`.
pub const DEFAULT_WARN_FRACTION: f64 = 0.8;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {source}")]
    Parse {
        path: String,
        source: serde_yaml::Error,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Top level of the config file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// Values for users without a provisioned quota or an admin override.
    pub defaults: Defaults,
    /// What "lockout" means under the default (immediate) policy:
    /// `cleanup` (default) stops the running server once and lets the user
    /// spawn again with writes refused (EDQUOT) but deletes allowed;
    /// `block` is efs-quota's behaviour: spawns are refused until usage drops.
    pub lockout_mode: LockoutMode,
    /// When walks and reaper cycles run.
    pub schedule: Schedule,
    /// JupyterHub API client settings.
    pub hub: HubSettings,
    /// Per-user record locks (shared by controller replicas).
    pub locks: Locks,
    /// The graded overquota policy.
    pub policy: PolicyConfig,
    /// Who users are told to contact; appears in messages.
    pub admin_contact: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            defaults: Defaults::default(),
            lockout_mode: LockoutMode::Cleanup,
            schedule: Schedule::default(),
            hub: HubSettings::default(),
            locks: Locks::default(),
            policy: PolicyConfig::default(),
            admin_contact: "your JupyterHub administrators".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Defaults {
    /// Quota for a user with neither an admin override nor a provisioned
    /// capacity (default 200 GiB, efs-quota's `DEFAULT_QUOTA_G`).
    pub quota_bytes: i64,
    /// Inode limit; 0 = none (default).
    pub quota_inodes: i64,
    /// Fraction of the quota at which the user is warned (default 0.8).
    pub warn_fraction: f64,
    /// Monitor and enforce at all (default true).
    pub quota_enabled: bool,
    /// Whether being over quota leads to lockout (true) or only to a
    /// `violation` warning (false). Default true, as in efs-quota.
    pub lockout_enabled: bool,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            quota_bytes: DEFAULT_QUOTA_BYTES,
            quota_inodes: 0,
            warn_fraction: DEFAULT_WARN_FRACTION,
            quota_enabled: true,
            lockout_enabled: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LockoutMode {
    Cleanup,
    Block,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Schedule {
    /// Re-measure users who were active since their last measurement this
    /// often (default 4 h, efs-quota's `MONITOR_PERIOD_SECS`).
    pub active_every_seconds: u64,
    /// Re-measure every record older than this, active or not (default 7
    /// days, efs-quota's `STALE_QUOTA_SECS`; efs-quota compared it against a
    /// seconds-of-day field so it never fired — here it is a real age).
    pub stale_after_seconds: u64,
    /// Abort a walk after this long and mark the record `timed-out`
    /// (default 1 h, efs-quota's `DU_TIMEOUT_SECS`).
    pub walk_timeout_seconds: u64,
    /// How often the reaper lists hub users, records activity and enforces
    /// (default 300 s, efs-quota's `REAPER_PERIOD_SECS`).
    pub reaper_every_seconds: u64,
    /// How often the controller looks for records due a walk (default 60 s).
    pub scan_every_seconds: u64,
    /// Walks run at the same time by one replica (default 2).
    pub walk_concurrency: usize,
    /// Wait after a failed cycle, e.g. hub down (default 60 s, efs-quota's
    /// `TOP_LEVEL_FAIL_WAIT`).
    pub fail_wait_seconds: u64,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            active_every_seconds: 4 * 3600,
            stale_after_seconds: 7 * 24 * 3600,
            walk_timeout_seconds: 3600,
            reaper_every_seconds: 300,
            scan_every_seconds: 60,
            walk_concurrency: 2,
            fail_wait_seconds: 60,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct HubSettings {
    /// Timeout of one hub API request (default 10 s, efs-quota's `API_TIMEOUT`).
    pub timeout_seconds: u64,
    /// Retries of a request that failed with a 5xx, 429 or a connection
    /// error, with exponential backoff (default 3).
    pub retries: u32,
    /// First backoff delay; doubles on every retry (default 500 ms).
    pub backoff_millis: u64,
    /// Users per page asked of `GET /hub/api/users` (default 200, the hub's
    /// default `api_page_max_limit`; the hub may return fewer, pagination
    /// follows `next` whatever it returns).
    pub page_size: u32,
}

impl Default for HubSettings {
    fn default() -> Self {
        Self {
            timeout_seconds: 10,
            retries: 3,
            backoff_millis: 500,
            page_size: 200,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Locks {
    /// A record lock not renewed for this long belongs to a dead replica and
    /// may be broken (default 60 s). Walk claims are renewed every third of it.
    pub lease_seconds: u64,
    /// How long to wait for a busy record lock before giving up (default 30 s).
    pub wait_seconds: u64,
}

impl Default for Locks {
    fn default() -> Self {
        Self {
            lease_seconds: 60,
            wait_seconds: 30,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    /// efs-quota's behaviour: `lockout` is enforced at once (see `lockoutMode`).
    Immediate,
    /// Astakos-style escalation by days over quota; enforcement only by the
    /// `enforce` action of the level reached.
    Graded,
}

/// One level of the graded policy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct LevelRule {
    /// Days after the user first went over quota when this level applies.
    pub days: u32,
    /// `inform_user`, `inform_admin`, `enforce` (soft levels: cleanup mode;
    /// hard levels: server stopped and spawns refused).
    pub actions: Vec<Action>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyConfig {
    /// `immediate` (default) or `graded`.
    pub mode: PolicyMode,
    /// Let the controller perform due graded transitions itself (true), or
    /// leave them to `hubfs overquota --run` from cron (false, default). The
    /// controller always moves a user OK → OVERQUOTA when due and back to OK
    /// when under quota again.
    pub auto_run: bool,
    /// Default: day 0, inform_user.
    pub overquota: LevelRule,
    /// Default: day 3, inform_user.
    pub soft_user: LevelRule,
    /// Default: day 7, inform_admin + enforce (cleanup mode).
    pub soft_admin: LevelRule,
    /// Default: day 10, inform_user.
    pub hard_user: LevelRule,
    /// Default: day 14, inform_admin + enforce (server stopped, spawn blocked).
    pub hard_admin: LevelRule,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        let rule = |days, actions: &[Action]| LevelRule {
            days,
            actions: actions.to_vec(),
        };
        Self {
            mode: PolicyMode::Immediate,
            auto_run: false,
            overquota: rule(0, &[Action::InformUser]),
            soft_user: rule(3, &[Action::InformUser]),
            soft_admin: rule(7, &[Action::InformAdmin, Action::Enforce]),
            hard_user: rule(10, &[Action::InformUser]),
            hard_admin: rule(14, &[Action::InformAdmin, Action::Enforce]),
        }
    }
}

impl PolicyConfig {
    /// The rule of a level; `OK` has none.
    pub fn rule(&self, level: PolicyLevel) -> Option<&LevelRule> {
        match level {
            PolicyLevel::Ok => None,
            PolicyLevel::Overquota => Some(&self.overquota),
            PolicyLevel::SoftUser => Some(&self.soft_user),
            PolicyLevel::SoftAdmin => Some(&self.soft_admin),
            PolicyLevel::HardUser => Some(&self.hard_user),
            PolicyLevel::HardAdmin => Some(&self.hard_admin),
        }
    }
}

impl Config {
    /// Reads a config file; a missing `path` gives the defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                source,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            serde_yaml::from_str(text).map_err(|source| ConfigError::Parse {
                path: "<text>".into(),
                source,
            })?
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let d = &self.defaults;
        if d.quota_bytes <= 0 {
            return Err(ConfigError::Invalid(
                "defaults.quotaBytes must be > 0".into(),
            ));
        }
        if !(0.0..=1.0).contains(&d.warn_fraction) {
            return Err(ConfigError::Invalid(
                "defaults.warnFraction must be between 0 and 1".into(),
            ));
        }
        if d.quota_inodes < 0 {
            return Err(ConfigError::Invalid(
                "defaults.quotaInodes must be >= 0".into(),
            ));
        }
        if self.schedule.walk_concurrency == 0 {
            return Err(ConfigError::Invalid(
                "schedule.walkConcurrency must be >= 1".into(),
            ));
        }
        if self.hub.page_size == 0 {
            return Err(ConfigError::Invalid("hub.pageSize must be >= 1".into()));
        }
        if self.locks.lease_seconds == 0 {
            return Err(ConfigError::Invalid(
                "locks.leaseSeconds must be >= 1".into(),
            ));
        }
        let mut prev = 0;
        for level in PolicyLevel::ESCALATION {
            let days = self.policy.rule(level).map(|r| r.days).unwrap_or(0);
            if days < prev {
                return Err(ConfigError::Invalid(format!(
                    "policy: {level} days ({days}) must not be less than the previous level's ({prev})"
                )));
            }
            prev = days;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_efs_quota_constants() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.defaults.quota_bytes, 214_748_364_800);
        assert_eq!(c.defaults.warn_fraction, 0.8);
        assert_eq!(c.schedule.walk_timeout_seconds, 3600);
        assert_eq!(c.schedule.stale_after_seconds, 7 * 86400);
        assert_eq!(c.schedule.active_every_seconds, 4 * 3600);
        assert_eq!(c.lockout_mode, LockoutMode::Cleanup);
        assert_eq!(c.policy.mode, PolicyMode::Immediate);
    }

    #[test]
    fn partial_config_keeps_other_defaults() {
        let c = Config::parse(
            "lockoutMode: block\npolicy:\n  mode: graded\n  softAdmin:\n    days: 5\n    actions: [enforce]\n",
        )
        .unwrap();
        assert_eq!(c.lockout_mode, LockoutMode::Block);
        assert_eq!(c.policy.mode, PolicyMode::Graded);
        assert_eq!(c.policy.soft_admin.days, 5);
        assert_eq!(c.policy.soft_admin.actions, vec![Action::Enforce]);
        assert_eq!(c.policy.hard_admin.days, 14);
        assert_eq!(c.defaults.quota_bytes, DEFAULT_QUOTA_BYTES);
    }

    #[test]
    fn bad_configs_are_refused_clearly() {
        for (text, needle) in [
            ("defaults:\n  warnFraction: 1.5\n", "warnFraction"),
            ("lockoutMode: maybe\n", "lockoutMode"),
            ("nonsense: 1\n", "nonsense"),
            ("policy:\n  softUser:\n    days: 20\n", "days"),
            ("policy:\n  overquota:\n    actions: [explode]\n", "explode"),
        ] {
            let e = Config::parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?} gave {e}");
        }
    }
}
