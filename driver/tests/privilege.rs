//! Least privilege of every FUSE server, read from the kernel: the
//! `/proc/PID/status` of each server a real `hubfs mounter` starts (a home
//! and a bucket on a real Garage; at a fresh start, after a SIGKILL, after
//! a live takeover by a new mounter) and of `hubfs mount s3` started by
//! hand as root (daemonized and in the foreground), with its unmount
//! guardian. Before issue 19 every one of them showed `Uid 0`, `CapEff
//! 000001fffeffffff`, `NoNewPrivs 0`.
//!
//! Each state is printed (`--nocapture`) for the figures of
//! `docs/helm.md`. `HUBFS_PRIVILEGE_BIN` runs the same checks against
//! another `hubfs` binary (the one of an older commit, to see them fail).
//! Needs root, /dev/fuse and Garage.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hubfs::mounter::{Kind, MounterClient, ServerSpec, Servers};
use hubfs_e2e::garage::Garage;
use hubfs_e2e::{require_root, serial, wait_exit, wait_for_socket, wait_until};
use hubfs_fuse::mountinfo::{probe, MountState};
use hubfs_sandbox::{Caps, Status};

const PATIENCE: Duration = Duration::from_secs(30);

fn hubfs() -> PathBuf {
    std::env::var_os("HUBFS_PRIVILEGE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_hubfs")))
}

/// A bucket server: uid and gid 65534, no supplementary group, nothing in
/// any capability set, no_new_privs, its seccomp allow-list.
fn assert_bucket_dropped(s: &Status, when: &str) {
    assert!(s.runs_as(65534, 65534), "{when}: bucket server {s}");
    assert!(s.groups.is_empty(), "{when}: bucket server {s}");
    assert!(s.holds_exactly(Caps::empty()), "{when}: bucket server {s}");
    assert!(s.no_new_privs, "{when}: bucket server {s}");
    assert_eq!(
        (s.seccomp, s.seccomp_filters),
        (2, 1),
        "{when}: bucket server {s}"
    );
}

/// A home server: uid 0, no_new_privs, and (its own drop, issue 22) exactly
/// the home layer's list in its permitted, effective and bounding sets,
/// nothing inheritable or ambient (`hubfs_fuse::home::SERVER_CAPABILITIES`;
/// its serving threads switch to each caller, see docs/home.md).
fn assert_home_confined(s: &Status, when: &str) {
    let mine = Status::current_thread().unwrap();
    let kept = hubfs_fuse::home::SERVER_CAPABILITIES & mine.cap_bnd;
    assert!(s.runs_as(0, 0), "{when}: home server {s}");
    assert!(s.no_new_privs, "{when}: home server {s}");
    assert_eq!(s.cap_bnd, kept, "{when}: home server {s}");
    assert_eq!(s.cap_prm, kept, "{when}: home server {s}");
    assert_eq!(s.cap_eff, kept, "{when}: home server {s}");
    assert!(
        s.cap_inh.is_empty() && s.cap_amb.is_empty(),
        "{when}: home server {s}"
    );
}

/// Whatever a test leaves, even when it fails half-way: every hubfs process
/// working below `dir` is killed and every mount below it detached.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let dir = self.0.display().to_string();
        for (pid, _) in hubfs_e2e::csi::hubfs_processes(|cmd| cmd.contains(&dir)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        hubfs_e2e::csi::detach_mounts_below(&self.0);
    }
}

/// A `hubfs mounter` on `state`, with the node's S3 identity (Garage's key).
fn mounter(g: &Garage, state: &Path, take_over: bool) -> Child {
    let mut c = Command::new(hubfs());
    c.arg("mounter").arg("--state-dir").arg(state);
    if take_over {
        c.arg("--take-over");
    }
    c.env("AWS_ACCESS_KEY_ID", &g.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &g.secret_key)
        .env_remove("AWS_PROFILE")
        .stdout(Stdio::null())
        .spawn()
        .expect("hubfs mounter")
}

