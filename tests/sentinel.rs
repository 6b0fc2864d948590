//! The Microsoft Sentinel sink against in-test fakes of Entra ID's token endpoint and of the Azure
//! Monitor Logs Ingestion API, implementing the documented behaviour (`siem-and-detection.md` §1.6):
//!
//! - **Token endpoint** `POST /{tenant}/oauth2/v2.0/token`: a form with `grant_type=client_credentials`,
//!   `client_id`, `client_secret`, `scope`, each checked (a wrong secret is a 401 `invalid_client` with
//!   Entra's AADSTS7000215 description); tokens are counted, can be short-lived (`expires_in`) or
//!   expire on the server earlier than announced; outages can be scripted.
//! - **Ingestion** `POST /dataCollectionRules/{dcr}/streams/{stream}?api-version=2023-01-01`: bearer
//!   token checked (unknown or expired → 401), `Content-Type: application/json`, gzip inflated, a JSON
//!   array of objects required (400 otherwise), the 1 MiB uncompressed limit enforced with 413 (or 404)
//!   `ContentLengthLimitExceeded`, 429/503 with `Retry-After` scripted, 403 for a principal without the
//!   Monitoring Metrics Publisher role; accepted rows are stored, answer 204.

mod common;
use common::sink_run::items_of;
use common::sink_run::{start_sink, SinkRun};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use kcaudit::dead_letter::DeadLetterStore;
use kcaudit::event::{AuditEvent, EventKind, Outcome, Severity};
use kcaudit::pipeline::BatchReport;
use kcaudit::sinks::http_client::SecretOptions;
use kcaudit::sinks::encode::syslog::summary;
use kcaudit::sinks::route::RouteFilter;
use kcaudit::sinks::sentinel::{SentinelOptions, SentinelSink, STREAM_COLUMNS};
use kcaudit::sinks::{BatchOptions, RetryOptions};

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT_ID: &str = "0f7a1c2e-6a55-4c7b-9d43-0d6cbd4e6b1a";
const SECRET: &str = "Qx8Q~kcaudit.test-secret_value";
const DCR: &str = "dcr-0123456789abcdef0123456789abcdef";
const STREAM: &str = "Custom-KeycloakTokenExchange_CL";
const AZURE_LIMIT: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// The fake Azure (Entra ID token endpoint and Logs Ingestion API on one listener).

/// A scripted answer of the ingestion endpoint, used before anything else is checked.
#[derive(Debug, Clone)]
enum Scripted {
    /// 429 Too Many Requests, with `Retry-After` seconds when given.
    Throttle(Option<u64>),
    /// 503 Service Unavailable, with `Retry-After` seconds when given.
    Unavailable(Option<u64>),
}

#[derive(Debug, Clone)]
struct Request {
    status: u16,
    /// Uncompressed body size.
    bytes: usize,
    rows: usize,
    gzip: bool,
    at: Instant,
}

struct Azure {
    secret: String,
    /// `expires_in` announced with each token.
    expires_in: u64,
    /// How long a token is valid on the server (None = as announced).
    valid_for: Option<Duration>,
    /// Token endpoint outages: statuses answered before issuing tokens.
    token_outages: VecDeque<u16>,
    token_requests: usize,
    issued: HashMap<String, Instant>,
    /// The ingestion endpoint's size limit (uncompressed), and the status that says so.
    limit: usize,
    too_large_status: u16,
    script: VecDeque<Scripted>,
    /// Once this many requests were accepted, answer this (once).
    script_after: Option<(usize, Scripted)>,
    /// A principal without the Monitoring Metrics Publisher role: 403 once this many requests were
    /// accepted (Some(0): always).
    no_role_from: Option<usize>,
    /// Refuse every token (a token for another cloud or audience).
    refuse_tokens: bool,
    unauthorized: usize,
    requests: Vec<Request>,
    rows: Vec<Value>,
}

type Fake = Arc<Mutex<Azure>>;

fn azure_error(code: &str, message: &str) -> Value {
    json!({ "error": { "code": code, "message": message } })
}

fn json_response(status: u16, v: Value, extra: &[(&str, String)]) -> Response {
    let mut r = (StatusCode::from_u16(status).unwrap(), [(axum::http::header::CONTENT_TYPE, "application/json; charset=utf-8")], v.to_string()).into_response();
    for (k, val) in extra {
        r.headers_mut().insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), val.parse().unwrap());
    }
    r
}

fn form(body: &[u8]) -> BTreeMap<String, String> {
    let text = std::str::from_utf8(body).unwrap_or("");
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| urlencoding::decode(&s.replace('+', " ")).map(|c| c.into_owned()).unwrap_or_default();
            (dec(k), dec(v))
        })
        .collect()
}

fn entra_error(status: u16, error: &str, description: &str, code: u32) -> Response {
    json_response(
        status,
        json!({
            "error": error,
            "error_description": format!("{description} Trace ID: 0c3b1f4e-2a6d-4f7e-9b1a-5d2c3e4f5a6b Correlation ID: 7e6d5c4b-3a2f-4e1d-8c9b-0a1b2c3d4e5f Timestamp: 2026-03-14 09:26:53Z"),
            "error_codes": [code],
            "timestamp": "2026-03-14 09:26:53Z",
            "trace_id": "0c3b1f4e-2a6d-4f7e-9b1a-5d2c3e4f5a6b",
            "correlation_id": "7e6d5c4b-3a2f-4e1d-8c9b-0a1b2c3d4e5f",
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}")
        }),
        &[],
    )
}

