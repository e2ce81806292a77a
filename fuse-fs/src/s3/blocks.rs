//! Blocks of object data shared by every reader of a mount: one fetch per
//! block, however many readers want it.
//!
//! A class opens one course dataset in the same minute. Each open file has
//! its own [`Prefetcher`](super::prefetch::Prefetcher), but they all take
//! their data from the mount's one [`Blocks`]: per object version (bucket,
//! key, size and ETag) a map of fixed-size blocks, each being fetched or
//! ready. A reader that wants a block another reader is fetching awaits that
//! fetch instead of sending its own (single-flight). A fetch is one ranged
//! GET of a run of missing blocks (at most `--part-size`), and each block is
//! handed to its waiters as soon as its last byte has arrived.
//!
//! A block stays in memory while a reader holds it (the blocks of its
//! read-ahead window), and afterwards for as long as a registered reader of
//! its version has not passed it yet: the class's stragglers read what the
//! leader fetched. (A sequential reader passes a block only once it is the
//! kernel's readahead beyond it: its late reads may still come.) Every block holds a [`Reservation`] of the mount's
//! `--max-memory`, and that is the bound. Read-ahead that does not fit
//! evicts blocks kept for stragglers that are needed later than itself
//! (farthest ahead of their nearest reader first), then stops; the block a
//! reader waits for is always fetched. So readers that drift further apart
//! than the memory holds stop sharing what lies between them — the one
//! behind fetches it again (from the disk cache, when there is one) — and
//! memory stays bounded.
//!
//! An object whose ETag is unknown is never shared: each of its readers
//! gets a version of its own, since nothing tells two versions apart.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::watch;

use super::cache::DiskCache;
use super::error::ObjectError;
use super::memory::{MemoryLimiter, Reservation};
use super::metrics::S3Metrics;
use super::store::ObjectStore;

/// The object one reader reads: the version it opened, when its ETag is
/// known, so that every block (and every resumed GET) comes from it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectVersion {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
}

/// Bytes of an object range as a list of shared slices (no copy made).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pieces(Vec<Bytes>);

impl From<Bytes> for Pieces {
    fn from(b: Bytes) -> Self {
        let mut p = Pieces::default();
        p.push(b);
        p
    }
}

impl Pieces {
    pub fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Bytes::is_empty)
    }

    pub fn slices(&self) -> &[Bytes] {
        &self.0
    }

    pub(crate) fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.0.push(b);
        }
    }

    /// The bytes in one buffer: free for a single piece, one copy otherwise.
    pub fn to_bytes(&self) -> Bytes {
        match self.0.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let mut buf = BytesMut::with_capacity(self.len());
                for b in many {
                    buf.extend_from_slice(b);
                }
                buf.freeze()
            }
        }
    }

    /// The sub-range `from..to` (offsets within these pieces).
    pub(crate) fn slice(&self, from: usize, to: usize) -> Pieces {
        let mut out = Pieces::default();
        let mut at = 0usize;
        for b in &self.0 {
            let (start, end) = (at, at + b.len());
            at = end;
            if end <= from {
                continue;
            }
            if start >= to {
                break;
            }
            out.push(b.slice(from.max(start) - start..to.min(end) - start));
        }
        out
    }

    /// Appends `other`'s pieces.
    pub(crate) fn append(&mut self, other: Pieces) {
        for b in other.0 {
            self.push(b);
        }
    }
}

#[derive(Debug, Clone)]
enum State {
    Pending,
    Ready(Pieces),
    Failed(ObjectError),
}

/// One block of one object version: being fetched, or its bytes.
#[derive(Debug)]
pub struct Block {
    range: Range<u64>,
    state: watch::Sender<State>,
    _memory: Reservation,
}

impl Block {
    /// The bytes of the object this block holds.
    pub fn range(&self) -> &Range<u64> {
        &self.range
    }

    fn len(&self) -> u64 {
        self.range.end - self.range.start
    }

