//! The mount-time walk and the daemon's own changes, counted once each.
//!
//! A home answers as soon as it is mounted, while the walk that gives the
//! counters their baseline is still running, and users start writing at
//! once. Every change the daemon makes is charged on the spot, so the walk
//! must not count it a second time: a file created during the walk and then
//! found by it, or one that grew before the walk reached it, would be
//! charged twice; one deleted or moved away before the walk reached it
//! would be forgotten.
//!
//! The rule that settles it: each inode contributes to the baseline what it
//! was *before the daemon first changed it during the walk* (nothing, for an
//! inode the daemon created), and everything after that arrives as the usual
//! deltas. The ledger records, per inode number, whether the walk counted it
//! or the daemon froze it, under one lock per shard so that "walked" and
//! "frozen" are decided in one order for each inode:
//!
//! * the daemon *freezes* an existing inode before it changes it: if the
//!   walk has not counted it yet, its present charge goes into the
//!   correction and the walk will leave it out wherever it finds it;
//! * the daemon marks an inode it created as *born*: if the walk had already
//!   counted it, that charge is taken back out;
//! * the walk counts an inode only if neither has happened (which also
//!   counts hard links and directories met twice once).
//!
//! A directory renamed during the walk can move a subtree the walk had not
//! reached behind it, so the ledger notes it and the session walks again;
//! the second pass counts only what the first did not. Memory is 28–60
//! bytes per inode of the home (hash table slots), for the length of the
//! walk only; `benches/walk_ledger.rs` measures it and the time it costs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use hubfs_walker::{Gate, WalkStats};
use parking_lot::Mutex;

const SHARDS: usize = 16;

/// What the ledger knows of one inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// The walk counted it with this many bytes.
    Walked(i64),
    /// The daemon changed it; its contribution is already decided.
    Frozen,
}

/// The charge of one inode: bytes and inodes.
pub type Charge = (i64, i64);

/// One running mount-time walk of a home.
#[derive(Debug)]
pub struct Ledger {
    dev: u64,
    shards: Vec<Mutex<HashMap<u64, Mark>>>,
    /// What the daemon's changes add to, or take from, the walk's figures.
    correction_bytes: AtomicI64,
    correction_inodes: AtomicI64,
    disturbed: AtomicBool,
    #[cfg(test)]
    hold: tests::Hold,
}

/// What an inode is charged, per the accounting rules: directories and
/// other inodes count one inode each, bytes are apparent sizes of
/// everything but directories.
pub fn charge_of(st: &libc::stat) -> Charge {
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        (0, 1)
    } else {
        (st.st_size, 1)
    }
}

impl Ledger {
    /// A ledger for a walk of the filesystem `dev` (the walk does not leave it).
    pub fn new(dev: u64) -> Self {
        Ledger {
            dev,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            correction_bytes: AtomicI64::new(0),
            correction_inodes: AtomicI64::new(0),
            disturbed: AtomicBool::new(false),
            #[cfg(test)]
            hold: Default::default(),
        }
    }

    fn shard(&self, ino: u64) -> &Mutex<HashMap<u64, Mark>> {
        // Inode numbers are dense and sequential on most filesystems: mix
        // them so neighbours do not share a lock.
        let h = ino.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60;
        &self.shards[h as usize % SHARDS]
    }

    fn correct(&self, (bytes, inodes): Charge) {
        self.correction_bytes.fetch_add(bytes, Ordering::AcqRel);
        self.correction_inodes.fetch_add(inodes, Ordering::AcqRel);
    }

    /// The daemon is about to change the existing inode `(dev, ino)`, which
    /// is charged `now`. Call it before the change becomes visible.
    pub fn freeze(&self, (dev, ino): (u64, u64), now: Charge) {
        if dev != self.dev {
            return;
        }
        let mut m = self.shard(ino).lock();
        match m.insert(ino, Mark::Frozen) {
            // Counted by the walk as it was, which is what it was before.
            Some(Mark::Walked(_)) | Some(Mark::Frozen) => {}
            None => self.correct(now),
        }
    }

    /// The daemon has just created `(dev, ino)`; its charge is already in
    /// the counters.
    pub fn born(&self, (dev, ino): (u64, u64)) {
        if dev != self.dev {
            return;
        }
        let mut m = self.shard(ino).lock();
        if let Some(Mark::Walked(bytes)) = m.insert(ino, Mark::Frozen) {
            self.correct((-bytes, -1));
        }
    }

