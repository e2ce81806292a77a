//! The controller as a process (`hubfs controller`): the gRPC and HTTP
//! servers, the walk scheduler and the reaper loop until shutdown, or the one
//! pass behind `--once`. Also the background tasks a report starts (server
//! stops), kept so tests can await them instead of sleeping.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::grpc::QuotaService;

use super::{Controller, ControllerError, ReaperSummary};

/// What `hubfs controller --once` did.
#[derive(Debug, Clone, PartialEq)]
pub struct OnceSummary {
    /// Homes walked.
    pub walked: usize,
    /// The reaper cycle, when a hub is configured.
    pub reaper: Option<ReaperSummary>,
}

impl Controller {
    /// Runs `task` (a server stop, an Event post) in the background,
    /// keeping its handle for [`Controller::join_spawned`]. Handles rather
    /// than a `JoinSet`, because dropping them must not abort a server stop
    /// in flight. Without a runtime (`hubfs overquota`) the task is dropped.
    pub(super) fn spawn(
        &self,
        what: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(what, "no runtime; background task dropped");
            return;
        };
        let mut spawned = self.spawned.lock();
        spawned.retain(|h| !h.is_finished());
        spawned.push(rt.spawn(task));
    }

    /// Waits until every background task started so far (server stops after
    /// a report, Event posts) has finished, including any started meanwhile.
    pub async fn join_spawned(&self) {
        loop {
            let handles = std::mem::take(&mut *self.spawned.lock());
            if handles.is_empty() {
                return;
            }
            for h in handles {
                if let Err(e) = h.await {
                    tracing::error!(error = %e, "background task failed");
                }
            }
        }
    }

    /// Learns where existing records live (a deployment of the EFS quota
    /// monitor may name directories differently) before the first report.
    pub fn scan_records(&self) {
        match self.store.scan() {
            Ok(found) => tracing::info!(records = found.len(), "control directory scanned"),
            Err(e) => tracing::error!(error = %e, "cannot scan the control directory"),
        }
    }

    /// One walk pass and one reaper cycle (when a hub is configured).
    pub async fn run_once(self: &Arc<Self>) -> Result<OnceSummary, ControllerError> {
        self.scan_records();
        let walked = self.walk_cycle().await?;
        let reaper = if self.has_hub() {
            Some(self.reaper_cycle().await?)
        } else {
            None
        };
        Ok(OnceSummary { walked, reaper })
    }

    /// Binds the gRPC and HTTP addresses, then [`Controller::serve`]s until
    /// `shutdown` resolves.
    pub async fn run(
        self: Arc<Self>,
        grpc: SocketAddr,
        http: SocketAddr,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ControllerError> {
        let listen = |addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ControllerError::Listen { addr, source })
        };
        let grpc = listen(grpc).await?;
        let http = listen(http).await?;
        self.serve(grpc, http, shutdown).await
    }

    /// Serves `hubfs.quota.v1` and the HTTP API on the given listeners, walks
    /// homes on schedule and runs the reaper, until `shutdown` resolves or a
    /// server fails.
    pub async fn serve(
        self: Arc<Self>,
        grpc: TcpListener,
        http: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ControllerError> {
        self.scan_records();
        tracing::info!(
            grpc = %local(&grpc),
            http = %local(&http),
            "quota controller listening"
        );
        let svc = QuotaService::new(self.clone()).server();
        let mut grpc_task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc)),
        );
        let router = crate::http::router(self.clone());
        let mut http_task = tokio::spawn(async move { axum::serve(http, router).await });
        let walks = tokio::spawn(self.clone().walk_loop());
        let reaper = tokio::spawn(self.clone().reaper_loop());

        let stopped = |what: &'static str, why: String| ControllerError::Server { what, why };
        let result = tokio::select! {
            r = &mut grpc_task => match r {
                Ok(Ok(())) => Err(stopped("gRPC", "ended".into())),
                Ok(Err(e)) => Err(stopped("gRPC", e.to_string())),
                Err(e) => Err(stopped("gRPC", e.to_string())),
            },
            r = &mut http_task => match r {
                Ok(Ok(())) => Err(stopped("HTTP", "ended".into())),
                Ok(Err(e)) => Err(stopped("HTTP", e.to_string())),
                Err(e) => Err(stopped("HTTP", e.to_string())),
            },
            () = shutdown => Ok(()),
        };
        for task in [walks, reaper] {
            task.abort();
        }
        grpc_task.abort();
        http_task.abort();
        result
    }

    /// The walk scheduler: a pass every `scanEverySeconds`, or
    /// `failWaitSeconds` after a failed one.
    async fn walk_loop(self: Arc<Self>) {
        let every = Duration::from_secs(self.cfg.schedule.scan_every_seconds.max(1));
        let fail = Duration::from_secs(self.cfg.schedule.fail_wait_seconds.max(1));
        loop {
            match self.walk_cycle().await {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(walked = n, "walk pass");
                    }
                    tokio::time::sleep(every).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "walk pass failed");
                    tokio::time::sleep(fail).await;
                }
            }
        }
    }

    /// The reaper: a cycle every `reaperEverySeconds`, or `failWaitSeconds`
    /// after a failed one. Nothing to do without a hub.
    async fn reaper_loop(self: Arc<Self>) {
        if !self.has_hub() {
            return;
        }
        let every = Duration::from_secs(self.cfg.schedule.reaper_every_seconds.max(1));
        let fail = Duration::from_secs(self.cfg.schedule.fail_wait_seconds.max(1));
        loop {
            match self.reaper_cycle().await {
                Ok(_) => tokio::time::sleep(every).await,
                Err(e) => {
                    tracing::error!(error = %e, "reaper cycle failed; trying again after failWaitSeconds");
                    tokio::time::sleep(fail).await;
                }
            }
        }
    }
}

fn local(l: &TcpListener) -> String {
    l.local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|e| format!("<{e}>"))
}
