//! The home layer's one door to the kernel.
//!
//! Every system call the passthrough makes on the backing directory goes
//! through here as a safe function answering [`HomeError`]: thin wrappers
//! over `nix` and `rustix`. The calls neither offers safely
//! (`FS_IOC_FSGETXATTR`, `name_to_handle_at`, `open_by_handle_at`) are the
//! only `unsafe` blocks of the home layer; each carries its SAFETY note. Nothing here decides anything: accounting,
//! permissions and naming rules live with the operations.

use std::cell::Cell;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::time::SystemTime;

use nix::fcntl::{self, AtFlags, OFlag, AT_FDCWD};
use nix::sys::stat::{self, FchmodatFlags, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{self, Gid, Uid, UnlinkatFlags};

use super::error::HomeError;

pub type Result<T> = std::result::Result<T, HomeError>;

/// Attributes of a backing inode, as the kernel gives them.
pub type Stat = libc::stat;

const EMPTY: &CStr = c"";

/// A name inside a directory: not empty, no `/`, no NUL (EINVAL otherwise).
pub fn name(name: &OsStr) -> Result<CString> {
    if name.is_empty() || name.as_bytes().contains(&b'/') {
        return Err(HomeError::Os(libc::EINVAL));
    }
    cstring(name.as_bytes())
}

/// Any other string handed to the kernel (EINVAL if it holds a NUL).
pub fn cstring(bytes: &[u8]) -> Result<CString> {
    CString::new(bytes).map_err(|_| HomeError::Os(libc::EINVAL))
}

/// `/proc/self/fd/N`: reaches the inode of an `O_PATH` descriptor where
/// Linux has no `*at()` form.
pub fn proc_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL in a number")
}

fn oflag(flags: i32) -> OFlag {
    OFlag::from_bits_retain(flags)
}

fn mode(bits: u32) -> Mode {
    Mode::from_bits_truncate(bits & 0o7777)
}

/// Opens a directory by path as an `O_PATH` descriptor.
pub fn open_dir(path: &Path) -> Result<OwnedFd> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    Ok(fcntl::open(path, flags, Mode::empty())?)
}

/// `dir/name` as an `O_PATH` descriptor, not following a final symlink.
pub fn open_path_at(dir: BorrowedFd<'_>, name: &CStr) -> Result<OwnedFd> {
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    Ok(fcntl::openat(dir, name, flags, Mode::empty())?)
}

