//! `hubfs du`: the usage walker as an admin tool.
//!
//! Admins compare what the quota controller charges with what is on disk;
//! this prints the same figures the walker reports to the controller (and
//! `du --bytes` compatible totals), with a live progress line on a terminal
//! because a large home on NFS can take minutes.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use hubfs_walker::{Progress, WalkOptions, WalkStats, Walker, DEFAULT_THREADS};

use super::values;

/// Measure the usage of directories the way the quota controller does.
///
/// Prints, per PATH, the apparent bytes (directories included, as `du -sb`),
/// the bytes charged against a quota (files and symlinks), allocated bytes,
/// files, directories and errors. Hard links count once, symlinks are not
/// followed, other filesystems are not entered. Exit status: 0 when every
/// walk completed, 1 when a PATH could not be walked, 2 when a walk timed out
/// (its figures are partial).
#[derive(Args, Debug)]
pub struct DuArgs {
    /// Directories (or files) to measure.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Print one JSON object per path instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Give up on a path after this many seconds and report what was seen.
    #[arg(long, value_name = "SECONDS", value_parser = values::seconds)]
    pub timeout: Option<Duration>,
    /// Walker threads (more helps on NFS, where each stat is a round trip).
    #[arg(long, default_value_t = DEFAULT_THREADS, value_parser = values::threads::<256>)]
    pub threads: usize,
    /// At most this many stat calls per second, to spare a shared filesystem.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub stats_per_second: Option<u32>,
    /// Also count files on other filesystems mounted below PATH.
    #[arg(long)]
    pub cross_mounts: bool,
}

#[derive(serde::Serialize)]
struct Line<'a> {
    path: String,
    #[serde(flatten)]
    stats: &'a WalkStats,
    usage_bytes: u64,
    inodes: u64,
}

pub fn run(args: DuArgs) -> anyhow::Result<ExitCode> {
    let walker = Walker::new(WalkOptions {
        threads: args.threads,
        timeout: args.timeout,
        stats_per_second: args.stats_per_second,
        one_file_system: !args.cross_mounts,
    });
    let show_progress = !args.json && std::io::stderr().is_terminal();
    let mut failed = false;
    let mut partial = false;
    let mut out = std::io::stdout().lock();
    if !args.json {
        writeln!(
            out,
            "{:>16} {:>16} {:>16} {:>10} {:>8} {:>6}  PATH",
            "BYTES", "CHARGED", "ALLOCATED", "FILES", "DIRS", "ERRORS"
        )?;
    }
    for path in &args.paths {
        let progress = Arc::new(Progress::default());
        let stop_progress = Arc::new(AtomicBool::new(false));
        let ticker = show_progress.then(|| spawn_progress(progress.clone(), stop_progress.clone()));
        let result = walker.walk_with(path, &progress, &AtomicBool::new(false));
        stop_progress.store(true, Ordering::Relaxed);
        if let Some(t) = ticker {
            let _ = t.join();
        }
        let stats = match result {
            Ok(s) => s,
            Err(e) => {
                eprintln!("hubfs du: {e}");
                failed = true;
                continue;
            }
        };
        partial |= stats.timed_out;
        if args.json {
            let line = Line {
                path: path.display().to_string(),
                stats: &stats,
                usage_bytes: stats.usage_bytes(),
                inodes: stats.inodes(),
            };
            serde_json::to_writer(&mut out, &line).context("writing JSON")?;
            writeln!(out)?;
        } else {
            writeln!(
                out,
                "{:>16} {:>16} {:>16} {:>10} {:>8} {:>6}  {}{}",
                stats.bytes,
                stats.usage_bytes(),
                stats.allocated_bytes,
                stats.files,
                stats.dirs,
                stats.errors.total(),
                path.display(),
                if stats.timed_out {
                    "  (timed out: partial)"
                } else {
                    ""
                }
            )?;
        }
        out.flush()?;
    }
    Ok(if failed {
        ExitCode::from(1)
    } else if partial {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// Redraws `entries, entries/s, bytes` on stderr until told to stop.
fn spawn_progress(p: Arc<Progress>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut drawn = false;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
            let n = p.entries.load(Ordering::Relaxed);
            let b = p.bytes.load(Ordering::Relaxed);
            let rate = n as f64 / start.elapsed().as_secs_f64().max(1e-3);
            eprint!(
                "\r\x1b[K{n} entries  {rate:.0}/s  {}",
                hubfs_quota::format_size(b)
            );
            drawn = true;
        }
        if drawn {
            eprint!("\r\x1b[K");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_validated() {
        assert_eq!(values::seconds("1.5").unwrap(), Duration::from_millis(1500));
        assert!(values::seconds("0").is_err());
        assert!(values::seconds("-3").is_err());
        assert!(values::seconds("NaN").is_err());
        assert!(values::seconds("soon").is_err());
        assert_eq!(values::threads::<256>("8").unwrap(), 8);
        assert!(values::threads::<256>("0").is_err());
        assert!(values::threads::<256>("100000").is_err());
    }
}
