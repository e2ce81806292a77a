//! The S3 filesystem: buckets (and prefixes) of an object store as folders.
//!
//! Split like mountpoint-s3: [`store::ObjectStore`] is the only door to S3
//! (real: [`s3client::S3Store`], fake: [`fake::MemStore`], faulty:
//! [`faults::FaultyStore`]); [`fs::S3Fs`] is the filesystem core, generic over
//! the store and testable without a kernel; [`fuse`] only translates between
//! fuser and the core; [`error`] holds the one error→errno mapping.

pub mod error;
pub mod fake;
pub mod faults;
pub mod fs;
pub mod fuse;
pub mod inode;
pub mod listing;
pub mod metrics;
pub mod prefetch;
pub mod s3client;
pub mod session;
pub mod store;
pub mod upload;
