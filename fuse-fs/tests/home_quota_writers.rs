//! Concurrent writers never take a home past its quota, in every mode a
//! write can reach the backing file through the daemon: buffered writes
//! through the page cache (the kernel's default for a writer) and direct
//! I/O (`O_DIRECT`). Both are mediated, so the documented bound is zero:
//! the counters and the files on the share stay at or under the quota,
//! agree with each other to the byte, and every writer is stopped with
//! EDQUOT near the limit. A loop over seeds varies the writers' chunk
//! sizes and interleaving (real kernel FUSE mounts, run as root).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use hubfs_fuse::home::{self, HomeOptions, Limits};

const QUOTA: u64 = 8 << 20;
const WRITERS: usize = 4;
const SEEDS: u64 = 6;
const MAX_CHUNK: u64 = 256 << 10;

#[derive(Debug, Clone, Copy)]
enum Mode {
    Buffered,
    Direct,
}

/// A small deterministic generator (xorshift), one per writer and seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Writes chunks into `path` until EDQUOT; returns the bytes written.
fn writer(path: &Path, mode: Mode, seed: u64) -> u64 {
    let mut o = OpenOptions::new();
    o.create(true).write(true);
    if matches!(mode, Mode::Direct) {
        o.custom_flags(libc::O_DIRECT);
    }
    let mut f = o.open(path).unwrap();
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    // Page-aligned buffer and sizes, as direct I/O asks.
    let mut raw = vec![0x5au8; (MAX_CHUNK + 4096) as usize];
    let skew = raw.as_ptr().align_offset(4096);
    let buf = &mut raw[skew..skew + MAX_CHUNK as usize];
    let mut written = 0;
    loop {
        let len = (1 + rng.next() % (MAX_CHUNK / 4096)) * 4096;
        match f.write_all(&buf[..len as usize]) {
            Ok(()) => written += len,
            Err(e) if e.raw_os_error() == Some(libc::EDQUOT) => return written,
            Err(e) => panic!("{mode:?} writer: {e}"),
        }
    }
}

fn run(mode: Mode, seed: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let (src, mnt) = (tmp.path().join("src"), tmp.path().join("mnt"));
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let mut o = HomeOptions::new(src.clone(), mnt.clone(), "writers");
    o.limits = Limits {
        bytes: Some(QUOTA),
        ..Limits::default()
    };
    let mut m = home::mount(&o, None).unwrap();
    m.wait_baseline();
    let written: u64 = std::thread::scope(|s| {
        let hs: Vec<_> = (0..WRITERS)
            .map(|w| {
                let p = mnt.join(format!("w{w}"));
                s.spawn(move || writer(&p, mode, seed * 31 + w as u64))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let on_disk: u64 = (0..WRITERS)
        .map(|w| std::fs::metadata(src.join(format!("w{w}"))).unwrap().len())
        .sum();
    let used = m.usage().snapshot();
    let what = format!("{mode:?} seed {seed}: written {written}, on disk {on_disk}, {used:?}");
    assert!(on_disk <= QUOTA, "past the quota: {what}");
    assert_eq!(
        used.bytes as u64, on_disk,
        "counters and share disagree: {what}"
    );
    assert_eq!(
        used.inodes,
        WRITERS as i64 + 1,
        "the files and the root: {what}"
    );
    // Everyone stopped near the limit, not early: each refused write was
    // at most one chunk (a buffered writer's pages are split into requests
    // of up to 1 MiB, each accepted or refused whole).
    assert!(
        on_disk + WRITERS as u64 * (1 << 20) >= QUOTA,
        "stopped far below the quota: {what}"
    );
    assert!(written <= on_disk, "acknowledged more than stored: {what}");
    m.unmount().unwrap();
}

#[test]
fn concurrent_buffered_writers_stay_within_the_quota() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "run as root (FUSE mounts)"
    );
    for seed in 0..SEEDS {
        run(Mode::Buffered, seed);
    }
}

#[test]
fn concurrent_direct_writers_stay_within_the_quota() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "run as root (FUSE mounts)"
    );
    for seed in 0..SEEDS {
        run(Mode::Direct, seed);
    }
}
