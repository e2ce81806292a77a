//! `hubfs mount <filesystem> ...`: run one FUSE filesystem.
//!
//! Without `--foreground` the command forks, the child serves the mount and
//! the parent exits once the mount answers (or with the child's error), like
//! mountpoint-s3 and goofys ([`super::daemon`]). The CSI node service runs
//! `--foreground` child processes instead, so it can watch them. Each
//! filesystem's arguments live in their own module (`mount_s3`,
//! `mount_home`); this one only dispatches.

use std::process::ExitCode;

use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct MountArgs {
    #[command(subcommand)]
    pub fs: MountKind,
}

#[derive(Subcommand, Debug)]
pub enum MountKind {
    /// Mount S3 buckets (or prefixes) as folders: read-mostly, listing with
    /// one request per 1000 entries, parallel ranged reads.
    S3(super::mount_s3::S3Args),
    /// Mount a user's home through the quota-accounting layer (EDQUOT at
    /// the hard limit, usage reported to the quota controller).
    Home(super::mount_home::HomeArgs),
}

pub fn run(args: MountArgs) -> anyhow::Result<ExitCode> {
    match args.fs {
        MountKind::S3(a) => super::mount_s3::run(a),
        MountKind::Home(a) => super::mount_home::run(a),
    }
}
