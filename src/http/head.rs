//! The head of a request as the pipeline reads it, from either path: hyper's request
//! (the fast path) or poem's. Its own room so that the pipeline and the parts it calls
//! (`http::trace`) read the same thing without importing each other.

use poem::http::uri::Scheme;
use poem::http::{HeaderMap, Method, Uri, Version};
use poem::Request;

use super::client::{ClientAddr, ClientResolver};

/// What admission reads of a request: its head and who sent it.
pub struct Head<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub version: Version,
    pub headers: &'a HeaderMap,
    /// Who sent it, resolved once (`http::client`): what the rate limits, the access
    /// log and the span all name. The raw peer is deliberately not here.
    pub client: Option<ClientAddr>,
    /// Whether the request came over TLS (`https`).
    pub secure: bool,
}

impl<'a> Head<'a> {
    pub fn of(req: &'a Request, clients: &ClientResolver) -> Self {
        let peer = req.remote_addr().as_socket_addr().copied();
        Self {
            method: req.method(),
            uri: req.uri(),
            version: req.version(),
            headers: req.headers(),
            client: clients.resolve(req.headers(), peer),
            secure: req.scheme() == &Scheme::HTTPS,
        }
    }
}
