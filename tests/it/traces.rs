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

/// Each export request with the headers it came with.
type Received = Arc<Mutex<Vec<(poem::http::HeaderMap, ExportTraceServiceRequest)>>>;

#[handler]
async fn receive(
    Data(received): Data<&Received>,
    headers: &poem::http::HeaderMap,
    body: Body,
) -> poem::Result<Vec<u8>> {
    let bytes = body.into_bytes().await?;
    let request = ExportTraceServiceRequest::decode(bytes).map_err(poem::error::BadRequest)?;
    received.lock().unwrap().push((headers.clone(), request));
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

/// The real binary on the sample data with `args`, exporting to `endpoint` every
/// `delay_ms`, with `env` added, once it is ready: every test here starts one so.
fn spawn_exporting(
    endpoint: &str,
    delay_ms: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (tempfile::TempDir, Process) {
    let dir = tempfile::tempdir().unwrap();
    let data = write_file(dir.path(), "t.data", sample_lines());
    let mut all_env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", delay_ms),
    ];
    all_env.extend_from_slice(env);
    let p = spawn_binary_with_env(&data, args, &all_env);
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
    let (_dir, p) = spawn_exporting(&format!("http://{receiver}"), "100", &[], &[]);

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
    for (_, request) in received.iter() {
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
    let (_dir, p) = spawn_exporting(&format!("http://{closed}"), "50", &[], &[]);
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

/// What a receiver got from one run of the real binary: the resource attributes of
/// the first export, every span, and the headers of every export request.
struct Exported {
    resource: Vec<KeyValue>,
    spans: Vec<Span>,
    headers: Vec<poem::http::HeaderMap>,
}

impl Exported {
    /// The request spans (those with a route or a status), in the order they ended.
    fn requests(&self) -> Vec<&Span> {
        self.spans
            .iter()
            .filter(|s| attr(&s.attributes, "http.response.status_code").is_some())
            .collect()
    }
}

/// Runs the real binary with `args` and `env` (`{receiver}` in a value is the
/// receiver's base URL), exporting to an in-test receiver; `send` talks to it, then it
/// is stopped (which flushes every span) and what the receiver got is returned.
fn exported(args: &[&str], env: &[(&str, &str)], send: impl FnOnce(&Process)) -> Exported {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (receiver, received) = start_receiver(&runtime);
    let base = format!("http://{receiver}");
    let env: Vec<(&str, String)> = env
        .iter()
        .map(|(name, value)| (*name, value.replace("{receiver}", &base)))
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let (_dir, p) = spawn_exporting(&base, "100", args, &env);
    send(&p);
    stop_cleanly(p);
    let received = received.lock().unwrap();
    let resource_spans: Vec<_> = received
        .iter()
        .flat_map(|(_, r)| r.resource_spans.iter())
        .collect();
    Exported {
        resource: resource_spans
            .first()
            .and_then(|r| r.resource.as_ref())
            .map(|r| r.attributes.clone())
            .unwrap_or_default(),
        spans: resource_spans
            .iter()
            .flat_map(|r| r.scope_spans.iter())
            .flat_map(|s| s.spans.iter())
            .cloned()
            .collect(),
        headers: received.iter().map(|(h, _)| h.clone()).collect(),
    }
}

/// Runs the real binary with `env`, sends `traceparents.len()` GETs (each with that
/// `traceparent`, or none) and returns the request spans the receiver got.
fn request_spans(env: &[(&str, &str)], traceparents: &[Option<String>]) -> Vec<Span> {
    let exported = exported(&[], env, |p| {
        let client = reqwest::blocking::Client::new();
        for traceparent in traceparents {
            let mut req = client.get(format!("http://{}/v1/keys/{KEY}", p.api));
            if let Some(traceparent) = traceparent {
                req = req.header("traceparent", traceparent);
            }
            assert_eq!(req.send().unwrap().status(), 200);
        }
    });
    exported.requests().into_iter().cloned().collect()
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

/// One GET of a key that is there.
fn get_one(p: &Process) {
    let client = reqwest::blocking::Client::new();
    let resp = client.get(format!("http://{}/v1/keys/{KEY}", p.api)).send();
    assert_eq!(resp.unwrap().status(), 200);
}

/// The attributes of a span as `key=value` text, sorted, without `skip`.
fn attribute_texts(span: &Span, skip: &[&str]) -> Vec<String> {
    let mut texts: Vec<String> = span
        .attributes
        .iter()
        .filter(|kv| !skip.contains(&kv.key.as_str()))
        .map(|kv| {
            format!(
                "{}={:?}",
                kv.key,
                kv.value.as_ref().and_then(|v| v.value.as_ref())
            )
        })
        .collect();
    texts.sort();
    texts
}

fn int_attr(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attributes, key)? {
        AnyValue::IntValue(n) => Some(*n),
        _ => None,
    }
}

/// The requests of the conventions test: path, `traceparent`, request id.
const TRACED: [(&str, Option<&str>, &str); 4] = [
    (
        "/v1/keys/72cf48f7-d604-4423-b012-4e2329f5117b?x=1",
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        "traced-found",
    ),
    (
        "/v1/keys/00000000-0000-4000-8000-000000000000/value",
        None,
        "traced-missing",
    ),
    ("/get_value/not-a-key", None, "traced-invalid"),
    ("/no/such/route", None, "traced-unmatched"),
];

/// Sends `TRACED` to `p` (with a user agent) and returns each answer's
/// `traceresponse`.
fn send_traced(p: &Process) -> Vec<Option<String>> {
    let client = reqwest::blocking::Client::new();
    TRACED
        .iter()
        .map(|(path, traceparent, id)| {
            let mut req = client
                .get(format!("http://{}{path}", p.api))
                .header("user-agent", "traces-test/1.0")
                .header("x-request-id", *id);
            if let Some(traceparent) = traceparent {
                req = req.header("traceparent", *traceparent);
            }
            let resp = req.send().unwrap();
            resp.headers()
                .get("traceresponse")
                .map(|v| v.to_str().unwrap().to_owned())
        })
        .collect()
}

/// A sampled request's span is the same on the fast path (the default) and through
/// poem (`--fast-path false`), and carries OpenTelemetry's HTTP server conventions and
/// kvserve's attributes; its answer's `traceresponse` names it.
#[test]
fn request_spans_follow_the_http_conventions_on_both_paths() {
    let mut shapes = Vec::new();
    for args in [&[][..], &["--fast-path", "false"][..]] {
        let mut api = None;
        let mut answers = Vec::new();
        let exported = exported(args, &[], |p| {
            api = Some(p.api);
            answers = send_traced(p);
        });
        let api = api.unwrap();
        let requests = exported.requests();
        let by_id = |id: &str| {
            *requests
                .iter()
                .find(|s| string_attr(&s.attributes, "kvserve.request_id") == Some(id))
                .unwrap_or_else(|| panic!("{args:?}: no span for {id} among {requests:#?}"))
        };
        let found = by_id("traced-found");
        assert_eq!(found.name, "GET /v1/keys/{key}");
        assert_eq!(found.kind, SpanKind::Server as i32);
        assert_eq!(hex(&found.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&found.parent_span_id), "00f067aa0ba902b7");
        let a = &found.attributes;
        for (key, want) in [
            ("http.request.method", "GET"),
            ("http.route", "/v1/keys/{key}"),
            ("url.scheme", "http"),
            ("url.path", "/v1/keys/72cf48f7-d604-4423-b012-4e2329f5117b"),
            ("url.query", "x=1"),
            ("server.address", "127.0.0.1"),
            ("client.address", "127.0.0.1"),
            ("user_agent.original", "traces-test/1.0"),
            ("network.protocol.version", "1.1"),
            ("kvserve.lookup.result", "found"),
        ] {
            assert_eq!(string_attr(a, key), Some(want), "{args:?} {key}: {a:?}");
        }
        assert_eq!(int_attr(a, "http.response.status_code"), Some(200));
        assert_eq!(int_attr(a, "server.port"), Some(i64::from(api.port())));
        assert!(int_attr(a, "client.port").is_some(), "{a:?}");
        assert_eq!(int_attr(a, "kvserve.dataset.generation"), Some(1));
        assert_eq!(
            answers[0].as_deref(),
            Some(format!("00-{}-{}-01", hex(&found.trace_id), hex(&found.span_id)).as_str()),
            "{args:?}: traceresponse names the span"
        );
        let result = |id: &str| string_attr(&by_id(id).attributes, "kvserve.lookup.result");
        assert_eq!(result("traced-missing"), Some("missing"));
        assert_eq!(result("traced-invalid"), Some("invalid_key"));
        assert_eq!(result("traced-unmatched"), None);
        assert_eq!(by_id("traced-unmatched").name, "GET");
        assert_eq!(
            string_attr(&by_id("traced-unmatched").attributes, "http.route"),
            None
        );
        let shape: Vec<(String, Vec<String>)> = TRACED
            .iter()
            .map(|(_, _, id)| {
                let span = by_id(id);
                let texts = attribute_texts(span, &["client.port", "server.port"]);
                (span.name.clone(), texts)
            })
            .collect();
        shapes.push(shape);
    }
    assert_eq!(
        shapes[0], shapes[1],
        "fast path and poem make the same spans"
    );
}

/// Behind a trusted proxy the span's `client.address` is the resolved client, the
/// `X-Forwarded-For` entry the proxy added (and no `client.port`: that was the proxy's),
/// on both paths; a direct request's is the peer's, with its port.
#[test]
fn the_span_names_the_resolved_client() {
    for path in [&[][..], &["--fast-path", "false"][..]] {
        let args: Vec<&str> = ["--trusted-proxies", "127.0.0.1"]
            .iter()
            .chain(path)
            .copied()
            .collect();
        let exported = exported(&args, &[], |p| {
            let client = reqwest::blocking::Client::new();
            for (id, forwarded) in [("proxied", Some("6.6.6.6, 203.0.113.7")), ("direct", None)] {
                let mut req = client
                    .get(format!("http://{}/v1/keys/{KEY}", p.api))
                    .header("x-request-id", id);
                if let Some(forwarded) = forwarded {
                    req = req.header("x-forwarded-for", forwarded);
                }
                assert_eq!(req.send().unwrap().status(), 200);
            }
        });
        let requests = exported.requests();
        let by_id = |id: &str| {
            requests
                .iter()
                .find(|s| string_attr(&s.attributes, "kvserve.request_id") == Some(id))
                .map(|s| s.attributes.clone())
                .unwrap_or_else(|| panic!("{path:?}: no span for {id}"))
        };
        let proxied = by_id("proxied");
        assert_eq!(
            string_attr(&proxied, "client.address"),
            Some("203.0.113.7"),
            "{path:?}"
        );
        assert_eq!(int_attr(&proxied, "client.port"), None, "{path:?}");
        let direct = by_id("direct");
        assert_eq!(
            string_attr(&direct, "client.address"),
            Some("127.0.0.1"),
            "{path:?}"
        );
        assert!(int_attr(&direct, "client.port").is_some(), "{path:?}");
    }
}

/// An unsampled request gets no span and no `traceresponse`: the caller said
/// "not sampled" under the default parent-based sampler.
#[test]
fn an_unsampled_request_has_no_traceresponse() {
    let mut answer = None;
    let exported = exported(&[], &[], |p| {
        let resp = reqwest::blocking::Client::new()
            .get(format!("http://{}/v1/keys/{KEY}", p.api))
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
            )
            .send()
            .unwrap();
        answer = Some((resp.status(), resp.headers().get("traceresponse").cloned()));
    });
    assert_eq!(answer, Some((reqwest::StatusCode::OK, None)));
    assert!(exported.requests().is_empty(), "{:?}", exported.requests());
}

/// `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` describe the service; a
/// `service.name` in the attributes alone is honoured too, not replaced by kvserve's.
#[test]
fn the_resource_comes_from_the_standard_variables() {
    let named = exported(
        &[],
        &[
            ("OTEL_SERVICE_NAME", "kv-eu"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment.name=test,team=kv",
            ),
        ],
        get_one,
    );
    assert_eq!(string_attr(&named.resource, "service.name"), Some("kv-eu"));
    assert_eq!(
        string_attr(&named.resource, "deployment.environment.name"),
        Some("test")
    );
    assert_eq!(string_attr(&named.resource, "team"), Some("kv"));
    let attributes_only = exported(
        &[],
        &[("OTEL_RESOURCE_ATTRIBUTES", "service.name=kv-us")],
        get_one,
    );
    assert_eq!(
        string_attr(&attributes_only.resource, "service.name"),
        Some("kv-us")
    );
}

/// With debug logs on, the request's log span (`request`, carrying the request id into
/// log lines) is not exported beside the request's trace span.
#[test]
fn debug_logs_add_no_second_request_span() {
    let exported = exported(&["--log-level", "debug"], &[], get_one);
    let names: Vec<&str> = exported.spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(exported.requests().len(), 1, "{names:?}");
    assert!(!names.contains(&"request"), "{names:?}");
}

/// The exporter's other standard variables: the traces endpoint alone turns traces on
/// (used as is, no `/v1/traces` appended), `OTEL_EXPORTER_OTLP_HEADERS` reach the
/// collector, and `OTEL_SDK_DISABLED=true` turns traces off despite an endpoint.
#[test]
fn the_exporter_follows_the_standard_variables() {
    let by_traces_endpoint = exported(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "{receiver}/v1/traces"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=kv-test"),
        ],
        get_one,
    );
    assert_eq!(by_traces_endpoint.requests().len(), 1);
    assert!(
        by_traces_endpoint
            .headers
            .iter()
            .all(|h| h.get("x-tenant").is_some_and(|v| v == "kv-test")),
        "{:?}",
        by_traces_endpoint.headers
    );
    let disabled = exported(&[], &[("OTEL_SDK_DISABLED", "true")], get_one);
    assert!(disabled.spans.is_empty(), "{:?}", disabled.spans);
}

/// A request with a 16 KiB `User-Agent` (multi-byte characters, so a cut can fall
/// inside one), a 10 KiB path and a 4 KiB query (each within the head limits); the values a span of it should
/// keep are returned, each checked to be the start of what was sent.
fn long_values_exported(env: &[(&str, &str)]) -> (String, String, String) {
    let agent = format!("a{}", "é".repeat(8_000));
    let path = format!("/v1/keys/{}", "k".repeat(10_000));
    let query = format!("q={}", "x".repeat(4_000));
    let exported = exported(&[], env, |p| {
        let resp = reqwest::blocking::Client::new()
            .get(format!("http://{}{path}?{query}", p.api))
            .header(
                "user-agent",
                reqwest::header::HeaderValue::from_bytes(agent.as_bytes()).unwrap(),
            )
            .send()
            .unwrap();
        assert_eq!(resp.status(), 400, "an invalid key, answered");
    });
    let requests = exported.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let a = &requests[0].attributes;
    let value = |key: &str| string_attr(a, key).unwrap_or_default().to_owned();
    let (kept_agent, kept_path, kept_query) = (
        value("user_agent.original"),
        value("url.path"),
        value("url.query"),
    );
    // Each is the start of what the client sent, cut and nothing else.
    assert!(agent.starts_with(&kept_agent), "{kept_agent}");
    assert!(path.starts_with(&kept_path), "{kept_path}");
    assert!(query.starts_with(&kept_query), "{kept_query}");
    (kept_agent, kept_path, kept_query)
}

/// Client-chosen text in a span is cut to the attribute value limit, in bytes, on a
/// character boundary: 1024 by default, `OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`, and
/// `OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT` over it when both are set. Whole heads
/// in every queued span let any client make kvserve hold gigabytes.
#[test]
fn long_request_values_are_cut_to_the_attribute_value_limit() {
    let lengths =
        |(agent, path, query): (String, String, String)| (agent.len(), path.len(), query.len());
    // The agent is "a" and two-byte characters: an even limit falls inside one.
    assert_eq!(lengths(long_values_exported(&[])), (1023, 1024, 1024));
    assert_eq!(
        lengths(long_values_exported(&[(
            "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
            "100"
        )])),
        (99, 100, 100)
    );
    assert_eq!(
        lengths(long_values_exported(&[
            ("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "100"),
            ("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "301"),
        ])),
        (301, 301, 301)
    );
}

/// `kvserve_trace_spans_dropped_total` as `/metrics` says it.
fn spans_dropped(p: &Process) -> f64 {
    reqwest::blocking::get(format!("http://{}/metrics", p.admin))
        .and_then(|r| r.text())
        .ok()
        .and_then(|text| series(&text, "kvserve_trace_spans_dropped_total"))
        .unwrap_or(0.0)
}

/// The export queue is bounded in bytes as well as in spans: with `--trace-buffer
/// 64KiB`, spans of requests with 1 KiB texts stop fitting long before 2048 of them
/// wait (a collector that is slow, or as here not yet due). What does not fit is
/// dropped at once and counted; what fits is sent; the loss is warned about.
#[test]
fn the_export_queue_is_bounded_in_bytes() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (receiver, received) = start_receiver(&runtime);
    // Nothing is sent before the minute is up or 512 spans wait: the queue only fills.
    let (_dir, mut p) = spawn_exporting(
        &format!("http://{receiver}"),
        "60000",
        &[],
        &[("KVSERVE_TRACE_BUFFER", "64KiB")],
    );
    let client = reqwest::blocking::Client::new();
    let agent = "u".repeat(1024);
    for _ in 0..100 {
        let resp = client
            .get(format!(
                "http://{}/v1/keys/{KEY}?q={}",
                p.api,
                "x".repeat(1024)
            ))
            .header("user-agent", agent.as_str())
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let dropped = spans_dropped(&p);
    assert!(
        (50.0..100.0).contains(&dropped),
        "{dropped} of 100 spans dropped"
    );
    sigterm(&p.child);
    assert_eq!(
        wait_exit(&mut p.child, Duration::from_secs(15)).code(),
        Some(0)
    );
    wait_until("the loss warned about", || {
        p.log()
            .contains("trace spans dropped: the export queue was full")
    });
    let received = received.lock().unwrap();
    let sent = received
        .iter()
        .flat_map(|(_, r)| r.resource_spans.iter())
        .flat_map(|r| r.scope_spans.iter())
        .flat_map(|s| s.spans.iter())
        .filter(|s| attr(&s.attributes, "http.response.status_code").is_some())
        .count();
    assert_eq!(sent as f64 + dropped, 100.0, "each span sent or counted");
}
