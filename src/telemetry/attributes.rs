//! How long a span attribute's text may be. Much of what a request span records is
//! the client's to choose (`User-Agent`, the path and query, `Host`), and a request
//! head may be tens of KiB (more with larger head limits): kept whole, each queued
//! span would hold all of it. So every text value is cut to a limit, the standard
//! way: the OpenTelemetry variables `OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT` (spans
//! only) or, if that is not set, `OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT` (all signals),
//! in bytes.

use std::sync::LazyLock;

use opentelemetry::{Array, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::SpanData;

/// The limit when neither variable sets one (the specification's default is no
/// limit, which lets any client fill the queue with its headers). 1 KiB keeps every
/// value a well-behaved client sends whole: a browser's `User-Agent` is under 300
/// bytes, a key's path under 100; while a request span, whose client-chosen texts
/// are about five, stays within a few KiB, so a full default queue (2048 spans) holds
/// a few MiB, not the ~1 GiB whole heads would make it.
pub const DEFAULT_VALUE_LIMIT: usize = 1024;

/// The limit this process uses, read from the environment once.
pub fn value_limit() -> usize {
    static LIMIT: LazyLock<usize> = LazyLock::new(|| value_limit_from(|n| std::env::var(n).ok()));
    *LIMIT
}

/// The limit by the specification's precedence: the span-specific variable wins over
/// the general one. An unset, empty or invalid value (not a non-negative integer)
/// leaves the choice to the next, then to `DEFAULT_VALUE_LIMIT`, as the SDKs treat an
/// invalid setting. `var` reads a variable (the environment; a map in tests).
fn value_limit_from(var: impl Fn(&str) -> Option<String>) -> usize {
    [
        "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
        "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    ]
    .into_iter()
    .find_map(|name| var(name)?.trim().parse::<usize>().ok())
    .unwrap_or(DEFAULT_VALUE_LIMIT)
}

/// `text`'s longest prefix of at most `limit` bytes that ends on a character
/// boundary (so the result is valid UTF-8 and never longer than the limit).
pub fn cut(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `bytes` as text (invalid UTF-8 replaced), cut to `limit` bytes, reading no more
/// of `bytes` than the limit needs: a 100 KiB header is neither copied nor scanned.
pub fn cut_lossy(bytes: &[u8], limit: usize) -> String {
    // A character is at most 4 bytes, so one that reading stops inside began after
    // byte `limit`; decoding never shortens (a replacement is at least as long as
    // what it replaces), so its replacement lands after the limit and is cut away.
    let read = &bytes[..bytes.len().min(limit.saturating_add(4))];
    cut(&String::from_utf8_lossy(read), limit).to_owned()
}

/// Cuts every text value of the span (its attributes, its events' and its links'),
/// whoever made it: the request spans of `http::trace` and the load spans bridged
/// from `tracing` alike.
pub fn limit_span(span: &mut SpanData, limit: usize) {
    limit_values(&mut span.attributes, limit);
    for event in &mut span.events.events {
        limit_values(&mut event.attributes, limit);
    }
    for link in &mut span.links.links {
        limit_values(&mut link.attributes, limit);
    }
}

fn limit_values(attributes: &mut [KeyValue], limit: usize) {
    for attribute in attributes {
        match &mut attribute.value {
            Value::String(text) => limit_text(text, limit),
            Value::Array(Array::String(texts)) => {
                texts.iter_mut().for_each(|text| limit_text(text, limit));
            }
            _ => {}
        }
    }
}

fn limit_text(text: &mut StringValue, limit: usize) {
    if text.as_str().len() > limit {
        *text = StringValue::from(cut(text.as_str(), limit).to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::telemetry::tests::env;

    #[test]
    fn the_span_variable_wins_over_the_general_one() {
        let span = "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT";
        let general = "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT";
        assert_eq!(value_limit_from(env(&[])), DEFAULT_VALUE_LIMIT);
        assert_eq!(value_limit_from(env(&[(general, "100")])), 100);
        assert_eq!(
            value_limit_from(env(&[(general, "100"), (span, "200")])),
            200
        );
        assert_eq!(value_limit_from(env(&[(general, "100"), (span, "x")])), 100);
        assert_eq!(value_limit_from(env(&[(span, "-1")])), DEFAULT_VALUE_LIMIT);
        assert_eq!(value_limit_from(env(&[(span, " 0 ")])), 0);
    }

    #[test]
    fn text_is_cut_on_a_character_boundary() {
        assert_eq!(cut("abc", 5), "abc");
        assert_eq!(cut("abc", 2), "ab");
        assert_eq!(cut("aéé", 4), "aé");
        assert_eq!(cut("aéé", 3), "aé");
        assert_eq!(cut("aéé", 2), "a");
        assert_eq!(cut("é", 0), "");
    }

    #[test]
    fn bytes_are_decoded_then_cut() {
        assert_eq!(cut_lossy("aé€".as_bytes(), 100), "aé€");
        assert_eq!(cut_lossy("aé€".as_bytes(), 5), "aé");
        assert_eq!(cut_lossy(b"a\xffb", 4), "a\u{fffd}");
        assert_eq!(cut_lossy(b"a\xffb", 5), "a\u{fffd}b");
        let long = "é".repeat(50_000);
        assert_eq!(cut_lossy(long.as_bytes(), 7), "ééé");
    }

    #[test]
    fn every_text_value_of_a_span_is_cut() {
        let mut values = vec![
            KeyValue::new("long", "x".repeat(50)),
            KeyValue::new("short", "yes"),
            KeyValue::new("number", 123_456_789_i64),
            KeyValue::new(
                "list",
                Value::Array(Array::String(vec!["z".repeat(20).into(), "ok".into()])),
            ),
        ];
        limit_values(&mut values, 8);
        assert_eq!(values[0].value.as_str(), "x".repeat(8));
        assert_eq!(values[1].value.as_str(), "yes");
        assert_eq!(values[2].value, Value::I64(123_456_789));
        assert_eq!(values[3].value.as_str(), "[\"zzzzzzzz\",\"ok\"]");
    }
}
