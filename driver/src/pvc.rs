//! Reading the PVC a CreateVolume is for, to learn the real hub user.
//!
//! external-provisioner (`--extra-create-metadata`) passes only the PVC's
//! name and namespace; the hub user is in the annotations KubeSpawner puts on
//! the PVC (`hub.jupyter.org/username`, and `hub.jupyter.org/servername` for
//! named servers), unescaped. [`PvcReader`] is the one boundary to the
//! Kubernetes API for that: [`KubePvcReader`] GETs the PVC with kube-rs
//! (in-cluster config or `KUBECONFIG`; the chart grants `get` on
//! persistentvolumeclaims), [`NoCluster`] stands for "no API server
//! configured" (tests, the demo, single-node installs).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;

/// Why the annotations of a PVC could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PvcError {
    /// No API server is configured: the caller falls back to the PVC name.
    #[error("no Kubernetes API server is configured")]
    NoCluster,
    /// The PVC does not exist (deleted while being provisioned).
    #[error("PersistentVolumeClaim {namespace}/{name} does not exist")]
    NotFound { namespace: String, name: String },
    /// The service account may not read PVCs: a chart or RBAC problem.
    #[error("not allowed to get PersistentVolumeClaim {namespace}/{name} (the controller's service account needs `get` on persistentvolumeclaims): {message}")]
    Forbidden {
        namespace: String,
        name: String,
        message: String,
    },
    /// Anything else (API server down, timeout): worth a retry.
    #[error("cannot read PersistentVolumeClaim {namespace}/{name}: {message}")]
    Unavailable {
        namespace: String,
        name: String,
        message: String,
    },
}

/// Reads PVC annotations.
#[async_trait::async_trait]
pub trait PvcReader: Send + Sync + std::fmt::Debug + 'static {
    async fn annotations(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<BTreeMap<String, String>, PvcError>;
}

/// No API server: every lookup says so, and CreateVolume falls back.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoCluster;

#[async_trait::async_trait]
impl PvcReader for NoCluster {
    async fn annotations(&self, _: &str, _: &str) -> Result<BTreeMap<String, String>, PvcError> {
        Err(PvcError::NoCluster)
    }
}

/// The Kubernetes API through kube-rs.
#[derive(Clone)]
pub struct KubePvcReader {
    client: kube::Client,
    timeout: std::time::Duration,
}

impl std::fmt::Debug for KubePvcReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubePvcReader")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl KubePvcReader {
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            timeout: std::time::Duration::from_secs(10),
        }
    }

    /// In-cluster config or `KUBECONFIG`; [`NoCluster`] when there is neither.
    pub async fn from_environment() -> std::sync::Arc<dyn PvcReader> {
        match kube::Client::try_default().await {
            Ok(c) => std::sync::Arc::new(Self::new(c)),
            Err(e) => {
                tracing::info!(error = %e, "no Kubernetes API server configured; hub users are taken from PVC names");
                std::sync::Arc::new(NoCluster)
            }
        }
    }
}

#[async_trait::async_trait]
impl PvcReader for KubePvcReader {
    async fn annotations(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<BTreeMap<String, String>, PvcError> {
        let api: kube::Api<PersistentVolumeClaim> =
            kube::Api::namespaced(self.client.clone(), namespace);
        let (ns, n) = (namespace.to_owned(), name.to_owned());
        let got = match tokio::time::timeout(self.timeout, api.get_opt(name)).await {
            Err(_) => {
                return Err(PvcError::Unavailable {
                    namespace: ns,
                    name: n,
                    message: format!("no answer within {:?}", self.timeout),
                })
            }
            Ok(r) => r,
        };
        match got {
            Ok(Some(pvc)) => Ok(pvc.metadata.annotations.unwrap_or_default()),
            Ok(None) => Err(PvcError::NotFound {
                namespace: ns,
                name: n,
            }),
            Err(kube::Error::Api(s)) if s.code == 403 || s.code == 401 => {
                Err(PvcError::Forbidden {
                    namespace: ns,
                    name: n,
                    message: s.message.clone(),
                })
            }
            Err(e) => Err(PvcError::Unavailable {
                namespace: ns,
                name: n,
                message: e.to_string(),
            }),
        }
    }
}

/// PVCs in memory, for unit tests.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct FakePvcReader {
    pub pvcs:
        parking_lot::Mutex<std::collections::HashMap<(String, String), BTreeMap<String, String>>>,
    pub down: std::sync::atomic::AtomicBool,
    pub gets: std::sync::atomic::AtomicUsize,
}

#[cfg(test)]
impl FakePvcReader {
    pub fn with(self, namespace: &str, name: &str, annotations: &[(&str, &str)]) -> Self {
        self.pvcs.lock().insert(
            (namespace.into(), name.into()),
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        self
    }
}

#[cfg(test)]
#[async_trait::async_trait]
impl PvcReader for FakePvcReader {
    async fn annotations(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<BTreeMap<String, String>, PvcError> {
        use std::sync::atomic::Ordering;
        self.gets.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(PvcError::Unavailable {
                namespace: namespace.into(),
                name: name.into(),
                message: "connection refused".into(),
            });
        }
        self.pvcs
            .lock()
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
            .ok_or(PvcError::NotFound {
                namespace: namespace.into(),
                name: name.into(),
            })
    }
}
