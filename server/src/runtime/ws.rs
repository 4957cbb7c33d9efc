//! WebSocket (RFC 6455): the opening handshake, and a sans-IO codec that sits between the socket
//! (or TLS) and the frame codec, so browsers speak the same frames as TCP clients (spec §2.11).
//!
//! Each binary WebSocket message carries exactly one Tern frame, length prefix included. Reading,
//! the codec unmasks message payloads straight into the connection's inbox, where the ordinary
//! [`FrameDecoder`](tern_protocol::FrameDecoder) finds them; it checks as bytes arrive that every
//! message ends where its frame ends (close 1007 otherwise), that none is larger than the largest
//! frame (1009, decided from the lengths alone, before any payload is buffered), and that text
//! messages are refused (1003). Writing, it wraps the outbound queue's frames, which lie end to
//! end, one WebSocket message each. It answers Pings and the client's Close itself.
//!
//! Why not `tungstenite::WebSocketContext`: it reads from a `Read + Write` stream into a read
//! buffer of its own (128 KiB by default, kept while the connection lives), hands each message over
//! as a freshly allocated `Message`, and wants a stream to write to. Our connections read into
//! owned buffers borrowed from the core's pool, keep no buffer while idle, and their state must be
//! a plain value that migrates to another core with the socket. So tungstenite supplies what is
//! easy to get wrong, the HTTP upgrade (request parsing with httparse, its validation, the
//! `Sec-WebSocket-Accept` key) and the frame header codec (`FrameHeader`), while message assembly,
//! which is a few counters here because a message is exactly one frame, stays in this module. The
//! whole state is [`WsState`], a few dozen bytes with no buffer but a pending control frame's.

use bytes::BytesMut;
use tungstenite::handshake::machine::TryParse;
use tungstenite::handshake::server::{create_response, write_response, Request};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use tern_protocol::limits::FRAME_BYTES_MAX;

/// The subprotocol a client must offer (spec §2.11.1).
pub(crate) const SUBPROTOCOL: &str = "tern.v1";
/// The largest upgrade request, headers included; past it the answer is 431.
pub(crate) const UPGRADE_REQUEST_BYTES_MAX: usize = 8 * 1024;
/// The largest payload of a control frame (RFC 6455 §5.5).
const CONTROL_PAYLOAD_BYTES_MAX: usize = 125;
/// The largest frame header: 2 bytes, an 8-byte length and a 4-byte mask.
const FRAME_HEADER_BYTES_MAX: usize = 14;
/// The largest message: one largest frame (spec §2.11.3).
const MESSAGE_BYTES_MAX: u64 = FRAME_BYTES_MAX as u64;

/// The origins allowed by default: pages served from this machine, for development.
pub(crate) const ALLOWED_ORIGINS_DEFAULT: [&str; 6] = [
    "http://localhost:*",
    "http://127.0.0.1:*",
    "http://[::1]:*",
    "https://localhost:*",
    "https://127.0.0.1:*",
    "https://[::1]:*",
];

/// Close codes (RFC 6455 §7.4.1) and when the server sends them (spec §2.11.4).
pub(crate) mod close {
    /// The protocol closed the connection, or the client did.
    pub(crate) const NORMAL: u16 = 1000;
    /// The client broke RFC 6455.
    pub(crate) const PROTOCOL_ERROR: u16 = 1002;
    /// A text message.
    pub(crate) const UNSUPPORTED_DATA: u16 = 1003;
    /// A binary message that is not exactly one frame.
    pub(crate) const INVALID_PAYLOAD: u16 = 1007;
    /// A message above the largest frame.
    pub(crate) const MESSAGE_TOO_BIG: u16 = 1009;
}

/// Why the codec closes the connection: the code and reason of the server's Close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closing {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
}

impl std::fmt::Display for Closing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebSocket close {}: {}", self.code, self.reason)
    }
}

fn closing(code: u16, reason: &'static str) -> Closing {
    Closing { code, reason }
}

