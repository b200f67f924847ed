//! `POST /v1/keys/batch`: the request body, its validation and the rendered answer.
//!
//! The body is parsed by hand rather than through poem-openapi's `Json<T>` so that
//! every refusal names the field and index at fault (`keys[3]`) and none quotes a Rust
//! type name.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use poem::error::ReadBodyError;
use poem::{Request, RequestBody};
use poem_openapi::registry::{MetaMediaType, MetaRequest, Registry};
use poem_openapi::types::{Example, Type};
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions, Object};
use uuid::Uuid;

use super::key::EXAMPLE_KEY;
use super::problem::{Problem, ProblemError, ProblemKind};
use super::state::HttpState;
use crate::dataset::Dataset;
use crate::json::escape_json;
use crate::state::AppState;

/// The request body of a batch lookup.
#[derive(Object)]
#[oai(example)]
pub struct BatchRequest {
    /// Keys in any UUID form; at most 1000 (`--max-batch`).
    pub keys: Vec<Uuid>,
}

impl Example for BatchRequest {
    fn example() -> Self {
        Self {
            keys: vec![
                Uuid::parse_str(EXAMPLE_KEY).unwrap_or_default(),
                Uuid::nil(),
            ],
        }
    }
}

/// The answer of a batch lookup.
#[derive(Object)]
#[oai(example)]
pub struct BatchResult {
    /// The value of every key found, by canonical key.
    pub values: std::collections::BTreeMap<String, String>,
    /// The keys not found, canonical.
    pub missing: Vec<Uuid>,
}

impl Example for BatchResult {
    fn example() -> Self {
        Self {
            values: [(
                EXAMPLE_KEY.to_owned(),
                "zsda pl focnygogk x cjuu cmwrolqrmu wgdwxr".to_owned(),
            )]
            .into_iter()
            .collect(),
            missing: vec![Uuid::nil()],
        }
    }
}

/// The raw body of a batch request, read with the size limit applied while reading,
/// so a client cannot make the server buffer more than `--max-body-bytes`.
pub struct BatchBody(pub Bytes);

impl<'a> ApiExtractor<'a> for BatchBody {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        BatchRequest::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: Some("The keys to look up."),
            content: vec![MetaMediaType {
                content_type: "application/json",
                schema: BatchRequest::schema_ref(),
            }],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let refuse = |kind, detail: String| ProblemError(Problem::new(kind, detail));
        // The body must be declared JSON: a missing `Content-Type` is refused like a
        // wrong one (RFC 9110 15.5.16), as the spec's only request media type says.
        let unsupported = match request.headers().get(poem::http::header::CONTENT_TYPE) {
            None => Some("the request has no Content-Type; send application/json".to_owned()),
            Some(value) => match value.to_str() {
                Ok(content_type) if is_json(content_type) => None,
                Ok(content_type) => Some(format!(
                    "Content-Type `{content_type}` is not supported; send application/json"
                )),
                Err(_) => {
                    Some("the Content-Type header is not ASCII; send application/json".to_owned())
                }
            },
        };
        if let Some(detail) = unsupported {
            return Err(refuse(ProblemKind::UnsupportedMediaType, detail).into());
        }
        let limit = request
            .data::<Arc<HttpState>>()
            .map_or(1 << 20, |state| state.settings.max_body_bytes);
        let too_large = || {
            refuse(
                ProblemKind::BodyTooLarge,
                format!("the request body is larger than {limit} bytes"),
            )
        };
        let declared = request
            .headers()
            .get(poem::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(too_large().into());
        }
        match body.take()?.into_bytes_limit(limit).await {
            Ok(bytes) => Ok(Self(bytes)),
            Err(ReadBodyError::PayloadTooLarge) => Err(too_large().into()),
            Err(err) => Err(super::body::unread_body_problem(&err)
                .map(ProblemError)
                .unwrap_or_else(|| {
                    refuse(
                        ProblemKind::InvalidBody,
                        format!("the request body could not be read: {err}"),
                    )
                })
                .into()),
        }
    }
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Validates the body and returns its keys in order, duplicates folded.
///
/// The common case, `{"keys": ["<uuid>", ...]}` with every key a UUID without JSON
/// escapes, is scanned by hand (`scan_keys`): each key is parsed from the body's bytes
/// where it lies, with no `serde_json` pass, no UTF-8 check and no string copied.
/// Anything else, including every refusal, is parsed again by `parse_keys_reference`, the
/// one place the error texts come from: both accept the same bodies with the same keys
/// (the unit tests hold them to it), and the slow one is only paid for a body that is
/// refused or unusual (an escape in a key, another field, `"keys"` twice).
pub fn parse_keys(body: &[u8], max_batch: usize) -> Result<Vec<Uuid>, Problem> {
    match scan_keys(body, max_batch) {
        Some(keys) => Ok(keys),
        None => parse_keys_reference(body, max_batch),
    }
}

