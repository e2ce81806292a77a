//! The subcommands of the `hubfs` binary. Each returns the process exit code;
//! errors are `anyhow` here and only here.

pub mod check_quota;
pub mod controller;
pub mod csi;
pub mod daemon;
pub mod demo;
pub mod du;
pub mod mount;
pub mod mount_helper;
pub mod mount_home;
pub mod mount_s3;
pub mod mounter;
pub mod overquota;
pub mod unmount_guard;
pub mod values;
