//! A hostile notebook user against a home's hard limit: every technique of
//! `home_hostile/techniques.py` (a writer joining a passthrough reader, an
//! appender, growth through a shared mapping, splice, ftruncate with a
//! mapping, fallocate, copy_file_range, O_DIRECT, parallel writers, user
//! extended attributes), each
//! run as uid 1000 on a fresh real kernel mount with a 32 MiB quota while
//! trying to store three times that. What lands on the share must stay
//! within the quota, the counters must equal a fresh walk, the attempt must
//! end with EDQUOT, and the daemon must still serve.

use std::path::Path;

use hubfs_e2e::home::{as_user, mount_home, mount_home_on_tmpfs, text, usage_xattr, Mounted};
use hubfs_fuse::home::{HomeOptions, Limits};
use hubfs_walker::Walker;

const QUOTA: u64 = 32 << 20;
const TECHNIQUES: &str = include_str!("home_hostile/techniques.py");

fn limited() -> Limits {
    Limits {
        bytes: Some(QUOTA),
        ..Limits::default()
    }
}

/// Runs technique `name` as uid 1000 in a fresh home; returns the mount
/// and the script's last line ("NAME HOW STORED").
fn attempt(name: &str) -> (Mounted, String) {
    attempt_with(name, limited())
}

fn attempt_with(name: &str, limits: Limits) -> (Mounted, String) {
    attempt_on(name, mount_home(limits))
}

