//! `hubfs mount s3`: the S3 filesystem's command-line arguments and their
//! translation into [`MountOptions`].
//!
//! Sizes use the crate-wide syntax of [`hubfs_quota::parse_size`]: `8Mi` is
//! 8 MiB, `8M` is 8,000,000 bytes, like Kubernetes quantities. The options
//! round-trip through [`MountOptions::args`] (plain byte counts), which is
//! how the CSI node starts a `--foreground` child.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use hubfs_fuse::s3::cache::CacheOptions;
use hubfs_fuse::s3::fs::BucketSource;
use hubfs_fuse::s3::s3client::StaticCredentials;
use hubfs_fuse::s3::session::{self, MountOptions};

/// Mount one or more S3 buckets.
///
/// `hubfs mount s3 BUCKET MOUNTPOINT` shows the bucket's keys as files under
/// MOUNTPOINT ('/' separates folders). With several buckets, each appears as
/// a folder: `hubfs mount s3 a b:data/2024 /s3` gives `/s3/a` and `/s3/b`
/// (the latter showing keys under `data/2024/`).
#[derive(Args, Debug, Clone, PartialEq)]
#[command(
    override_usage = "hubfs mount s3 [OPTIONS] <BUCKET[:PREFIX]>... <MOUNTPOINT>",
    after_help = "EXAMPLES:\n  hubfs mount s3 --no-sign-request --region us-east-1 stpubdata /s3/stpubdata\n  hubfs mount s3 --endpoint-url http://127.0.0.1:3900 --force-path-style bucket1 bucket2:prefix /s3\n\nUnmount with `umount MOUNTPOINT` or by sending SIGTERM/SIGINT to the process."
)]
pub struct S3Args {
    /// Buckets to mount, each optionally with a prefix, then the mountpoint.
    #[arg(required = true, num_args = 1.., value_name = "BUCKET[:PREFIX] | MOUNTPOINT")]
    pub targets: Vec<String>,

    /// S3 endpoint URL (Garage, MinIO, a regional or VPC endpoint).
    #[arg(long, env = "AWS_ENDPOINT_URL", help_heading = "S3")]
    pub endpoint_url: Option<String>,
    /// AWS region of the buckets.
    #[arg(long, env = "AWS_REGION", help_heading = "S3")]
    pub region: Option<String>,
    /// Address buckets as http://host/bucket (needed by most non-AWS servers).
    #[arg(long, help_heading = "S3")]
    pub force_path_style: bool,
    /// Do not sign requests: anonymous access to public buckets.
    #[arg(long, help_heading = "S3")]
    pub no_sign_request: bool,
    /// Read this volume's credentials (accessKeyID=, secretAccessKey=,
    /// sessionToken= lines) from a file or an inherited pipe (/dev/fd/N)
    /// instead of the default chain; never give them on the command line.
    #[arg(long, help_heading = "S3", conflicts_with = "no_sign_request")]
    pub credentials_file: Option<PathBuf>,
    /// Attempts per S3 request (with jittered exponential backoff).
    #[arg(long, default_value_t = 10, help_heading = "S3")]
    pub max_attempts: u32,

    /// Owner uid of every file and folder.
    #[arg(long, default_value_t = 0, help_heading = "Permissions")]
    pub uid: u32,
    /// Owner gid of every file and folder.
    #[arg(long, default_value_t = 0, help_heading = "Permissions")]
    pub gid: u32,
    /// Mode of folders, octal.
    #[arg(long, default_value = "755", value_parser = parse_mode, help_heading = "Permissions")]
    pub dir_mode: u16,
    /// Mode of files, octal.
    #[arg(long, default_value = "644", value_parser = parse_mode, help_heading = "Permissions")]
    pub file_mode: u16,
    /// Let users other than the mounting one access the mount (needed for notebooks).
    #[arg(long, help_heading = "Permissions")]
    pub allow_other: bool,

    /// How long listed attributes are trusted: seconds, "indefinite" (immutable
    /// buckets) or "minimal" (always ask S3).
    #[arg(long, default_value = "60", value_parser = parse_ttl, help_heading = "Caching")]
    pub metadata_ttl: Ttl,
    /// How long a missing name stays missing; same syntax as --metadata-ttl.
    #[arg(long, default_value = "60", value_parser = parse_ttl, help_heading = "Caching")]
    pub negative_metadata_ttl: Ttl,
    /// Local-disk cache of object data shared by all readers of the mount
    /// (keyed by ETag; emptied at mount). One directory per bucket and identity.
    #[arg(long, help_heading = "Caching")]
    pub cache_dir: Option<PathBuf>,
    /// Most bytes --cache-dir holds; least recently used data is evicted.
    #[arg(long, default_value = "10Gi", value_parser = parse_size, help_heading = "Caching")]
    pub cache_size: u64,

