//! A hostile notebook user's names, paths and races on a real kernel mount
//! (`home_hostile/paths.py`, as uid 1000): every byte 1–255 but `/` in
//! names, paths past 4 KiB, a directory swapped for a symlink to `/etc` or
//! to a root-owned directory outside the home between lookup and create
//! (through the mount, and behind the daemon's back as another node
//! would), and links, renames and writes racing each other. Each must
//! behave as a native directory does, leave nothing outside the home, keep
//! the counters equal to a fresh walk and within the quota, and leave the
//! daemon serving.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use hubfs_e2e::home::{as_user, mount_home, text, usage_xattr, Mounted};
use hubfs_fuse::home::Limits;
use hubfs_walker::Walker;

const SCRIPT: &str = include_str!("home_hostile/paths.py");
const QUOTA: u64 = 64 << 20;

fn limited() -> Limits {
    Limits {
        bytes: Some(QUOTA),
        ..Limits::default()
    }
}

/// Runs `paths.py DIR WHAT ARGS...` as uid 1000; its output.
fn run(m: &Mounted, dir: &Path, what: &str, args: &[&str]) -> String {
    let script = m.dirs.tmp.path().join("paths.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let o = as_user(&format!(
        "/usr/bin/python3 {} {} {what} {}",
        script.display(),
        dir.display(),
        args.join(" ")
    ));
    assert!(
        o.status.success(),
        "{what} in {}: {}",
        dir.display(),
        text(&o)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// The counters equal a fresh walk, within the quota, and the daemon serves
/// (once the kernel has released every file: one unlinked while open is
/// charged until its last close).
fn assert_whole(m: &Mounted, what: &str) {
    let mount = m.mount.as_ref().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while mount.open_files() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let walk = Walker::default().walk(m.src()).unwrap();
    assert!(
        walk.usage_bytes() <= QUOTA,
        "{what}: {}",
        walk.usage_bytes()
    );
    assert_eq!(
        m.usage(),
        (walk.usage_bytes() as i64, walk.inodes() as i64),
        "{what}: counters and share disagree"
    );
    assert!(
        usage_xattr(m.mnt()).starts_with("bytes="),
        "{what}: daemon gone"
    );
}

fn mkdir_for_user(p: &Path) {
    std::fs::create_dir(p).unwrap();
    std::os::unix::fs::chown(p, Some(1000), Some(1000)).unwrap();
}

#[test]
fn names_with_every_byte_behave_as_natively() {
    let m = mount_home(limited());
    let (native, home) = (m.native().join("names"), m.mnt().join("names"));
    mkdir_for_user(&native);
    mkdir_for_user(&home);
    let want = run(&m, &native, "names", &[]);
    assert!(
        want.contains("same True") && want.contains("contents True"),
        "{want}"
    );
    assert_eq!(run(&m, &home, "names", &[]), want);
    assert_whole(&m, "names");
}

#[test]
fn paths_past_4_kib_behave_as_natively() {
    let m = mount_home(limited());
    let (native, home) = (m.native().join("deep"), m.mnt().join("deep"));
    mkdir_for_user(&native);
    mkdir_for_user(&home);
    let want = run(&m, &native, "deep", &[]);
    assert!(want.contains("past PATH_MAX ENAMETOOLONG"), "{want}");
    assert!(want.contains("read back True"), "{want}");
    assert_eq!(run(&m, &home, "deep", &[]), want);
    assert_whole(&m, "deep");
}

/// What `/etc/passwd` and `/etc/shadow` hold and when they changed.
fn etc_fingerprint() -> Vec<(Vec<u8>, std::time::SystemTime)> {
    ["/etc/passwd", "/etc/shadow"]
        .iter()
        .map(|p| {
            let md = std::fs::metadata(p).unwrap();
            (std::fs::read(p).unwrap(), md.modified().unwrap())
        })
        .collect()
}

#[test]
fn a_directory_swapped_for_a_symlink_never_lets_anything_out() {
    let m = mount_home(limited());
    // Root's, 0755: the user cannot write there, so a file appearing in it
    // was written by the daemon for the user.
    let outside = m.dirs.tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
    let etc = etc_fingerprint();
    let out = run(&m, m.mnt(), "swap", &[&outside.display().to_string(), "3"]);
    assert!(out.contains("made True"), "the race ran: {out}");
    // Behind the daemon's back too, as another node would: the backing
    // directory swapped while the user creates through the mount.
    mkdir_for_user(&m.mnt().join("b")); // through the mount: counted
    let back = m.src().join("b");
    let stop = Instant::now() + Duration::from_secs(3);
    std::thread::scope(|s| {
        s.spawn(|| {
            while Instant::now() < stop {
                let _ = std::fs::rename(&back, m.src().join("b.real"));
                let _ = std::os::unix::fs::symlink(&outside, &back);
                std::thread::yield_now();
                let _ = std::fs::remove_file(&back);
                let _ = std::fs::rename(m.src().join("b.real"), &back);
            }
        });
        let mnt = m.mnt().display().to_string();
        let o = as_user(&format!(
            "end=$(($(date +%s) + 3)); i=0; while [ $(date +%s) -lt $end ]; do echo x >> {mnt}/b/f$i; cat {mnt}/b/f0 >/dev/null; i=$((i+1)); done 2>/dev/null; echo done"
        ));
        assert!(o.status.success(), "{}", text(&o));
    });
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "something landed outside the home"
    );
    assert!(
        etc == etc_fingerprint(),
        "/etc/passwd or /etc/shadow changed"
    );
    // Another node's half-finished swap may have left the backing as a
    // symlink for a moment: let the kernel's 1 s of cached names pass.
    std::thread::sleep(Duration::from_millis(1100));
    assert_whole(&m, "swap");
}

#[test]
fn links_renames_and_writes_racing_keep_the_counters_exact() {
    let m = mount_home(limited());
    let out = run(&m, m.mnt(), "races", &["4"]);
    assert!(out.contains("done"), "{out}");
    assert_whole(&m, "races");
}
