//! Handing a live FUSE connection from one server process to the next over a
//! unix socket: the wire of a takeover, shared by homes and buckets.
//!
//! The old server listens on a control socket. The new one connects and
//! sends a [`request`] naming the kind of filesystem it serves; the old one
//! parks its event loops between requests, then sends a package: its state
//! (opaque bytes here, versioned JSON of the filesystem's own module) and
//! every descriptor the state refers to, `/dev/fuse` first, as `SCM_RIGHTS`
//! in messages of at most [`MAX_FDS_PER_MESSAGE`]. The new server rebuilds
//! and says it is [ready](send_ready); the old one answers [go](send_go)
//! and exits without unmounting, and the new one serves from then on. The
//! old server decides: until it has sent *go* it may still resume serving
//! (the new server failed, or took too long), and a new server that never
//! gets *go* exits without serving a request, so the two never both serve.
//!
//! ```text
//! new → old  "HUBFSTKO" u32 protocol  u16 len  kind
//! old → new  u8 0  u64 state_len  u32 n_fds  state  ⌈n_fds/250⌉ × (1 byte + fds)
//!        or  u8 1  u32 len  reason (refused: walk running, uploads open, ...)
//! new → old  "RDY!"          old → new  "GO!!"
//! ```

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// Version of this wire format (not of the state it carries).
pub const PROTOCOL: u32 = 1;
/// Descriptors sent in one message (the kernel's limit is 253).
pub const MAX_FDS_PER_MESSAGE: usize = 250;
const MAGIC: &[u8; 8] = b"HUBFSTKO";
const READY: &[u8; 4] = b"RDY!";
const GO: &[u8; 4] = b"GO!!";
/// Largest state accepted (a home with millions of known inodes stays below).
const MAX_STATE: u64 = 1 << 30;
/// How long a takeover may keep requests waiting for the new server (and,
/// for a bucket, for the requests in flight to be answered).
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("takeover socket: {0}")]
    Io(#[from] io::Error),
    #[error("the peer is not a hubfs takeover endpoint")]
    NotHubfs,
    #[error(
        "takeover protocol {got} is not {want} (mixed hubfs versions without takeover support)"
    )]
    Protocol { got: u32, want: u32 },
    #[error("the running server serves a {have} mount, not {want}")]
    Kind { have: String, want: String },
    #[error("the running server refused the takeover: {0}")]
    Refused(String),
    #[error("the takeover ended early: {0}")]
    Truncated(&'static str),
    #[error("takeover state: {0}")]
    State(String),
}

pub type Result<T> = std::result::Result<T, HandoffError>;

fn truncated(what: &'static str) -> impl FnOnce(io::Error) -> HandoffError {
    move |e| match e.kind() {
        io::ErrorKind::UnexpectedEof => HandoffError::Truncated(what),
        _ => HandoffError::Io(e),
    }
}

fn read_u32(s: &mut impl Read, what: &'static str) -> Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b).map_err(truncated(what))?;
    Ok(u32::from_le_bytes(b))
}

/// New server: asks for the connection of a `kind` mount ("home", "s3").
pub fn request(s: &mut UnixStream, kind: &str) -> Result<()> {
    let mut m = MAGIC.to_vec();
    m.extend_from_slice(&PROTOCOL.to_le_bytes());
    m.extend_from_slice(&(kind.len() as u16).to_le_bytes());
    m.extend_from_slice(kind.as_bytes());
    s.write_all(&m)?;
    Ok(())
}

/// Old server: reads a request and checks it asks for a `kind` mount.
pub fn read_request(s: &mut UnixStream, kind: &str) -> Result<()> {
    let mut magic = [0u8; 8];
    s.read_exact(&mut magic).map_err(truncated("request"))?;
    if &magic != MAGIC {
        return Err(HandoffError::NotHubfs);
    }
    let got = read_u32(s, "request")?;
    if got != PROTOCOL {
        return Err(HandoffError::Protocol {
            got,
            want: PROTOCOL,
        });
    }
    let mut len = [0u8; 2];
    s.read_exact(&mut len).map_err(truncated("request"))?;
    let mut want = vec![0u8; u16::from_le_bytes(len) as usize];
    s.read_exact(&mut want).map_err(truncated("request"))?;
    let want = String::from_utf8_lossy(&want).into_owned();
    if want != kind {
        return Err(HandoffError::Kind {
            have: kind.into(),
            want,
        });
    }
    Ok(())
}

