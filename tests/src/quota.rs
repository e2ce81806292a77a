//! Harness of the tests of what users see of their quota: the real `hubfs
//! controller` on loopback ([`QuotaController`]) and a home mounted by the
//! real `hubfs mount home` reporting to it ([`HomeProcess`]), as the CSI node
//! service starts one per notebook.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::home::{dirs, usage_xattr, Dirs};
use crate::hub::free_port;
use crate::{hubfs_binary, wait_until};

/// A running `hubfs controller` (no hub: accounting and states only).
pub struct QuotaController {
    pub dir: tempfile::TempDir,
    pub grpc: u16,
    pub http: u16,
    child: Option<Child>,
    /// Extra arguments it was started with (kept for a restart).
    config: Option<PathBuf>,
}

impl QuotaController {
    /// Starts it with its own control and users directories; `config` is
    /// YAML for `--config` (None: the defaults).
    pub fn start(config: Option<&str>) -> QuotaController {
        let dir = tempfile::Builder::new()
            .prefix("hubfs-quota-")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(dir.path().join("users")).unwrap();
        let config = config.map(|c| {
            let p = dir.path().join("config.yaml");
            std::fs::write(&p, c).unwrap();
            p
        });
        let mut c = QuotaController {
            dir,
            grpc: free_port(),
            http: free_port(),
            child: None,
            config,
        };
        c.spawn();
        c
    }

    fn spawn(&mut self) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("controller.log"))
            .unwrap();
        let mut cmd = Command::new(hubfs_binary());
        cmd.args(["controller", "--control-dir"])
            .arg(self.dir.path().join("control"))
            .arg("--users-dir")
            .arg(self.dir.path().join("users"))
            .args([
                "--grpc-listen",
                &format!("127.0.0.1:{}", self.grpc),
                "--http-listen",
                &format!("127.0.0.1:{}", self.http),
            ]);
        if let Some(cfg) = &self.config {
            cmd.arg("--config").arg(cfg);
        }
        self.child = Some(
            cmd.stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start hubfs controller"),
        );
        let url = format!("{}/healthz", self.url());
        wait_until(
            "the quota controller answers",
            Duration::from_secs(60),
            || http_get(&url).is_some_and(|(code, _)| code == 200),
        );
    }

    /// Records `user`'s provisioned capacity as the CSI controller does
    /// (`<users-dir>/.hubfs/<encoded user>.json`): the quota the controller
    /// then applies, the same the home enforces.
    pub fn provision(&self, user: &str, capacity_bytes: i64) {
        let meta = self.dir.path().join("users/.hubfs");
        std::fs::create_dir_all(&meta).unwrap();
        let key = hubfs_quota::UserKey::new(user).unwrap();
        std::fs::write(
            meta.join(format!("{}.json", key.encoded())),
            serde_json::json!({ "user": user, "capacity_bytes": capacity_bytes }).to_string(),
        )
        .unwrap();
    }

    /// The HTTP API's base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    /// The gRPC endpoint homes report to.
    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }

    /// `GET /v1/users/{name}` as JSON.
    pub fn user(&self, name: &str) -> serde_json::Value {
        let (_, body) = http_get(&format!("{}/v1/users/{name}", self.url())).expect("controller");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    /// The value of one metric line (`name{labels}`), 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        let (_, body) = http_get(&format!("{}/metrics", self.url())).expect("controller");
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Reports applied so far (write-time deltas and walks).
    pub fn reports(&self) -> u64 {
        (self.metric("hubfs_quota_reports_total{op=\"delta\"}")
            + self.metric("hubfs_quota_reports_total{op=\"absolute\"}")) as u64
    }

    /// SIGKILL, as a crashed pod.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("controller.log")).unwrap_or_default()
    }
}

impl Drop for QuotaController {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A blocking HTTP GET on loopback: (status, body), None if unreachable.
pub fn http_get(url: &str) -> Option<(u16, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
            .get(url)
            .send()
            .await
            .ok()?;
        let code = r.status().as_u16();
        Some((code, r.text().await.ok()?))
    })
}

/// A home mounted by `hubfs mount home --foreground`, owned by uid 1000.
pub struct HomeProcess {
    pub dirs: Dirs,
    child: Option<Child>,
}

impl HomeProcess {
    /// Mounts a fresh home for `user` with `quota`, reporting to `report_to`
    /// (if any) every `interval` seconds, and waits for its baseline walk.
    pub fn mount(user: &str, quota: &str, report_to: Option<&str>, interval: u64) -> HomeProcess {
        crate::home::require_root_fuse();
        let dirs = dirs();
        let mut cmd = Command::new(hubfs_binary());
        cmd.args([
            "mount",
            "home",
            "--foreground",
            "--user",
            user,
            "--quota",
            quota,
        ])
        .args([
            "--node-id",
            "node-1",
            "--report-interval",
            &interval.to_string(),
        ]);
        if let Some(to) = report_to {
            cmd.args(["--report-to", to]);
        }
        let child = cmd
            .arg(&dirs.source)
            .arg(&dirs.mnt)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start hubfs mount home");
        let mnt = dirs.mnt.clone();
        let h = HomeProcess {
            dirs,
            child: Some(child),
        };
        wait_until(
            "the home is mounted and walked",
            Duration::from_secs(60),
            || crate::csi::is_mounted(&mnt) && usage_xattr(&mnt).contains("baseline=1"),
        );
        h
    }

    pub fn mnt(&self) -> &Path {
        &self.dirs.mnt
    }

    /// The live `user.hubfs.usage` figure `key=` (bytes, inodes, …).
    pub fn figure(&self, key: &str) -> String {
        let text = usage_xattr(self.mnt());
        text.split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{key}=")).map(str::to_string))
            .unwrap_or_else(|| panic!("no {key}= in {text}"))
    }
}

impl Drop for HomeProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if crate::csi::is_mounted(&self.dirs.mnt) {
            let _ = nix::mount::umount2(&self.dirs.mnt, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Runs `hubfs check-quota ARGS` with the environment of a notebook
/// (`HOME`, `JUPYTERHUB_USER`, `HUBFS_CONTROLLER_URL`; None leaves it unset).
pub fn check_quota(
    home: &Path,
    user: Option<&str>,
    controller: Option<&str>,
    args: &[&str],
) -> Output {
    let mut cmd = Command::new(hubfs_binary());
    cmd.arg("check-quota").args(args).env("HOME", home);
    cmd.env_remove("JUPYTERHUB_USER")
        .env_remove("HUBFS_CONTROLLER_URL");
    if let Some(u) = user {
        cmd.env("JUPYTERHUB_USER", u);
    }
    if let Some(c) = controller {
        cmd.env("HUBFS_CONTROLLER_URL", c);
    }
    cmd.output().expect("run hubfs check-quota")
}
