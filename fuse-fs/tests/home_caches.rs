//! The home layer's kernel caches keep their promises, on real kernel FUSE
//! mounts (run as root):
//!
//! * names, attributes and negative entries are trusted for one TTL (1 s):
//!   a repeated `stat` or miss within it sends no LOOKUP, a listing with
//!   attributes (READDIRPLUS) saves the LOOKUP of every entry;
//! * what the mount changes itself (create, rename, unlink, chmod, write)
//!   is visible through it at once, a cached negative entry included;
//! * what changes behind the daemon's back (directly in the backing
//!   directory, as another node on the share) is seen within the promised
//!   time, polled with a generous deadline (no time is asserted).
//!
//! Request counts come from the root's `user.hubfs.requests` attribute.
//! A count that depends on the TTL not running out between two steps is
//! tried a few times: a pass proves the cache works, a slow machine only
//! makes a try not count.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hubfs_fuse::home::requests::parse_count;
use hubfs_fuse::home::{self, HomeMount, HomeOptions, Limits};

/// Far more than the promised second, for loaded CI machines.
const DEADLINE: Duration = Duration::from_secs(20);
const TRIES: usize = 5;

struct Home {
    _tmp: tempfile::TempDir,
    src: PathBuf,
    mnt: PathBuf,
    mount: Option<HomeMount>,
}

impl Home {
    fn new(passthrough: bool) -> Home {
        Home::with_limits(passthrough, Limits::default())
    }

    /// A home mounted with quota `limits`.
    fn with_limits(passthrough: bool, limits: Limits) -> Home {
        assert!(
            nix::unistd::geteuid().is_root(),
            "these tests mount FUSE: run them as root"
        );
        let tmp = tempfile::Builder::new()
            .prefix("hubfs-caches-")
            .tempdir()
            .unwrap();
        let (src, mnt) = (tmp.path().join("src"), tmp.path().join("mnt"));
        std::fs::create_dir(&src).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        let mut o = HomeOptions::new(src.clone(), mnt.clone(), "caches");
        o.passthrough = passthrough;
        o.limits = limits;
        let mut m = home::mount(&o, None).expect("mount home");
        m.wait_baseline();
        Home {
            _tmp: tmp,
            src,
            mnt,
            mount: Some(m),
        }
    }

