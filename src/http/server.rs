//! The HTTP/1.1 server beneath both listeners: kvserve drives hyper itself and hands
//! requests to the poem endpoint, instead of running poem's `Server`.
//!
//! Why: measured, poem's server and middleware chain cost about half again the CPU of
//! a bare hyper server per request (BENCHMARKS.md). Driving hyper here lets the hot
//! routes (`http::fast`) be answered straight from hyper's request, through the same
//! admission pipeline (`http::pipeline`), while every other request goes to poem.
//! It also lets the connection deadlines (`http::conn`) use one timer per connection.
//!
//! HTTP/1.1 only: kvserve sits behind a load balancer or ingress that speaks HTTP/1.1
//! to its upstreams; cleartext HTTP/2 (h2c) is not offered. With TLS on (`crate::tls`)
//! the same code serves the decrypted stream, and ALPN offers only `http/1.1`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use poem::http::uri::Scheme;
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Endpoint, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::body::{self, DeadlineBody};
use super::conn::{ConnectionGate, GuardedStream, Progress, Unsent};
use super::fast;
use super::peers::{PeerConnections, PeerSlot};
use super::state::HttpState;
use crate::telemetry::throttle::{bounded, Throttle, FAILURE_LOG_INTERVAL};
use crate::tls::{HandshakeCap, ListenerTls};

type Body = BoxBody<Bytes, io::Error>;
type HyperResponse = hyper::Response<Body>;

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again,
/// so the loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Longest error text a failed handshake's log line carries.
const MAX_ERROR_CHARS: usize = 200;

/// One listener: its socket, connection gate, the poem endpoint for every request,
/// and, on the API listener, the state the hot routes are answered from.
pub struct Listener<E> {
    pub name: &'static str,
    pub socket: TcpListener,
    pub gate: ConnectionGate,
    pub endpoint: E,
    pub fast: Option<Arc<HttpState>>,
    /// TLS on this listener (`--tls-cert`, `--admin-tls-cert`), or plain TCP.
    pub tls: Option<Arc<ListenerTls>>,
    /// The API listener's connections per address (`--max-connections-per-address`).
    pub peers: Option<Arc<PeerConnections>>,
    /// `kvserve_http_connections_refused_total{listener, reason="max_connections"}`.
    pub refused: prometheus::IntCounter,
}

