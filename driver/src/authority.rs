//! Accepting gRPC clients that put a unix socket path in `:authority`.
//!
//! Older kubelets and CSI sidecars (grpc-go dialing a bare path such as
//! `/var/lib/kubelet/plugins/hubfs/csi.sock`) send that path as the HTTP/2
//! `:authority` pseudo-header. h2's server parses `:authority` as an
//! `http::uri::Authority`, fails, and resets the stream with PROTOCOL_ERROR,
//! so the CO sees `stream terminated by RST_STREAM with error code:
//! PROTOCOL_ERROR` on every call (kubernetes#108254, #112597, k3s#5346).
//! Neither h2 nor tonic has a switch for this, so [`AuthorityFix`] sits
//! between the socket and h2 and rewrites the client's header blocks before
//! h2 sees them.
//!
//! The client compresses headers with HPACK against a dynamic table that only
//! it and its peer's decoder know, so a block cannot be patched in place. The
//! adapter keeps its own decoder (the client's table state), decodes every
//! header block, replaces an unparsable `:authority` with `localhost`, and
//! re-encodes the whole block as literals *without indexing*. h2's decoder
//! therefore never adds an entry to its table, and the client's later indexed
//! references are resolved by our decoder alone. Every other frame passes
//! through byte for byte, and the write side is untouched.
//!
//! Input the adapter does not understand (no preface, bad padding, an HPACK
//! error, an interrupted CONTINUATION sequence, oversized blocks) is passed
//! through unchanged from that point on, so h2 rejects it exactly as it would
//! without the adapter.

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;
use tonic::transport::server::Connected;

/// The value that replaces an `:authority` h2 would reject.
pub const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The smallest SETTINGS_MAX_FRAME_SIZE a peer may announce: frames we build
/// never exceed it, whatever h2 is configured with.
const MAX_OUT_FRAME: usize = 16_384;
/// Encoded header block (all frames of it) we are willing to buffer. Far
/// above any real request; beyond it we stop rewriting and let h2 judge.
const MAX_BLOCK: usize = 1 << 20;
/// Decoded header list we are willing to build (HPACK can expand a block
/// several-hundred-fold through indexed references).
const MAX_DECODED: usize = 1 << 20;
/// Largest dynamic table the client may ask our decoder to keep. h2 announces
/// 4096; the margin only tolerates a server configured larger.
const MAX_TABLE_SIZE: usize = 64 * 1024;
const READ_CHUNK: usize = 16 * 1024;

/// Wraps tonic's unix listener so every accepted connection goes through
/// [`AuthorityFix`]. Use with `Server::builder()...serve_with_incoming(..)`.
pub fn incoming(
    listener: UnixListenerStream,
) -> impl Stream<Item = io::Result<AuthorityFix<UnixStream>>> {
    listener.map(|conn| conn.map(AuthorityFix::new))
}

/// A server-side connection whose incoming HTTP/2 header blocks are rewritten
/// so that h2 accepts a unix socket path as `:authority` (see module docs).
pub struct AuthorityFix<S> {
    inner: S,
    rewriter: Rewriter,
    /// Bytes read from `inner` that the rewriter has not consumed yet.
    rx: BytesMut,
    /// Bytes ready for the caller.
    out: BytesMut,
    scratch: Vec<u8>,
    eof: bool,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        AuthorityFix {
            inner,
            rewriter: Rewriter::new(),
            rx: BytesMut::new(),
            out: BytesMut::new(),
            scratch: Vec::new(),
            eof: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// How many `:authority` values this connection has had replaced.
    pub fn rewrites(&self) -> u64 {
        self.rewriter.rewrites
    }

    /// True once the adapter met input it could not follow and went back to
    /// passing everything through.
    pub fn gave_up(&self) -> bool {
        matches!(self.rewriter.state, State::Passthrough)
    }
}

impl<S> std::fmt::Debug for AuthorityFix<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityFix")
            .field("rewrites", &self.rewriter.rewrites)
            .field("gave_up", &self.gave_up())
            .finish_non_exhaustive()
    }
}

