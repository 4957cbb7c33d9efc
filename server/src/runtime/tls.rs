//! TLS: the server's rustls configuration, and the record layer between a [`Socket`] and the
//! frame codec.
//!
//! rustls is used sans-IO: the connection's reader feeds it the ciphertext it reads and takes out
//! plaintext; the writer puts plaintext in and writes the records it gets back. Both engines thus
//! share one TLS path, and the whole TLS state is a plain value (`rustls::ServerConnection`) that
//! moves to another core with the socket when a connection migrates. The handshake runs before
//! the connection's tasks start, bounded by `--tls-handshake-timeout-ms`.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

use super::socket::{BufferPool, Socket};
use super::ws::{Flow, WsState};
use crate::config::Config;

/// Plaintext taken out of rustls per read call.
const PLAINTEXT_CHUNK_BYTES: usize = 16 * 1024;

/// The names the development certificate is valid for.
const SELF_SIGNED_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the certificate and key.
    #[error("the TLS certificate and key do not work together: {0}")]
    Rustls(#[from] rustls::Error),
    /// The development certificate could not be made or stored.
    #[error("the self-signed certificate: {0}")]
    SelfSigned(String),
}

/// The rustls server configuration `config` asks for, if any: TLS 1.3 and 1.2 with the ring
/// provider.
pub(crate) fn server_config(config: &Config) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    let (certs, key) = if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        (read_certs(cert)?, read_key(key)?)
    } else if config.tls_self_signed {
        self_signed(&config.data_dir.join("tls"))?
    } else {
        return Ok(None);
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    // Session tickets would need a key shared by every core; full handshakes are cheap enough for
    // chat clients, which keep their connection for a long time.
    server.send_tls13_tickets = 0;
    Ok(Some(Arc::new(server)))
}

fn pem_error(path: &Path, message: impl ToString) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no CERTIFICATE block"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(path, e))
}

