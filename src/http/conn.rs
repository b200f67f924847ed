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
//!   moves with every byte that moves: written by hyper, or taken by the client from
//!   the kernel's send buffer. An answer that keeps flowing to a slow reader is never
//!   cut, even when hyper handed the kernel its last byte long ago (a send buffer of
//!   a few MiB drains for seconds at a slow reader's pace); a reader that stops for
//!   `--idle-timeout` is. The kernel's queue is looked at only when the deadline fires
//!   and when a write cannot progress ([`Unsent`]): when it fires and the queue shrank
//!   since the last look, the deadline moves on. A queue first seen when the deadline
//!   fires has no earlier size to compare with, so a reader that stalled with bytes
//!   queued but no write pending is cut after at most twice `--idle-timeout`.
//!
//! One timer per connection serves every deadline and is re-armed lazily: moving a
//! deadline later only records it, and when the timer fires early it is pushed to the
//! recorded deadline. A busy keep-alive connection so touches the timer wheel about
//! once per timeout period rather than twice per request. (hyper's own
//! `header_read_timeout` allocates a timer per request and also runs while the
//! connection is idle, which would make the idle deadline the header one.)
//!
//! ## hyper's own answers
//!
//! hyper answers a request head it cannot parse by itself (400, 414, 431, empty body)
//! and closes. Such an answer is replaced by problem+json ([`Replacement`]), and
//! reported once to the listener's [`RefusalLog`] (counted and access-logged like any
//! answer). Which bytes are hyper's own is decided from what hyper reported, never
//! from what the bytes look like, for a legitimate 400 of the service looks the same:
//!
//! - every request hyper hands over gets exactly one answer from the service, and
//!   [`Progress`] counts both (`begun`, `ended` once hyper has taken the answer's last
//!   byte into its write buffer);
//! - hyper calls the stream's `poll_flush` only with its write buffer empty, so at
//!   each flush every answer counted in `ended` has been written through the stream
//!   in full (`settled` records that count);
//! - hyper writes an answer of its own only while no request is being answered
//!   (its writing state is idle, which it enters after a flush).
//!
//! So a write made when every request hyper handed over has a settled answer
//! (`settled == begun`) cannot belong to any of them: it is hyper's own. A legitimate
//! answer is written while its request is counted in `begun` and before the flush
//! that settles it, so it is never taken for one, however its bytes are split into
//! writes or pipelined behind others. Only the status hyper chose is read from its
//! bytes, to pick the problem.
//!
//! hyper leaves its writing state without a flush in one case: a request body it
//! drains after the answer was queued, while the socket is full. Should it then write
//! an answer of its own, the write is passed on as hyper made it (its bare 400): the
//! rule errs towards hyper's bytes, never towards swallowing a legitimate answer.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use poem::http::{HeaderValue, StatusCode};
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
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
    /// Where requests hyper could not parse are counted and logged, if anywhere.
    refusals: Option<Arc<dyn RefusalLog>>,
}

impl ConnectionGate {
    pub fn new(limits: ConnectionLimits) -> Self {
        Self {
            limits,
            open: Arc::new(Semaphore::new(limits.max_connections)),
            gauge: None,
            refusals: None,
        }
    }

