//! The controller against fakes (clock, hub, notifier) and a temporary
//! control directory: reports decide transitions at once, enforcement goes
//! through the hub, the graded policy escalates by days, overrides and
//! exemptions survive re-measurement, a hub that is down causes no action.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hubfs_quota::clock::{Clock, FakeClock};
use hubfs_quota::config::{Config, LockoutMode, PolicyMode};
use hubfs_quota::controller::{Controller, OverquotaOptions, Report};
use hubfs_quota::hub::{FakeHub, HubUser};
use hubfs_quota::notify::RecordingNotifier;
use hubfs_quota::policy::PolicyLevel;
use hubfs_quota::record::{Enforcement, QuotaState, Source};
use hubfs_quota::store::Store;
use hubfs_quota::UserKey;

const GIB: i64 = 1 << 30;

struct Env {
    _dir: tempfile::TempDir,
    users_dir: std::path::PathBuf,
    clock: FakeClock,
    hub: Arc<FakeHub>,
    notes: Arc<RecordingNotifier>,
    ctrl: Arc<Controller>,
}

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-01T08:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn env(cfg: Config, hub_users: Vec<HubUser>) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let users_dir = dir.path().join("users");
    std::fs::create_dir_all(&users_dir).unwrap();
    let clock = FakeClock::new(t0());
    let store = Store::open(
        &dir.path().join("control"),
        "test",
        Duration::from_secs(60),
        Duration::from_secs(10),
        Arc::new(clock.clone()),
    )
    .unwrap();
    let hub = Arc::new(FakeHub::with_users(hub_users));
    let notes = Arc::new(RecordingNotifier::default());
    let ctrl = Arc::new(Controller::new(
        cfg,
        store,
        Some(users_dir.clone()),
        Arc::new(clock.clone()),
        Some(hub.clone()),
        notes.clone(),
    ));
    Env {
        _dir: dir,
        users_dir,
        clock,
        hub,
        notes,
        ctrl,
    }
}

fn walk(user: &str, bytes: i64, at: DateTime<Utc>) -> Report {
    Report {
        user: user.into(),
        absolute: true,
        source: Source::Walk,
        bytes,
        inodes: 10,
        measured_at: at,
        timed_out: false,
        walk_seconds: 1.0,
        sequence: 0,
    }
}

fn delta(user: &str, bytes: i64, at: DateTime<Utc>, seq: u64) -> Report {
    Report {
        absolute: false,
        source: Source::Write,
        sequence: seq,
        ..walk(user, bytes, at)
    }
}

fn running(name: &str) -> HubUser {
    HubUser {
        name: name.into(),
        last_activity: Some(t0()),
        running: vec![String::new()],
    }
}

/// Waits for the server stops a report started, then checks how many the
/// fake hub saw in all.
async fn assert_stops_after_reports(e: &Env, n: usize) {
    e.ctrl.join_spawned().await;
    let stops = e.hub.stops.lock().clone();
    assert_eq!(stops.len(), n, "{stops:?}");
}

#[tokio::test]
async fn a_delta_over_quota_locks_out_at_once_and_stops_the_server_once() {
    let e = env(Config::default(), vec![running("ada")]);
    let (_, _, recs) = e
        .ctrl
        .report("node-1".into(), vec![walk("ada", 150 * GIB, t0())])
        .await
        .unwrap();
    assert_eq!(recs[0].quota_state, QuotaState::Ok);
    e.clock.advance(chrono::Duration::minutes(1));
    let (_, _, recs) = e
        .ctrl
        .report(
            "node-1".into(),
            vec![delta("ada", 60 * GIB, e.clock.now(), 1)],
        )
        .await
        .unwrap();
    assert_eq!(recs[0].quota_state, QuotaState::Lockout);
    assert_eq!(recs[0].enforcement, Enforcement::Cleanup);
    assert_eq!(recs[0].actual_bytes, 210 * GIB);
    assert_eq!(
        hubfs_quota::grpc::user_quota(&e.ctrl, &recs[0]).enforcement,
        hubfs_proto::quota::Enforcement::Cleanup as i32
    );
    assert_stops_after_reports(&e, 1).await;
    assert_eq!(
        e.hub.stops.lock().clone(),
        vec![("ada".to_string(), String::new())]
    );
    // The user spawns again in cleanup mode: the reaper does not stop them again.
    e.hub.users.lock()[0].running = vec![String::new()];
    let s = e.ctrl.reaper_cycle().await.unwrap();
    assert_eq!(s.servers_stopped, 0);
    assert_eq!(e.hub.stops.lock().len(), 1);
    // Deleting files brings them back: writes allowed again, no restart needed.
    e.clock.advance(chrono::Duration::minutes(1));
    let (_, _, recs) = e
        .ctrl
        .report(
            "node-1".into(),
            vec![delta("ada", -80 * GIB, e.clock.now(), 2)],
        )
        .await
        .unwrap();
    assert_eq!(recs[0].quota_state, QuotaState::Ok);
    assert_eq!(recs[0].enforcement, Enforcement::None);
    assert_eq!(recs[0].overquota_state.level, PolicyLevel::Ok);
}

