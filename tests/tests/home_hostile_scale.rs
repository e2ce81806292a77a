//! A hostile notebook user's scale: one directory of many entries, listed
//! and walked through a real kernel mount (`ls -l`, `find`, `du`), with the
//! daemon's descriptors and memory read from `/proc` meanwhile. Every entry
//! must be listed, the descriptors the daemon holds must stay under its
//! bound (the kernel may keep every inode it was shown; the daemon must not
//! keep a descriptor for each), and its memory must stay within a fixed
//! amount per inode the kernel knows.
//!
//! `HUBFS_SCALE_ENTRIES` sets the number of entries (default 40,000: more
//! than this machine's open-file limit of 20,000, so a daemon holding one
//! descriptor per inode fails it; `bench/scale.sh` runs it with a million
//! and prints the figures).

use std::path::Path;

use hubfs_e2e::home::{as_user, mount_home, text};
use hubfs_fuse::home::Limits;

fn entries() -> usize {
    std::env::var("HUBFS_SCALE_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40_000)
}

/// (descriptors, VmRSS KiB, VmHWM KiB) of this process (the daemon runs
/// in it: an in-process mount).
fn figures() -> (usize, u64, u64) {
    let fds = std::fs::read_dir("/proc/self/fd").unwrap().count();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (fds, kib("VmRSS:"), kib("VmHWM:"))
}

/// Makes `n` empty files in `dir` on the backing.
fn populate(dir: &Path, n: usize) {
    std::fs::create_dir(dir).unwrap();
    for i in 0..n {
        std::fs::File::create(dir.join(format!("entry-{i:07}"))).unwrap();
    }
    std::os::unix::fs::chown(dir, Some(1000), Some(1000)).unwrap();
}

#[test]
fn a_huge_directory_is_listed_whole_with_bounded_descriptors_and_memory() {
    let n = entries();
    let m = mount_home(Limits::default());
    // Behind the mount (faster; nothing here is about accounting).
    populate(&m.src().join("big"), n);
    let before = figures();
    let mnt = m.mnt().display().to_string();
    let o = as_user(&format!(
        "ls -l {mnt}/big | wc -l; find {mnt} | wc -l; du -s --inodes {mnt}/big | cut -f1"
    ));
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<u64> = out.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(
        lines,
        vec![n as u64 + 1, n as u64 + 2, n as u64 + 1],
        "{out}"
    );
    let after = figures();
    eprintln!(
        "{n} entries: descriptors {} -> {}, VmRSS {} -> {} KiB, VmHWM {} KiB",
        before.0, after.0, before.1, after.1, after.2
    );
    let (open, bound) = m.mount.as_ref().unwrap().inode_descriptors();
    assert!(
        open <= bound,
        "{open} inode descriptors open, bound {bound}"
    );
    assert!(
        after.0 <= before.0 + bound + 64,
        "the daemon holds {} descriptors for {n} entries (bound {bound})",
        after.0
    );
    // A fixed amount per inode the kernel holds (its table entry), plus
    // what the test process itself had.
    let per_inode_kib = (after.1.saturating_sub(before.1)) as f64 / n as f64;
    assert!(per_inode_kib < 1.0, "{per_inode_kib:.2} KiB per inode");
}
