//! The `/v1` API: single-key lookups (JSON or raw value) and batch lookups.

use std::sync::Arc;

use bytes::Bytes;
use poem::http::header::IF_NONE_MATCH;
use poem::http::{HeaderMap, HeaderValue};
use poem_openapi::param::{Header, Path};
use poem_openapi::payload::Payload;
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};
use uuid::Uuid;

use super::auth::BearerAuth;
use super::batch::{self, BatchBody, BatchResult};
use super::encoding::{self, Accept};
use super::key::{render_key_value, KeyParam, EXAMPLE_KEY};
use super::payload::{HeaderText, ProblemJson, RawJson, TextValue};
use super::problem::Problem;
use super::responses::{Bodiless, Guarded};
use super::state::HttpState;
use crate::dataset::Dataset;

#[derive(Tags)]
pub enum ApiTags {
    /// Look up values by key.
    Keys,
    /// The old service's route, kept byte-compatible for old clients. Deprecated.
    Legacy,
}

/// A key in canonical form (lowercase, hyphenated) and its value.
#[derive(Object)]
#[oai(example)]
pub struct KeyValue {
    pub key: Uuid,
    pub value: String,
}

impl Example for KeyValue {
    fn example() -> Self {
        Self {
            key: Uuid::parse_str(EXAMPLE_KEY).unwrap_or_default(),
            value: "zsda pl focnygogk x cjuu cmwrolqrmu wgdwxr".to_owned(),
        }
    }
}

/// The answers of a single-key lookup; `T` is the body of a hit.
#[derive(ApiResponse)]
pub enum KeyResponse<T: Payload + poem::IntoResponse + Send> {
    /// The key exists. `ETag` changes whenever the data file does, and differs
    /// between instances whose load options (`--on-duplicate`, `--skip-invalid`) serve
    /// different values from one file. `Cache-Control` is `private` when the server
    /// requires a token, `public` otherwise.
    #[oai(status = 200)]
    Ok(
        T,
        /// The data file's entity tag (`"<hex>"`, `"<hex>-gz"` or `"<hex>-zst"` per
        /// content coding); send it back in `If-None-Match`.
        #[oai(header = "ETag")]
        HeaderText,
        /// `public` or `private` (with a JWT key), with a `max-age`.
        #[oai(header = "Cache-Control")]
        HeaderText,
    ),
    /// The client's copy is current (`If-None-Match` matched the `ETag`).
    #[oai(status = 304)]
    NotModified(
        /// The entity tag of the representation the client would get.
        #[oai(header = "ETag")]
        HeaderText,
        /// As on the 200.
        #[oai(header = "Cache-Control")]
        HeaderText,
    ),
    /// The key is not a UUID, or (with a JWT key) the `Authorization` header is sent
    /// more than once.
    #[oai(status = 400)]
    BadRequest(ProblemJson),
    /// No value for this key.
    #[oai(status = 404)]
    NotFound(ProblemJson),
}

/// The answers of a batch lookup.
#[derive(ApiResponse)]
pub enum BatchResponse {
    /// Values of the keys found, and the keys not found.
    #[oai(status = 200)]
    Ok(RawJson<BatchResult>),
    /// The body is not JSON, lacks `keys`, holds a non-UUID or too many keys; or (with a
    /// JWT key) the `Authorization` header is sent more than once.
    #[oai(status = 400)]
    BadRequest(ProblemJson),
    /// The whole body did not arrive within `--body-read-timeout`. Documentation only:
    /// the body extractor answers it.
    #[oai(status = 408)]
    #[allow(dead_code)]
    BodyTimeout(ProblemJson),
    /// The body is larger than the limit (1 MiB by default).
    #[oai(status = 413)]
    TooLarge(ProblemJson),
    /// The body is not declared `application/json` (no `Content-Type` included).
    #[oai(status = 415)]
    UnsupportedMediaType(ProblemJson),
}

pub struct KeysApi {
    state: Arc<HttpState>,
}

