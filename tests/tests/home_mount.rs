//! The home layer on a real kernel FUSE mount, used by uid 1000 as a
//! notebook would: EDQUOT at the limit, cleanup still possible, `df` shows
//! the quota, files belong to the caller, permissions hold, cleanup mode
//! switches at runtime, and usage reaches the sink.

use hubfs_e2e::home as support;

use std::fs;
use std::os::unix::fs::MetadataExt;

use hubfs_fuse::home::Limits;
use support::{as_user, mount_home, text, usage_xattr};

const MIB: u64 = 1 << 20;

fn limited(bytes: u64) -> Limits {
    Limits {
        bytes: Some(bytes),
        ..Limits::default()
    }
}

#[test]
fn dd_as_uid_1000_gets_edquot_at_the_limit_and_delete_works() {
    let m = mount_home(limited(10 * MIB));
    let big = m.mnt().join("big");
    let o = as_user(&format!(
        "dd if=/dev/zero of={} bs=1M count=20",
        big.display()
    ));
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Disk quota exceeded"),
        "{}",
        text(&o)
    );
    let size = fs::metadata(m.src().join("big")).unwrap().len();
    assert!((9 * MIB..=10 * MIB).contains(&size), "{size}");
    let (bytes, _) = m.usage();
    assert!(
        bytes as u64 <= 10 * MIB,
        "never past the hard limit: {bytes}"
    );
    // a further small write is refused too
    let o = as_user(&format!("echo more >> {}", big.display()));
    assert!(!o.status.success());
    // cleaning up always works
    let o = as_user(&format!("truncate -s 1M {0} && rm {0}", big.display()));
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(m.usage().0, 0);
    let o = as_user(&format!(
        "dd if=/dev/zero of={} bs=1M count=2",
        big.display()
    ));
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn df_shows_the_quota() {
    let m = mount_home(limited(100 * MIB));
    fs::write(m.mnt().join("f"), vec![1u8; 4 * MIB as usize]).unwrap();
    let o = std::process::Command::new("df")
        .args(["-B1", "--output=size,avail"])
        .arg(m.mnt())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let nums: Vec<u64> = out
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(nums[0], 100 * MIB, "{out}");
    assert_eq!(nums[1], 96 * MIB, "{out}");
}

#[test]
fn created_files_belong_to_the_caller() {
    let m = mount_home(Limits::default());
    let o = as_user(&format!(
        "cd {} && echo x > file && mkdir dir && ln -s file link && mkfifo fifo",
        m.mnt().display()
    ));
    assert!(o.status.success(), "{}", text(&o));
    for name in ["file", "dir", "link", "fifo"] {
        let md = fs::symlink_metadata(m.src().join(name)).unwrap();
        assert_eq!((md.uid(), md.gid()), (1000, 1000), "{name}");
    }
    // and what root creates stays root's
    fs::write(m.mnt().join("rootfile"), b"r").unwrap();
    assert_eq!(fs::metadata(m.src().join("rootfile")).unwrap().uid(), 0);
    let o = as_user(&format!("umask 077 && touch {}/private", m.mnt().display()));
    assert!(o.status.success());
    assert_eq!(
        fs::metadata(m.src().join("private")).unwrap().mode() & 0o777,
        0o600
    );
}

#[test]
fn permission_denied_where_the_native_filesystem_denies() {
    let m = mount_home(Limits::default());
    fs::write(m.mnt().join("secret"), b"s").unwrap();
    fs::create_dir(m.mnt().join("rootdir")).unwrap();
    std::process::Command::new("chmod")
        .arg("600")
        .arg(m.mnt().join("secret"))
        .status()
        .unwrap();
    let checks = [
        format!("cat {}/secret", m.mnt().display()),
        format!("touch {}/rootdir/x", m.mnt().display()),
        format!("rm -f {}/secret", m.mnt().display()).replace("rm -f", "chmod 777"),
        format!("chown 1000 {}/secret", m.mnt().display()),
    ];
    for c in &checks {
        let o = as_user(c);
        assert!(!o.status.success(), "{c}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("Permission denied") || err.contains("Operation not permitted"),
            "{c}: {err}"
        );
    }
    assert_eq!(fs::read(m.src().join("secret")).unwrap(), b"s");
}

