//! A home's side of a takeover: what a server hands to the next one with its
//! FUSE connection (see [`crate::handoff`] for the wire), and the rebuilding
//! of a [`HomeFs`] from it.
//!
//! The state is versioned JSON: the negotiated protocol version, the
//! passthrough switch, the usage counters (bytes, inodes, whether the walk's
//! baseline is in, cleanup mode), every inode the kernel holds with its
//! lookup count and unseen-writer baseline, the numbers given from the own
//! range, every open file (flags that matter to us) and directory listing,
//! and the I/O mode of every open handle with the passthrough backing id of
//! every inode in a passthrough period. Descriptors travel beside it; the
//! state names each by its index: `/dev/fuse` is 0, then the control socket
//! (if any), the inodes' `O_PATH` descriptors and the open files'.
//!
//! A takeover is refused while the mount-time walk runs (its ledger is not
//! handed over); the caller retries when it ends.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::dirs::{DirEntry, DirHandle, DirStream};
use super::files::Handle;
use super::fs::HomeFs;
use super::inodes::{Carried, Key};
use super::iomode::IoModes;
use super::syscalls::FileHandle;
use super::usage::Snapshot;
use crate::handoff::HandoffError;
use parking_lot::Mutex;

/// Version of [`HomeState`]; a server refuses state of another version.
pub const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InodeState {
    pub ino: u64,
    pub key: Key,
    pub nlookup: u64,
    /// Its file handle, when its descriptor was closed (see `inodes`): the
    /// next server opens it from this. Older servers sent every descriptor.
    #[serde(default)]
    pub handle: Option<Vec<u8>>,
    /// Passthrough writers open and the size last charged (see `inodes`).
    pub writers: u32,
    pub baseline: i64,
    /// Its last name went while open: charged until its last close
    /// (absent from older servers: none then).
    #[serde(default)]
    pub orphan: bool,
    /// Its descriptor's index, when it travels as one.
    pub fd: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileState {
    pub fh: u64,
    pub ino: u64,
    pub append: bool,
    pub dirty: bool,
    pub unmediated: bool,
    pub fd: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirState {
    pub fh: u64,
    /// Older servers: (number, kind, name) of each entry of a listing read
    /// whole (offsets index it); `None` for one not read yet.
    #[serde(default)]
    pub entries: Option<Vec<(u64, u8, Vec<u8>)>>,
    /// The open directory's descriptor index and the offset the kernel
    /// asks with next (see `dirs`).
    #[serde(default)]
    pub fd: Option<usize>,
    #[serde(default)]
    pub at: Option<u64>,
}

/// Everything a home server hands over besides its descriptors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HomeState {
    pub version: u32,
    /// FUSE protocol version negotiated at INIT.
    pub proto: (u32, u32),
    pub passthrough: bool,
    pub root_key: Key,
    pub bytes: i64,
    pub inodes: i64,
    pub baseline_known: bool,
    pub cleanup: bool,
    pub nodes: Vec<InodeState>,
    pub own: Vec<(Key, u64)>,
    pub next_own: u64,
    pub files: Vec<FileState>,
    pub dirs: Vec<DirState>,
    pub next_fh: u64,
    /// (handle, inode, passthrough?) of every open file.
    pub io_handles: Vec<(u64, u64, bool)>,
    /// (inode, backing id) of every inode in a passthrough period.
    pub io_backings: Vec<(u64, u32)>,
    /// The handles opened with `FOPEN_DIRECT_IO` (absent from older
    /// servers, which had none).
    #[serde(default)]
    pub io_direct: Vec<u64>,
    /// Index of the control socket's descriptor, if the server had one.
    pub control: Option<usize>,
}

impl HomeState {
    pub fn encode(&self) -> Vec<u8> {
        crate::handoff::encode_state(self, "home")
    }

    /// Parses state sent by another server: a version other than
    /// [`STATE_VERSION`] or a truncated or malformed text is a clear error.
    pub fn decode(bytes: &[u8]) -> Result<Self, HandoffError> {
        crate::handoff::decode_state(bytes, "home", STATE_VERSION)
    }
}

/// What a server hands over: the state and the descriptors it names, kept
/// open by what this holds.
pub struct Export {
    pub state: HomeState,
    inodes: Vec<Arc<OwnedFd>>,
    files: Vec<Arc<Handle>>,
    dirs: Vec<File>,
}

impl Export {
    /// The state's descriptors in index order after `/dev/fuse` and the
    /// control socket (the caller puts those first).
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        let inodes = self.inodes.iter().map(|fd| fd.as_fd());
        inodes
            .chain(self.files.iter().map(|h| h.file.as_fd()))
            .chain(self.dirs.iter().map(|d| d.as_fd()))
            .collect()
    }
}

