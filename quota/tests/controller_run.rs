//! The controller as `hubfs controller` runs it (`Controller::serve`, the
//! library half of the binary) on loopback ports: it waits for a users
//! directory that does not exist yet instead of exiting, walks the first home
//! once it appears, keeps its reaper going through a hub that is down, answers
//! HTTP while it runs, and stops when told to.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use hubfs_quota::clock::{Clock, SystemClock};
use hubfs_quota::config::{Config, LockoutMode};
use hubfs_quota::controller::{Controller, Report};
use hubfs_quota::hub::{FakeHub, HubApi, HubUser};
use hubfs_quota::notify::LogNotifier;
use hubfs_quota::record::Source;
use hubfs_quota::store::Store;
use tokio::net::TcpListener;

const GIB: i64 = 1 << 30;

/// A config whose loops come round every second.
fn quick() -> Config {
    let mut cfg = Config {
        lockout_mode: LockoutMode::Block,
        ..Config::default()
    };
    cfg.schedule.scan_every_seconds = 1;
    cfg.schedule.reaper_every_seconds = 1;
    cfg.schedule.fail_wait_seconds = 1;
    cfg
}

fn controller(dir: &std::path::Path, cfg: Config, hub: Option<Arc<dyn HubApi>>) -> Arc<Controller> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = Store::open(
        &dir.join("control"),
        "test",
        Duration::from_secs(60),
        Duration::from_secs(10),
        clock.clone(),
    )
    .unwrap();
    Arc::new(Controller::new(
        cfg,
        store,
        Some(dir.join("users")),
        clock,
        hub,
        Arc::new(LogNotifier),
    ))
}

async fn loopback() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// Polls `cond` every 20 ms for up to 30 s.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Log lines, for counting.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_missing_users_directory_is_logged_once_and_looked_for_at_every_scan() {
    let d = tempfile::tempdir().unwrap();
    let ctrl = controller(d.path(), quick(), None);
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        for _ in 0..3 {
            assert_eq!(ctrl.due_walks().unwrap(), Vec::<String>::new());
        }
        std::fs::create_dir_all(d.path().join("users/ada")).unwrap();
        assert_eq!(ctrl.due_walks().unwrap(), vec!["ada".to_string()]);
        assert_eq!(ctrl.due_walks().unwrap(), vec!["ada".to_string()]);
    });
    let log = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    assert_eq!(
        log.matches("the users directory does not exist yet")
            .count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("the users directory appeared").count(),
        1,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_waits_for_the_users_directory_and_walks_the_first_home() {
    let d = tempfile::tempdir().unwrap();
    let ctrl = controller(d.path(), quick(), None);
    let http = loopback().await;
    let http_addr = http.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ctrl.clone().serve(loopback().await, http, async {
        let _ = stopped.await;
    }));

    // The HTTP API answers while there is no users directory at all.
    let client = reqwest::Client::new();
    let health = client
        .get(format!("http://{http_addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert!(health.status().is_success(), "{health:?}");
    assert!(!server.is_finished());

    // A fresh install: the first provisioned home brings the directory.
    // The home appears whole (made beside it, then renamed in): a scan
    // between its mkdir and the end of the write would walk it half
    // written, and a measured home is not walked again for days.
    let staging = d.path().join("staging");
    std::fs::create_dir_all(staging.join("ada")).unwrap();
    std::fs::write(staging.join("ada/notebook.ipynb"), vec![1u8; 3 << 20]).unwrap();
    std::fs::create_dir(d.path().join("users.new")).unwrap();
    std::fs::rename(staging.join("ada"), d.path().join("users.new/ada")).unwrap();
    std::fs::rename(d.path().join("users.new"), d.path().join("users")).unwrap();
    wait_for("the scheduled walk of ada", || {
        ctrl.store
            .load("ada")
            .ok()
            .flatten()
            .is_some_and(|r| r.actual_bytes == 3 << 20)
    })
    .await;
    assert!(!server.is_finished());

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_loop_keeps_going_through_a_hub_that_is_down() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("users")).unwrap();
    let hub = Arc::new(FakeHub::with_users(vec![HubUser {
        name: "bob".into(),
        last_activity: Some(Utc::now()),
        running: vec![String::new()],
    }]));
    hub.set_down(true);
    let ctrl = controller(d.path(), quick(), Some(hub.clone()));
    // Over quota with lockoutMode block: bob's server must stop. The report
    // tries at once, but the hub is down.
    let over = Report {
        user: "bob".into(),
        absolute: true,
        source: Source::Walk,
        bytes: 300 * GIB,
        inodes: 1,
        measured_at: Utc::now(),
        timed_out: false,
        walk_seconds: 0.1,
        sequence: 0,
    };
    ctrl.report("n".into(), vec![over]).await.unwrap();
    ctrl.join_spawned().await;
    assert!(hub.stops.lock().is_empty());

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        ctrl.clone()
            .serve(loopback().await, loopback().await, async {
                let _ = stopped.await;
            }),
    );
    // At least two failed cycles, then the hub comes back.
    let failed_listings = || {
        let m = ctrl.metrics.encode();
        m.lines()
            .find_map(|l| l.strip_prefix("hubfs_quota_hub_api_errors_total{op=\"list_users\"} "))
            .map_or(0, |n| n.trim().parse::<u64>().unwrap())
    };
    wait_for("two failed reaper cycles", || failed_listings() >= 2).await;
    assert!(hub.stops.lock().is_empty());
    hub.set_down(false);
    wait_for("the stop of bob's server", || !hub.stops.lock().is_empty()).await;
    assert_eq!(
        hub.stops.lock().clone(),
        vec![("bob".to_string(), String::new())]
    );
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn run_reports_an_address_it_cannot_listen_on() {
    let d = tempfile::tempdir().unwrap();
    let ctrl = controller(d.path(), quick(), None);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let free = "127.0.0.1:0".parse().unwrap();
    let e = ctrl
        .run(addr, free, std::future::pending::<()>())
        .await
        .unwrap_err();
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
}
