//! Harness for the end-to-end tests in `tests/tests/` and `driver/tests/`:
//! starting the real `hubfs` binary ([`hubfs_binary`]), connecting to it over
//! its unix socket as kubelet would, and refusing clearly to run what only
//! root can run ([`require_root`]).

pub mod csi;
pub mod garage;
pub mod home;
pub mod hub;
pub mod kube;
pub mod quota;

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

/// Runs one test at a time within a test binary: hold the guard for the
/// whole test. Takeover tests need it: a test that forks (to start a server)
/// while another holds descriptors of a mount whose server is paused for a
/// handover would have its child wait, in `exec`, on the FLUSH of each
/// inherited descriptor until the pause ends. A test that failed while
/// holding it does not stop the others.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `len` pseudo-random bytes determined by `seed` (a linear congruential
/// generator): test data that differs per seed and is cheap to regenerate.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

/// The sha256 of `b`, to compare large contents in assertions.
pub fn sha(b: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(b).to_vec()
}

/// The sha256 (hex) of the file at `p`, read with 1 MiB reads as a reader
/// of a mount reads it; `on_read` hears the length of each read.
pub fn sha_of_file(p: &Path, mut on_read: impl FnMut(usize)) -> String {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read through the mount");
        if n == 0 {
            return hex::encode(h.finalize());
        }
        h.update(&buf[..n]);
        on_read(n);
    }
}

/// `program` as PID 1 of its own PID namespace (a container):
/// `unshare --pid --fork --kill-child -- program`, so that killing the
/// returned command's process kills everything in the namespace. Add
/// arguments, then spawn it; [`sigterm_container`] stops it as a container
/// runtime would.
pub fn container(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--pid", "--fork", "--kill-child", "--"])
        .arg(program);
    c
}

/// Sends SIGTERM to `child` and waits for it to exit, failing the test after
/// `within`.
#[track_caller]
pub fn sigterm_and_wait(child: &mut Child, within: Duration) -> ExitStatus {
    sigterm(child.id() as i32);
    wait_exit(child, within)
}

/// Sends SIGTERM to PID 1 of a [`container`] (the `unshare` process's child)
/// and waits for the container to exit, failing the test after `within`.
#[track_caller]
pub fn sigterm_container(unshare: &mut Child, within: Duration) -> ExitStatus {
    let kids = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", unshare.id()))
        .expect("children of the unshare process");
    let inner: i32 = kids
        .split_whitespace()
        .next()
        .expect("the container's PID 1")
        .parse()
        .unwrap();
    sigterm(inner);
    wait_exit(unshare, within)
}

#[track_caller]
fn sigterm(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
}

/// A child process that is stopped when dropped (the test ended, passed or
/// not), if it still runs: killed at once ([`KillOnDrop::new`]), or sent
/// SIGTERM first and killed only if it has not exited within a grace period
/// ([`KillOnDrop::terminating`]). Dereferences to the [`Child`].
pub struct KillOnDrop {
    child: Child,
    grace: Option<Duration>,
}

impl KillOnDrop {
    /// Killed (SIGKILL) when dropped.
    pub fn new(child: Child) -> KillOnDrop {
        KillOnDrop { child, grace: None }
    }

    /// Sent SIGTERM when dropped, and killed if it still runs after `grace`.
    pub fn terminating(child: Child, grace: Duration) -> KillOnDrop {
        KillOnDrop {
            child,
            grace: Some(grace),
        }
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let running = |c: &mut Child| c.try_wait().ok().flatten().is_none();
        if let Some(grace) = self.grace {
            if !running(&mut self.child) {
                return;
            }
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline && running(&mut self.child) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
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
