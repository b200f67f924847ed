//! The differential property test (issue 13): the hot routes' fast path
//! (`http::fast::serve`, `--fast-path true`) against the reference path, every request
//! through poem (`--fast-path false`). Two servers on the same data file, one per path,
//! get the same generated requests, written byte for byte on raw TCP (nothing
//! normalises them; one request per connection), and must answer with the same status
//! line, the same headers as a sorted multiset of (lowercased name, value) and the same
//! body bytes. Two exceptions, both per-request by nature: the `date` value, and
//! `x-request-id` when the request sent no usable one (the server then makes one up);
//! each must still be present once on both sides.
//!
//! Six configurations: auth off; HS256 auth; a shard (`--key-prefixes 0-7`); HS256
//! auth with both rate limits low enough to be hit (`--rate-limit 1
//! --rate-limit-burst 3 --subject-rate-limit 1 --subject-rate-limit-burst 2`); HS256
//! auth with traces on, every request sampled, and with none sampled. The
//! generator (`req_strategy`) covers methods (GET, HEAD, POST, DELETE, OPTIONS, PUT,
//! PATCH), the three hot routes and their near misses (`/v1/keys/`, `/v1/keys`,
//! `/v1/keys/batch`, `/v1/keys/{k}/value/x`, `/get_value/`, `/get_value`, trailing
//! slashes (also `//` and `%2F`), `/v1/keys//value`), a query string, key spellings (hyphenated, simple, braced raw
//! and encoded, urn, upper case, wholly percent-encoded; missing; outside the shard;
//! damaged: wrong length, bad hex, empty, unicode raw and encoded, `%ff`, `%c3%28`,
//! `%2F`, `%00`, lone `%`, escapes that are not UTF-8 among other characters; UUIDs of
//! other versions than 4, nil and max; random strings; a key whose 2 KiB value is compressed),
//! `If-None-Match` (absent, current, `W/`, `*`, a list, stale, garbage, two lines, the
//! `-zst` and `-gz` tags; `If-Match` stale, and `*` with a current `If-None-Match`), `Accept-Encoding` (absent, gzip, zstd, both, by q, identity
//! refused, unsupported only, `*;q=0`, garbage, two lines), `Authorization` (absent, good, bad
//! signature, expired, wrong scope, not Bearer, lowercase scheme, empty, two headers)
//! `X-Request-Id` (absent, usable, unusable) and `Host` (usual; missing, twice or
//! invalid, a 400). The statuses compared are printed at
//! the end (`--nocapture`): a run of 256 reaches 200, 304, 400, 401, 403, 404, 405, 412, 421,
//! 422, 307 (the legacy trailing slashes) and 429 from each limit (the subject one a few times).
//!
//! The rate limits are made exact, not tolerated: the servers trust
//! `X-Forwarded-For`, and every case gets a fresh address and a fresh token subject, so
//! it starts on full buckets of its own, and sends its sequence of one to five requests
//! to one server, then the same to the other. At one request per second, a sequence
//! sent in well under a second sees no refill, so `RateLimit`'s `r` and `t` and
//! `Retry-After` are the same on both; a sequence that took longer (a stalled machine)
//! is sent again as a new client instead of being compared.
//!
//! `PROPTEST_CASES=N` runs N cases per configuration (default 256: a few seconds each
//! in a debug build; 2000 take about 20 s). A failure is shrunk and names the
//! request (escaped bytes) and what differs: status line, each header only one side
//! sent, the two bodies.
//!
//! Proved able to fail (plants not committed): an `x-plant: 1` header added to the
//! fast path's answer in `fast::serve` failed the four configurations of the time, shrunk to
//! `GET /v1/keys/{KEY}` with "header only in fast: x-plant: 1"; a changed byte in the
//! reference answer (`max-age=61` in the `Cache-Control` answered inside poem) failed
//! all four with the two `cache-control` values side by side; the last body byte of the
//! reference's 404s changed failed with both bodies shown; an `x-plant` header added in
//! `pipeline::through_framework` failed with "header only in reference".

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use serde_json::json;

