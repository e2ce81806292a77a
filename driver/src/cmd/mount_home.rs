//! `hubfs mount home`: serve one user's home through the accounting layer.
//!
//! The CSI node service starts one of these per published home volume with
//! `--foreground` and stops it with SIGTERM at unpublish; an admin can run it
//! by hand (it daemonizes then, like `hubfs mount s3`). The process lives as
//! long as the mount: SIGTERM/SIGINT unmount it, and an outside `umount`
//! ends the process after the last usage report is sent.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use hubfs_fuse::home::{self, GrpcSink, HomeOptions, Limits, UsageSink};

/// Mount a user's home directory through the quota-accounting FUSE layer.
///
/// Every write is accounted as it happens; a write, create or extend past
/// --quota fails with EDQUOT ("Disk quota exceeded"); deletes and truncates
/// always work. `df MOUNTPOINT` shows the quota as the size.
#[derive(Args, Debug, Clone, PartialEq)]
#[command(
    after_help = "EXAMPLES:\n  hubfs mount home --user alice --quota 200GiB /share/homes/alice /home/jovyan\n  hubfs mount home -f --user bob --quota 10G --inode-quota 1000000 --report-to http://hubfs-quota:9500 /share/homes/bob /mnt/bob\n\nUnmount with `umount MOUNTPOINT` or by sending SIGTERM/SIGINT to the process."
)]
pub struct HomeArgs {
    /// The user's directory on the share.
    pub source: PathBuf,
    /// Where to mount it.
    pub mountpoint: PathBuf,
    /// The hub user name (as reported to the quota controller).
    #[arg(long)]
    pub user: String,
    /// Hard limit in bytes; units accepted (100MiB, 200GiB, 1.5T).
    #[arg(long, value_parser = parse_size)]
    pub quota: u64,
    /// Hard limit on files + directories (default: none).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub inode_quota: Option<u64>,
    /// Fraction of the quota above which usage is reported as nearing the limit.
    #[arg(long, default_value_t = 0.8, value_parser = parse_fraction)]
    pub warn_fraction: f64,
    /// Report usage to this quota controller (hubfs.quota.v1), e.g. http://hubfs-quota:9500.
    #[arg(long, value_name = "ENDPOINT")]
    pub report_to: Option<String>,
    /// Node name sent with reports (default: $NODE_NAME, then the host name).
    #[arg(long, env = "NODE_NAME")]
    pub node_id: Option<String>,
    /// Seconds between usage reports.
    #[arg(long, default_value = "5", value_parser = super::values::seconds)]
    pub report_interval: Duration,
    /// Give up the mount-time walk after this many seconds (partial figure).
    #[arg(long, default_value = "3600", value_parser = super::values::seconds)]
    pub walk_timeout: Duration,
    /// Threads serving FUSE requests.
    #[arg(long, default_value_t = 4, value_parser = super::values::threads::<64>)]
    pub fuse_threads: usize,
    /// Serve read-only opens through the daemon too, instead of handing them
    /// to the kernel as passthrough files (Linux >= 6.9; used where available).
    #[arg(long)]
    pub no_passthrough: bool,
    /// Stay in the foreground instead of daemonizing.
    #[arg(short, long)]
    pub foreground: bool,
    /// Mount options for the kernel, comma-separated: ro, noatime, relatime, strictatime, lazytime, nodiratime, diratime, noexec, sync, dirsync, nosuid, nodev.
    #[arg(short = 'o', long = "options", value_name = "OPTS", value_delimiter = ',', value_parser = |s: &str| home::session::mount_option(s).map(|_| s.to_string()))]
    pub options: Vec<String>,
    /// Listen on this unix socket for a new server that takes the mount over
    /// (an upgrade with `--take-over`); root only.
    #[arg(long, value_name = "SOCKET")]
    pub control: Option<PathBuf>,
    /// Take over the live mount of the server listening on SOCKET (its
    /// `--control`) instead of mounting: same FUSE connection, open files
    /// and usage; that server exits without unmounting.
    #[arg(long, value_name = "SOCKET")]
    pub take_over: Option<PathBuf>,
    /// Start no unmount guardian (a root process with CAP_SYS_ADMIN only
    /// that unmounts when this server stops or dies): whoever started this
    /// server unmounts for it (the mounter does).
    #[arg(long)]
    pub no_guardian: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    match hubfs_quota::parse_size(s) {
        Ok(0) => Err("a quota of 0 bytes would refuse every write".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| *v > 0.0 && *v <= 1.0)
        .ok_or_else(|| format!("{s:?} is not a fraction in (0, 1]"))
}

impl HomeArgs {
    pub fn options(&self) -> anyhow::Result<HomeOptions> {
        if self.user.is_empty() || self.user.len() > 256 || self.user.chars().any(char::is_control)
        {
            bail!("--user must be a non-empty user name without control characters");
        }
        let mut o = HomeOptions::new(self.source.clone(), self.mountpoint.clone(), &self.user);
        o.limits = Limits {
            bytes: Some(self.quota),
            inodes: self.inode_quota,
            warn_fraction: self.warn_fraction,
        };
        o.report_interval = self.report_interval;
        o.walk_timeout = self.walk_timeout;
        o.fuse_threads = self.fuse_threads;
        o.passthrough = !self.no_passthrough;
        o.mount_options = self.options.clone();
        o.control = self.control.clone();
        Ok(o)
    }

