//! Logging and tracing.
//!
//! Logs: `tracing` events to stdout, as text for people or JSON for collectors, at the level
//! `RUST_LOG` sets (default `info`). Each event carries its own fields; spans are not part of the
//! log lines. That keeps spans off the request path when no trace exporter wants them: a span
//! that only decorates logs costs a measurable share of a warm `Validate`'s CPU (figures in
//! docs/performance.md), for context the events already name.
//!
//! Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set,
//! the same spans are also exported over OTLP/gRPC, batched on the tokio runtime. The exporter
//! reads the standard `OTEL_*` variables (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_*`). With neither endpoint set,
//! nothing is exported and no background task runs.
//!
//! Each gRPC request gets a `grpc.request` span ([`grpc_request_span`]) whose parent is the
//! caller's W3C `traceparent`/`tracestate`, so sessiond's spans join the caller's trace.

use std::{sync::mpsc, time::Duration};

use opentelemetry::{
    Key, KeyValue, global,
    propagation::{Extractor, TextMapCompositePropagator},
    trace::TracerProvider as _,
};
use opentelemetry_sdk::{
    Resource,
    propagation::{BaggagePropagator, TraceContextPropagator},
    runtime,
    trace::{SdkTracerProvider, span_processor_with_async_runtime::BatchSpanProcessor},
};
use tracing::{Metadata, subscriber::Interest};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::{FilterExt, LevelFilter, dynamic_filter_fn},
    fmt,
    layer::Filter,
    prelude::*,
};

use crate::config::LogFormat;

/// The service name on exported spans when neither `OTEL_SERVICE_NAME` nor
/// `OTEL_RESOURCE_ATTRIBUTES` names one.
const DEFAULT_SERVICE_NAME: &str = "sessiond";

/// How long dropping the guard waits for the last spans to reach the collector.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Keeps the trace exporter and the log writer alive; dropping it (or
/// [`TelemetryGuard::shutdown`]) flushes the spans and log lines still buffered and stops both.
/// Hold it until the server has stopped.
#[must_use = "dropping the guard stops trace export and logging"]
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    /// Dropped after the exporter has shut down, so that what it logs is written too.
    _log_writer: WorkerGuard,
}

impl TelemetryGuard {
    /// Whether spans are being exported over OTLP.
    pub fn is_exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes the buffered spans and shuts the exporter down. Same as dropping the guard.
    pub fn shutdown(mut self) {
        self.shutdown_provider();
    }

    fn shutdown_provider(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        // The batch processor runs on the tokio runtime, and `shutdown` blocks until it has
        // exported what it holds. Block on another thread, so that a caller on a runtime thread
        // cannot starve the processor, and give up after a bound so a dead collector cannot
        // hold the exit.
        let (done, finished) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("otel-shutdown".into())
            .spawn(move || {
                let _ = done.send(provider.shutdown());
            });
        if let Err(error) = spawned {
            eprintln!("sessiond: cannot flush traces: {error}");
            return;
        }
        match finished.recv_timeout(SHUTDOWN_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "flushing traces failed"),
            Err(_) => tracing::warn!(
                timeout = ?SHUTDOWN_TIMEOUT,
                "flushing traces took too long; some spans may be lost"
            ),
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.shutdown_provider();
    }
}

/// Installs the global subscriber: logs always, OTLP trace export when an endpoint is set.
/// Call once, first thing in `main`, inside the tokio runtime, and keep the guard until exit.
pub fn init(format: LogFormat) -> TelemetryGuard {
    let directives = std::env::var(EnvFilter::DEFAULT_ENV)
        .ok()
        .filter(|directives| !directives.trim().is_empty())
        .unwrap_or_else(|| "info".to_owned());
    // Lines are written to stdout by a thread of their own: a request never waits for a write
    // (or for a slow reader of the pipe) unless 128 000 lines are already queued. None is dropped.
    let (log_writer, log_writer_guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("sessiond-logs")
        .finish(std::io::stdout());
    let lines = fmt::layer().with_target(false).with_writer(log_writer);
    let logs = match format {
        LogFormat::Text => lines.boxed(),
        LogFormat::Json => lines
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .boxed(),
    }
    .with_filter(rust_log_and(&directives, |metadata| metadata.is_event()));

    let (provider, export_error) = match tracing_enabled() {
        false => (None, None),
        true => match tracer_provider() {
            Ok(provider) => (Some(provider), None),
            Err(error) => (None, Some(error)),
        },
    };
    let traces = provider.as_ref().map(|provider| {
        let tracer = provider.tracer(DEFAULT_SERVICE_NAME);
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            // The exporter's own gRPC client must not trace itself into a feedback loop.
            .with_filter(rust_log_and(&directives, |metadata| {
                !is_transport(metadata.target())
            }))
    });

    // Not `.with(Option<Layer>)`: a `None` layer counts as interested in every span, so spans
    // would be built on every request for nobody.
    let subscriber = tracing_subscriber::registry().with(logs);
    let installed = match traces {
        Some(traces) => subscriber.with(traces).try_init(),
        None => subscriber.try_init(),
    };
    if let Err(error) = installed {
        eprintln!("sessiond: cannot install the log subscriber: {error}");
    }

    if let Some(error) = export_error {
        tracing::error!("trace export is off: {error:#}");
    }
    if provider.is_some() {
        global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ]));
        tracing::info!("exporting traces over OTLP/gRPC");
    }
    TelemetryGuard {
        provider,
        _log_writer: log_writer_guard,
    }
}

