//! The admin listener: probes, metrics and operations. Kept off the API listener so
//! that a flood of API traffic or an API-side policy never hides the process's health,
//! and so that it can be bound to a private address.

use std::sync::Arc;

use poem::http::header;
use poem::web::{Data, Json};
use poem::{get, handler, post, Body, Endpoint, EndpointExt, IntoResponse, Response, Route};

use super::auth::SCOPE_ADMIN;
use super::host;
use super::pipeline::{self, Head, Policy};
use super::problem::{self, Problem, ProblemKind};
use super::state::HttpState;
use crate::reload::{ReloadError, Trigger};
use crate::state::AppState;

/// `GET /livez`: the process is up and its runtime answers.
#[handler]
fn livez() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "live"}))
}

/// `GET /readyz`: 200 only while a dataset is loaded and the process is not shutting
/// down, so a load balancer sends traffic only where it can be answered.
#[handler]
fn readyz(Data(state): Data<&Arc<AppState>>) -> Response {
    if state.is_ready() {
        return Json(serde_json::json!({"status": "ready"})).into_response();
    }
    let problem = if state.is_shutting_down() {
        Problem::new(ProblemKind::ShuttingDown, "the server is shutting down")
    } else {
        Problem::new(ProblemKind::NotLoaded, "the data file is still loading")
    };
    problem.into_response()
}

/// `GET /metrics`: Prometheus text format.
#[handler]
fn metrics(Data(state): Data<&Arc<AppState>>) -> Response {
    Response::builder()
        .header(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .body(state.metrics.render(&state.cache))
}

/// `GET /admin/dataset`: what is being served. With `--storage mmap` it adds
/// `mapped_file_changed`, checked now: `true` once the mapped file was written in place
/// since the load, when `sha256` no longer certifies what is served.
#[handler]
fn dataset_info(Data(state): Data<&Arc<AppState>>) -> Response {
    let Some(dataset) = state.dataset.load().as_ref().cloned() else {
        return Problem::not_loaded().into_response();
    };
    let Some(changed) = dataset.mapped_file_changed() else {
        return Json(dataset.info()).into_response();
    };
    match serde_json::to_value(dataset.info()) {
        Ok(mut info) => {
            info["mapped_file_changed"] = changed.into();
            Json(info).into_response()
        }
        Err(err) => Problem::new(ProblemKind::Internal, err.to_string()).into_response(),
    }
}

/// `POST /admin/reload` with an optional `{"path": "<file in the data folder>"}`.
#[handler]
async fn reload_dataset(Data(state): Data<&Arc<AppState>>, body: Body) -> Response {
    let requested = match reload_path(body).await {
        Ok(path) => path,
        Err(problem) => return problem.into_response(),
    };
    match state
        .reload(requested.as_deref(), Trigger::Request, false)
        .await
    {
        Ok(dataset) => Json(dataset.info()).into_response(),
        Err(err) => {
            let kind = match err {
                ReloadError::Busy => ProblemKind::ReloadInProgress,
                ReloadError::PathNotAllowed { .. } => ProblemKind::InvalidReloadPath,
                ReloadError::Load(_) => ProblemKind::ReloadFailed,
                ReloadError::Panicked | ReloadError::Spawn(_) => ProblemKind::Internal,
                ReloadError::Cancelled => ProblemKind::ShuttingDown,
            };
            Problem::new(kind, err.answer_detail()).into_response()
        }
    }
}

/// Reads the optional body: empty, `{}` or `{"path": "..."}`.
async fn reload_path(body: Body) -> Result<Option<String>, Problem> {
    let invalid = |detail: String| Problem::new(ProblemKind::InvalidBody, detail);
    let bytes = body.into_bytes_limit(64 * 1024).await.map_err(|err| {
        super::body::unread_body_problem(&err)
            .unwrap_or_else(|| invalid(format!("the request body could not be read: {err}")))
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|err| invalid(format!("the request body is not valid JSON: {err}")))?;
    match value.get("path") {
        None | Some(serde_json::Value::Null) if value.is_object() => Ok(None),
        Some(serde_json::Value::String(path)) => Ok(Some(path.clone())),
        Some(_) => Err(invalid("field `path` must be a string".to_owned())),
        None => Err(invalid(
            "the request body must be a JSON object like {\"path\": \"new.data\"}".to_owned(),
        )),
    }
}

/// `POST /admin/cache/purge`: empties the LRU (answers stay correct; they are rendered again).
#[handler]
fn purge_cache(Data(state): Data<&Arc<AppState>>) -> Json<serde_json::Value> {
    let entries = state.cache.len();
    state.cache.purge();
    tracing::info!(entries, "cache purged by request");
    Json(serde_json::json!({"purged": entries}))
}

/// Probes and `/metrics` stay open for orchestrators and Prometheus; `/admin/*` needs
/// `kv:admin` when authentication is on.
/// Who may pass on the admin listener: `kv:admin` on `/admin/*`; probes and metrics
/// are open (they are kept off the API listener for that).
const ADMIN: Policy = Policy {
    scope: SCOPE_ADMIN,
    is_open: |path| !path.starts_with("/admin"),
};

/// The methods of each admin route, for a 405's `Allow`: the two operations are POST,
/// every other route GET (and HEAD). Kept beside the routes it describes.
fn allow(path: &str) -> &'static str {
    match path {
        "/admin/reload" | "/admin/cache/purge" => "POST",
        _ => "GET, HEAD",
    }
}

pub fn admin_endpoint(state: Arc<HttpState>) -> impl Endpoint<Output = Response> {
    let routes = problem::with_problems(
        Route::new()
            .at("/livez", get(livez))
            .at("/readyz", get(readyz))
            .at("/metrics", get(metrics))
            .at("/admin/dataset", get(dataset_info))
            .at("/admin/reload", post(reload_dataset))
            .at("/admin/cache/purge", post(purge_cache))
            .data(state.app.clone()),
        allow,
    );
    routes.around(move |routes, req| {
        let state = state.clone();
        async move {
            let head = Head::of(&req, &state.clients);
            let checked = host::check(head.version, head.headers)
                .map_err(|problem| Box::new(problem.into_response()))
                .and_then(|()| pipeline::authenticate(&state, &head, ADMIN));
            let mut resp = match checked {
                Ok(_) => routes.call(req).await?,
                Err(refusal) => *refusal,
            };
            pipeline::nosniff(&mut resp);
            Ok(resp)
        }
    })
}
