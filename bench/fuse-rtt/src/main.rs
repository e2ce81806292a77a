//! The round trip of one FUSE request that does nothing, through the two
//! transports the kernel offers a server: `read`/`writev` on `/dev/fuse`
//! (what fuser, libfuse and hubfs use) and FUSE over io_uring (Linux ≥ 6.14,
//! `/sys/module/fuse/parameters/enable_uring`). A minimal server mounts an
//! empty directory, answers GETXATTR with ENODATA, and the same process
//! times `getxattr(2)` on the mount root (medians of several rounds). The
//! answer to "would a cheaper transport bring the home layer's metadata
//! steps near native?" (docs/home.md, issue 14).
//!
//!   fuse-rtt MOUNTPOINT read|uring [--threads N]   (mounts, serves, times)
//!   fuse-rtt PATH client                           (times getxattr on PATH
//!                                                   only: a native directory,
//!                                                   a hubfs home)

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static BY_READ: AtomicU64 = AtomicU64::new(0);
static BY_RING: AtomicU64 = AtomicU64::new(0);
static BY_RING_B: AtomicU64 = AtomicU64::new(0);
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use io_uring::{cqueue, opcode, squeue, types, IoUring};

#[derive(Parser)]
#[command(about = "The round trip of a no-op FUSE request, by transport")]
struct Args {
    /// Where to mount the minimal server (read, uring), or what to time (client).
    path: String,
    mode: Mode,
    /// Threads reading /dev/fuse (read mode; uring mode has one reader beside its rings).
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Handover: send FUSE_NOTIFY_RESEND once the first ring set has closed.
    #[arg(long)]
    resend: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// A minimal server over /dev/fuse read/writev.
    Read,
    /// A minimal server over FUSE-over-io_uring (one ring per CPU).
    Uring,
    /// No server: time getxattr on PATH.
    Client,
    /// io_uring rings handed from one set to another while a client calls
    /// without pause: does a request get lost (the client hangs)?
    Handover,
}

const FUSE_LOOKUP: u32 = 1;
const FUSE_GETATTR: u32 = 3;
const FUSE_GETXATTR: u32 = 22;
const FUSE_INIT: u32 = 26;
const FUSE_DESTROY: u32 = 38;
const FUSE_INIT_EXT: u32 = 1 << 30;
const FUSE_OVER_IO_URING_HI: u32 = 1 << (41 - 32);
const IN_HEADER: usize = 40;
const MAX_WRITE: u32 = 128 << 10;
const PAYLOAD: usize = 256 << 10;
const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;
const ENTRIES_PER_QUEUE: usize = 2;

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// The reply to a request: (error, body).
fn answer(opcode: u32, nodeid: u64) -> (i32, Vec<u8>) {
    match opcode {
        FUSE_GETATTR if nodeid == 1 => {
            let mut a = vec![0u8; 104];
            a[0..8].copy_from_slice(&3600u64.to_le_bytes()); // attr_valid
            let attr = &mut a[16..];
            attr[0..8].copy_from_slice(&1u64.to_le_bytes()); // ino
            attr[60..64].copy_from_slice(&(libc::S_IFDIR | 0o755).to_le_bytes()); // mode
            attr[64..68].copy_from_slice(&2u32.to_le_bytes()); // nlink
            attr[80..84].copy_from_slice(&4096u32.to_le_bytes()); // blksize
            (0, a)
        }
        FUSE_GETXATTR => (-libc::ENODATA, vec![]),
        FUSE_LOOKUP => (-libc::ENOENT, vec![]),
        _ => (-libc::ENOSYS, vec![]),
    }
}

fn out_header(len: usize, error: i32, unique: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    h[4..8].copy_from_slice(&error.to_le_bytes());
    h[8..16].copy_from_slice(&unique.to_le_bytes());
    h
}

fn write_reply(fd: RawFd, unique: u64, error: i32, body: &[u8]) {
    let h = out_header(16 + body.len(), error, unique);
    let iov = [
        libc::iovec {
            iov_base: h.as_ptr() as *mut _,
            iov_len: 16,
        },
        libc::iovec {
            iov_base: body.as_ptr() as *mut _,
            iov_len: body.len(),
        },
    ];
    // SAFETY: both iovecs point to live buffers of the given lengths.
    unsafe { libc::writev(fd, iov.as_ptr(), if body.is_empty() { 1 } else { 2 }) };
}

