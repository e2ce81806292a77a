//! `hubfs unmount-guard`: the unmount guardian of a dropped server started
//! by hand (hidden; the server starts it, see `hubfs_sandbox::guardian`).
//!
//! Its stdin is the socket to its server. It drops to uid 0 with
//! `CAP_SYS_ADMIN` only and `no_new_privs`, serves no request, and
//! unmounts the server's mount when asked or when the server dies.

use std::os::fd::AsFd;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

#[derive(Args, Debug)]
pub struct UnmountGuardArgs {}

pub fn run(_args: UnmountGuardArgs) -> anyhow::Result<ExitCode> {
    let link = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .context("the guardian's stdin must be its server's socket")?;
    hubfs_sandbox::guardian::serve(link.into()).context("unmount guardian")?;
    Ok(ExitCode::SUCCESS)
}

/// The command a server starts as its guardian: this very binary
/// (`/proc/self/exe`, which works even if the file was replaced by an
/// upgrade since) with the hidden subcommand.
pub fn command() -> std::process::Command {
    let mut c = std::process::Command::new("/proc/self/exe");
    c.arg("unmount-guard");
    c
}
