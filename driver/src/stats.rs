//! Usage of published volumes for NodeGetVolumeStats: cached, rate-limited,
//! never blocking.
//!
//! kubelet asks for stats of every volume every minute. Walking a big home on
//! NFS takes far longer than that, so each volume has at most one walk in
//! flight, a result is reused for `ttl`, and a call returns the last figure
//! at once while a refresh runs in the background. Only the very first call
//! for a volume waits, and only for `first_wait`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// A measured usage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

#[derive(Default)]
struct Entry {
    usage: Option<Usage>,
    measured: Option<Instant>,
    walking: bool,
}

/// Per-volume usage cache.
#[derive(Clone)]
pub struct UsageCache {
    inner: Arc<(Mutex<HashMap<String, Entry>>, Condvar)>,
    ttl: Duration,
    first_wait: Duration,
}

impl Default for UsageCache {
    fn default() -> Self {
        Self::new(Duration::from_secs(60), Duration::from_secs(2))
    }
}

impl UsageCache {
    pub fn new(ttl: Duration, first_wait: Duration) -> Self {
        Self {
            inner: Arc::new((Mutex::new(HashMap::new()), Condvar::new())),
            ttl,
            first_wait,
        }
    }

    /// The last known usage, without starting a walk.
    pub fn last(&self, key: &str) -> Option<Usage> {
        self.inner.0.lock().get(key).and_then(|e| e.usage)
    }

    /// The usage of `path`, refreshed in the background when stale.
    pub fn get(&self, key: &str, path: &Path) -> Option<Usage> {
        let (lock, cv) = &*self.inner;
        let mut map = lock.lock();
        let e = map.entry(key.to_owned()).or_default();
        let fresh = e.measured.is_some_and(|t| t.elapsed() < self.ttl);
        if fresh {
            return e.usage;
        }
        if !e.walking {
            e.walking = true;
            let this = self.clone();
            let (key, path) = (key.to_owned(), path.to_owned());
            std::thread::Builder::new()
                .name("hubfs-usage-walk".into())
                .spawn(move || this.refresh(key, path))
                .expect("spawn walk thread");
        }
        if e.usage.is_some() {
            return e.usage;
        }
        let deadline = Instant::now() + self.first_wait;
        loop {
            let e = map.get(key).expect("entry stays while waiting");
            if e.usage.is_some() || !e.walking {
                return e.usage;
            }
            if cv.wait_until(&mut map, deadline).timed_out() {
                return map.get(key).and_then(|e| e.usage);
            }
        }
    }

    fn refresh(&self, key: String, path: PathBuf) {
        let started = Instant::now();
        let result = measure(&path);
        let (lock, cv) = &*self.inner;
        let mut map = lock.lock();
        let e = map.entry(key).or_default();
        e.walking = false;
        match result {
            Ok(u) => {
                tracing::debug!(path = %path.display(), bytes = u.bytes, inodes = u.inodes,
                    secs = started.elapsed().as_secs_f64(), "usage measured");
                e.usage = Some(u);
                e.measured = Some(Instant::now());
            }
            Err(err) => tracing::warn!(path = %path.display(), error = %err, "usage walk failed"),
        }
        cv.notify_all();
    }
}

/// Apparent bytes and inode count below `root`: one filesystem, symlinks not
/// followed, hard links counted once (the `du --bytes -x` of the EFS quota monitor hubfs replaces), measured
/// by the parallel usage walker so the figure is the one the home layer and
/// the quota controller use.
pub fn measure(root: &Path) -> std::io::Result<Usage> {
    use hubfs_walker::{WalkError, Walker};
    let s = Walker::default().walk(root).map_err(|e| match e {
        WalkError::Root { source, .. } => source,
    })?;
    Ok(Usage {
        bytes: s.usage_bytes(),
        inodes: s.inodes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measure_counts_files_once_and_skips_symlink_targets() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("a"), vec![0u8; 1000]).unwrap();
        std::fs::write(d.path().join("sub/b"), vec![0u8; 24]).unwrap();
        std::fs::hard_link(d.path().join("a"), d.path().join("sub/a-link")).unwrap();
        std::os::unix::fs::symlink("/usr", d.path().join("usr-link")).unwrap();
        let u = measure(d.path()).unwrap();
        // a(1000) + b(24) + the symlink's own length (4 bytes: "/usr")
        assert_eq!(u.bytes, 1000 + 24 + 4);
        // root, sub, a, b, usr-link (the hard link is the same inode as a)
        assert_eq!(u.inodes, 5);
    }

    #[test]
    fn cache_serves_stale_figures_while_refreshing() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), vec![0u8; 10]).unwrap();
        let c = UsageCache::new(Duration::ZERO, Duration::from_secs(10));
        assert_eq!(c.get("v", d.path()).unwrap().bytes, 10);
        std::fs::write(d.path().join("b"), vec![0u8; 5]).unwrap();
        // ttl 0: stale at once; the call returns the old figure and refreshes.
        let first = c.get("v", d.path()).unwrap().bytes;
        assert!(first == 10 || first == 15);
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.last("v").unwrap().bytes != 15 {
            assert!(Instant::now() < deadline, "refresh never landed");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn missing_paths_give_no_figure() {
        let c = UsageCache::new(Duration::from_secs(60), Duration::from_secs(5));
        assert_eq!(c.get("v", Path::new("/nonexistent/hubfs")), None);
    }
}
