//! OpenTelemetry traces: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, the real binary
//! exports spans over OTLP/HTTP to a receiver running in this test, which decodes the
//! protobuf export requests the way a collector would.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use poem::web::Data;
use poem::{handler, post, Body, EndpointExt, Route, Server};
use prost::Message;

type Received = Arc<Mutex<Vec<ExportTraceServiceRequest>>>;

#[handler]
async fn receive(Data(received): Data<&Received>, body: Body) -> poem::Result<Vec<u8>> {
    let bytes = body.into_bytes().await?;
    let request = ExportTraceServiceRequest::decode(bytes).map_err(poem::error::BadRequest)?;
    received.lock().unwrap().push(request);
    Ok(Vec::new()) // an empty ExportTraceServiceResponse
}

/// An OTLP/HTTP receiver on 127.0.0.1:0 for the duration of the test.
fn start_receiver(runtime: &tokio::runtime::Runtime) -> (std::net::SocketAddr, Received) {
    let received = Received::default();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = poem::listener::TcpAcceptor::from_tokio(listener).unwrap();
    let app = Route::new()
        .at("/v1/traces", post(receive))
        .data(received.clone());
    runtime.spawn(Server::new_with_acceptor(acceptor).run(app));
    (addr, received)
}

fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()
}

fn string_attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attributes, key)? {
        AnyValue::StringValue(s) => Some(s),
        _ => None,
    }
}

/// The real binary on the sample data, exporting to `endpoint` every `delay_ms`, with
/// `env` added, once it is ready: every test here starts one so.
fn spawn_exporting(
    endpoint: &str,
    delay_ms: &str,
    env: &[(&str, &str)],
) -> (tempfile::TempDir, Process) {
    let dir = tempfile::tempdir().unwrap();
    let data = write_file(dir.path(), "t.data", sample_lines());
    let mut all_env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", delay_ms),
    ];
    all_env.extend_from_slice(env);
    let p = spawn_binary_with_env(&data, &[], &all_env);
    wait_until("ready", || http_status(p.admin, "/readyz") == Some(200));
    (dir, p)
}

/// SIGTERM, then a clean exit (which flushes the spans not yet sent).
fn stop_cleanly(mut p: Process) {
    sigterm(&p.child);
    assert_eq!(
        wait_exit(&mut p.child, Duration::from_secs(15)).code(),
        Some(0),
        "{}",
        p.log()
    );
}

