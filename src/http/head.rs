//! The head of a request as the pipeline reads it, from either path: hyper's request
//! (the fast path) or poem's. Its own room so that the pipeline and the parts it calls
//! (`http::trace`) read the same thing without importing each other.

use std::net::SocketAddr;

use poem::http::uri::Scheme;
use poem::http::{HeaderMap, Method, Uri, Version};
use poem::Request;

/// What admission reads of a request: its head and who sent it.
pub struct Head<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub version: Version,
    pub headers: &'a HeaderMap,
    pub peer: Option<SocketAddr>,
    /// Whether the request came over TLS (`https`).
    pub secure: bool,
}

impl<'a> Head<'a> {
    pub fn of(req: &'a Request) -> Self {
        Self {
            method: req.method(),
            uri: req.uri(),
            version: req.version(),
            headers: req.headers(),
            peer: req.remote_addr().as_socket_addr().copied(),
            secure: req.scheme() == &Scheme::HTTPS,
        }
    }
}
