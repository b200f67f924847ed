//! RFC 9457 problem details: the one shape of every error on `/v1`, the admin
//! listener and unknown routes.
//!
//! Handlers return a `Problem`; errors raised inside poem or poem-openapi (unknown
//! route, wrong method, unreadable body) are turned into one by `into_problem_response`,
//! so no framework message or Rust type name reaches a client.

use std::borrow::Cow;

use poem::error::{MethodNotAllowedError, NotFoundError, ReadBodyError, ResponseError};
use poem::http::{header, HeaderValue, StatusCode};
use poem::{Endpoint, EndpointExt, IntoResponse, Response};
use poem_openapi::error::{
    ContentTypeError, ParseParamError, ParsePathError, ParseRequestPayloadError,
};
use poem_openapi::Object;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// The kinds of error a client can see. Each has a stable `type` URI, which clients
/// may match on; the `detail` text is for people and may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    InvalidKey,
    InvalidPath,
    KeyNotFound,
    InvalidBody,
    TooManyKeys,
    BodyTooLarge,
    AnswerTooLarge,
    UnsupportedMediaType,
    InvalidHeader,
    NotLoaded,
    ShuttingDown,
    RouteNotFound,
    MethodNotAllowed,
    PreconditionFailed,
    ReloadInProgress,
    InvalidReloadPath,
    ReloadFailed,
    Unauthorized,
    Forbidden,
    RateLimited,
    Overloaded,
    Timeout,
    UriTooLong,
    MalformedRequest,
    HeadersTooLarge,
    BodyTimeout,
    ClientClosed,
    Misdirected,
    Internal,
}

impl ProblemKind {
    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidKey
            | Self::InvalidPath
            | Self::InvalidReloadPath
            | Self::InvalidBody
            | Self::TooManyKeys
            | Self::InvalidHeader => StatusCode::BAD_REQUEST,
            Self::KeyNotFound | Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::BodyTooLarge | Self::AnswerTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotLoaded | Self::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Self::ReloadInProgress => StatusCode::CONFLICT,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::Overloaded | Self::Timeout => StatusCode::SERVICE_UNAVAILABLE,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::MalformedRequest => StatusCode::BAD_REQUEST,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            // nginx's "client closed request": never sent, only counted and logged.
            Self::ClientClosed => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Self::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Self::ReloadFailed => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Self::InvalidKey => "invalid-key",
            Self::InvalidPath => "invalid-path",
            Self::KeyNotFound => "key-not-found",
            Self::InvalidBody => "invalid-body",
            Self::TooManyKeys => "too-many-keys",
            Self::BodyTooLarge => "body-too-large",
            Self::AnswerTooLarge => "answer-too-large",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::InvalidHeader => "invalid-header",
            Self::NotLoaded => "not-loaded",
            Self::ShuttingDown => "shutting-down",
            Self::RouteNotFound => "route-not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::PreconditionFailed => "precondition-failed",
            Self::ReloadInProgress => "reload-in-progress",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate-limited",
            Self::Overloaded => "overloaded",
            Self::Timeout => "timeout",
            Self::UriTooLong => "uri-too-long",
            Self::MalformedRequest => "malformed-request",
            Self::HeadersTooLarge => "headers-too-large",
            Self::BodyTimeout => "body-timeout",
            Self::ClientClosed => "client-closed",
            Self::Misdirected => "misdirected",
            Self::InvalidReloadPath => "invalid-reload-path",
            Self::ReloadFailed => "reload-failed",
            Self::Internal => "internal",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::InvalidKey => "Invalid key",
            Self::InvalidPath => "Invalid path",
            Self::KeyNotFound => "Key not found",
            Self::InvalidBody => "Invalid request body",
            Self::TooManyKeys => "Too many keys",
            Self::BodyTooLarge => "Request body too large",
            Self::AnswerTooLarge => "Answer too large",
            Self::UnsupportedMediaType => "Unsupported media type",
            Self::InvalidHeader => "Invalid header",
            Self::NotLoaded => "Dataset not loaded yet",
            Self::ShuttingDown => "Shutting down",
            Self::RouteNotFound => "No such route",
            Self::MethodNotAllowed => "Method not allowed",
            Self::PreconditionFailed => "Precondition failed",
            Self::ReloadInProgress => "A reload is already running",
            Self::Unauthorized => "Authentication required",
            Self::Forbidden => "Not allowed",
            Self::RateLimited => "Too many requests",
            Self::Overloaded => "Overloaded",
            Self::Timeout => "Request took too long",
            Self::UriTooLong => "Request target too long",
            Self::MalformedRequest => "Malformed request",
            Self::HeadersTooLarge => "Request header fields too large",
            Self::BodyTimeout => "Request body too slow",
            Self::ClientClosed => "Client closed the connection",
            Self::Misdirected => "Key served by another shard",
            Self::InvalidReloadPath => "Reload path not allowed",
            Self::ReloadFailed => "Reload failed; the previous dataset is still served",
            Self::Internal => "Internal error",
        }
    }
}

