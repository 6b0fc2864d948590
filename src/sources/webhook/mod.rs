//! The HTTP webhook source (axum on tokio).
//!
//! `POST /v1/events` (auto-detect), `POST /v1/events/{format}`, and any routes configured under
//! `[[webhook.routes]]`. A body may be one JSON object, a JSON array or NDJSON (also log lines for
//! `jboss-logging`), optionally gzip/deflate-compressed. The answer comes only after every event in the
//! request is accepted by every sink or dead-lettered:
//!
//! | status | when |
//! |---|---|
//! | 200 | at least one record was accepted, a duplicate, or skipped; counts and reasons in the body |
//! | 400 | nothing in the body could be decoded (every record is in the dead-letter store) |
//! | 401 | authentication or signature failure (the body is dead-lettered with the reason) |
//! | 404 / 405 / 415 | unknown route or format / not POST / unsupported Content-Encoding |
//! | 413 | body over `max_body_bytes` (or over `max_decompressed_bytes` once inflated) |
//! | 503 | overloaded, shutting down, a sink could not take the events, or the dead-letter store failed; `Retry-After` is set so the sender retries |
//!
//! `GET /healthz` (process alive), `GET /readyz` (accepting events), `GET /metrics` (Prometheus).

pub mod auth;
pub mod config;
pub mod delivery;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use serde_json::json;
use tokio::sync::Semaphore;
use tracing::field::Empty;
use tracing::Instrument;

use crate::dead_letter::{DeadLetter, Stage};
use crate::decode::{Context, Decoded, DecodeOptions};
use crate::event::Origin;
use crate::pipeline::{BatchReport, ItemStatus, PipelineError, PipelineHandle};
use config::WebhookOptions;
use delivery::{DeliveryError, Routes};

/// Shared state of the webhook server.
pub struct WebhookState {
    pub routes: Routes,
    pub pipeline: PipelineHandle,
    pub decode: DecodeOptions,
    pub tz: chrono_tz::Tz,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub permits: Semaphore,
    /// False on a worker: the listener serves health and metrics only (events reach workers
    /// through Kafka, so partition ownership decides who detects what).
    pub ingest: bool,
    /// With `[spool]` on: requests are answered once their records are on disk (see `spool`).
    pub spool: Option<crate::spool::Spool>,
}

impl WebhookState {
    pub fn new(opts: &WebhookOptions, decode: &DecodeOptions, pipeline: PipelineHandle) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(WebhookState {
            routes: Routes::from_options(opts).map_err(anyhow::Error::msg)?,
            pipeline,
            decode: decode.clone(),
            tz: decode.time_zone().map_err(anyhow::Error::msg)?,
            max_body_bytes: opts.max_body_bytes,
            request_timeout: Duration::from_secs(opts.request_timeout_secs.max(1)),
            permits: Semaphore::new(opts.max_concurrent_requests.max(1)),
            ingest: true,
            spool: None,
        }))
    }
}

/// The router (also used directly by tests).
pub fn router(state: Arc<WebhookState>) -> Router {
    let r = Router::new().route("/healthz", get(|| async { "ok\n" })).route("/readyz", get(readyz)).route("/metrics", get(metrics));
    let r = if state.ingest { r.fallback(ingest) } else { r.fallback(not_ingesting) };
    r.with_state(state)
}

async fn not_ingesting() -> Response {
    let body = json!({"error": "this kcaudit instance runs the worker role and takes events from Kafka only; send webhooks to an edge instance"});
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

/// Serve until `shutdown` resolves; then stop accepting, let in-flight requests finish (up to
/// `grace`), and return.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<WebhookState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> anyhow::Result<()> {
    let pipeline = state.pipeline.clone();
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        // New requests now get 503 while in-flight ones complete.
        pipeline.begin_shutdown();
        let _ = drained_tx.send(());
    });
    let server = tokio::spawn(async move { server.await });
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => { r??; return Ok(()); }
        _ = drained_rx => {}
    }
    match tokio::time::timeout(grace, &mut server).await {
        Ok(r) => r??,
        Err(_) => tracing::warn!(grace_secs = grace.as_secs(), "In-flight requests did not finish within the shutdown grace period."),
    }
    Ok(())
}

