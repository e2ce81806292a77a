//! Quota accounting for hubfs homes.
//!
//! Everything that decides how much a user stores and what happens about it:
//! the user key encoding shared by every component that names a home on disk,
//! quota records in the seed's `quota.yaml` format,
//! the state machine and graded overquota policy, the hub client, Kubernetes
//! events, and the controller that ties them together.

pub mod clock;
pub mod config;
pub mod controller;
pub mod events;
pub mod grpc;
pub mod http;
pub mod hub;
pub mod identity;
pub mod lease;
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