    /// The block's bytes, once fetched (fewer than its range only if the
    /// object shrank under a reader of unknown version).
    pub async fn data(&self) -> Result<Pieces, ObjectError> {
        let mut rx = self.state.subscribe();
        let state = rx
            .wait_for(|s| !matches!(s, State::Pending))
            .await
            .map(|s| s.clone());
        match state {
            Ok(State::Ready(p)) => Ok(p),
            Ok(State::Failed(e)) => Err(e),
            _ => Err(ObjectError::Other("block fetch vanished".into())),
        }
    }

    fn finish(&self, state: State) {
        self.state.send_replace(state);
    }
}

/// What tells two object versions apart in the map.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct VersionId {
    object: ObjectVersion,
    /// Non-zero for a reader of unknown version: its own, never shared.
    private: u64,
}

#[derive(Debug, Default)]
struct Entry {
    blocks: BTreeMap<u64, Arc<Block>>,
    /// Registered readers: id -> the offset each needs next.
    readers: HashMap<u64, u64>,
}

impl Entry {
    /// Bytes from the nearest reader behind `offset` to it (`u64::MAX`: none).
    fn distance(&self, offset: u64) -> u64 {
        self.readers
            .values()
            .filter(|&&p| p <= offset)
            .map(|&p| offset - p)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Whether some reader has not passed a block of `range` yet.
    fn wanted(readers: &HashMap<u64, u64>, range: &Range<u64>) -> bool {
        readers.values().any(|&p| p < range.end)
    }
}

/// Sizes that shape the shared blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// Bytes per block: the unit fetched once, shared, kept and evicted.
    pub block_size: u64,
    /// Largest single ranged GET.
    pub part_size: u64,
    /// Attempts of one GET whose body breaks mid-stream.
    pub max_attempts: u32,
}

type Objects = HashMap<Arc<VersionId>, Entry>;

/// The blocks of every object version being read on the mount.
pub struct Blocks<S> {
    store: Arc<S>,
    /// Looked in before S3, filled from it (see [`super::cache`]).
    disk: Option<Arc<DiskCache>>,
    limiter: Arc<MemoryLimiter>,
    cfg: BlockConfig,
    objects: Mutex<Objects>,
    next_reader: AtomicU64,
    metrics: Arc<S3Metrics>,
}

impl<S> std::fmt::Debug for Blocks<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blocks").field("cfg", &self.cfg).finish()
    }
}

impl<S> Blocks<S> {
    pub fn new(
        store: Arc<S>,
        limiter: Arc<MemoryLimiter>,
        cfg: BlockConfig,
        metrics: Arc<S3Metrics>,
    ) -> Arc<Self> {
        Self::with_disk(store, None, limiter, cfg, metrics)
    }

    /// As [`Self::new`], with a disk cache (of the same block size) under
    /// the blocks.
    pub fn with_disk(
        store: Arc<S>,
        disk: Option<Arc<DiskCache>>,
        limiter: Arc<MemoryLimiter>,
        cfg: BlockConfig,
        metrics: Arc<S3Metrics>,
    ) -> Arc<Self> {
        let cfg = BlockConfig {
            block_size: disk.as_ref().map_or(cfg.block_size, |d| d.block_size()),
            ..cfg
        };
        let cfg = BlockConfig {
            block_size: cfg.block_size.max(1),
            part_size: cfg.part_size.max(1),
            ..cfg
        };
        Arc::new(Self {
            store,
            disk,
            limiter,
            cfg,
            objects: Mutex::new(HashMap::new()),
            next_reader: AtomicU64::new(1),
            metrics,
        })
    }

    pub fn config(&self) -> &BlockConfig {
        &self.cfg
    }

    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    pub fn limiter(&self) -> &Arc<MemoryLimiter> {
        &self.limiter
    }

    /// Blocks in memory now, over all versions (fetching or ready).
    pub fn resident(&self) -> usize {
        self.objects.lock().values().map(|e| e.blocks.len()).sum()
    }

