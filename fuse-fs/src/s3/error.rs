//! Errors of the S3 filesystem and the one place they become errno values.
//!
//! The store reports what S3 said ([`ObjectError`]); the filesystem core adds
//! what the kernel asked for that cannot be done ([`FsError`]). The fuser
//! adapter only ever calls [`FsError::errno`].

use thiserror::Error;

/// What went wrong talking to an object store.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ObjectError {
    #[error("no such key or bucket")]
    NotFound,
    #[error("access denied: {0}")]
    AccessDenied(String),
    /// 500/503/SlowDown or a timeout that survived every retry.
    #[error("transient S3 failure after retries: {0}")]
    Transient(String),
    #[error("requested range not satisfiable")]
    InvalidRange,
    /// The object was replaced since it was opened (412 to an If-Match GET).
    #[error("the object changed since it was opened")]
    Changed,
    #[error("S3 request failed: {0}")]
    Other(String),
}

impl ObjectError {
    /// Worth another attempt (a fresh request may succeed).
    pub fn is_retryable(&self) -> bool {
        matches!(self, ObjectError::Transient(_))
    }
}

/// A filesystem operation that failed.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("read-only filesystem (mount with --allow-writes)")]
    ReadOnly,
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    #[error("operation not supported on S3: {0}")]
    Unsupported(&'static str),
    #[error("rename is not supported on S3")]
    CrossDevice,
    #[error("file exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("name too long")]
    NameTooLong,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("stale file handle")]
    BadHandle,
    #[error(transparent)]
    Store(#[from] ObjectError),
}

impl FsError {
    /// The errno the kernel receives for this error: the single mapping.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::ReadOnly => libc::EROFS,
            FsError::NotPermitted(_) => libc::EPERM,
            FsError::Unsupported(_) => libc::EOPNOTSUPP,
            FsError::CrossDevice => libc::EXDEV,
            FsError::Exists => libc::EEXIST,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::BadHandle => libc::EBADF,
            FsError::Store(ObjectError::NotFound) => libc::ENOENT,
            FsError::Store(ObjectError::AccessDenied(_)) => libc::EACCES,
            FsError::Store(ObjectError::Transient(_)) => libc::EIO,
            FsError::Store(ObjectError::InvalidRange) => libc::EINVAL,
            // What NFS says when a file changed under an open handle: the
            // reader can reopen and get the new version whole.
            FsError::Store(ObjectError::Changed) => libc::ESTALE,
            FsError::Store(ObjectError::Other(_)) => libc::EIO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_distinct_errnos() {
        assert_eq!(FsError::from(ObjectError::NotFound).errno(), libc::ENOENT);
        assert_eq!(
            FsError::from(ObjectError::AccessDenied("x".into())).errno(),
            libc::EACCES
        );
        assert_eq!(
            FsError::from(ObjectError::Transient("503".into())).errno(),
            libc::EIO
        );
        assert_eq!(FsError::from(ObjectError::Changed).errno(), libc::ESTALE);
        assert!(!ObjectError::Changed.is_retryable());
        assert_eq!(FsError::CrossDevice.errno(), libc::EXDEV);
        assert_eq!(FsError::Unsupported("x").errno(), libc::EOPNOTSUPP);
        assert_eq!(FsError::ReadOnly.errno(), libc::EROFS);
    }

    #[test]
    fn only_transient_errors_are_retried() {
        assert!(ObjectError::Transient("503".into()).is_retryable());
        assert!(!ObjectError::NotFound.is_retryable());
        assert!(!ObjectError::AccessDenied(String::new()).is_retryable());
    }
}
