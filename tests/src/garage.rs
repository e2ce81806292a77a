//! A real Garage S3 server on loopback, for the S3 filesystem's tests.
//!
//! Each [`Garage`] runs its own `garage server --single-node` in a temporary
//! directory on free loopback ports, with a default key and bucket created
//! from the environment, and is killed when dropped. Its admin `/metrics`
//! endpoint counts S3 requests per API endpoint, server-side.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running Garage server.
#[derive(Debug)]
pub struct Garage {
    child: Child,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:<port>`
    pub endpoint: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    /// Created at start, readable and writable with the key.
    pub bucket: String,
    admin_addr: String,
    metrics_token: String,
    config: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// The garage binary: `$GARAGE_BIN`, `garage` on PATH, or `~/.cargo/bin/garage`.
pub fn garage_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("GARAGE_BIN") {
        return p.into();
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("garage");
            if p.is_file() {
                return p;
            }
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = PathBuf::from(home).join(".cargo/bin/garage");
        if p.is_file() {
            return p;
        }
    }
    panic!("garage (the S3 server these tests need) is not installed: run .ci/install-s3.sh or set GARAGE_BIN");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("/dev/urandom");
    hex(&buf)
}

impl Garage {
    /// Starts a server with bucket `bucket` and waits until it accepts S3 requests.
    pub fn start(bucket: &str) -> Garage {
        let bin = garage_binary();
        let dir = tempfile::tempdir().expect("temp dir");
        let (s3, rpc, admin) = (free_port(), free_port(), free_port());
        let metrics_token = random_hex(16);
        let config = format!(
            r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
admin_token = "{admin_token}"
metrics_token = "{metrics_token}"
"#,
            meta = dir.path().join("meta").display(),
            data = dir.path().join("data").display(),
            secret = random_hex(32),
            admin_token = random_hex(16),
        );
        let cfg_path = dir.path().join("garage.toml");
        std::fs::write(&cfg_path, config).expect("write garage.toml");
        let access_key = format!("GK{}", random_hex(12));
        let secret_key = random_hex(32);
        let log = std::fs::File::create(dir.path().join("garage.log")).expect("log file");
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&cfg_path)
            .args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_DEFAULT_ACCESS_KEY", &access_key)
            .env("GARAGE_DEFAULT_SECRET_KEY", &secret_key)
            .env("GARAGE_DEFAULT_BUCKET", bucket)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        let mut g = Garage {
            child,
            dir,
            endpoint: format!("http://127.0.0.1:{s3}"),
            region: "garage".into(),
            access_key,
            secret_key,
            bucket: bucket.to_string(),
            admin_addr: format!("127.0.0.1:{admin}"),
            metrics_token,
            config: cfg_path.clone(),
        };
        g.wait_ready();
        g
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("garage exited with {status}: {}", self.log());
            }
            // The default bucket exists once the admin API reports health and
            // the S3 port answers a request for it.
            if let Ok(text) = self.admin_get("/health") {
                if text.starts_with("HTTP/1.1 200") && self.s3_answers() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("garage did not become ready: {}", self.log());
    }

    fn s3_answers(&self) -> bool {
        let addr = self.endpoint.trim_start_matches("http://");
        let Ok(mut s) = TcpStream::connect(addr) else {
            return false;
        };
        let req = format!(
            "HEAD /{} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
            self.bucket
        );
        let mut out = String::new();
        s.write_all(req.as_bytes()).is_ok()
            && s.read_to_string(&mut out).is_ok()
            // Unsigned: 403 means the bucket resolved, 404 that it does not exist yet.
            && !out.starts_with("HTTP/1.1 404")
            && out.starts_with("HTTP/1.1")
    }

    /// Runs the garage CLI against this server (`bucket create`, ...).
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(garage_binary())
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run garage cli");
        assert!(
            out.status.success(),
            "garage {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates another bucket the default key may read and write.
    pub fn create_bucket(&self, name: &str) {
        self.cli(&["bucket", "create", name]);
        self.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            name,
            "--key",
            &self.access_key,
        ]);
    }

    /// Garage's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("garage.log")).unwrap_or_default()
    }

    fn admin_get(&self, path: &str) -> std::io::Result<String> {
        let mut s = TcpStream::connect(&self.admin_addr)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            self.admin_addr, self.metrics_token
        );
        s.write_all(req.as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// S3 requests Garage has served, per API endpoint name
    /// (`ListObjectsV2`, `GetObject`, `HeadObject`, ...), counted server-side.
    pub fn s3_requests(&self, api_endpoint: &str) -> u64 {
        let text = self.admin_get("/metrics").expect("garage metrics");
        let needle = format!("api_endpoint=\"{api_endpoint}\"");
        text.lines()
            .filter(|l| l.starts_with("api_s3_request_counter") && l.contains(&needle))
            .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// All S3 requests served so far.
    pub fn s3_requests_total(&self) -> u64 {
        let text = self.admin_get("/metrics").expect("garage metrics");
        text.lines()
            .filter(|l| l.starts_with("api_s3_request_counter"))
            .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An S3 client for this server, to put test data in and check what a mount wrote.
pub async fn client(g: &Garage, endpoint: &str) -> hubfs_fuse::s3::s3client::S3Store {
    use hubfs_fuse::s3::s3client::{S3Config, S3Store, StaticCredentials};
    S3Store::new(&S3Config {
        endpoint_url: Some(endpoint.to_string()),
        region: Some(g.region.clone()),
        force_path_style: true,
        anonymous: false,
        max_attempts: 5,
        credentials: Some(StaticCredentials {
            access_key_id: g.access_key.clone(),
            secret_access_key: g.secret_key.clone(),
            session_token: None,
        }),
    })
    .await
}

/// The `hubfs` binary, built from the current sources (see [`crate::hubfs_binary`]).
pub fn hubfs_binary() -> PathBuf {
    crate::hubfs_binary()
}

/// A `hubfs mount s3 --foreground` process serving a Garage bucket.
#[derive(Debug)]
pub struct HubfsMount {
    child: Option<Child>,
    pub path: PathBuf,
    _dir: tempfile::TempDir,
    /// How it was started: the command's arguments and credentials.
    args: Vec<String>,
    credentials: (String, String),
}

impl HubfsMount {
    /// Mounts `sources` (BUCKET[:PREFIX]...) from `endpoint` with extra flags.
    pub fn start(g: &Garage, endpoint: &str, flags: &[&str], sources: &[&str]) -> HubfsMount {
        crate::require_root("an S3 mount is a kernel FUSE mount");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).expect("mountpoint");
        let mut args: Vec<String> = ["mount", "s3", "--foreground", "--force-path-style"]
            .iter()
            .map(|a| a.to_string())
            .collect();
        args.extend(["--endpoint-url", endpoint, "--region", &g.region].map(String::from));
        args.extend(flags.iter().chain(sources).map(|a| a.to_string()));
        let mut m = HubfsMount {
            child: None,
            path,
            _dir: dir,
            args,
            credentials: (g.access_key.clone(), g.secret_key.clone()),
        };
        m.spawn();
        m
    }

    /// Runs the server and waits until the mount answers.
    fn spawn(&mut self) {
        let child = Command::new(hubfs_binary())
            .args(&self.args)
            .arg(&self.path)
            .env("AWS_ACCESS_KEY_ID", &self.credentials.0)
            .env("AWS_SECRET_ACCESS_KEY", &self.credentials.1)
            .env_remove("AWS_PROFILE")
            .env("HUBFS_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("run hubfs mount s3");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if hubfs_fuse::s3::session::probe(&self.path)
                == hubfs_fuse::s3::session::MountState::Healthy
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("hubfs mount exited early with {status}");
            }
            assert!(Instant::now() < deadline, "mount did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A restart as a crash makes one: SIGKILL, the dead mount gone (its
    /// guardian detaches it; so does this, whichever comes first), and a
    /// fresh server with the same flags on the same mountpoint.
    pub fn restart(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL the server");
        child.wait().expect("reap the server");
        crate::wait_until("the dead mount is gone", Duration::from_secs(20), || {
            let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
            !crate::csi::is_mounted(&self.path)
        });
        self.spawn();
    }

    /// The FUSE process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("signal mount");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait mount") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("hubfs mount did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for HubfsMount {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
    }
}
