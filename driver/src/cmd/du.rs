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
    /// Leave user extended attributes out (they count by default, as the
    /// quota charges them).
    #[arg(long)]
    pub no_xattrs: bool,
    /// Measure each entry directly inside PATH on its own (one line each,
    /// with its kind: what "What uses my space?" lists), not PATH as a whole.
    #[arg(long)]
    pub children: bool,
}

#[derive(serde::Serialize)]
struct Line<'a> {
    path: String,
    /// `dir`, `file`, `symlink` or `other` (with --children).
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
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
        xattrs: !args.no_xattrs,
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
    let mut paths: Vec<(PathBuf, Option<&'static str>)> = Vec::new();
    for path in &args.paths {
        if !args.children {
            paths.push((path.clone(), None));
            continue;
        }
        match children(path) {
            Ok(c) => paths.extend(c.into_iter().map(|(p, k)| (p, Some(k)))),
            Err(e) => {
                eprintln!("hubfs du: {}: {e}", path.display());
                failed = true;
            }
        }
    }
    for (path, kind) in &paths {
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
                kind: *kind,
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

/// The entries directly inside `dir` (by name), each with its kind; never
/// follows a symlink.
fn children(dir: &std::path::Path) -> std::io::Result<Vec<(PathBuf, &'static str)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        let kind = if t.is_dir() {
            "dir"
        } else if t.is_file() {
            "file"
        } else if t.is_symlink() {
            "symlink"
        } else {
            "other"
        };
        out.push((e.path(), kind));
    }
    out.sort();
    Ok(out)
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
    fn children_are_listed_by_name_with_their_kind() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("b")).unwrap();
        std::fs::write(d.path().join("a"), b"x").unwrap();
        std::os::unix::fs::symlink("/", d.path().join("c")).unwrap();
        let got: Vec<_> = children(d.path())
            .unwrap()
            .into_iter()
            .map(|(p, k)| (p.file_name().unwrap().to_string_lossy().into_owned(), k))
            .collect();
        assert_eq!(
            got,
            [
                ("a".into(), "file"),
                ("b".into(), "dir"),
                ("c".into(), "symlink")
            ]
        );
        assert!(children(&d.path().join("missing")).is_err());
    }

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