/// What the bytes of one read amounted to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    /// The connection stays open.
    Open,
    /// The client sent Close; the server's answer is queued.
    PeerClosed,
}

/// Whether an `Origin` is on the allow-list (spec §2.11.1): `*` allows all; an entry ending in
/// `:*` allows its scheme and host on any port, or none; otherwise the match is exact.
/// Comparisons ignore case.
pub(crate) fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    let origin = origin.trim().to_ascii_lowercase();
    allowed.iter().any(|entry| {
        let entry = entry.trim().to_ascii_lowercase();
        if entry == "*" || entry == origin {
            return true;
        }
        let Some(base) = entry.strip_suffix(":*") else {
            return false;
        };
        match origin.strip_prefix(base) {
            Some("") => true,
            Some(port) => port
                .strip_prefix(':')
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())),
            None => false,
        }
    })
}

/// Checks one entry of the allow-list, for the configuration.
pub(crate) fn check_origin_entry(entry: &str) -> Result<(), String> {
    if entry == "*" {
        return Ok(());
    }
    let Some((scheme, rest)) = entry.split_once("://") else {
        return Err(format!(
            "origin {entry:?} needs a scheme, as in https://example.com"
        ));
    };
    if scheme.is_empty() || rest.is_empty() || rest.contains('/') {
        return Err(format!(
            "origin {entry:?} must be scheme://host or scheme://host:port, with no path"
        ));
    }
    Ok(())
}

/// The outcome of reading an upgrade request so far.
#[derive(Debug)]
pub(crate) enum Upgrade {
    /// More bytes are needed.
    Incomplete,
    /// Upgrade: send `response`; the request took `consumed` bytes, and any after it are
    /// WebSocket frames already.
    Accept { response: Vec<u8>, consumed: usize },
    /// Refuse with this HTTP response and close.
    Refuse { response: Vec<u8>, status: u16 },
}

/// Reads the upgrade request in `request` (spec §2.11.1): validates it with tungstenite, then
/// checks the subprotocol and the `Origin` against `allowed`.
pub(crate) fn upgrade(request: &[u8], allowed: &[String]) -> Upgrade {
    let parsed = match Request::try_parse(request) {
        Ok(None) if request.len() >= UPGRADE_REQUEST_BYTES_MAX => {
            return refuse(
                431,
                "Request Header Fields Too Large",
                "the upgrade request is too large",
            )
        }
        Ok(None) => return Upgrade::Incomplete,
        Ok(Some(parsed)) => parsed,
        Err(tungstenite::Error::HttpFormat(_)) | Err(tungstenite::Error::Http(_)) => {
            return refuse(400, "Bad Request", "not a valid HTTP request")
        }
        Err(e) => return refuse_with(400, "Bad Request", &format!("{e}")),
    };
    let (consumed, request) = parsed;
    if consumed > UPGRADE_REQUEST_BYTES_MAX {
        return refuse(
            431,
            "Request Header Fields Too Large",
            "the upgrade request is too large",
        );
    }
    let headers = request.headers();
    if let Some(origin) = headers.get("Origin") {
        let origin = origin.to_str().unwrap_or("");
        if !origin_allowed(allowed, origin) {
            return refuse(403, "Forbidden", "this Origin may not connect");
        }
    }
    let offers_subprotocol = headers
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL);
    let mut response = match create_response(&request) {
        Ok(response) => response,
        Err(e) => return refuse_with(400, "Bad Request", &format!("not a WebSocket upgrade: {e}")),
    };
    if !offers_subprotocol {
        return refuse(
            400,
            "Bad Request",
            "offer the subprotocol tern.v1 (Sec-WebSocket-Protocol: tern.v1)",
        );
    }
    response.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        tungstenite::http::HeaderValue::from_static(SUBPROTOCOL),
    );
    let mut bytes = Vec::with_capacity(256);
    if let Err(e) = write_response(&mut bytes, &response) {
        return refuse_with(400, "Bad Request", &format!("{e}"));
    }
    Upgrade::Accept {
        response: bytes,
        consumed,
    }
}