impl<S: Connected> Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        // Fast path for DATA and other opaque payloads: read straight into
        // the caller's buffer and hand back whatever lies past the payload.
        if this.out.is_empty() && this.rx.is_empty() && !this.eof {
            if let Some(budget) = this.rewriter.passthrough_budget() {
                let before = buf.filled().len();
                ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                let n = buf.filled().len() - before;
                if n == 0 {
                    this.eof = true;
                    return Poll::Ready(Ok(()));
                }
                let take = n.min(budget);
                if take < n {
                    this.rx.extend_from_slice(&buf.filled()[before + take..]);
                    buf.set_filled(before + take);
                }
                this.rewriter.passed(take);
                return Poll::Ready(Ok(()));
            }
        }
        loop {
            if !this.out.is_empty() {
                let n = buf.remaining().min(this.out.len());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            this.rewriter.process(&mut this.rx, &mut this.out);
            if !this.out.is_empty() {
                continue;
            }
            if this.scratch.is_empty() {
                this.scratch = vec![0; READ_CHUNK];
            }
            let mut rb = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                // EOF, possibly mid-frame: whatever is held goes out as it
                // came, and h2 reports the truncation.
                this.eof = true;
                this.rewriter.finish(&mut this.rx, &mut this.out);
            } else {
                this.rx.extend_from_slice(rb.filled());
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for (the rest of) the 24-byte client preface.
    Preface,
    /// At a frame boundary.
    FrameHeader,
    /// Inside the payload of a frame we do not touch; this many bytes left.
    Skip(usize),
    /// Gave up: everything passes through unchanged.
    Passthrough,
}

/// A HEADERS frame and its CONTINUATIONs, collected until END_HEADERS.
struct Block {
    stream_id: u32,
    end_stream: bool,
    /// The frames exactly as received, for giving up.
    raw: BytesMut,
    /// The concatenated header block fragments.
    fragment: Vec<u8>,
}

struct FrameHead {
    len: usize,
    kind: u8,
    flags: u8,
    stream_id: u32,
}

impl FrameHead {
    fn parse(b: &[u8]) -> FrameHead {
        FrameHead {
            len: (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream_id: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }
}

/// The read-side state machine, free of IO so it can be fed any split of
/// the byte stream.
struct Rewriter {
    state: State,
    decoder: loona_hpack::Decoder<'static>,
    pending: Option<Block>,
    rewrites: u64,
}

impl Rewriter {
    fn new() -> Rewriter {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(MAX_TABLE_SIZE);
        Rewriter {
            state: State::Preface,
            decoder,
            pending: None,
            rewrites: 0,
        }
    }

    /// How many bytes may go to the caller unexamined right now.
    fn passthrough_budget(&self) -> Option<usize> {
        match self.state {
            State::Skip(n) if n > 0 => Some(n),
            State::Passthrough => Some(usize::MAX),
            _ => None,
        }
    }

    fn passed(&mut self, n: usize) {
        if let State::Skip(left) = self.state {
            self.state = State::Skip(left - n);
        }
    }

    /// Moves everything that can be decided from `rx` into `out`.
    fn process(&mut self, rx: &mut BytesMut, out: &mut BytesMut) {
        loop {
            match self.state {
                State::Passthrough => {
                    out.extend_from_slice(&rx.split());
                    return;
                }
                State::Preface => {
                    let n = rx.len().min(PREFACE.len());
                    if rx[..n] != PREFACE[..n] {
                        self.give_up(out);
                        continue;
                    }
                    if n < PREFACE.len() {
                        return;
                    }
                    out.extend_from_slice(&rx.split_to(n));
                    self.state = State::FrameHeader;
                }
                State::Skip(0) => self.state = State::FrameHeader,
                State::Skip(left) => {
                    if rx.is_empty() {
                        return;
                    }
                    let n = left.min(rx.len());
                    out.extend_from_slice(&rx.split_to(n));
                    self.state = State::Skip(left - n);
                }
                State::FrameHeader => {
                    if rx.len() < FRAME_HEADER_LEN {
                        return;
                    }
                    let head = FrameHead::parse(&rx[..FRAME_HEADER_LEN]);
                    let buffered = match &self.pending {
                        Some(block) => {
                            if head.kind != TYPE_CONTINUATION || head.stream_id != block.stream_id {
                                // h2 answers this with a connection error.
                                self.give_up(out);
                                continue;
                            }
                            Some(block.raw.len())
                        }
                        None => None,
                    };
                    if head.kind != TYPE_HEADERS && buffered.is_none() {
                        out.extend_from_slice(&rx.split_to(FRAME_HEADER_LEN));
                        self.state = State::Skip(head.len);
                        continue;
                    }
                    let total = FRAME_HEADER_LEN + head.len;
                    if buffered.unwrap_or(0) + total > MAX_BLOCK {
                        tracing::debug!(
                            "header block too large to rewrite; passing connection through"
                        );
                        self.give_up(out);
                        continue;
                    }
                    if rx.len() < total {
                        return;
                    }
                    let frame = rx.split_to(total);
                    self.header_frame(&head, &frame, out);
                }
            }
        }
    }

    /// The inner stream ended: release whatever is held, unchanged.
    fn finish(&mut self, rx: &mut BytesMut, out: &mut BytesMut) {
        if self.pending.is_some() || !rx.is_empty() {
            self.give_up(out);
            out.extend_from_slice(&rx.split());
        }
    }

    fn give_up(&mut self, out: &mut BytesMut) {
        if let Some(block) = self.pending.take() {
            out.extend_from_slice(&block.raw);
        }
        self.state = State::Passthrough;
    }

    fn header_frame(&mut self, head: &FrameHead, frame: &[u8], out: &mut BytesMut) {
        let mut block = self.pending.take().unwrap_or_else(|| Block {
            stream_id: head.stream_id,
            end_stream: head.flags & FLAG_END_STREAM != 0,
            raw: BytesMut::new(),
            fragment: Vec::new(),
        });
        block.raw.extend_from_slice(frame);
        let payload = &frame[FRAME_HEADER_LEN..];
        let fragment = if head.kind == TYPE_HEADERS {
            headers_fragment(head.flags, payload)
        } else {
            Some(payload)
        };
        let Some(fragment) = fragment else {
            self.pending = Some(block);
            self.give_up(out);
            return;
        };
        block.fragment.extend_from_slice(fragment);
        if head.flags & FLAG_END_HEADERS == 0 {
            self.pending = Some(block);
            return;
        }
        match self.reencode(&block.fragment) {
            Some(encoded) => write_headers(out, block.stream_id, block.end_stream, &encoded),
            None => {
                self.pending = Some(block);
                self.give_up(out);
            }
        }
    }

    /// Decodes a complete header block against the client's table and
    /// re-encodes it as non-indexed literals, fixing `:authority`.
    fn reencode(&mut self, fragment: &[u8]) -> Option<Vec<u8>> {
        let mut encoded = Vec::with_capacity(fragment.len() * 2 + 64);
        let mut decoded_size = 0usize;
        let mut fixed = 0u64;
        let result = self
            .decoder
            .decode_with_cb(fragment, |name: Cow<[u8]>, value: Cow<[u8]>| {
                // RFC 7541 4.1 entry size: a cheap bound on what we build.
                decoded_size += name.len() + value.len() + 32;
                if decoded_size > MAX_DECODED {
                    return;
                }
                let value: &[u8] = if &*name == b":authority" && !valid_authority(&value) {
                    fixed += 1;
                    REPLACEMENT_AUTHORITY
                } else {
                    &value
                };
                encode_literal(&mut encoded, &name, value);
            });
        if let Err(e) = result {
            tracing::debug!(error = %e, "undecodable header block; passing connection through");
            return None;
        }
        if decoded_size > MAX_DECODED {
            tracing::debug!("decoded header list too large; passing connection through");
            return None;
        }
        if fixed > 0 {
            if self.rewrites == 0 {
                tracing::debug!(
                    "client sent a non-URI :authority (a socket path?); using localhost"
                );
            }
            self.rewrites += fixed;
        }
        Some(encoded)
    }
}

/// The header block fragment of a HEADERS payload, without padding and
/// priority fields; `None` when they do not fit.
fn headers_fragment(flags: u8, payload: &[u8]) -> Option<&[u8]> {
    let mut rest = payload;
    let mut pad = 0;
    if flags & FLAG_PADDED != 0 {
        let (&n, tail) = rest.split_first()?;
        pad = usize::from(n);
        rest = tail;
    }
    if flags & FLAG_PRIORITY != 0 {
        rest = rest.get(5..)?;
    }
    let len = rest.len().checked_sub(pad)?;
    Some(&rest[..len])
}

/// The same test h2's server applies before resetting the stream.
fn valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::from_maybe_shared(Bytes::copy_from_slice(value)).is_ok()
}

/// RFC 7541 6.2.2: literal header field without indexing, new name, no
/// Huffman coding.
fn encode_literal(dst: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    dst.push(0x00);
    encode_string(dst, name);
    encode_string(dst, value);
}

fn encode_string(dst: &mut Vec<u8>, s: &[u8]) {
    encode_integer(dst, s.len(), 7, 0x00);
    dst.extend_from_slice(s);
}

/// RFC 7541 5.1 integer with an N-bit prefix; `high` holds the bits above it.
fn encode_integer(dst: &mut Vec<u8>, mut value: usize, prefix_bits: u32, high: u8) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        dst.push(high | value as u8);
        return;
    }
    dst.push(high | max as u8);
    value -= max;
    while value >= 0x80 {
        dst.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    dst.push(value as u8);
}

fn write_frame_head(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream_id: u32) {
    let len = len as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream_id.to_be_bytes());
}

