//! The home layer answers as the native filesystem under it does, where it
//! once did not: set-ID bits after size and content changes, `readdir`'s
//! inode numbers, direct I/O, POSIX ACLs, EFBIG past the maximum file size,
//! inode-flag ioctls, and mount options. Each check runs the same commands
//! in a native directory and in a mounted home (as uid 1000 where the
//! point is an unprivileged caller) and compares what they leave.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use hubfs_e2e::home::{as_user, mount_home, mount_home_with, text, USER};
use hubfs_fuse::home::Limits;

const GIB: u64 = 1 << 30;

fn limited() -> Limits {
    Limits {
        bytes: Some(GIB),
        ..Limits::default()
    }
}

fn as_root(script: &str) -> std::process::Output {
    Command::new("sh")
        .args(["-c", script])
        .env("LC_ALL", "C")
        .output()
        .unwrap()
}

/// Size- and content-changing operations, `F` the file and `S` a source.
const CHANGES: [(&str, &str); 6] = [
    ("write", "printf x | dd of=F conv=notrunc status=none"),
    ("truncate", "truncate -s 100 F"),
    ("fallocate", "fallocate -l 65536 F"),
    ("punch hole", "fallocate -p -o 0 -l 4096 F"),
    ("zero range", "fallocate -z -o 0 -l 4096 F"),
    (
        "copy_file_range",
        "/usr/bin/python3 -c 'import os,sys; s=os.open(sys.argv[1],os.O_RDONLY); d=os.open(sys.argv[2],os.O_WRONLY); os.copy_file_range(s,d,10,0,0)' S F",
    ),
];

/// (mode, group) of the file before the change: set-user-ID; set-group-ID
/// outside the caller's group; inside it without and with group execute.
const SETID_CASES: [(u32, u32); 4] = [(0o4755, USER), (0o6666, 50), (0o2666, USER), (0o2676, USER)];

fn setid_outcomes(dir: &Path) -> Vec<String> {
    let src = dir.join("S");
    std::fs::write(&src, vec![1u8; 8192]).unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut out = Vec::new();
    for (op, script) in CHANGES {
        for (mode, gid) in SETID_CASES {
            for user in [true, false] {
                let f = dir.join("F");
                let _ = std::fs::remove_file(&f);
                std::fs::write(&f, vec![2u8; 8192]).unwrap();
                std::os::unix::fs::chown(&f, Some(USER), Some(gid)).unwrap();
                std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
                let script = script
                    .replace(" F", &format!(" {}", f.display()))
                    .replace(" S ", &format!(" {} ", src.display()));
                let o = if user {
                    as_user(&script)
                } else {
                    as_root(&script)
                };
                let after = std::fs::metadata(&f).unwrap().mode() & 0o7777;
                out.push(format!(
                    "{op} of {mode:o} (group {gid}) by {}: ok={} mode={after:o}",
                    if user { "uid 1000" } else { "root" },
                    o.status.success()
                ));
            }
        }
    }
    out
}

fn assert_same(what: &str, native: &[String], home: &[String]) {
    let diffs: Vec<String> = native
        .iter()
        .zip(home)
        .filter(|(n, h)| n != h)
        .map(|(n, h)| format!("native: {n}\n  home: {h}"))
        .collect();
    assert_eq!(native.len(), home.len(), "{what}");
    assert!(
        diffs.is_empty(),
        "{what}: {} of {} differ:\n{}",
        diffs.len(),
        native.len(),
        diffs.join("\n")
    );
}

#[test]
fn size_and_content_changes_clear_set_id_bits_as_natively() {
    let m = mount_home(limited());
    let native = setid_outcomes(&m.native());
    let home = setid_outcomes(m.mnt());
    // The rule is exercised: an unprivileged change clears set-user-ID.
    assert!(
        native
            .iter()
            .any(|l| l.starts_with("fallocate of 4755") && l.contains("uid 1000: ok=true mode=755")),
        "{native:#?}"
    );
    assert_same("set-ID bits", &native, &home);
}

/// Lists a directory as uid 1000: each entry's `d_ino` next to `lstat`'s.
const INODES: &str = r#"
import os, sys
for e in sorted(os.scandir(sys.argv[1]), key=lambda e: e.name):
    print(e.name, e.inode(), os.lstat(e.path).st_ino)
"#;

#[test]
fn readdir_inode_numbers_equal_stat() {
    let m = mount_home(limited());
    // made behind the daemon's back (never looked up) and through it
    std::fs::create_dir(m.src().join("made-outside")).unwrap();
    std::fs::write(m.src().join("made-outside/f"), b"x").unwrap();
    let o = as_user(&format!(
        "cd {} && mkdir d && echo x > d/f && ln d/f d/hard && ln -s f d/link",
        m.mnt().display()
    ));
    assert!(o.status.success(), "{}", text(&o));
    let script = m.dirs.tmp.path().join("inodes.py");
    std::fs::write(&script, INODES).unwrap();
    let mut seen = 0;
    for dir in ["", "d", "made-outside"] {
        let o = as_user(&format!(
            "/usr/bin/python3 {} {}",
            script.display(),
            m.mnt().join(dir).display()
        ));
        assert!(o.status.success(), "{}", text(&o));
        for line in String::from_utf8(o.stdout).unwrap().lines() {
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(f[1], f[2], "d_ino and st_ino of {dir}/{}", f[0]);
            seen += 1;
        }
    }
    assert_eq!(seen, 2 + 3 + 1, "every entry compared");
}

