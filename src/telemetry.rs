//! OpenTelemetry: traces and metrics over OTLP (gRPC or HTTP/protobuf), for `kcaudit serve`.
//!
//! Off by default. With `[telemetry] endpoint` (or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`) set,
//! every webhook request, Kafka poll batch and admin-API poll batch becomes one trace: decode, dedup,
//! enrich (with one span per Keycloak admin-API call), detect and one delivery span per sink (see
//! `docs/observability.md` for the tree and the attribute names). An incoming W3C `traceparent` is
//! honoured, so a trace started in front of kcaudit continues through it.
//!
//! Cost when off: kcaudit's spans all use the [`TARGET`] target, which the log filter always turns
//! off; with no OpenTelemetry layer installed nothing else enables them, so their callsites are
//! disabled once and for all (no allocation, no span ids), and [`TraceParent`] stays `None`.
//!
//! The exporters run on a small runtime of their own: export work never competes with the pipeline's
//! tasks, the exporters can be built before the main runtime exists (logging is set up first), and
//! the final flush at shutdown cannot deadlock the runtime that asked for it.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use opentelemetry::metrics::{Histogram, MeterProvider as _};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanId, TraceContextExt, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::Problem;
use crate::metrics::Metrics;

/// The `tracing` target of every span kcaudit exports. The log output never shows these spans and the
/// OpenTelemetry layer sees nothing else (no spans of dependencies, no log events: nothing a library
/// logs about a request, such as a header, can reach the collector).
pub const TARGET: &str = "kcaudit_otel";

/// `[telemetry]`: OpenTelemetry export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryOptions {
    /// Base URL of the OTLP receiver (an OpenTelemetry Collector, Jaeger, Tempo ...), e.g.
    /// `http://otel-collector:4317` for gRPC or `http://otel-collector:4318` for HTTP (kcaudit adds
    /// `/v1/traces` and `/v1/metrics`). Unset: telemetry is off, unless `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `_METRICS_ENDPOINT`) is set in the environment.
    pub endpoint: Option<String>,
    /// `grpc` or `http` (protobuf over HTTP). Unset: `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`,
    /// `http/protobuf`), else `grpc`.
    pub protocol: Option<OtlpProtocol>,
    /// Extra request headers (gRPC metadata) for the receiver, e.g. a tenant id. Values are treated as
    /// secrets: never logged, never shown by `kcaudit check`. Put credentials in `headers_env` instead.
    pub headers: SecretHeaders,
    /// Name of an environment variable holding more headers as `key=value,key2=value2` (the
    /// `OTEL_EXPORTER_OTLP_HEADERS` format, which the exporter also reads by itself): where an API key
    /// for a hosted backend belongs.
    pub headers_env: Option<String>,
    /// `service.name` of the exported resource. Unset: `OTEL_SERVICE_NAME`, else `kcaudit`.
    pub service_name: Option<String>,
    /// More resource attributes (`deployment.environment.name = "prod"`, ...); added to those from
    /// `OTEL_RESOURCE_ATTRIBUTES`.
    pub resource_attributes: BTreeMap<String, String>,
    /// Export traces.
    pub traces: bool,
    /// Export the pipeline's metrics (the same as `/metrics`, under OpenTelemetry names).
    pub metrics: bool,
    /// Share of new traces recorded, 0.0 to 1.0. Parent-based: a request whose `traceparent` says
    /// "sampled" (or "not sampled") is followed whatever the ratio, so a trace is never cut in half.
    pub sampling_ratio: f64,
    /// Seconds between metric exports.
    pub metrics_interval_secs: u64,
    /// Timeout of one export request, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for TelemetryOptions {
    fn default() -> Self {
        TelemetryOptions {
            endpoint: None,
            protocol: None,
            headers: SecretHeaders::default(),
            headers_env: None,
            service_name: None,
            resource_attributes: BTreeMap::new(),
            traces: true,
            metrics: true,
            sampling_ratio: 1.0,
            metrics_interval_secs: 60,
            timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    /// OTLP/gRPC (port 4317 by convention).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318 by convention).
    Http,
}

/// Header name → value, with the values kept out of `Debug` output (configs get logged and printed).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct SecretHeaders(pub BTreeMap<String, String>);

impl std::fmt::Debug for SecretHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.0.keys().map(|k| (k, "<redacted>"))).finish()
    }
}