/// One HEADERS frame, followed by CONTINUATIONs if the block needs them.
fn write_headers(out: &mut BytesMut, stream_id: u32, end_stream: bool, block: &[u8]) {
    let mut chunks = block.chunks(MAX_OUT_FRAME).peekable();
    let first = chunks.next().unwrap_or(&[]);
    let mut flags = if end_stream { FLAG_END_STREAM } else { 0 };
    if chunks.peek().is_none() {
        flags |= FLAG_END_HEADERS;
    }
    write_frame_head(out, first.len(), TYPE_HEADERS, flags, stream_id);
    out.extend_from_slice(first);
    while let Some(chunk) = chunks.next() {
        let flags = if chunks.peek().is_none() {
            FLAG_END_HEADERS
        } else {
            0
        };
        write_frame_head(out, chunk.len(), TYPE_CONTINUATION, flags, stream_id);
        out.extend_from_slice(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    const SOCK: &[u8] = b"/var/lib/kubelet/plugins/hubfs/csi.sock";

    fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        write_frame_head(&mut out, payload.len(), kind, flags, stream_id);
        out.extend_from_slice(payload);
        out.to_vec()
    }

    fn literals(headers: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, v) in headers {
            encode_literal(&mut out, n, v);
        }
        out
    }

    fn request(authority: &[u8]) -> Vec<(&'static [u8], Vec<u8>)> {
        vec![
            (b":method", b"POST".to_vec()),
            (b":scheme", b"http".to_vec()),
            (b":path", b"/csi.v1.Identity/GetPluginInfo".to_vec()),
            (b":authority", authority.to_vec()),
            (b"content-type", b"application/grpc".to_vec()),
            (b"te", b"trailers".to_vec()),
        ]
    }

    /// Runs `input` through the rewriter in pieces of `step` bytes.
    fn rewrite(input: &[u8], step: usize) -> (Vec<u8>, Rewriter) {
        let mut rw = Rewriter::new();
        let mut rx = BytesMut::new();
        let mut out = BytesMut::new();
        for piece in input.chunks(step) {
            rx.extend_from_slice(piece);
            rw.process(&mut rx, &mut out);
        }
        rw.finish(&mut rx, &mut out);
        (out.to_vec(), rw)
    }

    #[derive(Debug, PartialEq)]
    struct Frame {
        kind: u8,
        flags: u8,
        stream_id: u32,
        payload: Vec<u8>,
    }

    /// Splits the output (after the preface) into frames.
    fn frames(bytes: &[u8]) -> Vec<Frame> {
        assert_eq!(&bytes[..PREFACE.len()], PREFACE);
        let mut rest = &bytes[PREFACE.len()..];
        let mut frames = Vec::new();
        while !rest.is_empty() {
            let head = FrameHead::parse(&rest[..9]);
            frames.push(Frame {
                kind: head.kind,
                flags: head.flags,
                stream_id: head.stream_id,
                payload: rest[9..9 + head.len].to_vec(),
            });
            rest = &rest[9 + head.len..];
        }
        frames
    }

    /// Decodes the header blocks of the output the way h2 would: a fresh
    /// decoder whose table must never be needed.
    fn header_lists(frames: &[Frame]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut dec = loona_hpack::Decoder::new();
        let mut lists = Vec::new();
        let mut block = Vec::new();
        for f in frames {
            if f.kind == TYPE_HEADERS || f.kind == TYPE_CONTINUATION {
                block.extend_from_slice(&f.payload);
                if f.flags & FLAG_END_HEADERS != 0 {
                    lists.push(dec.decode(&block).expect("output block decodes"));
                    block.clear();
                }
            }
        }
        lists
    }

    fn authority_of(list: &[(Vec<u8>, Vec<u8>)]) -> Option<Vec<u8>> {
        list.iter()
            .find(|(n, _)| n == b":authority")
            .map(|(_, v)| v.clone())
    }

    fn settings() -> Vec<u8> {
        frame(0x4, 0, 0, &[0, 0x3, 0, 0, 0, 100])
    }

    fn data(stream_id: u32) -> Vec<u8> {
        frame(0x0, FLAG_END_STREAM, stream_id, &[0, 0, 0, 0, 0])
    }

    #[test]
    fn socket_path_authority_is_replaced_and_other_frames_are_untouched() {
        let headers: Vec<_> = request(SOCK);
        let refs: Vec<(&[u8], &[u8])> = headers.iter().map(|(n, v)| (*n, &v[..])).collect();
        let mut input = PREFACE.to_vec();
        input.extend(settings());
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &literals(&refs)));
        input.extend(data(1));
        input.extend(frame(0x8, 0, 0, &[0, 0, 0x10, 0])); // WINDOW_UPDATE

        for step in [1, 2, 7, 9, 10, input.len()] {
            let (out, rw) = rewrite(&input, step);
            let fs = frames(&out);
            assert_eq!(fs.len(), 4, "step {step}");
            assert_eq!(fs[0], frames(&[PREFACE, &settings()[..]].concat())[0]);
            assert_eq!(fs[1].kind, TYPE_HEADERS);
            assert_eq!(fs[1].flags, FLAG_END_HEADERS);
            assert_eq!(fs[1].stream_id, 1);
            let lists = header_lists(&fs);
            assert_eq!(
                authority_of(&lists[0]).as_deref(),
                Some(REPLACEMENT_AUTHORITY)
            );
            let names: Vec<&[u8]> = lists[0].iter().map(|(n, _)| &n[..]).collect();
            let want: Vec<&[u8]> = headers.iter().map(|(n, _)| *n).collect();
            assert_eq!(names, want, "order kept");
            assert_eq!(lists[0][2].1, b"/csi.v1.Identity/GetPluginInfo");
            // DATA and WINDOW_UPDATE verbatim, at the end of the output.
            let tail = [data(1), frame(0x8, 0, 0, &[0, 0, 0x10, 0])].concat();
            assert!(out.ends_with(&tail));
            assert_eq!(rw.rewrites, 1);
            assert_eq!(rw.state, State::FrameHeader);
        }
    }

    #[test]
    fn valid_authority_is_kept_and_end_stream_preserved() {
        let headers = request(b"localhost:1234");
        let refs: Vec<(&[u8], &[u8])> = headers.iter().map(|(n, v)| (*n, &v[..])).collect();
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            3,
            &literals(&refs),
        ));
        let (out, rw) = rewrite(&input, 5);
        let fs = frames(&out);
        assert_eq!(fs[0].flags, FLAG_END_HEADERS | FLAG_END_STREAM);
        let lists = header_lists(&fs);
        assert_eq!(
            authority_of(&lists[0]).as_deref(),
            Some(&b"localhost:1234"[..])
        );
        assert_eq!(rw.rewrites, 0);
    }

    #[test]
    fn padding_priority_and_continuation_are_folded_into_one_frame() {
        let headers = request(SOCK);
        let refs: Vec<(&[u8], &[u8])> = headers.iter().map(|(n, v)| (*n, &v[..])).collect();
        let block = literals(&refs);
        let (a, rest) = block.split_at(10);
        let (b, c) = rest.split_at(30);
        // HEADERS with PADDED + PRIORITY, END_STREAM, no END_HEADERS.
        let mut payload = vec![4u8]; // pad length
        payload.extend_from_slice(&[0, 0, 0, 0, 16]); // dependency + weight
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0; 4]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            5,
            &payload,
        ));
        input.extend(frame(TYPE_CONTINUATION, 0, 5, b));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 5, c));
        input.extend(settings());
        for step in [1, 3, input.len()] {
            let (out, rw) = rewrite(&input, step);
            let fs = frames(&out);
            assert_eq!(fs.len(), 2);
            assert_eq!(fs[0].kind, TYPE_HEADERS);
            assert_eq!(fs[0].flags, FLAG_END_HEADERS | FLAG_END_STREAM);
            assert_eq!(fs[0].stream_id, 5);
            assert_eq!(fs[1].kind, 0x4);
            let lists = header_lists(&fs);
            assert_eq!(lists[0].len(), 6);
            assert_eq!(
                authority_of(&lists[0]).as_deref(),
                Some(REPLACEMENT_AUTHORITY)
            );
            assert_eq!(rw.rewrites, 1);
        }
    }

    #[test]
    fn large_blocks_are_split_into_continuations() {
        let big = vec![b'x'; 40_000];
        let refs: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":authority", SOCK),
            (b"x-big", &big),
        ];
        let block = literals(&refs);
        let mut input = PREFACE.to_vec();
        let (a, b) = block.split_at(16_000);
        input.extend(frame(TYPE_HEADERS, 0, 7, a));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 7, b));
        let (out, _) = rewrite(&input, 4096);
        let fs = frames(&out);
        assert!(fs.len() >= 3);
        assert!(fs.iter().all(|f| f.payload.len() <= MAX_OUT_FRAME));
        assert_eq!(fs[0].kind, TYPE_HEADERS);
        assert_eq!(fs[0].flags & FLAG_END_HEADERS, 0);
        assert!(fs[1..].iter().all(|f| f.kind == TYPE_CONTINUATION));
        assert_eq!(fs.last().unwrap().flags, FLAG_END_HEADERS);
        let lists = header_lists(&fs);
        assert_eq!(lists[0][2].1, big);
        assert_eq!(
            authority_of(&lists[0]).as_deref(),
            Some(REPLACEMENT_AUTHORITY)
        );
    }

    /// A client encoder that indexes (and Huffman-codes) its headers, as
    /// grpc-go's does: the second block is mostly references into the
    /// first block's dynamic table entries.
    fn client_block(enc: &mut httlib_hpack::Encoder, headers: &[(&[u8], &[u8])]) -> Vec<u8> {
        let flags = httlib_hpack::Encoder::HUFFMAN_VALUE
            | httlib_hpack::Encoder::WITH_INDEXING
            | httlib_hpack::Encoder::BEST_FORMAT;
        let mut dst = Vec::new();
        for (n, v) in headers {
            enc.encode((n.to_vec(), v.to_vec(), flags), &mut dst)
                .expect("encodes");
        }
        dst
    }

    #[test]
    fn indexed_references_across_blocks_and_huffman_values_are_resolved() {
        let mut enc = httlib_hpack::Encoder::default();
        let headers = request(SOCK);
        let refs: Vec<(&[u8], &[u8])> = headers.iter().map(|(n, v)| (*n, &v[..])).collect();
        let first = client_block(&mut enc, &refs);
        let second = client_block(&mut enc, &refs);
        assert!(second.len() < 12, "second block is references: {second:?}");
        // The socket path is not present literally: it is Huffman-coded.
        assert!(!first.windows(SOCK.len()).any(|w| w == SOCK));

        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &first));
        input.extend(data(1));
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &second));
        input.extend(data(3));
        let (out, rw) = rewrite(&input, 1);
        let lists = header_lists(&frames(&out));
        assert_eq!(lists.len(), 2);
        for list in &lists {
            assert_eq!(list.len(), 6);
            assert_eq!(authority_of(list).as_deref(), Some(REPLACEMENT_AUTHORITY));
            assert_eq!(list[2].1, b"/csi.v1.Identity/GetPluginInfo");
            assert_eq!(list[5], (b"te".to_vec(), b"trailers".to_vec()));
        }
        assert_eq!(rw.rewrites, 2);
    }

    #[test]
    fn table_size_updates_are_applied_and_dropped() {
        // Size update to 0 (evicts everything), then a literal.
        let mut block = vec![0x20];
        encode_literal(&mut block, b":authority", SOCK);
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block));
        let (out, _) = rewrite(&input, 3);
        let fs = frames(&out);
        assert_eq!(fs[0].payload[0], 0x00, "starts with the literal");
        assert_eq!(
            header_lists(&fs)[0],
            vec![(b":authority".to_vec(), REPLACEMENT_AUTHORITY.to_vec())]
        );
    }

    #[test]
    fn malformed_input_passes_through_unchanged() {
        let lit = literals(&[(b":authority", SOCK)]);
        let cases: Vec<Vec<u8>> = vec![
            // Not HTTP/2 at all.
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            // Padding longer than the payload.
            [
                PREFACE,
                &frame(
                    TYPE_HEADERS,
                    FLAG_PADDED | FLAG_END_HEADERS,
                    1,
                    &[200, 1, 2],
                ),
            ]
            .concat(),
            // Index 70 into an empty dynamic table.
            [
                PREFACE,
                &frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0x80 | 70]),
            ]
            .concat(),
            // CONTINUATION interrupted by another frame.
            [PREFACE, &frame(TYPE_HEADERS, 0, 1, &lit), &settings()].concat(),
            // CONTINUATION on another stream.
            [
                PREFACE,
                &frame(TYPE_HEADERS, 0, 1, &lit),
                &frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, &[]),
            ]
            .concat(),
            // EOF in the middle of a HEADERS frame.
            [
                PREFACE,
                &frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &lit)[..20],
            ]
            .concat(),
            // EOF in the middle of the preface.
            PREFACE[..10].to_vec(),
            // Truncated HPACK string.
            [
                PREFACE,
                &frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &lit[..lit.len() - 3]),
            ]
            .concat(),
        ];
        for (i, input) in cases.iter().enumerate() {
            for step in [1, 4, input.len()] {
                let (out, _) = rewrite(input, step);
                assert_eq!(&out, input, "case {i} step {step}");
            }
        }
    }

    #[test]
    fn hpack_bomb_is_not_expanded() {
        // One big indexed entry, then a block of many references to it.
        let mut first = vec![0x40];
        encode_string(&mut first, b"x-a");
        encode_string(&mut first, &[b'a'; 4000]);
        let second = vec![0xbe; 300_000]; // index 62 = newest dynamic entry
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &first));
        let mut rest = Vec::new();
        let (a, tail) = second.split_at(16_000);
        rest.extend(frame(TYPE_HEADERS, 0, 3, a));
        for (i, chunk) in tail.chunks(16_000).enumerate() {
            let last = (i + 1) * 16_000 >= tail.len();
            let flags = if last { FLAG_END_HEADERS } else { 0 };
            rest.extend(frame(TYPE_CONTINUATION, flags, 3, chunk));
        }
        input.extend(&rest);
        let (out, rw) = rewrite(&input, 65_536);
        assert!(
            out.ends_with(&rest),
            "oversized block passed through as sent"
        );
        assert_eq!(rw.state, State::Passthrough);
    }

    #[test]
    fn integers_round_trip_through_the_decoder() {
        for len in [0usize, 1, 126, 127, 128, 255, 16_383, 70_000] {
            let v = vec![b'v'; len];
            let block = literals(&[(b"x-n", &v)]);
            let got = loona_hpack::Decoder::new().decode(&block).unwrap();
            assert_eq!(got, vec![(b"x-n".to_vec(), v)]);
        }
    }

    /// An inner stream that yields one byte per read and is Pending every
    /// other poll, to exercise partial reads through the IO adapter.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        ready: bool,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if !self.ready {
                self.ready = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.ready = false;
            if self.pos < self.data.len() {
                buf.put_slice(&[self.data[self.pos]]);
                self.pos += 1;
            }
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn adapter_handles_byte_by_byte_reads_and_eof() {
        let mut enc = httlib_hpack::Encoder::default();
        let headers = request(SOCK);
        let refs: Vec<(&[u8], &[u8])> = headers.iter().map(|(n, v)| (*n, &v[..])).collect();
        let mut input = PREFACE.to_vec();
        input.extend(settings());
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &client_block(&mut enc, &refs),
        ));
        input.extend(frame(0x0, 0, 1, &[7u8; 3000]));
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            1,
            &client_block(&mut enc, &refs),
        ));
        let mut io = AuthorityFix::new(Trickle {
            data: input.clone(),
            pos: 0,
            ready: false,
        });
        let mut out = Vec::new();
        let mut buf = [0u8; 5];
        loop {
            let n = io.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(io.rewrites(), 2);
        assert!(!io.gave_up());
        let (whole, _) = rewrite(&input, input.len());
        assert_eq!(out, whole, "same result as one big read");
        let fs = frames(&out);
        assert_eq!(
            fs[2],
            Frame {
                kind: 0,
                flags: 0,
                stream_id: 1,
                payload: vec![7; 3000]
            }
        );
        assert_eq!(fs[3].flags, FLAG_END_HEADERS | FLAG_END_STREAM);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn header() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
            prop_oneof![
                (
                    Just(b":authority".to_vec()),
                    prop::collection::vec(any::<u8>(), 0..40)
                ),
                (Just(b":authority".to_vec()), Just(SOCK.to_vec())),
                (
                    Just(b":path".to_vec()),
                    "/[a-z./]{0,30}".prop_map(String::into_bytes)
                ),
                (
                    "[a-z-]{1,12}".prop_map(String::into_bytes),
                    prop::collection::vec(any::<u8>(), 0..60)
                ),
            ]
        }

        proptest! {
            /// Whatever the client's encoder does (indexing, Huffman) and
            /// however the bytes arrive, h2 gets the same header lists with
            /// only bad authorities replaced, decodable without any table.
            #[test]
            fn any_header_lists_any_split(
                lists in prop::collection::vec(prop::collection::vec(header(), 0..8), 1..6),
                step in 1usize..64,
                huffman in any::<bool>(),
            ) {
                let mut enc = httlib_hpack::Encoder::default();
                let flags = httlib_hpack::Encoder::WITH_INDEXING
                    | httlib_hpack::Encoder::BEST_FORMAT
                    | if huffman { httlib_hpack::Encoder::HUFFMAN_VALUE } else { 0 };
                let mut input = PREFACE.to_vec();
                for (i, list) in lists.iter().enumerate() {
                    let mut block = Vec::new();
                    for (n, v) in list {
                        enc.encode((n.clone(), v.clone(), flags), &mut block).unwrap();
                    }
                    let id = 1 + 2 * i as u32;
                    // Alternate one frame and a HEADERS + CONTINUATION split.
                    if i % 2 == 0 || block.len() < 2 {
                        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, id, &block));
                    } else {
                        let (a, b) = block.split_at(block.len() / 2);
                        input.extend(frame(TYPE_HEADERS, 0, id, a));
                        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, id, b));
                    }
                    input.extend(data(id));
                }
                let (out, rw) = rewrite(&input, step);
                prop_assert_eq!(rw.state, State::FrameHeader);
                let got = header_lists(&frames(&out));
                let want: Vec<Vec<(Vec<u8>, Vec<u8>)>> = lists
                    .iter()
                    .map(|list| {
                        list.iter()
                            .map(|(n, v)| {
                                if n == b":authority" && !valid_authority(v) {
                                    (n.clone(), REPLACEMENT_AUTHORITY.to_vec())
                                } else {
                                    (n.clone(), v.clone())
                                }
                            })
                            .collect()
                    })
                    .collect();
                prop_assert_eq!(got, want);
            }

            /// Garbage after the preface never panics, and garbage in place
            /// of the preface is passed through untouched.
            #[test]
            fn garbage_never_panics(
                body in prop::collection::vec(any::<u8>(), 0..2000),
                step in 1usize..300,
            ) {
                let input = [PREFACE, &body].concat();
                let _ = rewrite(&input, step);
                if !body.starts_with(PREFACE) {
                    let (out, _) = rewrite(&body, step);
                    prop_assert_eq!(out, body);
                }
            }

            /// Frame-shaped garbage: valid frame headers around random
            /// header-block payloads.
            #[test]
            fn random_header_payloads_never_panic(
                frames_in in prop::collection::vec(
                    (prop::sample::select(vec![0x0u8, 0x1, 0x4, 0x9]), any::<u8>(), 0u32..4,
                     prop::collection::vec(any::<u8>(), 0..100)),
                    0..12),
                step in 1usize..50,
            ) {
                let mut input = PREFACE.to_vec();
                for (kind, flags, id, payload) in &frames_in {
                    input.extend(frame(*kind, *flags, *id, payload));
                }
                let (out, _) = rewrite(&input, step);
                // Rewritten or given up on, the output is whole frames and
                // every frame outside header blocks is there unchanged.
                let opaque = |f: &Frame| f.kind == 0x0 || f.kind == 0x4;
                let sent: Vec<Frame> = frames(&input).into_iter().filter(opaque).collect();
                let got: Vec<Frame> = frames(&out).into_iter().filter(opaque).collect();
                prop_assert_eq!(got, sent);
            }
        }
    }
}