    /// Largest ranged GET of a sequential read (bytes; binary Ki/Mi/Gi or decimal K/M/G suffixes).
    #[arg(long, default_value = "8Mi", value_parser = parse_size, help_heading = "Reads")]
    pub part_size: u64,
    /// Most bytes read ahead of one sequential reader.
    #[arg(long, default_value = "64Mi", value_parser = parse_size, help_heading = "Reads")]
    pub max_prefetch_window: u64,
    /// Kernel readahead of the mount in KiB (larger kernel reads, fewer round
    /// trips); 0 keeps the kernel's 128 KiB.
    #[arg(long, default_value_t = 4096, help_heading = "Reads")]
    pub read_ahead_kb: u32,
    /// Memory of all read-ahead buffers of the mount together.
    #[arg(long, default_value = "256Mi", value_parser = parse_size, help_heading = "Reads")]
    pub max_memory: u64,

    /// Allow creating new files (uploaded on close) and folders.
    #[arg(long, help_heading = "Writes")]
    pub allow_writes: bool,
    /// Allow deleting files (with --allow-writes).
    #[arg(long, help_heading = "Writes")]
    pub allow_delete: bool,

    /// Stay in the foreground instead of daemonizing.
    #[arg(short, long)]
    pub foreground: bool,
    /// Serve Prometheus metrics (requests and bytes per S3 operation) here.
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Rewrite the same metrics to this file every 5 s (the mounter serves
    /// its servers' files together).
    #[arg(long)]
    pub metrics_file: Option<PathBuf>,
    /// Threads reading FUSE requests from the kernel.
    #[arg(long, default_value_t = 4)]
    pub fuse_threads: usize,
    /// Listen on this unix socket for a new server that takes the mount over
    /// (an upgrade with `--take-over`); root only.
    #[arg(long, value_name = "SOCKET")]
    pub control: Option<PathBuf>,
    /// Take over the live mount of the server listening on SOCKET (its
    /// `--control`) instead of mounting: same FUSE connection, inodes and
    /// open files; that server exits without unmounting. Refused while a
    /// file is open for writing there (retry when it is closed).
    #[arg(long, value_name = "SOCKET")]
    pub take_over: Option<PathBuf>,
    /// Once mounted, serve as this uid and gid, with no capability and
    /// no_new_privs (the server must be started as root to mount).
    #[arg(long, value_name = "UID:GID", default_value = "65534:65534", value_parser = parse_run_as, help_heading = "Privilege")]
    pub run_as: (u32, u32),
    /// Start no unmount guardian (a root process with CAP_SYS_ADMIN only
    /// that unmounts when the server stops or dies): whoever started the
    /// server unmounts it, as the hubfs mounter does.
    #[arg(long, help_heading = "Privilege")]
    pub no_guardian: bool,
    /// Serve without the seccomp allow-list (by default every system call
    /// the server does not make fails with EPERM); for ruling it out.
    #[arg(long, help_heading = "Privilege")]
    pub no_seccomp: bool,
}

fn parse_run_as(s: &str) -> Result<(u32, u32), String> {
    let (u, g) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not UID:GID (numbers, e.g. 65534:65534)"))?;
    let num = |x: &str| x.parse::<u32>().ok().filter(|n| *n != u32::MAX);
    match (num(u), num(g)) {
        (Some(u), Some(g)) => Ok((u, g)),
        _ => Err(format!("{s:?} is not UID:GID (numbers, e.g. 65534:65534)")),
    }
}

/// A TTL: `None` is indefinite.
pub type Ttl = Option<Duration>;

fn parse_ttl(s: &str) -> Result<Ttl, String> {
    match s {
        "indefinite" => Ok(None),
        "minimal" => Ok(Some(Duration::ZERO)),
        _ => s
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map(|v| Some(Duration::from_secs_f64(v)))
            .ok_or_else(|| format!("{s:?} is not seconds, \"indefinite\" or \"minimal\"")),
    }
}

fn parse_mode(s: &str) -> Result<u16, String> {
    u16::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not an octal mode like 755"))
}

/// A positive byte size in the crate-wide syntax (`8Mi` = 8 MiB, `8M` =
/// 8,000,000 bytes; see [`hubfs_quota::parse_size`]).
pub fn parse_size(s: &str) -> Result<u64, String> {
    match hubfs_quota::parse_size(s) {
        Ok(0) => Err(format!("{s:?} is zero bytes; give a size like 8Mi")),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

impl S3Args {
    pub fn options(&self) -> anyhow::Result<MountOptions> {
        let (mountpoint, specs) = self
            .targets
            .split_last()
            .context("give at least one bucket and a mountpoint")?;
        if specs.is_empty() {
            bail!("give at least one bucket before the mountpoint {mountpoint}");
        }
        let sources = specs
            .iter()
            .map(|s| BucketSource::parse(s).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut o = MountOptions::new(sources, PathBuf::from(mountpoint));
        o.s3.endpoint_url = self.endpoint_url.clone();
        o.s3.region = self.region.clone();
        o.s3.force_path_style = self.force_path_style;
        o.s3.anonymous = self.no_sign_request;
        o.s3.max_attempts = self.max_attempts;
        if let Some(path) = &self.credentials_file {
            o.s3.credentials = Some(StaticCredentials::read_file(path)?);
        }
        o.uid = self.uid;
        o.gid = self.gid;
        o.dir_mode = self.dir_mode;
        o.file_mode = self.file_mode;
        o.allow_other = self.allow_other;
        o.metadata_ttl = self.metadata_ttl;
        o.negative_ttl = self.negative_metadata_ttl;
        o.prefetch.part_size = self.part_size;
        o.prefetch.max_window = self.max_prefetch_window.max(self.part_size);
        o.prefetch.max_memory = self.max_memory;
        o.allow_writes = self.allow_writes;
        o.allow_delete = self.allow_delete;
        o.metrics_addr = self.metrics_addr;
        o.metrics_file = self.metrics_file.clone();
        o.fuse_threads = self.fuse_threads;
        o.read_ahead_kb = self.read_ahead_kb;
        o.control = self.control.clone();
        o.run_as = self.run_as;
        o.cache = self.cache_dir.clone().map(|dir| CacheOptions {
            dir,
            max_bytes: self.cache_size,
        });
        if o.allow_delete && !o.allow_writes {
            bail!("--allow-delete needs --allow-writes");
        }
        Ok(o)
    }
}

pub fn run(args: S3Args) -> anyhow::Result<ExitCode> {
    let opts = args.options()?;
    if !opts.mountpoint.is_dir() {
        bail!(
            "mountpoint {} is not a directory",
            opts.mountpoint.display()
        );
    }
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "hubfs mount s3 must be started as root: it mounts, then serves as {}:{} with no capability",
            opts.run_as.0,
            opts.run_as.1
        );
    }
    let from = args.take_over.as_deref();
    let privileges = hubfs_sandbox::Privileges::user(opts.run_as.0, opts.run_as.1);
    let privileges = match args.no_seccomp {
        true => privileges,
        false => privileges.with_seccomp(session::seccomp_filter()),
    };
    let confine = || session::Confinement {
        privileges: privileges.clone(),
        guardian: (!args.no_guardian).then(super::unmount_guard::command),
    };
    if args.foreground {
        // The line a mounter taking servers over waits for (mounter::takeover).
        session::run(
            opts.clone(),
            from,
            confine(),
            hubfs::mounter::takeover::say_serving,
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    super::daemon::daemonize(|ready| Ok(session::run(opts.clone(), from, confine(), ready)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Parser, Subcommand};

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Top,
    }
    #[derive(Subcommand)]
    enum Top {
        Mount(super::super::mount::MountArgs),
    }

    fn parse(args: &[&str]) -> Result<S3Args, clap::Error> {
        let mut all = vec!["hubfs"];
        all.extend_from_slice(args);
        let Top::Mount(m) = Cli::try_parse_from(all)?.cmd;
        let super::super::mount::MountKind::S3(a) = m.fs else {
            panic!("not an s3 mount")
        };
        Ok(a)
    }

    #[test]
    fn buckets_prefixes_and_mountpoint_are_split() {
        let a = parse(&["mount", "s3", "bk1", "bk2:data/x", "/s3"]).unwrap();
        let o = a.options().unwrap();
        assert_eq!(o.mountpoint, PathBuf::from("/s3"));
        assert_eq!(o.sources.len(), 2);
        assert_eq!(o.sources[1].prefix, "data/x/");
        assert_eq!(o.metadata_ttl, Some(Duration::from_secs(60)));
    }

    #[test]
    fn the_options_round_trip_through_the_child_command_line() {
        let a = parse(&[
            "mount",
            "s3",
            "--endpoint-url",
            "http://127.0.0.1:9",
            "--force-path-style",
            "--no-sign-request",
            "--uid",
            "1000",
            "--gid",
            "100",
            "--dir-mode",
            "750",
            "--file-mode",
            "640",
            "--allow-other",
            "--metadata-ttl",
            "indefinite",
            "--part-size",
            "4Mi",
            "--max-memory",
            "1Gi",
            "--control",
            "/run/ctl.sock",
            "--run-as",
            "1000:100",
            "bk1",
            "bk2:p",
            "/mnt/x",
        ])
        .unwrap();
        let o = a.options().unwrap();
        let args: Vec<String> = o
            .args()
            .iter()
            .map(|s| s.to_string_lossy().into())
            .collect();
        let mut again = vec!["hubfs"];
        again.extend(args.iter().map(String::as_str));
        let b = parse(&again[1..]).unwrap();
        assert!(b.foreground);
        assert_eq!(b.options().unwrap(), o);
        assert_eq!(o.dir_mode, 0o750);
        assert_eq!(o.metadata_ttl, None);
        assert_eq!(o.prefetch.max_memory, 1 << 30);
        assert_eq!(o.control, Some(PathBuf::from("/run/ctl.sock")));
        assert_eq!(o.run_as, (1000, 100));
        let t = parse(&["mount", "s3", "--take-over", "/run/ctl.sock", "b12", "/s3"]).unwrap();
        assert_eq!(t.take_over, Some(PathBuf::from("/run/ctl.sock")));
        assert_eq!(t.options().unwrap().control, None);
    }

    #[test]
    fn sizes_use_the_crate_wide_units() {
        let a = parse(&["mount", "s3", "b12", "/s3"]).unwrap();
        assert_eq!(a.part_size, 8 << 20, "the default --part-size is 8Mi");
        assert_eq!(a.max_prefetch_window, 64 << 20);
        assert_eq!(a.max_memory, 256 << 20);
        let binary = parse(&["mount", "s3", "--max-memory", "8Mi", "b12", "/s3"]).unwrap();
        assert_eq!(binary.max_memory, 8 * 1024 * 1024);
        let decimal = parse(&["mount", "s3", "--max-memory", "8M", "b12", "/s3"]).unwrap();
        assert_eq!(decimal.max_memory, 8_000_000);
        assert_eq!(
            decimal.max_memory,
            hubfs_quota::parse_size("8M").unwrap(),
            "one parser: the mount and the quota flags agree"
        );
        assert!(parse(&["mount", "s3", "--part-size", "0Mi", "b12", "/s3"]).is_err());
    }

    #[test]
    fn hostile_values_get_clear_errors() {
        assert!(parse(&["mount", "s3"]).is_err());
        let no_bucket = parse(&["mount", "s3", "/s3"]).unwrap();
        assert!(no_bucket
            .options()
            .unwrap_err()
            .to_string()
            .contains("at least one bucket"));
        assert!(parse(&["mount", "s3", "--dir-mode", "999", "b", "/s3"]).is_err());
        assert!(parse(&["mount", "s3", "--metadata-ttl", "-1", "b", "/s3"]).is_err());
        assert!(parse(&["mount", "s3", "--max-memory", "lots", "b", "/s3"]).is_err());
        let bad_bucket = parse(&["mount", "s3", "Bad_Bucket!", "/s3"]).unwrap();
        assert!(bad_bucket
            .options()
            .unwrap_err()
            .to_string()
            .contains("invalid bucket"));
        let twice = parse(&["mount", "s3", "--allow-delete", "b12", "/s3"]).unwrap();
        assert!(twice.options().is_err());
        for bad in ["65534", "a:b", "1:-1", "4294967295:0", ":", "1:2:3"] {
            assert!(
                parse(&["mount", "s3", "--run-as", bad, "b", "/s3"]).is_err(),
                "{bad}"
            );
        }
        let default = parse(&["mount", "s3", "b12", "/s3"]).unwrap();
        assert_eq!(default.options().unwrap().run_as, (65534, 65534));
    }
}
