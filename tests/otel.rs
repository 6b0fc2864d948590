//! OpenTelemetry export against in-test OTLP receivers (gRPC through the opentelemetry-proto service
//! traits, HTTP/protobuf through axum + prost): one webhook request is one trace covering every stage,
//! the incoming `traceparent` is honoured, metrics arrive under their documented names, and JSON log
//! lines carry the trace id. kcaudit runs as its own process (`kcaudit serve`): the tracing subscriber
//! and the providers are process-wide.

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use common::fake_keycloak::{self, FakeKeycloak};
use common::services::free_port;
use common::*;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{MetricsService, MetricsServiceServer};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// What the receiver got: every span, and every metric name.
#[derive(Default, Clone)]
struct Received {
    spans: Arc<Mutex<Vec<Span>>>,
    metrics: Arc<Mutex<Vec<String>>>,
}

impl Received {
    fn traces(&self, req: ExportTraceServiceRequest) {
        let spans = req.resource_spans.into_iter().flat_map(|r| r.scope_spans).flat_map(|s| s.spans);
        self.spans.lock().unwrap().extend(spans);
    }

    fn metrics(&self, req: ExportMetricsServiceRequest) {
        let names = req.resource_metrics.into_iter().flat_map(|r| r.scope_metrics).flat_map(|s| s.metrics).map(|m| m.name);
        self.metrics.lock().unwrap().extend(names);
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    /// The spans of a kind, as `docs/observability.md` names them (some carry a more specific
    /// OpenTelemetry name: `POST /v1/events`, `GET /admin/realms/{realm}/users/{id}`, `deliver stdout`).
    fn named(&self, kind: &str) -> Vec<Span> {
        let is = |s: &Span| match kind {
            "webhook.request" => s.name == "POST /v1/events",
            "admin_api.request" => attr(s, "url.full").is_some(),
            "sink.deliver" => s.name.starts_with("deliver "),
            other => s.name == other,
        };
        self.spans().into_iter().filter(is).collect()
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(&self, req: tonic::Request<ExportTraceServiceRequest>) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.traces(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl MetricsService for Received {
    async fn export(&self, req: tonic::Request<ExportMetricsServiceRequest>) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.metrics(req.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

/// An OTLP/gRPC receiver on 127.0.0.1; returns its URL.
async fn grpc_receiver(r: Received) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream_of(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(r.clone()))
            .add_service(MetricsServiceServer::new(r))
            .serve_with_incoming(incoming),
    );
    format!("http://{addr}")
}

fn tokio_stream_of(listener: tokio::net::TcpListener) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move { Some((l.accept().await.map(|(s, _)| s), l)) })
}

/// An OTLP/HTTP (protobuf) receiver on 127.0.0.1; returns its base URL.
async fn http_receiver(r: Received) -> String {
    use axum::extract::State;
    use axum::routing::post;
    async fn traces(State(r): State<Received>, body: Bytes) -> Vec<u8> {
        r.traces(ExportTraceServiceRequest::decode(body).expect("protobuf trace export"));
        ExportTraceServiceResponse { partial_success: None }.encode_to_vec()
    }
    async fn metrics(State(r): State<Received>, body: Bytes) -> Vec<u8> {
        r.metrics(ExportMetricsServiceRequest::decode(body).expect("protobuf metric export"));
        ExportMetricsServiceResponse { partial_success: None }.encode_to_vec()
    }
    let app = axum::Router::new().route("/v1/traces", post(traces)).route("/v1/metrics", post(metrics)).with_state(r);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}


fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.as_ref()).and_then(|v| v.value.as_ref()).map(|v| match v {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::BoolValue(b) => b.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

/// A token exchange by a user and a client the fake Keycloak knows, so enrichment calls the admin API.
fn exchange(id: &str, audience: &str) -> String {
    let users: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(fixture("keycloak/admin-api/acme-prod.users.json")).unwrap()).unwrap();
    let user = users.iter().find_map(|u| u["id"].as_str()).unwrap();
    format!(
        r#"{{"id":"{id}","time":1773043084120,"type":"TOKEN_EXCHANGE","realmId":"4f660473-c22b-4858-a484-cd314a37e778","clientId":"api-gateway","userId":"{user}","details":{{"audience":"{audience}","subject_token_client_id":"web-portal","username":"x"}}}}"#
    )
}

struct Instance {
    child: std::process::Child,
    port: u16,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
    _kc: FakeKeycloak,
}

impl Instance {
    /// `kcaudit serve` with enrichment from the fake admin API, detection, the audit log and stdout
    /// sinks, and `[telemetry]` pointed at `endpoint`.
    async fn start(protocol: &str, endpoint: &str) -> Instance {
        let kc = FakeKeycloak::start(fixture("keycloak/admin-api")).await;
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("kc-secret");
        std::fs::write(&secret, fake_keycloak::CLIENT_SECRET).unwrap();
        let port = free_port();
        let log = dir.path().join("kcaudit.log");
        let sets = vec![
            format!("data_dir={:?}", dir.path().join("data").display().to_string()),
            format!("webhook.listen=\"127.0.0.1:{port}\""),
            format!("admin_api.url={:?}", kc.url()),
            format!("admin_api.client_secret_file={:?}", secret.display().to_string()),
            "detect.enabled=true".into(),
            "sinks.audit_log.enabled=true".into(),
            "sinks.stdout.enabled=true".into(),
            "log.format=\"json\"".into(),
            format!("telemetry.endpoint={endpoint:?}"),
            format!("telemetry.protocol={protocol:?}"),
            "telemetry.metrics_interval_secs=1".into(),
            "telemetry.headers.x-tenant=\"t-secret-value\"".into(),
        ];
        let child = spawn_serve(&sets, &log);
        let inst = Instance { child, port, log, _dir: dir, _kc: kc };
        let client = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{port}/readyz");
        for _ in 0..200 {
            if client.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
                return inst;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("kcaudit did not become ready:\n{}", inst.log_text());
    }

    async fn post(&self, body: String, traceparent: Option<&str>) -> reqwest::StatusCode {
        let mut req = reqwest::Client::new().post(format!("http://127.0.0.1:{}/v1/events", self.port)).header("content-type", "application/json").body(body);
        if let Some(tp) = traceparent {
            req = req.header("traceparent", tp).header("tracestate", "vendor=opaque");
        }
        req.send().await.unwrap().status()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait: the graceful stop flushes the exporters.
    fn stop(mut self) -> String {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        let status = self.child.wait().unwrap();
        let log = self.log_text();
        assert!(status.success(), "clean exit after SIGTERM:\n{log}");
        log
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_webhook_request_is_one_trace_covering_every_stage() {
    let received = Received::default();
    let endpoint = grpc_receiver(received.clone()).await;
    let kcaudit = Instance::start("grpc", &endpoint).await;
    let status = kcaudit.post(exchange("07e10000-0000-4000-8000-000000000001", "orders-api"), Some(&format!("00-{TRACE_ID}-{PARENT_ID}-01"))).await;
    assert_eq!(status, 200);
    // No waiting for the batch delay: the graceful stop must flush the last spans.
    let log = kcaudit.stop();
    let stages = ["webhook.request", "decode", "dedup", "enrich", "admin_api.request", "detect", "sink.deliver"];
    assert!(
        wait_until(10, || stages.iter().all(|s| !received.named(s).is_empty()) && received.named("sink.deliver").len() >= 2).await,
        "spans received: {:?}\nlog:\n{log}",
        received.spans().iter().map(|s| s.name.clone()).collect::<Vec<_>>()
    );
    let spans = received.spans();
    // One trace, and it is the caller's.
    for s in &spans {
        assert_eq!(hex::encode(&s.trace_id), TRACE_ID, "span {} is in another trace", s.name);
    }
    let one = |name: &str| {
        let v = received.named(name);
        assert_eq!(v.len(), 1, "exactly one {name} span: {:?}", v.iter().map(|s| &s.name).collect::<Vec<_>>());
        v.into_iter().next().unwrap()
    };
    let root = one("webhook.request");
    assert_eq!(hex::encode(&root.parent_span_id), PARENT_ID, "the incoming traceparent is the root's parent");
    assert_eq!(root.name, "POST /v1/events");
    assert_eq!(attr(&root, "http.request.method").as_deref(), Some("POST"));
    assert_eq!(attr(&root, "http.route").as_deref(), Some("/v1/events"));
    assert_eq!(attr(&root, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(root.trace_state, "vendor=opaque");
    for stage in ["decode", "dedup", "enrich", "detect"] {
        let s = one(stage);
        assert_eq!(s.parent_span_id, root.span_id, "{stage} is a child of the request");
    }
    let enrich = one("enrich");
    let calls = received.named("admin_api.request");
    assert!(!calls.is_empty());
    for c in &calls {
        assert_eq!(c.parent_span_id, enrich.span_id, "admin-API call {} is a child of enrich", c.name);
        assert!(attr(c, "http.route").unwrap().starts_with('/'), "{c:?}");
        assert!(attr(c, "http.response.status_code").is_some(), "{c:?}");
        assert!(!attr(c, "url.full").unwrap().contains('?'), "no query string in url.full");
    }
    assert!(calls.iter().any(|c| attr(c, "http.route").as_deref() == Some("/admin/realms/{realm}/users/{id}")), "a user lookup was traced");
    assert!(calls.iter().any(|c| attr(c, "http.request.method").as_deref() == Some("POST")), "the token request was traced");
    let deliveries = received.named("sink.deliver");
    let mut sinks: Vec<String> = deliveries.iter().map(|d| attr(d, "kcaudit.sink").unwrap()).collect();
    sinks.sort();
    assert_eq!(sinks, ["audit_log", "stdout"], "one delivery span per sink");
    for d in &deliveries {
        assert_eq!(d.parent_span_id, root.span_id, "delivery to {:?} is a child of the request", attr(d, "kcaudit.sink"));
        assert_eq!(attr(d, "kcaudit.events").as_deref(), Some("1"));
    }
    // Nothing secret in any attribute: not the admin API's token or client secret, not the exporter's headers.
    let everything = format!("{spans:?}");
    for secret in [fake_keycloak::CLIENT_SECRET, "token-1", "Bearer", "t-secret-value"] {
        assert!(!everything.contains(secret), "{secret:?} leaked into a span");
        assert!(!log.contains(secret), "{secret:?} leaked into the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_traces_arrive_over_otlp_http_under_the_documented_names() {
    let received = Received::default();
    let endpoint = http_receiver(received.clone()).await;
    let kcaudit = Instance::start("http", &endpoint).await;
    assert_eq!(kcaudit.post(exchange("07e10000-0000-4000-8000-000000000002", "orders-api"), None).await, 200);
    let expected = ["http.server.request.duration", "kcaudit.records.received", "kcaudit.events.accepted", "kcaudit.sink.events.delivered", "kcaudit.webhook.requests", "kcaudit.enrichment.events"];
    let arrived = wait_until(20, || {
        let got = received.metrics.lock().unwrap();
        expected.iter().all(|n| got.iter().any(|g| g == n))
    })
    .await;
    assert!(arrived, "metrics received: {:?}\nlog:\n{}", received.metrics.lock().unwrap(), kcaudit.log_text());
    // Every exported name is documented, with its Prometheus counterpart.
    let doc = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/observability.md")).unwrap();
    let mut names = received.metrics.lock().unwrap().clone();
    names.sort();
    names.dedup();
    for n in &names {
        assert!(doc.contains(&format!("`{n}`")), "{n} is not in docs/observability.md");
    }
    for (prom, otel, _) in kcaudit::telemetry::BRIDGED {
        assert!(doc.contains(&format!("`{otel}`")) && doc.contains(&format!("`{prom}`")), "{otel} ({prom}) is not documented");
    }
    let log = kcaudit.stop();
    // Without a traceparent the request starts a trace of its own; traces go over HTTP too.
    assert!(wait_until(10, || !received.named("webhook.request").is_empty()).await, "no trace over HTTP:\n{log}");
    let root = &received.named("webhook.request")[0];
    assert!(root.parent_span_id.is_empty(), "a new trace has no parent");
    assert!(received.spans().iter().all(|s| s.trace_id == root.trace_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_carry_the_trace_id() {
    let received = Received::default();
    let endpoint = grpc_receiver(received.clone()).await;
    let kcaudit = Instance::start("grpc", &endpoint).await;
    let id = "07e10000-0000-4000-8000-000000000003";
    assert_eq!(kcaudit.post(exchange(id, "orders-api"), None).await, 200);
    // The same id with other content: the dedup stage logs a warning inside the second request's trace.
    let status = kcaudit.post(exchange(id, "billing-api"), Some(&format!("00-{TRACE_ID}-{PARENT_ID}-01"))).await;
    assert_eq!(status, 200);
    let log = kcaudit.stop();
    let lines: Vec<serde_json::Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let warning = lines
        .iter()
        .find(|l| l["message"].as_str().is_some_and(|m| m.contains("reused with different content")))
        .unwrap_or_else(|| panic!("no conflict warning in the log:\n{log}"));
    assert_eq!(warning["trace_id"], TRACE_ID, "{warning}");
    let span_id = warning["span_id"].as_str().unwrap();
    assert_eq!(span_id.len(), 16);
    assert!(wait_until(10, || received.spans().iter().any(|s| hex::encode(&s.span_id) == span_id)).await, "the log line's span was exported");
    assert_eq!(received.spans().iter().find(|s| hex::encode(&s.span_id) == span_id).unwrap().name, "dedup");
    // Lines outside any request carry no ids.
    let listening = lines.iter().find(|l| l["message"].as_str().is_some_and(|m| m.contains("listening"))).expect("start-up line");
    assert!(listening.get("trace_id").is_none(), "{listening}");
}
