//! The mounter's socket: [`Servers`] calls as one JSON line each way.
//!
//! `hubfs mounter` serves a [`Supervisor`](super::Supervisor) on
//! `<state>/mounter.sock` (mode 0600: root on the node only); the node
//! plugin's [`MounterClient`] opens one connection per call, so either side
//! can restart at any time and the next call simply connects again.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hubfs_fuse::s3::credentials::StaticCredentials;
use serde::{Deserialize, Serialize};

use super::secrets::WireCredentials;
use super::{ServerSpec, ServerStatus, Servers};
use crate::error::{DriverError, Result};

/// A call to the mounter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Publish {
        spec: ServerSpec,
        target: PathBuf,
        read_only: bool,
        /// The server's own S3 identity, if it has one (redacted in `Debug`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        credentials: Option<WireCredentials>,
    },
    Unpublish {
        target: PathBuf,
    },
    Status,
    /// A new mounter takes over (see `mounter::takeover`): the old one stops
    /// changing anything, answers `released`, and waits on this connection
    /// for a `done` line (exit) or its end (carry on).
    Release,
}

/// How a call failed, as far as the CSI error code is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    Invalid,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    Internal,
}

/// The mounter's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Reply {
    Published { mounted: bool },
    Unpublished { was_user: bool },
    Status { servers: Vec<ServerStatus> },
    Released,
    Failed { kind: FailureKind, message: String },
}

fn failure(e: DriverError) -> Reply {
    let kind = match &e {
        DriverError::Missing(_) | DriverError::Invalid(_) => FailureKind::Invalid,
        DriverError::NotFound(_) => FailureKind::NotFound,
        DriverError::AlreadyExists(_) => FailureKind::AlreadyExists,
        DriverError::FailedPrecondition(_) => FailureKind::FailedPrecondition,
        _ => FailureKind::Internal,
    };
    Reply::Failed {
        kind,
        message: e.to_string(),
    }
}

fn from_failure(kind: FailureKind, message: String) -> DriverError {
    match kind {
        FailureKind::Invalid => DriverError::Invalid(message),
        FailureKind::NotFound => DriverError::NotFound(message),
        FailureKind::AlreadyExists => DriverError::AlreadyExists(message),
        FailureKind::FailedPrecondition => DriverError::FailedPrecondition(message),
        FailureKind::Internal => DriverError::Unavailable(format!("mounter: {message}")),
    }
}

/// Answers one request with `servers`.
pub fn handle(servers: &dyn Servers, req: Request) -> Reply {
    let r = match req {
        Request::Publish {
            spec,
            target,
            read_only,
            credentials,
        } => match credentials {
            None => servers.publish(&spec, &target, read_only),
            Some(c) => servers.publish_with_credentials(&spec, &target, read_only, &c.into()),
        }
        .map(|mounted| Reply::Published { mounted }),
        Request::Unpublish { target } => servers
            .unpublish(&target)
            .map(|was_user| Reply::Unpublished { was_user }),
        Request::Status => servers.status().map(|servers| Reply::Status { servers }),
        Request::Release => servers.release().map(|()| Reply::Released),
    };
    r.unwrap_or_else(failure)
}

/// Binds the mounter's socket (replacing a stale one), root-only.
pub fn bind(socket: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if UnixStream::connect(socket).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("another mounter serves {}", socket.display()),
        ));
    }
    let _ = std::fs::remove_file(socket);
    let l = UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Serves `servers` on `listener` until the process ends: one thread per
/// connection, one request per connection.
pub fn serve(listener: UnixListener, servers: Arc<dyn Servers>) {
    for conn in listener.incoming() {
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let servers = servers.clone();
        std::thread::spawn(move || {
            if let Err(e) = answer(conn, &*servers) {
                tracing::warn!(error = %e, "mounter connection failed");
            }
        });
    }
}

fn answer(conn: UnixStream, servers: &dyn Servers) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = String::new();
    read_line(&conn, &mut line)?;
    if line.is_empty() {
        // Connected and closed without a word: someone checking that the
        // mounter listens (a readiness probe), not a request to answer.
        return Ok(());
    }
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(req) => {
            tracing::debug!(?req, "mounter request");
            handle(servers, req)
        }
        Err(e) => Reply::Failed {
            kind: FailureKind::Invalid,
            message: format!("malformed request: {e}"),
        },
    };
    // Only a release request is answered `released`.
    let released = matches!(reply, Reply::Released);
    let mut out = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    out.push(b'\n');
    (&conn).write_all(&out)?;
    if released {
        // Frozen until the new mounter says it is done, or goes away.
        conn.set_read_timeout(None)?;
        let mut done = String::new();
        let r = read_line(&conn, &mut done);
        let handed_over = r.is_ok() && done.trim_end() == "done";
        tracing::info!(handed_over, "takeover by a new mounter ended");
        servers.release_end(handed_over);
    }
    Ok(())
}