/// `Some` only for a body of exactly one field, `keys`, an array of at most
/// `max_batch` strings without escapes that are each a UUID in a form
/// `Uuid::parse_str` reads: a body `parse_keys_reference` accepts with the same keys.
/// `None` for anything else, which the reference parser then reads or refuses.
fn scan_keys(body: &[u8], max_batch: usize) -> Option<Vec<Uuid>> {
    let mut scan = Scan { body, at: 0 };
    scan.expect(b"{")?;
    scan.expect(b"\"keys\"")?;
    scan.expect(b":")?;
    scan.expect(b"[")?;
    let mut seen: HashSet<u128, ahash::RandomState> =
        HashSet::with_capacity_and_hasher(body.len() / 40, ahash::RandomState::new());
    let mut out = Vec::with_capacity(body.len() / 40);
    let mut count = 0usize;
    if scan.expect(b"]").is_none() {
        loop {
            count += 1;
            if count > max_batch {
                return None;
            }
            let key = scan.key()?;
            if seen.insert(key.as_u128()) {
                out.push(key);
            }
            if scan.expect(b",").is_none() {
                scan.expect(b"]")?;
                break;
            }
        }
    }
    scan.expect(b"}")?;
    scan.skip_space();
    (scan.at == body.len()).then_some(out)
}

/// A cursor over a batch body for `scan_keys`.
struct Scan<'a> {
    body: &'a [u8],
    at: usize,
}

impl Scan<'_> {
    /// Skips JSON's whitespace (space, tab, line feed, carriage return; not the form
    /// feed `trim_ascii` would also take).
    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.body.get(self.at) {
            self.at += 1;
        }
    }

    /// Whitespace, then `token`.
    fn expect(&mut self, token: &[u8]) -> Option<()> {
        self.skip_space();
        let rest = self.body.get(self.at..)?;
        rest.starts_with(token).then(|| self.at += token.len())
    }

    /// Whitespace, then a string without escapes holding a UUID.
    fn key(&mut self) -> Option<Uuid> {
        self.expect(b"\"")?;
        let rest = self.body.get(self.at..)?;
        let len = memchr::memchr(b'"', rest)?;
        let text = &rest[..len];
        // An escape means the key's text is not its bytes: the reference parser decodes it.
        if text.contains(&b'\\') {
            return None;
        }
        self.at += len + 1;
        Uuid::try_parse_ascii(text).ok()
    }
}

