//! The answers every data operation may give besides its own: refusals of the
//! admission pipeline (401, 403, 429, 503 when shedding), the limits checked before
//! routing (413, 414, 431), the problems any lookup may end in (421 for another shard's key,
//! 503 while loading) and the catch-all 500. Documented once here and added to each
//! operation's responses by `Guarded`, instead of a copy of the same variants in every
//! response enum (poem-openapi's derive cannot share variants).
//!
//! `Guarded` also fixes what the derive gets wrong for a client generator: header names
//! in their registered spelling (the derive upper-cases them: `ETAG`), and the
//! rate-limit fields declared on every answer that may carry them. `Bodiless` declares
//! a HEAD operation's answers without content.

use poem::{IntoResponse, Response};
use poem_openapi::registry::{MetaHeader, MetaResponses, Registry};
use poem_openapi::types::Type;
use poem_openapi::ApiResponse;

use super::payload::ProblemJson;
use super::problem::Problem;

/// An operation's own answer `T`, or a problem any data route may give.
pub enum Guarded<T> {
    Route(T),
    Problem(Problem),
}

impl<T> From<Problem> for Guarded<T> {
    fn from(problem: Problem) -> Self {
        Self::Problem(problem)
    }
}

/// Documentation only: the pipeline and the lookups make these answers, as problems.
#[derive(ApiResponse)]
#[allow(dead_code)]
enum Shared {
    /// No valid bearer token (when the server runs with a JWT key).
    #[oai(status = 401)]
    Unauthorized(
        ProblemJson,
        /// `Bearer` and the reason (RFC 6750).
        #[oai(header = "WWW-Authenticate")]
        String,
    ),
    /// The token lacks the `kv:read` scope.
    #[oai(status = 403)]
    Forbidden(
        ProblemJson,
        /// `Bearer error="insufficient_scope"` and the scope needed (RFC 6750).
        #[oai(header = "WWW-Authenticate")]
        String,
    ),
    /// The request declares a body (`Content-Length`) over `--max-body-bytes`; checked
    /// before routing, whatever the method.
    #[oai(status = 413)]
    BodyTooLarge(ProblemJson),
    /// The request target is longer than `--max-uri-bytes`; checked before routing.
    #[oai(status = 414)]
    UriTooLong(ProblemJson),
    /// The key's (for a batch: a key's) first hex digit belongs to another shard
    /// (`--key-prefixes`).
    #[oai(status = 421)]
    Misdirected(ProblemJson),
    /// Over a rate limit: per client address (`--rate-limit`) or per token subject (`--subject-rate-limit`).
    #[oai(status = 429)]
    TooManyRequests(
        ProblemJson,
        /// Seconds until the next request is allowed.
        #[oai(header = "Retry-After")]
        u32,
    ),
    /// The request's header fields are too large; checked before routing.
    #[oai(status = 431)]
    HeadersTooLarge(ProblemJson),
    /// The server failed to answer (a bug: it is logged).
    #[oai(status = 500)]
    Internal(ProblemJson),
    /// The data file is still loading, the server is overloaded (`--max-in-flight`) or
    /// shutting down, or the answer took longer than `--request-timeout`.
    #[oai(status = 503)]
    Unavailable(
        ProblemJson,
        /// Seconds to wait before retrying.
        #[oai(header = "Retry-After")]
        u32,
    ),
}

/// The registered spelling of every header the API declares (RFC 9110, RFC 6750,
/// draft-ietf-httpapi-ratelimit-headers, RFC 9745, RFC 8288, RFC 9110 for Location).
const HEADER_NAMES: &[&str] = &[
    "ETag",
    "Cache-Control",
    "WWW-Authenticate",
    "Retry-After",
    "RateLimit",
    "RateLimit-Policy",
    "Deprecation",
    "Link",
    "Location",
];

/// `name` (upper-cased by the derive) in its registered spelling; a name not in
/// `HEADER_NAMES` in the usual capitalisation (`X-Foo-Bar`).
fn spelled(name: &str) -> String {
    if let Some(known) = HEADER_NAMES.iter().find(|k| k.eq_ignore_ascii_case(name)) {
        return (*known).to_owned();
    }
    name.split('-')
        .map(|word| {
            let lower = word.to_ascii_lowercase();
            let mut chars = lower.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// `RateLimit` and `RateLimit-Policy` (`http::ratelimit`): on every answer after the
/// per-address check while a rate limit is on, so always on a 429 and optional
/// elsewhere; never on what is refused before routing (414, 431). A 413 may carry
/// them (the batch's body, read after the rate limits) or not (a declared length,
/// refused before them): optional there as elsewhere.
fn rate_limit_headers(status: Option<u16>) -> Vec<MetaHeader> {
    if matches!(status, Some(414 | 431)) {
        return Vec::new();
    }
    let required = status == Some(429);
    let header = |name: &str, description: &str| MetaHeader {
        name: name.to_owned(),
        description: Some(description.to_owned()),
        required,
        deprecated: false,
        schema: String::schema_ref(),
    };
    vec![
        header(
            "RateLimit",
            "Where the client stands against each limit checked, closest to its limit \
             first: `\"peer\";r=<requests left>;t=<seconds until full again>`. Sent \
             only when a rate limit is configured.",
        ),
        header(
            "RateLimit-Policy",
            "The configured limits: `\"peer\";q=<burst>;w=<seconds>` (and `\"subject\"`). \
             Sent only when a rate limit is configured.",
        ),
    ]
}

impl<T: ApiResponse> ApiResponse for Guarded<T> {
    fn meta() -> MetaResponses {
        let mut meta = T::meta();
        // A status the operation describes itself (the batch's 413) keeps its own text.
        let shared: Vec<_> = Shared::meta()
            .responses
            .into_iter()
            .filter(|shared| meta.responses.iter().all(|own| own.status != shared.status))
            .collect();
        meta.responses.extend(shared);
        for response in &mut meta.responses {
            for header in &mut response.headers {
                header.name = spelled(&header.name);
            }
            response.headers.extend(rate_limit_headers(response.status));
        }
        meta
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
        Shared::register(registry);
    }
}

impl<T: IntoResponse> IntoResponse for Guarded<T> {
    fn into_response(self) -> Response {
        match self {
            Self::Route(answer) => answer.into_response(),
            Self::Problem(problem) => problem.into_response(),
        }
    }
}

/// A HEAD operation's answers: the statuses and headers of `T`, declared without
/// content, since a HEAD answer has none (RFC 9110 §9.3.2; a generated client would
/// otherwise parse the empty body). It answers exactly as `T` does.
pub struct Bodiless<T>(pub T);

impl<T: ApiResponse> ApiResponse for Bodiless<T> {
    fn meta() -> MetaResponses {
        let mut meta = T::meta();
        for response in &mut meta.responses {
            response.content.clear();
        }
        meta
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: IntoResponse> IntoResponse for Bodiless<T> {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::spelled;

    #[test]
    fn header_names_get_their_registered_spelling() {
        assert_eq!(spelled("ETAG"), "ETag");
        assert_eq!(spelled("RATELIMIT-POLICY"), "RateLimit-Policy");
        assert_eq!(spelled("WWW-AUTHENTICATE"), "WWW-Authenticate");
        assert_eq!(spelled("X-REQUEST-ID"), "X-Request-Id");
    }
}
