//! The graded overquota policy, after Astakos: a user over quota climbs
//! OVERQUOTA → SOFT_USER → SOFT_ADMIN → HARD_USER → HARD_ADMIN as the days
//! since they first went over pass each level's threshold, and each level has
//! actions (`inform_user`, `inform_admin`, `enforce`). Pure functions of a
//! record, the config and "now", so the same code serves the controller and
//! the dry-run `hubfs overquota` command.

use chrono::{DateTime, Duration, Utc};

use crate::config::{Config, LockoutMode, PolicyConfig, PolicyMode};
pub use crate::levels::{Action, PolicyLevel, PolicyStatus};
use crate::record::{Enforcement, QuotaRecord, QuotaState, RecordTime};

/// A transition the policy wants to make now.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub from: PolicyStatus,
    pub to: PolicyLevel,
    pub actions: Vec<Action>,
}

/// What the dry run prints for one user.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub current: PolicyStatus,
    /// Due now.
    pub due: Option<Step>,
    /// The next transition after the due one (or after the current level).
    pub next: Option<(PolicyLevel, DateTime<Utc>)>,
}

/// Is this record over quota in a way the policy counts? A timed-out walk,
/// an untrusted record, an exempt or quota-disabled user never is.
pub fn counts_as_over(rec: &QuotaRecord) -> bool {
    matches!(rec.quota_state, QuotaState::Violation | QuotaState::Lockout)
        && !rec.overrides.exempt
        && rec.quota_enabled
        && rec.error.is_none()
}

/// Starts or clears the policy clock (days since first over quota).
pub fn track_clock(rec: &mut QuotaRecord, now: DateTime<Utc>) {
    if counts_as_over(rec) {
        if rec.overquota_since.is_null() {
            rec.overquota_since = RecordTime::at(now);
        }
    } else if !matches!(rec.quota_state, QuotaState::TimedOut | QuotaState::Error) {
        // Timed-out and error keep the clock as it was: a partial figure or an
        // unreadable record neither punishes nor forgives.
        rec.overquota_since = RecordTime::NULL;
    }
}

fn due_at(cfg: &PolicyConfig, since: DateTime<Utc>, level: PolicyLevel) -> DateTime<Utc> {
    let days = cfg.rule(level).map(|r| r.days).unwrap_or(0);
    since + Duration::days(i64::from(days))
}

/// The due transition and the next scheduled one.
pub fn plan(rec: &QuotaRecord, cfg: &PolicyConfig, now: DateTime<Utc>) -> Plan {
    let current = rec.overquota_state;
    let frozen = matches!(rec.quota_state, QuotaState::TimedOut | QuotaState::Error);
    if !counts_as_over(rec) {
        let due = (current.level != PolicyLevel::Ok && !frozen).then(|| Step {
            from: current,
            to: PolicyLevel::Ok,
            actions: vec![],
        });
        return Plan {
            current,
            due,
            next: None,
        };
    }
    let since = rec.overquota_since.get().unwrap_or(now);
    let mut target = None;
    let mut next = None;
    for level in PolicyLevel::ESCALATION {
        if level <= current.level {
            continue;
        }
        let at = due_at(cfg, since, level);
        if at <= now {
            target = Some(level);
        } else {
            next = Some((level, at));
            break;
        }
    }
    let due = target.map(|to| Step {
        from: current,
        to,
        actions: cfg.rule(to).map(|r| r.actions.clone()).unwrap_or_default(),
    });
    Plan { current, due, next }
}

/// Records a transition on the record.
pub fn apply_step(rec: &mut QuotaRecord, step: &Step, now: DateTime<Utc>) {
    rec.overquota_state = PolicyStatus {
        level: step.to,
        applied: u32::from(step.to != PolicyLevel::Ok),
    };
    rec.overquota_state_since = RecordTime::at(now);
    if step.to == PolicyLevel::Ok {
        rec.overquota_since = RecordTime::NULL;
    }
}

/// `--repeat`: the current level's actions again, counted (`SOFT_USER:2`).
pub fn repeat(rec: &mut QuotaRecord, cfg: &PolicyConfig) -> Option<Step> {
    let cur = rec.overquota_state;
    if cur.level == PolicyLevel::Ok || !counts_as_over(rec) {
        return None;
    }
    rec.overquota_state.applied += 1;
    Some(Step {
        from: cur,
        to: cur.level,
        actions: cfg
            .rule(cur.level)
            .map(|r| r.actions.clone())
            .unwrap_or_default(),
    })
}

