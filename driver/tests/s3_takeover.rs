//! Upgrading a bucket's FUSE server in place: a second `hubfs mount s3
//! --take-over` process adopts the live connection of the first while a
//! reader streams a multi-MiB object through a descriptor held open across
//! it and a second thread lists and stats a deep path. Real processes, real
//! kernel FUSE, real Garage, as root.
//!
//! Asserted: no read, listing or stat fails, every pass of the reader has
//! the object's sha256, the old server exits, the mount is the very same
//! kernel mount (mount id), and afterwards new opens, listings and a write
//! (uploaded to the bucket) work. An open upload refuses the takeover: the
//! old server serves on and the upload completes. A new server that dies
//! with the package in hand leaves the old one serving, with no error seen
//! by the reader. A new mounter takes a bucket server with its own identity
//! over.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hubfs_e2e::garage::{client, Garage};
use hubfs_fuse::s3::s3client::S3Store;
use hubfs_fuse::s3::session::{probe, MountState};
use hubfs_fuse::s3::store::{collect, ObjectStore};
use sha2::{Digest, Sha256};

use hubfs_e2e::csi::mount_ids_at;
use hubfs_e2e::{
    container, content, serial, sha, sigterm_and_wait, sigterm_container, wait_exit, wait_until,
    KillOnDrop,
};

/// How long any wait of these tests may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(120);

const MIB: usize = 1 << 20;

// One test at a time ([`serial`]): a fork while the other test's mount is
// paused for a handover would wait, in `exec`, on the FLUSH of inherited
// descriptors.

/// A bucket mount and the command line of its servers.
struct Bucket {
    _tmp: tempfile::TempDir,
    mnt: PathBuf,
    ctl: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// A server process, stopped if the test ends early: SIGTERM, then killed
/// if it has not exited within 10 s.
fn server(c: std::process::Child) -> KillOnDrop {
    KillOnDrop::terminating(c, Duration::from_secs(10))
}

impl Bucket {
    fn new(g: &Garage) -> Bucket {
        hubfs_e2e::require_root("mounts FUSE buckets");
        let tmp = tempfile::tempdir().unwrap();
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let ctl = tmp.path().join("ctl.sock");
        let mut args: Vec<String> = [
            "mount",
            "s3",
            "--foreground",
            "--force-path-style",
            "--allow-writes",
            "--metadata-ttl",
            "1",
            "--endpoint-url",
            &g.endpoint,
            "--region",
            &g.region,
            "--control",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(ctl.display().to_string());
        args.push(g.bucket.clone());
        args.push(mnt.display().to_string());
        let env = vec![
            ("AWS_ACCESS_KEY_ID".into(), g.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), g.secret_key.clone()),
            ("RUST_LOG".into(), "info".into()),
        ];
        Bucket {
            _tmp: tmp,
            mnt,
            ctl,
            args,
            env,
        }
    }

    fn command(&self, extra: &[&str]) -> Command {
        let mut c = Command::new(hubfs_e2e::hubfs_binary());
        c.args(&self.args[..self.args.len() - 2])
            .args(extra)
            .args(&self.args[self.args.len() - 2..])
            .envs(self.env.iter().cloned())
            .env_remove("AWS_PROFILE")
            .stdin(Stdio::null());
        c
    }

    /// Starts the first server and waits, 30 s in all, for the mount and
    /// its control socket.
    fn serve(&self) -> KillOnDrop {
        let mut s = server(self.command(&[]).spawn().expect("start hubfs mount s3"));
        let within = Duration::from_secs(30);
        let took = wait_until("the mount comes up", within, || {
            assert!(s.try_wait().unwrap().is_none(), "the server exited");
            probe(&self.mnt) == MountState::Healthy
        });
        hubfs_e2e::wait_for_socket(&self.ctl, within.saturating_sub(took), "control socket");
        s
    }

    /// Starts a server that takes the mount over; `capture`: its stderr
    /// is kept for [`stderr_of`] (only for one that exits).
    fn take_over(&self, capture: bool) -> KillOnDrop {
        let ctl = self.ctl.display().to_string();
        let mut c = self.command(&["--take-over", &ctl]);
        if capture {
            c.stderr(Stdio::piped());
        }
        server(c.spawn().expect("start hubfs mount s3 --take-over"))
    }

    /// The mount id of the one mount at the mountpoint.
    fn mount_id(&self) -> u32 {
        let ids = mount_ids_at(&self.mnt);
        assert_eq!(ids.len(), 1, "one mount at {}: {ids:?}", self.mnt.display());
        ids[0]
    }
}

#[derive(Default)]
struct Counts {
    passes: AtomicU64,
    errors: AtomicU64,
    bad: AtomicU64,
    /// Longest single call, microseconds (reported, not asserted).
    longest_us: AtomicU64,
}

impl Counts {
    fn timed<T>(&self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        self.longest_us
            .fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        r
    }

