//! The fuzz harness: what every fuzz target runs and what it checks.
//!
//! This one file is used twice:
//! - by the cargo-fuzz targets in `fuzz/fuzz_targets/` (nightly, libFuzzer), as the `kcaudit_fuzz` lib;
//! - by `tests/fuzz_regressions.rs` on stable (`#[path = "../fuzz/src/lib.rs"] mod harness;`), which
//!   replays every saved crash in `tests/fixtures/fuzz/` and every seed in `fuzz/corpus/` through the
//!   very same functions, so the main `cargo test` keeps every crash fixed.
//!
//! It may therefore use only crates the root `kcaudit` package also depends on (no `arbitrary`,
//! no `libfuzzer-sys`): the webhook input is a small hand-written byte layout instead (see
//! [`WebhookPlan`]), which also keeps crash files replayable without the fuzz toolchain.
//!
//! Invariants checked (a violation panics, which libFuzzer reports as a crash):
//! - decoding never panics, hangs or allocates without bound (libFuzzer `-timeout`/`-rss_limit_mb`);
//! - every body yields at least one item; every item has an origin (input, known format, line);
//!   every rejection and skip has a reason;
//! - a body decodes to the same items whether it came from the webhook or a log file, except that
//!   lines which are not events are skipped in a file and rejected in a request;
//! - every event has an id and a type, respects the configured caps, is internally consistent
//!   (outcome, time source), serialises to JSON that re-parses as an `AuditEvent` and re-serialises
//!   to the same JSON;
//! - the webhook never answers 5xx except 503 for overload, and a 200/400 batch answer accounts for
//!   every record: `received = accepted + duplicates + rejected + skipped`, with `received` equal to
//!   what the decoder makes of the same body.

#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use kcaudit::decode::{decode_body, Context, DecodeOptions, Decoded, Format, Item};
use kcaudit::event::{AuditEvent, Origin, TimeSource, SCHEMA_VERSION};
use kcaudit::sources::webhook::config::{AuthMode, AuthOptions, HmacAlgorithm, RouteOptions, WebhookOptions};
use kcaudit::sources::webhook::delivery::Routes;

/// The shared secret of the authenticated fuzz routes (HMAC and bearer).
pub const FUZZ_SECRET: &str = "kcaudit-fuzz-secret";

/// Fuzz target names, as in `fuzz/Cargo.toml` and the `<target>-<name>` files of `tests/fixtures/fuzz/`.
pub const TARGETS: [&str; 8] = ["keycloak", "p2inc", "keycloak_kafka", "jboss_logging", "recording", "kcaudit", "auto", "webhook"];

/// The decoder format a target name fuzzes (`None` for `webhook`).
pub fn target_format(target: &str) -> Option<Format> {
    Some(match target {
        "keycloak" => Format::Keycloak,
        "p2inc" => Format::P2inc,
        "keycloak_kafka" => Format::KeycloakKafka,
        "jboss_logging" => Format::JbossLogging,
        "recording" => Format::Recording,
        "kcaudit" => Format::Kcaudit,
        "auto" => Format::Auto,
        _ => return None,
    })
}

/// Run one fuzz input through the named target's checks (what `fuzz_targets/<target>.rs` does).
pub fn run_target(target: &str, data: &[u8]) {
    match target_format(target) {
        Some(format) => {
            check_decode(format, data);
        }
        None if target == "webhook" => check_webhook(data),
        None => panic!("unknown fuzz target {target:?}; expected one of {TARGETS:?}"),
    }
}

// ---------------------------------------------------------------------------------------------------
// Decoders
// ---------------------------------------------------------------------------------------------------

/// Decode options for fuzzing: small caps so the fuzzer reaches every cutting path with short inputs,
/// and a time zone with daylight-saving changes (ambiguous and nonexistent local times). The record
/// cap stays above `-max_len`, so time that grows faster than the input is not hidden by a rejection.
pub fn fuzz_options() -> &'static DecodeOptions {
    static OPTS: OnceLock<DecodeOptions> = OnceLock::new();
    OPTS.get_or_init(|| DecodeOptions {
        log_time_zone: "Europe/Berlin".into(),
        max_details: 8,
        max_detail_value_bytes: 64,
        max_field_bytes: 48,
        max_representation_bytes: 128,
        max_record_bytes: 1024 * 1024,
        // Above what a 64 KiB input can hold, so file and webhook decoding stay comparable.
        max_records_per_body: 100_000,
    })
}

