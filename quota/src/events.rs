//! Kubernetes Events: the story `kubectl describe pod` and `kubectl describe
//! pvc` tell about a user's storage.
//!
//! The driver and the quota controller post [`Notice`]s to an [`EventSink`].
//! The real sink is kube-runtime's `Recorder` (events.k8s.io/v1, with our
//! reporting controller and instance); it aggregates repeated notices into a
//! series (one Event whose `series.count` grows) instead of spamming. Posting
//! is infallible by design: an event is decoration, and an unreachable API
//! server must never block or fail a mount, so failures are logged and the
//! notice dropped after a short timeout.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// The object an event is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Regarding {
    /// A notebook pod (from podInfoOnMount at NodePublish).
    Pod {
        namespace: String,
        name: String,
        uid: Option<String>,
    },
    /// A user's PVC.
    Pvc {
        namespace: String,
        name: String,
        uid: Option<String>,
    },
}

impl Regarding {
    fn object_ref(&self) -> ObjectReference {
        let (kind, namespace, name, uid) = match self {
            Regarding::Pod {
                namespace,
                name,
                uid,
            } => ("Pod", namespace, name, uid),
            Regarding::Pvc {
                namespace,
                name,
                uid,
            } => ("PersistentVolumeClaim", namespace, name, uid),
        };
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some(kind.into()),
            namespace: Some(namespace.clone()),
            name: Some(name.clone()),
            uid: uid.clone(),
            ..Default::default()
        }
    }
}

/// Why an event is posted; each has a fixed action and severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    HomeProvisioned,
    HomeMounted,
    S3Mounted,
    MountFailed,
    UsageMeasured,
    WalkTimedOut,
    NearingLimit,
    OverQuota,
    CleanupMode,
    ServerStopped,
    BackUnderQuota,
}

impl Reason {
    /// The `reason` field (PascalCase, shown by kubectl).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::HomeProvisioned => "HomeProvisioned",
            Reason::HomeMounted => "HomeMounted",
            Reason::S3Mounted => "S3Mounted",
            Reason::MountFailed => "MountFailed",
            Reason::UsageMeasured => "UsageMeasured",
            Reason::WalkTimedOut => "WalkTimedOut",
            Reason::NearingLimit => "NearingQuota",
            Reason::OverQuota => "OverQuota",
            Reason::CleanupMode => "CleanupMode",
            Reason::ServerStopped => "ServerStopped",
            Reason::BackUnderQuota => "BackUnderQuota",
        }
    }

    /// The `action` field: what hubfs did.
    pub fn action(self) -> &'static str {
        match self {
            Reason::HomeProvisioned => "Provision",
            Reason::HomeMounted | Reason::S3Mounted | Reason::MountFailed => "Mount",
            Reason::UsageMeasured | Reason::WalkTimedOut => "Measure",
            Reason::NearingLimit | Reason::OverQuota | Reason::BackUnderQuota => "CheckQuota",
            Reason::CleanupMode | Reason::ServerStopped => "EnforceQuota",
        }
    }

    /// Whether `kubectl describe` should show it as a Warning.
    pub fn is_warning(self) -> bool {
        matches!(
            self,
            Reason::MountFailed
                | Reason::WalkTimedOut
                | Reason::NearingLimit
                | Reason::OverQuota
                | Reason::CleanupMode
                | Reason::ServerStopped
        )
    }
}

/// One thing worth telling the people who run `kubectl describe`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub regarding: Regarding,
    pub reason: Reason,
    /// Plain words; at most 1 kB reaches the API server.
    pub note: String,
}

/// Where notices go. Never fails and never blocks for long.
#[async_trait::async_trait]
pub trait EventSink: Send + Sync + std::fmt::Debug + 'static {
    async fn post(&self, notice: Notice);
}

/// Posts a notice in the background on the current tokio runtime (or drops
/// it with a log line when there is none), so callers never wait for it.
pub fn post_in_background(sink: &Arc<dyn EventSink>, notice: Notice) {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => {
            let sink = sink.clone();
            h.spawn(async move { sink.post(notice).await });
        }
        Err(_) => tracing::debug!(reason = notice.reason.as_str(), "no runtime; event dropped"),
    }
}

/// The kube-runtime `Recorder` behind an [`EventSink`].
pub struct KubeEventSink {
    recorder: Recorder,
    timeout: Duration,
}