const SECRET: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/jwt/hs256.secret"
);

/// The sample's keys: KEY (7…) and KEY2 (0…) are inside `--key-prefixes 0-7`, the
/// uppercase one (A…) is outside it, the 1… one has an empty value.
const EMPTY_VALUE_KEY: &str = "11111111-1111-4111-8111-111111111111";
const UPPER_KEY: &str = "AAAAAAAA-BBBB-4CCC-8DDD-EEEEEEEEEEEE";
const FOREIGN_MISSING: &str = "80000000-0000-4000-8000-000000000000";
/// A key (inside the shard) whose value is large enough to be compressed.
const BIG_KEY: &str = "3b0c3d1e-7f6a-4b8c-9d0e-1f2a3b4c5d6e";

/// The sample plus `BIG_KEY`'s 4 KiB value.
fn diff_lines() -> String {
    let big: String = (0..500)
        .map(|i| format!("v{} ", (i * 7919) % 1000))
        .collect();
    format!("{}{BIG_KEY} {}\n", sample_lines(), big.trim_end())
}

/// `default` cases, unless `PROPTEST_CASES` says otherwise.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

// ---- the generated request --------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Route {
    Key,
    Value,
    Legacy,
    /// Near misses: no key, `batch`, an extra segment, trailing slashes.
    KeysRoot,
    KeysNoSlash,
    Batch,
    ValueExtra,
    LegacyRoot,
    KeyTrailing,
    ValueTrailing,
    LegacyTrailing,
    EmptyKeyValue,
    /// The legacy route as Starlette matched it: `//` after the key, `%2F` after the
    /// key (a trailing slash once decoded), `/get_value` alone.
    LegacyDoubleTrailing,
    LegacyEncodedTrailing,
    LegacyBare,
}

#[derive(Debug, Clone, Copy)]
enum Etag {
    Absent,
    Current,
    Weak,
    Star,
    List,
    Stale,
    Garbage,
    TwoLines,
    /// The current tag of the zstd and of the gzip representation.
    CurrentZstd,
    CurrentGzip,
    /// `If-Match` with a stale tag (412), and `*` beside a current `If-None-Match`
    /// (304).
    IfMatchStale,
    IfMatchStar,
}

/// `Accept-Encoding` as clients send it, and odd forms.
#[derive(Debug, Clone, Copy)]
enum AcceptEncoding {
    Absent,
    Gzip,
    Zstd,
    /// python requests with brotli and zstd installed; browsers without zstd.
    Everything,
    Browser,
    /// gzip preferred over zstd by q.
    GzipPreferred,
    /// Identity refused: even small answers are compressed.
    IdentityRefused,
    /// Only codings kvserve does not send.
    Unsupported,
    /// `*;q=0` with nothing else: no coding acceptable.
    Nothing,
    Garbage,
    TwoLines,
}

impl AcceptEncoding {
    fn header(self) -> &'static str {
        match self {
            AcceptEncoding::Absent => "",
            AcceptEncoding::Gzip => "Accept-Encoding: gzip\r\n",
            AcceptEncoding::Zstd => "Accept-Encoding: zstd\r\n",
            AcceptEncoding::Everything => "Accept-Encoding: gzip, deflate, br, zstd\r\n",
            AcceptEncoding::Browser => "Accept-Encoding: gzip, deflate, br\r\n",
            AcceptEncoding::GzipPreferred => "Accept-Encoding: zstd;q=0.5, gzip\r\n",
            AcceptEncoding::IdentityRefused => "Accept-Encoding: zstd, identity;q=0\r\n",
            AcceptEncoding::Unsupported => "Accept-Encoding: br, deflate\r\n",
            AcceptEncoding::Nothing => "Accept-Encoding: *;q=0\r\n",
            AcceptEncoding::Garbage => "Accept-Encoding: ;q=, gzip;q=2, ,zstd;q=0.0001\r\n",
            AcceptEncoding::TwoLines => "Accept-Encoding: br\r\nAccept-Encoding: gzip\r\n",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Auth {
    Absent,
    Good,
    BadSignature,
    Expired,
    WrongScope,
    NotBearer,
    LowercaseScheme,
    EmptyBearer,
    TwoHeaders,
}

/// The `Host` header: as clients send it, or against RFC 9112 §3.2 (a 400).
#[derive(Debug, Clone, Copy)]
enum Host {
    Usual,
    Missing,
    Twice,
    Invalid,
}

#[derive(Debug, Clone, Copy)]
enum RequestId {
    Absent,
    Usable,
    /// Not visible ASCII: the server replaces it.
    Unusable,
}

/// Bytes as sent, shown escaped in a failing case.
#[derive(Clone)]
struct Wire(Vec<u8>);

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{}\"", escape(&self.0))
    }
}