/// Why telemetry could not start. Messages name the option, never a header value.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry.{key}: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("cannot start the OpenTelemetry exporter thread: {0}")]
    Runtime(std::io::Error),
    #[error("OpenTelemetry {signal} exporter: {message}")]
    Exporter { signal: &'static str, message: String },
}

const ENDPOINT_VARS: [&str; 3] = ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"];

impl TelemetryOptions {
    /// Whether `kcaudit serve` exports anything: an endpoint in the file or in the environment.
    pub fn is_enabled(&self) -> bool {
        (self.traces || self.metrics) && (self.endpoint.is_some() || ENDPOINT_VARS.iter().any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty())))
    }

    fn protocol(&self) -> OtlpProtocol {
        self.protocol.unwrap_or_else(|| match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
            Ok("http/protobuf") | Ok("http") => OtlpProtocol::Http,
            _ => OtlpProtocol::Grpc,
        })
    }

    /// Every header to send: `headers`, then those in `headers_env`. Errors name the header, not the value.
    fn all_headers(&self) -> Result<BTreeMap<String, String>, TelemetryError> {
        let mut out = self.headers.0.clone();
        if let Some(var) = &self.headers_env {
            let raw = std::env::var(var).map_err(|_| TelemetryError::Invalid { key: "headers_env", message: format!("environment variable {var} is not set") })?;
            for pair in raw.split(',').filter(|p| !p.trim().is_empty()) {
                let Some((k, v)) = pair.split_once('=') else {
                    return Err(TelemetryError::Invalid { key: "headers_env", message: format!("{var}: expected key=value pairs separated by commas") });
                };
                out.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
        for (k, v) in &out {
            if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                return Err(TelemetryError::Invalid { key: "headers", message: format!("{k:?} is not a valid header name") });
            }
            if http::HeaderValue::from_str(v).is_err() {
                return Err(TelemetryError::Invalid { key: "headers", message: format!("the value of {k:?} is not a valid header value") });
            }
        }
        Ok(out)
    }

    fn check(&self) -> Result<(), TelemetryError> {
        let invalid = |key, message: String| Err(TelemetryError::Invalid { key, message });
        if let Some(e) = &self.endpoint {
            match e.parse::<http::Uri>() {
                Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
                _ => return invalid("endpoint", format!("{e:?} is not an http:// or https:// URL")),
            }
        }
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            return invalid("sampling_ratio", format!("{} is not between 0.0 and 1.0", self.sampling_ratio));
        }
        if self.metrics_interval_secs == 0 {
            return invalid("metrics_interval_secs", "must be greater than 0".into());
        }
        if self.timeout_ms == 0 {
            return invalid("timeout_ms", "must be greater than 0".into());
        }
        if self.service_name.as_deref().is_some_and(|s| s.trim().is_empty()) {
            return invalid("service_name", "must not be empty".into());
        }
        self.all_headers().map(|_| ())
    }

    /// Problems for `kcaudit check` and start-up (only when telemetry is on: a disabled section is inert).
    pub fn problems(&self) -> Vec<Problem> {
        if !self.is_enabled() && self.endpoint.is_none() {
            return Vec::new();
        }
        match self.check() {
            Ok(()) => Vec::new(),
            Err(TelemetryError::Invalid { key, message }) => vec![Problem { key: format!("telemetry.{key}"), message, is_error: true }],
            Err(e) => vec![Problem { key: "telemetry".into(), message: e.to_string(), is_error: true }],
        }
    }

    fn resource(&self) -> Resource {
        // Resource::builder() reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
        let mut b = Resource::builder().with_attributes(self.resource_attributes.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())));
        let from_env = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|s| !s.is_empty())
            || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|s| s.contains("service.name="));
        if let Some(name) = &self.service_name {
            b = b.with_service_name(name.clone());
        } else if !from_env && !self.resource_attributes.contains_key("service.name") {
            b = b.with_service_name("kcaudit");
        }
        b.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))).build()
    }
}

