//! A bounded local-disk cache of object data that outlives the server:
//! restarts, crashes and takeovers keep a class's warm dataset.
//!
//! Fifty notebooks on a node reading one course dataset share the mount,
//! its [shared blocks](super::blocks) and its page cache; once the kernel
//! drops those pages, or the server is restarted or upgraded, this cache
//! lets the next reader get the bytes from local disk instead of S3.
//!
//! The shared blocks use it: a block of a known version (an ETag) is looked
//! for here before it is fetched, and every block fetched whole from S3 is
//! written here off the reader's path. One file per block, named by a
//! digest of bucket, key, ETag and size and the block's number, written
//! whole under a temporary name and renamed into place. Each file starts
//! with a header naming bucket, key, ETag, object size, block size, block
//! number and data length, and a CRC-32 of the data; a read checks all of
//! it against what it asked for and the file's length, so a torn file (a
//! crash before its data reached the disk), a damaged one, or one claiming
//! another version (a digest collision, a file put there by hand) is a
//! miss, removed and never served. A replaced object has a new ETag, so it
//! misses and is fetched new; its old blocks are never read again and age
//! out. Objects without a known ETag are not cached.
//!
//! What an earlier server left in the directory is kept: at start the
//! directory is scanned (names and sizes only — checking every block there
//! would read the whole cache; each block is checked when read), files of
//! an older format and temporary files older than a minute (a server that
//! died mid-write; a server being taken over may still be writing fresh
//! ones) are removed, anything else that is not a block file is left alone
//! and not counted, and least recently used blocks are evicted until the
//! cache fits `max_bytes` again. Two
//! servers may share the directory for the moments of a takeover: writes
//! are atomic renames, a block one of them evicts is only a miss to the
//! other.
//!
//! The order of use: while a server runs, its index (in memory) moves a
//! block to the back at every hit and write. Across a restart, the scan
//! ranks each file by the later of its modification time (its write) and
//! its access time, which the kernel sets when the file is read (the
//! server never sets file times: its seccomp list has no `utimensat`).
//! Under the usual `relatime` the kernel records the first read after a
//! write and then at most one a day, so across restarts a block read since
//! it was written ranks by that read, one never read by its write, and a
//! filesystem mounted `noatime` ranks by writes alone.
//!
//! The cache is not shared between identities: whoever starts servers gives
//! each bucket, prefix and identity its own directory, so one identity's
//! data never reaches a reader of another. Nothing here needs root: files
//! are created 0600 by whoever the server runs as, in a directory it owns.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::blocks::{ObjectVersion, Pieces};
use super::metrics::S3Metrics;

/// Where and how much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheOptions {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

/// The first bytes of every block file of this format.
const MAGIC: &[u8] = b"hubfs-cache-v2\0";

/// Temporary files older than this belong to a writer that is gone.
const STALE_TMP: Duration = Duration::from_secs(60);

/// One block of one version, as a file: its name and header.
struct BlockFile {
    name: String,
    header: Vec<u8>,
}

impl BlockFile {
    /// `None` for a version without an ETag (never cached).
    fn of(v: &ObjectVersion, block_size: u64, block: u64, len: u64) -> Option<Self> {
        let etag = v.etag.as_deref()?;
        let mut digest = Sha256::new();
        for part in [v.bucket.as_bytes(), v.key.as_bytes(), etag.as_bytes()] {
            digest.update((part.len() as u64).to_le_bytes());
            digest.update(part);
        }
        digest.update(v.size.to_le_bytes());
        let hex: String = digest.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut header = MAGIC.to_vec();
        for part in [v.bucket.as_bytes(), v.key.as_bytes(), etag.as_bytes()] {
            header.extend_from_slice(&(part.len() as u32).to_le_bytes());
            header.extend_from_slice(part);
        }
        for n in [v.size, block_size, block, len] {
            header.extend_from_slice(&n.to_le_bytes());
        }
        Some(BlockFile {
            name: format!("{hex}-{block}"),
            header,
        })
    }
}

/// Whether `name` is a block file's name: 32 hex digits, `-`, a number.
fn is_block_name(name: &str) -> bool {
    name.split_once('-').is_some_and(|(hex, n)| {
        hex.len() == 32
            && hex.bytes().all(|b| b.is_ascii_hexdigit())
            && !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
    })
}

/// Whether `name` is a block file of the first format (16 hex digits),
/// which servers emptied at every start and this one removes.
fn is_old_format(name: &str) -> bool {
    name.split_once('-').is_some_and(|(hex, n)| {
        hex.len() == 16
            && hex.bytes().all(|b| b.is_ascii_hexdigit())
            && n.bytes().all(|b| b.is_ascii_digit())
    })
}

#[derive(Debug, Default)]
struct Index {
    /// File name -> (bytes on disk, last use).
    blocks: HashMap<String, (u64, u64)>,
    /// Last use -> file name, oldest first.
    by_use: BTreeMap<u64, String>,
    bytes: u64,
    tick: u64,
}

