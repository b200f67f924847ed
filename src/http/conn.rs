//! Connection-level protection, below HTTP: at most `--max-connections` open
//! connections per listener, a deadline for each request head
//! (`--header-read-timeout`), so a client trickling headers a byte at a time
//! (slowloris) or sending nothing but blank lines cannot hold a connection open, a
//! deadline for idle keep-alive connections (`--idle-timeout`), and problem+json for the
//! errors hyper answers by itself.
//!
//! Where a request head ends is not guessed from the bytes: the connection's service
//! reports every request hyper hands over and every answer hyper is done with
//! ([`Progress`]), so the deadlines follow hyper's own parser exactly (leading blank
//! lines, bare-LF line ends, `Expect: 100-continue`, pipelining). The phases:
//!
//! - *head*: from the connection's start, or the first byte after an answer, until
//!   hyper hands the request over. Fixed deadline: bytes do not extend it.
//! - *busy*: a request is being answered. No deadline here (`--request-timeout` bounds
//!   API handlers; request bodies have their own deadline, `http::body`).
//! - *idle*: the answer is handed to hyper and nothing new has begun. The deadline
//!   moves with every byte written, so an answer that keeps flowing to a slow reader
//!   is never cut; a reader that stops for `--idle-timeout` is.
//!
//! One timer per connection serves every deadline and is re-armed lazily: moving a
//! deadline later only records it, and when the timer fires early it is pushed to the
//! recorded deadline. A busy keep-alive connection so touches the timer wheel about
//! once per timeout period rather than twice per request. (hyper's own
//! `header_read_timeout` allocates a timer per request and also runs while the
//! connection is idle, which would make the idle deadline the header one.)

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use poem::http::StatusCode;
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use super::problem::{Problem, ProblemKind};

/// The per-listener connection budget and deadlines.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// Applied to request bodies by the server (`http::body`), not by the stream.
    pub body_read_timeout: Duration,
    /// `--max-uri-bytes` + `--max-header-bytes`: the most of a request head kvserve
    /// reads; sizes hyper's buffers (`http::server`).
    pub max_head_bytes: usize,
}

/// Admits connections while fewer than `--max-connections` are open. Each listener has
/// its own gate, so a flood of the API listener never takes the admin listener's
/// slots: probes keep answering.
pub struct ConnectionGate {
    limits: ConnectionLimits,
    open: Arc<Semaphore>,
    /// `kvserve_http_connections_open{listener}`, when the listener exports it.
    gauge: Option<IntGauge>,
}

impl ConnectionGate {
    pub fn new(limits: ConnectionLimits) -> Self {
        Self {
            limits,
            open: Arc::new(Semaphore::new(limits.max_connections)),
            gauge: None,
        }
    }

    /// Counts the open connections in `gauge`, so an alert can compare them with the
    /// limit before clients start being turned away.
    pub fn counted(self, gauge: IntGauge) -> Self {
        Self {
            gauge: Some(gauge),
            ..self
        }
    }

    /// Takes a slot for an accepted connection, or `None` if the limit is reached: the
    /// caller closes it at once, which tells the client to go elsewhere; waiting would
    /// only fill the kernel's backlog. The first request head's deadline starts now,
    /// before any TLS handshake, so the handshake counts against it.
    pub fn admit(&self) -> Option<Admission> {
        let permit = self.open.clone().try_acquire_owned().ok()?;
        Some(Admission {
            permit: Slot::new(permit, self.gauge.clone()),
            limits: self.limits,
            deadline: Instant::now() + self.limits.header_read_timeout,
        })
    }

    pub fn limit(&self) -> usize {
        self.limits.max_connections
    }

    pub fn body_read_timeout(&self) -> Duration {
        self.limits.body_read_timeout
    }

    pub fn max_head_bytes(&self) -> usize {
        self.limits.max_head_bytes
    }
}

/// A connection's slot, taken at accept, and the deadline of its first request head.
pub struct Admission {
    permit: Slot,
    limits: ConnectionLimits,
    deadline: Instant,
}

impl Admission {
    /// When the first request head must be in; a TLS handshake must end before.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Wraps the connection's stream (TCP, or TLS over it) in the deadlines, which
    /// `progress` (shared with the connection's service) drives; the slot is held
    /// until the stream is dropped.
    pub fn guard<S>(self, stream: S, progress: Arc<Progress>) -> GuardedStream<S> {
        GuardedStream {
            inner: stream,
            _permit: self.permit,
            limits: self.limits,
            progress,
            seen: 0,
            phase: Phase::Head(self.deadline),
            timer: Box::pin(tokio::time::sleep_until(self.deadline)),
            unflushed: false,
            replacement: None,
        }
    }
}

