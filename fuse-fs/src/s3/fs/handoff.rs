//! A bucket server's side of a takeover: what it hands to the next server
//! with its FUSE connection (see [`crate::handoff`] for the wire), and the
//! rebuilding of an [`S3Fs`] from it.
//!
//! The state is versioned JSON: the negotiated protocol version, the
//! sources (a new server of other buckets refuses it), every inode the
//! kernel knows (number, parent, name, kind, location, size, mtime, ETag,
//! how long its attributes stay trusted, lookup count, `local` flag, whether
//! its name still points at it) and the next free number, every open read
//! handle with the object version it reads (the new server starts a fresh
//! prefetcher for it), every directory handle with the listing it has read
//! so far and the continuation token of the next page (readdir offsets are
//! positions in that listing, so it must survive as it is), and the next
//! handle number. Negative entries and cached listings are not handed over:
//! the new server asks S3 again. The only descriptor is `/dev/fuse` (and
//! the control socket).
//!
//! Open uploads (files being written) are not handed over: a takeover is
//! refused while one is open, and the caller retries when it is closed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex as AsyncMutex;

use super::{until, DirHandle, Handle, S3Fs};
use crate::handoff::HandoffError;
use crate::s3::blocks::ObjectVersion;
use crate::s3::inode::{Inode, Kind, Location, NewChild, Stat};
use crate::s3::listing::{DirEntry, Listing};
use crate::s3::prefetch::Prefetcher;
use crate::s3::store::ObjectStore;

/// Version of [`S3State`]; a server refuses state of another version.
pub const STATE_VERSION: u32 = 1;

/// Seconds and nanoseconds since the epoch (0 for times before it).
type Time = (u64, u32);

fn time(t: SystemTime) -> Time {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    (d.as_secs(), d.subsec_nanos())
}

fn system_time(t: Time) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(t.0, t.1.min(999_999_999))
}