/// `parse_keys` by the rules alone: the reference, and the source of every refusal's
/// text.
///
/// serde_json checks first that the body is JSON, as `IgnoredAny`: that reads every
/// value without converting it, so what is valid JSON but no Rust value (`1e400`, a
/// lone surrogate escape such as `"\ud800"`) passes, and it keeps its own stack, so
/// nesting is bounded only by `--max-body-bytes`. (A `serde_json::Value` refused all
/// three, and the body was then called "not valid JSON".) The checked text is then
/// walked member by member (`Walk`): a member named twice is refused, since a proxy
/// that reads the first `keys` and kvserve reading the last would look up different
/// keys for one request (I-JSON, RFC 7493 section 2.3, requires unique names); other
/// members are skipped unread, as the schema allows more fields than this version
/// reads.
fn parse_keys_reference(body: &[u8], max_batch: usize) -> Result<Vec<Uuid>, Problem> {
    let invalid = |detail: String| Problem::new(ProblemKind::InvalidBody, detail);
    let text = std::str::from_utf8(body).map_err(|err| {
        invalid(format!(
            "the request body is not valid JSON: it is not UTF-8 (byte {})",
            err.valid_up_to()
        ))
    })?;
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map_err(|err| invalid(format!("the request body is not valid JSON: {err}")))?;
    let mut walk = Walk {
        text: text.as_bytes(),
        at: 0,
    };
    let members = walk.object().ok_or_else(|| {
        invalid("the request body must be a JSON object: {\"keys\": [\"<uuid>\", ...]}".to_owned())
    })?;
    let mut names: HashSet<Vec<u8>> = HashSet::with_capacity(members.len());
    let mut keys = None;
    for (name, value) in members {
        let name = decode_string(name)
            .ok_or_else(|| invalid("a member name could not be read".to_owned()))?;
        if names.contains(&name) {
            return Err(invalid(format!(
                "member `{}` appears more than once; send each member once",
                shown_name(&name)
            )));
        }
        if name == b"keys" {
            keys = Some(value);
        }
        names.insert(name);
    }
    let Some(keys) = keys else {
        return Err(invalid("field `keys` is missing".to_owned()));
    };
    let items = Walk { text: keys, at: 0 }
        .array()
        .ok_or_else(|| invalid("field `keys` must be an array of UUID strings".to_owned()))?;
    if items.len() > max_batch {
        return Err(Problem::new(
            ProblemKind::TooManyKeys,
            format!(
                "field `keys` holds {} keys; at most {max_batch} are allowed",
                items.len()
            ),
        ));
    }
    let mut seen = HashSet::with_capacity(items.len());
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if item.first() != Some(&b'"') {
            return Err(invalid(format!(
                "`keys[{i}]` must be a string, found {}",
                json_kind(item)
            )));
        }
        let not_a_key = |reason: &dyn std::fmt::Display| {
            Problem::new(
                ProblemKind::InvalidKey,
                format!("`keys[{i}]` is not a UUID: {reason}"),
            )
        };
        let decoded = decode_string(item).ok_or_else(|| not_a_key(&"it could not be read"))?;
        let text = std::str::from_utf8(&decoded)
            .map_err(|_| not_a_key(&"it holds a lone surrogate escape"))?;
        let key = super::key::parse_key(text).map_err(|err| not_a_key(&err))?;
        if seen.insert(key) {
            out.push(key);
        }
    }
    Ok(out)
}

/// A member name as a refusal shows it: at most 64 characters, escaped.
fn shown_name(name: &[u8]) -> String {
    let text = String::from_utf8_lossy(name);
    let mut shown: String = text.chars().take(64).flat_map(char::escape_debug).collect();
    if text.chars().nth(64).is_some() {
        shown.push('…');
    }
    shown
}

/// The kind of a JSON value, from its first byte (the value is valid JSON).
fn json_kind(value: &[u8]) -> &'static str {
    match value.first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        _ => "a number",
    }
}

/// A JSON string's text (quotes included) decoded to bytes: escapes resolved, a lone
/// surrogate escape kept as its three-byte WTF-8 form, so two names are the same
/// exactly when their decoded texts are. `None` only if `raw` is not a JSON string.
fn decode_string(raw: &[u8]) -> Option<Vec<u8>> {
    let inner = raw.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if !inner.contains(&b'\\') {
        return Some(inner.to_vec());
    }
    struct Bytes;
    impl serde::de::Visitor<'_> for Bytes {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
            Ok(bytes.to_vec())
        }
    }
    let mut de = serde_json::Deserializer::from_slice(raw);
    serde::Deserializer::deserialize_bytes(&mut de, Bytes).ok()
}

