//! Harness for the end-to-end tests in `tests/tests/` and `driver/tests/`:
//! starting the real `hubfs` binary ([`hubfs_binary`]), connecting to it over
//! its unix socket as kubelet would, and refusing clearly to run what only
//! root can run ([`require_root`]).

pub mod csi;
pub mod garage;
pub mod hub;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

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

/// The `hubfs` binary of this workspace, built now from the current sources.
///
/// Integration tests inside `driver/` use `CARGO_BIN_EXE_hubfs`, which cargo
/// builds for them. This crate's tests cannot (the binary belongs to another
/// package), so the first call in a test process runs `$CARGO build -p hubfs
/// --bin hubfs --locked` with the profile and target directory this test
/// binary was built with, and every call returns that binary: never a stale
/// one left in `target/` by an earlier build. Cargo does nothing when the
/// binary is up to date.
pub fn hubfs_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(build_hubfs).clone()
}

fn build_hubfs() -> PathBuf {
    // This test binary is <target>/<profile dir>/deps/<name>-<hash>.
    let exe = std::env::current_exe().expect("path of this test binary");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary inside <target>/<profile>/deps");
    let target_dir = profile_dir.parent().expect("target directory");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_owned(),
        Some(other) => other.to_owned(),
        None => panic!("unexpected test binary path {}", exe.display()),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(&cargo)
        .args(["build", "--locked", "-p", "hubfs", "--bin", "hubfs"])
        .args(["--profile", &profile])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(&workspace)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo:?} build: {e}"));
    assert!(
        out.status.success(),
        "building the hubfs binary failed:\n{}",
        output_text(&out)
    );
    let bin = profile_dir.join("hubfs");
    assert!(bin.is_file(), "cargo built no {}", bin.display());
    bin
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