    fn at(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    fn behind(&self, rel: &str) -> PathBuf {
        self.src.join(rel)
    }

    /// The count of request `kind` so far.
    fn count(&self, kind: &str) -> u64 {
        parse_count(&self.counts(), kind)
    }

    /// Every count so far, as `user.hubfs.requests` gives them (one GETXATTR).
    fn counts(&self) -> String {
        let mut buf = vec![0u8; 4096];
        let n = rustix::fs::getxattr(&self.mnt, "user.hubfs.requests", &mut buf[..])
            .expect("read user.hubfs.requests");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    /// Requests of `kind` that `f` caused.
    fn during(&self, kind: &str, f: impl FnOnce()) -> u64 {
        let before = self.count(kind);
        f();
        self.count(kind) - before
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        if let Some(m) = self.mount.take() {
            let _ = m.unmount();
        }
    }
}

/// Polls `f` until it is true or the deadline passes; whether it became true.
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + DEADLINE;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// Whether `attempt` returned true in one of a few tries.
fn in_some_try(mut attempt: impl FnMut(usize) -> bool) -> bool {
    (0..TRIES).any(&mut attempt)
}

#[test]
fn a_second_stat_within_the_ttl_sends_no_lookup() {
    let h = Home::new(true);
    let ok = in_some_try(|i| {
        let name = format!("f{i}");
        std::fs::write(h.behind(&name), b"x").unwrap();
        let p = h.at(&name);
        let first = h.during("lookup", || assert!(exists(&p)));
        let second = h.during("lookup", || assert!(exists(&p)));
        assert_eq!(first, 1, "the first stat looks the name up");
        second == 0
    });
    assert!(ok, "every second stat sent a LOOKUP");
}

#[test]
fn a_miss_is_remembered_and_a_create_through_the_mount_ends_it_at_once() {
    let h = Home::new(true);
    let ok = in_some_try(|i| {
        let p = h.at(&format!("missing{i}"));
        let first = h.during("negative", || assert!(!exists(&p)));
        assert_eq!(first, 1, "the first miss asks the daemon");
        let again = h.during("lookup", || assert!(!exists(&p)));
        again == 0
    });
    assert!(ok, "every repeated miss sent a LOOKUP");
    // Negative entries just cached, then made through the mount: at once.
    let names = ["c_file", "c_dir", "c_link", "c_renamed"];
    for n in names {
        assert!(!exists(&h.at(n)));
    }
    std::fs::write(h.at("c_file"), b"new").unwrap();
    std::fs::create_dir(h.at("c_dir")).unwrap();
    std::os::unix::fs::symlink("c_file", h.at("c_link")).unwrap();
    std::fs::write(h.at("tmp"), b"r").unwrap();
    std::fs::rename(h.at("tmp"), h.at("c_renamed")).unwrap();
    for n in names {
        assert!(
            exists(&h.at(n)),
            "{n} made through the mount is seen at once"
        );
    }
    assert_eq!(std::fs::read(h.at("c_link")).unwrap(), b"new");
}

#[test]
fn a_miss_turns_into_a_file_made_behind_the_back_within_the_promise() {
    let h = Home::new(true);
    let p = h.at("later");
    assert!(!exists(&p));
    assert!(!exists(&p), "cached negative entry");
    std::fs::write(h.behind("later"), b"from another node").unwrap();
    assert!(
        eventually(|| exists(&p)),
        "a file made on the share never showed through the mount"
    );
    assert_eq!(std::fs::read(&p).unwrap(), b"from another node");
}

#[test]
fn changes_behind_the_back_are_seen_within_the_promise() {
    for passthrough in [false, true] {
        let h = Home::new(passthrough);
        std::fs::create_dir(h.behind("d")).unwrap();
        std::fs::write(h.behind("d/f"), b"version one").unwrap();
        std::fs::write(h.behind("gone"), b"x").unwrap();
        let f = h.at("d/f");
        assert_eq!(std::fs::read(&f).unwrap(), b"version one");
        assert_eq!(std::fs::read(&f).unwrap(), b"version one", "cached");
        assert!(exists(&h.at("gone")));
        // Another node rewrites the file (same size, then longer),
        // changes its mode, renames a name and removes one.
        std::fs::write(h.behind("d/f"), b"version two").unwrap();
        assert!(
            eventually(|| std::fs::read(&f).unwrap() == b"version two"),
            "same-size rewrite never seen (passthrough={passthrough})"
        );
        std::fs::write(h.behind("d/f"), b"version three, longer").unwrap();
        assert!(
            eventually(|| std::fs::read(&f).unwrap() == b"version three, longer"),
            "longer rewrite never seen (passthrough={passthrough})"
        );
        std::fs::set_permissions(h.behind("d/f"), std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(eventually(
            || std::fs::metadata(&f).unwrap().mode() & 0o777 == 0o600
        ));
        std::fs::rename(h.behind("d/f"), h.behind("d/g")).unwrap();
        assert!(eventually(|| !exists(&f) && exists(&h.at("d/g"))));
        std::fs::remove_file(h.behind("gone")).unwrap();
        assert!(eventually(|| !exists(&h.at("gone"))));
    }
}

#[test]
fn changes_through_the_mount_are_seen_at_once() {
    let h = Home::new(true);
    std::fs::write(h.at("a"), b"1").unwrap();
    // Cache them all first.
    assert!(exists(&h.at("a")) && !exists(&h.at("b")));
    std::fs::rename(h.at("a"), h.at("b")).unwrap();
    assert!(!exists(&h.at("a")), "renamed away: gone at once");
    assert_eq!(std::fs::read(h.at("b")).unwrap(), b"1");
    std::fs::set_permissions(h.at("b"), std::fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(std::fs::metadata(h.at("b")).unwrap().mode() & 0o777, 0o640);
    std::fs::write(h.at("b"), b"longer content").unwrap();
    assert_eq!(std::fs::metadata(h.at("b")).unwrap().len(), 14);
    assert_eq!(std::fs::read(h.at("b")).unwrap(), b"longer content");
    std::fs::remove_file(h.at("b")).unwrap();
    assert!(!exists(&h.at("b")), "unlinked: gone at once");
    std::fs::create_dir(h.at("d")).unwrap();
    std::fs::remove_dir(h.at("d")).unwrap();
    assert!(!exists(&h.at("d")));
}

#[test]
fn a_long_listing_sends_readdirplus_and_no_lookup() {
    let h = Home::new(true);
    const N: usize = 300;
    let ok = in_some_try(|i| {
        let d = format!("dir{i}");
        std::fs::create_dir(h.behind(&d)).unwrap();
        for j in 0..N {
            std::fs::write(h.behind(&format!("{d}/entry-{j:04}")), b"x").unwrap();
        }
        assert!(exists(&h.at(&d)));
        let (l0, p0, r0) = (
            h.count("lookup"),
            h.count("readdirplus"),
            h.count("readdir"),
        );
        // What `ls -l` does: list, then lstat every entry.
        let mut seen = 0;
        for e in std::fs::read_dir(h.at(&d)).unwrap() {
            let e = e.unwrap();
            assert_eq!(std::fs::symlink_metadata(e.path()).unwrap().len(), 1);
            seen += 1;
        }
        assert_eq!(seen, N);
        let (lookups, plus) = (h.count("lookup") - l0, h.count("readdirplus") - p0);
        assert_eq!(
            h.count("readdir") - r0,
            0,
            "listings always carry attributes"
        );
        // Each batch carries many entries (a page holds ~25 here).
        assert!(
            plus >= 1 && plus <= (N / 10) as u64,
            "{plus} READDIRPLUS for {N}"
        );
        lookups == 0
    });
    assert!(ok, "listing then stat-ing every entry sent LOOKUPs");
}

#[test]
fn listings_keep_the_kernel_references_right() {
    // Listed entries are kernel references (as lookups are): removing,
    // renaming and recreating them through the mount after a listing works
    // and leaves no stale inode behind.
    let h = Home::new(true);
    let empty = h.mount.as_ref().unwrap().usage().snapshot();
    std::fs::create_dir(h.at("t")).unwrap();
    for j in 0..500 {
        std::fs::write(h.at(&format!("t/{j}")), j.to_string()).unwrap();
    }
    for round in 0..3 {
        let mut names: Vec<_> = std::fs::read_dir(h.at("t"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names.len(), 500, "round {round}");
        for n in &names {
            let p = h.at("t").join(n);
            std::fs::remove_file(&p).unwrap();
            std::fs::write(&p, format!("{round}")).unwrap();
        }
    }
    assert_eq!(std::fs::read(h.at("t/7")).unwrap(), b"2");
    std::fs::remove_dir_all(h.at("t")).unwrap();
    assert!(!exists(&h.at("t")));
    assert!(!exists(&h.behind("t")));
    // And the mount's accounting agrees: back to the empty home (its root).
    assert_eq!(h.mount.as_ref().unwrap().usage().snapshot(), empty);
}

#[test]
fn quota_limits_do_not_change_what_is_cached() {
    // A full home still answers from the caches (they hold names and
    // attributes, never space).
    let limits = Limits {
        bytes: Some(4096),
        ..Limits::default()
    };
    let mut h = Home::with_limits(true, limits);
    std::fs::write(h.at("f"), vec![1u8; 4096]).unwrap();
    let e = std::fs::write(h.at("g"), vec![1u8; 1]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EDQUOT));
    assert!(exists(&h.at("f")));
    assert_eq!(std::fs::metadata(h.at("g")).unwrap().len(), 0);
    h.mount.take().unwrap().unmount().unwrap();
}

/// An untar of `FILES` small files in `DIRS` directories, as uid 1000 with
/// GNU tar, costs six requests a file (LOOKUP of the new name, CREATE,
/// WRITE, SETATTR of its times, FLUSH, RELEASE), three a directory (LOOKUP,
/// MKDIR, SETATTR) and a few once (tar's OPENDIR and RELEASEDIR of the
/// target, GETATTRs of it, the root's times): no parent GETATTR after each
/// create (no `default_permissions`), no `security.capability` GETXATTR
/// before each first write (`FUSE_HANDLE_KILLPRIV_V2`; a write-only open is
/// direct). A directory's name cached past the TTL on a slow run costs a
/// LOOKUP more, so the count is tried a few times. Each file is one tar
/// block (≤ 512 bytes), so tar writes it with one write(2): one that
/// straddles tar's 10 KiB records is written in two, each a WRITE.
#[test]
fn an_untar_costs_six_requests_a_file() {
    const FILES: u64 = 1000;
    const DIRS: u64 = 10;
    let h = Home::new(true);
    let top = h.src.parent().unwrap();
    std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&h.src, Some(1000), Some(1000)).unwrap();
    let tar = top.join("small.tar");
    let made = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import io, sys, tarfile\n\
             with tarfile.open(sys.argv[1], 'w', format=tarfile.GNU_FORMAT) as t:\n\
             \x20   for d in range(int(sys.argv[3])):\n\
             \x20       i = tarfile.TarInfo('d%d' % d); i.type = tarfile.DIRTYPE; i.mode = 0o755; t.addfile(i)\n\
             \x20   for f in range(int(sys.argv[2])):\n\
             \x20       data = b'x' * (f % 512 + 1)\n\
             \x20       i = tarfile.TarInfo('d%d/f%d' % (f * int(sys.argv[3]) // int(sys.argv[2]), f)); i.size = len(data); i.mode = 0o644\n\
             \x20       t.addfile(i, io.BytesIO(data))\n",
        )
        .arg(&tar)
        .arg(FILES.to_string())
        .arg(DIRS.to_string())
        .status()
        .unwrap();
    assert!(made.success());
    let kinds = [
        "lookup", "create", "write", "setattr", "flush", "release", "mkdir", "getattr", "xattr",
        "total",
    ];
    let mut last = Vec::new();
    let ok = in_some_try(|i| {
        let dest = format!("u{i}");
        std::fs::create_dir(h.behind(&dest)).unwrap();
        std::os::unix::fs::chown(h.behind(&dest), Some(1000), Some(1000)).unwrap();
        let before = h.counts();
        let st = std::process::Command::new("setpriv")
            .args(["--reuid=1000", "--regid=1000", "--clear-groups", "--"])
            .args(["tar", "-C"])
            .arg(h.at(&dest))
            .arg("-xf")
            .arg(&tar)
            .status()
            .unwrap();
        assert!(st.success());
        let after = h.counts();
        // Less the GETXATTR reading the counts.
        let n: Vec<u64> = kinds
            .iter()
            .map(|k| {
                parse_count(&after, k)
                    - parse_count(&before, k)
                    - u64::from(matches!(*k, "total" | "xattr"))
            })
            .collect();
        let per = |k: &str| n[kinds.iter().position(|x| *x == k).unwrap()];
        // What every file costs, whatever the TTL did.
        for k in ["create", "write", "flush", "release"] {
            assert_eq!(per(k), FILES, "{k}: {n:?}");
        }
        assert_eq!(per("mkdir"), DIRS);
        assert_eq!(per("setattr"), FILES + DIRS, "times: {n:?}");
        assert_eq!(per("xattr"), 0, "GETXATTR per file: {n:?}");
        assert!(per("getattr") <= 4, "GETATTR per file: {n:?}");
        last = n.clone();
        // The destination's LOOKUP (made behind the mount) and its OPENDIR
        // and RELEASEDIR by tar.
        per("lookup") == FILES + DIRS + 1 && per("total") <= 6 * FILES + 3 * DIRS + 3 + 4
    });
    assert!(ok, "more than 6 requests a file: {kinds:?} = {last:?}");
}
