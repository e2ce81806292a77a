//! Serving the CSI services on a unix socket, and running each call.
//!
//! kubelet and the CSI sidecars connect over a unix socket. A socket file
//! left by a crashed driver would make `bind` fail forever, so a stale one is
//! removed first (but never a file that is not a socket).
//!
//! Every client the chart supports sends `:authority: localhost` on the
//! socket (kubelet >= 1.26, CSI sidecars through csi-lib-utils' `unix://`
//! targets), so tonic serves the listener as it is; docs/architecture.md
//! ("gRPC :authority on unix sockets") records why no header rewriting is
//! needed.
//!
//! Every call runs its body on the blocking pool inside a span that names
//! the volume and target: mount syscalls and filesystem walks block, and the
//! span puts the volume id on every log line the call produces.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::Status;
use tracing::Span;

use crate::error::{DriverError, Result};

/// Parses `unix:///path`, `unix:/path` or a plain path.
pub fn socket_path(endpoint: &str) -> Result<PathBuf> {
    let p = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    if p.is_empty() || !p.starts_with('/') {
        return Err(DriverError::Invalid(format!(
            "endpoint must be unix:///absolute/path, got {endpoint:?}"
        )));
    }
    Ok(PathBuf::from(p))
}

/// Binds the socket, removing a stale socket file first.
pub fn bind(path: &Path) -> std::io::Result<UnixListenerStream> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; refusing to remove it",
                    path.display()
                ),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    Ok(UnixListenerStream::new(UnixListener::bind(path)?))
}

/// A client channel to a gRPC server on a unix socket, as kubelet connects:
/// used by `hubfs demo` to play kubelet and by the integration tests.
pub async fn connect_unix(
    path: &Path,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = path.to_owned();
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
}

/// Runs a blocking call body in `span`, logs its outcome, maps its error.
pub async fn blocking<T, F>(span: Span, f: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let s = span.clone();
    let out = tokio::task::spawn_blocking(move || s.in_scope(f))
        .await
        .map_err(|e| Status::internal(format!("call panicked: {e}")))?;
    span.in_scope(|| match &out {
        Ok(_) => tracing::debug!("ok"),
        Err(DriverError::Busy(_)) => tracing::info!("busy, CO will retry"),
        Err(e) => tracing::warn!(error = %e, "failed"),
    });
    out.map_err(Status::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            socket_path("unix:///csi/csi.sock").unwrap(),
            Path::new("/csi/csi.sock")
        );
        assert_eq!(
            socket_path("unix:/csi/csi.sock").unwrap(),
            Path::new("/csi/csi.sock")
        );
        assert_eq!(
            socket_path("/csi/csi.sock").unwrap(),
            Path::new("/csi/csi.sock")
        );
        assert!(socket_path("tcp://1.2.3.4:5").is_err());
        assert!(socket_path("unix://relative").is_err());
        assert!(socket_path("").is_err());
    }

    #[tokio::test]
    async fn stale_sockets_are_replaced_but_files_are_not() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("csi.sock");
        drop(bind(&sock).unwrap());
        assert!(sock.exists());
        drop(bind(&sock).unwrap()); // stale socket from the first bind
        let file = d.path().join("data");
        std::fs::write(&file, b"keep").unwrap();
        assert!(bind(&file).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    }
}