#[tokio::test]
async fn retried_batches_are_not_counted_twice() {
    let e = env(Config::default(), vec![]);
    e.ctrl
        .report("n".into(), vec![walk("bob", 10 * GIB, t0())])
        .await
        .unwrap();
    let at = t0() + chrono::Duration::seconds(5);
    let batch = vec![delta("bob", GIB, at, 7)];
    let (acc, dup, _) = e.ctrl.report("n".into(), batch.clone()).await.unwrap();
    assert_eq!((acc, dup), (1, 0));
    let (acc, dup, recs) = e.ctrl.report("n".into(), batch).await.unwrap();
    assert_eq!((acc, dup), (0, 1));
    assert_eq!(recs[0].actual_bytes, 11 * GIB);
    // Another node's sequence numbers are its own.
    let (acc, _, recs) = e
        .ctrl
        .report("m".into(), vec![delta("bob", GIB, at, 7)])
        .await
        .unwrap();
    assert_eq!(acc, 1);
    assert_eq!(recs[0].actual_bytes, 12 * GIB);
}

#[tokio::test]
async fn timed_out_walks_are_never_enforced() {
    let cfg = Config {
        lockout_mode: LockoutMode::Block,
        ..Config::default()
    };
    let e = env(cfg, vec![running("cy")]);
    let mut r = walk("cy", 900 * GIB, t0());
    r.timed_out = true;
    let (_, _, recs) = e.ctrl.report("n".into(), vec![r]).await.unwrap();
    assert_eq!(recs[0].quota_state, QuotaState::TimedOut);
    assert_eq!(recs[0].enforcement, Enforcement::None);
    e.ctrl.reaper_cycle().await.unwrap();
    assert_stops_after_reports(&e, 0).await;
    assert!(e.hub.stops.lock().is_empty());
}