fn attempt_on(name: &str, m: Mounted) -> (Mounted, String) {
    let script = m.dirs.tmp.path().join("techniques.py");
    std::fs::write(&script, TECHNIQUES).unwrap();
    let o = as_user(&format!(
        "/usr/bin/python3 {} {} {QUOTA} {name}",
        script.display(),
        m.mnt().display()
    ));
    assert!(o.status.success(), "{name}: {}", text(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    (m, out.trim().to_string())
}

/// What landed on the share (the walker's figure) must be within the
/// quota and equal the counters; the technique was refused with EDQUOT;
/// the daemon still answers.
fn assert_held(m: &Mounted, line: &str) {
    let walk = Walker::default().walk(m.src()).unwrap();
    let landed = walk.usage_bytes();
    assert!(
        landed <= QUOTA,
        "past the quota: {line}: {landed} bytes on the share"
    );
    assert_eq!(
        m.usage(),
        (landed as i64, walk.inodes() as i64),
        "counters and share disagree: {line}"
    );
    assert!(line.contains(" EDQUOT "), "not refused: {line}");
    // Still serving: a listing, and the usage the user sees.
    std::fs::read_dir(m.mnt()).unwrap_or_else(|e| panic!("after {line}: {e}"));
    assert!(usage_xattr(m.mnt()).contains(&format!("bytes={landed} ")));
}

/// The reader of the first techniques really is a passthrough file here:
/// its reads never reach the daemon (else the tests below would not test
/// the kernel writing on its own).
#[test]
fn readers_pass_through_on_this_kernel() {
    let m = mount_home(limited());
    let f = m.mnt().join("r");
    std::fs::write(&f, vec![1u8; 1 << 20]).unwrap();
    let before = m.mount.as_ref().unwrap().daemon_reads();
    let o = as_user(&format!("cat {} > /dev/null", f.display()));
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(m.mount.as_ref().unwrap().daemon_reads(), before);
}

macro_rules! technique {
    ($test:ident, $name:literal) => {
        #[test]
        fn $test() {
            let (m, line) = attempt($name);
            assert_held(&m, &line);
        }
    };
}

technique!(a_writer_joining_a_passthrough_reader, "reader-then-writer");
technique!(
    an_appender_joining_a_passthrough_reader,
    "reader-then-append"
);
technique!(
    growth_through_a_shared_mapping_beside_a_reader,
    "reader-then-mmap-grow"
);
technique!(splice_into_a_writer_beside_a_reader, "reader-then-splice");
technique!(ftruncate_and_a_shared_mapping, "ftruncate-mmap");
technique!(posix_fallocate, "fallocate");
technique!(copy_file_range_within_the_home, "copy_file_range");
technique!(direct_io, "o-direct");
technique!(four_parallel_writers, "parallel-writers");

#[test]
fn every_technique_of_the_script_is_tested() {
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(script.path(), TECHNIQUES).unwrap();
    let o = std::process::Command::new("/usr/bin/python3")
        .arg(script.path())
        .arg("list")
        .output()
        .unwrap();
    let listed = String::from_utf8(o.stdout).unwrap();
    let here = include_str!("home_hostile.rs");
    for name in listed.lines() {
        assert!(here.contains(&format!("\"{name}\"")), "{name} has no test");
    }
}

/// Bytes of extended attribute names and values of `path`, or of every
/// file in it if it is a directory (read on the share, by root).
fn xattr_bytes(path: &Path) -> u64 {
    const COUNT: &str = r#"
import os, sys
p = sys.argv[1]
files = [os.path.join(p, f) for f in os.listdir(p)] if os.path.isdir(p) else [p]
print(sum(len(n) + len(os.getxattr(f, n, follow_symlinks=False)) for f in files for n in os.listxattr(f, follow_symlinks=False)))
"#;
    let o = std::process::Command::new("/usr/bin/python3")
        .args(["-c", COUNT])
        .arg(path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8(o.stdout).unwrap().trim().parse().unwrap()
}

/// User extended attributes are data too: they count against the quota
/// (on tmpfs, which takes megabytes of them per inode; ext4 stops at 4 KiB
/// by itself), so storing three quotas in them stops at the quota, and one
/// inode still carries at most 4 KiB of them.
#[test]
fn user_xattrs_count_against_the_quota() {
    let m = mount_home_on_tmpfs(limited());
    let (m, line) = attempt_on("xattrs", m);
    assert_held(&m, &line);
    let dir = m.src().join("xattrs");
    let held = xattr_bytes(&dir);
    assert!(
        (QUOTA * 9 / 10..=QUOTA).contains(&held),
        "{held} bytes of attributes with a {QUOTA}-byte quota: {line}"
    );
    let one = xattr_bytes(&dir.join("x"));
    assert!((3000..=4096).contains(&one), "{one}");
    // The next mount's walk finds them again: the same figure.
    let before = m.usage();
    let mut m = m;
    m.mount.take().unwrap().unmount().unwrap();
    let mut opts = HomeOptions::new(m.src().to_path_buf(), m.mnt().to_path_buf(), "alice");
    opts.limits = limited();
    let mut again = hubfs_fuse::home::mount(&opts, None).unwrap();
    again.wait_baseline();
    let s = again.usage().snapshot();
    again.unmount().unwrap();
    assert_eq!((s.bytes, s.inodes), before, "remounted");
}

/// Every way an attribute's bytes come and go keeps the counters equal to
/// a fresh walk: set, replace with a longer and a shorter value, remove,
/// and the inode going with it (unlink, rmdir, a rename over it, a file
/// unlinked while open and closed later).
#[test]
fn user_xattr_charges_follow_every_change() {
    let m = mount_home_on_tmpfs(limited());
    let steps = [
        "os.mkdir(h + '/d'); os.setxattr(h + '/d', 'user.dir', b'x' * 300)",
        "open(h + '/f', 'w').close(); os.setxattr(h + '/f', 'user.a', b'x' * 1000)",
        "os.setxattr(h + '/f', 'user.a', b'x' * 2000)",
        "os.setxattr(h + '/f', 'user.a', b'x' * 10)",
        "os.setxattr(h + '/f', 'user.b', b'x' * 500); os.removexattr(h + '/f', 'user.a')",
        "os.link(h + '/f', h + '/f2'); os.unlink(h + '/f')",
        "os.unlink(h + '/f2')",
        "os.rmdir(h + '/d')",
        "open(h + '/g', 'w').close(); os.setxattr(h + '/g', 'user.g', b'x' * 700); \
         open(h + '/t', 'w').close(); os.setxattr(h + '/t', 'user.t', b'x' * 900); \
         os.rename(h + '/g', h + '/t')",
        "k = open(h + '/t'); os.unlink(h + '/t'); k.close()",
    ];
    let mut charged = Vec::new();
    for step in steps {
        let o = as_user(&format!(
            "/usr/bin/python3 -c \"import os; h = '{}'; {step}\"",
            m.mnt().display()
        ));
        assert!(o.status.success(), "{step}: {}", text(&o));
        let walk = Walker::default().walk(m.src()).unwrap();
        assert_eq!(
            m.usage(),
            (walk.usage_bytes() as i64, walk.inodes() as i64),
            "after {step}"
        );
        charged.push(walk.xattr_bytes);
    }
    // The walk saw them (so the steps tested something): 300 + 8, 1000 + 6,
    // then 2000, then 10 in place of the value before.
    assert_eq!(&charged[..4], [308, 308 + 1006, 308 + 2006, 308 + 16]);
    assert_eq!(*charged.last().unwrap(), 0);
}