    /// A directory moved during the walk: what was behind it may have been
    /// missed.
    pub fn disturb(&self) {
        self.disturbed.store(true, Ordering::Release);
    }

    /// True if a directory moved since the last call (starts a new pass).
    pub fn take_disturbed(&self) -> bool {
        self.disturbed.swap(false, Ordering::AcqRel)
    }

    /// The baseline: what the walk counted plus the correction.
    pub fn baseline(&self, walked: &WalkStats) -> (u64, u64) {
        let b = walked.usage_bytes() as i64 + self.correction_bytes.load(Ordering::Acquire);
        let i = walked.inodes() as i64 + self.correction_inodes.load(Ordering::Acquire);
        (b.max(0) as u64, i.max(0) as u64)
    }

    /// Inodes recorded so far (walked or frozen).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Approximate heap held by the ledger (table slots and control bytes).
    pub fn heap_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(u64, Mark)>() + 1;
        self.shards.iter().map(|s| s.lock().capacity() * slot).sum()
    }
}

impl Gate for Ledger {
    fn admit(&self, st: &libc::stat) -> bool {
        #[cfg(test)]
        self.hold.on_admit();
        if st.st_dev != self.dev {
            return true;
        }
        let mut m = self.shard(st.st_ino).lock();
        match m.entry(st.st_ino) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Mark::Walked(charge_of(st).0));
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::{Duration, Instant};

    /// Stops the walk at its n-th admission until released, so a test can
    /// make changes while the walk is certainly under way.
    #[derive(Debug, Default)]
    pub(super) struct Hold {
        /// Admissions left before holding (0: never).
        left: AtomicUsize,
        held: AtomicBool,
        released: AtomicBool,
    }

    impl Hold {
        pub(super) fn on_admit(&self) {
            let before = self
                .left
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
            if before == Ok(1) {
                self.held.store(true, Ordering::Release);
                wait_for("the test to release the walk", || {
                    self.released.load(Ordering::Acquire)
                });
            }
        }
    }

    /// Polls `cond` (bounded: a minute) instead of sleeping a guessed time.
    fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn st(ino: u64, size: i64, dir: bool) -> libc::stat {
        // Any real attributes, then the fields the ledger reads.
        let mut s = nix::sys::stat::stat("/").unwrap();
        s.st_dev = 7;
        s.st_ino = ino;
        s.st_size = size;
        s.st_mode = if dir { libc::S_IFDIR } else { libc::S_IFREG } | 0o644;
        s.st_nlink = 1;
        s
    }

    fn walked(bytes: u64, files: u64) -> WalkStats {
        WalkStats {
            bytes,
            files,
            ..WalkStats::default()
        }
    }

    /// Replays one interleaving: the walk's admits and the daemon's changes,
    /// with the counters the daemon keeps, and checks the sum.
    struct Run {
        l: Ledger,
        walk: (u64, u64),
        deltas: (i64, i64),
    }

    impl Run {
        fn new() -> Self {
            Run {
                l: Ledger::new(7),
                walk: (0, 0),
                deltas: (0, 0),
            }
        }
        fn walk_sees(&mut self, ino: u64, size: i64) {
            if self.l.admit(&st(ino, size, false)) {
                self.walk.0 += size as u64;
                self.walk.1 += 1;
            }
        }
        fn daemon_changes(&mut self, ino: u64, from: i64, to: i64) {
            self.l.freeze((7, ino), (from, 1));
            self.deltas.0 += to - from;
        }
        fn daemon_creates(&mut self, ino: u64) {
            self.deltas.1 += 1;
            self.l.born((7, ino));
        }
        fn daemon_deletes(&mut self, ino: u64, size: i64) {
            self.l.freeze((7, ino), (size, 1));
            self.deltas.0 -= size;
            self.deltas.1 -= 1;
        }
        fn total(&self) -> (i64, i64) {
            let (b, i) = self.l.baseline(&walked(self.walk.0, self.walk.1));
            (b as i64 + self.deltas.0, i as i64 + self.deltas.1)
        }
    }

    #[test]
    fn a_file_grown_before_the_walk_reaches_it_counts_once() {
        let mut r = Run::new();
        r.daemon_changes(1, 100, 150);
        r.walk_sees(1, 150);
        assert_eq!(r.total(), (150, 1));
    }