#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    route: Route,
    /// The key segment as written on the wire (raw bytes, maybe percent-encoded).
    key: Wire,
    query: &'static str,
    etag: Etag,
    auth: Auth,
    request_id: RequestId,
    accept_encoding: AcceptEncoding,
    host: Host,
}

/// What rendering a request needs from the run: the data's ETag and the tokens.
struct Ctx {
    etag: String,
    tokens: Tokens,
}

/// The tokens a case sends, all for one subject (`sub`).
struct Tokens {
    good: String,
    bad_signature: String,
    expired: String,
    wrong_scope: String,
}

impl Tokens {
    fn for_subject(sub: &str) -> Self {
        let secret = std::fs::read(SECRET).expect("the HS256 fixture");
        // The server trims the secret file's trailing whitespace too.
        let secret = secret.trim_ascii_end();
        Self {
            good: mint(secret, sub, "kv:read", 3600),
            bad_signature: mint(b"not the secret", sub, "kv:read", 3600),
            expired: mint(secret, sub, "kv:read", -3600),
            wrong_scope: mint(secret, sub, "kv:admin", 3600),
        }
    }
}

impl Req {
    fn target(&self) -> Vec<u8> {
        let k = self.key.0.as_slice();
        let parts: &[&[u8]] = match self.route {
            Route::Key => &[b"/v1/keys/", k],
            Route::Value => &[b"/v1/keys/", k, b"/value"],
            Route::Legacy => &[b"/get_value/", k],
            Route::KeysRoot => &[b"/v1/keys/"],
            Route::KeysNoSlash => &[b"/v1/keys"],
            Route::Batch => &[b"/v1/keys/batch"],
            Route::ValueExtra => &[b"/v1/keys/", k, b"/value/x"],
            Route::LegacyRoot => &[b"/get_value/"],
            Route::KeyTrailing => &[b"/v1/keys/", k, b"/"],
            Route::ValueTrailing => &[b"/v1/keys/", k, b"/value/"],
            Route::LegacyTrailing => &[b"/get_value/", k, b"/"],
            Route::EmptyKeyValue => &[b"/v1/keys//value"],
            Route::LegacyDoubleTrailing => &[b"/get_value/", k, b"//"],
            Route::LegacyEncodedTrailing => &[b"/get_value/", k, b"%2F"],
            Route::LegacyBare => &[b"/get_value"],
        };
        let mut target = parts.concat();
        target.extend_from_slice(self.query.as_bytes());
        target
    }