/// What the connection's service tells its stream: how many requests hyper has handed
/// over, and how many of their answers hyper has finished with. Counters rather than
/// flags, so that a request begun and answered between two reads is still seen.
/// Both sides run in the connection's one task; the atomics are only there because
/// the task may move between threads.
#[derive(Debug, Default)]
pub struct Progress {
    begun: AtomicU32,
    ended: AtomicU32,
}

impl Progress {
    /// hyper has parsed a complete request head and hands the request over.
    pub fn begin(&self) {
        self.begun.fetch_add(1, Ordering::Relaxed);
    }

    /// hyper is done with an answer's body (written, or dropped for HEAD and errors).
    pub fn end(&self) {
        self.ended.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A request head is being read; it must be complete by the deadline.
    Head(Instant),
    /// A request is being answered: no deadline here.
    Busy,
    /// The last answer is handed over and nothing new has begun; the deadline moves
    /// with every byte written.
    Idle(Instant),
}

/// A connection's place under `--max-connections`, counted in the open-connections
/// gauge until the connection is dropped.
struct Slot {
    _permit: OwnedSemaphorePermit,
    gauge: Option<IntGauge>,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, gauge: Option<IntGauge>) -> Self {
        if let Some(gauge) = &gauge {
            gauge.inc();
        }
        Self {
            _permit: permit,
            gauge,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(gauge) = &self.gauge {
            gauge.dec();
        }
    }
}

/// A connection's stream under its deadlines: plain TCP, or TLS over it (generic, so
/// plain TCP pays nothing for TLS being possible).
pub struct GuardedStream<S> {
    inner: S,
    _permit: Slot,
    limits: ConnectionLimits,
    progress: Arc<Progress>,
    /// `Progress::begun` when last looked at.
    seen: u32,
    phase: Phase,
    /// Fires no later than the current phase's deadline (see the module docs).
    timer: Pin<Box<Sleep>>,
    /// Bytes were written since the last completed flush.
    unflushed: bool,
    /// hyper's own answer to a request it could not parse, replaced by problem+json.
    replacement: Option<Replacement>,
}

impl<S> GuardedStream<S> {
    /// Catches up with what the service reported since the last look.
    fn sync(&mut self) {
        let begun = self.progress.begun.load(Ordering::Relaxed);
        if begun != self.seen {
            self.seen = begun;
            self.phase = Phase::Busy;
        }
        if self.phase == Phase::Busy && self.progress.ended.load(Ordering::Relaxed) == begun {
            self.enter(Phase::Idle(Instant::now() + self.limits.idle_timeout));
        }
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

    /// Polls the timer; `Some` once the current phase's deadline has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Option<Expired> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            match self.phase {
                Phase::Head(deadline) if deadline <= now => return Some(Expired::Head),
                Phase::Idle(deadline) if deadline <= now => return Some(Expired::Idle),
                Phase::Head(deadline) | Phase::Idle(deadline) => {
                    self.timer.as_mut().reset(deadline)
                }
                Phase::Busy => {
                    let shortest = self
                        .limits
                        .header_read_timeout
                        .min(self.limits.idle_timeout);
                    self.timer.as_mut().reset(now + shortest);
                }
            }
        }
        None
    }

    fn on_read(&mut self, read: usize) {
        if read == 0 {
            return;
        }
        self.sync();
        if let Phase::Idle(_) = self.phase {
            // The next request has begun: from now on its head has a deadline.
            self.enter(Phase::Head(
                Instant::now() + self.limits.header_read_timeout,
            ));
        }
    }

    /// Called before bytes go out. Decides whether they are hyper's own answer to a
    /// request it could not parse: written while a head is being read (no request was
    /// handed over) and not the rest of an earlier answer (everything before was
    /// flushed). Those are replaced, so that every error a client sees is problem+json.
    fn before_write(&mut self, first: &[u8]) {
        self.sync();
        if self.replacement.is_none() && !self.unflushed {
            if let Phase::Head(_) = self.phase {
                self.replacement = Replacement::of(first);
            }
        }
    }

    fn after_write(&mut self, written: usize) {
        if written == 0 {
            return;
        }
        self.unflushed = true;
        if let Phase::Idle(_) = self.phase {
            // A slow reader still taking the answer is not idle: recorded only, the
            // timer is pushed when it fires.
            self.phase = Phase::Idle(Instant::now() + self.limits.idle_timeout);
        }
    }

    /// A write or flush that cannot progress: fails it once the phase's deadline has
    /// passed, so a reader that stopped reading does not hold the connection.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.poll_deadline(cx) {
            Some(expired) => Poll::Ready(Err(expired.error())),
            None => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> GuardedStream<S> {
    /// Sends what is left of a replacement answer.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(replacement) = &mut self.replacement {
            if replacement.sent == replacement.bytes.len() {
                break;
            }
            let rest = &replacement.bytes[replacement.sent..];
            match Pin::new(&mut self.inner).poll_write(cx, rest) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => replacement.sent += n,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => return self.stalled(cx),
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[derive(Debug, Clone, Copy)]
enum Expired {
    Head,
    Idle,
}

impl Expired {
    fn error(self) -> io::Error {
        let what = match self {
            Expired::Head => "request head not received within --header-read-timeout",
            Expired::Idle => "connection idle for --idle-timeout",
        };
        io::Error::new(io::ErrorKind::TimedOut, what)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GuardedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.sync();
        match this.poll_deadline(cx) {
            Some(Expired::Head) => return Poll::Ready(Err(Expired::Head.error())),
            // End of stream while idle: hyper closes the connection quietly.
            Some(Expired::Idle) => return Poll::Ready(Ok(())),
            None => {}
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            this.on_read(buf.filled().len() - before);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GuardedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.before_write(buf);
        if this.replacement.is_some() {
            return this.poll_replacement(cx).map_ok(|()| buf.len());
        }
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.after_write(n);
                Poll::Ready(Ok(n))
            }
            Poll::Pending => this.stalled(cx),
            other => other,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
        this.before_write(first);
        if this.replacement.is_some() {
            let total = bufs.iter().map(|b| b.len()).sum();
            return this.poll_replacement(cx).map_ok(|()| total);
        }
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                this.after_write(n);
                Poll::Ready(Ok(n))
            }
            Poll::Pending => this.stalled(cx),
            other => other,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Err(err) = std::task::ready!(this.poll_replacement(cx)) {
            return Poll::Ready(Err(err));
        }
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                this.unflushed = false;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => this.stalled(cx),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Err(err) = std::task::ready!(this.poll_replacement(cx)) {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// The problem+json answer sent instead of the bare one hyper writes when it cannot
/// parse a request head (it closes the connection after it).
struct Replacement {
    bytes: Vec<u8>,
    sent: usize,
}

impl Replacement {
    /// `Some` if `first` starts an answer of hyper's own: `HTTP/1.x 400|414|431`.
    fn of(first: &[u8]) -> Option<Self> {
        let version = first.get(..8).filter(|v| v.starts_with(b"HTTP/1."))?;
        let status = first
            .get(9..12)
            .and_then(|code| std::str::from_utf8(code).ok())
            .and_then(|code| code.parse::<u16>().ok())
            .and_then(|code| StatusCode::from_u16(code).ok())?;
        let problem = parse_error_problem(status)?;
        let body = problem.to_body();
        let mut bytes = Vec::with_capacity(body.len() + 200);
        bytes.extend_from_slice(version);
        bytes.extend_from_slice(
            format!(
                " {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\nx-content-type-options: nosniff\r\n\r\n",
                status.as_str(),
                status.canonical_reason().unwrap_or(""),
                super::problem::CONTENT_TYPE,
                body.len()
            )
            .as_bytes(),
        );
        bytes.extend_from_slice(&body);
        Some(Self { bytes, sent: 0 })
    }
}

/// The problem for each status hyper answers a request it could not parse with.
fn parse_error_problem(status: StatusCode) -> Option<Problem> {
    Some(match status {
        StatusCode::BAD_REQUEST => Problem::new(
            ProblemKind::MalformedRequest,
            "the request is not valid HTTP/1.1: its request line or a header field is malformed \
             (for example raw non-ASCII bytes in the path)",
        ),
        StatusCode::URI_TOO_LONG => Problem::new(
            ProblemKind::UriTooLong,
            "the request target is longer than the server reads",
        ),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => Problem::new(
            ProblemKind::HeadersTooLarge,
            "the request head is too large: more than 100 header fields or a header block \
             over the server's buffer",
        ),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hyper_parse_errors_are_replaced() {
        let replaced = Replacement::of(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
            .map(|r| String::from_utf8(r.bytes).unwrap())
            .unwrap();
        assert!(replaced.starts_with("HTTP/1.1 431 "), "{replaced}");
        assert!(replaced.contains("application/problem+json"));
        assert!(replaced.ends_with('}'));
        assert!(Replacement::of(b"HTTP/1.0 400 Bad Request\r\n").is_some());
        assert!(Replacement::of(b"HTTP/1.1 200 OK\r\n").is_none());
        assert!(Replacement::of(b"HTTP/1.1 4").is_none());
        assert!(Replacement::of(b"{\"key\":").is_none());
    }
}