#[test]
fn direct_io_works_and_is_accounted() {
    for passthrough in [true, false] {
        let m = mount_home_with(limited(), |o| o.passthrough = passthrough);
        let f = m.mnt().join("direct");
        let o = as_user(&format!(
            "dd if=/dev/zero of={0} bs=4k count=16 oflag=direct status=none && dd if={0} of=/dev/null bs=4k iflag=direct status=none && dd if=/dev/zero of={0} bs=512 count=1 seek=128 oflag=direct conv=notrunc status=none",
            f.display()
        ));
        assert!(
            o.status.success(),
            "passthrough={passthrough}: {}",
            text(&o)
        );
        assert_eq!(
            std::fs::metadata(m.src().join("direct")).unwrap().len(),
            66048
        );
        // accounted like any write: what a walk of the backing finds
        let walk = hubfs_walker::Walker::default().walk(m.src()).unwrap();
        assert_eq!(walk.usage_bytes(), 66048);
        let want = (66048, walk.inodes() as i64);
        assert_eq!(m.usage(), want, "passthrough={passthrough}");
    }
}

/// Builds `system.posix_acl_*` values: (tag, perm, id) entries.
const ACL: &str = r#"
import os, struct, sys
def acl(entries):
    return struct.pack('<I', 2) + b''.join(struct.pack('<HHI', t, p, i) for t, p, i in entries)
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 1, 2, 4, 8, 0x10, 0x20
NONE = 0xffffffff
def show(p):
    st = os.lstat(p)
    try:
        a = os.getxattr(p, 'system.posix_acl_access', follow_symlinks=False).hex()
    except OSError as e:
        a = 'errno %d' % e.errno
    print(os.path.basename(p), oct(st.st_mode), a)
d = sys.argv[2]
if sys.argv[1] == 'default':
    os.setxattr(d + '/shared', 'system.posix_acl_default', acl([(USER_OBJ, 7, NONE), (GROUP_OBJ, 5, NONE), (GROUP, 7, 50), (MASK, 7, NONE), (OTHER, 5, NONE)]))
elif sys.argv[1] == 'create':
    os.umask(0o077)
    os.close(os.open(d + '/shared/f', os.O_CREAT | os.O_WRONLY, 0o666))
    os.mkdir(d + '/shared/sub', 0o777)
    os.mknod(d + '/shared/fifo', 0o644 | 0o010000)
    os.close(os.open(d + '/plain', os.O_CREAT | os.O_WRONLY, 0o666))
    for p in ['shared/f', 'shared/sub', 'shared/fifo', 'plain']:
        show(d + '/' + p)
elif sys.argv[1] == 'setfacl':
    os.setxattr(d + '/g', 'system.posix_acl_access', acl([(USER_OBJ, 7, NONE), (USER, 4, 1001), (GROUP_OBJ, 7, NONE), (MASK, 7, NONE), (OTHER, 0, NONE)]))
    show(d + '/g')
"#;