impl<E: Endpoint<Output = Response> + 'static> Listener<E> {
    /// Serves until `stop` resolves, then stops accepting, asks every connection to
    /// finish its current request and close, and waits up to `drain` for them; the
    /// ones still open after that are dropped.
    pub async fn serve(self, stop: impl Future<Output = ()>, drain: Duration) -> io::Result<()> {
        let local = LocalAddr(self.socket.local_addr()?.into());
        let endpoint = Arc::new(self.endpoint);
        let (closing_tx, closing) = watch::channel(false);
        let mut connections = JoinSet::new();
        let accept_failures = Throttle::new(FAILURE_LOG_INTERVAL);
        let refusals = Throttle::new(FAILURE_LOG_INTERVAL);
        tokio::pin!(stop);
        loop {
            let accepted = tokio::select! {
                () = &mut stop => break,
                accepted = self.socket.accept() => accepted,
            };
            while connections.try_join_next().is_some() {}
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    if let Some(left_out) = accept_failures.admit() {
                        tracing::warn!(
                            listener = self.name,
                            error = %err,
                            not_logged_since_last = left_out,
                            "accept failed (logged at most once per {FAILURE_LOG_INTERVAL:?})"
                        );
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let held = match &self.peers {
                Some(peers) => match peers.admit(peer.ip()) {
                    Some(held) => Some(held),
                    None => continue,
                },
                None => None,
            };
            let Some(admission) = self.gate.admit() else {
                self.refused.inc();
                if let Some(left_out) = refusals.admit() {
                    tracing::warn!(
                        listener = self.name,
                        remote = %peer,
                        limit = self.gate.limit(),
                        not_logged_since_last = left_out,
                        "connection refused: --max-connections reached (logged at most once per {FAILURE_LOG_INTERVAL:?})"
                    );
                }
                continue;
            };
            let progress = Arc::new(Progress::default());
            let service = ConnectionService {
                endpoint: endpoint.clone(),
                fast: self.fast.clone(),
                local: local.clone(),
                peer,
                _held: held,
                progress: progress.clone(),
                body_read_timeout: self.gate.body_read_timeout(),
                scheme: if self.tls.is_some() {
                    Scheme::HTTPS
                } else {
                    Scheme::HTTP
                },
            };
            let closing = closing.clone();
            let buffer = buffer_size(self.gate.max_head_bytes());
            match &self.tls {
                None => {
                    let stream = admission.guard(stream, progress, peer);
                    connections.spawn(drive(stream, service, closing, buffer));
                }
                Some(tls) => {
                    let tls = tls.clone();
                    let listener = self.name;
                    connections.spawn(async move {
                        // Under the first request head's deadline: a client that never
                        // finishes the handshake does not hold its slot for longer.
                        // Capped too: an unfinished handshake holds little (tls.rs).
                        let handshake = tls.acceptor.accept(HandshakeCap::new(stream));
                        match tokio::time::timeout_at(admission.deadline(), handshake).await {
                            Ok(Ok(mut stream)) => {
                                stream.get_mut().0.lift();
                                let stream = admission.guard(stream, progress, peer);
                                drive(stream, service, closing, buffer).await;
                            }
                            // Closed before a ClientHello was complete: a load
                            // balancer's TCP check, or a client gone; not a failure
                            // worth an alert.
                            Ok(Err(err)) if err.kind() == io::ErrorKind::UnexpectedEof => {
                                tracing::debug!(listener, remote = %peer, "connection closed before the TLS handshake ended");
                            }
                            Ok(Err(err)) => {
                                handshake_failed(&tls, listener, peer, &err.to_string());
                            }
                            Err(_) => handshake_failed(
                                &tls,
                                listener,
                                peer,
                                "not finished within --header-read-timeout",
                            ),
                        }
                    });
                }
            }
        }
        drop(self.socket);
        let _ = closing_tx.send(true);
        let drained = tokio::time::timeout(drain, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                listener = self.name,
                open = connections.len(),
                "connections still open after --shutdown-timeout are closed"
            );
            connections.shutdown().await;
        }
        Ok(())
    }
}

/// Counts a failed TLS handshake, and logs it unless one was logged less than
/// `FAILURE_LOG_INTERVAL` ago: a client can fail handshakes as fast as it connects,
/// and its error text (a name it sent) is cut short.
fn handshake_failed(tls: &ListenerTls, listener: &'static str, peer: SocketAddr, error: &str) {
    tls.handshake_failures.inc();
    if let Some(left_out) = tls.failure_log.admit() {
        tracing::info!(
            listener,
            remote = %peer,
            error = %bounded(error, MAX_ERROR_CHARS),
            not_logged_since_last = left_out,
            "TLS handshake failed (logged at most once per {FAILURE_LOG_INTERVAL:?}; kvserve_tls_handshake_failures_total counts all)"
        );
    }
}

