//! A bounded local-disk cache of object data, shared by every reader of a
//! mount.
//!
//! Fifty notebooks on a node reading one course dataset share the mount and
//! so its page cache; once the kernel drops those pages, this cache lets the
//! next reader get the bytes from local disk instead of S3.
//!
//! [`CachedStore`] wraps the store: a ranged GET of a known version (an
//! ETag) is served from the cache when every byte of it is there, and
//! otherwise goes to S3 while the blocks it covers are written to the cache
//! on the way to the reader. Blocks are keyed by bucket, key **and ETag**, so
//! a replaced object is never served stale: its new ETag misses, and its old
//! blocks are never read again and age out. A GET without an ETag bypasses
//! the cache. Each block file starts with a header naming bucket, key, ETag
//! and block number, checked on every read, so neither a hash collision nor
//! a damaged file can serve the wrong bytes (a bad file is a miss and is
//! removed). Files are written whole and renamed into place.
//!
//! The cache holds at most `max_bytes` of data; least recently used blocks
//! are evicted first. It starts empty (whatever an earlier mount left in the
//! directory is removed), so it is valid exactly as long as the mount. It
//! is not shared between mounts: whoever starts mounts gives each bucket,
//! prefix and identity its own directory, so one identity's data never
//! reaches a reader of another.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use parking_lot::Mutex;

use super::error::ObjectError;
use super::layer::{Get, Layer, Layered};
use super::metrics::S3Metrics;
use super::store::{ByteStream, ObjectStore};

/// Bytes per cache block: the unit kept, evicted and checked. A divisor of
/// the prefetcher's part sizes, so sequential reads fill whole blocks.
pub const BLOCK_SIZE: u64 = 1 << 20;

/// Where and how much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheOptions {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

/// One object version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Version<'a> {
    bucket: &'a str,
    key: &'a str,
    etag: &'a str,
}

impl Version<'_> {
    /// The header every block file of this version starts with.
    fn header(&self, block: u64) -> Vec<u8> {
        let mut h = b"hubfs-cache-v1\0".to_vec();
        for part in [self.bucket, self.key, self.etag] {
            h.extend_from_slice(&(part.len() as u32).to_le_bytes());
            h.extend_from_slice(part.as_bytes());
        }
        h.extend_from_slice(&block.to_le_bytes());
        h
    }

    fn file_name(&self, block: u64) -> String {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut hasher);
        format!("{:016x}-{block}", hasher.finish())
    }
}

#[derive(Debug, Default)]
struct Index {
    /// File name -> (data bytes, last use).
    blocks: HashMap<String, (u64, u64)>,
    /// Last use -> file name, oldest first.
    by_use: BTreeMap<u64, String>,
    bytes: u64,
    tick: u64,
}

impl Index {
    fn touch(&mut self, name: &str) {
        self.tick += 1;
        let tick = self.tick;
        if let Some((_, used)) = self.blocks.get_mut(name) {
            self.by_use.remove(used);
            *used = tick;
            self.by_use.insert(tick, name.to_string());
        }
    }

    fn insert(&mut self, name: String, len: u64) {
        self.remove(&name);
        self.tick += 1;
        self.by_use.insert(self.tick, name.clone());
        self.blocks.insert(name, (len, self.tick));
        self.bytes += len;
    }

    fn remove(&mut self, name: &str) -> bool {
        match self.blocks.remove(name) {
            Some((len, used)) => {
                self.by_use.remove(&used);
                self.bytes -= len;
                true
            }
            None => false,
        }
    }

    /// The least recently used block, if the cache is over `max`.
    fn victim(&self, max: u64) -> Option<String> {
        (self.bytes > max)
            .then(|| self.by_use.values().next().cloned())
            .flatten()
    }
}

/// The cache directory and its index.
#[derive(Debug)]
pub struct DiskCache {
    dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
    metrics: Arc<S3Metrics>,
}

impl DiskCache {
    /// Opens (creates) the directory and empties it.
    pub fn new(opts: &CacheOptions, metrics: Arc<S3Metrics>) -> io::Result<Arc<Self>> {
        if opts.max_bytes < BLOCK_SIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a cache needs at least {BLOCK_SIZE} bytes"),
            ));
        }
        std::fs::create_dir_all(&opts.dir)?;
        for entry in std::fs::read_dir(&opts.dir)? {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        metrics.cache_bytes.set(0);
        Ok(Arc::new(Self {
            dir: opts.dir.clone(),
            max_bytes: opts.max_bytes,
            index: Mutex::new(Index::default()),
            metrics,
        }))
    }

    /// Bytes of data held now.
    pub fn bytes(&self) -> u64 {
        self.index.lock().bytes
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads `range` of one version if every byte of it is cached.
    fn read(&self, v: &Version<'_>, range: &Range<u64>) -> Option<Vec<Bytes>> {
        let mut out = Vec::new();
        let first = range.start / BLOCK_SIZE;
        let last = (range.end - 1) / BLOCK_SIZE;
        for block in first..=last {
            let name = v.file_name(block);
            let base = block * BLOCK_SIZE;
            let want_end = (range.end - base).min(BLOCK_SIZE) as usize;
            if !self.index.lock().blocks.contains_key(&name) {
                return None;
            }
            let data = match self.read_block(v, block, &name) {
                Some(d) if d.len() >= want_end => d,
                _ => return None,
            };
            self.index.lock().touch(&name);
            let from = range.start.saturating_sub(base) as usize;
            out.push(data.slice(from..want_end));
        }
        Some(out)
    }

    fn read_block(&self, v: &Version<'_>, block: u64, name: &str) -> Option<Bytes> {
        let header = v.header(block);
        match std::fs::read(self.dir.join(name)) {
            Ok(raw) if raw.starts_with(&header) => Some(Bytes::from(raw).slice(header.len()..)),
            _ => {
                // Gone or not what it claims to be: a miss, and out it goes.
                self.forget(name);
                None
            }
        }
    }

    fn forget(&self, name: &str) {
        if self.index.lock().remove(name) {
            let _ = std::fs::remove_file(self.dir.join(name));
        }
        self.metrics.cache_bytes.set(self.bytes() as i64);
    }

    /// Stores one block (written whole, renamed into place), then evicts
    /// least recently used blocks until the cache fits again.
    fn write(&self, v: &Version<'_>, block: u64, data: &[u8]) {
        let name = v.file_name(block);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&v.header(block))?;
            f.write_all(data)?;
            std::fs::rename(&tmp, self.dir.join(&name))
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write the data cache");
            return;
        }
        let mut index = self.index.lock();
        index.insert(name, data.len() as u64);
        while let Some(victim) = index.victim(self.max_bytes) {
            index.remove(&victim);
            let _ = std::fs::remove_file(self.dir.join(&victim));
        }
        self.metrics.cache_bytes.set(index.bytes as i64);
        // Counted once the block is in and the cache fits again, so a reader
        // of the metric (or a test) sees each fill complete.
        self.metrics.cache_fill_bytes.inc_by(data.len() as u64);
    }
}