/// Old server: says no (the new server reports `reason`).
pub fn refuse(s: &mut UnixStream, reason: &str) -> Result<()> {
    let mut m = vec![1u8];
    m.extend_from_slice(&(reason.len() as u32).to_le_bytes());
    m.extend_from_slice(reason.as_bytes());
    s.write_all(&m)?;
    Ok(())
}

/// Old server: refuses with `reason` and returns it as the error.
pub fn refused<T>(s: &mut UnixStream, reason: String) -> Result<T> {
    refuse(s, &reason)?;
    Err(HandoffError::Refused(reason))
}

/// Old server: one takeover on `s`, the steps homes and buckets share.
/// Reads the request for a `kind` mount, refuses if `refusal` names a
/// reason, parks the loops, then `send`s the package (which may refuse
/// too). On any failure before *go* the loops serve on.
pub fn serve_one(
    s: &mut UnixStream,
    kind: &str,
    pauser: &fuser::SessionPauser,
    refusal: impl FnOnce() -> Option<String>,
    send: impl FnOnce(&mut UnixStream) -> Result<()>,
) -> Result<()> {
    s.set_read_timeout(Some(HANDOVER_TIMEOUT))?;
    read_request(s, kind)?;
    if let Some(why) = refusal() {
        return refused(s, why);
    }
    if let Err(e) = pauser.pause(HANDOVER_TIMEOUT) {
        let _ = refuse(s, &e.to_string());
        return Err(e.into());
    }
    let r = send(s);
    if r.is_err() {
        pauser.resume();
    }
    r
}

/// A filesystem's state (`what`: "home", "s3") as the JSON it is sent as.
pub fn encode_state<T: serde::Serialize>(state: &T, what: &str) -> Vec<u8> {
    serde_json::to_vec(state).unwrap_or_else(|e| panic!("{what} state serialises: {e}"))
}

/// Parses a filesystem's state sent by another server: a version other
/// than `want` or a truncated or malformed text is a clear error.
pub fn decode_state<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
    want: u32,
) -> Result<T> {
    #[derive(serde::Deserialize)]
    struct Versioned {
        version: u32,
    }
    if let Ok(v) = serde_json::from_slice::<Versioned>(bytes) {
        if v.version != want {
            return Err(HandoffError::State(format!(
                "{what} state version {} is not {want}: take over with a server of a compatible version",
                v.version
            )));
        }
    }
    serde_json::from_slice(bytes)
        .map_err(|e| HandoffError::State(format!("{what} state unreadable: {e}")))
}

/// Binds the control socket at `path`, or logs why not and goes on without
/// one (the mount is served all the same, only not taken over: an upgrade
/// replaces its server instead).
pub fn listen_or_warn(path: &Path) -> Option<UnixListener> {
    bind_control(path)
        .inspect_err(|e| tracing::warn!(path = %path.display(), error = %e, "no takeover of this mount possible"))
        .ok()
}

