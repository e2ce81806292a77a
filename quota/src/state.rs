//! efs-quota's state machine (see [`crate::record`]): `ok → nearing-limit → violation | lockout`, and
//! `timed-out`, decided from the latest figure and the effective limits; plus
//! the plain-words account of a state that users read in `check-quota` and the
//! spawn hook.

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::policy::{self, PolicyLevel};
use crate::record::{human_bytes, Enforcement, QuotaRecord, QuotaState};

/// The state a record is in, from its figure and limits alone.
pub fn evaluate(rec: &QuotaRecord) -> QuotaState {
    if rec.error.is_some() {
        return QuotaState::Error;
    }
    if !rec.quota_enabled {
        return QuotaState::Ok;
    }
    if rec.timed_out {
        return QuotaState::TimedOut;
    }
    if !rec.is_measured() {
        return QuotaState::Ok;
    }
    let over_bytes = rec.quota_bytes > 0 && rec.actual_bytes > rec.quota_bytes;
    let over_inodes = rec.quota_inodes > 0 && rec.actual_inodes > rec.quota_inodes;
    if over_bytes || over_inodes {
        return if rec.lockout_enabled {
            QuotaState::Lockout
        } else {
            QuotaState::Violation
        };
    }
    let near_bytes = rec.quota_bytes > 0
        && rec.actual_bytes as f64 >= rec.warn_fraction * rec.quota_bytes as f64;
    let near_inodes = rec.quota_inodes > 0
        && rec.actual_inodes as f64 >= rec.warn_fraction * rec.quota_inodes as f64;
    if near_bytes || near_inodes {
        QuotaState::NearingLimit
    } else {
        QuotaState::Ok
    }
}

/// What changed when a record was re-evaluated.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: QuotaState,
    pub to: QuotaState,
    pub enforcement_from: Enforcement,
    pub enforcement_to: Enforcement,
}

/// Re-evaluates the state, the policy clock and the enforcement; returns the
/// transition if anything a user would notice changed.
pub fn reevaluate(rec: &mut QuotaRecord, cfg: &Config, now: DateTime<Utc>) -> Option<Transition> {
    let from = rec.quota_state;
    let enforcement_from = rec.enforcement;
    let to = evaluate(rec);
    if to != from {
        rec.quota_state = to;
        rec.state_since = crate::record::RecordTime::at(now);
    }
    policy::track_clock(rec, now);
    rec.enforcement = policy::enforcement(rec, cfg);
    (to != from || rec.enforcement != enforcement_from).then_some(Transition {
        from,
        to,
        enforcement_from,
        enforcement_to: rec.enforcement,
    })
}

/// "41.2 GiB of 200 GiB (21%)".
pub fn usage_line(rec: &QuotaRecord) -> String {
    if !rec.is_measured() {
        return format!("not measured yet (quota {})", human_bytes(rec.quota_bytes));
    }
    let pct = if rec.quota_bytes > 0 {
        (rec.actual_bytes as f64 * 100.0 / rec.quota_bytes as f64).round() as i64
    } else {
        0
    };
    format!(
        "{} of {} ({pct}%)",
        human_bytes(rec.actual_bytes),
        human_bytes(rec.quota_bytes)
    )
}

