//! Request bodies with a deadline (`--body-read-timeout`): a client that trickles a
//! body, or declares one and never sends it, would otherwise hold its connection and
//! the handler reading it for as long as it likes.
//!
//! The clock starts when hyper hands the request over (the head is complete) and the
//! whole body must have arrived by the deadline; bytes do not extend it, so a body
//! sent a byte a second is cut like one never sent. Only requests that have a body pay
//! for the timer; the hot routes (GET, HEAD) have none.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame, SizeHint};
use poem::error::ReadBodyError;
use tokio::time::Sleep;

use super::problem::{Problem, ProblemKind};

/// A request body that fails with `TimedOut` once its deadline has passed, and tells
/// its `ReadToEnd` when it was read to its end.
pub struct DeadlineBody {
    inner: BoxBody<Bytes, io::Error>,
    deadline: Pin<Box<Sleep>>,
    limit: Duration,
    read: ReadToEnd,
}

impl DeadlineBody {
    pub fn new(inner: BoxBody<Bytes, io::Error>, limit: Duration) -> (Self, ReadToEnd) {
        let read = ReadToEnd::default();
        let body = Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(limit)),
            limit,
            read: read.clone(),
        };
        (body, read)
    }
}

/// Whether a request's body was read to its end by the time its answer is made. One
/// that was not (a `GET` with a body, a refusal before the body was read) leaves the
/// connection where the next request cannot be found; hyper then closes it after the
/// answer, so the answer says so (`close_connection`).
#[derive(Debug, Clone, Default)]
pub struct ReadToEnd(Arc<AtomicBool>);

impl ReadToEnd {
    pub fn is_read(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Adds `Connection: close` to the answer of a request whose body was not read (RFC
/// 9112 §9.6: a server that closes after an answer says so in it), on both paths and
/// whatever the body's framing, so a client knows not to send its next request on
/// this connection. hyper closes the connection after writing it.
pub fn close_connection(resp: &mut poem::Response) {
    resp.headers_mut().insert(
        poem::http::header::CONNECTION,
        poem::http::HeaderValue::from_static("close"),
    );
}

impl Body for DeadlineBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {}
            ready => {
                if matches!(ready, Poll::Ready(None)) || this.inner.is_end_stream() {
                    this.read.0.store(true, Ordering::Relaxed);
                }
                return ready;
            }
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the request body did not arrive within {} (--body-read-timeout)",
                    humantime::format_duration(this.limit)
                ),
            ))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The problem for a body that could not be read to its end: 408 when its deadline
/// passed, 499 when the client went away mid-body (an answer it will never read, so
/// that metrics and the access log count it as what it is, not as a 400); `None` for
/// any other read error.
pub fn unread_body_problem(err: &ReadBodyError) -> Option<Problem> {
    let ReadBodyError::Io(err) = err else {
        return None;
    };
    if err.kind() == io::ErrorKind::TimedOut {
        return Some(Problem::new(ProblemKind::BodyTimeout, err.to_string()));
    }
    let gone = client_went_away(err);
    gone.then(|| {
        Problem::new(
            ProblemKind::ClientClosed,
            "the client closed the connection before sending the whole request body",
        )
    })
}

/// Whether a body read failed because the connection ended under it: hyper reports an
/// incomplete body (end of stream before the declared length) or a reset socket, behind
/// the wrappers poem adds.
fn client_went_away(err: &io::Error) -> bool {
    let mut from_hyper = false;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = err.get_ref().map(|e| e as _);
    while let Some(err) = cause {
        if let Some(err) = err.downcast_ref::<hyper::Error>() {
            if err.is_incomplete_message() {
                return true;
            }
            from_hyper = true;
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            let lost = matches!(
                io.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            );
            if from_hyper && lost {
                return true;
            }
        }
        cause = err.source();
    }
    false
}
