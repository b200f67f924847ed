//! Response compression where it pays: `Content-Encoding: zstd` or `gzip` for the
//! answers of the `/v1` routes and the spec, chosen by the client's `Accept-Encoding`
//! (RFC 9110 §12.5.3), only above a size threshold (`--compress-min-bytes`).
//!
//! One function, `encode`, called from `pipeline::finish`, so the fast path and the
//! framework path compress alike (the differential test sends `Accept-Encoding` to
//! both). The bodies of the routes compressed are already in memory, so compressing is
//! one synchronous call.
//!
//! - Routes: `/v1/keys/{key}`, `/v1/keys/{key}/value`, `/v1/keys/batch`,
//!   `/openapi.json`, `/docs` (the last two compressed once and kept,
//!   `http::documents`, and left alone here). Every answer of these carries `Vary: Accept-Encoding` (also the
//!   identity ones, the 304s and the refusals, for caches). The legacy route
//!   `/get_value/{key}` stays identity and unchanged: the old service never compressed.
//! - Only 200s with `application/json` or `text/plain` bodies of at least the
//!   threshold; problem+json errors are small and stay identity.
//! - Preference: the highest q among zstd, gzip and identity; at equal q zstd, then
//!   gzip. `identity;q=0` (or `*;q=0` without an `identity` entry) forces a coding even
//!   below the threshold. When nothing is acceptable (identity excluded, neither zstd
//!   nor gzip allowed), the answer is identity rather than 406: the RFC allows either,
//!   and a problem+json 406 would be just as unreadable to such a client.
//! - A strong `ETag` differs per coding: `"<hex>-zst"`, `"<hex>-gz"` (RFC 9110 §8.8.3);
//!   `If-None-Match` matches any of the three forms (`entity_matches`), and a 304
//!   carries the tag of the representation this request would get (`api::lookup`).

use std::cell::RefCell;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body_util::combinators::BoxBody as Boxed;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use poem::http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, ETAG, VARY};
use poem::http::{HeaderMap, HeaderValue, StatusCode};
use poem::{Body, Response};

/// poem's body inside.
pub(super) type BoxBody = Boxed<Bytes, std::io::Error>;

/// zstd level 1: measured on 8 KiB text values and 100-key batches, level 3 costs
/// 1.3–2.3× the CPU for under 1 % smaller answers (BENCHMARKS.md).
const ZSTD_LEVEL: i32 = 1;
/// gzip level 4: level 1 leaves 8 KiB text values 15 % larger, level 6 costs more
/// CPU for under 1 % (BENCHMARKS.md).
const GZIP_LEVEL: u32 = 4;

const VARY_ACCEPT_ENCODING: HeaderValue = HeaderValue::from_static("accept-encoding");

/// The compression settings of the API listener (`--compression`,
/// `--compress-min-bytes`).
#[derive(Debug, Clone, Copy)]
pub struct Compression {
    pub enabled: bool,
    /// Bodies shorter than this stay identity unless the client refuses identity.
    pub min_bytes: usize,
}

impl Compression {
    pub const OFF: Self = Self {
        enabled: false,
        min_bytes: usize::MAX,
    };
}

/// A content coding kvserve can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
    Zstd,
}

impl Coding {
    pub fn token(self) -> Option<&'static str> {
        match self {
            Coding::Identity => None,
            Coding::Gzip => Some("gzip"),
            Coding::Zstd => Some("zstd"),
        }
    }

    /// What the coding adds to the entity tag inside its quotes.
    fn etag_suffix(self) -> &'static str {
        match self {
            Coding::Identity => "",
            Coding::Gzip => "-gz",
            Coding::Zstd => "-zst",
        }
    }
}

/// A client's `Accept-Encoding`, reduced to what kvserve can send: the q-values (in
/// thousandths) of zstd, gzip, identity and `*`, where the field names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Accept {
    zstd: Option<u16>,
    gzip: Option<u16>,
    identity: Option<u16>,
    star: Option<u16>,
}

impl Accept {
    /// Every `Accept-Encoding` line of `headers` as one list. No field, an empty
    /// field: identity only (without the field a client states no preference; most
    /// such clients cannot decode anything, so kvserve does not guess).
    pub fn of(headers: &HeaderMap) -> Self {
        let mut accept = Self::default();
        for line in headers.get_all(ACCEPT_ENCODING) {
            let Ok(line) = line.to_str() else { continue };
            for member in line.split(',') {
                accept.add(member);
            }
        }
        accept
    }