fn refuse(status: u16, phrase: &str, body: &str) -> Upgrade {
    refuse_with(status, phrase, body)
}

fn refuse_with(status: u16, phrase: &str, body: &str) -> Upgrade {
    Upgrade::Refuse {
        response: http_response(status, phrase, body, ""),
        status,
    }
}

/// A small HTTP/1.1 response that closes the connection.
pub(crate) fn http_response(status: u16, phrase: &str, body: &str, extra: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}\n",
        body.len() + 1
    )
    .into_bytes()
}

/// What the frame being read carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// Between frames: the next bytes are a header.
    Header,
    /// Payload of a binary message, unmasked into the inbox.
    Data,
    /// Payload of a control frame, collected in `control`.
    Control(Control),
}

/// The WebSocket state of one connection: a plain value that migrates with it.
#[derive(Debug)]
pub(crate) struct WsState {
    // Reading.
    reading: Reading,
    /// A header that has not arrived whole.
    header: [u8; FRAME_HEADER_BYTES_MAX],
    header_len: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    mask: [u8; 4],
    /// Payload bytes of the current frame read so far, for the mask's phase.
    mask_offset: usize,
    /// The current data frame ends its message.
    fin: bool,
    /// A binary message is under way (more fragments may follow).
    in_message: bool,
    /// Bytes of the current message so far.
    message_len: u64,
    /// The first four bytes of the current message: its frame's length field.
    prefix: [u8; 4],
    /// The control frame being read: its payload (at most 125 bytes).
    control: Vec<u8>,
    // Writing.
    /// Bytes of the current outgoing message still to copy.
    out_left: usize,
    /// The part of an outgoing frame's length field a chunk ended in.
    out_prefix: [u8; 4],
    out_prefix_len: usize,
    /// Control frames waiting for a message boundary.
    control_out: Vec<u8>,
    /// The Close frame is queued or sent; nothing is queued after it.
    close_queued: bool,
}

impl Default for WsState {
    fn default() -> Self {
        WsState::new()
    }
}

impl WsState {
    /// The state right after the upgrade.
    pub(crate) fn new() -> WsState {
        WsState {
            reading: Reading::Header,
            header: [0; FRAME_HEADER_BYTES_MAX],
            header_len: 0,
            payload_left: 0,
            mask: [0; 4],
            mask_offset: 0,
            fin: false,
            in_message: false,
            message_len: 0,
            prefix: [0; 4],
            control: Vec::new(),
            out_left: 0,
            out_prefix: [0; 4],
            out_prefix_len: 0,
            control_out: Vec::new(),
            close_queued: false,
        }
    }

    /// Decodes `raw` (bytes from the socket, or TLS plaintext), appending the frames carried by
    /// binary messages to `inbox`. On a violation the server's Close is queued and returned; after
    /// the client's Close the answer is queued and the rest ignored.
    pub(crate) fn decode(&mut self, mut raw: &[u8], inbox: &mut BytesMut) -> Result<Flow, Closing> {
        while !raw.is_empty() {
            let step = match self.reading {
                Reading::Header => self.read_header(&mut raw),
                Reading::Data => self.read_data(&mut raw, inbox),
                Reading::Control(kind) => self.read_control(&mut raw, kind),
            };
            match step {
                Ok(Flow::Open) => {}
                Ok(Flow::PeerClosed) => return Ok(Flow::PeerClosed),
                Err(c) => {
                    self.queue_close(c.code, c.reason);
                    return Err(c);
                }
            }
        }
        Ok(Flow::Open)
    }

