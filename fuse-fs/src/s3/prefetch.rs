//! Sequential reads served ahead of the reader by parallel ranged GETs.
//!
//! Each open file has a [`Prefetcher`]: a queue of contiguous parts, each one
//! ranged GET running as its own task. While reads stay sequential the window
//! (bytes requested ahead of the reader) doubles up to a maximum, so a long
//! read keeps several GETs in flight. A read inside the window (a small seek,
//! or kernel readahead arriving out of order) is served from it; a read
//! elsewhere drops the window and fetches only what was asked, so random
//! access does not download data nobody reads.
//!
//! Parts keep the body chunks as the HTTP client handed them over, and a read
//! returns [`Pieces`] (slices of those chunks): bytes are copied once, into
//! the kernel's reply, instead of into a part buffer first — at hundreds of
//! MiB/s the extra copy and the page faults of fresh multi-MiB buffers cost
//! a third of the daemon's CPU, which on a small node the S3 server needs.
//!
//! All prefetchers share one [`MemoryLimiter`]: parts ahead of the reader are
//! only started when their bytes fit under `--max-memory`. The part a reader
//! is blocked on is always fetched (bounded by one read request), so a reader
//! never waits for memory held by another reader that stopped reading.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use rand::Rng;
use tokio::task::JoinHandle;

use super::error::ObjectError;
use super::store::ObjectStore;

/// Tuning of the prefetcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefetchConfig {
    /// Largest single ranged GET.
    pub part_size: u64,
    /// Bytes requested ahead when a sequential read starts.
    pub initial_window: u64,
    /// Most bytes requested ahead of one reader.
    pub max_window: u64,
    /// Total bytes of all prefetch buffers of the mount.
    pub max_memory: u64,
    /// Smallest GET of a random read.
    pub random_read_size: u64,
    /// Attempts of one part GET whose body breaks mid-stream.
    pub max_attempts: u32,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        Self {
            part_size: 8 << 20,
            initial_window: 1 << 20,
            max_window: 64 << 20,
            max_memory: 512 << 20,
            random_read_size: 128 << 10,
            max_attempts: 5,
        }
    }
}

/// Accounts the bytes held by prefetch buffers.
#[derive(Debug)]
pub struct MemoryLimiter {
    max: u64,
    used: AtomicU64,
    peak: AtomicU64,
    gauge: Option<prometheus_client::metrics::gauge::Gauge>,
}

impl MemoryLimiter {
    pub fn new(max: u64) -> Arc<Self> {
        Arc::new(Self {
            max,
            used: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            gauge: None,
        })
    }

