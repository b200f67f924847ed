//! `GET /get_value/{key}`: the old FastAPI service's route, kept byte-compatible.
//!
//! The old service validated the key with pydantic, whose UUID check is the Rust
//! `uuid` crate (1.23.0 in the pydantic-core the old service ran); this route parses
//! with that same version, so it accepts the same spellings and renders the same 422
//! texts. The old parameter was pydantic's `UUID4` (issue 16: the real service answered
//! other versions with `uuid_version` 422s), so a key that parses is then held to
//! pydantic-core's version check (`version4`): keys of other versions in the data file
//! are unreachable here, as they were there, and found on `/v1`.
//!
//! Its paths are matched as Starlette matched them, not as poem does (`target`): on the
//! percent-decoded path, bytes that are not UTF-8 read as U+FFFD, `%2F` a separator; a
//! path that matches only without its trailing slashes is redirected (307), and any
//! other path under `/get_value` is FastAPI's `{"detail":"Not Found"}`. The operation
//! answers the paths poem routes to it with the same key; `before_router` answers the
//! rest on the framework path, `http::fast` all of them on the fast path.

use std::sync::Arc;

use poem::http::{header, HeaderMap, Method, Uri};
use poem::{Endpoint, EndpointExt, IntoResponse, Response};
use poem_openapi::param::{Header, Path};
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::api::{lookup_key, Lookup, Preconditions, Shape};
use super::api::{ApiTags, KeyValue};
use super::auth::BearerAuth;
use super::host::ipv6_literal;
use super::key::{KeyParam, Version4};
use super::payload::{ProblemJson, RawJson};
use super::responses::{Bodiless, Guarded};
pub use super::routes::{target, Target};
use super::state::HttpState;

/// FastAPI's 404 body.
#[derive(Object)]
#[oai(example)]
pub struct LegacyNotFound {
    /// `Key not found` for a key that has no value, `Not Found` for a path under
    /// `/get_value` that is no key.
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
    /// `uuid_parsing` when the key is no UUID, `uuid_version` when it is one of another
    /// version than 4 (or of version 4 but not of the RFC 9562 variant).
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub kind: String,
    /// Always `["path", "key"]`.
    pub loc: Vec<String>,
    /// `Input should be a valid UUID, ` followed by the parser's reason; `UUID version
    /// 4 expected` for `uuid_version`.
    pub msg: String,
    /// The key as sent, percent-decoded.
    pub input: String,
    pub ctx: LegacyErrorContext,
}

/// pydantic's context of the error: `error` for `uuid_parsing`, `expected_version`
/// for `uuid_version`.
#[derive(Object, serde::Serialize)]
pub struct LegacyErrorContext {
    /// The parser's reason (`uuid_parsing`).
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Always 4 (`uuid_version`).
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<u8>,
}

