//! The benchmark's two transports behind one byte-stream type: plain TCP, or WebSocket (spec
//! §2.11) with `tern.v1`, where each frame travels as one binary message.
//!
//! The WebSocket side is a client codec over the socket's halves, so the workloads keep reading
//! and writing frames as bytes whichever transport runs: [`WriteHalf`] wraps each frame of what it
//! is given in a masked binary message (frames may span several writes), and [`ReadHalf`] strips
//! the server's message headers. tungstenite supplies the handshake key, its check and the frame
//! header codec. Writers must `flush` after `write_all`: a WebSocket write is queued until then.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tungstenite::handshake::client::generate_key;
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// The largest upgrade response read.
const RESPONSE_BYTES_MAX: usize = 8 * 1024;
/// Bytes read from the socket at a time on a WebSocket connection.
const WS_READ_BYTES: usize = 16 * 1024;

/// A connected stream on either transport.
#[derive(Debug)]
pub(crate) struct Stream {
    r: ReadHalf,
    w: WriteHalf,
}

/// The reading half.
#[derive(Debug)]
pub(crate) enum ReadHalf {
    /// Plain TCP.
    Tcp(OwnedReadHalf),
    /// WebSocket.
    Ws(Box<WsRead>),
}

/// The writing half.
#[derive(Debug)]
pub(crate) enum WriteHalf {
    /// Plain TCP.
    Tcp(OwnedWriteHalf),
    /// WebSocket.
    Ws(Box<WsWrite>),
}

impl Stream {
    /// A plain TCP stream.
    pub(crate) fn tcp(stream: TcpStream) -> Stream {
        let (r, w) = stream.into_split();
        Stream {
            r: ReadHalf::Tcp(r),
            w: WriteHalf::Tcp(w),
        }
    }

    /// Upgrades `stream` to a WebSocket with the subprotocol `tern.v1`.
    pub(crate) async fn websocket(mut stream: TcpStream, addr: SocketAddr) -> io::Result<Stream> {
        let key = generate_key();
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: tern.v1\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::with_capacity(512);
        let end = loop {
            if let Some(at) = response.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if response.len() >= RESPONSE_BYTES_MAX {
                return Err(io::Error::other("the upgrade response is too long"));
            }
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            response.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
        let accept = derive_accept_key(key.as_bytes()).to_ascii_lowercase();
        if !head.starts_with("http/1.1 101") || !head.contains(&accept) || !head.contains("tern.v1")
        {
            let line = head.lines().next().unwrap_or("").to_owned();
            return Err(io::Error::other(format!(
                "WebSocket upgrade refused: {line}"
            )));
        }
        let rest = response[end..].to_vec();
        let (r, w) = stream.into_split();
        let mut read = WsRead::new(r);
        read.raw.extend_from_slice(&rest);
        Ok(Stream {
            r: ReadHalf::Ws(Box::new(read)),
            w: WriteHalf::Ws(Box::new(WsWrite::new(w))),
        })
    }

    /// The two halves.
    pub(crate) fn into_split(self) -> (ReadHalf, WriteHalf) {
        (self.r, self.w)
    }

    /// Closes with a reset rather than a FIN (the storm's way to end connections quickly).
    pub(crate) fn set_zero_linger(&self) -> io::Result<()> {
        let tcp: &TcpStream = match &self.r {
            ReadHalf::Tcp(r) => r.as_ref(),
            ReadHalf::Ws(r) => r.inner.as_ref(),
        };
        tcp.set_zero_linger()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.r).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.w).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.w).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.w).poll_shutdown(cx)
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            ReadHalf::Ws(r) => r.poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            WriteHalf::Ws(w) => w.poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_flush(cx),
            WriteHalf::Ws(w) => w.poll_drain(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            WriteHalf::Ws(w) => {
                ready!(w.poll_drain(cx))?;
                Pin::new(&mut w.inner).poll_shutdown(cx)
            }
        }
    }
}

/// The reading side of a WebSocket: message payloads as one byte stream.
#[derive(Debug)]
pub(crate) struct WsRead {
    inner: OwnedReadHalf,
    /// Bytes read and not yet used; allocated on the first read.
    raw: Vec<u8>,
    start: usize,
    /// Payload bytes of the current frame still to pass on (or skip).
    payload_left: usize,
    /// The current frame is a control frame: its payload is skipped.
    skipping: bool,
    /// The server sent Close: end of stream.
    closed: bool,
}

impl WsRead {
    fn new(inner: OwnedReadHalf) -> WsRead {
        WsRead {
            inner,
            raw: Vec::new(),
            start: 0,
            payload_left: 0,
            skipping: false,
            closed: false,
        }
    }

