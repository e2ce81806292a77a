//! Driver errors and their one mapping to gRPC status codes.
//!
//! Every service function returns [`DriverError`]; only `From<DriverError> for
//! tonic::Status` decides the code a CO sees, so the CSI error-code table lives
//! in one place.

use std::path::PathBuf;

use crate::mounts::MountError;

/// Anything that can go wrong while serving a CSI call.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// A required request field is empty.
    #[error("missing required field `{0}`")]
    Missing(&'static str),
    /// A field is present but unusable (malformed id, hostile path, bad parameter).
    #[error("{0}")]
    Invalid(String),
    /// The volume (or its directory) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with an existing volume or publication.
    #[error("{0}")]
    AlreadyExists(String),
    /// Another operation on the same volume is in flight.
    #[error("an operation on {0} is already in progress")]
    Busy(String),
    /// The call is valid but the volume is not in a state that allows it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The requested capacity cannot be provided.
    #[error("{0}")]
    OutOfRange(String),
    /// The call is valid CSI but hubfs does not provide it.
    #[error("{0}")]
    Unimplemented(String),
    /// Something the call needs (the Kubernetes API, the hubfs mounter)
    /// cannot answer now: the CO retries.
    #[error("{0}")]
    Unavailable(String),
    /// A mount syscall failed.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// A filesystem operation on a path failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl DriverError {
    /// Wraps an I/O error with the operation and path, so the message names both.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

impl From<DriverError> for tonic::Status {
    fn from(e: DriverError) -> Self {
        use tonic::Code;
        let code = match &e {
            DriverError::Missing(_) | DriverError::Invalid(_) => Code::InvalidArgument,
            DriverError::NotFound(_) => Code::NotFound,
            DriverError::AlreadyExists(_) => Code::AlreadyExists,
            DriverError::Busy(_) => Code::Aborted,
            DriverError::FailedPrecondition(_) => Code::FailedPrecondition,
            DriverError::OutOfRange(_) => Code::OutOfRange,
            DriverError::Unimplemented(_) => Code::Unimplemented,
            DriverError::Unavailable(_) => Code::Unavailable,
            DriverError::Mount(m) if m.is_permission() => Code::PermissionDenied,
            DriverError::Mount(_) => Code::Internal,
            DriverError::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => Code::NotFound,
                std::io::ErrorKind::PermissionDenied => Code::PermissionDenied,
                _ => Code::Internal,
            },
        };
        tonic::Status::new(code, e.to_string())
    }
}

/// Result type of the driver's service functions.
pub type Result<T, E = DriverError> = std::result::Result<T, E>;