    fn read_header(&mut self, raw: &mut &[u8]) -> Result<Flow, Closing> {
        let had = self.header_len;
        let take = raw.len().min(FRAME_HEADER_BYTES_MAX - had);
        self.header[had..had + take].copy_from_slice(&raw[..take]);
        self.header_len += take;
        let mut cursor = std::io::Cursor::new(&self.header[..self.header_len]);
        let parsed = FrameHeader::parse(&mut cursor)
            .map_err(|_| closing(close::PROTOCOL_ERROR, "an unknown opcode"))?;
        let Some((header, length)) = parsed else {
            // Not whole yet: everything taken waits in `header`.
            *raw = &raw[take..];
            return Ok(Flow::Open);
        };
        let used = cursor.position() as usize;
        *raw = &raw[used - had..];
        self.header_len = 0;
        self.start_frame(&header, length)
    }

    fn start_frame(&mut self, header: &FrameHeader, length: u64) -> Result<Flow, Closing> {
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(closing(close::PROTOCOL_ERROR, "a reserved bit is set"));
        }
        let Some(mask) = header.mask else {
            return Err(closing(
                close::PROTOCOL_ERROR,
                "client frames must be masked",
            ));
        };
        self.mask = mask;
        self.mask_offset = 0;
        self.payload_left = length;
        match header.opcode {
            OpCode::Control(kind) => {
                if !header.is_final || length > CONTROL_PAYLOAD_BYTES_MAX as u64 {
                    return Err(closing(
                        close::PROTOCOL_ERROR,
                        "a control frame fragmented or over 125 bytes",
                    ));
                }
                self.control.clear();
                self.reading = Reading::Control(kind);
                if length == 0 {
                    return self.control_done(kind);
                }
                Ok(Flow::Open)
            }
            OpCode::Data(Data::Text) => Err(closing(
                close::UNSUPPORTED_DATA,
                "text messages are not accepted: send frames as binary messages",
            )),
            OpCode::Data(Data::Binary) if self.in_message => Err(closing(
                close::PROTOCOL_ERROR,
                "a new message inside a fragmented one",
            )),
            OpCode::Data(Data::Continue) if !self.in_message => Err(closing(
                close::PROTOCOL_ERROR,
                "a continuation frame with no message started",
            )),
            OpCode::Data(Data::Binary) | OpCode::Data(Data::Continue) => {
                if !self.in_message {
                    self.in_message = true;
                    self.message_len = 0;
                }
                if self.message_len.saturating_add(length) > MESSAGE_BYTES_MAX {
                    return Err(closing(
                        close::MESSAGE_TOO_BIG,
                        "a message above the largest frame (1 MiB)",
                    ));
                }
                self.fin = header.is_final;
                self.reading = Reading::Data;
                if length == 0 {
                    return self.data_frame_done();
                }
                Ok(Flow::Open)
            }
            OpCode::Data(Data::Reserved(_)) => {
                Err(closing(close::PROTOCOL_ERROR, "an unknown opcode"))
            }
        }
    }

    /// Unmasks payload bytes into the inbox, checking the message against its frame's length
    /// field as the bytes arrive.
    fn read_data(&mut self, raw: &mut &[u8], inbox: &mut BytesMut) -> Result<Flow, Closing> {
        let take = raw
            .len()
            .min(usize::try_from(self.payload_left).unwrap_or(usize::MAX));
        let start = inbox.len();
        inbox.extend_from_slice(&raw[..take]);
        *raw = &raw[take..];
        for (i, b) in inbox[start..].iter_mut().enumerate() {
            *b ^= self.mask[(self.mask_offset + i) & 3];
        }
        self.mask_offset = (self.mask_offset + take) & 3;
        // The frame's length field: the message's first four bytes.
        let before = self.message_len as usize;
        if before < 4 {
            let n = (4 - before).min(take);
            self.prefix[before..before + n].copy_from_slice(&inbox[start..start + n]);
        }
        self.message_len += take as u64;
        self.payload_left -= take as u64;
        if let Some(expected) = self.expected() {
            if expected > MESSAGE_BYTES_MAX {
                return Err(closing(
                    close::MESSAGE_TOO_BIG,
                    "a frame above the largest frame (1 MiB)",
                ));
            }
            if self.message_len > expected {
                return Err(closing(
                    close::INVALID_PAYLOAD,
                    "a message goes on past its frame: send one frame per message",
                ));
            }
        }
        if self.payload_left == 0 {
            return self.data_frame_done();
        }
        Ok(Flow::Open)
    }

    /// The size of the current message that its frame's length field announces, once known.
    fn expected(&self) -> Option<u64> {
        (self.message_len >= 4).then(|| u64::from(u32::from_be_bytes(self.prefix)) + 4)
    }

    fn data_frame_done(&mut self) -> Result<Flow, Closing> {
        self.reading = Reading::Header;
        if !self.fin {
            return Ok(Flow::Open);
        }
        self.in_message = false;
        if self.expected() != Some(self.message_len) {
            return Err(closing(
                close::INVALID_PAYLOAD,
                "a message ends before its frame does: send one whole frame per message",
            ));
        }
        Ok(Flow::Open)
    }

    fn read_control(&mut self, raw: &mut &[u8], kind: Control) -> Result<Flow, Closing> {
        let take = raw.len().min(self.payload_left as usize);
        let start = self.control.len();
        self.control.extend_from_slice(&raw[..take]);
        *raw = &raw[take..];
        for (i, b) in self.control[start..].iter_mut().enumerate() {
            *b ^= self.mask[(self.mask_offset + i) & 3];
        }
        self.mask_offset = (self.mask_offset + take) & 3;
        self.payload_left -= take as u64;
        if self.payload_left == 0 {
            return self.control_done(kind);
        }
        Ok(Flow::Open)
    }

    fn control_done(&mut self, kind: Control) -> Result<Flow, Closing> {
        self.reading = Reading::Header;
        let payload = std::mem::take(&mut self.control);
        match kind {
            Control::Ping => {
                if !self.close_queued {
                    push_frame(
                        &mut self.control_out,
                        OpCode::Control(Control::Pong),
                        &payload,
                    );
                }
                Ok(Flow::Open)
            }
            Control::Pong => Ok(Flow::Open),
            Control::Close => {
                self.queue_close(close::NORMAL, "");
                Ok(Flow::PeerClosed)
            }
            Control::Reserved(_) => Err(closing(close::PROTOCOL_ERROR, "an unknown opcode")),
        }
    }

    /// Queues the server's Close frame (once).
    pub(crate) fn queue_close(&mut self, code: u16, reason: &str) {
        if self.close_queued {
            return;
        }
        self.close_queued = true;
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(reason.as_bytes());
        payload.truncate(CONTROL_PAYLOAD_BYTES_MAX);
        push_frame(
            &mut self.control_out,
            OpCode::Control(Control::Close),
            &payload,
        );
    }

    /// Whether control frames wait and may be written now (between messages).
    pub(crate) fn wants_write(&self) -> bool {
        !self.control_out.is_empty() && self.at_boundary()
    }

    fn at_boundary(&self) -> bool {
        self.out_left == 0 && self.out_prefix_len == 0
    }

    /// Wraps `plaintext`, frames end to end (a chunk may end inside one; the next chunk goes on
    /// with it), one binary message per frame, with any queued control frames between messages.
    pub(crate) fn encode(&mut self, mut plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + plaintext.len() / 64 + 16);
        self.flush_control(&mut out);
        while !plaintext.is_empty() {
            if self.out_left > 0 {
                let n = self.out_left.min(plaintext.len());
                out.extend_from_slice(&plaintext[..n]);
                plaintext = &plaintext[n..];
                self.out_left -= n;
                if self.out_left == 0 {
                    self.flush_control(&mut out);
                }
                continue;
            }
            // A frame starts: its length field says how long the message is.
            let need = 4 - self.out_prefix_len;
            let n = need.min(plaintext.len());
            self.out_prefix[self.out_prefix_len..self.out_prefix_len + n]
                .copy_from_slice(&plaintext[..n]);
            self.out_prefix_len += n;
            plaintext = &plaintext[n..];
            if self.out_prefix_len < 4 {
                break;
            }
            self.out_prefix_len = 0;
            let size = u32::from_be_bytes(self.out_prefix) as usize + 4;
            let header = FrameHeader {
                opcode: OpCode::Data(Data::Binary),
                ..FrameHeader::default()
            };
            // Writing into a Vec cannot fail.
            let _ = header.format(size as u64, &mut out);
            out.extend_from_slice(&self.out_prefix);
            self.out_left = size - 4;
            if self.out_left == 0 {
                self.flush_control(&mut out);
            }
        }
        out
    }

    fn flush_control(&mut self, out: &mut Vec<u8>) {
        if self.at_boundary() && !self.control_out.is_empty() {
            out.append(&mut self.control_out);
            // Keep no buffer between control frames.
            self.control_out = Vec::new();
        }
    }
}

