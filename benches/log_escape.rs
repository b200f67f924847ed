//! What escaping control characters costs the text access log (`kvserve::access`, on
//! by default, one event per request): the same event through the text fmt layer
//! into a sink, as before (tracing-subscriber's `DefaultFields`), through
//! `EscapingWriter` (logs to a pipe or file) and through `EscapedFields` (a terminal).
//!
//! `cargo bench --bench log_escape` (about a minute). The machine is shared and noisy,
//! so the three run interleaved, in rotating order, many short rounds, timed in thread
//! CPU time; the figure to read is the median of each round's ratio to "before".

use std::net::SocketAddr;

use kvserve::telemetry::escape::{EscapedFields, EscapingWriter};
use tracing_subscriber::layer::SubscriberExt;

/// `request_log::Client`: the peer address, formatted when the event is.
struct Client(Option<SocketAddr>);

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// `n` events shaped like `request_log::Access::finish`'s.
fn events(n: u64) {
    let client = Client("127.0.0.1:54321".parse().ok());
    let (method, id) = ("GET", "57e3c3d6-000000000abc");
    for i in 0..n {
        tracing::info!(
            target: "kvserve::access",
            method = %method,
            route = "/v1/keys/{key}",
            status = 200u16,
            duration_us = 37 + (i & 7),
            request_id = %id,
            client = %client,
            "request"
        );
    }
}

fn thread_cpu_ns() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64
}

/// CPU nanoseconds per event for one way of writing text logs.
fn per_event(way: usize, n: u64) -> f64 {
    let layer = tracing_subscriber::fmt::layer().with_ansi(false);
    let start = thread_cpu_ns();
    match way {
        0 => tracing::subscriber::with_default(
            tracing_subscriber::registry().with(layer.with_writer(std::io::sink)),
            || events(n),
        ),
        1 => tracing::subscriber::with_default(
            tracing_subscriber::registry()
                .with(layer.with_writer(|| EscapingWriter(std::io::sink()))),
            || events(n),
        ),
        _ => tracing::subscriber::with_default(
            tracing_subscriber::registry()
                .with(layer.fmt_fields(EscapedFields).with_writer(std::io::sink)),
            || events(n),
        ),
    }
    (thread_cpu_ns() - start) / n as f64
}

fn main() {
    const WAYS: [&str; 3] = [
        "before (DefaultFields)",
        "EscapingWriter (pipe, file)",
        "EscapedFields (terminal)",
    ];
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this unoptimised
    // only to see that it works, where the full run would take minutes of CI.
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let (n, rounds) = if measuring { (20_000, 300) } else { (100, 2) };
    let mut times = vec![Vec::new(); WAYS.len()];
    let mut ratios = vec![Vec::new(); WAYS.len()];
    for way in 0..WAYS.len() {
        per_event(way, n);
    }
    for round in 0..rounds {
        let mut t = [0.0; WAYS.len()];
        for k in 0..WAYS.len() {
            let way = (k + round) % WAYS.len();
            t[way] = per_event(way, n);
        }
        for way in 0..WAYS.len() {
            times[way].push(t[way]);
            ratios[way].push(t[way] / t[0]);
        }
    }
    let quantile = |v: &mut Vec<f64>, q: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q) as usize]
    };
    for (way, name) in WAYS.iter().enumerate() {
        let (t, r) = (&mut times[way], &mut ratios[way]);
        println!(
            "{name:28} {:5.0} ns/event (p25 {:.0}, p75 {:.0}); ratio to before: median {:.3} (p25 {:.3}, p75 {:.3})",
            quantile(t, 0.5),
            quantile(t, 0.25),
            quantile(t, 0.75),
            quantile(r, 0.5),
            quantile(r, 0.25),
            quantile(r, 0.75),
        );
    }
}
