//! The thin fuser adapter: kernel requests in, core calls, replies out.
//!
//! fuser calls these methods on its worker threads; each one moves its reply
//! into a task on the tokio runtime, so a slow S3 request never blocks the
//! other operations. No behaviour lives here: only type translation.

use std::ffi::OsStr;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::blocks::Pieces;
use super::error::FsError;
use super::fs::{Attr, S3Fs};
use super::inode::Kind;
use super::metrics::{OpLabel, S3Metrics};
use super::store::ObjectStore;

pub struct FuseAdapter<S> {
    fs: Arc<S3Fs<S>>,
    rt: tokio::runtime::Handle,
    in_flight: Arc<AtomicUsize>,
    metrics: Arc<S3Metrics>,
}

/// One spawned request not replied to yet (see [`FuseAdapter::in_flight`]).
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S> std::fmt::Debug for FuseAdapter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FuseAdapter").finish()
    }
}

impl<S: ObjectStore> FuseAdapter<S> {
    pub fn new(fs: Arc<S3Fs<S>>, rt: tokio::runtime::Handle) -> Self {
        Self {
            metrics: fs.metrics().clone(),
            fs,
            rt,
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Counts a request of FUSE opcode `op` (`hubfs_s3_fuse_requests_total`).
    fn count(&self, op: &'static str) {
        self.metrics
            .fuse_requests
            .get_or_create(&OpLabel { op })
            .inc();
    }

    /// Requests dispatched to the runtime and not replied to yet: parking
    /// fuser's loops does not wait for them, a takeover waits for 0.
    pub fn in_flight(&self) -> Arc<AtomicUsize> {
        self.in_flight.clone()
    }

    /// Answers a request on the runtime, counted in [`Self::in_flight`]
    /// from before it is spawned until after its reply.
    fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(self.in_flight.clone());
        self.rt.spawn(async move {
            f.await;
            drop(guard);
        });
    }
}

fn errno(e: &FsError) -> Errno {
    // What S3 cannot do reaches the user as a bare EOPNOTSUPP: say which.
    if let FsError::Unsupported(what) = e {
        tracing::warn!(what, "answering EOPNOTSUPP");
    }
    Errno::from_i32(e.errno())
}

fn name_str(name: &OsStr) -> Result<&str, FsError> {
    // S3 keys are UTF-8; other names cannot exist in a bucket.
    name.to_str()
        .ok_or(FsError::Invalid("file name is not UTF-8"))
}

fn to_fuse(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: match a.kind {
            Kind::Dir => FileType::Directory,
            Kind::File => FileType::RegularFile,
        },
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 1 << 20,
        flags: 0,
    }
}

fn kind(k: Kind) -> FileType {
    match k {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
    }
}

