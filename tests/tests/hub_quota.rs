//! The quota controller against a real JupyterHub (see `hubfs_e2e::hub`):
//! paginated listing of more than 200 users with the minimal scopes, a user
//! pushed into hard enforcement gets their server stopped, the spawn hook
//! refuses a locked-out user with the message and lets others through (and
//! fails open), and a hub that dies mid-cycle causes no action.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hubfs_e2e::hub::{free_port, Hub, HubOptions};
use hubfs_quota::clock::SystemClock;
use hubfs_quota::config::{Config, HubSettings, LockoutMode, PolicyMode};
use hubfs_quota::controller::{Controller, OverquotaOptions, Report};
use hubfs_quota::hub::{HubApi, HubClient, Token};
use hubfs_quota::notify::LogNotifier;
use hubfs_quota::record::{Enforcement, QuotaState, Source};
use hubfs_quota::store::Store;

const GIB: i64 = 1 << 30;

fn controller(dir: &Path, hub: Option<(&str, &str)>, cfg: Config) -> Arc<Controller> {
    let store = Store::open(
        &dir.join("control"),
        "test",
        Duration::from_secs(60),
        Duration::from_secs(10),
        Arc::new(SystemClock),
    )
    .unwrap();
    let users = dir.join("users");
    std::fs::create_dir_all(&users).unwrap();
    let hub: Option<Arc<dyn HubApi>> = hub.map(|(url, token)| {
        Arc::new(HubClient::new(url, Token::new(token), cfg.hub.clone()).unwrap())
            as Arc<dyn HubApi>
    });
    Arc::new(Controller::new(
        cfg,
        store,
        Some(users),
        Arc::new(SystemClock),
        hub,
        Arc::new(LogNotifier),
    ))
}