/// Milliseconds an expiry instant is still ahead of `now` (0: expired).
fn ttl_ms(expiry: Instant, now: Instant) -> u64 {
    expiry.saturating_duration_since(now).as_millis() as u64
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LocState {
    Root,
    Dir { source: usize, prefix: String },
    File { source: usize, key: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub ino: u64,
    pub parent: u64,
    pub name: String,
    pub dir: bool,
    pub loc: LocState,
    pub size: u64,
    pub mtime: Time,
    pub etag: Option<String>,
    /// Milliseconds the attributes stay trusted.
    pub ttl_ms: u64,
    pub local: bool,
    pub lookups: u64,
    /// The parent's name still points at this inode (not deleted).
    pub linked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadState {
    pub fh: u64,
    pub ino: u64,
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryState {
    pub name: String,
    pub dir: bool,
    pub size: u64,
    pub mtime: Time,
    pub etag: Option<String>,
    pub ttl_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirState {
    pub fh: u64,
    pub ino: u64,
    /// What the handle has listed so far, in readdir offset order.
    pub entries: Vec<EntryState>,
    /// Continuation token of the next page (`None` with `done`: complete).
    pub token: Option<String>,
    pub done: bool,
}

/// Everything a bucket server hands over besides its descriptors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3State {
    pub version: u32,
    /// FUSE protocol version negotiated at INIT.
    pub proto: (u32, u32),
    /// (bucket, prefix) of each source, in order.
    pub sources: Vec<(String, String)>,
    /// When the first server started (the mtime of synthetic directories).
    pub started: Time,
    pub nodes: Vec<NodeState>,
    pub next_ino: u64,
    pub reads: Vec<ReadState>,
    pub dirs: Vec<DirState>,
    pub next_fh: u64,
    /// Index of the control socket's descriptor, if the server had one.
    pub control: Option<usize>,
}

impl S3State {
    pub fn encode(&self) -> Vec<u8> {
        crate::handoff::encode_state(self, "s3")
    }

    /// Parses state sent by another server: a version other than
    /// [`STATE_VERSION`] or a malformed text is a clear error.
    pub fn decode(bytes: &[u8]) -> Result<Self, HandoffError> {
        crate::handoff::decode_state(bytes, "s3", STATE_VERSION)
    }
}

fn entry_state(e: &DirEntry, now: Instant) -> EntryState {
    EntryState {
        name: e.name.clone(),
        dir: e.kind == Kind::Dir,
        size: e.size,
        mtime: time(e.mtime),
        etag: e.etag.clone(),
        ttl_ms: ttl_ms(e.expiry, now),
    }
}

fn kind(dir: bool) -> Kind {
    if dir {
        Kind::Dir
    } else {
        Kind::File
    }
}

/// Files open for writing among `handles`.
fn writers<'a, S: 'a>(handles: impl Iterator<Item = &'a Handle<S>>) -> usize {
    handles.filter(|h| matches!(h, Handle::Write(..))).count()
}

/// Why a takeover is refused while `n` uploads are open.
fn uploads_refusal(n: usize) -> String {
    format!("{n} upload(s) in progress (files open for writing); try again when they are closed")
}

impl<S: ObjectStore> S3Fs<S> {
    /// Open uploads: while there are any, a takeover is refused.
    pub fn open_uploads(&self) -> usize {
        writers(self.handles.lock().values())
    }

    /// Why a takeover must be refused now, if it must (open uploads).
    pub fn uploads_in_progress(&self) -> Option<String> {
        let n = self.open_uploads();
        (n > 0).then(|| uploads_refusal(n))
    }

    /// The state to hand over. Call with no request in flight (the FUSE
    /// loops parked and every spawned request replied to); an open upload
    /// or a handle still in use is an error (the takeover is refused).
    pub fn export(&self, proto: (u32, u32), control: Option<usize>) -> Result<S3State, String> {
        let now = Instant::now();
        let (nodes, next_ino) = self.inodes.export();
        let nodes = nodes
            .into_iter()
            .map(|(n, linked)| NodeState {
                lookups: n.lookups(),
                ino: n.ino,
                parent: n.parent,
                name: n.name,
                dir: n.kind == Kind::Dir,
                loc: match n.loc {
                    Location::Root => LocState::Root,
                    Location::Dir { source, prefix } => LocState::Dir { source, prefix },
                    Location::File { source, key } => LocState::File { source, key },
                },
                size: n.stat.size,
                mtime: time(n.stat.mtime),
                etag: n.stat.etag,
                ttl_ms: ttl_ms(n.stat.expiry, now),
                local: n.local,
                linked,
            })
            .collect();
        let handles = self.handles.lock();
        let (mut reads, mut dirs) = (Vec::new(), Vec::new());
        for (&fh, h) in handles.iter() {
            match h {
                Handle::Write(..) => return Err(uploads_refusal(writers(handles.values()))),
                Handle::Read(ino, p) => {
                    let p = p.try_lock().map_err(|_| "a read is still in flight")?;
                    let o = p.object();
                    reads.push(ReadState {
                        fh,
                        ino: *ino,
                        bucket: o.bucket.clone(),
                        key: o.key.clone(),
                        size: o.size,
                        etag: o.etag.clone(),
                    });
                }
                Handle::Dir(d) => {
                    let d = d.try_lock().map_err(|_| "a listing is still in flight")?;
                    dirs.push(DirState {
                        fh,
                        ino: d.ino,
                        entries: d
                            .listing
                            .entries
                            .iter()
                            .map(|e| entry_state(e, now))
                            .collect(),
                        token: d.token.clone(),
                        done: d.done,
                    });
                }
            }
        }
        reads.sort_by_key(|r| r.fh);
        dirs.sort_by_key(|d| d.fh);
        Ok(S3State {
            version: STATE_VERSION,
            proto,
            sources: self
                .cfg
                .sources
                .iter()
                .map(|s| (s.bucket.clone(), s.prefix.clone()))
                .collect(),
            started: time(self.started),
            nodes,
            next_ino,
            reads,
            dirs,
            next_fh: self.next_fh.load(std::sync::atomic::Ordering::Relaxed),
            control,
        })
    }

    /// Takes over the state another server exported; this filesystem must
    /// serve the same sources and not have served a request yet.
    pub fn adopt(&mut self, state: &S3State) -> Result<(), HandoffError> {
        let ours: Vec<(String, String)> = self
            .cfg
            .sources
            .iter()
            .map(|s| (s.bucket.clone(), s.prefix.clone()))
            .collect();
        if ours != state.sources {
            return Err(HandoffError::State(format!(
                "the running server serves {:?}, this one {ours:?}",
                state.sources
            )));
        }
        let now = Instant::now();
        let n_sources = ours.len();
        let bad = |what: String| HandoffError::State(what);
        let mut nodes = Vec::with_capacity(state.nodes.len());
        for n in &state.nodes {
            let loc = match &n.loc {
                LocState::Root => Location::Root,
                LocState::Dir { source, prefix } => Location::Dir {
                    source: *source,
                    prefix: prefix.clone(),
                },
                LocState::File { source, key } => Location::File {
                    source: *source,
                    key: key.clone(),
                },
            };
            if matches!(&loc, Location::Dir { source, .. } | Location::File { source, .. } if *source >= n_sources)
            {
                return Err(bad(format!("inode {} names a source out of range", n.ino)));
            }
            let child = NewChild {
                kind: kind(n.dir),
                loc,
                stat: Stat {
                    size: n.size,
                    mtime: system_time(n.mtime),
                    etag: n.etag.clone(),
                    expiry: until(now, Duration::from_millis(n.ttl_ms)),
                },
                local: n.local,
            };
            nodes.push((
                Inode::from_parts(n.ino, n.parent, n.name.clone(), child, n.lookups),
                n.linked,
            ));
        }
        if !nodes
            .iter()
            .any(|(n, _)| n.ino == super::super::inode::ROOT)
        {
            return Err(bad("no root inode in the state".into()));
        }
        self.inodes.import(nodes, state.next_ino);
        self.started = system_time(state.started);
        let mut handles = HashMap::new();
        for r in &state.reads {
            let object = ObjectVersion {
                bucket: r.bucket.clone(),
                key: r.key.clone(),
                size: r.size,
                etag: r.etag.clone(),
            };
            let p = Prefetcher::new(self.blocks.register(object), self.cfg.prefetch.clone());
            handles.insert(r.fh, Handle::Read(r.ino, Arc::new(AsyncMutex::new(p))));
        }
        for d in &state.dirs {
            let mut listing = Listing::default();
            for e in &d.entries {
                listing.add(DirEntry {
                    name: e.name.clone(),
                    kind: kind(e.dir),
                    size: e.size,
                    mtime: system_time(e.mtime),
                    etag: e.etag.clone(),
                    expiry: until(now, Duration::from_millis(e.ttl_ms)),
                });
            }
            if listing.len() != d.entries.len() {
                return Err(bad(format!("directory handle {} lists a name twice", d.fh)));
            }
            let h = DirHandle {
                ino: d.ino,
                listing,
                token: d.token.clone(),
                done: d.done,
            };
            handles.insert(d.fh, Handle::Dir(Arc::new(AsyncMutex::new(h))));
        }
        let max_fh = handles.keys().max().copied().unwrap_or(0);
        *self.handles.lock() = handles;
        self.next_fh.store(
            state.next_fh.max(max_fh + 1),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::fake::MemStore;
    use crate::s3::fs::{BucketSource, FsConfig};
    use crate::s3::inode::ROOT;
    use crate::s3::memory::MemoryLimiter;
    use crate::s3::store::Op;

    fn fs(store: Arc<MemStore>, writes: bool) -> S3Fs<MemStore> {
        let mut cfg = FsConfig::new(vec![BucketSource::parse("bkt").unwrap()]);
        cfg.allow_writes = writes;
        let limiter = MemoryLimiter::new(cfg.prefetch.max_memory);
        S3Fs::new(store, cfg, limiter).unwrap()
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// Half a listing and half a read on one server, the rest on the next
    /// through the same handles: every name once, every byte right, the
    /// same inode numbers, no new number reused.
    #[tokio::test]
    async fn handles_and_inodes_survive_the_handover() {
        let s = Arc::new(MemStore::new());
        s.create_bucket("bkt");
        for i in 0..2500 {
            s.insert("bkt", &format!("dir/f{i:05}"), vec![1u8; i % 5]);
        }
        let body = data(3 << 20);
        s.insert("bkt", "big", body.clone());
        let old = fs(s.clone(), true);
        let dir = old.lookup(ROOT, "dir").await.unwrap();
        let big = old.lookup(ROOT, "big").await.unwrap();
        let f = old.lookup(dir.ino, "f00007").await.unwrap();
        let dh = old.opendir(dir.ino).await.unwrap();
        // Two batches: "." and "..", then 300 of the first page's 1000.
        let mut first = old.readdir(dir.ino, dh, 0, 300).await.unwrap();
        let more = old.readdir(dir.ino, dh, first.last().unwrap().0, 300);
        first.extend(more.await.unwrap());
        assert_eq!(first.len(), 302);
        let off = first.last().unwrap().0;
        let rh = old.open(big.ino, false, false).await.unwrap().fh;
        let head = old.read(rh, 0, 1 << 20).await.unwrap();
        let state = old.export((7, 40), Some(1)).unwrap();
        assert_eq!(state.reads.len(), 1);
        assert_eq!(state.dirs.len(), 1);
        assert!(!state.dirs[0].done, "a listing read halfway");
        assert_eq!(state.dirs[0].entries.len(), 1000, "one page listed");

        let state = S3State::decode(&state.encode()).unwrap();
        let mut new = fs(s.clone(), true);
        new.adopt(&state).unwrap();
        s.reset_counts();
        let mut names: Vec<String> = first.iter().map(|e| e.1.clone()).collect();
        let mut off = off;
        loop {
            let batch = new.readdir(dir.ino, dh, off, 500).await.unwrap();
            if batch.is_empty() {
                break;
            }
            off = batch.last().unwrap().0;
            names.extend(batch.into_iter().map(|e| e.1));
        }
        names.retain(|n| n != "." && n != "..");
        let mut want: Vec<String> = (0..2500).map(|i| format!("f{i:05}")).collect();
        want.sort();
        let mut got = names.clone();
        got.sort();
        assert_eq!(got, want, "every name once across the handover");
        assert_eq!(
            s.count(Op::List),
            2,
            "the pages not read yet, from the token"
        );
        let mut all = head.to_vec();
        while all.len() < body.len() {
            let b = new.read(rh, all.len() as u64, 1 << 20).await.unwrap();
            assert!(!b.is_empty());
            all.extend_from_slice(&b);
        }
        assert!(all == body, "the read goes on from the same handle");
        assert_eq!(new.lookup(dir.ino, "f00007").await.unwrap().ino, f.ino);
        assert_eq!(new.getattr(big.ino).await.unwrap().size, body.len() as u64);
        let fresh = new.lookup(dir.ino, "f02000").await.unwrap();
        assert!(fresh.ino >= state.next_ino, "numbers are never reused");
        let fh = new.opendir(ROOT).await.unwrap();
        assert!(fh >= state.next_fh);
    }

    #[tokio::test]
    async fn an_open_upload_refuses_and_a_foreign_state_is_rejected() {
        let s = Arc::new(MemStore::new());
        s.create_bucket("bkt");
        s.create_bucket("other");
        let old = fs(s.clone(), true);
        let (_, wh) = old.create(ROOT, "new").await.unwrap();
        assert_eq!(old.open_uploads(), 1);
        let e = old.export((7, 40), None).unwrap_err();
        assert!(e.contains("1 upload(s) in progress"), "{e}");
        old.write(wh, 0, b"abc").await.unwrap();
        old.release(wh).await.unwrap();
        assert_eq!(s.object("bkt", "new").as_deref(), Some(&b"abc"[..]));
        let state = old.export((7, 40), None).unwrap();
        let mut cfg = FsConfig::new(vec![BucketSource::parse("other").unwrap()]);
        cfg.allow_writes = true;
        let mut foreign = S3Fs::new(s.clone(), cfg, MemoryLimiter::new(1 << 20)).unwrap();
        let e = foreign.adopt(&state).unwrap_err();
        assert!(e.to_string().contains("the running server serves"), "{e}");
        let mut bytes = state.encode();
        let v =
            String::from_utf8(bytes.clone())
                .unwrap()
                .replacen("\"version\":1", "\"version\":9", 1);
        bytes = v.into_bytes();
        let e = S3State::decode(&bytes).unwrap_err();
        assert!(e.to_string().contains("version 9 is not 1"), "{e}");
    }
}
