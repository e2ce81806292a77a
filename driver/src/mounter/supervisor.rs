//! The real [`Servers`]: FUSE server processes as children, watched and
//! recovered in place.
//!
//! Each server is mounted once at `<state>/<kind>/<id>/mnt` and bind-mounted
//! onto its pod targets. When a server dies, its mount under the state dir
//! is detached, a new server is mounted there, and the new mount is
//! bind-mounted on top of each target's dead mount: a mount stacked on a
//! target propagates into containers that bound the target with `rslave`
//! (`mountPropagation: HostToContainer`); unmounting the dead one instead
//! would leave those containers with an empty directory. Files open at that
//! moment fail (ENOTCONN/EIO) and never hang; new opens reach the new server.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hubfs_fuse::mountinfo::{probe, MountState};
use hubfs_fuse::s3::credentials::StaticCredentials;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use parking_lot::Mutex;

use super::secrets::{check_credentials, wants_credentials, Secrets};
use super::state::{ServerRecord, State, StateFile};
use super::{Kind, ServerSpec, ServerStatus, Servers};
use crate::error::{DriverError, Result};
use crate::mounts::Mounts;

/// How a supervisor runs.
#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    pub state_dir: PathBuf,
    /// The `hubfs` binary servers are started from.
    pub exe: PathBuf,
    /// How long a server may take to answer at its mountpoint.
    pub start_timeout: Duration,
    /// How often children are checked for exit.
    pub watch_interval: Duration,
    /// The node's S3 data cache, if any: every S3 server gets its own
    /// subdirectory, named by its id (bucket, prefix and identity).
    pub s3_cache: Option<S3Cache>,
}

/// `hubfs mounter --s3-cache-dir/--s3-cache-size`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Cache {
    pub dir: PathBuf,
    /// Most bytes each server's cache holds.
    pub size: u64,
}

impl SupervisorConfig {
    /// The command that starts `spec`'s server — the one launch function
    /// of every server, at a first start, after a crash and for a live
    /// takeover: its arguments with the node's data cache and the metrics
    /// file (S3) and the control socket put in after `mount KIND
    /// --foreground`, then `extra` there too, the mountpoint last; stdin is
    /// the credentials pipe of a server with its own S3 identity, else
    /// nothing. The child, before its exec, sets `no_new_privs` and bounds
    /// its capabilities to its kind's ([`Kind::kept_capabilities`]) plus
    /// what mounting and the drop need, so no server can ever hold more
    /// even if its own drop were skipped. A bucket server starts no unmount
    /// guardian: the mounter detaches its mounts.
    pub fn server_command(
        &self,
        secrets: &Secrets,
        spec: &ServerSpec,
        extra: &[std::ffi::OsString],
    ) -> Result<Command> {
        let mp = spec.mountpoint(&self.state_dir);
        // A server with its own S3 identity reads it from its stdin, a pipe.
        let stdin = match wants_credentials(spec) {
            true => Stdio::from(secrets.pipe(spec)?),
            false => Stdio::null(),
        };
        let given = |flag: &str| spec.args.iter().any(|a| a == flag);
        let mut added: Vec<std::ffi::OsString> = Vec::new();
        if !given("--control") {
            // A new server can take the mount over (an upgrade).
            let ctl = super::control_path(&self.state_dir, spec);
            added.extend(["--control".into(), ctl.into_os_string()]);
        }
        if spec.kind == Kind::S3 && !given("--metrics-file") {
            // Served by the mounter with every other server's (`metrics`).
            let file = super::metrics::metrics_file(&mp);
            added.extend(["--metrics-file".into(), file.into_os_string()]);
        }
        // The mounter detaches its servers' mounts itself: no guardian
        // (bucket and home servers alike).
        if !given("--no-guardian") {
            added.push("--no-guardian".into());
        }
        if let (Some(c), Kind::S3) = (&self.s3_cache, spec.kind) {
            added.extend([
                "--cache-dir".into(),
                c.dir_of(spec).into_os_string(),
                "--cache-size".into(),
                c.size.to_string().into(),
            ]);
        }
        added.extend(extra.iter().cloned());
        let mut args: Vec<std::ffi::OsString> = spec.args.iter().map(Into::into).collect();
        let at = 3.min(args.len());
        args.splice(at..at, added);
        let mut cmd = Command::new(&self.exe);
        cmd.args(&args).arg(&mp).stdin(stdin);
        let bounding = hubfs_sandbox::launch::launch_bounding(spec.kind.kept_capabilities());
        hubfs_sandbox::launch::confine(&mut cmd, bounding);
        Ok(cmd)
    }
}

