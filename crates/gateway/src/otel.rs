//! Traces exported over OTLP/HTTP (protobuf), the `otel` feature: the spans of
//! [`crate::trace`] and the stack's through `tracing-opentelemetry`, batched on the SDK's
//! own thread (never on a call's path: a collector that is down or hangs costs the calls
//! nothing; past the queue's 2,048 spans new ones are dropped).
//!
//! Configured by the standard environment: `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) turns it on, `OTEL_SERVICE_NAME` (default
//! `llm-gateway`), `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (default
//! `parentbased_always_on`), `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SDK_DISABLED=true` turns it
//! off. Plain HTTP to the collector (a sidecar or an agent on the host).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::{Level, Span, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;

use crate::trace::CallerTrace;

/// Whether a [`Tracing`] layer was handed out: only then does a span carry an OpenTelemetry
/// context worth reading.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// How long one export may take before it is given up (the batch is dropped).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// An OTLP/HTTP trace pipeline: a tracer provider with a batch exporter. Dropping it
/// flushes what is queued (up to the export timeout) and stops its thread.
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing").finish_non_exhaustive()
    }
}

/// The exporter's HTTP client, run on the gateway's runtime: the SDK exports from a thread
/// of its own, where hyper has no reactor.
#[derive(Debug, Clone)]
struct OnRuntime {
    client: HyperClient,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let client = self.client.clone();
        self.runtime
            .spawn(async move { client.send_bytes(request).await })
            .await?
    }
}

impl Tracing {
    /// The pipeline the environment asks for, on `runtime`: `None` when no OTLP endpoint is
    /// set or `OTEL_SDK_DISABLED` is `true`.
    ///
    /// # Errors
    ///
    /// An endpoint the exporter cannot use.
    pub fn from_env(
        get: impl Fn(&str) -> Option<String>,
        runtime: tokio::runtime::Handle,
    ) -> Result<Option<Tracing>, String> {
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let set = |k: &str| get(k).is_some_and(|v| !v.trim().is_empty());
        if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            return Ok(None);
        }
        let service = get("OTEL_SERVICE_NAME").filter(|s| !s.trim().is_empty());
        Tracing::build(None, service, runtime).map(Some)
    }

    /// A pipeline exporting to `url` (the full URL, `http://host:4318/v1/traces`), as the
    /// service `llm-gateway`: for tests and for programs that embed the gateway.
    ///
    /// # Errors
    ///
    /// An endpoint the exporter cannot use.
    pub fn to_endpoint(url: &str, runtime: tokio::runtime::Handle) -> Result<Tracing, String> {
        Tracing::build(Some(url), None, runtime)
    }

    fn build(
        endpoint: Option<&str>,
        service: Option<String>,
        runtime: tokio::runtime::Handle,
    ) -> Result<Tracing, String> {
        let client = OnRuntime {
            client: HyperClient::with_default_connector(EXPORT_TIMEOUT, None),
            runtime,
        };
        let mut exporter = SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_timeout(EXPORT_TIMEOUT);
        if let Some(url) = endpoint {
            exporter = exporter.with_endpoint(url);
        }
        let exporter = exporter
            .build()
            .map_err(|e| format!("OTLP exporter: {e}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(service.unwrap_or_else(|| "llm-gateway".to_owned()))
                    .build(),
            )
            .build();
        Ok(Tracing { provider })
    }

    /// The `tracing` layer that turns the gateway's and the stack's spans (targets
    /// `llm_layers*`, debug and above) into OpenTelemetry spans, and their events into span
    /// events. Nothing else is exported.
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        ACTIVE.store(true, Ordering::Relaxed);
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("llm-layers"))
            .with_location(false)
            .with_threads(false)
            .with_level(false)
            .with_target(false)
            // No busy/idle time per span: it is kept per enter and exit, and the call's
            // span is entered for every chunk.
            .with_tracked_inactivity(false)
            // A static filter (by target prefix and level): every other callsite (hyper's,
            // h2's) is decided once and cached as off, where a filter function would be
            // asked again at each of their events.
            .with_filter(Targets::new().with_target("llm_layers", Level::DEBUG))
    }

    /// Sends what is queued now; blocks until it is sent or given up. Call it off the
    /// runtime (`spawn_blocking`): the export runs on it.
    ///
    /// # Errors
    ///
    /// The export failed.
    pub fn flush(&self) -> Result<(), String> {
        self.provider.force_flush().map_err(|e| e.to_string())
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// Makes the caller's trace the parent of `span`.
pub(crate) fn set_parent(span: &Span, caller: &CallerTrace) {
    if !ACTIVE.load(Ordering::Relaxed) {
        return;
    }
    let mut h = HeaderMap::with_capacity(2);
    h.insert(crate::names::TRACEPARENT, caller.traceparent().clone());
    if let Some(s) = caller.tracestate() {
        h.insert(crate::names::TRACESTATE, s.clone());
    }
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(&h));
    let _ = span.set_parent(cx);
}

/// Writes the current span's trace context (`traceparent`, `tracestate`) into `headers`;
/// false when there is none to write (nothing exported).
pub(crate) fn inject_current(headers: &mut HeaderMap) -> bool {
    if !ACTIVE.load(Ordering::Relaxed) {
        return false;
    }
    let cx = Span::current().context();
    if !cx.span().span_context().is_valid() {
        return false;
    }
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
    true
}
