//! What the S3 server can deliver to a minimal client, for `bench/s3.sh`:
//! one object read with aws-sdk-s3 configured exactly as `hubfs mount s3`
//! configures it ([`S3Store`]), bytes counted and dropped, nothing else.
//!
//! - `--parallel 1` (the default): one single-stream GET of the whole object;
//! - `--parallel N`: ranged GETs of `--part-size` bytes in order, N in
//!   flight at a time — what a FUSE read ahead of the reader could fetch at
//!   best; the ceiling a mount's sequential read is a fraction of.
//!
//! Prints one MiB/s figure per run.
//!
//!   AWS_ACCESS_KEY_ID=.. AWS_SECRET_ACCESS_KEY=.. \
//!   cargo bench -p hubfs-fuse --bench sdk_get -- --endpoint-url URL [--parallel 8] BUCKET KEY

use std::time::Instant;

use clap::Parser;
use futures::StreamExt;
use hubfs_fuse::s3::s3client::{S3Config, S3Store};
use hubfs_fuse::s3::store::ObjectStore;

/// Time reads of a whole object by a minimal client.
#[derive(Parser, Debug)]
struct Args {
    #[arg(long)]
    endpoint_url: Option<String>,
    #[arg(long, default_value = "garage")]
    region: String,
    /// Repeat the read and report each run.
    #[arg(long, default_value_t = 1)]
    runs: u32,
    /// Ranged GETs in flight at once (1: a single GET of the whole object).
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// Bytes per ranged GET with `--parallel` above 1.
    #[arg(long, default_value_t = 8 << 20)]
    part_size: u64,
    bucket: String,
    key: String,
    /// Passed by `cargo bench` to every bench target.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Bytes of one GET of `range`, drained.
async fn drain(store: &S3Store, a: &Args, range: std::ops::Range<u64>) -> u64 {
    let mut body = store
        .get_range(&a.bucket, &a.key, range, None)
        .await
        .expect("GET the object");
    let mut n = 0u64;
    while let Some(chunk) = body.next().await {
        n += chunk.expect("read the body").len() as u64;
    }
    n
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        let store = S3Store::new(&S3Config {
            endpoint_url: args.endpoint_url.clone(),
            region: Some(args.region.clone()),
            force_path_style: true,
            ..S3Config::default()
        })
        .await;
        let size = store
            .head(&args.bucket, &args.key)
            .await
            .expect("HEAD the object")
            .size;
        let part = args.part_size.max(1);
        for _ in 0..args.runs {
            let t0 = Instant::now();
            let n: u64 = if args.parallel <= 1 {
                drain(&store, &args, 0..size).await
            } else {
                let ranges = (0..size.div_ceil(part)).map(|i| i * part..((i + 1) * part).min(size));
                futures::stream::iter(ranges)
                    .map(|r| drain(&store, &args, r))
                    .buffer_unordered(args.parallel)
                    .fold(0, |a, b| async move { a + b })
                    .await
            };
            let secs = t0.elapsed().as_secs_f64();
            assert_eq!(n, size, "short body");
            println!("{:.1}", n as f64 / (1u64 << 20) as f64 / secs);
        }
    });
}