    /// The request's bytes, `X-Forwarded-For: xff` added when given.
    fn render(&self, ctx: &Ctx, xff: Option<&str>) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&self.target());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut head = match self.host {
            Host::Usual => "Host: kvserve.test\r\n",
            Host::Missing => "",
            Host::Twice => "Host: kvserve.test\r\nHost: kvserve.test\r\n",
            Host::Invalid => "Host: kvserve test\r\n",
        }
        .to_owned();
        let (quoted, tokens) = (ctx.etag.as_str(), &ctx.tokens);
        match self.etag {
            Etag::Absent => {}
            Etag::Current => head += &format!("If-None-Match: {quoted}\r\n"),
            Etag::Weak => head += &format!("If-None-Match: W/{quoted}\r\n"),
            Etag::Star => head += "If-None-Match: *\r\n",
            Etag::List => head += &format!("If-None-Match: \"nope\", W/{quoted}\r\n"),
            Etag::Stale => head += "If-None-Match: \"0000000000000000\"\r\n",
            Etag::Garbage => head += "If-None-Match: ,,\"unterminated\r\n",
            Etag::TwoLines => {
                head += &format!("If-None-Match: \"nope\"\r\nIf-None-Match: {quoted}\r\n")
            }
            Etag::CurrentZstd | Etag::CurrentGzip => {
                let suffix = if matches!(self.etag, Etag::CurrentZstd) {
                    "-zst"
                } else {
                    "-gz"
                };
                let stem = quoted.trim_end_matches('"');
                head += &format!("If-None-Match: {stem}{suffix}\"\r\n")
            }
            Etag::IfMatchStale => head += "If-Match: \"0000000000000000\"\r\n",
            Etag::IfMatchStar => head += &format!("If-Match: *\r\nIf-None-Match: {quoted}\r\n"),
        }
        head += self.accept_encoding.header();
        match self.auth {
            Auth::Absent => {}
            Auth::Good => head += &format!("Authorization: Bearer {}\r\n", tokens.good),
            Auth::BadSignature => {
                head += &format!("Authorization: Bearer {}\r\n", tokens.bad_signature)
            }
            Auth::Expired => head += &format!("Authorization: Bearer {}\r\n", tokens.expired),
            Auth::WrongScope => {
                head += &format!("Authorization: Bearer {}\r\n", tokens.wrong_scope)
            }
            Auth::NotBearer => head += "Authorization: Basic dXNlcjpwYXNz\r\n",
            Auth::LowercaseScheme => head += &format!("Authorization: bearer {}\r\n", tokens.good),
            Auth::EmptyBearer => head += "Authorization: Bearer \r\n",
            Auth::TwoHeaders => {
                head += &format!(
                    "Authorization: Bearer {}\r\nAuthorization: Bearer {}\r\n",
                    tokens.good, tokens.bad_signature
                )
            }
        }
        match self.request_id {
            RequestId::Absent => {}
            RequestId::Usable => head += "X-Request-Id: diff-0123456789\r\n",
            RequestId::Unusable => head += "X-Request-Id: has space\r\n",
        }
        if let Some(xff) = xff {
            head += &format!("X-Forwarded-For: {xff}\r\n");
        }
        if matches!(self.method, "POST" | "PUT" | "PATCH") {
            head += "Content-Length: 0\r\n";
        }
        head += "Connection: close\r\n\r\n";
        out.extend_from_slice(head.as_bytes());
        out
    }
}

fn forms_of(key: &str) -> Vec<String> {
    let lower = key.to_ascii_lowercase();
    vec![
        lower.clone(),
        key.to_ascii_uppercase(),
        lower.replace('-', ""),
        format!("{{{lower}}}"),
        format!("%7B{lower}%7D"),
        format!("urn:uuid:{lower}"),
        lower.bytes().map(|b| format!("%{b:02X}")).collect(),
    ]
}

