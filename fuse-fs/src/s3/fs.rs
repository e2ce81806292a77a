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

use super::error::{FsError, StoreError};
use super::inode::{Ino, Inode, InodeTable, Kind, Location, NewChild, Stat};
use super::listing::{page_entries, valid_name, DirCache, DirEntry, Listing, NAME_MAX};
use super::prefetch::{MemoryLimiter, ObjectVersion, Pieces, PrefetchConfig, Prefetcher};
use super::store::{ObjectStore, LIST_PAGE_SIZE};
use super::upload::Upload;

/// A bucket, or a prefix of one, shown as a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub bucket: String,
    /// "" or ending in '/'.
    pub prefix: String,
    /// Its directory name in the root of a mount of several sources.
    pub name: String,
}

impl Source {
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
    pub sources: Vec<Source>,
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
}

impl FsConfig {
    pub fn new(sources: Vec<Source>) -> Self {
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
        }
    }
}

/// Attributes in the kernel's terms, without fuser types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
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
    started: SystemTime,
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
        Ok(Self {
            store,
            inodes: InodeTable::new(root_loc, root_stat),
            dirs: DirCache::default(),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            limiter,
            started: SystemTime::now(),
            cfg,
        })
    }

    pub fn config(&self) -> &FsConfig {
        &self.cfg
    }

    pub fn limiter(&self) -> &Arc<MemoryLimiter> {
        &self.limiter
    }

    /// The TTL the kernel may cache attributes and entries for.
    pub fn kernel_ttl(&self, attr: &Attr) -> Duration {
        match self.inodes.get(attr.ino) {
            Some(n) if n.local => Duration::ZERO,
            _ => self.cfg.metadata_ttl.min(Duration::from_secs(365 * 86_400)),
        }
    }

    fn attr(&self, n: &Inode) -> Attr {
        match n.kind {
            Kind::Dir => Attr {
                ino: n.ino,
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

    async fn lookup_node(&self, parent: Ino, name: &str) -> Result<Inode, FsError> {
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        if !valid_name(name) {
            return Err(FsError::NotFound);
        }
        let p = self.node(parent)?;
        let now = Instant::now();
        let (source, prefix) = match &p.loc {
            Location::File { .. } => return Err(FsError::NotDir),
            Location::Root => {
                let (i, s) = self
                    .cfg
                    .sources
                    .iter()
                    .enumerate()
                    .find(|(_, s)| s.name == name)
                    .ok_or(FsError::NotFound)?;
                return Ok(self.inodes.upsert(
                    parent,
                    name,
                    NewChild {
                        kind: Kind::Dir,
                        loc: Location::Dir {
                            source: i,
                            prefix: s.prefix.clone(),
                        },
                        stat: Stat {
                            size: 0,
                            mtime: self.started,
                            etag: None,
                            expiry: until(now, Duration::MAX),
                        },
                        local: false,
                    },
                ));
            }
            Location::Dir { source, prefix } => (*source, prefix.clone()),
        };
        if let Some(c) = self.inodes.child(parent, name) {
            if c.is_fresh(now) {
                return Ok(c);
            }
        }
        if self.inodes.is_negative(parent, name, now) {
            return Err(FsError::NotFound);
        }
        if let Some(listing) = self.dirs.get(parent, now) {
            return match listing.get(name) {
                Some(e) => {
                    Ok(self
                        .inodes
                        .upsert(parent, name, self.child_from_entry(source, &prefix, e)))
                }
                None => {
                    self.inodes
                        .set_negative(parent, name, until(now, self.cfg.negative_ttl));
                    Err(FsError::NotFound)
                }
            };
        }
        let bucket = &self.cfg.sources[source].bucket;
        let key = format!("{prefix}{name}");
        let sub = format!("{key}/");
        let (head, list) = tokio::join!(
            self.store.head(bucket, &key),
            self.store.list_page(bucket, &sub, Some("/"), None, 1)
        );
        let now = Instant::now();
        let expiry = until(now, self.cfg.metadata_ttl);
        match list {
            Ok(page) if !page.objects.is_empty() || !page.common_prefixes.is_empty() => {
                return Ok(self.inodes.upsert(
                    parent,
                    name,
                    NewChild {
                        kind: Kind::Dir,
                        loc: Location::Dir {
                            source,
                            prefix: sub,
                        },
                        stat: Stat {
                            size: 0,
                            mtime: SystemTime::UNIX_EPOCH,
                            etag: None,
                            expiry,
                        },
                        local: false,
                    },
                ));
            }
            Ok(_) | Err(StoreError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        match head {
            Ok(info) => Ok(self.inodes.upsert(
                parent,
                name,
                NewChild {
                    kind: Kind::File,
                    loc: Location::File { source, key },
                    stat: Stat {
                        size: info.size,
                        mtime: info.mtime,
                        etag: info.etag,
                        expiry,
                    },
                    local: false,
                },
            )),
            Err(StoreError::NotFound) => {
                // A local child (mkdir, file being written) exists only here.
                if let Some(c) = self.inodes.child(parent, name) {
                    if c.local {
                        return Ok(c);
                    }
                }
                self.inodes
                    .set_negative(parent, name, until(now, self.cfg.negative_ttl));
                Err(FsError::NotFound)
            }
            Err(e) => Err(e.into()),
        }
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
            .store
            .head(&self.cfg.sources[*source].bucket, key)
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

    /// Up to `max` entries from `offset` (0 = start, then the offsets returned).
    /// Fetches the next listing page only when the kernel has consumed the
    /// previous ones, so huge directories stream.
    pub async fn readdir(
        &self,
        ino: Ino,
        fh: u64,
        offset: u64,
        max: usize,
    ) -> Result<Vec<ReaddirEntry>, FsError> {
        let Handle::Dir(h) = self.handle(fh)? else {
            return Err(FsError::BadHandle);
        };
        let mut h = h.lock().await;
        if h.ino != ino {
            return Err(FsError::BadHandle);
        }
        let dir = self.node(ino)?;
        let mut out = Vec::new();
        let mut i = offset;
        loop {
            while out.len() < max {
                let attr_and_name = match i {
                    0 => Some((".".to_string(), self.attr(&dir))),
                    1 => {
                        let p = self.inodes.get(dir.parent).unwrap_or(dir.clone());
                        Some(("..".to_string(), self.attr(&p)))
                    }
                    _ => h
                        .listing
                        .entries
                        .get((i - 2) as usize)
                        .map(|e| (e.name.clone(), self.entry_attr(&dir, e))),
                };
                match attr_and_name {
                    Some((name, attr)) => {
                        out.push((i + 1, name, attr));
                        i += 1;
                    }
                    None => break,
                }
            }
            if out.len() >= max || h.done || !out.is_empty() {
                return Ok(out);
            }
            self.next_page(&dir, &mut h).await?;
        }
    }

    fn entry_attr(&self, dir: &Inode, e: &DirEntry) -> Attr {
        let node = match &dir.loc {
            Location::Dir { source, prefix } => {
                self.inodes
                    .upsert(dir.ino, &e.name, self.child_from_entry(*source, prefix, e))
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
                    NewChild {
                        kind: Kind::Dir,
                        loc: Location::Dir {
                            source: i,
                            prefix: self.cfg.sources[i].prefix.clone(),
                        },
                        stat: Stat {
                            size: 0,
                            mtime: self.started,
                            etag: None,
                            expiry: e.expiry,
                        },
                        local: false,
                    },
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
            .store
            .list_page(bucket, &prefix, Some("/"), h.token.clone(), LIST_PAGE_SIZE)
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
    pub async fn open(&self, ino: Ino, write: bool, truncate: bool) -> Result<u64, FsError> {
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
            return Ok(self.start_upload(&n, bucket, key));
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
        let p = Prefetcher::new(
            self.store.clone(),
            object,
            self.cfg.prefetch.clone(),
            self.limiter.clone(),
        );
        Ok(self.new_fh(Handle::Read(ino, Arc::new(AsyncMutex::new(p)))))
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
                Err(StoreError::Changed) => {
                    // Whoever opens it next must learn the new version.
                    tracing::info!(ino, "object replaced while open; this handle is stale");
                    self.inodes.expire(ino);
                    Err(StoreError::Changed.into())
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

    /// close(2) and fsync(2): completes an upload and reports its outcome.
    pub async fn flush(&self, fh: u64) -> Result<(), FsError> {
        match self.handle(fh) {
            Ok(Handle::Write(ino, u)) => self.finish_upload(ino, &u).await,
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
            NewChild {
                kind: Kind::Dir,
                loc: Location::Dir {
                    source,
                    prefix: format!("{prefix}{name}/"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::fake::MemStore;
    use crate::s3::faults::{Fault, FaultyStore};
    use crate::s3::inode::ROOT;
    use crate::s3::store::Op;

    fn mem() -> Arc<MemStore> {
        let s = MemStore::new();
        s.create_bucket("bkt");
        Arc::new(s)
    }

    fn fs_with<S: ObjectStore>(store: Arc<S>, cfg: FsConfig) -> S3Fs<S> {
        let limiter = MemoryLimiter::new(cfg.prefetch.max_memory);
        S3Fs::new(store, cfg, limiter).unwrap()
    }

    fn fs(store: Arc<MemStore>) -> S3Fs<MemStore> {
        fs_with(store, FsConfig::new(vec![Source::parse("bkt").unwrap()]))
    }

    /// Lists a directory the way `ls` does, returning names and attributes.
    async fn ls<S: ObjectStore>(fs: &S3Fs<S>, ino: Ino) -> Vec<(String, Attr)> {
        let fh = fs.opendir(ino).await.unwrap();
        let mut out = Vec::new();
        let mut off = 0;
        loop {
            // A small kernel buffer: ~100 entries per call.
            let batch = fs.readdir(ino, fh, off, 100).await.unwrap();
            if batch.is_empty() {
                break;
            }
            off = batch.last().unwrap().0;
            out.extend(batch.into_iter().map(|(_, n, a)| (n, a)));
        }
        fs.releasedir(fh);
        out.retain(|(n, _)| n != "." && n != "..");
        out
    }

    #[tokio::test]
    async fn ls_l_of_n_objects_costs_ceil_n_over_1000_lists_and_nothing_else() {
        for n in [0usize, 1, 999, 1000, 1001, 2500] {
            let s = mem();
            for i in 0..n {
                s.insert("bkt", &format!("dir/f{i:05}"), vec![0u8; i % 7]);
            }
            s.insert("bkt", "dir/sub/x", "1");
            let fs = fs(s.clone());
            let dir = fs.lookup(ROOT, "dir").await.unwrap();
            s.reset_counts();
            let entries = ls(&fs, dir.ino).await;
            assert_eq!(entries.len(), n + 1);
            // `ls -l`: a lookup and a stat of every entry.
            for (name, attr) in &entries {
                let a = fs.lookup(dir.ino, name).await.unwrap();
                assert_eq!(&a, attr);
                assert_eq!(fs.getattr(a.ino).await.unwrap().size, attr.size);
            }
            let pages = (n + 1).div_ceil(1000).max(1) as u64;
            assert_eq!(s.count(Op::List), pages, "n = {n}");
            assert_eq!(s.total(), pages, "n = {n}: only LISTs");
            // Listing again within the TTL is free.
            ls(&fs, dir.ino).await;
            assert_eq!(s.total(), pages);
        }
    }

    #[tokio::test]
    async fn implicit_directories_and_markers_both_appear() {
        let s = mem();
        s.insert("bkt", "implicit/a.txt", "a");
        s.insert("bkt", "marked/", "");
        s.insert("bkt", "marked/b.txt", "bb");
        s.insert("bkt", "empty-marker/", "");
        s.insert("bkt", "top.txt", "top");
        let fs = fs(s.clone());
        let root = ls(&fs, ROOT).await;
        let mut names: Vec<_> = root.iter().map(|(n, a)| (n.clone(), a.kind)).collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            names,
            vec![
                ("empty-marker".to_string(), Kind::Dir),
                ("implicit".to_string(), Kind::Dir),
                ("marked".to_string(), Kind::Dir),
                ("top.txt".to_string(), Kind::File),
            ]
        );
        let marked = fs.lookup(ROOT, "marked").await.unwrap();
        let inside = ls(&fs, marked.ino).await;
        assert_eq!(inside.len(), 1, "the marker itself is not an entry");
        assert_eq!(inside[0].0, "b.txt");
        assert_eq!(inside[0].1.size, 2);
        let empty = fs.lookup(ROOT, "empty-marker").await.unwrap();
        assert!(ls(&fs, empty.ino).await.is_empty());
    }

    #[tokio::test]
    async fn cold_lookups_find_files_and_directories_and_cache_misses() {
        let s = mem();
        s.insert("bkt", "a/b/c.bin", vec![1u8; 10]);
        s.insert("bkt", "name with spaces ü.txt", "x");
        let fs = fs(s.clone());
        let a = fs.lookup(ROOT, "a").await.unwrap();
        assert_eq!(a.kind, Kind::Dir);
        let b = fs.lookup(a.ino, "b").await.unwrap();
        let c = fs.lookup(b.ino, "c.bin").await.unwrap();
        assert_eq!((c.kind, c.size), (Kind::File, 10));
        let u = fs.lookup(ROOT, "name with spaces ü.txt").await.unwrap();
        assert_eq!(u.size, 1);
        s.reset_counts();
        assert_eq!(
            fs.lookup(ROOT, "missing").await.unwrap_err(),
            FsError::NotFound
        );
        let cost = s.total();
        assert!(cost > 0);
        assert_eq!(
            fs.lookup(ROOT, "missing").await.unwrap_err(),
            FsError::NotFound
        );
        assert_eq!(s.total(), cost, "negative lookups are cached");
        assert_eq!(fs.lookup(c.ino, "x").await.unwrap_err(), FsError::NotDir);
        assert_eq!(
            fs.lookup(ROOT, &"n".repeat(300)).await.unwrap_err().errno(),
            libc::ENAMETOOLONG
        );
    }

    #[tokio::test]
    async fn expired_attributes_are_fetched_again() {
        let s = mem();
        s.insert("bkt", "f", "abc");
        let mut cfg = FsConfig::new(vec![Source::parse("bkt").unwrap()]);
        cfg.metadata_ttl = Duration::ZERO;
        let fs = fs_with(s.clone(), cfg);
        let f = fs.lookup(ROOT, "f").await.unwrap();
        s.insert("bkt", "f", "abcdef");
        s.reset_counts();
        assert_eq!(fs.getattr(f.ino).await.unwrap().size, 6);
        assert_eq!(s.count(Op::Head), 1);
    }

    #[tokio::test]
    async fn several_buckets_appear_as_folders_of_the_root() {
        let s = mem();
        s.create_bucket("other");
        s.insert("bkt", "x", "1");
        s.insert("other", "data/2024/y", "22");
        s.insert("other", "z", "333");
        let cfg = FsConfig::new(vec![
            Source::parse("bkt").unwrap(),
            Source::parse("other:data/2024").unwrap(),
        ]);
        let fs = fs_with(s.clone(), cfg);
        let mut root: Vec<_> = ls(&fs, ROOT).await.into_iter().map(|(n, _)| n).collect();
        root.sort();
        assert_eq!(root, vec!["bkt", "other"]);
        let other = fs.lookup(ROOT, "other").await.unwrap();
        let inside = ls(&fs, other.ino).await;
        assert_eq!(inside.len(), 1);
        assert_eq!((inside[0].0.as_str(), inside[0].1.size), ("y", 2));
        assert_eq!(
            fs.lookup(ROOT, "nope").await.unwrap_err(),
            FsError::NotFound
        );
        assert!(S3Fs::new(
            s,
            FsConfig::new(vec![
                Source::parse("bkt").unwrap(),
                Source::parse("bkt:p").unwrap()
            ]),
            MemoryLimiter::new(1)
        )
        .is_err());
    }

    #[tokio::test]
    async fn reads_return_the_object_bytes() {
        let s = mem();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        s.insert("bkt", "big", data.clone());
        s.insert("bkt", "empty", "");
        let fs = fs(s.clone());
        let f = fs.lookup(ROOT, "big").await.unwrap();
        let fh = fs.open(f.ino, false, false).await.unwrap();
        let mut got = Vec::new();
        loop {
            let b = fs.read(fh, got.len() as u64, 131072).await.unwrap();
            if b.is_empty() {
                break;
            }
            got.extend_from_slice(&b);
        }
        assert_eq!(got, data);
        fs.release(fh).await.unwrap();
        let e = fs.lookup(ROOT, "empty").await.unwrap();
        let fh = fs.open(e.ino, false, false).await.unwrap();
        assert!(fs.read(fh, 0, 4096).await.unwrap().is_empty());
        // Directories are not files.
        assert_eq!(
            fs.open(ROOT, false, false).await.unwrap_err(),
            FsError::IsDir
        );
    }

    #[tokio::test]
    async fn read_only_by_default_and_clear_errors_for_what_s3_cannot_do() {
        let s = mem();
        s.insert("bkt", "f", "abc");
        let fs = fs(s.clone());
        let f = fs.lookup(ROOT, "f").await.unwrap();
        assert_eq!(
            fs.create(ROOT, "new").await.unwrap_err().errno(),
            libc::EROFS
        );
        assert_eq!(fs.mkdir(ROOT, "d").await.unwrap_err().errno(), libc::EROFS);
        assert_eq!(
            fs.open(f.ino, true, false).await.unwrap_err().errno(),
            libc::EROFS
        );
        assert_eq!(fs.unlink(ROOT, "f").await.unwrap_err().errno(), libc::EPERM);
        assert_eq!(fs.rename("f").unwrap_err().errno(), libc::EXDEV);
        // chmod/chown/utime: succeed, change nothing.
        assert_eq!(fs.setattr(f.ino, None).await.unwrap().size, 3);
        assert!(s.object("bkt", "f").is_some());
    }

    #[tokio::test]
    async fn writes_upload_new_files_on_close() {
        let s = mem();
        s.insert("bkt", "existing", "old");
        let mut cfg = FsConfig::new(vec![Source::parse("bkt").unwrap()]);
        cfg.allow_writes = true;
        cfg.allow_delete = true;
        let fs = fs_with(s.clone(), cfg);
        let d = fs.mkdir(ROOT, "newdir").await.unwrap();
        assert!(ls(&fs, ROOT).await.iter().any(|(n, _)| n == "newdir"));
        let (a, fh) = fs.create(d.ino, "out.bin").await.unwrap();
        let payload = vec![5u8; 7 << 20];
        for (i, chunk) in payload.chunks(1 << 20).enumerate() {
            fs.write(fh, (i << 20) as u64, chunk).await.unwrap();
        }
        assert_eq!(fs.getattr(a.ino).await.unwrap().size, 7 << 20);
        fs.flush(fh).await.unwrap();
        fs.release(fh).await.unwrap();
        assert_eq!(s.object("bkt", "newdir/out.bin").unwrap().len(), 7 << 20);
        // The new file is listed and readable.
        let listed = ls(&fs, d.ino).await;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].1.size, 7 << 20);
        // Overwriting an existing object in place is refused.
        assert_eq!(
            fs.create(ROOT, "existing").await.unwrap_err().errno(),
            libc::EOPNOTSUPP
        );
        // Random writes are refused with a clear errno.
        let (_, fh) = fs.create(ROOT, "r").await.unwrap();
        fs.write(fh, 0, b"abc").await.unwrap();
        assert_eq!(
            fs.write(fh, 10, b"x").await.unwrap_err().errno(),
            libc::EOPNOTSUPP
        );
        fs.release(fh).await.unwrap();
        assert_eq!(&s.object("bkt", "r").unwrap()[..], b"abc");
        fs.unlink(ROOT, "r").await.unwrap();
        assert!(s.object("bkt", "r").is_none());
        assert_eq!(fs.lookup(ROOT, "r").await.unwrap_err(), FsError::NotFound);
        // An empty local directory can be removed; a directory with keys cannot.
        let e = fs.mkdir(ROOT, "e").await.unwrap();
        assert_eq!(e.kind, Kind::Dir);
        fs.rmdir(ROOT, "e").await.unwrap();
        assert_eq!(
            fs.rmdir(ROOT, "newdir").await.unwrap_err().errno(),
            libc::ENOTEMPTY
        );
    }

    #[tokio::test]
    async fn store_failures_become_errnos_and_503s_are_survived_by_reads() {
        let mem = MemStore::new();
        mem.create_bucket("bkt");
        mem.insert("bkt", "f", vec![3u8; 100_000]);
        let s = Arc::new(FaultyStore::new(mem));
        let fs = fs_with(
            s.clone(),
            FsConfig::new(vec![Source::parse("bkt").unwrap()]),
        );
        s.fail_next(
            Op::Head,
            1,
            Fault::Error(StoreError::AccessDenied("no".into())),
        );
        assert_eq!(
            fs.lookup(ROOT, "f").await.unwrap_err().errno(),
            libc::EACCES
        );
        let f = fs.lookup(ROOT, "f").await.unwrap();
        let fh = fs.open(f.ino, false, false).await.unwrap();
        s.fail_next(
            Op::Get,
            2,
            Fault::Error(StoreError::Transient("503 SlowDown".into())),
        );
        let b = fs.read(fh, 0, 100_000).await.unwrap();
        assert_eq!(b.len(), 100_000);
        assert_eq!(s.injected(), 3);
        s.fail_next(Op::List, 1, Fault::Error(StoreError::Other("boom".into())));
        let dfh = fs.opendir(ROOT).await.unwrap();
        // "." and ".." come without a request; the listing error comes next.
        let first = fs.readdir(ROOT, dfh, 0, 100).await.unwrap();
        assert_eq!(first.len(), 2);
        assert_eq!(
            fs.readdir(ROOT, dfh, 2, 100).await.unwrap_err().errno(),
            libc::EIO
        );
        // A retry of the same readdir succeeds.
        assert_eq!(fs.readdir(ROOT, dfh, 2, 100).await.unwrap().len(), 1);
    }
}
