//! The Elasticsearch sink against an in-test fake Elasticsearch that implements `_bulk` the way the
//! real one answers it (`siem-and-detection.md` §1.2): strict NDJSON (a body not ending in `\n` is a
//! 400 `illegal_argument_exception`), `Content-Type` checked, gzip bodies inflated, credentials
//! checked (401 `security_exception`), data-stream rules (only `create`), documents checked against
//! the shipped index template (a type mismatch is a 400 `document_parsing_exception`), `create` of an
//! existing `_id` a 409 `version_conflict_engine_exception`, and per-item or whole-request failures
//! scripted by `_id` or by position.
//!
//! Also: every field path the ECS encoder writes for the 67 fixture events is mapped in
//! `schemas/elasticsearch/index-template.json` with an agreeing type, and the exact `_bulk` bodies.

mod common;
use common::sink_run::items_of;
use common::sink_run::{start_sink, SinkRun};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use kcaudit::dead_letter::DeadLetterStore;
use kcaudit::decode::Item;
use kcaudit::event::{AuditEvent, LogEnvelope, Severity};
use kcaudit::pipeline::BatchReport;
use kcaudit::sinks::elasticsearch::{source, AuthOptions, AuthStrategy, ElasticsearchOptions, ElasticsearchSink, DEFAULT_INDEX};
use kcaudit::sinks::encode::ecs;
use kcaudit::sinks::http_client::SecretOptions;
use kcaudit::sinks::route::RouteFilter;
use kcaudit::sinks::{BatchOptions, RetryOptions, Sink};

// ---------------------------------------------------------------------------------------------
// The index template and a checker of documents against it.

fn template() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas/elasticsearch/index-template.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn template_properties() -> Map<String, Value> {
    template()["template"]["mappings"]["properties"].as_object().unwrap().clone()
}

/// A problem of one field of a document against the mappings.
#[derive(Debug, Clone, PartialEq)]
enum FieldProblem {
    /// The path has no mapping (with `"dynamic": false` it would be kept in `_source` but not indexed).
    Unmapped(String),
    /// The value does not fit the mapped type (Elasticsearch: `document_parsing_exception`).
    Type { path: String, ty: String, value: String },
}

fn leaf_fits(ty: &str, v: &Value) -> bool {
    match (ty, v) {
        ("keyword" | "constant_keyword" | "match_only_text" | "text", Value::String(_)) => true,
        ("date", Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s).is_ok(),
        ("ip", Value::String(s)) => s.parse::<std::net::IpAddr>().is_ok(),
        ("long", Value::Number(n)) => n.is_i64(),
        ("float", Value::Number(_)) => true,
        ("boolean", Value::Bool(_)) => true,
        _ => false,
    }
}

/// Every leaf of `doc` checked against `props`; `seen` collects the leaf paths with their types.
fn check_fields(props: &Map<String, Value>, prefix: &str, obj: &Map<String, Value>, out: &mut Vec<FieldProblem>, seen: &mut BTreeMap<String, String>) {
    for (k, v) in obj {
        let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        // A dotted or empty key outside a flattened field would be expanded / refused by Elasticsearch.
        if k.is_empty() || k.contains('.') {
            out.push(FieldProblem::Unmapped(format!("{path} (a key with a dot or empty)")));
            continue;
        }
        let Some(m) = props.get(k) else {
            out.push(FieldProblem::Unmapped(path));
            continue;
        };
        let ty = m.get("type").and_then(Value::as_str);
        let values: Vec<&Value> = match v {
            Value::Array(a) => a.iter().collect(),
            other => vec![other],
        };
        if ty == Some("flattened") {
            seen.insert(path.clone(), "flattened".into());
            if !matches!(v, Value::Object(_)) {
                out.push(FieldProblem::Type { path, ty: "flattened".into(), value: v.to_string() });
            }
            continue;
        }
        if let Some(sub) = m.get("properties").and_then(Value::as_object) {
            for x in values {
                match x {
                    Value::Object(o) => check_fields(sub, &path, o, out, seen),
                    other => out.push(FieldProblem::Type { path: path.clone(), ty: "object".into(), value: other.to_string() }),
                }
            }
            continue;
        }
        let ty = ty.unwrap_or("object").to_string();
        seen.insert(path.clone(), ty.clone());
        for x in values {
            if !leaf_fits(&ty, x) {
                out.push(FieldProblem::Type { path: path.clone(), ty: ty.clone(), value: x.to_string() });
            }
        }
    }
}

fn problems_of(props: &Map<String, Value>, doc: &Value) -> (Vec<FieldProblem>, BTreeMap<String, String>) {
    let (mut out, mut seen) = (Vec::new(), BTreeMap::new());
    check_fields(props, "", doc.as_object().expect("a document is an object"), &mut out, &mut seen);
    (out, seen)
}

// ---------------------------------------------------------------------------------------------
// The fake Elasticsearch.

/// What to do with one document.
#[derive(Debug, Clone)]
enum Outcome {
    /// What Elasticsearch does: check the document against the mappings, create it (201), or 409
    /// when the `_id` exists.
    Create,
    /// 429 `es_rejected_execution_exception` (write thread pool queue full).
    Busy,
    /// 400 `mapper_parsing_exception` with this reason.
    Mapping(String),
    /// 503 `unavailable_shards_exception`.
    Unavailable,
}

/// What to do with a whole request.
#[derive(Debug, Clone, Copy)]
enum Whole {
    /// Answer this status without looking at the body.
    Status(u16),
    /// Index everything, then answer this status (the answer of a request that did land got lost).
    IndexThen(u16),
}

#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: HeaderMap,
    /// The body as sent (compressed when gzip).
    wire: Vec<u8>,
    /// The body after inflating.
    body: Vec<u8>,
    status: u16,
    /// (`_id`, item status) per document, in order.
    items: Vec<(String, u16)>,
}

struct Es {
    authorization: Option<String>,
    props: Map<String, Value>,
    whole: VecDeque<Whole>,
    by_id: HashMap<String, VecDeque<Outcome>>,
    /// (request number, 0-based position in that request) → outcome.
    by_pos: HashMap<(usize, usize), Outcome>,
    docs: BTreeMap<String, Value>,
    creates: HashMap<String, usize>,
    requests: Vec<Seen>,
    seq: u64,
}

type Fake = Arc<Mutex<Es>>;

fn fake_state() -> Fake {
    Arc::new(Mutex::new(Es {
        authorization: None,
        props: template_properties(),
        whole: VecDeque::new(),
        by_id: HashMap::new(),
        by_pos: HashMap::new(),
        docs: BTreeMap::new(),
        creates: HashMap::new(),
        requests: Vec::new(),
        seq: 0,
    }))
}

/// Elasticsearch's error envelope for a whole request.
fn es_error(status: u16, ty: &str, reason: &str) -> Value {
    json!({ "error": { "root_cause": [{ "type": ty, "reason": reason }], "type": ty, "reason": reason }, "status": status })
}

fn whole_status_body(status: u16) -> Value {
    match status {
        429 => es_error(429, "es_rejected_execution_exception", "rejected execution of coordinating operation [coordinating_and_primary_bytes=0, replica_bytes=0, all_bytes=0, coordinating_operation_bytes=1024, max_coordinating_and_primary_bytes=0]"),
        503 => es_error(503, "cluster_block_exception", "blocked by: [SERVICE_UNAVAILABLE/2/no master];"),
        s => es_error(s, "internal_server_error", "scripted failure"),
    }
}