impl Azure {
    fn token(&mut self, path: &str, headers: &HeaderMap, body: &[u8]) -> Response {
        self.token_requests += 1;
        if path != format!("/{TENANT}/oauth2/v2.0/token") {
            return entra_error(400, "invalid_request", &format!("AADSTS90002: Tenant '{}' not found.", path.split('/').nth(1).unwrap_or("")), 90002);
        }
        let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
        if !ct.starts_with("application/x-www-form-urlencoded") {
            return entra_error(400, "invalid_request", "AADSTS900144: The request body must contain the following parameter: 'grant_type'.", 900144);
        }
        if let Some(status) = self.token_outages.pop_front() {
            return json_response(status, json!({"error": "temporarily_unavailable", "error_description": "AADSTS90033: A transient error has occurred. Please try again."}), &[]);
        }
        let f = form(body);
        let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
        if get("grant_type") != "client_credentials" {
            return entra_error(400, "unsupported_grant_type", "AADSTS70003: The app requested an unsupported grant type.", 70003);
        }
        if get("client_id") != CLIENT_ID {
            return entra_error(400, "unauthorized_client", &format!("AADSTS700016: Application with identifier '{}' was not found in the directory.", get("client_id")), 700016);
        }
        if get("scope") != "https://monitor.azure.com/.default" {
            return entra_error(400, "invalid_scope", &format!("AADSTS70011: The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope {} is not valid.", get("scope")), 70011);
        }
        if get("client_secret") != self.secret {
            return entra_error(
                401,
                "invalid_client",
                &format!("AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{CLIENT_ID}'."),
                7000215,
            );
        }
        let token = format!("eyJ0eXAiOiJKV1Qi.fake-token-{}", self.token_requests);
        let valid = self.valid_for.unwrap_or(Duration::from_secs(self.expires_in));
        self.issued.insert(token.clone(), Instant::now() + valid);
        json_response(200, json!({ "token_type": "Bearer", "expires_in": self.expires_in, "ext_expires_in": self.expires_in, "access_token": token }), &[])
    }

    fn ingest(&mut self, uri: &Uri, headers: &HeaderMap, wire: &[u8]) -> Response {
        let gzip = headers.get("content-encoding").and_then(|v| v.to_str().ok()) == Some("gzip");
        let mut record = Request { status: 0, bytes: wire.len(), rows: 0, gzip, at: Instant::now() };
        let (status, resp) = self.ingest_answer(uri, headers, wire, &mut record);
        record.status = status;
        self.requests.push(record);
        resp
    }

    fn ingest_answer(&mut self, uri: &Uri, headers: &HeaderMap, wire: &[u8], record: &mut Request) -> (u16, Response) {
        let path = uri.path();
        if path != format!("/dataCollectionRules/{DCR}/streams/{STREAM}") {
            return (404, json_response(404, azure_error("NotFound", "Data collection rule with immutable Id or stream was not found."), &[]));
        }
        if uri.query() != Some("api-version=2023-01-01") {
            return (400, json_response(400, azure_error("InvalidApiVersion", "The api-version query parameter is missing or not supported."), &[]));
        }
        let bearer = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
        match self.issued.get(bearer) {
            _ if self.refuse_tokens => {
                self.unauthorized += 1;
                return (401, json_response(401, azure_error("InvalidAudience", "The audience of the access token is not valid for this resource."), &[]));
            }
            None => {
                self.unauthorized += 1;
                return (401, json_response(401, azure_error("InvalidToken", "The access token is missing or invalid."), &[]));
            }
            Some(exp) if Instant::now() >= *exp => {
                self.unauthorized += 1;
                return (401, json_response(401, azure_error("TokenExpired", "The provided access token has expired."), &[]));
            }
            Some(_) => {}
        }
        let accepted = self.requests.iter().filter(|r| r.status == 204).count();
        if self.no_role_from.is_some_and(|n| accepted >= n) {
            let msg = format!("The authentication token provided does not have access to ingest data for the data collection rule with immutable Id '{DCR}'.");
            return (403, json_response(403, azure_error("OperationFailed", &msg), &[]));
        }
        if let Some((_, s)) = self.script_after.take_if(|(n, _)| accepted >= *n) {
            self.script.push_front(s);
        }
        if let Some(s) = self.script.pop_front() {
            let (status, after) = match s {
                Scripted::Throttle(a) => (429, a),
                Scripted::Unavailable(a) => (503, a),
            };
            let extra: Vec<(&str, String)> = after.map(|a| vec![("retry-after", a.to_string())]).unwrap_or_default();
            let body = if status == 429 { azure_error("TooManyRequests", "Request rate is too large; retry later.") } else { azure_error("ServiceUnavailable", "The service is temporarily unavailable.") };
            return (status, json_response(status, body, &extra));
        }
        let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
        if !ct.starts_with("application/json") {
            return (415, json_response(415, azure_error("UnsupportedMediaType", "Content-Type must be application/json."), &[]));
        }
        let body = if record.gzip {
            let mut out = Vec::new();
            if flate2::read::GzDecoder::new(wire).read_to_end(&mut out).is_err() {
                return (400, json_response(400, azure_error("InvalidContentEncoding", "The body is not valid gzip."), &[]));
            }
            out
        } else {
            wire.to_vec()
        };
        record.bytes = body.len();
        if body.len() > self.limit || wire.len() > self.limit {
            let msg = format!("Maximum allowed content length: {} bytes (1 MB). Provided content length: {} bytes.", self.limit, body.len());
            let s = self.too_large_status;
            return (s, json_response(s, azure_error("ContentLengthLimitExceeded", &msg), &[("x-ms-error-code", "ContentLengthLimitExceeded".into())]));
        }
        let rows = match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Array(a)) if a.iter().all(Value::is_object) => a,
            _ => return (400, json_response(400, azure_error("InvalidPayload", "The request body must be a JSON array of objects."), &[])),
        };
        record.rows = rows.len();
        self.rows.extend(rows);
        (204, StatusCode::NO_CONTENT.into_response())
    }
}

async fn handler(State(az): State<Fake>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let mut az = az.lock().unwrap();
    if method != Method::POST {
        return json_response(405, azure_error("MethodNotAllowed", "POST only."), &[]);
    }
    if uri.path().ends_with("/oauth2/v2.0/token") {
        az.token(uri.path(), &headers, &body)
    } else {
        az.ingest(&uri, &headers, &body)
    }
}

/// Start the fake on a free loopback port; its base URL (authority and endpoint) and state.
async fn fake_azure() -> (String, Fake) {
    let state = Arc::new(Mutex::new(Azure {
        secret: SECRET.into(),
        expires_in: 3599,
        valid_for: None,
        token_outages: VecDeque::new(),
        token_requests: 0,
        issued: HashMap::new(),
        limit: AZURE_LIMIT,
        too_large_status: 413,
        script: VecDeque::new(),
        script_after: None,
        no_role_from: None,
        refuse_tokens: false,
        unauthorized: 0,
        requests: Vec::new(),
        rows: Vec::new(),
    }));
    let app = axum::Router::new().fallback(handler).with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, state)
}

// ---------------------------------------------------------------------------------------------
// Running the sink through a real pipeline.

/// The secret in a file (no environment races between tests); keep the file alive.
fn secret_file(secret: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), format!("{secret}\n")).unwrap();
    f
}