impl S3Cache {
    fn dir_of(&self, spec: &ServerSpec) -> PathBuf {
        self.dir.join(&spec.id)
    }
}

impl SupervisorConfig {
    pub fn new(state_dir: PathBuf, exe: PathBuf) -> Self {
        Self {
            state_dir,
            exe,
            start_timeout: Duration::from_secs(30),
            watch_interval: Duration::from_millis(100),
            s3_cache: None,
        }
    }
}

/// A running server process: our child, or one adopted after a restart.
enum Proc {
    Child(Child),
    Adopted(u32),
}

impl Proc {
    fn pid(&self) -> u32 {
        match self {
            Proc::Child(c) => c.id(),
            Proc::Adopted(p) => *p,
        }
    }

    /// Whether the process has ended (reaping it if it is our child).
    fn ended(&mut self) -> bool {
        match self {
            Proc::Child(c) => !matches!(c.try_wait(), Ok(None)),
            Proc::Adopted(p) => kill(Pid::from_raw(*p as i32), None).is_err() || zombie(*p),
        }
    }
}

fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

struct Inner {
    state: State,
    procs: HashMap<String, Proc>,
    restarts: HashMap<String, u32>,
    /// Servers whose restart failed, and when to try again.
    retry_at: HashMap<String, Instant>,
    /// A new mounter is taking over: change nothing, write nothing.
    released: bool,
}

/// FUSE servers as supervised children.
pub struct Supervisor {
    cfg: SupervisorConfig,
    mounts: Arc<dyn Mounts>,
    file: StateFile,
    /// The S3 identities of servers, never in the state file.
    secrets: Secrets,
    inner: Mutex<Inner>,
    /// A new mounter took every server over: this one only waits to exit.
    handed_over: AtomicBool,
}

impl Supervisor {
    /// Loads the state file and brings every recorded server back: living
    /// ones (a restart without their death) are adopted, dead ones started
    /// again and stacked onto their targets.
    pub fn open(cfg: SupervisorConfig, mounts: Arc<dyn Mounts>) -> Arc<Self> {
        Self::open_with(cfg, mounts, HashMap::new())
    }

