//! The `hubfs.quota.v1` gRPC service: nodes report usage, read back quotas.
//! Controller errors become gRPC statuses here and only here.

use std::sync::Arc;

use hubfs_proto::quota as pb;
use hubfs_proto::quota::quota_server::{Quota, QuotaServer};
use tonic::{Request, Response, Status};

use crate::controller::{Controller, ControllerError, Report};
use crate::store::StoreError;

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
        ControllerError::Internal(_) => Status::internal(e.to_string()),
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
            .map(|r| Report::from_proto(r, now))
            .collect::<Result<Vec<_>, _>>()
            .map_err(to_status)?;
        let asked: Vec<String> = req.reports.iter().map(|r| r.user.clone()).collect();
        let (accepted, duplicates, recs) = self
            .ctrl
            .report(req.node_id, reports)
            .await
            .map_err(to_status)?;
        let mut quotas: Vec<pb::UserQuota> = recs.iter().map(|r| self.ctrl.to_proto(r)).collect();
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
        Ok(Response::new(self.ctrl.to_proto(&rec)))
    }
}