impl HomeFs {
    /// True while the mount-time walk runs (no takeover then).
    pub fn walk_running(&self) -> bool {
        self.ledger().is_some()
    }

    /// The state to hand over, its descriptors numbered from `first_fd`.
    /// Call it with the session paused: nothing changes meanwhile.
    pub fn export<B>(
        &self,
        io: &IoModes<B>,
        id: impl Fn(&B) -> u32,
        proto: (u32, u32),
        passthrough: bool,
        control: Option<usize>,
        first_fd: usize,
    ) -> Export {
        let (inodes, own, next_own) = self.inodes.export();
        let mut next = first_fd;
        let mut index = || {
            next += 1;
            next - 1
        };
        let mut fds = Vec::new();
        let nodes = inodes
            .iter()
            .filter_map(|(ino, i)| {
                let g = i.size_lock.lock();
                let (fd, handle) = match i.carried()? {
                    Carried::Fd(fd) => {
                        fds.push(fd);
                        (Some(index()), None)
                    }
                    Carried::Handle(h) => (None, Some(h.to_bytes())),
                };
                Some(InodeState {
                    ino: *ino,
                    key: i.key(),
                    nlookup: i.lookups(),
                    handle,
                    writers: g.writers,
                    baseline: g.baseline,
                    orphan: g.orphan,
                    fd,
                })
            })
            .collect();
        let handles: Vec<(u64, Arc<Handle>)> = self
            .files
            .read()
            .iter()
            .map(|(&fh, h)| (fh, h.clone()))
            .collect();
        // One map from inode to number, not a scan of every inode per open file.
        let numbers: std::collections::HashMap<*const super::inodes::Inode, u64> =
            inodes.iter().map(|(n, i)| (Arc::as_ptr(i), *n)).collect();
        let files = handles
            .iter()
            .map(|(fh, h)| FileState {
                fh: *fh,
                ino: numbers
                    .get(&Arc::as_ptr(&h.inode))
                    .copied()
                    .unwrap_or(super::inodes::ROOT),
                append: h.append,
                dirty: h.dirty.load(Ordering::Relaxed),
                unmediated: h.unmediated.load(Ordering::Relaxed),
                fd: index(),
            })
            .collect();
        let mut dir_files = Vec::new();
        let dirs = self
            .dirs
            .lock()
            .iter()
            .map(|(&fh, h)| match &**h {
                DirHandle::Open(s) => {
                    let s = s.lock();
                    let file = s.dir.try_clone();
                    let at = s.at;
                    match file {
                        Ok(f) => {
                            dir_files.push(f);
                            DirState {
                                fh,
                                entries: None,
                                fd: Some(index()),
                                at,
                            }
                        }
                        // No descriptor to hand on: the new server opens
                        // the directory again for its next readdir.
                        Err(_) => DirState {
                            fh,
                            entries: None,
                            fd: None,
                            at,
                        },
                    }
                }
                DirHandle::Later => DirState {
                    fh,
                    entries: None,
                    fd: None,
                    at: None,
                },
                DirHandle::Snapshot(l) => DirState {
                    fh,
                    entries: Some(
                        l.iter()
                            .map(|e| (e.ino, e.kind, e.name.as_bytes().to_vec()))
                            .collect(),
                    ),
                    fd: None,
                    at: None,
                },
            })
            .collect();
        let io = io.export(id);
        let usage = self.usage.snapshot();
        Export {
            state: HomeState {
                version: STATE_VERSION,
                proto,
                passthrough,
                root_key: self.inodes.root_key(),
                bytes: usage.bytes,
                inodes: usage.inodes,
                baseline_known: self.usage.baseline_known(),
                cleanup: self.usage.cleanup(),
                nodes,
                own,
                next_own,
                files,
                dirs,
                next_fh: self.next_fh.load(Ordering::Relaxed),
                io_handles: io.handles,
                io_backings: io.backings,
                io_direct: io.direct,
                control,
            },
            inodes: fds,
            files: handles.into_iter().map(|(_, h)| h).collect(),
            dirs: dir_files,
        }
    }

