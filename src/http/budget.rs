//! What unsent answers may hold: a bound on the bytes of API answers that are made but
//! not yet taken by their clients.
//!
//! A client that asks and then reads slowly (or not at all) makes kvserve hold its
//! answer until the bytes leave, for as long as the connection lives. Answers made per
//! request (batches, uncached or compressed lookups) are private memory, so without a
//! bound a few hundred such clients hold gigabytes. Three things bound it:
//!
//! - the documents (`/openapi.json`, `/docs`) are made once and shared
//!   (`http::documents`): a reader of them holds a reference, not a copy, and is not
//!   charged here;
//! - one answer at a time per HTTP/1.1 connection, and no batch answer over
//!   `--max-answer-bytes` (`batch::render` refuses it with 413 before it grows past);
//! - every other answer over [`SMALL_ANSWER`] bytes is charged here, against
//!   `--max-unsent-bytes` for the whole listener, from the moment it is made until
//!   hyper has written (or dropped) its last byte. An answer that does not fit is
//!   replaced by a 503 with `Retry-After`, counted in
//!   `kvserve_http_answers_refused_total{reason="unsent_budget"}`.
//!
//! The charge is released when the answer's bytes are freed, not when its body is
//! finished: hyper pulls an in-memory body's one frame at once and keeps it queued
//! until the socket takes it, so the body's end says nothing about the memory.
//! [`Bytes::from_owner`] ties the charge to the allocation's last reference instead.
//!
//! Answers of at most [`SMALL_ANSWER`] bytes are not charged: they are bounded by the
//! connection count (`--max-connections` × 16 KiB), and skipping them keeps the hot path
//! free of a shared counter.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Body as _;
use poem::{Body, IntoResponse, Response};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::encoding;
use super::problem::{Problem, ProblemKind};
use crate::metrics::MetricsError;

/// Answers up to this size are not charged (see the module docs).
pub const SMALL_ANSWER: usize = 16 * 1024;

/// Why an answer was not sent, the `reason` label of
/// `kvserve_http_answers_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerRefusal {
    /// A batch answer over `--max-answer-bytes` (413).
    TooLarge,
    /// `--max-unsent-bytes` held by earlier answers (503).
    UnsentBudget,
}

impl AnswerRefusal {
    pub const ALL: [Self; 2] = [Self::TooLarge, Self::UnsentBudget];

    pub fn label(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::UnsentBudget => "unsent_budget",
        }
    }
}

/// A response extension marking a body as shared bytes made once (the documents),
/// which a reader holds by reference: not charged.
#[derive(Debug, Clone, Copy)]
pub struct Shared;

/// The API listener's budget of unsent answer bytes (`--max-unsent-bytes`).
pub struct AnswerBudget {
    limit: usize,
    held: Arc<Held>,
    refused_too_large: IntCounter,
    refused_budget: IntCounter,
}

/// The bytes charged now, shared with every charged answer still alive.
struct Held {
    bytes: AtomicUsize,
    gauge: IntGauge,
}

impl AnswerBudget {
    pub fn new(limit: usize, registry: &Registry) -> Result<Self, MetricsError> {
        let err = MetricsError::of;
        let gauge = IntGauge::new(
            "kvserve_http_unsent_bytes",
            "Bytes of API answers made but not yet written to their clients, counted \
             against --max-unsent-bytes (answers over 16 KiB; the documents are shared \
             and not counted)",
        )
        .map_err(err("kvserve_http_unsent_bytes"))?;
        let refused = IntCounterVec::new(
            Opts::new(
                "kvserve_http_answers_refused_total",
                "API answers not sent for their size, by reason (too_large: a batch \
                 answer over --max-answer-bytes, 413; unsent_budget: --max-unsent-bytes \
                 held by answers clients have not read yet, 503)",
            ),
            &["reason"],
        )
        .map_err(err("kvserve_http_answers_refused_total"))?;
        let limit_gauge = IntGauge::new(
            "kvserve_http_unsent_bytes_limit",
            "--max-unsent-bytes: the bytes unsent API answers may hold together",
        )
        .map_err(err("kvserve_http_unsent_bytes_limit"))?;
        limit_gauge.set(gauge_value(limit));
        registry
            .register(Box::new(gauge.clone()))
            .map_err(err("kvserve_http_unsent_bytes"))?;
        registry
            .register(Box::new(limit_gauge))
            .map_err(err("kvserve_http_unsent_bytes_limit"))?;
        registry
            .register(Box::new(refused.clone()))
            .map_err(err("kvserve_http_answers_refused_total"))?;
        let [too_large, budget] =
            AnswerRefusal::ALL.map(|r| refused.with_label_values(&[r.label()]));
        Ok(Self {
            limit,
            held: Arc::new(Held {
                bytes: AtomicUsize::new(0),
                gauge,
            }),
            refused_too_large: too_large,
            refused_budget: budget,
        })
    }

    /// Counts an answer refused for its size elsewhere (`batch::render`).
    pub fn count(&self, refusal: AnswerRefusal) {
        match refusal {
            AnswerRefusal::TooLarge => self.refused_too_large.inc(),
            AnswerRefusal::UnsentBudget => self.refused_budget.inc(),
        }
    }

    /// Step of `pipeline::finish`, after compression: charges `resp`'s body if it is
    /// large and not shared, or replaces `resp` with the 503 if the budget cannot hold
    /// it. Bodies not in memory cannot be measured and are left as they are (the API
    /// makes none).
    pub fn charge(&self, resp: &mut Response) {
        if resp.extensions().get::<Shared>().is_some() {
            return;
        }
        let body = encoding::BoxBody::from(resp.take_body());
        let size = body.size_hint().exact();
        resp.set_body(Body::from(body));
        let Some(size) = size.and_then(|size| usize::try_from(size).ok()) else {
            return;
        };
        if size <= SMALL_ANSWER {
            return;
        }
        if !self.reserve(size) {
            self.count(AnswerRefusal::UnsentBudget);
            *resp = self.refusal(size);
            return;
        }
        let charge = Charge {
            size,
            held: self.held.clone(),
        };
        match encoding::in_memory(resp) {
            Some(bytes) => resp.set_body(Bytes::from_owner(Charged {
                bytes,
                _charge: charge,
            })),
            // Not in memory after all: nothing to tie the charge to (dropped here).
            None => drop(charge),
        }
    }

    fn reserve(&self, size: usize) -> bool {
        let reserved = self
            .held
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(size).filter(|&total| total <= self.limit)
            });
        if reserved.is_ok() {
            self.held.gauge.add(gauge_value(size));
        }
        reserved.is_ok()
    }

    fn refusal(&self, size: usize) -> Response {
        // A 503: `Retry-After` comes with it (`Problem::into_response`).
        Problem::new(
            ProblemKind::Overloaded,
            format!(
                "answers not yet read by their clients hold the server's --max-unsent-bytes \
                 ({} bytes); this answer of {size} bytes does not fit, retry shortly",
                self.limit
            ),
        )
        .into_response()
    }
}

fn gauge_value(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// Bytes charged to the budget until dropped.
struct Charge {
    size: usize,
    held: Arc<Held>,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.held.bytes.fetch_sub(self.size, Ordering::AcqRel);
        self.held.gauge.sub(gauge_value(self.size));
    }
}

/// An answer's bytes and their charge, freed together (`Bytes::from_owner`).
struct Charged {
    bytes: Bytes,
    _charge: Charge,
}

impl AsRef<[u8]> for Charged {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}
