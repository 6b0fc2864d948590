//! The Splunk HEC sink against an in-test HTTP Event Collector that follows the documented protocol
//! (`docs/siem-and-detection.md` §1.1): concatenated envelopes parsed strictly, `Splunk <token>`
//! authorization, gzip bodies, channels, ackIds and `/services/collector/ack`, the documented error
//! codes with `invalid-event-number`. Every scenario runs through a real `Pipeline`, and each event's
//! fate is read from the batch reports, as the webhook source would.

mod common;
use common::sink_run::{start_sink, SinkRun};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::{json, Value};

use kcaudit::dead_letter::DeadLetterStore;
use kcaudit::decode::Item;
use kcaudit::event::{AuditEvent, EventKind, Severity};
use kcaudit::pipeline::BatchReport;
use kcaudit::sinks::http_client::SecretOptions;
use kcaudit::sinks::route::RouteFilter;
use kcaudit::sinks::splunk_hec::{SplunkHecOptions, SplunkHecSink};
use kcaudit::sinks::{BatchOptions, RetryOptions};

const TOKEN: &str = "12345678-1234-1234-1234-1234567890AB";

// ---------------------------------------------------------------------------------------------
// The fake collector
// ---------------------------------------------------------------------------------------------

/// How the fake answers `/ack` for the ackIds it hands out.
#[derive(Debug, Clone, Copy)]
enum AckMode {
    /// `true` at the first query.
    Immediate,
    /// `true` once this long has passed since the ackId was issued.
    AfterMs(u64),
    /// `false` for the first n queries of each ackId, then `true`.
    FalseTimes(u32),
    /// The first n ackIds issued never turn `true`; later ones are `true` at once.
    NeverFirst(u64),
}

/// How the fake refuses a poisoned event.
#[derive(Debug, Clone, Copy)]
struct Poison {
    code: u16,
    with_number: bool,
}

/// One `/event` request as the collector saw it.
#[derive(Debug, Clone)]
struct Request {
    authorization: Option<String>,
    channel: Option<String>,
    content_encoding: Option<String>,
    content_type: Option<String>,
    /// The body after gunzip.
    body: String,
    status: u16,
    answer: Value,
}

struct Hec {
    token: String,
    /// The token has indexer acknowledgement enabled.
    ack: bool,
    ack_mode: AckMode,
    /// Indexes the token may write to (empty: any).
    allowed_indexes: Vec<String>,
    /// The next n `/event` requests are answered 503 code 9.
    busy: usize,
    /// The next n `/ack` queries are answered 503 code 9.
    ack_busy: usize,
    poison: HashMap<String, Poison>,
    requests: Vec<Request>,
    /// Every envelope handed on to the indexers (events before a bad one included), with the ackId
    /// of its request.
    indexed: Vec<(Value, Option<u64>)>,
    next_ack: HashMap<String, u64>,
    /// (channel, ackId) → (issued at, queries so far).
    issued: HashMap<(String, u64), (Instant, u32)>,
    /// (time, channel, asked ids, answer) per `/ack` query.
    ack_queries: Vec<(Instant, String, Vec<u64>, Value)>,
    /// When each ackId was first reported `true`.
    acked_at: HashMap<u64, Instant>,
}

type Shared = Arc<Mutex<Hec>>;

fn reply(status: u16, body: Value) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    (StatusCode::from_u16(status).unwrap(), [("content-type", "application/json")], body.to_string())
}

fn hec_error(status: u16, code: u16, text: &str, event: Option<usize>) -> (u16, Value) {
    let mut v = json!({"text": text, "code": code});
    if let Some(n) = event {
        v["invalid-event-number"] = json!(n);
    }
    (status, v)
}

fn text_of(code: u16) -> &'static str {
    match code {
        6 => "Invalid data format",
        12 => "Event field is required",
        13 => "Event field cannot be blank",
        15 => "Error in handling indexed fields",
        _ => "Error",
    }
}