/// The new mounter's side of a [`Request::Release`]: the old mounter is
/// frozen while this lives; [`Release::done`] lets it exit, dropping this
/// lets it carry on.
#[derive(Debug)]
pub struct Release(UnixStream);

impl Release {
    /// Asks the mounter serving `socket` to release its servers.
    pub fn ask(socket: &Path) -> Result<Release> {
        let conn = UnixStream::connect(socket).map_err(|e| {
            DriverError::Unavailable(format!("no mounter on {} ({e})", socket.display()))
        })?;
        Release::ask_on(conn, socket)
    }

    /// Asks the mounter at the other end of `conn` (connected to `socket`)
    /// to release its servers.
    pub fn ask_on(conn: UnixStream, socket: &Path) -> Result<Release> {
        match exchange(
            &conn,
            &Request::Release,
            Duration::from_secs(60),
            |op, e| DriverError::io(op, socket, e),
        )? {
            Ok(Reply::Released) => Ok(Release(conn)),
            r => Err(DriverError::Unavailable(format!(
                "the old mounter answered {r:?} to a release"
            ))),
        }
    }

    /// Everything is taken over: the old mounter may exit.
    pub fn done(mut self) -> Result<()> {
        self.0
            .write_all(b"done\n")
            .map_err(|e| DriverError::Unavailable(format!("the old mounter went away ({e})")))
    }
}

/// Reads one line of at most 1 MiB.
fn read_line(conn: &UnixStream, buf: &mut String) -> std::io::Result<usize> {
    use std::io::Read;
    BufReader::new(conn.take(1 << 20)).read_line(buf)
}

/// [`Servers`] in a `hubfs mounter` process, reached through its socket.
#[derive(Clone, Debug)]
pub struct MounterClient {
    socket: PathBuf,
    /// Longest wait for an answer (starting a server may take a while).
    pub timeout: Duration,
}

impl MounterClient {
    pub fn new(socket: PathBuf) -> Self {
        Self {
            socket,
            timeout: Duration::from_secs(90),
        }
    }

    fn call(&self, req: &Request) -> Result<Reply> {
        let unavailable = |e: std::io::Error| {
            DriverError::Unavailable(format!(
                "the hubfs mounter does not answer on {} ({e}); is `hubfs mounter` running with the same --state-dir?",
                self.socket.display()
            ))
        };
        let conn = UnixStream::connect(&self.socket).map_err(unavailable)?;
        exchange(&conn, req, self.timeout, |_, e| unavailable(e))?.map_err(|e| {
            DriverError::Unavailable(format!("the hubfs mounter answered nonsense ({e})"))
        })
    }
}

