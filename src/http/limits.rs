//! Load shedding and request limits, checked before any parsing or routing: URI
//! length, header block size, declared body size, concurrent requests (`--max-in-flight`) and time per
//! request (`--request-timeout`). Each refusal is problem+json, so a client under
//! load sees why and when to retry.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use poem::http::{header, HeaderMap, Uri};
use poem::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::problem::{Problem, ProblemKind};

#[derive(Debug, Clone)]
pub struct LimitSettings {
    pub max_uri_bytes: usize,
    /// `--max-header-bytes`: every field line's name and value together.
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    pub max_in_flight: Option<usize>,
    pub request_timeout: Option<Duration>,
}

/// The limits of one listener, checked by the admission pipeline on both paths (one
/// `--max-in-flight` budget for both).
pub struct RequestLimits {
    settings: LimitSettings,
    in_flight: Option<Arc<Semaphore>>,
}

impl RequestLimits {
    pub fn new(settings: LimitSettings) -> Self {
        let in_flight = settings.max_in_flight.map(|n| Arc::new(Semaphore::new(n)));
        Self {
            settings,
            in_flight,
        }
    }

    /// Checks what can be checked from the request head, and takes an in-flight slot
    /// that the caller holds until the answer is built. `Err` is the refusal to send.
    pub fn admit(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<Option<OwnedSemaphorePermit>, Box<Response>> {
        let uri_len = uri.path_and_query().map_or(0, |p| p.as_str().len());
        if uri_len > self.settings.max_uri_bytes {
            return Err(Box::new(
                Problem::new(
                    ProblemKind::UriTooLong,
                    format!(
                        "the request target is {uri_len} bytes; at most {} are accepted",
                        self.settings.max_uri_bytes
                    ),
                )
                .into_response(),
            ));
        }
        // As an HTTP/1.1 head spells them: `name: value` and CRLF per field line. The
        // head buffer (`http::server`) already bounds what a head can hold; this makes
        // the flag exact, whatever the target's length.
        let header_bytes: usize = headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        if header_bytes > self.settings.max_header_bytes {
            return Err(Box::new(
                Problem::new(
                    ProblemKind::HeadersTooLarge,
                    format!(
                        "the request's header fields are {header_bytes} bytes; at most {} are \
                         accepted (--max-header-bytes)",
                        self.settings.max_header_bytes
                    ),
                )
                .into_response(),
            ));
        }
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.settings.max_body_bytes as u64) {
            return Err(Box::new(
                Problem::new(
                    ProblemKind::BodyTooLarge,
                    format!(
                        "the request body is larger than {} bytes",
                        self.settings.max_body_bytes
                    ),
                )
                .into_response(),
            ));
        }
        match &self.in_flight {
            Some(semaphore) => match semaphore.clone().try_acquire_owned() {
                Ok(permit) => Ok(Some(permit)),
                Err(_) => Err(Box::new(
                    Problem::new(
                        ProblemKind::Overloaded,
                        "too many requests in flight (--max-in-flight); retry shortly",
                    )
                    .into_response(),
                )),
            },
            None => Ok(None),
        }
    }

    /// Runs `answer` within `--request-timeout`, if set; past it the answer is a 503
    /// problem and `answer` is dropped.
    pub async fn within_timeout(&self, answer: impl Future<Output = Response>) -> Response {
        let Some(limit) = self.settings.request_timeout else {
            return answer.await;
        };
        match tokio::time::timeout(limit, answer).await {
            Ok(resp) => resp,
            Err(_) => Problem::new(
                ProblemKind::Timeout,
                format!(
                    "the request took longer than {} (--request-timeout)",
                    humantime::format_duration(limit)
                ),
            )
            .into_response(),
        }
    }
}