fn backing_index(index: &str) -> String {
    format!(".ds-{index}-2026.03.14-000001")
}

fn item_error(index: &str, id: &str, status: u16, ty: &str, reason: &str) -> (u16, Value) {
    (status, json!({ "create": { "_index": backing_index(index), "_id": id, "status": status, "error": { "type": ty, "reason": reason, "index_uuid": "aAsFqTI0Tc2W0LCWgPNrOA", "shard": "0", "index": backing_index(index) } } }))
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

impl Es {
    fn handle(&mut self, method: &Method, path: &str, headers: &HeaderMap, wire: &[u8]) -> (u16, Value) {
        let n = self.requests.len();
        self.requests.push(Seen { path: path.to_string(), headers: headers.clone(), wire: wire.to_vec(), body: Vec::new(), status: 0, items: Vec::new() });
        let (status, body, items) = self.answer(n, method, path, headers, wire);
        let seen = &mut self.requests[n];
        seen.status = status;
        seen.items = items;
        (status, body)
    }

    fn answer(&mut self, n: usize, method: &Method, path: &str, headers: &HeaderMap, wire: &[u8]) -> (u16, Value, Vec<(String, u16)>) {
        let fail = |status: u16, v: Value| (status, v, Vec::new());
        if let Some(expected) = &self.authorization {
            if header(headers, "authorization") != Some(expected.as_str()) {
                let reason = match header(headers, "authorization") {
                    None => "missing authentication credentials for REST request [/_bulk]".to_string(),
                    Some(a) if a.starts_with("ApiKey ") => "unable to authenticate with provided credentials and anonymous access is not allowed for this request".into(),
                    Some(_) => "unable to authenticate user [kcaudit] for REST request [/_bulk]".into(),
                };
                return fail(401, es_error(401, "security_exception", &reason));
            }
        }
        let (index_from_path, ok_path) = match path.trim_start_matches('/').split('/').collect::<Vec<_>>()[..] {
            ["_bulk"] => (None, true),
            [index, "_bulk"] => (Some(index.to_string()), true),
            _ => (None, false),
        };
        if !ok_path {
            return fail(404, es_error(404, "index_not_found_exception", &format!("no such index [{path}]")));
        }
        if method != Method::POST && method != Method::PUT {
            return fail(405, json!({ "error": format!("Incorrect HTTP method for uri [{path}] and method [{method}], allowed: [POST, PUT]"), "status": 405 }));
        }
        let ct = header(headers, "content-type").unwrap_or("");
        if !(ct.starts_with("application/x-ndjson") || ct.starts_with("application/json")) {
            return fail(406, json!({ "error": format!("Content-Type header [{ct}] is not supported"), "status": 406 }));
        }
        let body = if header(headers, "content-encoding") == Some("gzip") {
            use std::io::Read;
            let mut out = Vec::new();
            if let Err(e) = flate2::read::GzDecoder::new(wire).read_to_end(&mut out) {
                return fail(400, es_error(400, "illegal_argument_exception", &format!("cannot inflate the request body: {e}")));
            }
            out
        } else {
            wire.to_vec()
        };
        self.requests[n].body = body.clone();
        let whole = self.whole.pop_front();
        if let Some(Whole::Status(s)) = whole {
            return fail(s, whole_status_body(s));
        }
        if body.is_empty() {
            return fail(400, es_error(400, "action_request_validation_exception", "Validation Failed: 1: no requests added;"));
        }
        if !body.ends_with(b"\n") {
            return fail(400, es_error(400, "illegal_argument_exception", "The bulk request must be terminated by a newline [\\n]"));
        }
        let Ok(text) = std::str::from_utf8(&body) else {
            return fail(400, es_error(400, "illegal_argument_exception", "the bulk body is not UTF-8"));
        };
        let lines: Vec<&str> = text[..text.len() - 1].split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).collect();
        // First pass: parse every action line (a malformed one fails the whole request, as in
        // Elasticsearch), pairing it with its source line.
        let mut ops: Vec<(String, String, Option<String>, &str)> = Vec::new(); // (action, index, id, source)
        let mut i = 0;
        while i < lines.len() {
            let line_no = i + 1;
            let action: Value = match serde_json::from_str(lines[i]) {
                Ok(v @ Value::Object(_)) => v,
                _ => return fail(400, es_error(400, "x_content_parse_exception", &format!("[{line_no}:1] Malformed action/metadata line [{line_no}], expected START_OBJECT"))),
            };
            let obj = action.as_object().unwrap();
            if obj.len() != 1 {
                return fail(400, es_error(400, "illegal_argument_exception", &format!("Malformed action/metadata line [{line_no}], expected a single action")));
            }
            let (verb, meta) = obj.iter().next().unwrap();
            if !matches!(verb.as_str(), "create" | "index" | "update" | "delete") {
                return fail(400, es_error(400, "illegal_argument_exception", &format!("Malformed action/metadata line [{line_no}], expected one of [create, delete, index, update] but found [{verb}]")));
            }
            let index = meta.get("_index").and_then(Value::as_str).map(str::to_string).or(index_from_path.clone());
            let Some(index) = index else {
                return fail(400, es_error(400, "action_request_validation_exception", &format!("Validation Failed: 1: index is missing for item [{}];", ops.len())));
            };
            let id = meta.get("_id").and_then(Value::as_str).map(str::to_string);
            if verb == "delete" {
                ops.push((verb.clone(), index, id, ""));
                i += 1;
                continue;
            }
            if i + 1 >= lines.len() {
                return fail(400, es_error(400, "illegal_argument_exception", &format!("Action/metadata line [{line_no}] has no source line")));
            }
            ops.push((verb.clone(), index, id, lines[i + 1]));
            i += 2;
        }
        let mut items = Vec::new();
        let mut fates = Vec::new();
        for (pos, (verb, index, id, src)) in ops.into_iter().enumerate() {
            let Some(id) = id else {
                // kcaudit always names its documents; an auto id would break idempotent retries.
                items.push(json!({ verb.clone(): { "_index": backing_index(&index), "status": 400, "error": { "type": "illegal_argument_exception", "reason": "fake: this cluster only takes documents with an _id" } } }));
                fates.push((String::new(), 400));
                continue;
            };
            let (status, item) = if verb != "create" {
                let (s, mut v) = item_error(&index, &id, 400, "illegal_argument_exception", &format!("only write ops with an op_type of create are allowed in data streams [{index}]"));
                let inner = v["create"].take();
                (s, json!({ verb: inner }))
            } else {
                let scripted = self.by_pos.remove(&(n, pos)).or_else(|| self.by_id.get_mut(&id).and_then(VecDeque::pop_front));
                match scripted.unwrap_or(Outcome::Create) {
                    Outcome::Busy => item_error(&index, &id, 429, "es_rejected_execution_exception", "rejected execution of org.elasticsearch.action.support.replication.TransportWriteAction$1/WrappedActionListener on EsThreadPoolExecutor[name = es-node-1/write, queue capacity = 10000]"),
                    Outcome::Mapping(reason) => item_error(&index, &id, 400, "mapper_parsing_exception", &reason),
                    Outcome::Unavailable => item_error(&index, &id, 503, "unavailable_shards_exception", "[.ds-…][0] primary shard is not active Timeout: [1m]"),
                    Outcome::Create => self.create(&index, &id, src),
                }
            };
            fates.push((id, status));
            items.push(item);
        }
        let errors = fates.iter().any(|(_, s)| *s >= 300);
        if let Some(Whole::IndexThen(s)) = whole {
            return (s, whole_status_body(s), fates);
        }
        (200, json!({ "took": 7, "errors": errors, "items": items }), fates)
    }

    fn create(&mut self, index: &str, id: &str, src: &str) -> (u16, Value) {
        if self.docs.contains_key(id) {
            return item_error(index, id, 409, "version_conflict_engine_exception", &format!("[{id}]: version conflict, document already exists (current version [1])"));
        }
        let doc: Value = match serde_json::from_str(src) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => return item_error(index, id, 400, "document_parsing_exception", "[1:1] failed to parse: the source is not an object"),
            Err(e) => return item_error(index, id, 400, "document_parsing_exception", &format!("[1:1] failed to parse: {e}")),
        };
        if index.starts_with("logs-") && !doc.get("@timestamp").is_some_and(Value::is_string) {
            return item_error(index, id, 400, "document_parsing_exception", "[1:1] failed to parse: data stream timestamp field [@timestamp] is missing");
        }
        let (problems, _) = problems_of(&self.props, &doc);
        // Unmapped paths are accepted silently (`"dynamic": false`); a value of the wrong type is not.
        if let Some(FieldProblem::Type { path, ty, value }) = problems.iter().find(|p| matches!(p, FieldProblem::Type { .. })).cloned() {
            return item_error(index, id, 400, "document_parsing_exception", &format!("[1:1] failed to parse field [{path}] of type [{ty}] in document with id '{id}'. Preview of field's value: '{value}'"));
        }
        self.docs.insert(id.to_string(), doc);
        *self.creates.entry(id.to_string()).or_default() += 1;
        self.seq += 1;
        (201, json!({ "create": { "_index": backing_index(index), "_id": id, "_version": 1, "result": "created", "_shards": { "total": 2, "successful": 1, "failed": 0 }, "_seq_no": self.seq, "_primary_term": 1, "status": 201 } }))
    }
}