    /// Takes over what the previous server of this connection held:
    /// `fds[i]` is the descriptor the state numbers `i` (taken from it).
    /// The filesystem must be new, opened on the same directory.
    pub fn adopt(&self, s: &HomeState, fds: &mut [Option<OwnedFd>]) -> Result<(), HandoffError> {
        if self.inodes.root_key() != s.root_key {
            return Err(HandoffError::State(
                "the running server serves another directory (source differs)".into(),
            ));
        }
        let mut take = |i: usize| {
            fds.get_mut(i).and_then(Option::take).ok_or_else(|| {
                HandoffError::State(format!("descriptor {i} missing or named twice"))
            })
        };
        self.usage.adopt(
            Snapshot {
                bytes: s.bytes,
                inodes: s.inodes,
            },
            s.baseline_known,
            s.cleanup,
        );
        for n in &s.nodes {
            let carried = match (n.fd, &n.handle) {
                (Some(i), _) => Carried::Fd(Arc::new(take(i)?)),
                (None, Some(h)) => Carried::Handle(FileHandle::from_bytes(h).ok_or_else(|| {
                    HandoffError::State(format!("inode {}: a malformed handle", n.ino))
                })?),
                (None, None) => {
                    return Err(HandoffError::State(format!(
                        "inode {} comes with neither descriptor nor handle",
                        n.ino
                    )))
                }
            };
            self.inodes
                .adopt(n.ino, carried, n.key, n.nlookup, n.writers, n.baseline);
            if let (true, Ok(i)) = (n.orphan, self.inode(n.ino)) {
                i.size_lock.lock().orphan = true;
            }
        }
        self.inodes.adopt_own(&s.own, s.next_own);
        let mut files = HashMap::new();
        for f in &s.files {
            let file = File::from(take(f.fd)?);
            let inode = self.inode(f.ino).map_err(|_| {
                HandoffError::State(format!("open file {} of unknown inode {}", f.fh, f.ino))
            })?;
            inode.size_lock.lock().open += 1;
            files.insert(
                f.fh,
                Arc::new(Handle {
                    file,
                    inode,
                    append: f.append,
                    dirty: f.dirty.into(),
                    unmediated: f.unmediated.into(),
                }),
            );
        }
        *self.files.write() = files;
        let mut dirs = HashMap::new();
        for d in &s.dirs {
            let h = match (&d.entries, d.fd) {
                (Some(es), _) => DirHandle::Snapshot(Arc::new(
                    es.iter()
                        .map(|(ino, kind, name)| DirEntry {
                            ino: *ino,
                            kind: *kind,
                            name: OsString::from_vec(name.clone()),
                        })
                        .collect(),
                )),
                // Its position is the old server's: sought at the next read.
                (None, Some(i)) => {
                    DirHandle::Open(Mutex::new(DirStream::new(File::from(take(i)?), None)))
                }
                // An older server's handle not read yet: opened at its
                // first read, with the directory the kernel names then.
                (None, None) => DirHandle::Later,
            };
            dirs.insert(d.fh, Arc::new(h));
        }
        *self.dirs.lock() = dirs;
        self.next_fh.store(s.next_fh, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::home::fs::ROOT;
    use crate::home::usage::{Limits, UsageCounters};
    use std::ffi::OsStr;

    fn fs_on(dir: &std::path::Path) -> HomeFs {
        let u = Arc::new(UsageCounters::new(Limits {
            bytes: Some(1 << 20),
            ..Limits::default()
        }));
        HomeFs::new(dir, u).unwrap()
    }

    /// Descriptors as the wire delivers them: duplicates, by index.
    fn carry(e: &Export) -> Vec<Option<OwnedFd>> {
        e.fds()
            .iter()
            .map(|fd| Some(fd.try_clone_to_owned().unwrap()))
            .collect()
    }

    /// Inodes whose descriptors were closed (the descriptor bound) travel
    /// as their file handles, and the new server reaches them by those.
    #[test]
    fn inodes_with_closed_descriptors_travel_as_file_handles() {
        let t = tempfile::tempdir().unwrap();
        let old = fs_on(t.path());
        old.usage().add_baseline(0, 0);
        let d = old.mkdir(ROOT, OsStr::new("d"), 0o755, 0).unwrap();
        let (f, fh) = old
            .create(d.ino, OsStr::new("f"), 0o644, 0, libc::O_WRONLY)
            .unwrap();
        old.write(fh, 0, b"four").unwrap();
        old.release(fh);
        let handles = old.inodes.uses_handles();
        // Root (as the server runs) has handles on a local filesystem.
        assert_eq!(handles, nix::unistd::geteuid().is_root());
        let closed = old.inodes.let_go_idle();
        assert_eq!(closed, if handles { 2 } else { 0 });
        let io = IoModes::<u32>::default();
        let e = old.export(&io, |b| *b, (7, 41), true, None, 0);
        let state = HomeState::decode(&e.state.encode()).unwrap();
        let by_handle = state.nodes.iter().filter(|n| n.handle.is_some()).count();
        assert_eq!(by_handle, closed, "{:?}", state.nodes);
        assert!(state
            .nodes
            .iter()
            .all(|n| n.handle.is_some() != n.fd.is_some()));
        assert_eq!(e.fds().len(), 2 - closed, "only open descriptors travel");

        let new = fs_on(t.path());
        new.adopt(&state, &mut carry(&e)).unwrap();
        // Reached by their handles: attributes, and the same numbers again.
        assert_eq!(new.getattr(f.ino).unwrap().st_size, 4);
        assert_eq!(new.lookup(d.ino, OsStr::new("f")).unwrap().ino, f.ino);
        assert_eq!(new.lookup(ROOT, OsStr::new("d")).unwrap().ino, d.ino);
        assert_eq!(new.usage().snapshot().bytes, 4);
    }

    #[test]
    fn a_new_server_continues_with_the_inodes_handles_and_usage_of_the_old() {
        let t = tempfile::tempdir().unwrap();
        let old = fs_on(t.path());
        old.usage().add_baseline(0, 0);
        let d = old.mkdir(ROOT, OsStr::new("d"), 0o755, 0).unwrap();
        let (f, fh) = old
            .create(
                d.ino,
                OsStr::new("f"),
                0o644,
                0,
                libc::O_RDWR | libc::O_APPEND,
            )
            .unwrap();
        old.write(fh, 0, b"hello ").unwrap();
        old.lookup(d.ino, OsStr::new("f")).unwrap(); // two lookups of f now
        let dh = old.opendir(d.ino).unwrap();
        // The old server hands out one entry of the listing.
        let mut first = Vec::new();
        old.readdir(d.ino, dh, 0, |e, next| {
            let full = !first.is_empty();
            if !full {
                first.push((e.name.clone(), next));
            }
            full
        })
        .unwrap();
        let (first_name, resume) = first[0].clone();
        let io = IoModes::<u32>::default();
        let e = old.export(&io, |b| *b, (7, 41), true, None, 0);
        let state = HomeState::decode(&e.state.encode()).unwrap();
        assert_eq!(state, e.state, "the JSON round trip is exact");
        assert_eq!(state.nodes.len(), 2);

        // Made after the listing began: it may show or not (as natively).
        std::fs::write(t.path().join("d/g"), b"").unwrap();
        let new = fs_on(t.path());
        new.adopt(&state, &mut carry(&e)).unwrap();
        drop(e);
        drop(old);
        assert_eq!(new.usage().snapshot().bytes, 6);
        assert_eq!(new.usage().snapshot().inodes, 2);
        assert!(new.usage().baseline_known());
        // The open handle writes on (append) and is accounted by the new server.
        new.write(fh, 0, b"world").unwrap();
        assert_eq!(std::fs::read(t.path().join("d/f")).unwrap(), b"hello world");
        assert_eq!(new.usage().snapshot().bytes, 11);
        // Node numbers and lookup counts carried over: two forgets drop f.
        assert_eq!(new.getattr(f.ino).unwrap().st_size, 11);
        new.forget(f.ino, 1);
        assert!(new.getattr(f.ino).is_ok());
        new.forget(f.ino, 1);
        assert!(
            new.getattr(f.ino).is_err(),
            "forgotten after its last lookup"
        );
        // The listing goes on where the old server left it: every entry
        // once, the rest after the first.
        let mut names = vec![first_name];
        new.readdir(d.ino, dh, resume, |e, _| {
            names.push(e.name.clone());
            false
        })
        .unwrap();
        names.sort();
        let mut once = names.clone();
        once.dedup();
        assert_eq!(names, once, "no entry twice");
        for n in [".", "..", "f"] {
            assert!(names.iter().any(|x| x == n), "{n} in {names:?}");
        }
        assert!(names.len() <= 4, "{names:?}");
        // New handles do not reuse old numbers.
        let fh2 = new.opendir(d.ino).unwrap();
        assert!(fh2 > dh && fh2 > fh);
        // The quota still holds.
        let err = new.write(fh, 0, &vec![0u8; 1 << 20]).unwrap_err();
        assert_eq!(err.errno(), libc::EDQUOT);
    }

    #[test]
    fn passthrough_modes_and_backing_ids_carry_over() {
        use crate::home::iomode::{Access, Grant, IoExport};
        let io = IoModes::<u32>::default();
        let _ = io.open(5, 1, Access::Read, true, || Some(42));
        let _ = io.open(6, 2, Access::ReadWrite, true, || None);
        let _ = io.open(6, 3, Access::Write, true, || None);
        let t = tempfile::tempdir().unwrap();
        let e = fs_on(t.path()).export(&io, |b| *b, (7, 41), true, None, 0);
        let state = HomeState::decode(&e.state.encode()).unwrap();
        assert_eq!(state.io_backings, vec![(5, 42)]);
        assert_eq!(state.io_direct, vec![3]);
        let new = IoModes::<u32>::default();
        let mut adopted = vec![];
        let got = IoExport {
            handles: state.io_handles.clone(),
            backings: state.io_backings.clone(),
            direct: state.io_direct.clone(),
        };
        new.import(&got, |id| {
            adopted.push(id);
            id
        });
        assert_eq!(adopted, vec![42]);
        // A writer of inode 5 must join the passthrough period, as before,
        // its writes still coming to the daemon.
        match new.open(5, 4, Access::Write, true, || None) {
            Grant::PassthroughDirect(b) => assert_eq!(*b, 42),
            _ => panic!("inode 5 is in a passthrough period"),
        }
        assert_eq!(new.open_handles(), 4);
        // The state of a server before direct writers still decodes.
        let mut v = serde_json::to_value(&state).unwrap();
        v.as_object_mut().unwrap().remove("io_direct");
        let old: HomeState = serde_json::from_value(v).unwrap();
        assert!(old.io_direct.is_empty());
    }

    #[test]
    fn another_version_or_truncated_state_is_a_clear_error() {
        let t = tempfile::tempdir().unwrap();
        let fs = fs_on(t.path());
        let e = fs.export(&IoModes::<u32>::default(), |b| *b, (7, 41), false, None, 1);
        let mut s = e.state.clone();
        s.version = STATE_VERSION + 1;
        let err = HomeState::decode(&s.encode()).unwrap_err().to_string();
        assert!(err.contains("version 2 is not 1"), "{err}");
        let bytes = e.state.encode();
        let err = HomeState::decode(&bytes[..bytes.len() / 2])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unreadable") && err.contains("EOF"), "{err}");
        let other = tempfile::tempdir().unwrap();
        let err = fs_on(other.path())
            .adopt(&e.state, &mut [])
            .unwrap_err()
            .to_string();
        assert!(err.contains("another directory"), "{err}");
    }
}