fn spec(id: &str, kind: Kind, args: &[&str]) -> ServerSpec {
    ServerSpec {
        id: id.into(),
        kind,
        args: args.iter().map(|s| s.to_string()).collect(),
        what: format!("the {id} server"),
    }
}

/// The pid of each server (by kind), once every one is healthy.
fn servers(client: &MounterClient) -> Vec<(Kind, u32)> {
    let mut out = Vec::new();
    wait_until("every server healthy", PATIENCE, || {
        let st = client.status().unwrap_or_default();
        out = st
            .iter()
            .filter(|s| s.healthy)
            .filter_map(|s| {
                Some((
                    if s.id.starts_with("home") {
                        Kind::Home
                    } else {
                        Kind::S3
                    },
                    s.pid?,
                ))
            })
            .collect();
        st.len() == 2 && out.len() == 2
    });
    out
}

/// Waits until both servers are healthy processes other than `old`.
fn wait_replaced(client: &MounterClient, old: &[u32], what: &str) {
    wait_until(what, PATIENCE, || {
        let now: Vec<u32> = client
            .status()
            .unwrap_or_default()
            .iter()
            .filter(|s| s.healthy)
            .filter_map(|s| s.pid)
            .collect();
        now.len() == 2 && now.iter().all(|p| !old.contains(p))
    });
}

fn check_all(client: &MounterClient, when: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for (kind, pid) in servers(client) {
        let s = Status::of(pid).unwrap();
        println!("{when}: {} server pid {pid}: {s}", kind.as_str());
        match kind {
            Kind::S3 => assert_bucket_dropped(&s, when),
            Kind::Home => assert_home_confined(&s, when),
        }
        pids.push(pid);
    }
    pids
}

#[test]
fn every_server_the_mounter_starts_is_confined_fresh_restarted_and_taken_over() {
    require_root("starts a mounter and FUSE servers");
    let _one = serial();
    let g = Garage::start("priv");
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup(dir.path().to_owned());
    let state = dir.path().join("state");
    let share = dir.path().join("share/alice");
    std::fs::create_dir_all(&share).unwrap();
    let mut old = mounter(&g, &state, false);
    let socket = state.join("mounter.sock");
    wait_for_socket(&socket, PATIENCE, "the mounter");
    let client = MounterClient::new(socket.clone());
    let home = spec(
        "home-alice",
        Kind::Home,
        &[
            "mount",
            "home",
            "--foreground",
            "--user",
            "alice",
            "--quota",
            "1Gi",
            share.to_str().unwrap(),
        ],
    );
    let bucket = spec(
        "s3-priv",
        Kind::S3,
        &[
            "mount",
            "s3",
            "--foreground",
            "--force-path-style",
            "--endpoint-url",
            &g.endpoint,
            "--region",
            &g.region,
            "--allow-other",
            &g.bucket,
        ],
    );
    let (t_home, t_s3) = (
        dir.path().join("pods/p1/home"),
        dir.path().join("pods/p1/s3"),
    );
    client.publish(&home, &t_home, false).unwrap();
    client.publish(&bucket, &t_s3, true).unwrap();
    std::fs::write(t_home.join("hello"), b"hi").unwrap();
    assert!(std::fs::read_dir(&t_s3).is_ok(), "the bucket answers");

    let fresh = check_all(&client, "fresh start");

    // A crash: SIGKILL; the mounter starts each again through the same launch.
    for pid in &fresh {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    wait_replaced(&client, &fresh, "both servers replaced");
    let restarted = check_all(&client, "restart after SIGKILL");
    assert_eq!(std::fs::read(t_home.join("hello")).unwrap(), b"hi");

    // A live takeover by a new mounter: new server processes, same mounts.
    let mut new = mounter(&g, &state, true);
    wait_replaced(&client, &restarted, "the new mounter's servers");
    check_all(&client, "live takeover");
    assert_eq!(std::fs::read(t_home.join("hello")).unwrap(), b"hi");
    assert!(
        std::fs::read_dir(&t_s3).is_ok(),
        "the bucket answers after the takeover"
    );

    client.unpublish(&t_home).unwrap();
    client.unpublish(&t_s3).unwrap();
    for m in [&mut new, &mut old] {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(m.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        wait_exit(m, PATIENCE);
    }
    hubfs_e2e::csi::detach_mounts_below(dir.path());
}

/// The `hubfs mount s3` process serving `mnt`, and its guardian (a child
/// running `hubfs unmount-guard`).
fn by_hand_pids(mnt: &Path) -> (u32, Option<u32>) {
    let want = mnt.as_os_str().as_encoded_bytes();
    let mut server = None;
    let mut guardians = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).filter(|a| !a.is_empty()).collect();
        if args.windows(2).any(|w| w[0] == b"mount" && w[1] == b"s3") && args.last() == Some(&want)
        {
            server = Some(pid);
        }
        if args.iter().any(|a| *a == b"unmount-guard") {
            guardians.push(pid);
        }
    }
    let server = server.expect("the server of the mount");
    let ppid = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| {
                        l.strip_prefix("PPid:")
                            .map(|v| v.trim().parse::<u32>().ok())
                    })
                    .flatten()
            })
    };
    let guardian = guardians.into_iter().find(|g| ppid(*g) == Some(server));
    (server, guardian)
}

