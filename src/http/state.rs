//! What the API and admin listeners share: the application state below them, the
//! settings handlers read on every request, and the admission pipeline's parts
//! (limits, authentication, rate limits, request metrics).

use std::sync::Arc;

use poem::http::HeaderValue;

use super::auth::Authenticator;
use super::budget::AnswerBudget;
use super::client::ClientResolver;
use super::encoding::Compression;
use super::limits::{LimitSettings, RequestLimits};
use super::metrics::HttpMetrics;
use super::peers::PeerConnections;
use super::ratelimit::RateLimits;
use crate::metrics::MetricsError;
use crate::state::AppState;

/// Settings of the API listener that handlers read on every request.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// The whole `Cache-Control` value of the 200s and 304s of `/v1/keys/{key}` and
    /// `/v1/keys/{key}/value`, built once by `cache_control`.
    pub cache_control_header: HeaderValue,
    pub max_batch: usize,
    pub max_body_bytes: usize,
    pub limits: LimitSettings,
    /// `--fast-path`: answer the hot routes straight from hyper's request.
    pub fast_path: bool,
    /// `--compression`, `--compress-min-bytes`.
    pub compression: Compression,
    /// `--max-answer-bytes`: the largest batch answer made.
    pub max_answer_bytes: usize,
    /// `--max-unsent-bytes`: the budget of `http::budget`.
    pub max_unsent_bytes: usize,
}

/// The `Cache-Control` value of a lookup's 200 and 304, from `--cache-max-age`.
///
/// With auth on it is `private`: a shared cache or CDN may store a `public` answer to a
/// request that carried a token and hand it to one that carried none (RFC 9111 §3.5),
/// which would serve data past the authentication. `private` still lets the client's
/// own cache keep it for `max-age`. `Vary: Authorization` was not chosen: a shared
/// cache would still store one copy per token and serve it for as long as `max-age`
/// says, past the token's expiry or revocation. With auth off every client may read
/// everything, so the answer is `public`.
pub fn cache_control(auth_on: bool, max_age: std::time::Duration) -> HeaderValue {
    let scope = if auth_on { "private" } else { "public" };
    format!("{scope}, max-age={}", max_age.as_secs())
        .parse()
        .unwrap_or(HeaderValue::from_static("no-store"))
}

pub struct HttpState {
    pub app: Arc<AppState>,
    pub settings: HttpSettings,
    pub metrics: HttpMetrics,
    /// `None`: authentication is off.
    pub auth: Option<Authenticator>,
    /// `None`: neither rate limit is on.
    pub rate_limit: Option<Arc<RateLimits>>,
    /// The API listener's request limits (`--max-uri-bytes`, `--max-in-flight`, ...).
    pub limits: RequestLimits,
    /// The bytes unsent answers may hold (`--max-unsent-bytes`).
    pub budget: AnswerBudget,
    /// How a request's client address is found (`--trusted-proxies`, ...).
    pub clients: ClientResolver,
    /// The API listener's connections per address (`--max-connections-per-address`).
    pub peers: Arc<PeerConnections>,
}

impl HttpState {
    pub fn new(
        app: Arc<AppState>,
        settings: HttpSettings,
        auth: Option<Authenticator>,
        rate_limit: Option<RateLimits>,
    ) -> Result<Self, MetricsError> {
        let metrics = HttpMetrics::new(app.metrics.registry())?;
        let clients = ClientResolver::default();
        Ok(Self {
            budget: AnswerBudget::new(settings.max_unsent_bytes, app.metrics.registry())?,
            peers: Arc::new(PeerConnections::new(
                0,
                clients.clone(),
                metrics.connections_refused("api", "per_address"),
            )),
            clients,
            metrics,
            limits: RequestLimits::new(settings.limits.clone()),
            app,
            settings,
            auth,
            rate_limit: rate_limit.map(Arc::new),
        })
    }

    /// Client addresses resolved by `clients`, and at most `per_address` connections
    /// from one address (0: no cap). Without it: the peer, uncapped.
    pub fn with_clients(self, clients: ClientResolver, per_address: usize) -> Self {
        let refused = self.metrics.connections_refused("api", "per_address");
        Self {
            peers: Arc::new(PeerConnections::new(per_address, clients.clone(), refused)),
            clients,
            ..self
        }
    }
}