    fn poll_read(&mut self, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.closed {
                return Poll::Ready(Ok(()));
            }
            let available = self.raw.len() - self.start;
            if self.payload_left > 0 && available > 0 {
                let n = self.payload_left.min(available);
                if self.skipping {
                    self.start += n;
                    self.payload_left -= n;
                    continue;
                }
                let n = n.min(out.remaining());
                out.put_slice(&self.raw[self.start..self.start + n]);
                self.start += n;
                self.payload_left -= n;
                return Poll::Ready(Ok(()));
            }
            if self.payload_left == 0 && available > 0 {
                let mut cursor = io::Cursor::new(&self.raw[self.start..]);
                match FrameHeader::parse(&mut cursor) {
                    Err(e) => return Poll::Ready(Err(io::Error::other(e.to_string()))),
                    Ok(Some((header, length))) => {
                        self.start += cursor.position() as usize;
                        self.payload_left = length as usize;
                        self.skipping = matches!(header.opcode, OpCode::Control(_));
                        if header.opcode == OpCode::Control(Control::Close) {
                            self.closed = true;
                        }
                        if !matches!(
                            header.opcode,
                            OpCode::Control(_) | OpCode::Data(Data::Binary | Data::Continue)
                        ) {
                            return Poll::Ready(Err(io::Error::other("a text message")));
                        }
                        continue;
                    }
                    Ok(None) => {}
                }
            }
            // More bytes are needed: keep the unused tail, then read.
            self.raw.drain(..self.start);
            self.start = 0;
            let used = self.raw.len();
            self.raw.resize(used + WS_READ_BYTES, 0);
            let mut buf = ReadBuf::new(&mut self.raw[used..]);
            let polled = Pin::new(&mut self.inner).poll_read(cx, &mut buf);
            let n = buf.filled().len();
            self.raw.truncate(used + n);
            match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if n == 0 => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {}
            }
        }
    }
}

/// The writing side of a WebSocket: frames in, one masked binary message each out.
#[derive(Debug)]
pub(crate) struct WsWrite {
    inner: OwnedWriteHalf,
    /// Encoded bytes not yet written.
    pending: Vec<u8>,
    written: usize,
    /// Payload bytes of the current message still to come.
    left: usize,
    /// The part of a frame's length field a write ended in.
    prefix: [u8; 4],
    prefix_len: usize,
    mask: [u8; 4],
    mask_offset: usize,
    /// xorshift state for the masks (masks need not be secret for a benchmark).
    seed: u32,
}

impl WsWrite {
    fn new(inner: OwnedWriteHalf) -> WsWrite {
        WsWrite {
            inner,
            pending: Vec::new(),
            written: 0,
            left: 0,
            prefix: [0; 4],
            prefix_len: 0,
            mask: [0; 4],
            mask_offset: 0,
            seed: 0x9E37_79B9,
        }
    }

    fn next_mask(&mut self) -> [u8; 4] {
        let mut x = self.seed;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.seed = x;
        x.to_be_bytes()
    }

    fn masked(&mut self, bytes: &[u8]) {
        let start = self.pending.len();
        self.pending.extend_from_slice(bytes);
        for (i, b) in self.pending[start..].iter_mut().enumerate() {
            *b ^= self.mask[(self.mask_offset + i) & 3];
        }
        self.mask_offset = (self.mask_offset + bytes.len()) & 3;
    }

    fn encode(&mut self, mut frames: &[u8]) {
        while !frames.is_empty() {
            if self.left > 0 {
                let n = self.left.min(frames.len());
                self.masked(&frames[..n]);
                frames = &frames[n..];
                self.left -= n;
                continue;
            }
            let n = (4 - self.prefix_len).min(frames.len());
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&frames[..n]);
            self.prefix_len += n;
            frames = &frames[n..];
            if self.prefix_len < 4 {
                return;
            }
            self.prefix_len = 0;
            let size = u32::from_be_bytes(self.prefix) as usize + 4;
            self.mask = self.next_mask();
            self.mask_offset = 0;
            let header = FrameHeader {
                opcode: OpCode::Data(Data::Binary),
                mask: Some(self.mask),
                ..FrameHeader::default()
            };
            let _ = header.format(size as u64, &mut self.pending);
            let prefix = self.prefix;
            self.masked(&prefix);
            self.left = size - 4;
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_drain(cx))?;
        self.encode(buf);
        Poll::Ready(Ok(buf.len()))
    }

    /// Writes everything encoded so far.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        if self.pending.capacity() > 1 << 20 {
            self.pending = Vec::new();
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }
}
