//! The `hubfs.quota.v1` gRPC service: nodes report usage, read back quotas.
//! Controller errors become gRPC statuses here and only here, and records and
//! reports cross the wire through the conversions here.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use hubfs_proto::quota as pb;
use hubfs_proto::quota::quota_server::{Quota, QuotaServer};
use tonic::{Request, Response, Status};

use crate::controller::{Controller, ControllerError, Report};
use crate::levels::PolicyLevel;
use crate::record::{Enforcement, QuotaRecord, Source};
use crate::state;
use crate::store::StoreError;
use crate::userkey::UserKey;

#[derive(Debug, Clone)]
pub struct QuotaService {
    ctrl: Arc<Controller>,
}

impl QuotaService {
    pub fn new(ctrl: Arc<Controller>) -> Self {
        Self { ctrl }
    }

    pub fn server(self) -> QuotaServer<Self> {
        QuotaServer::new(self)
    }
}

/// The one place controller errors become gRPC statuses.
pub fn to_status(e: ControllerError) -> Status {
    match &e {
        ControllerError::BadReport(_) => Status::invalid_argument(e.to_string()),
        ControllerError::Store(StoreError::BadUser { .. }) => {
            Status::invalid_argument(e.to_string())
        }
        ControllerError::Store(StoreError::Lock(_)) => Status::unavailable(e.to_string()),
        ControllerError::Store(StoreError::UserMismatch { .. }) => {
            Status::failed_precondition(e.to_string())
        }
        ControllerError::Store(StoreError::Corrupt { .. }) => Status::data_loss(e.to_string()),
        ControllerError::Store(StoreError::Io { .. }) => Status::unavailable(e.to_string()),
        ControllerError::Hub(_) | ControllerError::NoHub => Status::unavailable(e.to_string()),
        ControllerError::Internal(_)
        | ControllerError::Listen { .. }
        | ControllerError::Server { .. } => Status::internal(e.to_string()),
    }
}

/// A node's usage report, decoded and checked.
pub fn report_from_proto(
    r: &pb::UsageReport,
    now: DateTime<Utc>,
) -> Result<Report, ControllerError> {
    UserKey::new(&r.user)
        .map_err(|e| ControllerError::BadReport(format!("user {:?}: {e}", r.user)))?;
    let absolute = match pb::ReportKind::try_from(r.kind) {
        Ok(pb::ReportKind::Delta) => false,
        Ok(pb::ReportKind::Absolute) => true,
        _ => {
            return Err(ControllerError::BadReport(format!(
                "report for {} has no kind",
                r.user
            )))
        }
    };
    let source = match pb::UsageSource::try_from(r.source) {
        Ok(pb::UsageSource::Write) => Source::Write,
        _ => Source::Walk,
    };
    if absolute && (r.bytes < 0 || r.inodes < 0) {
        return Err(ControllerError::BadReport(format!(
            "negative absolute usage for {}",
            r.user
        )));
    }
    let measured_at = r
        .measured_at
        .as_ref()
        .and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .unwrap_or(now);
    Ok(Report {
        user: r.user.clone(),
        absolute,
        source,
        bytes: r.bytes,
        inodes: r.inodes,
        measured_at,
        timed_out: r.timed_out,
        walk_seconds: r.walk_seconds,
        sequence: r.sequence,
    })
}

/// A record as nodes read it back (`UserQuota`).
pub fn user_quota(ctrl: &Controller, rec: &QuotaRecord) -> pb::UserQuota {
    let enforcement = match rec.enforcement {
        Enforcement::None => pb::Enforcement::None,
        Enforcement::Cleanup => pb::Enforcement::Cleanup,
        Enforcement::Blocked => pb::Enforcement::Blocked,
    };
    pb::UserQuota {
        user: rec.user.clone(),
        quota_bytes: rec.quota_bytes,
        quota_inodes: rec.quota_inodes,
        warn_fraction: rec.warn_fraction,
        quota_enabled: rec.quota_enabled,
        lockout_enabled: rec.lockout_enabled,
        quota_state: rec.quota_state.as_str().into(),
        enforcement: enforcement as i32,
        used_bytes: rec.actual_bytes,
        used_inodes: rec.actual_inodes,
        message: state::message(rec, &ctrl.cfg, ctrl.now()),
        policy_state: if rec.overquota_state.level == PolicyLevel::Ok {
            String::new()
        } else {
            rec.overquota_state.to_string()
        },
        measured_at: rec.measured_at.get().map(|t| prost_types::Timestamp {
            seconds: t.timestamp(),
            nanos: t.timestamp_subsec_nanos() as i32,
        }),
    }
}

#[tonic::async_trait]
impl Quota for QuotaService {
    async fn report_usage(
        &self,
        req: Request<pb::ReportUsageRequest>,
    ) -> Result<Response<pb::ReportUsageResponse>, Status> {
        let req = req.into_inner();
        if req.node_id.is_empty() {
            return Err(Status::invalid_argument("node_id is required"));
        }
        let now = self.ctrl.now();
        let reports = req
            .reports
            .iter()
            .map(|r| report_from_proto(r, now))
            .collect::<Result<Vec<_>, _>>()
            .map_err(to_status)?;
        let asked: Vec<String> = req.reports.iter().map(|r| r.user.clone()).collect();
        let (accepted, duplicates, recs) = self
            .ctrl
            .report(req.node_id, reports)
            .await
            .map_err(to_status)?;
        let mut quotas: Vec<pb::UserQuota> =
            recs.iter().map(|r| user_quota(&self.ctrl, r)).collect();
        // A home provisioned under a legacy (slug) name reports under it:
        // answer under that name too, so its home layer finds its enforcement.
        for (legacy, user) in self.ctrl.identities.aliases(&asked) {
            if let Some(q) = quotas.iter().find(|q| q.user == user).cloned() {
                quotas.push(pb::UserQuota { user: legacy, ..q });
            }
        }
        Ok(Response::new(pb::ReportUsageResponse {
            accepted,
            duplicates,
            quotas,
        }))
    }

    async fn get_user_quota(
        &self,
        req: Request<pb::GetUserQuotaRequest>,
    ) -> Result<Response<pb::UserQuota>, Status> {
        let user = req.into_inner().user;
        let ctrl = self.ctrl.clone();
        let (rec, _) = tokio::task::spawn_blocking(move || ctrl.get(&user))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(to_status)?;
        Ok(Response::new(user_quota(&self.ctrl, &rec)))
    }
}
