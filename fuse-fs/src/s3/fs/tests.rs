//! Unit tests of the filesystem core against the in-memory store: request
//! counts of `ls`, lookups and reads, errors, writes.

use super::*;
use crate::s3::fake::MemStore;
use crate::s3::faults::{Fault, FaultyStore};
use crate::s3::inode::ROOT;
use crate::s3::metrics::OpLabel;
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
    fs_with(
        store,
        FsConfig::new(vec![BucketSource::parse("bkt").unwrap()]),
    )
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

/// The kernel's readdir buffer takes a few dozen entries per request: only
/// those offered are looked at (an inode each), not the whole page read.
#[tokio::test]
async fn a_readdir_request_costs_only_the_entries_it_takes() {
    let s = mem();
    for i in 0..2000 {
        s.insert("bkt", &format!("d/f{i:05}"), vec![1u8; i % 5]);
    }
    let fs = fs(s.clone());
    let dir = fs.lookup(ROOT, "d").await.unwrap();
    let fh = fs.opendir(dir.ino).await.unwrap();
    let before = fs.inodes.len();
    let mut offset = 0;
    let mut seen = Vec::new();
    while seen.len() < 77 {
        // A reply buffer with room for 25 entries.
        let mut room = 25;
        let taken = fs
            .readdir_with(dir.ino, fh, offset, |next, name, attr| {
                if room == 0 {
                    return true;
                }
                room -= 1;
                seen.push((next, (name.to_string(), attr.size)));
                offset = next;
                false
            })
            .await
            .unwrap();
        assert!(taken > 0);
    }
    // "." and ".." (the listing is fetched by the next call), then three
    // times 25 objects, and one more offered each time: 78 inodes at most,
    // not the 1000 of the page listed.
    assert_eq!(seen.len(), 77);
    let new = fs.inodes.len() - before;
    assert!(new <= 78, "{new} inodes for 75 entries");
    assert_eq!(s.count(Op::List), 2, "the lookup's probe and one page");
    assert_eq!(seen[2].1, ("f00000".to_string(), 0));
    assert_eq!(seen[4].1, ("f00002".to_string(), 2));
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
    let mut cfg = FsConfig::new(vec![BucketSource::parse("bkt").unwrap()]);
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
        BucketSource::parse("bkt").unwrap(),
        BucketSource::parse("other:data/2024").unwrap(),
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
            BucketSource::parse("bkt").unwrap(),
            BucketSource::parse("bkt:p").unwrap()
        ]),
        MemoryLimiter::new(1)
    )
    .is_err());
}

/// A class: eight handles of one object read it together through the core.
/// Each block reaches the store once, the kernel may keep its pages from
/// the second open on, and a replaced object (new ETag) is read new, with
/// the kernel told to drop what it cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn n_handles_reading_one_object_fetch_each_block_once() {
    let s = mem();
    let n = 24usize << 20;
    let v1: Arc<Vec<u8>> = Arc::new((0..n).map(|i| (i % 251) as u8).collect());
    s.insert("bkt", "set.bin", v1.to_vec());
    s.set_get_delay(Duration::from_millis(2));
    let mut cfg = FsConfig::new(vec![BucketSource::parse("bkt").unwrap()]);
    cfg.metadata_ttl = Duration::ZERO;
    let fs = Arc::new(fs_with(s.clone(), cfg));
    let f = fs.lookup(ROOT, "set.bin").await.unwrap();
    let mut opened = Vec::new();
    for _ in 0..8 {
        opened.push(fs.open(f.ino, false, false).await.unwrap());
    }
    let keeps: Vec<bool> = opened.iter().map(|o| o.keep_cache).collect();
    assert_eq!(keeps, [false, true, true, true, true, true, true, true]);
    let readers: Vec<_> = opened
        .iter()
        .map(|o| {
            let (fs, fh, want) = (fs.clone(), o.fh, v1.clone());
            tokio::spawn(async move {
                let mut off = 0usize;
                while off < want.len() {
                    let b = fs.read(fh, off as u64, 131072).await.unwrap();
                    assert_eq!(&b[..], &want[off..off + b.len()]);
                    off += b.len();
                }
            })
        })
        .collect();
    for r in readers {
        r.await.unwrap();
    }
    let per_block = s.fetches_per_unit("bkt", "set.bin", n as u64, 1 << 20);
    assert!(per_block.iter().all(|&c| c == 1), "{per_block:?}");
    assert_eq!(
        s.bytes_read(),
        n as u64,
        "8 readers, the object fetched once"
    );
    for o in &opened {
        fs.release(o.fh).await.unwrap();
    }
    // Replaced in the store: the next open reads the new version whole
    // and does not let the kernel keep the old pages.
    let v2: Vec<u8> = (0..n).map(|i| (i % 241) as u8).collect();
    s.insert("bkt", "set.bin", v2.clone());
    let o = fs.open(f.ino, false, false).await.unwrap();
    assert!(!o.keep_cache);
    assert_eq!(fs.read(o.fh, 0, 1 << 20).await.unwrap(), v2[..1 << 20]);
    fs.release(o.fh).await.unwrap();
}

