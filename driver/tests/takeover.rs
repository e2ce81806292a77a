//! Upgrading a home's FUSE server in place: a second `hubfs mount home
//! --take-over` process adopts the live connection of the first while a
//! reader streams files and a writer appends through descriptors held open
//! across it. Real processes, real kernel FUSE, as root.
//!
//! Asserted: no read or write fails, every byte read and written is right
//! (sha256), the old server exits, the mount is the very same kernel mount
//! (mount id), the quota still answers EDQUOT, and the usage the controller
//! was told (walk baseline plus every delta, from both servers) is exactly
//! what the home holds. A new server that dies during the handover leaves the
//! old one serving, with no error seen by the reader. An idle server whose
//! process started with every signal blocked is taken over all the same.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hubfs_proto::quota::{
    quota_server::{Quota, QuotaServer},
    GetUserQuotaRequest, ReportKind, ReportUsageRequest, ReportUsageResponse, UserQuota,
};
use sha2::{Digest, Sha256};

use hubfs_e2e::csi::mount_ids_at;
use hubfs_e2e::{
    container, content, serial, sha, sigterm_and_wait, sigterm_container, wait_exit, wait_until,
    KillOnDrop,
};

/// How long any wait of these tests may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(90);

const MIB: usize = 1 << 20;

// The tests of this file run one at a time ([`serial`]): a fork while
// another test's mount is paused for a handover would wait on the FLUSH of
// inherited descriptors and, for the rollback test, keep its socket to the
// old server open meanwhile.

const QUOTA: u64 = 200 * MIB as u64;

/// The quota controller stand-in: keeps every report.
#[derive(Default, Clone)]
struct RecordingQuota {
    reports: Arc<Mutex<Vec<(i32, i64)>>>,
}

#[tonic::async_trait]
impl Quota for RecordingQuota {
    async fn report_usage(
        &self,
        req: tonic::Request<ReportUsageRequest>,
    ) -> Result<tonic::Response<ReportUsageResponse>, tonic::Status> {
        let rs = req.into_inner().reports;
        let n = rs.len() as u32;
        self.reports
            .lock()
            .unwrap()
            .extend(rs.iter().map(|r| (r.kind, r.bytes)));
        Ok(tonic::Response::new(ReportUsageResponse {
            accepted: n,
            duplicates: 0,
            quotas: vec![],
        }))
    }

    async fn get_user_quota(
        &self,
        _: tonic::Request<GetUserQuotaRequest>,
    ) -> Result<tonic::Response<UserQuota>, tonic::Status> {
        Err(tonic::Status::not_found("no policy in this stand-in"))
    }
}

impl RecordingQuota {
    /// What the controller believes: the last absolute figure plus every delta after it.
    fn believed_bytes(&self) -> i64 {
        let rs = self.reports.lock().unwrap();
        let start = rs
            .iter()
            .rposition(|(k, _)| *k == ReportKind::Absolute as i32)
            .expect("the walk's absolute report arrived");
        rs[start].1 + rs[start + 1..].iter().map(|(_, b)| b).sum::<i64>()
    }
}