    /// One list member, `coding[;q=value]`; a member with a malformed q is ignored.
    fn add(&mut self, member: &str) {
        let mut parts = member.split(';');
        let coding = parts.next().unwrap_or("").trim();
        if coding.is_empty() {
            return;
        }
        let mut q = Some(1000);
        for param in parts {
            let Some((name, value)) = param.split_once('=') else {
                continue;
            };
            if name.trim().eq_ignore_ascii_case("q") {
                q = parse_qvalue(value.trim());
            }
        }
        let Some(q) = q else { return };
        let slot = if coding.eq_ignore_ascii_case("zstd") {
            &mut self.zstd
        } else if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            &mut self.gzip
        } else if coding.eq_ignore_ascii_case("identity") {
            &mut self.identity
        } else if coding == "*" {
            &mut self.star
        } else {
            return;
        };
        // A coding named twice: the first entry counts.
        slot.get_or_insert(q);
    }

    /// The q of a coding kvserve compresses with (`*` stands for unnamed ones).
    fn q(self, coding: Coding) -> u16 {
        match coding {
            Coding::Zstd => self.zstd.or(self.star).unwrap_or(0),
            Coding::Gzip => self.gzip.or(self.star).unwrap_or(0),
            // Identity is acceptable unless excluded (RFC 9110 §12.5.3).
            Coding::Identity => self.identity.or(self.star).unwrap_or(1000),
        }
    }

    /// The coding for a compressible body of `len` bytes.
    pub fn choose(self, settings: Compression, len: usize) -> Coding {
        if !settings.enabled {
            return Coding::Identity;
        }
        let (zstd, gzip) = (self.q(Coding::Zstd), self.q(Coding::Gzip));
        let compressed = match (zstd, gzip) {
            (0, 0) => return Coding::Identity,
            (z, g) if z >= g => (Coding::Zstd, z),
            (_, g) => (Coding::Gzip, g),
        };
        // Identity not named (nor `*`): acceptable, but the last choice.
        let identity = self.identity.or(self.star);
        let identity_ok = self.q(Coding::Identity) > 0;
        let identity_preferred = identity.is_some_and(|q| q > compressed.1);
        if identity_ok && (len < settings.min_bytes || identity_preferred) {
            return Coding::Identity;
        }
        compressed.0
    }
}

/// A qvalue (RFC 9110 §12.4.2): `0`, `1`, `0.xxx`, `1.000`; in thousandths.
fn parse_qvalue(text: &str) -> Option<u16> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = frac.bytes().chain(std::iter::repeat(b'0')).take(3);
    let frac = thousandths.fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'));
    match int {
        "0" => Some(frac),
        "1" if frac == 0 => Some(1000),
        _ => None,
    }
}

/// Whether answers of the route template `route` may be compressed.
pub fn compressible_route(route: &str) -> bool {
    matches!(
        route,
        "/v1/keys/{key}" | "/v1/keys/{key}/value" | "/v1/keys/batch" | "/openapi.json" | "/docs"
    )
}

/// Whether an `If-None-Match` member (`W/` already removed) names the entity `etag`
/// in any of its codings: `"<hex>"`, `"<hex>-gz"`, `"<hex>-zst"`.
pub fn entity_matches(candidate: &str, etag: &str) -> bool {
    let Some(open) = etag.strip_suffix('"') else {
        return candidate == etag;
    };
    candidate
        .strip_prefix(open)
        .is_some_and(|rest| matches!(rest, "\"" | "-gz\"" | "-zst\""))
}

/// The `ETag` of `etag`'s entity in `coding`.
pub fn coded_etag(etag: &HeaderValue, coding: Coding) -> HeaderValue {
    let suffix = coding.etag_suffix();
    let bytes = etag.as_bytes();
    match bytes.strip_suffix(b"\"") {
        Some(open) if !suffix.is_empty() => {
            let mut tagged = Vec::with_capacity(bytes.len() + suffix.len());
            tagged.extend_from_slice(open);
            tagged.extend_from_slice(suffix.as_bytes());
            tagged.push(b'"');
            HeaderValue::from_bytes(&tagged).unwrap_or_else(|_| etag.clone())
        }
        _ => etag.clone(),
    }
}