    /// Reports every request hyper refuses to parse to `log`, so that a flood of
    /// garbage shows in the request metrics and the access log.
    pub fn logging_refusals(self, log: Arc<dyn RefusalLog>) -> Self {
        Self {
            refusals: Some(log),
            ..self
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
        let now = Instant::now();
        Some(Admission {
            permit: Slot::new(permit, self.gauge.clone()),
            limits: self.limits,
            accepted: now,
            deadline: now + self.limits.header_read_timeout,
            refusals: self.refusals.clone(),
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
    accepted: Instant,
    deadline: Instant,
    refusals: Option<Arc<dyn RefusalLog>>,
}

impl Admission {
    /// When the first request head must be in; a TLS handshake must end before.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Wraps the connection's stream (TCP, or TLS over it) from `peer` in the
    /// deadlines, which `progress` (shared with the connection's service) drives; the
    /// slot is held until the stream is dropped.
    pub fn guard<S>(
        self,
        stream: S,
        progress: Arc<Progress>,
        peer: SocketAddr,
    ) -> GuardedStream<S> {
        GuardedStream {
            inner: stream,
            _permit: self.permit,
            limits: self.limits,
            progress,
            seen: 0,
            phase: Phase::Head(self.deadline),
            head_began: self.accepted,
            timer: Box::pin(tokio::time::sleep_until(self.deadline)),
            settled: 0,
            queued: None,
            replacement: None,
            refusals: self.refusals,
            peer,
        }
    }
}

/// Told once of each request hyper could not parse, when the stream has decided to
/// answer it with problem+json (`status` is hyper's choice, `began` when its head
/// began to arrive). Returns the request id the answer carries.
pub trait RefusalLog: Send + Sync {
    fn refused(
        &self,
        status: StatusCode,
        began: std::time::Instant,
        peer: SocketAddr,
    ) -> HeaderValue;
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
    /// When the current (or last) request head began to arrive.
    head_began: Instant,
    /// Fires no later than the current phase's deadline (see the module docs).
    timer: Pin<Box<Sleep>>,
    /// `Progress::ended` at hyper's last flush: those answers are written in full.
    settled: u32,
    /// The kernel's send queue when last looked at since the last write.
    queued: Option<usize>,
    /// hyper's own answer to a request it could not parse, replaced by problem+json.
    replacement: Option<Replacement>,
    refusals: Option<Arc<dyn RefusalLog>>,
    peer: SocketAddr,
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
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Option<Expired>
    where
        S: Unsent,
    {
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            match self.phase {
                Phase::Head(deadline) if deadline <= now => return Some(Expired::Head),
                Phase::Idle(deadline) if deadline <= now => {
                    if !self.draining() {
                        return Some(Expired::Idle);
                    }
                    let deadline = now + self.limits.idle_timeout;
                    self.phase = Phase::Idle(deadline);
                    self.timer.as_mut().reset(deadline);
                }
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

    /// Whether bytes an idle deadline would cut are still moving: the kernel's send
    /// queue holds some and is shorter than when last looked at. Records what it saw.
    fn draining(&mut self) -> bool
    where
        S: Unsent,
    {
        let Some(now) = self.inner.unsent() else {
            return false;
        };
        let before = self.queued.replace(now);
        now > 0 && before.is_none_or(|before| now < before)
    }

    /// A write cannot progress: the size of the kernel's queue now, if not known since
    /// the last write, is what the idle deadline compares with when it fires.
    fn note_queue(&mut self)
    where
        S: Unsent,
    {
        if self.queued.is_none() {
            self.queued = self.inner.unsent();
        }
    }

    fn on_read(&mut self, read: usize) {
        if read == 0 {
            return;
        }
        self.sync();
        if let Phase::Idle(_) = self.phase {
            // The next request has begun: from now on its head has a deadline.
            let now = Instant::now();
            self.head_began = now;
            self.enter(Phase::Head(now + self.limits.header_read_timeout));
        }
    }

    /// Called before bytes go out. Decides whether they are hyper's own answer to a
    /// request it could not parse: written when every request hyper handed over has
    /// its answer written and flushed (see the module docs). Those are replaced, so
    /// that every error a client sees is problem+json, and reported once.
    fn before_write(&mut self, first: &[u8]) {
        self.sync();
        if self.replacement.is_some() || self.settled != self.seen {
            return;
        }
        let status = Replacement::status_of(first);
        let id = self
            .refusals
            .as_ref()
            .map(|log| log.refused(status, self.head_began.into_std(), self.peer));
        self.replacement = Some(Replacement::of(status, id.as_ref()));
    }

    fn after_write(&mut self, written: usize) {
        if written == 0 {
            return;
        }
        self.queued = None;
        if let Phase::Idle(_) = self.phase {
            // A slow reader still taking the answer is not idle: recorded only, the
            // timer is pushed when it fires.
            self.phase = Phase::Idle(Instant::now() + self.limits.idle_timeout);
        }
    }

    /// A write or flush that cannot progress: fails it once the phase's deadline has
    /// passed, so a reader that stopped reading does not hold the connection.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>>
    where
        S: Unsent,
    {
        self.note_queue();
        match self.poll_deadline(cx) {
            Some(expired) => Poll::Ready(Err(expired.error())),
            None => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unsent + Unpin> GuardedStream<S> {
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

impl<S: AsyncRead + Unsent + Unpin> AsyncRead for GuardedStream<S> {
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

impl<S: AsyncWrite + Unsent + Unpin> AsyncWrite for GuardedStream<S> {
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
        // hyper flushes with its write buffer empty: every answer it is done with has
        // gone through `poll_write` in full.
        this.settled = this.progress.ended.load(Ordering::Relaxed);
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
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
    /// The status of hyper's own answer, which starts with `first`; 400 if it cannot
    /// be read (hyper answers 400, 414 or 431).
    fn status_of(first: &[u8]) -> StatusCode {
        first
            .get(..12)
            .filter(|line| line.starts_with(b"HTTP/1.") && line[8] == b' ')
            .and_then(|line| std::str::from_utf8(&line[9..12]).ok())
            .and_then(|code| code.parse::<u16>().ok())
            .and_then(|code| StatusCode::from_u16(code).ok())
            .filter(|status| parse_error_problem(*status).is_some())
            .unwrap_or(StatusCode::BAD_REQUEST)
    }

    /// The answer for `status`, tagged with the request id `id` when it has one.
    fn of(status: StatusCode, id: Option<&HeaderValue>) -> Self {
        let problem = parse_error_problem(status).unwrap_or_else(|| {
            Problem::new(
                ProblemKind::MalformedRequest,
                "the request is not valid HTTP/1.1",
            )
        });
        let body = problem.to_body();
        let mut bytes = Vec::with_capacity(body.len() + 256);
        bytes.extend_from_slice(
            format!(
                "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\nx-content-type-options: nosniff\r\n",
                status.as_str(),
                status.canonical_reason().unwrap_or(""),
                super::problem::CONTENT_TYPE,
                body.len()
            )
            .as_bytes(),
        );
        if let Some(id) = id {
            bytes.extend_from_slice(b"x-request-id: ");
            bytes.extend_from_slice(id.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"\r\n");
        bytes.extend_from_slice(&body);
        Self { bytes, sent: 0 }
    }
}

/// How many bytes a stream has handed to the kernel that the peer has not yet
/// acknowledged (`SIOCOUTQ`): while it shrinks, a slow reader is still reading, and
/// the connection is not idle. `None` where it cannot be known.
pub trait Unsent {
    fn unsent(&self) -> Option<usize>;
}

impl Unsent for TcpStream {
    #[cfg(target_os = "linux")]
    fn unsent(&self) -> Option<usize> {
        use std::os::fd::AsRawFd;
        let mut queued: libc::c_int = 0;
        // SAFETY: a valid socket descriptor, and SIOCOUTQ (TIOCOUTQ) writes one c_int.
        let rc = unsafe { libc::ioctl(self.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
        if rc == 0 {
            usize::try_from(queued).ok()
        } else {
            None
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn unsent(&self) -> Option<usize> {
        None
    }
}

/// TLS: the TCP stream beneath (records rustls still holds are not counted: they
/// leave as soon as the kernel takes them, which a write then reports).
impl Unsent for tokio_rustls::server::TlsStream<crate::tls::HandshakeCap<TcpStream>> {
    fn unsent(&self) -> Option<usize> {
        self.get_ref().0.get_ref().unsent()
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
    use std::sync::Mutex;

    /// A socket as hyper's stream sees it: writes are taken (or refused while `full`),
    /// reads hand out `incoming`.
    #[derive(Default)]
    struct Socket {
        written: Vec<u8>,
        full: bool,
        incoming: Vec<u8>,
    }

    impl AsyncRead for Socket {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if self.incoming.is_empty() {
                return Poll::Pending;
            }
            let incoming = std::mem::take(&mut self.incoming);
            buf.put_slice(&incoming);
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Socket {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.full {
                return Poll::Pending;
            }
            self.written.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl Unsent for Socket {
        fn unsent(&self) -> Option<usize> {
            None
        }
    }

    #[derive(Default)]
    struct Refusals(Mutex<Vec<StatusCode>>);

    impl RefusalLog for Refusals {
        fn refused(&self, status: StatusCode, _: std::time::Instant, _: SocketAddr) -> HeaderValue {
            self.0.lock().unwrap().push(status);
            HeaderValue::from_static("id-1")
        }
    }

    fn guarded(refusals: Arc<Refusals>) -> (GuardedStream<Socket>, Arc<Progress>) {
        let limits = ConnectionLimits {
            max_connections: 1,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_head_bytes: 16 * 1024,
        };
        let progress = Arc::new(Progress::default());
        let admission = ConnectionGate::new(limits)
            .logging_refusals(refusals)
            .admit()
            .unwrap();
        let peer = SocketAddr::from(([127, 0, 0, 1], 9));
        (
            admission.guard(Socket::default(), progress.clone(), peer),
            progress,
        )
    }

    fn write(stream: &mut GuardedStream<Socket>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(stream).poll_write(&mut cx, bytes)
    }

    fn flush(stream: &mut GuardedStream<Socket>) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(matches!(
            Pin::new(stream).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
    }

    fn read(stream: &mut GuardedStream<Socket>, bytes: &[u8]) {
        stream.inner.incoming = bytes.to_vec();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut buf = [0u8; 256];
        let mut buf = ReadBuf::new(&mut buf);
        assert!(matches!(
            Pin::new(stream).poll_read(&mut cx, &mut buf),
            Poll::Ready(Ok(()))
        ));
    }

    const LEGIT_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\ncontent-length: 2\r\n\r\n{}";
    const HYPER_400: &[u8] =
        b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

    /// The case the old byte-level guess got wrong: a legitimate 400 whose first write
    /// found the socket full, and pipelined bytes of the next request read before it
    /// went out. It goes out as it is, and so does everything after it.
    #[tokio::test]
    async fn a_legitimate_400_written_after_a_read_is_not_replaced() {
        let refusals = Arc::new(Refusals::default());
        let (mut stream, progress) = guarded(refusals.clone());
        read(&mut stream, b"GET /v1/keys/not-a-key HTTP/1.1\r\n\r\n");
        progress.begin();
        progress.end();
        stream.inner.full = true;
        assert!(write(&mut stream, LEGIT_400).is_pending());
        read(&mut stream, b"GET /v1/keys/not-a-key HT");
        stream.inner.full = false;
        assert!(
            matches!(write(&mut stream, LEGIT_400), Poll::Ready(Ok(n)) if n == LEGIT_400.len())
        );
        flush(&mut stream);
        read(&mut stream, b"TP/1.1\r\n\r\n");
        progress.begin();
        progress.end();
        assert!(matches!(write(&mut stream, LEGIT_400), Poll::Ready(Ok(_))));
        assert_eq!(stream.inner.written, [LEGIT_400, LEGIT_400].concat());
        assert!(refusals.0.lock().unwrap().is_empty());
    }

    /// hyper's own answer: written when every answer is settled (here after one
    /// legitimate answer and its flush), replaced, reported once, and nothing after it
    /// reaches the socket.
    #[tokio::test]
    async fn hyper_own_answer_after_settled_answers_is_replaced_and_reported_once() {
        let refusals = Arc::new(Refusals::default());
        let (mut stream, progress) = guarded(refusals.clone());
        progress.begin();
        progress.end();
        // A write split in two: the second half still belongs to the legit answer.
        assert!(write(&mut stream, &LEGIT_400[..10]).is_ready());
        assert!(write(&mut stream, &LEGIT_400[10..]).is_ready());
        flush(&mut stream);
        read(&mut stream, b"\x01garbage\r\n\r\n");
        assert!(
            matches!(write(&mut stream, HYPER_400), Poll::Ready(Ok(n)) if n == HYPER_400.len())
        );
        assert!(write(&mut stream, b"more").is_ready());
        flush(&mut stream);
        let written = String::from_utf8(stream.inner.written.clone()).unwrap();
        let (legit, replaced) = written.split_at(LEGIT_400.len());
        assert_eq!(legit.as_bytes(), LEGIT_400);
        assert!(
            replaced.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{replaced}"
        );
        assert!(replaced.contains("x-request-id: id-1\r\n"), "{replaced}");
        assert!(replaced.ends_with('}'), "{replaced}");
        assert_eq!(*refusals.0.lock().unwrap(), [StatusCode::BAD_REQUEST]);
    }

    #[test]
    fn hyper_statuses_keep_their_problem() {
        let status = Replacement::status_of(b"HTTP/1.1 431 Request Header Fields Too Large\r\n");
        assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let id = HeaderValue::from_static("abc-1");
        let replaced = String::from_utf8(Replacement::of(status, Some(&id)).bytes).unwrap();
        assert!(replaced.starts_with("HTTP/1.1 431 "), "{replaced}");
        assert!(replaced.contains("application/problem+json"));
        assert!(replaced.contains("x-request-id: abc-1\r\n"));
        assert!(replaced.ends_with('}'));
        assert_eq!(
            Replacement::status_of(b"HTTP/1.0 414 URI Too Long\r\n"),
            StatusCode::URI_TOO_LONG
        );
        for unreadable in [&b"HTTP/1.1 200 OK\r\n"[..], b"HTTP/1.1 4", b""] {
            assert_eq!(Replacement::status_of(unreadable), StatusCode::BAD_REQUEST);
        }
    }
}
