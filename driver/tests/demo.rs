//! `hubfs demo` run non-interactively: both mounts work, the quota trips,
//! and stopping it leaves nothing mounted and nothing behind. Needs root and
//! /dev/fuse, as the demo itself does.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A small demo: a 6 MiB object, a 16 MiB quota, stopped after 5 minutes
/// at the latest.
const SMALL: &[&str] = &[
    "--big-object",
    "6MiB",
    "--quota",
    "16MiB",
    "--exit-after",
    "300",
];

/// Starts `hubfs demo ARGS --dir DIR`; its stdout lines arrive on the
/// channel, read to the end (the demo prints until it stops).
fn start_demo(
    args: &[&str],
    dir: &std::path::Path,
) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hubfs"))
        .arg("demo")
        .args(args)
        .arg("--dir")
        .arg(dir)
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
    (child, rx)
}

#[test]
fn demo_mounts_a_bucket_and_a_home_whose_quota_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let (mut child, rx) = start_demo(&[&["--small-objects", "1200"], SMALL].concat(), &dir);
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
    let endpoint = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the guide names the S3 endpoint");
        if let Some(rest) = line.split("S3 server at ").nth(1) {
            break rest.split([',', ' ', ')', ';']).next().unwrap().to_string();
        }
    };

    // First access by path, nothing listed yet (the guide's first command,
    // a notebook's `read_csv(path)`): two requests per name, no retries.
    let before = requests(&endpoint);
    let obs = std::fs::read_to_string(bucket.join("catalog/2023/07/obs-00026.json")).unwrap();
    assert!(obs.contains("\"id\": 26"), "{obs}");
    let after = requests(&endpoint);
    let d = |op: &str| after.get(op).unwrap_or(&0) - before.get(op).unwrap_or(&0);
    assert!(
        d("HeadObject") <= 4 && d("HeadObject") + d("ListObjectsV2") <= 8,
        "4 names: {before:?} -> {after:?}"
    );
    assert_eq!(d("GetObject"), 1, "{before:?} -> {after:?}");
    // Missing names are conclusive at once: HEAD 404 + empty LIST.
    for missing in ["catalog/1999/01/x.json", "catalog/2023/07/nope.json"] {
        let before = requests(&endpoint);
        let err = std::fs::metadata(bucket.join(missing)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{missing}");
        let after = requests(&endpoint);
        let total = |m: &BTreeMap<String, u64>| m.values().sum::<u64>();
        assert_eq!(
            total(&after) - total(&before),
            2,
            "{missing}: {before:?} -> {after:?}"
        );
    }

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

/// The requests the demo's S3 server has served, by operation.
fn requests(endpoint: &str) -> BTreeMap<String, u64> {
    let addr = endpoint.trim_start_matches("http://");
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(
        c,
        "GET /hubfs-demo-requests HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.lines()
        .filter_map(|l| {
            let (op, n) = l.split_once(' ')?;
            Some((op.to_string(), n.trim().parse().ok()?))
        })
        .collect()
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

/// The README's demo as its guide tells a new user to try it, with a user
/// named like `jmiller@stsci.edu`: the copy loop stops with "Disk quota
/// exceeded", and the guide's very next command, `check-quota`, must say
/// the home is full — it said "40%. All is well." when it took the figure
/// from the controller, which heard of usage every 5 s. Both commands are
/// run exactly as the guide prints them, one right after the other.
#[test]
fn demo_check_quota_right_after_edquot_says_full() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root: the demo mounts FUSE filesystems"
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let (child, rx) = start_demo(
        &[
            &["--user", "jmiller@stsci.edu", "--small-objects", "20"],
            SMALL,
        ]
        .concat(),
        &dir,
    );
    // Stopped with Ctrl-C whatever happens below.
    let demo = Demo(child);
    let mut guide = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(240))
            .expect("the demo prints its guide");
        if line.contains("Ctrl-C stops the demo") {
            break;
        }
        guide.push(line);
    }
    let command = |needle: &str| {
        let line = guide
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in the guide: {guide:#?}"));
        line.split(" # ").next().unwrap().trim().to_string()
    };
    let copy_loop = command("for i in 1 2 3");
    let check = command("check-quota");

    let out = Command::new("sh")
        .args(["-c", &copy_loop])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Disk quota exceeded"),
        "{copy_loop}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("sh")
        .args(["-c", &format!("{check} --json")])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{check}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    let used = v["record"]["actual_bytes"].as_i64().unwrap();
    assert!(used * 100 >= (16 << 20) * 95, "{check}: {v}");
    assert_eq!(v["figures"], "home", "{v}");
    assert_eq!(v["user"], "jmiller@stsci.edu");
    let out = Command::new("sh").args(["-c", &check]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "nearing-limit: {said}");
    assert!(
        said.contains("of 16 MiB (99%)") || said.contains("of 16 MiB (100%)"),
        "{said}"
    );
    assert!(!said.contains("All is well"), "{said}");
    drop(demo);
    assert!(!dir.exists(), "the demo cleaned up");
}

/// The demo, stopped with Ctrl-C (SIGINT) so that it unmounts, whatever
/// the test did.
struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.0.wait();
    }
}