/// Serves one connection's requests until it ends, or finishes the current one and
/// closes once the listener is closing.
async fn drive<S, E>(
    stream: GuardedStream<S>,
    service: ConnectionService<E>,
    mut closing: watch::Receiver<bool>,
    buffer: usize,
) where
    S: AsyncRead + AsyncWrite + Unsent + Unpin + Send + 'static,
    E: Endpoint<Output = Response> + 'static,
{
    let peer = service.peer;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(true)
        .header_read_timeout(None)
        .max_buf_size(buffer);
    let conn = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let done = tokio::select! {
        biased;
        finished = conn.as_mut() => Some(finished),
        _ = wait_closing(&mut closing) => None,
    };
    let finished = match done {
        Some(finished) => finished,
        None => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = finished {
        tracing::debug!(remote = %peer, error = %err, "connection ended with an error");
    }
}

/// hyper's read buffer for a connection whose request heads may be `max_head_bytes`
/// long: hyper refuses a head that fills it (431), so an unfinished head holds at most
/// this much (its default, about 400 KiB, was what a head could hold before). A little
/// over the limit, so a head of exactly the limit fits with its request line and the
/// blank line that ends it; never under hyper's minimum of 8 KiB. The same bound caps
/// what hyper buffers of an answer before the socket takes it.
fn buffer_size(max_head_bytes: usize) -> usize {
    const MINIMUM: usize = 8 * 1024;
    const SLACK: usize = 1024;
    max_head_bytes.saturating_add(SLACK).max(MINIMUM)
}

async fn wait_closing(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|closing| *closing).await;
}

/// The hyper service of one connection.
struct ConnectionService<E> {
    endpoint: Arc<E>,
    fast: Option<Arc<HttpState>>,
    local: LocalAddr,
    peer: SocketAddr,
    /// The connection's place in its address's count, given back when it ends.
    _held: Option<PeerSlot>,
    /// Tells the connection's deadlines where each request begins and ends.
    progress: Arc<Progress>,
    body_read_timeout: Duration,
    /// `https` on a TLS listener, as the framework's requests say.
    scheme: Scheme,
}

impl<E: Endpoint<Output = Response> + 'static> hyper::service::Service<hyper::Request<Incoming>>
    for ConnectionService<E>
{
    type Response = hyper::Response<Answered>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        self.progress.begin();
        let progress = self.progress.clone();
        // A body the answer leaves unread ends the connection (`body::ReadToEnd`).
        let has_body = !hyper::body::Body::is_end_stream(req.body());
        if let Some(state) = &self.fast {
            if let Some(mut resp) =
                fast::serve(state, &req, self.peer, self.scheme == Scheme::HTTPS)
            {
                if has_body {
                    body::close_connection(&mut resp);
                }
                return Answer::Ready(Some(answered(resp.into(), progress)));
            }
        }
        let mut req = poem::Request::from((
            req,
            self.local.clone(),
            RemoteAddr(self.peer.into()),
            self.scheme.clone(),
        ));
        let read = has_body.then(|| {
            let (body, read) = DeadlineBody::new(req.take_body().into(), self.body_read_timeout);
            req.set_body(poem::Body::from(BoxBody::new(body)));
            read
        });
        let endpoint = self.endpoint.clone();
        // Boxed so the fast path's future stays small: the framework's is large, and
        // hyper would otherwise move it on every request.
        Answer::Framework(Box::pin(async move {
            let mut resp = endpoint.get_response(req).await;
            if read.is_some_and(|read| !read.is_read()) {
                body::close_connection(&mut resp);
            }
            answered(resp.into(), progress)
        }))
    }
}

/// An answer's body that reports to the connection's deadlines when hyper is done
/// with it (written in full, or dropped for HEAD and on errors).
pub struct Answered {
    body: Body,
    progress: Arc<Progress>,
}

fn answered(resp: HyperResponse, progress: Arc<Progress>) -> hyper::Response<Answered> {
    resp.map(|body| Answered { body, progress })
}

impl Drop for Answered {
    fn drop(&mut self) {
        self.progress.end();
    }
}

impl hyper::body::Body for Answered {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, io::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// An answer already made (the fast path) or still being made by the framework.
enum Answer {
    Ready(Option<hyper::Response<Answered>>),
    Framework(Pin<Box<dyn Future<Output = hyper::Response<Answered>> + Send>>),
}

impl Future for Answer {
    type Output = Result<hyper::Response<Answered>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Answer::Ready(resp) => match resp.take() {
                Some(resp) => Poll::Ready(Ok(resp)),
                // Polled again after completion: a caller bug, but not worth a panic.
                None => Poll::Pending,
            },
            Answer::Framework(fut) => fut.as_mut().poll(cx).map(Ok),
        }
    }
}