/// `RUST_LOG`'s filter (each layer needs its own), narrowed to what `keep` accepts.
///
/// Works around tokio-rs/tracing#2519, which dropped every "session created" line: a per-layer
/// filter hands its verdict to its layer through a thread-local, and a callsite it always
/// enables skips the question, reading whatever verdict the last question left there. sqlx asks
/// after each query (through `log`) whether its debug log is on, and the "no" it gets stays
/// behind. So what `keep` accepts is asked about on every call (`sometimes`, never `always`), and
/// the pair carries `RUST_LOG`'s most verbose level as its hint, so that `log` and `tracing`
/// stop records below it before they reach the subscriber at all.
fn rust_log_and<S>(directives: &str, keep: fn(&Metadata<'_>) -> bool) -> impl Filter<S> + use<S> {
    let rust_log = EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let hint = rust_log.max_level_hint().unwrap_or(LevelFilter::TRACE);
    let narrowed = dynamic_filter_fn(move |metadata, _| keep(metadata))
        .with_callsite_filter(move |metadata| match keep(metadata) {
            true => Interest::sometimes(),
            false => Interest::never(),
        })
        .with_max_level_hint(hint);
    rust_log.and(narrowed)
}

/// The span of one incoming gRPC request, for `Server::builder().trace_fn(..)`.
///
/// Its parent is the caller's trace from the `traceparent`/`tracestate` metadata, when present and
/// trace export is on. Health checks get no span, so probes do not flood the trace store. Only the
/// path is recorded: never headers, which may carry credentials.
pub fn grpc_request_span(request: &http::Request<()>) -> tracing::Span {
    let (service, method) = service_and_method(request.uri().path());
    if service == HEALTH_SERVICE {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "grpc.request",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        otel.kind = "server",
        // Recorded by the callers layer once it knows who is calling.
        caller = tracing::field::Empty,
    );
    if span.is_disabled() {
        return span;
    }
    let parent = global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(request.headers()))
    });
    // Fails only when trace export is off (no OpenTelemetry layer), where a parent means nothing.
    let _ = span.set_parent(parent);
    span
}

const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// `/package.Service/Method` → (`package.Service`, `Method`); anything else → (path, "").
fn service_and_method(path: &str) -> (&str, &str) {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    match trimmed.split_once('/') {
        Some((service, method)) if !service.is_empty() && !method.contains('/') => {
            (service, method)
        }
        _ => (path, ""),
    }
}

/// gRPC metadata as an OpenTelemetry carrier.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Whether the environment asks for OTLP trace export.
fn tracing_enabled() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|value| !value.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|value| value.trim() == "true")
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|value| value.trim() == "none");
    !disabled
        && (set(opentelemetry_otlp::OTEL_EXPORTER_OTLP_ENDPOINT)
            || set(opentelemetry_otlp::OTEL_EXPORTER_OTLP_TRACES_ENDPOINT))
}

/// The OTLP/gRPC exporter behind a batch processor on the tokio runtime.
fn tracer_provider() -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    let processor = BatchSpanProcessor::builder(exporter, runtime::Tokio).build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource())
        .build())
}

/// The standard detectors (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`), with sessiond's name
/// and version where they say nothing.
fn resource() -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&Key::from_static_str("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    let versioned = detected
        .get(&Key::from_static_str("service.version"))
        .is_some();
    let mut builder = Resource::builder();
    if !named {
        builder = builder.with_service_name(DEFAULT_SERVICE_NAME);
    }
    if !versioned {
        builder =
            builder.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    }
    builder.build()
}

/// Targets of the HTTP/2 and gRPC client stack the exporter itself runs on.
fn is_transport(target: &str) -> bool {
    target.starts_with("opentelemetry")
        || ["h2", "hyper", "hyper_util", "tonic", "tower"]
            .iter()
            .any(|prefix| {
                target
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
            })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            service_and_method("/sessiond.v1.SessionService/CreateSession"),
            ("sessiond.v1.SessionService", "CreateSession")
        );
        assert_eq!(service_and_method("/odd"), ("/odd", ""));
        assert_eq!(service_and_method("/a/b/c"), ("/a/b/c", ""));
        assert_eq!(service_and_method("//m"), ("//m", ""));
    }

    #[test]
    fn transport_targets_are_recognised() {
        assert!(is_transport("h2::proto::connection"));
        assert!(is_transport("tonic"));
        assert!(is_transport("opentelemetry_sdk"));
        assert!(!is_transport("sessiond::authority"));
        assert!(!is_transport("h2o"));
    }
}
