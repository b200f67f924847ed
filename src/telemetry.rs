//! Logs and traces. Logs go to stderr (text or JSON) so stdout stays free for command
//! output, through a bounded buffer and a writer thread (`writer`): a slow or stalled
//! stderr drops and counts log lines, it never holds up a request. Traces are exported
//! over OTLP/HTTP only when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` variable is set (`traces_endpoint`); otherwise
//! no exporter and no per-request trace work exist. Request spans are made by
//! `http::trace` with `tracer()`, the sampler deciding first.

use std::io::IsTerminal;
use std::sync::OnceLock;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

pub mod access;
pub mod attributes;
pub mod escape;
pub mod spans;
pub mod throttle;
pub mod writer;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid --log-level `{filter}`: {source}")]
    Filter {
        filter: String,
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("cannot set up the OTLP trace exporter for {endpoint}: {source}")]
    Exporter {
        endpoint: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("cannot start the log writer thread: {0}")]
    Writer(std::io::Error),
}

/// The tracer of request spans (`http::trace`), set when traces are exported.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The tracer request spans are made with; `None` when traces are off, so the request
/// path skips all trace work.
pub fn tracer() -> Option<&'static SdkTracer> {
    TRACER.get()
}

/// Keeps the trace exporter and the log writer alive; dropping it flushes the spans
/// not yet sent and writes the log lines still buffered (later lines are written
/// directly). Drop it before printing a last message with `eprintln!`, so that
/// message comes after every log line.
#[must_use = "dropping the guard stops trace export and buffered logging"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    logs: Option<writer::Writer>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(err) = provider.shutdown() {
                tracing::warn!(error = %err, "flushing traces at exit failed");
            }
        }
        if let Some(mut logs) = self.logs.take() {
            logs.close();
        }
    }
}

/// Sets up logging (and traces, if configured); `log_buffer` bounds the bytes of log
/// lines waiting for stderr, `trace_buffer` those of spans waiting for the collector:
/// beyond them, lines and spans are dropped.
pub fn init(
    filter: &str,
    format: LogFormat,
    log_buffer: usize,
    trace_buffer: usize,
) -> Result<Telemetry, TelemetryError> {
    let env_filter = EnvFilter::try_new(filter).map_err(|source| TelemetryError::Filter {
        filter: filter.to_owned(),
        source,
    })?;
    let logs =
        writer::Writer::start(log_buffer, std::io::stderr()).map_err(TelemetryError::Writer)?;
    let out = logs.handle();
    let log_layer: Box<dyn Layer<Registry> + Send + Sync> = match format {
        // Control characters in any field are escaped: no forged lines, no terminal
        // escapes from a request. A person at a terminal gets colours, and fields
        // escaped one by one; machines get plain text, escaped per event (cheaper).
        LogFormat::Text if std::io::stderr().is_terminal() => tracing_subscriber::fmt::layer()
            .fmt_fields(escape::EscapedFields)
            .with_writer(out)
            .with_ansi(true)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(move || escape::EscapingWriter(out))
            .with_ansi(false)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(out)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    let endpoint = traces_endpoint(|name| std::env::var(name).ok());
    let provider = match &endpoint {
        Some(endpoint) => Some(tracer_provider(endpoint, trace_buffer)?),
        None => None,
    };
    // Spans of `tracing` (loads, reloads) are exported through this layer. The
    // request's own `tracing` span only carries its id into log lines: its exported
    // span is made by `http::trace`, so the layer leaves it out.
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("kvserve"))
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                !(meta.is_span() && meta.name() == REQUEST_SPAN)
            }))
    });
    // A second initialisation (tests calling this twice) is harmless: keep the first,
    // and its writer.
    let installed = tracing_subscriber::registry()
        .with(log_layer)
        .with(traces)
        .with(env_filter)
        .try_init()
        .is_ok();
    // Access lines skip `tracing` where its output has no colours to add.
    let plain = format == LogFormat::Json || !std::io::stderr().is_terminal();
    if installed && plain {
        access::install(format == LogFormat::Json, out);
    }
    if let (Some(endpoint), Some(provider)) = (endpoint, &provider) {
        let _ = TRACER.set(provider.tracer("kvserve"));
        // Collectors' URLs may carry credentials (user info, a signed query).
        let endpoint = crate::redact::redact_url(&endpoint);
        tracing::info!(%endpoint, "exporting traces over OTLP/HTTP");
        for setting in unsupported_trace_settings(|name| std::env::var(name).ok()) {
            tracing::warn!(%setting, "ignored: spans are sent over OTLP/HTTP with protobuf");
        }
    }
    Ok(Telemetry {
        provider,
        logs: installed.then_some(logs),
    })
}

/// The exporter reads the standard `OTEL_EXPORTER_OTLP_*` variables itself (endpoint,
/// headers, timeout), the provider `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG`,
/// the resource `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`; the service name
/// is `kvserve` unless those name one. Spans go through `spans::QueuedExport`, whose
/// losses are counted, their text values cut to `attributes::value_limit`.
fn tracer_provider(
    endpoint: &str,
    trace_buffer: usize,
) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()
        .map_err(|source| TelemetryError::Exporter {
            endpoint: endpoint.to_owned(),
            source,
        })?;
    let mut resource = Resource::builder();
    if !names_service(
        std::env::var("OTEL_SERVICE_NAME").ok().as_deref(),
        std::env::var("OTEL_RESOURCE_ATTRIBUTES").ok().as_deref(),
    ) {
        resource = resource.with_service_name("kvserve");
    }
    Ok(SdkTracerProvider::builder()
        .with_span_processor(spans::QueuedExport::new(
            exporter,
            spans::Limits::from_env(trace_buffer),
        ))
        .with_resource(resource.build())
        .build())
}