/// The old service's answers, plus `Deprecation` and a `Link` to the `/v1` successor.
#[derive(ApiResponse)]
pub enum LegacyResponse {
    /// `{"key": ..., "value": ...}`, as the old service wrote it.
    #[oai(status = 200)]
    Ok(
        RawJson<KeyValue>,
        /// RFC 9745: `@1795651200`, the date the route was deprecated (2026-11-26, the
        /// first release of `/v1`).
        #[oai(header = "Deprecation")]
        String,
        #[oai(header = "Link")] String,
    ),
    /// `{"detail":"Key not found"}`; `{"detail":"Not Found"}` (and no `Link`) for a
    /// path under `/get_value` that names no key (`/get_value/`, `/get_value/a%2Fb`).
    #[oai(status = 404)]
    NotFound(
        RawJson<LegacyNotFound>,
        /// RFC 9745: `@1795651200`, the date the route was deprecated (2026-11-26, the
        /// first release of `/v1`).
        #[oai(header = "Deprecation")]
        String,
        #[oai(header = "Link")] Option<String>,
    ),
    /// The key exists and `If-None-Match` is `*` (RFC 9110 §13.1.2; the route sends no
    /// `ETag`, so no other member can match).
    #[oai(status = 304)]
    NotModified(
        /// RFC 9745: `@1795651200`, the date the route was deprecated (2026-11-26, the
        /// first release of `/v1`).
        #[oai(header = "Deprecation")]
        String,
        #[oai(header = "Link")] String,
    ),
    /// `If-Match` is sent and the key exists, but it names an entity tag (the route
    /// sends none, so only `*` matches): RFC 9110 §13.1.1.
    #[oai(status = 412)]
    PreconditionFailed(ProblemJson),
    /// The path has trailing slashes (`/get_value/{key}/`): Starlette's redirect to the
    /// path without them, an absolute URL on the request's `Host`, the query kept.
    #[oai(status = 307)]
    Redirect(
        #[oai(header = "Location")] String,
        /// RFC 9745: `@1795651200`, the date the route was deprecated (2026-11-26, the
        /// first release of `/v1`).
        #[oai(header = "Deprecation")]
        String,
    ),
    /// The key is not a UUID (`uuid_parsing`), or not one of version 4
    /// (`uuid_version`): FastAPI's validation error.
    #[oai(status = 422)]
    Unprocessable(
        RawJson<LegacyValidationError>,
        /// RFC 9745: `@1795651200`, the date the route was deprecated (2026-11-26, the
        /// first release of `/v1`).
        #[oai(header = "Deprecation")]
        String,
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
    ///
    /// Like the old service's `UUID4` parameter, it takes only version-4 UUIDs (of the
    /// RFC 9562 variant); any other version is a 422 `uuid_version`, even for a key the
    /// data holds. `/v1` takes every version.
    #[oai(
        path = "/get_value/:key",
        method = "get",
        operation_id = "legacyGetValue",
        deprecated = true
    )]
    async fn get_value(
        &self,
        /// The key to look up.
        key: Path<KeyParam<Version4>>,
        _auth: BearerAuth,
        /// `*`: 304 when the key exists (the route sends no `ETag`, so no tag matches).
        #[oai(name = "If-None-Match")]
        _if_none_match: Header<Option<String>>,
        /// `*`, or the request is 412 when the key exists (no tag matches).
        #[oai(name = "If-Match")]
        _if_match: Header<Option<String>>,
        headers: &HeaderMap,
    ) -> Guarded<LegacyResponse> {
        answer(&self.state, &key.0 .0, headers)
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
        key: Path<KeyParam<Version4>>,
        _auth: BearerAuth,
        /// `*`: 304 when the key exists (the route sends no `ETag`, so no tag matches).
        #[oai(name = "If-None-Match")]
        _if_none_match: Header<Option<String>>,
        /// `*`, or the request is 412 when the key exists (no tag matches).
        #[oai(name = "If-Match")]
        _if_match: Header<Option<String>>,
        headers: &HeaderMap,
    ) -> Bodiless<Guarded<LegacyResponse>> {
        Bodiless(answer(&self.state, &key.0 .0, headers))
    }
}

/// The old service's answer to any `GET` of a path under `/get_value` (`None` for
/// other paths): the fast path's answer, and the framework path's for the paths
/// poem does not route to the operation as the same key.
/// `secure`: the request came over TLS (the redirect keeps the scheme, as Starlette's
/// did).
pub fn route(
    state: &HttpState,
    uri: &Uri,
    headers: &HeaderMap,
    secure: bool,
) -> Option<Guarded<LegacyResponse>> {
    Some(match target(uri.path())? {
        Target::Key(key) => answer(state, &key, headers),
        Target::Redirect(path) => Guarded::Route(LegacyResponse::Redirect(
            location(&path, uri, headers, secure),
            deprecation(),
        )),
        Target::NotFound => Guarded::Route(LegacyResponse::NotFound(
            RawJson::new(ROUTE_NOT_FOUND_BODY),
            deprecation(),
            None,
        )),
    })
}

/// On the framework path, ahead of poem's router: `GET`/`HEAD` of a legacy path the
/// operation would not get with the key Starlette saw (trailing slashes, no key,
/// `%2F` in it, escapes that are not UTF-8, which poem's router refuses) is answered
/// by `route`; everything else goes on to the router.
pub fn before_router<E: Endpoint + 'static>(
    ep: E,
    state: Arc<HttpState>,
) -> impl Endpoint<Output = Response> {
    ep.around(move |ep, req| {
        let state = state.clone();
        async move {
            let method = req.method();
            if (method == Method::GET || method == Method::HEAD) && !routed_as_is(req.uri().path())
            {
                let secure = req.scheme() == &poem::http::uri::Scheme::HTTPS;
                if let Some(answer) = route(&state, req.uri(), req.headers(), secure) {
                    return Ok(answer.into_response());
                }
            }
            ep.call(req).await.map(IntoResponse::into_response)
        }
    })
}

/// Whether poem routes `raw_path` to the operation with the key Starlette would have
/// passed: one segment after `/get_value/` that decodes to UTF-8 without a `/`.
fn routed_as_is(raw_path: &str) -> bool {
    raw_path
        .strip_prefix("/get_value/")
        .filter(|raw| !raw.is_empty() && !raw.contains('/'))
        .and_then(|raw| percent_encoding::percent_decode_str(raw).decode_utf8().ok())
        .is_some_and(|key| !key.contains('/'))
}

