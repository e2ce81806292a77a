//! Errors of the S3 filesystem and the one place they become errno values.
//!
//! The store reports what S3 said ([`StoreError`]); the filesystem core adds
//! what the kernel asked for that cannot be done ([`FsError`]). The fuser
//! adapter only ever calls [`FsError::errno`].

use thiserror::Error;

/// What went wrong talking to an object store.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum StoreError {
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

impl StoreError {
    /// Worth another attempt (a fresh request may succeed).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Transient(_))
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
    Store(#[from] StoreError),
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
            FsError::Store(StoreError::NotFound) => libc::ENOENT,
            FsError::Store(StoreError::AccessDenied(_)) => libc::EACCES,
            FsError::Store(StoreError::Transient(_)) => libc::EIO,
            FsError::Store(StoreError::InvalidRange) => libc::EINVAL,
            // What NFS says when a file changed under an open handle: the
            // reader can reopen and get the new version whole.
            FsError::Store(StoreError::Changed) => libc::ESTALE,
            FsError::Store(StoreError::Other(_)) => libc::EIO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_distinct_errnos() {
        assert_eq!(FsError::from(StoreError::NotFound).errno(), libc::ENOENT);
        assert_eq!(
            FsError::from(StoreError::AccessDenied("x".into())).errno(),
            libc::EACCES
        );
        assert_eq!(
            FsError::from(StoreError::Transient("503".into())).errno(),
            libc::EIO
        );
        assert_eq!(FsError::from(StoreError::Changed).errno(), libc::ESTALE);
        assert!(!StoreError::Changed.is_retryable());
        assert_eq!(FsError::CrossDevice.errno(), libc::EXDEV);
        assert_eq!(FsError::Unsupported("x").errno(), libc::EOPNOTSUPP);
        assert_eq!(FsError::ReadOnly.errno(), libc::EROFS);
    }

    #[test]
    fn only_transient_errors_are_retried() {
        assert!(StoreError::Transient("503".into()).is_retryable());
        assert!(!StoreError::NotFound.is_retryable());
        assert!(!StoreError::AccessDenied(String::new()).is_retryable());
    }
}