/// The development certificate in `dir`, created there on first use (the key readable by the
/// owner only), so that a restarted server keeps the certificate its clients trust.
fn self_signed(
    dir: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let cert_path = dir.join("self-signed.pem");
    let key_path = dir.join("self-signed.key");
    if !cert_path.exists() || !key_path.exists() {
        let names = SELF_SIGNED_NAMES.map(String::from).to_vec();
        let generated = rcgen::generate_simple_self_signed(names)
            .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
        let io = |e: io::Error| TlsError::SelfSigned(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        write_private(&key_path, generated.signing_key.serialize_pem().as_bytes()).map_err(io)?;
        std::fs::write(&cert_path, generated.cert.pem()).map_err(io)?;
    }
    tracing::warn!(
        certificate = %cert_path.display(),
        "serving TLS with a self-signed certificate for development; clients must trust this file"
    );
    Ok((read_certs(&cert_path)?, read_key(&key_path)?))
}

fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// A socket, with TLS or without, with WebSocket or without: what a connection reads frames from
/// and writes frames to. The layers are sans-IO values stacked on the socket: TLS records
/// outermost, then WebSocket messages, then frames.
pub(crate) struct Link {
    socket: Socket,
    /// Boxed: a rustls session is over a kilobyte, which plain connections should not carry.
    tls: Option<Box<RefCell<ServerConnection>>>,
    /// The WebSocket codec, once the upgrade is done.
    ws: Option<Box<RefCell<WsState>>>,
}

/// The parts of a link, to hand to another core.
pub(crate) type LinkParts = (
    std::net::TcpStream,
    Option<ServerConnection>,
    Option<Box<WsState>>,
);

impl Link {
    /// A plain TCP link.
    pub(crate) fn plain(socket: Socket) -> Link {
        Link {
            socket,
            tls: None,
            ws: None,
        }
    }

    /// The same link carrying WebSocket messages from now on.
    pub(crate) fn with_ws(mut self, ws: WsState) -> Link {
        self.ws = Some(Box::new(RefCell::new(ws)));
        self
    }

    /// Which transport the link is.
    pub(crate) fn transport(&self) -> crate::metrics::Transport {
        use crate::metrics::Transport;
        match (self.tls.is_some(), self.ws.is_some()) {
            (false, false) => Transport::Tcp,
            (true, false) => Transport::Tls,
            (false, true) => Transport::Ws,
            (true, true) => Transport::Wss,
        }
    }

    /// A link with the TLS state of an established (or starting) session.
    pub(crate) fn tls(socket: Socket, mut tls: ServerConnection) -> Link {
        // The connection's outbound queue bounds what is written; rustls need not bound it again.
        tls.set_buffer_limit(None);
        Link {
            socket,
            tls: Some(Box::new(RefCell::new(tls))),
            ws: None,
        }
    }

    /// Runs the TLS handshake to its end, writing the server's records itself (no writer task
    /// runs yet). Application data that arrived with the client's last handshake records is
    /// appended to `inbox`. A plain link has nothing to do.
    pub(crate) async fn handshake(
        &self,
        inbox: &mut BytesMut,
        pool: &BufferPool,
    ) -> io::Result<()> {
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        loop {
            let out = take_records(&mut tls.borrow_mut())?;
            if !out.is_empty() {
                self.socket.write_all(out).await?;
            }
            if !tls.borrow().is_handshaking() {
                return Ok(());
            }
            match self.read_plaintext(inbox, pool).await {
                Ok(0) if tls.borrow().is_handshaking() => {
                    return Err(io::ErrorKind::UnexpectedEof.into())
                }
                Ok(_) => {}
                Err(e) => {
                    // Send the alert rustls prepared, so the client learns why.
                    let alert = take_records(&mut tls.borrow_mut());
                    if let Ok(alert) = alert {
                        let _ = self.socket.write_all(alert).await;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Waits for data, then appends the frame bytes that arrived to `inbox`. Returns the bytes
    /// read from the socket; 0 means the peer closed (or sent TLS `close_notify` or a WebSocket
    /// Close). A WebSocket violation is an `InvalidData` error, its Close frame queued.
    ///
    /// The socket read is the only wait; the TLS and WebSocket layers then run on what it read.
    pub(crate) async fn read(&self, inbox: &mut BytesMut, pool: &BufferPool) -> io::Result<usize> {
        if self.tls.is_none() && self.ws.is_none() {
            return self.socket.read(inbox, pool).await;
        }
        let mut raw = BytesMut::new();
        let n = self.socket.read(&mut raw, pool).await?;
        if n == 0 {
            return Ok(0);
        }
        let Some(ws) = &self.ws else {
            return self.unwrap_tls(&raw, inbox, n);
        };
        let plaintext = if self.tls.is_some() {
            let mut plaintext = BytesMut::new();
            if self.unwrap_tls(&raw, &mut plaintext, n)? == 0 {
                return Ok(0);
            }
            plaintext
        } else {
            raw
        };
        match ws.borrow_mut().decode(&plaintext, inbox) {
            Ok(Flow::Open) => Ok(n),
            Ok(Flow::PeerClosed) => Ok(0),
            Err(closing) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                closing.to_string(),
            )),
        }
    }

    /// Feeds bytes that arrived with the WebSocket upgrade request to the WebSocket codec.
    pub(crate) fn ws_decode(&self, raw: &[u8], inbox: &mut BytesMut) -> io::Result<()> {
        let Some(ws) = &self.ws else {
            inbox.extend_from_slice(raw);
            return Ok(());
        };
        match ws.borrow_mut().decode(raw, inbox) {
            Ok(Flow::Open) => Ok(()),
            Ok(Flow::PeerClosed) => Err(io::ErrorKind::UnexpectedEof.into()),
            Err(closing) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                closing.to_string(),
            )),
        }
    }

    /// Waits for data, then appends the plaintext that arrived (below WebSocket) to `inbox`.
    pub(crate) async fn read_plaintext(
        &self,
        inbox: &mut BytesMut,
        pool: &BufferPool,
    ) -> io::Result<usize> {
        if self.tls.is_none() {
            return self.socket.read(inbox, pool).await;
        }
        let mut ciphertext = BytesMut::new();
        let n = self.socket.read(&mut ciphertext, pool).await?;
        if n == 0 {
            return Ok(0);
        }
        self.unwrap_tls(&ciphertext, inbox, n)
    }

    /// Feeds the `n` bytes of `ciphertext` read from the socket to rustls and appends the
    /// plaintext they carry to `inbox`. Returns `n`, or 0 if the peer sent `close_notify`.
    fn unwrap_tls(&self, ciphertext: &[u8], inbox: &mut BytesMut, n: usize) -> io::Result<usize> {
        let Some(tls) = &self.tls else {
            inbox.extend_from_slice(ciphertext);
            return Ok(n);
        };
        let mut tls = tls.borrow_mut();
        let mut rest = ciphertext;
        let mut closed = false;
        while !rest.is_empty() {
            tls.read_tls(&mut rest)?;
            let state = tls
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let mut pending = state.plaintext_bytes_to_read();
            while pending > 0 {
                let start = inbox.len();
                inbox.resize(start + pending.min(PLAINTEXT_CHUNK_BYTES), 0);
                let got = tls.reader().read(&mut inbox[start..])?;
                inbox.truncate(start + got);
                pending -= got.min(pending);
                if got == 0 {
                    break;
                }
            }
            closed |= state.peer_has_closed();
        }
        Ok(if closed { 0 } else { n })
    }

    /// Whether TLS records (a handshake message, an alert) or WebSocket control frames (a Pong, a
    /// Close) wait to be written.
    pub(crate) fn wants_write(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|tls| tls.borrow().wants_write())
            || self.ws.as_ref().is_some_and(|ws| ws.borrow().wants_write())
    }

    /// Writes what the socket takes of `frames` now, without waiting, on a plain TCP link; `None`
    /// on a TLS or WebSocket link, whose frames are sealed and framed on the way out.
    pub(crate) fn try_write_plain(&self, frames: &[u8]) -> Option<io::Result<usize>> {
        if self.tls.is_some() || self.ws.is_some() {
            return None;
        }
        Some(self.socket.try_write(frames))
    }

    /// Writes all of `frames` (which may be empty, to flush pending TLS records and WebSocket
    /// control frames), as WebSocket messages on a WebSocket link.
    pub(crate) async fn write_all(&self, frames: Vec<u8>) -> io::Result<()> {
        let plaintext = match &self.ws {
            Some(ws) => ws.borrow_mut().encode(&frames),
            None => frames,
        };
        self.write_plaintext(plaintext).await
    }

    /// Writes all of `plaintext` below WebSocket: the upgrade's HTTP response, or WebSocket bytes.
    pub(crate) async fn write_plaintext(&self, plaintext: Vec<u8>) -> io::Result<()> {
        if plaintext.is_empty() && !self.wants_write() {
            return Ok(());
        }
        let Some(tls) = &self.tls else {
            return self.socket.write_all(plaintext).await;
        };
        let records = {
            let mut tls = tls.borrow_mut();
            tls.writer().write_all(&plaintext)?;
            take_records(&mut tls)?
        };
        if records.is_empty() {
            return Ok(());
        }
        self.socket.write_all(records).await
    }

    /// Ends the session: a WebSocket Close (code 1000 unless another is queued) and TLS
    /// `close_notify` (best effort), then a shutdown in both directions.
    pub(crate) async fn shutdown(&self) {
        if let Some(ws) = &self.ws {
            let close = {
                let mut ws = ws.borrow_mut();
                ws.queue_close(super::ws::close::NORMAL, "");
                ws.encode(&[])
            };
            if !close.is_empty() {
                let _ = self.write_plaintext(close).await;
            }
        }
        if let Some(tls) = &self.tls {
            let records = {
                let mut tls = tls.borrow_mut();
                tls.send_close_notify();
                take_records(&mut tls)
            };
            if let Ok(records) = records {
                if !records.is_empty() {
                    let _ = self.socket.write_all(records).await;
                }
            }
        }
        self.socket.shutdown();
    }

    /// Shuts the socket down at once, in both directions, with nothing more written: a pending
    /// read ends with end-of-stream and a pending write fails.
    pub(crate) fn shutdown_now(&self) {
        self.socket.shutdown();
    }

    /// Splits the link into a std socket, its TLS state and its WebSocket state, to hand them to
    /// another core.
    pub(crate) fn into_parts(self) -> io::Result<LinkParts> {
        Ok((
            self.socket.into_std()?,
            self.tls.map(|tls| tls.into_inner()),
            self.ws.map(|ws| Box::new(ws.into_inner())),
        ))
    }
}

/// Every TLS record rustls has ready to send.
fn take_records(tls: &mut ServerConnection) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    while tls.wants_write() {
        tls.write_tls(&mut out)?;
    }
    Ok(out)
}