/// Step of `pipeline::finish`: `Vary` on every answer of a compressible route, and the
/// body of a compressible 200 in the coding the client prefers.
pub fn encode(settings: Compression, accept: Accept, route: &str, resp: &mut Response) {
    if !settings.enabled || !compressible_route(route) {
        return;
    }
    resp.headers_mut().append(VARY, VARY_ACCEPT_ENCODING);
    if resp.status() != StatusCode::OK
        || resp.headers().contains_key(CONTENT_ENCODING)
        || !resp
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(compressible_type)
    {
        return;
    }
    // Most clients (and every load balancer probe) accept no compressed coding: answer
    // them without taking the body out and putting it back. Identity at any length
    // means identity at this one (a shorter body only makes identity likelier).
    if accept.choose(settings, usize::MAX) == Coding::Identity {
        return;
    }
    let Some(body) = in_memory(resp) else { return };
    let coding = accept.choose(settings, body.len());
    let Some(token) = coding.token() else {
        resp.set_body(body);
        return;
    };
    match compress(coding, &body) {
        Ok(packed) => {
            resp.set_body(packed);
            let headers = resp.headers_mut();
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static(token));
            if let Some(etag) = headers.get(ETAG) {
                let tagged = coded_etag(etag, coding);
                headers.insert(ETAG, tagged);
            }
        }
        Err(err) => {
            // Writing into memory does not fail; if it did, identity is still right.
            tracing::warn!(error = %err, "compression failed; answering identity");
            resp.set_body(body);
        }
    }
}

/// `application/json` (any parameters) and `text/plain`.
fn compressible_type(value: &HeaderValue) -> bool {
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json") || essence.eq_ignore_ascii_case("text/plain")
}

thread_local! {
    /// One zstd and one deflate state per worker thread, reset for each answer: making
    /// one costs more than compressing a small answer (measured: a fresh deflate state
    /// about 150 µs, a 1 KiB body with a reused one about 10).
    static ZSTD: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DEFLATE: RefCell<Option<flate2::Compress>> = const { RefCell::new(None) };
}

/// The gzip member header (RFC 1952): deflate, no name, no time, unknown OS.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

pub(super) fn compress(coding: Coding, body: &[u8]) -> std::io::Result<Bytes> {
    match coding {
        Coding::Identity => Ok(Bytes::copy_from_slice(body)),
        Coding::Gzip => DEFLATE.with(|slot| {
            let mut slot = slot.borrow_mut();
            let deflate = slot.get_or_insert_with(|| {
                flate2::Compress::new(flate2::Compression::new(GZIP_LEVEL), false)
            });
            deflate.reset();
            gzip(deflate, body)
        }),
        Coding::Zstd => ZSTD.with(|slot| {
            let mut slot = slot.borrow_mut();
            let compressor = match slot.as_mut() {
                Some(compressor) => compressor,
                None => slot.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL)?),
            };
            Ok(compressor.compress(body)?.into())
        }),
    }
}

/// One gzip member of `body`: header, raw deflate with the reset state `deflate`,
/// CRC-32 and length.
fn gzip(deflate: &mut flate2::Compress, body: &[u8]) -> std::io::Result<Bytes> {
    let mut out = Vec::with_capacity(body.len() / 2 + 64);
    out.extend_from_slice(&GZIP_HEADER);
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity());
        }
        let rest = body.get(deflate.total_in() as usize..).unwrap_or_default();
        let status = deflate
            .compress_vec(rest, &mut out, flate2::FlushCompress::Finish)
            .map_err(std::io::Error::other)?;
        if status == flate2::Status::StreamEnd {
            break;
        }
    }
    let mut crc = flate2::Crc::new();
    crc.update(body);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    // ISIZE is the length modulo 2^32 (RFC 1952 §2.3.1).
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    Ok(out.into())
}

/// The whole body of `resp`, taken out, if it is already in memory (an exact size and
/// its data ready on the first poll, as every body the compressible routes make). A
/// body that is not is put back as it was and `None` returned.
pub(super) fn in_memory(resp: &mut Response) -> Option<Bytes> {
    let mut body = BoxBody::from(resp.take_body());
    let hint = body.size_hint();
    let exact = hint.exact();
    let mut cx = Context::from_waker(Waker::noop());
    let first = match exact {
        Some(0) | None => None,
        Some(_) => match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => Some(frame),
            // An error frame cannot be put back; an empty answer is what hyper would
            // have sent after it anyway.
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => {
                resp.set_body(Body::empty());
                return None;
            }
            Poll::Pending => None,
        },
    };
    match first.map(Frame::into_data) {
        Some(Ok(data)) if Some(data.len() as u64) == exact => Some(data),
        first => {
            let first = first.and_then(Result::ok);
            resp.set_body(Body::from(BoxBody::new(Resumed { first, rest: body })));
            None
        }
    }
}