/// Starlette's redirect URL: `URL(scope=...)` (the decoded path with `?`, `#` and `\`
/// escaped, the authority of a valid `Host` header, the raw query) quoted by
/// `RedirectResponse`. Without a valid `Host` Starlette fell back to the address it
/// listened on; this answer gives the path alone. With an absolute-form target
/// (`GET http://host/get_value/…/`), the target's scheme and authority are the URL's,
/// whatever `Host` says (RFC 9112 §3.2.2, §3.3).
fn location(path: &str, uri: &Uri, headers: &HeaderMap, secure: bool) -> String {
    let path = path
        .replace('?', "%3F")
        .replace('#', "%23")
        .replace('\\', "%5C");
    let scheme = match uri.scheme_str() {
        Some(scheme @ ("http" | "https")) => scheme,
        _ if secure => "https",
        _ => "http",
    };
    let host = match uri.authority() {
        Some(authority) => Some(authority.as_str()),
        None => headers
            .get(header::HOST)
            .and_then(|host| host.to_str().ok()),
    }
    .filter(|host| valid_host(host));
    let mut url = match host {
        Some(host) => format!("{scheme}://{host}{path}"),
        None => match path.strip_prefix("//") {
            Some(rest) => format!("/%2F{rest}"),
            None => path,
        },
    };
    if let Some(query) = uri.query().filter(|q| !q.is_empty()) {
        url.push('?');
        url.push_str(query);
    }
    quote(&url)
}

