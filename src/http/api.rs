//! The `/v1` API: single-key lookups (JSON or raw value) and batch lookups.

use std::sync::Arc;

use bytes::Bytes;
use poem::http::header::{HeaderName, IF_MATCH, IF_NONE_MATCH};
use poem::http::{HeaderMap, HeaderValue};
use poem_openapi::param::{Header, Path};
use poem_openapi::payload::Payload;
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};
use uuid::Uuid;

use super::auth::BearerAuth;
use super::batch::{self, BatchBody, BatchResult};
use super::budget::AnswerRefusal;
use super::encoding::{self, Accept};
use super::key::{render_key_value, KeyParam, EXAMPLE_KEY};
use super::payload::{HeaderText, ProblemJson, RawJson, TextValue};
use super::problem::{Problem, ProblemKind};
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
    /// `If-Match` is sent and names no current entity tag of the key (RFC 9110
    /// §13.1.1, strong comparison: a `W/` tag never matches; `*` matches any key that
    /// exists). Evaluated before `If-None-Match`; a key that does not exist is a 404
    /// whatever the conditions.
    #[oai(status = 412)]
    PreconditionFailed(ProblemJson),
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
    /// The body is over 1 MiB (`--max-body-bytes`), or the answer over `--max-answer-bytes`.
    #[oai(status = 413)]
    TooLarge(ProblemJson),
    /// The body is not declared `application/json` (no `Content-Type` included).
    #[oai(status = 415)]
    UnsupportedMediaType(ProblemJson),
}

pub struct KeysApi {
    state: Arc<HttpState>,
}

// The `If-Match` and `If-None-Match` parameters document the headers; the operations
// read every line of them from `headers` (`Preconditions`), since the extractor sees only the first. These
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
        /// `ETag`s (or `*`); when none is current the answer is 412.
        #[oai(name = "If-Match")]
        _if_match: Header<Option<String>>,
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
        /// `ETag`s (or `*`); when none is current the answer is 412.
        #[oai(name = "If-Match")]
        _if_match: Header<Option<String>>,
        headers: &HeaderMap,
    ) -> Bodiless<Guarded<KeyResponse<RawJson<KeyValue>>>> {
        Bodiless(key_answer(&self.state, &key.0 .0, headers))
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
        /// `ETag`s (or `*`); when none is current the answer is 412.
        #[oai(name = "If-Match")]
        _if_match: Header<Option<String>>,
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
        /// `ETag`s (or `*`); when none is current the answer is 412.
        #[oai(name = "If-Match")]
        _if_match: Header<Option<String>>,
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
        let max_answer = self.state.settings.max_answer_bytes;
        match batch::render(app, dataset, &keys, max_answer) {
            Ok(answer) => Guarded::Route(BatchResponse::Ok(RawJson::new(answer))),
            Err(problem) => {
                self.state.budget.count(AnswerRefusal::TooLarge);
                Guarded::Route(BatchResponse::TooLarge(problem.into()))
            }
        }
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

/// The conditional header fields of a request (RFC 9110 §13.1): `If-Match` and
/// `If-None-Match`, each read over all its field lines as the one comma-separated
/// list they make together (§5.3: a client or proxy may send the list over several
/// lines), straight from the header map: no line is copied or joined.
#[derive(Debug, Clone, Copy, Default)]
pub struct Preconditions<'a> {
    headers: Option<&'a HeaderMap>,
    /// Whether the answer carries an `ETag` a member can name; without one (the
    /// legacy route) only `*` can match.
    tagged: bool,
}

impl<'a> Preconditions<'a> {
    /// Every `If-Match` and `If-None-Match` line of `headers`, for an answer with an
    /// `ETag`.
    pub fn of(headers: &'a HeaderMap) -> Self {
        Self {
            headers: Some(headers),
            tagged: true,
        }
    }

    /// As `of`, for an answer without an `ETag`: only `*` matches.
    pub fn untagged(headers: &'a HeaderMap) -> Self {
        Self {
            headers: Some(headers),
            tagged: false,
        }
    }

    /// No condition: the lookup never answers 304 or 412.
    pub const fn absent() -> Self {
        Self {
            headers: None,
            tagged: false,
        }
    }

    /// The request's `Accept-Encoding`: a 304 names the `ETag` of the coding the
    /// request would get (read only when a 304 is answered).
    fn accept(self) -> Accept {
        self.headers.map(Accept::of).unwrap_or_default()
    }