/// Sends `req` on `conn` and reads the one-line answer, waiting at most
/// `timeout` for it. A failure the mounter answers is returned as the error
/// it stands for; `io` names an I/O error of the step (`configure`, `write`,
/// `read`); an answer that is not a [`Reply`] is left to the caller.
fn exchange(
    conn: &UnixStream,
    req: &Request,
    timeout: Duration,
    io: impl Fn(&'static str, std::io::Error) -> DriverError,
) -> Result<serde_json::Result<Reply>> {
    conn.set_read_timeout(Some(timeout))
        .map_err(|e| io("configure", e))?;
    let mut out = serde_json::to_vec(req).map_err(|e| DriverError::Invalid(e.to_string()))?;
    out.push(b'\n');
    (&*conn).write_all(&out).map_err(|e| io("write", e))?;
    let mut line = String::new();
    read_line(conn, &mut line).map_err(|e| io("read", e))?;
    match serde_json::from_str::<Reply>(&line) {
        Ok(Reply::Failed { kind, message }) => Err(from_failure(kind, message)),
        r => Ok(r),
    }
}

fn unexpected(r: Reply) -> DriverError {
    DriverError::Unavailable(format!("the hubfs mounter answered {r:?}"))
}

impl Servers for MounterClient {
    fn publish(&self, spec: &ServerSpec, target: &Path, read_only: bool) -> Result<bool> {
        match self.call(&Request::Publish {
            spec: spec.clone(),
            target: target.to_owned(),
            read_only,
            credentials: None,
        })? {
            Reply::Published { mounted } => Ok(mounted),
            r => Err(unexpected(r)),
        }
    }

    fn publish_with_credentials(
        &self,
        spec: &ServerSpec,
        target: &Path,
        read_only: bool,
        credentials: &StaticCredentials,
    ) -> Result<bool> {
        match self.call(&Request::Publish {
            spec: spec.clone(),
            target: target.to_owned(),
            read_only,
            credentials: Some(credentials.into()),
        })? {
            Reply::Published { mounted } => Ok(mounted),
            r => Err(unexpected(r)),
        }
    }

    fn unpublish(&self, target: &Path) -> Result<bool> {
        match self.call(&Request::Unpublish {
            target: target.to_owned(),
        })? {
            Reply::Unpublished { was_user } => Ok(was_user),
            r => Err(unexpected(r)),
        }
    }

    fn status(&self) -> Result<Vec<ServerStatus>> {
        match self.call(&Request::Status)? {
            Reply::Status { servers } => Ok(servers),
            r => Err(unexpected(r)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeServers;
    use super::super::Kind;
    use super::*;

    #[test]
    fn a_release_holds_until_the_new_mounter_is_done_or_goes() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("m.sock");
        let fake = Arc::new(FakeServers::default());
        let l = bind(&sock).unwrap();
        let served: Arc<dyn Servers> = fake.clone();
        std::thread::spawn(move || serve(l, served));
        let wait = |want: Option<bool>| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while fake.release_ended() != want {
                assert!(
                    std::time::Instant::now() < deadline,
                    "release never ended {want:?}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        let r = Release::ask(&sock).unwrap();
        assert_eq!(fake.calls(), vec![Request::Release]);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            fake.release_ended(),
            None,
            "held while the new mounter works"
        );
        // The new mounter died: the old one carries on.
        drop(r);
        wait(Some(false));
        Release::ask(&sock).unwrap().done().unwrap();
        wait(Some(true));
        // A mounter that cannot hand over says so.
        let e = MounterClient::new(sock.clone()).release().unwrap_err();
        assert!(e.to_string().contains("cannot hand"), "{e}");
    }

    #[test]
    fn calls_cross_the_socket_with_their_error_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("m.sock");
        let fake = Arc::new(FakeServers::default());
        let l = bind(&sock).unwrap();
        let served: Arc<dyn Servers> = fake.clone();
        std::thread::spawn(move || serve(l, served));
        // A second mounter on the same directory is refused.
        assert_eq!(
            bind(&sock).unwrap_err().kind(),
            std::io::ErrorKind::AddrInUse
        );
        let c = MounterClient::new(sock.clone());
        let spec = ServerSpec {
            id: "s3-ab".into(),
            kind: Kind::S3,
            args: vec!["mount".into(), "s3".into(), "--foreground".into()],
            what: "w".into(),
        };
        assert!(c.publish(&spec, Path::new("/k/t1"), true).unwrap());
        assert!(!c.publish(&spec, Path::new("/k/t1"), true).unwrap());
        let st = c.status().unwrap();
        assert_eq!(st.len(), 1);
        assert_eq!(st[0].targets, vec![PathBuf::from("/k/t1")]);
        assert!(c.unpublish(Path::new("/k/t1")).unwrap());
        assert!(!c.unpublish(Path::new("/k/t1")).unwrap());
        // A server with its own identity: the credentials cross the socket
        // and reach the mounter whole, and the request's Debug hides them.
        let mut with_id = spec.clone();
        with_id.id = "s3-cd".into();
        with_id
            .args
            .extend(super::super::secrets::CREDENTIALS_ARGS.map(String::from));
        let creds = StaticCredentials {
            access_key_id: "GKexample".into(),
            secret_access_key: "s3cr3t-value".into(),
            session_token: None,
        };
        assert!(c
            .publish_with_credentials(&with_id, Path::new("/k/t3"), true, &creds)
            .unwrap());
        let Some(Request::Publish {
            credentials: Some(got),
            ..
        }) = fake.calls().last().cloned()
        else {
            panic!("no publish with credentials recorded")
        };
        let shown = format!("{:?}", fake.calls());
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("GKexample"),
            "{shown}"
        );
        assert_eq!(StaticCredentials::from(got), creds);
        assert!(c.unpublish(Path::new("/k/t3")).unwrap());
        fake.fail_next(DriverError::AlreadyExists("taken".into()));
        let e = c.publish(&spec, Path::new("/k/t2"), true).unwrap_err();
        assert!(matches!(e, DriverError::AlreadyExists(m) if m == "taken"));
        // Garbage gets an answer, not a hang or a crash.
        let mut raw = UnixStream::connect(&sock).unwrap();
        raw.write_all(b"{\"op\":\"format_disk\"}\n").unwrap();
        let mut line = String::new();
        BufReader::new(&raw).read_line(&mut line).unwrap();
        assert!(line.contains("malformed request"), "{line}");
        assert_eq!(fake.calls().len(), 8);
        // A probe (connect, say nothing, close) is no request: no answer.
        let raw = UnixStream::connect(&sock).unwrap();
        raw.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = String::new();
        BufReader::new(&raw).read_line(&mut rest).unwrap();
        assert_eq!(rest, "", "nothing is answered to a probe");
        assert_eq!(fake.calls().len(), 8);
    }

    #[test]
    fn a_missing_mounter_is_unavailable_and_says_where_it_looked() {
        let dir = tempfile::tempdir().unwrap();
        let c = MounterClient::new(dir.path().join("mounter.sock"));
        let e = c.status().unwrap_err();
        assert!(matches!(&e, DriverError::Unavailable(_)), "{e:?}");
        assert!(e.to_string().contains("mounter.sock"), "{e}");
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::Unavailable);
    }
}