/// Appends one unmasked, final frame.
fn push_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    let _ = header.format(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let header = FrameHeader {
            is_final: fin,
            opcode: OpCode::from(opcode),
            mask: Some(mask),
            ..FrameHeader::default()
        };
        let mut out = Vec::new();
        header.format(payload.len() as u64, &mut out).unwrap();
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn tern_frame(body: usize) -> Vec<u8> {
        let mut f = ((body + 6) as u32).to_be_bytes().to_vec();
        f.extend(std::iter::repeat_n(7u8, body + 6));
        f
    }

    // Proves a frame in one message, or in fragments fed a byte at a time, reaches the inbox
    // byte for byte, and that a Ping is answered between messages.
    #[test]
    fn one_frame_per_message_in_any_pieces() {
        let frame = tern_frame(300);
        let mut wire = client_frame(false, 2, &frame[..2]);
        wire.extend(client_frame(true, 9, b"hi"));
        wire.extend(client_frame(true, 0, &frame[2..]));
        wire.extend(client_frame(true, 2, &frame));
        let mut ws = WsState::new();
        let mut inbox = BytesMut::new();
        for b in &wire {
            assert_eq!(ws.decode(&[*b], &mut inbox), Ok(Flow::Open));
        }
        assert_eq!(&inbox[..frame.len()], &frame[..]);
        assert_eq!(&inbox[frame.len()..], &frame[..]);
        assert!(ws.wants_write());
        assert_eq!(ws.encode(&[]), vec![0x8a, 2, b'h', b'i']);
    }

    // Proves each kind of bad message gets its close code.
    #[test]
    fn close_codes() {
        let frame = tern_frame(10);
        let mut joined = frame.clone();
        joined.extend(&frame);
        let cases: [(Vec<u8>, u16); 6] = [
            (client_frame(true, 1, b"hello"), close::UNSUPPORTED_DATA),
            (client_frame(true, 2, &frame[..8]), close::INVALID_PAYLOAD),
            (client_frame(true, 2, &joined), close::INVALID_PAYLOAD),
            (
                client_frame(true, 2, &[0, 0x10, 0, 1, 0, 0]),
                close::MESSAGE_TOO_BIG,
            ),
            (
                client_frame(true, 2, &vec![0; FRAME_BYTES_MAX as usize + 1]),
                close::MESSAGE_TOO_BIG,
            ),
            (client_frame(true, 0, &frame), close::PROTOCOL_ERROR),
        ];
        for (wire, code) in cases {
            let mut ws = WsState::new();
            let got = ws.decode(&wire, &mut BytesMut::new());
            assert_eq!(got.map_err(|c| c.code), Err(code));
            let close = ws.encode(&[]);
            assert_eq!(close[0], 0x88);
            assert_eq!(u16::from_be_bytes([close[2], close[3]]), code);
        }
        // Unmasked client frames break RFC 6455.
        let mut ws = WsState::new();
        let mut unmasked = vec![0x82, frame.len() as u8];
        unmasked.extend(&frame);
        let got = ws.decode(&unmasked, &mut BytesMut::new());
        assert_eq!(got.map_err(|c| c.code), Err(close::PROTOCOL_ERROR));
    }

    // Proves outgoing frames become one message each even when a chunk ends inside a frame or its
    // length field, and that control frames wait for the message boundary.
    #[test]
    fn encoding_follows_frame_boundaries() {
        let a = tern_frame(200);
        let b = tern_frame(0);
        let mut queue = a.clone();
        queue.extend(&b);
        for cut in [1, 2, 3, 100, a.len(), a.len() + 2] {
            let mut ws = WsState::new();
            let mut out = ws.encode(&queue[..cut]);
            ws.queue_close(close::NORMAL, "");
            out.extend(ws.encode(&queue[cut..]));
            let mut expected = vec![0x82, 126, 0, a.len() as u8];
            expected.extend(&a);
            if cut > a.len() {
                expected.extend([0x82, b.len() as u8]);
                expected.extend(&b);
                expected.extend([0x88, 2, 0x03, 0xe8]);
            } else {
                expected.extend([0x88, 2, 0x03, 0xe8]);
                expected.extend([0x82, b.len() as u8]);
                expected.extend(&b);
            }
            assert_eq!(out, expected, "cut at {cut}");
        }
    }

    // Proves the Origin allow-list: exact entries, any port, no port, and refusals.
    #[test]
    fn origins() {
        let allowed: Vec<String> = ALLOWED_ORIGINS_DEFAULT.map(String::from).to_vec();
        assert!(origin_allowed(&allowed, "http://localhost:5173"));
        assert!(origin_allowed(&allowed, "HTTP://LOCALHOST"));
        assert!(origin_allowed(&allowed, "https://[::1]:443"));
        assert!(!origin_allowed(&allowed, "http://localhost.evil.com"));
        assert!(!origin_allowed(&allowed, "http://localhost:80x"));
        assert!(!origin_allowed(&allowed, "https://evil.example"));
        assert!(!origin_allowed(&allowed, "null"));
        let exact = vec!["https://chat.example.com".to_owned()];
        assert!(origin_allowed(&exact, "https://chat.example.com"));
        assert!(!origin_allowed(&exact, "https://chat.example.com:8443"));
        assert!(origin_allowed(&["*".to_owned()], "https://any.where"));
    }

    // Proves the upgrade: a valid request is accepted with the subprotocol; a missing subprotocol
    // is a 400, a foreign Origin a 403, an oversized request a 431.
    #[test]
    fn upgrades() {
        let allowed: Vec<String> = ALLOWED_ORIGINS_DEFAULT.map(String::from).to_vec();
        let request = |extra: &str| {
            format!(
                "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
            )
        };
        let ok = request("Sec-WebSocket-Protocol: x, tern.v1\r\n");
        let Upgrade::Accept { response, consumed } = upgrade(ok.as_bytes(), &allowed) else {
            panic!("refused");
        };
        assert_eq!(consumed, ok.len());
        let response = String::from_utf8(response).unwrap();
        assert!(response.starts_with("HTTP/1.1 101"));
        assert!(response.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        assert!(response.contains("tern.v1"));
        assert!(matches!(
            upgrade(&ok.as_bytes()[..40], &allowed),
            Upgrade::Incomplete
        ));
        let status = |r: Upgrade| match r {
            Upgrade::Refuse { status, .. } => status,
            other => panic!("not refused: {other:?}"),
        };
        assert_eq!(status(upgrade(request("").as_bytes(), &allowed)), 400);
        let foreign =
            request("Sec-WebSocket-Protocol: tern.v1\r\nOrigin: https://evil.example\r\n");
        assert_eq!(status(upgrade(foreign.as_bytes(), &allowed)), 403);
        let big = vec![b'a'; UPGRADE_REQUEST_BYTES_MAX];
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.extend(big);
        assert_eq!(status(upgrade(&huge, &allowed)), 431);
    }
}