/// A cursor over a body serde_json has already checked, that finds where members and
/// array items begin and end without decoding them. It keeps no stack (nesting is
/// only counted), and on text that is not valid JSON it returns `None`, never panics.
struct Walk<'a> {
    text: &'a [u8],
    at: usize,
}

impl<'a> Walk<'a> {
    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.text.get(self.at) {
            self.at += 1;
        }
    }

    /// Whitespace, then `byte` if it comes next.
    fn eat(&mut self, byte: u8) -> bool {
        self.skip_space();
        let found = self.text.get(self.at) == Some(&byte);
        if found {
            self.at += 1;
        }
        found
    }

    /// The members of an object, each as (name, value) texts; `None` if the value
    /// here is not an object.
    fn object(&mut self) -> Option<Vec<(&'a [u8], &'a [u8])>> {
        if !self.eat(b'{') {
            return None;
        }
        let mut members = Vec::new();
        if self.eat(b'}') {
            return Some(members);
        }
        loop {
            let name = self.value()?;
            if !self.eat(b':') {
                return None;
            }
            members.push((name, self.value()?));
            if !self.eat(b',') {
                return self.eat(b'}').then_some(members);
            }
        }
    }

    /// The items of an array, as texts; `None` if the value here is not an array.
    fn array(&mut self) -> Option<Vec<&'a [u8]>> {
        if !self.eat(b'[') {
            return None;
        }
        let mut items = Vec::new();
        if self.eat(b']') {
            return Some(items);
        }
        loop {
            items.push(self.value()?);
            if !self.eat(b',') {
                return self.eat(b']').then_some(items);
            }
        }
    }

    /// Whitespace, then the text of one value.
    fn value(&mut self) -> Option<&'a [u8]> {
        self.skip_space();
        let start = self.at;
        match *self.text.get(start)? {
            b'"' => self.at = self.string_end(start)?,
            b'[' | b'{' => {
                let mut depth = 0usize;
                loop {
                    match *self.text.get(self.at)? {
                        b'"' => {
                            self.at = self.string_end(self.at)?;
                            continue;
                        }
                        b'[' | b'{' => depth += 1,
                        b']' | b'}' => {
                            depth = depth.checked_sub(1)?;
                            if depth == 0 {
                                self.at += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    self.at += 1;
                }
            }
            _ => {
                while let Some(byte) = self.text.get(self.at) {
                    if matches!(
                        byte,
                        b',' | b']' | b'}' | b':' | b' ' | b'\t' | b'\n' | b'\r'
                    ) {
                        break;
                    }
                    self.at += 1;
                }
            }
        }
        (self.at > start).then(|| &self.text[start..self.at])
    }

    /// Just past the string that opens at `start`.
    fn string_end(&self, start: usize) -> Option<usize> {
        let mut at = start + 1;
        loop {
            let found = at + memchr::memchr2(b'"', b'\\', self.text.get(at..)?)?;
            if self.text[found] == b'"' {
                return Some(found + 1);
            }
            at = found + 2;
        }
    }
}

/// How many keys ahead of the one being probed the batch prefetches index lines: enough
/// to keep several cache misses in flight (a core has about ten line-fill buffers),
/// few enough that the lines are still cached when their key's turn comes.
const PREFETCH_AHEAD: usize = 8;

/// `{"values":{...},"missing":[...]}` with keys in request order, compact, as
/// serde_json wrote it, into one buffer.
///
/// A batch's cost is its cache misses: each key's probe misses into the index and
/// each value's first read misses into the data. So the probes run `PREFETCH_AHEAD`
/// keys behind the index prefetches (`Dataset::prefetch`), each value found is
/// prefetched at once (`Dataset::prefetch_value`), and only after the last probe is
/// each value escaped straight from the dataset's bytes (`key::escape_json`). The
/// lookups are counted once per batch.
///
/// `Err` if the answer would be over `max_answer` bytes (`--max-answer-bytes`): a
/// client's few-kilobyte request must not make a gigabyte answer (each value may be
/// up to `--max-line-bytes`, and escaping a control character makes six bytes of one).
/// The values' plain length refuses at once; escaping is checked as the answer grows,
/// so the buffer never grows far past the limit.
pub fn render(
    state: &AppState,
    dataset: &Dataset,
    keys: &[Uuid],
    max_answer: usize,
) -> Result<Vec<u8>, Problem> {
    for key in keys.iter().take(PREFETCH_AHEAD) {
        dataset.prefetch(key.as_u128());
    }
    let starts: Vec<Option<usize>> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            if let Some(ahead) = keys.get(i + PREFETCH_AHEAD) {
                dataset.prefetch(ahead.as_u128());
            }
            let start = dataset.value_start(key.as_u128());
            if let Some(start) = start {
                dataset.prefetch_value(start);
            }
            start
        })
        .collect();
    let values: Vec<Option<&[u8]>> = starts
        .iter()
        .map(|start| start.map(|start| dataset.value_at(start)))
        .collect();
    let found = values.iter().flatten().count();
    state.count_lookups(found as u64, (values.len() - found) as u64);
    write_answer(keys, &values, max_answer).ok_or_else(|| {
        Problem::new(
            ProblemKind::AnswerTooLarge,
            format!(
                "the answer to these {} keys would be larger than {max_answer} bytes \
                 (--max-answer-bytes); ask for fewer keys at once",
                keys.len()
            ),
        )
    })
}

