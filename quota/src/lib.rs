//! Quota accounting for hubfs homes.
//!
//! Everything that decides how much a user stores and what happens about it:
//! the user key encoding shared by every component that names a home on disk,
//! and (as they land) the usage walker, quota records, the state machine, the
//! graded overquota policy, the hub client and the controller.

pub mod events;
pub mod size;
pub mod walker;
pub mod userkey;
pub mod clock;
pub mod config;
pub mod lease;
pub mod policy;
pub mod record;
pub mod state;
pub mod store;
pub mod hub;
pub mod notify;
pub mod metrics;
pub mod controller;
pub mod grpc;
pub mod http;

pub use size::{format_size, parse_size, SizeError};
pub use userkey::{EncodeError, UserKey};
