//! Quota accounting for hubfs homes: how much each user stores, and what
//! happens about it.
//!
//! What lives here: the user key encoding shared by every component that
//! names a home on disk (`userkey`), quota records in the efs-quota
//! `quota.yaml` format (`record`, with what that format is) and their store
//! on a shared directory (`store`, `lease`), the state machine and graded
//! overquota policy (`state`, `levels`, `policy`, `config`), the one size
//! parser and formatter (`size`), the controller that applies usage reports,
//! walks homes on schedule and stops servers (`controller`), its gRPC and HTTP
//! APIs (`grpc`, `http`), and its outside systems behind traits: time
//! (`clock`), the JupyterHub API (`hub`), Kubernetes Events (`events`) and
//! notices to people (`notify`). The fakes of those traits are compiled only
//! for tests (the `test-util` feature).
//!
//! What must not: FUSE, mount syscalls or anything else that needs a kernel
//! mount (those are `hubfs-fuse` and the driver's), and the usage walker
//! (the leaf crate `hubfs-walker`, which this crate uses). A node reaches the
//! controller only through `hubfs.quota.v1` (`hubfs-proto`).

pub mod clock;
pub mod config;
pub mod controller;
pub mod events;
pub mod grpc;
pub mod http;
pub mod hub;
pub mod identity;
pub mod lease;
pub mod levels;
pub mod live;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod record;
pub mod size;
pub mod slugs;
pub mod state;
pub mod store;
pub mod userkey;

pub use size::{format_size, parse_size, SizeError};
pub use userkey::{EncodeError, UserKey};
