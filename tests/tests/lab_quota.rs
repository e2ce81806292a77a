//! The quota in JupyterLab (issue 21), end to end with real components: a
//! home mounted by the real `hubfs mount home` (kernel FUSE) reporting to the
//! real `hubfs controller`, a real JupyterLab 4 (PyPI) with the
//! hubfs-jupyterlab extension running as the notebook user (uid 1000,
//! `$HOME` = the mount, the environment KubeSpawner gives), and headless
//! Debian chromium driven by playwright-core
//! (`quota/jupyterlab/tests/browser.mjs`) as a user filling their home.
//!
//! Asserted: the status bar's text and colour class at ~10 %, 85 % and 100 %
//! of a 20 MiB quota; the warning notification appears once however many
//! times the figures are asked; "What uses my space?" lists the biggest
//! folder first, opens it, and deletes it (the home and the controller both
//! go back under); jupyter-resource-usage's disk figures on the same home
//! are the quota. Needs `.ci/install-lab.sh` (chromium, a JupyterLab venv
//! at /opt/hubfs-lab readable by uid 1000, the built extension).
//! `HUBFS_SCREENSHOTS=docs/img` keeps the screenshots (the README's).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hubfs_e2e::home::USER as NOTEBOOK_UID;
use hubfs_e2e::hub::{free_port, repo_root};
use hubfs_e2e::quota::{http_get, HomeProcess, QuotaController};
use hubfs_e2e::{hubfs_binary, output_text, wait_until};

const USER: &str = "jmiller@stsci.edu";
const QUOTA: i64 = 20 << 20;
const INSTALL: &str = ".ci/install-lab.sh";

fn lab_venv() -> PathBuf {
    std::env::var_os("HUBFS_LAB_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/hubfs-lab"))
}

fn require(path: &Path, what: &str) {
    assert!(
        path.exists(),
        "{what} ({}) is missing: run {INSTALL}",
        path.display()
    );
}

/// JupyterLab as the notebook user; SIGTERM and reaped on drop.
struct Lab {
    child: Child,
    log: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_lab(home: &Path, controller: &str, port: u16, token: &str, state: &Path) -> Lab {
    let venv = lab_venv();
    for d in ["config", "data", "runtime"] {
        let p = state.join(d);
        std::fs::create_dir_all(&p).unwrap();
        std::os::unix::fs::chown(&p, Some(NOTEBOOK_UID), Some(NOTEBOOK_UID)).unwrap();
    }
    // No "official Jupyter news?" toast among the ones counted and shown.
    let settings = state.join("config/lab/user-settings/@jupyterlab/apputils-extension");
    std::fs::create_dir_all(&settings).unwrap();
    std::fs::write(
        settings.join("notification.jupyterlab-settings"),
        r#"{"fetchNews": "false"}"#,
    )
    .unwrap();
    let mut p = settings.as_path();
    while p != state {
        std::os::unix::fs::chown(p, Some(NOTEBOOK_UID), Some(NOTEBOOK_UID)).unwrap();
        p = p.parent().unwrap();
    }
    let log = state.join("lab.log");
    let child = Command::new("setpriv")
        .args([
            &format!("--reuid={NOTEBOOK_UID}"),
            &format!("--regid={NOTEBOOK_UID}"),
            "--clear-groups",
            "--",
        ])
        .arg(venv.join("bin/jupyter-lab"))
        .args([
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            &format!("--ServerApp.port={port}"),
            "--ServerApp.port_retries=0",
            &format!("--IdentityProvider.token={token}"),
            "--ResourceUseDisplay.track_disk_usage=True",
        ])
        .arg(format!("--ServerApp.root_dir={}", home.display()))
        .current_dir(home)
        .env_clear()
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin", venv.join("bin").display()),
        )
        .env("HOME", home)
        .env("JUPYTERHUB_USER", USER)
        .env("HUBFS_CONTROLLER_URL", controller)
        .env("HUBFS_BIN", hubfs_binary())
        .env("HUBFS_LAB_POLL_SECONDS", "0.5")
        .env("JUPYTER_CONFIG_DIR", state.join("config"))
        .env("JUPYTER_DATA_DIR", state.join("data"))
        .env("JUPYTER_RUNTIME_DIR", state.join("runtime"))
        .env("LC_ALL", "C.UTF-8")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start jupyter-lab");
    let lab = Lab { child, log };
    let url = format!("http://127.0.0.1:{port}/api/status?token={token}");
    wait_until("JupyterLab answers", Duration::from_secs(120), || {
        http_get(&url).is_some_and(|(code, _)| code == 200)
    });
    lab
}