async fn readyz(State(s): State<Arc<WebhookState>>) -> Response {
    if s.pipeline.is_closing() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else {
        "ready\n".into_response()
    }
}

async fn metrics(State(s): State<Arc<WebhookState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.pipeline.metrics.render()).into_response()
}

/// Parsed once: a `&'static str` header name is validated again on every insert.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn json_response(status: StatusCode, request_id: &str, body: impl serde::Serialize) -> Response {
    // Serialising a map of ours cannot fail; `Json` would answer 500 if it did.
    json_bytes_response(status, request_id, serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec()))
}

/// A response whose JSON body is already written.
fn json_bytes_response(status: StatusCode, request_id: &str, body: Vec<u8>) -> Response {
    let mut r = (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        r.headers_mut().insert(X_REQUEST_ID, v);
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    r
}

fn error_response(status: StatusCode, request_id: &str, message: &str) -> Response {
    json_response(status, request_id, json!({ "request_id": request_id, "error": message }))
}

async fn ingest(State(s): State<Arc<WebhookState>>, req: Request) -> Response {
    let started = Instant::now();
    let route_label = req.uri().path().to_string();
    // Label by route only for known routes, so scanners cannot explode the label set.
    let label = if s.routes.resolve(&route_label).is_ok() { route_label.as_str() } else { "other" };
    let method = req.method().clone();
    // The trace root (disabled at no cost when telemetry is off). Attributes are the route template
    // and method only: never headers, query strings or the body (signatures and tokens live there).
    let span = tracing::info_span!(
        target: "kcaudit_otel",
        "webhook.request",
        otel.name = %format_args!("{method} {label}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = label,
        http.response.status_code = Empty,
        error.type = Empty,
        kcaudit.request_id = Empty,
        kcaudit.records = Empty,
    );
    if !span.is_disabled() {
        // W3C traceparent/tracestate: the request continues its sender's trace.
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let _ = span.set_parent(crate::telemetry::extract(req.headers()));
    }
    let resp = ingest_inner(&s, req).instrument(span.clone()).await;
    let code = resp.status().as_u16();
    span.record("http.response.status_code", code);
    if code >= 500 {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", code);
    }
    let status = code.to_string();
    s.pipeline.metrics.requests.with_label_values(&[&status]).inc();
    let seconds = started.elapsed().as_secs_f64();
    s.pipeline.metrics.request_seconds.with_label_values(&[label]).observe(seconds);
    crate::telemetry::record_request(seconds, method.as_str(), label, code);
    resp
}

async fn ingest_inner(s: &WebhookState, req: Request) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let rid = request_id.as_str();
    tracing::Span::current().record("kcaudit.request_id", rid);
    if s.pipeline.is_closing() {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, rid, "kcaudit is shutting down");
    }
    let Ok(_permit) = s.permits.try_acquire() else {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, rid, "too many concurrent requests");
    };
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    // Route and method errors are answered before reading the body.
    if let Err(e) = s.routes.resolve(&path) {
        return error_response(status(e.status()), rid, &e.to_string());
    }
    if parts.method != axum::http::Method::POST {
        return error_response(StatusCode::METHOD_NOT_ALLOWED, rid, &DeliveryError::MethodNotAllowed(parts.method.to_string()).to_string());
    }
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > s.max_body_bytes) {
        return error_response(StatusCode::PAYLOAD_TOO_LARGE, rid, &format!("body larger than {} bytes", s.max_body_bytes));
    }
    let body = match axum::body::to_bytes(Body::new(body), s.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => return error_response(StatusCode::PAYLOAD_TOO_LARGE, rid, &format!("body larger than {} bytes", s.max_body_bytes)),
    };
    let origin = Origin { input: format!("webhook:{path}").into(), request_id: Some(request_id.as_str().into()), ..Default::default() };
    let ctx = Context { opts: &s.decode, tz: s.tz, deliveries: None, lines_may_be_noise: false };
    let headers: &HeaderMap = &parts.headers;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let decode_span = tracing::info_span!(target: "kcaudit_otel", "decode", kcaudit.body_bytes = body.len(), kcaudit.records = Empty, error.type = Empty);
    let decoded = decode_span.in_scope(|| s.routes.process(parts.method.as_str(), &path, header, &body, &origin, &ctx));
    match &decoded {
        Ok(items) => {
            decode_span.record("kcaudit.records", items.len());
            tracing::Span::current().record("kcaudit.records", items.len());
        }
        Err(e) => {
            decode_span.record("error.type", e.status());
        }
    }
    drop(decode_span);
    let mut items = match decoded {
        Ok(items) => items,
        Err(e) => {
            if let DeliveryError::Unauthorized(_) = e {
                tracing::warn!(request_id = rid, path = %path, error = %e, "Webhook request refused.");
                let mut o = origin.clone();
                o.format = "unknown".into();
                let record = DeadLetter::new(Stage::Auth, e.to_string(), o).with_raw(&body);
                s.pipeline.metrics.rejected.with_label_values(&["auth"]).inc();
                if let Err(pe) = s.pipeline.dead_letter(vec![record]).await {
                    return error_response(StatusCode::SERVICE_UNAVAILABLE, rid, &pe.to_string());
                }
            }
            return error_response(status(e.status()), rid, &e.to_string());
        }
    };
    if items.is_empty() {
        return error_response(StatusCode::BAD_REQUEST, rid, "empty body: no records");
    }
    let now = Utc::now();
    for item in &mut items {
        if let Decoded::Event(ev) = &mut item.decoded {
            Arc::make_mut(ev).received_at = Some(now);
        }
    }
    if let Some(spool) = &s.spool {
        return spooled(spool, rid, items).await;
    }
    let report = match tokio::time::timeout(s.request_timeout, s.pipeline.try_submit(items, "webhook")).await {
        Err(_) => return error_response(StatusCode::SERVICE_UNAVAILABLE, rid, "timed out waiting for the sinks; retry (duplicates are dropped)"),
        Ok(Err(e)) => {
            let msg = e.to_string();
            return match e {
                PipelineError::Overloaded | PipelineError::ShuttingDown | PipelineError::DeadLetterUnavailable(_) => {
                    error_response(StatusCode::SERVICE_UNAVAILABLE, rid, &msg)
                }
            };
        }
        Ok(Ok(r)) => r,
    };
    respond(rid, &report)
}

