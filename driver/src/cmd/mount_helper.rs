//! `mount.fuse.hubfs-s3` and `mount.fuse.hubfs-home`: what mount(8) runs for
//! a hubfs mount (the `hubfs` binary under those names; the image links
//! them in `/usr/sbin`).
//!
//! hubfs mounts carry their subtype (`fuse.hubfs-s3`, `fuse.hubfs-home` in
//! mountinfo), so `mount -o remount,ro MOUNTPOINT` looks for
//! `mount.fuse.hubfs-<kind>` (else Debian's `mount.fuse` would run a
//! program named after the subtype and fail with "not found"). A remount
//! is one mount(2) call: MS_REMOUNT with the mount's own flags and the ones
//! asked for; FUSE lets a superblock switch between read-only and
//! read-write, so writes then fail with EROFS. Anything but a remount is
//! refused with a clear error: hubfs mounts are made by `hubfs mount` or
//! the CSI driver, never from fstab.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use nix::mount::MsFlags;

/// mount(8)'s exit code for a mount failure.
const MOUNT_FAILURE: u8 = 32;

/// Whether the binary was started as a mount helper (by its name).
pub fn is_helper(argv0: &std::ffi::OsStr) -> bool {
    let name = std::path::Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    name.starts_with("mount.fuse.hubfs-")
}

/// What mount(8) asked: `SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS] [-t TYPE]`.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    mountpoint: PathBuf,
    options: Vec<String>,
}

fn parse(args: &[OsString]) -> Result<Request, String> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("-o") => {
                let v = it.next().ok_or("-o needs a value")?;
                options.extend(v.to_string_lossy().split(',').map(str::to_string));
            }
            Some("-t" | "-N") => {
                it.next();
            }
            Some(s) if s.starts_with('-') => {}
            _ => positional.push(PathBuf::from(a)),
        }
    }
    match positional.as_slice() {
        [_source, mountpoint] => Ok(Request {
            mountpoint: mountpoint.clone(),
            options,
        }),
        _ => Err("expected SOURCE MOUNTPOINT".into()),
    }
}

/// The flags of a remount of a mount whose mountinfo options are `now`,
/// asked for with `asked`.
fn remount_flags(now: &[String], asked: &[String]) -> MsFlags {
    let mut flags = MsFlags::MS_REMOUNT;
    for o in now.iter().chain(asked) {
        let (set, clear) = match o.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "noatime" => (
                MsFlags::MS_NOATIME,
                MsFlags::MS_RELATIME | MsFlags::MS_STRICTATIME,
            ),
            "relatime" => (
                MsFlags::MS_RELATIME,
                MsFlags::MS_NOATIME | MsFlags::MS_STRICTATIME,
            ),
            "strictatime" => (
                MsFlags::MS_STRICTATIME,
                MsFlags::MS_NOATIME | MsFlags::MS_RELATIME,
            ),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            _ => (MsFlags::empty(), MsFlags::empty()),
        };
        flags = (flags | set) - clear;
    }
    flags
}

/// Runs as mount(8)'s helper; `args` are the arguments after the name.
pub fn run(name: &str, args: &[OsString]) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("{name}: {msg}");
        ExitCode::from(MOUNT_FAILURE)
    };
    let req = match parse(args) {
        Ok(r) => r,
        Err(e) => return fail(format!("hubfs mount helper: {e}")),
    };
    if !req.options.iter().any(|o| o == "remount") {
        return fail(format!(
            "hubfs mounts are made by `hubfs mount s3|home` or the hubfs CSI driver, not by mount(8); \
             only `mount -o remount,ro|rw {}` is handled here",
            req.mountpoint.display()
        ));
    }
    let entries = match hubfs_fuse::mountinfo::read() {
        Ok(e) => e,
        Err(e) => return fail(format!("hubfs: read mountinfo: {e}")),
    };
    let Some(m) = hubfs_fuse::mountinfo::mount_at(&entries, &req.mountpoint) else {
        return fail(format!(
            "hubfs: nothing is mounted at {}",
            req.mountpoint.display()
        ));
    };
    if !m.fs_type.starts_with("fuse.hubfs-") {
        return fail(format!(
            "hubfs: {} is a {} mount, not a hubfs one",
            req.mountpoint.display(),
            m.fs_type
        ));
    }
    let flags = remount_flags(&m.options, &req.options);
    match nix::mount::mount(
        None::<&str>,
        &req.mountpoint,
        None::<&str>,
        flags,
        None::<&str>,
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(format!(
            "hubfs: remount of {} ({}) failed: {e}",
            req.mountpoint.display(),
            m.fs_type
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn mount8s_arguments_are_understood() {
        let r = parse(&os(&[
            "hubfs-s3:b",
            "/s3/b",
            "-n",
            "-o",
            "rw,remount,ro",
            "-t",
            "fuse.hubfs-s3",
        ]))
        .unwrap();
        assert_eq!(r.mountpoint, PathBuf::from("/s3/b"));
        assert_eq!(r.options, ["rw", "remount", "ro"]);
        assert!(parse(&os(&["/only-one"])).is_err());
        assert!(parse(&os(&["a", "b", "-o"])).is_err());
        assert!(is_helper("/usr/sbin/mount.fuse.hubfs-home".as_ref()));
        assert!(!is_helper("/usr/local/bin/hubfs".as_ref()));
    }

    #[test]
    fn a_remount_keeps_the_mounts_flags_and_applies_the_asked_ones_last() {
        let now: Vec<String> = ["rw", "nosuid", "nodev", "noatime"]
            .map(String::from)
            .to_vec();
        let ro = remount_flags(&now, &["remount".into(), "ro".into()]);
        assert!(ro.contains(
            MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOATIME
        ));
        let rw = remount_flags(
            &["ro".into(), "nosuid".into()],
            &["remount".into(), "rw".into()],
        );
        assert!(!rw.contains(MsFlags::MS_RDONLY) && rw.contains(MsFlags::MS_NOSUID));
    }
}