    /// A new reader of `object`, at offset 0.
    pub fn register(self: &Arc<Self>, object: ObjectVersion) -> Reader<S> {
        let id = self.next_reader.fetch_add(1, Ordering::Relaxed);
        let private = if object.etag.is_some() { 0 } else { id };
        let version = Arc::new(VersionId { object, private });
        self.objects
            .lock()
            .entry(version.clone())
            .or_default()
            .readers
            .insert(id, 0);
        Reader {
            blocks: self.clone(),
            version,
            id,
        }
    }

    fn block_range(&self, size: u64, index: u64) -> Option<Range<u64>> {
        let start = index.checked_mul(self.cfg.block_size)?;
        (start < size).then(|| start..(start + self.cfg.block_size).min(size))
    }

    /// Reserves `n` bytes for a block `distance` bytes ahead of its reader
    /// (`None`: the reader waits for it). Kept blocks needed later than that
    /// — farthest ahead of their nearest reader first — make room; a block a
    /// reader waits for is reserved past the limit if nothing else can go.
    fn reserve(&self, objects: &mut Objects, n: u64, distance: Option<u64>) -> Option<Reservation> {
        loop {
            if let Some(r) = self.limiter.try_reserve(n) {
                return Some(r);
            }
            // Only kept blocks can go: nobody holds them but the map.
            let victim = objects
                .iter()
                .flat_map(|(v, e)| {
                    e.blocks
                        .iter()
                        .filter(|(_, b)| Arc::strong_count(b) == 1)
                        .map(move |(i, b)| (v, *i, e.distance(b.range.start)))
                })
                .max_by_key(|(_, _, d)| *d)
                .map(|(v, i, d)| (v.clone(), i, d));
            match (victim, distance) {
                (Some((_, _, d)), Some(ahead)) if d <= ahead => return None,
                (Some((v, i, _)), _) => {
                    if let Some(e) = objects.get_mut(&v) {
                        e.blocks.remove(&i);
                    }
                    self.metrics.blocks_evicted.inc();
                }
                (None, Some(_)) => return None,
                (None, None) => return Some(self.limiter.reserve_forced(n)),
            }
        }
    }

    /// The blocks `indices` of `version`, if every one is in memory already.
    fn existing(&self, version: &VersionId, indices: Range<u64>) -> Option<Vec<Arc<Block>>> {
        let objects = self.objects.lock();
        let entry = objects.get(version)?;
        let mut out = Vec::new();
        for index in indices {
            if self.block_range(version.object.size, index).is_none() {
                break;
            }
            out.push(entry.blocks.get(&index)?.clone());
        }
        self.metrics.blocks_reused.inc_by(out.len() as u64);
        Some(out)
    }

    /// Reader `id` now needs `pos` next: the blocks between where it was
    /// and there that no other reader needs are let go.
    fn advance(&self, version: &VersionId, id: u64, pos: u64) {
        let mut objects = self.objects.lock();
        let Some(e) = objects.get_mut(version) else {
            return;
        };
        let Some(old) = e.readers.insert(id, pos) else {
            return;
        };
        // Only blocks between where it was and where it is can have lost
        // their last reader.
        let bs = self.cfg.block_size;
        let (lo, hi) = (old.min(pos) / bs, old.max(pos) / bs);
        let readers = &e.readers;
        let gone: Vec<u64> = e
            .blocks
            .range(lo..=hi)
            .filter(|(_, b)| Arc::strong_count(b) == 1 && !Entry::wanted(readers, &b.range))
            .map(|(i, _)| *i)
            .collect();
        for i in gone {
            e.blocks.remove(&i);
        }
    }

    /// `blocks`, which a reader of `version` held, are let go of if nobody
    /// else holds them and no reader needs them.
    fn release(&self, version: &VersionId, blocks: impl IntoIterator<Item = Arc<Block>>) {
        let indices: Vec<u64> = blocks
            .into_iter()
            .map(|b| b.range.start / self.cfg.block_size)
            .collect();
        let mut objects = self.objects.lock();
        let Some(e) = objects.get_mut(version) else {
            return;
        };
        for i in indices {
            let gone = e
                .blocks
                .get(&i)
                .is_some_and(|b| Arc::strong_count(b) == 1 && !Entry::wanted(&e.readers, &b.range));
            if gone {
                e.blocks.remove(&i);
            }
        }
    }

