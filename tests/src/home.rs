//! Harness of the home layer and walker tests: mounting a home in-process
//! on a real kernel FUSE mount, and running commands as an unprivileged
//! user (uid 1000, as a notebook does).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use hubfs_fuse::home::{self, FakeSink, HomeMount, HomeOptions, Limits, UsageSink};

/// The notebook's uid/gid.
pub const USER: u32 = 1000;

/// Fails clearly if this machine cannot run the test (CI runs as root with
/// /dev/fuse and util-linux's setpriv).
pub fn require_root_fuse() {
    crate::require_root("home tests mount FUSE and switch users");
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: load the fuse module"
    );
    assert!(
        Command::new("setpriv").arg("--version").output().is_ok(),
        "setpriv is missing: run .ci/install-home.sh"
    );
}

/// A backing directory owned by the notebook user and a mountpoint, both
/// reachable by that user.
pub struct Dirs {
    pub tmp: tempfile::TempDir,
    pub source: PathBuf,
    pub mnt: PathBuf,
}

pub fn dirs() -> Dirs {
    let tmp = tempfile::Builder::new()
        .prefix("hubfs-home-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let source = tmp.path().join("src");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&source).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    std::os::unix::fs::chown(&source, Some(USER), Some(USER)).unwrap();
    Dirs { tmp, source, mnt }
}

pub struct Mounted {
    pub dirs: Dirs,
    pub mount: Option<HomeMount>,
    pub sink: Arc<FakeSink>,
    /// A tmpfs mounted on the source, unmounted after the home.
    pub tmpfs: Option<Tmpfs>,
}

/// A tmpfs mounted at a path, detached when dropped.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path) -> Tmpfs {
        nix::mount::mount(
            Some("hubfs-test"),
            at,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=256m,mode=0755"),
        )
        .expect("mount a tmpfs");
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

impl Mounted {
    pub fn mnt(&self) -> &Path {
        &self.dirs.mnt
    }
    pub fn src(&self) -> &Path {
        &self.dirs.source
    }
    /// A native directory owned by the notebook user beside the mount, on
    /// the same filesystem as the home's backing directory: what the home
    /// must behave like.
    pub fn native(&self) -> PathBuf {
        let native = self.dirs.tmp.path().join("native");
        if !native.exists() {
            std::fs::create_dir(&native).unwrap();
            std::os::unix::fs::chown(&native, Some(USER), Some(USER)).unwrap();
        }
        native
    }
    pub fn usage(&self) -> (i64, i64) {
        let s = self.mount.as_ref().unwrap().usage().snapshot();
        (s.bytes, s.inodes)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(m) = self.mount.take() {
            let _ = m.unmount();
        }
    }
}

/// Mounts a fresh home with the given limits and waits for its baseline walk.
pub fn mount_home(limits: Limits) -> Mounted {
    mount_home_with(limits, |_| {})
}

/// As [`mount_home`], with options changed by `configure` first.
pub fn mount_home_with(limits: Limits, configure: impl FnOnce(&mut HomeOptions)) -> Mounted {
    require_root_fuse();
    mount_home_in(dirs(), None, limits, configure)
}

/// As [`mount_home`], over a fresh tmpfs (which, unlike ext4, lets one
/// inode carry megabytes of extended attributes).
pub fn mount_home_on_tmpfs(limits: Limits) -> Mounted {
    require_root_fuse();
    let dirs = dirs();
    let tmpfs = Tmpfs::mount(&dirs.source);
    std::os::unix::fs::chown(&dirs.source, Some(USER), Some(USER)).unwrap();
    mount_home_in(dirs, Some(tmpfs), limits, |_| {})
}

fn mount_home_in(
    dirs: Dirs,
    tmpfs: Option<Tmpfs>,
    limits: Limits,
    configure: impl FnOnce(&mut HomeOptions),
) -> Mounted {
    let mut opts = HomeOptions::new(dirs.source.clone(), dirs.mnt.clone(), "alice");
    opts.limits = limits;
    opts.report_interval = std::time::Duration::from_millis(200);
    configure(&mut opts);
    let sink = Arc::new(FakeSink::default());
    let mut m = home::mount(&opts, Some(sink.clone() as Arc<dyn UsageSink>)).expect("mount home");
    m.wait_baseline();
    Mounted {
        dirs,
        mount: Some(m),
        sink,
        tmpfs,
    }
}

/// Runs a shell command as uid/gid 1000 with no supplementary groups.
pub fn as_user(script: &str) -> Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={USER}"),
            &format!("--regid={USER}"),
            "--clear-groups",
            "--",
            "sh",
            "-c",
            script,
        ])
        .env("LC_ALL", "C")
        .output()
        .expect("run setpriv")
}

pub fn text(o: &Output) -> String {
    format!(
        "status={:?} stdout={} stderr={}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Reads the `user.hubfs.usage` attribute of a mounted home.
pub fn usage_xattr(mnt: &Path) -> String {
    let c = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()).unwrap();
    let mut buf = vec![0u8; 512];
    // SAFETY: getxattr into a buffer of the given size.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            c"user.hubfs.usage".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert!(n >= 0, "getxattr: {}", std::io::Error::last_os_error());
    buf.truncate(n as usize);
    String::from_utf8(buf).unwrap()
}

/// Sets the `user.hubfs.mode` attribute (cleanup / normal) as root.
pub fn set_mode(mnt: &Path, mode: &str) -> std::io::Result<()> {
    let c = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: setxattr from a slice of the given size.
    let r = unsafe {
        libc::setxattr(
            c.as_ptr(),
            c"user.hubfs.mode".as_ptr(),
            mode.as_ptr().cast(),
            mode.len(),
            0,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}
