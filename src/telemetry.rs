//! Logs and traces. Logs go to stderr (text or JSON) so stdout stays free for command
//! output, through a bounded buffer and a writer thread (`writer`): a slow or stalled
//! stderr drops and counts log lines, it never holds up a request. Traces are exported over OTLP/HTTP only when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` variable is set; otherwise no exporter, no propagator
//! and no per-request trace work exist.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

pub mod access;
pub mod escape;
pub mod spans;
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

static TRACING_ON: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported, so the request path can skip trace-context work when
/// they are not.
pub fn traces_enabled() -> bool {
    TRACING_ON.load(Ordering::Relaxed)
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
/// lines waiting for stderr, beyond which lines are dropped.
pub fn init(
    filter: &str,
    format: LogFormat,
    log_buffer: usize,
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
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty());
    let provider = match &endpoint {
        Some(endpoint) => Some(tracer_provider(endpoint)?),
        None => None,
    };
    let traces = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("kvserve")));
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
    if let Some(endpoint) = endpoint {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        TRACING_ON.store(true, Ordering::Relaxed);
        tracing::info!(%endpoint, "exporting traces over OTLP/HTTP");
    }
    Ok(Telemetry {
        provider,
        logs: installed.then_some(logs),
    })
}

/// The exporter reads the standard `OTEL_EXPORTER_OTLP_*` variables itself (endpoint,
/// headers, timeout); the service name defaults to `kvserve` unless
/// `OTEL_SERVICE_NAME` says otherwise. Spans go through `spans::QueuedExport`, whose
/// losses are counted.
fn tracer_provider(endpoint: &str) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()
        .map_err(|source| TelemetryError::Exporter {
            endpoint: endpoint.to_owned(),
            source,
        })?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("kvserve");
    }
    Ok(SdkTracerProvider::builder()
        .with_span_processor(spans::QueuedExport::new(
            exporter,
            spans::Limits::from_env(),
        ))
        .with_resource(resource.build())
        .build())
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

/// The caller's trace context, when traces are on and the request carries one.
pub fn remote_context(headers: &poem::http::HeaderMap) -> Option<opentelemetry::Context> {
    if !traces_enabled() {
        return None;
    }
    Some(opentelemetry::global::get_text_map_propagator(
        |propagator| propagator.extract(&HeaderExtractor(headers)),
    ))
}