fn quota_endpoint(rt: &tokio::runtime::Runtime) -> (String, RecordingQuota) {
    let svc = RecordingQuota::default();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let s = svc.clone();
    rt.spawn(async move {
        tonic::transport::Server::builder()
            .add_service(QuotaServer::new(s))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (format!("http://{addr}"), svc)
}

struct Home {
    _tmp: tempfile::TempDir,
    src: PathBuf,
    mnt: PathBuf,
    ctl: PathBuf,
    args: Vec<String>,
}

impl Home {
    fn new(report_to: Option<&str>) -> Home {
        hubfs_e2e::require_root("mounts FUSE homes");
        let tmp = tempfile::tempdir().unwrap();
        let (src, mnt) = (tmp.path().join("src"), tmp.path().join("mnt"));
        std::fs::create_dir(&src).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        let ctl = tmp.path().join("ctl.sock");
        let mut args: Vec<String> = [
            "mount",
            "home",
            "--foreground",
            "--user",
            "alice",
            "--quota",
            &QUOTA.to_string(),
            "--report-interval",
            "1",
            "--control",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(ctl.display().to_string());
        if let Some(r) = report_to {
            args.extend([
                "--report-to".into(),
                r.into(),
                "--node-id".into(),
                "n1".into(),
            ]);
        }
        args.extend([src.display().to_string(), mnt.display().to_string()]);
        Home {
            _tmp: tmp,
            src,
            mnt,
            ctl,
            args,
        }
    }

    fn server(&self, extra: &[&str]) -> KillOnDrop {
        KillOnDrop::new(
            Command::new(hubfs_e2e::hubfs_binary())
                .args(&self.args)
                .args(extra)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .spawn()
                .expect("start hubfs mount home"),
        )
    }

    /// The mount id of the one mount at the mountpoint.
    fn mount_id(&self) -> u32 {
        let ids = mount_ids_at(&self.mnt);
        assert_eq!(ids.len(), 1, "one mount at {}: {ids:?}", self.mnt.display());
        ids[0]
    }

    /// Waits for the mount to answer with its walk done, and for its
    /// control socket to accept connections.
    fn wait_ready(&self) {
        wait_until("the home comes up", Duration::from_secs(30), || {
            hubfs_e2e::csi::is_mounted(&self.mnt)
                && hubfs_e2e::home::usage_xattr(&self.mnt).contains("baseline=1")
        });
        hubfs_e2e::wait_for_socket(&self.ctl, Duration::from_secs(10), "control socket");
    }
}

fn usage_bytes(mnt: &Path) -> i64 {
    let u = hubfs_e2e::home::usage_xattr(mnt);
    u.split(' ')
        .find_map(|f| f.strip_prefix("bytes="))
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("bytes in {u:?}"))
}

#[derive(Default)]
struct Counts {
    passes: AtomicU64,
    errors: AtomicU64,
    bad_bytes: AtomicU64,
}

/// Streams `path` through one descriptor held open, pass after pass, each
/// pass checked against `want`; `daemon` drops the page cache after each
/// pass (and opens read-write, so the file is not a passthrough one) so
/// that every pass is served by the FUSE server.
fn reader(path: PathBuf, want: Vec<u8>, daemon: bool, stop: Arc<AtomicBool>, c: Arc<Counts>) {
    let mut f = OpenOptions::new()
        .read(true)
        .write(daemon)
        .open(&path)
        .unwrap();
    let mut buf = vec![0u8; 128 << 10];
    while !stop.load(Ordering::Relaxed) {
        let mut h = Sha256::new();
        let mut ok = true;
        if let Err(e) = f.seek(SeekFrom::Start(0)) {
            eprintln!("seek: {e}");
            c.errors.fetch_add(1, Ordering::Relaxed);
            ok = false;
        }
        while ok {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => h.update(&buf[..n]),
                Err(e) => {
                    eprintln!("read {}: {e}", path.display());
                    c.errors.fetch_add(1, Ordering::Relaxed);
                    ok = false;
                }
            }
        }
        if ok {
            if h.finalize().to_vec() != want {
                c.bad_bytes.fetch_add(1, Ordering::Relaxed);
            }
            c.passes.fetch_add(1, Ordering::Relaxed);
        }
        if daemon {
            let _ = nix::fcntl::posix_fadvise(
                f.as_fd(),
                0,
                0,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
        }
    }
}

/// Appends 16 KiB chunks through one descriptor until stopped (well below
/// the quota however slow the machine); returns what it wrote.
fn writer(path: PathBuf, stop: Arc<AtomicBool>, c: Arc<Counts>) -> Vec<u8> {
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(&path)
        .unwrap();
    let mut all = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let chunk = content(1000 + i, 16 << 10);
        match f.write_all(&chunk) {
            Ok(()) => {
                all.extend_from_slice(&chunk);
                c.passes.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                eprintln!("append: {e}");
                c.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    all
}

struct Load {
    stop: Arc<AtomicBool>,
    readers: Vec<(std::thread::JoinHandle<()>, Arc<Counts>)>,
    writer: Option<(std::thread::JoinHandle<Vec<u8>>, Arc<Counts>)>,
}

impl Load {
    /// A passthrough reader of `a`, a daemon-served reader of `b`, and a
    /// writer appending to `log` (if given).
    fn start(mnt: &Path, files: &[(&str, &Vec<u8>, bool)], log: Option<&str>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let readers = files
            .iter()
            .map(|(name, data, daemon)| {
                let c = Arc::new(Counts::default());
                let (p, w, s, c2) = (mnt.join(name), sha(data), stop.clone(), c.clone());
                let daemon = *daemon;
                (std::thread::spawn(move || reader(p, w, daemon, s, c2)), c)
            })
            .collect();
        let writer = log.map(|name| {
            let c = Arc::new(Counts::default());
            let (p, s, c2) = (mnt.join(name), stop.clone(), c.clone());
            (std::thread::spawn(move || writer(p, s, c2)), c)
        });
        Load {
            stop,
            readers,
            writer,
        }
    }

    fn progress(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .readers
            .iter()
            .map(|(_, c)| c.passes.load(Ordering::Relaxed))
            .collect();
        if let Some((_, c)) = &self.writer {
            v.push(c.passes.load(Ordering::Relaxed));
        }
        v
    }

    /// Waits until every reader and the writer made `n` more passes.
    fn advance(&self, n: u64) {
        let from = self.progress();
        wait_until("readers and writer make progress", PATIENCE, || {
            self.progress()
                .iter()
                .zip(&from)
                .all(|(now, then)| *now >= then + n)
        });
    }

    /// Stops; asserts no errors and correct bytes; returns what was appended.
    fn finish(self) -> Vec<u8> {
        self.stop.store(true, Ordering::Relaxed);
        for (t, c) in self.readers {
            t.join().unwrap();
            assert_eq!(c.errors.load(Ordering::Relaxed), 0, "read errors");
            assert_eq!(
                c.bad_bytes.load(Ordering::Relaxed),
                0,
                "passes with wrong bytes"
            );
        }
        match self.writer {
            Some((t, c)) => {
                let all = t.join().unwrap();
                assert_eq!(c.errors.load(Ordering::Relaxed), 0, "write errors");
                all
            }
            None => Vec::new(),
        }
    }
}

#[test]
fn a_new_server_takes_the_live_connection_over_with_no_error() {
    let _serial = serial();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (endpoint, quota) = quota_endpoint(&rt);
    let home = Home::new(Some(&endpoint));
    let (a, b) = (content(1, 24 * MIB), content(2, 16 * MIB));
    std::fs::write(home.src.join("a"), &a).unwrap();
    std::fs::write(home.src.join("b"), &b).unwrap();
    let mut old = home.server(&[]);
    home.wait_ready();
    let mount_id = home.mount_id();

    let load = Load::start(&home.mnt, &[("a", &a, false), ("b", &b, true)], Some("log"));
    load.advance(2);
    let mut new = home.server(&["--take-over", home.ctl.to_str().unwrap()]);
    let status = wait_exit(&mut old, Duration::from_secs(30));
    assert!(status.success(), "the old server exits cleanly: {status}");
    assert!(
        !Path::new(&format!("/proc/{}", old.id())).exists(),
        "the old server is gone"
    );
    assert!(new.try_wait().unwrap().is_none(), "the new server serves");
    // Served by the new server only from now on.
    load.advance(3);
    assert_eq!(home.mount_id(), mount_id, "the same kernel mount");
    // New opens, a writer joining the passthrough reader of `a` (the
    // adopted backing id), and listings work.
    let again = std::fs::read(home.mnt.join("b")).unwrap();
    assert_eq!(sha(&again), sha(&b));
    OpenOptions::new()
        .write(true)
        .open(home.mnt.join("a"))
        .unwrap();
    let names = std::fs::read_dir(&home.mnt).unwrap().count();
    assert_eq!(names, 3);
    let appended = load.finish();
    assert!(appended.len() >= 5 * (16 << 10));
    assert_eq!(
        sha(&std::fs::read(home.src.join("log")).unwrap()),
        sha(&appended),
        "every appended byte landed, in order"
    );

    // The quota holds across the takeover: usage is what the home holds.
    let held = (a.len() + b.len() + appended.len()) as i64;
    assert_eq!(usage_bytes(&home.mnt), held);
    let mut big = File::create(home.mnt.join("big")).unwrap();
    let mut written = 0u64;
    let err = loop {
        match big.write_all(&[7u8; MIB]) {
            Ok(()) => written += MIB as u64,
            Err(e) => break e,
        }
        assert!(written <= QUOTA, "no EDQUOT past the quota");
    };
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err}");
    drop(big);
    std::fs::remove_file(home.mnt.join("big")).unwrap();

    // SIGTERM: the new server unmounts the mount it took over and reports last.
    let status = sigterm_and_wait(&mut new, Duration::from_secs(30));
    assert!(status.success(), "the new server stops cleanly: {status}");
    assert!(
        !hubfs_e2e::csi::is_mounted(&home.mnt),
        "unmounted at the end"
    );
    assert_eq!(
        quota.believed_bytes(),
        held,
        "the controller was told every byte, by the old server and the new"
    );
}

#[test]
fn a_new_server_that_dies_mid_handover_leaves_the_old_one_serving() {
    let _serial = serial();
    let home = Home::new(None);
    let b = content(3, 8 * MIB);
    std::fs::write(home.src.join("b"), &b).unwrap();
    let mut old = home.server(&[]);
    home.wait_ready();
    let load = Load::start(&home.mnt, &[("b", &b, true)], Some("log"));
    load.advance(2);
    {
        // A "new server" that gets the whole package and dies before ready.
        let mut s = UnixStream::connect(&home.ctl).unwrap();
        hubfs_fuse::handoff::request(&mut s, "home").unwrap();
        let (state, fds) = hubfs_fuse::handoff::receive_package(&mut s).unwrap();
        let state = hubfs_fuse::home::handoff::HomeState::decode(&state).unwrap();
        assert!(fds.len() >= 2 + state.nodes.len() + state.files.len());
        assert!(
            state.files.len() >= 2,
            "the reader's and the writer's files are handed over"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    load.advance(3);
    assert!(
        old.try_wait().unwrap().is_none(),
        "the old server serves on"
    );
    // And a real takeover still works afterwards.
    let mut new = home.server(&["--take-over", home.ctl.to_str().unwrap()]);
    assert!(wait_exit(&mut old, Duration::from_secs(30)).success());
    load.advance(2);
    let appended = load.finish();
    assert_eq!(
        sha(&std::fs::read(home.src.join("log")).unwrap()),
        sha(&appended)
    );
    assert!(sigterm_and_wait(&mut new, Duration::from_secs(30)).success());
}

/// The old server's loops sleep in a blocking read of an idle device and
/// its process started with every signal blocked (as a child of a parent
/// that blocks them inherits): the pause must still wake every loop, or it
/// times out and the old server serves on. Asserted: the takeover happens
/// (the old server exits cleanly, the new one serves the same mount) and the
/// old server really had signals blocked.
#[test]
fn an_idle_server_started_with_signals_blocked_still_hands_over() {
    let _serial = serial();
    let home = Home::new(None);
    std::fs::write(home.src.join("f"), b"kept").unwrap();
    // python3 blocks every signal it may, then becomes the server.
    let mut argv = vec![hubfs_e2e::hubfs_binary().display().to_string()];
    argv.extend(home.args.iter().cloned());
    let mut old = KillOnDrop::new(
        Command::new("python3")
            .args([
                "-c",
                "import os, signal, sys; \
                 signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals) - {signal.SIGKILL, signal.SIGSTOP}); \
                 os.execv(sys.argv[1], sys.argv[1:])",
            ])
            .args(&argv)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .spawn()
            .expect("start hubfs mount home under python3"),
    );
    home.wait_ready();
    let status = std::fs::read_to_string(format!("/proc/{}/status", old.id())).unwrap();
    let blocked = status
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .map(|m| u64::from_str_radix(m.trim(), 16).unwrap())
        .unwrap();
    let sigurg = 1u64 << (libc::SIGURG - 1);
    assert_ne!(
        blocked & sigurg,
        0,
        "the server's main thread blocks SIGURG: {blocked:x}"
    );
    let mount_id = home.mount_id();
    // Idle: every loop is asleep in read when the pause comes.
    std::thread::sleep(Duration::from_millis(300));
    let mut new = home.server(&["--take-over", home.ctl.to_str().unwrap()]);
    let status = wait_exit(&mut old, Duration::from_secs(60));
    assert!(
        status.success(),
        "the old server handed over and exited: {status}"
    );
    assert!(new.try_wait().unwrap().is_none(), "the new server serves");
    assert_eq!(home.mount_id(), mount_id, "the same kernel mount");
    assert_eq!(std::fs::read(home.mnt.join("f")).unwrap(), b"kept");
    assert!(sigterm_and_wait(&mut new, Duration::from_secs(30)).success());
}

/// `hubfs mounter` as PID 1 of its own PID namespace (a container), killed
/// with everything in it when the test ends, passed or not.
fn mounter_container(state: &Path, extra: &[&str]) -> KillOnDrop {
    KillOnDrop::new(
        container(hubfs_e2e::hubfs_binary())
            .args(["mounter", "--state-dir"])
            .arg(state)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start a mounter"),
    )
}

#[test]
fn a_new_mounter_takes_the_homes_over_and_the_old_one_exits() {
    let _serial = serial();
    use hubfs::mounter::{Kind, MounterClient, ServerSpec, Servers};
    hubfs_e2e::require_root("mounts, PID namespaces");
    let tmp = hubfs_e2e::csi::SharedDir::new();
    let d = tmp.path();
    let (state, share, target) = (d.join("state"), d.join("share/u1"), d.join("pods/p1/home"));
    std::fs::create_dir_all(&state).unwrap();
    std::fs::create_dir_all(&share).unwrap();
    let data = content(4, 8 * MIB);
    std::fs::write(share.join("data"), &data).unwrap();
    let socket = state.join("mounter.sock");

    let mut old = mounter_container(&state, &[]);
    hubfs_e2e::wait_for_socket(&socket, Duration::from_secs(30), "old mounter");
    let spec = ServerSpec {
        id: "home-u1".into(),
        kind: Kind::Home,
        args: [
            "mount",
            "home",
            "--foreground",
            "--user",
            "u1",
            "--quota",
            "1000000000",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([share.display().to_string()])
        .collect(),
        what: "home u1".into(),
    };
    let client = MounterClient::new(socket.clone());
    assert!(client.publish(&spec, &target, false).unwrap());
    let ids = mount_ids_at(&target);
    assert_eq!(ids.len(), 1);
    let ctl = state.join("homes/home-u1/ctl.sock");
    wait_until("the home's walk ends", PATIENCE, || {
        hubfs_e2e::home::usage_xattr(&target).contains("baseline=1")
    });
    assert!(
        ctl.exists(),
        "the mounter gives home servers a control socket"
    );

    let load = Load::start(&target, &[("data", &data, true)], Some("log"));
    load.advance(2);
    let ready = d.join("new.ready");
    let mut new = mounter_container(
        &state,
        &["--take-over", "--ready-file", ready.to_str().unwrap()],
    );
    wait_until("the new mounter is ready", PATIENCE, || ready.exists());
    hubfs_e2e::wait_for_socket(&socket, Duration::from_secs(30), "new mounter");
    // The old one owns nothing now and waits for its pod's deletion.
    assert!(old.try_wait().unwrap().is_none(), "the old mounter idles");
    let status = sigterm_container(&mut old, Duration::from_secs(10));
    assert!(status.success(), "the old mounter exits cleanly: {status}");
    load.advance(3);
    let appended = load.finish();
    assert_eq!(
        sha(&std::fs::read(share.join("log")).unwrap()),
        sha(&appended)
    );
    assert_eq!(
        mount_ids_at(&target),
        ids,
        "the same mount, nothing stacked"
    );
    let s = client.status().unwrap();
    assert_eq!(s.len(), 1);
    assert!(s[0].healthy && s[0].pid.is_some(), "{s:?}");
    assert_eq!(s[0].restarts, 0, "taken over, not replaced: {s:?}");
    // The new mounter supervises it: unpublish stops the server.
    assert!(client.unpublish(&target).unwrap());
    assert!(mount_ids_at(&target).is_empty());

    // SIGTERM to the mounter: it exits 0 at once.
    let status = sigterm_container(&mut new, Duration::from_secs(10));
    assert!(
        status.success(),
        "SIGTERM ends the mounter cleanly: {status}"
    );
    // Detaches the mounts below d, then d.
    drop(tmp);
}
