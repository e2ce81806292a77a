//! The :authority fix against the real tonic/h2 server: an "old kubelet"
//! speaking raw HTTP/2 with a socket path as `:authority`, with and without
//! the adapter, and a normal tonic client through the adapter.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hubfs::authority::incoming;
use hubfs::identity::IdentityService;
use hubfs_proto::csi::identity_client::IdentityClient;
use hubfs_proto::csi::identity_server::IdentityServer;
use hubfs_proto::csi::{GetPluginCapabilitiesRequest, GetPluginInfoRequest, ProbeRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::UdsConnectInfo;
use tonic::transport::{Endpoint, Server, Uri};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const KUBELET_AUTHORITY: &[u8] = b"/var/lib/kubelet/plugins/hubfs/csi.sock";
const PROTOCOL_ERROR: u32 = 0x1;

fn identity() -> IdentityServer<IdentityService> {
    IdentityServer::new(IdentityService {
        driver_name: "x.y".into(),
    })
}

/// Starts the Identity service on `path`, with or without the adapter.
fn serve(path: &Path, fixed: bool) {
    let listener = UnixListenerStream::new(UnixListener::bind(path).unwrap());
    let router = Server::builder().add_service(identity());
    if fixed {
        tokio::spawn(router.serve_with_incoming(incoming(listener)));
    } else {
        tokio::spawn(router.serve_with_incoming(listener));
    }
}

fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn string(dst: &mut Vec<u8>, s: &[u8]) {
    assert!(s.len() < 127, "short strings only");
    dst.push(s.len() as u8);
    dst.extend_from_slice(s);
}

/// Literal without indexing, new name (RFC 7541 6.2.2).
fn literal(dst: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    dst.push(0x00);
    string(dst, name);
    string(dst, value);
}

/// The request headers grpc-go sends, `:authority` first as it does.
fn rest_of_request(dst: &mut Vec<u8>) {
    literal(dst, b":method", b"POST");
    literal(dst, b":scheme", b"http");
    literal(dst, b":path", b"/csi.v1.Identity/GetPluginInfo");
    literal(dst, b"content-type", b"application/grpc");
    literal(dst, b"te", b"trailers");
}

/// What came back for one stream.
#[derive(Debug, Default)]
struct Outcome {
    headers: Vec<Vec<(Vec<u8>, Vec<u8>)>>,
    data: Vec<u8>,
    reset: Option<u32>,
    ended: bool,
}

impl Outcome {
    fn trailer(&self, name: &[u8]) -> Option<&[u8]> {
        self.headers
            .last()?
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| &v[..])
    }
}