/// Route table used for recorded deliveries (replay) and by the webhook harness.
fn webhook_options() -> WebhookOptions {
    let secret = |mode: AuthMode| AuthOptions {
        mode,
        secret_env: None,
        secret_file: None,
        secret: Some(FUZZ_SECRET.into()),
        hmac_algorithms: vec![HmacAlgorithm::Sha256, HmacAlgorithm::Sha1],
        ..AuthOptions::default()
    };
    WebhookOptions {
        listen: "127.0.0.1:0".into(),
        max_body_bytes: 256 * 1024,
        max_decompressed_bytes: 1024 * 1024,
        max_concurrent_requests: 4,
        request_timeout_secs: 30,
        routes: vec![
            RouteOptions { path: "/hooks/hmac".into(), format: Format::P2inc, auth: Some(secret(AuthMode::Hmac)) },
            RouteOptions { path: "/hooks/bearer".into(), format: Format::Auto, auth: Some(secret(AuthMode::Bearer)) },
            RouteOptions { path: "/hooks/jboss".into(), format: Format::JbossLogging, auth: None },
        ],
        ..WebhookOptions::default()
    }
}

fn replay_routes() -> &'static Routes {
    static ROUTES: OnceLock<Routes> = OnceLock::new();
    ROUTES.get_or_init(|| Routes::from_options(&webhook_options()).expect("fuzz webhook options are valid"))
}

/// What a body decoded to (from the webhook's point of view).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub events: usize,
    pub rejected: usize,
    pub skipped: usize,
    /// Events when the same bytes are replayed from a file (recorded deliveries expand only there).
    pub replayed_events: usize,
}

impl Summary {
    pub fn items(&self) -> usize {
        self.events + self.rejected + self.skipped
    }
}

/// Decode `data` as `format` with the fuzz options and check every invariant.
pub fn check_decode(format: Format, data: &[u8]) -> Summary {
    check_decode_with(format, data, fuzz_options())
}

/// Decode `data` twice (as a webhook body, and as a log file being replayed with recorded deliveries
/// enabled), check every item, and compare the two where they must agree.
pub fn check_decode_with(format: Format, data: &[u8], opts: &DecodeOptions) -> Summary {
    let tz = opts.time_zone().expect("valid time zone");
    let base = Origin { input: "fuzz".into(), ..Default::default() };

    let webhook_ctx = Context { opts, tz, deliveries: None, lines_may_be_noise: false };
    let mut live = Vec::new();
    decode_body(data, format, &base, &webhook_ctx, &mut live);

    let routes: &Routes = replay_routes();
    let replay_ctx = Context { opts, tz, deliveries: Some(routes), lines_may_be_noise: true };
    let mut replayed = Vec::new();
    decode_body(data, format, &base, &replay_ctx, &mut replayed);

    assert!(!live.is_empty(), "a body must yield at least one item (even a blank one is a skipped record)");
    assert!(!replayed.is_empty(), "a body must yield at least one item (replay)");
    for item in live.iter().chain(&replayed) {
        check_item(item, &base, opts);
    }

    // Recorded deliveries only expand with a delivery handler, so only the other formats compare 1:1.
    if format != Format::Auto && format != Format::Recording {
        assert_eq!(live.len(), replayed.len(), "webhook and file decoding disagree on the number of records");
        for (i, (a, b)) in live.iter().zip(&replayed).enumerate() {
            match (&a.decoded, &b.decoded) {
                (Decoded::Event(x), Decoded::Event(y)) => assert_eq!(x, y, "record {i}: same bytes, different events"),
                (Decoded::Skipped(_), Decoded::Skipped(_)) | (Decoded::Rejected(_), Decoded::Rejected(_)) => {}
                // A line that is not a log record is noise in a file, an error in a request.
                (Decoded::Rejected(_), Decoded::Skipped(_)) => {}
                (x, y) => panic!("record {i}: webhook decoded {x:?}, file decoded {y:?}"),
            }
        }
    }

    let mut s = Summary { replayed_events: replayed.iter().filter(|i| matches!(i.decoded, Decoded::Event(_))).count(), ..Default::default() };
    for item in &live {
        match item.decoded {
            Decoded::Event(_) => s.events += 1,
            Decoded::Rejected(_) => s.rejected += 1,
            Decoded::Skipped(_) => s.skipped += 1,
        }
    }
    s
}