    /// As [`Supervisor::open`], with servers a mounter takeover started
    /// already (`taken`: our children, serving the recorded mounts).
    pub fn open_with(
        cfg: SupervisorConfig,
        mounts: Arc<dyn Mounts>,
        mut taken: HashMap<String, Child>,
    ) -> Arc<Self> {
        let file = StateFile::new(&cfg.state_dir);
        let mut state = file.load();
        // Targets whose directory is gone were unpublished while nobody listened.
        for rec in state.servers.values_mut() {
            rec.targets.retain(|t, _| {
                let keep = t.is_dir() || probe(t) != MountState::NotMounted;
                if !keep {
                    tracing::info!(target = %t.display(), "forgetting a target that no longer exists");
                }
                keep
            });
        }
        let sup = Arc::new(Self {
            secrets: Secrets::new(&cfg.state_dir),
            cfg,
            mounts,
            file,
            inner: Mutex::new(Inner {
                state,
                procs: HashMap::new(),
                restarts: HashMap::new(),
                retry_at: HashMap::new(),
                released: false,
            }),
            handed_over: AtomicBool::new(false),
        });
        let mut inner = sup.inner.lock();
        let mut dead = Vec::new();
        let ids: Vec<String> = inner.state.servers.keys().cloned().collect();
        for id in ids {
            if let Some(child) = taken.remove(&id) {
                tracing::info!(server = %id, pid = child.id(), "took a server over");
                inner.procs.insert(id, Proc::Child(child));
                continue;
            }
            let rec = &inner.state.servers[&id];
            let mp = rec.spec.mountpoint(&sup.cfg.state_dir);
            match rec.pid.filter(|p| serves(*p, &mp)) {
                Some(pid) if probe(&mp) == MountState::Healthy => {
                    tracing::info!(server = %id, pid, "adopted a running server");
                    inner.procs.insert(id, Proc::Adopted(pid));
                }
                _ => dead.push(id),
            }
        }
        if !dead.is_empty() {
            tracing::warn!(
                servers = dead.len(),
                "servers from the state file are not running; starting them again"
            );
            sup.recover(&mut inner, &dead);
        }
        sup.save(&inner);
        drop(inner);
        sup
    }

    /// Checks every server every `watch_interval`, on a thread of its own.
    pub fn watch(self: &Arc<Self>) -> std::thread::JoinHandle<()> {
        let me = Arc::downgrade(self);
        let every = self.cfg.watch_interval;
        std::thread::Builder::new()
            .name("hubfs-mounter".into())
            .spawn(move || {
                while let Some(s) = me.upgrade() {
                    s.check();
                    drop(s);
                    std::thread::sleep(every);
                }
            })
            .expect("spawn mounter thread")
    }

    /// Recovers every server whose process ended. Returns how many.
    pub fn check(&self) -> usize {
        let mut inner = self.inner.lock();
        if inner.released {
            return 0;
        }
        let now = Instant::now();
        let mut dead = Vec::new();
        for id in inner.state.servers.keys() {
            if inner.retry_at.get(id).is_some_and(|t| *t > now) {
                continue;
            }
            dead.push(id.clone());
        }
        dead.retain(|id| match inner.procs.get_mut(id) {
            Some(p) => {
                if p.ended() {
                    tracing::warn!(server = %id, pid = p.pid(), "FUSE server died; recovering in place");
                    true
                } else {
                    false
                }
            }
            None => true,
        });
        if dead.is_empty() {
            return 0;
        }
        let n = self.recover(&mut inner, &dead);
        self.save(&inner);
        n
    }

    fn save(&self, inner: &Inner) {
        if inner.released {
            return;
        }
        let mut state = inner.state.clone();
        for (id, rec) in state.servers.iter_mut() {
            rec.pid = inner.procs.get(id).map(Proc::pid);
        }
        if let Err(e) = self.file.save(&state) {
            tracing::error!(file = %self.file.path().display(), error = %e, "cannot write the mount state");
        }
    }

    /// Starts new servers for `ids` (all at once, then waits for each) and
    /// stacks them onto their targets. Returns how many came back.
    fn recover(&self, inner: &mut Inner, ids: &[String]) -> usize {
        let mut started = Vec::new();
        for id in ids {
            inner.procs.remove(id);
            let Some(rec) = inner.state.servers.get(id) else {
                continue;
            };
            let mp = rec.spec.mountpoint(&self.cfg.state_dir);
            detach_all(&mp);
            match self.spawn(&rec.spec) {
                Ok(child) => started.push((id.clone(), child)),
                Err(e) => {
                    tracing::error!(server = %id, error = %e, "cannot start the server again; retrying in 5 s");
                    inner
                        .retry_at
                        .insert(id.clone(), Instant::now() + Duration::from_secs(5));
                }
            }
        }
        let mut ok = 0;
        for (id, child) in started {
            let rec = inner.state.servers[&id].clone();
            let mp = rec.spec.mountpoint(&self.cfg.state_dir);
            match self.wait_serving(child, &rec.spec, &mp) {
                Ok(child) => {
                    inner.procs.insert(id.clone(), Proc::Child(child));
                    inner.retry_at.remove(&id);
                    *inner.restarts.entry(id.clone()).or_default() += 1;
                    for (target, ro) in &rec.targets {
                        if let Err(e) = self.restack(&mp, target, *ro) {
                            tracing::error!(server = %id, target = %target.display(), error = %e, "cannot present the new server at a target");
                        }
                    }
                    tracing::info!(server = %id, targets = rec.targets.len(), "server recovered");
                    ok += 1;
                }
                Err(e) => {
                    tracing::error!(server = %id, error = %e, "the server did not come back; retrying in 5 s");
                    inner
                        .retry_at
                        .insert(id.clone(), Instant::now() + Duration::from_secs(5));
                }
            }
        }
        ok
    }

