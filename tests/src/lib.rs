//! Harness for the end-to-end tests in `tests/tests/`: starting the real
//! `hubfs` binary, connecting to it over its unix socket as kubelet would, and
//! checking what only root can check.

pub mod csi;
pub mod garage;
pub mod home;
pub mod hub;