/// One item: it has an origin, and its outcome has a reason or is a sound event.
pub fn check_item(item: &Item, base: &Origin, opts: &DecodeOptions) {
    let o = &item.origin;
    assert!(Format::parse(&o.format).is_ok(), "item origin has no known format: {:?}", o.format);
    assert_eq!(o.input, base.input, "item origin lost its input");
    assert!(o.line.is_some_and(|l| l >= 1), "item origin has no line: {o:?}");
    match &item.decoded {
        // kcaudit's own canonical events keep the origin and the caps of the instance that wrote them.
        Decoded::Event(ev) if &*o.format == Format::Kcaudit.name() => check_canonical_event(ev),
        Decoded::Event(ev) => {
            check_event(ev, opts);
            // The event carries the same provenance as its item (the item may add the record index).
            let (mut a, mut b) = (ev.origin.clone(), o.clone());
            a.index = None;
            b.index = None;
            assert_eq!(a, b, "event origin and item origin differ");
        }
        Decoded::Rejected(reason) => assert!(!reason.trim().is_empty(), "rejected without a reason"),
        Decoded::Skipped(reason) => assert!(!reason.trim().is_empty(), "skipped without a reason"),
    }
}

/// A canonical (`kcaudit` format) event: taken as written, except what later stages derive.
pub fn check_canonical_event(ev: &AuditEvent) {
    assert_eq!(ev.schema_version, SCHEMA_VERSION);
    assert!(!ev.id.is_empty() && !ev.event_type.is_empty(), "canonical event without an id or a type");
    assert!(ev.enrichment.is_none() && ev.findings.is_empty() && ev.severity.is_none(), "derived fields must not be taken from the input");
    check_round_trip(ev);
}

/// One event: ids, caps, consistency, and a lossless JSON round trip.
pub fn check_event(ev: &AuditEvent, opts: &DecodeOptions) {
    assert_eq!(ev.schema_version, SCHEMA_VERSION);
    assert!(!ev.id.is_empty(), "event without an id");
    assert!(!ev.event_type.is_empty(), "event without a type");
    assert_eq!(ev.time.is_none(), ev.time_source == TimeSource::Missing, "time {:?} vs time_source {:?}", ev.time, ev.time_source);
    let failed = ev.error.is_some() || ev.event_type.ends_with("_ERROR");
    assert_eq!(failed, ev.outcome == kcaudit::event::Outcome::Failure, "outcome disagrees with error/type");
    assert!(ev.error.as_deref() != Some(""), "empty error string kept");

    assert!(ev.details.len() <= opts.max_details, "{} details kept, cap {}", ev.details.len(), opts.max_details);
    for (k, v) in &ev.details {
        assert!(k.len() <= opts.max_field_bytes, "detail key of {} bytes, cap {}", k.len(), opts.max_field_bytes);
        assert!(v.len() <= opts.max_detail_value_bytes, "details.{k} is {} bytes, cap {}", v.len(), opts.max_detail_value_bytes);
    }
    let capped = [
        ("id", (!ev.id_derived).then_some(ev.id.as_str())),
        ("realm.id", ev.realm.id.as_deref()),
        ("realm.name", ev.realm.name.as_deref()),
        ("client_id", ev.client_id.as_deref()),
        ("subject.id", ev.subject.id.as_deref()),
        ("subject.username", ev.subject.username.as_deref()),
        ("session_id", ev.session_id.as_deref()),
        ("ip_address", ev.ip_address.as_deref()),
        ("error", ev.error.as_deref()),
    ];
    for (name, v) in capped {
        if let Some(v) = v {
            assert!(v.len() <= opts.max_field_bytes, "{name} is {} bytes, cap {}", v.len(), opts.max_field_bytes);
        }
    }
    if let Some(r) = ev.admin.as_ref().and_then(|a| a.representation.as_deref()) {
        assert!(r.len() <= opts.max_representation_bytes, "representation is {} bytes, cap {}", r.len(), opts.max_representation_bytes);
    }
    if ev.details.keys().any(|k| k == "cookies") && ev.origin.log.is_some() {
        assert_eq!(ev.details.get("cookies"), Some("[redacted]"), "cookies from a log line must be redacted");
    }

    check_round_trip(ev);
}

