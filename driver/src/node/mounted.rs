//! The words of the `HomeMounted` Event: whose home, and how full it is.
//!
//! `kubectl describe pod` should say at a glance "home of jmiller@stsci.edu
//! mounted: 2.0 GiB of 1 GiB used (200%), cleanup mode". The quota
//! controller knows the hub user (also for a volume provisioned under a
//! KubeSpawner slug before hubfs read the annotation), the measured usage
//! and the enforcement, so it is asked (briefly; an unreachable controller
//! only makes the note shorter, never the mount slower than [`ASK_TIMEOUT`]).

use std::time::Duration;

use hubfs_proto::quota::{quota_client::QuotaClient, Enforcement, GetUserQuotaRequest, UserQuota};
use hubfs_quota::format_size;

/// How long a mount waits for the controller's answer at most.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// What is known about a home at mount time.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AtMount {
    /// The hub user's name.
    pub user: String,
    pub used: Option<u64>,
    pub quota: Option<u64>,
    pub enforcement: Option<Enforcement>,
}

/// Asks the controller at `endpoint` for `user` (from a blocking thread of
/// the runtime; `None` without a runtime, an endpoint, or an answer in time).
pub fn ask_controller(endpoint: Option<&str>, user: &str) -> Option<UserQuota> {
    let endpoint = endpoint?;
    let handle = tokio::runtime::Handle::try_current().ok()?;
    let req = GetUserQuotaRequest { user: user.into() };
    let ep = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .ok()?
        .connect_timeout(ASK_TIMEOUT)
        .timeout(ASK_TIMEOUT);
    let answer = handle.block_on(async move {
        let channel = ep.connect().await.ok()?;
        QuotaClient::new(channel).get_user_quota(req).await.ok()
    });
    if answer.is_none() {
        tracing::debug!(%user, "the quota controller did not answer; the mount note says less");
    }
    answer.map(|r| r.into_inner())
}

impl AtMount {
    /// From the controller's answer, falling back to what the node knows.
    pub fn new(
        user: &str,
        answer: Option<UserQuota>,
        used: Option<u64>,
        quota: Option<u64>,
    ) -> Self {
        match answer {
            Some(q) => Self {
                user: if q.user.is_empty() {
                    user.to_owned()
                } else {
                    q.user
                },
                used: q
                    .measured_at
                    .is_some()
                    .then_some(q.used_bytes.max(0) as u64)
                    .or(used),
                quota: (q.quota_bytes > 0)
                    .then_some(q.quota_bytes as u64)
                    .or(quota),
                enforcement: Enforcement::try_from(q.enforcement).ok(),
            },
            None => Self {
                user: user.to_owned(),
                used,
                quota,
                enforcement: None,
            },
        }
    }

    /// "home of jmiller@stsci.edu mounted: 2.0 GiB of 1 GiB used (200%), cleanup mode".
    pub fn note(&self, read_only: bool) -> String {
        let mut note = format!(
            "home of {} mounted{}",
            self.user,
            if read_only { " read-only" } else { "" }
        );
        match (self.used, self.quota) {
            (Some(u), Some(q)) if q > 0 => note.push_str(&format!(
                ": {} of {} used ({:.0}%)",
                format_size(u),
                format_size(q),
                u as f64 * 100.0 / q as f64
            )),
            (_, Some(q)) => note.push_str(&format!(", quota {}", format_size(q))),
            _ => {}
        }
        match self.enforcement {
            Some(Enforcement::Cleanup) => note.push_str(", cleanup mode"),
            Some(Enforcement::Blocked) => note.push_str(", blocked"),
            _ => {}
        }
        note
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn the_note_names_the_hub_user_usage_and_mode() {
        let answer = UserQuota {
            user: "jmiller@stsci.edu".into(),
            quota_bytes: GIB as i64,
            used_bytes: 2 * GIB as i64,
            enforcement: Enforcement::Cleanup as i32,
            measured_at: Some(hubfs_proto::prost_types::Timestamp::default()),
            ..Default::default()
        };
        let m = AtMount::new(
            "jmiller-stsci-edu---77689c6d",
            Some(answer),
            None,
            Some(5 * GIB),
        );
        assert_eq!(
            m.note(false),
            "home of jmiller@stsci.edu mounted: 2 GiB of 1 GiB used (200%), cleanup mode"
        );
        // Never measured: the quota only, from the node when the controller has none.
        let unmeasured = UserQuota {
            user: "bob".into(),
            ..Default::default()
        };
        let m = AtMount::new("bob", Some(unmeasured), None, Some(GIB));
        assert_eq!(m.note(true), "home of bob mounted read-only, quota 1 GiB");
        // No controller: what the node knows.
        let m = AtMount::new("bob", None, Some(GIB / 2), Some(GIB));
        assert_eq!(
            m.note(false),
            "home of bob mounted: 512 MiB of 1 GiB used (50%)"
        );
        assert_eq!(ask_controller(None, "bob"), None);
    }
}