impl Index {
    /// Records a use of `name` (of `len` bytes), adding it if new.
    fn touch(&mut self, name: &str, len: u64) {
        self.remove(name);
        self.tick += 1;
        self.by_use.insert(self.tick, name.to_string());
        self.blocks.insert(name.to_string(), (len, self.tick));
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
    block_size: u64,
    index: Mutex<Index>,
    next_tmp: AtomicU64,
    metrics: Arc<S3Metrics>,
}

impl DiskCache {
    /// Opens (creates, 0700) the directory with blocks of `block_size`
    /// bytes, keeping the blocks an earlier server left there (see the
    /// module doc).
    pub fn open(
        opts: &CacheOptions,
        block_size: u64,
        metrics: Arc<S3Metrics>,
    ) -> io::Result<Arc<Self>> {
        if opts.max_bytes < block_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a cache needs at least {block_size} bytes"),
            ));
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&opts.dir)?;
        let cache = Arc::new(Self {
            dir: opts.dir.clone(),
            max_bytes: opts.max_bytes,
            block_size,
            index: Mutex::new(Index::default()),
            next_tmp: AtomicU64::new(0),
            metrics,
        });
        cache.scan()?;
        Ok(cache)
    }

    /// Indexes the block files in the directory, oldest use first, removes
    /// what is known to be dead, and evicts down to the limit.
    fn scan(&self) -> io::Result<()> {
        let now = SystemTime::now();
        let mut found = Vec::new();
        let (mut removed, mut unknown) = (0usize, 0usize);
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // Not followed: a link is never a block file.
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            let dead = meta.is_file()
                && (is_old_format(&name)
                    || (name.starts_with('.') && name.ends_with(".tmp") && age > STALE_TMP));
            if dead {
                removed += std::fs::remove_file(entry.path()).is_ok() as usize;
            } else if meta.is_file() && is_block_name(&name) {
                let written = meta.modified().unwrap_or(now);
                found.push((
                    meta.accessed().map_or(written, |read| read.max(written)),
                    name.into_owned(),
                    meta.len(),
                ));
            } else if !(name.starts_with('.') && name.ends_with(".tmp")) {
                unknown += 1;
            }
        }
        found.sort();
        let kept = found.len();
        {
            let mut index = self.index.lock();
            for (_, name, len) in found {
                index.touch(&name, len);
            }
        }
        let evicted = self.evict();
        if unknown > 0 {
            tracing::warn!(dir = %self.dir.display(), unknown, "the data cache directory holds files that are not cache blocks; they are left alone and not counted");
        }
        tracing::info!(dir = %self.dir.display(), blocks = kept - evicted, bytes = self.bytes(), removed, evicted, "data cache opened");
        Ok(())
    }

    /// Evicts least recently used blocks until the cache fits; how many went.
    fn evict(&self) -> usize {
        let mut index = self.index.lock();
        let mut n = 0;
        while let Some(victim) = index.victim(self.max_bytes) {
            index.remove(&victim);
            let _ = std::fs::remove_file(self.dir.join(&victim));
            n += 1;
        }
        self.metrics.cache_bytes.set(index.bytes as i64);
        n
    }

    /// Bytes of block files held now.
    pub fn bytes(&self) -> u64 {
        self.index.lock().bytes
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Block `block` (of `len` bytes) of version `v`, if a file holds
    /// exactly it. Anything else found under its name is removed.
    pub fn read(&self, v: &ObjectVersion, block: u64, len: u64) -> Option<Bytes> {
        let file = BlockFile::of(v, self.block_size, block, len)?;
        let path = self.dir.join(&file.name);
        let checked = (|| -> io::Result<Option<(Bytes, u64)>> {
            let mut f = File::open(&path)?;
            let total = file.header.len() as u64 + 4 + len;
            if f.metadata()?.len() != total {
                return Ok(None);
            }
            let mut raw = vec![0u8; total as usize];
            f.read_exact(&mut raw)?;
            let (head, rest) = raw.split_at(file.header.len());
            if head != file.header {
                return Ok(None);
            }
            let crc = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
            if crc32fast::hash(&rest[4..]) != crc {
                return Ok(None);
            }
            let data = Bytes::from(raw).slice(file.header.len() + 4..);
            Ok(Some((data, total)))
        })();
        match checked {
            Ok(Some((data, total))) => {
                self.index.lock().touch(&file.name, total);
                self.metrics.cache_hits.inc();
                self.metrics.cache_hit_bytes.inc_by(len);
                Some(data)
            }
            Ok(None) => {
                tracing::warn!(file = %path.display(), "dropping a torn, damaged or foreign data cache block");
                self.remove(&file.name);
                None
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.index.lock().remove(&file.name);
                None
            }
            Err(e) => {
                tracing::debug!(file = %path.display(), error = %e, "data cache block unreadable");
                self.remove(&file.name);
                None
            }
        }
    }

    fn remove(&self, name: &str) {
        let _ = std::fs::remove_file(self.dir.join(name));
        let mut index = self.index.lock();
        index.remove(name);
        self.metrics.cache_bytes.set(index.bytes as i64);
    }

    /// Stores block `block` of version `v` (written whole, renamed into
    /// place), then evicts least recently used blocks until the cache fits
    /// again. A failed write is only a miss later.
    pub fn write(&self, v: &ObjectVersion, block: u64, data: &Pieces) {
        let len = data.len() as u64;
        let Some(file) = BlockFile::of(v, self.block_size, block, len) else {
            return;
        };
        let tmp = self.dir.join(format!(
            ".{}.{}.{}.tmp",
            file.name,
            std::process::id(),
            self.next_tmp.fetch_add(1, Ordering::Relaxed)
        ));
        let mut crc = crc32fast::Hasher::new();
        for s in data.slices() {
            crc.update(s);
        }
        let mut head = file.header;
        head.extend_from_slice(&crc.finalize().to_le_bytes());
        let total = head.len() as u64 + len;
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&head)?;
            for s in data.slices() {
                f.write_all(s)?;
            }
            std::fs::rename(&tmp, self.dir.join(&file.name))
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write the data cache");
            return;
        }
        self.index.lock().touch(&file.name, total);
        self.evict();
        // Counted once the block is in and the cache fits again, so a reader
        // of the metric (or a test) sees each fill complete.
        self.metrics.cache_fill_bytes.inc_by(len);
    }
}

#[cfg(test)]
mod tests;