/// Spool the request's records and answer once they are on disk: 202 (every record will reach the
/// sinks or the dead-letter store), 400 when none of them decoded, 503 + Retry-After when the spool
/// is full or cannot be written.
async fn spooled(spool: &crate::spool::Spool, rid: &str, items: Vec<crate::decode::Item>) -> Response {
    let mut rejections = Vec::new();
    let (mut events, mut skipped) = (0usize, 0usize);
    for (i, item) in items.iter().enumerate() {
        match &item.decoded {
            Decoded::Event(_) => events += 1,
            Decoded::Skipped(_) => skipped += 1,
            Decoded::Rejected(reason) => rejections.push(json!({"index": i, "line": item.origin.line, "reason": reason})),
        }
    }
    let received = items.len();
    if let Err(e) = spool.append(items).await {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, rid, &e.to_string());
    }
    let status = if events == 0 && !rejections.is_empty() && skipped == 0 { StatusCode::BAD_REQUEST } else { StatusCode::ACCEPTED };
    json_response(
        status,
        rid,
        json!({"request_id": rid, "spooled": true, "received": received, "events": events, "rejected": rejections.len(), "skipped": skipped, "rejections": rejections}),
    )
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST)
}

/// The body of an ingest reply: the request id, the counts, then the four lists (each `[]` when
/// nothing is in it). Written directly, not through serde and axum's `Json`: that small body was
/// ~6,700 instructions of every single-event request (issue #9). A test holds it to what serde
/// writes for the same fields in the same order.
fn reply_body(request_id: &str, c: &crate::pipeline::Counts, lists: [&Vec<serde_json::Value>; 4]) -> Vec<u8> {
    use crate::json_line::{key, num, string};
    let mut body = Vec::with_capacity(256);
    body.extend_from_slice(b"{\"request_id\":");
    string(&mut body, request_id);
    let counts = [
        ("received", c.received),
        ("accepted", c.accepted),
        ("duplicates", c.duplicates),
        ("rejected", c.rejected),
        ("skipped", c.skipped),
        ("dead_lettered", c.dead_lettered),
        ("failed", c.failed),
    ];
    for (name, n) in counts {
        key(&mut body, name);
        num(&mut body, n);
    }
    for (name, list) in ["rejections", "duplicate_events", "warnings", "failures"].into_iter().zip(lists) {
        key(&mut body, name);
        if list.is_empty() {
            body.extend_from_slice(b"[]");
        } else if serde_json::to_writer(&mut body, list).is_err() {
            body.extend_from_slice(b"[]"); // cannot happen: `Value`s always serialise
        }
    }
    body.push(b'}');
    body
}