#[test]
fn cleanup_mode_allows_deletes_and_truncates_only_and_can_be_switched_back() {
    let m = mount_home(limited(100 * MIB));
    let f = m.mnt().join("data");
    fs::write(&f, vec![1u8; 1000]).unwrap();
    support::set_mode(m.mnt(), "cleanup").unwrap();
    assert!(usage_xattr(m.mnt()).contains("mode=cleanup"));
    let o = as_user(&format!("echo x > {}/new", m.mnt().display()));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Disk quota exceeded"),
        "{}",
        text(&o)
    );
    let o = as_user(&format!("echo x >> {}", f.display()));
    assert!(!o.status.success());
    fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(10)
        .unwrap();
    fs::remove_file(&f).unwrap();
    // a user may not switch the mode
    let o = as_user(&format!(
        "/usr/bin/python3 -c \"import os; os.setxattr('{}', 'user.hubfs.mode', b'normal')\"",
        m.mnt().display()
    ));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Operation not permitted"),
        "{}",
        text(&o)
    );
    assert!(usage_xattr(m.mnt()).contains("mode=cleanup"));
    support::set_mode(m.mnt(), "normal").unwrap();
    fs::write(m.mnt().join("again"), b"ok").unwrap();
    assert!(support::set_mode(m.mnt(), "bogus").is_err());
}

#[test]
fn inode_quota_refuses_creates() {
    let m = mount_home(Limits {
        inodes: Some(4),
        ..Limits::default()
    });
    // the root directory is one inode
    for i in 0..3 {
        fs::write(m.mnt().join(format!("f{i}")), b"").unwrap();
    }
    let e = fs::write(m.mnt().join("f3"), b"").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EDQUOT));
    let e = fs::create_dir(m.mnt().join("d")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EDQUOT));
    fs::remove_file(m.mnt().join("f0")).unwrap();
    fs::create_dir(m.mnt().join("d")).unwrap();
}

#[test]
fn usage_reaches_the_sink_and_the_walk_baseline_counts_existing_data() {
    support::require_root_fuse();
    let m = mount_home(Limits::default());
    fs::write(m.mnt().join("a"), vec![0u8; 12345]).unwrap();
    fs::create_dir(m.mnt().join("d")).unwrap();
    let (bytes, inodes) = m.usage();
    assert_eq!((bytes, inodes), (12345, 3));
    let mut m = m;
    let sink = m.sink.clone();
    m.mount.take().unwrap().unmount().unwrap();
    let got = sink.received.lock().clone();
    assert_eq!(got[0].kind, hubfs_fuse::home::sink::ReportKind::Absolute);
    // the walk's absolute figure (totals when it was sent) plus the deltas
    // sent after it give what the home holds
    let (b, i) = sink.delta_total();
    assert_eq!((got[0].bytes + b, got[0].inodes + i), (12345, 3), "{got:?}");
    assert!(got[1..]
        .iter()
        .all(|r| r.kind == hubfs_fuse::home::sink::ReportKind::Delta));
    // mounting again starts from a walk that sees the data
    let mut opts =
        hubfs_fuse::home::HomeOptions::new(m.src().to_path_buf(), m.mnt().to_path_buf(), "alice");
    opts.limits = Limits::default();
    let mut again = hubfs_fuse::home::mount(&opts, None).unwrap();
    again.wait_baseline();
    let s = again.usage().snapshot();
    assert_eq!((s.bytes, s.inodes), (12345, 3));
    assert!(usage_xattr(m.mnt()).contains("bytes=12345 inodes=3"));
    again.unmount().unwrap();
}