fn key_strategy() -> impl Strategy<Value = Vec<u8>> {
    let mut fixed: Vec<Vec<u8>> = Vec::new();
    for key in [KEY, KEY2, EMPTY_VALUE_KEY, UPPER_KEY, BIG_KEY] {
        fixed.extend(forms_of(key).into_iter().map(String::into_bytes));
    }
    let damaged: &[&[u8]] = &[
        MISSING.as_bytes(),
        FOREIGN_MISSING.as_bytes(),
        b"aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee",
        b"72cf48f7-d604-4423-b012-4e2329f5117",
        b"72cf48f7-d604-4423-b012-4e2329f5117bb",
        b"72cf48f7-d604-4423-b012-4e2329f5117g",
        b"72cf48f7d6044423-b012-4e2329f5117b",
        b"72cf48f7-d604-4423-b012-4e2329f5117b%00",
        b"",
        b"not-a-uuid",
        "ключ".as_bytes(),
        "72cf48f7-d604-4423-b012-4e2329f5117é".as_bytes(),
        b"%D0%BA%D0%BB%D1%8E%D1%87",
        b"%ff",
        b"%FF%FE",
        b"%c3%28",
        b"%2F",
        b"72cf48f7%2Fd604-4423-b012-4e2329f5117b",
        b"72cf48f7%2Dd604-4423-b012-4e2329f5117b",
        b"%",
        b"%zz",
        b"%00",
        b"batch",
        b"urn:uuid:",
        b"{}",
        // Other UUID versions than 4, and the nil and max UUIDs: keys like any other.
        b"6ba7b810-9dad-11d1-80b4-00c04fd430c8",
        b"6ba7b810-9dad-11e4-80b4-00c04fd430c8",
        b"017f22e2-79b0-7cc3-98c4-dc0c0c07398f",
        b"ffffffff-ffff-ffff-ffff-ffffffffffff",
        b"urn:uuid:6ba7b810-9dad-31d1-80b4-00c04fd430c8",
        // Escapes that are not UTF-8 among other characters; `?` and `#` escaped.
        b"4Bn%E8C2%7B",
        b"%E8%7B",
        b"a%3Fb%23",
        b"a%5C",
    ];
    fixed.extend(damaged.iter().map(|k| k.to_vec()));
    let chars: Vec<u8> = b"0123456789abcdefABCDEFg-{}%:/xz".to_vec();
    prop_oneof![
        4 => proptest::sample::select(fixed),
        1 => proptest::collection::vec(proptest::sample::select(chars), 0..40),
    ]
}

fn req_strategy() -> impl Strategy<Value = Req> {
    let method = prop_oneof![
        5 => Just("GET"),
        3 => Just("HEAD"),
        1 => proptest::sample::select(vec!["POST", "DELETE", "OPTIONS", "PUT", "PATCH"]),
    ];
    let route = prop_oneof![
        3 => proptest::sample::select(vec![Route::Key, Route::Value, Route::Legacy]),
        1 => proptest::sample::select(vec![
            Route::KeysRoot,
            Route::KeysNoSlash,
            Route::Batch,
            Route::ValueExtra,
            Route::LegacyRoot,
            Route::KeyTrailing,
            Route::ValueTrailing,
            Route::LegacyTrailing,
            Route::EmptyKeyValue,
            Route::LegacyDoubleTrailing,
            Route::LegacyEncodedTrailing,
            Route::LegacyBare,
        ]),
    ];
    let query = prop_oneof![
        6 => Just(""),
        1 => proptest::sample::select(vec!["?x=1", "?access_token=abc", "?", "?q=%7B&r=}"]),
    ];
    let etag = prop_oneof![
        3 => Just(Etag::Absent),
        2 => proptest::sample::select(vec![
            Etag::Current,
            Etag::Weak,
            Etag::Star,
            Etag::List,
            Etag::Stale,
            Etag::Garbage,
            Etag::TwoLines,
            Etag::CurrentZstd,
            Etag::CurrentGzip,
            Etag::IfMatchStale,
            Etag::IfMatchStar,
        ]),
    ];
    let accept_encoding = prop_oneof![
        2 => Just(AcceptEncoding::Absent),
        3 => proptest::sample::select(vec![
            AcceptEncoding::Gzip,
            AcceptEncoding::Zstd,
            AcceptEncoding::Everything,
            AcceptEncoding::Browser,
            AcceptEncoding::GzipPreferred,
            AcceptEncoding::IdentityRefused,
            AcceptEncoding::Unsupported,
            AcceptEncoding::Nothing,
            AcceptEncoding::Garbage,
            AcceptEncoding::TwoLines,
        ]),
    ];
    let auth = prop_oneof![
        2 => Just(Auth::Good),
        1 => Just(Auth::Absent),
        2 => proptest::sample::select(vec![
            Auth::BadSignature,
            Auth::Expired,
            Auth::WrongScope,
            Auth::NotBearer,
            Auth::LowercaseScheme,
            Auth::EmptyBearer,
            Auth::TwoHeaders,
        ]),
    ];
    let request_id = proptest::sample::select(vec![
        RequestId::Absent,
        RequestId::Absent,
        RequestId::Usable,
        RequestId::Unusable,
    ]);
    let host = prop_oneof![
        12 => Just(Host::Usual),
        1 => proptest::sample::select(vec![Host::Missing, Host::Twice, Host::Invalid]),
    ];
    let head = (etag, auth, request_id, accept_encoding, host);
    (method, route, key_strategy(), query, head).prop_map(
        |(method, route, key, query, (etag, auth, request_id, accept_encoding, host))| Req {
            method,
            route,
            key: Wire(key),
            query,
            etag,
            auth,
            request_id,
            accept_encoding,
            host,
        },
    )
}

