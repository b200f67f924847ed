//! The two HTTP listeners: the API (`/v1`, the legacy route, docs) and the admin
//! listener (probes). This module wires endpoints together; each route family lives in
//! its own file.

pub mod admin;
pub mod api;
pub mod auth;
mod batch;
pub mod body;
pub mod conn;
pub mod fast;
pub mod key;
pub mod legacy;
pub mod limits;
pub mod payload;
pub mod problem;
pub mod ratelimit;
pub mod request_log;
pub mod server;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use poem::{Endpoint, EndpointExt, Response, Route};
use poem_openapi::OpenApiService;

use crate::cache::Cache;
use crate::dataset::{Dataset, LoadOptions};
use crate::metrics::{HttpMetrics, Metrics, MetricsError};
use crate::reload::{DatasetSlot, Reloader};

/// Settings of the API listener that handlers read on every request.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// The whole `Cache-Control` value of the 200s and 304s of `/v1/keys/{key}` and
    /// `/v1/keys/{key}/value`, built once by `cache_control`.
    pub cache_control_header: poem::http::HeaderValue,
    pub max_batch: usize,
    pub max_body_bytes: usize,
    pub limits: limits::LimitSettings,
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
pub fn cache_control(auth_on: bool, max_age: std::time::Duration) -> poem::http::HeaderValue {
    let scope = if auth_on { "private" } else { "public" };
    format!("{scope}, max-age={}", max_age.as_secs())
        .parse()
        .unwrap_or(poem::http::HeaderValue::from_static("no-store"))
}

/// Everything the handlers of both listeners share.
pub struct AppState {
    pub dataset: DatasetSlot,
    pub cache: Cache,
    pub settings: HttpSettings,
    pub metrics: Metrics,
    pub reloader: Reloader,
    /// `None`: authentication is off.
    pub auth: Option<auth::Authenticator>,
    /// `None`: neither rate limit is on.
    pub rate_limit: Option<Arc<ratelimit::RateLimits>>,
    /// The API listener's request limits (`--max-uri-bytes`, `--max-in-flight`, ...).
    pub limits: limits::RequestLimits,
    shutting_down: AtomicBool,
}

impl AppState {
    pub fn new(
        cache: Cache,
        settings: HttpSettings,
        reloader: Reloader,
    ) -> Result<Self, MetricsError> {
        Ok(Self {
            dataset: DatasetSlot::default(),
            metrics: Metrics::new(&cache)?,
            limits: limits::RequestLimits::new(settings.limits.clone()),
            cache,
            settings,
            reloader,
            auth: None,
            rate_limit: None,
            shutting_down: AtomicBool::new(false),
        })
    }

    pub fn with_auth(mut self, auth: Option<auth::Authenticator>) -> Self {
        self.auth = auth;
        self
    }

    pub fn with_rate_limit(mut self, limit: Option<ratelimit::RateLimits>) -> Self {
        self.rate_limit = limit.map(Arc::new);
        self
    }

    /// Looks `key` up in `dataset` (one index probe, `Dataset::lookup`), counting the
    /// outcome in `kvserve_lookups_total`. The value comes back as bytes, which every
    /// route serves or renders (`key::escape_json`) without looking them up again.
    pub fn find(&self, dataset: &Dataset, key: u128) -> Option<Bytes> {
        let found = dataset.lookup(key);
        if found.is_some() {
            self.metrics.lookups_found.inc();
        } else {
            self.metrics.lookups_missing.inc();
        }
        found
    }

