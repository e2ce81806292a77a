use super::*;
use crate::s3::blocks::{fetch_part, Blocks, ObjectVersion};
use crate::s3::fake::MemStore;
use crate::s3::faults::{Fault, FaultyStore};
use crate::s3::memory::MemoryLimiter;
use crate::s3::metrics::S3Metrics;
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
        block_size: 64 << 10,
        kernel_readahead: 256 << 10,
    }
}

/// A prefetcher with shared blocks of its own.
fn prefetcher<S: ObjectStore>(
    s: Arc<S>,
    object: ObjectVersion,
    cfg: PrefetchConfig,
    limiter: Arc<MemoryLimiter>,
) -> Prefetcher<S> {
    let blocks = Blocks::new(s, limiter, cfg.blocks(), S3Metrics::new());
    Prefetcher::new(blocks.register(object), cfg)
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
    let mut p = prefetcher(s.clone(), version(n, etag.clone()), cfg(), limiter);
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
    prefetcher(s, version(size, None), cfg, limiter)
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
        most = most.max(p.held_blocks());
    }
    // A window of 1 MiB in parts of 256 KiB: four GETs of four blocks.
    assert!(most >= 16, "only {most} blocks requested ahead");
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
    let blocks = Blocks::new(s.clone(), limiter.clone(), c.blocks(), S3Metrics::new());
    let mut tasks = Vec::new();
    for _ in 0..readers {
        let mut p = Prefetcher::new(blocks.register(version(n, None)), c.clone());
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
    // (Fetches let go of their blocks just after their readers got them.)
    for _ in 0..500 {
        if limiter.used() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // Prefetch ahead respects the limit; past it, each reader holds at most
    // the blocks it is blocked on and the one just behind them.
    let bound = c.max_memory + readers * (read_size + 2 * c.block_size);
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

#[tokio::test]
async fn a_read_arriving_just_ahead_of_the_stream_keeps_it_going() {
    let n = 4 << 20;
    let (s, d) = store(n);
    let mut p = pf(s.clone(), n, cfg());
    let mut off = 0u64;
    while off < 512 << 10 {
        off += p.read(off, 128 << 10).await.unwrap().len() as u64;
    }
    let window = p.window();
    // Readahead out of order: the read after next arrives first.
    let ahead = off + (128 << 10);
    let b = p.read(ahead, 128 << 10).await.unwrap();
    assert_eq!(&b[..], &d[ahead as usize..ahead as usize + b.len()]);
    assert_eq!(p.window(), window, "no random read: the window stays");
    let b = p.read(off, 128 << 10).await.unwrap();
    assert_eq!(&b[..], &d[off as usize..off as usize + b.len()]);
    // Whole blocks only, each once: nothing was fetched as a random range.
    let bs = cfg().block_size;
    let ranges = s.get_ranges("b", "k");
    assert!(ranges.iter().all(|r| r.start % bs == 0), "{ranges:?}");
    let per_block = s.fetches_per_unit("b", "k", n as u64, bs);
    assert!(per_block.iter().all(|&c| c <= 1), "{per_block:?}");
}

/// Block-sized reads (the kernel's 1 MiB reads of 1 MiB blocks) come in
/// fives, the middle one last: by the time it arrives the stream has moved
/// two blocks past it. Its block is still in memory (kept for the reads
/// the kernel's readahead may still send), so every block is fetched once,
/// whole. (It was let go, and the late read fetched it again.)
#[tokio::test]
async fn a_read_arriving_after_the_stream_moved_on_costs_no_request() {
    let c = cfg();
    let bs = c.block_size;
    let n = 20 * bs;
    let (s, d) = store(n as usize);
    let etag = s.head("b", "k").await.unwrap().etag;
    let limiter = MemoryLimiter::new(c.max_memory);
    let mut p = prefetcher(s.clone(), version(n as usize, etag), c, limiter);
    for i in 0..n / bs {
        let off = (i / 5 * 5 + [0, 1, 3, 4, 2][(i % 5) as usize]) * bs;
        let b = p.read(off, bs).await.unwrap();
        assert_eq!(&b[..], &d[off as usize..(off + bs) as usize]);
    }
    let ranges = s.get_ranges("b", "k");
    assert!(
        ranges.iter().all(|r| r.start % bs == 0 && r.end % bs == 0),
        "{ranges:?}"
    );
    let per_block = s.fetches_per_unit("b", "k", n, bs);
    assert!(per_block.iter().all(|&c| c == 1), "{per_block:?}");
}