/// The layer that serves versioned GETs from a [`DiskCache`] (if there is
/// one); every other request passes untouched.
#[derive(Debug)]
pub struct Cached(Option<Arc<DiskCache>>);

/// A store whose versioned GETs go through a [`DiskCache`] (if there is one).
pub type CachedStore<S> = Layered<S, Cached>;

impl<S> CachedStore<S> {
    pub fn new(inner: S, cache: Option<Arc<DiskCache>>) -> Self {
        Layered::with_layer(inner, Cached(cache))
    }
}

/// Owned copy of a [`Version`], for the tee task.
#[derive(Debug, Clone)]
struct OwnedVersion {
    bucket: String,
    key: String,
    etag: String,
}

impl OwnedVersion {
    fn as_ref(&self) -> Version<'_> {
        Version {
            bucket: &self.bucket,
            key: &self.key,
            etag: &self.etag,
        }
    }
}

/// Passes a GET body through and writes every block it covers from the
/// block's start (the first block of a range starting mid-block is not
/// cached) to the cache, the last one possibly short.
fn tee(cache: Arc<DiskCache>, v: OwnedVersion, range: Range<u64>, body: ByteStream) -> ByteStream {
    struct State {
        cache: Arc<DiskCache>,
        v: OwnedVersion,
        pos: u64,
        end: u64,
        block: BytesMut,
        body: ByteStream,
    }
    let state = State {
        cache,
        v,
        pos: range.start,
        end: range.end,
        block: BytesMut::new(),
        body,
    };
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        let item = st.body.next().await?;
        if let Ok(chunk) = &item {
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                let in_block = st.pos % BLOCK_SIZE;
                let room = (BLOCK_SIZE - in_block) as usize;
                let take = room.min(rest.len());
                // A block is kept only if the range covers it from its start.
                if in_block == 0 || !st.block.is_empty() {
                    st.block.extend_from_slice(&rest[..take]);
                }
                st.pos += take as u64;
                rest = &rest[take..];
                let full = st.pos % BLOCK_SIZE == 0 || st.pos == st.end;
                if full && !st.block.is_empty() {
                    let data = std::mem::take(&mut st.block).freeze();
                    let block = (st.pos - 1) / BLOCK_SIZE;
                    let (cache, v) = (st.cache.clone(), st.v.clone());
                    // Off the reader's path; a failed write is only a miss later.
                    tokio::task::spawn_blocking(move || cache.write(&v.as_ref(), block, &data));
                }
            }
        }
        Some((item, st))
    }))
}

#[async_trait]
impl Layer for Cached {
    async fn get_range<S: ObjectStore>(
        &self,
        inner: &S,
        get: Get<'_>,
    ) -> Result<ByteStream, ObjectError> {
        let Get {
            bucket,
            key,
            range,
            etag,
        } = get;
        let (Some(cache), Some(etag)) = (&self.0, etag) else {
            return inner.get_range(bucket, key, range, etag).await;
        };
        if range.start >= range.end {
            return inner.get_range(bucket, key, range, Some(etag)).await;
        }
        let v = OwnedVersion {
            bucket: bucket.to_string(),
            key: key.to_string(),
            etag: etag.to_string(),
        };
        let hit = {
            let (cache, v, range) = (cache.clone(), v.clone(), range.clone());
            tokio::task::spawn_blocking(move || cache.read(&v.as_ref(), &range))
                .await
                .ok()
                .flatten()
        };
        if let Some(pieces) = hit {
            cache.metrics.cache_hits.inc();
            cache
                .metrics
                .cache_hit_bytes
                .inc_by(range.end - range.start);
            return Ok(Box::pin(futures::stream::iter(pieces.into_iter().map(Ok))));
        }
        cache.metrics.cache_misses.inc();
        let body = inner
            .get_range(bucket, key, range.clone(), Some(etag))
            .await?;
        Ok(tee(cache.clone(), v, range, body))
    }
}

#[cfg(test)]
mod tests;
