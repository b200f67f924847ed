//! At most one log line per interval for an event that can repeat as fast as clients
//! can make it (a failed `accept`, a failed TLS handshake): a flood must not turn
//! into a flood of log lines. The lines left out are counted, and the next line
//! written says how many; the metric of the event counts every one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one log line per this interval for a failure clients can repeat at will:
/// failed accepts (per listener), failed TLS handshakes (per listener).
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Lets one occurrence of an event be logged per `interval`.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    /// When a line was last let through, and the occurrences left out since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(left_out)` if this occurrence may be logged (`left_out`: how many were
    /// not since the last line), `None` if it is only counted.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (last, left_out) = &mut *state;
        match last {
            Some(at) if now.saturating_duration_since(*at) < self.interval => {
                *left_out += 1;
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(left_out))
            }
        }
    }
}

/// `text` cut to at most `max` characters (`…` marks a cut): an error's text can
/// carry what a client sent, and a log line should not carry kilobytes of it.
pub fn bounded(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => text.into(),
        Some((cut, _)) => format!("{}…", &text[..cut]).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_left_out() {
        let throttle = Throttle::new(Duration::from_secs(1));
        let start = Instant::now();
        assert_eq!(throttle.admit_at(start), Some(0));
        for ms in [1, 10, 999] {
            assert_eq!(throttle.admit_at(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(
            throttle.admit_at(start + Duration::from_millis(1000)),
            Some(3)
        );
        assert_eq!(throttle.admit_at(start + Duration::from_millis(1001)), None);
        assert_eq!(throttle.admit_at(start + Duration::from_secs(5)), Some(1));
    }

    #[test]
    fn bounded_cuts_on_characters() {
        assert_eq!(bounded("abc", 3), "abc");
        assert_eq!(bounded("abcd", 3), "abc…");
        assert_eq!(bounded("ééé€", 2), "éé…");
    }
}
