//! Live takeover of a bucket mount: the old server's control socket and
//! the new server's side (see [`crate::handoff`] for the wire and
//! [`super::fs::handoff`] for the state).
//!
//! The adapter answers each request on a tokio task, so parking fuser's
//! loops does not drain it: after parking, the old server also waits until
//! the adapter's in-flight count is 0, then exports. An open upload refuses
//! the takeover (the old server serves on; the caller retries later).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::SessionPauser;

use super::fs::handoff::S3State;
use super::fs::S3Fs;
use super::store::ObjectStore;
use crate::handoff::{self as wire, HandoffError, HANDOVER_TIMEOUT};

/// What the old server needs to hand its mount over, shared with the
/// control thread.
pub struct Handover<S> {
    pub fs: Arc<S3Fs<S>>,
    pub in_flight: Arc<AtomicUsize>,
    pub pauser: SessionPauser,
    pub proto: (u32, u32),
    /// A duplicate of the session's `/dev/fuse` descriptor.
    pub dev: OwnedFd,
    /// Set for good once a new server serves.
    pub done: AtomicBool,
}

impl<S: ObjectStore> Handover<S> {
    /// Serves takeover requests on a thread until one succeeds.
    pub fn listen_in_background(self: &Arc<Self>, l: UnixListener) {
        let h = self.clone();
        wire::serve_control(l, move |s, control| h.hand_over(s, control));
    }

    /// One takeover: park the loops, drain the requests in flight, send the
    /// state; on any failure before the new server is ready, serve on.
    fn hand_over(&self, mut s: UnixStream, control: BorrowedFd<'_>) -> Result<(), HandoffError> {
        wire::serve_one(
            &mut s,
            "s3",
            &self.pauser,
            || self.fs.uploads_in_progress(),
            |s| {
                let deadline = Instant::now() + HANDOVER_TIMEOUT;
                while self.in_flight.load(Ordering::Acquire) > 0 {
                    if Instant::now() > deadline {
                        return wire::refused(
                            s,
                            "requests in flight did not end in time".to_string(),
                        );
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                let state = match self.fs.export(self.proto, Some(1)) {
                    Ok(st) => st,
                    Err(why) => return wire::refused(s, why),
                };
                let fds = [self.dev.as_fd(), control];
                wire::hand_over(s, &state.encode(), &fds)
            },
        )?;
        self.done.store(true, Ordering::Release);
        Ok(())
    }
}

/// The new server's first half: asks the server at the other end of
/// `old` (connected to its control socket) for its mount (see
/// [`wire::Package`]): the package and the state in it.
pub fn request(old: UnixStream) -> Result<(wire::Package, S3State), HandoffError> {
    let package = wire::Package::request(old, "s3")?;
    let state = S3State::decode(&package.state)?;
    Ok((package, state))
}
