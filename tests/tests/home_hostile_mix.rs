//! Property test of the hard limit against a hostile user: random mixes of
//! the techniques of `home_hostile/mix.py` (writers and appenders joining
//! passthrough readers, growth through shared mappings, splice, ftruncate
//! with a mapping, fallocate, copy_file_range, O_DIRECT, extended
//! attributes, and unlinks, renames and links of the same names, readers
//! kept open across steps so unlinked files stay charged) from several
//! processes of uid 1000 at once, on a real kernel mount. After every step
//! (each process ran one technique, all at the same time): what the share
//! holds by a fresh walk and what the home counts are within the hard limit
//! plus the documented bound (0 bytes: every growth is a request reserved
//! first, see docs/home.md), extended attributes within 4 KiB per inode,
//! and the daemon still answers. At the end, every process gone, the
//! counters equal the walk.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use hubfs_e2e::home::{mount_home, usage_xattr, Mounted, USER};
use hubfs_fuse::home::Limits;
use hubfs_walker::Walker;
use proptest::prelude::*;

const QUOTA: u64 = 4 << 20;
/// How far past the hard limit the share may go (docs/home.md: none).
const BOUND: u64 = 0;
/// Extended attribute bytes one inode may hold (docs/home.md).
const XATTR_PER_INODE: u64 = 4096;
const PROCESSES: usize = 3;
const MIX: &str = include_str!("home_hostile/mix.py");
const TECHNIQUES: [&str; 14] = [
    "reader-then-writer",
    "reader-then-append",
    "reader-then-mmap-grow",
    "reader-then-splice",
    "ftruncate-mmap",
    "fallocate",
    "copy_file_range",
    "o-direct",
    "xattrs",
    "shrink",
    "unlink",
    "rename",
    "link",
    "close",
];

/// One process's part of a step: technique, file, bytes to try.
type Part = (usize, usize, u64);

fn part() -> impl Strategy<Value = Part> {
    // Mostly small enough to fit, so usage hovers at the limit; sometimes
    // twice the quota at once.
    let size = prop_oneof![3 => 0..QUOTA / 4, 1 => 0..2 * QUOTA];
    (0..TECHNIQUES.len(), 0usize..4, size)
}

/// A worker process of uid 1000.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    fn start(script: &Path, home: &Path) -> Worker {
        let mut child = Command::new("setpriv")
            .args([
                &format!("--reuid={USER}"),
                &format!("--regid={USER}"),
                "--clear-groups",
                "--",
                "/usr/bin/python3",
            ])
            .arg(script)
            .arg(home)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        Worker {
            stdin: child.stdin.take(),
            stdout: BufReader::new(child.stdout.take().unwrap()),
            child,
        }
    }

    fn send(&mut self, (t, f, size): Part) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{} {f} {size}", TECHNIQUES[t]).unwrap();
        stdin.flush().unwrap();
    }

    fn answer(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "a worker died");
        line.trim().to_string()
    }

    /// Ends its input (it closes what it holds) and waits for it.
    fn finish(mut self) {
        drop(self.stdin.take());
        assert!(self.child.wait().unwrap().success());
    }
}

/// Bytes of extended attribute names and values of every file of `dir`.
fn xattr_bytes(dir: &Path) -> (u64, u64) {
    let (mut bytes, mut files) = (0, 0);
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        files += 1;
        let Ok(names) = xattr_names(&e.path()) else {
            continue;
        };
        for n in names {
            let v = nix_getxattr(&e.path(), &n);
            bytes += (n.len() + v) as u64;
        }
    }
    (bytes, files)
}

fn xattr_names(p: &Path) -> std::io::Result<Vec<String>> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: llistxattr into a buffer of the given size.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect())
}

fn nix_getxattr(p: &Path, name: &str) -> usize {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: lgetxattr asking for the size only (no buffer).
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
    r.max(0) as usize
}

/// The share and the counters within the limit after `step`.
fn assert_within(m: &Mounted, step: usize, answers: &[String]) {
    let walk = Walker::default().walk(m.src()).unwrap();
    let (counted, _) = m.usage();
    assert!(
        walk.usage_bytes() <= QUOTA + BOUND,
        "step {step} {answers:?}: {} bytes on the share",
        walk.usage_bytes()
    );
    assert!(
        counted as u64 <= QUOTA + BOUND,
        "step {step} {answers:?}: {counted} bytes counted"
    );
    let (held, files) = xattr_bytes(m.src());
    assert!(
        held <= files * XATTR_PER_INODE,
        "step {step}: {held} bytes of attributes in {files} files"
    );
    // Still serving.
    assert!(usage_xattr(m.mnt()).contains("bytes="), "step {step}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, max_shrink_iters: 16, .. ProptestConfig::default() })]

    #[test]
    fn random_mixes_from_several_processes_stay_within_the_limit(
        steps in proptest::collection::vec(proptest::collection::vec(part(), PROCESSES), 1..14)
    ) {
        let m = mount_home(Limits { bytes: Some(QUOTA), ..Limits::default() });
        let script = m.dirs.tmp.path().join("mix.py");
        std::fs::write(&script, MIX).unwrap();
        let mut workers: Vec<Worker> =
            (0..PROCESSES).map(|_| Worker::start(&script, m.mnt())).collect();
        let mut refused = 0;
        for (i, step) in steps.iter().enumerate() {
            for (w, p) in workers.iter_mut().zip(step) {
                w.send(*p);
            }
            let answers: Vec<String> = workers.iter_mut().map(Worker::answer).collect();
            refused += answers.iter().filter(|a| a.ends_with(" EDQUOT")).count();
            assert_within(&m, i, &answers);
        }
        for w in workers {
            w.finish();
        }
        let walk = Walker::default().walk(m.src()).unwrap();
        prop_assert_eq!(
            m.usage(),
            (walk.usage_bytes() as i64, walk.inodes() as i64),
            "counters and share after {:?} ({} refused)", steps, refused
        );
    }
}

/// Every technique of the script is one the mix draws.
#[test]
fn every_technique_of_the_script_is_drawn() {
    let o = Command::new("/usr/bin/python3")
        .args(["-c", MIX, "list"])
        .output()
        .unwrap();
    let listed = String::from_utf8(o.stdout).unwrap();
    let listed: Vec<&str> = listed.lines().collect();
    assert_eq!(listed, TECHNIQUES);
}