thread_local! {
    /// Where a read that spans several body chunks is joined for the reply;
    /// kept per thread so no request pays for a fresh buffer's page faults.
    static REPLY_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Replies with the bytes of `p`: a single chunk as is, several joined in
/// the thread's reply buffer (the kernel wants one contiguous payload).
fn reply_pieces(reply: ReplyData, p: &Pieces) {
    match p.slices() {
        [] => reply.data(&[]),
        [one] => reply.data(one),
        many => REPLY_BUF.with(|b| {
            let mut buf = b.borrow_mut();
            buf.clear();
            for s in many {
                buf.extend_from_slice(s);
            }
            reply.data(&buf);
        }),
    }
}

impl<S: ObjectStore> Filesystem for FuseAdapter<S> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Every page of a listing is a READDIRPLUS: names and attributes
        // together, which S3's listing gives at no extra cost. Not the
        // kernel's adaptive mode (FUSE_READDIRPLUS_AUTO): it asks for plain
        // READDIR pages once a directory's first page is read, unless a
        // stat came in between, and `ls -l` then costs a LOOKUP per entry
        // of such pages (1,000 of 10,000 in a measured `ls -l`).
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS) {
            tracing::debug!(?missing, "kernel lacks readdirplus");
        }
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        // Larger kernel reads mean fewer round trips per MiB; take what the
        // kernel allows, up to 4 MiB.
        if let Err(max) = config.set_max_readahead(4 << 20) {
            let _ = config.set_max_readahead(max);
            tracing::debug!(max, "kernel limits readahead");
        }
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.count("LOOKUP");
        let fs = self.fs.clone();
        let name = name.to_owned();
        self.spawn(async move {
            let r = match name_str(&name) {
                Ok(n) => fs.lookup(parent.0, n).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(a) => reply.entry(&a.ttl, &to_fuse(&a), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.count("FORGET");
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.count("GETATTR");
        let fs = self.fs.clone();
        self.spawn(async move {
            match fs.getattr(ino.0).await {
                Ok(a) => reply.attr(&a.ttl, &to_fuse(&a)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.count("SETATTR");
        let fs = self.fs.clone();
        self.spawn(async move {
            match fs.setattr(ino.0, size).await {
                Ok(a) => reply.attr(&a.ttl, &to_fuse(&a)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.count("MKDIR");
        let fs = self.fs.clone();
        let name = name.to_owned();
        self.spawn(async move {
            let r = match name_str(&name) {
                Ok(n) => fs.mkdir(parent.0, n).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(a) => reply.entry(&Duration::ZERO, &to_fuse(&a), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.count("UNLINK");
        let fs = self.fs.clone();
        let name = name.to_owned();
        self.spawn(async move {
            let r = match name_str(&name) {
                Ok(n) => fs.unlink(parent.0, n).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.count("RMDIR");
        let fs = self.fs.clone();
        let name = name.to_owned();
        self.spawn(async move {
            let r = match name_str(&name) {
                Ok(n) => fs.rmdir(parent.0, n).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.count("RENAME");
        match self.fs.rename(&name.to_string_lossy()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.count("OPEN");
        let fs = self.fs.clone();
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        let truncate = flags.0 & libc::O_TRUNC != 0;
        let tid = req.pid();
        self.spawn(async move {
            match fs.open(ino.0, write, truncate).await {
                Ok(o) => {
                    if write {
                        fs.opened_by(o.fh, tid).await;
                    }
                    let flags = if o.keep_cache {
                        FopenFlags::FOPEN_KEEP_CACHE
                    } else {
                        FopenFlags::empty()
                    };
                    reply.opened(FileHandle(o.fh), flags)
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.count("READ");
        let fs = self.fs.clone();
        self.spawn(async move {
            match fs.read_pieces(fh.0, offset, size).await {
                Ok(p) => reply_pieces(reply, &p),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.count("WRITE");
        let fs = self.fs.clone();
        let data = data.to_vec();
        self.spawn(async move {
            match fs.write(fh.0, offset, &data).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.count("FLUSH");
        let fs = self.fs.clone();
        let tid = req.pid();
        self.spawn(async move {
            match fs.flush(fh.0, tid).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.flush(_req, _ino, fh, LockOwner(0), reply);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.count("RELEASE");
        let fs = self.fs.clone();
        self.spawn(async move {
            match fs.release(fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.count("OPENDIR");
        let fs = self.fs.clone();
        self.spawn(async move {
            match fs.opendir(ino.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.count("READDIR");
        let fs = self.fs.clone();
        self.spawn(async move {
            let listed = fs
                .readdir_with(ino.0, fh.0, offset, |next, name, attr| {
                    reply.add(INodeNo(attr.ino), next, kind(attr.kind), name)
                })
                .await;
            match listed {
                Ok(_) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.count("READDIRPLUS");
        let fs = self.fs.clone();
        self.spawn(async move {
            let listed = fs
                .readdir_with(ino.0, fh.0, offset, |next, name, attr| {
                    let full = reply.add(
                        INodeNo(attr.ino),
                        next,
                        name,
                        &attr.ttl,
                        &to_fuse(attr),
                        Generation(0),
                    );
                    // The kernel holds a reference to every entry but "." and "..".
                    if !full && name != "." && name != ".." {
                        fs.remember(attr.ino);
                    }
                    full
                })
                .await;
            match listed {
                Ok(_) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.count("RELEASEDIR");
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    // S3 objects have no extended attributes; ENOSYS makes the kernel stop asking.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        self.count("GETXATTR");
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        self.count("LISTXATTR");
        reply.error(Errno::ENOSYS);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.count("STATFS");
        // S3 has no capacity; report a large, mostly free filesystem so
        // tools that check free space before writing proceed.
        let blocks = 1u64 << 40;
        reply.statfs(blocks, blocks, blocks, 1 << 30, 1 << 30, 4096, 255, 4096);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        self.count("CREATE");
        let fs = self.fs.clone();
        let name = name.to_owned();
        let tid = req.pid();
        self.spawn(async move {
            let r = match name_str(&name) {
                Ok(n) => fs.create(parent.0, n).await,
                Err(e) => Err(e),
            };
            match r {
                Ok((a, fh)) => {
                    fs.opened_by(fh, tid).await;
                    reply.created(
                        &Duration::ZERO,
                        &to_fuse(&a),
                        Generation(0),
                        FileHandle(fh),
                        FopenFlags::empty(),
                    )
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }
}
