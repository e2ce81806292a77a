//! Harness for the end-to-end tests in `tests/tests/` and `driver/tests/`:
//! starting the real `hubfs` binary ([`hubfs_binary`]), connecting to it over
//! its unix socket as kubelet would, and refusing clearly to run what only
//! root can run ([`require_root`]).

pub mod csi;
pub mod garage;
pub mod home;
pub mod hub;
pub mod kube;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Waits until a unix socket at `path` accepts a connection (not merely
/// exists: a server binds before it listens, and a server that died leaves
/// its socket file behind), failing the test with `what` after `within`.
#[track_caller]
pub fn wait_for_socket(path: &Path, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return,
            Err(e) => assert!(
                Instant::now() < deadline,
                "{what} ({}) does not accept connections: {e}",
                path.display()
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fails the calling test, with a message saying so, unless it runs as root.
///
/// Every system test that mounts (FUSE, bind mounts, tmpfs) or switches users
/// calls this first, so that `cargo test --workspace` as a developer without
/// root runs every unit test and reports each root-only test as a failure
/// that says "needs root", never as a silent pass. CI runs as root, where the
/// check passes and the test runs for real.
#[track_caller]
pub fn require_root(why: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root: {why}. This is a system test: run it as root (CI does); \
         unit tests (`cargo test --lib`) need no root"
    );
}

/// Fails the calling test unless `program` runs (`program --version`), naming
/// the script that installs it.
#[track_caller]
pub fn require_program(program: &str, install: &str) {
    assert!(
        Command::new(program).arg("--version").output().is_ok(),
        "{program} is missing: run {install}"
    );
}

/// A finished command's exit status, stdout and stderr as one readable text
/// for assertion messages.
pub fn output_text(o: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The `hubfs` binary of this workspace, checked to be built from the current
/// sources.
///
/// Integration tests inside `driver/` use `CARGO_BIN_EXE_hubfs`, which cargo
/// builds for them. This crate's tests cannot (the binary belongs to another
/// package), and a nested `cargo build` would compile the driver a second
/// time with another feature set (no dev-dependencies), so instead this finds
/// the binary in the target directory this test binary was built in (`cargo
/// test --workspace` builds it with every test) and fails, saying what to run,
/// when it is missing or older than any source it is built from: never a
/// stale one.
pub fn hubfs_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(locate_hubfs).clone()
}

fn locate_hubfs() -> PathBuf {
    // This test binary is <target>/<profile dir>/deps/<name>-<hash>.
    let exe = std::env::current_exe().expect("path of this test binary");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary inside <target>/<profile>/deps");
    let bin = profile_dir.join("hubfs");
    let how =
        "run `cargo test --workspace` (or `cargo build -p hubfs` before `cargo test -p hubfs-e2e`)";
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{} is missing ({e}): {how}", bin.display()));
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for dir in [
        "driver/src",
        "fuse-fs/src",
        "quota/src",
        "quota/walker/src",
        "proto",
    ] {
        newest_file(&workspace.join(dir), &mut newest);
    }
    for file in [
        "Cargo.lock",
        "driver/Cargo.toml",
        "fuse-fs/Cargo.toml",
        "quota/Cargo.toml",
    ] {
        consider(&workspace.join(file), &mut newest);
    }
    if let Some((t, path)) = newest {
        assert!(
            t <= built,
            "{} is older than {}: {how}",
            bin.display(),
            path.display()
        );
    }
    bin
}

fn consider(path: &Path, newest: &mut Option<(std::time::SystemTime, PathBuf)>) {
    if let Ok(t) = std::fs::metadata(path).and_then(|m| m.modified()) {
        if newest.as_ref().is_none_or(|(n, _)| t > *n) {
            *newest = Some((t, path.to_path_buf()));
        }
    }
}

fn newest_file(dir: &Path, newest: &mut Option<(std::time::SystemTime, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => newest_file(&path, newest),
            Ok(t) if t.is_file() => consider(&path, newest),
            _ => {}
        }
    }
}

/// Polls `f` until it holds, failing the test with `what` after `within`;
/// returns how long it took.
#[track_caller]
pub fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

/// Waits for `child` to exit, failing the test after `within`.
#[track_caller]
pub fn wait_exit(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().expect("wait for a child") {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "process {} did not exit within {within:?}",
            child.id()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_text_shows_both_streams() {
        let o = Command::new("sh")
            .args(["-c", "echo out; echo err >&2; exit 3"])
            .output()
            .unwrap();
        let t = output_text(&o);
        assert!(t.contains("out\n") && t.contains("err\n"), "{t}");
        assert!(t.contains('3'), "{t}");
    }
}
