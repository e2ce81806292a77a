//! The drop, the launch confinement and the unmount guardian, for real:
//! each case runs in a fresh process of this binary (a drop needs a process
//! with one thread, which libtest's harness never is), started as root,
//! and is judged from outside by reading its `/proc/PID/status`.
//!
//! `harness = false`: `main` runs every case and prints `N passed, N failed`.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hubfs_sandbox::guardian::{self, Guardian, GUARDIAN_CAPS};
use hubfs_sandbox::launch::{confine, SETUP};
use hubfs_sandbox::seccomp::{Deny, Filter};
use hubfs_sandbox::{caps, drop_to, Caps, Privileges, SandboxError, Status};

const CASE: &str = "HUBFS_SANDBOX_CASE";

fn main() {
    if let Ok(case) = std::env::var(CASE) {
        std::process::exit(child(&case));
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("needs root: the drop changes uid and capabilities");
        std::process::exit(1);
    }
    let cases: [(&str, fn()); 8] = [
        (
            "a_drop_to_nobody_leaves_no_capability_and_no_way_back",
            nobody,
        ),
        ("a_root_drop_keeps_exactly_its_list", root_keeping),
        (
            "capabilities_survive_a_change_of_uid_when_kept",
            user_keeping,
        ),
        (
            "a_drop_with_a_second_thread_is_refused_and_changes_nothing",
            threads,
        ),
        ("a_seccomp_list_denies_what_it_does_not_name", seccomp),
        (
            "a_confined_child_has_no_new_privs_and_a_small_bounding_set",
            confined,
        ),
        (
            "the_guardian_unmounts_leaves_or_detaches_after_a_crash",
            guardian_cases,
        ),
        (
            "the_guardian_never_unmounts_a_mount_that_is_not_its_own",
            guardian_replaced,
        ),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, f) in cases {
        match std::panic::catch_unwind(f) {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    std::process::exit(i32::from(failed > 0));
}

/// Runs `case` in a child process of this binary; returns its stdout lines
/// once it printed `ready` (the child then waits for a line on stdin).
struct Case {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Case {
    fn start(case: &str) -> Case {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(CASE, case)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut c = Case { child, out };
        let line = c.line();
        assert_eq!(line, "ready", "case {case}");
        c
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        l.trim_end().to_string()
    }

    fn status(&self) -> Status {
        Status::of(self.child.id()).unwrap()
    }

    /// Lets the child go on; returns its last line and exit code.
    fn finish(mut self) -> (String, i32) {
        writeln!(self.child.stdin.as_mut().unwrap(), "go").unwrap();
        let last = self.line();
        let code = self.child.wait().unwrap().code().unwrap_or(-1);
        (last, code)
    }
}

fn nobody() {
    let c = Case::start("nobody");
    let s = c.status();
    assert!(s.runs_as(65534, 65534), "{s}");
    assert!(s.groups.is_empty(), "{s}");
    assert!(s.holds_exactly(Caps::empty()), "{s}");
    assert!(s.no_new_privs && s.seccomp == 0, "{s}");
    let (last, code) = c.finish();
    assert_eq!((last.as_str(), code), ("no way back", 0));
}

fn root_keeping() {
    let c = Case::start("root-keeping");
    let s = c.status();
    assert!(s.runs_as(0, 0), "{s}");
    assert!(s.holds_exactly(Caps::CHOWN | Caps::FOWNER), "{s}");
    assert!(s.no_new_privs, "{s}");
    assert_eq!(c.finish().1, 0);
}

fn user_keeping() {
    let c = Case::start("user-keeping");
    let s = c.status();
    assert!(s.runs_as(1000, 100), "{s}");
    assert_eq!(s.groups, [100, 4242], "{s}");
    assert!(s.holds_exactly(Caps::DAC_READ_SEARCH), "{s}");
    assert_eq!(c.finish().1, 0);
}

fn threads() {
    let c = Case::start("threads");
    let s = c.status();
    assert!(s.runs_as(0, 0), "nothing changed: {s}");
    assert!(!s.no_new_privs, "{s}");
    assert!(s.cap_eff.contains(Caps::SYS_ADMIN), "{s}");
    let (last, code) = c.finish();
    assert!(last.contains("2 threads"), "{last}");
    assert_eq!(code, 0);
}

fn seccomp() {
    let c = Case::start("seccomp");
    let s = c.status();
    assert_eq!((s.seccomp, s.seccomp_filters), (2, 1), "{s}");
    assert!(s.runs_as(65534, 65534) && s.no_new_privs, "{s}");
    let (last, code) = c.finish();
    assert_eq!((last.as_str(), code), ("getppid: EPERM, getpid allowed", 0));
}

fn confined() {
    let mut cmd = Command::new("cat");
    cmd.arg("/proc/self/status");
    confine(&mut cmd, SETUP);
    let out = cmd.output().unwrap();
    let s = Status::parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
    let mine = Status::current_thread().unwrap();
    assert!(s.no_new_privs, "{s}");
    assert_eq!(s.cap_bnd, mine.cap_bnd & SETUP, "{s}");
    assert_eq!(
        s.cap_eff, s.cap_bnd,
        "root's exec grants the bounding set: {s}"
    );
    assert!(!s.cap_eff.contains(Caps::SYS_PTRACE), "{s}");
}

/// A tmpfs mounted at a fresh temp dir, for the guardian to guard.
fn tmpfs(dir: &Path) {
    rustix::mount::mount(
        "hubfs-guard-test",
        dir,
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        None,
    )
    .unwrap();
}

fn mounted(dir: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = dir.to_str().unwrap();
    info.lines().any(|l| l.split(' ').nth(4) == Some(want))
}

fn guard_command() -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.env(CASE, "guardian");
    c
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn guardian_cases() {
    let t = tempfile::tempdir().unwrap();
    let mnt = t.path().join("m");
    std::fs::create_dir(&mnt).unwrap();

    // Asked to unmount.
    tmpfs(&mnt);
    let g = Guardian::start(guard_command(), &mnt).unwrap();
    let s = Status::of(g.pid()).unwrap();
    assert!(s.runs_as(0, 0), "{s}");
    assert!(
        s.holds_exactly(GUARDIAN_CAPS),
        "the guardian keeps CAP_SYS_ADMIN only: {s}"
    );
    assert!(s.no_new_privs, "{s}");
    g.unmount().unwrap();
    assert!(!mounted(&mnt), "unmounted on request");

    // Told to leave (a takeover handed the mount on).
    tmpfs(&mnt);
    let g = Guardian::start(guard_command(), &mnt).unwrap();
    let pid = g.pid();
    g.leave();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the guardian exited"
    );
    assert!(mounted(&mnt), "left mounted");

    // A server taking the mount over dies before it has it: the mount
    // stays (the old server serves on).
    let g = Guardian::start_for_takeover(guard_command(), &mnt).unwrap();
    let pid = g.pid();
    drop(g);
    wait_until("the guardian exits", || {
        Status::of(pid).map_or(true, |s| s.name.is_empty())
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map_or(true, |t| t.contains(") Z"))
    });
    assert!(
        mounted(&mnt),
        "a takeover that never completed leaves the mount"
    );

    // The server dies without a word: the mount is detached (also after
    // a completed takeover).
    let mut g = Guardian::start_for_takeover(guard_command(), &mnt).unwrap();
    g.own().unwrap();
    drop(g);
    wait_until("detached after the server's death", || !mounted(&mnt));
}

fn guardian_replaced() {
    let t = tempfile::tempdir().unwrap();
    let mnt = t.path().join("m");
    std::fs::create_dir(&mnt).unwrap();
    tmpfs(&mnt);
    let g = Guardian::start(guard_command(), &mnt).unwrap();
    // Someone else's mount on top (a new server, say).
    tmpfs(&mnt);
    let e = g.unmount().unwrap_err();
    assert!(e.to_string().contains("no longer the one"), "{e}");
    assert!(mounted(&mnt));
    let g = Guardian::start(guard_command(), &mnt).unwrap();
    // This guardian's mount goes and another takes its place: when the
    // server dies, the guardian must leave that one (and the one below) be.
    rustix::mount::unmount(&mnt, rustix::mount::UnmountFlags::empty()).unwrap();
    tmpfs(&mnt);
    drop(g);
    std::thread::sleep(Duration::from_millis(200));
    assert!(mounted(&mnt), "a mount that is not the guardian's stays");
    while mounted(&mnt) {
        rustix::mount::unmount(&mnt, rustix::mount::UnmountFlags::DETACH).unwrap();
    }
}

/// The child's side of each case: prints `ready` once in the state to
/// check, waits for a line, then prints its last word.
fn child(case: &str) -> i32 {
    if case == "guardian" {
        let link = std::io::stdin().as_fd().try_clone_to_owned().unwrap();
        return match guardian::serve(link.into()) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("guardian: {e}");
                1
            }
        };
    }
    let result: Result<(), SandboxError> = match case {
        "nobody" => drop_to(&Privileges::user(65534, 65534)),
        "root-keeping" => drop_to(&Privileges::root_keeping(Caps::CHOWN | Caps::FOWNER)),
        "user-keeping" => {
            let mut p = Privileges::user(1000, 100).with_groups(vec![4242, 100]);
            p.caps = Caps::DAC_READ_SEARCH;
            drop_to(&p)
        }
        "threads" => {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let _t = std::thread::spawn(move || rx.recv());
            let r = drop_to(&Privileges::user(65534, 65534));
            println!("ready");
            wait_go();
            drop(tx);
            match r {
                Err(e @ SandboxError::Threads(_)) => println!("{e}"),
                other => println!("unexpected: {other:?}"),
            }
            return 0;
        }
        "seccomp" => {
            let allowed = [
                libc::SYS_read,
                libc::SYS_write,
                libc::SYS_openat,
                libc::SYS_close,
                libc::SYS_fstat,
                libc::SYS_newfstatat,
                libc::SYS_statx,
                libc::SYS_lseek,
                libc::SYS_mmap,
                libc::SYS_munmap,
                libc::SYS_mprotect,
                libc::SYS_brk,
                libc::SYS_futex,
                libc::SYS_rt_sigaction,
                libc::SYS_rt_sigprocmask,
                libc::SYS_sigaltstack,
                libc::SYS_getpid,
                libc::SYS_gettid,
                libc::SYS_exit,
                libc::SYS_exit_group,
            ];
            drop_to(
                &Privileges::user(65534, 65534)
                    .with_seccomp(Filter::allow(&allowed, Deny::Errno(libc::EPERM))),
            )
        }
        other => panic!("no case {other}"),
    };
    if let Err(e) = result {
        println!("drop failed: {e}");
        return 1;
    }
    println!("ready");
    wait_go();
    match case {
        "nobody" => {
            // Neither the uid nor a capability can come back.
            let back = rustix::thread::set_thread_res_uid(
                rustix::process::Uid::ROOT,
                rustix::process::Uid::ROOT,
                rustix::process::Uid::ROOT,
            );
            let caps_back = rustix::thread::set_capabilities(
                None,
                rustix::thread::CapabilitySets {
                    effective: Caps::SYS_ADMIN,
                    permitted: Caps::SYS_ADMIN,
                    inheritable: Caps::empty(),
                },
            );
            let nnp_off = rustix::thread::set_no_new_privs(false);
            if back.is_err() && caps_back.is_err() && nnp_off.is_err() {
                println!("no way back");
            } else {
                println!("regained: {back:?} {caps_back:?} {nnp_off:?}");
            }
        }
        "seccomp" => {
            // SAFETY: getppid takes no arguments.
            let ppid = unsafe { libc::syscall(libc::SYS_getppid) };
            let errno = std::io::Error::last_os_error().raw_os_error();
            // SAFETY: getpid takes no arguments.
            let pid = unsafe { libc::syscall(libc::SYS_getpid) };
            if ppid == -1 && errno == Some(libc::EPERM) && pid > 0 {
                println!("getppid: EPERM, getpid allowed");
            } else {
                println!("getppid {ppid} getpid {pid}");
            }
        }
        _ => println!(
            "done {}",
            caps::describe(Status::current_thread().unwrap().cap_eff)
        ),
    }
    0
}

fn wait_go() {
    let mut l = String::new();
    let _ = std::io::stdin().read_line(&mut l);
}