/// Serves the device with read/writev until it goes away (or DESTROY).
fn serve_read(fd: RawFd, stop: Arc<AtomicBool>) {
    let mut buf = vec![0u8; MAX_WRITE as usize + 4096];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: buf is a live buffer of its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR | libc::ENOENT | libc::EAGAIN) => continue,
                _ => return,
            }
        }
        let b = &buf[..n as usize];
        let (op, unique, nodeid) = (u32_at(b, 4), u64_at(b, 8), u64_at(b, 16));
        if op == FUSE_DESTROY {
            return;
        }
        BY_READ.fetch_add(1, Ordering::Relaxed);
        if op == 2 || op == 42 {
            continue; // FORGET, BATCH_FORGET: no reply
        }
        let (e, body) = answer(op, nodeid);
        write_reply(fd, unique, e, &body);
    }
}

/// One ring entry: the header block and payload the kernel fills.
struct Entry {
    header: Box<[u8; 288]>,
    payload: Vec<u8>,
    iov: Box<[libc::iovec; 2]>,
}

fn cmd(commit_id: u64, qid: u16) -> [u8; 80] {
    let mut c = [0u8; 80];
    c[8..16].copy_from_slice(&commit_id.to_le_bytes());
    c[16..18].copy_from_slice(&qid.to_le_bytes());
    c
}

/// An SQE for a FUSE uring command; `iov` set on registration (addr, len 2).
fn sqe(
    fd: RawFd,
    op: u32,
    c: [u8; 80],
    iov: Option<&[libc::iovec; 2]>,
    tag: u64,
) -> squeue::Entry128 {
    let mut b = opcode::UringCmd80::new(types::Fd(fd), op).cmd(c);
    if let Some(iov) = iov {
        b = b.addr(Some(iov.as_ptr() as u64));
    }
    let e = b.build().user_data(tag);
    // SAFETY: Entry128 is repr(C), 128 bytes (the kernel's io_uring_sqe
    // with its 64-byte extension); the crate has no setter for `len`
    // (offset 24), which a FUSE registration needs (two iovecs).
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(e) };
    if iov.is_some() {
        raw[24..28].copy_from_slice(&2u32.to_le_bytes());
    }
    unsafe { std::mem::transmute(raw) }
}

/// Serves queue `qid` (requests from tasks on CPU `qid`) over io_uring.
fn serve_uring(
    fd: RawFd,
    qid: u16,
    stop: Arc<AtomicBool>,
    served: &'static AtomicU64,
) -> std::io::Result<()> {
    // SAFETY: a cpu_set_t of zeros with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(qid as usize, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
    let mut ring: IoUring<squeue::Entry128, cqueue::Entry> = IoUring::builder().build(16)?;
    let mut ents: Vec<Entry> = (0..ENTRIES_PER_QUEUE)
        .map(|_| {
            let mut header = Box::new([0u8; 288]);
            let mut payload = vec![0u8; PAYLOAD];
            let iov = Box::new([
                libc::iovec {
                    iov_base: header.as_mut_ptr().cast(),
                    iov_len: 288,
                },
                libc::iovec {
                    iov_base: payload.as_mut_ptr().cast(),
                    iov_len: PAYLOAD,
                },
            ]);
            Entry {
                header,
                payload,
                iov,
            }
        })
        .collect();
    for (i, e) in ents.iter().enumerate() {
        let s = sqe(fd, CMD_REGISTER, cmd(0, qid), Some(&e.iov), i as u64);
        // SAFETY: the entry's buffers live as long as the ring (this function).
        unsafe { ring.submission().push(&s).unwrap() };
    }
    ring.submit()?;
    // Waits time out every 10 ms so a stop is seen; a stopping ring answers
    // what it holds (each answer re-arms its entry) and closes at once.
    let ts = types::Timespec::new().nsec(10_000_000);
    let wait = types::SubmitArgs::new().timespec(&ts);
    loop {
        if stop.load(Ordering::Relaxed) {
            ring.submit()?;
            return Ok(());
        }
        match ring.submitter().submit_with_args(1, &wait) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::ETIME)) => continue,
            Err(e) => return Err(e),
        }
        let done: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (tag, res) in done {
            if res < 0 {
                return Err(std::io::Error::from_raw_os_error(-res));
            }
            let e = &mut ents[tag as usize];
            let h = &e.header[..];
            let (op, unique, nodeid) = (u32_at(h, 4), u64_at(h, 8), u64_at(h, 16));
            let commit_id = u64_at(h, 256 + 8);
            served.fetch_add(1, Ordering::Relaxed);
            let (err, body) = answer(op, nodeid);
            e.payload[..body.len()].copy_from_slice(&body);
            let oh = out_header(16 + body.len(), err, unique);
            e.header[..16].copy_from_slice(&oh);
            e.header[256 + 16..256 + 20].copy_from_slice(&(body.len() as u32).to_le_bytes());
            let s = sqe(fd, CMD_COMMIT_AND_FETCH, cmd(commit_id, qid), None, tag);
            // SAFETY: as above.
            unsafe { ring.submission().push(&s).unwrap() };
        }
    }
}

