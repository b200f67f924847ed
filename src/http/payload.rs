//! poem-openapi payloads for bodies kvserve renders itself.
//!
//! poem-openapi's `Json<T>` goes through `serde_json::Value` for every response; these
//! types carry bytes rendered once (and possibly cached) while still giving the spec
//! the right content type and schema.

use std::marker::PhantomData;

use bytes::Bytes;
use poem::http::{header, HeaderValue};
use poem::{IntoResponse, Response};
use poem_openapi::payload::Payload;
use poem_openapi::registry::{MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::types::{ToHeader, Type};

use super::problem::{self, Problem};

/// A JSON body already rendered to bytes, documented with the schema of `T`.
pub struct RawJson<T> {
    body: Bytes,
    _schema: PhantomData<fn() -> T>,
}

impl<T> RawJson<T> {
    pub fn new(body: impl Into<Bytes>) -> Self {
        Self {
            body: body.into(),
            _schema: PhantomData,
        }
    }
}

impl<T: Type> Payload for RawJson<T> {
    const CONTENT_TYPE: &'static str = "application/json";

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Send> IntoResponse for RawJson<T> {
    fn into_response(self) -> Response {
        Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(self.body)
    }
}

/// An `application/problem+json` body (RFC 9457).
pub struct ProblemJson(pub Problem);

impl Payload for ProblemJson {
    const CONTENT_TYPE: &'static str = problem::CONTENT_TYPE;

    fn schema_ref() -> MetaSchemaRef {
        Problem::schema_ref()
    }

    fn register(registry: &mut Registry) {
        Problem::register(registry);
    }
}

impl IntoResponse for ProblemJson {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

impl From<Problem> for ProblemJson {
    fn from(problem: Problem) -> Self {
        Self(problem)
    }
}

/// A raw value as `text/plain; charset=utf-8`, a zero-copy slice of the dataset.
pub struct TextValue(pub Bytes);

impl Payload for TextValue {
    const CONTENT_TYPE: &'static str = "text/plain; charset=utf-8";

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            example: Some("zsda pl focnygogk x cjuu".into()),
            ..MetaSchema::new("string")
        }))
    }
}

impl IntoResponse for TextValue {
    fn into_response(self) -> Response {
        Response::builder()
            .header(header::CONTENT_TYPE, Self::CONTENT_TYPE)
            .body(self.0)
    }
}

/// A response header value made once (an `ETag`, a `Cache-Control`), documented in the
/// spec as a string: the operations hand it to poem-openapi without a `String` copy per
/// request.
pub struct HeaderText(pub HeaderValue);

impl Type for HeaderText {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> std::borrow::Cow<'static, str> {
        "string".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        String::schema_ref()
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

impl ToHeader for HeaderText {
    fn to_header(&self) -> Option<HeaderValue> {
        Some(self.0.clone())
    }
}