/// Waits until the daemon has seen every file closed.
fn all_released(m: &hubfs_fuse::home::HomeMount) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while m.open_files() > 0 {
        assert!(std::time::Instant::now() < deadline, "files never released");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// FUSE passthrough (FOPEN_PASSTHROUGH) exists from Linux 6.9.
fn kernel_has_passthrough() -> bool {
    let r = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut v = r.split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (6, 9)
}

#[test]
fn readers_pass_through_and_a_writer_joining_them_is_enforced() {
    use std::io::{Read, Write};
    let m = mount_home(limited(100 * MIB));
    let f = m.mnt().join("data");
    let data: Vec<u8> = (0..4 * MIB).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(&f, &data).unwrap();
    std::os::unix::fs::chown(&f, Some(support::USER), Some(support::USER)).unwrap();
    let mount = m.mount.as_ref().unwrap();
    // The writer's RELEASE reaches the daemon after close returned; until
    // it does, the inode is rightly still in cached mode.
    all_released(mount);
    let before = mount.daemon_reads();
    let mut reader = fs::File::open(&f).unwrap();
    let mut got = Vec::new();
    reader.read_to_end(&mut got).unwrap();
    assert!(got == data, "passthrough read returned other bytes");
    if kernel_has_passthrough() {
        assert_eq!(
            mount.daemon_reads(),
            before,
            "a read-only open should be served by the kernel"
        );
    }
    // A writer while the reader holds the file: the kernel only accepts a
    // passthrough open now, and the daemon grants it with FOPEN_DIRECT_IO,
    // so its writes still come to the daemon: charged at once, refused
    // past the limit while the reader stays open.
    let mut w = fs::OpenOptions::new().append(true).open(&f).unwrap();
    w.write_all(&vec![1u8; 2 * MIB as usize]).unwrap();
    assert_eq!(m.usage().0, 6 * MIB as i64, "charged at once");
    let e = w.write_all(&vec![1u8; 200 * MIB as usize]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EDQUOT), "{e}");
    assert!(m.usage().0 <= 100 * MIB as i64, "{:?}", m.usage());
    assert_eq!(
        fs::metadata(m.src().join("data")).unwrap().len() as i64,
        m.usage().0
    );
    w.set_len(MIB).unwrap();
    assert_eq!(m.usage().0, MIB as i64, "truncate through the daemon");
    drop(w);
    drop(reader);
    all_released(m.mount.as_ref().unwrap());
    assert_eq!(fs::metadata(m.src().join("data")).unwrap().len(), MIB);
    assert_eq!(m.usage(), (MIB as i64, 2));
    // With the inode back in cached mode, a writer is enforced again.
    let o = as_user(&format!(
        "dd if=/dev/zero of={} bs=1M count=200 oflag=append conv=notrunc",
        f.display()
    ));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Disk quota exceeded"),
        "{}",
        text(&o)
    );
}

#[test]
fn past_the_soft_limit_reads_go_through_the_daemon_and_writes_stay_enforced() {
    use std::io::Read;
    let m = mount_home(limited(10 * MIB));
    let f = m.mnt().join("data");
    fs::write(&f, vec![3u8; 9 * MIB as usize]).unwrap();
    std::os::unix::fs::chown(&f, Some(support::USER), Some(support::USER)).unwrap();
    let mount = m.mount.as_ref().unwrap();
    let before = mount.daemon_reads();
    let mut reader = fs::File::open(&f).unwrap();
    // What was just written is still in the page cache (rightly): drop it,
    // so the reads show who serves them.
    nix::fcntl::posix_fadvise(
        &reader,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .unwrap();
    let mut got = Vec::new();
    reader.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), 9 * MIB as usize);
    assert!(mount.daemon_reads() > before, "over 80%: no passthrough");
    // The reader is open, yet a writer is refused at the hard limit.
    let o = as_user(&format!(
        "dd if=/dev/zero of={} bs=1M count=4 oflag=append conv=notrunc",
        f.display()
    ));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Disk quota exceeded"),
        "{}",
        text(&o)
    );
    assert!(m.usage().0 <= 10 * MIB as i64);
    drop(reader);
}

/// The CSI node service unmounts from outside and may mount the same path
/// again at once (a volume staged again). The old session ending must not
/// unmount the new mount.
#[test]
fn a_session_unmounted_from_outside_leaves_a_new_mount_at_its_path_alone() {
    use std::process::Command;
    let mut m = mount_home(Limits::default());
    let mnt = m.mnt().to_path_buf();
    let mount = m.mount.take().unwrap();
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !mount.finished() {
        assert!(std::time::Instant::now() < deadline, "session never ended");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let tmpfs = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "hubfs-test"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(tmpfs.success());
    fs::write(mnt.join("new-mount"), b"still here").unwrap();
    mount.unmount().unwrap();
    let survived = mnt.join("new-mount").exists();
    let _ = Command::new("umount").arg(&mnt).status();
    assert!(survived, "the old session unmounted the new mount");
}