/// Old server: sends the state and the descriptors it refers to.
pub fn send_package(s: &mut UnixStream, state: &[u8], fds: &[BorrowedFd<'_>]) -> Result<()> {
    let mut head = vec![0u8];
    head.extend_from_slice(&(state.len() as u64).to_le_bytes());
    head.extend_from_slice(&(fds.len() as u32).to_le_bytes());
    s.write_all(&head)?;
    s.write_all(state)?;
    for chunk in fds.chunks(MAX_FDS_PER_MESSAGE) {
        let mut space =
            [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(chunk)) {
            return Err(HandoffError::State("descriptor message too large".into()));
        }
        let sent = rustix::net::sendmsg(
            s.as_fd(),
            &[IoSlice::new(b"F")],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .map_err(io::Error::from)?;
        if sent != 1 {
            return Err(HandoffError::Truncated("descriptors"));
        }
    }
    Ok(())
}

/// New server: receives the state and the descriptors, in the order sent.
pub fn receive_package(s: &mut UnixStream) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut status = [0u8; 1];
    s.read_exact(&mut status).map_err(truncated("answer"))?;
    match status[0] {
        0 => {}
        1 => {
            let len = read_u32(s, "refusal")? as usize;
            let mut why = vec![0u8; len.min(64 << 10)];
            s.read_exact(&mut why).map_err(truncated("refusal"))?;
            return Err(HandoffError::Refused(
                String::from_utf8_lossy(&why).into_owned(),
            ));
        }
        _ => return Err(HandoffError::NotHubfs),
    }
    let mut len = [0u8; 8];
    s.read_exact(&mut len).map_err(truncated("state header"))?;
    let len = u64::from_le_bytes(len);
    if len > MAX_STATE {
        return Err(HandoffError::State(format!("{len} bytes of state")));
    }
    let n_fds = read_u32(s, "state header")? as usize;
    let mut state = vec![0u8; len as usize];
    s.read_exact(&mut state).map_err(truncated("state"))?;
    let mut fds = Vec::with_capacity(n_fds);
    while fds.len() < n_fds {
        let mut space =
            [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut byte = [0u8; 1];
        let got = rustix::net::recvmsg(
            s.as_fd(),
            &mut [IoSliceMut::new(&mut byte)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        if got.bytes == 0 {
            return Err(HandoffError::Truncated("descriptors"));
        }
        let before = fds.len();
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = m {
                fds.extend(received);
            }
        }
        if got.flags.contains(rustix::net::ReturnFlags::CTRUNC) || fds.len() == before {
            return Err(HandoffError::State(
                "descriptors were lost in transit (the process's descriptor limit?)".into(),
            ));
        }
    }
    if fds.len() != n_fds {
        return Err(HandoffError::State(format!(
            "{} descriptors received, {n_fds} announced",
            fds.len()
        )));
    }
    Ok((state, fds))
}

fn expect(s: &mut UnixStream, word: &[u8; 4], what: &'static str) -> Result<()> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b).map_err(truncated(what))?;
    if &b != word {
        return Err(HandoffError::NotHubfs);
    }
    Ok(())
}

/// New server: it has rebuilt everything and waits for [`wait_go`].
pub fn send_ready(s: &mut UnixStream) -> Result<()> {
    s.write_all(READY)?;
    Ok(())
}

/// Old server: waits for the new one to be ready.
pub fn wait_ready(s: &mut UnixStream) -> Result<()> {
    expect(s, READY, "ready")
}

/// Old server: the new one serves from now on.
pub fn send_go(s: &mut UnixStream) -> Result<()> {
    s.write_all(GO)?;
    Ok(())
}

/// Old server, every filesystem alike: the package, the new server's
/// *ready*, then *go*. An error before *go* means the old one serves on.
pub fn hand_over(s: &mut UnixStream, state: &[u8], fds: &[BorrowedFd<'_>]) -> Result<()> {
    send_package(s, state, fds)?;
    wait_ready(s)?;
    send_go(s)
}

/// New server: may it serve? Any other end: the old one serves on.
pub fn wait_go(s: &mut UnixStream) -> Result<()> {
    expect(s, GO, "go")
}

/// Binds a server's control socket, root only. A socket a dead server left
/// is replaced; a live one never is (a taking-over server receives its
/// listener in the package instead of binding).
pub fn bind_control(path: &Path) -> io::Result<UnixListener> {
    if UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
    let l = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Old server: serves takeover requests on `l`, on a thread of its own,
/// until `hand_over` (given the connection and the listener's descriptor,
/// which it sends along) succeeds for one: the new server has the mount.
pub fn serve_control<F>(l: UnixListener, mut hand_over: F)
where
    F: FnMut(UnixStream, BorrowedFd<'_>) -> Result<()> + Send + 'static,
{
    let spawned = std::thread::Builder::new()
        .name("hubfs-control".into())
        .spawn(move || {
            for conn in l.incoming() {
                let s = match conn {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                match hand_over(s, l.as_fd()) {
                    Ok(()) => {
                        tracing::info!("handed the mount over to a new server");
                        return;
                    }
                    // Connected and closed without asking: a check that the
                    // socket listens, not a takeover.
                    Err(HandoffError::Truncated("request")) => {
                        tracing::debug!("control socket probed")
                    }
                    Err(e) => tracing::warn!(error = %e, "takeover failed; serving on"),
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot serve the control socket; no takeover possible");
    }
}

/// What a new server received from the old one: the state, `/dev/fuse`,
/// and the other descriptors by their index in the package (0 is `dev`).
pub struct Package {
    /// The connection, for the last word ([`Pending::ready`]).
    pub pending: Pending,
    pub state: Vec<u8>,
    pub dev: OwnedFd,
    pub fds: Vec<Option<OwnedFd>>,
}

impl Package {
    /// New server: asks the server at the other end of `s` for its `kind`
    /// mount. The old server is paused from here until [`Package::ready`]
    /// or the connection drops.
    pub fn request(mut s: UnixStream, kind: &str) -> Result<Package> {
        request(&mut s, kind)?;
        let (state, fds) = receive_package(&mut s)?;
        let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
        let dev = fds
            .first_mut()
            .and_then(Option::take)
            .ok_or_else(|| HandoffError::State("no /dev/fuse descriptor".into()))?;
        Ok(Package {
            pending: Pending(s),
            state,
            dev,
            fds,
        })
    }

    /// The control socket's listener the state names at `index`, if sent.
    pub fn listener(&mut self, index: Option<usize>) -> Option<UnixListener> {
        index
            .and_then(|i| self.fds.get_mut(i)?.take())
            .map(UnixListener::from)
    }
}

/// A new server's connection to the old one, paused until [`Pending::ready`].
pub struct Pending(UnixStream);

impl Pending {
    /// New server: it is ready; may it serve? An error: the old server
    /// serves on, and this one must not touch the connection.
    pub fn ready(&mut self) -> Result<()> {
        send_ready(&mut self.0)?;
        wait_go(&mut self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn state_and_many_descriptors_arrive_in_order() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let t = tempfile::tempdir().unwrap();
        // More than two messages' worth, each a distinct file.
        let files: Vec<std::fs::File> = (0..600)
            .map(|i| {
                let p = t.path().join(i.to_string());
                std::fs::write(&p, i.to_string()).unwrap();
                std::fs::File::open(p).unwrap()
            })
            .collect();
        let sender = std::thread::spawn(move || {
            read_request(&mut a, "home").unwrap();
            let fds: Vec<BorrowedFd> = files.iter().map(|f| f.as_fd()).collect();
            send_package(&mut a, b"{\"v\":1}", &fds).unwrap();
            wait_ready(&mut a).unwrap();
            send_go(&mut a).unwrap();
        });
        request(&mut b, "home").unwrap();
        let (state, fds) = receive_package(&mut b).unwrap();
        assert_eq!(state, b"{\"v\":1}");
        assert_eq!(fds.len(), 600);
        for (i, fd) in fds.into_iter().enumerate() {
            assert!(fd.as_raw_fd() >= 0);
            let mut s = String::new();
            std::fs::File::from(fd).read_to_string(&mut s).unwrap();
            assert_eq!(s, i.to_string(), "descriptor {i} is the file sent at {i}");
        }
        send_ready(&mut b).unwrap();
        wait_go(&mut b).unwrap();
        sender.join().unwrap();
    }

    #[test]
    fn a_wrong_kind_or_protocol_is_a_clear_error() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        request(&mut b, "s3").unwrap();
        let e = read_request(&mut a, "home").unwrap_err();
        assert!(e.to_string().contains("serves a home mount, not s3"), "{e}");
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let mut m = MAGIC.to_vec();
        m.extend_from_slice(&7u32.to_le_bytes());
        b.write_all(&m).unwrap();
        let e = read_request(&mut a, "home").unwrap_err();
        assert!(
            matches!(e, HandoffError::Protocol { got: 7, want: 1 }),
            "{e}"
        );
    }

    #[test]
    fn a_refusal_reaches_the_new_server_with_its_reason() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        refuse(&mut a, "the mount-time walk is still running").unwrap();
        let e = receive_package(&mut b).unwrap_err();
        assert!(e.to_string().contains("walk is still running"), "{e}");
    }

    #[test]
    fn an_old_server_that_dies_midway_is_a_truncation_and_a_missing_answer_too() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let mut head = vec![0u8];
        head.extend_from_slice(&100u64.to_le_bytes());
        head.extend_from_slice(&1u32.to_le_bytes());
        a.write_all(&head).unwrap();
        a.write_all(b"{\"half\":").unwrap();
        drop(a);
        let e = receive_package(&mut b).unwrap_err();
        assert!(matches!(e, HandoffError::Truncated("state")), "{e}");
        let (mut a, b) = UnixStream::pair().unwrap();
        drop(b);
        assert!(matches!(
            wait_ready(&mut a).unwrap_err(),
            HandoffError::Truncated("ready")
        ));
        let (mut a, mut b) = UnixStream::pair().unwrap();
        send_ready(&mut b).unwrap();
        wait_ready(&mut a).unwrap();
        drop(a);
        assert!(matches!(
            wait_go(&mut b).unwrap_err(),
            HandoffError::Truncated("go")
        ));
    }
}