/// The state in plain words, what happens next and what to do.
pub fn message(rec: &QuotaRecord, cfg: &Config, now: DateTime<Utc>) -> String {
    let quota = human_bytes(rec.quota_bytes);
    let contact = &cfg.admin_contact;
    let free = "Delete files you no longer need (e.g. caches, checkpoints, old outputs; `du -sh ~/* | sort -h` shows what is big).";
    if rec.overrides.exempt && rec.quota_state != QuotaState::Error {
        return format!(
            "Your home uses {}; you are exempt from quota enforcement.",
            usage_line(rec)
        );
    }
    match rec.quota_state {
        QuotaState::Error => format!(
            "Your quota record could not be read and was set aside for an administrator; nothing is enforced meanwhile. Contact {contact} if this persists."
        ),
        QuotaState::Ok if !rec.quota_enabled => {
            "Quota monitoring is disabled for your home.".to_string()
        }
        QuotaState::Ok => format!("Your home uses {}. All is well.", usage_line(rec)),
        QuotaState::NearingLimit => format!(
            "Your home uses {}, above the warning level of {:.0}%. Writes will be refused above {quota}. {free}",
            usage_line(rec),
            rec.warn_fraction * 100.0
        ),
        QuotaState::TimedOut => format!(
            "The last measurement of your home took too long and was stopped; it saw at least {}. Nothing is enforced on a partial figure. If your home holds very many files, consider cleaning up.",
            usage_line(rec)
        ),
        QuotaState::Violation => format!(
            "Your home uses {}, over your quota of {quota}. Lockout is disabled for you, but please bring usage below {quota}. {free}{}",
            usage_line(rec),
            next_words(rec, cfg, now)
        ),
        QuotaState::Lockout => match rec.enforcement {
            Enforcement::Blocked => format!(
                "Your home uses {}, over your quota of {quota}; your server was stopped and cannot be started until usage drops below {quota}. Contact {contact} to free space or raise your quota.",
                usage_line(rec)
            ),
            Enforcement::Cleanup => format!(
                "Your home uses {}, over your quota of {quota}. Your home is in cleanup mode: writes are refused but you can delete files; writes are allowed again as soon as usage drops below {quota}. {free}{}",
                usage_line(rec),
                next_words(rec, cfg, now)
            ),
            Enforcement::None => format!(
                "Your home uses {}, over your quota of {quota}. {free}{}",
                usage_line(rec),
                next_words(rec, cfg, now)
            ),
        },
    }
}

/// The next time the graded policy makes things stricter for a user over
/// quota: what it will do and when (what the JupyterLab extension and
/// `check-quota` tell users: days of grace left, when the server stops).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NextEnforcement {
    /// `cleanup` (writes blocked) or `blocked` (server stopped, spawns refused).
    pub enforcement: Enforcement,
    /// The policy level that brings it.
    pub level: String,
    pub at: DateTime<Utc>,
    /// Whole days left, rounded up (0: today).
    pub days_left: i64,
}

/// See [`NextEnforcement`]; `None` under the immediate policy, with lockout
/// disabled, or when nothing stricter is ahead.
pub fn next_enforcement(
    rec: &QuotaRecord,
    cfg: &Config,
    now: DateTime<Utc>,
) -> Option<NextEnforcement> {
    if cfg.policy.mode != crate::config::PolicyMode::Graded || !rec.lockout_enabled {
        return None;
    }
    let p = policy::plan(rec, &cfg.policy, now);
    let current = policy::enforcement(rec, cfg);
    // The first upcoming level whose `enforce` makes things stricter.
    let mut since = rec.overquota_since.get().unwrap_or(now);
    if since > now {
        since = now;
    }
    for level in PolicyLevel::ESCALATION {
        if level <= p.current.level {
            continue;
        }
        let Some(rule) = cfg.policy.rule(level) else {
            continue;
        };
        if !rule.actions.contains(&policy::Action::Enforce) || level.enforce_strength() <= current {
            continue;
        }
        let at = since + chrono::Duration::days(i64::from(rule.days));
        return Some(NextEnforcement {
            enforcement: level.enforce_strength(),
            level: level.to_string(),
            at,
            days_left: ((at - now).num_hours() as f64 / 24.0).ceil().max(0.0) as i64,
        });
    }
    None
}

