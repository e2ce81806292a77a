//! Model-based property test of write-time accounting: random sequences of
//! create/write/truncate/unlink/rename (plain and with RENAME_WHITEOUT,
//! whose whiteout is one more inode)/link/mkdir/rmdir through a mounted
//! home; afterwards the accounted usage must equal a fresh walk of the
//! backing directory (the figure the quota controller would otherwise use).

use hubfs_e2e::home as support;

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use hubfs_fuse::home::Limits;
use hubfs_walker::{WalkOptions, Walker};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Create(usize, usize),
    Write(usize, u64, usize),
    Append(usize, usize),
    Truncate(usize, u64),
    Unlink(usize),
    Rename(usize, usize),
    /// `renameat2(RENAME_WHITEOUT)` (as overlayfs and fsstress do; root).
    RenameWhiteout(usize, usize),
    Link(usize, usize),
    Mkdir(usize),
    Rmdir(usize),
    Symlink(usize, usize),
}

/// Paths come from a small namespace so operations collide often: files
/// and directories in the root and two subdirectories.
const NAMES: [&str; 12] = [
    "a", "b", "c", "d1", "d2", "d1/a", "d1/b", "d1/d3", "d2/a", "d2/c", "d1/d3/x", "d2/d1",
];

fn p(root: &Path, i: usize) -> PathBuf {
    root.join(NAMES[i % NAMES.len()])
}

fn op() -> impl Strategy<Value = Op> {
    let n = 0..NAMES.len();
    prop_oneof![
        (n.clone(), 0usize..20_000).prop_map(|(a, s)| Op::Create(a, s)),
        (n.clone(), 0u64..30_000, 1usize..10_000).prop_map(|(a, o, l)| Op::Write(a, o, l)),
        (n.clone(), 1usize..5_000).prop_map(|(a, l)| Op::Append(a, l)),
        (n.clone(), 0u64..40_000).prop_map(|(a, s)| Op::Truncate(a, s)),
        n.clone().prop_map(Op::Unlink),
        (n.clone(), n.clone()).prop_map(|(a, b)| Op::Rename(a, b)),
        (n.clone(), n.clone()).prop_map(|(a, b)| Op::RenameWhiteout(a, b)),
        (n.clone(), n.clone()).prop_map(|(a, b)| Op::Link(a, b)),
        n.clone().prop_map(Op::Mkdir),
        n.clone().prop_map(Op::Rmdir),
        (n.clone(), 0usize..100).prop_map(|(a, l)| Op::Symlink(a, l)),
    ]
}

/// Applies one operation; failures (missing names, wrong types) are part of
/// the game and must not change the accounting either.
fn apply(root: &Path, op: &Op) {
    let _ = match op {
        Op::Create(a, s) => fs::write(p(root, *a), vec![7u8; *s]),
        Op::Write(a, off, len) => {
            OpenOptions::new()
                .write(true)
                .open(p(root, *a))
                .and_then(|mut f| {
                    f.seek(SeekFrom::Start(*off))?;
                    f.write_all(&vec![1u8; *len])
                })
        }
        Op::Append(a, len) => OpenOptions::new()
            .append(true)
            .open(p(root, *a))
            .and_then(|mut f| f.write_all(&vec![2u8; *len])),
        Op::Truncate(a, s) => OpenOptions::new()
            .write(true)
            .open(p(root, *a))
            .and_then(|f| f.set_len(*s)),
        Op::Unlink(a) => fs::remove_file(p(root, *a)),
        Op::Rename(a, b) => fs::rename(p(root, *a), p(root, *b)),
        Op::RenameWhiteout(a, b) => nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &p(root, *a),
            nix::fcntl::AT_FDCWD,
            &p(root, *b),
            nix::fcntl::RenameFlags::RENAME_WHITEOUT,
        )
        .map_err(std::io::Error::from),
        Op::Link(a, b) => fs::hard_link(p(root, *a), p(root, *b)),
        Op::Mkdir(a) => fs::create_dir(p(root, *a)),
        Op::Rmdir(a) => fs::remove_dir(p(root, *a)),
        Op::Symlink(a, l) => std::os::unix::fs::symlink("t".repeat(*l + 1), p(root, *a)),
    };
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, max_shrink_iters: 200, .. ProptestConfig::default() })]

    #[test]
    fn accounted_usage_equals_a_fresh_walk(ops in proptest::collection::vec(op(), 1..60)) {
        let m = support::mount_home(Limits::default());
        for o in &ops {
            apply(m.mnt(), o);
        }
        let walk = Walker::new(WalkOptions::default()).walk(m.src()).unwrap();
        let (bytes, inodes) = m.usage();
        prop_assert_eq!(bytes as u64, walk.usage_bytes(), "bytes after {:?}", ops);
        prop_assert_eq!(inodes as u64, walk.inodes(), "inodes after {:?}", ops);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, max_shrink_iters: 100, .. ProptestConfig::default() })]

    /// With a hard limit the same sequences never take usage past it.
    #[test]
    fn usage_never_passes_the_hard_limit(ops in proptest::collection::vec(op(), 1..60)) {
        let m = support::mount_home(Limits { bytes: Some(40_000), ..Limits::default() });
        for o in &ops {
            apply(m.mnt(), o);
            prop_assert!(m.usage().0 <= 40_000);
        }
        let walk = Walker::new(WalkOptions::default()).walk(m.src()).unwrap();
        prop_assert!(walk.usage_bytes() <= 40_000);
        prop_assert_eq!(m.usage().0 as u64, walk.usage_bytes());
    }
}
