//! The ceiling of `bench/s3.sh`: one object read by a single-stream GET with
//! aws-sdk-s3, configured exactly as `hubfs mount s3` configures it
//! ([`S3Store`]), bytes counted and dropped. A FUSE read that matches this
//! costs nothing over talking to S3 directly.
//!
//!   AWS_ACCESS_KEY_ID=.. AWS_SECRET_ACCESS_KEY=.. \
//!   cargo bench -p hubfs-fuse --bench sdk_get -- --endpoint-url URL BUCKET KEY

use std::time::Instant;

use clap::Parser;
use futures::StreamExt;
use hubfs_fuse::s3::s3client::{S3Config, S3Store};
use hubfs_fuse::s3::store::ObjectStore;

/// Time one single-stream GET of a whole object.
#[derive(Parser, Debug)]
struct Args {
    #[arg(long)]
    endpoint_url: Option<String>,
    #[arg(long, default_value = "garage")]
    region: String,
    /// Repeat the GET and report each run (the best is the ceiling).
    #[arg(long, default_value_t = 1)]
    runs: u32,
    bucket: String,
    key: String,
    /// Passed by `cargo bench` to every bench target.
    #[arg(long, hide = true)]
    bench: bool,
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
        for _ in 0..args.runs {
            let t0 = Instant::now();
            let mut body = store
                .get_range(&args.bucket, &args.key, 0..size, None)
                .await
                .expect("GET the object");
            let mut n = 0u64;
            while let Some(chunk) = body.next().await {
                n += chunk.expect("read the body").len() as u64;
            }
            let secs = t0.elapsed().as_secs_f64();
            assert_eq!(n, size, "short body");
            println!("{:.1}", n as f64 / (1u64 << 20) as f64 / secs);
        }
    });
}