/// " Writes blocked in 3 days unless usage drops below 200 GiB."
fn next_words(rec: &QuotaRecord, cfg: &Config, now: DateTime<Utc>) -> String {
    let Some(next) = next_enforcement(rec, cfg, now) else {
        return String::new();
    };
    let what = match next.enforcement {
        Enforcement::Blocked => "Your server will be stopped and blocked",
        _ => "Writes will be blocked",
    };
    let when = match next.days_left {
        0 => "today".to_string(),
        1 => "in 1 day".to_string(),
        d => format!("in {d} days"),
    };
    format!(
        " {what} {when} unless usage drops below {}.",
        human_bytes(rec.quota_bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Defaults, LockoutMode, PolicyMode};
    use crate::policy::{apply_step, plan};
    use crate::record::RecordTime;

    const GIB: i64 = 1 << 30;

    fn rec(used: i64) -> QuotaRecord {
        let mut r = QuotaRecord::new("ada", &Defaults::default());
        r.actual_bytes = used;
        r.actual_inodes = 10;
        r
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-22T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn every_efs_quota_state_is_reachable() {
        assert_eq!(evaluate(&rec(-1)), QuotaState::Ok);
        assert_eq!(evaluate(&rec(10 * GIB)), QuotaState::Ok);
        assert_eq!(evaluate(&rec(160 * GIB)), QuotaState::NearingLimit);
        assert_eq!(evaluate(&rec(200 * GIB)), QuotaState::NearingLimit);
        assert_eq!(evaluate(&rec(200 * GIB + 1)), QuotaState::Lockout);
        let mut v = rec(201 * GIB);
        v.lockout_enabled = false;
        assert_eq!(evaluate(&v), QuotaState::Violation);
        let mut t = rec(500 * GIB);
        t.timed_out = true;
        assert_eq!(evaluate(&t), QuotaState::TimedOut);
        let mut d = rec(500 * GIB);
        d.quota_enabled = false;
        assert_eq!(evaluate(&d), QuotaState::Ok);
        let mut e = rec(1);
        e.error = Some("bad".into());
        assert_eq!(evaluate(&e), QuotaState::Error);
        let mut i = rec(1);
        i.quota_inodes = 5;
        assert_eq!(evaluate(&i), QuotaState::Lockout);
        i.quota_inodes = 12;
        assert_eq!(evaluate(&i), QuotaState::NearingLimit);
    }

    #[test]
    fn transitions_there_and_back() {
        let cfg = Config::default();
        let mut r = rec(10 * GIB);
        assert_eq!(reevaluate(&mut r, &cfg, now()), None);
        r.actual_bytes = 170 * GIB;
        let t = reevaluate(&mut r, &cfg, now()).unwrap();
        assert_eq!((t.from, t.to), (QuotaState::Ok, QuotaState::NearingLimit));
        r.actual_bytes = 250 * GIB;
        let t = reevaluate(&mut r, &cfg, now()).unwrap();
        assert_eq!(t.to, QuotaState::Lockout);
        assert_eq!(t.enforcement_to, Enforcement::Cleanup);
        assert_eq!(r.overquota_since, RecordTime::at(now()));
        r.actual_bytes = 100 * GIB;
        let t = reevaluate(&mut r, &cfg, now()).unwrap();
        assert_eq!(t.to, QuotaState::Ok);
        assert_eq!(t.enforcement_to, Enforcement::None);
        assert!(r.overquota_since.is_null());
    }

    #[test]
    fn timed_out_is_never_enforced_even_far_over() {
        let cfg = Config {
            lockout_mode: LockoutMode::Block,
            ..Config::default()
        };
        let mut r = rec(900 * GIB);
        r.timed_out = true;
        reevaluate(&mut r, &cfg, now());
        assert_eq!(r.quota_state, QuotaState::TimedOut);
        assert_eq!(r.enforcement, Enforcement::None);
        assert!(message(&r, &cfg, now()).contains("partial"));
    }

    #[test]
    fn messages_say_what_and_what_next() {
        let mut cfg = Config::default();
        let mut r = rec((41.2 * GIB as f64) as i64);
        reevaluate(&mut r, &cfg, now());
        assert!(message(&r, &cfg, now()).contains("41.2 GiB of 200 GiB (21%)"));
        r.actual_bytes = 210 * GIB;
        reevaluate(&mut r, &cfg, now());
        assert!(message(&r, &cfg, now()).contains("cleanup mode"));
        cfg.policy.mode = PolicyMode::Graded;
        reevaluate(&mut r, &cfg, now());
        let m = message(&r, &cfg, now());
        assert!(
            m.contains("Writes will be blocked in 7 days unless usage drops below 200 GiB"),
            "{m}"
        );
        let later = now() + chrono::Duration::days(15);
        let step = plan(&r, &cfg.policy, later).due.unwrap();
        apply_step(&mut r, &step, later);
        reevaluate(&mut r, &cfg, later);
        assert_eq!(r.enforcement, Enforcement::Blocked);
        assert!(message(&r, &cfg, later).contains("cannot be started"));
    }
}
