//! The S3 filesystem: buckets (and prefixes) of an object store as folders.
//!
//! Split like mountpoint-s3: [`store::ObjectStore`] is the only door to S3
//! (real: [`s3client::S3Store`]; for tests, behind the `test-util` feature
//! as mountpoint-s3's mock client is: the in-memory `fake::MemStore` and the
//! fault-injecting `faults::FaultyStore`); [`fs::S3Fs`] is the filesystem
//! core, generic over the store and testable without a kernel, reading
//! through the mount's shared [`blocks::Blocks`] (one fetch per block for
//! every reader of an object version); [`fuse`] only translates between
//! fuser and the core; [`error`] holds the one error→errno mapping.

pub mod blocks;
pub mod cache;
mod confine;
pub mod credentials;
pub mod error;
#[cfg(any(test, feature = "test-util"))]
pub mod fake;
#[cfg(any(test, feature = "test-util"))]
pub mod faults;
pub mod fs;
pub mod fuse;
pub mod inode;
pub mod layer;
pub mod listing;
pub mod memory;
pub mod metrics;
pub mod prefetch;
pub mod s3client;
pub mod session;
pub mod store;
pub mod takeover;
pub mod upload;