fn mount_by_hand(g: &Garage, mnt: &Path, foreground: bool) -> Option<Child> {
    let mut c = Command::new(hubfs());
    c.args(["mount", "s3"]);
    if foreground {
        c.arg("--foreground");
    }
    c.args([
        "--force-path-style",
        "--endpoint-url",
        &g.endpoint,
        "--region",
        &g.region,
        &g.bucket,
    ])
    .arg(mnt)
    .env("AWS_ACCESS_KEY_ID", &g.access_key)
    .env("AWS_SECRET_ACCESS_KEY", &g.secret_key)
    .env_remove("AWS_PROFILE")
    .stdout(Stdio::null());
    if foreground {
        let child = c.spawn().unwrap();
        wait_until("the mount answers", PATIENCE, || {
            probe(mnt) == MountState::Healthy
        });
        Some(child)
    } else {
        assert!(c.status().unwrap().success(), "hubfs mount s3 (daemonized)");
        None
    }
}

#[test]
fn a_bucket_server_started_by_hand_as_root_drops_and_only_its_guardian_keeps_sys_admin() {
    require_root("mounts FUSE buckets by hand");
    let g = Garage::start("hand");
    for foreground in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let _cleanup = Cleanup(dir.path().to_owned());
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let child = mount_by_hand(&g, &mnt, foreground);
        let how = if foreground {
            "by hand, --foreground"
        } else {
            "by hand, daemonized"
        };
        let (server, guardian) = by_hand_pids(&mnt);
        let s = Status::of(server).unwrap();
        println!("{how}: bucket server pid {server}: {s}");
        assert_bucket_dropped(&s, how);
        assert!(
            std::fs::read_dir(&mnt).is_ok(),
            "{how}: served unprivileged"
        );
        let guardian = guardian.unwrap_or_else(|| panic!("{how}: no unmount guardian"));
        let gs = Status::of(guardian).unwrap();
        println!("{how}: unmount guardian pid {guardian}: {gs}");
        assert!(gs.runs_as(0, 0), "{how}: guardian {gs}");
        assert!(gs.holds_exactly(Caps::SYS_ADMIN), "{how}: guardian {gs}");
        assert!(gs.no_new_privs, "{how}: guardian {gs}");
        // SIGTERM: the dropped server cannot unmount; its guardian does.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(server as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        wait_until("unmounted after SIGTERM", PATIENCE, || {
            probe(&mnt) == MountState::NotMounted
        });
        if let Some(mut c) = child {
            assert!(wait_exit(&mut c, PATIENCE).success(), "{how}: a clean exit");
        }
        wait_until("server and guardian gone", PATIENCE, || {
            [server, guardian].iter().all(|p| {
                std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .map_or(true, |t| t.contains(") Z"))
            })
        });
    }
}