    /// Ready means: a dataset is loaded and the process is not shutting down.
    pub fn is_ready(&self) -> bool {
        self.dataset.is_loaded() && !self.shutting_down.load(Ordering::SeqCst)
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

pub type ApiService = OpenApiService<(api::KeysApi, legacy::LegacyApi), ()>;

/// The OpenAPI description of the API listener; also what `openapi/openapi.json` holds.
pub fn api_service(state: Arc<AppState>) -> ApiService {
    OpenApiService::new(
        (
            api::KeysApi::new(state.clone()),
            legacy::LegacyApi::new(state),
        ),
        "kvserve",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Read-only UUID → text lookups from one immutable data file. Every error on `/v1` \
         is RFC 9457 `application/problem+json`; the legacy `/get_value/{key}` route keeps \
         the old service's exact responses.",
    )
}

/// The OpenAPI document as JSON, without a running server (for `kvserve openapi` and
/// the test that keeps `openapi/openapi.json` in sync).
pub fn openapi_json() -> String {
    let settings = HttpSettings {
        cache_control_header: poem::http::HeaderValue::from_static(""),
        max_batch: 0,
        max_body_bytes: 0,
        limits: limits::LimitSettings {
            max_uri_bytes: 0,
            max_body_bytes: 0,
            max_in_flight: None,
            request_timeout: None,
        },
    };
    let reloader = Reloader::new(Default::default(), LoadOptions::default());
    match AppState::new(Cache::new(0), settings, reloader) {
        Ok(state) => api_service(Arc::new(state)).spec(),
        Err(err) => panic!("metrics set-up cannot fail with constant names: {err}"),
    }
}

/// The API listener's endpoint: the OpenAPI routes, Swagger UI at `/docs`, the spec at
/// `/openapi.json`, and problem+json for every error, including unknown routes.
///
/// Layers, outermost first: security headers, request id and access log, metrics,
/// limits and shedding, the per-address rate limit (before authentication, so a flood
/// of bad tokens is refused before any signature is checked), authentication, the
/// per-subject rate limit (keyed by the verified `sub`, so after it), the fast path of
/// the hot routes, then routing. `fast::admitted` makes the same checks in this order.
pub fn api_endpoint(state: Arc<AppState>) -> impl Endpoint<Output = Response> {
    let service = api_service(state.clone());
    let (docs, spec) = served_spec(&service, state.auth.is_some());
    problem::with_problems(
        Route::new()
            .at("/docs", docs)
            .at("/openapi.json", spec)
            .nest("/", service)
            .data(state.clone())
            .with(fast::FastRoutes(state.clone())),
    )
    .with(ratelimit::SubjectRateLimit(state.clone()))
    .with(auth::RequireScope {
        state: state.clone(),
        scope: auth::SCOPE_READ,
        is_open: is_open_path,
    })
    .with(ratelimit::PeerRateLimit(state.clone()))
    .with(limits::Limits(state.clone()))
    .with(HttpMetrics(state))
    .with(request_log::RequestLog)
    .with(security_headers())
}

/// Swagger UI and the spec as this server runs: with auth on, the document as checked
/// in (every data route requires the bearer scheme); with auth off, the same without
/// the security requirements, so neither clients nor Swagger UI ask for a token that
/// nothing checks (schemathesis holds the server to whichever it serves).
fn served_spec(
    service: &ApiService,
    auth_on: bool,
) -> (
    impl Endpoint<Output = Response>,
    impl Endpoint<Output = Response>,
) {
    let checked_in = service.spec();
    let mut html = service.swagger_ui_html();
    let spec = if auth_on {
        checked_in
    } else {
        let open = without_security(&checked_in);
        // The UI embeds the document verbatim; swap in the one served.
        html = html.replacen(&checked_in, &open, 1);
        open
    };
    let docs = poem::endpoint::make_sync(move |_| poem::web::Html(html.clone()));
    let spec = poem::endpoint::make_sync(move |_| {
        Response::builder()
            .content_type("application/json")
            .body(spec.clone())
    });
    (docs.map_to_response(), spec)
}

/// The OpenAPI document with every `security` requirement and scheme removed.
fn without_security(spec: &str) -> String {
    let Ok(mut doc) = serde_json::from_str::<serde_json::Value>(spec) else {
        return spec.to_owned();
    };
    if let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) {
        for operation in paths
            .values_mut()
            .filter_map(|item| item.as_object_mut())
            .flat_map(|item| item.values_mut())
            .filter_map(|op| op.as_object_mut())
        {
            operation.remove("security");
        }
    }
    if let Some(components) = doc.get_mut("components").and_then(|c| c.as_object_mut()) {
        components.remove("securitySchemes");
    }
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| spec.to_owned())
}

/// The API paths anyone may read without a token: the spec and its viewer.
pub fn is_open_path(path: &str) -> bool {
    path == "/openapi.json" || path == "/docs" || path.starts_with("/docs/")
}

const NOSNIFF: poem::http::HeaderValue = poem::http::HeaderValue::from_static("nosniff");

/// `X-Content-Type-Options: nosniff` on every answer of both listeners.
pub fn security_headers() -> poem::middleware::SetHeader {
    poem::middleware::SetHeader::new()
        .overriding(poem::http::header::X_CONTENT_TYPE_OPTIONS, NOSNIFF)
}
