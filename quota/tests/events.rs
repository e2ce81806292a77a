//! `KubeEventSink` against a local HTTP endpoint standing in for the
//! Kubernetes API server. There is no API server on the machines these tests
//! run on, so the stand-in records exactly what kube-rs sends (method, path,
//! body) and answers the way the API server does for events.k8s.io/v1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{patch, post};
use axum::{Json, Router};
use hubfs_quota::events::{EventSink, KubeEventSink, Notice, Reason, Regarding};
use parking_lot::Mutex;
use serde_json::Value;

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, String, Value)>>>);

async fn create(
    State(s): State<Seen>,
    Path(ns): Path<String>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    s.0.lock().push((
        "POST".into(),
        format!("/apis/events.k8s.io/v1/namespaces/{ns}/events"),
        body.clone(),
    ));
    (StatusCode::CREATED, Json(body))
}

async fn update(
    State(s): State<Seen>,
    Path((ns, name)): Path<(String, String)>,
    body: String,
) -> (StatusCode, Json<Value>) {
    let v: Value = serde_json::from_str(&body).unwrap();
    s.0.lock().push((
        "PATCH".into(),
        format!("/apis/events.k8s.io/v1/namespaces/{ns}/events/{name}"),
        v.clone(),
    ));
    (StatusCode::OK, Json(v))
}

async fn api_server() -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let app = Router::new()
        .route(
            "/apis/events.k8s.io/v1/namespaces/{ns}/events",
            post(create),
        )
        .route(
            "/apis/events.k8s.io/v1/namespaces/{ns}/events/{name}",
            patch(update),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

fn client(addr: SocketAddr) -> kube::Client {
    let cfg = kube::Config::new(format!("http://{addr}").parse().unwrap());
    kube::Client::try_from(cfg).unwrap()
}

#[tokio::test]
async fn events_name_the_pod_and_repeats_become_a_series() {
    let (addr, seen) = api_server().await;
    let sink = KubeEventSink::new(client(addr), "hubfs.csi.jupyter.org", "node-7");
    let notice = Notice {
        regarding: Regarding::Pod {
            namespace: "jhub".into(),
            name: "jupyter-alice".into(),
            uid: Some("uid-1".into()),
        },
        reason: Reason::HomeMounted,
        note: "home of alice mounted: 41.2 GiB of 200 GiB used (21%)".into(),
    };
    sink.post(notice.clone()).await;
    sink.post(notice.clone()).await;
    sink.post(notice).await;

    let seen = seen.0.lock().clone();
    assert_eq!(seen.len(), 3, "{seen:#?}");
    let (method, path, first) = &seen[0];
    assert_eq!(method, "POST");
    assert_eq!(path, "/apis/events.k8s.io/v1/namespaces/jhub/events");
    assert_eq!(first["apiVersion"], "events.k8s.io/v1");
    assert_eq!(first["kind"], "Event");
    assert_eq!(first["reason"], "HomeMounted");
    assert_eq!(first["action"], "Mount");
    assert_eq!(first["type"], "Normal");
    assert_eq!(
        first["note"],
        "home of alice mounted: 41.2 GiB of 200 GiB used (21%)"
    );
    assert_eq!(first["reportingController"], "hubfs.csi.jupyter.org");
    assert_eq!(first["reportingInstance"], "node-7");
    assert_eq!(first["regarding"]["kind"], "Pod");
    assert_eq!(first["regarding"]["name"], "jupyter-alice");
    assert_eq!(first["regarding"]["namespace"], "jhub");
    assert_eq!(first["regarding"]["uid"], "uid-1");
    assert_eq!(first["metadata"]["namespace"], "jhub");
    let name = first["metadata"]["name"].as_str().unwrap();
    // Repeats patch the same event with a growing series count.
    for (i, (method, path, body)) in seen[1..].iter().enumerate() {
        assert_eq!(method, "PATCH");
        assert_eq!(
            path,
            &format!("/apis/events.k8s.io/v1/namespaces/jhub/events/{name}")
        );
        assert_eq!(body["series"]["count"], i as u64 + 2);
    }
}

#[tokio::test]
async fn quota_warnings_land_on_the_pvc() {
    let (addr, seen) = api_server().await;
    let sink = KubeEventSink::new(client(addr), "hubfs-quota", "controller-0");
    sink.post(Notice {
        regarding: Regarding::Pvc {
            namespace: "jhub".into(),
            name: "claim-bob".into(),
            uid: None,
        },
        reason: Reason::OverQuota,
        note: "x".repeat(3000),
    })
    .await;
    let seen = seen.0.lock().clone();
    let body = &seen[0].2;
    assert_eq!(body["regarding"]["kind"], "PersistentVolumeClaim");
    assert_eq!(body["regarding"]["name"], "claim-bob");
    assert_eq!(body["type"], "Warning");
    assert_eq!(body["action"], "CheckQuota");
    assert!(
        body["note"].as_str().unwrap().len() <= 1024,
        "note is cut to the API limit"
    );
}

#[tokio::test]
async fn an_unreachable_api_server_never_blocks_the_caller() {
    // A port nothing listens on, and one that accepts but never answers.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            if let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        }
    });
    for addr in [closed, silent_addr] {
        let sink =
            KubeEventSink::new(client(addr), "hubfs", "n").with_timeout(Duration::from_millis(500));
        let t = Instant::now();
        sink.post(Notice {
            regarding: Regarding::Pod {
                namespace: "ns".into(),
                name: "p".into(),
                uid: None,
            },
            reason: Reason::MountFailed,
            note: "cannot mount".into(),
        })
        .await;
        // Generous bound: the point is that it returns at all (dropped, logged).
        assert!(t.elapsed() < Duration::from_secs(30), "{addr}: post hung");
    }
}