/// The response: counts plus every non-accepted record with its reason.
fn respond(request_id: &str, report: &BatchReport) -> Response {
    let c = report.counts();
    let mut rejections = Vec::new();
    let mut duplicates = Vec::new();
    let mut warnings = Vec::new();
    let mut failures = Vec::new();
    for (i, item) in report.items.iter().enumerate() {
        match item.status {
            ItemStatus::Rejected => rejections.push(json!({"index": i, "line": item.origin.line, "reason": item.reason})),
            ItemStatus::Duplicate => duplicates.push(json!({"index": i, "event_id": item.event_id, "conflict": item.conflict})),
            ItemStatus::Accepted if !item.failed.is_empty() => failures.push(json!({"index": i, "event_id": item.event_id, "failed": item.failed})),
            ItemStatus::Accepted if !item.warnings.is_empty() => {
                warnings.push(json!({"index": i, "event_id": item.event_id, "codes": item.warnings.iter().map(|w| w.code.as_str()).collect::<Vec<_>>()}))
            }
            _ => {}
        }
    }
    let status = if c.failed > 0 {
        StatusCode::SERVICE_UNAVAILABLE
    } else if c.rejected == c.received {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    json_bytes_response(status, request_id, reply_body(request_id, &c, [&rejections, &duplicates, &warnings, &failures]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written reply is byte for byte what serde writes for the same fields.
    #[test]
    fn the_reply_body_is_what_serde_writes() {
        #[derive(serde::Serialize)]
        struct Reply<'a> {
            request_id: &'a str,
            received: u64,
            accepted: u64,
            duplicates: u64,
            rejected: u64,
            skipped: u64,
            dead_lettered: u64,
            failed: u64,
            rejections: &'a Vec<serde_json::Value>,
            duplicate_events: &'a Vec<serde_json::Value>,
            warnings: &'a Vec<serde_json::Value>,
            failures: &'a Vec<serde_json::Value>,
        }
        let none = Vec::new();
        let some = vec![json!({"index": 0, "line": 3, "reason": "truncated JSON \"x\" \u{1}é"}), json!({"index": 2, "event_id": "e", "codes": ["a", "b"]})];
        for (id, c, lists) in [
            ("5b0c-\"quoted\"\\\u{7}", crate::pipeline::Counts::default(), [&none, &none, &none, &none]),
            (
                "r",
                crate::pipeline::Counts { received: 18_446_744_073_709_551_615, accepted: 7, duplicates: 1, rejected: 10, skipped: 0, warned: 3, dead_lettered: 2, failed: 1 },
                [&some, &none, &some, &some],
            ),
        ] {
            let ours = reply_body(id, &c, lists);
            let theirs = serde_json::to_vec(&Reply {
                request_id: id,
                received: c.received,
                accepted: c.accepted,
                duplicates: c.duplicates,
                rejected: c.rejected,
                skipped: c.skipped,
                dead_lettered: c.dead_lettered,
                failed: c.failed,
                rejections: lists[0],
                duplicate_events: lists[1],
                warnings: lists[2],
                failures: lists[3],
            })
            .unwrap();
            assert_eq!(String::from_utf8(ours).unwrap(), String::from_utf8(theirs).unwrap());
        }
    }
}