impl Hec {
    /// `Authorization: Splunk <token>`: missing → 401/2, no `Splunk ` prefix → 401/3, wrong → 403/4.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), (u16, Value)> {
        match headers.get("authorization").and_then(|v| v.to_str().ok()) {
            None => Err(hec_error(401, 2, "Token is required", None)),
            Some(v) => match v.strip_prefix("Splunk ") {
                None => Err(hec_error(401, 3, "Invalid authorization", None)),
                Some(t) if t == self.token => Ok(()),
                Some(_) => Err(hec_error(403, 4, "Invalid token", None)),
            },
        }
    }

    /// The channel from the header or `?channel=`; required (and a GUID) when the token has acks.
    fn channel(&self, headers: &HeaderMap, query: &BTreeMap<String, String>) -> Result<Option<String>, (u16, Value)> {
        let c = headers.get("x-splunk-request-channel").and_then(|v| v.to_str().ok()).map(str::to_string).or_else(|| query.get("channel").cloned());
        match c {
            None if self.ack => Err(hec_error(400, 10, "Data channel is missing", None)),
            Some(c) if uuid::Uuid::parse_str(&c).is_err() => Err(hec_error(400, 11, "Invalid data channel", None)),
            c => Ok(c),
        }
    }

    /// Validate one envelope the way HEC does.
    fn check_envelope(&self, v: &Value, n: usize) -> Result<(), (u16, Value)> {
        let Some(o) = v.as_object() else { return Err(hec_error(400, 6, "Invalid data format", Some(n))) };
        match o.get("event") {
            None => return Err(hec_error(400, 12, "Event field is required", Some(n))),
            Some(Value::String(s)) if s.is_empty() => return Err(hec_error(400, 13, "Event field cannot be blank", Some(n))),
            Some(Value::Object(m)) if m.is_empty() => return Err(hec_error(400, 13, "Event field cannot be blank", Some(n))),
            Some(Value::String(_)) | Some(Value::Object(_)) => {}
            Some(_) => return Err(hec_error(400, 6, "Invalid data format", Some(n))),
        }
        match o.get("time") {
            None | Some(Value::Number(_)) => {}
            Some(Value::String(s)) if s.parse::<f64>().is_ok() => {}
            Some(_) => return Err(hec_error(400, 6, "Invalid data format", Some(n))),
        }
        for k in ["host", "source", "sourcetype", "index"] {
            if o.get(k).is_some_and(|v| !v.is_string()) {
                return Err(hec_error(400, 6, "Invalid data format", Some(n)));
            }
        }
        if let Some(f) = o.get("fields") {
            let flat = f.as_object().is_some_and(|m| m.values().all(|v| v.is_string() || v.as_array().is_some_and(|a| a.iter().all(Value::is_string))));
            if !flat {
                return Err(hec_error(400, 15, "Error in handling indexed fields", Some(n)));
            }
        }
        if let Some(index) = o.get("index").and_then(Value::as_str) {
            if !self.allowed_indexes.is_empty() && !self.allowed_indexes.iter().any(|i| i == index) {
                return Err(hec_error(400, 7, "Incorrect index", Some(n)));
            }
        }
        if let Some(p) = o.get("event").and_then(|e| e.get("id")).and_then(Value::as_str).and_then(|id| self.poison.get(id)) {
            return Err(hec_error(400, p.code, text_of(p.code), p.with_number.then_some(n)));
        }
        Ok(())
    }

    fn event(&mut self, headers: &HeaderMap, query: &BTreeMap<String, String>, raw: &[u8]) -> (u16, Value, String) {
        let mut body = String::new();
        let outcome = (|| -> Result<Value, (u16, Value)> {
            self.authorize(headers)?;
            let channel = self.channel(headers, query)?;
            if self.busy > 0 {
                self.busy -= 1;
                return Err(hec_error(503, 9, "Server is busy", None));
            }
            let bytes = match headers.get("content-encoding").and_then(|v| v.to_str().ok()) {
                None => raw.to_vec(),
                Some("gzip") => {
                    let mut out = Vec::new();
                    flate2::read::MultiGzDecoder::new(raw).read_to_end(&mut out).map_err(|_| hec_error(400, 6, "Invalid data format", Some(0)))?;
                    out
                }
                Some(_) => return Err((415, json!({"text": "Unsupported media type"}))),
            };
            body = String::from_utf8(bytes).map_err(|_| hec_error(400, 6, "Invalid data format", Some(0)))?;
            // Concatenated JSON values, whitespace between them allowed, nothing else.
            let mut good = Vec::new();
            let mut failure = None;
            for (n, v) in serde_json::Deserializer::from_str(&body).into_iter::<Value>().enumerate() {
                match v.map_err(|_| hec_error(400, 6, "Invalid data format", Some(n))).and_then(|v| self.check_envelope(&v, n).map(|_| v)) {
                    Ok(v) => good.push(v),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            if good.is_empty() && failure.is_none() {
                return Err(hec_error(400, 5, "No data", None));
            }
            // Like Splunk (and Vector's HEC source), the events before a bad one are handed on.
            let ack_id = match (&failure, self.ack, &channel) {
                (None, true, Some(c)) => {
                    let id = self.next_ack.entry(c.clone()).or_insert(0);
                    let this = *id;
                    *id += 1;
                    self.issued.insert((c.clone(), this), (Instant::now(), 0));
                    Some(this)
                }
                _ => None,
            };
            for v in good {
                self.indexed.push((v, ack_id));
            }
            if let Some(f) = failure {
                return Err(f);
            }
            Ok(match ack_id {
                Some(id) => json!({"text": "Success", "code": 0, "ackId": id}),
                None => json!({"text": "Success", "code": 0}),
            })
        })();
        match outcome {
            Ok(v) => (200, v, body),
            Err((s, v)) => (s, v, body),
        }
    }

    fn ack_query(&mut self, headers: &HeaderMap, query: &BTreeMap<String, String>, raw: &[u8]) -> (u16, Value) {
        if let Err(e) = self.authorize(headers) {
            return e;
        }
        if !self.ack {
            return hec_error(400, 14, "ACK is disabled", None);
        }
        let channel = match self.channel(headers, query) {
            Ok(Some(c)) => c,
            Ok(None) => return hec_error(400, 10, "Data channel is missing", None),
            Err(e) => return e,
        };
        if self.ack_busy > 0 {
            self.ack_busy -= 1;
            return hec_error(503, 9, "Server is busy", None);
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct AckRequest {
            acks: Vec<u64>,
        }
        let Ok(req) = serde_json::from_slice::<AckRequest>(raw) else { return hec_error(400, 6, "Invalid data format", None) };
        let mut answer = serde_json::Map::new();
        for id in &req.acks {
            let key = (channel.clone(), *id);
            let done = match self.issued.get_mut(&key) {
                None => false, // unknown, or already reported true (Splunk forgets it then)
                Some((at, queries)) => {
                    *queries += 1;
                    match self.ack_mode {
                        AckMode::Immediate => true,
                        AckMode::AfterMs(ms) => at.elapsed() >= Duration::from_millis(ms),
                        AckMode::FalseTimes(n) => *queries > n,
                        AckMode::NeverFirst(n) => *id >= n,
                    }
                }
            };
            if done {
                self.issued.remove(&key);
                self.acked_at.entry(*id).or_insert_with(Instant::now);
            }
            answer.insert(id.to_string(), Value::Bool(done));
        }
        let answer = json!({ "acks": answer });
        self.ack_queries.push((Instant::now(), channel, req.acks, answer.clone()));
        (200, answer)
    }
}

struct FakeHec {
    url: String,
    state: Shared,
}

impl FakeHec {
    async fn start(ack: bool, ack_mode: AckMode) -> FakeHec {
        let state: Shared = Arc::new(Mutex::new(Hec {
            token: TOKEN.into(),
            ack,
            ack_mode,
            allowed_indexes: vec![],
            busy: 0,
            ack_busy: 0,
            poison: HashMap::new(),
            requests: vec![],
            indexed: vec![],
            next_ack: HashMap::new(),
            issued: HashMap::new(),
            ack_queries: vec![],
            acked_at: HashMap::new(),
        }));
        async fn on_event(State(s): State<Shared>, Query(q): Query<BTreeMap<String, String>>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
            let mut hec = s.lock().unwrap();
            let (status, answer, text) = hec.event(&headers, &q, &body);
            let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
            hec.requests.push(Request {
                authorization: h("authorization"),
                channel: h("x-splunk-request-channel"),
                content_encoding: h("content-encoding"),
                content_type: h("content-type"),
                body: text,
                status,
                answer: answer.clone(),
            });
            reply(status, answer)
        }
        async fn on_ack(State(s): State<Shared>, Query(q): Query<BTreeMap<String, String>>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
            let (status, answer) = s.lock().unwrap().ack_query(&headers, &q, &body);
            reply(status, answer)
        }
        async fn on_health() -> impl IntoResponse {
            reply(200, json!({"text": "HEC is healthy", "code": 17}))
        }
        let app = axum::Router::new()
            .route("/services/collector/event", axum::routing::post(on_event))
            .route("/services/collector/event/1.0", axum::routing::post(on_event))
            .route("/services/collector", axum::routing::post(on_event))
            .route("/services/collector/ack", axum::routing::post(on_ack))
            .route("/services/collector/health", axum::routing::get(on_health))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeHec { url, state }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Hec) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// How many times each event id was handed on to the indexers.
    fn copies(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for (v, _) in &self.state.lock().unwrap().indexed {
            *m.entry(v["event"]["id"].as_str().unwrap().to_string()).or_insert(0) += 1;
        }
        m
    }

    fn event_requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Pipeline harness
// ---------------------------------------------------------------------------------------------

/// The 67 enriched, flagged fixture events (computed once per test binary).
async fn events() -> Vec<AuditEvent> {
    static EVENTS: tokio::sync::OnceCell<Vec<AuditEvent>> = tokio::sync::OnceCell::const_new();
    EVENTS.get_or_init(common::clickhouse::fixture_events).await.clone()
}

fn items(events: &[AuditEvent]) -> Vec<Item> {
    common::sink_run::items_of(events)
}

fn options(url: &str) -> SplunkHecOptions {
    std::env::set_var("KCAUDIT_TEST_SPLUNK_HEC_TOKEN", TOKEN);
    SplunkHecOptions {
        enabled: true,
        url: url.to_string(),
        token: SecretOptions::from_env("KCAUDIT_TEST_SPLUNK_HEC_TOKEN"),
        index: Some("kcaudit".into()),
        host: Some("kc-audit-test".into()),
        ack_poll_interval_ms: 20,
        ack_timeout_ms: 5000,
        timeout_ms: 5000,
        batch: BatchOptions { max_events: 1000, max_wait_ms: 50, queue_capacity: 1000 },
        retry: RetryOptions { max_attempts: 20, initial_backoff_ms: 20, max_backoff_ms: 200 },
        ..Default::default()
    }
}

fn start(name: &str, opts: &SplunkHecOptions) -> SinkRun {
    start_sink(Box::new(SplunkHecSink::new(name, opts).unwrap()), &opts.batch, &opts.retry)
}

/// Submit one batch and wait for its report (what the webhook source answers the sender from).
async fn push(run: &SinkRun, events: &[AuditEvent]) -> BatchReport {
    run.push(items(events)).await
}

/// Per event id: Ok(()) delivered, Err(reason) dead-lettered or failed.
fn fates(r: &BatchReport) -> BTreeMap<String, Result<(), String>> {
    r.items
        .iter()
        .map(|i| {
            let id = i.event_id.clone().expect("accepted");
            let bad: Vec<String> = i.dead_lettered.iter().chain(&i.failed).map(|(s, r)| format!("{s}: {r}")).collect();
            (id, if bad.is_empty() { Ok(()) } else { Err(bad.join("; ")) })
        })
        .collect()
}

fn delivered(r: &BatchReport) -> usize {
    fates(r).values().filter(|f| f.is_ok()).count()
}

fn first_problem(r: &BatchReport) -> String {
    fates(r).into_values().find_map(Result::err).unwrap_or_default()
}

/// Log lines of the whole test binary (a global subscriber; each test filters by its sink name).
fn logs() -> String {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    let buf = BUF.get_or_init(|| {
        let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
        #[derive(Clone)]
        struct W(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let w = W(buf.clone());
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_max_level(tracing::Level::INFO).with_writer(move || w.clone()).finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buf
    });
    String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
}

// ---------------------------------------------------------------------------------------------
// The expected wire format, written out independently of the sink
// ---------------------------------------------------------------------------------------------

fn expected_time(e: &AuditEvent) -> Option<String> {
    let t = e.time?;
    Some(format!("{}.{:03}", t.timestamp(), t.timestamp_subsec_millis()))
}

fn expected_fields(e: &AuditEvent) -> BTreeMap<&'static str, Value> {
    let mut f = BTreeMap::new();
    f.insert("event_kind", json!(if e.kind == EventKind::Admin { "admin" } else { "user" }));
    f.insert("event_type", json!(e.event_type));
    f.insert("event_outcome", serde_json::to_value(e.outcome).unwrap());
    if let Some(r) = e.realm.name.as_deref().or(e.realm.id.as_deref()) {
        f.insert("realm", json!(r));
    }
    if let Some(r) = &e.realm.id {
        f.insert("realm_id", json!(r));
    }
    if let Some(c) = &e.client_id {
        f.insert("client", json!(c));
    }
    if let Some(x) = e.token_exchange.as_ref().and_then(|t| t.exchanger.as_ref()) {
        f.insert("exchanger", json!(x));
    }
    if let Some(t) = e.token_exchange.as_ref().filter(|t| !t.audiences.is_empty()) {
        let mut seen = Vec::new();
        for a in &t.audiences {
            if !seen.contains(a) {
                seen.push(a.clone());
            }
        }
        f.insert("audience", json!(seen));
    }
    if let Some(s) = e.severity {
        f.insert("finding_severity", serde_json::to_value(s).unwrap());
    }
    let mut rules: Vec<&str> = Vec::new();
    let mut attack: Vec<&str> = Vec::new();
    for x in &e.findings {
        if !rules.contains(&x.rule.as_str()) {
            rules.push(&x.rule);
        }
        for a in &x.attack {
            if !attack.contains(&a.as_str()) {
                attack.push(a);
            }
        }
    }
    if !rules.is_empty() {
        f.insert("finding_rule", json!(rules));
    }
    if !attack.is_empty() {
        f.insert("attack_technique", json!(attack));
    }
    f
}

fn expected_envelope(e: &AuditEvent, index: &str) -> String {
    let sourcetype = if e.token_exchange.is_some() {
        "keycloak:token_exchange"
    } else if e.kind == EventKind::Admin {
        "keycloak:admin_event"
    } else {
        "keycloak:event"
    };
    let realm = e.realm.name.as_deref().or(e.realm.id.as_deref()).unwrap_or("unknown");
    let time = expected_time(e).map(|t| format!("\"time\":{t},")).unwrap_or_default();
    format!(
        "{{{time}\"host\":\"kc-audit-test\",\"source\":{},\"sourcetype\":\"{sourcetype}\",\"index\":\"{index}\",\"event\":{},\"fields\":{}}}\n",
        json!(format!("keycloak:{realm}")),
        serde_json::to_string(e).unwrap(),
        serde_json::to_string(&expected_fields(e)).unwrap()
    )
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// The fake itself answers like HEC (so the scenarios below prove something).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_collector_follows_the_documented_protocol() {
    let hec = FakeHec::start(true, AckMode::Immediate).await;
    let c = reqwest::Client::new();
    let url = format!("{}/services/collector/event", hec.url);
    let channel = "6D1A8B6E-3F52-4C1B-9E0A-55C2D1F0A7B3";
    let post = |auth: Option<&str>, channel: Option<&str>, body: &str| {
        let mut r = c.post(&url).body(body.to_string());
        if let Some(a) = auth {
            r = r.header("Authorization", a.to_string());
        }
        if let Some(ch) = channel {
            r = r.header("X-Splunk-Request-Channel", ch.to_string());
        }
        async move {
            let resp = r.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let auth = format!("Splunk {TOKEN}");
    let ok = r#"{"time":1773480413.589,"event":{"id":"a"}}  {"event":"b","fields":{"realm":"acme","anomaly":["x","y"]}}"#;
    assert_eq!(post(None, Some(channel), ok).await, (401, json!({"text": "Token is required", "code": 2})));
    assert_eq!(post(Some(TOKEN), Some(channel), ok).await, (401, json!({"text": "Invalid authorization", "code": 3})), "no `Splunk ` prefix");
    assert_eq!(post(Some("Splunk nope"), Some(channel), ok).await, (403, json!({"text": "Invalid token", "code": 4})));
    assert_eq!(post(Some(&auth), None, ok).await, (400, json!({"text": "Data channel is missing", "code": 10})));
    assert_eq!(post(Some(&auth), Some("not-a-guid"), ok).await.1["code"], 11);
    assert_eq!(post(Some(&auth), Some(channel), ok).await, (200, json!({"text": "Success", "code": 0, "ackId": 0})));
    assert_eq!(post(Some(&auth), Some(channel), ok).await.1["ackId"], 1, "ackIds count up per channel");
    let bad = |b: &'static str| post(Some(&auth), Some(channel), b);
    assert_eq!(bad(r#"[{"event":"a"}]"#).await, (400, json!({"text": "Invalid data format", "code": 6, "invalid-event-number": 0})), "an array is not a batch");
    assert_eq!(bad(r#"{"event":"a"},{"event":"b"}"#).await.1["invalid-event-number"], 1, "no commas between envelopes");
    assert_eq!(bad(r#"{"event":"a"}{"time":1}"#).await, (400, json!({"text": "Event field is required", "code": 12, "invalid-event-number": 1})));
    assert_eq!(bad(r#"{"event":""}"#).await.1["code"], 13);
    assert_eq!(bad(r#"{"event":"a"}{"event":"b"}{"event":"c","fields":{"x":{"nested":1}}}"#).await, (400, json!({"text": "Error in handling indexed fields", "code": 15, "invalid-event-number": 2})));
    assert_eq!(bad(r#"{"event":"a","time":"soon"}"#).await.1["code"], 6);
    assert_eq!(bad("  ").await, (400, json!({"text": "No data", "code": 5})));
    // The events before a bad one were handed on; the failed requests got no ackId.
    let before_bad = hec.with(|h| h.indexed.iter().filter(|(v, ack)| v["event"] == "a" && ack.is_none()).count());
    assert_eq!(before_bad, 3);
    // Acks: keyed by string, per channel, forgotten once reported true.
    let ack = |ch: Option<&str>, body: &'static str| {
        let mut r = c.post(format!("{}/services/collector/ack", hec.url)).header("Authorization", auth.clone()).body(body);
        if let Some(ch) = ch {
            r = r.query(&[("channel", ch)]);
        }
        async move {
            let resp = r.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(ack(Some(channel), r#"{"acks":[0,1,7]}"#).await, (200, json!({"acks": {"0": true, "1": true, "7": false}})));
    assert_eq!(ack(Some(channel), r#"{"acks":[0]}"#).await.1, json!({"acks": {"0": false}}));
    assert_eq!(ack(None, r#"{"acks":[0]}"#).await.1["code"], 10);
    let health = c.get(format!("{}/services/collector/health", hec.url)).send().await.unwrap().json::<Value>().await.unwrap();
    assert_eq!(health, json!({"text": "HEC is healthy", "code": 17}));
}

/// Every fixture event arrives once, in order, as the documented envelope: exact bytes after
/// gunzip, `time` in epoch seconds with three decimals, the indexed `fields`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_delivered_once_as_the_documented_envelope() {
    let evs = events().await;
    let hec = FakeHec::start(false, AckMode::Immediate).await;
    let opts = options(&hec.url);
    let run = start("hec-exact", &opts);
    let report = push(&run, &evs).await;
    assert_eq!(delivered(&report), 67, "{}", first_problem(&report));
    run.pipeline.shutdown().await;

    let reqs = hec.event_requests();
    assert!(!reqs.is_empty());
    for r in &reqs {
        assert_eq!(r.status, 200, "{:?}", r.answer);
        assert_eq!(r.answer, json!({"text": "Success", "code": 0}));
        assert_eq!(r.authorization.as_deref(), Some(format!("Splunk {TOKEN}").as_str()));
        assert_eq!(r.content_encoding.as_deref(), Some("gzip"));
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        assert_eq!(r.channel, None, "no channel without indexer acknowledgement");
    }
    let body: String = reqs.iter().map(|r| r.body.as_str()).collect();
    let expected: String = evs.iter().map(|e| expected_envelope(e, "kcaudit")).collect();
    assert_eq!(body.lines().count(), 67);
    for (got, want) in body.lines().zip(expected.lines()) {
        assert_eq!(got, want);
    }
    assert_eq!(body, expected);
    assert!(hec.copies().values().all(|&n| n == 1) && hec.copies().len() == 67);

    // Spot checks against the fixture itself.
    let by_id = |id: &str| -> Value { serde_json::from_str(body.lines().find(|l| l.contains(&format!("\"event\":{{\"schema_version\":1,\"id\":\"{id}\""))).unwrap()).unwrap() };
    let te = by_id("0be0b73a-05f5-41ca-a8f7-a1590036af85"); // TOKEN_EXCHANGE at 1773043084120 ms
    assert!(body.contains("{\"time\":1773043084.120,\"host\":\"kc-audit-test\""), "three decimals, trailing zero kept");
    assert_eq!(te["sourcetype"], "keycloak:token_exchange");
    assert_eq!(te["fields"]["event_type"], "TOKEN_EXCHANGE");
    assert_eq!(te["fields"]["exchanger"], "api-gateway");
    assert_eq!(te["fields"]["client"], "api-gateway");
    assert_eq!(te["fields"]["realm_id"], "4f660473-c22b-4858-a484-cd314a37e778");
    assert!(te["fields"]["audience"].as_array().is_some_and(|a| !a.is_empty()));
    let login = by_id("bcf51c46-93a0-42ec-bcc1-a359f7bdd567");
    assert_eq!(login["time"].to_string(), "1773043083.214");
    assert_eq!(login["sourcetype"], "keycloak:event");
    assert!(login["fields"].get("exchanger").is_none() && login["fields"].get("audience").is_none());
    let admin = evs.iter().find(|e| e.kind == EventKind::Admin).unwrap();
    assert_eq!(by_id(&admin.id)["sourcetype"], "keycloak:admin_event");
    let flagged = evs.iter().filter(|e| !e.findings.is_empty()).count();
    assert!(flagged > 0, "the fixture has findings");
    assert_eq!(body.matches("\"finding_rule\":[").count(), flagged);
    // Every `time` has exactly three decimals.
    for l in body.lines() {
        let t = l.strip_prefix("{\"time\":").and_then(|r| r.split(',').next()).unwrap();
        let (s, ms) = t.split_once('.').unwrap();
        assert!(s.bytes().all(|b| b.is_ascii_digit()) && ms.len() == 3 && ms.bytes().all(|b| b.is_ascii_digit()), "{t}");
    }
}

/// Without gzip the body is sent as is; `max_bytes` cuts a batch into several requests, in order,
/// each within the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_bodies_and_requests_cut_by_size() {
    let evs = events().await;
    let hec = FakeHec::start(false, AckMode::Immediate).await;
    let mut opts = options(&hec.url);
    opts.gzip = false;
    opts.max_bytes = 20_000;
    let run = start("hec-plain", &opts);
    let report = push(&run, &evs).await;
    assert_eq!(delivered(&report), 67, "{}", first_problem(&report));
    run.pipeline.shutdown().await;
    let reqs = hec.event_requests();
    assert!(reqs.len() >= 5, "{} requests", reqs.len());
    for r in &reqs {
        assert_eq!(r.content_encoding, None);
        assert!(r.body.len() <= 20_000 || r.body.lines().count() == 1, "{} bytes in {} events", r.body.len(), r.body.lines().count());
    }
    let body: String = reqs.iter().map(|r| r.body.as_str()).collect();
    assert_eq!(body, evs.iter().map(|e| expected_envelope(e, "kcaudit")).collect::<String>());
}

/// 503 "Server is busy" (code 9): retried with backoff, then every event delivered exactly once (a
/// busy answer hands nothing on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_collector_is_retried_then_everything_lands_once() {
    let evs = events().await;
    let hec = FakeHec::start(false, AckMode::Immediate).await;
    hec.with(|h| h.busy = 3);
    let run = start("hec-busy", &options(&hec.url));
    let report = push(&run, &evs).await;
    assert_eq!(delivered(&report), 67, "{}", first_problem(&report));
    let m = run.metrics.render();
    run.pipeline.shutdown().await;
    let statuses: Vec<u16> = hec.event_requests().iter().map(|r| r.status).collect();
    assert_eq!(&statuses[..3], &[503, 503, 503]);
    assert!(statuses[3..].iter().all(|&s| s == 200), "{statuses:?}");
    let copies = hec.copies();
    assert_eq!(copies.len(), 67);
    assert!(copies.values().all(|&n| n == 1), "exactly once: {copies:?}");
    assert!(m.contains(r#"kcaudit_sink_errors_total{kind="transient",sink="hec-busy"} 3"#), "{m}");
    assert!(m.contains(r#"kcaudit_events_delivered_total{sink="hec-busy"} 67"#), "{m}");
}

/// Bad events (code 6 with `invalid-event-number`, and 15 and 13 without a number): exactly those
/// are dead-lettered with HEC's words; everything else is delivered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_events_are_dead_lettered_alone_and_the_rest_delivered_once() {
    let evs = events().await;
    let hec = FakeHec::start(false, AckMode::Immediate).await;
    let bad6 = evs[10].id.clone();
    let bad6b = evs[40].id.clone();
    hec.with(|h| {
        h.poison.insert(bad6.clone(), Poison { code: 6, with_number: true });
        h.poison.insert(bad6b.clone(), Poison { code: 6, with_number: true });
    });
    let run = start("hec-bad", &options(&hec.url));
    let report = push(&run, &evs).await;
    let f = fates(&report);
    assert_eq!(delivered(&report), 65, "{}", first_problem(&report));
    for (id, n) in [(&bad6, 10), (&bad6b, 29)] {
        let why = f[id].as_ref().unwrap_err();
        assert!(why.starts_with("hec-bad: Splunk HEC refused the event:"), "{why}");
        assert!(why.contains("HEC code 6 \"Invalid data format\"") && why.contains(&format!("invalid-event-number {n}")), "{why}");
    }
    let dl = DeadLetterStore::read_all(&run.dlq).unwrap();
    assert_eq!(dl.len(), 2);
    assert!(dl.iter().all(|d| d.sink.as_deref() == Some("hec-bad") && d.event.is_some() && d.reason.contains("Invalid data format")));
    run.pipeline.shutdown().await;
    let copies = hec.copies();
    assert_eq!(copies.len(), 65);
    assert!(copies.values().all(|&n| n == 1), "the events before a bad one are not sent twice: {copies:?}");
    assert!(!copies.contains_key(&bad6) && !copies.contains_key(&bad6b));
    // One write: the rest after each bad event went again at once (no backoff, no retry counted).
    assert_eq!(hec.event_requests().len(), 3);

    // Refusals that do not name the event: the request's events go one by one, and only the bad
    // one is dead-lettered.
    let hec = FakeHec::start(false, AckMode::Immediate).await;
    let (bad15, bad13) = (evs[3].id.clone(), evs[50].id.clone());
    hec.with(|h| {
        h.poison.insert(bad15.clone(), Poison { code: 15, with_number: false });
        h.poison.insert(bad13.clone(), Poison { code: 13, with_number: false });
    });
    let run = start("hec-bad-unnamed", &options(&hec.url));
    let report = push(&run, &evs).await;
    let f = fates(&report);
    assert_eq!(delivered(&report), 65, "{}", first_problem(&report));
    assert!(f[&bad15].as_ref().unwrap_err().contains("\"Error in handling indexed fields\""), "{:?}", f[&bad15]);
    assert!(f[&bad13].as_ref().unwrap_err().contains("code 13"), "{:?}", f[&bad13]);
    run.pipeline.shutdown().await;
    let copies = hec.copies();
    assert_eq!(copies.len(), 65);
    // Events a refused request handed on before the bad one are sent again one by one: at least once.
    assert!(copies.values().all(|&n| n >= 1));
}

/// A refused token (403 code 4) or an index the token may not use (code 7): every event is
/// dead-lettered with HEC's words and an ERROR is logged; nothing is reported delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_token_or_index_dead_letters_everything_and_alarms() {
    let evs = events().await;
    let _ = logs();
    let hec = FakeHec::start(false, AckMode::Immediate).await;
    std::env::set_var("KCAUDIT_TEST_SPLUNK_HEC_WRONG", "00000000-dead-beef-0000-000000000000");
    let mut opts = options(&hec.url);
    opts.token = SecretOptions::from_env("KCAUDIT_TEST_SPLUNK_HEC_WRONG");
    let run = start("hec-wrong-token", &opts);
    let report = push(&run, &evs).await;
    assert_eq!(delivered(&report), 0);
    let f = fates(&report);
    assert_eq!(f.len(), 67);
    for why in f.values() {
        let why = why.as_ref().unwrap_err();
        assert!(why.contains("refused the token or configuration") && why.contains("HTTP 403, HEC code 4 \"Invalid token\""), "{why}");
        assert!(!why.contains("dead-beef"), "the token never appears in a reason");
    }
    let m = run.metrics.render();
    assert!(m.contains(r#"kcaudit_dead_letters_total{sink="hec-wrong-token",stage="sink"} 67"#), "{m}");
    assert!(!m.contains(r#"kcaudit_events_delivered_total{sink="hec-wrong-token"}"#) || m.contains(r#"kcaudit_events_delivered_total{sink="hec-wrong-token"} 0"#), "{m}");
    let dl = DeadLetterStore::read_all(&run.dlq).unwrap();
    assert_eq!(dl.len(), 67);
    assert!(dl.iter().all(|d| d.event.is_some() && d.reason.contains("Invalid token")));
    run.pipeline.shutdown().await;
    assert_eq!(hec.event_requests().len(), 1, "no retries: a retry cannot fix a token");
    assert!(hec.copies().is_empty());
    let log = logs();
    assert!(
        log.lines().any(|l| l.contains("ERROR") && l.contains("sink=hec-wrong-token") && l.contains("refused kcaudit's token or configuration") && l.contains("Invalid token")),
        "{log}"
    );

    let hec = FakeHec::start(false, AckMode::Immediate).await;
    hec.with(|h| h.allowed_indexes = vec!["main".into()]);
    let run = start("hec-wrong-index", &options(&hec.url));
    let report = push(&run, &evs).await;
    assert_eq!(delivered(&report), 0);
    assert!(first_problem(&report).contains("HEC code 7 \"Incorrect index\""), "{}", first_problem(&report));
    run.pipeline.shutdown().await;
    assert!(logs().lines().any(|l| l.contains("ERROR") && l.contains("sink=hec-wrong-index") && l.contains("Incorrect index")));
}

/// With indexer acknowledgement the batch report (the webhook's answer) comes only after Splunk's
/// ack: an ack that turns true after 400 ms, several requests acknowledged together, a busy `/ack`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexer_ack_late_delivers_only_after_the_ack() {
    let evs = events().await;
    let hec = FakeHec::start(true, AckMode::AfterMs(400)).await;
    hec.with(|h| h.ack_busy = 2);
    let mut opts = options(&hec.url);
    opts.indexer_ack = true;
    opts.max_bytes = 50_000;
    let run = start("hec-ack-late", &opts);
    let t0 = Instant::now();
    let report = push(&run, &evs).await;
    let settled = Instant::now();
    assert_eq!(delivered(&report), 67, "{}", first_problem(&report));
    run.pipeline.shutdown().await;
    assert!(settled - t0 >= Duration::from_millis(400), "settled after {:?}", settled - t0);
    let reqs = hec.event_requests();
    assert!(reqs.len() >= 2, "several requests, acknowledged together");
    let channel = reqs[0].channel.clone().expect("a channel with indexer acknowledgement");
    assert!(uuid::Uuid::parse_str(&channel).is_ok() && channel == channel.to_uppercase(), "{channel}");
    assert!(reqs.iter().all(|r| r.channel.as_deref() == Some(channel.as_str()) && r.status == 200 && r.answer["ackId"].is_u64()));
    hec.with(|h| {
        let last_ack = h.acked_at.values().max().copied().unwrap();
        assert!(last_ack <= settled, "the report came after the last ack");
        assert_eq!(h.acked_at.len(), reqs.len(), "every request acknowledged");
        assert!(h.ack_queries.iter().all(|(_, c, _, _)| c == &channel));
        assert!(h.ack_queries.iter().any(|(_, _, ids, _)| ids.len() == reqs.len()), "one /ack query asks about all the requests");
        assert!(h.ack_queries.iter().any(|(_, _, _, a)| a["acks"].as_object().unwrap().values().any(|v| v == false)), "false answers were seen first");
    });
    assert!(hec.copies().values().all(|&n| n == 1) && hec.copies().len() == 67);
}

/// `false` acks before `true` ones: delivered once, when the ack says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn false_acks_then_true() {
    let evs = events().await;
    let hec = FakeHec::start(true, AckMode::FalseTimes(3)).await;
    let mut opts = options(&hec.url);
    opts.indexer_ack = true;
    let run = start("hec-ack-false", &opts);
    let report = push(&run, &evs).await;
    assert_eq!(delivered(&report), 67, "{}", first_problem(&report));
    run.pipeline.shutdown().await;
    hec.with(|h| {
        assert_eq!(h.requests.len(), 1);
        let answers: Vec<&Value> = h.ack_queries.iter().map(|(_, _, _, a)| a).collect();
        assert_eq!(answers.len(), 4, "{answers:?}");
        assert!(answers[..3].iter().all(|a| a["acks"]["0"] == false) && answers[3]["acks"]["0"] == true);
    });
    assert!(hec.copies().values().all(|&n| n == 1));
}

/// An ack that never comes: after `ack_timeout_ms` the batch is sent again (at-least-once: Splunk
/// holds two copies with the same event ids), and delivered when the second send is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_acked_is_sent_again_then_delivered() {
    let evs = events().await;
    let _ = logs();
    let hec = FakeHec::start(true, AckMode::NeverFirst(1)).await;
    let mut opts = options(&hec.url);
    opts.indexer_ack = true;
    opts.ack_timeout_ms = 300;
    opts.ack_poll_interval_ms = 50;
    let run = start("hec-ack-never", &opts);
    let t0 = Instant::now();
    let report = push(&run, &evs).await;
    assert_eq!(delivered(&report), 67, "{}", first_problem(&report));
    assert!(t0.elapsed() >= Duration::from_millis(300));
    let m = run.metrics.render();
    run.pipeline.shutdown().await;
    assert!(m.contains(r#"kcaudit_sink_errors_total{kind="transient",sink="hec-ack-never"} 1"#), "{m}");
    hec.with(|h| {
        assert_eq!(h.requests.len(), 2);
        assert_eq!(h.requests[0].answer["ackId"], 0);
        assert_eq!(h.requests[1].answer["ackId"], 1);
        assert_eq!(h.requests[0].body, h.requests[1].body, "the same envelopes again");
        // ackId 0 was asked about again before the re-send (it might have arrived late).
        assert!(h.ack_queries.iter().filter(|(_, _, ids, _)| ids == &vec![0]).count() >= 2);
        assert!(h.acked_at.contains_key(&1) && !h.acked_at.contains_key(&0));
    });
    let copies = hec.copies();
    assert_eq!(copies.len(), 67);
    assert!(copies.values().all(|&n| n == 2), "at-least-once: two copies, same ids");
    assert!(logs().lines().any(|l| l.contains("WARN") && l.contains("sink=hec-ack-never") && l.contains("no indexer acknowledgement for ackId 0")));
}

/// An ack that turns true after `ack_timeout_ms` but before the retry: the retry asks first, sees
/// it, and does not send a second copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_arriving_after_the_timeout_prevents_the_resend() {
    let evs = events().await;
    let hec = FakeHec::start(true, AckMode::AfterMs(300)).await;
    let mut opts = options(&hec.url);
    opts.indexer_ack = true;
    opts.ack_timeout_ms = 100;
    opts.ack_poll_interval_ms = 20;
    // The retry comes 400..1200 ms after the timeout (backoff 800 ms ± 50 %).
    opts.retry = RetryOptions { max_attempts: 5, initial_backoff_ms: 800, max_backoff_ms: 800 };
    let run = start("hec-ack-late-retry", &opts);
    let report = push(&run, &evs).await;
    assert_eq!(delivered(&report), 67, "{}", first_problem(&report));
    run.pipeline.shutdown().await;
    hec.with(|h| assert_eq!(h.requests.len(), 1, "not sent twice"));
    assert!(hec.copies().values().all(|&n| n == 1) && hec.copies().len() == 67);
}

/// A route: only events with findings of at least medium go to Splunk; the others are resolved for
/// this sink at once (filtered), never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_decides_what_goes_to_splunk() {
    let evs = events().await;
    let hec = FakeHec::start(false, AckMode::Immediate).await;
    let mut opts = options(&hec.url);
    opts.route = RouteFilter { min_severity: Some(Severity::Medium), ..Default::default() };
    let run = start("hec-route", &opts);
    let report = push(&run, &evs).await;
    assert_eq!(delivered(&report), 67);
    run.pipeline.shutdown().await;
    let want: HashSet<String> = evs.iter().filter(|e| e.severity.is_some_and(|s| s >= Severity::Medium)).map(|e| e.id.clone()).collect();
    assert!(!want.is_empty() && want.len() < 67);
    assert_eq!(hec.copies().keys().cloned().collect::<HashSet<_>>(), want);
}

/// With indexer acknowledgement, a refused event's predecessors (handed on, but under an error
/// that carries no ackId) are sent again with the rest: the bad event alone is dead-lettered, the
/// others delivered, those before it possibly twice (same event ids).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_event_under_indexer_ack_resends_its_unconfirmed_predecessors() {
    let evs = events().await;
    let hec = FakeHec::start(true, AckMode::Immediate).await;
    let bad = evs[10].id.clone();
    hec.with(|h| {
        h.poison.insert(bad.clone(), Poison { code: 6, with_number: true });
    });
    let mut opts = options(&hec.url);
    opts.indexer_ack = true;
    let run = start("hec-ack-bad", &opts);
    let report = push(&run, &evs).await;
    assert_eq!(delivered(&report), 66, "{}", first_problem(&report));
    assert!(fates(&report)[&bad].as_ref().unwrap_err().contains("invalid-event-number 10"));
    run.pipeline.shutdown().await;
    hec.with(|h| {
        assert_eq!(h.requests.len(), 2);
        assert_eq!(h.requests[1].body.lines().count(), 66, "everything but the bad event, again");
        assert_eq!(h.requests[1].answer["ackId"], 0);
        assert!(h.acked_at.contains_key(&0));
    });
    let copies = hec.copies();
    for (i, e) in evs.iter().enumerate() {
        let want = match i {
            0..=9 => 2,
            10 => 0,
            _ => 1,
        };
        assert_eq!(copies.get(&e.id).copied().unwrap_or(0), want, "event {i}");
    }
}

/// `indexer_ack` on, but the token has acknowledgement off (HEC answers 200 without an ackId): the
/// 200 is taken as the delivery, with one warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_acknowledgement_is_taken_at_its_200_with_a_warning() {
    let evs = events().await;
    let _ = logs();
    let hec = FakeHec::start(false, AckMode::Immediate).await;
    let mut opts = options(&hec.url);
    opts.indexer_ack = true;
    opts.max_bytes = 50_000;
    let run = start("hec-no-ack-token", &opts);
    let report = push(&run, &evs).await;
    assert_eq!(delivered(&report), 67, "{}", first_problem(&report));
    run.pipeline.shutdown().await;
    assert!(hec.event_requests().len() >= 2 && hec.event_requests().iter().all(|r| r.channel.is_some()));
    hec.with(|h| assert!(h.ack_queries.is_empty()));
    let warnings = logs().lines().filter(|l| l.contains("WARN") && l.contains("sink=hec-no-ack-token") && l.contains("without an ackId")).count();
    assert_eq!(warnings, 1, "warned once, not per request");
}