/// How long a client should wait before retrying while the dataset loads.
pub const NOT_LOADED_RETRY_AFTER_SECS: u32 = 1;

/// An RFC 9457 problem details object.
#[derive(Debug, Clone, Object, serde::Serialize)]
#[oai(rename = "Problem")]
pub struct Problem {
    /// A stable URI naming the kind of error: `urn:kvserve:problem:<kind>`.
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub kind_uri: String,
    /// A short summary of the kind of error; the same for every error of a kind.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request, naming the parameter or field at fault.
    pub detail: String,
}

impl Problem {
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self {
            kind_uri: format!("urn:kvserve:problem:{}", kind.slug()),
            title: kind.title().to_owned(),
            status: kind.status().as_u16(),
            detail: detail.into(),
        }
    }

    pub fn invalid_key(param: &str, err: &uuid::Error) -> Self {
        Self::new(
            ProblemKind::InvalidKey,
            format!("path parameter `{param}` is not a UUID: {err}"),
        )
    }

    pub fn key_not_found(key: uuid::Uuid) -> Self {
        Self::new(ProblemKind::KeyNotFound, format!("no value for key {key}"))
    }

    pub fn misdirected(key: uuid::Uuid, owned: &str) -> Self {
        Self::new(
            ProblemKind::Misdirected,
            format!(
                "key {key} is not served here: this instance serves keys starting with {owned}"
            ),
        )
    }

    /// A path whose percent-encoded bytes are not UTF-8 (poem's router and the fast
    /// path both refuse it).
    pub fn invalid_path(path: &str) -> Self {
        Self::new(
            ProblemKind::InvalidPath,
            format!("the path {path} is not valid UTF-8 once percent-decoded"),
        )
    }

    pub fn not_loaded() -> Self {
        Self::new(
            ProblemKind::NotLoaded,
            "the data file is still loading; retry shortly",
        )
    }

    pub fn to_body(&self) -> Vec<u8> {
        // Serializing four plain fields cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, CONTENT_TYPE)
            .body(self.to_body());
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(NOT_LOADED_RETRY_AFTER_SECS),
            );
        }
        resp
    }
}

/// Lets extractors fail with a problem: poem carries it as an error and
/// `into_problem_response` renders it unchanged.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.detail)]
pub struct ProblemError(pub Problem);

impl ResponseError for ProblemError {
    fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn as_response(&self) -> Response {
        self.0.clone().into_response()
    }
}