/// The event serialises to JSON that re-parses as an `AuditEvent` and re-serialises identically.
pub fn check_round_trip(ev: &AuditEvent) {
    let json = serde_json::to_string(ev).expect("an event serialises to JSON");
    let back: AuditEvent = match serde_json::from_str(&json) {
        Ok(e) => e,
        Err(e) => panic!("event JSON does not re-parse as an AuditEvent: {e}\n{json}"),
    };
    let again = serde_json::to_string(&back).expect("re-serialises");
    assert_eq!(json, again, "event JSON is not stable under a round trip");
}

// ---------------------------------------------------------------------------------------------------
// Webhook
// ---------------------------------------------------------------------------------------------------

/// Methods a plan can pick (selector >= 0x40 means POST, so most inputs reach the decoders).
pub const METHODS: [&str; 8] = ["GET", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "post", "FUZZ"];

/// Paths a plan can pick; a selector past the end means a custom path from the input.
pub const PATHS: [&str; 19] = [
    "/v1/events",
    "/v1/events/",
    "/v1/events/keycloak",
    "/v1/events/p2inc",
    "/v1/events/keycloak-kafka",
    "/v1/events/jboss-logging",
    "/v1/events/recording",
    "/v1/events/kcaudit",
    "/v1/events/auto",
    "/v1/events/KAFKA",
    "/v1/events/no-such-format",
    "/hooks/hmac",
    "/hooks/bearer",
    "/hooks/jboss",
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/events?format=keycloak",
    "/v1/events//",
];

/// Content-Encoding values sent with `F_RAW_ENCODING` (whatever the body really is).
pub const ENCODINGS: [&str; 8] = ["gzip", "deflate", "identity", "x-gzip", " GZIP ", "br", "gzip, deflate", ""];

/// Content-Type values (selector 0 sends none).
pub const CONTENT_TYPES: [&str; 6] = ["", "application/json", "application/x-ndjson", "text/plain; charset=utf-8", "application/json; charset=iso-8859-1", "multipart/form-data; boundary=x"];

/// gzip-compress the body (Content-Encoding: gzip).
pub const F_GZIP: u8 = 0x01;
/// deflate(zlib)-compress the body (Content-Encoding: deflate) unless `F_GZIP`.
pub const F_DEFLATE: u8 = 0x02;
/// Send `ENCODINGS[encoding]` as Content-Encoding instead of the one matching the compression.
pub const F_RAW_ENCODING: u8 = 0x04;
/// Sign the bytes as sent with HMAC-SHA256 of `FUZZ_SECRET` (`X-Keycloak-Signature`).
pub const F_SIGN: u8 = 0x08;
/// Sign the uncompressed bytes (with `F_SIGN` too: `sha256=` + uppercase hex of the bytes as sent).
pub const F_SIGN_PLAIN: u8 = 0x10;
/// `Authorization: Bearer FUZZ_SECRET`.
pub const F_BEARER: u8 = 0x20;
/// The signature header's value is taken from the input (overrides a computed one).
pub const F_RAW_SIGNATURE: u8 = 0x40;
/// Extra headers from the input.
pub const F_EXTRA_HEADERS: u8 = 0x80;

/// A webhook request described by a fuzz input.
///
/// Byte layout (missing bytes read as 0, so every input is a valid plan):
/// ```text
/// [method] [path] [flags] [encoding] [content_type]
/// [len path_bytes]                 if path >= PATHS.len()
/// [len signature_bytes]            if flags & F_RAW_SIGNATURE
/// [count] count x ([len name] [len value])   if flags & F_EXTRA_HEADERS (count <= 8)
/// body: everything left
/// ```
/// `content_type & 0x80` also sends the true Content-Length; `content_type & 0x40` sends a bogus one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookPlan {
    pub method: u8,
    pub path: u8,
    pub flags: u8,
    pub encoding: u8,
    pub content_type: u8,
    pub custom_path: Vec<u8>,
    pub signature: Vec<u8>,
    pub extra_headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn bytes(&mut self) -> Vec<u8> {
        let n = (self.byte() as usize).min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a.to_vec()
    }
}

fn push_lp(out: &mut Vec<u8>, b: &[u8]) {
    let b = &b[..b.len().min(255)];
    out.push(b.len() as u8);
    out.extend_from_slice(b);
}