impl std::fmt::Debug for KubeEventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeEventSink")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl KubeEventSink {
    /// A sink posting through `client` as `controller` (e.g. the driver name)
    /// and `instance` (the node or pod name).
    pub fn new(client: kube::Client, controller: &str, instance: &str) -> Self {
        let reporter = Reporter {
            controller: controller.to_owned(),
            instance: Some(instance.to_owned()),
        };
        Self {
            recorder: Recorder::new(client, reporter),
            timeout: Duration::from_secs(5),
        }
    }

    /// In-cluster (or kubeconfig) client; `None` when there is no cluster,
    /// which is normal for tests, the demo and single-node installs.
    pub async fn from_environment(controller: &str, instance: &str) -> Option<Self> {
        match kube::Client::try_default().await {
            Ok(c) => Some(Self::new(c, controller, instance)),
            Err(e) => {
                tracing::info!(error = %e, "no Kubernetes API server configured; events are not posted");
                None
            }
        }
    }

    /// Changes how long a post may take before it is given up.
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
}

#[async_trait::async_trait]
impl EventSink for KubeEventSink {
    async fn post(&self, n: Notice) {
        let mut note = n.note.clone();
        if note.len() > 1024 {
            let mut cut = 1021;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
            note.push_str("...");
        }
        let ev = Event {
            type_: if n.reason.is_warning() {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: n.reason.as_str().to_owned(),
            note: Some(note),
            action: n.reason.action().to_owned(),
            secondary: None,
        };
        let regarding = n.regarding.object_ref();
        match tokio::time::timeout(self.timeout, self.recorder.publish(&ev, &regarding)).await {
            Ok(Ok(())) => tracing::debug!(reason = ev.reason, "event posted"),
            Ok(Err(e)) => {
                tracing::warn!(reason = ev.reason, error = %e, "event not posted; dropped")
            }
            Err(_) => tracing::warn!(reason = ev.reason, "event post timed out; dropped"),
        }
    }
}

#[cfg(any(test, feature = "test-util"))]
/// Collects notices in memory, for tests (`test-util` feature).
#[derive(Default, Debug)]
pub struct FakeEventSink {
    posted: parking_lot::Mutex<Vec<Notice>>,
}

#[cfg(any(test, feature = "test-util"))]
impl FakeEventSink {
    /// Everything posted so far.
    pub fn posted(&self) -> Vec<Notice> {
        self.posted.lock().clone()
    }

    /// Everything posted once at least `n` notices were (background posts
    /// land later), or after 2 s whatever was: the caller asserts on it.
    pub async fn wait_posted(&self, n: usize) -> Vec<Notice> {
        for _ in 0..400 {
            if self.posted.lock().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.posted()
    }
}

#[cfg(any(test, feature = "test-util"))]
#[async_trait::async_trait]
impl EventSink for FakeEventSink {
    async fn post(&self, n: Notice) {
        self.posted.lock().push(n);
    }
}

/// Drops every notice (no cluster).
#[derive(Default, Debug, Clone, Copy)]
pub struct NoEvents;

#[async_trait::async_trait]
impl EventSink for NoEvents {
    async fn post(&self, n: Notice) {
        tracing::debug!(reason = n.reason.as_str(), note = %n.note, "event (not posted: no cluster)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_the_unhappy_reasons() {
        assert!(Reason::MountFailed.is_warning());
        assert!(Reason::OverQuota.is_warning());
        assert!(!Reason::HomeMounted.is_warning());
        assert!(!Reason::BackUnderQuota.is_warning());
        assert_eq!(Reason::NearingLimit.as_str(), "NearingQuota");
    }

    #[test]
    fn references_name_the_right_kind() {
        let r = Regarding::Pvc {
            namespace: "jhub".into(),
            name: "claim-alice".into(),
            uid: None,
        }
        .object_ref();
        assert_eq!(r.kind.as_deref(), Some("PersistentVolumeClaim"));
        assert_eq!(r.api_version.as_deref(), Some("v1"));
        let r = Regarding::Pod {
            namespace: "jhub".into(),
            name: "jupyter-alice".into(),
            uid: Some("u1".into()),
        }
        .object_ref();
        assert_eq!(
            (r.kind.as_deref(), r.uid.as_deref()),
            (Some("Pod"), Some("u1"))
        );
    }

    #[tokio::test]
    async fn fake_collects_and_background_posting_works() {
        let fake = Arc::new(FakeEventSink::default());
        let sink: Arc<dyn EventSink> = fake.clone();
        let n = Notice {
            regarding: Regarding::Pod {
                namespace: "ns".into(),
                name: "p".into(),
                uid: None,
            },
            reason: Reason::HomeMounted,
            note: "home mounted".into(),
        };
        post_in_background(&sink, n.clone());
        assert_eq!(fake.wait_posted(1).await, vec![n]);
    }
}