#[test]
fn request_and_load_spans_reach_an_otlp_receiver_with_the_callers_trace() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (receiver, received) = start_receiver(&runtime);
    let (_dir, p) = spawn_exporting(&format!("http://{receiver}"), "100", &[]);

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let client = reqwest::blocking::Client::new();
    let resp = client
        .get(format!("http://{}/v1/keys/{KEY}", p.api))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let log = p.log();
    stop_cleanly(p);

    let received = received.lock().unwrap();
    let mut spans: Vec<&Span> = Vec::new();
    for request in received.iter() {
        for resource in &request.resource_spans {
            let attrs = &resource.resource.as_ref().unwrap().attributes;
            assert_eq!(string_attr(attrs, "service.name"), Some("kvserve"));
            spans.extend(resource.scope_spans.iter().flat_map(|s| s.spans.iter()));
        }
    }
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let request = spans
        .iter()
        .find(|s| string_attr(&s.attributes, "http.route") == Some("/v1/keys/{key}"))
        .unwrap_or_else(|| panic!("no request span among {names:?}\n{log}"));
    assert_eq!(request.name, "GET /v1/keys/{key}");
    assert_eq!(request.kind, SpanKind::Server as i32);
    assert_eq!(
        hex(&request.trace_id),
        trace_id,
        "the caller's trace continues"
    );
    assert_eq!(hex(&request.parent_span_id), caller_span);
    assert!(
        matches!(
            attr(&request.attributes, "http.response.status_code"),
            Some(AnyValue::IntValue(200))
        ),
        "{:?}",
        request.attributes
    );
    assert!(
        names.contains(&"load") && names.contains(&"reload"),
        "load spans: {names:?}"
    );
    let load = spans.iter().find(|s| s.name == "load").unwrap();
    let reload = spans.iter().find(|s| s.name == "reload").unwrap();
    assert_eq!(
        load.parent_span_id, reload.span_id,
        "the load is part of its reload"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A collector that cannot be reached never fails or holds up a request: the spans it
/// misses are dropped, counted in `kvserve_trace_spans_dropped_total`, and warned
/// about once, however many batches fail.
#[test]
fn an_unreachable_collector_drops_and_counts_spans_and_warns_once() {
    // A port that was just free: connections to it are refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (_dir, p) = spawn_exporting(&format!("http://{closed}"), "50", &[]);
    let client = reqwest::blocking::Client::new();
    let dropped = || {
        let text = client
            .get(format!("http://{}/metrics", p.admin))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("kvserve_trace_spans_dropped_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Several rounds, each its own failed batch (the schedule delay is 50 ms).
    for _ in 0..3 {
        for _ in 0..10 {
            let resp = client
                .get(format!("http://{}/v1/keys/{KEY}", p.api))
                .send()
                .unwrap();
            assert_eq!(resp.status(), 200);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    wait_until("30 request spans counted as dropped", || dropped() >= 30.0);
    let log = p.log();
    assert_eq!(
        log.matches("trace spans dropped").count(),
        1,
        "one warning a minute at most:\n{log}"
    );
    stop_cleanly(p);
}

/// Runs the real binary exporting to an in-test receiver with `env` added, sends
/// `traceparents.len()` GETs (each with that `traceparent`, or none), stops it and
/// returns the request spans the receiver got.
fn request_spans(env: &[(&str, &str)], traceparents: &[Option<String>]) -> Vec<Span> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (receiver, received) = start_receiver(&runtime);
    let (_dir, p) = spawn_exporting(&format!("http://{receiver}"), "100", env);
    let client = reqwest::blocking::Client::new();
    for traceparent in traceparents {
        let mut req = client.get(format!("http://{}/v1/keys/{KEY}", p.api));
        if let Some(traceparent) = traceparent {
            req = req.header("traceparent", traceparent);
        }
        assert_eq!(req.send().unwrap().status(), 200);
    }
    stop_cleanly(p);
    let received = received.lock().unwrap();
    received
        .iter()
        .flat_map(|r| r.resource_spans.iter())
        .flat_map(|r| r.scope_spans.iter())
        .flat_map(|s| s.spans.iter())
        .filter(|s| string_attr(&s.attributes, "http.route").is_some())
        .cloned()
        .collect()
}

/// The default sampler is `parentbased_always_on`: a caller's `traceparent` with the
/// sampled flag is continued and exported, one without it is not, and a request
/// without a caller is sampled.
#[test]
fn the_default_sampler_follows_the_callers_flag_and_samples_roots() {
    let sampled = "4bf92f3577b34da6a3ce929d0e0e4736";
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let spans = request_spans(
        &[],
        &[
            Some(format!("00-{sampled}-00f067aa0ba902b7-01")),
            Some(format!("00-{unsampled}-b7ad6b7169203331-00")),
            None,
        ],
    );
    let traces: Vec<String> = spans.iter().map(|s| hex(&s.trace_id)).collect();
    assert!(traces.contains(&sampled.to_owned()), "{traces:?}");
    assert!(!traces.contains(&unsampled.to_owned()), "{traces:?}");
    assert_eq!(
        spans.len(),
        2,
        "the sampled caller's and the root: {traces:?}"
    );
}

/// `OTEL_TRACES_SAMPLER` is honoured: `always_off` exports no request span, even for
/// a caller that asks for one.
#[test]
fn always_off_exports_nothing() {
    let spans = request_spans(
        &[("OTEL_TRACES_SAMPLER", "always_off")],
        &[
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
            None,
        ],
    );
    assert!(spans.is_empty(), "{} spans exported", spans.len());
}

/// A ratio sampler exports about its share of root requests (0.25 of 400: 100, and
/// the binomial's spread is under 9, so 60–140 cannot fail by chance).
#[test]
fn a_ratio_sampler_exports_its_share_of_roots() {
    let spans = request_spans(
        &[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ],
        &vec![None; 400],
    );
    assert!(
        (60..=140).contains(&spans.len()),
        "{} of 400 root requests exported at ratio 0.25",
        spans.len()
    );
}
