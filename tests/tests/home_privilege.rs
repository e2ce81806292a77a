//! The home server's own privilege, read from `/proc/PID/status` of a real
//! `hubfs mount home` started by hand as root (daemonized and in the
//! foreground; the mounter's servers are checked in
//! `driver/tests/privilege.rs`): once mounted it is uid 0 with exactly
//! `SERVER_CAPABILITIES` in its permitted, effective and bounding sets
//! (without CAP_SYS_ADMIN under `--no-passthrough`), nothing inheritable
//! or ambient, `no_new_privs`; its unmount guardian keeps CAP_SYS_ADMIN
//! alone; a thread that served uid 1000 holds uid 1000 and no effective
//! capability; SIGTERM unmounts through the guardian, and a killed server's
//! mount is detached by it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hubfs_e2e::home::{as_user, dirs, text, Dirs};
use hubfs_e2e::{hubfs_binary, require_root, wait_until};
use hubfs_fuse::home::SERVER_CAPABILITIES;
use hubfs_sandbox::{Caps, Status};

const PATIENCE: Duration = Duration::from_secs(20);

fn mounted(mnt: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = mnt.display().to_string();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Starts `hubfs mount home` on `d` (extra flags first); waits until it
/// serves. Returns the foreground child, if any.
fn mount_by_hand(d: &Dirs, foreground: bool, extra: &[&str]) -> Option<Child> {
    let mut c = Command::new(hubfs_binary());
    c.args(["mount", "home", "--user", "priv", "--quota", "64MiB"])
        .args(extra);
    if foreground {
        c.arg("--foreground");
    }
    // Its output is not read: a daemon keeps stderr open for its log.
    c.arg(&d.source)
        .arg(&d.mnt)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = match foreground {
        true => Some(c.spawn().unwrap()),
        false => {
            assert!(
                c.status().unwrap().success(),
                "hubfs mount home (daemonized)"
            );
            None
        }
    };
    wait_until("the home answers", PATIENCE, || {
        mounted(&d.mnt) && std::fs::metadata(&d.mnt).is_ok()
    });
    child
}

/// The server of the mount at `mnt` and its guardian (a child running
/// `hubfs unmount-guard`).
fn pids(mnt: &Path) -> (u32, Option<u32>) {
    let want = mnt.as_os_str().as_encoded_bytes();
    let (mut server, mut guardians) = (None, Vec::new());
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).filter(|a| !a.is_empty()).collect();
        let home = args.windows(2).any(|w| w[0] == b"mount" && w[1] == b"home");
        if home && args.last() == Some(&want) {
            server = Some(pid);
        }
        if args.iter().any(|a| *a == b"unmount-guard") {
            guardians.push(pid);
        }
    }
    let server = server.expect("the server of the home");
    let parent = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("PPid:"))
                    .and_then(|v| v.trim().parse::<u32>().ok())
            })
    };
    let guardian = guardians.into_iter().find(|g| parent(*g) == Some(server));
    (server, guardian)
}

/// The kept set, as far as this process's own bounding set allows.
fn kept(passthrough: bool) -> Caps {
    let mine = Status::current_thread().unwrap().cap_bnd;
    let caps = match passthrough {
        true => SERVER_CAPABILITIES,
        false => SERVER_CAPABILITIES.difference(Caps::SYS_ADMIN),
    };
    caps & mine
}

fn assert_dropped(s: &Status, passthrough: bool, when: &str) {
    assert!(s.runs_as(0, 0), "{when}: {s}");
    assert!(s.groups.is_empty(), "{when}: {s}");
    assert_eq!(s.cap_prm, kept(passthrough), "{when}: {s}");
    assert_eq!(s.cap_eff, kept(passthrough), "{when}: {s}");
    assert_eq!(s.cap_bnd, kept(passthrough), "{when}: {s}");
    assert!(s.cap_inh.is_empty() && s.cap_amb.is_empty(), "{when}: {s}");
    assert!(s.no_new_privs, "{when}: {s}");
}

/// The server's threads that serve requests (fuser's loops).
fn serving_threads(pid: u32) -> Vec<Status> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| t.file_name().to_string_lossy().parse::<u32>().ok())
        .filter_map(|tid| Status::of_thread(pid, tid).ok())
        .filter(|s| s.name.starts_with("fuser-") && s.name != "fuser-bg")
        .collect()
}

#[test]
fn a_home_server_started_by_hand_keeps_only_its_list_and_serves_as_its_callers() {
    require_root("mounts homes by hand as root");
    for (foreground, extra) in [
        (false, &[][..]),
        (true, &[][..]),
        (false, &["--no-passthrough"][..]),
    ] {
        let when = format!("foreground={foreground} {extra:?}");
        let passthrough = extra.is_empty();
        let d = dirs();
        let mut child = mount_by_hand(&d, foreground, extra);
        let (server, guardian) = pids(&d.mnt);
        assert_dropped(&Status::of(server).unwrap(), passthrough, &when);
        let g = Status::of(guardian.expect("a guardian")).unwrap();
        assert!(
            g.runs_as(0, 0) && g.holds_exactly(Caps::SYS_ADMIN),
            "{when}: guardian {g}"
        );
        assert!(g.no_new_privs, "{when}: guardian {g}");
        // A request by uid 1000 is served by a thread that is uid 1000 with
        // no effective capability (it keeps the rest permitted, to switch
        // back), while the server's main thread stays as it dropped.
        let o = as_user(&format!(
            "echo x > {0}/mine && cat {0}/mine && ls {0}",
            d.mnt.display()
        ));
        assert!(o.status.success(), "{when}: {}", text(&o));
        let threads = serving_threads(server);
        let served = threads
            .iter()
            .find(|t| t.uid[1] == 1000)
            .unwrap_or_else(|| panic!("{when}: no thread serves as uid 1000: {threads:?}"));
        assert_eq!(served.uid, [0, 1000, 0, 1000], "{when}: {served}");
        assert!(served.cap_eff.is_empty(), "{when}: {served}");
        assert_eq!(served.cap_prm, kept(passthrough), "{when}: {served}");
        assert_dropped(&Status::of(server).unwrap(), passthrough, &when);
        // SIGTERM: the guardian unmounts.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(server as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        if let Some(c) = child.as_mut() {
            let _ = c.wait();
        }
        wait_until("the home is unmounted", PATIENCE, || !mounted(&d.mnt));
    }
}

#[test]
fn the_guardian_detaches_the_mount_of_a_killed_home_server() {
    require_root("mounts homes by hand as root");
    let d = dirs();
    mount_by_hand(&d, false, &[]);
    let (server, guardian) = pids(&d.mnt);
    assert!(guardian.is_some());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("the guardian detaches the mount", PATIENCE, || {
        !mounted(&d.mnt)
    });
}
