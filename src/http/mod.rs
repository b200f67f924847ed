//! The two HTTP listeners: the API (`/v1`, the legacy route, docs) and the admin
//! listener (probes). This module wires endpoints together; each route family lives in
//! its own file.

pub mod admin;
pub mod api;
pub mod auth;
mod batch;
pub mod body;
pub mod budget;
pub mod cidr;
pub mod client;
pub mod conn;
pub mod documents;
pub mod encoding;
pub mod fast;
pub mod head;
pub mod host;
pub mod key;
pub mod legacy;
pub mod limits;
pub mod metrics;
pub mod payload;
pub mod peers;
pub mod pipeline;
pub mod problem;
pub mod ratelimit;
pub mod request_log;
pub mod responses;
pub mod routes;
pub mod server;
pub mod state;
pub mod trace;

use std::sync::Arc;

use poem::{Endpoint, EndpointExt, Response, Route};
use poem_openapi::OpenApiService;

use crate::cache::Cache;
use crate::dataset::LoadOptions;
use crate::reload::Reloader;
use crate::state::AppState;
use documents::Document;
pub use state::{cache_control, HttpSettings, HttpState};

pub type ApiService = OpenApiService<(api::KeysApi, legacy::LegacyApi), ()>;

/// The OpenAPI description of the API listener; also what `openapi/openapi.json` holds.
pub fn api_service(state: Arc<HttpState>) -> ApiService {
    OpenApiService::new(
        (
            api::KeysApi::new(state.clone()),
            legacy::LegacyApi::new(state),
        ),
        "kvserve",
        env!("CARGO_PKG_VERSION"),
    )
    .license(
        poem_openapi::LicenseObject::new(env!("CARGO_PKG_LICENSE")).url(concat!(
            "https://spdx.org/licenses/",
            env!("CARGO_PKG_LICENSE"),
            ".html"
        )),
    )
    // Relative: the API is at the root of the listener that serves this document, on
    // whatever address it was started with (`--addr`).
    .server(
        poem_openapi::ServerObject::new("/")
            .description("The API listener that serves this document (`--addr`)."),
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
            max_header_bytes: 0,
            max_body_bytes: 0,
            max_in_flight: None,
            request_timeout: None,
        },
        fast_path: false,
        compression: encoding::Compression::OFF,
        max_answer_bytes: 0,
        max_unsent_bytes: 0,
    };
    let reloader = Reloader::new(Default::default(), LoadOptions::default());
    let state = AppState::new(Cache::new(0), reloader)
        .and_then(|app| HttpState::new(Arc::new(app), settings, None, None));
    match state {
        Ok(state) => api_service(Arc::new(state)).spec(),
        Err(err) => panic!("metrics set-up cannot fail with constant names: {err}"),
    }
}

/// The API listener's endpoint: the OpenAPI routes, Swagger UI at `/docs`, the spec at
/// `/openapi.json`, and problem+json for every error, including unknown routes, all
/// behind the admission pipeline (`pipeline::through_framework`). The fast path
/// (`fast::serve`) answers hot routes before this endpoint is called, through the same
/// pipeline.
pub fn api_endpoint(state: Arc<HttpState>) -> impl Endpoint<Output = Response> {
    let service = api_service(state.clone());
    let (docs, spec) = served_spec(&service, state.auth.is_some(), state.settings.compression);
    let routes = problem::with_problems(
        legacy::before_router(
            Route::new()
                .at("/docs", read_only(docs))
                .at("/openapi.json", read_only(spec))
                .nest("/", service)
                .data(state.clone()),
            state.clone(),
        ),
        routes::api_allow,
    );
    routes.around(move |routes, req| pipeline::through_framework(state.clone(), routes, req))
}

/// `ep` for `GET` and `HEAD` only; any other method is the 405 problem. Not poem's
/// `get()`, which answers `HEAD` with an empty body and so loses the
/// `Content-Length` that `GET` sends.
fn read_only(ep: impl Endpoint<Output = Response>) -> impl Endpoint<Output = Response> {
    ep.before(|req| async move {
        if req.method() == poem::http::Method::GET || req.method() == poem::http::Method::HEAD {
            Ok(req)
        } else {
            Err(poem::error::MethodNotAllowedError.into())
        }
    })
}

/// Swagger UI and the spec as this server runs: with auth on, the document as checked
/// in (every data route requires the bearer scheme); with auth off, the same without
/// the security requirements, so neither clients nor Swagger UI ask for a token that
/// nothing checks (schemathesis holds the server to whichever it serves). Both are
/// made once and shared by every answer (`documents`).
fn served_spec(
    service: &ApiService,
    auth_on: bool,
    compression: encoding::Compression,
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
    let html = Arc::new(Document::new("text/html; charset=utf-8", html, compression));
    let spec = Arc::new(Document::new("application/json", spec, compression));
    let docs = poem::endpoint::make_sync(move |req| html.answer(&req));
    let spec = poem::endpoint::make_sync(move |req| spec.answer(&req));
    (docs, spec)
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