#[tokio::test]
async fn hub_down_mid_cycle_takes_no_action() {
    let cfg = Config {
        lockout_mode: LockoutMode::Block,
        ..Config::default()
    };
    let e = env(cfg, vec![]);
    e.ctrl
        .report("n".into(), vec![walk("dan", 300 * GIB, t0())])
        .await
        .unwrap();
    assert_stops_after_reports(&e, 1).await;
    e.hub.stops.lock().clear();
    *e.hub.users.lock() = vec![running("dan")];
    e.hub.set_down(true);
    assert!(e.ctrl.reaper_cycle().await.is_err());
    assert!(e.hub.stops.lock().is_empty());
    e.hub.set_down(false);
    let s = e.ctrl.reaper_cycle().await.unwrap();
    assert_eq!(s.servers_stopped, 1);
    let m = e.ctrl.metrics.encode();
    assert!(
        m.contains("hubfs_quota_hub_api_errors_total{op=\"list_users\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn overrides_and_exemptions_survive_remeasurement() {
    let e = env(Config::default(), vec![]);
    e.ctrl
        .report("n".into(), vec![walk("eve", 10 * GIB, t0())])
        .await
        .unwrap();
    // An admin raises eve's quota and exempts her.
    let path = e.ctrl.store.user_dir("eve").unwrap().join("quota.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!(
            "{text}overrides:\n  quota_bytes: {}\n  exempt: true\n  reason: thesis data\n",
            500 * GIB
        ),
    )
    .unwrap();
    let (_, _, recs) = e
        .ctrl
        .report(
            "n".into(),
            vec![walk("eve", 600 * GIB, t0() + chrono::Duration::hours(1))],
        )
        .await
        .unwrap();
    let r = &recs[0];
    assert_eq!(r.quota_bytes, 500 * GIB);
    assert!(r.overrides.exempt);
    assert_eq!(r.quota_state, QuotaState::Lockout);
    assert_eq!(r.enforcement, Enforcement::None);
    assert_eq!(r.overrides.reason.as_deref(), Some("thesis data"));
    let again = std::fs::read_to_string(&path).unwrap();
    assert!(
        again.contains("exempt: true") && again.contains("quota_bytes: 536870912000"),
        "{again}"
    );
}

#[tokio::test]
async fn provisioned_capacity_is_the_quota_unless_overridden() {
    let e = env(Config::default(), vec![]);
    let key = UserKey::new("fay").unwrap();
    std::fs::create_dir_all(e.users_dir.join(".hubfs")).unwrap();
    std::fs::write(
        e.users_dir
            .join(".hubfs")
            .join(format!("{}.json", key.encoded())),
        r#"{"capacity_bytes":10737418240}"#,
    )
    .unwrap();
    let (_, _, recs) = e
        .ctrl
        .report("n".into(), vec![walk("fay", 11 * GIB, t0())])
        .await
        .unwrap();
    assert_eq!(recs[0].quota_bytes, 10 * GIB);
    assert_eq!(recs[0].quota_state, QuotaState::Lockout);
}

#[tokio::test]
async fn graded_policy_escalates_with_the_overquota_command_and_hard_stops() {
    let mut cfg = Config::default();
    cfg.policy.mode = PolicyMode::Graded;
    let e = env(cfg, vec![running("gus")]);
    let (_, _, recs) = e
        .ctrl
        .report("n".into(), vec![walk("gus", 250 * GIB, t0())])
        .await
        .unwrap();
    // Entering OVERQUOTA is automatic; no enforcement yet.
    assert_eq!(recs[0].overquota_state.to_string(), "OVERQUOTA:1");
    assert_eq!(recs[0].enforcement, Enforcement::None);
    assert_eq!(e.notes.sent.lock().len(), 1);
    assert!(recs[0]
        .last_notice
        .as_deref()
        .unwrap()
        .starts_with("OVERQUOTA: "));
    // Dry run on day 8 shows SOFT_ADMIN due and changes nothing.
    e.clock.advance(chrono::Duration::days(8));
    let lines = e.ctrl.overquota(&OverquotaOptions::default()).unwrap();
    assert_eq!(lines[0].due.as_ref().unwrap().to, PolicyLevel::SoftAdmin);
    assert_eq!(lines[0].next.unwrap().0, PolicyLevel::HardUser);
    assert!(lines[0].performed.is_empty());
    assert_eq!(
        e.ctrl.get("gus").unwrap().0.overquota_state.to_string(),
        "OVERQUOTA:1"
    );
    // --run performs it: cleanup mode.
    let lines = e
        .ctrl
        .overquota(&OverquotaOptions {
            run: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(lines[0].current.to_string(), "SOFT_ADMIN:1");
    assert_eq!(
        e.ctrl.get("gus").unwrap().0.enforcement,
        Enforcement::Cleanup
    );
    assert!(e.notes.sent.lock().iter().any(|(aud, _, _)| aud == "admin"));
    // --repeat re-applies: SOFT_ADMIN:2; --states filters.
    let lines = e
        .ctrl
        .overquota(&OverquotaOptions {
            repeat: true,
            states: vec![PolicyLevel::SoftAdmin],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(lines[0].current.to_string(), "SOFT_ADMIN:2");
    let none = e
        .ctrl
        .overquota(&OverquotaOptions {
            states: vec![PolicyLevel::Ok],
            ..Default::default()
        })
        .unwrap();
    assert!(none.is_empty());
    // Day 15: HARD_ADMIN; the reaper stops the running server.
    e.clock.advance(chrono::Duration::days(7));
    e.ctrl
        .overquota(&OverquotaOptions {
            run: true,
            ..Default::default()
        })
        .unwrap();
    let rec = e.ctrl.get("gus").unwrap().0;
    assert_eq!(rec.overquota_state.level, PolicyLevel::HardAdmin);
    assert_eq!(rec.enforcement, Enforcement::Blocked);
    let s = e.ctrl.reaper_cycle().await.unwrap();
    assert_eq!(s.servers_stopped, 1);
    assert!(e
        .hub
        .stops
        .lock()
        .contains(&("gus".to_string(), String::new())));
    // Back under quota: OK, clock cleared, nothing enforced.
    e.ctrl
        .report("n".into(), vec![walk("gus", 100 * GIB, e.clock.now())])
        .await
        .unwrap();
    let rec = e.ctrl.get("gus").unwrap().0;
    assert_eq!(rec.overquota_state.to_string(), "OK");
    assert!(rec.overquota_since.is_null());
    assert_eq!(rec.enforcement, Enforcement::None);
}

#[tokio::test]
async fn scheduled_walks_measure_due_homes_and_respect_staleness() {
    let e = env(Config::default(), vec![]);
    let home = e.users_dir.join(UserKey::new("hal").unwrap().encoded());
    std::fs::create_dir_all(home.join("sub")).unwrap();
    std::fs::write(home.join("sub/data"), vec![7u8; 12345]).unwrap();
    assert_eq!(e.ctrl.due_walks().unwrap(), vec!["hal".to_string()]);
    assert_eq!(e.ctrl.walk_cycle().await.unwrap(), 1);
    let rec = e.ctrl.get("hal").unwrap().0;
    assert_eq!(rec.actual_bytes, 12345);
    assert_eq!(rec.measurement_source, Some(Source::ScheduledWalk));
    assert!(e.ctrl.due_walks().unwrap().is_empty());
    // Inactive: due again only after 7 days (a real age, unlike efs-quota).
    e.clock.advance(chrono::Duration::days(6));
    assert!(e.ctrl.due_walks().unwrap().is_empty());
    e.clock
        .advance(chrono::Duration::days(1) + chrono::Duration::minutes(1));
    assert_eq!(e.ctrl.due_walks().unwrap(), vec!["hal".to_string()]);
}

#[tokio::test]
async fn corrupt_record_found_by_the_reaper_is_kept_aside_and_never_punished() {
    let cfg = Config {
        lockout_mode: LockoutMode::Block,
        ..Config::default()
    };
    let e = env(cfg, vec![running("ivy")]);
    let dir = e.ctrl.store.user_dir("ivy").unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("quota.yaml"),
        "user: ivy\nquota_state: lockout\nactual_bytes: {{{\n",
    )
    .unwrap();
    e.ctrl.reaper_cycle().await.unwrap();
    let rec = e.ctrl.get("ivy").unwrap().0;
    assert_eq!(rec.quota_state, QuotaState::Error);
    assert!(std::fs::read_dir(&dir).unwrap().any(|f| f
        .unwrap()
        .file_name()
        .to_str()
        .unwrap()
        .starts_with("quota.yaml.corrupt-")));
    e.ctrl
        .report("n".into(), vec![walk("ivy", 999 * GIB, e.clock.now())])
        .await
        .unwrap();
    e.ctrl.reaper_cycle().await.unwrap();
    assert_stops_after_reports(&e, 0).await;
    assert!(e.hub.stops.lock().is_empty());
    assert_eq!(e.ctrl.get("ivy").unwrap().0.enforcement, Enforcement::None);
    assert!(e
        .ctrl
        .metrics
        .encode()
        .contains("hubfs_quota_corrupt_records_total 1"));
}

#[tokio::test]
async fn a_scheduled_walk_past_its_timeout_marks_the_record_timed_out() {
    let mut cfg = Config::default();
    cfg.schedule.walk_timeout_seconds = 0;
    let e = env(cfg, vec![running("jon")]);
    let home = e.users_dir.join(UserKey::new("jon").unwrap().encoded());
    for i in 0..20 {
        let d = home.join(format!("d{i}/e"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("f"), vec![1u8; 4096]).unwrap();
    }
    let rec = e.ctrl.walk_user("jon").await.unwrap().unwrap();
    assert!(rec.timed_out);
    assert_eq!(rec.quota_state, QuotaState::TimedOut);
    assert_eq!(rec.enforcement, Enforcement::None);
    assert!(e
        .ctrl
        .metrics
        .encode()
        .contains("hubfs_quota_walk_timeouts_total 1"));
    // While one replica holds the walk claim, another does not walk.
    let claim = e.ctrl.store.claim_walk("jon").unwrap().unwrap();
    assert!(e.ctrl.walk_user("jon").await.unwrap().is_none());
    drop(claim);
}
