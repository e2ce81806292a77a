//! `hubfs controller`, `hubfs check-quota` and `hubfs overquota` as users and
//! admins run them: the real binary, a real gRPC client and HTTP requests.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hubfs_proto::quota as pb;
use hubfs_proto::quota::quota_client::QuotaClient;

const BIN: &str = env!("CARGO_BIN_EXE_hubfs");
const GIB: i64 = 1 << 30;

/// A record as the EFS quota monitor hubfs replaces writes it (its example file).
const EFS_QUOTA_EXAMPLE: &str = include_str!("../../quota/tests/fixtures/efs-quota-example.yaml");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn hubfs(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_quota_reads_an_efs_quota_record_file() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("quota.yaml");
    std::fs::write(&f, EFS_QUOTA_EXAMPLE).unwrap();
    let (code, out, err) = hubfs(&["check-quota", "--file", f.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2.4 MiB of 200 GiB (0%)"), "{out}");
    assert!(out.contains("State:  ok"), "{out}");

    let over = EFS_QUOTA_EXAMPLE
        .replace("actual_bytes: 2469232", "actual_bytes: 225485783040")
        .replace("quota_state: ok", "quota_state: lockout");
    std::fs::write(&f, over).unwrap();
    let (code, out, _) = hubfs(&["check-quota", "--file", f.to_str().unwrap()]);
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains("210 GiB of 200 GiB (105%)") && out.contains("over your quota"),
        "{out}"
    );

    let (code, out, _) = hubfs(&["check-quota", "--file", f.to_str().unwrap(), "--json"]);
    assert_eq!(code, 4);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["record"]["user"], "jmiller@stsci.edu");

    std::fs::write(&f, "user: [broken\n").unwrap();
    let (code, _, err) = hubfs(&["check-quota", "--file", f.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("not a readable quota record"), "{err}");
}

#[test]
fn overquota_is_a_dry_run_unless_told_to_run() {
    let d = tempfile::tempdir().unwrap();
    let control = d.path().join("control");
    let rec_dir = control.join("legacy-dir-ada");
    std::fs::create_dir_all(&rec_dir).unwrap();
    let rec = EFS_QUOTA_EXAMPLE
        .replace("jmiller@stsci.edu", "ada")
        .replace(
            "actual_bytes: 2469232",
            &format!("actual_bytes: {}", 300 * GIB),
        );
    std::fs::write(rec_dir.join("quota.yaml"), &rec).unwrap();
    let cfg = d.path().join("config.yaml");
    std::fs::write(&cfg, "policy:\n  mode: graded\n").unwrap();
    let base = [
        "overquota",
        "--control-dir",
        control.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ];

    let (code, out, err) = hubfs(&[&base[..], &["--show-actions"]].concat());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("dry run"), "{out}");
    assert!(
        out.contains("ada") && out.contains("lockout") && out.contains("OVERQUOTA"),
        "{out}"
    );
    assert!(out.contains("inform_user"), "{out}");
    assert_eq!(
        std::fs::read_to_string(rec_dir.join("quota.yaml")).unwrap(),
        rec,
        "dry run changed the record"
    );

    let (code, out, _) = hubfs(&[&base[..], &["--states", "SOFT_USER"]].concat());
    assert_eq!(code, 0);
    assert!(!out.contains("ada"), "{out}");
    let (code, _, err) = hubfs(&[&base[..], &["--states", "FURIOUS"]].concat());
    assert_eq!(code, 1);
    assert!(err.contains("unknown overquota state"), "{err}");

    let (code, out, _) = hubfs(&[&base[..], &["--run"]].concat());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("done: OK -> OVERQUOTA:1"), "{out}");
    let after = std::fs::read_to_string(rec_dir.join("quota.yaml")).unwrap();
    assert!(after.contains("overquota_state: OVERQUOTA:1"), "{after}");
    assert!(after.contains("quota_state: lockout"), "{after}");
    // Running again the same day changes nothing more.
    let (_, out, _) = hubfs(&[&base[..], &["--run"]].concat());
    assert!(!out.contains("done:"), "{out}");
}

struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_http(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        loop {
            if let Ok(r) = reqwest::get(url).await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "controller never answered {url}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

#[test]
fn controller_decides_on_reports_and_answers_over_http() {
    let d = tempfile::tempdir().unwrap();
    let (grpc, http) = (free_port(), free_port());
    let users = d.path().join("users");
    std::fs::create_dir_all(&users).unwrap();
    let log = std::fs::File::create(d.path().join("controller.log")).unwrap();
    let child = Command::new(BIN)
        .args(["controller", "--control-dir"])
        .arg(d.path().join("control"))
        .arg("--users-dir")
        .arg(&users)
        .args([
            "--grpc-listen",
            &format!("127.0.0.1:{grpc}"),
            "--http-listen",
            &format!("127.0.0.1:{http}"),
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let _running = Running(child);
    let base = format!("http://127.0.0.1:{http}");
    wait_http(&format!("{base}/healthz"));
    let log_text = std::fs::read_to_string(d.path().join("controller.log")).unwrap();
    assert!(log_text.contains("no --hub-url"), "{log_text}");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = QuotaClient::connect(format!("http://127.0.0.1:{grpc}"))
            .await
            .unwrap();
        let report =
            |bytes: i64, kind: pb::ReportKind, source: pb::UsageSource, seq: u64| pb::UsageReport {
                user: "ada@example.org".into(),
                kind: kind as i32,
                source: source as i32,
                bytes,
                inodes: 3,
                measured_at: None,
                timed_out: false,
                walk_seconds: 0.5,
                sequence: seq,
            };
        let resp = client
            .report_usage(pb::ReportUsageRequest {
                node_id: "node-1".into(),
                reports: vec![report(
                    150 * GIB,
                    pb::ReportKind::Absolute,
                    pb::UsageSource::Walk,
                    1,
                )],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.quotas[0].quota_state, "ok");
        assert_eq!(resp.quotas[0].enforcement, pb::Enforcement::None as i32);
        let resp = client
            .report_usage(pb::ReportUsageRequest {
                node_id: "node-1".into(),
                reports: vec![report(
                    100 * GIB,
                    pb::ReportKind::Delta,
                    pb::UsageSource::Write,
                    2,
                )],
            })
            .await
            .unwrap()
            .into_inner();
        let q = &resp.quotas[0];
        assert_eq!(q.quota_state, "lockout");
        assert_eq!(q.enforcement, pb::Enforcement::Cleanup as i32);
        assert_eq!(q.used_bytes, 250 * GIB);
        assert!(q.message.contains("cleanup mode"), "{}", q.message);
        let got = client
            .get_user_quota(pb::GetUserQuotaRequest {
                user: "ada@example.org".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.quota_state, "lockout");
        let bad = client
            .report_usage(pb::ReportUsageRequest {
                node_id: "node-1".into(),
                reports: vec![pb::UsageReport {
                    user: String::new(),
                    ..report(1, pb::ReportKind::Delta, pb::UsageSource::Write, 3)
                }],
            })
            .await
            .unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);

        let v: serde_json::Value = reqwest::get(format!("{base}/v1/users/ada@example.org"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["quota_state"], "lockout");
        assert_eq!(
            v["spawn_allowed"], true,
            "cleanup mode lets the user in to clean up"
        );
        let missing = reqwest::get(format!("{base}/v1/users/nobody"))
            .await
            .unwrap();
        assert_eq!(missing.status().as_u16(), 404);
        let metrics = reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains(&format!(
                "hubfs_quota_used_bytes{{user=\"ada@example.org\"}} {}",
                250 * GIB
            )),
            "{metrics}"
        );
        assert!(
            metrics.contains("hubfs_quota_state{user=\"ada@example.org\",state=\"lockout\"} 1"),
            "{metrics}"
        );
    });

    let (code, out, err) = hubfs(&[
        "check-quota",
        "--controller",
        &base,
        "--user",
        "ada@example.org",
    ]);
    assert_eq!(code, 4, "{out}{err}");
    assert!(out.contains("250 GiB of 200 GiB (125%)"), "{out}");
    // The record on disk is in the efs-quota `quota.yaml` format.
    let rec = std::fs::read_to_string(
        Path::new(&d.path().join("control"))
            .join(
                hubfs_quota::UserKey::new("ada@example.org")
                    .unwrap()
                    .encoded(),
            )
            .join("quota.yaml"),
    )
    .unwrap();
    assert!(
        rec.contains("quota_state: lockout") && rec.contains("user: ada@example.org"),
        "{rec}"
    );
}
