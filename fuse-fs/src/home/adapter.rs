//! The `fuser` adapter: kernel requests in, [`HomeFs`] calls, replies out.
//!
//! Nothing is decided here; it translates types and turns [`HomeError`] into
//! an errno through `HomeError::errno` (the one mapping).

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, BsdFileFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle,
    FileType, Filesystem, FopenFlags, Generation, INodeNo, IoctlFlags, KernelConfig, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};

use super::error::HomeError;
use super::fs::{Caller, Entry, HomeFs, SetAttr, SetTime};
use super::iomode::{Access, Grant, IoModes};
use super::requests::Op;

/// How long the kernel may trust attributes and names, and that a name
/// does not exist (negative entries). Short, because other nodes may change
/// the same home on the share: what they do is seen here within this time,
/// as NFS's own attribute cache promises. What this mount changes itself
/// the kernel knows at once.
pub const TTL: Duration = Duration::from_secs(1);

/// Largest write the kernel sends in one request.
pub const MAX_WRITE: u32 = 1 << 20;

/// Flags of a daemon-served open through the page cache: pages kept
/// across opens; a reader's close needs no FLUSH round trip (nothing of it
/// can fail late).
fn cached_flags(access: Access) -> FopenFlags {
    match access {
        Access::Read => FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH,
        _ => FopenFlags::FOPEN_KEEP_CACHE,
    }
}

pub struct HomeFuse {
    fs: Arc<HomeFs>,
    /// Shared with the mount, which hands it over in a takeover.
    io: Arc<IoModes<BackingId>>,
    /// Hand read-only opens to the kernel as passthrough files: asked for by
    /// the options, then cleared if the kernel does not offer it or refuses
    /// a backing file (it needs CAP_SYS_ADMIN).
    passthrough: Arc<AtomicBool>,
    /// Ioctl commands refused so far: each is logged once.
    refused_ioctls: OncePerKind,
}

/// Remembers which kinds of a thing were seen, to log each kind once
/// rather than thousands of times in a busy session.
#[derive(Default)]
pub struct OncePerKind(parking_lot::Mutex<std::collections::HashSet<u32>>);

impl OncePerKind {
    /// True the first time `kind` is seen.
    pub fn first(&self, kind: u32) -> bool {
        self.0.lock().insert(kind)
    }
}

impl HomeFuse {
    pub fn new(fs: Arc<HomeFs>, passthrough: bool) -> Self {
        HomeFuse {
            fs,
            io: Arc::default(),
            passthrough: Arc::new(AtomicBool::new(passthrough)),
            refused_ioctls: OncePerKind::default(),
        }
    }

    /// The I/O modes and the passthrough switch, which a takeover hands
    /// over (see `home::handoff`).
    pub fn shared(&self) -> (Arc<IoModes<BackingId>>, Arc<AtomicBool>) {
        (self.io.clone(), self.passthrough.clone())
    }

    /// Extended attribute `name` of `ino` was set or removed: an access ACL
    /// of a directory changes who may search it (see `reach`).
    fn acl_changed(&self, ino: u64, name: &OsStr) {
        if name == "system.posix_acl_access" && self.fs.getattr(ino).is_ok_and(|st| sys_is_dir(&st))
        {
            self.fs.permissions_changed();
        }
    }

    /// Registers the backing file of `fh` for passthrough; `None` (and
    /// passthrough off for the rest of the mount) when the kernel refuses.
    fn backing(
        &self,
        fh: u64,
        open: impl FnOnce(&std::fs::File) -> io::Result<BackingId>,
    ) -> Option<BackingId> {
        if !self.passthrough.load(Ordering::Relaxed) {
            return None;
        }
        // Registering a backing file needs CAP_SYS_ADMIN: the server's.
        let opened = super::identity::as_server(|| self.fs.with_file(fh, open));
        match opened.and_then(|r| r) {
            Ok(Ok(b)) => Some(b),
            Ok(Err(e)) => {
                if self.passthrough.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "kernel refused a passthrough file; reads go through the daemon");
                }
                None
            }
            Err(_) => None,
        }
    }

    /// Counts a request, switches this thread to its caller's credentials
    /// (see `identity`) and checks that the caller may reach the inodes it
    /// names by a path (see `reach`); an error refuses the request.
    fn begin(&self, req: &Request, op: Op, reach: &[u64]) -> Result<(), Errno> {
        self.fs.requests.count(op);
        self.fs.act_as(&caller(req)).map_err(err)?;
        reach
            .iter()
            .try_for_each(|&ino| self.fs.reach(ino))
            .map_err(err)
    }

    /// Decides how the kernel serves a new handle (see `iomode`): every
    /// writer's writes come to the daemon whatever the grant.
    fn grant(
        &self,
        ino: u64,
        fh: u64,
        flags: i32,
        open: impl FnOnce(&std::fs::File) -> io::Result<BackingId>,
    ) -> (Grant<BackingId>, FopenFlags) {
        let access = Access::of(flags);
        let usage = self.fs.usage();
        let may = !usage.cleanup() && !usage.over_soft_limit();
        let g = self
            .io
            .open(ino, fh, access, may, || self.backing(fh, open));
        let f = match g {
            Grant::Passthrough(_) => FopenFlags::FOPEN_NOFLUSH,
            // A writer's close must still reach us (flush).
            Grant::PassthroughDirect(_) | Grant::Direct => FopenFlags::FOPEN_DIRECT_IO,
            Grant::Cached => cached_flags(access),
        };
        (g, f)
    }
}