/// Acts as an old kubelet: raw HTTP/2 on the socket, one GetPluginInfo per
/// header block in `blocks` (streams 1, 3, ...), each followed by an empty
/// request message. Reads until every stream ended or was reset.
async fn raw_calls(path: &Path, blocks: &[Vec<u8>]) -> HashMap<u32, Outcome> {
    let mut sock = UnixStream::connect(path).await.unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    for (i, block) in blocks.iter().enumerate() {
        let id = 1 + 2 * i as u32;
        out.extend(frame(0x1, 0x4, id, block)); // HEADERS, END_HEADERS
        out.extend(frame(0x0, 0x1, id, &[0, 0, 0, 0, 0])); // DATA, END_STREAM
    }
    sock.write_all(&out).await.unwrap();

    let mut decoder = loona_hpack::Decoder::new();
    let mut outcomes: HashMap<u32, Outcome> = HashMap::new();
    let done = |o: &HashMap<u32, Outcome>| {
        (0..blocks.len()).all(|i| {
            o.get(&(1 + 2 * i as u32))
                .is_some_and(|s| s.ended || s.reset.is_some())
        })
    };
    let read = async {
        while !done(&outcomes) {
            let mut head = [0u8; 9];
            if sock.read_exact(&mut head).await.is_err() {
                break; // server closed
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, flags) = (head[3], head[4]);
            let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            sock.read_exact(&mut payload).await.unwrap();
            match kind {
                0x4 if flags & 0x1 == 0 => {
                    sock.write_all(&frame(0x4, 0x1, 0, &[])).await.unwrap();
                }
                0x1 => {
                    assert_eq!(flags & 0x4, 0x4, "server sends whole header blocks");
                    let list = decoder.decode(&payload).expect("server HPACK decodes");
                    let s = outcomes.entry(id).or_default();
                    s.headers.push(list);
                    s.ended |= flags & 0x1 != 0;
                }
                0x0 => {
                    let s = outcomes.entry(id).or_default();
                    s.data.extend_from_slice(&payload);
                    s.ended |= flags & 0x1 != 0;
                }
                0x3 => {
                    let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                    outcomes.entry(id).or_default().reset = Some(code);
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("server answered within 30 s");
    outcomes
}

fn kubelet_block() -> Vec<u8> {
    let mut block = Vec::new();
    literal(&mut block, b":authority", KUBELET_AUTHORITY);
    rest_of_request(&mut block);
    block
}

fn sockets() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let fixed = dir.path().join("fixed.sock");
    let plain = dir.path().join("plain.sock");
    (dir, fixed, plain)
}

#[tokio::test]
async fn socket_path_authority_is_accepted_through_the_adapter_only() {
    let (_dir, fixed, plain) = sockets();
    serve(&fixed, true);
    serve(&plain, false);

    // Without the adapter: the bug this module exists for.
    let bare = raw_calls(&plain, &[kubelet_block()]).await;
    assert_eq!(
        bare.get(&1).and_then(|s| s.reset),
        Some(PROTOCOL_ERROR),
        "h2 resets a socket-path :authority: {bare:?}"
    );

    let ok = raw_calls(&fixed, &[kubelet_block()]).await;
    let s = &ok[&1];
    assert_eq!(s.reset, None, "{s:?}");
    assert!(s.ended);
    assert_eq!(s.headers[0][0], (b":status".to_vec(), b"200".to_vec()));
    assert_eq!(s.trailer(b"grpc-status"), Some(&b"0"[..]), "{s:?}");
    // gRPC frame: flag, length, then GetPluginInfoResponse{name: "x.y", ..}.
    assert_eq!(s.data[0], 0);
    assert!(
        s.data.windows(5).any(|w| w == b"\x0a\x03x.y"),
        "{:?}",
        s.data
    );
}

#[tokio::test]
async fn indexed_socket_path_authority_is_resolved_across_requests() {
    let (_dir, fixed, _) = sockets();
    serve(&fixed, true);

    // grpc-go's encoder indexes :authority: the first request adds it to
    // the dynamic table (literal with incremental indexing, static name
    // index 1), the second refers to it as dynamic index 62.
    let mut first = vec![0x41];
    string(&mut first, KUBELET_AUTHORITY);
    rest_of_request(&mut first);
    let mut second = vec![0x80 | 62];
    rest_of_request(&mut second);

    let got = raw_calls(&fixed, &[first, second]).await;
    for id in [1, 3] {
        let s = &got[&id];
        assert_eq!(s.reset, None, "stream {id}: {s:?}");
        assert_eq!(
            s.trailer(b"grpc-status"),
            Some(&b"0"[..]),
            "stream {id}: {s:?}"
        );
        assert!(s.data.windows(3).any(|w| w == b"x.y"));
    }
}

#[tokio::test]
async fn tonic_client_works_for_many_calls_on_one_connection() {
    let (_dir, fixed, _) = sockets();
    let accepted = Arc::new(AtomicUsize::new(0));
    let with_info = Arc::new(AtomicUsize::new(0));
    let listener = UnixListenerStream::new(UnixListener::bind(&fixed).unwrap());
    let conns = {
        let accepted = accepted.clone();
        incoming(listener).inspect(move |_| {
            accepted.fetch_add(1, Ordering::SeqCst);
        })
    };
    let svc = {
        let with_info = with_info.clone();
        IdentityServer::with_interceptor(
            IdentityService {
                driver_name: "x.y".into(),
            },
            move |req: tonic::Request<()>| {
                // Connected is delegated to the UnixStream.
                if req.extensions().get::<UdsConnectInfo>().is_some() {
                    with_info.fetch_add(1, Ordering::SeqCst);
                }
                Ok(req)
            },
        )
    };
    tokio::spawn(
        Server::builder()
            .add_service(svc)
            .serve_with_incoming(conns),
    );

    let path = fixed.clone();
    let channel = Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .unwrap();
    let mut client = IdentityClient::new(channel);
    for _ in 0..5 {
        let info = client
            .get_plugin_info(GetPluginInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.name, "x.y");
        client.probe(ProbeRequest {}).await.unwrap();
        let caps = client
            .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(!caps.capabilities.is_empty());
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection");
    assert_eq!(with_info.load(Ordering::SeqCst), 15);
}