/// Opens the inode behind an `O_PATH` descriptor for I/O.
pub fn reopen(fd: BorrowedFd<'_>, flags: i32) -> Result<File> {
    let fd = fcntl::open(
        proc_path(fd).as_c_str(),
        oflag(flags) | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

/// `openat(dir, name, flags | O_CREAT, mode)`.
pub fn create_at(dir: BorrowedFd<'_>, name: &CStr, flags: i32, perm: u32) -> Result<File> {
    let flags = oflag(flags) | OFlag::O_CREAT | OFlag::O_CLOEXEC;
    let fd = fcntl::openat(dir, name, flags, mode(perm))?;
    Ok(File::from(fd))
}

/// `lstat` of `dir/name`.
pub fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> Result<Stat> {
    Ok(stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)?)
}

/// `fstat` (works on `O_PATH` descriptors too).
pub fn stat_fd(fd: BorrowedFd<'_>) -> Result<Stat> {
    Ok(stat::fstat(fd)?)
}

pub fn is_dir(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

pub fn is_reg(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
}

/// `fchmod` of an open file.
pub fn chmod_file(file: &File, perm: u32) -> Result<()> {
    Ok(stat::fchmod(file, mode(perm))?)
}

/// `chmod` of the inode behind an `O_PATH` descriptor.
pub fn chmod_inode(fd: BorrowedFd<'_>, perm: u32) -> Result<()> {
    let p = proc_path(fd);
    Ok(stat::fchmodat(
        AT_FDCWD,
        p.as_c_str(),
        mode(perm),
        FchmodatFlags::FollowSymlink,
    )?)
}

/// `lchown` of the inode behind an `O_PATH` descriptor.
pub fn chown_inode(fd: BorrowedFd<'_>, uid: Option<u32>, gid: Option<u32>) -> Result<()> {
    Ok(unistd::fchownat(
        fd,
        EMPTY,
        uid.map(Uid::from_raw),
        gid.map(Gid::from_raw),
        AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW,
    )?)
}

/// A time to set: a specific one, now, or unchanged.
#[derive(Debug, Clone, Copy)]
pub enum SetTime {
    Omit,
    Now,
    At(SystemTime),
}

fn timespec(t: SetTime) -> TimeSpec {
    match t {
        SetTime::Omit => TimeSpec::UTIME_OMIT,
        SetTime::Now => TimeSpec::UTIME_NOW,
        SetTime::At(t) => {
            let (sec, nsec) = match t.duration_since(SystemTime::UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i64),
                Err(e) => {
                    let d = e.duration();
                    let (s, n) = (-(d.as_secs() as i64), d.subsec_nanos() as i64);
                    if n == 0 {
                        (s, 0)
                    } else {
                        (s - 1, 1_000_000_000 - n)
                    }
                }
            };
            TimeSpec::new(sec, nsec)
        }
    }
}

/// `futimens` of an open file.
pub fn set_times_file(file: &File, atime: SetTime, mtime: SetTime) -> Result<()> {
    Ok(stat::futimens(file, &timespec(atime), &timespec(mtime))?)
}

/// `utimensat` of the inode behind an `O_PATH` descriptor.
pub fn set_times_inode(fd: BorrowedFd<'_>, atime: SetTime, mtime: SetTime) -> Result<()> {
    let p = proc_path(fd);
    Ok(stat::utimensat(
        AT_FDCWD,
        p.as_c_str(),
        &timespec(atime),
        &timespec(mtime),
        UtimensatFlags::FollowSymlink,
    )?)
}

pub fn truncate(file: &File, size: u64) -> Result<()> {
    let size = i64::try_from(size).map_err(|_| HomeError::Os(libc::EFBIG))?;
    Ok(unistd::ftruncate(file, size)?)
}

/// The target of the symlink behind an `O_PATH` descriptor.
pub fn readlink(fd: BorrowedFd<'_>) -> Result<Vec<u8>> {
    Ok(fcntl::readlinkat(fd, EMPTY)?.into_vec())
}

pub fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, perm: u32) -> Result<()> {
    Ok(stat::mkdirat(dir, name, mode(perm))?)
}

/// `mknodat` of a fifo, socket, device or regular file (`mode` holds the type).
pub fn mknod_at(dir: BorrowedFd<'_>, name: &CStr, full_mode: u32, rdev: u64) -> Result<()> {
    let kind = SFlag::from_bits_truncate(full_mode & libc::S_IFMT);
    Ok(stat::mknodat(dir, name, kind, mode(full_mode), rdev)?)
}

pub fn symlink_at(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> Result<()> {
    Ok(unistd::symlinkat(target, dir, name)?)
}

/// A new name `dir/name` for the inode behind an `O_PATH` descriptor,
/// through its `/proc/self/fd` link (`AT_SYMLINK_FOLLOW` follows that link,
/// not a symlink the inode might be): `AT_EMPTY_PATH` would need
/// CAP_DAC_READ_SEARCH, which a caller's request does not have. The
/// kernel's hard-link rules (`fs.protected_hardlinks`) judge the caller.
pub fn link_at(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &CStr) -> Result<()> {
    let p = proc_path(fd);
    Ok(unistd::linkat(
        AT_FDCWD,
        p.as_c_str(),
        dir,
        name,
        AtFlags::AT_SYMLINK_FOLLOW,
    )?)
}

pub fn unlink_at(dir: BorrowedFd<'_>, name: &CStr, directory: bool) -> Result<()> {
    let flag = match directory {
        true => UnlinkatFlags::RemoveDir,
        false => UnlinkatFlags::NoRemoveDir,
    };
    Ok(unistd::unlinkat(dir, name, flag)?)
}

/// `renameat2` with the caller's flags (RENAME_NOREPLACE, RENAME_EXCHANGE...).
pub fn rename_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
    flags: u32,
) -> Result<()> {
    let flags = fcntl::RenameFlags::from_bits_retain(flags);
    Ok(fcntl::renameat2(dir, name, newdir, newname, flags)?)
}