// The `If-None-Match` parameters document the header; the operations read every line
// of it from `headers` (`IfNoneMatch`), since the extractor sees only the first. These
// operations are the reference implementation: the fast path (`http::fast`) answers the
// hot routes by calling the same `key_answer` / `value_answer`, and
// `tests/it/differential.rs` holds the two byte-identical.
#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Keys")]
impl KeysApi {
    /// Look up one key
    ///
    /// Returns the key in canonical form and its value. Conditional requests with
    /// `If-None-Match` get `304 Not Modified` while the data file is unchanged.
    #[oai(path = "/keys/:key", method = "get", operation_id = "getKey")]
    async fn get_key(
        &self,
        /// The key to look up.
        key: Path<KeyParam>,
        _auth: BearerAuth,
        /// An `ETag` from an earlier answer; a match gives 304.
        #[oai(name = "If-None-Match")]
        _if_none_match: Header<Option<String>>,
        headers: &HeaderMap,
    ) -> Guarded<KeyResponse<RawJson<KeyValue>>> {
        key_answer(&self.state, &key.0 .0, headers)
    }

    /// Check one key
    ///
    /// The same status and headers as `GET`, without a body.
    #[oai(path = "/keys/:key", method = "head", operation_id = "headKey")]
    async fn head_key(
        &self,
        /// The key to look up.
        key: Path<KeyParam>,
        _auth: BearerAuth,
        /// An `ETag` from an earlier answer; a match gives 304.
        #[oai(name = "If-None-Match")]
        _if_none_match: Header<Option<String>>,
        headers: &HeaderMap,
    ) -> Bodiless<Guarded<KeyResponse<RawJson<KeyValue>>>> {
        Bodiless(self.get_key(key, _auth, _if_none_match, headers).await)
    }

    /// Get one raw value
    ///
    /// The value alone as `text/plain; charset=utf-8`, exactly as in the data file.
    #[oai(path = "/keys/:key/value", method = "get", operation_id = "getValue")]
    async fn get_value(
        &self,
        /// The key to look up.
        key: Path<KeyParam>,
        _auth: BearerAuth,
        /// An `ETag` from an earlier answer; a match gives 304.
        #[oai(name = "If-None-Match")]
        _if_none_match: Header<Option<String>>,
        headers: &HeaderMap,
    ) -> Guarded<KeyResponse<TextValue>> {
        value_answer(&self.state, &key.0 .0, headers)
    }

    /// Check one raw value
    ///
    /// The same status and headers as `GET`, without a body.
    #[oai(path = "/keys/:key/value", method = "head", operation_id = "headValue")]
    async fn head_value(
        &self,
        /// The key to look up.
        key: Path<KeyParam>,
        _auth: BearerAuth,
        /// An `ETag` from an earlier answer; a match gives 304.
        #[oai(name = "If-None-Match")]
        _if_none_match: Header<Option<String>>,
        headers: &HeaderMap,
    ) -> Bodiless<Guarded<KeyResponse<TextValue>>> {
        Bodiless(value_answer(&self.state, &key.0 .0, headers))
    }

    /// Look up many keys
    ///
    /// Keys may be in any UUID form; the answer shows them canonical, with duplicates
    /// folded. At most 1000 keys (`--max-batch`) and 1 MiB of body.
    #[oai(path = "/keys/batch", method = "post", operation_id = "batchGet")]
    async fn batch(&self, body: BatchBody, _auth: BearerAuth) -> Guarded<BatchResponse> {
        let keys = match batch::parse_keys(&body.0, self.state.settings.max_batch) {
            Ok(keys) => keys,
            Err(problem) => return Guarded::Route(BatchResponse::BadRequest(problem.into())),
        };
        let app = &self.state.app;
        let owned = app.key_prefixes;
        if let Some(foreign) = keys.iter().find(|key| !owned.owns(key.as_u128())) {
            app.metrics.lookups_misdirected.inc();
            return Problem::misdirected(*foreign, &owned.to_string()).into();
        }
        let guard = app.dataset.load();
        let Some(dataset) = guard.as_ref() else {
            return Problem::not_loaded().into();
        };
        Guarded::Route(BatchResponse::Ok(RawJson::new(batch::render(
            app, dataset, &keys,
        ))))
    }
}

