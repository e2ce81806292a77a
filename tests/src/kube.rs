//! A local HTTP stand-in for the Kubernetes API server.
//!
//! No real API server runs on these machines (no kubelet, no etcd, no
//! container engine), so the end-to-end tests that need one talk to this
//! instead: a small axum server on loopback that answers exactly the calls
//! hubfs makes, in the API's own JSON shapes, through the real kube-rs client
//! configured by a kubeconfig file ([`KubeStandIn::kubeconfig`]):
//!
//! * `GET /api/v1/namespaces/{ns}/persistentvolumeclaims/{name}`: a PVC with
//!   the annotations the test gave it ([`KubeStandIn::add_pvc`]), or a 404
//!   `Status`, as the API server answers;
//! * `POST /apis/events.k8s.io/v1/namespaces/{ns}/events` and `PATCH` of one
//!   (kube-runtime's `Recorder` folds repeats into a series): stored, echoed.
//!
//! Everything else is a 404 `Status`, and every request is counted.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde_json::{json, Value};

/// One Event the stand-in received (created or patched).
#[derive(Clone, Debug)]
pub struct PostedEvent {
    pub namespace: String,
    /// `regarding.kind`, e.g. `PersistentVolumeClaim` or `Pod`.
    pub kind: String,
    /// `regarding.name`.
    pub name: String,
    pub reason: String,
    pub note: String,
}

#[derive(Default)]
struct Inner {
    pvcs: HashMap<(String, String), BTreeMap<String, String>>,
    events: Vec<PostedEvent>,
    requests: Vec<String>,
    next: u64,
}

type Shared = Arc<Mutex<Inner>>;

/// The running stand-in. Dropping it stops the server.
pub struct KubeStandIn {
    pub url: String,
    inner: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for KubeStandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStandIn")
            .field("url", &self.url)
            .finish()
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    (
        code,
        Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason,
            "code": code.as_u16(),
        })),
    )
        .into_response()
}

async fn get_pvc(
    State(s): State<Shared>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
) -> Response {
    let mut inner = s.lock().unwrap();
    inner.requests.push(format!("GET pvc {ns}/{name}"));
    match inner.pvcs.get(&(ns.clone(), name.clone())) {
        Some(annotations) => Json(json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"),
                "annotations": annotations,
            },
            "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "hubfs-home",
                     "resources": {"requests": {"storage": "1Gi"}}},
            "status": {"phase": "Pending"},
        }))
        .into_response(),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("persistentvolumeclaims \"{name}\" not found"),
        ),
    }
}

fn record_event(inner: &mut Inner, ns: &str, body: &Value) {
    let regarding = &body["regarding"];
    inner.events.push(PostedEvent {
        namespace: ns.to_owned(),
        kind: regarding["kind"].as_str().unwrap_or_default().to_owned(),
        name: regarding["name"].as_str().unwrap_or_default().to_owned(),
        reason: body["reason"].as_str().unwrap_or_default().to_owned(),
        note: body["note"].as_str().unwrap_or_default().to_owned(),
    });
}

async fn post_event(
    State(s): State<Shared>,
    UrlPath(ns): UrlPath<String>,
    Json(mut body): Json<Value>,
) -> Response {
    let mut inner = s.lock().unwrap();
    inner.requests.push(format!("POST event {ns}"));
    record_event(&mut inner, &ns, &body);
    inner.next += 1;
    let n = inner.next;
    let meta = body["metadata"]
        .as_object_mut()
        .cloned()
        .unwrap_or_default();
    let mut meta = Value::Object(meta);
    if meta["name"].is_null() {
        let base = meta["generateName"].as_str().unwrap_or("event.").to_owned();
        meta["name"] = json!(format!("{base}{n:08x}"));
    }
    meta["namespace"] = json!(ns);
    meta["uid"] = json!(format!("event-uid-{n}"));
    meta["resourceVersion"] = json!(n.to_string());
    body["metadata"] = meta;
    (StatusCode::CREATED, Json(body)).into_response()
}

async fn patch_event(
    State(s): State<Shared>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    Json(mut body): Json<Value>,
) -> Response {
    let mut inner = s.lock().unwrap();
    inner.requests.push(format!("PATCH event {ns}/{name}"));
    record_event(&mut inner, &ns, &body);
    body["metadata"]["name"] = json!(name);
    body["metadata"]["namespace"] = json!(ns);
    (StatusCode::OK, Json(body)).into_response()
}

async fn fallback(State(s): State<Shared>, req: axum::extract::Request) -> Response {
    let line = format!("{} {}", req.method(), req.uri());
    s.lock().unwrap().requests.push(line.clone());
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("the stand-in does not serve {line}"),
    )
}

impl KubeStandIn {
    /// Starts the stand-in on a free loopback port.
    pub async fn start() -> Self {
        let inner: Shared = Arc::default();
        let app = Router::new()
            .route(
                "/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}",
                get(get_pvc),
            )
            .route(
                "/apis/events.k8s.io/v1/namespaces/{ns}/events",
                post(post_event),
            )
            .route(
                "/apis/events.k8s.io/v1/namespaces/{ns}/events/{name}",
                patch(patch_event),
            )
            .fallback(fallback)
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, inner, task }
    }

    /// Adds a PVC with annotations (what KubeSpawner creates).
    pub fn add_pvc(&self, namespace: &str, name: &str, annotations: &[(&str, &str)]) {
        self.inner.lock().unwrap().pvcs.insert(
            (namespace.into(), name.into()),
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
    }

    /// Writes a kubeconfig naming this server (plain HTTP, no credentials)
    /// into `dir` and returns its path, for `KUBECONFIG`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let p = dir.join("kubeconfig");
        std::fs::write(
            &p,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    server: {}\n\
                 users:\n- name: hubfs\n  user: {{}}\ncontexts:\n- name: stand-in\n  context:\n    cluster: stand-in\n    user: hubfs\n    namespace: jhub\n\
                 current-context: stand-in\n",
                self.url
            ),
        )
        .unwrap();
        p
    }

    /// Every Event received so far, in order.
    pub fn events(&self) -> Vec<PostedEvent> {
        self.inner.lock().unwrap().events.clone()
    }

    /// Every request line received so far (`GET pvc ns/name`, ...).
    pub fn requests(&self) -> Vec<String> {
        self.inner.lock().unwrap().requests.clone()
    }
}

impl Drop for KubeStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}
