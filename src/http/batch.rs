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
use serde_json::Value;
use uuid::Uuid;

use super::key::{escape_json, EXAMPLE_KEY};
use super::problem::{Problem, ProblemError, ProblemKind};
use super::state::HttpState;
use crate::dataset::Dataset;
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
pub fn parse_keys(body: &[u8], max_batch: usize) -> Result<Vec<Uuid>, Problem> {
    let invalid = |detail: String| Problem::new(ProblemKind::InvalidBody, detail);
    let value: Value = serde_json::from_slice(body)
        .map_err(|err| invalid(format!("the request body is not valid JSON: {err}")))?;
    let Value::Object(mut fields) = value else {
        return Err(invalid(
            "the request body must be a JSON object: {\"keys\": [\"<uuid>\", ...]}".to_owned(),
        ));
    };
    // Other fields are ignored, as the schema allows: a client may send more than
    // this version reads.
    let Some(keys) = fields.remove("keys") else {
        return Err(invalid("field `keys` is missing".to_owned()));
    };
    let Value::Array(keys) = keys else {
        return Err(invalid(
            "field `keys` must be an array of UUID strings".to_owned(),
        ));
    };
    if keys.len() > max_batch {
        return Err(Problem::new(
            ProblemKind::TooManyKeys,
            format!(
                "field `keys` holds {} keys; at most {max_batch} are allowed",
                keys.len()
            ),
        ));
    }
    let mut seen = HashSet::with_capacity(keys.len());
    let mut out = Vec::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        let Value::String(text) = key else {
            return Err(invalid(format!(
                "`keys[{i}]` must be a string, found {}",
                json_kind(key)
            )));
        };
        let key = Uuid::parse_str(text).map_err(|err| {
            Problem::new(
                ProblemKind::InvalidKey,
                format!("`keys[{i}]` is not a UUID: {err}"),
            )
        })?;
        if seen.insert(key) {
            out.push(key);
        }
    }
    Ok(out)
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `{"values":{...},"missing":[...]}` with keys in request order, compact, as
/// serde_json wrote it: one index probe per key, each value escaped straight from the
/// dataset's bytes (`key::escape_json`).
pub fn render(state: &AppState, dataset: &Dataset, keys: &[Uuid]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + keys.len() * 96);
    let mut missing = Vec::new();
    out.extend_from_slice(b"{\"values\":{");
    let mut first = true;
    for key in keys {
        let Some(value) = state.find(dataset, key.as_u128()) else {
            missing.push(*key);
            continue;
        };
        if !first {
            out.push(b',');
        }
        first = false;
        push_key(&mut out, key);
        out.extend_from_slice(b":\"");
        escape_json(&mut out, &value);
        out.push(b'"');
    }
    out.extend_from_slice(b"},\"missing\":[");
    for (i, key) in missing.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_key(&mut out, key);
    }
    out.extend_from_slice(b"]}");
    out
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
    }

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("application/json; charset=utf-8"));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
    }
}