impl KeysApi {
    pub fn new(state: Arc<HttpState>) -> Self {
        Self { state }
    }
}

/// Which body a single-key lookup renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `{"key","value"}`, cached in the LRU.
    Json,
    /// The raw value, a zero-copy slice of the dataset.
    Value,
}

/// The outcome of a single-key lookup, before it is dressed as a response: the one
/// implementation of the contract, answered both by the OpenAPI operations and by the
/// fast path (`http::fast`) that serves the same routes without the framework's layers.
pub enum Lookup {
    Hit { body: Bytes, etag: HeaderValue },
    NotModified { etag: HeaderValue },
    Failed(Problem),
}

/// The `If-None-Match` field lines of a request, read as the one comma-separated list
/// they make together (RFC 9110 §5.3: a client or proxy may send the list over several
/// lines), straight from the header map: no line is copied or joined.
#[derive(Debug, Clone, Copy, Default)]
pub struct IfNoneMatch<'a>(Option<&'a HeaderMap>);

impl<'a> IfNoneMatch<'a> {
    /// Every `If-None-Match` line of `headers`.
    pub fn of(headers: &'a HeaderMap) -> Self {
        Self(Some(headers))
    }

    /// No condition: the lookup never answers 304.
    pub const fn absent() -> Self {
        Self(None)
    }

    /// The request's `Accept-Encoding`: a 304 names the `ETag` of the coding the
    /// request would get (read only when a 304 is answered).
    fn accept(self) -> Accept {
        self.0.map(Accept::of).unwrap_or_default()
    }

    /// Whether any member of any line matches `etag` in any of its codings (a line
    /// that is not text cannot hold one of kvserve's ETags and matches nothing).
    fn matches(self, etag: &str) -> bool {
        self.0.is_some_and(|headers| {
            headers
                .get_all(IF_NONE_MATCH)
                .iter()
                .any(|line| line.to_str().is_ok_and(|line| etag_matches(line, etag)))
        })
    }
}

/// Parses `raw_key`, finds the value, and answers 304 when the client's copy is current.
pub fn lookup(
    state: &HttpState,
    raw_key: &str,
    if_none_match: IfNoneMatch<'_>,
    shape: Shape,
) -> Lookup {
    match super::key::parse_key(raw_key) {
        Ok(key) => lookup_key(state, key, if_none_match, shape),
        Err(err) => Lookup::Failed(Problem::invalid_key("key", &err)),
    }
}

/// `lookup` for a key already parsed.
pub fn lookup_key(
    state: &HttpState,
    key: Uuid,
    if_none_match: IfNoneMatch<'_>,
    shape: Shape,
) -> Lookup {
    let state_http = state;
    let state = &state.app;
    let owned = state.key_prefixes;
    if !owned.owns(key.as_u128()) {
        state.metrics.lookups_misdirected.inc();
        return Lookup::Failed(Problem::misdirected(key, &owned.to_string()));
    }
    let guard = state.dataset.load();
    let Some(dataset) = guard.as_ref() else {
        return Lookup::Failed(Problem::not_loaded());
    };
    let etag = &etag_header(dataset);
    // The 304 for a body of `len` bytes: the ETag of the coding its 200 would have.
    let not_modified = |len: usize| {
        if_none_match.matches(dataset.etag()).then(|| {
            let settings = state_http.settings.compression;
            let coding = if_none_match.accept().choose(settings, len);
            Lookup::NotModified {
                etag: encoding::coded_etag(etag, coding),
            }
        })
    };
    let key = key.as_u128();
    let generation = dataset.info().generation;
    // The cache first: a hit then skips the index probe, which on a big file costs two
    // cache misses of the CPU (index, then file bytes), and the rendering.
    if shape == Shape::Json {
        if let Some(body) = state.cache.get(key, generation) {
            state.metrics.lookups_found.inc();
            return not_modified(body.len()).unwrap_or_else(|| Lookup::Hit {
                body,
                etag: etag.clone(),
            });
        }
    }
    let Some(value) = state.find(dataset, key) else {
        return Lookup::Failed(Problem::key_not_found(Uuid::from_u128(key)));
    };
    // Rendered before the condition is checked: a 304's ETag depends on the length.
    let body = match shape {
        Shape::Json => {
            let body = render_key_value(Uuid::from_u128(key), &value);
            state.cache.insert(key, generation, body.clone());
            body
        }
        Shape::Value => value,
    };
    not_modified(body.len()).unwrap_or_else(|| Lookup::Hit {
        body,
        etag: etag.clone(),
    })
}

