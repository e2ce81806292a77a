//! How the policy's `inform_user` and `inform_admin` actions reach people.
//! Today that is a structured log line (collected by the cluster's log
//! pipeline, as efs-quota's DataDog view did) plus the message kept in the
//! record for `check-quota` and the spawn hook; mail or chat would be one more
//! implementation of the trait.

pub trait Notifier: Send + Sync + std::fmt::Debug {
    fn inform_user(&self, user: &str, message: &str);
    fn inform_admin(&self, user: &str, message: &str);
}

/// Logs notices under the `hubfs::notice` target.
#[derive(Debug, Default)]
pub struct LogNotifier;

impl Notifier for LogNotifier {
    fn inform_user(&self, user: &str, message: &str) {
        tracing::warn!(target: "hubfs::notice", %user, audience = "user", "{message}");
    }
    fn inform_admin(&self, user: &str, message: &str) {
        tracing::warn!(target: "hubfs::notice", %user, audience = "admin", "{message}");
    }
}

#[cfg(any(test, feature = "test-util"))]
/// Keeps notices for tests to inspect (`test-util` feature).
#[derive(Debug, Default)]
pub struct RecordingNotifier {
    /// (audience, user, message)
    pub sent: parking_lot::Mutex<Vec<(String, String, String)>>,
}

#[cfg(any(test, feature = "test-util"))]
impl Notifier for RecordingNotifier {
    fn inform_user(&self, user: &str, message: &str) {
        self.sent
            .lock()
            .push(("user".into(), user.into(), message.into()));
    }
    fn inform_admin(&self, user: &str, message: &str) {
        self.sent
            .lock()
            .push(("admin".into(), user.into(), message.into()));
    }
}
