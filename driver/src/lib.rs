//! The hubfs CSI driver: Identity, Controller and Node services, and what they
//! stand on (volume ids, the mounter, usage statistics).
//!
//! The gRPC services are thin: they validate the request, take the per-volume
//! operation guard, and call plain functions over the [`mounter::Mounter`]
//! trait, so every RPC can be unit-tested without root with the fake mounter
//! and integration-tested as root with real bind mounts.

pub mod authority;
pub mod claims;
pub mod controller;
pub mod error;
pub mod homes;
pub mod identity;
pub mod inflight;
pub mod logging;
pub mod mounter;
pub mod mountinfo;
pub mod node;
pub mod paths;
pub mod server;
pub mod share;
pub mod stats;
pub mod volume;

/// The default CSI driver name (matches `^[a-zA-Z][A-Za-z0-9-._]{0,61}[a-zA-Z]$`).
pub const DEFAULT_DRIVER_NAME: &str = "hubfs.csi.jupyter.org";

/// The version reported by GetPluginInfo.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