fn acl_outcomes(dir: &Path, backing: &Path, script: &Path) -> Vec<String> {
    let py = |who_user: bool, what: &str| {
        let cmd = format!(
            "/usr/bin/python3 {} {what} {}",
            script.display(),
            dir.display()
        );
        let o = if who_user {
            as_user(&cmd)
        } else {
            as_root(&cmd)
        };
        assert!(o.status.success(), "{what}: {}", text(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    let shared = backing.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::os::unix::fs::chown(&shared, Some(USER), Some(USER)).unwrap();
    let g = backing.join("g");
    std::fs::write(&g, b"x").unwrap();
    std::os::unix::fs::chown(&g, Some(USER), Some(50)).unwrap();
    std::fs::set_permissions(&g, std::fs::Permissions::from_mode(0o2770)).unwrap();
    let cmd = format!(
        "/usr/bin/python3 {} default {}",
        script.display(),
        backing.display()
    );
    assert!(as_root(&cmd).status.success());
    let mut out: Vec<String> = py(true, "create").lines().map(String::from).collect();
    out.extend(py(true, "setfacl").lines().map(String::from));
    out
}

#[test]
fn posix_acls_give_native_modes_and_masks() {
    let m = mount_home(limited());
    let script = m.dirs.tmp.path().join("acl.py");
    std::fs::write(&script, ACL).unwrap();
    let native = m.native();
    let want = acl_outcomes(&native, &native, &script);
    let got = acl_outcomes(m.mnt(), m.src(), &script);
    // the default ACL decides, not the umask (0o077 would leave 0600)
    assert!(want[0].starts_with("f 0o100664"), "{want:#?}");
    // an owner outside the file's group loses set-group-ID with setfacl
    assert!(want[4].starts_with("g 0o100770"), "{want:#?}");
    assert_same("ACLs", &want, &got);
}

/// Writes one byte at 17 TiB (past ext4's largest file with 4 KiB blocks)
/// and truncates to it: the errors, by name.
const HUGE: &str = r#"
import errno, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
for what, op in [("pwrite", lambda: os.pwrite(fd, b"x", 17 << 40)), ("ftruncate", lambda: os.ftruncate(fd, 17 << 40))]:
    try:
        op()
        print(what, "ok")
    except OSError as e:
        print(what, errno.errorcode[e.errno])
"#;

#[test]
fn past_the_maximum_file_size_is_efbig_not_edquot() {
    let m = mount_home(limited());
    let script = m.dirs.tmp.path().join("huge.py");
    std::fs::write(&script, HUGE).unwrap();
    let native = m.native();
    let mut outcomes = Vec::new();
    for dir in [native.as_path(), m.mnt()] {
        let o = as_user(&format!(
            "/usr/bin/python3 {} {}",
            script.display(),
            dir.join("big").display()
        ));
        assert!(o.status.success(), "{}", text(&o));
        outcomes.push(String::from_utf8(o.stdout).unwrap());
    }
    assert_eq!(outcomes[0], "pwrite EFBIG\nftruncate EFBIG\n", "native");
    assert_eq!(outcomes[0], outcomes[1]);
    // the quota still refuses what the filesystem would take
    let o = as_user(&format!(
        "dd if=/dev/zero of={} bs=1 count=1 seek=2G status=none",
        m.mnt().join("sparse").display()
    ));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Disk quota exceeded"),
        "{}",
        text(&o)
    );
}

/// Reads FS_IOC_GETFLAGS and FS_IOC_FSGETXATTR of each path.
const FLAGS: &str = r#"
import fcntl, os, struct, sys
for p in sys.argv[1:]:
    fd = os.open(p, os.O_RDONLY)
    flags = struct.unpack('<i', fcntl.ioctl(fd, 0x80086601, bytes(4))[:4])[0]
    xflags = struct.unpack('<5I', fcntl.ioctl(fd, 0x801c581f, bytes(28))[:20])
    print(os.path.basename(p), hex(flags), xflags[0], xflags[3])
"#;

#[test]
fn inode_flag_ioctls_are_answered_from_the_backing_file() {
    let m = mount_home(limited());
    let script = m.dirs.tmp.path().join("flags.py");
    std::fs::write(&script, FLAGS).unwrap();
    std::fs::create_dir(m.src().join("d")).unwrap();
    std::fs::write(m.src().join("f"), b"x").unwrap();
    let run = |root: &Path| {
        let o = as_root(&format!(
            "/usr/bin/python3 {} {} {}",
            script.display(),
            root.join("f").display(),
            root.join("d").display()
        ));
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    assert_eq!(run(m.src()), run(m.mnt()));
    let o = as_user(&format!("lsattr -d {}", m.mnt().join("d").display()));
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn mount_options_reach_the_kernel() {
    // The atime family too: fstests generic/003 cycle-mounts with nodiratime.
    for (asked, shown) in [
        ("nodiratime", "nodiratime"),
        ("strictatime", "rw"),
        ("lazytime", "lazytime"),
        ("diratime", "relatime"),
    ] {
        let m = mount_home_with(limited(), |o| o.mount_options = vec![asked.to_string()]);
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mnt = m.mnt().display().to_string();
        let line = info
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(mnt.as_str()))
            .unwrap_or_else(|| panic!("{mnt} not mounted with {asked}:\n{info}"));
        // The mount's options and the superblock's (lazytime is one).
        let fields: Vec<&str> = line.split(' ').collect();
        let opts: Vec<&str> = [fields[5], fields[fields.len() - 1]]
            .iter()
            .flat_map(|f| f.split(','))
            .collect();
        assert!(opts.contains(&shown), "{asked}: {line}");
        if asked == "strictatime" {
            assert!(
                !opts.contains(&"relatime") && !opts.contains(&"noatime"),
                "{line}"
            );
        }
        std::fs::write(m.mnt().join("x"), b"x").unwrap();
    }
    let m = mount_home_with(limited(), |o| {
        o.mount_options = ["ro", "noatime", "noexec"].map(String::from).to_vec();
    });
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mnt = m.mnt().display().to_string();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(mnt.as_str()))
        .unwrap_or_else(|| panic!("{mnt} not mounted:\n{info}"));
    let opts: Vec<&str> = line.split(' ').nth(5).unwrap().split(',').collect();
    for want in ["ro", "noatime", "noexec", "nosuid", "nodev"] {
        assert!(opts.contains(&want), "{want} missing: {line}");
    }
    let e = std::fs::write(m.mnt().join("x"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
}
