//! hubfs takeover patch: pausing a session's event loops between requests.
//!
//! Not in upstream fuser. A [`SessionPauser`] parks every event loop of a
//! session at the top of its loop, i.e. after the request it was serving has
//! been dispatched and replied to and before it reads the next one, without
//! unmounting and without closing the `/dev/fuse` descriptors. Requests that
//! arrive meanwhile wait in the kernel's queue. [`SessionPauser::resume`]
//! lets the loops go on (a rolled-back handover); a process that handed its
//! connection to another server simply exits while paused.
//!
//! Loops read the device non-blocking and, when it has nothing, `poll` it
//! together with the read end of a pipe that `pause` writes to, so a loop
//! idling in `poll` wakes up to park.

use std::io;
use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use nix::fcntl::FcntlArg;
use nix::fcntl::OFlag;
use nix::fcntl::fcntl;
use parking_lot::Condvar;
use parking_lot::Mutex;

#[derive(Debug, Default)]
struct Counts {
    /// Loops started and not yet ended.
    running: usize,
    /// Of those, loops parked at the gate.
    parked: usize,
}

#[derive(Debug)]
pub(crate) struct Gate {
    paused: AtomicBool,
    counts: Mutex<Counts>,
    changed: Condvar,
    wake_read: OwnedFd,
    wake_write: OwnedFd,
}

/// Sets `O_NONBLOCK` on an open file description.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

impl Gate {
    pub(crate) fn new() -> io::Result<Arc<Self>> {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        Ok(Arc::new(Gate {
            paused: AtomicBool::new(false),
            counts: Mutex::new(Counts::default()),
            changed: Condvar::new(),
            wake_read: r,
            wake_write: w,
        }))
    }

    pub(crate) fn loop_started(&self) {
        self.counts.lock().running += 1;
        self.changed.notify_all();
    }

    pub(crate) fn loop_ended(&self) {
        self.counts.lock().running -= 1;
        self.changed.notify_all();
    }

    /// Called by a loop between requests: parks while the session is paused.
    pub(crate) fn checkpoint(&self) {
        if !self.paused.load(Ordering::Acquire) {
            return;
        }
        let mut c = self.counts.lock();
        c.parked += 1;
        self.changed.notify_all();
        while self.paused.load(Ordering::Acquire) {
            self.changed.wait(&mut c);
        }
        c.parked -= 1;
    }

    /// The descriptor a loop polls beside the device.
    pub(crate) fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake_read.as_fd()
    }

    fn drain(&self) {
        let mut buf = [0u8; 64];
        while matches!(nix::unistd::read(&self.wake_read, &mut buf), Ok(n) if n > 0) {}
    }
}

/// Pauses and resumes the event loops of one session (hubfs takeover patch).
#[derive(Debug, Clone)]
pub struct SessionPauser {
    pub(crate) gate: Arc<Gate>,
}

impl SessionPauser {
    /// Stops every event loop between two requests and waits until all are
    /// parked (or `timeout` passes: `Err(TimedOut)`, and the session is
    /// resumed). Every request a loop had read has been replied to when
    /// this returns `Ok`.
    pub fn pause(&self, timeout: Duration) -> io::Result<()> {
        let g = &self.gate;
        g.paused.store(true, Ordering::Release);
        // The pipe stays readable until resume: loops in poll wake up.
        nix::unistd::write(&g.wake_write, &[1u8])?;
        let deadline = Instant::now() + timeout;
        let mut c = g.counts.lock();
        while c.parked < c.running {
            if g.changed.wait_until(&mut c, deadline).timed_out() && c.parked < c.running {
                drop(c);
                self.resume();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "event loops did not stop between requests in time",
                ));
            }
        }
        Ok(())
    }

    /// Lets paused loops serve again.
    pub fn resume(&self) {
        let g = &self.gate;
        // No loop polls while paused, so draining here loses no wake-up.
        g.drain();
        let _c = g.counts.lock();
        g.paused.store(false, Ordering::Release);
        g.changed.notify_all();
    }

    /// Event loops currently running (parked ones included).
    pub fn loops(&self) -> usize {
        self.gate.counts.lock().running
    }
}
