//! `GET /get_value/{key}`: the old FastAPI service's route, kept byte-compatible.
//!
//! The old service validated the key with pydantic, whose UUID check is the Rust
//! `uuid` crate (1.23.0 in the pydantic-core the old service ran); this route parses
//! with that same version, so it accepts the same keys and renders the same 422 texts.

use std::sync::Arc;

use poem_openapi::param::Path;
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::api::{lookup_key, IfNoneMatch, Lookup, Shape};
use super::api::{ApiTags, KeyValue};
use super::auth::BearerAuth;
use super::key::KeyParam;
use super::payload::{ProblemJson, RawJson};
use super::problem::Problem;
use super::responses::{Bodiless, Guarded};
use super::state::HttpState;

/// FastAPI's 404 body.
#[derive(Object)]
#[oai(example)]
pub struct LegacyNotFound {
    /// Always `Key not found`.
    pub detail: String,
}

impl Example for LegacyNotFound {
    fn example() -> Self {
        Self {
            detail: "Key not found".to_owned(),
        }
    }
}

/// FastAPI's 422 body: one pydantic error.
#[derive(Object)]
pub struct LegacyValidationError {
    pub detail: Vec<LegacyErrorItem>,
}

/// One pydantic validation error, in pydantic's field order.
#[derive(Object, serde::Serialize)]
pub struct LegacyErrorItem {
    /// Always `uuid_parsing`.
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub kind: String,
    /// Always `["path", "key"]`.
    pub loc: Vec<String>,
    /// `Input should be a valid UUID, ` followed by the parser's reason.
    pub msg: String,
    /// The key as sent.
    pub input: String,
    pub ctx: LegacyErrorContext,
}

#[derive(Object, serde::Serialize)]
pub struct LegacyErrorContext {
    /// The parser's reason.
    pub error: String,
}

/// The old service's answers, plus `Deprecation` and a `Link` to the `/v1` successor.
#[derive(ApiResponse)]
pub enum LegacyResponse {
    /// `{"key": ..., "value": ...}`, as the old service wrote it.
    #[oai(status = 200)]
    Ok(
        RawJson<KeyValue>,
        #[oai(header = "Deprecation")] String,
        #[oai(header = "Link")] String,
    ),
    /// `{"detail":"Key not found"}`.
    #[oai(status = 404)]
    NotFound(
        RawJson<LegacyNotFound>,
        #[oai(header = "Deprecation")] String,
        #[oai(header = "Link")] String,
    ),
    /// The key is not a UUID: FastAPI's validation error.
    #[oai(status = 422)]
    Unprocessable(
        RawJson<LegacyValidationError>,
        #[oai(header = "Deprecation")] String,
    ),
    /// The `Authorization` header is sent more than once (when the server runs with a
    /// JWT key).
    #[oai(status = 400)]
    BadRequest(ProblemJson),
}

pub struct LegacyApi {
    state: Arc<HttpState>,
}

impl LegacyApi {
    pub fn new(state: Arc<HttpState>) -> Self {
        Self { state }
    }
}

#[OpenApi(tag = "ApiTags::Legacy")]
impl LegacyApi {
    /// Look up one key (deprecated)
    ///
    /// The old service's route and exact answers. Use `GET /v1/keys/{key}` instead.
    #[oai(
        path = "/get_value/:key",
        method = "get",
        operation_id = "legacyGetValue",
        deprecated = true
    )]
    async fn get_value(
        &self,
        /// The key to look up.
        key: Path<KeyParam>,
        _auth: BearerAuth,
    ) -> Guarded<LegacyResponse> {
        answer(&self.state, &key.0 .0)
    }

    /// The legacy route's status and headers, without a body.
    #[oai(
        path = "/get_value/:key",
        method = "head",
        operation_id = "legacyHeadValue",
        deprecated = true
    )]
    async fn head_value(
        &self,
        /// The key to look up.
        key: Path<KeyParam>,
        _auth: BearerAuth,
    ) -> Bodiless<Guarded<LegacyResponse>> {
        Bodiless(answer(&self.state, &key.0 .0))
    }
}

/// The old service's answer for `raw_key`; the operation above and the fast path
/// (`http::fast`) both return it.
pub fn answer(state: &HttpState, raw_key: &str) -> Guarded<LegacyResponse> {
    let key = match uuid::Uuid::parse_str(raw_key) {
        Ok(key) => key,
        Err(err) => {
            let body = validation_error(raw_key, &err);
            return Guarded::Route(LegacyResponse::Unprocessable(
                RawJson::new(body),
                deprecation(),
            ));
        }
    };
    let link = format!("</v1/keys/{}>; rel=\"successor-version\"", key.hyphenated());
    Guarded::Route(
        match lookup_key(state, key, IfNoneMatch::absent(), Shape::Json) {
            Lookup::Hit { body, .. } => LegacyResponse::Ok(RawJson::new(body), deprecation(), link),
            Lookup::Failed(problem) if problem.status == 404 => {
                LegacyResponse::NotFound(RawJson::new(NOT_FOUND_BODY), deprecation(), link)
            }
            Lookup::Failed(problem) => return problem.into(),
            // No If-None-Match is passed, so there is no 304.
            Lookup::NotModified { .. } => return Problem::not_loaded().into(),
        },
    )
}

fn deprecation() -> String {
    "true".to_owned()
}

pub const NOT_FOUND_BODY: &[u8] = br#"{"detail":"Key not found"}"#;

#[derive(serde::Serialize)]
struct ValidationBody<'a> {
    detail: [&'a LegacyErrorItem; 1],
}

/// The 422 body FastAPI wrote for a path parameter pydantic could not parse as a UUID.
fn validation_error(input: &str, err: &uuid::Error) -> Vec<u8> {
    let reason = err.to_string();
    let item = LegacyErrorItem {
        kind: "uuid_parsing".to_owned(),
        loc: vec!["path".to_owned(), "key".to_owned()],
        msg: format!("Input should be a valid UUID, {reason}"),
        input: input.to_owned(),
        ctx: LegacyErrorContext { error: reason },
    };
    serde_json::to_vec(&ValidationBody { detail: [&item] }).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_error_matches_fastapi() {
        let err = uuid::Uuid::parse_str("abc").unwrap_err();
        let body = String::from_utf8(validation_error("abc", &err)).unwrap();
        assert_eq!(
            body,
            r#"{"detail":[{"type":"uuid_parsing","loc":["path","key"],"msg":"Input should be a valid UUID, invalid length: expected length 32 for simple format, found 3","input":"abc","ctx":{"error":"invalid length: expected length 32 for simple format, found 3"}}]}"#
        );
    }
}