/// The answer of `GET`/`HEAD /v1/keys/{key}`, from the raw (percent-decoded) key
/// segment; the operation and the fast path both return it.
pub fn key_answer(
    state: &HttpState,
    raw_key: &str,
    headers: &HeaderMap,
) -> Guarded<KeyResponse<RawJson<KeyValue>>> {
    let found = lookup(state, raw_key, IfNoneMatch::of(headers), Shape::Json);
    KeyResponse::from_lookup(found, state, RawJson::new)
}

/// The answer of `GET /v1/keys/{key}/value`; the operation and the fast path both
/// return it.
pub fn value_answer(
    state: &HttpState,
    raw_key: &str,
    headers: &HeaderMap,
) -> Guarded<KeyResponse<TextValue>> {
    let found = lookup(state, raw_key, IfNoneMatch::of(headers), Shape::Value);
    KeyResponse::from_lookup(found, state, TextValue)
}

/// The dataset's `ETag` as a header value: the bytes are shared with the dataset, so
/// this checks about 20 bytes and allocates nothing.
fn etag_header(dataset: &Dataset) -> HeaderValue {
    // The ETag is hex in quotes: always a valid header value.
    HeaderValue::from_maybe_shared(dataset.etag_bytes().clone())
        .unwrap_or(HeaderValue::from_static("\"\""))
}

impl<T: Payload + poem::IntoResponse + Send> KeyResponse<T> {
    fn from_lookup(
        found: Lookup,
        state: &HttpState,
        payload: impl FnOnce(Bytes) -> T,
    ) -> Guarded<Self> {
        let cache_control = HeaderText(state.settings.cache_control_header.clone());
        Guarded::Route(match found {
            Lookup::Hit { body, etag } => {
                KeyResponse::Ok(payload(body), HeaderText(etag), cache_control)
            }
            Lookup::NotModified { etag } => {
                KeyResponse::NotModified(HeaderText(etag), cache_control)
            }
            Lookup::Failed(problem) => match problem.status {
                400 => KeyResponse::BadRequest(problem.into()),
                404 => KeyResponse::NotFound(problem.into()),
                _ => return problem.into(),
            },
        })
    }
}

/// `If-None-Match` uses the weak comparison (RFC 9110 §13.1.2): `W/` prefixes are
/// ignored, a list matches if any member does, and `*` matches any existing value. A
/// member matches the entity in any of its codings (`"<hex>-zst"`, `"<hex>-gz"`):
/// the client may hold whichever representation it was sent.
fn etag_matches(header: &str, etag: &str) -> bool {
    header.split(',').map(str::trim).any(|candidate| {
        candidate == "*"
            || encoding::entity_matches(candidate.strip_prefix("W/").unwrap_or(candidate), etag)
    })
}

#[cfg(test)]
mod tests {
    use super::etag_matches;

    #[test]
    fn if_none_match_forms() {
        let etag = "\"abc\"";
        assert!(etag_matches("\"abc\"", etag));
        assert!(etag_matches("W/\"abc\"", etag));
        assert!(etag_matches("\"x\", \"abc\"", etag));
        assert!(etag_matches("*", etag));
        assert!(etag_matches("\"abc-zst\"", etag));
        assert!(etag_matches("W/\"abc-gz\"", etag));
        assert!(!etag_matches("\"abc-br\"", etag));
        assert!(!etag_matches("\"abcd\"", etag));
        assert!(!etag_matches("abc", etag));
        assert!(!etag_matches("", etag));
    }
}
