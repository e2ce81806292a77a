//! `hubfs`: one binary, one subcommand per component, so a single container
//! image serves the CSI driver, the FUSE mounts, the quota controller and the
//! admin and user tools.
//!
//! Each subcommand lives in `cmd/<name>.rs` and builds its own runtime: `mount`
//! must be able to daemonize (fork) before any thread exists.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "hubfs",
    version,
    about = "Storage for JupyterHub: homes with a real quota, S3 buckets as folders",
    propagate_version = true
)]
struct Cli {
    #[command(flatten)]
    log: hubfs::logging::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the CSI Identity, Controller and Node services on a unix socket.
    Csi(cmd::csi::CsiArgs),
    /// Measure directory usage the way the quota controller does (parallel walk).
    Du(cmd::du::DuArgs),
    /// Mount a FUSE filesystem: `mount s3` shows S3 buckets as folders.
    Mount(cmd::mount::MountArgs),
    /// Own the node's FUSE servers so they outlive CSI plugin restarts (own container).
    Mounter(cmd::mounter::MounterArgs),
    /// Run the quota controller: usage reports (gRPC), scheduled walks, states, hub enforcement.
    Controller(cmd::controller::ControllerArgs),
    /// Show a user's quota in plain words (notebook terminal); exit code reflects the state.
    CheckQuota(cmd::check_quota::CheckQuotaArgs),
    /// The graded overquota policy: dry run by default, --run, --repeat, --show-actions.
    Overquota(cmd::overquota::OverquotaArgs),
    /// Run hubfs on this machine with an embedded S3 server: a bucket and a home with a quota.
    Demo(cmd::demo::DemoArgs),
    /// The unmount guardian a dropped FUSE server started by hand runs (internal).
    #[command(hide = true)]
    UnmountGuard(cmd::unmount_guard::UnmountGuardArgs),
}

fn main() -> ExitCode {
    let mut argv = std::env::args_os();
    let argv0 = argv.next().unwrap_or_default();
    if cmd::mount_helper::is_helper(&argv0) {
        // mount(8) runs `mount.fuse.hubfs-<kind>` for `mount -o remount`.
        let name = std::path::Path::new(&argv0).file_name().unwrap_or_default();
        return cmd::mount_helper::run(&name.to_string_lossy(), &argv.collect::<Vec<_>>());
    }
    let cli = Cli::parse();
    let mut log = cli.log.clone();
    if matches!(cli.command, Command::Demo(_))
        && std::env::var_os("RUST_LOG").is_none()
        && log.log_level == "info"
    {
        // The embedded S3 server logs every refused request as an error; the
        // demo's terminal is for the guide and the live usage.
        log.log_level = "info,s3s=off,s3s_fs=off".into();
    }
    if let Err(e) = hubfs::logging::init(&log) {
        eprintln!("hubfs: cannot set up logging: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Csi(args) => cmd::csi::run(args),
        Command::Du(args) => cmd::du::run(args),
        Command::Mount(args) => cmd::mount::run(args),
        Command::Mounter(args) => cmd::mounter::run(args),
        Command::Controller(args) => cmd::controller::run(args),
        Command::CheckQuota(args) => cmd::check_quota::run(args),
        Command::Overquota(args) => cmd::overquota::run(args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::UnmountGuard(args) => cmd::unmount_guard::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hubfs: {e:#}");
            ExitCode::FAILURE
        }
    }
}