    fn sink(&self) -> anyhow::Result<Option<Arc<dyn UsageSink>>> {
        let Some(endpoint) = &self.report_to else {
            return Ok(None);
        };
        let node = match &self.node_id {
            Some(n) => n.clone(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "unknown-node".into()),
        };
        let sink = GrpcSink::new(endpoint, &node, &self.user).context("--report-to")?;
        Ok(Some(Arc::new(sink)))
    }
}

pub fn run(args: HomeArgs) -> anyhow::Result<ExitCode> {
    let opts = args.options()?;
    if !opts.source.is_dir() {
        bail!("source {} is not a directory", opts.source.display());
    }
    if !opts.mountpoint.is_dir() {
        bail!(
            "mountpoint {} is not a directory",
            opts.mountpoint.display()
        );
    }
    if args.foreground {
        // The line a mounter taking servers over waits for (mounter::takeover).
        serve(&args, opts, hubfs::mounter::takeover::say_serving)?;
        return Ok(ExitCode::SUCCESS);
    }
    super::daemon::daemonize(|ready| serve(&args, opts, ready))
}

/// Mounts and serves until SIGTERM/SIGINT or an outside unmount.
fn serve(args: &HomeArgs, opts: HomeOptions, ready: impl FnOnce()) -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    // Modes asked for by callers are applied with the caller's umask by the
    // layer itself; the daemon's own umask must not narrow them further.
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    // Block the stop signals before any thread starts so that every thread
    // inherits the mask and only the wait below receives them.
    let mut stop = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        stop.add(s);
    }
    stop.thread_block().context("blocking signals")?;
    let sink = args.sink()?;
    // Started as root (the mounter, or by hand), the server drops to the
    // home layer's own list once mounted and serves each request as its
    // caller (docs/home.md); otherwise it serves as itself.
    let confine = nix::unistd::geteuid().is_root().then(|| home::Confinement {
        privileges: home::server_privileges(opts.passthrough),
        guardian: (!args.no_guardian).then(super::unmount_guard::command),
    });
    let mount = match (&args.take_over, confine) {
        (Some(from), confine) => {
            let r = match confine {
                Some(c) => home::take_over_confined(&opts, sink, from, c),
                None => home::take_over(&opts, sink, from),
            };
            r.with_context(|| {
                format!(
                    "taking over {} from {}",
                    opts.mountpoint.display(),
                    from.display()
                )
            })?
        }
        (None, Some(c)) => home::mount_confined(&opts, sink, c)
            .with_context(|| format!("mounting {}", opts.mountpoint.display()))?,
        (None, None) => home::mount(&opts, sink)
            .with_context(|| format!("mounting {}", opts.mountpoint.display()))?,
    };
    tracing::info!(user = %opts.user, source = %opts.source.display(), mountpoint = %opts.mountpoint.display(), quota = ?opts.limits.bytes, taken_over = args.take_over.is_some(), "home mounted");
    ready();
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: 200_000_000,
    };
    loop {
        if mount.handed_over() {
            tracing::info!("handed over to a new server; exiting without unmounting");
            mount.leave();
            return Ok(());
        }
        // SAFETY: sigtimedwait with a valid signal set and timeout.
        let sig = unsafe { libc::sigtimedwait(stop.as_ref(), std::ptr::null_mut(), &timeout) };
        if sig > 0 {
            tracing::info!(signal = sig, "stopping");
            break;
        }
        if mount.finished() {
            tracing::info!("unmounted from outside");
            break;
        }
    }
    mount.unmount().context("unmounting")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        home: HomeArgs,
    }

    fn parse(args: &[&str]) -> Result<HomeArgs, clap::Error> {
        let mut all = vec!["home"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).map(|c| c.home)
    }

    #[test]
    fn sizes_with_units_and_defaults() {
        let a = parse(&["--user", "alice", "--quota", "100MiB", "/src", "/mnt"]).unwrap();
        let o = a.options().unwrap();
        assert_eq!(o.limits.bytes, Some(100 << 20));
        assert_eq!(o.limits.inodes, None);
        assert_eq!(o.limits.warn_fraction, 0.8);
        assert!(!a.foreground);
        let a = parse(&[
            "-f",
            "--user",
            "b",
            "--quota",
            "200GiB",
            "--inode-quota",
            "5",
            "/s",
            "/m",
        ])
        .unwrap();
        assert_eq!(a.options().unwrap().limits.bytes, Some(200 << 30));
        assert_eq!(a.inode_quota, Some(5));
        assert!(a.foreground);
        assert_eq!(
            parse(&["--user", "c", "--quota", "4096", "/s", "/m"])
                .unwrap()
                .quota,
            4096
        );
    }

    #[test]
    fn hostile_values_get_clear_errors() {
        assert!(parse(&["--user", "a", "--quota", "lots", "/s", "/m"]).is_err());
        assert!(parse(&["--user", "a", "--quota", "0", "/s", "/m"]).is_err());
        assert!(parse(&[
            "--user",
            "a",
            "--quota",
            "1G",
            "--inode-quota",
            "0",
            "/s",
            "/m"
        ])
        .is_err());
        assert!(parse(&[
            "--user",
            "a",
            "--quota",
            "1G",
            "--warn-fraction",
            "2",
            "/s",
            "/m"
        ])
        .is_err());
        assert!(
            parse(&["--quota", "1G", "/s", "/m"]).is_err(),
            "--user is required"
        );
        let bad = parse(&["--user", "a\nb", "--quota", "1G", "/s", "/m"]).unwrap();
        assert!(bad.options().is_err());
    }
}