pub fn pread(file: &File, buf: &mut [u8], offset: u64) -> Result<usize> {
    let offset = i64::try_from(offset).map_err(|_| HomeError::Os(libc::EINVAL))?;
    Ok(nix::sys::uio::pread(file, buf, offset)?)
}

pub fn pwrite(file: &File, data: &[u8], offset: u64) -> Result<usize> {
    let offset = i64::try_from(offset).map_err(|_| HomeError::Os(libc::EFBIG))?;
    Ok(nix::sys::uio::pwrite(file, data, offset)?)
}

pub fn fallocate(file: &File, mode: i32, offset: u64, length: u64) -> Result<()> {
    let off = i64::try_from(offset).map_err(|_| HomeError::Os(libc::EFBIG))?;
    let len = i64::try_from(length).map_err(|_| HomeError::Os(libc::EFBIG))?;
    let mode = fcntl::FallocateFlags::from_bits_retain(mode);
    Ok(fcntl::fallocate(file, mode, off, len)?)
}

/// Whether the backing filesystem takes a file of `end` bytes: EFBIG past
/// its maximum file size. Asks with a hole punched past the end of the file
/// (the kernel checks the size before the filesystem acts, and there is
/// nothing there to punch), so no data can change.
pub fn size_allowed(file: &File, end: u64) -> Result<()> {
    if end == 0 {
        return Ok(());
    }
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    match fallocate(file, mode, end - 1, 1) {
        Err(HomeError::Os(libc::EFBIG)) => Err(HomeError::Os(libc::EFBIG)),
        _ => Ok(()),
    }
}

pub fn copy_file_range(
    from: &File,
    off_in: u64,
    to: &File,
    off_out: u64,
    len: u64,
) -> Result<usize> {
    let mut oi = i64::try_from(off_in).map_err(|_| HomeError::Os(libc::EINVAL))?;
    let mut oo = i64::try_from(off_out).map_err(|_| HomeError::Os(libc::EFBIG))?;
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    Ok(fcntl::copy_file_range(
        from,
        Some(&mut oi),
        to,
        Some(&mut oo),
        len,
    )?)
}

pub fn lseek(file: &File, offset: i64, whence: i32) -> Result<i64> {
    use nix::unistd::Whence;
    let whence = match whence {
        libc::SEEK_SET => Whence::SeekSet,
        libc::SEEK_CUR => Whence::SeekCur,
        libc::SEEK_END => Whence::SeekEnd,
        libc::SEEK_DATA => Whence::SeekData,
        libc::SEEK_HOLE => Whence::SeekHole,
        _ => return Err(HomeError::Os(libc::EINVAL)),
    };
    Ok(unistd::lseek(file, offset, whence)?)
}

pub fn sync(file: &File, datasync: bool) -> Result<()> {
    match datasync {
        true => Ok(unistd::fdatasync(file)?),
        false => Ok(unistd::fsync(file)?),
    }
}

/// Closes a duplicate of `file`, so that errors a network filesystem
/// defers to `close` (NFS: ENOSPC, EDQUOT, EIO) are seen now.
pub fn close_duplicate(file: &File) -> Result<()> {
    Ok(unistd::close(unistd::dup(file)?)?)
}

/// Figures of the filesystem under a descriptor (`fstatvfs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsFigures {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub favail: u64,
    pub bsize: u64,
    pub frsize: u64,
    pub namemax: u64,
}

pub fn statvfs(fd: BorrowedFd<'_>) -> Result<FsFigures> {
    let s = nix::sys::statvfs::fstatvfs(fd)?;
    Ok(FsFigures {
        blocks: s.blocks(),
        bfree: s.blocks_free(),
        bavail: s.blocks_available(),
        files: s.files(),
        ffree: s.files_free(),
        favail: s.files_available(),
        bsize: s.block_size(),
        frsize: s.fragment_size(),
        namemax: s.name_max(),
    })
}

/// One directory entry as the backing filesystem lists it.
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub ino: u64,
    pub kind: u8,
    pub name: OsString,
}

