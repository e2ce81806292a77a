//! A real JupyterHub on loopback for the quota controller's integration
//! tests: `jupyterhub` (PyPI) with `configurable-http-proxy` (npm), a service
//! token holding exactly the scopes the controller needs, an admin service
//! for the test itself, and `SimpleLocalProcessSpawner` running a tiny HTTP
//! server so users can have running servers. `.ci/install-hub.sh` installs
//! both programs; a missing one fails the test with that hint.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The controller's minimal scopes (docs/quota.md).
pub const CONTROLLER_SCOPES: [&str; 4] = [
    "list:users",
    "read:users:activity",
    "read:servers",
    "delete:servers",
];

const SINGLEUSER: &str = r#"
import http.server, os, sys
port = None
for a in sys.argv[1:]:
    if a.startswith("--port="):
        port = int(a.split("=", 1)[1])
if port is None:
    url = os.environ["JUPYTERHUB_SERVICE_URL"]
    port = int(url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")
    do_HEAD = do_GET
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn require(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(program);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{program}` is not installed: run .ci/install-hub.sh (pip install jupyterhub; npm install -g configurable-http-proxy)");
}

/// The repository's root (for `quota/python/hubfs_spawn_hook.py`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[derive(Debug, Default, Clone)]
pub struct HubOptions {
    /// Install the hubfs spawn hook asking this controller URL.
    pub controller_url: Option<String>,
}

pub struct Hub {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    /// e.g. http://127.0.0.1:43121
    pub url: String,
    /// The controller's token (minimal scopes).
    pub service_token: String,
    /// The test's own admin token.
    pub admin_token: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("url", &self.url).finish()
    }
}

impl Hub {
    pub async fn start(opts: HubOptions) -> Hub {
        let jupyterhub = require("jupyterhub");
        require("configurable-http-proxy");
        let dir = tempfile::tempdir().unwrap();
        let (port, hub_port, api_port) = (free_port(), free_port(), free_port());
        let service_token = format!("svc{:032x}", rand_u128());
        let admin_token = format!("adm{:032x}", rand_u128());
        std::fs::write(dir.path().join("singleuser.py"), SINGLEUSER).unwrap();
        let hook = match &opts.controller_url {
            Some(_) => format!(
                "import sys\nsys.path.insert(0, {:?})\nimport hubfs_spawn_hook\nc.Spawner.pre_spawn_hook = hubfs_spawn_hook.pre_spawn_hook\n",
                repo_root().join("quota/python").display().to_string()
            ),
            None => String::new(),
        };
        let d = dir.path().display().to_string();
        let scopes: Vec<String> = CONTROLLER_SCOPES.iter().map(|s| format!("{s:?}")).collect();
        let config = format!(
            r#"import sys
c = get_config()
c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{hub_port}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.JupyterHub.db_url = "sqlite:///{d}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{d}/cookie_secret"
c.JupyterHub.pid_file = "{d}/jupyterhub.pid"
c.ConfigurableHTTPProxy.pid_file = "{d}/proxy.pid"
c.JupyterHub.authenticator_class = "dummy"
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = "{d}/homes/{{username}}"
c.Spawner.cmd = [sys.executable, "{d}/singleuser.py"]
c.Spawner.start_timeout = 60
# The spawn API answers with the hook's verdict, not 202, however loaded
# the machine is.
c.JupyterHub.slow_spawn_timeout = 60
c.Spawner.http_timeout = 60
c.JupyterHub.cleanup_servers = True
c.JupyterHub.services = [
    {{"name": "hubfs", "api_token": "{service_token}"}},
    {{"name": "test-admin", "api_token": "{admin_token}"}},
]
c.JupyterHub.load_roles = [
    {{"name": "hubfs", "scopes": [{scopes}], "services": ["hubfs"]}},
    {{"name": "test-admin", "scopes": ["admin:users", "admin:servers", "list:users", "read:users"], "services": ["test-admin"]}},
]
{hook}"#,
            scopes = scopes.join(", ")
        );
        std::fs::write(dir.path().join("jupyterhub_config.py"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("jupyterhub.log")).unwrap();
        // As root, the hub is PID 1 of its own PID namespace (a container):
        // killing it kills everything it started, the servers the
        // spawner put in sessions of their own included.
        let mut cmd = if nix::unistd::geteuid().is_root() {
            let mut c = Command::new("unshare");
            c.args(["--pid", "--fork", "--kill-child", "--"])
                .arg(&jupyterhub);
            c
        } else {
            Command::new(&jupyterhub)
        };
        cmd.arg("-f")
            .arg(dir.path().join("jupyterhub_config.py"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(u) = &opts.controller_url {
            cmd.env("HUBFS_QUOTA_URL", u);
            // A loaded test machine must not make the hook fail open.
            cmd.env("HUBFS_QUOTA_TIMEOUT", "30");
        }
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("start jupyterhub");
        let hub = Hub {
            child: Some(child),
            dir,
            url: format!("http://127.0.0.1:{port}"),
            service_token,
            admin_token,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        };
        hub.wait_up().await;
        hub
    }

    async fn wait_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(r) = self.http.get(format!("{}/hub/api/", self.url)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!("jupyterhub did not come up; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("jupyterhub.log")).unwrap_or_default()
    }

    fn api(&self, path: &str) -> String {
        format!("{}/hub/api/{path}", self.url)
    }

    /// Creates users in batches (the hub's bulk endpoint).
    pub async fn create_users(&self, names: &[String]) {
        for chunk in names.chunks(1000) {
            let r = self
                .http
                .post(self.api("users"))
                .header("Authorization", format!("token {}", self.admin_token))
                .json(&serde_json::json!({ "usernames": chunk }))
                .send()
                .await
                .unwrap();
            assert!(
                r.status().is_success(),
                "create users: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
    }

    /// Asks the hub to start a user's default server: (status, body).
    pub async fn request_spawn(&self, name: &str) -> (u16, String) {
        let r = self
            .http
            .post(self.api(&format!("users/{name}/server")))
            .header("Authorization", format!("token {}", self.admin_token))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    /// The user model as the admin sees it.
    pub async fn user(&self, name: &str) -> serde_json::Value {
        let r = self
            .http
            .get(self.api(&format!("users/{name}")))
            .header("Authorization", format!("token {}", self.admin_token))
            .send()
            .await
            .unwrap();
        r.json().await.unwrap()
    }

    pub async fn server_ready(&self, name: &str) -> bool {
        let u = self.user(name).await;
        u["servers"][""]["ready"].as_bool().unwrap_or(false)
    }

    pub async fn server_gone(&self, name: &str) -> bool {
        let u = self.user(name).await;
        u["servers"].get("").is_none() && u["server"].is_null()
    }

    /// Starts a server and waits until it is ready.
    pub async fn start_server(&self, name: &str) {
        let (code, body) = self.request_spawn(name).await;
        assert!(code == 201 || code == 202, "spawn {name}: {code} {body}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.server_ready(name).await {
            assert!(
                Instant::now() < deadline,
                "server of {name} never became ready; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until `cond` holds for a user's model, or panics after 60 s.
    pub async fn wait_for(
        &self,
        name: &str,
        what: &str,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let u = self.user(name).await;
            if cond(&u) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: {what} never happened: {u}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Kills the hub, its proxy and the servers it spawned (as root: its
    /// whole PID namespace; otherwise its process group, which the
    /// spawner's servers, in sessions of their own, outlive).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pgid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = c.wait();
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill();
    }
}

fn rand_u128() -> u128 {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    u128::from_le_bytes(b)
}
