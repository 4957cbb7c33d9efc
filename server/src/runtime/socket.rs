//! The one connection type both I/O engines share: an owned-buffer socket.
//!
//! `Epoll` is a tokio `TcpStream` (readiness, then `try_read`). `Uring` is a tokio-uring
//! `TcpStream` whose reads and writes are io_uring operations; it waits for readiness through the
//! same reactor first, so an idle connection has no read in flight and holds no buffer. A read is
//! only submitted once data is there, and it is never cancelled: time-outs close the socket instead.

#![allow(unsafe_code)] // `dup(2)` to hand a uring socket to another core; see `into_std`.

use std::cell::RefCell;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, RawFd};

use bytes::BytesMut;
use tokio::io::unix::AsyncFd;

/// Bytes read per read operation.
pub(crate) const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Idle read buffers a core keeps for reuse; more are freed when returned.
pub(crate) const READ_POOL_BUFFERS_MAX: usize = 64;

/// A core's read buffers. A connection borrows one only while data is ready to be read, so an
/// idle connection holds none.
#[derive(Default)]
pub(crate) struct BufferPool {
    free: RefCell<Vec<Vec<u8>>>,
}

impl BufferPool {
    fn take(&self) -> Vec<u8> {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(READ_CHUNK_BYTES))
    }

    /// Returns a buffer. Its length is kept (only its capacity matters to a read), so the next
    /// borrower does not zero it again.
    fn give(&self, buf: Vec<u8>) {
        let mut free = self.free.borrow_mut();
        if free.len() < READ_POOL_BUFFERS_MAX {
            free.push(buf);
        }
    }
}

/// A connected socket on one engine.
pub(crate) enum Socket {
    /// tokio (epoll).
    Epoll(tokio::net::TcpStream),
    /// tokio-uring; `ready` is declared first so it is deregistered before the stream closes.
    Uring {
        ready: AsyncFd<RawFd>,
        stream: tokio_uring::net::TcpStream,
    },
}

impl Socket {
    /// Wraps an accepted or migrated socket for the given engine.
    pub(crate) fn new(std: std::net::TcpStream, uring: bool) -> io::Result<Socket> {
        std.set_nonblocking(true)?;
        std.set_nodelay(true)?;
        if uring {
            let fd = std.as_raw_fd();
            let stream = tokio_uring::net::TcpStream::from_std(std);
            // SAFETY: `fd` stays open while `ready` lives: `ready` is dropped before `stream`
            // (field order, and explicitly in `into_std`), and `stream` owns the descriptor.
            let ready =
                unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?;
            Ok(Socket::Uring { ready, stream })
        } else {
            Ok(Socket::Epoll(tokio::net::TcpStream::from_std(std)?))
        }
    }

    /// Waits for data (or end of stream), then appends what arrived to `inbox`, reading through a
    /// buffer borrowed from `pool` for just that moment. Returns the number of bytes read; 0 means
    /// the peer closed.
    pub(crate) async fn read(&self, inbox: &mut BytesMut, pool: &BufferPool) -> io::Result<usize> {
        match self {
            // Readiness is polled directly rather than through `readable()`, whose future is
            // several times larger: this wait is what every idle connection keeps.
            Socket::Epoll(stream) => loop {
                std::future::poll_fn(|cx| stream.poll_read_ready(cx)).await?;
                let mut buf = pool.take();
                // Zeroed once, when the buffer is first made; pooled buffers keep their length.
                buf.resize(READ_CHUNK_BYTES, 0);
                let mut read = None;
                // A read that did not fill the buffer drained the socket: readiness is cleared
                // (reporting "would block" to `try_io` does that), so the next read waits for
                // the next edge instead of finding out with a `recv` that fails. `try_io` clears
                // only the readiness it saw, so data that came after is not missed.
                let result = stream.try_io(tokio::io::Interest::READABLE, || {
                    let n = (&*socket2::SockRef::from(stream)).read(&mut buf)?;
                    read = Some(n);
                    if n > 0 && n < buf.len() {
                        Err(io::ErrorKind::WouldBlock.into())
                    } else {
                        Ok(())
                    }
                });
                if let Some(n) = read {
                    inbox.extend_from_slice(&buf[..n]);
                }
                pool.give(buf);
                match (read, result) {
                    (Some(n), _) => return Ok(n),
                    (None, Err(e)) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                    // Not ready after all: wait again.
                    (None, _) => continue,
                }
            },
            Socket::Uring { ready, stream } => {
                let mut guard = std::future::poll_fn(|cx| ready.poll_read_ready(cx)).await?;
                // Boxed: the operation is in flight only while data is there, and its state would
                // otherwise sit in every idle connection's future.
                let (result, buf) = Box::pin(stream.read(pool.take())).await;
                let n = match result {
                    Ok(n) => n,
                    Err(e) => {
                        pool.give(buf);
                        return Err(e);
                    }
                };
                if n < READ_CHUNK_BYTES {
                    // Drained: wait for the next edge. A later arrival has its own readiness tick,
                    // which this does not clear.
                    guard.clear_ready();
                }
                inbox.extend_from_slice(&buf[..n]);
                pool.give(buf);
                Ok(n)
            }
        }
    }

    /// Writes all of `buf`.
    pub(crate) async fn write_all(&self, buf: Vec<u8>) -> io::Result<()> {
        match self {
            Socket::Epoll(stream) => {
                let mut written = 0;
                while written < buf.len() {
                    stream.writable().await?;
                    match stream.try_write(&buf[written..]) {
                        Ok(n) => written += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
            Socket::Uring { stream, .. } => {
                let (result, _) = stream.write_all(buf).await;
                result
            }
        }
    }

    /// Writes what the socket takes of `buf` now, without waiting ("would block" when it takes
    /// nothing). Only while no write of [`Socket::write_all`] is under way, which would be
    /// overtaken.
    pub(crate) fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Epoll(stream) => stream.try_write(buf),
            // A plain send on the non-blocking socket: with no write operation in flight there
            // is nothing in the ring to overtake.
            Socket::Uring { stream, .. } => {
                // SAFETY: the descriptor is open for as long as `self` lives.
                let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
                socket2::SockRef::from(&fd).send(buf)
            }
        }
    }

    /// Shuts the socket down in both directions, which ends a pending read with end-of-stream.
    pub(crate) fn shutdown(&self) {
        let fd = match self {
            Socket::Epoll(stream) => stream.as_raw_fd(),
            Socket::Uring { stream, .. } => stream.as_raw_fd(),
        };
        // SAFETY: `fd` is open for as long as `self` lives; shutdown(2) does not close it.
        let socket = std::mem::ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
        let _ = socket.shutdown(Shutdown::Both);
    }

    /// Turns the socket back into a std socket, to hand it to another core.
    pub(crate) fn into_std(self) -> io::Result<std::net::TcpStream> {
        match self {
            Socket::Epoll(stream) => stream.into_std(),
            Socket::Uring { ready, stream } => {
                drop(ready);
                // SAFETY: `dup` returns a new descriptor for the same socket, owned by the result;
                // the uring stream closes only its own descriptor when dropped.
                let fd = unsafe { libc::dup(stream.as_raw_fd()) };
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                drop(stream);
                // SAFETY: `fd` is a fresh descriptor nothing else owns.
                Ok(unsafe { std::net::TcpStream::from_raw_fd(fd) })
            }
        }
    }
}