    /// Puts a bind of `mp` on top of whatever `target` shows, unless it
    /// already shows a living `mp`. A target with nothing mounted is left for
    /// kubelet's next NodePublish (after a node reboot, say).
    fn restack(&self, mp: &Path, target: &Path, read_only: bool) -> Result<()> {
        let Some(top) = self.mounts.mounted_at(target)? else {
            return Ok(());
        };
        let want = self.mounts.mounted_at(mp)?.map(|m| m.device);
        if probe(target) == MountState::Healthy && want.as_deref() == Some(top.device.as_str()) {
            return Ok(());
        }
        self.mounts.bind(mp, target, read_only)?;
        Ok(())
    }

    fn spawn(&self, spec: &ServerSpec) -> Result<Child> {
        let mp = spec.mountpoint(&self.cfg.state_dir);
        std::fs::create_dir_all(&mp).map_err(|e| DriverError::io("create", &mp, e))?;
        let log = log_path(&self.cfg.state_dir, spec);
        let file = open_log(&log).map_err(|e| DriverError::io("open", &log, e))?;
        let out = file
            .try_clone()
            .map_err(|e| DriverError::io("dup", &log, e))?;
        let mut cmd = self.cfg.server_command(&self.secrets, spec, &[])?;
        let child = cmd
            .stdout(out)
            .stderr(file)
            .spawn()
            .map_err(|e| DriverError::io("start", &self.cfg.exe, e))?;
        tracing::info!(server = %spec.id, pid = child.id(), mountpoint = %mp.display(), "started {}", spec.what);
        Ok(child)
    }