#[tokio::test]
async fn reads_return_the_object_bytes() {
    let s = mem();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    s.insert("bkt", "big", data.clone());
    s.insert("bkt", "empty", "");
    let fs = fs(s.clone());
    let f = fs.lookup(ROOT, "big").await.unwrap();
    let fh = fs.open(f.ino, false, false).await.unwrap().fh;
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
    let fh = fs.open(e.ino, false, false).await.unwrap().fh;
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

/// A child that inherited the descriptor and calls `exec` closes its copy:
/// a FLUSH from another process. The upload goes on, and the opener's
/// close completes it (a `subprocess` started while a notebook writes a
/// file once ended its upload half-way: the next write got EOPNOTSUPP).
#[tokio::test]
async fn a_flush_by_another_process_leaves_the_upload_going() {
    let s = mem();
    let mut cfg = FsConfig::new(vec![BucketSource::parse("bkt").unwrap()]);
    cfg.allow_writes = true;
    let fs = fs_with(s.clone(), cfg);
    let me = nix::unistd::gettid().as_raw() as u32;
    let mut other = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let (_, fh) = fs.create(ROOT, "out.bin").await.unwrap();
    fs.opened_by(fh, me).await;
    fs.write(fh, 0, b"first half, ").await.unwrap();
    fs.flush(fh, other.id()).await.unwrap();
    assert!(s.object("bkt", "out.bin").is_none(), "not uploaded yet");
    fs.write(fh, 12, b"second half").await.unwrap();
    fs.flush(fh, me).await.unwrap();
    assert_eq!(
        s.object("bkt", "out.bin").unwrap(),
        &b"first half, second half"[..]
    );
    fs.release(fh).await.unwrap();
    let _ = other.kill();
    let _ = other.wait();

    // A flush that cannot tell (pid 0: the caller is outside the server's
    // PID namespace) completes the upload, as close always did.
    let (_, fh) = fs.create(ROOT, "b.bin").await.unwrap();
    fs.opened_by(fh, me).await;
    fs.write(fh, 0, b"b").await.unwrap();
    fs.flush(fh, 0).await.unwrap();
    assert_eq!(s.object("bkt", "b.bin").unwrap(), &b"b"[..]);
    fs.release(fh).await.unwrap();
}

#[tokio::test]
async fn writes_upload_new_files_on_close() {
    let s = mem();
    s.insert("bkt", "existing", "old");
    let mut cfg = FsConfig::new(vec![BucketSource::parse("bkt").unwrap()]);
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
    fs.flush(fh, 0).await.unwrap();
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
        FsConfig::new(vec![BucketSource::parse("bkt").unwrap()]),
    );
    s.fail_next(
        Op::Head,
        1,
        Fault::Error(ObjectError::AccessDenied("no".into())),
    );
    assert_eq!(
        fs.lookup(ROOT, "f").await.unwrap_err().errno(),
        libc::EACCES
    );
    let f = fs.lookup(ROOT, "f").await.unwrap();
    let fh = fs.open(f.ino, false, false).await.unwrap().fh;
    s.fail_next(
        Op::Get,
        2,
        Fault::Error(ObjectError::Transient("503 SlowDown".into())),
    );
    let b = fs.read(fh, 0, 100_000).await.unwrap();
    assert_eq!(b.len(), 100_000);
    assert_eq!(s.injected(), 3);
    s.fail_next(Op::List, 1, Fault::Error(ObjectError::Other("boom".into())));
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

/// A notebook opening `/s3/bkt/catalog/2021/01/obs.json` before anything
/// was listed, against a server that answers 500 to a HEAD of a
/// directory-shaped key (as s3s-fs does): each name costs one HEAD and one
/// LIST, the LIST settles the directories, and no HEAD is sent twice.
#[tokio::test]
async fn a_first_deep_lookup_costs_two_requests_per_name_and_no_retry() {
    let s = mem();
    s.insert("bkt", "catalog/2021/01/obs.json", "{}");
    s.insert("bkt", "catalog/2021/02/obs.json", "{}");
    s.fail_directory_heads(ObjectError::Transient("500 InternalError".into()));
    let fs = fs(s.clone());
    let mut ino = ROOT;
    for name in ["catalog", "2021", "01"] {
        let a = fs.lookup(ino, name).await.unwrap();
        assert_eq!(a.kind, Kind::Dir, "{name}");
        ino = a.ino;
    }
    let f = fs.lookup(ino, "obs.json").await.unwrap();
    assert_eq!((f.kind, f.size), (Kind::File, 2));
    // A HEAD the LIST made unnecessary may be dropped before it is sent.
    assert!(
        s.count(Op::Head) <= 4,
        "at most one HEAD per name, none retried"
    );
    assert!(s.count(Op::Head) >= 1, "the file needed its HEAD");
    assert_eq!(s.count(Op::List), 4);
    assert_eq!(s.total(), 4 + s.count(Op::Head));
    // A missing name: HEAD 404 and an empty LIST are conclusive.
    s.reset_counts();
    assert_eq!(
        fs.lookup(ino, "nope.json").await.unwrap_err(),
        FsError::NotFound
    );
    assert_eq!((s.count(Op::Head), s.count(Op::List)), (1, 1));
    assert_eq!(
        fs.metrics
            .give_ups
            .get_or_create(&OpLabel { op: "HeadObject" })
            .get(),
        0
    );
}

/// The single HEAD attempt is retried (with the store's retries) only when
/// the LIST could not settle the name: here a file whose first HEAD met a
/// 503 SlowDown.
#[tokio::test]
async fn a_throttled_head_of_a_file_is_retried() {
    let mem = MemStore::new();
    mem.create_bucket("bkt");
    mem.insert("bkt", "f.csv", "a,b\n");
    let s = Arc::new(FaultyStore::new(mem));
    let fs = fs_with(
        s.clone(),
        FsConfig::new(vec![BucketSource::parse("bkt").unwrap()]),
    );
    s.fail_next(
        Op::Head,
        1,
        Fault::Error(ObjectError::Transient("503 SlowDown".into())),
    );
    let f = fs.lookup(ROOT, "f.csv").await.unwrap();
    assert_eq!(f.size, 4);
    assert_eq!(s.injected(), 1);
    assert_eq!(s.inner().count(Op::Head), 1, "the retry reached the store");
    assert_eq!(s.inner().count(Op::List), 1);
}

/// A server that never answers: the lookup gives up at the interactive
/// bound with EIO and counts the give-up (a short bound for the test).
#[tokio::test]
async fn an_interactive_call_gives_up_at_its_bound_and_counts_it() {
    let mem = MemStore::new();
    mem.create_bucket("bkt");
    let s = Arc::new(FaultyStore::new(mem));
    let mut cfg = FsConfig::new(vec![BucketSource::parse("bkt").unwrap()]);
    cfg.interactive_timeout = Duration::from_millis(50);
    let fs = fs_with(s.clone(), cfg);
    s.fail_next(Op::Head, 1, Fault::Stall);
    assert_eq!(
        fs.lookup(ROOT, "stuck").await.unwrap_err().errno(),
        libc::EIO
    );
    let give_ups = |op| fs.metrics.give_ups.get_or_create(&OpLabel { op }).get();
    assert_eq!(give_ups("HeadObject"), 1);
    // Not cached as missing: the next lookup asks again and gets the answer.
    assert_eq!(
        fs.lookup(ROOT, "stuck").await.unwrap_err(),
        FsError::NotFound
    );
    s.fail_next(Op::List, 1, Fault::Stall);
    let dfh = fs.opendir(ROOT).await.unwrap();
    assert_eq!(fs.readdir(ROOT, dfh, 0, 100).await.unwrap().len(), 2);
    assert_eq!(
        fs.readdir(ROOT, dfh, 2, 100).await.unwrap_err().errno(),
        libc::EIO
    );
    assert_eq!(give_ups("ListObjectsV2"), 1);
}