    pub fn with_gauge(max: u64, gauge: prometheus_client::metrics::gauge::Gauge) -> Arc<Self> {
        Arc::new(Self {
            max,
            used: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            gauge: Some(gauge),
        })
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// Highest `used` seen so far.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }

    /// Reserves `n` bytes if they fit under the limit.
    pub fn try_reserve(self: &Arc<Self>, n: u64) -> Option<Reservation> {
        let mut cur = self.used.load(Ordering::SeqCst);
        loop {
            if cur + n > self.max {
                return None;
            }
            match self
                .used
                .compare_exchange(cur, cur + n, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return Some(self.reserved(cur + n, n)),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Reserves `n` bytes even past the limit: the data a reader waits for now.
    pub fn reserve_forced(self: &Arc<Self>, n: u64) -> Reservation {
        let now = self.used.fetch_add(n, Ordering::SeqCst) + n;
        self.reserved(now, n)
    }

    fn reserved(self: &Arc<Self>, now: u64, n: u64) -> Reservation {
        self.peak.fetch_max(now, Ordering::SeqCst);
        if let Some(g) = &self.gauge {
            g.set(now as i64);
        }
        Reservation {
            limiter: self.clone(),
            n,
        }
    }
}

/// Bytes held until dropped.
#[derive(Debug)]
pub struct Reservation {
    limiter: Arc<MemoryLimiter>,
    n: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let now = self.limiter.used.fetch_sub(self.n, Ordering::SeqCst) - self.n;
        if let Some(g) = &self.limiter.gauge {
            g.set(now as i64);
        }
    }
}

/// Bytes of an object range as a list of shared slices (no copy made).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pieces(Vec<Bytes>);

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

    fn push(&mut self, b: Bytes) {
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
    fn slice(&self, from: usize, to: usize) -> Pieces {
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
}

#[derive(Debug)]
enum PartData {
    Pending(JoinHandle<Result<Pieces, ObjectError>>),
    Ready(Pieces),
}

#[derive(Debug)]
struct Part {
    range: Range<u64>,
    data: PartData,
    _memory: Reservation,
}

impl Drop for Part {
    fn drop(&mut self) {
        if let PartData::Pending(h) = &self.data {
            h.abort();
        }
    }
}

/// The object one reader reads: the version it opened, when its ETag is
/// known, so that every part (and every resumed GET) comes from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
}

/// The read state of one open file.
#[derive(Debug)]
pub struct Prefetcher<S> {
    store: Arc<S>,
    object: Arc<ObjectVersion>,
    size: u64,
    cfg: PrefetchConfig,
    limiter: Arc<MemoryLimiter>,
    parts: VecDeque<Part>,
    window: u64,
    /// Offset right after the previous read.
    next_seq: u64,
    /// The last read was not where the previous one ended.
    random: bool,
}

impl<S: ObjectStore> Prefetcher<S> {
    pub fn new(
        store: Arc<S>,
        object: ObjectVersion,
        cfg: PrefetchConfig,
        limiter: Arc<MemoryLimiter>,
    ) -> Self {
        let window = cfg.initial_window.max(1);
        Self {
            store,
            size: object.size,
            object: Arc::new(object),
            cfg,
            limiter,
            parts: VecDeque::new(),
            window,
            next_seq: 0,
            random: false,
        }
    }

    /// The object version this handle reads.
    pub fn object(&self) -> &ObjectVersion {
        &self.object
    }

    /// Bytes requested ahead of the reader right now.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// Number of parts queued (in flight or ready).
    pub fn queued_parts(&self) -> usize {
        self.parts.len()
    }

    fn covers(&self, offset: u64) -> bool {
        match (self.parts.front(), self.parts.back()) {
            (Some(f), Some(b)) => f.range.start <= offset && offset < b.range.end,
            _ => false,
        }
    }

    fn queued_end(&self) -> Option<u64> {
        self.parts.back().map(|p| p.range.end)
    }

    fn spawn(&mut self, range: Range<u64>, memory: Reservation) {
        let store = self.store.clone();
        let object = self.object.clone();
        let attempts = self.cfg.max_attempts;
        let r = range.clone();
        let handle = tokio::spawn(async move { fetch_part(&*store, &object, r, attempts).await });
        self.parts.push_back(Part {
            range,
            data: PartData::Pending(handle),
            _memory: memory,
        });
    }

    fn part_len(&self) -> u64 {
        (self.window / 2).clamp(self.cfg.random_read_size.max(1), self.cfg.part_size.max(1))
    }

    /// Reads up to `len` bytes at `offset`; short only at the end of the object.
    pub async fn read(&mut self, offset: u64, len: u64) -> Result<Bytes, ObjectError> {
        Ok(self.read_pieces(offset, len).await?.to_bytes())
    }

    /// As [`Self::read`], without joining the pieces.
    pub async fn read_pieces(&mut self, offset: u64, len: u64) -> Result<Pieces, ObjectError> {
        if offset >= self.size || len == 0 {
            return Ok(Pieces::default());
        }
        let end = (offset + len).min(self.size);
        let sequential = offset == self.next_seq;
        if self.covers(offset) {
            // Parts wholly behind the reader are done, but the one just
            // before is kept: kernel readahead may arrive slightly out of order.
            while self.parts.len() > 1 && self.parts[1].range.end <= offset {
                self.parts.pop_front();
            }
        } else {
            self.parts.clear();
            if !sequential {
                self.random = true;
                self.window = self.cfg.initial_window.max(1);
            }
        }
        if sequential {
            // Each read that continues the previous one widens the window.
            self.random = false;
            if offset > 0 {
                self.window = (self.window * 2).min(self.cfg.max_window.max(1));
            }
        }
        // The bytes the reader waits for now.
        let mut at = self.queued_end().unwrap_or(offset).max(offset);
        if self.parts.is_empty() {
            at = offset;
        }
        while at < end {
            let want = if self.random {
                (end - at).max(self.cfg.random_read_size)
            } else {
                self.part_len().max(end - at)
            };
            let mut stop = (at + want).min(self.size);
            let memory = match self.limiter.try_reserve(stop - at) {
                Some(m) => m,
                None => {
                    // Over the limit: fetch only what this read needs.
                    stop = (at + (end - at).max(self.cfg.random_read_size)).min(self.size);
                    self.limiter.reserve_forced(stop - at)
                }
            };
            self.spawn(at..stop, memory);
            at = stop;
        }
        if !self.random {
            self.top_up(offset);
        }
        let out = self.collect(offset, end).await;
        self.next_seq = end;
        out
    }

    /// Starts GETs until the window ahead of `offset` is requested.
    fn top_up(&mut self, offset: u64) {
        loop {
            let at = self.queued_end().unwrap_or(offset);
            if at >= self.size || at.saturating_sub(offset) >= self.window {
                return;
            }
            let stop = (at + self.part_len()).min(self.size);
            let Some(memory) = self.limiter.try_reserve(stop - at) else {
                return;
            };
            self.spawn(at..stop, memory);
        }
    }

    async fn collect(&mut self, offset: u64, end: u64) -> Result<Pieces, ObjectError> {
        let mut out = Pieces::default();
        for i in 0..self.parts.len() {
            let range = self.parts[i].range.clone();
            if range.end <= offset {
                continue;
            }
            if range.start >= end {
                break;
            }
            let data = match &mut self.parts[i].data {
                PartData::Ready(b) => b.clone(),
                PartData::Pending(h) => {
                    let result = match h.await {
                        Ok(r) => r,
                        Err(e) => Err(ObjectError::Other(format!("prefetch task: {e}"))),
                    };
                    match result {
                        Ok(b) => {
                            self.parts[i].data = PartData::Ready(b.clone());
                            b
                        }
                        Err(e) => {
                            // Forget this part and everything after it, so the
                            // next read asks again.
                            self.parts.truncate(i);
                            return Err(e);
                        }
                    }
                }
            };
            let len = data.len();
            let from = (offset.max(range.start) - range.start) as usize;
            let to = ((end.min(range.end) - range.start) as usize).min(len);
            for b in data.slice(from.min(to), to).0 {
                out.push(b);
            }
            if (len as u64) < range.end - range.start {
                // The object shrank under us: stop at what exists.
                break;
            }
        }
        Ok(out)
    }
}

/// One ranged GET, resumed where it broke if the body fails mid-stream.
pub(crate) async fn fetch_part<S: ObjectStore + ?Sized>(
    store: &S,
    object: &ObjectVersion,
    range: Range<u64>,
    max_attempts: u32,
) -> Result<Pieces, ObjectError> {
    let (bucket, key, etag) = (&object.bucket, &object.key, object.etag.as_deref());
    let mut buf = Pieces::default();
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
                            buf.push(b);
                        }
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                match failed {
                    None => return Ok(buf),
                    Some(e) => e,
                }
            }
            Err(e) => e,
        };
        attempt += 1;
        if !error.is_retryable() || attempt >= max_attempts.max(1) {
            return Err(error);
        }
        tracing::debug!(bucket, key, attempt, error = %error, "retrying part");
        tokio::time::sleep(backoff(attempt)).await;
    }
}