    fn error(&self, what: &str, e: impl std::fmt::Display) {
        eprintln!("{what}: {e}");
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Streams `path` through one descriptor held open, pass after pass, each
/// checked against `want`; the page cache is dropped after each pass so
/// that every pass is served by the FUSE server.
fn reader(path: PathBuf, want: Vec<u8>, stop: Arc<AtomicBool>, c: Arc<Counts>) {
    let mut f = File::open(&path).unwrap();
    let mut buf = vec![0u8; 128 << 10];
    while !stop.load(Ordering::Relaxed) {
        let mut h = Sha256::new();
        let mut ok = f.seek(SeekFrom::Start(0)).is_ok();
        while ok {
            match c.timed(|| f.read(&mut buf)) {
                Ok(0) => break,
                Ok(n) => h.update(&buf[..n]),
                Err(e) => {
                    c.error("read", e);
                    ok = false;
                }
            }
        }
        if ok {
            if h.finalize().to_vec() != want {
                c.bad.fetch_add(1, Ordering::Relaxed);
            }
            c.passes.fetch_add(1, Ordering::Relaxed);
        }
        let _ = nix::fcntl::posix_fadvise(
            f.as_fd(),
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
    }
}

/// Lists `dir` and stats `file` in it until stopped; every listing must
/// hold `names` and every stat say `size`.
fn lister(dir: PathBuf, names: Vec<String>, size: u64, stop: Arc<AtomicBool>, c: Arc<Counts>) {
    while !stop.load(Ordering::Relaxed) {
        match c.timed(|| std::fs::read_dir(&dir).and_then(|d| d.collect::<Result<Vec<_>, _>>())) {
            Ok(entries) => {
                let mut got: Vec<String> = entries
                    .iter()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                got.sort();
                if got != names {
                    eprintln!("listing {got:?}");
                    c.bad.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => c.error("list", e),
        }
        match c.timed(|| std::fs::metadata(dir.join(&names[0]))) {
            Ok(m) if m.len() == size => {}
            Ok(m) => {
                eprintln!("stat size {}", m.len());
                c.bad.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => c.error("stat", e),
        }
        c.passes.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn get(rt: &tokio::runtime::Runtime, s3: &S3Store, bucket: &str, key: &str) -> Vec<u8> {
    rt.block_on(async {
        let s = s3.get_range(bucket, key, 0..u64::MAX, None).await.unwrap();
        collect(s).await.unwrap().to_vec()
    })
}

fn put(rt: &tokio::runtime::Runtime, s3: &S3Store, bucket: &str, key: &str, data: &[u8]) {
    rt.block_on(s3.put(bucket, key, bytes::Bytes::copy_from_slice(data)))
        .unwrap();
}

fn stderr_of(mut s: KillOnDrop) -> (std::process::ExitStatus, String) {
    let status = wait_exit(&mut s, Duration::from_secs(60));
    let mut err = String::new();
    if let Some(mut e) = s.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status, err)
}

#[test]
fn a_bucket_server_is_taken_over_under_a_streaming_reader_and_a_lister() {
    let _one = serial();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let g = Garage::start("data");
    let s3 = rt.block_on(client(&g, &g.endpoint));
    let object = content(1, 24 * MIB);
    put(&rt, &s3, &g.bucket, "big.bin", &object);
    let deep = "a/b/c/d/e";
    let names: Vec<String> = (0..5).map(|i| format!("f{i}.txt")).collect();
    for (i, n) in names.iter().enumerate() {
        put(
            &rt,
            &s3,
            &g.bucket,
            &format!("{deep}/{n}"),
            &content(10, 1000 + i),
        );
    }
    let b = Bucket::new(&g);
    let mut old = b.serve();
    let id = b.mount_id();

    let stop = Arc::new(AtomicBool::new(false));
    let (rc, lc) = (Arc::new(Counts::default()), Arc::new(Counts::default()));
    let r = {
        let (p, w, s, c) = (
            b.mnt.join("big.bin"),
            sha(&object),
            stop.clone(),
            rc.clone(),
        );
        std::thread::spawn(move || reader(p, w, s, c))
    };
    let l = {
        let (p, n, s, c) = (b.mnt.join(deep), names.clone(), stop.clone(), lc.clone());
        std::thread::spawn(move || lister(p, n, 1000, s, c))
    };
    wait_until("a first pass of each", PATIENCE, || {
        rc.passes.load(Ordering::Relaxed) >= 1 && lc.passes.load(Ordering::Relaxed) >= 10
    });
    // The peers: the longest calls of a stretch without takeover (after
    // the first pass, as long as the takeover stretch below).
    rc.longest_us.store(0, Ordering::Relaxed);
    lc.longest_us.store(0, Ordering::Relaxed);
    let passes = rc.passes.load(Ordering::Relaxed);
    wait_until("two passes without takeover", PATIENCE, || {
        rc.passes.load(Ordering::Relaxed) >= passes + 2
    });
    let plain = (
        rc.longest_us.swap(0, Ordering::Relaxed),
        lc.longest_us.swap(0, Ordering::Relaxed),
    );
    let t = Instant::now();
    let new = b.take_over(false);
    let status = wait_exit(&mut old, Duration::from_secs(60));
    let handover = t.elapsed();
    assert!(status.success(), "the old server exits cleanly: {status}");
    let (passes, listings) = (
        rc.passes.load(Ordering::Relaxed),
        lc.passes.load(Ordering::Relaxed),
    );
    wait_until(
        "two more passes of each on the new server",
        PATIENCE,
        || {
            rc.passes.load(Ordering::Relaxed) >= passes + 2
                && lc.passes.load(Ordering::Relaxed) >= listings + 10
        },
    );
    stop.store(true, Ordering::Relaxed);
    r.join().unwrap();
    l.join().unwrap();
    let (read_us, list_us) = (
        rc.longest_us.load(Ordering::Relaxed),
        lc.longest_us.load(Ordering::Relaxed),
    );
    eprintln!(
        "takeover: old server gone {:.0} ms after the new one started; longest read call {:.1} ms vs {:.1} ms without takeover (x{:.1}), longest list/stat call {:.1} ms vs {:.1} ms (x{:.1}); {} reader passes, {} listings",
        handover.as_secs_f64() * 1e3,
        read_us as f64 / 1e3,
        plain.0 as f64 / 1e3,
        read_us as f64 / plain.0.max(1) as f64,
        list_us as f64 / 1e3,
        plain.1 as f64 / 1e3,
        list_us as f64 / plain.1.max(1) as f64,
        rc.passes.load(Ordering::Relaxed),
        lc.passes.load(Ordering::Relaxed),
    );
    for (what, c) in [("reader", &rc), ("lister", &lc)] {
        assert_eq!(c.errors.load(Ordering::Relaxed), 0, "{what} errors");
        assert_eq!(c.bad.load(Ordering::Relaxed), 0, "{what} wrong results");
    }
    let mut new = new;
    assert!(new.try_wait().unwrap().is_none(), "the new server serves");
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(old.id() as i32), None).is_err(),
        "the old server is gone"
    );
    assert_eq!(b.mount_id(), id, "the same kernel mount");

    // New opens, listings and a write, on the new server.
    put(&rt, &s3, &g.bucket, "later.txt", b"made after the takeover");
    assert_eq!(
        std::fs::read(b.mnt.join("later.txt")).unwrap(),
        b"made after the takeover"
    );
    assert_eq!(std::fs::read(b.mnt.join("big.bin")).unwrap(), object);
    let written = content(7, 3 * MIB + 5);
    std::fs::write(b.mnt.join(deep).join("written.bin"), &written).unwrap();
    assert_eq!(
        sha(&get(&rt, &s3, &g.bucket, &format!("{deep}/written.bin"))),
        sha(&written),
        "the write was uploaded"
    );
    let mut root: Vec<String> = std::fs::read_dir(&b.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    root.sort();
    assert_eq!(root, ["a", "big.bin", "later.txt"]);
    assert_eq!(std::fs::read_dir(b.mnt.join(deep)).unwrap().count(), 6);

    assert!(sigterm_and_wait(&mut new, Duration::from_secs(30)).success());
    assert_ne!(
        probe(&b.mnt),
        MountState::Healthy,
        "the new server unmounts at SIGTERM"
    );
    assert!(
        !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&b.mnt.display().to_string()),
        "no mount left"
    );
}

/// Copies stdin to the file named by argv[1] through one descriptor.
const WRITER: &str = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
while True:
    b = sys.stdin.buffer.read1(1 << 20)
    if not b:
        break
    while b:
        b = b[os.write(fd, b):]
os.close(fd)
"#;

#[test]
fn an_open_upload_refuses_the_takeover_and_completes() {
    let _one = serial();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let g = Garage::start("data");
    let s3 = rt.block_on(client(&g, &g.endpoint));
    put(&rt, &s3, &g.bucket, "kept.txt", b"still served");
    let b = Bucket::new(&g);
    let mut old = b.serve();
    let id = b.mount_id();
    let data = content(3, 20 * MIB + 17);
    // The writer is another process that neither forks nor duplicates the
    // descriptor (as `dd of=` and shell redirections do): closing any copy
    // of it (a FLUSH) ends the upload.
    let path = b.mnt.join("up.bin");
    let mut dd = server(
        Command::new("python3")
            .arg("-c")
            .arg(WRITER)
            .arg(&path)
            .stdin(Stdio::piped())
            .spawn()
            .expect("python3"),
    );
    let mut pipe = dd.stdin.take().unwrap();
    pipe.write_all(&data[..9 * MIB]).unwrap();
    wait_until("the upload is open", PATIENCE, || path.exists());

    let (status, err) = stderr_of(b.take_over(true));
    assert!(!status.success(), "the takeover is refused");
    assert!(err.contains("1 upload(s) in progress"), "{err}");
    assert!(
        old.try_wait().unwrap().is_none(),
        "the old server serves on"
    );

    pipe.write_all(&data[9 * MIB..]).unwrap();
    drop(pipe);
    assert!(wait_exit(&mut dd, Duration::from_secs(60)).success());
    assert_eq!(
        sha(&get(&rt, &s3, &g.bucket, "up.bin")),
        sha(&data),
        "the upload completed"
    );
    assert_eq!(
        std::fs::read(b.mnt.join("kept.txt")).unwrap(),
        b"still served"
    );
    assert_eq!(b.mount_id(), id);

    // Closed: the takeover goes through now.
    let mut new = b.take_over(false);
    assert!(wait_exit(&mut old, Duration::from_secs(60)).success());
    assert_eq!(b.mount_id(), id, "the same kernel mount");
    assert_eq!(std::fs::read(b.mnt.join("up.bin")).unwrap(), data);
    assert!(new.try_wait().unwrap().is_none(), "the new server serves");
}

/// `hubfs mounter` as PID 1 of its own PID namespace (a container).
fn mounter_container(state: &std::path::Path, extra: &[&str]) -> KillOnDrop {
    server(
        container(hubfs_e2e::hubfs_binary())
            .args(["mounter", "--state-dir"])
            .arg(state)
            .args(extra)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start a mounter"),
    )
}

#[test]
fn a_new_mounter_takes_a_bucket_server_over_with_its_identity() {
    let _one = serial();
    use hubfs::mounter::{control_path, Kind, MounterClient, ServerSpec, Servers};
    use hubfs_fuse::s3::s3client::StaticCredentials;
    hubfs_e2e::require_root("mounts, PID namespaces");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let g = Garage::start("data");
    let s3 = rt.block_on(client(&g, &g.endpoint));
    let object = content(5, 16 * MIB);
    put(&rt, &s3, &g.bucket, "big.bin", &object);
    let tmp = hubfs_e2e::csi::SharedDir::new();
    let d = tmp.path();
    let (state, target) = (d.join("state"), d.join("pods/p1/data"));
    std::fs::create_dir_all(&state).unwrap();
    let socket = state.join("mounter.sock");
    let mut old = mounter_container(&state, &[]);
    hubfs_e2e::wait_for_socket(&socket, Duration::from_secs(30), "old mounter");
    let spec = ServerSpec {
        id: "s3-data".into(),
        kind: Kind::S3,
        args: [
            "mount",
            "s3",
            "--foreground",
            "--force-path-style",
            "--endpoint-url",
            &g.endpoint,
            "--region",
            &g.region,
            "--credentials-file",
            "/dev/fd/0",
            &g.bucket,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        what: "bucket data".into(),
    };
    let creds = StaticCredentials {
        access_key_id: g.access_key.clone(),
        secret_access_key: g.secret_key.clone(),
        session_token: None,
    };
    let client = MounterClient::new(socket.clone());
    assert!(client
        .publish_with_credentials(&spec, &target, true, &creds)
        .unwrap());
    let ids = mount_ids_at(&target);
    assert_eq!(ids.len(), 1);
    let ctl = control_path(&state, &spec);
    wait_until("the bucket server's control socket", PATIENCE, || {
        ctl.exists()
    });

    let stop = Arc::new(AtomicBool::new(false));
    let rc = Arc::new(Counts::default());
    let r = {
        let (p, w, s, c) = (
            target.join("big.bin"),
            sha(&object),
            stop.clone(),
            rc.clone(),
        );
        std::thread::spawn(move || reader(p, w, s, c))
    };
    wait_until("a first pass", PATIENCE, || {
        rc.passes.load(Ordering::Relaxed) >= 1
    });
    let ready = d.join("new.ready");
    let mut new = mounter_container(
        &state,
        &["--take-over", "--ready-file", ready.to_str().unwrap()],
    );
    wait_until("the new mounter is ready", PATIENCE, || ready.exists());
    hubfs_e2e::wait_for_socket(&socket, Duration::from_secs(30), "new mounter");
    assert!(old.try_wait().unwrap().is_none(), "the old mounter idles");
    let status = sigterm_container(&mut old, Duration::from_secs(10));
    assert!(status.success(), "the old mounter exits cleanly: {status}");
    let passes = rc.passes.load(Ordering::Relaxed);
    wait_until("two more passes", PATIENCE, || {
        rc.passes.load(Ordering::Relaxed) >= passes + 2
    });
    stop.store(true, Ordering::Relaxed);
    r.join().unwrap();
    assert_eq!(rc.errors.load(Ordering::Relaxed), 0, "reader errors");
    assert_eq!(rc.bad.load(Ordering::Relaxed), 0, "wrong bytes read");
    assert_eq!(
        mount_ids_at(&target),
        ids,
        "the same mount, nothing stacked"
    );
    let s = client.status().unwrap();
    assert_eq!(s.len(), 1);
    assert!(s[0].healthy && s[0].pid.is_some(), "{s:?}");
    assert_eq!(s[0].restarts, 0, "taken over, not replaced: {s:?}");
    // The new server has the volume's identity (the mounter has none).
    put(&rt, &s3, &g.bucket, "later.txt", b"after the new mounter");
    assert_eq!(
        std::fs::read(target.join("later.txt")).unwrap(),
        b"after the new mounter"
    );
    assert!(client.unpublish(&target).unwrap());
    assert!(mount_ids_at(&target).is_empty());
    let status = sigterm_container(&mut new, Duration::from_secs(10));
    assert!(status.success(), "SIGTERM ends the mounter: {status}");
    // Detaches the mounts below d, then d.
    drop(tmp);
}

#[test]
fn a_new_server_that_dies_mid_handover_leaves_the_old_one_serving() {
    let _one = serial();
    use hubfs_fuse::handoff as wire;
    use hubfs_fuse::s3::fs::handoff::S3State;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let g = Garage::start("data");
    let s3 = rt.block_on(client(&g, &g.endpoint));
    let object = content(9, 8 * MIB);
    put(&rt, &s3, &g.bucket, "big.bin", &object);
    let b = Bucket::new(&g);
    let mut old = b.serve();
    let stop = Arc::new(AtomicBool::new(false));
    let rc = Arc::new(Counts::default());
    let r = {
        let (p, w, s, c) = (
            b.mnt.join("big.bin"),
            sha(&object),
            stop.clone(),
            rc.clone(),
        );
        std::thread::spawn(move || reader(p, w, s, c))
    };
    wait_until("a first pass", PATIENCE, || {
        rc.passes.load(Ordering::Relaxed) >= 1
    });

    // A "new server" that takes the whole package and dies before ready.
    let mut s = std::os::unix::net::UnixStream::connect(&b.ctl).unwrap();
    wire::request(&mut s, "s3").unwrap();
    let (bytes, fds) = wire::receive_package(&mut s).unwrap();
    let state = S3State::decode(&bytes).unwrap();
    assert_eq!(state.reads.len(), 1, "the reader's handle is in the state");
    assert_eq!(fds.len(), 2, "/dev/fuse and the control socket");
    drop(fds);
    drop(s);

    let passes = rc.passes.load(Ordering::Relaxed);
    wait_until("two more passes on the old server", PATIENCE, || {
        rc.passes.load(Ordering::Relaxed) >= passes + 2
    });
    assert!(
        old.try_wait().unwrap().is_none(),
        "the old server serves on"
    );
    // It can still be taken over, for real this time.
    let new = b.take_over(false);
    assert!(wait_exit(&mut old, Duration::from_secs(60)).success());
    let passes = rc.passes.load(Ordering::Relaxed);
    wait_until("two more passes on the new server", PATIENCE, || {
        rc.passes.load(Ordering::Relaxed) >= passes + 2
    });
    stop.store(true, Ordering::Relaxed);
    r.join().unwrap();
    assert_eq!(rc.errors.load(Ordering::Relaxed), 0, "reader errors");
    assert_eq!(rc.bad.load(Ordering::Relaxed), 0, "wrong bytes read");
    drop(new);
}
