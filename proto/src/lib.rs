//! Wire types and gRPC stubs for the two protocols hubfs speaks.
//!
//! `csi` is the Container Storage Interface v1 (package `csi.v1`), written from
//! the specification with the same field numbers so that kubelet and the CSI
//! sidecars talk to us unchanged. `quota` is our own `hubfs.quota.v1`: nodes
//! report usage to the quota controller and read back enforcement decisions.
//! Both are generated at build time (see `build.rs`).

/// CSI v1 (`csi.v1`).
pub mod csi {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("csi.v1");
}

/// hubfs quota reporting (`hubfs.quota.v1`).
pub mod quota {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("hubfs.quota.v1");
}

pub use prost_types;