    /// Lets go of every block of `version` nobody holds or needs, and of the
    /// version itself once it has neither readers nor blocks.
    fn collect(&self, version: &VersionId) {
        let mut objects = self.objects.lock();
        let Some(e) = objects.get_mut(version) else {
            return;
        };
        let readers = &e.readers;
        e.blocks
            .retain(|_, b| Arc::strong_count(b) > 1 || Entry::wanted(readers, &b.range));
        if e.readers.is_empty() && e.blocks.is_empty() {
            objects.remove(version);
        }
    }

    fn unregister(&self, version: &VersionId, id: u64) {
        if let Some(e) = self.objects.lock().get_mut(version) {
            e.readers.remove(&id);
        }
        self.collect(version);
    }
}

impl<S: ObjectStore> Blocks<S> {
    /// The blocks `indices` of `version` for reader `id`, in order, up to
    /// the object's end; missing ones are fetched. With `urgent` (the
    /// reader waits for them) all are returned; read-ahead stops at the
    /// first block that does not fit in memory.
    fn acquire(
        self: &Arc<Self>,
        version: &Arc<VersionId>,
        id: u64,
        indices: Range<u64>,
        urgent: bool,
    ) -> Vec<Arc<Block>> {
        let size = version.object.size;
        let per_get = (self.cfg.part_size / self.cfg.block_size).max(1) as usize;
        let mut out = Vec::new();
        let mut jobs: Vec<Vec<Arc<Block>>> = Vec::new();
        let mut run: Vec<Arc<Block>> = Vec::new();
        {
            let mut objects = self.objects.lock();
            for index in indices {
                let Some(range) = self.block_range(size, index) else {
                    break;
                };
                let Some(entry) = objects.get(version) else {
                    break;
                };
                if let Some(b) = entry.blocks.get(&index) {
                    out.push(b.clone());
                    self.metrics.blocks_reused.inc();
                    if !run.is_empty() {
                        jobs.push(std::mem::take(&mut run));
                    }
                    continue;
                }
                let pos = entry.readers.get(&id).copied().unwrap_or(0);
                let distance = (!urgent).then(|| range.start.saturating_sub(pos));
                let Some(memory) = self.reserve(&mut objects, range.end - range.start, distance)
                else {
                    break;
                };
                let block = Arc::new(Block {
                    range,
                    state: watch::Sender::new(State::Pending),
                    _memory: memory,
                });
                let Some(entry) = objects.get_mut(version) else {
                    break;
                };
                entry.blocks.insert(index, block.clone());
                out.push(block.clone());
                run.push(block);
                if run.len() == per_get {
                    jobs.push(std::mem::take(&mut run));
                }
            }
        }
        if !run.is_empty() {
            jobs.push(run);
        }
        for job in jobs {
            let (this, version) = (self.clone(), version.clone());
            tokio::spawn(async move { this.fetch(version, job).await });
        }
        out
    }

    /// Fetches `job` (consecutive blocks): from the disk cache what is
    /// there, the rest with one ranged GET per run of missing blocks.
    async fn fetch(self: Arc<Self>, version: Arc<VersionId>, job: Vec<Arc<Block>>) {
        let missing = match (&self.disk, &version.object.etag) {
            (Some(disk), Some(_)) => {
                let (disk, v, j) = (disk.clone(), version.clone(), job.clone());
                let bs = self.cfg.block_size;
                // Each block found is handed over as soon as it is read.
                let found = tokio::task::spawn_blocking(move || {
                    j.iter()
                        .map(
                            |b| match disk.read(&v.object, b.range.start / bs, b.len()) {
                                Some(data) => {
                                    b.finish(State::Ready(data.into()));
                                    true
                                }
                                None => false,
                            },
                        )
                        .collect::<Vec<_>>()
                })
                .await
                .unwrap_or_else(|_| vec![false; job.len()]);
                self.metrics
                    .cache_misses
                    .inc_by(found.iter().filter(|f| !**f).count() as u64);
                let mut runs: Vec<Vec<Arc<Block>>> = Vec::new();
                let mut last_found = true;
                for (b, hit) in job.into_iter().zip(found) {
                    if !hit {
                        if last_found {
                            runs.push(Vec::new());
                        }
                        runs.last_mut().expect("a run").push(b);
                    }
                    last_found = hit;
                }
                runs
            }
            _ => vec![job],
        };
        futures::future::join_all(missing.into_iter().map(|run| self.get(&version, run))).await;
        self.collect(&version);
    }