/// Where spans go, by the standard variables' rules: the traces endpoint
/// (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, used as is) or the base one
/// (`OTEL_EXPORTER_OTLP_ENDPOINT`, `/v1/traces` appended by the exporter); `None`, no
/// traces, when neither is set, with `OTEL_SDK_DISABLED=true`, or with
/// `OTEL_TRACES_EXPORTER=none`. `var` reads a variable (the environment; a map in tests).
fn traces_endpoint(var: impl Fn(&str) -> Option<String>) -> Option<String> {
    let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    let is =
        |name: &str, value: &str| set(name).is_some_and(|v| v.trim().eq_ignore_ascii_case(value));
    if is("OTEL_SDK_DISABLED", "true") || is("OTEL_TRACES_EXPORTER", "none") {
        return None;
    }
    set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// What the standard variables ask for that this build does not do (gRPC, another
/// exporter), said at start-up rather than discovered as dropped spans.
fn unsupported_trace_settings(var: impl Fn(&str) -> Option<String>) -> Vec<String> {
    let mut unsupported = Vec::new();
    for name in [
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    ] {
        if let Some(protocol) = var(name).filter(|p| p.trim() != "http/protobuf") {
            unsupported.push(format!(
                "{name}={protocol} (only http/protobuf is supported)"
            ));
        }
    }
    if let Some(exporter) = var("OTEL_TRACES_EXPORTER").filter(|e| e.trim() != "otlp") {
        unsupported.push(format!(
            "OTEL_TRACES_EXPORTER={exporter} (only otlp is supported)"
        ));
    }
    unsupported
}

/// Whether the standard variables name the service (`OTEL_SERVICE_NAME`, or
/// `service.name` in `OTEL_RESOURCE_ATTRIBUTES`); if not, kvserve names itself rather
/// than the SDK's `unknown_service`.
fn names_service(service_name: Option<&str>, resource_attributes: Option<&str>) -> bool {
    service_name.is_some_and(|name| !name.trim().is_empty())
        || resource_attributes.is_some_and(|list| {
            list.split(',').any(|pair| {
                pair.split_once('=')
                    .is_some_and(|(key, _)| key.trim() == "service.name")
            })
        })
}

/// Reads W3C trace context (`traceparent`, `tracestate`) from request headers.
pub struct HeaderExtractor<'a>(pub &'a poem::http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The name of the `tracing` span each API request's log lines carry.
pub const REQUEST_SPAN: &str = "request";

/// The caller's trace context (W3C `traceparent`, `tracestate`) as the parent of a
/// request's span; an empty context, which makes the span a root, when there is none.
pub fn remote_context(headers: &poem::http::HeaderMap) -> opentelemetry::Context {
    if !headers.contains_key("traceparent") {
        return opentelemetry::Context::new();
    }
    TraceContextPropagator::new()
        .extract_with_context(&opentelemetry::Context::new(), &HeaderExtractor(headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The environment as a list of pairs, for the functions that read variables
    /// through a closure (also `attributes`' tests).
    pub(crate) fn env<'a>(pairs: &'a [(&str, &str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn the_traces_endpoint_follows_the_standard_variables() {
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        let traces = (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://t:4318/v1/traces",
        );
        assert_eq!(traces_endpoint(env(&[])), None);
        assert_eq!(
            traces_endpoint(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])),
            None
        );
        assert_eq!(
            traces_endpoint(env(&[base])).as_deref(),
            Some("http://c:4318")
        );
        assert_eq!(
            traces_endpoint(env(&[base, traces])).as_deref(),
            Some("http://t:4318/v1/traces")
        );
        assert_eq!(
            traces_endpoint(env(&[base, ("OTEL_SDK_DISABLED", "TRUE")])),
            None
        );
        assert_eq!(
            traces_endpoint(env(&[base, ("OTEL_SDK_DISABLED", "false")])).as_deref(),
            Some("http://c:4318")
        );
        assert_eq!(
            traces_endpoint(env(&[base, ("OTEL_TRACES_EXPORTER", "none")])),
            None
        );
    }

    #[test]
    fn unsupported_settings_are_named() {
        assert!(unsupported_trace_settings(env(&[(
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "http/protobuf"
        )]))
        .is_empty());
        let said = unsupported_trace_settings(env(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
        ]));
        assert_eq!(said.len(), 2, "{said:?}");
        assert!(
            said[0].starts_with("OTEL_EXPORTER_OTLP_PROTOCOL=grpc"),
            "{said:?}"
        );
    }

    #[test]
    fn the_service_is_named_by_either_variable() {
        assert!(!names_service(None, None));
        assert!(!names_service(Some(" "), Some("team=kv")));
        assert!(names_service(Some("kv"), None));
        assert!(names_service(None, Some("team=kv, service.name=kv-us")));
    }
}
