//! The filesystem core: what each FUSE operation means for an object store.
//!
//! Generic over [`ObjectStore`] and free of fuser types, so every behaviour
//! (how many requests an `ls -l` costs, what a lookup of a missing name
//! does, how writes are refused) is tested against the fake without a kernel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Mutex as AsyncMutex;

use super::blocks::{Blocks, ObjectVersion, Pieces};
use super::cache::DiskCache;
use super::error::{FsError, ObjectError};
use super::inode::{Ino, Inode, InodeTable, Kind, Location, NewChild, Stat};
use super::listing::{page_entries, valid_name, DirCache, DirEntry, Listing, NAME_MAX};
use super::memory::MemoryLimiter;
use super::metrics::S3Metrics;
use super::prefetch::{PrefetchConfig, Prefetcher};
use super::store::{ObjectStore, Op, LIST_PAGE_SIZE};
use super::upload::Upload;

/// A bucket, or a prefix of one, shown as a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketSource {
    pub bucket: String,
    /// "" or ending in '/'.
    pub prefix: String,
    /// Its directory name in the root of a mount of several sources.
    pub name: String,
}

impl BucketSource {
    /// Parses `BUCKET[:PREFIX]`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (bucket, prefix) = match spec.split_once(':') {
            Some((b, p)) => (b, p),
            None => (spec, ""),
        };
        let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c);
        if bucket.len() < 3 || bucket.len() > 63 || !bucket.chars().all(valid) {
            return Err(format!(
                "invalid bucket name {bucket:?}: 3 to 63 characters of a-z, 0-9, '.', '-', '_'"
            ));
        }
        let prefix = prefix.trim_start_matches('/');
        let prefix = if prefix.is_empty() || prefix.ends_with('/') {
            prefix.to_string()
        } else {
            format!("{prefix}/")
        };
        Ok(Self {
            bucket: bucket.to_string(),
            prefix,
            name: bucket.to_string(),
        })
    }
}

/// How the filesystem behaves.
#[derive(Debug, Clone)]
pub struct FsConfig {
    pub sources: Vec<BucketSource>,
    pub uid: u32,
    pub gid: u32,
    pub dir_mode: u16,
    pub file_mode: u16,
    /// How long listed or looked-up attributes are trusted.
    pub metadata_ttl: Duration,
    /// How long a name known to be missing stays missing.
    pub negative_ttl: Duration,
    pub prefetch: PrefetchConfig,
    pub allow_writes: bool,
    pub allow_delete: bool,
    pub upload_part_size: u64,
    /// How long an interactive call (lookup, stat, a page of `ls`, open)
    /// may wait on S3, retries included, before it answers EIO.
    pub interactive_timeout: Duration,
}

impl FsConfig {
    pub fn new(sources: Vec<BucketSource>) -> Self {
        Self {
            sources,
            uid: 0,
            gid: 0,
            dir_mode: 0o755,
            file_mode: 0o644,
            metadata_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(60),
            prefetch: PrefetchConfig::default(),
            allow_writes: false,
            allow_delete: false,
            upload_part_size: 8 << 20,
            interactive_timeout: Duration::from_secs(30),
        }
    }
}

/// Attributes in the kernel's terms, without fuser types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    /// How long the kernel may cache these attributes and the entry.
    pub ttl: Duration,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
}

/// An entry returned by [`S3Fs::readdir`]: the offset of the next entry,
/// the name and the attributes.
pub type ReaddirEntry = (u64, String, Attr);

#[derive(Debug)]
struct DirHandle {
    ino: Ino,
    listing: Listing,
    token: Option<String>,
    done: bool,
}

enum Handle<S> {
    Dir(Arc<AsyncMutex<DirHandle>>),
    Read(Ino, Arc<AsyncMutex<Prefetcher<S>>>),
    Write(Ino, Arc<AsyncMutex<Upload<S>>>),
}

