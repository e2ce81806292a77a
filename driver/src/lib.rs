//! The hubfs CSI driver: Identity, Controller and Node services, and what they
//! stand on (volume ids, the mounter, usage statistics).
//!
//! The gRPC services are thin: they validate the request, take the per-volume
//! operation guard, and call plain functions over the [`mounts::Mounts`]
//! trait, so every RPC can be unit-tested without root with the fake mounter
//! (`test-util` feature) and integration-tested as root with real bind mounts.
//!
//! What lives here: the CSI services and their error mapping to
//! `tonic::Status` ([`error`]), volume ids and StorageClass parameters,
//! publishing homes and buckets on a node (starting and watching the FUSE
//! servers), the mount syscalls behind [`mounts::Mounts`], and logging set-up.
//! The `hubfs` binary (`src/main.rs`, `src/cmd/`) parses arguments and calls
//! into this library and the others; `anyhow` is used there only.
//!
//! What must not: filesystem behaviour (it belongs to `hubfs-fuse`), quota
//! decisions, records or the hub client (`hubfs-quota`), the usage walk
//! (`hubfs-walker`), wire types (`hubfs-proto`).
//! No other hubfs crate depends on this one; see docs/architecture.md.

pub mod claims;
pub mod controller;
pub mod digest;
pub mod error;
pub mod homes;
pub mod identity;
pub mod inflight;
pub mod logging;
pub mod mounter;
pub mod mounts;
pub use hubfs_fuse::mountinfo;
pub mod node;
pub mod paths;
pub mod pvc;
pub mod server;
pub mod share;
pub mod stats;
pub mod volume;

/// The default CSI driver name (matches `^[a-zA-Z][A-Za-z0-9-._]{0,61}[a-zA-Z]$`).
pub const DEFAULT_DRIVER_NAME: &str = "hubfs.csi.jupyter.org";

/// The version reported by GetPluginInfo.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
