//! Runs the Helm chart's Python test suite (`charts/tests`, pytest) so that
//! `cargo test --workspace` covers the chart, its docs snippets and the
//! Dockerfile. The suite renders and lints `charts/hubfs` with Helm's own Go
//! code (helm-python-sdk) and validates every manifest against Kubernetes
//! schemas (kubernetes-validate); `.ci/install-chart.sh` installs both. There
//! is no Kubernetes API server on these machines: nothing is applied.
//!
//! It also checks the chart's flags against the real `hubfs` CLI, so it
//! hands the suite the binary that this `cargo test` built.

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn hubfs_binary() -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    ["debug", "release"]
        .iter()
        .map(|p| target.join(p).join("hubfs"))
        .find(|p| p.is_file())
}

#[test]
fn chart_python_suite_passes() {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let mut cmd = Command::new(&python);
    cmd.args([
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "charts/tests",
    ])
    .current_dir(repo());
    if let Some(bin) = hubfs_binary() {
        cmd.env("HUBFS_BIN", bin);
    }
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {python} -m pytest ({e}); run .ci/install-chart.sh")
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // pytest exits 5 when it collected no tests: that is a failure here too.
    assert!(
        out.status.success(),
        "charts/tests failed (exit {:?}; 5 means no tests were collected, \
         `No module named pytest` means run .ci/install-chart.sh):\n{stdout}\n{stderr}",
        out.status.code()
    );
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.contains(" passed"))
        .unwrap_or("");
    let passed: u32 = summary
        .split_whitespace()
        .zip(summary.split_whitespace().skip(1))
        .find(|(_, w)| w.trim_end_matches(',') == "passed")
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(0);
    assert!(
        passed >= 50,
        "expected the full chart suite to run, got: {summary:?}\n{stdout}"
    );
    assert!(
        !summary.contains("skipped"),
        "no chart test may be skipped: {summary}"
    );
}
