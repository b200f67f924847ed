//! The `{key}` path parameter and the body every key lookup renders.

use std::borrow::Cow;

use bytes::Bytes;
use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{ParseFromParameter, ParseResult, Type};
use uuid::Uuid;

/// A key present in `data/sample.data`, so "Try it out" in Swagger UI finds a value.
pub const EXAMPLE_KEY: &str = "72cf48f7-d604-4423-b012-4e2329f5117b";

/// The `{key}` path segment exactly as the client sent it.
///
/// Parsing it never fails at extraction time: the handler parses it so that each route
/// family answers a bad key in its own contract (problem+json on `/v1`, FastAPI's 422 on
/// the legacy route) instead of poem-openapi's generic 400.
pub struct KeyParam(pub String);

impl KeyParam {
    /// Accepts every form the `uuid` crate parses: hyphenated, simple, braced, URN, any case.
    pub fn parse(&self) -> Result<Uuid, uuid::Error> {
        Uuid::parse_str(&self.0)
    }
}

impl Type for KeyParam {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "key".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            description: Some(
                "A UUID in any form the `uuid` crate parses (hyphenated, simple, braced, \
                 urn:uuid:), any case.",
            ),
            example: Some(EXAMPLE_KEY.into()),
            ..MetaSchema::new_with_format("string", "uuid")
        }))
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

impl ParseFromParameter for KeyParam {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        Ok(Self(value.to_owned()))
    }
}

#[derive(serde::Serialize)]
struct KeyValueBody<'a> {
    key: &'a str,
    value: &'a str,
}

/// `{"key":"<lowercase hyphenated>","value":"<text>"}`, compact, non-ASCII unescaped:
/// the exact bytes FastAPI's `JSONResponse` wrote, so `/v1` and the legacy route share
/// one rendering (and one cache entry).
pub fn render_key_value(key: Uuid, value: &str) -> Bytes {
    let mut buf = Uuid::encode_buffer();
    let key = key.hyphenated().encode_lower(&mut buf);
    let mut out = Vec::with_capacity(value.len() + 64);
    // Serializing two strings into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, &KeyValueBody { key, value });
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_fastapi() {
        let key = Uuid::parse_str(EXAMPLE_KEY).unwrap();
        assert_eq!(
            render_key_value(key, "a \"q\" é\n\u{1}"),
            Bytes::from_static(
                b"{\"key\":\"72cf48f7-d604-4423-b012-4e2329f5117b\",\"value\":\"a \\\"q\\\" \xc3\xa9\\n\\u0001\"}"
            )
        );
    }
}