impl WebhookPlan {
    pub fn parse(data: &[u8]) -> WebhookPlan {
        let mut r = Reader(data);
        let mut p = WebhookPlan { method: r.byte(), path: r.byte(), flags: r.byte(), encoding: r.byte(), content_type: r.byte(), ..Default::default() };
        if p.path as usize >= PATHS.len() {
            p.custom_path = r.bytes();
        }
        if p.flags & F_RAW_SIGNATURE != 0 {
            p.signature = r.bytes();
        }
        if p.flags & F_EXTRA_HEADERS != 0 {
            let n = r.byte() % 9;
            for _ in 0..n {
                let name = r.bytes();
                let value = r.bytes();
                p.extra_headers.push((name, value));
            }
        }
        p.body = r.0.to_vec();
        p
    }

    /// The inverse of [`WebhookPlan::parse`] (for writing seeds).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.method, self.path, self.flags, self.encoding, self.content_type];
        if self.path as usize >= PATHS.len() {
            push_lp(&mut out, &self.custom_path);
        }
        if self.flags & F_RAW_SIGNATURE != 0 {
            push_lp(&mut out, &self.signature);
        }
        if self.flags & F_EXTRA_HEADERS != 0 {
            out.push(self.extra_headers.len().min(8) as u8);
            for (k, v) in self.extra_headers.iter().take(8) {
                push_lp(&mut out, k);
                push_lp(&mut out, v);
            }
        }
        out.extend_from_slice(&self.body);
        out
    }

    /// A POST of `body` to `PATHS[path]`, with `flags`.
    pub fn post(path: &str, flags: u8, body: &[u8]) -> WebhookPlan {
        let i = PATHS.iter().position(|p| *p == path).expect("a known path");
        WebhookPlan { method: 0xff, path: i as u8, flags, content_type: 0x81, body: body.to_vec(), ..Default::default() }
    }

    pub fn method_str(&self) -> &'static str {
        if self.method >= 0x40 {
            "POST"
        } else {
            METHODS[self.method as usize % METHODS.len()]
        }
    }

    pub fn path_str(&self) -> String {
        match PATHS.get(self.path as usize) {
            Some(p) => p.to_string(),
            None => {
                let s = String::from_utf8_lossy(&self.custom_path);
                if s.starts_with('/') { s.into_owned() } else { format!("/{s}") }
            }
        }
    }
}

fn compress(body: &[u8], gzip: bool) -> Vec<u8> {
    if gzip {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(body).expect("in memory");
        e.finish().expect("in memory")
    } else {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(body).expect("in memory");
        e.finish().expect("in memory")
    }
}

/// Events the black-hole sink found broken (checked in the request that sent them).
static SINK_PROBLEMS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A sink that drops everything, after checking each event the pipeline hands it.
struct BlackHole;

impl kcaudit::sinks::Sink for BlackHole {
    fn name(&self) -> &str {
        "blackhole"
    }
    fn write<'a>(
        &'a mut self,
        events: &'a [Arc<AuditEvent>],
    ) -> kcaudit::sinks::BoxFuture<'a, Result<kcaudit::sinks::WriteReport, kcaudit::sinks::SinkError>> {
        Box::pin(async move {
            for ev in events {
                // A panic here would only kill the sink task; report it to the request instead.
                // (Only what holds for every event: canonical ones keep their writer's origin and caps.)
                if let Err(p) = std::panic::catch_unwind(|| check_round_trip(ev)) {
                    let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
                    SINK_PROBLEMS.lock().unwrap_or_else(|e| e.into_inner()).push(msg.unwrap_or_default());
                }
                if ev.received_at.is_none() {
                    SINK_PROBLEMS.lock().unwrap_or_else(|e| e.into_inner()).push(format!("event {} reached a sink without received_at", ev.id));
                }
            }
            Ok(kcaudit::sinks::WriteReport::default())
        })
    }
}

/// The running webhook: router, pipeline, runtime (built once per process).
pub struct Webhook {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    state: Arc<kcaudit::sources::webhook::WebhookState>,
    dlq_path: PathBuf,
    calls: AtomicU64,
    _pipeline: Mutex<kcaudit::pipeline::Pipeline>,
}

