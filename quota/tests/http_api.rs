//! The controller's HTTP API on a loopback port: what the spawn hook and
//! `check-quota` read, hostile names refused, metrics exported.

use std::sync::Arc;
use std::time::Duration;

use hubfs_quota::clock::SystemClock;
use hubfs_quota::config::{Config, LockoutMode};
use hubfs_quota::controller::{Controller, Report};
use hubfs_quota::notify::LogNotifier;
use hubfs_quota::record::Source;
use hubfs_quota::store::Store;

const GIB: i64 = 1 << 30;

#[tokio::test]
async fn user_status_spawn_decision_and_hostile_names() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        &dir.path().join("control"),
        "t",
        Duration::from_secs(60),
        Duration::from_secs(5),
        Arc::new(SystemClock),
    )
    .unwrap();
    let cfg = Config {
        lockout_mode: LockoutMode::Block,
        ..Config::default()
    };
    let ctrl = Arc::new(Controller::new(
        cfg,
        store,
        None,
        Arc::new(SystemClock),
        None,
        Arc::new(LogNotifier),
    ));
    let report = |user: &str, bytes| Report {
        user: user.into(),
        absolute: true,
        source: Source::Walk,
        bytes,
        inodes: 1,
        measured_at: chrono::Utc::now(),
        timed_out: false,
        walk_seconds: 0.2,
        sequence: 0,
    };
    ctrl.apply_reports("n", &[report("a b@c.org", 300 * GIB), report("ok", GIB)])
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = hubfs_quota::http::router(ctrl.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });

    let get = |path: String| async move {
        let r = reqwest::get(path).await.unwrap();
        let code = r.status().as_u16();
        (
            code,
            r.json::<serde_json::Value>().await.unwrap_or_default(),
        )
    };
    let (code, v) = get(format!("{base}/v1/users/a%20b%40c.org")).await;
    assert_eq!(code, 200);
    assert_eq!(v["quota_state"], "lockout");
    assert_eq!(v["enforcement"], "blocked");
    assert_eq!(v["spawn_allowed"], false);
    assert!(
        v["message"].as_str().unwrap().contains("cannot be started"),
        "{v}"
    );
    let (code, v) = get(format!("{base}/v1/users/ok")).await;
    assert_eq!((code, v["spawn_allowed"].as_bool()), (200, Some(true)));
    let (code, v) = get(format!("{base}/v1/users/stranger")).await;
    assert_eq!(code, 404);
    assert_eq!(v["known"], false);
    assert_eq!(v["spawn_allowed"], true);
    // A control character cannot name a record: a clear 400, nothing created.
    let (code, v) = get(format!("{base}/v1/users/evil%0Aname")).await;
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("control character"));
    let long = "x".repeat(300);
    let (code, _) = get(format!("{base}/v1/users/{long}")).await;
    assert_eq!(code, 400);
    assert_eq!(
        std::fs::read_dir(dir.path().join("control"))
            .unwrap()
            .count(),
        2
    );

    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert!(health.status().is_success());
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("hubfs_quota_state{user=\"a b@c.org\",state=\"lockout\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hubfs_quota_walk_seconds_count 2"),
        "{metrics}"
    );
}