/// Lists the directory behind an `O_PATH` descriptor, `.` and `..` included.
pub fn list_dir(fd: BorrowedFd<'_>) -> Result<Vec<RawEntry>> {
    use nix::dir::{Dir, Type as T};
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut dir = Dir::open(proc_path(fd).as_c_str(), flags, Mode::empty())?;
    let mut out = Vec::new();
    for e in dir.iter() {
        let e = e?;
        let kind = match e.file_type() {
            Some(T::Directory) => libc::DT_DIR,
            Some(T::File) => libc::DT_REG,
            Some(T::Symlink) => libc::DT_LNK,
            Some(T::Fifo) => libc::DT_FIFO,
            Some(T::Socket) => libc::DT_SOCK,
            Some(T::CharacterDevice) => libc::DT_CHR,
            Some(T::BlockDevice) => libc::DT_BLK,
            None => libc::DT_UNKNOWN,
        };
        out.push(RawEntry {
            ino: e.ino(),
            kind,
            name: OsString::from_vec(e.file_name().to_bytes().to_vec()),
        });
    }
    Ok(out)
}

/// Bytes of one `getdents` batch (some hundred entries).
const DIR_BATCH: usize = 8192;

/// The next batch of entries of the open directory `dir` (one `getdents`;
/// empty at its end), each with the directory's position after it
/// (`d_off`, what `lseek` takes back).
pub fn read_dir_batch(dir: BorrowedFd<'_>) -> Result<Vec<(RawEntry, u64)>> {
    use rustix::fs::{FileType as T, RawDir};
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); DIR_BATCH];
    let mut raw = RawDir::new(dir, &mut buf);
    let mut out = Vec::new();
    while let Some(e) = raw.next() {
        let e = e?;
        let kind = match e.file_type() {
            T::Directory => libc::DT_DIR,
            T::RegularFile => libc::DT_REG,
            T::Symlink => libc::DT_LNK,
            T::Fifo => libc::DT_FIFO,
            T::Socket => libc::DT_SOCK,
            T::CharacterDevice => libc::DT_CHR,
            T::BlockDevice => libc::DT_BLK,
            _ => libc::DT_UNKNOWN,
        };
        out.push((
            RawEntry {
                ino: e.ino(),
                kind,
                name: OsString::from_vec(e.file_name().to_bytes().to_vec()),
            },
            e.next_entry_cookie(),
        ));
        // One batch: stop before the next `getdents`.
        if raw.is_buffer_empty() {
            break;
        }
    }
    Ok(out)
}

/// Largest extended attribute value or name list read at once.
const XATTR_MAX: usize = 64 * 1024;

pub fn get_xattr(fd: BorrowedFd<'_>, name: &CStr) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; XATTR_MAX];
    let n = rustix::fs::getxattr(proc_path(fd).as_c_str(), name, &mut buf[..])?;
    buf.truncate(n);
    Ok(buf)
}

pub fn set_xattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8], flags: i32) -> Result<()> {
    let flags = rustix::fs::XattrFlags::from_bits_retain(flags as u32);
    Ok(rustix::fs::setxattr(
        proc_path(fd).as_c_str(),
        name,
        value,
        flags,
    )?)
}

pub fn list_xattr(fd: BorrowedFd<'_>) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; XATTR_MAX];
    let n = rustix::fs::listxattr(proc_path(fd).as_c_str(), &mut buf[..])?;
    buf.truncate(n);
    Ok(buf)
}

pub fn remove_xattr(fd: BorrowedFd<'_>, name: &CStr) -> Result<()> {
    Ok(rustix::fs::removexattr(proc_path(fd).as_c_str(), name)?)
}

/// A file handle (`name_to_handle_at`): an inode's identity on its
/// filesystem, which opens it again after every descriptor of it closed
/// (`open_by_handle_at`; ESTALE once the inode is gone). It carries the
/// inode's generation, so a reused inode number has another handle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileHandle {
    kind: i32,
    bytes: Box<[u8]>,
}

/// `MAX_HANDLE_SZ` of `<linux/exportfs.h>`.
const MAX_HANDLE_SZ: usize = 128;

/// `struct file_handle` with room for the largest handle.
#[repr(C)]
struct RawHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_HANDLE_SZ],
}