/// The device minor of the FUSE mount at `mnt`, from /proc/self/mountinfo.
fn fuse_minor(mnt: &str) -> Option<u32> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let line = info.lines().find(|l| l.split(' ').nth(4) == Some(mnt))?;
    line.split(' ').nth(2)?.split(':').nth(1)?.parse().ok()
}

fn rtt(path: &CString) -> f64 {
    let name = CString::new("user.fuse-rtt-unset").unwrap();
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let n = 20_000;
            let t = Instant::now();
            for _ in 0..n {
                // SAFETY: valid C strings, a null buffer of size 0.
                unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
            }
            t.elapsed().as_secs_f64() / n as f64 * 1e6
        })
        .collect();
    runs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    runs[2]
}

fn main() -> std::io::Result<()> {
    let Args {
        path: mnt,
        mode,
        threads,
        resend,
    } = Args::parse();
    let name = match mode {
        Mode::Read => "read",
        Mode::Uring => "uring",
        Mode::Client => "client",
        Mode::Handover => "handover",
    };
    if mode == Mode::Client {
        let us = rtt(&CString::new(mnt.as_str()).unwrap());
        println!("client: {us:.2} us per getxattr of an unset name (median of 5 x 20,000)");
        return Ok(());
    }
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let dev: OwnedFd = dev.into();
    let fd = dev.as_raw_fd();
    let opts = CString::new(format!(
        "fd={fd},rootmode=40755,user_id=0,group_id=0,allow_other"
    ))
    .unwrap();
    let target = CString::new(mnt.as_str()).unwrap();
    // SAFETY: valid C strings.
    let r = unsafe {
        libc::mount(
            c"fuse-rtt".as_ptr(),
            target.as_ptr(),
            c"fuse.fuse-rtt".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            opts.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // INIT, by read/writev.
    let mut buf = vec![0u8; MAX_WRITE as usize + 4096];
    loop {
        // SAFETY: live buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        assert!(n > 0, "read INIT: {}", std::io::Error::last_os_error());
        let b = &buf[..n as usize];
        if u32_at(b, 4) != FUSE_INIT {
            let (e, body) = answer(u32_at(b, 4), u64_at(b, 16));
            write_reply(fd, u64_at(b, 8), e, &body);
            continue;
        }
        let minor = u32_at(b, IN_HEADER + 4).min(42);
        let mut o = vec![0u8; 64];
        o[0..4].copy_from_slice(&7u32.to_le_bytes());
        o[4..8].copy_from_slice(&minor.to_le_bytes());
        o[8..12].copy_from_slice(&(128u32 << 10).to_le_bytes());
        o[12..16].copy_from_slice(&FUSE_INIT_EXT.to_le_bytes());
        o[16..18].copy_from_slice(&16u16.to_le_bytes());
        o[18..20].copy_from_slice(&12u16.to_le_bytes());
        o[20..24].copy_from_slice(&MAX_WRITE.to_le_bytes());
        o[24..28].copy_from_slice(&1u32.to_le_bytes());
        o[28..30].copy_from_slice(&32u16.to_le_bytes());
        let f2 = if matches!(mode, Mode::Uring | Mode::Handover) {
            FUSE_OVER_IO_URING_HI
        } else {
            0
        };
        o[32..36].copy_from_slice(&f2.to_le_bytes());
        write_reply(fd, u64_at(b, 8), 0, &o);
        break;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for _ in 0..threads {
        let s = stop.clone();
        // The device reader: all requests in read mode; forgets,
        // interrupts (and anything before the rings are ready) in uring mode.
        handles.push(std::thread::spawn(move || serve_read(fd, s)));
        if mode == Mode::Uring {
            break;
        }
    }
    let cpus = std::thread::available_parallelism()?.get() as u16;
    let rings = |stop: &Arc<AtomicBool>, served: &'static AtomicU64| {
        (0..cpus)
            .map(|q| {
                let s = stop.clone();
                std::thread::spawn(move || {
                    if let Err(e) = serve_uring(fd, q, s.clone(), served) {
                        if !s.load(Ordering::Relaxed) {
                            eprintln!("queue {q}: {e}");
                        }
                    }
                })
            })
            .collect::<Vec<_>>()
    };
    if mode == Mode::Uring {
        handles.extend(rings(&stop, &BY_RING));
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    if mode == Mode::Handover {
        // Ring set A serves; a client calls getxattr without pause; set B
        // registers beside A; A answers what it holds and closes its ring.
        let stop_a = Arc::new(AtomicBool::new(false));
        let a = rings(&stop_a, &BY_RING);
        std::thread::sleep(std::time::Duration::from_millis(300));
        eprintln!("handover: ring set A up");
        let calls = Arc::new(AtomicU64::new(0));
        let (c, done, path) = (calls.clone(), stop.clone(), target.clone());
        std::thread::spawn(move || {
            let name = CString::new("user.fuse-rtt-unset").unwrap();
            while !done.load(Ordering::Relaxed) {
                // SAFETY: valid C strings, a null buffer of size 0.
                unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
                c.fetch_add(1, Ordering::Relaxed);
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        handles.extend(rings(&stop, &BY_RING_B));
        std::thread::sleep(std::time::Duration::from_millis(300));
        eprintln!("handover: ring set B up; stopping A");
        stop_a.store(true, Ordering::Relaxed);
        for t in a {
            t.join().unwrap();
        }
        eprintln!("handover: ring set A closed");
        if resend {
            // FUSE_NOTIFY_RESEND (7, protocol 7.40): the kernel puts the
            // requests a server has taken but not answered back in the queue.
            let h = out_header(16, 7, 0);
            // SAFETY: a live 16-byte buffer.
            let n = unsafe { libc::write(fd, h.as_ptr().cast(), 16) };
            eprintln!(
                "handover: FUSE_NOTIFY_RESEND: {}",
                if n == 16 {
                    "accepted".to_string()
                } else {
                    std::io::Error::last_os_error().to_string()
                }
            );
        }
        let a_total = BY_RING.load(Ordering::Relaxed);
        // Does the client still make progress, served by B alone?
        let before = calls.load(Ordering::Relaxed);
        std::thread::sleep(std::time::Duration::from_secs(2));
        let after = calls.load(Ordering::Relaxed);
        println!(
            "handover: ring set A served {a_total} (then closed), set B {} so far; \
             client calls in the 2 s after A closed: {} ({}); by read {}",
            BY_RING_B.load(Ordering::Relaxed),
            after - before,
            if after > before {
                "progress"
            } else {
                "HUNG: a request was lost with ring A"
            },
            BY_READ.load(Ordering::Relaxed),
        );
        stop.store(true, Ordering::Relaxed);
        if after == before {
            // A lost request never completes: abort the connection so the
            // waiting client (and this process) can end.
            // The connection's number is the mount's device minor, read
            // from mountinfo (a stat of the hung mount could hang too).
            if let Some(minor) = fuse_minor(&mnt) {
                let _ = std::fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), "1");
            }
        }
        // SAFETY: valid C string.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        std::process::exit(if after > before { 0 } else { 3 });
    }
    let us = rtt(&target);
    println!(
        "{name} threads={threads}: {us:.2} us per no-op getxattr (median of 5 x 20,000); requests served by read {} by ring {}",
        BY_READ.load(Ordering::Relaxed),
        BY_RING.load(Ordering::Relaxed)
    );
    stop.store(true, Ordering::Relaxed);
    // SAFETY: valid C string.
    unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    drop(dev);
    std::process::exit(0);
}