/// The inodes a request on `ino` reaches by a path: none when it came
/// through an open file (a handle: fstat, ftruncate), as natively.
fn by_path(fh: Option<FileHandle>, ino: &[u64; 1]) -> &[u64] {
    match fh {
        Some(_) => &[],
        None => ino,
    }
}

fn sys_is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn err(e: HomeError) -> Errno {
    Errno::from_i32(e.errno())
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

fn kind(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn dkind(d: u8) -> FileType {
    match d {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn attr(ino: u64, st: &libc::stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: st.st_size.max(0) as u64,
        blocks: st.st_blocks.max(0) as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: kind(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn set_time(t: Option<TimeOrNow>) -> SetTime {
    match t {
        None => SetTime::Omit,
        Some(TimeOrNow::Now) => SetTime::Now,
        Some(TimeOrNow::SpecificTime(t)) => SetTime::At(t),
    }
}

fn entry(reply: ReplyEntry, r: Result<Entry, HomeError>) {
    match r {
        Ok(e) => reply.entry(&TTL, &attr(e.ino, &e.st), Generation(0)),
        Err(e) => reply.error(err(e)),
    }
}

/// The attributes of a negative entry: node 0 is what tells the kernel.
fn negative() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

fn empty(reply: ReplyEmpty, r: Result<(), HomeError>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(err(e)),
    }
}

fn xattr(reply: ReplyXattr, size: u32, r: Result<Vec<u8>, HomeError>) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(err(e)),
    }
}

impl Filesystem for HomeFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_WRITE);
        let _ = config.set_max_background(64);
        // Lookups and creates in one directory may run in parallel: the
        // backing filesystem serialises what it must.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_PARALLEL_DIROPS);
        // Listings come with every entry's attributes (READDIRPLUS), so
        // `ls -l`, `du`, `find` and `rm -rf` send no LOOKUP per entry.
        // Always, not the kernel's AUTO heuristic: that one lists all but
        // the first batch of a large directory plainly when the program
        // reads the whole listing before it stats (fts: du, rm, find).
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_DO_READDIRPLUS);
        // A symlink's target never changes in place (a new one is a new
        // inode, and the one the kernel knows stays pinned by our
        // descriptor), so the kernel may keep what readlink said.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_CACHE_SYMLINKS);
        // Set-ID bits are cleared here, by the kernel's rule, on every
        // size or content change (see `caller`), and the backing
        // filesystem drops file capabilities on our writes: so the kernel
        // may remember that an inode has none to lose (S_NOSEC) instead of
        // asking for `security.capability` before every write.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        // Pages stay cached across opens (FOPEN_KEEP_CACHE); the kernel
        // drops them itself when a getattr shows the file changed under us
        // (another node writing the same home).
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_AUTO_INVAL_DATA);
        // The umask is left to us: we hand it to the backing filesystem,
        // which skips it under a default ACL. Not FUSE_POSIX_ACL: the kernel
        // would turn `default_permissions` on with it; POSIX ACLs pass
        // through as extended attributes and the backing filesystem, judging
        // each request as its caller, applies them.
        if config
            .add_capabilities(fuser::InitFlags::FUSE_DONT_MASK)
            .is_err()
        {
            tracing::info!("kernel applies the umask itself; default ACLs cannot override it");
        }
        // Depth 2: the backing may itself be stacked (an overlay root in a
        // container); this mount then cannot be stacked on, which nothing does.
        let offered = self.passthrough.load(Ordering::Relaxed)
            && config.set_max_stack_depth(2).is_ok()
            && config
                .add_capabilities(fuser::InitFlags::FUSE_PASSTHROUGH)
                .is_ok();
        if !offered && self.passthrough.swap(false, Ordering::Relaxed) {
            tracing::info!("kernel has no FUSE passthrough; reads go through the daemon");
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if let Err(e) = self.begin(req, Op::Lookup, &[parent.0]) {
            return reply.error(e);
        }
        match self.fs.lookup(parent.0, name) {
            // A negative entry (node 0): the kernel remembers the name is
            // missing for TTL, so probing it again (an import path, a
            // config file) costs no request. A create through this mount
            // replaces it at once.
            Err(HomeError::Os(libc::ENOENT)) => {
                self.fs.requests.count(Op::Negative);
                reply.entry(&TTL, &negative(), Generation(0))
            }
            r => entry(reply, r),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup)
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Err(e) = self.begin(req, Op::Getattr, by_path(fh, &[ino.0])) {
            return reply.error(e);
        }
        match self.fs.getattr(ino.0) {
            Ok(st) => reply.attr(&TTL, &attr(ino.0, &st)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if let Err(e) = self.begin(req, Op::Setattr, by_path(fh, &[ino.0])) {
            return reply.error(e);
        }
        let a = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
        };
        match self.fs.setattr(ino.0, fh.map(|f| f.0), a) {
            Ok(st) => {
                if sys_is_dir(&st) && (mode.is_some() || uid.is_some() || gid.is_some()) {
                    self.fs.permissions_changed();
                }
                reply.attr(&TTL, &attr(ino.0, &st))
            }
            Err(e) => reply.error(err(e)),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        if let Err(e) = self.begin(req, Op::Readlink, &[ino.0]) {
            return reply.error(e);
        }
        match self.fs.readlink(ino.0) {
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(err(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        if let Err(e) = self.begin(req, Op::Mknod, &[parent.0]) {
            return reply.error(e);
        }
        entry(reply, self.fs.mknod(parent.0, name, mode, umask, rdev))
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        if let Err(e) = self.begin(req, Op::Mkdir, &[parent.0]) {
            return reply.error(e);
        }
        entry(reply, self.fs.mkdir(parent.0, name, mode, umask))
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if let Err(e) = self.begin(req, Op::Unlink, &[parent.0]) {
            return reply.error(e);
        }
        empty(reply, self.fs.unlink(parent.0, name))
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if let Err(e) = self.begin(req, Op::Rmdir, &[parent.0]) {
            return reply.error(e);
        }
        empty(reply, self.fs.rmdir(parent.0, name))
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        if let Err(e) = self.begin(req, Op::Symlink, &[parent.0]) {
            return reply.error(e);
        }
        entry(reply, self.fs.symlink(parent.0, link_name, target))
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if let Err(e) = self.begin(req, Op::Rename, &[parent.0, newparent.0]) {
            return reply.error(e);
        }
        empty(
            reply,
            self.fs
                .rename(parent.0, name, newparent.0, newname, flags.bits()),
        )
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        if let Err(e) = self.begin(req, Op::Link, &[ino.0, newparent.0]) {
            return reply.error(e);
        }
        entry(reply, self.fs.link(ino.0, newparent.0, newname))
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if let Err(e) = self.begin(req, Op::Open, &[ino.0]) {
            return reply.error(e);
        }
        let fh = match self.fs.open(ino.0, flags.0) {
            Ok(fh) => fh,
            Err(e) => return reply.error(err(e)),
        };
        match self.grant(ino.0, fh, flags.0, |f| reply.open_backing(f)) {
            (Grant::Passthrough(b) | Grant::PassthroughDirect(b), f) => {
                reply.opened_passthrough(FileHandle(fh), f, &b)
            }
            (Grant::Cached | Grant::Direct, f) => reply.opened(FileHandle(fh), f),
        }
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if let Err(e) = self.begin(req, Op::Read, &[]) {
            return reply.error(e);
        }
        self.fs.read(fh.0, offset, size, |r| match r {
            Ok(data) => reply.data(data),
            Err(e) => reply.error(err(e)),
        })
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if let Err(e) = self.begin(req, Op::Write, &[]) {
            return reply.error(e);
        }
        match self.fs.write(fh.0, offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(err(e)),
        }
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        if let Err(e) = self.begin(req, Op::Flush, &[]) {
            return reply.error(e);
        }
        empty(reply, self.fs.flush(fh.0))
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
        self.fs.requests.count(Op::Release);
        self.fs.release(fh.0);
        self.io.release(fh.0);
        reply.ok()
    }

    fn fsync(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        if let Err(e) = self.begin(req, Op::Fsync, &[]) {
            return reply.error(e);
        }
        empty(reply, self.fs.fsync(fh.0, datasync))
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if let Err(e) = self.begin(req, Op::Opendir, &[ino.0]) {
            return reply.error(e);
        }
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(err(e)),
        }
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if let Err(e) = self.begin(req, Op::Readdir, &[]) {
            return reply.error(e);
        }
        let r = self.fs.readdir(ino.0, fh.0, offset, |e, next| {
            reply.add(INodeNo(e.ino), next, dkind(e.kind), &e.name)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        if let Err(e) = self.begin(req, Op::Readdirplus, &[]) {
            return reply.error(e);
        }
        let r = self
            .fs
            .readdirplus(ino.0, fh.0, offset, |d, next, e| match e {
                Some(e) => reply.add(
                    INodeNo(e.ino),
                    next,
                    &d.name,
                    &TTL,
                    &attr(e.ino, &e.st),
                    Generation(0),
                ),
                // Not looked up for this caller: the name alone (node id 0).
                None => {
                    let mut a = negative();
                    a.ino = INodeNo(d.ino);
                    a.kind = dkind(d.kind);
                    reply.add(INodeNo(0), next, &d.name, &TTL, &a, Generation(0))
                }
            });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.requests.count(Op::Releasedir);
        self.fs.releasedir(fh.0);
        reply.ok()
    }

    fn fsyncdir(
        &self,
        req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if let Err(e) = self.begin(req, Op::Fsync, &[]) {
            return reply.error(e);
        }
        reply.ok()
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.fs.requests.count(Op::Statfs);
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks,
                s.bfree,
                s.bavail,
                s.files,
                s.ffree,
                s.bsize as u32,
                s.namemax as u32,
                s.frsize as u32,
            ),
            Err(e) => reply.error(err(e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        if let Err(e) = self.begin(req, Op::Xattr, &[ino.0]) {
            return reply.error(e);
        }
        let r = self.fs.setxattr(caller(req), ino.0, name, value, flags);
        if r.is_ok() {
            self.acl_changed(ino.0, name);
        }
        empty(reply, r)
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if let Err(e) = self.begin(req, Op::Xattr, &[ino.0]) {
            return reply.error(e);
        }
        xattr(reply, size, self.fs.getxattr(ino.0, name))
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if let Err(e) = self.begin(req, Op::Xattr, &[ino.0]) {
            return reply.error(e);
        }
        xattr(reply, size, self.fs.listxattr(ino.0))
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if let Err(e) = self.begin(req, Op::Xattr, &[ino.0]) {
            return reply.error(e);
        }
        let r = self.fs.removexattr(ino.0, name);
        if r.is_ok() {
            self.acl_changed(ino.0, name);
        }
        empty(reply, r)
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if let Err(e) = self.begin(req, Op::Other, &[ino.0]) {
            return reply.error(e);
        }
        // access(2), chdir(2): the kernel asks (no default_permissions).
        empty(reply, self.fs.access(ino.0, mask.bits()))
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        if let Err(e) = self.begin(req, Op::Create, &[parent.0]) {
            return reply.error(e);
        }
        let (e, fh) = match self.fs.create(parent.0, name, mode, umask, flags) {
            Ok(r) => r,
            Err(e) => return reply.error(err(e)),
        };
        let (ttl, a, g, f) = (&TTL, &attr(e.ino, &e.st), Generation(0), FileHandle(fh));
        match self.grant(e.ino, fh, flags, |f| reply.open_backing(f)) {
            (Grant::Passthrough(b) | Grant::PassthroughDirect(b), fl) => {
                reply.created_passthrough(ttl, a, g, f, fl, &b)
            }
            (Grant::Cached | Grant::Direct, fl) => reply.created(ttl, a, g, f, fl),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if let Err(e) = self.begin(req, Op::Other, &[]) {
            return reply.error(e);
        }
        empty(reply, self.fs.fallocate(fh.0, offset, length, mode))
    }

    fn lseek(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        if let Err(e) = self.begin(req, Op::Other, &[]) {
            return reply.error(e);
        }
        match self.fs.lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(err(e)),
        }
    }

    fn ioctl(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        if let Err(e) = self.begin(req, Op::Other, &[]) {
            return reply.error(e);
        }
        match self.fs.flags_ioctl(ino.0, fh.0, cmd, out_size) {
            Some(Ok(data)) => reply.ioctl(0, &data),
            Some(Err(e)) => reply.error(err(e)),
            None => {
                if self.refused_ioctls.first(cmd) {
                    tracing::info!(
                        cmd = format!("{cmd:#x}"),
                        "unsupported ioctl refused (ENOTTY); logged once per command"
                    );
                } else {
                    tracing::debug!(cmd = format!("{cmd:#x}"), "unsupported ioctl refused");
                }
                reply.error(Errno::ENOTTY)
            }
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        if let Err(e) = self.begin(req, Op::Other, &[]) {
            return reply.error(e);
        }
        match self
            .fs
            .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
        {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_first_once() {
        let seen = OncePerKind::default();
        assert!(seen.first(0x5401));
        assert!(!seen.first(0x5401));
        assert!(seen.first(0x5402));
    }
}