    /// Waits until `child` serves `mp`; on failure it is stopped and the
    /// error carries its last words.
    fn wait_serving(&self, mut child: Child, spec: &ServerSpec, mp: &Path) -> Result<Child> {
        let log = log_path(&self.cfg.state_dir, spec);
        let deadline = Instant::now() + self.cfg.start_timeout;
        loop {
            if probe(mp) == MountState::Healthy {
                return Ok(child);
            }
            if let Ok(Some(status)) = child.try_wait() {
                // A server that mounted and then failed (a bucket it cannot
                // read) left its mount: it cannot unmount once dropped.
                detach_all(mp);
                return Err(DriverError::FailedPrecondition(format!(
                    "{} exited ({status}): {}",
                    spec.what,
                    log_tail(&log)
                )));
            }
            if Instant::now() > deadline {
                stop(&mut Proc::Child(child), mp);
                detach_all(mp);
                return Err(DriverError::FailedPrecondition(format!(
                    "{} did not come up within {} s: {}",
                    spec.what,
                    self.cfg.start_timeout.as_secs(),
                    log_tail(&log)
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Makes sure `spec`'s server answers: starts it, or replaces a dead one.
    fn ensure(&self, inner: &mut Inner, spec: &ServerSpec) -> Result<PathBuf> {
        let mp = spec.mountpoint(&self.cfg.state_dir);
        let alive = inner.procs.get_mut(&spec.id).is_some_and(|p| !p.ended());
        if alive && probe(&mp) == MountState::Healthy {
            return Ok(mp);
        }
        if let Some(mut p) = inner.procs.remove(&spec.id) {
            stop(&mut p, &mp);
        }
        detach_all(&mp);
        let child = self.spawn(spec)?;
        let child = self.wait_serving(child, spec, &mp)?;
        inner.procs.insert(spec.id.clone(), Proc::Child(child));
        inner.retry_at.remove(&spec.id);
        // Targets already bound to a dead predecessor get the new server too.
        if let Some(rec) = inner.state.servers.get(&spec.id) {
            for (target, ro) in &rec.targets {
                if let Err(e) = self.restack(&mp, target, *ro) {
                    tracing::error!(server = %spec.id, target = %target.display(), error = %e, "cannot present the new server at a target");
                }
            }
        }
        Ok(mp)
    }

    fn publish_locked(
        &self,
        inner: &mut Inner,
        spec: &ServerSpec,
        target: &Path,
        read_only: bool,
    ) -> Result<bool> {
        let owner = owner_of(&inner.state, target);
        if owner.as_ref().is_some_and(|o| o != &spec.id) {
            return Err(DriverError::AlreadyExists(format!(
                "{} is already published from another server",
                target.display()
            )));
        }
        let fresh = !inner.state.servers.contains_key(&spec.id);
        if fresh {
            inner.state.servers.insert(
                spec.id.clone(),
                ServerRecord {
                    spec: spec.clone(),
                    targets: Default::default(),
                    pid: None,
                },
            );
        }
        let mp = match self.ensure(inner, spec) {
            Ok(mp) => mp,
            Err(e) => {
                if fresh {
                    inner.state.servers.remove(&spec.id);
                } else {
                    // Users remain: the watcher tries again, not in a tight loop.
                    inner
                        .retry_at
                        .insert(spec.id.clone(), Instant::now() + Duration::from_secs(5));
                }
                return Err(e);
            }
        };
        let device = self.mounts.mounted_at(&mp)?.map(|m| m.device);
        let mounted = match self.mounts.mounted_at(target)? {
            None => {
                std::fs::create_dir_all(target)
                    .map_err(|e| DriverError::io("create", target, e))?;
                self.mounts.bind(&mp, target, read_only)?;
                true
            }
            Some(top) => {
                let shows_it = device.as_deref() == Some(top.device.as_str())
                    && probe(target) == MountState::Healthy;
                if shows_it && top.read_only == read_only {
                    false
                } else if owner.is_some() {
                    // Ours, but dead or stale: stack the living server on top.
                    self.mounts.bind(&mp, target, read_only)?;
                    true
                } else {
                    return Err(DriverError::AlreadyExists(format!(
                        "{} is already mounted from something else",
                        target.display()
                    )));
                }
            }
        };
        if let Some(rec) = inner.state.servers.get_mut(&spec.id) {
            rec.targets.insert(target.to_owned(), read_only);
        }
        Ok(mounted)
    }

    fn unpublish_locked(&self, inner: &mut Inner, target: &Path) -> Result<bool> {
        let Some(id) = owner_of(&inner.state, target) else {
            return Ok(false);
        };
        // Every layer: a target may hold dead mounts under the living one.
        for _ in 0..64 {
            if self.mounts.mounted_at(target)?.is_none() {
                break;
            }
            self.mounts.unmount(target)?;
        }
        let rec = inner
            .state
            .servers
            .get_mut(&id)
            .expect("owner has a record");
        rec.targets.remove(target);
        if rec.targets.is_empty() {
            let rec = rec.clone();
            let mp = rec.spec.mountpoint(&self.cfg.state_dir);
            let what = rec.spec.what.clone();
            inner.state.servers.remove(&id);
            inner.retry_at.remove(&id);
            if let Some(mut p) = inner.procs.remove(&id) {
                stop(&mut p, &mp);
            }
            detach_all(&mp);
            self.forget(&rec.spec);
            tracing::info!(server = %id, "last user gone; stopped {what}");
        }
        Ok(true)
    }
}

fn handing_over() -> DriverError {
    DriverError::Unavailable("the mounter is handing its servers to a new one; retry".into())
}

impl Supervisor {
    /// True once a new mounter took every server over (the process exits).
    pub fn handed_over(&self) -> bool {
        self.handed_over.load(Ordering::Acquire)
    }

    /// A takeover is under way (until [`Servers::release_end`]).
    pub fn releasing(&self) -> bool {
        self.inner.lock().released
    }

    /// Drops what a server that stopped for good leaves: its credentials
    /// and its data cache.
    fn forget(&self, spec: &ServerSpec) {
        self.secrets.forget(spec);
        if let (Some(c), Kind::S3) = (&self.cfg.s3_cache, spec.kind) {
            let _ = std::fs::remove_dir_all(c.dir_of(spec));
        }
    }

    fn publish_checked(
        &self,
        spec: &ServerSpec,
        target: &Path,
        read_only: bool,
        credentials: Option<&StaticCredentials>,
    ) -> Result<bool> {
        spec.validate()?;
        check_credentials(spec, credentials)?;
        let target = crate::paths::absolute("target", &target.to_string_lossy())?;
        let mut inner = self.inner.lock();
        if inner.released {
            return Err(handing_over());
        }
        if let Some(c) = credentials {
            self.secrets.put(spec, c)?;
        }
        let r = self.publish_locked(&mut inner, spec, &target, read_only);
        if r.is_err() && !inner.state.servers.contains_key(&spec.id) {
            self.forget(spec);
        }
        self.save(&inner);
        r
    }
}

impl Servers for Supervisor {
    fn release(&self) -> Result<()> {
        let mut inner = self.inner.lock();
        if inner.released {
            return Err(DriverError::FailedPrecondition(
                "another mounter is taking over already".into(),
            ));
        }
        // The last word: pids as they are, for the new mounter to read.
        self.save(&inner);
        inner.released = true;
        tracing::info!("handing the servers to a new mounter");
        Ok(())
    }

    fn release_end(&self, handed_over: bool) {
        if handed_over {
            self.handed_over.store(true, Ordering::Release);
        } else {
            tracing::warn!("the new mounter went away before it was done; supervising again");
            self.inner.lock().released = false;
        }
    }

    fn publish(&self, spec: &ServerSpec, target: &Path, read_only: bool) -> Result<bool> {
        self.publish_checked(spec, target, read_only, None)
    }

    fn publish_with_credentials(
        &self,
        spec: &ServerSpec,
        target: &Path,
        read_only: bool,
        credentials: &StaticCredentials,
    ) -> Result<bool> {
        self.publish_checked(spec, target, read_only, Some(credentials))
    }

    fn unpublish(&self, target: &Path) -> Result<bool> {
        let target = crate::paths::absolute("target", &target.to_string_lossy())?;
        let mut inner = self.inner.lock();
        if inner.released {
            return Err(handing_over());
        }
        let r = self.unpublish_locked(&mut inner, &target);
        self.save(&inner);
        r
    }

    fn status(&self) -> Result<Vec<ServerStatus>> {
        let inner = self.inner.lock();
        Ok(inner
            .state
            .servers
            .iter()
            .map(|(id, rec)| {
                let mountpoint = rec.spec.mountpoint(&self.cfg.state_dir);
                ServerStatus {
                    id: id.clone(),
                    what: rec.spec.what.clone(),
                    healthy: probe(&mountpoint) == MountState::Healthy,
                    mountpoint,
                    pid: inner.procs.get(id).map(Proc::pid),
                    targets: rec.targets.keys().cloned().collect(),
                    restarts: inner.restarts.get(id).copied().unwrap_or(0),
                }
            })
            .collect())
    }
}

fn owner_of(state: &State, target: &Path) -> Option<String> {
    state
        .servers
        .iter()
        .find(|(_, r)| r.targets.contains_key(target))
        .map(|(id, _)| id.clone())
}

/// Where the server of `spec` writes its stdout and stderr.
pub(super) fn log_path(state_dir: &Path, spec: &ServerSpec) -> PathBuf {
    spec.mountpoint(state_dir).with_file_name("server.log")
}

/// Opens a server's log (see [`log_path`]) to append to it.
pub(super) fn open_log(log: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
}

/// Whether `pid` is a living `hubfs mount` serving `mp` (not a reused pid).
fn serves(pid: u32, mp: &Path) -> bool {
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    !zombie(pid)
        && cmd
            .split(|b| *b == 0)
            .any(|a| a == mp.as_os_str().as_encoded_bytes())
}

/// Removes every mount at `mp`, lazily (a dead FUSE mount may be busy).
fn detach_all(mp: &Path) {
    for _ in 0..64 {
        if probe(mp) == MountState::NotMounted {
            return;
        }
        if let Err(e) = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(mountpoint = %mp.display(), error = %e, "cannot detach");
            return;
        }
    }
}

/// Asks a server to stop (SIGTERM: it sends its last report and exits;
/// one that has dropped cannot unmount, so the caller detaches `mp`
/// afterwards), then makes sure it is gone.
fn stop(p: &mut Proc, mp: &Path) {
    let pid = Pid::from_raw(p.pid() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.ended() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if !p.ended() {
        tracing::warn!(pid = p.pid(), mountpoint = %mp.display(), "server ignored SIGTERM; killing it");
        let _ = kill(pid, Signal::SIGKILL);
        if let Proc::Child(c) = p {
            let _ = c.wait();
        }
    }
}

/// The last lines of a server's log, joined on one line for an error message.
fn log_tail(path: &Path) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(2000)));
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    let lines: Vec<&str> = s.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_server_command_has_its_socket_cache_metrics_and_identity() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = SupervisorConfig::new(dir.path().into(), "/bin/hubfs".into());
        cfg.s3_cache = Some(S3Cache {
            dir: dir.path().join("cache"),
            size: 1 << 30,
        });
        let spec = ServerSpec {
            id: "s3-b".into(),
            kind: Kind::S3,
            args: [
                "mount",
                "s3",
                "--foreground",
                "--credentials-file",
                "/dev/fd/0",
                "bkt",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            what: "bucket b".into(),
        };
        let secrets = Secrets::new(dir.path());
        let creds = StaticCredentials {
            access_key_id: "AK".into(),
            secret_access_key: "SK".into(),
            session_token: None,
        };
        secrets.put(&spec, &creds).unwrap();
        let extra = ["--take-over".into(), "/x/ctl.sock".into()];
        let cmd = cfg.server_command(&secrets, &spec, &extra).unwrap();
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let mp = spec.mountpoint(dir.path()).display().to_string();
        assert_eq!(&args[..3], ["mount", "s3", "--foreground"]);
        assert_eq!(args[args.len() - 2..], ["bkt".to_string(), mp]);
        let pair = |k: &str| {
            let i = args
                .iter()
                .position(|a| a == k)
                .unwrap_or_else(|| panic!("{k} in {args:?}"));
            args[i + 1].clone()
        };
        assert_eq!(
            pair("--control"),
            super::super::control_path(dir.path(), &spec)
                .display()
                .to_string()
        );
        assert_eq!(pair("--take-over"), "/x/ctl.sock");
        assert_eq!(pair("--cache-size"), (1u64 << 30).to_string());
        assert!(pair("--metrics-file").ends_with("metrics.prom"), "{args:?}");
        // The identity arrives on stdin, never on the command line.
        assert!(!args.iter().any(|a| a.contains("SK")));
        assert!(
            args.iter().any(|a| a == "--no-guardian"),
            "the mounter unmounts: {args:?}"
        );
    }
}
