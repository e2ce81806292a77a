//! `hubfs demo` run non-interactively: both mounts work, the quota trips,
//! and stopping it leaves nothing mounted and nothing behind. Needs root and
//! /dev/fuse, as the demo itself does.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn demo_mounts_a_bucket_and_a_home_whose_quota_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let mut child = Command::new(env!("CARGO_BIN_EXE_hubfs"))
        .args([
            "demo",
            "--small-objects",
            "1200",
            "--big-object",
            "6MiB",
            "--quota",
            "16MiB",
            "--exit-after",
            "300",
        ])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(240))
            .expect("demo never became ready");
        seen.push(line.clone());
        if line.contains("hubfs demo is ready") {
            break;
        }
    }
    let bucket = dir.join("s3/demo-data");
    let home = dir.join("home/jovyan");

    // The bucket: nested prefixes, 1200 small objects, the large one.
    let mut n = 0;
    for year in std::fs::read_dir(bucket.join("catalog")).unwrap() {
        for month in std::fs::read_dir(year.unwrap().path()).unwrap() {
            n += std::fs::read_dir(month.unwrap().path()).unwrap().count();
        }
    }
    assert_eq!(n, 1200);
    let big = bucket.join("images/cube-6MiB.bin");
    assert_eq!(std::fs::metadata(&big).unwrap().len(), 6 << 20);
    assert!(std::fs::read_to_string(bucket.join("README.txt"))
        .unwrap()
        .contains("hubfs demo"));
    assert!(
        std::fs::write(bucket.join("nope"), b"x").is_err(),
        "the bucket is read-only"
    );

    // The home: df shows the quota, copies work until the quota trips.
    let vfs = nix::sys::statvfs::statvfs(&home).unwrap();
    assert_eq!(vfs.blocks() as u64 * vfs.fragment_size() as u64, 16 << 20);
    let cp = |name: &str| {
        Command::new("cp")
            .arg(&big)
            .arg(home.join(name))
            .output()
            .unwrap()
    };
    assert!(cp("a.bin").status.success());
    assert!(cp("b.bin").status.success());
    let third = cp("c.bin");
    assert!(!third.status.success(), "18 MiB does not fit in 16 MiB");
    assert!(
        String::from_utf8_lossy(&third.stderr).contains("Disk quota exceeded"),
        "{}",
        String::from_utf8_lossy(&third.stderr)
    );
    // Deleting always works, and makes room again.
    std::fs::remove_file(home.join("c.bin")).unwrap();
    std::fs::remove_file(home.join("b.bin")).unwrap();
    assert!(cp("b.bin").status.success());

    // Ctrl-C: everything unmounted and removed.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "demo exit: {status}");
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !info.contains(&*dir.display().to_string()),
        "mounts left behind"
    );
    assert!(!dir.exists(), "demo dir removed");
}

#[test]
fn demo_says_what_is_missing_without_root() {
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_hubfs"))
        .args(["demo", "--dir", "/tmp/hubfs-demo-nobody"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs root"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
