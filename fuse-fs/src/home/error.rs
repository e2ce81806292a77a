//! Errors of the home layer and their one mapping to errno.

use super::usage::QuotaError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HomeError {
    /// A system call on the backing directory failed with this errno.
    #[error("{}", std::io::Error::from_raw_os_error(*.0))]
    Os(i32),
    #[error(transparent)]
    Quota(#[from] QuotaError),
}

impl HomeError {
    /// The errno the kernel returns to the caller. Quota refusals are
    /// EDQUOT, what a native filesystem with quotas returns.
    pub fn errno(&self) -> i32 {
        match self {
            HomeError::Os(e) => *e,
            HomeError::Quota(_) => libc::EDQUOT,
        }
    }
}

impl From<nix::errno::Errno> for HomeError {
    fn from(e: nix::errno::Errno) -> Self {
        HomeError::Os(e as i32)
    }
}

impl From<rustix::io::Errno> for HomeError {
    fn from(e: rustix::io::Errno) -> Self {
        HomeError::Os(e.raw_os_error())
    }
}

impl From<std::io::Error> for HomeError {
    fn from(e: std::io::Error) -> Self {
        HomeError::Os(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_refusals_are_edquot() {
        assert_eq!(HomeError::from(QuotaError::OverLimit).errno(), libc::EDQUOT);
        assert_eq!(HomeError::from(QuotaError::Cleanup).errno(), libc::EDQUOT);
        assert_eq!(HomeError::Os(libc::ENOENT).errno(), libc::ENOENT);
        assert_eq!(
            HomeError::from(nix::errno::Errno::EFBIG).errno(),
            libc::EFBIG
        );
        assert_eq!(
            HomeError::from(rustix::io::Errno::NOTSUP).errno(),
            libc::EOPNOTSUPP
        );
    }
}
