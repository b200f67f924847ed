//! The answers every data operation may give besides its own: refusals of the
//! admission pipeline (401, 403, 429, 503 when shedding) and the problems any lookup
//! may end in (421 for another shard's key, 503 while loading). Documented once here
//! and added to each operation's responses by `Guarded`, instead of a copy of the same
//! variants in every response enum (poem-openapi's derive cannot share variants).

use poem::{IntoResponse, Response};
use poem_openapi::registry::{MetaResponses, Registry};
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
    Unauthorized(ProblemJson, #[oai(header = "WWW-Authenticate")] String),
    /// The token lacks the `kv:read` scope.
    #[oai(status = 403)]
    Forbidden(ProblemJson, #[oai(header = "WWW-Authenticate")] String),
    /// The key's (for a batch: a key's) first hex digit belongs to another shard
    /// (`--key-prefixes`).
    #[oai(status = 421)]
    Misdirected(ProblemJson),
    /// Over a rate limit: per client address (`--rate-limit`) or per token subject (`--subject-rate-limit`).
    #[oai(status = 429)]
    TooManyRequests(ProblemJson, #[oai(header = "Retry-After")] u32),
    /// The data file is still loading, or the server is overloaded.
    #[oai(status = 503)]
    Unavailable(ProblemJson, #[oai(header = "Retry-After")] u32),
}

impl<T: ApiResponse> ApiResponse for Guarded<T> {
    fn meta() -> MetaResponses {
        let mut meta = T::meta();
        meta.responses.extend(Shared::meta().responses);
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
