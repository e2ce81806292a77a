//! The FUSE filesystems of hubfs.
//!
//! Two filesystems live here, each a core that can be tested without the
//! kernel plus a thin `fuser` adapter: the S3 filesystem (buckets as folders
//! under `/s3/<bucket>`) and the home layer (a passthrough over a user's
//! directory that accounts usage at write time and enforces the quota).

pub mod handoff;
pub mod home;
pub mod mountinfo;
pub mod s3;
pub mod unmounted;