#[test]
fn jupyterlab_shows_the_quota_warns_once_and_frees_space() {
    hubfs_e2e::home::require_root_fuse();
    let venv = lab_venv();
    require(&venv.join("bin/jupyter-lab"), "the JupyterLab venv");
    require(Path::new("/usr/bin/chromium"), "Debian's chromium");
    let ext = repo_root().join("quota/jupyterlab");
    require(&ext.join("node_modules/playwright-core"), "playwright-core");
    let installed = Command::new(venv.join("bin/jupyter"))
        .args(["labextension", "list"])
        .output()
        .unwrap();
    assert!(
        output_text(&installed).contains("hubfs-jupyterlab"),
        "the extension is not installed in the venv: run {INSTALL}\n{}",
        output_text(&installed)
    );

    let ctl = QuotaController::start(None);
    ctl.provision(USER, QUOTA);
    let home = HomeProcess::mount(USER, "20MiB", Some(&ctl.grpc_url()), 5);
    // A notebook user can reach their home's mountpoint.
    let state = tempfile::Builder::new()
        .prefix("hubfs-lab-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(
        state.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let (port, token) = (free_port(), "hubfs-test-token");
    let lab = start_lab(home.mnt(), &ctl.url(), port, token, state.path());

    let shots = std::env::var_os("HUBFS_SCREENSHOTS")
        .map(|p| repo_root().join(p))
        .unwrap_or_else(|| state.path().join("shots"));
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .arg(ext.join("tests/browser.mjs"))
        .env(
            "LAB_URL",
            format!("http://127.0.0.1:{port}/lab?token={token}"),
        )
        .env("HOME_DIR", home.mnt())
        .env("NOTEBOOK_UID", NOTEBOOK_UID.to_string())
        .env("SHOTS", &shots)
        .env("NODE_PATH", ext.join("node_modules"))
        .current_dir(&ext)
        .output()
        .expect("run node");
    let lab_log = std::fs::read_to_string(&lab.log).unwrap_or_default();
    assert!(
        out.status.success(),
        "the browser script failed: {}\n--- lab log\n{lab_log}",
        output_text(&out)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", output_text(&out)));
    let step = |name: &str| seen["steps"][name].clone();
    // "Home 19.9 of 20 MiB" -> 19.9 (Jupyter keeps a few KiB of its own in
    // the home, so a full home is 19.9 or 20).
    let figure = |s: &serde_json::Value| -> f64 {
        let t = s["text"].as_str().unwrap();
        let rest = t
            .strip_prefix("Home ")
            .and_then(|r| r.strip_suffix(" of 20 MiB"));
        rest.and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("status bar says {t:?}"))
    };
    let classes = |s: &serde_json::Value| s["classes"].to_string();

    // ~10 %: plain, no notification.
    let ten = step("ten");
    assert_eq!(ten["text"], "Home 2 of 20 MiB", "{seen}");
    assert!(classes(&ten).contains("jp-hubfs-quota-ok"), "{ten}");
    assert_eq!(ten["toasts"], 0, "{ten}");
    // 85 %: amber, and the warning said once.
    let warn = step("warning");
    assert_eq!(warn["text"], "Home 17 of 20 MiB", "{warn}");
    assert!(classes(&warn).contains("jp-hubfs-quota-warning"), "{warn}");
    assert_eq!(
        warn["toasts"], 1,
        "one notification for one crossing: {warn}"
    );
    let toast = warn["toast"].as_str().unwrap();
    assert!(
        toast.contains("17 MiB of 20 MiB (85%)") && toast.contains("warning line of 80%"),
        "{toast}"
    );
    // 100 %: dd stopped with EDQUOT, red.
    let full = step("full");
    assert!(!full["dd"]["ok"].as_bool().unwrap(), "{full}");
    assert!(
        full["dd"]["stderr"]
            .as_str()
            .unwrap()
            .contains("Disk quota exceeded"),
        "{full}"
    );
    assert!(figure(&full) >= 19.5, "{full}");
    assert!(classes(&full).contains("jp-hubfs-quota-critical"), "{full}");
    assert_eq!(full["toasts"], 1, "{full}");
    assert_eq!(full["warningToasts"], 1, "still one warning: {full}");
    // The space panel: biggest first, measured by hubfs du.
    let space = step("space");
    let rows = space["rows"].as_array().unwrap();
    assert_eq!(rows[0]["name"], "big", "{space}");
    assert_eq!(rows[0]["kind"], "dir", "{space}");
    assert_eq!(rows[1]["name"], "data", "{space}");
    assert!(
        space["foot"].as_str().unwrap().contains("hubfs du"),
        "{space}"
    );
    assert_eq!(
        space["inside"],
        serde_json::json!(["a.bin", "b.bin", "c.bin"]),
        "biggest first: {space}"
    );
    // Deleted from the panel: gone from the share, back to ~10 %.
    let deleted = step("deleted");
    assert!((2.0..2.2).contains(&figure(&deleted)), "{deleted}");
    assert!(classes(&deleted).contains("jp-hubfs-quota-ok"), "{deleted}");
    assert!(
        !deleted["rows"].to_string().contains("\"big\""),
        "{deleted}"
    );
    assert_eq!(deleted["toasts"], 1, "back under, said once: {deleted}");
    assert!(!home.dirs.source.join("big").exists());
    let live: i64 = home.figure("bytes").parse().unwrap();
    assert!(live < 3 << 20, "{live}");
    wait_until(
        "the controller is back to ok",
        Duration::from_secs(30),
        || ctl.user(USER)["quota_state"] == "ok",
    );

    // jupyter-resource-usage on the same home: statvfs shows the quota.
    let (code, body) = http_get(&format!(
        "http://127.0.0.1:{port}/api/metrics/v1?token={token}"
    ))
    .expect("jupyter-resource-usage answers");
    assert_eq!(code, 200, "{body}");
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(m["disk_total"].as_i64(), Some(QUOTA), "{m}");
    let used = m["disk_used"].as_i64().unwrap();
    assert!(
        (used - live).abs() <= 1 << 20,
        "disk_used {used}, home {live}"
    );
    drop(lab);
}

/// The server extension's logic (levels and words with the controller or
/// the home missing, hostile paths for the space panel) as Python unit
/// tests, from the sources, with the JupyterLab venv's Python.
#[test]
fn server_extension_unit_tests() {
    let python = lab_venv().join("bin/python");
    require(&python, "the JupyterLab venv");
    let out = Command::new(python)
        .args(["-m", "unittest", "discover", "-s", "tests", "-v"])
        .current_dir(repo_root().join("quota/jupyterlab"))
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("Ran 8 tests") && text.contains("OK"),
        "{text}"
    );
}