    #[test]
    fn a_file_grown_after_the_walk_counted_it_counts_once() {
        let mut r = Run::new();
        r.walk_sees(1, 100);
        r.daemon_changes(1, 100, 150);
        assert_eq!(r.total(), (150, 1));
    }

    #[test]
    fn a_file_created_during_the_walk_counts_once_whenever_the_walk_sees_it() {
        // seen after the daemon marked it
        let mut r = Run::new();
        r.daemon_creates(1);
        r.daemon_changes(1, 0, 10);
        r.walk_sees(1, 10);
        assert_eq!(r.total(), (10, 1));
        // seen between the create and the mark (the window the daemon
        // cannot close): the walk's count is taken back
        let mut r = Run::new();
        r.walk_sees(1, 0);
        r.daemon_creates(1);
        r.daemon_changes(1, 0, 10);
        assert_eq!(r.total(), (10, 1));
    }

    #[test]
    fn a_file_deleted_before_the_walk_reaches_it_is_not_forgotten() {
        let mut r = Run::new();
        r.walk_sees(2, 5);
        r.daemon_deletes(1, 100);
        assert_eq!(r.total(), (5, 1));
        // and its inode number, reused by a new file, is not counted by the walk
        r.daemon_creates(1);
        r.walk_sees(1, 0);
        assert_eq!(r.total(), (5, 2));
    }

    #[test]
    fn a_walked_then_deleted_inode_reused_by_a_new_file_keeps_its_count() {
        let mut r = Run::new();
        r.walk_sees(1, 100);
        r.daemon_deletes(1, 100);
        r.daemon_creates(1);
        assert_eq!(r.total(), (0, 1));
    }

    #[test]
    fn hard_links_and_second_passes_count_once() {
        let mut r = Run::new();
        r.walk_sees(1, 100);
        r.walk_sees(1, 100);
        assert_eq!(r.total(), (100, 1));
        assert_eq!(r.l.len(), 1);
    }

    #[test]
    fn other_filesystems_are_left_to_the_walk() {
        let l = Ledger::new(7);
        l.freeze((8, 1), (100, 1));
        l.born((8, 2));
        assert!(l.is_empty());
        let mut s = st(1, 10, false);
        s.st_dev = 8;
        assert!(l.admit(&s) && l.admit(&s));
    }