    /// Fetches `run` (consecutive blocks) with one ranged GET, handing each
    /// block to its waiters as soon as it is complete (and to the disk
    /// cache, off their path).
    async fn get(&self, version: &Arc<VersionId>, run: Vec<Arc<Block>>) {
        let range = run[0].range.start..run[run.len() - 1].range.end;
        tracing::trace!(?range, "fetching blocks");
        let object = &version.object;
        let keep = self.disk.as_ref().filter(|_| object.etag.is_some());
        let mut next = 0usize;
        let mut filling = Pieces::default();
        let mut filled = 0u64;
        let result = fetch_range(
            &*self.store,
            object,
            range,
            self.cfg.max_attempts,
            |mut chunk| {
                while !chunk.is_empty() && next < run.len() {
                    let want = (run[next].len() - filled) as usize;
                    let piece = chunk.split_to(want.min(chunk.len()));
                    filled += piece.len() as u64;
                    filling.push(piece);
                    if filled == run[next].len() {
                        let data = std::mem::take(&mut filling);
                        if let Some(disk) = keep {
                            let (disk, v, d) = (disk.clone(), version.clone(), data.clone());
                            let block = run[next].range.start / self.cfg.block_size;
                            tokio::task::spawn_blocking(move || disk.write(&v.object, block, &d));
                        }
                        run[next].finish(State::Ready(data));
                        next += 1;
                        filled = 0;
                    }
                }
            },
        )
        .await;
        match result {
            Ok(()) => {
                // A short body: the object shrank under a reader of unknown
                // version; the rest of it is what exists (nothing).
                for b in &run[next..] {
                    b.finish(State::Ready(std::mem::take(&mut filling)));
                }
            }
            Err(e) => {
                let mut objects = self.objects.lock();
                for b in &run[next..] {
                    b.finish(State::Failed(e.clone()));
                    // Out of the map, so that the next reader asks again.
                    if let Some(entry) = objects.get_mut(version) {
                        let index = b.range.start / self.cfg.block_size;
                        if entry.blocks.get(&index).is_some_and(|m| Arc::ptr_eq(m, b)) {
                            entry.blocks.remove(&index);
                        }
                    }
                }
            }
        }
    }
}

/// One registered reader of one object version (see [`Blocks`]); dropping
/// it lets go of the blocks only it needed.
pub struct Reader<S> {
    blocks: Arc<Blocks<S>>,
    version: Arc<VersionId>,
    id: u64,
}

impl<S> std::fmt::Debug for Reader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("object", &self.version.object)
            .field("id", &self.id)
            .finish()
    }
}

impl<S> Reader<S> {
    pub fn object(&self) -> &ObjectVersion {
        &self.version.object
    }

    pub fn blocks(&self) -> &Arc<Blocks<S>> {
        &self.blocks
    }

    pub fn block_size(&self) -> u64 {
        self.blocks.cfg.block_size
    }

    /// The blocks `indices`, if every one is in memory (or on its way) already.
    pub fn existing(&self, indices: Range<u64>) -> Option<Vec<Arc<Block>>> {
        self.blocks.existing(&self.version, indices)
    }

    /// This reader needs `pos` next.
    pub fn advance(&self, pos: u64) {
        self.blocks.advance(&self.version, self.id, pos)
    }