/// Where the dead-letter file goes: tmpfs when there is one (every append is fsynced). One directory per
/// process (libFuzzer `-jobs` runs several); those of processes that are gone are removed here, since a
/// fuzzer exits without running destructors.
fn scratch_dir() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    let base = if shm.is_dir() && std::fs::metadata(&shm).is_ok_and(|m| !m.permissions().readonly()) { shm } else { std::env::temp_dir() };
    for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let pid = name.to_str().and_then(|n| n.strip_prefix("kcaudit-fuzz-")).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| p != std::process::id() && !std::path::Path::new(&format!("/proc/{p}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    base.join(format!("kcaudit-fuzz-{}", std::process::id()))
}

pub fn webhook() -> &'static Webhook {
    static W: OnceLock<Webhook> = OnceLock::new();
    W.get_or_init(|| {
        use kcaudit::pipeline::{DedupOptions, Pipeline, PipelineOptions, SinkSpec};
        use kcaudit::sinks::{BatchOptions, RetryOptions};
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        let dir = scratch_dir();
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let dlq_path = dir.join("dead-letter.jsonl");
        let (router, state, pipeline) = rt.block_on(async {
            let dlq = kcaudit::dead_letter::DeadLetterStore::open(&dlq_path).expect("dead-letter store");
            let sinks = vec![SinkSpec {
                sink: Box::new(BlackHole),
                batch: BatchOptions { max_events: 1000, max_wait_ms: 0, queue_capacity: 4096 },
                retry: RetryOptions { max_attempts: 1, initial_backoff_ms: 1, max_backoff_ms: 1 },
            }];
            let dedup = DedupOptions { enabled: true, window_secs: 3600, max_entries: 4096 };
            let pipeline = Pipeline::start(sinks, dlq, kcaudit::metrics::Metrics::new(), &dedup, &PipelineOptions::default());
            let state = kcaudit::sources::webhook::WebhookState::new(&webhook_options(), fuzz_options(), pipeline.handle()).expect("webhook state");
            (kcaudit::sources::webhook::router(state.clone()), state, pipeline)
        });
        Webhook { rt, router, state, dlq_path, calls: AtomicU64::new(0), _pipeline: Mutex::new(pipeline) }
    })
}

/// The answer to one request: status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
    pub text: String,
}

/// Run one fuzz input as a webhook request and check the answer.
pub fn check_webhook(data: &[u8]) {
    let plan = WebhookPlan::parse(data);
    let _ = check_plan(&plan);
}

/// Build the request a plan describes; `None` when the plan's path/headers cannot form a request.
pub fn build_request(plan: &WebhookPlan) -> Option<axum::http::Request<axum::body::Body>> {
    use axum::http::{header, HeaderName, HeaderValue, Method, Request};
    let method = Method::from_bytes(plan.method_str().as_bytes()).ok()?;
    let path = plan.path_str();
    let uri: axum::http::Uri = path.parse().ok()?;
    let f = plan.flags;
    let sent = if f & F_GZIP != 0 {
        compress(&plan.body, true)
    } else if f & F_DEFLATE != 0 {
        compress(&plan.body, false)
    } else {
        plan.body.clone()
    };
    let mut b = Request::builder().method(method).uri(uri);
    let encoding = if f & F_RAW_ENCODING != 0 {
        Some(ENCODINGS[plan.encoding as usize % ENCODINGS.len()])
    } else if f & F_GZIP != 0 {
        Some("gzip")
    } else if f & F_DEFLATE != 0 {
        Some("deflate")
    } else {
        None
    };
    if let Some(e) = encoding {
        b = b.header(header::CONTENT_ENCODING, HeaderValue::from_str(e).ok()?);
    }
    let ct = CONTENT_TYPES[(plan.content_type & 0x3f) as usize % CONTENT_TYPES.len()];
    if !ct.is_empty() {
        b = b.header(header::CONTENT_TYPE, ct);
    }
    if plan.content_type & 0x80 != 0 {
        b = b.header(header::CONTENT_LENGTH, sent.len());
    } else if plan.content_type & 0x40 != 0 {
        b = b.header(header::CONTENT_LENGTH, u64::from(plan.encoding) << 16);
    }
    let sig = match (f & F_SIGN != 0, f & F_SIGN_PLAIN != 0) {
        (true, false) => Some(kcaudit::sources::webhook::auth::sign_sha256(FUZZ_SECRET.as_bytes(), &sent)),
        (false, true) => Some(kcaudit::sources::webhook::auth::sign_sha256(FUZZ_SECRET.as_bytes(), &plan.body)),
        (true, true) => Some(format!("sha256={}", kcaudit::sources::webhook::auth::sign_sha256(FUZZ_SECRET.as_bytes(), &sent).to_uppercase())),
        (false, false) => None,
    };
    if f & F_RAW_SIGNATURE != 0 {
        b = b.header("X-Keycloak-Signature", HeaderValue::from_bytes(&plan.signature).ok()?);
    } else if let Some(s) = sig {
        b = b.header("X-Keycloak-Signature", s);
    }
    if f & F_BEARER != 0 {
        b = b.header(header::AUTHORIZATION, format!("Bearer {FUZZ_SECRET}"));
    }
    for (k, v) in &plan.extra_headers {
        // Invalid names or values cannot be sent over HTTP at all; leave them out.
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k), HeaderValue::from_bytes(v)) {
            b = b.header(k, v);
        }
    }
    b.body(axum::body::Body::from(sent)).ok()
}

