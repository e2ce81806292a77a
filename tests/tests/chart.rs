//! Runs the Helm chart's Python test suite (`charts/tests`, pytest) so that
//! `cargo test --workspace` covers the chart, its docs snippets and the
//! Dockerfile. The suite renders and lints `charts/hubfs` with Helm's own Go
//! code (helm-python-sdk) and validates every manifest against Kubernetes
//! schemas (kubernetes-validate); `.ci/install-chart.sh` installs both. There
//! is no Kubernetes API server on these machines: nothing is applied.
//!
//! It also checks the chart's flags against the real `hubfs` CLI, so it
//! hands the suite the binary built from the current sources
//! ([`hubfs_e2e::hubfs_binary`]), and checks that the chart, the docs and the
//! binary agree on the quota controller's gRPC port.

use std::path::{Path, PathBuf};
use std::process::Command;

use hubfs_e2e::{hubfs_binary, output_text};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
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
    .current_dir(repo())
    .env("HUBFS_BIN", hubfs_binary());
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

/// `quotaController.grpcPort` from the chart's values.yaml.
fn chart_grpc_port() -> u16 {
    let values = std::fs::read_to_string(repo().join("charts/hubfs/values.yaml")).unwrap();
    let section = values
        .split_once("\nquotaController:")
        .expect("values.yaml has quotaController")
        .1;
    section
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with(' ') || l.starts_with('#'))
        .find_map(|l| l.trim().strip_prefix("grpcPort:"))
        .expect("quotaController.grpcPort in values.yaml")
        .trim()
        .parse()
        .expect("grpcPort is a number")
}

/// The port of every quota controller gRPC address in `text`: URLs whose host
/// names the quota service (`http://hubfs-quota:9500`,
/// `<release>-quota.<ns>.svc:9500`), `--grpc-listen` values and defaults
/// (`0.0.0.0:9500`) and "gRPC `9500`" in the chart docs. Lines setting
/// `HUBFS_QUOTA_URL` or `HUBFS_CONTROLLER_URL` name the controller's HTTP
/// API and are skipped.
fn quota_grpc_ports(text: &str) -> Vec<u16> {
    let port_at = |rest: &str| -> Option<u16> {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        (digits.len() >= 2).then(|| digits.parse().ok()).flatten()
    };
    let mut ports = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.contains("QUOTA_URL") && !l.contains("CONTROLLER_URL"))
    {
        for (i, _) in line.match_indices(':') {
            let host: String = line[..i]
                .chars()
                .rev()
                .take_while(|c| c.is_ascii_alphanumeric() || "-._<>{}/".contains(*c))
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            let quota_host = host.split('/').next_back().unwrap_or("").contains("quota");
            let grpc_listen = line.contains("grpc-listen") && host.ends_with("0.0.0.0");
            if quota_host || grpc_listen {
                ports.extend(port_at(&line[i + 1..]));
            }
        }
        for (i, m) in line.match_indices("gRPC `") {
            ports.extend(port_at(&line[i + m.len()..]));
        }
    }
    ports
}

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            markdown_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "md") {
            out.push(p);
        }
    }
}

#[test]
fn quota_grpc_port_parser_finds_every_form() {
    let text = "--report-to http://hubfs-quota:9090 and \
                value: http://{{ include \"x\" . }}-quota.ns.svc:9501\n\
                | `--grpc-listen` | reports (default `0.0.0.0:9502`) |\n\
                | Service | gRPC `9503` (usage), HTTP `9501` |\n\
                --http-listen 0.0.0.0:9600 http://hub:8081\n\
                HUBFS_QUOTA_URL=http://hubfs-quota:9501";
    assert_eq!(quota_grpc_ports(text), [9090, 9501, 9502, 9503]);
}

#[test]
fn chart_docs_and_binary_agree_on_the_quota_grpc_port() {
    let port = chart_grpc_port();

    let help = |args: &[&str]| {
        let out = Command::new(hubfs_binary()).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "hubfs {args:?}: {}",
            output_text(&out)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let controller = help(&["controller", "--help"]);
    let default = controller
        .split("--grpc-listen")
        .nth(1)
        .and_then(|s| s.split("[default: ").nth(1))
        .and_then(|s| s.split(']').next())
        .unwrap_or_else(|| panic!("no --grpc-listen default in:\n{controller}"));
    assert_eq!(
        default.rsplit(':').next().unwrap().parse::<u16>().unwrap(),
        port,
        "hubfs controller --grpc-listen default {default} vs chart grpcPort {port}"
    );
    let mut in_help = 0;
    for args in [&["csi", "--help"][..], &["mount", "home", "--help"]] {
        for p in quota_grpc_ports(&help(args)) {
            assert_eq!(p, port, "`hubfs {}` shows port {p}", args.join(" "));
            in_help += 1;
        }
    }
    assert!(
        in_help >= 2,
        "the help texts show an example endpoint ({in_help} found)"
    );

    let mut docs = vec![repo().join("README.md")];
    markdown_files(&repo().join("docs"), &mut docs);
    markdown_files(&repo().join("charts"), &mut docs);
    let mut in_docs = 0;
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap();
        for p in quota_grpc_ports(&text) {
            assert_eq!(
                p,
                port,
                "{} names port {p} for the quota controller",
                doc.display()
            );
            in_docs += 1;
        }
    }
    assert!(
        in_docs >= 3,
        "the docs name the quota gRPC port ({in_docs} found)"
    );
}