/// The running providers, kept for the shutdown flush.
pub struct Telemetry {
    runtime: tokio::runtime::Runtime,
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
}

static ACTIVE: Mutex<Option<Telemetry>> = Mutex::new(None);
static REQUEST_DURATION: OnceLock<Histogram<f64>> = OnceLock::new();
/// Observable instruments must outlive their registration; kept here until shutdown.
static BRIDGE: Mutex<Vec<Box<dyn std::any::Any + Send>>> = Mutex::new(Vec::new());

/// Start the exporters and return the `tracing` layer that feeds the trace exporter (None: traces off).
/// Call once, before the subscriber is installed; [`shutdown`] flushes what is left.
pub fn init<S>(opts: &TelemetryOptions) -> Result<Option<impl tracing_subscriber::Layer<S>>, TelemetryError>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer as _;
    opts.check()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("kcaudit-otel")
        .enable_all()
        .build()
        .map_err(TelemetryError::Runtime)?;
    // tonic starts its connection task on the runtime it is built in.
    let _in = runtime.enter();
    let resource = opts.resource();
    let headers = opts.all_headers()?;
    let timeout = Duration::from_millis(opts.timeout_ms);
    let protocol = opts.protocol();
    let tracer = if opts.traces {
        let exporter = match protocol {
            OtlpProtocol::Grpc => {
                let b = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_timeout(timeout).with_metadata(metadata(&headers));
                with_tls(with_endpoint(b, opts, None), opts).build()
            }
            OtlpProtocol::Http => {
                let b = opentelemetry_otlp::SpanExporter::builder().with_http().with_timeout(timeout).with_headers(headers.clone().into_iter().collect());
                with_endpoint(b, opts, Some("/v1/traces")).with_http_client(ReqwestOnRuntime::new(timeout, runtime.handle().clone())?).build()
            }
        }
        .map_err(|e| TelemetryError::Exporter { signal: "trace", message: e.to_string() })?;
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(opts.sampling_ratio))))
                .with_resource(resource.clone())
                .build(),
        )
    } else {
        None
    };
    let meter = if opts.metrics {
        let exporter = match protocol {
            OtlpProtocol::Grpc => {
                let b = opentelemetry_otlp::MetricExporter::builder().with_tonic().with_timeout(timeout).with_metadata(metadata(&headers));
                with_tls(with_endpoint(b, opts, None), opts).build()
            }
            OtlpProtocol::Http => {
                let b = opentelemetry_otlp::MetricExporter::builder().with_http().with_timeout(timeout).with_headers(headers.into_iter().collect());
                with_endpoint(b, opts, Some("/v1/metrics")).with_http_client(ReqwestOnRuntime::new(timeout, runtime.handle().clone())?).build()
            }
        }
        .map_err(|e| TelemetryError::Exporter { signal: "metric", message: e.to_string() })?;
        let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(exporter).with_interval(Duration::from_secs(opts.metrics_interval_secs)).build();
        let provider = SdkMeterProvider::builder().with_reader(reader).with_resource(resource).build();
        let _ = REQUEST_DURATION.set(
            provider
                .meter("kcaudit")
                .f64_histogram("http.server.request.duration")
                .with_unit("s")
                .with_description("Webhook request duration, from request to response (including sink acknowledgement).")
                .with_boundaries(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
                .build(),
        );
        Some(provider)
    } else {
        None
    };
    drop(_in);
    let layer = tracer.as_ref().map(|t| {
        tracing_opentelemetry::layer()
            .with_tracer(t.tracer("kcaudit"))
            .with_location(false)
            .with_threads(false)
            .with_filter(tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::TRACE))
    });
    *ACTIVE.lock().unwrap_or_else(|p| p.into_inner()) = Some(Telemetry { runtime, tracer, meter });
    Ok(layer)
}