fn walk(user: &str, bytes: i64) -> Report {
    Report {
        user: user.into(),
        absolute: true,
        source: Source::Walk,
        bytes,
        inodes: 1,
        measured_at: chrono::Utc::now(),
        timed_out: false,
        walk_seconds: 0.1,
        sequence: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_lists_every_user_across_pages_with_minimal_scopes() {
    let hub = Hub::start(HubOptions::default()).await;
    let names: Vec<String> = (0..450).map(|i| format!("user{i:04}")).collect();
    hub.create_users(&names).await;
    for page_size in [200, 64] {
        let settings = HubSettings {
            page_size,
            ..HubSettings::default()
        };
        let client = HubClient::new(&hub.url, Token::new(&hub.service_token), settings).unwrap();
        let users = client.list_users().await.unwrap();
        let mut got: Vec<String> = users.iter().map(|u| u.name.clone()).collect();
        got.sort();
        assert_eq!(got, names, "page size {page_size}");
    }
    // A token without the scopes is refused, and that is an error, not an empty list.
    let bad = HubClient::new(&hub.url, Token::new("not-a-token"), HubSettings::default()).unwrap();
    assert!(bad.list_users().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_enforcement_stops_the_server_in_the_real_hub() {
    let hub = Hub::start(HubOptions::default()).await;
    hub.create_users(&["ada".into(), "bob".into()]).await;
    hub.start_server("ada").await;
    hub.start_server("bob").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.policy.mode = PolicyMode::Graded;
    let ctrl = controller(dir.path(), Some((&hub.url, &hub.service_token)), cfg);
    ctrl.report(
        "node-a".into(),
        vec![walk("ada", 300 * GIB), walk("bob", 10 * GIB)],
    )
    .await
    .unwrap();
    // Graded: over quota but not yet hard; the reaper records activity and stops nobody.
    let s = ctrl.reaper_cycle().await.unwrap();
    assert_eq!(s.servers_stopped, 0);
    assert!(hub.server_ready("ada").await);
    let rec = ctrl.get("ada").unwrap().0;
    assert!(rec.server_running);
    // The admin pushes ada to hard enforcement (records say she has been over for 15 days).
    let path = ctrl.store.user_dir("ada").unwrap().join("quota.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let since = (chrono::Utc::now() - chrono::Duration::days(15))
        .naive_utc()
        .format("%Y-%m-%dT%H:%M:%S%.6f");
    let edited: String = text
        .lines()
        .map(|l| {
            if l.starts_with("overquota_since:") {
                format!("overquota_since: '{since}'")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&path, edited + "\n").unwrap();
    ctrl.overquota(&OverquotaOptions {
        run: true,
        ..Default::default()
    })
    .unwrap();
    let rec = ctrl.get("ada").unwrap().0;
    assert_eq!(rec.enforcement, Enforcement::Blocked, "{rec:?}");
    let s = ctrl.reaper_cycle().await.unwrap();
    assert_eq!(s.servers_stopped, 1);
    hub.wait_for("ada", "server stopped", |u| u["servers"].get("").is_none())
        .await;
    assert!(hub.server_ready("bob").await, "bob must keep his server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_hook_blocks_a_locked_out_user_with_the_message_and_fails_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        lockout_mode: LockoutMode::Block,
        ..Config::default()
    };
    let ctrl = controller(dir.path(), None, cfg);
    let http_port = free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", http_port))
        .await
        .unwrap();
    let router = hubfs_quota::http::router(ctrl.clone());
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let hub = Hub::start(HubOptions {
        controller_url: Some(format!("http://127.0.0.1:{http_port}")),
    })
    .await;
    hub.create_users(&[
        "locked".into(),
        "fine".into(),
        "newbie".into(),
        "later".into(),
    ])
    .await;
    ctrl.report(
        "n".into(),
        vec![walk("locked", 250 * GIB), walk("fine", 5 * GIB)],
    )
    .await
    .unwrap();
    assert_eq!(
        ctrl.get("locked").unwrap().0.quota_state,
        QuotaState::Lockout
    );

    let (code, body) = hub.request_spawn("locked").await;
    assert!(code >= 400, "locked-out spawn must fail: {code} {body}");
    assert!(
        body.contains("over your quota") && body.contains("250 GiB"),
        "{code} {body}"
    );
    assert!(hub.server_gone("locked").await);

    hub.start_server("fine").await;
    hub.start_server("newbie").await; // no record at all: allowed

    // Controller unreachable: spawns are allowed (fail open), with a warning.
    server.abort();
    let _ = server.await;
    hub.start_server("later").await;
    assert!(
        hub.log().contains("quota controller unreachable"),
        "{}",
        hub.log()
    );
}

/// A TCP forwarder that lets `allow` HTTP responses through and then cuts
/// every connection: the hub "goes down" in the middle of a listing.
async fn flaky_forwarder(target: u16, allow: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let budget = Arc::new(std::sync::atomic::AtomicUsize::new(allow));
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let budget = budget.clone();
            tokio::spawn(async move {
                if budget.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                    return;
                }
                let Ok(mut upstream) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                else {
                    return;
                };
                let mut buf = vec![0u8; 64 * 1024];
                let mut up = vec![0u8; 256 * 1024];
                loop {
                    let n = match client.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    // One request in, one response out (the client waits for it).
                    if budget.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                        return;
                    }
                    budget.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    if upstream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    // Relay until the response is complete (Content-Length).
                    let mut got = Vec::new();
                    loop {
                        let m = match upstream.read(&mut up).await {
                            Ok(0) | Err(_) => return,
                            Ok(m) => m,
                        };
                        got.extend_from_slice(&up[..m]);
                        if client.write_all(&up[..m]).await.is_err() {
                            return;
                        }
                        let text = String::from_utf8_lossy(&got).to_lowercase();
                        if let Some(h) = text.find("\r\n\r\n") {
                            let len = text[..h]
                                .lines()
                                .find_map(|l| {
                                    l.strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            if got.len() >= h + 4 + len {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_going_down_mid_cycle_causes_no_action() {
    let hub = Hub::start(HubOptions::default()).await;
    let names: Vec<String> = (0..300).map(|i| format!("u{i:03}")).collect();
    hub.create_users(&names).await;
    hub.start_server("u007").await;
    let hub_port: u16 = hub.url.rsplit(':').next().unwrap().parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        lockout_mode: LockoutMode::Block,
        hub: HubSettings {
            page_size: 50,
            retries: 2,
            backoff_millis: 50,
            ..HubSettings::default()
        },
        ..Config::default()
    };
    // Two pages get through, then the "hub" is gone.
    let flaky = flaky_forwarder(hub_port, 2).await;
    let ctrl = controller(
        dir.path(),
        Some((&format!("http://127.0.0.1:{flaky}"), &hub.service_token)),
        cfg.clone(),
    );
    // u007 is over quota with block mode: a complete cycle would stop the server.
    ctrl.apply_reports("n", &[walk("u007", 500 * GIB)]).unwrap();
    let before =
        std::fs::read_to_string(ctrl.store.user_dir("u007").unwrap().join("quota.yaml")).unwrap();
    assert!(ctrl.reaper_cycle().await.is_err());
    assert!(
        hub.server_ready("u007").await,
        "no action on incomplete data"
    );
    let after =
        std::fs::read_to_string(ctrl.store.user_dir("u007").unwrap().join("quota.yaml")).unwrap();
    assert_eq!(before, after, "no record changed on incomplete data");
    // With the hub reachable the same cycle acts.
    let direct = controller(dir.path(), Some((&hub.url, &hub.service_token)), cfg);
    let s = direct.reaper_cycle().await.unwrap();
    assert_eq!(s.hub_users, 300);
    assert_eq!(s.servers_stopped, 1);
    hub.wait_for("u007", "server stopped", |u| u["servers"].get("").is_none())
        .await;
}