/// The answer for `keys` and their values (`None`: missing), in one pre-sized buffer;
/// `None` once it would be over `max` bytes.
fn write_answer(keys: &[Uuid], values: &[Option<&[u8]>], max: usize) -> Option<Vec<u8>> {
    // At least `{"values":{},"missing":[]}` and `"<key>":"<value>"` per value found,
    // so an answer this length already over `max` is refused before any allocation.
    let least: usize = 26 + values.iter().flatten().map(|v| v.len() + 41).sum::<usize>();
    if least > max {
        return None;
    }
    let mut out = Vec::with_capacity((least + keys.len() * 40).min(max));
    out.extend_from_slice(b"{\"values\":{");
    let mut first = true;
    for (key, value) in keys.iter().zip(values) {
        let Some(value) = value else {
            continue;
        };
        if !first {
            out.push(b',');
        }
        first = false;
        push_key(&mut out, key);
        out.extend_from_slice(b":\"");
        escape_json(&mut out, value);
        out.push(b'"');
        if out.len() > max {
            return None;
        }
    }
    out.extend_from_slice(b"},\"missing\":[");
    first = true;
    // Not `value.is_none()`: poem-openapi's `Type` (in scope) has an `is_none` of its
    // own, which method resolution picks for `&&Option` and which says false.
    for (key, _) in keys
        .iter()
        .zip(values)
        .filter(|(_, value)| Option::is_none(value))
    {
        if !first {
            out.push(b',');
        }
        first = false;
        push_key(&mut out, key);
    }
    out.extend_from_slice(b"]}");
    (out.len() <= max).then_some(out)
}