fn with_endpoint<B: WithExportConfig>(b: B, opts: &TelemetryOptions, path: Option<&str>) -> B {
    match (&opts.endpoint, path) {
        (Some(e), Some(p)) => b.with_endpoint(format!("{}{p}", e.trim_end_matches('/'))),
        (Some(e), None) => b.with_endpoint(e.clone()),
        // The exporter reads OTEL_EXPORTER_OTLP_(TRACES_|METRICS_)ENDPOINT itself.
        (None, _) => b,
    }
}

fn metadata(headers: &BTreeMap<String, String>) -> opentelemetry_otlp::tonic_types::metadata::MetadataMap {
    let mut m = http::HeaderMap::new();
    for (k, v) in headers {
        // Validated in `check`.
        if let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()), http::HeaderValue::from_str(v)) {
            m.insert(k, v);
        }
    }
    opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(m)
}

/// TLS for `https://` gRPC endpoints: rustls (ring) with the Mozilla roots, as everywhere else in
/// kcaudit (the exporter's own default has no roots).
fn with_tls<B: WithTonicConfig>(b: B, opts: &TelemetryOptions) -> B {
    let endpoint = opts.endpoint.clone().or_else(|| ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"].iter().find_map(|v| std::env::var(v).ok()));
    if endpoint.is_some_and(|e| e.starts_with("https://")) {
        b.with_tls_config(opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new().with_webpki_roots())
    } else {
        b
    }
}

/// OTLP/HTTP on the reqwest client kcaudit already uses (rustls with ring): opentelemetry-http's own
/// reqwest support would pull a second reqwest and aws-lc. Requests run on the telemetry runtime,
/// because the SDK calls exporters from its own threads, outside any tokio context.
#[derive(Debug)]
struct ReqwestOnRuntime {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl ReqwestOnRuntime {
    fn new(timeout: Duration, runtime: tokio::runtime::Handle) -> Result<Self, TelemetryError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("kcaudit/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TelemetryError::Exporter { signal: "http", message: e.to_string() })?;
        Ok(ReqwestOnRuntime { client, runtime })
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for ReqwestOnRuntime {
    async fn send_bytes(&self, request: http::Request<bytes::Bytes>) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let (parts, body) = request.into_parts();
        let call = async move {
            let mut req = client.request(parts.method, parts.uri.to_string()).headers(parts.headers).body(body);
            if let Some(v) = parts.version.ne(&http::Version::default()).then_some(parts.version) {
                req = req.version(v);
            }
            let resp = req.send().await?;
            let mut out = http::Response::builder().status(resp.status());
            if let Some(h) = out.headers_mut() {
                *h = resp.headers().clone();
            }
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>(out.body(body))
        };
        let response = self.runtime.spawn(call).await??;
        Ok(response?)
    }
}

/// Flush and stop the exporters (graceful shutdown): the last spans and metric points are sent.
/// Blocking; safe from inside the main runtime (the exporters run on their own).
pub fn shutdown() {
    let Some(t) = ACTIVE.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
    BRIDGE.lock().unwrap_or_else(|p| p.into_inner()).clear();
    let flush = move || {
        if let Some(p) = &t.tracer {
            if let Err(e) = p.shutdown() {
                eprintln!("kcaudit: OpenTelemetry trace export did not finish: {e}");
            }
        }
        if let Some(p) = &t.meter {
            if let Err(e) = p.shutdown() {
                eprintln!("kcaudit: OpenTelemetry metric export did not finish: {e}");
            }
        }
        t.runtime.shutdown_timeout(Duration::from_secs(1));
    };
    // A runtime cannot be dropped from inside another one: finish on a plain thread.
    let _ = std::thread::spawn(flush).join();
}

/// Record one webhook request in `http.server.request.duration` (no-op when metrics export is off).
pub fn record_request(seconds: f64, method: &str, route: &str, status: u16) {
    if let Some(h) = REQUEST_DURATION.get() {
        h.record(
            seconds,
            &[
                KeyValue::new("http.request.method", method.to_string()),
                KeyValue::new("http.route", route.to_string()),
                KeyValue::new("http.response.status_code", i64::from(status)),
            ],
        );
    }
}

/// The bridge: Prometheus name → OpenTelemetry name, unit, kind. `/metrics` stays the source of truth;
/// each OpenTelemetry instrument is observable and reads the same registry at export time, so the two
/// can never disagree and the hot path records once. The webhook latency histogram is the exception:
/// it is recorded directly as `http.server.request.duration` (semantic conventions; observable
/// histograms do not exist). Documented in `docs/observability.md`; a test keeps the two in step.
pub const BRIDGED: &[(&str, &str, &str)] = &[
    ("kcaudit_records_received_total", "kcaudit.records.received", "{record}"),
    ("kcaudit_events_accepted_total", "kcaudit.events.accepted", "{event}"),
    ("kcaudit_events_duplicate_total", "kcaudit.events.duplicate", "{event}"),
    ("kcaudit_records_rejected_total", "kcaudit.records.rejected", "{record}"),
    ("kcaudit_records_skipped_total", "kcaudit.records.skipped", "{record}"),
    ("kcaudit_decode_warnings_total", "kcaudit.decode.warnings", "{warning}"),
    ("kcaudit_events_delivered_total", "kcaudit.sink.events.delivered", "{event}"),
    ("kcaudit_events_filtered_total", "kcaudit.sink.events.filtered", "{event}"),
    ("kcaudit_sink_retries_total", "kcaudit.sink.retries", "{retry}"),
    ("kcaudit_sink_errors_total", "kcaudit.sink.errors", "{error}"),
    ("kcaudit_dead_letters_total", "kcaudit.dead_letters", "{record}"),
    ("kcaudit_webhook_requests_total", "kcaudit.webhook.requests", "{request}"),
    ("kcaudit_enrichment_total", "kcaudit.enrichment.events", "{event}"),
    ("kcaudit_kafka_consumer_lag", "kcaudit.kafka.consumer.lag", "{message}"),
    ("kcaudit_kafka_assigned_partitions", "kcaudit.kafka.assigned_partitions", "{partition}"),
    ("kcaudit_spool_bytes", "kcaudit.spool.size", "By"),
    ("kcaudit_spool_appends_total", "kcaudit.spool.appends", "{request}"),
    ("kcaudit_spool_fsyncs_total", "kcaudit.spool.fsyncs", "{fsync}"),
    ("kcaudit_spool_full_total", "kcaudit.spool.full", "{request}"),
    ("kcaudit_spool_quarantined_bytes_total", "kcaudit.spool.quarantined", "By"),
    ("kcaudit_detect_changelog_records_total", "kcaudit.detect.changelog.records", "{record}"),
    ("kcaudit_detect_state_rows_restored_total", "kcaudit.detect.state.rows_restored", "{row}"),
    ("kcaudit_detect_state_restore_failures_total", "kcaudit.detect.state.restore_failures", "{failure}"),
    ("kcaudit_dead_letters_replayed_total", "kcaudit.dead_letters.replayed", "{record}"),
    ("kcaudit_dead_letters_purged_total", "kcaudit.dead_letters.purged", "{record}"),
    ("kcaudit_config_reloads_total", "kcaudit.config.reloads", "{reload}"),
    ("kcaudit_config_generation", "kcaudit.config.generation", "{generation}"),
    ("kcaudit_config_last_applied_timestamp_seconds", "kcaudit.config.last_applied", "s"),
];

/// A Prometheus label as an OpenTelemetry attribute: semantic-convention names where one fits.
fn attribute_name(metric: &str, label: &str) -> String {
    match (metric, label) {
        ("kcaudit_webhook_requests_total", "status") => "http.response.status_code".into(),
        ("kcaudit_kafka_consumer_lag", "topic") => "messaging.destination.name".into(),
        ("kcaudit_kafka_consumer_lag", "partition") => "messaging.destination.partition.id".into(),
        (_, "reason") => "error.type".into(),
        (_, other) => format!("kcaudit.{other}"),
    }
}

fn attributes(metric: &str, m: &prometheus::proto::Metric) -> Vec<KeyValue> {
    m.get_label().iter().map(|l| KeyValue::new(attribute_name(metric, l.name()), l.value().to_string())).collect()
}

/// Export `metrics` (the pipeline's registry) through the meter provider, when metrics export is on.
pub fn bridge(metrics: &Metrics) {
    let guard = ACTIVE.lock().unwrap_or_else(|p| p.into_inner());
    let Some(provider) = guard.as_ref().and_then(|t| t.meter.as_ref()) else { return };
    let meter = provider.meter("kcaudit");
    let mut keep = BRIDGE.lock().unwrap_or_else(|p| p.into_inner());
    // Families with no observation yet are not gathered: help texts are taken where present.
    let families = metrics.registry.gather();
    for &(prom, otel, unit) in BRIDGED {
        let help = families.iter().find(|f| f.name() == prom).map_or_else(|| format!("Prometheus {prom}"), |f| f.help().to_string());
        let registry = metrics.registry.clone();
        // Each callback reads the registry at export time (once a minute by default).
        let read = move || registry.gather().into_iter().find(|f| f.name() == prom);
        // Prometheus convention: counters end in `_total`; the rest are gauges.
        if prom.ends_with("_total") {
            let i = meter
                .u64_observable_counter(otel)
                .with_unit(unit)
                .with_description(help)
                .with_callback(move |o| {
                    for m in read().iter().flat_map(|f| f.get_metric()) {
                        o.observe(m.get_counter().get_value() as u64, &attributes(prom, m));
                    }
                })
                .build();
            keep.push(Box::new(i));
        } else {
            let i = meter
                .i64_observable_gauge(otel)
                .with_unit(unit)
                .with_description(help)
                .with_callback(move |o| {
                    for m in read().iter().flat_map(|f| f.get_metric()) {
                        o.observe(m.get_gauge().get_value() as i64, &attributes(prom, m));
                    }
                })
                .build();
            keep.push(Box::new(i));
        }
    }
}

/// The W3C trace context of an incoming request (`traceparent`, `tracestate`); an empty context when
/// absent or malformed (the request then starts a new trace).
pub fn extract(headers: &http::HeaderMap) -> opentelemetry::Context {
    struct Headers<'a>(&'a http::HeaderMap);
    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }
    TraceContextPropagator::new().extract(&Headers(headers))
}

/// The trace context a batch carries from its source through the pipeline to every sink: the sink
/// drivers batch events from many requests, so the context travels with each event rather than in
/// the task. `None` (no allocation) when tracing is off or the source is untraced.
#[derive(Clone, Default)]
pub struct TraceParent(Option<opentelemetry::Context>);

impl TraceParent {
    /// The current span's context (the source's request or batch span).
    pub fn current() -> TraceParent {
        let span = tracing::Span::current();
        if span.is_disabled() {
            return TraceParent(None);
        }
        let cx = span.context();
        TraceParent(cx.span().span_context().is_valid().then_some(cx))
    }

    pub fn is_traced(&self) -> bool {
        self.0.is_some()
    }

    /// The parent span's id: the sink driver groups a batch's events by it.
    pub fn span_id(&self) -> Option<SpanId> {
        self.0.as_ref().map(|cx| cx.span().span_context().span_id())
    }

    /// Make `span` a child of this context (no-op when untraced).
    pub fn adopt(&self, span: &tracing::Span) {
        if let Some(cx) = &self.0 {
            let _ = span.set_parent(cx.clone());
        }
    }
}

/// A child span of `parent` (disabled, at no cost, when `parent` is untraced).
#[macro_export]
macro_rules! child_span {
    ($parent:expr, $name:expr $(, $($fields:tt)*)?) => {{
        let parent: &$crate::telemetry::TraceParent = $parent;
        if parent.is_traced() {
            let span = tracing::info_span!(target: "kcaudit_otel", parent: None, $name $(, $($fields)*)?);
            parent.adopt(&span);
            span
        } else {
            tracing::Span::none()
        }
    }};
}

/// The trace and span ids of the current span, for log lines (None outside traced work).
pub fn current_ids() -> Option<(String, String)> {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// JSON log lines with `trace_id` and `span_id` of the current span, so a log line leads to its trace.
/// Wraps the standard JSON format and adds the two fields inside its object.
pub struct WithTraceIds<F>(pub F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let Some((trace_id, span_id)) = current_ids() else { return self.0.format_event(ctx, writer, event) };
        let mut line = String::new();
        self.0.format_event(ctx, tracing_subscriber::fmt::format::Writer::new(&mut line), event)?;
        match line.trim_end().strip_suffix('}') {
            Some(head) => writeln!(writer, "{head},\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}"),
            None => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_never_appear_in_debug_output() {
        let mut o = TelemetryOptions::default();
        o.headers.0.insert("authorization".into(), "Bearer s3cr3t".into());
        let shown = format!("{o:?}");
        assert!(shown.contains("authorization") && !shown.contains("s3cr3t"), "{shown}");
    }

    #[test]
    fn invalid_settings_are_named() {
        let bad = |f: fn(&mut TelemetryOptions)| {
            let mut o = TelemetryOptions { endpoint: Some("http://collector:4317".into()), ..Default::default() };
            f(&mut o);
            o.problems().into_iter().map(|p| p.key).collect::<Vec<_>>()
        };
        assert_eq!(bad(|_| {}), Vec::<String>::new());
        assert_eq!(bad(|o| o.endpoint = Some("collector:4317".into())), ["telemetry.endpoint"]);
        assert_eq!(bad(|o| o.sampling_ratio = 1.5), ["telemetry.sampling_ratio"]);
        assert_eq!(bad(|o| o.metrics_interval_secs = 0), ["telemetry.metrics_interval_secs"]);
        assert_eq!(bad(|o| {
            o.headers.0.insert("x-tenant".into(), "a\nb".into());
        }), ["telemetry.headers"]);
        let p = {
            let mut o = TelemetryOptions { endpoint: Some("http://c:4317".into()), ..Default::default() };
            o.headers.0.insert("x-key".into(), "top-secret\n".into());
            o.problems()
        };
        assert!(!p[0].message.contains("top-secret"), "{}", p[0].message);
    }

    #[test]
    fn an_incoming_traceparent_is_the_parent() {
        let mut h = http::HeaderMap::new();
        h.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        let cx = extract(&h);
        let sc = cx.span().span_context().clone();
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(sc.is_remote() && sc.is_sampled());
        assert!(!extract(&http::HeaderMap::new()).span().span_context().is_valid());
    }

    #[test]
    fn every_prometheus_metric_has_an_opentelemetry_name() {
        // Vec metrics without observations are not gathered, so read the names from the source.
        let src = include_str!("metrics.rs");
        let names: Vec<&str> = src.split('"').filter(|s| s.starts_with("kcaudit_") && !s.contains(' ')).collect();
        assert!(names.len() > 20, "{names:?}");
        for n in names.iter().filter(|n| **n != "kcaudit_webhook_request_duration_seconds") {
            assert!(BRIDGED.iter().any(|(p, _, _)| p == n), "{n} has no OpenTelemetry name");
        }
        for (prom, otel, _) in BRIDGED {
            assert!(names.contains(prom), "{prom} is not a metric");
            assert!(otel.starts_with("kcaudit.") && !otel.contains("_total"), "{otel}");
        }
    }
}