/// A body with its first data frame already read: that frame, then the rest.
struct Resumed {
    first: Option<Bytes>,
    rest: BoxBody,
}

impl HttpBody for Resumed {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn size_hint(&self) -> SizeHint {
        let first = self.first.as_ref().map_or(0, |b| b.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + first);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + first);
        }
        hint
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(field: &str) -> Accept {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_str(field).unwrap());
        Accept::of(&headers)
    }

    const ON: Compression = Compression {
        enabled: true,
        min_bytes: 1024,
    };

    #[test]
    fn qvalues() {
        assert_eq!(parse_qvalue("1"), Some(1000));
        assert_eq!(parse_qvalue("1.000"), Some(1000));
        assert_eq!(parse_qvalue("0.5"), Some(500));
        assert_eq!(parse_qvalue("0.125"), Some(125));
        assert_eq!(parse_qvalue("0"), Some(0));
        assert_eq!(parse_qvalue("1.5"), None);
        assert_eq!(parse_qvalue("0.1234"), None);
        assert_eq!(parse_qvalue("2"), None);
        assert_eq!(parse_qvalue("x"), None);
    }

    #[test]
    fn negotiation() {
        let big = 4096;
        assert_eq!(Accept::default().choose(ON, big), Coding::Identity);
        assert_eq!(accept("").choose(ON, big), Coding::Identity);
        assert_eq!(accept("gzip").choose(ON, big), Coding::Gzip);
        assert_eq!(
            accept("gzip, deflate, br, zstd").choose(ON, big),
            Coding::Zstd
        );
        assert_eq!(accept("gzip, zstd;q=0.5").choose(ON, big), Coding::Gzip);
        assert_eq!(
            accept("zstd;q=0, gzip;q=0").choose(ON, big),
            Coding::Identity
        );
        assert_eq!(accept("*").choose(ON, big), Coding::Zstd);
        assert_eq!(
            accept("*;q=0.5, identity").choose(ON, big),
            Coding::Identity
        );
        assert_eq!(accept("br").choose(ON, big), Coding::Identity);
        assert_eq!(accept("GZIP;Q=0.8").choose(ON, big), Coding::Gzip);
        assert_eq!(accept("x-gzip").choose(ON, big), Coding::Gzip);
        assert_eq!(accept("gzip;q=bad").choose(ON, big), Coding::Identity);
        assert_eq!(
            accept("gzip;q=0.5, identity;q=0.8").choose(ON, big),
            Coding::Identity
        );
        assert_eq!(
            accept("gzip;q=0.8, identity;q=0.5").choose(ON, big),
            Coding::Gzip
        );
        // Small answers stay identity unless identity is refused.
        assert_eq!(accept("gzip, zstd").choose(ON, 100), Coding::Identity);
        assert_eq!(accept("gzip, identity;q=0").choose(ON, 100), Coding::Gzip);
        assert_eq!(accept("*;q=0, zstd").choose(ON, 100), Coding::Zstd);
        // Nothing acceptable: identity rather than 406.
        assert_eq!(accept("br, identity;q=0").choose(ON, big), Coding::Identity);
        assert_eq!(
            accept("zstd").choose(Compression::OFF, big),
            Coding::Identity
        );
    }

    #[test]
    fn etags_per_coding() {
        let etag = HeaderValue::from_static("\"abc\"");
        assert_eq!(coded_etag(&etag, Coding::Zstd), "\"abc-zst\"");
        assert_eq!(coded_etag(&etag, Coding::Gzip), "\"abc-gz\"");
        assert_eq!(coded_etag(&etag, Coding::Identity), "\"abc\"");
        for candidate in ["\"abc\"", "\"abc-gz\"", "\"abc-zst\""] {
            assert!(entity_matches(candidate, "\"abc\""), "{candidate}");
        }
        for candidate in ["\"abc-br\"", "\"abcd\"", "\"ab\"", "abc"] {
            assert!(!entity_matches(candidate, "\"abc\""), "{candidate}");
        }
    }

    #[test]
    fn round_trips() {
        let body = b"{\"key\":\"x\",\"value\":\"".repeat(200);
        let zst = compress(Coding::Zstd, &body).unwrap();
        assert_eq!(zstd::decode_all(&zst[..]).unwrap(), body);
        let gz = compress(Coding::Gzip, &body).unwrap();
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut out).unwrap();
        assert_eq!(out, body);
    }
}