fn options(url: &str, secret: &tempfile::NamedTempFile) -> SentinelOptions {
    SentinelOptions {
        enabled: true,
        endpoint: url.into(),
        dcr_immutable_id: DCR.into(),
        stream: STREAM.into(),
        tenant_id: TENANT.into(),
        client_id: CLIENT_ID.into(),
        client_secret: SecretOptions { env: None, file: Some(secret.path().to_path_buf()) },
        authority: url.into(),
        timeout_ms: 5000,
        batch: BatchOptions { max_events: 1000, max_wait_ms: 50, queue_capacity: 5000 },
        retry: RetryOptions { max_attempts: 5, initial_backoff_ms: 10, max_backoff_ms: 100 },
        ..Default::default()
    }
}

/// Options whose batches close at exactly `n` events (a test's events go in one write).
fn one_batch(mut o: SentinelOptions, n: usize) -> SentinelOptions {
    o.batch = BatchOptions { max_events: n, max_wait_ms: 10_000, queue_capacity: 5000 };
    o
}

fn start(opts: &SentinelOptions) -> SinkRun {
    start_sink(Box::new(SentinelSink::new("sentinel", opts).unwrap()), &opts.batch, &opts.retry)
}

async fn fixture() -> Vec<AuditEvent> {
    common::sink_run::stable_fixture().await
}

fn fates(r: &BatchReport) -> (u64, u64, u64, u64) {
    common::sink_run::fates(std::slice::from_ref(r))
}

fn dead_reasons(r: &BatchReport) -> BTreeMap<String, String> {
    r.items.iter().filter(|i| !i.dead_lettered.is_empty()).map(|i| (i.event_id.clone().unwrap(), i.dead_lettered[0].1.clone())).collect()
}

/// How many stored rows each `EventUid` has.
fn stored(az: &Azure) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in &az.rows {
        *m.entry(r["EventUid"].as_str().unwrap().to_string()).or_default() += 1;
    }
    m
}

fn assert_each_stored_once(az: &Azure, ids: &[String]) {
    let m = stored(az);
    assert_eq!(az.rows.len(), ids.len(), "rows stored");
    for id in ids {
        assert_eq!(m.get(id), Some(&1), "{id} stored exactly once");
    }
}

fn ids(events: &[AuditEvent]) -> Vec<String> {
    events.iter().map(|e| e.id.clone()).collect()
}

// ---------------------------------------------------------------------------------------------
// Rows.

