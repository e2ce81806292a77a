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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_refusals_are_edquot() {
        assert_eq!(HomeError::from(QuotaError::OverLimit).errno(), libc::EDQUOT);
        assert_eq!(HomeError::from(QuotaError::Cleanup).errno(), libc::EDQUOT);
        assert_eq!(HomeError::Os(libc::ENOENT).errno(), libc::ENOENT);
    }
}
