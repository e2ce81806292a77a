//! Counts of the FUSE requests a mount has served, by kind.
//!
//! What the kernel's caches save shows as requests that never arrive, so
//! counts (not times) are what tests assert and what the benchmark prints
//! per step. They are read through the root's `user.hubfs.requests`
//! extended attribute (`lookup=… negative=… …`, one `kind=count` per kind
//! seen), which costs one GETXATTR and touches no other count.

use std::sync::atomic::{AtomicU64, Ordering};

/// Kinds of requests counted. `Negative` counts lookups answered "no such
/// name" as a cached negative entry (they are counted as `Lookup` too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lookup,
    Negative,
    Getattr,
    Setattr,
    Readlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Symlink,
    Rename,
    Link,
    Open,
    Read,
    Write,
    Flush,
    Release,
    Fsync,
    Opendir,
    Readdir,
    Readdirplus,
    Releasedir,
    Statfs,
    Xattr,
    Create,
    Other,
}

impl Op {
    /// Every kind, in the order they are printed.
    pub const ALL: [Op; 26] = [
        Op::Lookup,
        Op::Negative,
        Op::Getattr,
        Op::Setattr,
        Op::Readlink,
        Op::Mknod,
        Op::Mkdir,
        Op::Unlink,
        Op::Rmdir,
        Op::Symlink,
        Op::Rename,
        Op::Link,
        Op::Open,
        Op::Read,
        Op::Write,
        Op::Flush,
        Op::Release,
        Op::Fsync,
        Op::Opendir,
        Op::Readdir,
        Op::Readdirplus,
        Op::Releasedir,
        Op::Statfs,
        Op::Xattr,
        Op::Create,
        Op::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Negative => "negative",
            Op::Getattr => "getattr",
            Op::Setattr => "setattr",
            Op::Readlink => "readlink",
            Op::Mknod => "mknod",
            Op::Mkdir => "mkdir",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::Symlink => "symlink",
            Op::Rename => "rename",
            Op::Link => "link",
            Op::Open => "open",
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Release => "release",
            Op::Fsync => "fsync",
            Op::Opendir => "opendir",
            Op::Readdir => "readdir",
            Op::Readdirplus => "readdirplus",
            Op::Releasedir => "releasedir",
            Op::Statfs => "statfs",
            Op::Xattr => "xattr",
            Op::Create => "create",
            Op::Other => "other",
        }
    }
}

/// The counters of one mount.
#[derive(Debug, Default)]
pub struct RequestCounts([AtomicU64; Op::ALL.len()]);

impl RequestCounts {
    pub fn count(&self, op: Op) {
        self.0[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, op: Op) -> u64 {
        self.0[op as usize].load(Ordering::Relaxed)
    }

    /// Requests of every kind (`Negative` is part of `Lookup`, not added).
    pub fn total(&self) -> u64 {
        Op::ALL
            .iter()
            .filter(|&&op| op != Op::Negative)
            .map(|&op| self.get(op))
            .sum()
    }

    /// `kind=count` for every kind seen, space-separated, then `total=`.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for op in Op::ALL {
            let n = self.get(op);
            if n > 0 {
                out.push_str(&format!("{}={n} ", op.name()));
            }
        }
        out.push_str(&format!("total={}", self.total()));
        out
    }
}

/// Parses [`RequestCounts::text`] back (for tests and tools): the count
/// of `kind`, 0 when absent.
pub fn parse_count(text: &str, kind: &str) -> u64 {
    text.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == kind)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_print_and_parse_back() {
        let c = RequestCounts::default();
        c.count(Op::Lookup);
        c.count(Op::Lookup);
        c.count(Op::Negative);
        c.count(Op::Readdirplus);
        let t = c.text();
        assert_eq!(t, "lookup=2 negative=1 readdirplus=1 total=3");
        assert_eq!(parse_count(&t, "lookup"), 2);
        assert_eq!(parse_count(&t, "getattr"), 0);
        assert_eq!(parse_count(&t, "total"), 3);
        assert_eq!(
            Op::ALL.iter().position(|&o| o == Op::Other),
            Some(Op::Other as usize)
        );
    }
}
