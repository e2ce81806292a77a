//! The quota controller tells `kubectl describe pvc` about every transition:
//! nearing the limit, over quota, cleanup mode, back under quota. Events go
//! to the PVC the CSI controller recorded beside the homes.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hubfs_quota::clock::{Clock, FakeClock};
use hubfs_quota::config::Config;
use hubfs_quota::controller::{Controller, Report};
use hubfs_quota::events::{FakeEventSink, Reason, Regarding};
use hubfs_quota::notify::RecordingNotifier;
use hubfs_quota::record::Source;
use hubfs_quota::store::Store;

const GIB: i64 = 1 << 30;

fn walk(bytes: i64, at: DateTime<Utc>) -> Report {
    Report {
        user: "alice".into(),
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

#[tokio::test(flavor = "multi_thread")]
async fn transitions_become_events_on_the_users_pvc() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::create_dir_all(users.join(".hubfs")).unwrap();
    std::fs::write(
        users.join(".hubfs/alice.json"),
        format!(
            r#"{{"capacity_bytes": {}, "pvc_name": "claim-alice", "pvc_namespace": "jhub"}}"#,
            10 * GIB
        ),
    )
    .unwrap();
    let t0 = DateTime::parse_from_rfc3339("2026-11-01T08:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let clock: Arc<dyn Clock> = Arc::new(FakeClock::new(t0));
    let store = Store::open(
        &dir.path().join("control"),
        "test",
        Duration::from_secs(60),
        Duration::from_secs(10),
        clock.clone(),
    )
    .unwrap();
    let events = Arc::new(FakeEventSink::default());
    let ctrl = Controller::new(
        Config::default(),
        store,
        Some(users),
        clock,
        None,
        Arc::new(RecordingNotifier::default()),
    )
    .with_events(events.clone());

    for gib in [9, 11, 1] {
        ctrl.apply_reports("n1", &[walk(gib * GIB, t0)]).unwrap();
    }
    ctrl.join_spawned().await;
    let posted = events.posted();
    // Posted in the background: the order they land in is not guaranteed.
    let mut reasons: Vec<&str> = posted.iter().map(|n| n.reason.as_str()).collect();
    reasons.sort_unstable();
    assert_eq!(
        reasons,
        ["BackUnderQuota", "CleanupMode", "NearingQuota", "OverQuota"],
        "{posted:#?}"
    );
    for n in &posted {
        assert_eq!(
            n.regarding,
            Regarding::Pvc {
                namespace: "jhub".into(),
                name: "claim-alice".into(),
                uid: None
            }
        );
    }
    let note = |reason: &str| {
        posted
            .iter()
            .find(|n| n.reason.as_str() == reason)
            .map(|n| n.note.clone())
            .unwrap_or_default()
    };
    assert!(
        note("OverQuota").contains("11 GiB of 10 GiB"),
        "{posted:#?}"
    );
    assert!(
        note("BackUnderQuota").contains("writes are allowed again"),
        "{posted:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_walk_reports_the_measured_usage() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::create_dir_all(users.join(".hubfs")).unwrap();
    std::fs::create_dir_all(users.join("bob")).unwrap();
    std::fs::write(users.join("bob/data.bin"), vec![7u8; 3 << 20]).unwrap();
    std::fs::write(
        users.join(".hubfs/bob.json"),
        format!(
            r#"{{"capacity_bytes": {}, "pvc_name": "claim-bob", "pvc_namespace": "jhub"}}"#,
            GIB
        ),
    )
    .unwrap();
    let clock: Arc<dyn Clock> = Arc::new(FakeClock::new(Utc::now()));
    let store = Store::open(
        &dir.path().join("control"),
        "test",
        Duration::from_secs(60),
        Duration::from_secs(10),
        clock.clone(),
    )
    .unwrap();
    let events = Arc::new(FakeEventSink::default());
    let ctrl = Arc::new(
        Controller::new(
            Config::default(),
            store,
            Some(users),
            clock,
            None,
            Arc::new(RecordingNotifier::default()),
        )
        .with_events(events.clone()),
    );
    let rec = ctrl.walk_user("bob").await.unwrap().unwrap();
    assert_eq!(rec.actual_bytes, 3 << 20);
    ctrl.join_spawned().await;
    let posted = events.posted();
    let measured: Vec<_> = posted
        .iter()
        .filter(|n| n.reason == Reason::UsageMeasured)
        .collect();
    assert_eq!(measured.len(), 1, "{posted:#?}");
    assert!(
        measured[0].note.contains("3 MiB of 1 GiB"),
        "{}",
        measured[0].note
    );
    assert_eq!(
        measured[0].regarding,
        Regarding::Pvc {
            namespace: "jhub".into(),
            name: "claim-bob".into(),
            uid: None
        }
    );
}
