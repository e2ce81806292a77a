//! The usage walker on real directory trees: agreement with GNU `du -sb`,
//! hard links, symlinks, other filesystems, entries vanishing mid-walk,
//! unreadable directories (walked as uid 1000) and the timeout.

use hubfs_e2e::home as support;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use hubfs_walker::{Gate, Progress, WalkOptions, WalkStats, Walker};

fn build(root: &Path, dirs: usize, files: usize) {
    for d in 0..dirs {
        let dir = root.join(format!("d{}", d % 7)).join(format!("s{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..files {
            fs::write(
                dir.join(format!("f{f}")),
                vec![b'x'; (d * 131 + f * 17) % 5000],
            )
            .unwrap();
        }
    }
}

fn walk(root: &Path, opts: WalkOptions) -> WalkStats {
    Walker::new(opts).walk(root).unwrap()
}

fn du_sb(root: &Path) -> u64 {
    let o = Command::new("du")
        .arg("-sb")
        .arg(root)
        .output()
        .expect("GNU du");
    assert!(o.status.success());
    String::from_utf8(o.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn totals_match_gnu_du_with_hard_links_and_symlinks() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    build(r, 40, 12);
    fs::hard_link(r.join("d0/s0/f1"), r.join("d1/again")).unwrap();
    fs::hard_link(r.join("d0/s0/f1"), r.join("d2/and-again")).unwrap();
    symlink("/usr", r.join("usr-link")).unwrap();
    symlink(r.join("d0"), r.join("d3/loop")).unwrap();
    for threads in [1, 3, 16] {
        let s = walk(
            r,
            WalkOptions {
                threads,
                ..Default::default()
            },
        );
        assert_eq!(s.bytes, du_sb(r), "threads={threads}");
        assert_eq!(s.files, 40 * 12 + 2, "hard links once, two symlinks");
        assert_eq!(s.extra_links, 2);
        assert_eq!(s.dirs, 1 + 7 + 40);
        assert_eq!(s.errors.total(), 0);
        assert!(s.allocated_bytes > 0);
    }
}

#[test]
fn other_filesystems_are_not_entered() {
    support::require_root_fuse();
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    build(r, 3, 3);
    let before = walk(r, WalkOptions::default());
    let inner = r.join("mnt");
    fs::create_dir(&inner).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &inner,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=16m"),
    )
    .unwrap();
    fs::write(inner.join("big"), vec![0u8; 1 << 20]).unwrap();
    let s = walk(r, WalkOptions::default());
    let crossing = walk(
        r,
        WalkOptions {
            one_file_system: false,
            ..Default::default()
        },
    );
    nix::mount::umount(&inner).unwrap();
    assert_eq!(
        s.usage_bytes(),
        before.usage_bytes(),
        "the tmpfs is not charged"
    );
    assert_eq!(s.files, before.files);
    assert_eq!(crossing.usage_bytes(), before.usage_bytes() + (1 << 20));
}

#[test]
fn entries_vanishing_mid_walk_are_counted_not_fatal() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("d");
    fs::create_dir(&dir).unwrap();
    for i in 0..200 {
        fs::write(dir.join(format!("f{i}")), b"12345").unwrap();
    }
    // The directory goes right after its first file is counted: listed
    // (one getdents holds all 200 names), but the rest not yet stat'ed.
    // A gate is the hook that makes that moment exact, with no sleeps.
    struct DeleteOnFirstFile(std::path::PathBuf, std::sync::Once);
    impl Gate for DeleteOnFirstFile {
        fn admit(&self, st: &libc::stat) -> bool {
            if st.st_mode & libc::S_IFMT == libc::S_IFREG {
                self.1.call_once(|| fs::remove_dir_all(&self.0).unwrap());
            }
            true
        }
    }
    let gate = DeleteOnFirstFile(dir.clone(), std::sync::Once::new());
    let s = Walker::new(WalkOptions {
        threads: 2,
        ..Default::default()
    })
    .walk_gated(
        t.path(),
        &Progress::default(),
        &AtomicBool::new(false),
        Some(&gate),
    )
    .unwrap();
    assert!(!dir.exists());
    assert!(!s.timed_out);
    assert_eq!(s.files, 1, "{s:?}");
    assert_eq!(
        s.files + s.errors.vanished,
        200,
        "every listed entry was counted or reported: {s:?}"
    );
}

#[test]
fn timeout_returns_a_partial_result_marked_timed_out() {
    let t = tempfile::tempdir().unwrap();
    build(t.path(), 20, 10);
    let full = walk(t.path(), WalkOptions::default());
    // 50 stats/s for 0.3 s: at most ~16 of the 227 entries.
    let s = walk(
        t.path(),
        WalkOptions {
            timeout: Some(Duration::from_millis(300)),
            stats_per_second: Some(50),
            ..Default::default()
        },
    );
    assert!(s.timed_out);
    assert!(
        s.files + s.dirs < full.files + full.dirs,
        "{s:?} vs {full:?}"
    );
    assert!(!full.timed_out);
}

#[test]
fn cancel_stops_a_walk_early() {
    let t = tempfile::tempdir().unwrap();
    build(t.path(), 5, 5);
    let s = Walker::default()
        .walk_with(t.path(), &Progress::default(), &AtomicBool::new(true))
        .unwrap();
    assert!(s.timed_out);
}

/// Run by `unreadable_directories_are_counted` as uid 1000 (re-executing
/// this test binary): walks the path in HUBFS_WALK_AS_USER and prints the
/// result. Without the variable it checks nothing and passes.
#[test]
fn walk_child_process() {
    if let Ok(p) = std::env::var("HUBFS_WALK_AS_USER") {
        let s = walk(Path::new(&p), WalkOptions::default());
        println!(
            "WALK files={} dirs={} denied={} bytes={}",
            s.files,
            s.dirs,
            s.errors.denied,
            s.usage_bytes()
        );
    }
}

#[test]
fn unreadable_directories_are_counted() {
    support::require_root_fuse();
    let t = tempfile::tempdir().unwrap();
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let r = t.path().join("home");
    build(&r, 4, 2);
    let secret = r.join("secret");
    fs::create_dir(&secret).unwrap();
    fs::write(secret.join("hidden"), b"abc").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(&r, fs::Permissions::from_mode(0o755)).unwrap();
    for d in fs::read_dir(&r).unwrap() {
        let p = d.unwrap().path();
        if p != secret {
            Command::new("chmod")
                .arg("-R")
                .arg("a+rX")
                .arg(&p)
                .status()
                .unwrap();
        }
    }
    let exe = std::env::current_exe().unwrap();
    let o = Command::new("setpriv")
        .args(["--reuid=1000", "--regid=1000", "--clear-groups", "--"])
        .arg(&exe)
        .args([
            "--exact",
            "walk_child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HUBFS_WALK_AS_USER", &r)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out
        .lines()
        .find_map(|l| l.find("WALK ").map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("no result: {}", support::text(&o)));
    let root_view = walk(&r, WalkOptions::default());
    assert!(line.contains("denied=1"), "{line}");
    assert!(
        line.contains(&format!("files={}", root_view.files - 1)),
        "{line} vs {root_view:?}"
    );
}