/// `"<lowercase hyphenated>"`: hex digits and hyphens, nothing to escape.
fn push_key(out: &mut Vec<u8>, key: &Uuid) {
    let mut buf = Uuid::encode_buffer();
    out.push(b'"');
    out.extend_from_slice(key.hyphenated().encode_lower(&mut buf).as_bytes());
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_duplicates_in_any_form() {
        let keys = parse_keys(
            format!(
                r#"{{"keys": ["{EXAMPLE_KEY}", "{}", "{{{EXAMPLE_KEY}}}"]}}"#,
                EXAMPLE_KEY.to_uppercase()
            )
            .as_bytes(),
            10,
        )
        .unwrap();
        assert_eq!(keys.len(), 1);
    }

    #[test]
    fn refusals_name_the_field() {
        let detail = |body: &str| parse_keys(body.as_bytes(), 2).unwrap_err().detail;
        assert!(detail("nope").contains("not valid JSON"));
        assert!(detail("[]").contains("JSON object"));
        assert!(detail("{}").contains("`keys` is missing"));
        assert!(detail(r#"{"keys": "x"}"#).contains("array"));
        assert!(detail(r#"{"keys": [1]}"#).contains("`keys[0]` must be a string, found a number"));
        assert!(detail(r#"{"keys": ["nope"]}"#).contains("`keys[0]` is not a UUID"));
        assert!(detail(r#"{"keys": ["a", "b", "c"]}"#).contains("at most 2"));
        assert!(parse_keys(br#"{"keys": [], "x": 1}"#, 2).is_ok());
        assert!(
            detail(r#"{"keys": [], "keys": []}"#).contains("member `keys` appears more than once")
        );
        assert!(detail(r#"{"keys": [], "k\u0065ys": []}"#)
            .contains("member `keys` appears more than once"));
        assert!(
            detail(r#"{"keys": [], "x": 1, "x": 2}"#).contains("member `x` appears more than once")
        );
        assert!(detail(r#"{"keys": ["\ud800"]}"#)
            .contains("`keys[0]` is not a UUID: it holds a lone surrogate"));
        assert!(
            detail(r#"{"keys": [1e400]}"#).contains("`keys[0]` must be a string, found a number")
        );
        let not_utf8 = parse_keys(b"{\"keys\": [\"\xff\"]}", 2).unwrap_err().detail;
        assert!(not_utf8.contains("not valid JSON"), "{not_utf8}");
    }

    /// Valid JSON that is no Rust value, in a member kvserve does not read, is ignored
    /// like any other; so is deep nesting (serde_json's `IgnoredAny` keeps its own
    /// stack) and a name with a lone surrogate.
    #[test]
    fn odd_but_valid_json_elsewhere_is_ignored() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        for other in [
            "1e400".to_owned(),
            "-1e-400".to_owned(),
            "123456789012345678901234567890".to_owned(),
            r#""\ud800""#.to_owned(),
            r#""\udc00\ud800x""#.to_owned(),
            r#"{"\ud800": 1, "\udc00": 2}"#.to_owned(),
            deep,
        ] {
            let body = format!(r#"{{"x": {other}, "keys": ["{EXAMPLE_KEY}"], "\ud800": {other}}}"#);
            assert_eq!(
                parse_keys(body.as_bytes(), 2).map_err(|p| p.detail),
                Ok(vec![Uuid::parse_str(EXAMPLE_KEY).unwrap()]),
                "{}",
                &body[..body.len().min(80)]
            );
        }
    }

    /// The old reference: through a `serde_json::Value`, last member winning. Where it
    /// reads a body (valid JSON that is also a Rust value) whose names are unique, the
    /// new reference must answer as it did.
    fn value_oracle(body: &[u8], max_batch: usize) -> Option<Result<Vec<Uuid>, String>> {
        use serde_json::Value;
        let value: Value = serde_json::from_slice(body).ok()?;
        let refuse = |_status: u16, detail: String| Some(Err(detail));
        let Value::Object(fields) = value else {
            return refuse(
                400,
                "the request body must be a JSON object: {\"keys\": [\"<uuid>\", ...]}".to_owned(),
            );
        };
        let Some(keys) = fields.get("keys") else {
            return refuse(400, "field `keys` is missing".to_owned());
        };
        let Value::Array(keys) = keys else {
            return refuse(
                400,
                "field `keys` must be an array of UUID strings".to_owned(),
            );
        };
        if keys.len() > max_batch {
            return refuse(
                400,
                format!(
                    "field `keys` holds {} keys; at most {max_batch} are allowed",
                    keys.len()
                ),
            );
        }
        let mut out = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let Value::String(text) = key else {
                let kind = match key {
                    Value::Null => "null",
                    Value::Bool(_) => "a boolean",
                    Value::Number(_) => "a number",
                    Value::String(_) => "a string",
                    Value::Array(_) => "an array",
                    Value::Object(_) => "an object",
                };
                return refuse(400, format!("`keys[{i}]` must be a string, found {kind}"));
            };
            match crate::http::key::parse_key(text) {
                Ok(key) if !out.contains(&key) => out.push(key),
                Ok(_) => {}
                Err(err) => return refuse(400, format!("`keys[{i}]` is not a UUID: {err}")),
            }
        }
        Some(Ok(out))
    }

    /// Key texts of every kind: canonical and other UUID forms of a few keys (so
    /// duplicates in other forms come up), JSON escapes in a key, near misses, other
    /// JSON types.
    fn key_item() -> impl proptest::strategy::Strategy<Value = String> + Clone {
        use proptest::prelude::*;
        let uuid = (0u8..4)
            .prop_map(|n| Uuid::from_u128(0x72cf48f7_d604_4423_b012_4e2329f5117b + u128::from(n)));
        prop_oneof![
            uuid.clone().prop_map(|k| format!("\"{k}\"")),
            uuid.clone()
                .prop_map(|k| format!("\"{}\"", k.to_string().to_uppercase())),
            uuid.clone().prop_map(|k| format!("\"{}\"", k.simple())),
            uuid.clone().prop_map(|k| format!("\"{}\"", k.braced())),
            uuid.clone().prop_map(|k| format!("\"{}\"", k.urn())),
            uuid.clone()
                .prop_map(|k| format!("\"\\u0037{}\"", &k.to_string()[1..])),
            uuid.prop_map(|k| format!("\"{}\"", &k.to_string()[1..])),
            Just("\"nope\"".to_owned()),
            Just("\"\\ud800\"".to_owned()),
            Just("\"\\ud800\\udc00\"".to_owned()),
            Just("1e400".to_owned()),
            Just("1".to_owned()),
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("[]".to_owned()),
            Just("{}".to_owned()),
        ]
    }

    /// Bodies around the shape `{"keys": [...]}`: other fields, `keys` twice, other
    /// types for `keys`, a different top level, truncation.
    fn body() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        // JSON's four whitespace bytes between the tokens, and the form feed, which
        // JSON does not allow.
        let space = prop_oneof![Just(""), Just(" "), Just("\t\r\n "), Just("\u{c}"),];
        let keys = (proptest::collection::vec(key_item(), 0..6), space.clone()).prop_map(
            |(items, space)| format!("[{space}{}{space}]", items.join(&format!("{space},"))),
        );
        let keys_value = prop_oneof![
            4 => keys.clone(),
            1 => Just("\"x\"".to_owned()),
            1 => Just("null".to_owned()),
            1 => Just("{}".to_owned()),
        ];
        // Valid JSON that is no Rust value, and deep nesting, in members not read.
        let odd = prop_oneof![
            Just("1".to_owned()),
            Just("1e400".to_owned()),
            Just("\"\\udc00\"".to_owned()),
            (1usize..300).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n))),
        ];
        let field = prop_oneof![
            3 => (keys_value, space).prop_map(|(v, space)| format!("\"keys\"{space}:{space}{v}")),
            1 => keys.clone().prop_map(|v| format!("\"k\\u0065ys\": {v}")),
            1 => odd.prop_map(|v| format!("\"x\": {v}")),
            1 => keys.clone().prop_map(|v| format!("\"other\": {v}")),
        ];
        let object = proptest::collection::vec(field, 0..3)
            .prop_map(|fields| format!("{{{}}}", fields.join(", ")));
        (prop_oneof![5 => object, 1 => keys], 0usize..3).prop_map(|(text, cut)| match cut {
            0 => text[..text.len() / 2].to_owned(),
            1 => format!(" {text} "),
            _ => text,
        })
    }

    /// serde_json's rendering of the answer, value by value: what the route wrote when
    /// it built the answer with serde.
    fn serde_answer(keys: &[Uuid], values: &[Option<String>]) -> Vec<u8> {
        let found: Vec<String> = keys
            .iter()
            .zip(values)
            .filter_map(|(key, value)| {
                let value = value.as_ref()?;
                Some(format!(
                    "{}:{}",
                    serde_json::to_string(&key.to_string()).unwrap(),
                    serde_json::to_string(value).unwrap()
                ))
            })
            .collect();
        let missing: Vec<String> = keys
            .iter()
            .zip(values)
            .filter(|(_, v)| Option::is_none(v))
            .map(|(k, _)| k.to_string())
            .collect();
        format!(
            "{{\"values\":{{{}}},\"missing\":{}}}",
            found.join(","),
            serde_json::to_string(&missing).unwrap()
        )
        .into_bytes()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

        /// The fast parser changes nothing: the same keys, or the same refusal, as
        /// the `Value` parser for every body.
        #[test]
        fn parses_like_the_value_parser(body in body(), max_batch in 0usize..6) {
            let fast = parse_keys(body.as_bytes(), max_batch);
            let reference = parse_keys_reference(body.as_bytes(), max_batch);
            match (fast, reference) {
                (Ok(fast), Ok(reference)) => proptest::prop_assert_eq!(fast, reference),
                (Err(fast), Err(reference)) => {
                    proptest::prop_assert_eq!(fast.detail, reference.detail);
                    proptest::prop_assert_eq!(fast.status, reference.status);
                    proptest::prop_assert_eq!(fast.kind_uri, reference.kind_uri);
                }
                (fast, reference) => proptest::prop_assert!(false, "{body}: {fast:?} vs {reference:?}"),
            }
        }

        /// Where the old `Value` reference read a body with unique member names, the
        /// answer is the same; a repeated name is refused, naming it.
        #[test]
        fn answers_like_the_value_parser_where_it_could_read(body in body(), max_batch in 0usize..6) {
            let got = parse_keys(body.as_bytes(), max_batch).map_err(|p| p.detail);
            let repeated = matches!(&got, Err(detail) if detail.contains("appears more than once"));
            if repeated {
                let named = body.matches("\"keys\"").count() + body.matches("\"k\\u0065ys\"").count() > 1
                    || body.matches("\"x\"").count() > 1
                    || body.matches("\"other\"").count() > 1;
                proptest::prop_assert!(named, "{body}: {got:?}");
            } else if let Some(old) = value_oracle(body.as_bytes(), max_batch) {
                proptest::prop_assert_eq!(got, old, "{}", body);
            }
        }

        /// The one-buffer answer is byte for byte serde_json's, for any keys and
        /// values (control characters, quotes, backslashes, non-ASCII).
        #[test]
        fn renders_like_serde_json(
            entries in proptest::collection::vec(
                (proptest::num::u128::ANY, proptest::option::of("[\\x00-\\x1f\"\\\\\\x7fé€𝄞a ]{0,12}|(?s).{0,12}")),
                0..20,
            ),
        ) {
            let keys: Vec<Uuid> = entries.iter().map(|(k, _)| Uuid::from_u128(*k)).collect();
            let values: Vec<Option<String>> = entries.iter().map(|(_, v)| v.clone()).collect();
            let borrowed: Vec<Option<&[u8]>> = values.iter().map(|v| v.as_deref().map(str::as_bytes)).collect();
            proptest::prop_assert_eq!(
                String::from_utf8(write_answer(&keys, &borrowed, usize::MAX).unwrap()).unwrap(),
                String::from_utf8(serde_answer(&keys, &values)).unwrap()
            );
        }
    }

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("application/json; charset=utf-8"));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
    }
}
