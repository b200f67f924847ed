//! The OpenAPI document (`/openapi.json`) and its viewer (`/docs`, Swagger UI with the
//! document inside): made once at start-up, shared by every answer, and compressed at
//! most once per coding.
//!
//! They are the largest answers kvserve gives (the viewer about 1.7 MB) and need no
//! token, so they must cost a client nothing per request: a clone is a reference count
//! on [`Bytes`], never a copy, whether the client reads at once or a byte a second; and
//! a compressed form is made by the first request that asks for it and kept (gzip of
//! the document costs about twenty times a small answer's whole CPU). Their answers are
//! marked [`Shared`] so the unsent-answer budget (`http::budget`) does not charge them.

use std::sync::OnceLock;

use bytes::Bytes;
use poem::http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use poem::http::HeaderValue;
use poem::{Request, Response};

use super::budget::Shared;
use super::encoding::{self, Accept, Coding, Compression};

/// One document in its identity form and its compressed forms once made.
pub struct Document {
    content_type: HeaderValue,
    compression: Compression,
    identity: Bytes,
    /// `None` inside: compressing failed once, and identity is answered instead.
    gzip: OnceLock<Option<Bytes>>,
    zstd: OnceLock<Option<Bytes>>,
}

impl Document {
    pub fn new(content_type: &'static str, body: String, compression: Compression) -> Self {
        Self {
            content_type: HeaderValue::from_static(content_type),
            compression,
            identity: Bytes::from(body),
            gzip: OnceLock::new(),
            zstd: OnceLock::new(),
        }
    }

    /// The answer to `req`, in the coding its `Accept-Encoding` prefers (the same choice
    /// `encoding::encode` makes for the other routes, which then leaves it as it is).
    pub fn answer(&self, req: &Request) -> Response {
        let coding = Accept::of(req.headers()).choose(self.compression, self.identity.len());
        let (body, token) = match self.coded(coding) {
            Some(body) => (body, coding.token()),
            None => (self.identity.clone(), None),
        };
        let mut resp = Response::builder()
            .header(CONTENT_TYPE, self.content_type.clone())
            .body(body);
        if let Some(token) = token {
            resp.headers_mut()
                .insert(CONTENT_ENCODING, HeaderValue::from_static(token));
        }
        resp.extensions_mut().insert(Shared);
        resp
    }

    /// The document in `coding`, made on first use; `None` for identity or if
    /// compressing failed.
    fn coded(&self, coding: Coding) -> Option<Bytes> {
        let slot = match coding {
            Coding::Identity => return None,
            Coding::Gzip => &self.gzip,
            Coding::Zstd => &self.zstd,
        };
        slot.get_or_init(|| match encoding::compress(coding, &self.identity) {
            Ok(packed) => Some(packed),
            Err(err) => {
                // Writing into memory does not fail; if it did, identity is still right.
                tracing::warn!(error = %err, "compressing a document failed; answering identity");
                None
            }
        })
        .clone()
    }
}