/// `urllib.parse.quote(url, safe=":/%#?=@[]!$&'()*+,;")`.
fn quote(url: &str) -> String {
    const SAFE: &[u8] = b"_.-~:/%#?=@[]!$&'()*+,;";
    let mut out = String::with_capacity(url.len());
    for &byte in url.as_bytes() {
        if byte.is_ascii_alphanumeric() || SAFE.contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Starlette's `parse_host_header` accepting `host` and its port being valid: a
/// reg-name of unreserved, sub-delim and `%` characters, or a bracketed IPv6 literal
/// (or IPvFuture), then an optional port of at most 65535.
fn valid_host(host: &str) -> bool {
    let (name, port) = match host.rfind(':') {
        Some(colon) if !host[colon..].contains(']') => (&host[..colon], Some(&host[colon + 1..])),
        _ => (host, None),
    };
    let port_ok = port.is_none_or(|port| {
        let digits = port.trim_start_matches('0');
        !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && digits.len() <= 5
            && digits.parse::<u32>().unwrap_or(0) <= 65535
    });
    let name_ok = if let Some(literal) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        ipv6_literal(literal) || ipv_future(literal)
    } else {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._~%!$&'()*+,;=-".contains(&b))
    };
    port_ok && name_ok
}

fn ipv_future(literal: &str) -> bool {
    // `v[a-f0-9]+\.[a-z0-9._~!$&'()*+,;=:-]+`, the `v` lowercase.
    let Some((version, rest)) = literal.strip_prefix('v').and_then(|l| l.split_once('.')) else {
        return false;
    };
    !version.is_empty()
        && version.bytes().all(|b| b.is_ascii_hexdigit())
        && !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~!$&'()*+,;=:-".contains(&b))
}

/// The old service's answer for `raw_key`; the operation above and the fast path
/// (`http::fast`) both return it.
/// Its preconditions as RFC 9110 §13.2 has them (`*` is the only member that can match:
/// the route sends no `ETag`); the old service ignored them.
pub fn answer(state: &HttpState, raw_key: &str, headers: &HeaderMap) -> Guarded<LegacyResponse> {
    let key = match uuid::Uuid::parse_str(raw_key) {
        Ok(key) if version4(key) => key,
        Ok(_) => return unprocessable(version_error(raw_key)),
        Err(err) => return unprocessable(validation_error(raw_key, &err)),
    };
    let link = format!("</v1/keys/{}>; rel=\"successor-version\"", key.hyphenated());
    Guarded::Route(
        match lookup_key(state, key, Preconditions::untagged(headers), Shape::Json) {
            Lookup::Hit { body, .. } => LegacyResponse::Ok(RawJson::new(body), deprecation(), link),
            Lookup::NotModified { .. } => LegacyResponse::NotModified(deprecation(), link),
            Lookup::Failed(problem) if problem.status == 412 => {
                LegacyResponse::PreconditionFailed(problem.into())
            }
            Lookup::Failed(problem) if problem.status == 404 => {
                LegacyResponse::NotFound(RawJson::new(NOT_FOUND_BODY), deprecation(), Some(link))
            }
            Lookup::Failed(problem) => return problem.into(),
        },
    )
}

fn unprocessable(body: Vec<u8>) -> Guarded<LegacyResponse> {
    Guarded::Route(LegacyResponse::Unprocessable(
        RawJson::new(body),
        deprecation(),
    ))
}

/// pydantic-core's `UUID4` check on a parsed string (`UuidValidator`): the version
/// nibble is 4 and the variant RFC 9562's (`10xx`). Nil, max and version 4 of the NCS,
/// Microsoft or future variants fail it.
fn version4(key: uuid::Uuid) -> bool {
    key.get_version_num() == 4 && key.get_variant() == uuid::Variant::RFC4122
}

/// RFC 9745's `Deprecation` value: `@` and the epoch seconds of the moment the route
/// was deprecated, 2026-11-26 00:00 UTC, the day of the first release of `/v1`, its
/// successor.
pub const DEPRECATION: &str = "@1795651200";

fn deprecation() -> String {
    DEPRECATION.to_owned()
}

pub const NOT_FOUND_BODY: &[u8] = br#"{"detail":"Key not found"}"#;

/// Starlette's 404 for a path no route takes.
pub const ROUTE_NOT_FOUND_BODY: &[u8] = br#"{"detail":"Not Found"}"#;

#[derive(serde::Serialize)]
struct ValidationBody<'a> {
    detail: [&'a LegacyErrorItem; 1],
}

/// The 422 body FastAPI wrote for a path parameter pydantic could not parse as a UUID.
fn validation_error(input: &str, err: &uuid::Error) -> Vec<u8> {
    let reason = err.to_string();
    error_body(LegacyErrorItem {
        kind: "uuid_parsing".to_owned(),
        loc: vec!["path".to_owned(), "key".to_owned()],
        msg: format!("Input should be a valid UUID, {reason}"),
        input: input.to_owned(),
        ctx: LegacyErrorContext {
            error: Some(reason),
            expected_version: None,
        },
    })
}

/// The 422 body FastAPI wrote for a UUID that `UUID4` refused (`version4`).
fn version_error(input: &str) -> Vec<u8> {
    error_body(LegacyErrorItem {
        kind: "uuid_version".to_owned(),
        loc: vec!["path".to_owned(), "key".to_owned()],
        msg: "UUID version 4 expected".to_owned(),
        input: input.to_owned(),
        ctx: LegacyErrorContext {
            error: None,
            expected_version: Some(4),
        },
    })
}

fn error_body(item: LegacyErrorItem) -> Vec<u8> {
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

    #[test]
    fn version_error_matches_fastapi() {
        let body = String::from_utf8(version_error("{0-0-0-0-0}")).unwrap();
        assert_eq!(
            body,
            r#"{"detail":[{"type":"uuid_version","loc":["path","key"],"msg":"UUID version 4 expected","input":"{0-0-0-0-0}","ctx":{"expected_version":4}}]}"#
        );
    }

    #[test]
    fn only_version_4_of_the_rfc_variant_passes() {
        for variant in "0123456789abcdef".chars() {
            for version in "0123456789abcdef".chars() {
                let key = format!("6ba7b810-9dad-{version}1d1-{variant}0b4-00c04fd430c8");
                let key = uuid::Uuid::parse_str(&key).unwrap();
                let want = version == '4' && "89ab".contains(variant);
                assert_eq!(version4(key), want, "{key}");
            }
        }
        assert!(!version4(uuid::Uuid::nil()));
        assert!(!version4(uuid::Uuid::max()));
    }

    #[test]
    fn paths_are_matched_as_starlette_matched_them() {
        use std::borrow::Cow::Borrowed;
        assert_eq!(target("/get_value/abc"), Some(Target::Key(Borrowed("abc"))));
        assert_eq!(
            target("/get_value/a%E8").map(|t| matches!(t, Target::Key(k) if k == "a\u{fffd}")),
            Some(true)
        );
        assert_eq!(
            target("/get_value/a//"),
            Some(Target::Redirect(Borrowed("/get_value/a")))
        );
        for not_found in [
            "/get_value",
            "/get_value/",
            "/get_value//",
            "/get_value/a%2Fb",
            "/get_value/a/b/",
        ] {
            assert_eq!(target(not_found), Some(Target::NotFound), "{not_found}");
        }
        for other in ["/", "/get_values/a", "/v1/keys/a", "/get_valu"] {
            assert_eq!(target(other), None, "{other}");
        }
    }

    #[test]
    fn hosts_and_quoting_follow_starlette() {
        for good in [
            "a.b",
            "127.0.0.1:8080",
            "[::1]:1",
            "[v1.x]",
            "h:00065535",
            "a%zz!$&'()*+,;=-",
        ] {
            assert!(valid_host(good), "{good}");
        }
        for bad in [
            "",
            "a b",
            "a:",
            "a:65536",
            "a:x",
            "[::g]",
            "[1.2.3.4]",
            "a/b",
            "a@b",
            "[::1",
        ] {
            assert!(!valid_host(bad), "{bad}");
        }
        assert_eq!(
            quote("http://h/a b{}\u{fffd}?q=%7B|"),
            "http://h/a%20b%7B%7D%EF%BF%BD?q=%7B%7C"
        );
    }
}