/// The stored row of `id`, without `RawEvent` (checked against the event itself).
fn row_of(az: &Azure, events: &[AuditEvent], id: &str) -> Value {
    let mut r = az.rows.iter().find(|r| r["EventUid"] == id).unwrap_or_else(|| panic!("no row for {id}")).clone();
    let raw = r.as_object_mut().unwrap().remove("RawEvent").expect("RawEvent");
    let e = events.iter().find(|e| e.id == id).unwrap();
    let back: AuditEvent = serde_json::from_str(raw.as_str().expect("RawEvent is a string")).unwrap();
    assert_eq!(&back, e, "RawEvent is the canonical event");
    assert_eq!(raw.as_str().unwrap(), e.to_json_line());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_fixture_events_delivered_with_the_exact_rows() {
    let events = fixture().await;
    let (url, az) = fake_azure().await;
    let secret = secret_file(SECRET);
    let opts = one_batch(options(&url, &secret), events.len());
    let run = start(&opts);
    let report = run.push(items_of(&events)).await;
    assert_eq!(fates(&report), (67, 67, 0, 0), "{:?}", dead_reasons(&report));
    let az = az.lock().unwrap();
    assert_each_stored_once(&az, &ids(&events));
    assert_eq!(az.token_requests, 1);
    assert_eq!(az.requests.len(), 1, "67 events fit in one request");
    assert!(az.requests.iter().all(|r| r.status == 204 && r.gzip && r.bytes <= 1_000_000));

    // Counts over the whole timeline.
    let count = |k: &str, v: &str| az.rows.iter().filter(|r| r[k] == v).count();
    assert_eq!((count("EventSchema", "Authentication"), count("EventSchema", "AuditEvent")), (65, 2));
    assert_eq!((count("EventType", "Logon"), count("EventType", "Elevate"), count("EventType", "Logoff"), count("EventType", "Create")), (59, 6, 0, 2));
    assert_eq!((count("EventResult", "Success"), count("EventResult", "Failure")), (55, 12));
    assert_eq!(count("LogonProtocol", "OAuth 2.0 Token Exchange"), events.iter().filter(|e| e.is_token_exchange()).count());
    assert_eq!(count("EventResult", "Failure"), events.iter().filter(|e| e.outcome == Outcome::Failure).count());
    let flagged = events.iter().filter(|e| !e.findings.is_empty()).count();
    assert!(flagged > 0);
    assert_eq!(az.rows.iter().filter(|r| r.get("FindingRules").is_some_and(|v| v.is_array())).count(), flagged);
    assert_eq!(az.rows.iter().filter(|r| r.get("Severity").is_some()).count(), events.iter().filter(|e| e.severity.is_some()).count());
    for e in &events {
        let r = az.rows.iter().find(|r| r["EventUid"] == e.id.as_str()).unwrap();
        assert_eq!(r["TimeGenerated"], kcaudit::event::format_time(&e.time.unwrap()));
        assert_eq!(r["EventOriginalType"], e.event_type.as_str());
        assert_eq!(r["EventSchema"], if e.kind == EventKind::Admin { "AuditEvent" } else { "Authentication" });
        let rules: Vec<&str> = e.findings.iter().map(|f| f.rule.as_str()).collect();
        if !rules.is_empty() {
            assert_eq!(r["FindingRules"], json!(rules));
            assert_eq!(r["FindingReasons"].as_array().unwrap().len(), rules.len());
        }
    }

    // An impersonation of a privileged user: sam.ortiz takes on ops.admin through support-console.
    let check = |id: &str, expected: fn(&AuditEvent) -> Value| {
        let e = events.iter().find(|e| e.id == id).unwrap();
        let row = row_of(&az, &events, id);
        assert_eq!(row, expected(e), "{}", serde_json::to_string_pretty(&row).unwrap());
    };
    check("8103771d-fd89-4b0d-b38d-539594fc64eb", expected_impersonation);
    // A failure: a refused exchange (not_allowed) by reporting-batch, before any user was resolved.
    check("bd64353c-90ed-4d9e-b0f9-0a648c9b67f0", expected_failure);
    // A failed login (wrong password).
    check("acbd10eb-bcdb-4f1a-8a76-19f9255e1bdc", expected_login_failure);
    // An admin event: kc-root adds an audience mapper to api-gateway.
    check("e0c5a0d5-331b-4b0a-b4f6-2905d7bebb85", expected_admin);
    drop(az);
    run.pipeline.shutdown().await;
}

/// Findings columns as the event has them (the detection rules evolve; the row must follow).
fn findings_columns(e: &AuditEvent) -> Value {
    let mut m = serde_json::Map::new();
    if !e.findings.is_empty() {
        m.insert("FindingRules".into(), json!(e.findings.iter().map(|f| &f.rule).collect::<Vec<_>>()));
        m.insert("FindingReasons".into(), json!(e.findings.iter().map(|f| &f.reason).collect::<Vec<_>>()));
    }
    if let Some(s) = e.severity {
        m.insert("Severity".into(), json!(s.name()));
    }
    m.insert(
        "EventSeverity".into(),
        json!(match e.severity {
            None | Some(Severity::Info) => "Informational",
            Some(Severity::Low) => "Low",
            Some(Severity::Medium) => "Medium",
            Some(_) => "High",
        }),
    );
    Value::Object(m)
}

fn merge(mut a: Value, b: Value) -> Value {
    a.as_object_mut().unwrap().extend(b.as_object().unwrap().clone());
    a
}

fn expected_impersonation(e: &AuditEvent) -> Value {
    merge(
        json!({
            "TimeGenerated": "2026-03-11T02:13:41.509Z",
            "EventStartTime": "2026-03-11T02:13:41.509Z",
            "EventEndTime": "2026-03-11T02:13:41.509Z",
            "EventCount": 1,
            "EventVendor": "Keycloak",
            "EventProduct": "Keycloak",
            "EventSchema": "Authentication",
            "EventSchemaVersion": "0.1.4",
            "EventType": "Elevate",
            "EventSubType": "AssumeRole",
            "EventResult": "Success",
            "EventOriginalType": "TOKEN_EXCHANGE",
            "EventUid": "8103771d-fd89-4b0d-b38d-539594fc64eb",
            "EventMessage": summary(e),
            "Dvc": "Keycloak",
            "LogonProtocol": "OAuth 2.0 Token Exchange",
            "TargetUsername": "ops.admin",
            "TargetUsernameType": "Simple",
            "TargetUserId": "679f23d6-aa24-4fc8-9209-ffd6d2b352b5",
            "TargetUserType": "Admin",
            "TargetUserScope": "acme-prod",
            "ActorUsername": "sam.ortiz",
            "ActorUsernameType": "Simple",
            "ActorUserId": "6ae5c024-5a21-43d3-be45-86b619d9e8dd",
            "ActorUserType": "Regular",
            "ActorScope": "acme-prod",
            "ActingAppId": "support-console",
            "ActingAppName": "Customer Support Console",
            "TargetAppName": "support-console",
            "SrcIpAddr": "203.0.113.66",
            "Realm": "acme-prod",
            "AdditionalFields": {
                "ExchangeFlavour": "legacy_v1",
                "RequestedSubject": "ops.admin",
                "RequestedTokenType": "urn:ietf:params:oauth:token-type:refresh_token",
                "Scope": "openid profile email",
                "WithinPolicy": "unknown"
            }
        }),
        findings_columns(e),
    )
}

fn expected_failure(e: &AuditEvent) -> Value {
    merge(
        json!({
            "TimeGenerated": "2026-03-11T11:20:05.118Z",
            "EventStartTime": "2026-03-11T11:20:05.118Z",
            "EventEndTime": "2026-03-11T11:20:05.118Z",
            "EventCount": 1,
            "EventVendor": "Keycloak",
            "EventProduct": "Keycloak",
            "EventSchema": "Authentication",
            "EventSchemaVersion": "0.1.4",
            "EventType": "Logon",
            "EventResult": "Failure",
            "EventResultDetails": "Logon violates policy",
            "EventOriginalResultDetails": "not_allowed",
            "EventOriginalType": "TOKEN_EXCHANGE_ERROR",
            "EventUid": "bd64353c-90ed-4d9e-b0f9-0a648c9b67f0",
            "EventMessage": summary(e),
            "Dvc": "Keycloak",
            "LogonProtocol": "OAuth 2.0 Token Exchange",
            "ActingAppId": "reporting-batch",
            "ActingAppName": "Nightly reporting batch",
            "TargetAppName": "payments-api",
            "SrcIpAddr": "198.51.100.23",
            "Realm": "acme-prod",
            "AdditionalFields": {
                "ExchangeFlavour": "unknown",
                "RequestedTokenType": "urn:ietf:params:oauth:token-type:access_token",
                "WithinPolicy": "unknown"
            }
        }),
        findings_columns(e),
    )
}

fn expected_login_failure(e: &AuditEvent) -> Value {
    merge(
        json!({
            "TimeGenerated": "2026-03-10T11:02:44.019Z",
            "EventStartTime": "2026-03-10T11:02:44.019Z",
            "EventEndTime": "2026-03-10T11:02:44.019Z",
            "EventCount": 1,
            "EventVendor": "Keycloak",
            "EventProduct": "Keycloak",
            "EventSchema": "Authentication",
            "EventSchemaVersion": "0.1.4",
            "EventType": "Logon",
            "EventResult": "Failure",
            "EventResultDetails": "Incorrect password",
            "EventOriginalResultDetails": "invalid_user_credentials",
            "EventOriginalType": "LOGIN_ERROR",
            "EventUid": "acbd10eb-bcdb-4f1a-8a76-19f9255e1bdc",
            "EventMessage": "LOGIN_ERROR web-portal user erin.walsh failed: invalid_user_credentials",
            "Dvc": "Keycloak",
            "TargetUsername": "erin.walsh",
            "TargetUsernameType": "Simple",
            "TargetUserId": "d74a2d95-2d52-4935-8b9b-1660257dd855",
            "TargetUserType": "Regular",
            "TargetUserScope": "acme-prod",
            "TargetAppName": "web-portal",
            "SrcIpAddr": "192.0.2.140",
            "Realm": "acme-prod"
        }),
        findings_columns(e),
    )
}

fn expected_admin(e: &AuditEvent) -> Value {
    merge(
        json!({
            "TimeGenerated": "2026-03-10T17:45:12.640Z",
            "EventStartTime": "2026-03-10T17:45:12.640Z",
            "EventEndTime": "2026-03-10T17:45:12.640Z",
            "EventCount": 1,
            "EventVendor": "Keycloak",
            "EventProduct": "Keycloak",
            "EventSchema": "AuditEvent",
            "EventSchemaVersion": "0.1",
            "EventType": "Create",
            "EventSubType": "PROTOCOL_MAPPER",
            "EventResult": "Success",
            "EventOriginalType": "PROTOCOL_MAPPER-CREATE",
            "EventUid": "e0c5a0d5-331b-4b0a-b4f6-2905d7bebb85",
            "EventMessage": summary(e),
            "Dvc": "Keycloak",
            "Operation": "PROTOCOL_MAPPER-CREATE",
            "Object": "clients/b23530eb-4654-4ef0-87b0-da0b39ebbd63/protocol-mappers/models/16281dfd-a580-4fc1-8aa0-5c9c43cd3849",
            "ObjectType": "Configuration Atom",
            "NewValue": "{\"name\":\"aud-hr-records\",\"protocol\":\"openid-connect\",\"protocolMapper\":\"oidc-audience-mapper\",\"config\":{\"included.client.audience\":\"hr-records-api\",\"id.token.claim\":\"false\",\"access.token.claim\":\"true\",\"introspection.token.claim\":\"true\"}}",
            "ValueType": "Other",
            "ActorUserId": "be601deb-da8f-40c6-ad0b-041be4b78457",
            "ActorUsername": "kc-root",
            "ActorUsernameType": "Simple",
            "ActorUserType": "Regular",
            "ActorScope": "de403361-f63b-49e4-9bde-6c2805b3f0e6",
            "ActingAppId": "67a55cff-7bc8-472a-b156-3908f551f9d9",
            "TargetAppName": "api-gateway",
            "SrcIpAddr": "192.0.2.5",
            "Realm": "acme-prod",
            "AdditionalFields": {
                "ResourcePath": "clients/b23530eb-4654-4ef0-87b0-da0b39ebbd63/protocol-mappers/models/16281dfd-a580-4fc1-8aa0-5c9c43cd3849",
                "ResourceType": "PROTOCOL_MAPPER"
            }
        }),
        findings_columns(e),
    )
}

/// Every key of every row is a declared stream column, and its value fits the column's type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_fits_the_stream_declaration() {
    let events = fixture().await;
    let (url, az) = fake_azure().await;
    let secret = secret_file(SECRET);
    let run = start(&one_batch(options(&url, &secret), events.len()));
    let report = run.push(items_of(&events)).await;
    assert_eq!(fates(&report), (67, 67, 0, 0), "{:?}", dead_reasons(&report));
    let types: HashMap<&str, &str> = STREAM_COLUMNS.iter().copied().collect();
    let mut used = std::collections::BTreeSet::new();
    for r in &az.lock().unwrap().rows {
        for (k, v) in r.as_object().unwrap() {
            let ty = types.get(k.as_str()).unwrap_or_else(|| panic!("{k} is not a declared column"));
            used.insert(k.clone());
            let fits = match (*ty, v) {
                ("string", Value::String(_)) => true,
                ("datetime", Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s).is_ok(),
                ("int", Value::Number(n)) => n.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
                ("dynamic", Value::Array(_) | Value::Object(_)) => true,
                _ => false,
            };
            assert!(fits, "{k} ({ty}) = {v}");
        }
        for k in ["TimeGenerated", "EventStartTime", "EventEndTime", "EventCount", "EventVendor", "EventProduct", "EventSchema", "EventSchemaVersion", "EventType", "EventResult", "Dvc", "EventUid", "RawEvent"] {
            assert!(r.get(k).is_some(), "mandatory {k} missing in {r}");
        }
        if r["EventSchema"] == "AuditEvent" {
            for k in ["Operation", "Object", "ObjectType"] {
                assert!(r.get(k).is_some(), "AuditEvent needs {k}: {r}");
            }
        }
        if let Some(ip) = r.get("SrcIpAddr") {
            assert!(ip.as_str().unwrap().parse::<std::net::IpAddr>().is_ok(), "{ip}");
        }
    }
    // The fixture exercises most of the declaration.
    assert!(used.len() >= 35, "{used:?}");
    run.pipeline.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Sizes.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_events_go_in_requests_of_at_most_max_bytes() {
    let items = common::sink_run::generated(7, 3000);
    let (url, az) = fake_azure().await;
    let secret = secret_file(SECRET);
    let opts = options(&url, &secret);
    let run = start(&opts);
    let reports = run.push_all(items).await;
    assert_eq!(common::sink_run::fates(&reports), (3000, 3000, 0, 0), "{}", common::sink_run::why(&reports));
    let az = az.lock().unwrap();
    assert!(az.requests.len() > 3, "3000 events need several requests: {}", az.requests.len());
    assert!(az.requests.iter().all(|r| r.status == 204 && r.bytes <= 1_000_000 && r.gzip), "{:?}", az.requests.iter().map(|r| (r.status, r.bytes)).collect::<Vec<_>>());
    assert!(az.requests.iter().any(|r| r.bytes > 500_000), "requests are filled up to the budget");
    let m = stored(&az);
    assert_eq!(m.len(), 3000);
    assert!(m.values().all(|n| *n == 1));
    assert_eq!(az.token_requests, 1, "one token for every request");
    drop(az);
    run.pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_json_without_gzip() {
    let events = fixture().await;
    let (url, az) = fake_azure().await;
    let secret = secret_file(SECRET);
    let mut opts = one_batch(options(&url, &secret), 10);
    opts.gzip = false;
    let run = start(&opts);
    let report = run.push(items_of(&events[..10])).await;
    assert_eq!(fates(&report), (10, 10, 0, 0), "{:?}", dead_reasons(&report));
    let az = az.lock().unwrap();
    assert_eq!(az.requests.len(), 1);
    assert!(!az.requests[0].gzip);
    assert_each_stored_once(&az, &ids(&events[..10]));
    drop(az);
    run.pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_splits_the_request_until_it_fits() {
    let events = fixture().await;
    let (url, az) = fake_azure().await;
    az.lock().unwrap().limit = 60_000;
    let secret = secret_file(SECRET);
    let run = start(&one_batch(options(&url, &secret), events.len()));
    let report = run.push(items_of(&events)).await;
    assert_eq!(fates(&report), (67, 67, 0, 0), "{:?}", dead_reasons(&report));
    let az = az.lock().unwrap();
    assert_each_stored_once(&az, &ids(&events));
    let too_large = az.requests.iter().filter(|r| r.status == 413).count();
    assert!(too_large >= 1, "the first request was too large");
    assert!(az.requests.iter().filter(|r| r.status == 204).all(|r| r.bytes <= 60_000));
    assert_eq!(az.requests.iter().filter(|r| r.status == 204).map(|r| r.rows).sum::<usize>(), 67);
    drop(az);
    let m = run.metrics.render();
    assert!(!m.contains(r#"kcaudit_sink_retries_total{sink="sentinel"}"#), "splitting happens within the write: {m}");
    run.pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_saying_too_large_splits_down_to_one_event_then_dead_letters_it() {
    let events = fixture().await;
    let (url, az) = fake_azure().await;
    // Smaller than the largest rows: those cannot go even alone.
    let sizes: Vec<usize> = events.iter().map(|e| serde_json::to_string(&kcaudit::sinks::sentinel::row(e, chrono::Utc::now())).unwrap().len() + 2).collect();
    let mut sorted = sizes.clone();
    sorted.sort();
    let limit = sorted[sorted.len() - 3] - 1;
    let too_big: Vec<String> = events.iter().zip(&sizes).filter(|(_, s)| **s > limit).map(|(e, _)| e.id.clone()).collect();
    assert!(!too_big.is_empty() && too_big.len() < 5);
    {
        let mut a = az.lock().unwrap();
        a.limit = limit;
        a.too_large_status = 404;
    }
    let secret = secret_file(SECRET);
    let run = start(&one_batch(options(&url, &secret), events.len()));
    let report = run.push(items_of(&events)).await;
    let n = too_big.len() as u64;
    assert_eq!(fates(&report), (67, 67 - n, n, 0), "{:?}", dead_reasons(&report));
    let reasons = dead_reasons(&report);
    assert_eq!(reasons.keys().cloned().collect::<Vec<_>>(), { let mut t = too_big.clone(); t.sort(); t });
    for r in reasons.values() {
        assert!(r.contains("too large even alone") && r.contains("HTTP 404") && r.contains("ContentLengthLimitExceeded") && r.contains("Maximum allowed content length"), "{r}");
    }
    let az = az.lock().unwrap();
    let delivered: Vec<String> = events.iter().map(|e| e.id.clone()).filter(|id| !too_big.contains(id)).collect();
    assert_each_stored_once(&az, &delivered);
    drop(az);
    let dl = DeadLetterStore::read_all(&run.dlq).unwrap();
    assert_eq!(dl.len(), too_big.len());
    run.pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_over_the_budget_is_dead_lettered_without_a_request() {
    let events = fixture().await;
    let (url, az) = fake_azure().await;
    let sizes: Vec<usize> = events.iter().map(|e| serde_json::to_string(&kcaudit::sinks::sentinel::row(e, chrono::Utc::now())).unwrap().len() + 2).collect();
    let max = *sizes.iter().max().unwrap();
    let budget = max - 1;
    let secret = secret_file(SECRET);
    let mut opts = one_batch(options(&url, &secret), events.len());
    opts.max_bytes = budget;
    let run = start(&opts);
    let report = run.push(items_of(&events)).await;
    let over = sizes.iter().filter(|s| **s > budget).count() as u64;
    assert_eq!(fates(&report), (67, 67 - over, over, 0), "{:?}", dead_reasons(&report));
    for r in dead_reasons(&report).values() {
        assert!(r.contains(&format!("more than max_bytes ({budget})")), "{r}");
    }
    let az = az.lock().unwrap();
    assert!(az.requests.len() > 10, "a small budget means many requests");
    assert!(az.requests.iter().all(|r| r.status == 204 && r.bytes <= budget));
    assert_eq!(az.rows.len() as u64, 67 - over);
    drop(az);
    run.pipeline.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Throttling and outages.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_is_waited_out_and_delivered_once() {
    let events = fixture().await;
    let (url, az) = fake_azure().await;
    az.lock().unwrap().script.push_back(Scripted::Throttle(Some(1)));
    let secret = secret_file(SECRET);
    let run = start(&one_batch(options(&url, &secret), events.len()));
    let report = run.push(items_of(&events)).await;
    assert_eq!(fates(&report), (67, 67, 0, 0), "{:?}", dead_reasons(&report));
    let az = az.lock().unwrap();
    assert_each_stored_once(&az, &ids(&events));
    let statuses: Vec<u16> = az.requests.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![429, 204]);
    let waited = az.requests[1].at - az.requests[0].at;
    assert!(waited >= Duration::from_millis(990), "Retry-After: 1 is honoured: {waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    drop(az);
    let m = run.metrics.render();
    assert!(!m.contains(r#"kcaudit_sink_retries_total{sink="sentinel"}"#), "waited within the write: {m}");
    run.pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_with_retry_after_then_a_429_without_goes_back_to_the_driver() {
    let events = fixture().await;
    let (url, az) = fake_azure().await;
    az.lock().unwrap().script.extend([Scripted::Unavailable(Some(1)), Scripted::Throttle(None)]);
    let secret = secret_file(SECRET);
    let run = start(&one_batch(options(&url, &secret), events.len()));
    let report = run.push(items_of(&events)).await;
    assert_eq!(fates(&report), (67, 67, 0, 0), "{:?}", dead_reasons(&report));
    let az = az.lock().unwrap();
    assert_each_stored_once(&az, &ids(&events));
    assert_eq!(az.requests.iter().map(|r| r.status).collect::<Vec<_>>(), vec![503, 429, 204]);
    assert!(az.requests[1].at - az.requests[0].at >= Duration::from_millis(990));
    drop(az);
    let m = run.metrics.render();
    assert!(m.contains(r#"kcaudit_sink_retries_total{sink="sentinel"} 1"#), "a 429 without Retry-After is the driver's: {m}");
    run.pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_too_long_is_dead_lettered_after_the_drivers_attempts() {
    let events = fixture().await;
    let (url, az) = fake_azure().await;
    az.lock().unwrap().script.extend(std::iter::repeat_n(Scripted::Throttle(None), 100));
    let secret = secret_file(SECRET);
    let mut opts = one_batch(options(&url, &secret), 5);
    opts.retry = RetryOptions { max_attempts: 3, initial_backoff_ms: 10, max_backoff_ms: 20 };
    let run = start(&opts);
    let report = run.push(items_of(&events[..5])).await;
    assert_eq!(fates(&report), (5, 0, 5, 0));
    let reason = dead_reasons(&report).into_values().next().unwrap();
    assert!(reason.contains("gave up after 3 attempts") && reason.contains("HTTP 429") && reason.contains("TooManyRequests"), "{reason}");
    assert_eq!(az.lock().unwrap().requests.len(), 3);
    assert!(az.lock().unwrap().rows.is_empty());
    run.pipeline.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Tokens.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refreshed_once_and_the_request_sent_again() {
    let events = fixture().await;
    let (url, az) = fake_azure().await;
    // Announced for an hour, but the server stops accepting it after 300 ms (revoked, clock skew).
    az.lock().unwrap().valid_for = Some(Duration::from_millis(300));
    let secret = secret_file(SECRET);
    let run = start(&one_batch(options(&url, &secret), 30));
    let report = run.push(items_of(&events[..30])).await;
    assert_eq!(fates(&report), (30, 30, 0, 0), "{:?}", dead_reasons(&report));
    tokio::time::sleep(Duration::from_millis(400)).await;
    az.lock().unwrap().valid_for = None;
    let report = run.push(items_of(&events[30..60])).await;
    assert_eq!(fates(&report), (30, 30, 0, 0), "{:?}", dead_reasons(&report));
    let az = az.lock().unwrap();
    assert_eq!(az.token_requests, 2, "one refresh");
    assert_eq!(az.unauthorized, 1, "one 401");
    assert_eq!(az.requests.iter().map(|r| r.status).collect::<Vec<_>>(), vec![204, 401, 204]);
    assert_each_stored_once(&az, &ids(&events[..60]));
    drop(az);
    let m = run.metrics.render();
    assert!(!m.contains(r#"kcaudit_sink_retries_total{sink="sentinel"}"#), "the refresh happens within the write: {m}");
    run.pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_are_refreshed_before_they_expire() {
    let events = fixture().await;
    let (url, az) = fake_azure().await;
    az.lock().unwrap().expires_in = 1;
    let secret = secret_file(SECRET);
    let run = start(&one_batch(options(&url, &secret), 10));
    let report = run.push(items_of(&events[..10])).await;
    assert_eq!(fates(&report), (10, 10, 0, 0), "{:?}", dead_reasons(&report));
    // Past half its life (the refresh point of a token shorter than ten minutes), not yet expired.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let report = run.push(items_of(&events[10..20])).await;
    assert_eq!(fates(&report), (10, 10, 0, 0), "{:?}", dead_reasons(&report));
    let az = az.lock().unwrap();
    assert_eq!(az.token_requests, 2);
    assert_eq!(az.unauthorized, 0, "refreshed before the server refused it");
    assert_each_stored_once(&az, &ids(&events[..20]));
    drop(az);
    run.pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_outage_is_retried() {
    let events = fixture().await;
    let (url, az) = fake_azure().await;
    az.lock().unwrap().token_outages.extend([503, 429]);
    let secret = secret_file(SECRET);
    let run = start(&one_batch(options(&url, &secret), 10));
    let report = run.push(items_of(&events[..10])).await;
    assert_eq!(fates(&report), (10, 10, 0, 0), "{:?}", dead_reasons(&report));
    let az = az.lock().unwrap();
    assert_eq!(az.token_requests, 3);
    assert_eq!(az.requests.len(), 1);
    assert_each_stored_once(&az, &ids(&events[..10]));
    drop(az);
    let m = run.metrics.render();
    assert!(m.contains(r#"kcaudit_sink_retries_total{sink="sentinel"} 2"#), "{m}");
    run.pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_client_secret_dead_letters_with_entras_description_and_never_the_secret() {
    let events = fixture().await;
    let (url, az) = fake_azure().await;
    let wrong = "Wr0ng~secret.value_for-kcaudit";
    let secret = secret_file(wrong);
    let run = start(&one_batch(options(&url, &secret), events.len()));
    let report = run.push(items_of(&events)).await;
    assert_eq!(fates(&report), (67, 0, 67, 0));
    let reasons = dead_reasons(&report);
    for r in reasons.values() {
        assert!(r.contains("HTTP 401") && r.contains("invalid_client") && r.contains("AADSTS7000215: Invalid client secret provided."), "{r}");
        assert!(!r.contains(wrong) && !r.contains(SECRET), "no secret in a reason: {r}");
    }
    let az = az.lock().unwrap();
    assert_eq!(az.token_requests, 1, "a refusal is not retried");
    assert!(az.requests.is_empty(), "nothing sent without a token");
    drop(az);
    let dl = DeadLetterStore::read_all(&run.dlq).unwrap();
    assert_eq!(dl.len(), 67);
    let file = std::fs::read_to_string(&run.dlq).unwrap();
    assert!(!file.contains(wrong), "no secret in the dead-letter file");
    let m = run.metrics.render();
    assert!(m.contains(r#"kcaudit_sink_errors_total{kind="permanent",sink="sentinel"}"#), "{m}");
    run.pipeline.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Refusals.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_without_the_role_dead_letters_everything_with_azures_message() {
    let events = fixture().await;
    let (url, az) = fake_azure().await;
    az.lock().unwrap().no_role_from = Some(0);
    let secret = secret_file(SECRET);
    let run = start(&one_batch(options(&url, &secret), events.len()));
    let report = run.push(items_of(&events)).await;
    assert_eq!(fates(&report), (67, 0, 67, 0));
    for r in dead_reasons(&report).values() {
        assert!(r.contains("HTTP 403") && r.contains("OperationFailed") && r.contains("does not have access to ingest data") && r.contains("Monitoring Metrics Publisher"), "{r}");
    }
    let az = az.lock().unwrap();
    assert_eq!(az.requests.len(), 1, "a refusal is not retried");
    assert!(az.rows.is_empty());
    drop(az);
    let dl = DeadLetterStore::read_all(&run.dlq).unwrap();
    assert_eq!(dl.len(), 67);
    assert!(dl.iter().all(|d| d.reason.contains("OperationFailed") && d.event.is_some()));
    let m = run.metrics.render();
    assert!(!m.contains(r#"kcaudit_events_delivered_total{sink="sentinel"}"#) || m.contains(r#"kcaudit_events_delivered_total{sink="sentinel"} 0"#), "{m}");
    run.pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_after_some_requests_keeps_the_delivered_ones() {
    let events = fixture().await;
    let (url, az) = fake_azure().await;
    // The role is revoked while the batch is being sent: after the first accepted request.
    az.lock().unwrap().no_role_from = Some(1);
    let secret = secret_file(SECRET);
    let mut opts = one_batch(options(&url, &secret), events.len());
    opts.max_bytes = 40_000;
    let run = start(&opts);
    let report = run.push(items_of(&events)).await;
    let az = az.lock().unwrap();
    let first = az.requests[0].rows as u64;
    assert!(first > 0 && first < 67);
    assert_eq!(fates(&report), (67, first, 67 - first, 0));
    assert_eq!(az.requests.iter().map(|r| r.status).collect::<Vec<_>>(), vec![204, 403], "one 403 stops the batch");
    assert_eq!(az.rows.len() as u64, first);
    drop(az);
    run.pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_mid_batch_retries_only_what_was_not_delivered() {
    let events = fixture().await;
    let (url, az) = fake_azure().await;
    az.lock().unwrap().script_after = Some((1, Scripted::Unavailable(None)));
    let secret = secret_file(SECRET);
    let mut opts = one_batch(options(&url, &secret), events.len());
    opts.max_bytes = 40_000;
    let run = start(&opts);
    let report = run.push(items_of(&events)).await;
    assert_eq!(fates(&report), (67, 67, 0, 0), "{:?}", dead_reasons(&report));
    let az = az.lock().unwrap();
    assert_each_stored_once(&az, &ids(&events));
    let statuses: Vec<u16> = az.requests.iter().map(|r| r.status).collect();
    assert_eq!(&statuses[..2], &[204, 503]);
    assert!(statuses[2..].iter().all(|s| *s == 204), "{statuses:?}");
    drop(az);
    let m = run.metrics.render();
    assert!(m.contains(r#"kcaudit_sink_retries_total{sink="sentinel"} 1"#), "{m}");
    run.pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_refused_even_after_a_refresh_is_permanent() {
    let events = fixture().await;
    let (url, az) = fake_azure().await;
    az.lock().unwrap().refuse_tokens = true;
    let secret = secret_file(SECRET);
    let run = start(&one_batch(options(&url, &secret), 5));
    let report = run.push(items_of(&events[..5])).await;
    assert_eq!(fates(&report), (5, 0, 5, 0));
    for r in dead_reasons(&report).values() {
        assert!(r.contains("HTTP 401") && r.contains("InvalidAudience") && r.contains("`scope` and `authority`"), "{r}");
    }
    let az = az.lock().unwrap();
    assert_eq!((az.token_requests, az.unauthorized, az.requests.len()), (2, 2, 2), "one refresh, then give up");
    drop(az);
    run.pipeline.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Routing.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_sends_only_findings_of_medium_or_worse() {
    let events = fixture().await;
    let (url, az) = fake_azure().await;
    let secret = secret_file(SECRET);
    let mut opts = options(&url, &secret);
    opts.route = RouteFilter { min_severity: Some(Severity::Medium), ..Default::default() };
    let flagged: Vec<String> = events.iter().filter(|e| e.severity.is_some_and(|s| s >= Severity::Medium)).map(|e| e.id.clone()).collect();
    assert!(!flagged.is_empty() && flagged.len() < events.len());
    let run = start(&opts);
    let report = run.push(items_of(&events)).await;
    assert_eq!(fates(&report), (67, 67, 0, 0), "filtered events are done for this sink");
    let az = az.lock().unwrap();
    assert_each_stored_once(&az, &flagged);
    assert!(az.rows.iter().all(|r| matches!(r["EventSeverity"].as_str(), Some("Medium" | "High"))));
    drop(az);
    let m = run.metrics.render();
    assert!(m.contains(&format!(r#"kcaudit_events_filtered_total{{sink="sentinel"}} {}"#, events.len() - flagged.len())), "{m}");
    run.pipeline.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// The fake is as strict as the documented API where it matters.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_is_strict() {
    let (url, az) = fake_azure().await;
    let c = reqwest::Client::new();
    let token_url = format!("{url}/{TENANT}/oauth2/v2.0/token");
    let good = [("grant_type", "client_credentials"), ("client_id", CLIENT_ID), ("client_secret", SECRET), ("scope", "https://monitor.azure.com/.default")];
    let r = c.post(&token_url).form(&good).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let token = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string();
    let mut wrong_scope = good;
    wrong_scope[3].1 = "https://monitor.azure.us//.default";
    assert_eq!(c.post(&token_url).form(&wrong_scope).send().await.unwrap().status(), 400);
    assert_eq!(c.post(format!("{url}/other-tenant/oauth2/v2.0/token")).form(&good).send().await.unwrap().status(), 400);

    let ingest = format!("{url}/dataCollectionRules/{DCR}/streams/{STREAM}?api-version=2023-01-01");
    let post = |u: String, body: &'static str, auth: Option<String>| {
        let mut b = c.post(u).header("content-type", "application/json").body(body);
        if let Some(a) = auth {
            b = b.bearer_auth(a);
        }
        b.send()
    };
    assert_eq!(post(ingest.clone(), "[{}]", None).await.unwrap().status(), 401);
    assert_eq!(post(ingest.clone(), "[{}]", Some("forged".into())).await.unwrap().status(), 401);
    assert_eq!(post(ingest.clone(), "{\"a\":1}", Some(token.clone())).await.unwrap().status(), 400, "not an array");
    assert_eq!(post(ingest.clone(), "[1,2]", Some(token.clone())).await.unwrap().status(), 400, "not objects");
    assert_eq!(post(ingest.replace("2023-01-01", "2021-11-01-preview"), "[{}]", Some(token.clone())).await.unwrap().status(), 400);
    assert_eq!(post(ingest.replace(STREAM, "Custom-Other_CL"), "[{}]", Some(token.clone())).await.unwrap().status(), 404);
    let r = post(ingest.clone(), "[{\"a\":1}]", Some(token.clone())).await.unwrap();
    assert_eq!(r.status(), 204);
    let big = format!("[{{\"a\":\"{}\"}}]", "x".repeat(AZURE_LIMIT));
    let r = c.post(&ingest).bearer_auth(&token).header("content-type", "application/json").body(big).send().await.unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "ContentLengthLimitExceeded");
    assert_eq!(az.lock().unwrap().rows, vec![json!({"a": 1})]);
}