/// Full-jitter exponential backoff: uniform in [0, min(2 s, 20 ms * 2^attempt)).
pub(crate) fn backoff(attempt: u32) -> Duration {
    let cap = (20u64 << attempt.min(10)).min(2000);
    Duration::from_millis(rand::rng().random_range(0..cap.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::fake::MemStore;
    use crate::s3::faults::{Fault, FaultyStore};
    use crate::s3::store::Op;
    use proptest::prelude::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn cfg() -> PrefetchConfig {
        PrefetchConfig {
            part_size: 256 << 10,
            initial_window: 64 << 10,
            max_window: 1 << 20,
            max_memory: 64 << 20,
            random_read_size: 16 << 10,
            max_attempts: 3,
        }
    }

    fn store(n: usize) -> (Arc<MemStore>, Vec<u8>) {
        let s = MemStore::new();
        s.create_bucket("b");
        let d = data(n);
        s.insert("b", "k", d.clone());
        (Arc::new(s), d)
    }

    fn version(size: usize, etag: Option<String>) -> ObjectVersion {
        ObjectVersion {
            bucket: "b".into(),
            key: "k".into(),
            size: size as u64,
            etag,
        }
    }

    #[tokio::test]
    async fn a_replaced_object_fails_the_next_part_instead_of_mixing_versions() {
        let n = 4 << 20;
        let (s, d) = store(n);
        let etag = s.head("b", "k").await.unwrap().etag;
        let limiter = MemoryLimiter::new(64 << 20);
        let mut p = Prefetcher::new(s.clone(), version(n, etag.clone()), cfg(), limiter);
        let first = p.read(0, 4096).await.unwrap();
        assert_eq!(&first[..], &d[..4096]);
        s.insert("b", "k", vec![0xEEu8; n]);
        // Far past what was prefetched: a new GET, which must not return
        // the new version's bytes as the rest of the old one.
        let e = p.read(3 << 20, 4096).await.unwrap_err();
        assert_eq!(e, ObjectError::Changed);
        // not retried: a new attempt cannot succeed
        let gets = s.count(Op::Get);
        assert_eq!(
            fetch_part(&*s, &version(n, etag), 0..10, 5).await.err(),
            Some(ObjectError::Changed)
        );
        assert_eq!(s.count(Op::Get), gets + 1);
        // without a known ETag the reader takes what is there
        let mut p = pf(s.clone(), n, cfg());
        assert_eq!(p.read(0, 1).await.unwrap()[0], 0xEE);
    }

    fn pf<S: ObjectStore>(s: Arc<S>, size: usize, cfg: PrefetchConfig) -> Prefetcher<S> {
        let limiter = MemoryLimiter::new(cfg.max_memory);
        Prefetcher::new(s, version(size, None), cfg, limiter)
    }

    #[tokio::test]
    async fn sequential_reads_return_the_object_and_grow_the_window() {
        let n = 5 << 20;
        let (s, d) = store(n);
        let mut p = pf(s.clone(), n, cfg());
        let mut got = Vec::new();
        let mut max_window = 0;
        while got.len() < n {
            let b = p.read(got.len() as u64, 128 << 10).await.unwrap();
            assert!(!b.is_empty());
            got.extend_from_slice(&b);
            max_window = max_window.max(p.window());
        }
        assert_eq!(got, d);
        assert_eq!(max_window, 1 << 20);
        // Never more bytes than the object, and far fewer GETs than reads.
        assert_eq!(s.bytes_read(), n as u64);
        assert!(
            s.count(Op::Get) < (n / (128 << 10)) as u64,
            "{}",
            s.count(Op::Get)
        );
    }

    #[tokio::test]
    async fn several_gets_are_in_flight_once_the_window_has_grown() {
        let n = 8 << 20;
        let (s, _) = store(n);
        let mut p = pf(s, n, cfg());
        let mut off = 0;
        let mut most = 0;
        while off < 4 << 20 {
            off += p.read(off, 128 << 10).await.unwrap().len() as u64;
            most = most.max(p.queued_parts());
        }
        assert!(most >= 4, "only {most} parts queued");
    }

    #[tokio::test]
    async fn reads_across_body_chunks_are_slices_of_them() {
        let (mem, d) = store(300_000);
        mem.set_chunk_size(7_000);
        let mut p = pf(mem.clone(), d.len(), cfg());
        let mut at = 0usize;
        let mut many = 0;
        for len in [1usize, 6_999, 7_001, 65_536, 100_000, 200_000] {
            let got = p.read_pieces(at as u64, len as u64).await.unwrap();
            let end = (at + len).min(d.len());
            assert_eq!(got.len(), end - at);
            assert_eq!(&got.to_bytes()[..], &d[at..end], "read at {at}+{len}");
            assert!(got.slices().iter().all(|b| b.len() <= 7_000));
            many += (got.slices().len() > 1) as usize;
            at = end;
        }
        assert!(many >= 3, "reads spanning chunks should come in pieces");
        assert!(p.read_pieces(at as u64, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_small_seek_inside_the_window_costs_no_request() {
        let n = 4 << 20;
        let (s, d) = store(n);
        let mut p = pf(s.clone(), n, cfg());
        let mut off = 0u64;
        while off < 1 << 20 {
            off += p.read(off, 128 << 10).await.unwrap().len() as u64;
        }
        let gets = s.count(Op::Get);
        // Back a little (kernel readahead out of order) and forward a little.
        let back = p.read(off - 1000, 500).await.unwrap();
        assert_eq!(&back[..], &d[(off - 1000) as usize..(off - 500) as usize]);
        let fwd = p.read(off + 4096, 100).await.unwrap();
        assert_eq!(&fwd[..], &d[(off + 4096) as usize..(off + 4196) as usize]);
        assert_eq!(s.count(Op::Get), gets);
    }

    #[tokio::test]
    async fn random_reads_fetch_small_ranges() {
        let n = 16 << 20;
        let (s, d) = store(n);
        let mut p = pf(s.clone(), n, cfg());
        for off in [9u64 << 20, 1 << 20, 13 << 20, 3 << 20] {
            let b = p.read(off, 4096).await.unwrap();
            assert_eq!(&b[..], &d[off as usize..off as usize + 4096]);
        }
        assert_eq!(s.count(Op::Get), 4);
        assert_eq!(s.bytes_read(), 4 * (16 << 10));
    }

    #[tokio::test]
    async fn a_broken_body_is_resumed_and_a_503_retried() {
        let n = 1 << 20;
        let mem = MemStore::new();
        mem.create_bucket("b");
        let d = data(n);
        mem.insert("b", "k", d.clone());
        mem.set_chunk_size(10_000);
        let s = Arc::new(FaultyStore::new(mem));
        s.fail_next(Op::Get, 1, Fault::CutBodyAfter(30_000));
        s.fail_next(
            Op::Get,
            1,
            Fault::Error(ObjectError::Transient("503 SlowDown".into())),
        );
        let got = fetch_part(&*s, &version(n, None), 0..n as u64, 5)
            .await
            .unwrap();
        assert_eq!(&got.to_bytes()[..], &d[..]);
        assert_eq!(s.injected(), 2);
        // Resumed, not restarted: the retry asked only for the missing bytes
        // (the fake counts a cut body as fully sent).
        assert_eq!(s.inner().bytes_read(), n as u64 + (n as u64 - 30_000));
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let (mem, _) = store(1000);
        let s = Arc::new(FaultyStore::new(Arc::try_unwrap(mem).unwrap()));
        s.fail_next(
            Op::Get,
            1,
            Fault::Error(ObjectError::AccessDenied("no".into())),
        );
        let mut p = pf(s.clone(), 1000, cfg());
        assert!(matches!(
            p.read(0, 100).await,
            Err(ObjectError::AccessDenied(_))
        ));
        assert_eq!(s.inner().count(Op::Get), 0);
        // The next read asks again and succeeds.
        assert_eq!(p.read(0, 100).await.unwrap().len(), 100);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn memory_stays_bounded_under_many_readers() {
        let n = 4 << 20;
        let (s, d) = store(n);
        let mut c = cfg();
        c.max_memory = 2 << 20;
        let limiter = MemoryLimiter::new(c.max_memory);
        let readers = 16;
        let read_size = 128u64 << 10;
        let mut tasks = Vec::new();
        for _ in 0..readers {
            let mut p = Prefetcher::new(s.clone(), version(n, None), c.clone(), limiter.clone());
            let d = d.clone();
            tasks.push(tokio::spawn(async move {
                let mut off = 0u64;
                while off < n as u64 {
                    let b = p.read(off, read_size).await.unwrap();
                    assert_eq!(&b[..], &d[off as usize..off as usize + b.len()]);
                    off += b.len() as u64;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // Prefetch ahead respects the limit; past it, each reader holds at most
        // the piece it is blocked on and the one just behind it.
        let bound = c.max_memory + readers * 2 * read_size.max(c.random_read_size);
        assert!(
            limiter.peak() <= bound,
            "peak {} > {}",
            limiter.peak(),
            bound
        );
        assert_eq!(limiter.used(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Whatever the access pattern, every read returns exactly the bytes of the object.
        #[test]
        fn any_read_pattern_returns_the_right_bytes(
            size in 0usize..600_000,
            reads in proptest::collection::vec((0u64..700_000, 1u64..200_000, any::<bool>()), 1..40),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let (s, d) = store(size);
                let mut p = pf(s, size, cfg());
                let mut seq = 0u64;
                for (off, len, sequential) in reads {
                    let off = if sequential { seq } else { off };
                    let got = p.read(off, len).await.unwrap();
                    let start = (off as usize).min(size);
                    let end = ((off + len) as usize).min(size);
                    prop_assert_eq!(&got[..], &d[start..end]);
                    seq = off + got.len() as u64;
                }
                Ok(())
            })?;
        }
    }
}
