//! A bench-only peer: Mountpoint for Amazon S3, mounted through its published
//! library crates (`mountpoint-s3-fs` 0.11, `mountpoint-s3-client` 0.22),
//! because the `mount-s3` binary itself is not on crates.io.
//!
//! It does what `mount-s3 --foreground --endpoint-url URL --region R
//! --force-path-style BUCKET DIR` does with every other option at its default:
//! - FUSE: 16 worker threads, read-write (not `--read-only`), no
//!   `allow_other`/`allow_root`, no auto-unmount, no clone-fd;
//! - file system: `S3FilesystemConfig::default()` (metadata TTLs 100 ms for
//!   files and 1 s for directories, no negative cache, readdir pages of 100,
//!   the default prefetcher with its 1.125 MiB first request), no data cache;
//! - client: 8 MiB parts, at most 10 attempts per request, default credential
//!   chain (here `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` from the
//!   environment), path-style addressing, memory target 95% of the machine's
//!   (or cgroup's) memory, throughput target 10 Gbit/s (what `mount-s3` falls
//!   back to when instance metadata is unreachable, as it is off EC2);
//! - metrics sink installed as `mount-s3` does; logs at `warn` to stderr
//!   (`mount-s3` sends them to syslog).
//!
//! Stops (and unmounts) on SIGINT or SIGTERM.

use anyhow::{Context, Result};
use clap::Parser;
use mountpoint_s3_client::config::AddressingStyle;
use mountpoint_s3_client::user_agent::UserAgent;
use mountpoint_s3_fs::data_cache::DataCacheConfig;
use mountpoint_s3_fs::fuse::config::{FuseOptions, FuseSessionConfig, MountPoint};
use mountpoint_s3_fs::logging::{init_logging, LoggingConfig};
use mountpoint_s3_fs::memory::{effective_total_memory, CandidateSize, PagedPool};
use mountpoint_s3_fs::s3::config::{
    ClientConfig, MemoryLimitSetting, PartConfig, Region, TargetThroughputSetting,
};
use mountpoint_s3_fs::s3::{Bucket, Prefix, S3Path, S3Personality};
use mountpoint_s3_fs::{
    metrics, MountpointConfig, Runtime, S3FilesystemConfig, Superblock, SuperblockConfig,
};

/// Mount BUCKET at DIR with Mountpoint's defaults (see the module doc).
#[derive(Parser, Debug)]
struct Args {
    bucket: String,
    dir: String,
    #[arg(long)]
    endpoint_url: String,
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// Key prefix to mount (ends with `/`), empty for the whole bucket.
    #[arg(long, default_value = "")]
    prefix: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let _logging = init_logging(LoggingConfig {
        log_file: None,
        log_to_stdout: true,
        default_filter: "warn,awscrt=off".to_string(),
    })?;
    let _metrics = metrics::install(None).context("metrics sink")?;

    let fs_config = S3FilesystemConfig::default();
    let cache_config = fs_config.cache_config.clone();
    let fuse_options = FuseOptions {
        read_only: false,
        auto_unmount: false,
        allow_root: false,
        allow_other: false,
        clone_fd: false,
    };
    let fuse_config = FuseSessionConfig::new(MountPoint::new(&args.dir)?, fuse_options, 16)?;
    let mp_config = MountpointConfig::new(fuse_config, fs_config, DataCacheConfig::default())?;

    let memory_limit = (effective_total_memory() / 100 * 95) as usize;
    let client_config = ClientConfig {
        region: Region::new_user_specified(args.region),
        endpoint_url: Some(args.endpoint_url),
        addressing_style: AddressingStyle::Path,
        dual_stack: false,
        transfer_acceleration: false,
        auth_config: Default::default(),
        requester_pays: false,
        expected_bucket_owner: None,
        throughput_target: TargetThroughputSetting::Default,
        bind: None,
        part_config: PartConfig::with_part_size(8 * 1024 * 1024)
            .validate(MemoryLimitSetting::Default(memory_limit))?,
        user_agent: UserAgent::new(Some("mountpoint-peer".to_string())),
        tls_config: None,
    };
    let pool = PagedPool::config()
        .with_candidate_sizes([CandidateSize::new(
            client_config.part_config.read_size_bytes,
        )])
        .with_memory_limit(memory_limit)
        .build();
    let s3_path = S3Path::new(
        Bucket::new(args.bucket.as_str())?,
        Prefix::new(&args.prefix)?,
    );
    let client = client_config.create_client(pool.clone(), Some(&s3_path))?;
    let runtime = Runtime::new(client.event_loop_group());
    let superblock = Superblock::new(
        client.clone(),
        s3_path,
        SuperblockConfig {
            cache_config,
            s3_personality: S3Personality::Standard,
        },
    );
    let session = mp_config
        .create_fuse_session(superblock, client, runtime, pool)
        .context("mount")?;
    session.join()
}