async fn handler(State(es): State<Fake>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let (status, v) = es.lock().unwrap().handle(&method, uri.path(), &headers, &body);
    (StatusCode::from_u16(status).unwrap(), [(axum::http::header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

/// Start a fake on a free loopback port; returns its base URL and state.
async fn fake_es() -> (String, Fake) {
    let state = fake_state();
    let app = axum::Router::new().fallback(handler).with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, state)
}

/// A URL nothing listens on.
async fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

/// (action line, document) pairs of a `_bulk` body.
fn parse_bulk(body: &[u8]) -> Vec<(Value, Value)> {
    let text = std::str::from_utf8(body).unwrap();
    assert!(text.ends_with('\n'), "a _bulk body ends with a newline");
    let lines: Vec<&str> = text[..text.len() - 1].split('\n').collect();
    assert_eq!(lines.len() % 2, 0, "action and source lines in pairs");
    lines.chunks(2).map(|p| (serde_json::from_str(p[0]).unwrap(), serde_json::from_str(p[1]).unwrap())).collect()
}

// ---------------------------------------------------------------------------------------------
// Running the sink, directly and through a real pipeline.

const KEY_ENV: &str = "KCAUDIT_TEST_ES_API_KEY";
const API_KEY: &str = "a2NhdWRpdDp0ZXN0LWtleS0xMjM0";

fn options(urls: Vec<String>) -> ElasticsearchOptions {
    ElasticsearchOptions {
        enabled: true,
        urls,
        timeout_ms: 5000,
        batch: BatchOptions { max_events: 1000, max_wait_ms: 50, queue_capacity: 2000 },
        retry: RetryOptions { max_attempts: 6, initial_backoff_ms: 10, max_backoff_ms: 100 },
        ..Default::default()
    }
}

/// Options whose batches close at exactly `n` events (so a test's events go in one request).
fn one_batch(mut o: ElasticsearchOptions, n: usize) -> ElasticsearchOptions {
    o.batch = BatchOptions { max_events: n, max_wait_ms: 10_000, queue_capacity: 2000 };
    o
}

fn with_api_key(mut o: ElasticsearchOptions) -> ElasticsearchOptions {
    std::env::set_var(KEY_ENV, API_KEY);
    o.auth = AuthOptions { strategy: AuthStrategy::ApiKey, api_key: SecretOptions::from_env(KEY_ENV), ..Default::default() };
    o
}

async fn fixture() -> Vec<AuditEvent> {
    common::sink_run::stable_fixture().await
}

fn start(opts: &ElasticsearchOptions) -> SinkRun {
    start_sink(Box::new(ElasticsearchSink::new("elasticsearch", opts).unwrap()), &opts.batch, &opts.retry)
}

async fn push(run: &SinkRun, items: Vec<Item>) -> BatchReport {
    run.push(items).await
}

/// (accepted, delivered, dead-lettered, failed) of one batch.
fn fates(r: &BatchReport) -> (u64, u64, u64, u64) {
    common::sink_run::fates(std::slice::from_ref(r))
}

fn dead_reasons(r: &BatchReport) -> BTreeMap<String, String> {
    r.items.iter().filter(|i| !i.dead_lettered.is_empty()).map(|i| (i.event_id.clone().unwrap(), i.dead_lettered[0].1.clone())).collect()
}

/// How many times each `_id` appeared in requests the fake saw.
fn appearances(es: &Es) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in &es.requests {
        for (id, _) in &r.items {
            *m.entry(id.clone()).or_default() += 1;
        }
    }
    m
}

fn assert_each_created_once(es: &Es, ids: &[String]) {
    assert_eq!(es.docs.len(), ids.len(), "documents in the fake");
    for id in ids {
        assert_eq!(es.creates.get(id), Some(&1), "{id} created exactly once");
    }
}

// ---------------------------------------------------------------------------------------------
// The template.

#[tokio::test]
async fn template_maps_every_field_of_every_fixture_document_with_agreeing_types() {
    let t = template();
    assert_eq!(t["index_patterns"], json!(["logs-keycloak.token_exchange-*"]));
    assert_eq!(t["data_stream"], json!({}), "a data stream template");
    assert!(t["priority"].as_u64().unwrap() > 100, "above the built-in logs template");
    assert_eq!(t["template"]["mappings"]["dynamic"], json!(false));
    assert_eq!(t["template"]["mappings"]["properties"]["@timestamp"]["type"], "date");
    let pattern = t["index_patterns"][0].as_str().unwrap().trim_end_matches('*');
    assert!(DEFAULT_INDEX.starts_with(pattern), "the default index is covered by the template");

    let props = template_properties();
    let mut events = fixture().await;
    // Variants that reach fields the timeline leaves empty: a live event (receive time), a group
    // change, a log line without event time, a blank and a dotted detail key, an address that is
    // not an IP.
    let mut live = events[2].clone();
    live.received_at = Some(chrono::Utc::now());
    live.details.insert("".into(), "blank key".into());
    live.details.insert("custom.dotted.key".into(), "v".into());
    live.ip_address = Some("unknown".into());
    live.ip = None;
    let mut group = events.iter().find(|e| e.admin.is_some()).unwrap().clone();
    group.admin.as_mut().unwrap().resource_path = Some("groups/0c1f5f2e-0000-4000-8000-000000000001/members".into());
    group.admin.as_mut().unwrap().operation = Some("DELETE".into());
    let mut logline = events[0].clone();
    logline.time = None;
    logline.origin.log = Some(Box::new(LogEnvelope { timestamp: Some("2026-03-09 07:58:04,120".into()), level: Some("INFO".into()), logger: Some("org.keycloak.events".into()), thread: Some("executor-thread-1".into()), host: Some("kc-0".into()) }));
    logline.origin.line = Some(12);
    events.extend([live, group, logline]);

    let now = chrono::Utc::now();
    let mut all_seen = BTreeMap::new();
    for e in &events {
        let doc = source(DEFAULT_INDEX, e, now);
        let (problems, seen) = problems_of(&props, &doc);
        assert!(problems.is_empty(), "event {}: {problems:#?}", e.id);
        all_seen.extend(seen);
    }
    // The typed fields really are what they claim to be.
    for (path, ty) in [("@timestamp", "date"), ("event.created", "date"), ("source.ip", "ip"), ("client.ip", "ip"), ("related.ip", "ip"), ("event.severity", "long"), ("event.risk_score", "float"), ("keycloak.details", "flattened"), ("kcaudit.origin.line", "long"), ("user.target.id", "keyword"), ("group.id", "keyword"), ("user.effective.name", "keyword"), ("threat.technique.subtechnique.id", "keyword"), ("data_stream.dataset", "constant_keyword"), ("keycloak.admin.representation", "match_only_text")] {
        assert_eq!(all_seen.get(path).map(String::as_str), Some(ty), "{path} emitted and mapped as {ty}");
    }
    eprintln!("{} distinct leaf paths emitted, all mapped", all_seen.len());

    // The checker itself catches what Elasticsearch would refuse or not index.
    let bad = json!({"@timestamp": "yesterday", "source": {"ip": "unknown"}, "event": {"severity": "high"}, "nope": 1, "a.b": 1});
    let (p, _) = problems_of(&props, &bad);
    assert_eq!(p.len(), 5, "{p:#?}");
}

// ---------------------------------------------------------------------------------------------
// Exact request bodies.

/// The `_bulk` body kcaudit must send for `events`, spelled out independently of the sink.
fn expected_body(events: &[AuditEvent]) -> String {
    let mut out = String::new();
    for e in events {
        out.push_str(&format!("{{\"create\":{{\"_index\":\"logs-keycloak.token_exchange-default\",\"_id\":\"{}\"}}}}\n", e.id));
        let mut doc = ecs::document(e);
        doc["data_stream"] = json!({"type": "logs", "dataset": "keycloak.token_exchange", "namespace": "default"});
        doc["event"]["dataset"] = json!("keycloak.token_exchange");
        out.push_str(&serde_json::to_string(&doc).unwrap());
        out.push('\n');
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_bulk_bodies_for_the_fixture_events() {
    let events = fixture().await;
    let arcs: Vec<Arc<AuditEvent>> = events.iter().cloned().map(Arc::new).collect();
    let (url, es) = fake_es().await;
    es.lock().unwrap().authorization = Some(format!("ApiKey {API_KEY}"));

    // One request, gzip, API key.
    let mut sink = ElasticsearchSink::new("elasticsearch", &with_api_key(options(vec![url.clone()]))).unwrap();
    let report = sink.write(&arcs).await.unwrap();
    assert!(report.rejected.is_empty() && report.retry.is_empty(), "{report:?}");
    let expected = expected_body(&events);
    {
        let es = es.lock().unwrap();
        assert_eq!(es.requests.len(), 1);
        let r = &es.requests[0];
        assert_eq!(r.path, "/_bulk");
        assert_eq!(header(&r.headers, "content-type"), Some("application/x-ndjson"));
        assert_eq!(header(&r.headers, "content-encoding"), Some("gzip"));
        assert_eq!(header(&r.headers, "authorization"), Some(format!("ApiKey {API_KEY}").as_str()));
        assert!(r.wire.len() * 3 < r.body.len(), "gzip compresses: {} → {}", r.body.len(), r.wire.len());
        assert_eq!(String::from_utf8(r.body.clone()).unwrap(), expected);
        assert_eq!(r.items.len(), 67);
        assert!(r.items.iter().all(|(_, s)| *s == 201));
    }

    // Golden documents, written out in full: a V2 exchange, a flagged V1 impersonation of a
    // privileged user, an admin event.
    let bodies = parse_bulk(expected.as_bytes());
    let by_id: HashMap<String, Value> = bodies.into_iter().map(|(a, d)| (a["create"]["_id"].as_str().unwrap().to_string(), d)).collect();
    for (id, golden) in golden_documents() {
        let got = &by_id[id];
        if let Ok(dir) = std::env::var("KCAUDIT_ES_GOLDEN_DUMP") {
            std::fs::write(format!("{dir}/{id}.json"), serde_json::to_string_pretty(got).unwrap()).unwrap();
            continue;
        }
        let golden: Value = serde_json::from_str(golden).unwrap();
        if got != &golden {
            panic!("document {id} differs:\n got: {}\nwant: {}", serde_json::to_string_pretty(got).unwrap(), serde_json::to_string_pretty(&golden).unwrap());
        }
    }

    // Cut by max_bytes, no gzip, basic auth: several requests whose bodies put together are the
    // same bytes, each within the limit (each ends with a newline).
    std::env::set_var("KCAUDIT_TEST_ES_PASSWORD", "s3cret");
    let (url2, es2) = fake_es().await;
    use base64::Engine;
    es2.lock().unwrap().authorization = Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("kcaudit:s3cret")));
    let mut opts = options(vec![url2]);
    opts.gzip = false;
    opts.max_bytes = expected.len() / 3;
    opts.auth = AuthOptions { strategy: AuthStrategy::Basic, user: "kcaudit".into(), password: SecretOptions::from_env("KCAUDIT_TEST_ES_PASSWORD"), ..Default::default() };
    let mut sink = ElasticsearchSink::new("elasticsearch", &opts).unwrap();
    let report = sink.write(&arcs).await.unwrap();
    assert!(report.rejected.is_empty() && report.retry.is_empty(), "{report:?}");
    let es2 = es2.lock().unwrap();
    assert!((3..=5).contains(&es2.requests.len()), "{} requests", es2.requests.len());
    let mut joined = Vec::new();
    for r in &es2.requests {
        assert_eq!(header(&r.headers, "content-encoding"), None);
        assert_eq!(r.wire, r.body);
        assert!(r.body.len() <= opts.max_bytes, "{} > {}", r.body.len(), opts.max_bytes);
        assert_eq!(r.status, 200);
        joined.extend_from_slice(&r.body);
    }
    assert_eq!(String::from_utf8(joined).unwrap(), expected);
    assert_each_created_once(&es2, &events.iter().map(|e| e.id.clone()).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------------------------
// Through a real pipeline.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_created_through_the_pipeline() {
    let events = fixture().await;
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let (url, es) = fake_es().await;
    let run = start(&options(vec![url]));
    let report = push(&run, items_of(&events)).await;
    assert_eq!(fates(&report), (67, 67, 0, 0), "{:?}", dead_reasons(&report));
    {
        let es = es.lock().unwrap();
        assert_each_created_once(&es, &ids);
        assert!(es.requests.iter().all(|r| r.status == 200 && r.items.iter().all(|(_, s)| *s == 201)));
        // Every stored document is the ECS document of its event.
        for e in &events {
            assert_eq!(es.docs[&e.id]["event"]["id"], json!(e.id));
            assert_eq!(es.docs[&e.id]["@timestamp"], json!(kcaudit::event::format_time(&e.time.unwrap())));
        }
    }
    let m = run.metrics.render();
    assert!(m.contains(r#"kcaudit_events_delivered_total{sink="elasticsearch"} 67"#), "{m}");
    run.pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_answer_retries_the_429_item_dead_letters_the_mapping_error_and_delivers_the_rest_once() {
    let events = fixture().await;
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let busy = ids[10].clone();
    let broken = ids[20].clone();
    let (url, es) = fake_es().await;
    {
        let mut es = es.lock().unwrap();
        es.by_id.insert(busy.clone(), VecDeque::from([Outcome::Busy]));
        es.by_id.insert(broken.clone(), VecDeque::from([Outcome::Mapping("failed to parse field [keycloak.details] of type [flattened] in document with id 'x'".into())]));
        // And whatever document comes 31st in the first request meets a shard that is not active.
        es.by_pos.insert((0, 30), Outcome::Unavailable);
    }
    let run = start(&one_batch(options(vec![url]), events.len()));
    let report = push(&run, items_of(&events)).await;
    assert_eq!(fates(&report), (67, 66, 1, 0));
    let dead = dead_reasons(&report);
    assert_eq!(dead.keys().collect::<Vec<_>>(), vec![&broken]);
    let reason = &dead[&broken];
    assert!(reason.contains("mapper_parsing_exception") && reason.contains("failed to parse field [keycloak.details]"), "{reason}");
    let es = es.lock().unwrap();
    let seen = appearances(&es);
    let first = &es.requests[0];
    assert_eq!(first.status, 200);
    let unavailable = first.items[30].clone();
    assert_eq!(unavailable.1, 503);
    let unavailable = unavailable.0;
    assert_eq!(first.items.iter().find(|(i, _)| *i == busy).unwrap().1, 429);
    assert_eq!(first.items.iter().find(|(i, _)| *i == broken).unwrap().1, 400);
    assert_eq!(seen[&busy], 2, "the 429 item is sent again");
    assert_eq!(seen[&unavailable], 2, "the 503 item is sent again");
    assert_eq!(seen[&broken], 1, "a mapping error is not retried");
    assert!(ids.iter().filter(|i| **i != busy && **i != unavailable).all(|i| seen[i] == 1), "nothing else is re-sent");
    // The retry carries those two items alone, in batch order.
    let retry = es.requests.iter().rev().find(|r| r.items.iter().any(|(i, _)| *i == busy)).unwrap();
    let mut want = vec![(busy.clone(), 201), (unavailable.clone(), 201)];
    want.sort_by_key(|(i, _)| ids.iter().position(|x| x == i));
    assert_eq!(retry.items, want);
    assert_eq!(es.docs.len(), 66);
    assert!(!es.docs.contains_key(&broken));
    assert!(es.creates.values().all(|n| *n == 1));
    drop(es);
    let dl = DeadLetterStore::read_all(&run.dlq).unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].sink.as_deref(), Some("elasticsearch"));
    assert_eq!(dl[0].event.as_ref().unwrap().id, broken, "the dead letter keeps the event for replay");
    let m = run.metrics.render();
    assert!(m.contains(r#"kcaudit_events_delivered_total{sink="elasticsearch"} 66"#), "{m}");
    run.pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_create_answered_409_counts_as_delivered() {
    let events = fixture().await;
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let (url, es) = fake_es().await;
    {
        let mut es = es.lock().unwrap();
        // The first request lands but its answer is lost (a 502 from a proxy after the cluster
        // indexed it).
        es.whole.push_back(Whole::IndexThen(502));
    }
    let run = start(&one_batch(options(vec![url]), events.len()));
    let report = push(&run, items_of(&events)).await;
    assert_eq!(fates(&report), (67, 67, 0, 0), "{:?}", dead_reasons(&report));
    let es_guard = es.lock().unwrap();
    assert_each_created_once(&es_guard, &ids);
    let last = es_guard.requests.last().unwrap();
    assert_eq!(last.status, 200);
    assert!(last.items.iter().all(|(_, s)| *s == 409), "the retry met every document already created: {:?}", last.items);
    assert_eq!(es_guard.requests.iter().map(|r| r.items.len()).sum::<usize>(), 134, "each document sent twice, stored once");
    drop(es_guard);
    let m = run.metrics.render();
    assert!(m.contains(r#"kcaudit_sink_errors_total{kind="transient",sink="elasticsearch"}"#), "{m}");
    assert!(m.contains(r#"kcaudit_events_delivered_total{sink="elasticsearch"} 67"#), "{m}");
    run.pipeline.shutdown().await;

    // Per item too: a document indexed before (a previous run, another instance) is a 409 and
    // delivered, not dead-lettered.
    let (url, es) = fake_es().await;
    es.lock().unwrap().docs.insert(ids[5].clone(), json!({}));
    let run = start(&one_batch(options(vec![url]), events.len()));
    let report = push(&run, items_of(&events)).await;
    assert_eq!(fates(&report), (67, 67, 0, 0), "{:?}", dead_reasons(&report));
    assert_eq!(es.lock().unwrap().requests[0].items[5], (ids[5].clone(), 409));
    assert_eq!(es.lock().unwrap().requests.len(), 1, "a conflict is not retried");
    run.pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_request_503_and_429_then_recovery() {
    let events = fixture().await;
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let (url, es) = fake_es().await;
    es.lock().unwrap().whole.extend([Whole::Status(503), Whole::Status(429)]);
    let run = start(&options(vec![url]));
    let report = push(&run, items_of(&events)).await;
    assert_eq!(fates(&report), (67, 67, 0, 0), "{:?}", dead_reasons(&report));
    let es = es.lock().unwrap();
    let statuses: Vec<u16> = es.requests.iter().map(|r| r.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 1);
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 1);
    assert_eq!(*statuses.last().unwrap(), 200);
    assert_each_created_once(&es, &ids);
    drop(es);
    let m = run.metrics.render();
    assert!(m.contains(r#"kcaudit_sink_retries_total{sink="elasticsearch"}"#), "{m}");
    run.pipeline.shutdown().await;

    // A cluster that stays unavailable: after max_attempts the events are dead-lettered with its
    // words, never reported delivered.
    let (url, es) = fake_es().await;
    es.lock().unwrap().whole.extend(std::iter::repeat_n(Whole::Status(503), 100));
    let mut opts = options(vec![url]);
    opts.retry.max_attempts = 3;
    let run = start(&opts);
    let report = push(&run, items_of(&events[..5])).await;
    assert_eq!(fates(&report), (5, 0, 5, 0));
    let reason = dead_reasons(&report).into_values().next().unwrap();
    assert!(reason.contains("gave up after 3 attempts") && reason.contains("HTTP 503") && reason.contains("no master"), "{reason}");
    assert_eq!(es.lock().unwrap().requests.len(), 3);
    run.pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_dead_letter_everything_and_deliver_nothing() {
    let events = fixture().await;
    let (url, es) = fake_es().await;
    es.lock().unwrap().authorization = Some("ApiKey the-right-key".into());
    let key_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key_file.path(), "kcaudit:not-the-key\n").unwrap();
    let mut opts = options(vec![url]);
    opts.auth = AuthOptions { strategy: AuthStrategy::ApiKey, api_key: SecretOptions { env: None, file: Some(key_file.path().to_path_buf()) }, ..Default::default() };
    let run = start(&opts);
    let report = push(&run, items_of(&events)).await;
    assert_eq!(fates(&report), (67, 0, 67, 0));
    let reasons = dead_reasons(&report);
    let reason = reasons.values().next().unwrap();
    assert!(reason.contains("HTTP 401") && reason.contains("security_exception") && reason.contains("unable to authenticate"), "{reason}");
    assert!(!reason.contains("not-the-key"), "no secret in a reason");
    assert_eq!(es.lock().unwrap().requests.len(), 1, "a refusal is not retried");
    assert!(es.lock().unwrap().docs.is_empty());
    let dl = DeadLetterStore::read_all(&run.dlq).unwrap();
    assert_eq!(dl.len(), 67);
    assert!(dl.iter().all(|d| d.reason.contains("security_exception") && d.event.is_some()));
    let m = run.metrics.render();
    assert!(m.contains(r#"kcaudit_sink_errors_total{kind="permanent",sink="elasticsearch"}"#), "{m}");
    assert!(!m.contains(r#"kcaudit_events_delivered_total{sink="elasticsearch"}"#) || m.contains(r#"kcaudit_events_delivered_total{sink="elasticsearch"} 0"#), "{m}");
    run.pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_url_fails_over_to_the_next() {
    let events = fixture().await;
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let dead = dead_url().await;
    let (down_url, down) = fake_es().await;
    down.lock().unwrap().whole.extend(std::iter::repeat_n(Whole::Status(503), 100));
    let (url, es) = fake_es().await;
    let opts = options(vec![dead, down_url, url]);
    let run = start(&opts);
    let report = push(&run, items_of(&events[..30])).await;
    assert_eq!(fates(&report), (30, 30, 0, 0), "{:?}", dead_reasons(&report));
    let report = push(&run, items_of(&events[30..])).await;
    assert_eq!(fates(&report), (37, 37, 0, 0), "{:?}", dead_reasons(&report));
    assert_eq!(down.lock().unwrap().requests.len(), 1, "later writes start from the node that answered");
    let es = es.lock().unwrap();
    assert_each_created_once(&es, &ids);
    assert!(es.requests.len() >= 2);
    drop(es);
    let m = run.metrics.render();
    assert!(!m.contains(r#"kcaudit_sink_retries_total{sink="elasticsearch"}"#), "fail-over happens within the write, without a backoff: {m}");
    run.pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_decides_what_goes_to_elasticsearch() {
    let events = fixture().await;
    let (url, es) = fake_es().await;
    let mut opts = options(vec![url]);
    opts.route = RouteFilter { min_severity: Some(Severity::Medium), ..Default::default() };
    let flagged: Vec<&String> = events.iter().filter(|e| e.severity.is_some_and(|s| s >= Severity::Medium)).map(|e| &e.id).collect();
    assert!(!flagged.is_empty() && flagged.len() < events.len());
    let run = start(&opts);
    let report = push(&run, items_of(&events)).await;
    assert_eq!(fates(&report), (67, 67, 0, 0), "filtered events are done for this sink");
    let es = es.lock().unwrap();
    assert_eq!(es.docs.keys().collect::<Vec<_>>().len(), flagged.len());
    assert!(flagged.iter().all(|id| es.docs.contains_key(*id)));
    assert!(es.docs.values().all(|d| d["event"]["kind"] == "alert"));
    drop(es);
    run.pipeline.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// The fake is as strict as Elasticsearch where it matters.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_is_strict() {
    let (url, es) = fake_es().await;
    let client = reqwest::Client::new();
    let post = |body: &'static str, ct: &'static str| client.post(format!("{url}/_bulk")).header("content-type", ct).body(body).send();
    let line = "{\"create\":{\"_index\":\"logs-keycloak.token_exchange-default\",\"_id\":\"a\"}}\n{\"@timestamp\":\"2026-03-14T09:26:53.589Z\"}";
    let r = post(line, "application/x-ndjson").await.unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "illegal_argument_exception");
    assert_eq!(v["error"]["reason"], "The bulk request must be terminated by a newline [\\n]");
    let r = post("{\"create\":{\"_index\":\"logs-keycloak.token_exchange-default\",\"_id\":\"a\"}}\n{\"@timestamp\":\"2026-03-14T09:26:53.589Z\"}\n", "text/plain").await.unwrap();
    assert_eq!(r.status(), 406);
    let r = post("{\"index\":{\"_index\":\"logs-keycloak.token_exchange-default\",\"_id\":\"a\"}}\n{\"@timestamp\":\"2026-03-14T09:26:53.589Z\"}\n{\"create\":{\"_index\":\"logs-keycloak.token_exchange-default\",\"_id\":\"b\"}}\n{\"source\":{\"ip\":\"x\"},\"@timestamp\":\"2026-03-14T09:26:53.589Z\"}\n{\"create\":{\"_index\":\"logs-keycloak.token_exchange-default\",\"_id\":\"c\"}}\n{\"user\":{\"name\":\"x\"}}\n", "application/x-ndjson").await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errors"], true);
    assert!(v["items"][0]["index"]["error"]["reason"].as_str().unwrap().contains("op_type of create"));
    assert_eq!(v["items"][1]["create"]["error"]["type"], "document_parsing_exception");
    assert!(v["items"][2]["create"]["error"]["reason"].as_str().unwrap().contains("[@timestamp] is missing"));
    let r = post("{\"create\":{\"_index\":\"logs-keycloak.token_exchange-default\",\"_id\":\"a\"}}\n", "application/x-ndjson").await.unwrap();
    assert_eq!(r.status(), 400, "an action without its source line");
    es.lock().unwrap().authorization = Some("ApiKey k".into());
    let r = post("", "application/x-ndjson").await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "security_exception");
}

// ---------------------------------------------------------------------------------------------
// Golden documents (regenerate with KCAUDIT_ES_GOLDEN_DUMP=<dir>, then review every change).

fn golden_documents() -> Vec<(&'static str, &'static str)> {
    vec![
        ("0be0b73a-05f5-41ca-a8f7-a1590036af85", GOLDEN_V2),
        ("8103771d-fd89-4b0d-b38d-539594fc64eb", GOLDEN_IMPERSONATION),
        ("9e47220e-774b-4eb9-adff-8f99481fdd18", GOLDEN_ADMIN),
    ]
}

const GOLDEN_V2: &str = r#"{
  "@timestamp": "2026-03-09T07:58:04.120Z",
  "client": {
    "address": "10.42.3.17",
    "ip": "10.42.3.17"
  },
  "data_stream": {
    "dataset": "keycloak.token_exchange",
    "namespace": "default",
    "type": "logs"
  },
  "ecs": {
    "version": "9.5.0"
  },
  "event": {
    "action": "token-exchange",
    "category": [
      "authentication"
    ],
    "dataset": "keycloak.token_exchange",
    "id": "0be0b73a-05f5-41ca-a8f7-a1590036af85",
    "kind": "event",
    "outcome": "success",
    "type": [
      "info"
    ]
  },
  "kcaudit": {
    "id_derived": false,
    "origin": {
      "format": "keycloak",
      "input": "keycloak-native-events.jsonl",
      "line": 3
    },
    "schema_version": 1,
    "time_source": "event"
  },
  "keycloak": {
    "client": {
      "id": "api-gateway"
    },
    "details": {
      "audience": "orders-api",
      "auth_method": "token_exchange",
      "client_auth_method": "client-secret",
      "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
      "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
      "scope": "profile email",
      "subject_token_client_id": "web-portal",
      "token_id": "onrtte:c71a428c-19b9-4491-96e5-2f1787522232",
      "username": "alice.nguyen"
    },
    "enrichment": {
      "audiences": [
        {
          "audience": "orders-api",
          "client": {
            "access_type": "confidential",
            "client_id": "orders-api",
            "enabled": true,
            "name": "Orders API",
            "service_accounts_enabled": true,
            "token_exchange": "standard_v2",
            "uuid": "d282c062-bbb5-4363-b328-e39a480df1a0"
          },
          "known": true
        }
      ],
      "exchanger": {
        "access_type": "confidential",
        "client_id": "api-gateway",
        "enabled": true,
        "name": "Edge API Gateway",
        "service_accounts_enabled": true,
        "token_exchange": "standard_v2",
        "uuid": "b23530eb-4654-4ef0-87b0-da0b39ebbd63"
      },
      "policy": {
        "reason": "orders-api is not granted by api-gateway's audience mappers, but role-based audiences or client scopes not in this directory may grant it",
        "within_policy": "unknown"
      },
      "source": "directory:tests/fixtures/keycloak/admin-api",
      "status": "enriched",
      "subject": {
        "email": "alice.nguyen@acme.example",
        "enabled": true,
        "id": "cd3adec8-6fdc-414d-9093-31ddbb37ec99",
        "privileged": false,
        "service_account": false,
        "username": "alice.nguyen"
      },
      "subject_token_client": {
        "access_type": "public",
        "client_id": "web-portal",
        "enabled": true,
        "name": "ACME Web Portal",
        "service_accounts_enabled": false,
        "token_exchange": "unknown",
        "uuid": "55f29999-78b5-4249-9469-badf1851a10b"
      }
    },
    "event_type": "login",
    "login": {
      "auth_method": "token_exchange",
      "type": "TOKEN_EXCHANGE"
    },
    "realm": {
      "id": "4f660473-c22b-4858-a484-cd314a37e778",
      "name": "acme-prod"
    },
    "session": {
      "id": "799b823f-aa09-4717-b60d-9dde40aec5d4"
    },
    "token_exchange": {
      "audience": [
        "orders-api"
      ],
      "exchanger": "api-gateway",
      "flavour": "standard_v2",
      "flavour_reason": "details.subject_token_client_id is set only by standard (V2) token exchange",
      "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
      "scope": "profile email",
      "subject_token_client_id": "web-portal"
    },
    "type": "TOKEN_EXCHANGE"
  },
  "labels": {
    "exchanger": "api-gateway",
    "realm": "acme-prod"
  },
  "related": {
    "ip": [
      "10.42.3.17"
    ],
    "user": [
      "alice.nguyen",
      "cd3adec8-6fdc-414d-9093-31ddbb37ec99"
    ]
  },
  "service": {
    "target": {
      "name": [
        "orders-api"
      ]
    },
    "type": "keycloak"
  },
  "source": {
    "address": "10.42.3.17",
    "ip": "10.42.3.17"
  },
  "user": {
    "email": "alice.nguyen@acme.example",
    "id": "cd3adec8-6fdc-414d-9093-31ddbb37ec99",
    "name": "alice.nguyen"
  }
}"#;
const GOLDEN_IMPERSONATION: &str = r#"{
  "@timestamp": "2026-03-11T02:13:41.509Z",
  "client": {
    "address": "203.0.113.66",
    "ip": "203.0.113.66"
  },
  "data_stream": {
    "dataset": "keycloak.token_exchange",
    "namespace": "default",
    "type": "logs"
  },
  "ecs": {
    "version": "9.5.0"
  },
  "event": {
    "action": "token-exchange",
    "category": [
      "authentication"
    ],
    "dataset": "keycloak.token_exchange",
    "id": "8103771d-fd89-4b0d-b38d-539594fc64eb",
    "kind": "alert",
    "outcome": "success",
    "risk_score": 99,
    "severity": 5,
    "type": [
      "info"
    ]
  },
  "kcaudit": {
    "findings": [
      {
        "attack": [
          "T1078.004",
          "T1528"
        ],
        "reason": "support-console called from 203.0.113.66 (203.0.113.0/24) for the first time; before it used only 10.8.1.0/24",
        "rule": "new-network",
        "severity": "medium",
        "title": "Exchanger calling from a new network"
      },
      {
        "attack": [
          "T1550.001",
          "T1548",
          "T1134"
        ],
        "reason": "support-console impersonated ops.admin, a privileged user (attribute privileged=true), on behalf of sam.ortiz",
        "rule": "impersonation-privileged-target",
        "severity": "critical",
        "title": "Impersonation of a privileged user"
      }
    ],
    "id_derived": false,
    "origin": {
      "format": "keycloak",
      "input": "keycloak-native-events.jsonl",
      "line": 41
    },
    "schema_version": 1,
    "severity": "critical",
    "time_source": "event"
  },
  "keycloak": {
    "client": {
      "id": "support-console"
    },
    "details": {
      "audience": "support-console",
      "auth_method": "token_exchange",
      "client_auth_method": "client-secret",
      "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
      "impersonator": "sam.ortiz",
      "refresh_token_id": "ad46cf56-ec85-4aa2-880b-02d7b717c9a9",
      "refresh_token_type": "Refresh",
      "requested_subject": "ops.admin",
      "requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token",
      "scope": "openid profile email",
      "token_id": "onrtna:39190d14-4fda-4bca-80bf-31a1463b6dae"
    },
    "enrichment": {
      "audiences": [
        {
          "audience": "support-console",
          "client": {
            "access_type": "confidential",
            "client_id": "support-console",
            "enabled": true,
            "name": "Customer Support Console",
            "service_accounts_enabled": false,
            "token_exchange": "unknown",
            "uuid": "920c5116-12e6-4503-b489-98826005f608"
          },
          "known": true
        }
      ],
      "exchanger": {
        "access_type": "confidential",
        "client_id": "support-console",
        "enabled": true,
        "name": "Customer Support Console",
        "service_accounts_enabled": false,
        "token_exchange": "unknown",
        "uuid": "920c5116-12e6-4503-b489-98826005f608"
      },
      "impersonator": {
        "email": "sam.ortiz@acme.example",
        "enabled": true,
        "id": "6ae5c024-5a21-43d3-be45-86b619d9e8dd",
        "privileged": false,
        "service_account": false,
        "username": "sam.ortiz"
      },
      "policy": {
        "reason": "support-console requested impersonation; impersonation permissions (fine-grained admin permissions) are not in these sources",
        "within_policy": "unknown"
      },
      "requested_subject": {
        "email": "ops.admin@acme.example",
        "enabled": true,
        "id": "679f23d6-aa24-4fc8-9209-ffd6d2b352b5",
        "privileged": true,
        "privileged_reason": "attribute privileged=true",
        "service_account": false,
        "username": "ops.admin"
      },
      "source": "directory:tests/fixtures/keycloak/admin-api",
      "status": "enriched",
      "subject": {
        "email": "ops.admin@acme.example",
        "enabled": true,
        "id": "679f23d6-aa24-4fc8-9209-ffd6d2b352b5",
        "privileged": true,
        "privileged_reason": "attribute privileged=true",
        "service_account": false,
        "username": "ops.admin"
      }
    },
    "event_type": "login",
    "login": {
      "auth_method": "token_exchange",
      "type": "TOKEN_EXCHANGE"
    },
    "realm": {
      "id": "4f660473-c22b-4858-a484-cd314a37e778",
      "name": "acme-prod"
    },
    "token_exchange": {
      "audience": [
        "support-console"
      ],
      "exchanger": "support-console",
      "flavour": "legacy_v1",
      "flavour_reason": "impersonation (requested_subject/impersonator) is handled only by legacy V1 token exchange",
      "impersonator": "sam.ortiz",
      "requested_subject": "ops.admin",
      "requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token",
      "scope": "openid profile email"
    },
    "type": "TOKEN_EXCHANGE"
  },
  "labels": {
    "exchanger": "support-console",
    "finding_rules": "new-network,impersonation-privileged-target",
    "realm": "acme-prod",
    "severity": "critical"
  },
  "related": {
    "ip": [
      "203.0.113.66"
    ],
    "user": [
      "679f23d6-aa24-4fc8-9209-ffd6d2b352b5",
      "sam.ortiz",
      "ops.admin",
      "6ae5c024-5a21-43d3-be45-86b619d9e8dd"
    ]
  },
  "rule": {
    "id": [
      "new-network",
      "impersonation-privileged-target"
    ],
    "name": [
      "Exchanger calling from a new network",
      "Impersonation of a privileged user"
    ],
    "ruleset": "kcaudit"
  },
  "service": {
    "target": {
      "name": [
        "support-console"
      ]
    },
    "type": "keycloak"
  },
  "source": {
    "address": "203.0.113.66",
    "ip": "203.0.113.66"
  },
  "threat": {
    "framework": "MITRE ATT&CK",
    "technique": {
      "id": [
        "T1078",
        "T1528",
        "T1550",
        "T1548",
        "T1134"
      ],
      "subtechnique": {
        "id": [
          "T1078.004",
          "T1550.001"
        ]
      }
    }
  },
  "user": {
    "effective": {
      "email": "ops.admin@acme.example",
      "id": "679f23d6-aa24-4fc8-9209-ffd6d2b352b5",
      "name": "ops.admin"
    },
    "email": "sam.ortiz@acme.example",
    "id": "6ae5c024-5a21-43d3-be45-86b619d9e8dd",
    "name": "sam.ortiz"
  }
}"#;
const GOLDEN_ADMIN: &str = r#"{
  "@timestamp": "2026-03-11T02:16:05.377Z",
  "client": {
    "address": "203.0.113.66",
    "ip": "203.0.113.66"
  },
  "data_stream": {
    "dataset": "keycloak.token_exchange",
    "namespace": "default",
    "type": "logs"
  },
  "ecs": {
    "version": "9.5.0"
  },
  "event": {
    "action": "realm-role-mapping-create",
    "category": [
      "iam"
    ],
    "dataset": "keycloak.token_exchange",
    "id": "9e47220e-774b-4eb9-adff-8f99481fdd18",
    "kind": "event",
    "outcome": "success",
    "type": [
      "info",
      "admin",
      "creation",
      "user"
    ]
  },
  "kcaudit": {
    "id_derived": false,
    "origin": {
      "format": "keycloak",
      "input": "keycloak-native-admin-events.jsonl",
      "line": 2
    },
    "schema_version": 1,
    "time_source": "event"
  },
  "keycloak": {
    "admin": {
      "auth": {
        "client_uuid": "920c5116-12e6-4503-b489-98826005f608",
        "ip_address": "203.0.113.66",
        "realm_id": "4f660473-c22b-4858-a484-cd314a37e778",
        "user_id": "679f23d6-aa24-4fc8-9209-ffd6d2b352b5"
      },
      "operation": "CREATE",
      "representation": "[{\"id\":\"c66518fa-8b25-406e-81ab-4accc0de55b9\",\"name\":\"realm-admin-delegate\",\"composite\":true,\"clientRole\":false,\"containerId\":\"4f660473-c22b-4858-a484-cd314a37e778\"}]",
      "resource": {
        "path": "users/6ae5c024-5a21-43d3-be45-86b619d9e8dd/role-mappings/realm",
        "type": "REALM_ROLE_MAPPING"
      }
    },
    "enrichment": {
      "exchanger": {
        "access_type": "confidential",
        "client_id": "support-console",
        "enabled": true,
        "name": "Customer Support Console",
        "service_accounts_enabled": false,
        "token_exchange": "unknown",
        "uuid": "920c5116-12e6-4503-b489-98826005f608"
      },
      "source": "directory:tests/fixtures/keycloak/admin-api",
      "status": "enriched",
      "subject": {
        "email": "ops.admin@acme.example",
        "enabled": true,
        "id": "679f23d6-aa24-4fc8-9209-ffd6d2b352b5",
        "privileged": true,
        "privileged_reason": "attribute privileged=true",
        "service_account": false,
        "username": "ops.admin"
      }
    },
    "event_type": "admin",
    "realm": {
      "id": "4f660473-c22b-4858-a484-cd314a37e778",
      "name": "acme-prod"
    },
    "type": "REALM_ROLE_MAPPING-CREATE"
  },
  "labels": {
    "realm": "acme-prod"
  },
  "related": {
    "ip": [
      "203.0.113.66"
    ],
    "user": [
      "ops.admin",
      "679f23d6-aa24-4fc8-9209-ffd6d2b352b5",
      "6ae5c024-5a21-43d3-be45-86b619d9e8dd"
    ]
  },
  "service": {
    "type": "keycloak"
  },
  "source": {
    "address": "203.0.113.66",
    "ip": "203.0.113.66"
  },
  "user": {
    "email": "ops.admin@acme.example",
    "id": "679f23d6-aa24-4fc8-9209-ffd6d2b352b5",
    "name": "ops.admin",
    "target": {
      "id": "6ae5c024-5a21-43d3-be45-86b619d9e8dd"
    }
  }
}"#;