impl<S> Clone for Handle<S> {
    fn clone(&self) -> Self {
        match self {
            Handle::Dir(h) => Handle::Dir(h.clone()),
            Handle::Read(i, h) => Handle::Read(*i, h.clone()),
            Handle::Write(i, h) => Handle::Write(*i, h.clone()),
        }
    }
}

/// The S3 filesystem.
pub struct S3Fs<S> {
    store: Arc<S>,
    cfg: FsConfig,
    inodes: InodeTable,
    dirs: DirCache,
    handles: Mutex<HashMap<u64, Handle<S>>>,
    next_fh: AtomicU64,
    limiter: Arc<MemoryLimiter>,
    /// The blocks every open file reads from (one fetch per block).
    blocks: Arc<Blocks<S>>,
    /// The local-disk data cache under the blocks, if any.
    disk: Option<Arc<DiskCache>>,
    metrics: Arc<S3Metrics>,
    started: SystemTime,
}

/// An open file: its handle, and whether the kernel may keep the pages it
/// cached of it (they are of the version this open reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub fh: u64,
    pub keep_cache: bool,
}

impl<S> std::fmt::Debug for S3Fs<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Fs")
            .field("sources", &self.cfg.sources)
            .finish()
    }
}

/// `now + ttl`, saturating for "indefinite" TTLs.
fn until(now: Instant, ttl: Duration) -> Instant {
    now.checked_add(ttl)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

impl<S: ObjectStore> S3Fs<S> {
    pub fn new(store: Arc<S>, cfg: FsConfig, limiter: Arc<MemoryLimiter>) -> Result<Self, String> {
        if cfg.sources.is_empty() {
            return Err("no bucket to mount".into());
        }
        let mut names = std::collections::HashSet::new();
        for s in &cfg.sources {
            if !names.insert(s.name.clone()) {
                return Err(format!(
                    "{} is given twice: several prefixes of one bucket need separate mounts",
                    s.name
                ));
            }
        }
        let root_loc = if cfg.sources.len() == 1 {
            Location::Dir {
                source: 0,
                prefix: cfg.sources[0].prefix.clone(),
            }
        } else {
            Location::Root
        };
        let now = Instant::now();
        let root_stat = Stat {
            size: 0,
            mtime: SystemTime::now(),
            etag: None,
            expiry: until(now, Duration::MAX),
        };
        let metrics = S3Metrics::new();
        let blocks = Blocks::new(
            store.clone(),
            limiter.clone(),
            cfg.prefetch.blocks(),
            metrics.clone(),
        );
        Ok(Self {
            store,
            inodes: InodeTable::new(root_loc, root_stat),
            dirs: DirCache::default(),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            limiter,
            blocks,
            disk: None,
            metrics,
            started: SystemTime::now(),
            cfg,
        })
    }

    /// Counts give-ups (and cache traffic) in these metrics, the mount's.
    pub fn with_metrics(mut self, metrics: Arc<S3Metrics>) -> Self {
        self.metrics = metrics;
        self.new_blocks()
    }

    /// Reads through a local-disk data cache (see [`super::cache`]).
    pub fn with_data_cache(mut self, disk: Option<Arc<DiskCache>>) -> Self {
        self.disk = disk;
        self.new_blocks()
    }

    fn new_blocks(mut self) -> Self {
        self.blocks = Blocks::with_disk(
            self.store.clone(),
            self.disk.clone(),
            self.limiter.clone(),
            self.cfg.prefetch.blocks(),
            self.metrics.clone(),
        );
        self
    }

    /// The mount's shared blocks.
    pub fn blocks(&self) -> &Arc<Blocks<S>> {
        &self.blocks
    }

    pub fn config(&self) -> &FsConfig {
        &self.cfg
    }

    pub fn limiter(&self) -> &Arc<MemoryLimiter> {
        &self.limiter
    }

    /// The mount's counters.
    pub fn metrics(&self) -> &Arc<S3Metrics> {
        &self.metrics
    }

    fn attr(&self, n: &Inode) -> Attr {
        // What exists only here may change under the kernel at any time.
        let ttl = if n.local {
            Duration::ZERO
        } else {
            self.cfg.metadata_ttl.min(Duration::from_secs(365 * 86_400))
        };
        match n.kind {
            Kind::Dir => Attr {
                ino: n.ino,
                ttl,
                kind: Kind::Dir,
                size: 0,
                mtime: if n.stat.mtime == SystemTime::UNIX_EPOCH {
                    self.started
                } else {
                    n.stat.mtime
                },
                perm: self.cfg.dir_mode,
                uid: self.cfg.uid,
                gid: self.cfg.gid,
                nlink: 2,
            },
            Kind::File => Attr {
                ino: n.ino,
                ttl,
                kind: Kind::File,
                size: n.stat.size,
                mtime: n.stat.mtime,
                perm: self.cfg.file_mode,
                uid: self.cfg.uid,
                gid: self.cfg.gid,
                nlink: 1,
            },
        }
    }

    fn node(&self, ino: Ino) -> Result<Inode, FsError> {
        self.inodes.get(ino).ok_or(FsError::NotFound)
    }

    fn dir_of(&self, n: &Inode) -> Result<(usize, String), FsError> {
        match &n.loc {
            Location::Dir { source, prefix } => Ok((*source, prefix.clone())),
            Location::Root => Err(FsError::NotPermitted("the root of a multi-bucket mount")),
            Location::File { .. } => Err(FsError::NotDir),
        }
    }

    fn child_from_entry(&self, source: usize, prefix: &str, e: &DirEntry) -> NewChild {
        let key = format!("{prefix}{}", e.name);
        NewChild {
            kind: e.kind,
            loc: match e.kind {
                Kind::Dir => Location::Dir {
                    source,
                    prefix: format!("{key}/"),
                },
                Kind::File => Location::File { source, key },
            },
            stat: Stat {
                size: e.size,
                mtime: e.mtime,
                etag: e.etag.clone(),
                expiry: e.expiry,
            },
            local: false,
        }
    }

    /// Looks up `name` in `parent`; the kernel holds a reference afterwards.
    pub async fn lookup(&self, parent: Ino, name: &str) -> Result<Attr, FsError> {
        let n = self.lookup_node(parent, name).await?;
        self.inodes.remember(n.ino);
        Ok(self.attr(&n))
    }

    /// The kernel took a reference through readdirplus.
    pub fn remember(&self, ino: Ino) {
        self.inodes.remember(ino);
    }

    pub fn forget(&self, ino: Ino, n: u64) {
        self.inodes.forget(ino, n);
    }

    pub async fn getattr(&self, ino: Ino) -> Result<Attr, FsError> {
        let n = self.node(ino)?;
        if n.kind == Kind::Dir || n.is_fresh(Instant::now()) {
            return Ok(self.attr(&n));
        }
        let Location::File { source, key } = &n.loc else {
            return Ok(self.attr(&n));
        };
        let info = self
            .bounded(
                Op::Head,
                self.store.head(&self.cfg.sources[*source].bucket, key),
            )
            .await?;
        let stat = Stat {
            size: info.size,
            mtime: info.mtime,
            etag: info.etag,
            expiry: until(Instant::now(), self.cfg.metadata_ttl),
        };
        let n = self
            .inodes
            .set_stat(ino, stat, false)
            .ok_or(FsError::NotFound)?;
        Ok(self.attr(&n))
    }

    fn new_fh(&self, h: Handle<S>) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, h);
        fh
    }

    fn handle(&self, fh: u64) -> Result<Handle<S>, FsError> {
        self.handles
            .lock()
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    pub async fn opendir(&self, ino: Ino) -> Result<u64, FsError> {
        let n = self.node(ino)?;
        let mut h = DirHandle {
            ino,
            listing: Listing::default(),
            token: None,
            done: false,
        };
        match &n.loc {
            Location::File { .. } => return Err(FsError::NotDir),
            Location::Root => {
                let expiry = until(Instant::now(), Duration::MAX);
                for s in &self.cfg.sources {
                    h.listing.add(DirEntry {
                        name: s.name.clone(),
                        kind: Kind::Dir,
                        size: 0,
                        mtime: self.started,
                        etag: None,
                        expiry,
                    });
                }
                h.done = true;
            }
            Location::Dir { .. } => {
                if let Some(l) = self.dirs.get(ino, Instant::now()) {
                    h.listing = (*l).clone();
                    h.done = true;
                }
            }
        }
        Ok(self.new_fh(Handle::Dir(Arc::new(AsyncMutex::new(h)))))
    }

    /// Up to `max` entries from `offset` (see [`Self::readdir_with`]).
    pub async fn readdir(
        &self,
        ino: Ino,
        fh: u64,
        offset: u64,
        max: usize,
    ) -> Result<Vec<ReaddirEntry>, FsError> {
        let mut out = Vec::new();
        self.readdir_with(ino, fh, offset, |next, name, attr| {
            if out.len() >= max {
                return true;
            }
            out.push((next, name.to_string(), attr.clone()));
            false
        })
        .await?;
        Ok(out)
    }

    /// Offers the entries of `ino` from `offset` (0 = start, then the
    /// offsets handed out) to `add` one by one — the offset of the next
    /// entry, the name, the attributes — until `add` answers that the
    /// reply is full (`true`) or the listing ends; returns how many it
    /// took. An entry's inode and attributes are worked out only when it
    /// is offered: the kernel's buffer takes a few dozen entries per
    /// request, and the entries after them cost nothing until asked for.
    /// The next listing page is fetched only when none of those already
    /// listed is left to offer, so huge directories stream.
    pub async fn readdir_with(
        &self,
        ino: Ino,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, &str, &Attr) -> bool + Send,
    ) -> Result<usize, FsError> {
        let Handle::Dir(h) = self.handle(fh)? else {
            return Err(FsError::BadHandle);
        };
        let mut h = h.lock().await;
        if h.ino != ino {
            return Err(FsError::BadHandle);
        }
        let dir = self.node(ino)?;
        let mut taken = 0usize;
        let mut i = offset;
        loop {
            loop {
                let full = match i {
                    0 => add(1, ".", &self.attr(&dir)),
                    1 => {
                        let p = self.inodes.get(dir.parent).unwrap_or(dir.clone());
                        add(2, "..", &self.attr(&p))
                    }
                    _ => match h.listing.entries.get((i - 2) as usize) {
                        Some(e) => add(i + 1, &e.name, &self.entry_attr(&dir, e)),
                        None => break,
                    },
                };
                if full {
                    return Ok(taken);
                }
                taken += 1;
                i += 1;
            }
            if h.done || taken > 0 {
                return Ok(taken);
            }
            self.next_page(&dir, &mut h).await?;
        }
    }

    fn entry_attr(&self, dir: &Inode, e: &DirEntry) -> Attr {
        let node = match &dir.loc {
            Location::Dir { source, prefix } => {
                let child = self.child_from_entry(*source, prefix, e);
                return self
                    .inodes
                    .upsert_with(dir.ino, &e.name, child, |n| self.attr(n));
            }
            _ => {
                // Children of the multi-bucket root are the sources.
                let i = self
                    .cfg
                    .sources
                    .iter()
                    .position(|s| s.name == e.name)
                    .unwrap_or(0);
                self.inodes.upsert(
                    dir.ino,
                    &e.name,
                    NewChild::dir(
                        i,
                        self.cfg.sources[i].prefix.clone(),
                        self.started,
                        e.expiry,
                        false,
                    ),
                )
            }
        };
        self.attr(&node)
    }

    async fn next_page(&self, dir: &Inode, h: &mut DirHandle) -> Result<(), FsError> {
        let (source, prefix) = self.dir_of(dir)?;
        let bucket = &self.cfg.sources[source].bucket;
        let started = Instant::now();
        let page = self
            .bounded(
                Op::List,
                self.store
                    .list_page(bucket, &prefix, Some("/"), h.token.clone(), LIST_PAGE_SIZE),
            )
            .await?;
        let expiry = until(started, self.cfg.metadata_ttl);
        for e in page_entries(&prefix, &page, expiry) {
            h.listing.add(e);
        }
        h.token = page.next_token;
        if h.token.is_none() {
            for local in self.inodes.local_children(dir.ino) {
                if h.listing.get(&local.name).is_none() {
                    h.listing.add(DirEntry {
                        name: local.name.clone(),
                        kind: local.kind,
                        size: local.stat.size,
                        mtime: local.stat.mtime,
                        etag: None,
                        expiry,
                    });
                }
            }
            h.done = true;
            self.dirs.put(dir.ino, Arc::new(h.listing.clone()), expiry);
        }
        Ok(())
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.lock().remove(&fh);
    }

    /// Opens a file for reading, or a new file for writing.
    pub async fn open(&self, ino: Ino, write: bool, truncate: bool) -> Result<Opened, FsError> {
        let n = self.node(ino)?;
        let Location::File { source, key } = n.loc.clone() else {
            return Err(FsError::IsDir);
        };
        let bucket = self.cfg.sources[source].bucket.clone();
        if write {
            if !self.cfg.allow_writes {
                return Err(FsError::ReadOnly);
            }
            if !truncate && !n.local && n.stat.size != 0 {
                tracing::warn!(key, "refusing to modify an existing object in place");
                return Err(FsError::Unsupported("overwrite of an existing object"));
            }
            let fh = self.start_upload(&n, bucket, key);
            return Ok(Opened {
                fh,
                keep_cache: false,
            });
        }
        let n = if n.is_fresh(Instant::now()) {
            n
        } else {
            self.getattr(ino).await?;
            self.node(ino)?
        };
        let object = ObjectVersion {
            bucket,
            key,
            size: n.stat.size,
            etag: n.stat.etag.clone(),
        };
        // The kernel's pages of this file are shared by every reader of the
        // mount; they may stay only if they are of the version opened now.
        let keep_cache = self.inodes.open_version(ino, object.etag.as_deref());
        let p = Prefetcher::new(self.blocks.register(object), self.cfg.prefetch.clone());
        let fh = self.new_fh(Handle::Read(ino, Arc::new(AsyncMutex::new(p))));
        Ok(Opened { fh, keep_cache })
    }

    fn start_upload(&self, n: &Inode, bucket: String, key: String) -> u64 {
        let u = Upload::new(self.store.clone(), bucket, key, self.cfg.upload_part_size);
        self.inodes.set_stat(
            n.ino,
            Stat {
                size: 0,
                mtime: SystemTime::now(),
                etag: None,
                expiry: n.stat.expiry,
            },
            true,
        );
        self.new_fh(Handle::Write(n.ino, Arc::new(AsyncMutex::new(u))))
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Bytes, FsError> {
        Ok(self.read_pieces(fh, offset, size).await?.to_bytes())
    }

    /// As [`Self::read`], the bytes left in the pieces they arrived in.
    pub async fn read_pieces(&self, fh: u64, offset: u64, size: u32) -> Result<Pieces, FsError> {
        match self.handle(fh)? {
            Handle::Read(ino, p) => match p.lock().await.read_pieces(offset, size as u64).await {
                Err(ObjectError::Changed) => {
                    // Whoever opens it next must learn the new version.
                    tracing::info!(ino, "object replaced while open; this handle is stale");
                    self.inodes.expire(ino);
                    Err(ObjectError::Changed.into())
                }
                r => Ok(r?),
            },
            Handle::Write(..) => Err(FsError::Unsupported("read of a file being uploaded")),
            Handle::Dir(_) => Err(FsError::IsDir),
        }
    }

    /// Checks that `name` may be created in directory `parent` (writes
    /// allowed, a valid name) and returns where it would live.
    fn new_entry_in(
        &self,
        parent: Ino,
        name: &str,
        what: &'static str,
    ) -> Result<(usize, String), FsError> {
        if !self.cfg.allow_writes {
            return Err(FsError::ReadOnly);
        }
        let p = self.node(parent)?;
        let dir = self.dir_of(&p)?;
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        if !valid_name(name) {
            return Err(FsError::Invalid(what));
        }
        Ok(dir)
    }

    /// Creates a new file, uploaded when it is closed.
    pub async fn create(&self, parent: Ino, name: &str) -> Result<(Attr, u64), FsError> {
        let (source, prefix) = self.new_entry_in(parent, name, "file name")?;
        match self.lookup_node(parent, name).await {
            Ok(existing) if existing.kind == Kind::Dir => return Err(FsError::IsDir),
            Ok(existing) if !existing.local && existing.stat.size > 0 => {
                tracing::warn!(name, "refusing to replace an existing object in place");
                return Err(FsError::Unsupported("overwrite of an existing object"));
            }
            Ok(_) | Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        let key = format!("{prefix}{name}");
        let n = self.inodes.upsert(
            parent,
            name,
            NewChild {
                kind: Kind::File,
                loc: Location::File {
                    source,
                    key: key.clone(),
                },
                stat: Stat {
                    size: 0,
                    mtime: SystemTime::now(),
                    etag: None,
                    expiry: Instant::now(),
                },
                local: true,
            },
        );
        self.inodes.remember(n.ino);
        self.dirs.invalidate(parent);
        let fh = self.start_upload(&n, self.cfg.sources[source].bucket.clone(), key);
        Ok((self.attr(&self.node(n.ino)?), fh))
    }

    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        let Handle::Write(ino, u) = self.handle(fh)? else {
            return Err(FsError::BadHandle);
        };
        let mut u = u.lock().await;
        let n = u.write(offset, data).await?;
        if let Some(node) = self.inodes.get(ino) {
            let mut stat = node.stat.clone();
            stat.size = u.size();
            self.inodes.set_stat(ino, stat, true);
        }
        Ok(n)
    }

    /// Records that thread `tid` opened `fh` (see [`Self::flush`]).
    pub async fn opened_by(&self, fh: u64, tid: u32) {
        if let Ok(Handle::Write(_, u)) = self.handle(fh) {
            let process = super::upload::process_of(tid);
            u.lock().await.opened_by(process);
        }
    }

    /// close(2) and fsync(2) by thread `tid`: completes an upload and
    /// reports its outcome, if `tid` belongs to the process that opened the
    /// file. Another process closing its inherited copy (a child's `exec`)
    /// leaves the upload going; RELEASE completes it at the last close.
    pub async fn flush(&self, fh: u64, tid: u32) -> Result<(), FsError> {
        match self.handle(fh) {
            Ok(Handle::Write(ino, u)) => {
                if !u.lock().await.closed_by_opener(tid) {
                    tracing::debug!(fh, tid, "flush by another process: the upload goes on");
                    return Ok(());
                }
                self.finish_upload(ino, &u).await
            }
            _ => Ok(()),
        }
    }

    async fn finish_upload(&self, ino: Ino, u: &AsyncMutex<Upload<S>>) -> Result<(), FsError> {
        let mut u = u.lock().await;
        if u.is_finished() {
            return Ok(());
        }
        let result = u.finish().await;
        let Some(n) = self.inodes.get(ino) else {
            return result;
        };
        if result.is_ok() {
            let stat = Stat {
                size: u.size(),
                mtime: SystemTime::now(),
                etag: None,
                expiry: until(Instant::now(), self.cfg.metadata_ttl),
            };
            self.inodes.set_stat(ino, stat, false);
            // A mkdir'ed directory exists in S3 once a file lands in it.
            let mut dir = self.inodes.get(n.parent);
            while let Some(d) = dir.filter(|d| d.local) {
                self.inodes.set_stat(d.ino, d.stat.clone(), false);
                dir = self.inodes.get(d.parent);
            }
        } else {
            self.inodes.unlink(n.parent, &n.name);
        }
        self.dirs.invalidate(n.parent);
        result
    }

    pub async fn release(&self, fh: u64) -> Result<(), FsError> {
        let h = self.handles.lock().remove(&fh);
        match h {
            // Normally done by flush at close; this covers a lost flush.
            Some(Handle::Write(ino, u)) => self.finish_upload(ino, &u).await,
            _ => Ok(()),
        }
    }

    pub async fn mkdir(&self, parent: Ino, name: &str) -> Result<Attr, FsError> {
        let (source, prefix) = self.new_entry_in(parent, name, "directory name")?;
        match self.lookup_node(parent, name).await {
            Ok(_) => return Err(FsError::Exists),
            Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        let n = self.inodes.upsert(
            parent,
            name,
            NewChild::dir(
                source,
                format!("{prefix}{name}/"),
                SystemTime::now(),
                Instant::now(),
                true,
            ),
        );
        self.inodes.remember(n.ino);
        self.dirs.invalidate(parent);
        Ok(self.attr(&n))
    }

    pub async fn unlink(&self, parent: Ino, name: &str) -> Result<(), FsError> {
        if !self.cfg.allow_writes || !self.cfg.allow_delete {
            tracing::info!(
                name,
                "unlink refused: mount with --allow-writes --allow-delete"
            );
            return Err(FsError::NotPermitted("delete (mount with --allow-delete)"));
        }
        let n = self.lookup_node(parent, name).await?;
        let Location::File { source, key } = &n.loc else {
            return Err(FsError::IsDir);
        };
        if !n.local {
            self.store
                .delete(&self.cfg.sources[*source].bucket, key)
                .await?;
        }
        self.inodes.unlink(parent, name);
        self.inodes
            .set_negative(parent, name, until(Instant::now(), self.cfg.negative_ttl));
        self.dirs.invalidate(parent);
        Ok(())
    }

    /// Only a directory that exists nowhere but here (an empty `mkdir`) can go.
    pub async fn rmdir(&self, parent: Ino, name: &str) -> Result<(), FsError> {
        if !self.cfg.allow_writes {
            return Err(FsError::ReadOnly);
        }
        let n = self.lookup_node(parent, name).await?;
        if n.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        if !n.local || !self.inodes.local_children(n.ino).is_empty() {
            return Err(FsError::NotEmpty);
        }
        let (source, prefix) = self.dir_of(&n)?;
        let page = self
            .store
            .list_page(&self.cfg.sources[source].bucket, &prefix, None, None, 1)
            .await?;
        if !page.objects.is_empty() {
            return Err(FsError::NotEmpty);
        }
        self.inodes.unlink(parent, name);
        self.dirs.invalidate(parent);
        Ok(())
    }

    pub fn rename(&self, name: &str) -> Result<(), FsError> {
        tracing::info!(name, "rename refused: S3 has no rename");
        Err(FsError::CrossDevice)
    }

    /// chmod/chown/utime succeed without effect; truncation only of new files.
    pub async fn setattr(&self, ino: Ino, size: Option<u64>) -> Result<Attr, FsError> {
        let n = self.node(ino)?;
        if let Some(size) = size {
            if n.kind == Kind::Dir {
                return Err(FsError::IsDir);
            }
            if !self.cfg.allow_writes {
                return Err(FsError::ReadOnly);
            }
            if !(n.local && size == n.stat.size) && size != 0 {
                tracing::info!(ino, size, "truncate refused: S3 objects cannot be resized");
                return Err(FsError::Unsupported("truncate"));
            }
        }
        self.getattr(ino).await
    }
}

pub mod handoff;
mod lookup;
#[cfg(test)]
mod tests;
