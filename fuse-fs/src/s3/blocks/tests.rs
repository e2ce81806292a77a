//! The shared blocks against the in-memory store, which records every GET's
//! range: how many times each block is fetched when several readers read
//! one version, what a reader far behind may hold, and that a new version
//! or a failed fetch is never served from what is in memory.

use std::time::Duration;

use super::*;
use crate::s3::fake::MemStore;
use crate::s3::faults::{Fault, FaultyStore};
use crate::s3::prefetch::{PrefetchConfig, Prefetcher};
use crate::s3::store::Op;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

fn cfg() -> PrefetchConfig {
    PrefetchConfig {
        part_size: 256 * KIB,
        initial_window: 64 * KIB,
        max_window: MIB,
        max_memory: 64 * MIB,
        random_read_size: 16 * KIB,
        max_attempts: 3,
        block_size: 64 * KIB,
        kernel_readahead: 256 * KIB,
    }
}

fn bytes(n: u64, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

struct Fixture {
    store: Arc<MemStore>,
    blocks: Arc<Blocks<MemStore>>,
    metrics: Arc<S3Metrics>,
}

fn fixture(cfg: &PrefetchConfig) -> Fixture {
    let mem = MemStore::new();
    mem.create_bucket("b");
    let store = Arc::new(mem);
    let metrics = S3Metrics::new();
    let limiter = MemoryLimiter::new(cfg.max_memory);
    let blocks = Blocks::new(store.clone(), limiter, cfg.blocks(), metrics.clone());
    Fixture {
        store,
        blocks,
        metrics,
    }
}

impl Fixture {
    fn put(&self, key: &str, data: Vec<u8>) -> ObjectVersion {
        self.store.insert("b", key, data);
        self.store.version("b", key).unwrap()
    }

    fn open(&self, v: &ObjectVersion, cfg: &PrefetchConfig) -> Prefetcher<MemStore> {
        Prefetcher::new(self.blocks.register(v.clone()), cfg.clone())
    }
}

/// Fetch tasks let go of their blocks just after their readers got them:
/// waits (a bounded while) until at most `n` blocks are in memory.
async fn settled(blocks: &Blocks<MemStore>, n: usize) {
    for _ in 0..500 {
        if blocks.resident() <= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "{} blocks still in memory, want at most {n}",
        blocks.resident()
    );
}

/// Each reader reads the whole object at the same time, as its own task.
async fn read_together(readers: Vec<Prefetcher<MemStore>>, want: &Arc<Vec<u8>>) {
    let tasks: Vec<_> = readers
        .into_iter()
        .map(|mut p| {
            let want = want.clone();
            tokio::spawn(async move { read_all(&mut p, &want, 128 * KIB).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// Reads the whole object in `step`-byte reads and checks every byte.
async fn read_all(p: &mut Prefetcher<MemStore>, want: &[u8], step: u64) {
    let mut off = 0u64;
    while off < want.len() as u64 {
        let got = p.read(off, step).await.unwrap();
        assert!(!got.is_empty(), "short read at {off}");
        assert_eq!(&got[..], &want[off as usize..off as usize + got.len()]);
        off += got.len() as u64;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_readers_of_one_version_fetch_each_block_once() {
    let c = cfg();
    let f = fixture(&c);
    let n = 8 * MIB;
    let data = Arc::new(bytes(n, 1));
    let v = f.put("k", data.to_vec());
    f.store.set_get_delay(Duration::from_millis(2));
    // Opened together, then read together.
    let readers: Vec<_> = (0..8).map(|_| f.open(&v, &c)).collect();
    read_together(readers, &data).await;
    let per_block = f.store.fetches_per_unit("b", "k", n, c.block_size);
    assert!(
        per_block.iter().all(|&c| c == 1),
        "fetches per block: {per_block:?}"
    );
    assert_eq!(f.store.bytes_read(), n, "the object crossed the wire once");
    assert!(f.metrics.blocks_reused.get() >= 7 * (n / c.block_size) / 2);
    // All readers gone: nothing kept.
    settled(&f.blocks, 0).await;
    assert_eq!(f.blocks.limiter().used(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staggered_readers_within_a_window_fetch_each_block_once() {
    let c = cfg();
    let f = fixture(&c);
    let n = 4 * MIB;
    let data = bytes(n, 2);
    let v = f.put("k", data.clone());
    let step = 128 * KIB;
    // Reader i starts 4 reads (512 KiB) after reader i - 1, all open from
    // the start; one read each per round.
    let mut readers: Vec<_> = (0..6).map(|_| (f.open(&v, &c), 0u64)).collect();
    for round in 0.. {
        let mut busy = false;
        for (i, (p, off)) in readers.iter_mut().enumerate() {
            if round < i * 4 || *off >= n {
                busy |= *off < n;
                continue;
            }
            busy = true;
            let got = p.read(*off, step).await.unwrap();
            assert_eq!(&got[..], &data[*off as usize..*off as usize + got.len()]);
            *off += got.len() as u64;
        }
        if !busy {
            break;
        }
    }
    let per_block = f.store.fetches_per_unit("b", "k", n, c.block_size);
    assert!(per_block.iter().all(|&c| c == 1), "{per_block:?}");
    assert_eq!(f.store.bytes_read(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_far_behind_does_not_pin_unbounded_memory() {
    let mut c = cfg();
    c.max_memory = 3 * MIB / 2;
    let f = fixture(&c);
    let n = 16 * MIB;
    let data = bytes(n, 3);
    let v = f.put("k", data.clone());
    // Three readers open the file and stop at 0; one reads it all.
    let stalled: Vec<_> = (0..3).map(|_| f.open(&v, &c)).collect();
    let mut leader = f.open(&v, &c);
    read_all(&mut leader, &data, 128 * KIB).await;
    let limiter = f.blocks.limiter().clone();
    // Kept for the stragglers: what the memory holds; the leader's
    // read-ahead pushed out what they would need last.
    assert!(f.metrics.blocks_evicted.get() > 0, "nothing was evicted");
    let forced = 128 * KIB + 2 * c.block_size;
    assert!(
        limiter.peak() <= c.max_memory + forced,
        "peak {} > {}",
        limiter.peak(),
        c.max_memory + forced
    );
    drop(leader);
    settled(&f.blocks, (c.max_memory / c.block_size) as usize).await;
    // They catch up together with correct bytes, fetching again (once
    // between them) what was let go.
    f.store.set_get_delay(Duration::from_millis(1));
    read_together(stalled, &Arc::new(data)).await;
    assert!(
        f.store.bytes_read() < 3 * n,
        "stragglers shared among themselves: {} bytes fetched",
        f.store.bytes_read()
    );
    assert!(limiter.peak() <= c.max_memory + 4 * forced);
    settled(&f.blocks, 0).await;
    assert_eq!(limiter.used(), 0);
}

#[tokio::test]
async fn a_replaced_object_is_never_served_from_the_blocks_of_the_old_one() {
    let c = cfg();
    let f = fixture(&c);
    let n = 2 * MIB;
    let (v1_data, v2_data) = (bytes(n, 4), bytes(n, 5));
    let v1 = f.put("k", v1_data.clone());
    let mut old = f.open(&v1, &c);
    // The old reader holds part of the first version in memory.
    let head = old.read(0, 512 * KIB).await.unwrap();
    assert_eq!(&head[..], &v1_data[..512 * KIB as usize]);
    assert!(f.blocks.resident() > 0);
    let v2 = f.put("k", v2_data.clone());
    assert_ne!(v1.etag, v2.etag);
    let mut new = f.open(&v2, &c);
    read_all(&mut new, &v2_data, 100 * KIB).await;
    // The old reader goes on: what it holds is the old version; what it has
    // not fetched yet is refused (the object changed), never the new bytes.
    let again = old.read(0, 4096).await.unwrap();
    assert_eq!(&again[..], &v1_data[..4096]);
    assert_eq!(
        old.read(n - 4096, 4096).await.unwrap_err(),
        ObjectError::Changed
    );
}

#[tokio::test]
async fn readers_of_an_unknown_version_share_nothing() {
    let c = cfg();
    let f = fixture(&c);
    let n = MIB;
    let data = bytes(n, 6);
    let mut v = f.put("k", data.clone());
    v.etag = None;
    let (mut a, mut b) = (f.open(&v, &c), f.open(&v, &c));
    read_all(&mut a, &data, 128 * KIB).await;
    read_all(&mut b, &data, 128 * KIB).await;
    let per_block = f.store.fetches_per_unit("b", "k", n, c.block_size);
    assert!(per_block.iter().all(|&c| c == 2), "{per_block:?}");
}

/// On one thread, so that both readers ask before the fetch runs.
#[tokio::test]
async fn a_failed_fetch_fails_its_waiters_and_is_asked_again() {
    let c = cfg();
    let mem = MemStore::new();
    mem.create_bucket("b");
    let data = bytes(MIB, 7);
    mem.insert("b", "k", data.clone());
    let etag = mem.head("b", "k").await.unwrap().etag;
    let store = Arc::new(FaultyStore::new(mem));
    store.fail_next(
        Op::Get,
        1,
        Fault::Error(ObjectError::AccessDenied("revoked".into())),
    );
    let blocks = Blocks::new(
        store.clone(),
        MemoryLimiter::new(c.max_memory),
        c.blocks(),
        S3Metrics::new(),
    );
    let v = ObjectVersion {
        bucket: "b".into(),
        key: "k".into(),
        size: MIB,
        etag,
    };
    let (ra, rb) = (blocks.register(v.clone()), blocks.register(v));
    // Both wait on the one fetch of block 0; both get its error.
    let a = ra.acquire(0..1, true);
    let b = rb.acquire(0..1, true);
    assert!(Arc::ptr_eq(&a[0], &b[0]), "one fetch for both");
    assert!(matches!(
        a[0].data().await,
        Err(ObjectError::AccessDenied(_))
    ));
    assert!(matches!(
        b[0].data().await,
        Err(ObjectError::AccessDenied(_))
    ));
    drop((a, b));
    // Not kept as an answer: the next reader asks again and gets the bytes.
    let mut p = Prefetcher::new(ra, c.clone());
    assert_eq!(&p.read(0, 1000).await.unwrap()[..], &data[..1000]);
    assert_eq!(
        store.inner().count(Op::Get),
        1,
        "the failed GET never reached it"
    );
    drop(rb);
}

/// Two readers of one version through one page cache: the kernel reads
/// each page once, for whichever reader's readahead gets there first, so
/// at the front of the pack each handle sees block-sized reads with holes
/// (the leader's stream skips the blocks its follower's handle read, and the
/// follower's first read is far into the object). Every block is fetched
/// once: the follower's reads, random to its handle, take their blocks
/// through the shared map instead of GETs of their own.
#[tokio::test]
async fn a_class_reading_through_one_page_cache_fetches_each_block_once() {
    let c = cfg();
    let bs = c.block_size;
    let f = fixture(&c);
    let n = 64 * bs;
    let data = bytes(n, 3);
    let v = f.put("k", data.clone());
    // A leader that reads ahead by one block only, so that the follower's
    // reads find nothing in memory.
    let narrow = PrefetchConfig {
        initial_window: bs,
        max_window: bs,
        ..c.clone()
    };
    let (mut leader, mut follower) = (f.open(&v, &narrow), f.open(&v, &c));
    // Up to block 40 the leader reads alone; from there the follower's
    // readahead takes every other block, each just before the leader's.
    for block in 0..n / bs {
        let p = match block >= 40 && block % 2 == 0 {
            true => &mut follower,
            false => &mut leader,
        };
        let off = block * bs;
        let got = p.read(off, bs).await.unwrap();
        assert_eq!(&got[..], &data[off as usize..(off + bs) as usize]);
    }
    let per_block = f.store.fetches_per_unit("b", "k", n, bs);
    assert!(per_block.iter().all(|&c| c == 1), "{per_block:?}");
}