    /// The real thing: a walk of a home while the daemon creates, grows,
    /// truncates, deletes and moves files and directories in it. Whatever
    /// the interleaving, the counters end equal to a walk of the result.
    #[test]
    fn a_walk_racing_the_daemon_counts_every_inode_once() {
        use crate::home::fs::{HomeFs, SetAttr, SetTime, ROOT};
        use crate::home::usage::{Limits, UsageCounters};
        use hubfs_walker::{WalkOptions, Walker};
        use rand::{Rng, SeedableRng};
        use std::ffi::OsStr;
        use std::sync::atomic::AtomicU64;
        use std::sync::Arc;

        for round in 0..4u64 {
            let t = tempfile::tempdir().unwrap();
            let root = t.path();
            for d in 0..4 {
                for s in 0..3 {
                    let sub = root.join(format!("d{d}/s{s}"));
                    std::fs::create_dir_all(&sub).unwrap();
                    for f in 0..8 {
                        std::fs::write(sub.join(format!("f{f}")), vec![1u8; 100 * f]).unwrap();
                    }
                }
                for f in 0..8 {
                    std::fs::write(root.join(format!("d{d}/f{f}")), vec![2u8; 1000 + f]).unwrap();
                }
            }
            let fs = Arc::new(
                HomeFs::new(root, Arc::new(UsageCounters::new(Limits::default()))).unwrap(),
            );
            let ledger = fs.begin_walk();
            // The walk stops half-way until the writer has made changes.
            ledger.hold.left.store(30, Ordering::Release);
            let stop = Arc::new(AtomicBool::new(false));
            let ops = Arc::new(AtomicU64::new(0));
            let writer = {
                let (fs, stop, ops) = (fs.clone(), stop.clone(), ops.clone());
                std::thread::spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(round);
                    // At most two directory moves: the walk makes three passes.
                    let mut dir_moves = 2;
                    while !stop.load(Ordering::Relaxed) {
                        let d = format!("d{}", rng.random_range(0..4));
                        let Ok(top) = fs.lookup(ROOT, OsStr::new(&d)) else {
                            continue;
                        };
                        let dir = match rng.random_bool(0.5) {
                            true => {
                                let s = format!("s{}", rng.random_range(0..5));
                                match fs.lookup(top.ino, OsStr::new(&s)) {
                                    Ok(e) if e.st.st_mode & libc::S_IFMT == libc::S_IFDIR => e.ino,
                                    _ => top.ino,
                                }
                            }
                            false => top.ino,
                        };
                        let name = format!("f{}", rng.random_range(0..12));
                        let name = OsStr::new(&name);
                        let _ = match rng.random_range(0..9) {
                            0..=2 => fs.create(dir, name, 0o644, 0, libc::O_WRONLY).and_then(
                                |(_, fh)| {
                                    let at = rng.random_range(0..3000);
                                    let r = fs.write(fh, at, &vec![3u8; rng.random_range(1..2000)]);
                                    fs.release(fh);
                                    r.map(drop)
                                },
                            ),
                            3 => fs.lookup(dir, name).and_then(|e| {
                                let size = Some(rng.random_range(0..5000));
                                let a = SetAttr {
                                    mode: None,
                                    uid: None,
                                    gid: None,
                                    size,
                                    atime: SetTime::Omit,
                                    mtime: SetTime::Omit,
                                };
                                fs.setattr(e.ino, None, a).map(drop)
                            }),
                            4 => fs.unlink(dir, name),
                            5 => fs.rename(dir, name, top.ino, OsStr::new("moved"), 0),
                            6 => fs
                                .mkdir(dir, OsStr::new("new"), 0o755, 0)
                                .map(drop)
                                .or_else(|_| fs.rmdir(dir, OsStr::new("new"))),
                            7 => fs
                                .symlink(dir, name, std::path::Path::new("target"))
                                .map(drop),
                            _ if dir_moves > 0 => {
                                dir_moves -= 1;
                                let s = format!("s{}", rng.random_range(0..3));
                                let to = format!("d{}", rng.random_range(0..4));
                                fs.lookup(ROOT, OsStr::new(&to)).and_then(|to| {
                                    let new = format!("s{}", rng.random_range(3..5));
                                    fs.rename(top.ino, OsStr::new(&s), to.ino, OsStr::new(&new), 0)
                                })
                            }
                            _ => Ok(()),
                        };
                        ops.fetch_add(1, Ordering::Relaxed);
                    }
                })
            };
            let walker = Walker::new(WalkOptions {
                threads: 3,
                ..WalkOptions::default()
            });
            let releaser = {
                let (ledger, ops) = (ledger.clone(), ops.clone());
                std::thread::spawn(move || {
                    wait_for("the walk to reach its hold", || {
                        ledger.hold.held.load(Ordering::Acquire)
                    });
                    let at = ops.load(Ordering::Relaxed);
                    wait_for("changes during the walk", || {
                        ops.load(Ordering::Relaxed) >= at + 50
                    });
                    ledger.hold.released.store(true, Ordering::Release);
                    ops.load(Ordering::Relaxed) - at
                })
            };
            let (_, base) = fs
                .walk_baseline(root, &walker, &AtomicBool::new(false))
                .unwrap();
            let during = releaser.join().unwrap();
            // and changes after it, counted as deltas only
            let after = ops.load(Ordering::Relaxed);
            wait_for("changes after the walk", || {
                ops.load(Ordering::Relaxed) >= after + 20
            });
            stop.store(true, Ordering::Relaxed);
            writer.join().unwrap();
            assert!(
                during >= 50,
                "round {round}: {during} changes raced the walk"
            );
            let truth = Walker::default().walk(root).unwrap();
            let now = fs.usage().snapshot();
            assert_eq!(
                (now.bytes, now.inodes),
                (truth.usage_bytes() as i64, truth.inodes() as i64),
                "round {round}: baseline {base:?} after {during} racing changes"
            );
        }
    }

    #[test]
    fn directories_count_an_inode_and_no_bytes() {
        let l = Ledger::new(7);
        assert!(l.admit(&st(1, 4096, true)));
        l.born((7, 1));
        assert_eq!(l.baseline(&walked(0, 1)), (0, 0));
        assert!(!l.take_disturbed());
        l.disturb();
        assert!(l.take_disturbed() && !l.take_disturbed());
    }
}