/// What the controller imposes on the user given their record.
pub fn enforcement(rec: &QuotaRecord, cfg: &Config) -> Enforcement {
    if rec.quota_state != QuotaState::Lockout
        || rec.overrides.exempt
        || !rec.quota_enabled
        || !rec.lockout_enabled
        || rec.error.is_some()
    {
        return Enforcement::None;
    }
    match cfg.policy.mode {
        PolicyMode::Immediate => match cfg.lockout_mode {
            LockoutMode::Cleanup => Enforcement::Cleanup,
            LockoutMode::Block => Enforcement::Blocked,
        },
        PolicyMode::Graded => PolicyLevel::ESCALATION
            .into_iter()
            .filter(|l| *l <= rec.overquota_state.level)
            .filter(|l| {
                cfg.policy
                    .rule(*l)
                    .is_some_and(|r| r.actions.contains(&Action::Enforce))
            })
            .map(|l| l.enforce_strength())
            .max()
            .unwrap_or(Enforcement::None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Defaults;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn over(state: QuotaState) -> QuotaRecord {
        let mut r = QuotaRecord::new("ada", &Defaults::default());
        r.quota_state = state;
        r
    }

    #[test]
    fn status_round_trips() {
        for s in ["OK", "OVERQUOTA:1", "SOFT_USER:1", "HARD_ADMIN:3"] {
            assert_eq!(s.parse::<PolicyStatus>().unwrap().to_string(), s);
        }
        assert!("SOFT_USER:x".parse::<PolicyStatus>().is_err());
        assert!("ANGRY".parse::<PolicyStatus>().is_err());
        assert_eq!(
            "soft-user".parse::<PolicyLevel>().unwrap(),
            PolicyLevel::SoftUser
        );
    }

    #[test]
    fn escalates_by_days_one_level_per_threshold() {
        let cfg = PolicyConfig::default();
        let mut r = over(QuotaState::Lockout);
        let mut now = t0();
        track_clock(&mut r, now);
        let expect = [
            (0, Some(PolicyLevel::Overquota), Some(PolicyLevel::SoftUser)),
            (1, None, Some(PolicyLevel::SoftUser)),
            (3, Some(PolicyLevel::SoftUser), Some(PolicyLevel::SoftAdmin)),
            (7, Some(PolicyLevel::SoftAdmin), Some(PolicyLevel::HardUser)),
            (
                10,
                Some(PolicyLevel::HardUser),
                Some(PolicyLevel::HardAdmin),
            ),
            (14, Some(PolicyLevel::HardAdmin), None),
            (30, None, None),
        ];
        for (day, due, next) in expect {
            now = t0() + Duration::days(day);
            let p = plan(&r, &cfg, now);
            assert_eq!(p.due.as_ref().map(|s| s.to), due, "day {day}");
            if let Some(step) = &p.due {
                apply_step(&mut r, step, now);
                assert_eq!(r.overquota_state.applied, 1);
            }
            let p = plan(&r, &cfg, now);
            assert_eq!(p.next.map(|n| n.0), next, "day {day}");
            if let Some((l, at)) = p.next {
                assert_eq!(at, t0() + Duration::days(cfg.rule(l).unwrap().days.into()));
            }
        }
        assert_eq!(r.overquota_state.to_string(), "HARD_ADMIN:1");
    }

    #[test]
    fn a_late_run_jumps_to_the_level_due() {
        let cfg = PolicyConfig::default();
        let mut r = over(QuotaState::Lockout);
        track_clock(&mut r, t0());
        let p = plan(&r, &cfg, t0() + Duration::days(8));
        let step = p.due.unwrap();
        assert_eq!(step.to, PolicyLevel::SoftAdmin);
        assert_eq!(step.actions, vec![Action::InformAdmin, Action::Enforce]);
    }

    #[test]
    fn back_under_quota_returns_to_ok_and_clears_the_clock() {
        let cfg = PolicyConfig::default();
        let mut r = over(QuotaState::Lockout);
        track_clock(&mut r, t0());
        let now = t0() + Duration::days(5);
        let step = plan(&r, &cfg, now).due.unwrap();
        apply_step(&mut r, &step, now);
        assert_eq!(r.overquota_state.level, PolicyLevel::SoftUser);
        r.quota_state = QuotaState::NearingLimit;
        track_clock(&mut r, now);
        assert!(r.overquota_since.is_null());
        let step = plan(&r, &cfg, now).due.unwrap();
        assert_eq!(step.to, PolicyLevel::Ok);
        apply_step(&mut r, &step, now);
        assert_eq!(r.overquota_state.to_string(), "OK");
        // Over again later: the clock starts afresh.
        r.quota_state = QuotaState::Lockout;
        let later = now + Duration::days(20);
        track_clock(&mut r, later);
        assert_eq!(r.overquota_since.get(), Some(later));
        assert_eq!(
            plan(&r, &cfg, later).due.unwrap().to,
            PolicyLevel::Overquota
        );
    }

    #[test]
    fn timed_out_and_error_freeze_the_policy() {
        let cfg = PolicyConfig::default();
        for frozen in [QuotaState::TimedOut, QuotaState::Error] {
            let mut r = over(QuotaState::Lockout);
            track_clock(&mut r, t0());
            let step = plan(&r, &cfg, t0()).due.unwrap();
            apply_step(&mut r, &step, t0());
            r.quota_state = frozen;
            track_clock(&mut r, t0() + Duration::days(20));
            assert_eq!(r.overquota_since.get(), Some(t0()));
            let p = plan(&r, &cfg, t0() + Duration::days(20));
            assert_eq!(p.due, None, "{frozen}");
            assert_eq!(p.next, None);
        }
    }

    #[test]
    fn exempt_users_are_never_escalated_or_enforced() {
        let cfg = Config::default();
        let mut r = over(QuotaState::Lockout);
        r.overrides.exempt = true;
        track_clock(&mut r, t0());
        assert!(r.overquota_since.is_null());
        assert_eq!(plan(&r, &cfg.policy, t0() + Duration::days(99)).due, None);
        assert_eq!(enforcement(&r, &cfg), Enforcement::None);
    }

    #[test]
    fn repeat_counts_applications() {
        let cfg = PolicyConfig::default();
        let mut r = over(QuotaState::Lockout);
        assert_eq!(repeat(&mut r, &cfg), None);
        track_clock(&mut r, t0());
        let now = t0() + Duration::days(3);
        let step = plan(&r, &cfg, now).due.unwrap();
        apply_step(&mut r, &step, now);
        let s = repeat(&mut r, &cfg).unwrap();
        assert_eq!(s.actions, vec![Action::InformUser]);
        assert_eq!(r.overquota_state.to_string(), "SOFT_USER:2");
    }

    #[test]
    fn enforcement_by_mode_and_level() {
        let mut cfg = Config::default();
        let mut r = over(QuotaState::Lockout);
        assert_eq!(enforcement(&r, &cfg), Enforcement::Cleanup);
        cfg.lockout_mode = LockoutMode::Block;
        assert_eq!(enforcement(&r, &cfg), Enforcement::Blocked);
        // violation (lockout disabled) and timed-out are never enforced
        for s in [
            QuotaState::Violation,
            QuotaState::TimedOut,
            QuotaState::Error,
        ] {
            assert_eq!(enforcement(&over(s), &cfg), Enforcement::None, "{s}");
        }
        cfg.policy.mode = PolicyMode::Graded;
        let expect = [
            (PolicyLevel::Ok, Enforcement::None),
            (PolicyLevel::Overquota, Enforcement::None),
            (PolicyLevel::SoftUser, Enforcement::None),
            (PolicyLevel::SoftAdmin, Enforcement::Cleanup),
            (PolicyLevel::HardUser, Enforcement::Cleanup),
            (PolicyLevel::HardAdmin, Enforcement::Blocked),
        ];
        for (level, e) in expect {
            r.overquota_state = PolicyStatus { level, applied: 1 };
            assert_eq!(enforcement(&r, &cfg), e, "{level}");
        }
        // An admin who drops `enforce` from SOFT_ADMIN gets no cleanup mode.
        cfg.policy.soft_admin.actions = vec![Action::InformAdmin];
        r.overquota_state.level = PolicyLevel::HardUser;
        assert_eq!(enforcement(&r, &cfg), Enforcement::None);
        r.lockout_enabled = false;
        r.overquota_state.level = PolicyLevel::HardAdmin;
        assert_eq!(enforcement(&r, &cfg), Enforcement::None);
    }
}