    /// Whether any member of any `name` line matches the current `etag`: `*` always
    /// (the key exists when this is asked), a tag when the answer has tags and
    /// `matches(member, etag)` says so. A line that is not text cannot hold one of
    /// kvserve's ETags and matches nothing.
    fn any(self, name: HeaderName, etag: &str, matches: fn(&str, &str) -> bool) -> bool {
        self.headers.is_some_and(|headers| {
            headers.get_all(name).iter().any(|line| {
                line.to_str().is_ok_and(|line| {
                    line.split(',')
                        .map(str::trim)
                        .any(|member| member == "*" || (self.tagged && matches(member, etag)))
                })
            })
        })
    }

    /// `If-Match` is sent and no member matches (§13.1.1): the answer is 412.
    fn if_match_fails(self, etag: &str) -> bool {
        let sent = self
            .headers
            .is_some_and(|headers| headers.contains_key(IF_MATCH));
        sent && !self.any(IF_MATCH, etag, strong_match)
    }

    /// A member of `If-None-Match` matches (§13.1.2): the answer is 304.
    fn if_none_match_matches(self, etag: &str) -> bool {
        self.any(IF_NONE_MATCH, etag, weak_match)
    }
}

/// Parses `raw_key`, finds the value, and evaluates the preconditions: 412 when
/// `If-Match` names no current tag, else 304 when the client's copy is current.
pub fn lookup(
    state: &HttpState,
    raw_key: &str,
    conditions: Preconditions<'_>,
    shape: Shape,
) -> Lookup {
    match super::key::parse_key(raw_key) {
        Ok(key) => lookup_key(state, key, conditions, shape),
        Err(err) => Lookup::Failed(Problem::invalid_key("key", &err)),
    }
}

/// `lookup` for a key already parsed.
pub fn lookup_key(
    state: &HttpState,
    key: Uuid,
    conditions: Preconditions<'_>,
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
    // RFC 9110 §13.2.2, for a key that exists (every refusal above, and a missing
    // key, is answered as if no condition were sent: §13.2.1): `If-Match` first, a
    // 412 when it fails; then `If-None-Match`, a 304 for a body of `len` bytes with
    // the ETag of the coding its 200 would have.
    let not_modified = |len: usize| {
        if conditions.if_match_fails(dataset.etag()) {
            return Some(Lookup::Failed(Problem::new(
                ProblemKind::PreconditionFailed,
                "`If-Match` names no current entity tag of this key: the data changed \
                 since the copy it names",
            )));
        }
        conditions.if_none_match_matches(dataset.etag()).then(|| {
            let settings = state_http.settings.compression;
            let coding = conditions.accept().choose(settings, len);
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
    let found = lookup(state, raw_key, Preconditions::of(headers), Shape::Json);
    KeyResponse::from_lookup(found, state, RawJson::new)
}

/// The answer of `GET /v1/keys/{key}/value`; the operation and the fast path both
/// return it.
pub fn value_answer(
    state: &HttpState,
    raw_key: &str,
    headers: &HeaderMap,
) -> Guarded<KeyResponse<TextValue>> {
    let found = lookup(state, raw_key, Preconditions::of(headers), Shape::Value);
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
                412 => KeyResponse::PreconditionFailed(problem.into()),
                _ => return problem.into(),
            },
        })
    }
}

/// `If-None-Match` uses the weak comparison (RFC 9110 §13.1.2): a `W/` prefix is
/// ignored. A member matches the entity in any of its codings (`"<hex>-zst"`,
/// `"<hex>-gz"`): the client may hold whichever representation it was sent.
fn weak_match(member: &str, etag: &str) -> bool {
    encoding::entity_matches(member.strip_prefix("W/").unwrap_or(member), etag)
}

/// `If-Match` uses the strong comparison (§13.1.1): a weak tag never matches; a
/// strong one names the entity in any of its codings, as for `If-None-Match`.
fn strong_match(member: &str, etag: &str) -> bool {
    !member.starts_with("W/") && encoding::entity_matches(member, etag)
}

#[cfg(test)]
mod tests {
    use super::{strong_match, weak_match, Preconditions};
    use poem::http::{HeaderMap, HeaderValue};

    /// One `If-None-Match` line against the current tag.
    fn etag_matches(line: &str, etag: &str) -> bool {
        let mut headers = HeaderMap::new();
        headers.insert("if-none-match", HeaderValue::from_str(line).unwrap());
        Preconditions::of(&headers).if_none_match_matches(etag)
    }

    #[test]
    fn if_match_is_strong() {
        let etag = "\"abc\"";
        assert!(strong_match("\"abc\"", etag));
        assert!(strong_match("\"abc-gz\"", etag));
        assert!(!strong_match("W/\"abc\"", etag));
        assert!(weak_match("W/\"abc\"", etag));
    }

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
