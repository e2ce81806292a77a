//! Parsing `/proc/self/mountinfo`, and the one mount probe built on it.
//!
//! The kernel's own table is the only reliable answer to "is this path a mount
//! point, and of what": `stat` device comparisons miss bind mounts of a
//! directory on the same filesystem, and a dead FUSE mount cannot even be
//! stat'ed (ENOTCONN). Paths in the file escape space, tab, newline and
//! backslash as octal (`\040`). [`probe`] combines the table with `statfs`
//! (which always reaches the filesystem's process) into a [`MountState`]:
//! the S3 mount command, the CSI node service and the mounter all use it.

use std::path::{Path, PathBuf};

/// One line of mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_id: u32,
    pub parent_id: u32,
    /// `major:minor` of the filesystem.
    pub device: String,
    /// The directory of the filesystem that is mounted here (`/` unless a bind).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Per-mount options (`rw`, `ro`, `nosuid`, ...).
    pub options: Vec<String>,
    pub fs_type: String,
    pub source: String,
    pub super_options: Vec<String>,
}

impl MountEntry {
    /// Whether the mount is read-only.
    pub fn read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses one mountinfo line; `None` for a malformed line.
pub fn parse_line(line: &str) -> Option<MountEntry> {
    let (pre, post) = line.split_once(" - ")?;
    let mut f = pre.split(' ');
    let mount_id = f.next()?.parse().ok()?;
    let parent_id = f.next()?.parse().ok()?;
    let device = f.next()?.to_owned();
    let root = PathBuf::from(unescape(f.next()?));
    let mount_point = PathBuf::from(unescape(f.next()?));
    let options = f.next()?.split(',').map(str::to_owned).collect();
    let mut p = post.split(' ');
    let fs_type = p.next()?.to_owned();
    let source = unescape(p.next()?);
    let super_options = p
        .next()
        .map(|s| s.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    Some(MountEntry {
        mount_id,
        parent_id,
        device,
        root,
        mount_point,
        options,
        fs_type,
        source,
        super_options,
    })
}

/// Parses a whole mountinfo file.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

/// Reads the calling process's mount table.
pub fn read() -> std::io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// The topmost mount whose mount point is exactly `path` (later lines stack
/// on earlier ones).
pub fn mount_at<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    entries.iter().rev().find(|e| e.mount_point == path)
}

/// The mount that contains `path` (longest mount point prefix, topmost).
pub fn containing<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    entries
        .iter()
        .rev()
        .filter(|e| path.starts_with(&e.mount_point))
        .max_by_key(|e| e.mount_point.components().count())
}

/// What a path shows when probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountState {
    /// A mount answers at the path.
    Healthy,
    /// Mounted, but the filesystem does not answer (its FUSE process died:
    /// ENOTCONN, or ECONNABORTED while the kernel tears the connection down).
    Dead,
    /// Nothing is mounted exactly there.
    NotMounted,
}

/// Healthy, dead or not mounted. `statfs` always reaches the filesystem (a
/// FUSE daemon), where `stat` may be answered from the kernel's attribute
/// cache long after the daemon died. An unreadable mount table counts as
/// "not mounted" only if `statfs` also works (nothing to recover then).
pub fn probe(path: &Path) -> MountState {
    let mounted = match read() {
        Ok(entries) => {
            let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
            mount_at(&entries, &abs).is_some() || mount_at(&entries, path).is_some()
        }
        Err(_) => true,
    };
    match (mounted, nix::sys::statfs::statfs(path)) {
        (_, Err(nix::errno::Errno::ENOTCONN | nix::errno::Errno::ECONNABORTED)) => MountState::Dead,
        (false, _) => MountState::NotMounted,
        (true, Ok(_)) => MountState::Healthy,
        (true, Err(_)) => MountState::Dead,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
35 22 0:32 / /tmp rw,nosuid,nodev shared:14 - tmpfs tmpfs rw,size=100k
40 35 254:0 /srv/users/alice /tmp/pod\\040one/target ro,relatime shared:1 - ext4 /dev/vda rw
41 35 0:45 / /tmp/fuse rw,nosuid,nodev - fuse.hubfs hubfs rw,user_id=0,group_id=0
";

    #[test]
    fn parses_bind_mounts_with_escaped_paths() {
        let e = parse(SAMPLE);
        assert_eq!(e.len(), 4);
        let bind = mount_at(&e, Path::new("/tmp/pod one/target")).unwrap();
        assert_eq!(bind.root, Path::new("/srv/users/alice"));
        assert_eq!(bind.device, "254:0");
        assert!(bind.read_only());
        assert_eq!(bind.fs_type, "ext4");
        let fuse = mount_at(&e, Path::new("/tmp/fuse")).unwrap();
        assert_eq!(fuse.fs_type, "fuse.hubfs");
        assert!(!fuse.read_only());
    }

    #[test]
    fn containing_picks_the_deepest_mount() {
        let e = parse(SAMPLE);
        assert_eq!(
            containing(&e, Path::new("/tmp/x/y")).unwrap().mount_point,
            Path::new("/tmp")
        );
        assert_eq!(
            containing(&e, Path::new("/srv/users")).unwrap().mount_point,
            Path::new("/")
        );
    }

    #[test]
    fn malformed_lines_are_skipped() {
        assert!(parse_line("garbage").is_none());
        assert!(parse_line("1 2 3 - x").is_none());
        assert_eq!(parse("nonsense\n").len(), 0);
    }

    #[test]
    fn reads_the_live_table() {
        let e = read().unwrap();
        assert!(mount_at(&e, Path::new("/")).is_some());
    }

    #[test]
    fn probe_tells_a_mount_from_a_plain_directory() {
        assert_eq!(probe(Path::new("/")), MountState::Healthy);
        let dir = std::env::temp_dir().join(format!("hubfs-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(probe(&dir), MountState::NotMounted);
        std::fs::remove_dir(&dir).unwrap();
    }
}
