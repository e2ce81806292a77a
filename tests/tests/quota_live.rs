//! What a notebook user reads of their quota agrees with what the home just
//! did to them (issue 21), on a real kernel FUSE mount served by the real
//! `hubfs mount home`, reporting to the real `hubfs controller` on loopback.
//!
//! The bugs these reproduce: right after `dd` stopped with "Disk quota
//! exceeded", `hubfs check-quota` said "0 B of 100 MiB (0%). All is well."
//! (the controller had not heard yet: reports went out every 5 s), and in
//! the README demo it said 40 % (two batches behind). Now check-quota reads
//! the home's own counters, and the home reports a crossing to the
//! controller at once. Reports are counted from the controller's metrics;
//! nothing waits on a timer to make a figure right.

use hubfs_e2e::home::{as_user, text};
use hubfs_e2e::output_text;
use hubfs_e2e::quota::{check_quota, HomeProcess, QuotaController};

const USER: &str = "jmiller@stsci.edu";
const QUOTA: i64 = 20 << 20;

fn json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", output_text(o)))
}

#[test]
fn check_quota_right_after_edquot_shows_the_full_home() {
    let ctl = QuotaController::start(None);
    ctl.provision(USER, QUOTA);
    // Batches only once an hour: whatever the controller learns below, it
    // learns because a crossing was reported at once.
    let home = HomeProcess::mount(USER, "20MiB", Some(&ctl.grpc_url()), 3600);
    let mnt = home.mnt().to_str().unwrap().to_string();
    let before = ctl.reports();

    let out = as_user(&format!("dd if=/dev/zero of={mnt}/big bs=256K count=400"));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Disk quota exceeded"),
        "{}",
        text(&out)
    );
    let live: i64 = home.figure("bytes").parse().unwrap();
    assert!(live * 100 >= QUOTA * 95, "dd stopped at {live} of {QUOTA}");

    // At once, with no waiting: check-quota from the notebook's terminal.
    let out = check_quota(home.mnt(), Some(USER), Some(&ctl.url()), &["--json"]);
    let v = json(&out);
    assert_eq!(v["figures"], "home", "{v}");
    assert_eq!(v["record"]["actual_bytes"].as_i64(), Some(live), "{v}");
    assert_eq!(v["record"]["quota_bytes"].as_i64(), Some(QUOTA), "{v}");
    let usage = v["usage"].as_str().unwrap();
    assert!(
        usage.contains("of 20 MiB (99%)") || usage.contains("of 20 MiB (100%)"),
        "{usage}"
    );
    assert!(
        v["message"].as_str().unwrap().contains(usage),
        "the message speaks of the same bytes: {v}"
    );
    let out = check_quota(home.mnt(), Some(USER), Some(&ctl.url()), &[]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(2), "nearing-limit: {said}");
    assert!(
        said.contains("Source: figures from your home (live), state from the quota controller"),
        "{said}"
    );

    // The controller itself learnt of the crossings (warning line, full,
    // the refusal) without the hourly batch: a handful of reports at most.
    hubfs_e2e::wait_until(
        "the controller has the home's figure",
        std::time::Duration::from_secs(30),
        || ctl.user(USER)["record"]["actual_bytes"].as_i64() == Some(live),
    );
    let sent = ctl.reports() - before;
    assert!((1..=4).contains(&sent), "{sent} reports for one dd");
    let v = ctl.user(USER);
    assert_eq!(v["quota_state"], "nearing-limit", "{v}");

    // Deleting brings it back under: reported at once too.
    let out = as_user(&format!("rm {mnt}/big"));
    assert!(out.status.success(), "{}", text(&out));
    hubfs_e2e::wait_until(
        "the controller sees the delete",
        std::time::Duration::from_secs(30),
        || ctl.user(USER)["quota_state"] == "ok",
    );
    assert_eq!(ctl.user(USER)["record"]["actual_bytes"].as_i64(), Some(0));
    assert!(
        ctl.reports() - before <= sent + 1,
        "one report for the way back"
    );
}

#[test]
fn check_quota_answers_from_the_home_when_the_controller_is_down() {
    let mut ctl = QuotaController::start(None);
    ctl.provision(USER, QUOTA);
    let home = HomeProcess::mount(USER, "20MiB", Some(&ctl.grpc_url()), 3600);
    let mnt = home.mnt().to_str().unwrap().to_string();
    let out = as_user(&format!("head -c 17000000 /dev/zero > {mnt}/data"));
    assert!(out.status.success(), "{}", text(&out));
    ctl.kill();

    let out = check_quota(home.mnt(), Some(USER), Some(&ctl.url()), &[]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(said.contains("16.2 MiB of 20 MiB (81%)"), "{said}");
    assert!(said.contains("could not be reached"), "{said}");
    assert!(said.contains("no quota state"), "{said}");
    assert!(said.contains(&format!("User:   {USER}")), "{said}");

    // With no controller configured and no record file, the same figures.
    let out = check_quota(home.mnt(), None, None, &[]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        said.contains("(81%)") && said.contains("No quota controller given"),
        "{said}"
    );
}

#[test]
fn check_quota_where_home_is_not_a_hubfs_home() {
    let ctl = QuotaController::start(None);
    ctl.provision(USER, QUOTA);
    let plain = tempfile::tempdir().unwrap();
    // The controller knows the user from a report (another node's home).
    let home = HomeProcess::mount(USER, "20MiB", Some(&ctl.grpc_url()), 3600);
    hubfs_e2e::wait_until(
        "the walk is reported",
        std::time::Duration::from_secs(30),
        || ctl.user(USER)["known"] == true,
    );
    let out = check_quota(plain.path(), Some(USER), Some(&ctl.url()), &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let v = json(&out);
    assert_eq!(v["figures"], "controller", "{v}");
    assert!(v["live"].is_null(), "{v}");
    let out = check_quota(plain.path(), Some(USER), Some(&ctl.url()), &[]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("Source: figures from the quota controller, state from the quota controller"),
        "{said}"
    );
    // Neither a hubfs home nor a controller nor a record: a clear error.
    let out = check_quota(plain.path(), Some(USER), None, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/quota-control/quota.yaml"),
        "{}",
        output_text(&out)
    );
    drop(home);
}
