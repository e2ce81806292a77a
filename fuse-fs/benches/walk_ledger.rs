//! What counting each inode once costs the mount-time walk: the same tree
//! walked plainly (as `hubfs du` does) and through a fresh [`Ledger`] gate
//! (as a home mount does), interleaved, best of N each. Prints both times
//! and the ratio gated/plain (1.00 means free).
//!
//!   cargo bench -p hubfs-fuse --bench walk_ledger -- [--files 200000] [--runs 5] [DIR]

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use clap::Parser;
use hubfs_fuse::home::ledger::Ledger;
use hubfs_walker::{Progress, WalkOptions, Walker};

#[derive(Parser, Debug)]
struct Args {
    /// Files in the generated tree (100 per directory).
    #[arg(long, default_value_t = 200_000)]
    files: usize,
    #[arg(long, default_value_t = 5)]
    runs: u32,
    /// Where the tree is generated (kept for the next run).
    #[arg(default_value = "/var/tmp/hubfs-walk-ledger-bench")]
    dir: PathBuf,
    /// Passed by `cargo bench` to every bench target.
    #[arg(long, hide = true)]
    bench: bool,
}

fn generate(root: &std::path::Path, files: usize) -> std::io::Result<()> {
    let marker = root.join(format!(".generated-{files}"));
    if marker.exists() {
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(root);
    for i in 0..files {
        let d = root.join(format!("d{:03}/e{:03}", i / 100 / 100, i / 100 % 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&d)?;
        }
        std::fs::write(d.join(format!("f{:02}", i % 100)), vec![0u8; i % 4096])?;
    }
    std::fs::write(marker, b"")
}

fn main() {
    let args = Args::parse();
    generate(&args.dir, args.files).expect("generate the tree");
    let dev = std::fs::metadata(&args.dir)
        .map(|m| std::os::unix::fs::MetadataExt::dev(&m))
        .expect("stat the tree");
    let walker = Walker::new(WalkOptions::default());
    let cancel = AtomicBool::new(false);
    let (mut plain, mut gated) = (Duration::MAX, Duration::MAX);
    let mut figures = None;
    for _ in 0..args.runs {
        let t = Instant::now();
        let a = walker.walk(&args.dir).expect("walk");
        plain = plain.min(t.elapsed());
        let ledger = Ledger::new(dev);
        let t = Instant::now();
        let b = walker
            .walk_gated(&args.dir, &Progress::default(), &cancel, Some(&ledger))
            .expect("walk");
        gated = gated.min(t.elapsed());
        assert_eq!(
            (a.usage_bytes(), a.inodes()),
            (b.usage_bytes(), b.inodes()),
            "the gate changed the figures of a quiet tree"
        );
        figures = Some((b.inodes(), ledger.len(), ledger.heap_bytes()));
    }
    let (inodes, recorded, heap) = figures.unwrap_or_default();
    println!(
        "tree: {inodes} inodes; ledger recorded {recorded} in {:.1} MiB ({:.0} bytes per inode)",
        heap as f64 / (1 << 20) as f64,
        heap as f64 / recorded.max(1) as f64
    );
    println!("plain walk (hubfs du)     : {:.3} s", plain.as_secs_f64());
    println!("walk through the ledger   : {:.3} s", gated.as_secs_f64());
    println!(
        "ledger / plain            : {:.2}x",
        gated.as_secs_f64() / plain.as_secs_f64()
    );
}
