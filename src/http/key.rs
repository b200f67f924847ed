//! The `{key}` path parameter and the body every key lookup renders.

use std::borrow::Cow;
use std::marker::PhantomData;

use bytes::Bytes;
use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{ParseFromParameter, ParseResult, Type};
use uuid::Uuid;

use crate::json::escape_json;

/// A key present in `data/sample.data`, so "Try it out" in Swagger UI finds a value.
pub const EXAMPLE_KEY: &str = "72cf48f7-d604-4423-b012-4e2329f5117b";

/// The `{key}` path segment exactly as the client sent it.
///
/// Parsing it never fails at extraction time: the handler parses it so that each route
/// family answers a bad key in its own contract (problem+json on `/v1`, FastAPI's 422 on
/// the legacy route) instead of poem-openapi's generic 400.
/// `S` says in the spec which keys the route takes (`AnyVersion` on `/v1`,
/// `Version4` on the legacy route); the handler still parses and refuses by itself.
pub struct KeyParam<S = AnyVersion>(pub String, PhantomData<S>);

/// How a route's key is described in the OpenAPI document.
pub trait KeySchema: Send + Sync + 'static {
    fn schema() -> MetaSchema;
}

/// `/v1`: any UUID, in any form the `uuid` crate parses.
pub struct AnyVersion;

impl KeySchema for AnyVersion {
    fn schema() -> MetaSchema {
        MetaSchema {
            description: Some(
                "A UUID in any form the `uuid` crate parses (hyphenated, simple, braced, \
                 urn:uuid:), any case.",
            ),
            example: Some(EXAMPLE_KEY.into()),
            ..MetaSchema::new_with_format("string", "uuid")
        }
    }
}

/// The legacy route: a version-4 UUID of the RFC 9562 variant, as the old service's
/// pydantic `UUID4` took it. A pattern, not `format: uuid`, so that a client or a
/// generator of test requests knows other versions are refused (422 `uuid_version`).
pub struct Version4;

/// The hyphenated form of a version-4, RFC 9562 variant UUID, any case.
const V4_HYPHENATED: &str =
    "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-4[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}";

impl KeySchema for Version4 {
    fn schema() -> MetaSchema {
        let simple = "[0-9a-fA-F]{12}4[0-9a-fA-F]{3}[89abAB][0-9a-fA-F]{15}";
        let hyphenated = V4_HYPHENATED;
        MetaSchema {
            description: Some(
                "A version-4 UUID (RFC 9562 variant), hyphenated, simple, braced or \
                 urn:uuid:, any case; other versions get 422 `uuid_version`.",
            ),
            example: Some(EXAMPLE_KEY.into()),
            pattern: Some(format!(
                "^(?:{hyphenated}|{simple}|\\{{{hyphenated}\\}}|urn:uuid:{hyphenated})$"
            )),
            ..MetaSchema::new("string")
        }
    }
}

/// The URN prefix of a UUID (RFC 9562), as the `uuid` crate spells it.
const URN_PREFIX: &str = "urn:uuid:";

/// A `/v1` key or batch key: every form the `uuid` crate parses, in any case, the
/// `urn:uuid:` prefix included. The crate takes that prefix in lowercase only, but a
/// URN's `urn:` and its namespace are case-insensitive (RFC 8141 section 3.1), and
/// docs/API.md promises any case. (The legacy route keeps the old service's parser,
/// which refused `URN:UUID:` too.)
pub fn parse_key(text: &str) -> Result<Uuid, uuid::Error> {
    match text.get(..URN_PREFIX.len()) {
        Some(prefix) if prefix != URN_PREFIX && prefix.eq_ignore_ascii_case(URN_PREFIX) => {
            // Same length, same errors: only the prefix's case changes.
            let lowered = format!("{URN_PREFIX}{}", &text[URN_PREFIX.len()..]);
            Uuid::parse_str(&lowered)
        }
        _ => Uuid::parse_str(text),
    }
}

impl<S: KeySchema> Type for KeyParam<S> {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "key".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(S::schema()))
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(std::iter::once(self))
    }
}

impl<S: KeySchema> ParseFromParameter for KeyParam<S> {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        Ok(Self(value.to_owned(), PhantomData))
    }
}

/// `{"key":"<lowercase hyphenated>","value":"<text>"}`, compact, non-ASCII unescaped:
/// the exact bytes FastAPI's `JSONResponse` wrote, so `/v1` and the legacy route share
/// one rendering (and one cache entry).
pub fn render_key_value(key: Uuid, value: &[u8]) -> Bytes {
    let mut buf = Uuid::encode_buffer();
    let key = key.hyphenated().encode_lower(&mut buf);
    let mut out = Vec::with_capacity(value.len() + 64);
    out.extend_from_slice(b"{\"key\":\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\",\"value\":\"");
    escape_json(&mut out, value);
    out.extend_from_slice(b"\"}");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_fastapi() {
        let key = Uuid::parse_str(EXAMPLE_KEY).unwrap();
        assert_eq!(
            render_key_value(key, "a \"q\" é\n\u{1}".as_bytes()),
            Bytes::from_static(
                b"{\"key\":\"72cf48f7-d604-4423-b012-4e2329f5117b\",\"value\":\"a \\\"q\\\" \xc3\xa9\\n\\u0001\"}"
            )
        );
    }
}
