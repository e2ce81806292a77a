//! The data cache under the shared blocks, against the in-memory store:
//! what is served from disk (also by a server started anew on the same
//! directory), what goes to S3, what is evicted, and that nothing stale,
//! torn, damaged or foreign is ever served.

use std::time::{Duration, Instant};

use super::*;
use crate::s3::blocks::Blocks;
use crate::s3::fake::MemStore;
use crate::s3::memory::MemoryLimiter;
use crate::s3::prefetch::{PrefetchConfig, Prefetcher};
use crate::s3::store::Op;

const KIB: u64 = 1 << 10;
const BS: u64 = 64 * KIB;

fn cfg() -> PrefetchConfig {
    PrefetchConfig {
        part_size: 256 * KIB,
        initial_window: 64 * KIB,
        max_window: 512 * KIB,
        max_memory: 16 << 20,
        random_read_size: 16 * KIB,
        max_attempts: 3,
        block_size: BS,
        kernel_readahead: 4 * BS,
    }
}

fn bytes(n: u64, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

/// A bucket in memory and a cache directory; each [`Fixture::start`] is a
/// server starting on them.
struct Fixture {
    dir: tempfile::TempDir,
    store: Arc<MemStore>,
}

/// One server: its cache and blocks.
struct Server {
    cache: Arc<DiskCache>,
    blocks: Arc<Blocks<MemStore>>,
    metrics: Arc<S3Metrics>,
}

fn fixture() -> Fixture {
    let mem = MemStore::new();
    mem.create_bucket("bkt");
    Fixture {
        dir: tempfile::tempdir().unwrap(),
        store: Arc::new(mem),
    }
}

impl Fixture {
    fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    fn start(&self, max_bytes: u64) -> Server {
        let metrics = S3Metrics::new();
        let opts = CacheOptions {
            dir: self.cache_dir(),
            max_bytes,
        };
        let cache = DiskCache::open(&opts, BS, metrics.clone()).unwrap();
        let c = cfg();
        let blocks = Blocks::with_disk(
            self.store.clone(),
            Some(cache.clone()),
            MemoryLimiter::new(c.max_memory),
            c.blocks(),
            metrics.clone(),
        );
        Server {
            cache,
            blocks,
            metrics,
        }
    }

    fn put(&self, key: &str, data: &[u8]) -> ObjectVersion {
        self.store.insert("bkt", key, data.to_vec());
        self.store.version("bkt", key).unwrap()
    }

    fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.cache_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn block_path(&self, v: &ObjectVersion, block: u64) -> PathBuf {
        let len = BS.min(v.size - block * BS);
        self.cache_dir()
            .join(BlockFile::of(v, BS, block, len).unwrap().name)
    }
}

impl Server {
    /// Reads `v` whole, sequentially, as one open file does.
    async fn read_all(&self, v: &ObjectVersion) -> Vec<u8> {
        let mut p = Prefetcher::new(self.blocks.register(v.clone()), cfg());
        let mut out = Vec::new();
        loop {
            let b = p.read(out.len() as u64, 100 * KIB).await.unwrap();
            if b.is_empty() {
                return out;
            }
            out.extend_from_slice(&b);
        }
    }

    /// Fetches let go of their blocks just after their reader got them:
    /// waits until no block is in memory.
    async fn released(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.blocks.resident() > 0 {
            assert!(Instant::now() < deadline, "blocks stay in memory");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Block writes happen off the reader's path: waits until `n` bytes of
    /// data have been filled in.
    async fn filled(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.metrics.cache_fill_bytes.get() < n {
            assert!(
                Instant::now() < deadline,
                "fills stuck at {} bytes, want {n}",
                self.metrics.cache_fill_bytes.get()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_reader_gets_the_bytes_from_disk_not_s3() {
    let f = fixture();
    let data = bytes(10 * BS + 100, 7);
    let v = f.put("big.bin", &data);
    let s = f.start(16 << 20);
    assert_eq!(s.read_all(&v).await, data);
    s.filled(data.len() as u64).await;
    assert_eq!(s.metrics.cache_misses.get(), 11);
    f.store.reset_counts();
    // Nothing is kept in memory once the first reader is gone: the second
    // one reads the disk.
    s.released().await;
    assert_eq!(s.read_all(&v).await, data);
    assert_eq!(f.store.count(Op::Get), 0, "no request reached S3");
    assert_eq!(s.metrics.cache_hits.get(), 11);
    assert_eq!(s.metrics.cache_hit_bytes.get(), data.len() as u64);
    // So does a random read.
    let mut p = Prefetcher::new(s.blocks.register(v.clone()), cfg());
    let mid = p.read(5 * BS - 10, 20).await.unwrap();
    assert_eq!(
        &mid[..],
        &data[(5 * BS - 10) as usize..(5 * BS + 10) as usize]
    );
    assert_eq!(f.store.count(Op::Get), 0);
}

/// A sequential reader whose reads reach the handle out of order, as the
/// kernel's readahead sends them on a busy node: each run of two blocks'
/// worth of 16 KiB reads arrives last first. The stream stays one stream:
/// every block is fetched once, whole, and written to the disk cache, so a
/// restarted server then reads it all with zero GETs. (Taken for random
/// reads, the early ones fetched their own ranges, and blocks read only
/// that way never reached the cache.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_arriving_out_of_order_fill_the_cache_with_every_block() {
    let f = fixture();
    let data = bytes(16 * BS, 9);
    let v = f.put("stream.bin", &data);
    let s = f.start(16 << 20);
    let mut p = Prefetcher::new(s.blocks.register(v.clone()), cfg());
    let read = 16 * KIB;
    let group = 2 * BS / read;
    for g in 0..data.len() as u64 / (group * read) {
        for i in (0..group).rev() {
            let off = (g * group + i) * read;
            let b = p.read(off, read).await.unwrap();
            assert_eq!(&b[..], &data[off as usize..(off + read) as usize]);
        }
    }
    drop(p);
    let ranges = f.store.get_ranges("bkt", "stream.bin");
    assert!(
        ranges.iter().all(|r| r.start % BS == 0 && r.end % BS == 0),
        "only whole blocks: {ranges:?}"
    );
    let per_block = f.store.fetches_per_unit("bkt", "stream.bin", 16 * BS, BS);
    assert!(per_block.iter().all(|&c| c == 1), "{per_block:?}");
    s.filled(data.len() as u64).await;
    drop(s);
    f.store.reset_counts();
    let again = f.start(16 << 20);
    assert_eq!(again.read_all(&v).await, data);
    assert_eq!(f.store.count(Op::Get), 0, "every block was in the cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_serves_a_warm_cache_with_zero_gets() {
    let f = fixture();
    let data = bytes(12 * BS, 8);
    let v = f.put("set.bin", &data);
    let first = f.start(16 << 20);
    assert_eq!(first.read_all(&v).await, data);
    first.filled(data.len() as u64).await;
    let held = first.cache.bytes();
    drop(first);
    // A fresh server (a restart, a crash, a takeover) on the same directory.
    f.store.reset_counts();
    let second = f.start(16 << 20);
    assert_eq!(second.cache.bytes(), held, "the earlier blocks are indexed");
    assert_eq!(second.read_all(&v).await, data);
    assert_eq!(f.store.count(Op::Get), 0, "a warm cache costs no GET");
    assert_eq!(second.metrics.cache_hits.get(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_object_is_never_served_from_disk() {
    let f = fixture();
    let (d1, d2) = (bytes(4 * BS, 1), bytes(4 * BS, 2));
    let v1 = f.put("f", &d1);
    let s = f.start(16 << 20);
    assert_eq!(s.read_all(&v1).await, d1);
    s.filled(d1.len() as u64).await;
    let v2 = f.put("f", &d2);
    assert_ne!(v1.etag, v2.etag);
    f.store.reset_counts();
    assert_eq!(s.read_all(&v2).await, d2, "the new version, from S3");
    assert_eq!(f.store.bytes_read(), d2.len() as u64);
    s.filled((d1.len() + d2.len()) as u64).await;
    // After a restart too: each version's own blocks, never the other's.
    drop(s);
    let s = f.start(16 << 20);
    f.store.reset_counts();
    assert_eq!(s.read_all(&v2).await, d2);
    assert_eq!(f.store.count(Op::Get), 0);
    // Without an ETag the cache is not used at all.
    let mut unknown = v2.clone();
    unknown.etag = None;
    assert_eq!(s.read_all(&unknown).await, d2);
    assert_eq!(f.store.bytes_read(), d2.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_damaged_and_foreign_block_files_are_dropped_never_served() {
    let f = fixture();
    let data = bytes(8 * BS, 3);
    let v = f.put("d", &data);
    let s = f.start(16 << 20);
    s.read_all(&v).await;
    s.filled(data.len() as u64).await;
    drop(s);
    // Block 0 cut short (a crash mid-write), block 1 with a flipped data
    // byte, block 2 zeros where its data was (written but never flushed
    // before a power loss), block 3 holding block 4's file (foreign: its
    // header names another block).
    let path = |b| f.block_path(&v, b);
    let raw0 = std::fs::read(path(0)).unwrap();
    std::fs::write(path(0), &raw0[..raw0.len() - 1000]).unwrap();
    let mut raw1 = std::fs::read(path(1)).unwrap();
    let last = raw1.len() - 1;
    raw1[last] ^= 0x01;
    std::fs::write(path(1), raw1).unwrap();
    let mut raw2 = std::fs::read(path(2)).unwrap();
    let n = raw2.len();
    raw2[n - 4096..].fill(0);
    std::fs::write(path(2), raw2).unwrap();
    std::fs::copy(path(4), path(3)).unwrap();
    f.store.reset_counts();
    let s = f.start(16 << 20);
    assert_eq!(s.read_all(&v).await, data, "never the bad files' bytes");
    let per_block = f.store.fetches_per_unit("bkt", "d", data.len() as u64, BS);
    assert_eq!(per_block, [1, 1, 1, 1, 0, 0, 0, 0]);
    // Fetched again and rewritten whole: the next reader gets them from disk.
    s.filled(4 * BS).await;
    f.store.reset_counts();
    assert_eq!(s.read_all(&v).await, data);
    assert_eq!(f.store.count(Op::Get), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_is_bounded_least_recently_used_first_across_restarts() {
    let f = fixture();
    let (da, db) = (bytes(4 * BS, 4), bytes(4 * BS, 5));
    let (a, b) = (f.put("a", &da), f.put("b", &db));
    // Room for four blocks (and their headers): `a` is read, then `b`.
    let s = f.start(4 * BS + 4 * KIB);
    assert_eq!(s.read_all(&a).await, da);
    s.filled(4 * BS).await;
    assert_eq!(s.read_all(&b).await, db);
    s.filled(8 * BS).await;
    assert_eq!(f.files().len(), 4, "{:?}", f.files());
    // `b`, used last, is the one kept.
    s.released().await;
    f.store.reset_counts();
    assert_eq!(s.read_all(&b).await, db);
    assert_eq!(f.store.count(Op::Get), 0);
    drop(s);
    // Across a restart, uses are ordered by the later of each file's write
    // and its last read the kernel recorded: 3 oldest, then 0, 1, 2 (0 and
    // 2 written long ago but read since; 3 read before 1 was written).
    let at = |block: u64, written: u64, read: u64| {
        let ago = |secs| SystemTime::now() - Duration::from_secs(secs);
        let times = std::fs::FileTimes::new()
            .set_modified(ago(written))
            .set_accessed(ago(read));
        File::options()
            .write(true)
            .open(f.block_path(&b, block))
            .unwrap()
            .set_times(times)
            .unwrap();
    };
    at(3, 500, 400);
    at(0, 900, 300);
    at(1, 200, 900);
    at(2, 900, 100);
    // A server started with room for two keeps the two used last.
    let file_len = std::fs::metadata(f.block_path(&b, 1)).unwrap().len();
    let s = f.start(2 * file_len + 1);
    assert_eq!(s.cache.bytes(), 2 * file_len);
    let kept: Vec<bool> = (0..4).map(|i| f.block_path(&b, i).exists()).collect();
    assert_eq!(kept, [false, true, true, false]);
    // Too small for one block: refused.
    let opts = CacheOptions {
        dir: f.cache_dir(),
        max_bytes: BS - 1,
    };
    assert!(DiskCache::open(&opts, BS, S3Metrics::new()).is_err());
}

#[tokio::test]
async fn at_start_dead_files_go_and_unknown_ones_stay_uncounted() {
    let f = fixture();
    let dir = f.cache_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let old = SystemTime::now() - Duration::from_secs(600);
    let write = |name: &str, body: &[u8], mtime: Option<SystemTime>| {
        std::fs::write(dir.join(name), body).unwrap();
        if let Some(t) = mtime {
            File::options()
                .write(true)
                .open(dir.join(name))
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
    };
    // A writer that died ten minutes ago, one writing now (the server
    // being taken over), a block of the first format, someone's notes.
    write(".abc-1.77.0.tmp", b"half a block", Some(old));
    write(".abc-2.78.0.tmp", b"being written", None);
    write("0123456789abcdef-3", b"hubfs-cache-v1\0...", None);
    write("notes.txt", b"not ours", None);
    let s = f.start(16 << 20);
    assert_eq!(f.files(), [".abc-2.78.0.tmp", "notes.txt"]);
    assert_eq!(s.cache.bytes(), 0, "nothing unknown is counted");
}
