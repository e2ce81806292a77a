//! The controller's HTTP API: what the spawn hook, `check-quota` and the
//! JupyterLab extension ask (`GET /v1/users/{name}`, optionally with the
//! home's live figures to word the answer with), `/healthz` and Prometheus
//! `/metrics`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::controller::{Controller, ControllerError};
use crate::live::LiveUsage;
use crate::policy;
use crate::record::{Enforcement, QuotaRecord};
use crate::state::{self, NextEnforcement};
use crate::store::StoreError;

/// The JSON answer for one user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserStatus {
    pub user: String,
    /// Whether a record exists (false: never measured, defaults shown).
    pub known: bool,
    pub quota_state: String,
    pub enforcement: Enforcement,
    /// What the spawn hook obeys.
    pub spawn_allowed: bool,
    /// "41.2 GiB of 200 GiB (21%)".
    pub usage: String,
    /// Plain words for the user.
    pub message: String,
    pub overquota_state: String,
    /// The next graded transition and when, if any.
    pub next_transition: Option<(String, String)>,
    /// When the policy next gets stricter (days of grace left, when the
    /// server will be stopped), if it will.
    #[serde(default)]
    pub next_enforcement: Option<NextEnforcement>,
    /// Whose bytes `usage` and `message` show: `home` (the live figures of
    /// the mounted home, passed by the caller) or `controller` (its record).
    #[serde(default = "controller_figures")]
    pub figures: String,
    pub record: QuotaRecord,
}

fn controller_figures() -> String {
    "controller".into()
}

pub fn user_status(ctrl: &Controller, rec: QuotaRecord, known: bool) -> UserStatus {
    user_status_with(&ctrl.cfg, ctrl.now(), rec, known)
}

/// The answer worded with a home's live figures (state, enforcement and
/// policy stay as decided from the record; nothing is stored).
pub fn user_status_live(
    cfg: &Config,
    now: DateTime<Utc>,
    mut rec: QuotaRecord,
    known: bool,
    live: Option<&LiveUsage>,
) -> UserStatus {
    let from_home = live.is_some_and(|l| l.apply_to(&mut rec));
    let mut s = user_status_with(cfg, now, rec, known);
    if from_home {
        s.figures = "home".into();
    }
    s
}

/// The same answer computed from a record alone (`check-quota --file`).
pub fn user_status_with(
    cfg: &Config,
    now: DateTime<Utc>,
    rec: QuotaRecord,
    known: bool,
) -> UserStatus {
    let plan = policy::plan(&rec, &cfg.policy, now);
    UserStatus {
        user: rec.user.clone(),
        known,
        quota_state: rec.quota_state.as_str().into(),
        enforcement: rec.enforcement,
        spawn_allowed: rec.enforcement != Enforcement::Blocked,
        usage: state::usage_line(&rec),
        message: state::message(&rec, cfg, now),
        overquota_state: rec.overquota_state.to_string(),
        next_transition: plan.next.map(|(l, at)| (l.to_string(), at.to_rfc3339())),
        next_enforcement: state::next_enforcement(&rec, cfg, now),
        figures: controller_figures(),
        record: rec,
    }
}

fn error_response(e: ControllerError) -> Response {
    let code = match &e {
        ControllerError::Store(StoreError::BadUser { .. }) | ControllerError::BadReport(_) => {
            StatusCode::BAD_REQUEST
        }
        ControllerError::Store(StoreError::Corrupt { .. }) => StatusCode::CONFLICT,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    (code, Json(serde_json::json!({ "error": e.to_string() }))).into_response()
}

/// A home's live figures as query parameters (`?bytes=…&inodes=…&
/// quota_bytes=…&quota_inodes=…`, what `user.hubfs.usage` says).
#[derive(Debug, Default, Deserialize)]
pub struct LiveQuery {
    bytes: Option<i64>,
    inodes: Option<i64>,
    quota_bytes: Option<u64>,
    quota_inodes: Option<u64>,
}

impl LiveQuery {
    fn live(&self) -> Option<LiveUsage> {
        Some(LiveUsage {
            bytes: self.bytes.filter(|b| *b >= 0)?,
            inodes: self.inodes.unwrap_or(0).max(0),
            quota_bytes: self.quota_bytes.unwrap_or(0),
            quota_inodes: self.quota_inodes.unwrap_or(0),
            baseline: true,
            cleanup: false,
            zone: String::new(),
        })
    }
}

async fn get_user(
    State(ctrl): State<Arc<Controller>>,
    Path(name): Path<String>,
    Query(q): Query<LiveQuery>,
) -> Response {
    let c = ctrl.clone();
    let res = tokio::task::spawn_blocking(move || c.get(&name)).await;
    match res {
        Ok(Ok((rec, known))) => {
            let status = user_status_live(&ctrl.cfg, ctrl.now(), rec, known, q.live().as_ref());
            let code = if known {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            };
            (code, Json(status)).into_response()
        }
        Ok(Err(e)) => error_response(e),
        Err(e) => error_response(ControllerError::Internal(e.to_string())),
    }
}

async fn metrics(State(ctrl): State<Arc<Controller>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ctrl.metrics.encode(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

pub fn router(ctrl: Arc<Controller>) -> Router {
    Router::new()
        .route("/v1/users/{name}", get(get_user))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(ctrl)
}
