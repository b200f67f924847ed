//! Connection-level protection, below HTTP: at most `--max-connections` open
//! connections per listener, a deadline for reading each request head
//! (`--header-read-timeout`), so a client trickling headers a byte at a time
//! (slowloris) cannot hold a connection open, and a deadline for idle keep-alive
//! connections (`--idle-timeout`).
//!
//! Both deadlines are enforced here on the byte stream: a request head starts with its
//! first byte and ends at the blank line (`\r\n\r\n`); a connection is idle from the
//! moment an answer is written until the next byte arrives. hyper's own header timeout
//! would do the first but allocates a timer per request, which showed in profiles.
//!
//! One timer per connection serves both deadlines and is re-armed lazily: moving a
//! deadline later only records it, and when the timer fires early it is pushed to the
//! recorded deadline. A busy keep-alive connection so touches the timer wheel about
//! once per timeout period rather than twice per request.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// The per-listener connection budget and deadlines.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Admits connections while fewer than `--max-connections` are open.
pub struct ConnectionGate {
    limits: ConnectionLimits,
    open: Arc<Semaphore>,
}

impl ConnectionGate {
    pub fn new(limits: ConnectionLimits) -> Self {
        Self {
            limits,
            open: Arc::new(Semaphore::new(limits.max_connections)),
        }
    }

    /// Wraps an accepted connection, or `None` if the limit is reached: the caller
    /// closes it at once, which tells the client to go elsewhere; waiting would only
    /// fill the kernel's backlog.
    pub fn admit(&self, stream: TcpStream) -> Option<GuardedStream> {
        let permit = self.open.clone().try_acquire_owned().ok()?;
        Some(GuardedStream::new(stream, permit, self.limits))
    }

    pub fn limit(&self) -> usize {
        self.limits.max_connections
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A request head is being read; it must be complete by the deadline.
    Head(Instant),
    /// A request is being answered: no deadline (`--request-timeout` covers it).
    Busy,
    /// The last answer is written and nothing new has arrived since.
    Idle(Instant),
}

pub struct GuardedStream {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
    limits: ConnectionLimits,
    phase: Phase,
    /// Fires no later than the current phase's deadline (see the module docs).
    timer: Pin<Box<Sleep>>,
    /// The last bytes of the head so far, to find `\r\n\r\n` across reads.
    tail: u32,
}

impl GuardedStream {
    fn new(inner: TcpStream, permit: OwnedSemaphorePermit, limits: ConnectionLimits) -> Self {
        // A new connection must send its first head in time too.
        let deadline = Instant::now() + limits.header_read_timeout;
        Self {
            inner,
            _permit: permit,
            limits,
            phase: Phase::Head(deadline),
            timer: Box::pin(tokio::time::sleep_until(deadline)),
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

    /// Moves to `phase`, pulling the timer earlier only if the new deadline needs it.
    fn enter(&mut self, phase: Phase) {
        if let Phase::Head(deadline) | Phase::Idle(deadline) = phase {
            if deadline < self.timer.deadline() {
                self.timer.as_mut().reset(deadline);
            }
        }
        self.phase = phase;
    }

    /// What a fired timer means now: `Some` ends the read with that outcome.
    fn on_timer(&mut self, now: Instant) -> Option<io::Result<()>> {
        match self.phase {
            Phase::Head(deadline) if deadline <= now => Some(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head not received within --header-read-timeout",
            ))),
            // End of stream while idle: hyper closes the connection quietly.
            Phase::Idle(deadline) if deadline <= now => Some(Ok(())),
            Phase::Head(deadline) | Phase::Idle(deadline) => {
                self.timer.as_mut().reset(deadline);
                None
            }
            Phase::Busy => {
                let shortest = self
                    .limits
                    .header_read_timeout
                    .min(self.limits.idle_timeout);
                self.timer.as_mut().reset(now + shortest);
                None
            }
        }
    }

    fn on_write(&mut self) {
        // An answer is going out: whatever is read next belongs to a new request.
        if self.phase == Phase::Busy {
            self.enter(Phase::Idle(Instant::now() + self.limits.idle_timeout));
        }
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.timer.as_mut().poll(cx).is_ready() {
            if let Some(outcome) = this.on_timer(Instant::now()) {
                return Poll::Ready(outcome);
            }
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let read = &buf.filled()[before..];
            if !read.is_empty() {
                let in_head = match this.phase {
                    Phase::Head(_) => true,
                    Phase::Idle(_) => {
                        this.tail = 0;
                        true
                    }
                    Phase::Busy => false,
                };
                if in_head {
                    if this.scan_head(read) {
                        this.phase = Phase::Busy;
                    } else if let Phase::Idle(_) = this.phase {
                        // A head has begun but not ended: only now is its clock needed.
                        let deadline = Instant::now() + this.limits.header_read_timeout;
                        this.enter(Phase::Head(deadline));
                    }
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
        self.on_write();
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
        self.on_write();
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