/// Send a plan through the router and check the answer; `None` when no request could be built.
pub fn check_plan(plan: &WebhookPlan) -> Option<Answer> {
    use tower::ServiceExt;
    let w = webhook();
    let req = build_request(plan)?;
    let n = w.calls.fetch_add(1, Ordering::Relaxed);
    if n % 512 == 511 {
        // The dead-letter file only grows; keep it small (appends continue at the new end).
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&w.dlq_path) {
            let _ = f.set_len(0);
        }
    }
    let answer = w.rt.block_on(async {
        let resp = w.router.clone().oneshot(req).await.expect("the router is infallible");
        let status = resp.status().as_u16();
        let retry_after = resp.headers().contains_key("retry-after");
        let bytes = axum::body::to_bytes(resp.into_body(), 16 * 1024 * 1024).await.expect("response body");
        (status, retry_after, bytes)
    });
    let (status, retry_after, bytes) = answer;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    let problems = std::mem::take(&mut *SINK_PROBLEMS.lock().unwrap_or_else(|e| e.into_inner()));
    assert!(problems.is_empty(), "the sink received broken events: {problems:?}");

    let path = plan.path_str();
    assert!(status < 500 || status == 503, "HTTP {status} for {} {path}: {text}", plan.method_str());
    if status == 503 {
        let err = body["error"].as_str().unwrap_or("");
        assert!(
            err.contains("overloaded") || err.contains("too many concurrent requests"),
            "503 that is not overload for {} {path}: {text}"
            , plan.method_str()
        );
        assert!(retry_after, "503 without Retry-After");
    }
    let w_routes = &w.state.routes;
    let route = w_routes.resolve(&path).ok();
    let is_ingest = route.is_some() && !matches!(path.split('?').next(), Some("/healthz" | "/readyz" | "/metrics"));
    if is_ingest && plan.method_str() != "POST" {
        assert_eq!(status, 405, "{} {path} must be 405: {text}", plan.method_str());
    }
    if let Some(received) = body.get("received").and_then(|v| v.as_u64()) {
        assert!(matches!(status, 200 | 400 | 503), "batch answer with status {status}: {text}");
        let sum: u64 = ["accepted", "duplicates", "rejected", "skipped"].iter().map(|k| body[*k].as_u64().unwrap_or(u64::MAX / 8)).sum();
        assert_eq!(received, sum, "received != accepted + duplicates + rejected + skipped: {text}");
        let rejected = body["rejected"].as_u64().unwrap_or(0);
        assert_eq!(status == 400, received == rejected && status != 503, "400 exactly when every record was rejected: {text}");
        assert_eq!(body["rejections"].as_array().map(|a| a.len() as u64), Some(rejected), "every rejection listed: {text}");
        for r in body["rejections"].as_array().into_iter().flatten() {
            assert!(r["reason"].as_str().is_some_and(|s| !s.is_empty()), "rejection without a reason: {text}");
        }
        // The webhook decodes exactly what the decoder makes of the (decompressed) body.
        if plan.flags & F_RAW_ENCODING == 0 {
            let route = route.expect("a batch answer comes from a route");
            let ctx = Context { opts: &w.state.decode, tz: w.state.tz, deliveries: None, lines_may_be_noise: false };
            let mut items = Vec::new();
            decode_body(&plan.body, route.format, &Origin { input: "fuzz".into(), ..Default::default() }, &ctx, &mut items);
            assert_eq!(received as usize, items.len(), "the webhook and the decoder disagree on the record count: {text}");
        }
    }
    Some(Answer { status, body, text })
}