// ---- tokens -----------------------------------------------------------------------

fn mint(secret: &[u8], sub: &str, scope: &str, exp_from_now: i64) -> String {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let claims = json!({"sub": sub, "scope": scope, "exp": now + exp_from_now});
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("an HS256 token")
}

// ---- talking to the servers -------------------------------------------------------

/// One response, split: status line, headers in order as sent, body bytes.
#[derive(Debug)]
struct Answer {
    status: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn send(addr: SocketAddr, request: &[u8]) -> Result<Answer, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(request)
        .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no response head from {addr}: {}", escape(&raw)))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default().to_owned();
    let headers = lines
        .map(|line| match line.split_once(':') {
            Some((name, value)) => (name.to_ascii_lowercase(), value.trim().to_owned()),
            None => (line.to_ascii_lowercase(), String::new()),
        })
        .collect();
    Ok(Answer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

/// The headers to compare, sorted; `date` (and `x-request-id` unless the request sent
/// a usable one) must be present once and are then left out.
fn comparable(answer: &Answer, keep_request_id: bool) -> Result<Vec<(String, String)>, String> {
    let mut headers = answer.headers.clone();
    let mut volatile = vec!["date"];
    if !keep_request_id {
        volatile.push("x-request-id");
    }
    for name in volatile {
        let n = headers.iter().filter(|(h, _)| h == name).count();
        if n != 1 {
            return Err(format!("`{name}` appears {n} times, expected once"));
        }
        headers.retain(|(h, _)| h != name);
    }
    // Sampled requests name their own (random) trace and span: compared by form.
    for (name, value) in headers.iter_mut() {
        if name == "traceresponse" {
            if !is_traceresponse(value) {
                return Err(format!(
                    "`traceresponse: {value}` is not version-trace-span-flags"
                ));
            }
            *value = "<a sampled trace>".to_owned();
        }
    }
    headers.sort();
    Ok(headers)
}

/// `00-<32 hex>-<16 hex>-01`: W3C Trace Context's form, sampled.
fn is_traceresponse(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && parts[3] == "01"
}

/// Printable bytes: visible ASCII as is, CR LF as `\r\n` plus a line break, the rest
/// as `\xNN`; long bodies cut.
fn escape(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes.iter().take(2000) {
        match b {
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n\n    "),
            b' '..=b'~' => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    if bytes.len() > 2000 {
        let _ = write!(out, "… ({} bytes)", bytes.len());
    }
    out
}

/// `Ok` if the two answers agree, else a readable account of what differs.
fn compare(request: &[u8], req: &Req, fast: &Answer, reference: &Answer) -> Result<(), String> {
    let keep_id = matches!(req.request_id, RequestId::Usable);
    let mut problems = Vec::new();
    if fast.status != reference.status {
        problems.push(format!(
            "status line: fast `{}`, reference `{}`",
            fast.status, reference.status
        ));
    }
    match (comparable(fast, keep_id), comparable(reference, keep_id)) {
        (Ok(f), Ok(r)) => {
            for (side, these, those) in [("fast", &f, &r), ("reference", &r, &f)] {
                let mut rest = those.clone();
                for h in these {
                    if let Some(i) = rest.iter().position(|o| o == h) {
                        rest.remove(i);
                    } else {
                        problems.push(format!("header only in {side}: {}: {}", h.0, h.1));
                    }
                }
            }
        }
        (f, r) => {
            if let Err(e) = f {
                problems.push(format!("fast headers: {e}"));
            }
            if let Err(e) = r {
                problems.push(format!("reference headers: {e}"));
            }
        }
    }
    if fast.body != reference.body {
        problems.push(format!(
            "body:\n  fast:      {}\n  reference: {}",
            escape(&fast.body),
            escape(&reference.body)
        ));
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the fast path and the reference path answer differently\nrequest:\n    {}\n{}\n",
        escape(request),
        problems.join("\n")
    ))
}

// ---- the runs ---------------------------------------------------------------------

struct Pair {
    fast: SocketAddr,
    reference: SocketAddr,
    servers: Servers,
    /// Held so the data file outlives the servers.
    _dir: tempfile::TempDir,
}

/// In this process (cheap to start), or the real binary where the process-wide trace
/// set-up must differ (`env`).
enum Servers {
    InProcess(TestServer, TestServer),
    Binaries(Process, Process),
}

/// Two servers on the differential data with `args`, `--fast-path true` and `false`;
/// with `env`, real binaries with those variables.
async fn pair(args: &[&str], env: &[(&str, &str)]) -> Pair {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = write_file(dir.path(), "diff.data", diff_lines());
    let with = |flag: &'static str| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--fast-path", flag]);
        all
    };
    let servers = if env.is_empty() {
        let fast = TestServer::start(&data, &with("true")).await;
        let reference = TestServer::start(&data, &with("false")).await;
        Servers::InProcess(fast, reference)
    } else {
        let fast = spawn_binary_with_env(&data, &with("true"), env);
        let reference = spawn_binary_with_env(&data, &with("false"), env);
        for p in [&fast, &reference] {
            wait_until("ready", || http_status(p.admin, "/readyz") == Some(200));
        }
        Servers::Binaries(fast, reference)
    };
    let (fast, reference) = match &servers {
        Servers::InProcess(f, r) => (f.api, r.api),
        Servers::Binaries(f, r) => (f.api, r.api),
    };
    Pair {
        fast,
        reference,
        servers,
        _dir: dir,
    }
}

impl Servers {
    async fn stop(self) {
        match self {
            Servers::InProcess(fast, reference) => {
                fast.stop().await.expect("fast server stops");
                reference.stop().await.expect("reference server stops");
            }
            Servers::Binaries(mut fast, mut reference) => {
                for p in [&mut fast, &mut reference] {
                    sigterm(&p.child);
                    let status = wait_exit(&mut p.child, Duration::from_secs(15));
                    assert!(status.success(), "{status:?}\n{}", p.log());
                }
            }
        }
    }
}

/// The data's ETag, asked of both servers once (as `xff`, with a token of `sub`).
fn current_etag(pair: &Pair, xff: Option<&str>) -> String {
    let good = Tokens::for_subject("etag").good;
    let mut etags = Vec::new();
    for addr in [pair.fast, pair.reference] {
        let mut request =
            format!("GET /v1/keys/{KEY} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {good}\r\n");
        if let Some(xff) = xff {
            request += &format!("X-Forwarded-For: {xff}\r\n");
        }
        request += "Connection: close\r\n\r\n";
        let answer = send(addr, request.as_bytes()).expect("the ETag request");
        assert!(answer.status.contains(" 200 "), "{answer:?}");
        let etag = answer
            .headers
            .iter()
            .find(|(h, _)| h == "etag")
            .map(|(_, v)| v.clone())
            .expect("an ETag");
        etags.push(etag);
    }
    assert_eq!(etags[0], etags[1], "both servers serve the same file");
    etags.remove(0)
}

/// The status code, and for a 429 which limit refused.
fn outcome(answer: &Answer) -> String {
    let code = answer.status.get(9..12).unwrap_or("???").to_owned();
    let body = String::from_utf8_lossy(&answer.body);
    match code.as_str() {
        "429" if body.contains("subject") => "429 subject".to_owned(),
        "429" if body.contains("address") => "429 address".to_owned(),
        _ => code,
    }
}

/// Every address and subject a case of the rate-limited run uses is fresh: its
/// buckets start full.
fn fresh_client() -> (String, String) {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let address = format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
    (address, format!("client-{n}"))
}

/// Longest a rate-limited sequence may take on one server and still be compared: well
/// under the 1 s a token takes to come back at `--rate-limit 1`.
const SEQUENCE_BUDGET: Duration = Duration::from_millis(700);

fn run(
    args: &[&str],
    env: &[(&str, &str)],
    sequence: std::ops::RangeInclusive<usize>,
    rate_limited: bool,
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let pair = runtime.block_on(pair(args, env));
    let etag = current_etag(&pair, rate_limited.then_some("192.0.2.1"));
    let fixed = Ctx {
        etag: etag.clone(),
        tokens: Tokens::for_subject("diff"),
    };
    let config = ProptestConfig {
        cases: cases(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let strategy = proptest::collection::vec(req_strategy(), sequence);
    // How often each status was compared, printed at the end (`--nocapture`): a run
    // that never reaches a 304 or a 429 proves little about them.
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::<String, u32>::new());
    let outcome = runner.run(&strategy, |reqs| {
        for _attempt in 0..5 {
            let fresh = rate_limited.then(fresh_client);
            let per_case;
            let ctx = match &fresh {
                Some((_, sub)) => {
                    per_case = Ctx {
                        etag: etag.clone(),
                        tokens: Tokens::for_subject(sub),
                    };
                    &per_case
                }
                None => &fixed,
            };
            let xff = fresh.as_ref().map(|(address, _)| address.as_str());
            let rendered: Vec<Vec<u8>> = reqs.iter().map(|r| r.render(ctx, xff)).collect();
            let mut answers = Vec::new();
            let mut in_time = true;
            for addr in [pair.fast, pair.reference] {
                let started = Instant::now();
                let mut these = Vec::new();
                for request in &rendered {
                    these.push(send(addr, request).map_err(TestCaseError::fail)?);
                }
                in_time &= started.elapsed() < SEQUENCE_BUDGET;
                answers.push(these);
            }
            if rate_limited && !in_time {
                continue;
            }
            for (i, req) in reqs.iter().enumerate() {
                compare(&rendered[i], req, &answers[0][i], &answers[1][i]).map_err(|e| {
                    TestCaseError::fail(format!("request {} of {}: {e}", i + 1, reqs.len()))
                })?;
                if let Ok(mut seen) = seen.lock() {
                    *seen.entry(outcome(&answers[0][i])).or_default() += 1;
                }
            }
            return Ok(());
        }
        Err(TestCaseError::fail(
            "five tries in a row took longer than the rate-limit budget",
        ))
    });
    runtime.block_on(async {
        pair.servers.stop().await;
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
    let seen = seen.into_inner().unwrap_or_default();
    eprintln!("{args:?}: statuses compared: {seen:?}");
}

#[test]
fn auth_off() {
    run(&[], &[], 1..=1, false);
}

#[test]
fn auth_on() {
    run(&["--jwt-hs256-secret-file", SECRET], &[], 1..=1, false);
}

#[test]
fn shard() {
    run(&["--key-prefixes", "0-7"], &[], 1..=1, false);
}

#[test]
fn rate_limited() {
    run(
        &[
            "--jwt-hs256-secret-file",
            SECRET,
            "--rate-limit",
            "1",
            "--rate-limit-burst",
            "3",
            "--subject-rate-limit",
            "1",
            "--subject-rate-limit-burst",
            "2",
            "--forwarded-hops",
            "1",
        ],
        &[],
        1..=5,
        true,
    );
}

/// Traces on, every request sampled: both paths make a span and say so in
/// `traceresponse` (the collector's address is closed: spans are dropped and counted).
#[test]
fn traces_sampled() {
    run(
        &["--jwt-hs256-secret-file", SECRET],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
            ("OTEL_TRACES_SAMPLER", "always_on"),
        ],
        1..=1,
        false,
    );
}

/// Traces on, nothing sampled: neither path answers with `traceresponse`.
#[test]
fn traces_unsampled() {
    run(
        &["--jwt-hs256-secret-file", SECRET],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
            ("OTEL_TRACES_SAMPLER", "always_off"),
        ],
        1..=1,
        false,
    );
}
