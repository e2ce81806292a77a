//! The data cache against the in-memory store: what is served from disk,
//! what goes to S3, what is evicted, and that nothing stale or damaged is
//! ever served.

use std::time::{Duration, Instant};

use super::*;
use crate::s3::fake::MemStore;
use crate::s3::store::{collect, Op};

const MIB: u64 = 1 << 20;

struct Fixture {
    _dir: tempfile::TempDir,
    store: CachedStore<MemStore>,
    cache: Arc<DiskCache>,
    metrics: Arc<S3Metrics>,
}

fn fixture(max_bytes: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mem = MemStore::new();
    mem.create_bucket("bkt");
    let metrics = S3Metrics::new();
    let cache = DiskCache::new(
        &CacheOptions {
            dir: dir.path().join("cache"),
            max_bytes,
        },
        metrics.clone(),
    )
    .unwrap();
    Fixture {
        store: CachedStore::new(mem, Some(cache.clone())),
        _dir: dir,
        cache,
        metrics,
    }
}

fn bytes(n: u64, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

/// Block writes happen off the reader's path. Waits until `n` bytes have been filled in (each fill counted once its
/// block is stored and older ones evicted).
fn wait_for_fills(f: &Fixture, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while f.metrics.cache_fill_bytes.get() != n {
        assert!(
            Instant::now() < deadline,
            "fills stuck at {} bytes, want {n}",
            f.metrics.cache_fill_bytes.get()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Block writes happen off the reader's path: wait until the cache holds `n` bytes.
fn wait_for_bytes(cache: &DiskCache, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while cache.bytes() != n {
        assert!(
            Instant::now() < deadline,
            "cache holds {} bytes, expected {n}",
            cache.bytes()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

async fn get(f: &Fixture, key: &str, range: Range<u64>, etag: Option<&str>) -> Vec<u8> {
    collect(f.store.get_range("bkt", key, range, etag).await.unwrap())
        .await
        .unwrap()
        .to_vec()
}

fn etag_of(f: &Fixture, key: &str) -> String {
    futures::executor::block_on(f.store.inner().head("bkt", key))
        .unwrap()
        .etag
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_reader_gets_the_bytes_from_disk_not_s3() {
    let f = fixture(64 * MIB);
    let data = bytes(3 * MIB + 100, 7);
    f.store.inner().insert("bkt", "big.bin", data.clone());
    let etag = etag_of(&f, "big.bin");
    // As the prefetcher reads: 1 MiB, then 2 MiB, then the rest.
    let mut first = Vec::new();
    for r in [0..MIB, MIB..3 * MIB, 3 * MIB..3 * MIB + 100] {
        first.extend(get(&f, "big.bin", r, Some(&etag)).await);
    }
    assert_eq!(first, data);
    assert_eq!(f.store.inner().count(Op::Get), 3);
    wait_for_bytes(&f.cache, data.len() as u64);
    f.store.inner().reset_counts();
    // Another reader, other ranges: all from disk.
    let second = get(&f, "big.bin", 0..data.len() as u64, Some(&etag)).await;
    assert_eq!(second, data);
    let middle = get(&f, "big.bin", MIB - 10..MIB + 10, Some(&etag)).await;
    assert_eq!(middle, &data[(MIB - 10) as usize..(MIB + 10) as usize]);
    assert_eq!(f.store.inner().count(Op::Get), 0, "no request reached S3");
    assert_eq!(f.metrics.cache_hits.get(), 2);
    assert_eq!(f.metrics.cache_misses.get(), 3);
    assert_eq!(f.metrics.cache_hit_bytes.get(), data.len() as u64 + 20);
    assert_eq!(f.metrics.cache_fill_bytes.get(), data.len() as u64);
    assert_eq!(f.metrics.cache_bytes.get(), data.len() as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_object_is_never_served_stale() {
    let f = fixture(64 * MIB);
    f.store.inner().insert("bkt", "f", bytes(MIB, 1));
    let old = etag_of(&f, "f");
    assert_eq!(get(&f, "f", 0..MIB, Some(&old)).await, bytes(MIB, 1));
    wait_for_bytes(&f.cache, MIB);
    f.store.inner().insert("bkt", "f", bytes(MIB, 2));
    let new = etag_of(&f, "f");
    assert_ne!(old, new);
    f.store.inner().reset_counts();
    assert_eq!(get(&f, "f", 0..MIB, Some(&new)).await, bytes(MIB, 2));
    assert_eq!(
        f.store.inner().count(Op::Get),
        1,
        "the new version comes from S3"
    );
    // A handle opened on the old version still reads that version whole
    // from the cache (S3 itself would answer 412, ESTALE); every lookup
    // after the metadata TTL sees the new ETag and so the new bytes.
    assert_eq!(get(&f, "f", 0..MIB, Some(&old)).await, bytes(MIB, 1));
    // Without an ETag the cache is bypassed.
    f.store.inner().reset_counts();
    assert_eq!(get(&f, "f", 0..MIB, None).await, bytes(MIB, 2));
    assert_eq!(f.store.inner().count(Op::Get), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_recently_used_blocks_are_evicted_at_the_limit() {
    let f = fixture(2 * MIB);
    f.store.inner().insert("bkt", "a", bytes(4 * MIB, 3));
    let etag = etag_of(&f, "a");
    for i in 0..4 {
        get(&f, "a", i * MIB..(i + 1) * MIB, Some(&etag)).await;
        wait_for_fills(&f, (i + 1) * MIB);
        assert_eq!(f.cache.bytes(), ((i + 1) * MIB).min(2 * MIB));
    }
    let files = std::fs::read_dir(f.cache.dir()).unwrap().count();
    assert_eq!(files, 2, "two blocks of 1 MiB fit in 2 MiB");
    // The last two blocks are the ones kept.
    f.store.inner().reset_counts();
    get(&f, "a", 2 * MIB..4 * MIB, Some(&etag)).await;
    assert_eq!(f.store.inner().count(Op::Get), 0);
    get(&f, "a", 0..MIB, Some(&etag)).await;
    assert_eq!(f.store.inner().count(Op::Get), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_block_is_a_miss_and_is_replaced() {
    let f = fixture(64 * MIB);
    f.store.inner().insert("bkt", "d", bytes(MIB, 4));
    let etag = etag_of(&f, "d");
    get(&f, "d", 0..MIB, Some(&etag)).await;
    wait_for_bytes(&f.cache, MIB);
    let file = std::fs::read_dir(f.cache.dir())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut raw = std::fs::read(&file).unwrap();
    raw[3] ^= 0xff; // the header no longer names this version
    std::fs::write(&file, raw).unwrap();
    f.store.inner().reset_counts();
    assert_eq!(get(&f, "d", 0..MIB, Some(&etag)).await, bytes(MIB, 4));
    assert_eq!(f.store.inner().count(Op::Get), 1);
    wait_for_bytes(&f.cache, MIB);
    f.store.inner().reset_counts();
    assert_eq!(get(&f, "d", 0..MIB, Some(&etag)).await, bytes(MIB, 4));
    assert_eq!(f.store.inner().count(Op::Get), 0, "rewritten whole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_is_cached_only_from_its_start_and_an_old_cache_is_emptied() {
    let f = fixture(64 * MIB);
    f.store.inner().insert("bkt", "r", bytes(2 * MIB, 5));
    let etag = etag_of(&f, "r");
    // A random read from mid-block: the first block is not kept, the second is.
    get(&f, "r", MIB / 2..2 * MIB, Some(&etag)).await;
    wait_for_bytes(&f.cache, MIB);
    f.store.inner().reset_counts();
    get(&f, "r", MIB / 2..MIB, Some(&etag)).await;
    assert_eq!(f.store.inner().count(Op::Get), 1);
    // A new cache over the same directory starts empty.
    let again = DiskCache::new(
        &CacheOptions {
            dir: f.cache.dir().to_path_buf(),
            max_bytes: 64 * MIB,
        },
        S3Metrics::new(),
    )
    .unwrap();
    assert_eq!(again.bytes(), 0);
    assert_eq!(std::fs::read_dir(again.dir()).unwrap().count(), 0);
    assert!(DiskCache::new(
        &CacheOptions {
            dir: f.cache.dir().to_path_buf(),
            max_bytes: 1000,
        },
        S3Metrics::new(),
    )
    .is_err());
}
