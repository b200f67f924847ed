//! Connection-level protection, below HTTP: at most `--max-connections` open
//! connections per listener, and a deadline for reading each request head
//! (`--header-read-timeout`), so a client trickling headers a byte at a time
//! (slowloris) cannot hold a connection open.
//!
//! poem does not give hyper a timer, so hyper's own header timeout is inactive; the
//! deadline is enforced here on the byte stream instead: a request head starts with
//! its first byte and ends at the blank line (`\r\n\r\n`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use poem::http::uri::Scheme;
use poem::listener::{Acceptor, TcpAcceptor};
use poem::web::{LocalAddr, RemoteAddr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

pub struct GuardedAcceptor {
    inner: TcpAcceptor,
    connections: Arc<Semaphore>,
    max_connections: usize,
    header_timeout: Duration,
}

impl GuardedAcceptor {
    pub fn new(inner: TcpAcceptor, max_connections: usize, header_timeout: Duration) -> Self {
        Self {
            inner,
            connections: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            header_timeout,
        }
    }
}

impl Acceptor for GuardedAcceptor {
    type Io = GuardedStream;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        loop {
            let (stream, local, remote, scheme) = self.inner.accept().await?;
            match self.connections.clone().try_acquire_owned() {
                Ok(permit) => {
                    let guarded = GuardedStream::new(stream, permit, self.header_timeout);
                    return Ok((guarded, local, remote, scheme));
                }
                Err(_) => {
                    // Closing at once tells the client to go elsewhere; waiting would
                    // only fill the kernel's backlog.
                    tracing::warn!(%remote, limit = self.max_connections, "connection refused: --max-connections reached");
                    drop(stream);
                }
            }
        }
    }
}

pub struct GuardedStream {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
    header_timeout: Duration,
    /// Set while a request head is being read: fires when it took too long.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Whether the next byte read starts a new request head.
    awaiting_head: bool,
    /// The last bytes of the head so far, to find `\r\n\r\n` across reads.
    tail: u32,
}

impl GuardedStream {
    fn new(inner: TcpStream, permit: OwnedSemaphorePermit, header_timeout: Duration) -> Self {
        Self {
            inner,
            _permit: permit,
            header_timeout,
            // A new connection must send its first head in time too.
            deadline: Some(Box::pin(tokio::time::sleep(header_timeout))),
            awaiting_head: false,
            tail: 0,
        }
    }

    /// Follows the bytes of a request head; returns true when it is complete.
    fn scan_head(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            self.tail = (self.tail << 8) | u32::from(b);
            if self.tail == u32::from_be_bytes(*b"\r\n\r\n") {
                self.tail = 0;
                return true;
            }
        }
        false
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head not received within --header-read-timeout",
                )));
            }
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let read = &buf.filled()[before..];
            if !read.is_empty() {
                if this.awaiting_head {
                    this.awaiting_head = false;
                    this.deadline = Some(Box::pin(tokio::time::sleep(this.header_timeout)));
                }
                if this.deadline.is_some() && this.scan_head(read) {
                    this.deadline = None;
                }
            }
        }
        result
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // An answer is going out: whatever is read next belongs to a new request.
        if self.deadline.is_none() {
            self.awaiting_head = true;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.deadline.is_none() {
            self.awaiting_head = true;
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
