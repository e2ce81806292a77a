//! POSIX conformance of the home layer: the same probe (permissions,
//! ownership, timestamps, links, renames incl. RENAME_NOREPLACE/EXCHANGE,
//! xattrs, fallocate, copy_file_range, error codes) runs as uid 1000 in a
//! native directory and in a mounted home; every line must be identical.

use hubfs_e2e::home as support;

use std::process::Command;

use hubfs_fuse::home::Limits;

const PROBE: &str = include_str!("home_posix/conformance.py");

fn probe(dir: &std::path::Path, script: &std::path::Path) -> String {
    let o = Command::new("setpriv")
        .args([
            "--reuid=1000",
            "--regid=1000",
            "--clear-groups",
            "--",
            "/usr/bin/python3",
        ])
        .arg(script)
        .arg(dir)
        .output()
        .expect("python3 is needed by the conformance probe (install python3)");
    assert!(
        o.status.success(),
        "probe crashed in {}: {}",
        dir.display(),
        support::text(&o)
    );
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn the_mounted_home_behaves_like_the_native_directory() {
    let m = support::mount_home(Limits {
        bytes: Some(1 << 30),
        ..Limits::default()
    });
    let script = m.dirs.tmp.path().join("probe.py");
    std::fs::write(&script, PROBE).unwrap();
    let native = m.dirs.tmp.path().join("native");
    std::fs::create_dir(&native).unwrap();
    std::os::unix::fs::chown(&native, Some(1000), Some(1000)).unwrap();

    let want = probe(&native, &script);
    let got = probe(m.mnt(), &script);
    let mut diffs = Vec::new();
    for (w, g) in want.lines().zip(got.lines()) {
        if w != g {
            diffs.push(format!("native: {w}\n  home: {g}"));
        }
    }
    assert_eq!(want.lines().count(), got.lines().count());
    assert!(
        want.lines().count() > 60,
        "the probe ran every check:\n{want}"
    );
    assert!(
        diffs.is_empty(),
        "{} of {} checks differ:\n{}",
        diffs.len(),
        want.lines().count(),
        diffs.join("\n")
    );

    // and the accounting still matches a walk after all of that
    let walk = hubfs_walker::Walker::default().walk(m.src()).unwrap();
    assert_eq!(m.usage(), (walk.usage_bytes() as i64, walk.inodes() as i64));
}
