//! Ending a FUSE session whose mount was already taken away from outside.
//!
//! `umount` by the CSI node service (NodeUnpublish/NodeUnstage) or by an
//! admin ends the kernel side first; the daemon notices afterwards. Dropping
//! fuser's session then unmounts the mountpoint *again*, and fuser 0.18's
//! "still mounted?" check reads an aborted connection as mounted, so that
//! second unmount hits whatever is mounted at the path by then — a volume
//! staged again at the same path loses its new mount. The session is
//! finished at that point, so nothing is left to clean up but its handles:
//! they are leaked (one `/dev/fuse` descriptor per mount that ended this
//! way) rather than dropped.

use std::time::{Duration, Instant};

use fuser::BackgroundSession;

/// Lets go of `session` without touching its mountpoint. Waits (at most
/// `grace`) for its thread to end; returns false if it had not, in which
/// case the session is still dropped the ordinary way.
pub fn forget_session(session: BackgroundSession, grace: Duration) -> bool {
    let deadline = Instant::now() + grace;
    while !session.guard.is_finished() {
        if Instant::now() >= deadline {
            tracing::warn!("FUSE session still running after the mount went away");
            drop(session);
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::mem::forget(session);
    true
}