    /// This reader no longer holds `blocks`.
    pub fn release(&self, blocks: impl IntoIterator<Item = Arc<Block>>) {
        self.blocks.release(&self.version, blocks)
    }
}

impl<S: ObjectStore> Reader<S> {
    /// `range` for this reader alone (a random read no block in memory
    /// covers): from the disk cache if it holds every block of it, else
    /// one GET of exactly the range, not kept.
    pub async fn scattered(&self, range: Range<u64>) -> Result<Pieces, ObjectError> {
        let object = &self.version.object;
        if let (Some(disk), Some(_), false) = (&self.blocks.disk, &object.etag, range.is_empty()) {
            let (disk, v, bs) = (disk.clone(), self.version.clone(), self.block_size());
            let r = range.clone();
            let found = tokio::task::spawn_blocking(move || {
                let mut all = Pieces::default();
                for block in r.start / bs..=(r.end - 1) / bs {
                    let start = block * bs;
                    let len = bs.min(v.object.size - start);
                    all.push(disk.read(&v.object, block, len)?);
                }
                let from = (r.start - r.start / bs * bs) as usize;
                Some(all.slice(from, from + (r.end - r.start) as usize))
            })
            .await
            .ok()
            .flatten();
            if let Some(p) = found {
                return Ok(p);
            }
        }
        fetch_part(
            &*self.blocks.store,
            object,
            range,
            self.blocks.cfg.max_attempts,
        )
        .await
    }

    /// The blocks `indices` (up to the object's end), fetching the missing
    /// ones; read-ahead (`urgent` false) stops where memory runs out.
    pub fn acquire(&self, indices: Range<u64>, urgent: bool) -> Vec<Arc<Block>> {
        self.blocks.acquire(&self.version, self.id, indices, urgent)
    }
}

impl<S> Drop for Reader<S> {
    fn drop(&mut self) {
        self.blocks.unregister(&self.version, self.id);
    }
}

/// Streams `range` of `object` into `on_chunk`, resuming a body that breaks
/// mid-stream from the last byte received (up to `max_attempts` attempts
/// in all, jittered backoff between them).
pub(crate) async fn fetch_range<S: ObjectStore + ?Sized>(
    store: &S,
    object: &ObjectVersion,
    range: Range<u64>,
    max_attempts: u32,
    mut on_chunk: impl FnMut(Bytes),
) -> Result<(), ObjectError> {
    let (bucket, key, etag) = (&object.bucket, &object.key, object.etag.as_deref());
    let mut got = 0u64;
    let mut attempt = 0u32;
    loop {
        let from = range.start + got;
        let error = match store.get_range(bucket, key, from..range.end, etag).await {
            Ok(mut stream) => {
                let mut failed = None;
                while let Some(chunk) = stream.next().await {
                    match chunk {
                        Ok(b) => {
                            got += b.len() as u64;
                            on_chunk(b);
                        }
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                match failed {
                    None => return Ok(()),
                    Some(e) => e,
                }
            }
            Err(e) => e,
        };
        attempt += 1;
        if !error.is_retryable() || attempt >= max_attempts.max(1) {
            return Err(error);
        }
        tracing::debug!(bucket, key, attempt, error = %error, "retrying a GET");
        tokio::time::sleep(backoff(attempt)).await;
    }
}

/// One ranged GET into pieces, resumed where it broke (see [`fetch_range`]).
pub(crate) async fn fetch_part<S: ObjectStore + ?Sized>(
    store: &S,
    object: &ObjectVersion,
    range: Range<u64>,
    max_attempts: u32,
) -> Result<Pieces, ObjectError> {
    let mut buf = Pieces::default();
    fetch_range(store, object, range, max_attempts, |b| buf.push(b)).await?;
    Ok(buf)
}

/// Full-jitter exponential backoff: uniform in [0, min(2 s, 20 ms * 2^attempt)).
pub(crate) fn backoff(attempt: u32) -> Duration {
    let cap = (20u64 << attempt.min(10)).min(2000);
    Duration::from_millis(rand::rng().random_range(0..cap.max(1)))
}

#[cfg(test)]
mod tests;