impl FileHandle {
    /// The handle as bytes (type, then the opaque handle), for a takeover.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = self.kind.to_ne_bytes().to_vec();
        v.extend_from_slice(&self.bytes);
        v
    }

    /// Back from [`Self::to_bytes`].
    pub fn from_bytes(b: &[u8]) -> Option<FileHandle> {
        let (kind, bytes) = b.split_first_chunk::<4>()?;
        (bytes.len() <= MAX_HANDLE_SZ).then(|| FileHandle {
            kind: i32::from_ne_bytes(*kind),
            bytes: bytes.into(),
        })
    }
}

/// The file handle of `dir/name` (not following a final symlink), or of
/// the inode behind `dir` itself when `name` is empty.
pub fn handle_at(dir: BorrowedFd<'_>, name: &CStr) -> Result<FileHandle> {
    let mut raw = RawHandle {
        handle_bytes: MAX_HANDLE_SZ as u32,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    let flags = match name.is_empty() {
        true => libc::AT_EMPTY_PATH,
        false => 0,
    };
    // SAFETY: `raw` is a `struct file_handle` whose `handle_bytes` says how
    // much room follows (MAX_HANDLE_SZ bytes, the kernel's maximum); the
    // kernel writes at most that into it and the mount id into `mount_id`,
    // both valid and exclusively borrowed for the call; `name` is a valid
    // C string and `dir` an open descriptor for the call's length.
    let r = unsafe {
        libc::name_to_handle_at(
            dir.as_raw_fd(),
            name.as_ptr(),
            (&mut raw as *mut RawHandle).cast::<libc::file_handle>(),
            &mut mount_id,
            flags,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let n = (raw.handle_bytes as usize).min(MAX_HANDLE_SZ);
    Ok(FileHandle {
        kind: raw.handle_type,
        bytes: raw.f_handle[..n].into(),
    })
}

/// Opens the inode of handle `h` on the filesystem of `mount` as an
/// `O_PATH` descriptor (needs CAP_DAC_READ_SEARCH).
pub fn open_handle(mount: BorrowedFd<'_>, h: &FileHandle) -> Result<OwnedFd> {
    let mut raw = RawHandle {
        handle_bytes: h.bytes.len() as u32,
        handle_type: h.kind,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    raw.f_handle[..h.bytes.len()].copy_from_slice(&h.bytes);
    let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `raw` is a valid `struct file_handle` (its `handle_bytes`
    // within the buffer that follows), only read by the kernel; `mount` is
    // an open descriptor for the call's length. The result, when not
    // negative, is a new descriptor this process owns alone.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            (&mut raw as *mut RawHandle).cast::<libc::file_handle>(),
            flags,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: `fd` was just returned by the kernel, open, and owned by
    // nothing else.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// `FS_IOC_GETFLAGS`: the inode flags (`lsattr`) of an open file.
pub fn inode_flags(file: &File) -> Result<u32> {
    Ok(rustix::fs::ioctl_getflags(file)?.bits())
}

/// `struct fsxattr` of `<linux/fs.h>`, as `FS_IOC_FSGETXATTR` fills it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsXattr {
    pub xflags: u32,
    pub extsize: u32,
    pub nextents: u32,
    pub projid: u32,
    pub cowextsize: u32,
    pub pad: [u8; 8],
}

/// `_IOR('X', 31, struct fsxattr)`.
pub const FS_IOC_FSGETXATTR: u32 = 0x801c_581f;

impl FsXattr {
    /// The structure as the kernel lays it out (native byte order).
    pub fn to_bytes(self) -> [u8; 28] {
        let mut b = [0u8; 28];
        for (i, v) in [
            self.xflags,
            self.extsize,
            self.nextents,
            self.projid,
            self.cowextsize,
        ]
        .into_iter()
        .enumerate()
        {
            b[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
        }
        b[20..].copy_from_slice(&self.pad);
        b
    }
}

/// `FS_IOC_FSGETXATTR`: the extended inode flags and project of an open file.
pub fn fs_xattr(file: &File) -> Result<FsXattr> {
    let mut x = FsXattr::default();
    // SAFETY: FS_IOC_FSGETXATTR writes exactly one `struct fsxattr` (28
    // bytes, the layout of `FsXattr`, checked by a test) through the
    // pointer, which is valid and exclusively borrowed for the call; the
    // descriptor is open for the life of `file`.
    let r = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            FS_IOC_FSGETXATTR as _,
            &mut x as *mut FsXattr,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(x)
}

/// The path of the inode behind a descriptor, as `/proc/self/fd` spells it
/// (ENAMETOOLONG past what the kernel spells out).
pub fn fd_path(fd: BorrowedFd<'_>) -> Result<OsString> {
    let p = proc_path(fd);
    Ok(fcntl::readlink(p.as_c_str())?)
}

/// Whether this thread's credentials may walk from directory `root` down
/// `rel` (a path below it, no leading `/`): opens it `O_PATH` (which needs
/// nothing of the final inode) beneath `root` without following symlinks
/// or leaving the filesystem, and closes it again.
pub fn reach_beneath(root: BorrowedFd<'_>, rel: &[u8]) -> Result<()> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let rel = cstring(rel)?;
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_XDEV;
    rustix::fs::openat2(root, rel.as_c_str(), flags, Mode::empty(), how)?;
    Ok(())
}

/// Whether this thread's credentials (the caller's) may access the inode
/// behind an `O_PATH` descriptor for `mode` (`R_OK`, `W_OK`, `X_OK`, or
/// `F_OK`): `faccessat` with `AT_EACCESS`, so the effective ids decide,
/// not the server's real ones.
pub fn access(fd: BorrowedFd<'_>, mode: i32) -> Result<()> {
    let p = proc_path(fd);
    let mode = rustix::fs::Access::from_bits_retain(mode as u32);
    Ok(rustix::fs::accessat(
        rustix::fs::CWD,
        p.as_c_str(),
        mode,
        rustix::fs::AtFlags::EACCESS,
    )?)
}

thread_local! {
    /// This thread has its own umask (see [`with_umask`]); the last one set.
    static OWN_UMASK: Cell<Option<u32>> = const { Cell::new(None) };
}

/// Runs `f` with `umask` as this thread's umask, so that the backing
/// filesystem applies it exactly where a native one would: not below a
/// directory with a default ACL, which decides the modes instead. The first
/// call on a thread gives it its own umask (`unshare(CLONE_FS)`: the umask,
/// working and root directory become per thread); the daemon's other
/// threads are not affected.
pub fn with_umask<T>(umask: u32, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let umask = umask & 0o777;
    let last = OWN_UMASK.with(Cell::get);
    if last.is_none() {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
    }
    if last != Some(umask) {
        stat::umask(mode(umask));
        OWN_UMASK.with(|c| c.set(Some(umask)));
    }
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsxattr_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<FsXattr>(), 28);
        // _IOR('X', 31, 28 bytes): read direction, size 28, type 'X', number 31
        let ior = (2u32 << 30) | (28 << 16) | ((b'X' as u32) << 8) | 31;
        assert_eq!(FS_IOC_FSGETXATTR, ior);
        let x = FsXattr {
            xflags: 1,
            projid: 7,
            ..Default::default()
        };
        let b = x.to_bytes();
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()), 1);
        assert_eq!(u32::from_ne_bytes(b[12..16].try_into().unwrap()), 7);
    }

    #[test]
    fn names_with_a_slash_or_nul_are_refused() {
        for bad in ["", "a/b", "a\0b"] {
            assert_eq!(
                name(OsStr::new(bad)).unwrap_err(),
                HomeError::Os(libc::EINVAL)
            );
        }
        assert!(name(OsStr::new("ok ünïcode")).is_ok());
    }

    #[test]
    fn a_size_past_the_filesystem_maximum_is_efbig() {
        let t = tempfile::tempdir().unwrap();
        let f = File::create(t.path().join("f")).unwrap();
        assert_eq!(size_allowed(&f, 4096), Ok(()));
        assert_eq!(size_allowed(&f, u64::MAX), Err(HomeError::Os(libc::EFBIG)));
        assert_eq!(f.metadata().unwrap().len(), 0, "nothing changed");
    }
}
