//! The `{key}` path parameter and the body every key lookup renders.

use std::borrow::Cow;
use std::marker::PhantomData;

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

/// What `escape_json` does with a byte: pass it on, write a two-character escape,
/// write `\u00XX`, or look at the UTF-8 sequence it starts.
const PASS: u8 = 0;
const UNICODE: u8 = b'u';
const MULTIBYTE: u8 = 0xff;

/// serde_json's table: `"` and `\`, the five control characters with a short form,
/// every other byte below 0x20 as `\u00XX`; bytes of 0x80 and up start (or continue)
/// a multi-byte character.
static ESCAPE: [u8; 256] = {
    let mut table = [PASS; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = UNICODE;
        byte += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    let mut byte = 0x80;
    while byte < 0x100 {
        table[byte] = MULTIBYTE;
        byte += 1;
    }
    table
};

/// Appends `value` to `out` as the contents of a JSON string (without the quotes),
/// straight from bytes: for UTF-8 input exactly what `serde_json` writes for the same
/// `&str` (the unit tests hold it to that for arbitrary strings).
///
/// The loader validated the file as UTF-8, but these bytes are not trusted to still
/// be: with `--storage mmap` a writer that ignores the lock can change the mapped
/// pages after the load. So each multi-byte character is checked where it stands (the
/// table sends ASCII, most of a typical value, through without it), and any sequence
/// that is not UTF-8 is written as U+FFFD, as `String::from_utf8_lossy` would: the
/// answer is always valid JSON, and never `&str` made from bytes that may not be text.
pub fn escape_json(out: &mut Vec<u8>, value: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    const REPLACEMENT: &[u8] = "\u{fffd}".as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < value.len() {
        let byte = value[i];
        match ESCAPE[byte as usize] {
            PASS => i += 1,
            MULTIBYTE => {
                let (len, valid) = utf8_sequence(&value[i..]);
                if !valid {
                    out.extend_from_slice(&value[start..i]);
                    out.extend_from_slice(REPLACEMENT);
                    start = i + len;
                }
                i += len;
            }
            escape => {
                out.extend_from_slice(&value[start..i]);
                match escape {
                    UNICODE => out.extend_from_slice(&[
                        b'\\',
                        b'u',
                        b'0',
                        b'0',
                        HEX[usize::from(byte >> 4)],
                        HEX[usize::from(byte & 0xf)],
                    ]),
                    short => out.extend_from_slice(&[b'\\', short]),
                }
                i += 1;
                start = i;
            }
        }
    }
    out.extend_from_slice(&value[start..]);
}

/// The character that `bytes` (non-empty, first byte 0x80 or above) starts with: its
/// length and whether it is valid UTF-8 (Unicode table 3-7: no overlong forms, no
/// surrogates, nothing above U+10FFFF). When it is not, the length is that of the
/// longest prefix that could have begun a valid character (at least 1), the unit
/// `String::from_utf8_lossy` replaces with one U+FFFD.
fn utf8_sequence(bytes: &[u8]) -> (usize, bool) {
    let lead = bytes[0];
    let (len, second) = match lead {
        0xc2..=0xdf => (2, 0x80..=0xbf),
        0xe0 => (3, 0xa0..=0xbf),
        0xe1..=0xec | 0xee..=0xef => (3, 0x80..=0xbf),
        0xed => (3, 0x80..=0x9f),
        0xf0 => (4, 0x90..=0xbf),
        0xf1..=0xf3 => (4, 0x80..=0xbf),
        0xf4 => (4, 0x80..=0x8f),
        _ => return (1, false),
    };
    for n in 1..len {
        let Some(&byte) = bytes.get(n) else {
            return (n, false);
        };
        let fits = if n == 1 {
            second.contains(&byte)
        } else {
            (0x80..=0xbf).contains(&byte)
        };
        if !fits {
            return (n, false);
        }
    }
    (len, true)
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

    fn escaped(value: &[u8]) -> String {
        let mut out = Vec::new();
        escape_json(&mut out, value);
        String::from_utf8(out).expect("the escaper writes UTF-8")
    }

    /// serde_json's rendering of the same text, without the quotes.
    fn serde_escaped(text: &str) -> String {
        let quoted = serde_json::to_string(text).unwrap();
        quoted[1..quoted.len() - 1].to_owned()
    }

    #[test]
    fn escapes_like_serde_json() {
        for text in [
            "",
            "plain",
            "\"\\/\u{8}\u{c}\n\r\t\u{0}\u{1f}\u{7f}",
            "é€𝄞\u{80}\u{7ff}\u{800}\u{ffff}\u{10000}\u{10ffff}",
            "\u{1}a\u{1}",
            "a\"",
        ] {
            assert_eq!(escaped(text.as_bytes()), serde_escaped(text), "{text:?}");
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_read_as_replacement_characters() {
        for bytes in [
            &b"\xff"[..],
            b"a\xc3",
            b"\xc3(",
            b"\xe2\x82",
            b"\xe2\x82(",
            b"\xed\xa0\x80",
            b"\xc0\xaf",
            b"\xe0\x80\xaf",
            b"\xf0\x80\x80\xaf",
            b"\xf4\x90\x80\x80",
            b"\xf8\x88\x80\x80\x80",
            b"\xf0\x9f\x98",
            b"\xf0\x9f\x98\"",
            b"\x80\x80\"\n",
        ] {
            let lossy = String::from_utf8_lossy(bytes);
            assert_eq!(escaped(bytes), serde_escaped(&lossy), "{bytes:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Every string, every character class: the same bytes as serde_json.
        #[test]
        fn any_text_escapes_like_serde_json(text in "(?s).{0,64}") {
            proptest::prop_assert_eq!(escaped(text.as_bytes()), serde_escaped(&text));
        }

        /// Control characters, quotes and backslashes densely, around non-ASCII.
        #[test]
        fn awkward_text_escapes_like_serde_json(text in "[\\x00-\\x1f\"\\\\\\x7fé€𝄞a ]{0,64}") {
            proptest::prop_assert_eq!(escaped(text.as_bytes()), serde_escaped(&text));
        }

        /// Any bytes at all: valid JSON, the text `String::from_utf8_lossy` makes of them.
        #[test]
        fn any_bytes_escape_like_their_lossy_text(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let lossy = String::from_utf8_lossy(&bytes);
            proptest::prop_assert_eq!(escaped(&bytes), serde_escaped(&lossy));
        }
    }
}