/// Turns any error poem or poem-openapi raised into a problem response, with a detail
/// written for clients rather than the framework's own message. `allow` gives a 405's
/// `Allow` header: the methods the listener answers on a path.
pub fn into_problem_response(
    err: poem::Error,
    method: &str,
    path: &str,
    allow: fn(&str) -> &'static str,
) -> Response {
    if let Some(ProblemError(problem)) = err.downcast_ref::<ProblemError>() {
        return problem.clone().into_response();
    }
    let problem = if err.is::<NotFoundError>() {
        Problem::new(
            ProblemKind::RouteNotFound,
            format!("no route matches {path}"),
        )
    } else if err.is::<poem::error::ParsePathError>() {
        Problem::invalid_path(path)
    } else if err.is::<MethodNotAllowedError>() {
        Problem::new(
            ProblemKind::MethodNotAllowed,
            format!("{method} is not allowed on {path}"),
        )
    } else if let Some(e) = err.downcast_ref::<ParseParamError>() {
        Problem::new(
            ProblemKind::InvalidHeader,
            format!("parameter `{}` is invalid: {}", e.name, sanitize(&e.reason)),
        )
    } else if let Some(e) = err.downcast_ref::<ParsePathError>() {
        Problem::new(
            ProblemKind::InvalidKey,
            format!(
                "path parameter `{}` is invalid: {}",
                e.name,
                sanitize(&e.reason)
            ),
        )
    } else if let Some(e) = err.downcast_ref::<ContentTypeError>() {
        let detail = match e {
            ContentTypeError::NotSupported { content_type } => {
                format!("Content-Type `{content_type}` is not supported; send application/json")
            }
            ContentTypeError::ExpectContentType => {
                "the Content-Type header is missing; send application/json".to_owned()
            }
        };
        Problem::new(ProblemKind::UnsupportedMediaType, detail)
    } else if let Some(e) = err.downcast_ref::<ParseRequestPayloadError>() {
        Problem::new(ProblemKind::InvalidBody, sanitize(&e.reason))
    } else if let Some(ReadBodyError::PayloadTooLarge) = err.downcast_ref::<ReadBodyError>() {
        Problem::new(ProblemKind::BodyTooLarge, "the request body is too large")
    } else if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Problem::new(ProblemKind::BodyTooLarge, "the request body is too large")
    } else if err.status().is_client_error() {
        Problem::new(
            ProblemKind::InvalidBody,
            format!("the request was refused: {}", err.status()),
        )
    } else {
        tracing::error!(error = %err, %method, %path, "request failed");
        Problem::new(
            ProblemKind::Internal,
            "the server failed to answer this request",
        )
    };
    let mut resp = problem.into_response();
    if err.is::<MethodNotAllowedError>() {
        // RFC 9110 §15.5.6: a 405 lists the methods the path has.
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow(path)));
    }
    resp
}

/// Framework messages sometimes quote internal type names in double quotes
/// (`failed to parse "string_uuid"`); keep the message but drop those names.
fn sanitize(reason: &str) -> Cow<'_, str> {
    if reason.contains("failed to parse \"") {
        Cow::Owned(
            reason
                .split(": ")
                .filter(|part| !part.starts_with("failed to parse \""))
                .collect::<Vec<_>>()
                .join(": "),
        )
    } else {
        Cow::Borrowed(reason)
    }
}

/// Wraps a listener's endpoint so that every error leaves it as problem+json; `allow`
/// names the methods of each of its paths (for 405's `Allow`).
pub fn with_problems(
    ep: impl Endpoint + 'static,
    allow: fn(&str) -> &'static str,
) -> impl Endpoint<Output = Response> {
    ep.around(move |ep, req| async move {
        let method = req.method().clone();
        let uri = req.uri().clone();
        Ok(match ep.call(req).await {
            Ok(resp) => resp.into_response(),
            Err(err) => {
                // Keep the matched route for the metrics and access log outside.
                let pattern = err.data::<poem::PathPattern>().cloned();
                let mut resp = into_problem_response(err, method.as_str(), uri.path(), allow);
                if let Some(pattern) = pattern {
                    resp.set_data(pattern);
                }
                resp
            }
        })
    })
}
