//! The Splunk HTTP Event Collector sink (`[sinks.splunk_hec]`): canonical events to
//! `POST <url>/services/collector/event`, with indexer acknowledgement when the token has it
//! (`docs/siem-and-detection.md` §1.1).
//!
//! **Wire format.** One JSON envelope per event, concatenated (one per line, no array, no commas),
//! gzip-compressed by default, `Authorization: Splunk <token>`, and with `indexer_ack` an
//! `X-Splunk-Request-Channel` GUID (one random channel per sink instance). Each envelope is
//!
//! ```json
//! {"time":1773480413.589,"host":"kc-audit-1","source":"keycloak:acme","sourcetype":"keycloak:token_exchange",
//!  "index":"identity","event":{…the canonical event…},"fields":{"event_kind":"user",…}}
//! ```
//!
//! - `time`: the event time in epoch seconds with exactly three decimals (the received time when the
//!   event has none; left out, so Splunk uses the receipt time, when neither is known);
//! - `event`: the canonical event exactly as every other sink writes it (`schemas/audit-event.schema.json`);
//! - `fields` (index-time fields, flat strings or arrays of strings): `event_kind`, `event_type`,
//!   `event_outcome`, `realm` (name, else id), `realm_id`, `client`, `exchanger`, `audience` (array),
//!   `finding_severity` (the worst finding), `finding_rule` (array), `attack_technique` (array).
//!   Their names never equal a scalar top-level key of the event (`severity`, `outcome`, `client_id`,
//!   ...): with `KV_MODE = json` Splunk would otherwise show such a field twice (indexed and
//!   extracted). `realm` is safe: the event's `realm` object is extracted as `realm.id`/`realm.name`.
//!
//! **Answers** (HEC `code`, then the HTTP status when the body has none):
//!
//! | code | meaning | what happens |
//! |---|---|---|
//! | 0 | Success | accepted (with `indexer_ack`: once `/services/collector/ack` says `true`) |
//! | 8, 9, 18, 19, 20 (500/503) | server error, busy, queues full, ack service unavailable | transient: this request and the later ones of the batch are retried by the driver (backoff + jitter) |
//! | 6, 12, 13, 15 with `invalid-event-number` k | bad event k | event k is dead-lettered with HEC's words; HEC handed the events before k on before answering (Splunk does, and Vector's HEC source sends them downstream), so they count as accepted; the events after k (never read) are sent again at once in a new request. With `indexer_ack` the error carries no ackId, so the events before k cannot be confirmed and are sent again too (possible duplicates, same event id) |
//! | 6, 12, 13, 15 without a usable number, HTTP 413 | some event of the request | the request's events are re-sent one per request, and only the refused ones are dead-lettered |
//! | 1, 2, 3, 4, 7, 10, 11, 14, 16, HTTP 401/403 | token disabled / missing / malformed / invalid, index not allowed, channel, ack disabled, query auth | stop and alarm: `ERROR` log, the request's and every later request's events are dead-lettered with the reason (never dropped, never reported delivered) |
//! | 5 (No data) and other 4xx | a kcaudit bug or a proxy's answer | that request's events are dead-lettered |
//! | no answer (connection, timeout, TLS) | | transient |
//!
//! **Indexer acknowledgement** (`indexer_ack = true`; the token must have it enabled). Every request
//! of the batch is sent first and its `ackId` kept; then `POST /services/collector/ack?channel=<GUID>`
//! with `{"acks":[…]}` is polled every `ack_poll_interval_ms`. A request is accepted when its ackId
//! answers `true` (`false` and a missing key mean "not yet"). Requests still unacknowledged after
//! `ack_timeout_ms` are handed back to the driver for a retry, and their ackIds kept: before the retry
//! re-sends anything, those ackIds are asked once more, and events whose ack has arrived late in the
//! meantime are accepted without a second copy. Otherwise they are sent again: delivery is
//! **at-least-once**, and a copy Splunk indexed twice carries the same event `id` (dedup in searches
//! with `dedup id`). `write` returns only when every request is settled, so the source's
//! acknowledgement (the webhook's answer to Keycloak) waits for Splunk's. A token that accepts the
//! channel but gives no ackId (acknowledgement off on the token) is logged once as a warning and
//! its 200 taken as the delivery.
//!
//! The sink writes one batch at a time (the driver's contract), so with acknowledgements on, the
//! throughput is about `batch.max_events` per acknowledgement round trip: size batches accordingly.
//! A collector that never acknowledges holds a batch for up to `ack_timeout_ms` per attempt
//! (`retry.max_attempts` attempts, then the events are dead-lettered with the timeout as the reason),
//! and shutdown waits for the batch in hand.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::http_client::{self, SecretOptions};
use super::route::RouteFilter;
use super::tls::TlsOptions;
use super::{BatchOptions, RetryOptions, SinkError, WriteReport};
use crate::config::Problem;
use crate::event::{AuditEvent, EventKind};

/// Default environment variable holding the HEC token.
pub const DEFAULT_TOKEN_ENV: &str = "KCAUDIT_SPLUNK_HEC_TOKEN";
/// The event endpoint (the only one that honours `fields`).
pub const EVENT_PATH: &str = "/services/collector/event";
/// The indexer-acknowledgement endpoint.
pub const ACK_PATH: &str = "/services/collector/ack";

/// `[sinks.splunk_hec.sourcetype]`: the sourcetype of each kind of event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SourcetypeOptions {
    /// Token-exchange events (`TOKEN_EXCHANGE`, `TOKEN_EXCHANGE_ERROR` and events cloned from an
    /// exchange request).
    pub token_exchange: String,
    /// Other user events (`LOGIN`, `CODE_TO_TOKEN`, ...).
    pub user: String,
    /// Admin events.
    pub admin: String,
}

impl Default for SourcetypeOptions {
    fn default() -> Self {
        SourcetypeOptions { token_exchange: "keycloak:token_exchange".into(), user: "keycloak:event".into(), admin: "keycloak:admin_event".into() }
    }
}

/// `[sinks.splunk_hec]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SplunkHecOptions {
    /// Send events to Splunk HEC at all.
    pub enabled: bool,
    /// Base URL of the collector (`https://splunk.example.com:8088`); kcaudit adds
    /// `/services/collector/event` and `/services/collector/ack`. A URL that already ends in
    /// `/services/collector` or `/services/collector/event` is taken as its base.
    pub url: String,
    /// Where the HEC token comes from (default: the environment variable `KCAUDIT_SPLUNK_HEC_TOKEN`).
    /// Never written inline in the configuration.
    pub token: SecretOptions,
    /// Index to write to; unset = the token's default index. Must be in the token's allowed indexes
    /// (else HEC answers code 7 and the events are dead-lettered).
    pub index: Option<String>,
    /// Source of each event; `{realm}` is replaced by the realm's name (its id when the name is
    /// unknown) and `{kind}` by `user` or `admin`.
    pub source: String,
    /// Sourcetypes by kind of event.
    pub sourcetype: SourcetypeOptions,
    /// Host of each event; unset = this machine's host name.
    pub host: Option<String>,
    /// gzip the request bodies (`Content-Encoding: gzip`).
    pub gzip: bool,
    /// Wait for Splunk's indexer acknowledgement before an event counts as delivered (the token
    /// must have indexer acknowledgement enabled; Splunk Cloud offers it only for Firehose).
    /// Delivery is then at-least-once: a batch not acknowledged in time is sent again.
    pub indexer_ack: bool,
    /// How often to ask `/services/collector/ack`, in milliseconds.
    pub ack_poll_interval_ms: u64,
    /// How long to wait for an acknowledgement before the request is sent again, in milliseconds.
    pub ack_timeout_ms: u64,
    /// Most uncompressed bytes per request; a batch is cut into several requests (an event larger than
    /// this goes alone).
    pub max_bytes: usize,
    /// Time limit for one request (connect, send and the answer), in milliseconds.
    pub timeout_ms: u64,
    /// TLS for `https://` beyond the defaults (public web PKI roots, no client certificate).
    pub tls: TlsOptions,
    /// Which events go to Splunk (default: all).
    pub route: RouteFilter,
    pub batch: BatchOptions,
    pub retry: RetryOptions,
}

impl Default for SplunkHecOptions {
    fn default() -> Self {
        SplunkHecOptions {
            enabled: false,
            url: "https://127.0.0.1:8088".into(),
            token: SecretOptions::from_env(DEFAULT_TOKEN_ENV),
            index: None,
            source: "keycloak:{realm}".into(),
            sourcetype: SourcetypeOptions::default(),
            host: None,
            gzip: true,
            indexer_ack: false,
            ack_poll_interval_ms: 1000,
            ack_timeout_ms: 60_000,
            max_bytes: 1_000_000,
            timeout_ms: 30_000,
            tls: TlsOptions::default(),
            route: RouteFilter::default(),
            batch: BatchOptions { max_events: 1000, max_wait_ms: 200, queue_capacity: 10_000 },
            retry: RetryOptions::default(),
        }
    }
}

impl SplunkHecOptions {
    /// The collector's base URL, without a trailing `/` or a `/services/collector[/event]` suffix.
    pub fn base_url(&self) -> String {
        let mut u = self.url.trim().trim_end_matches('/');
        for suffix in ["/services/collector/event/1.0", "/services/collector/event", "/services/collector"] {
            if let Some(rest) = u.strip_suffix(suffix) {
                u = rest;
                break;
            }
        }
        u.to_string()
    }

    pub fn event_url(&self) -> String {
        format!("{}{EVENT_PATH}", self.base_url())
    }

    pub fn ack_url(&self) -> String {
        format!("{}{ACK_PATH}", self.base_url())
    }

    pub fn problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        if !self.enabled {
            return p;
        }
        let err = |key: &str, message: String| Problem { key: format!("sinks.splunk_hec.{key}"), message, is_error: true };
        let warn = |key: &str, message: String| Problem { key: format!("sinks.splunk_hec.{key}"), message, is_error: false };
        match reqwest::Url::parse(self.url.trim()) {
            Ok(url) if !matches!(url.scheme(), "http" | "https") => p.push(err("url", format!("{}: scheme {} is not http or https", self.url, url.scheme()))),
            Ok(url) if url.query().is_some() || url.fragment().is_some() => p.push(err("url", format!("{}: give the collector's base URL, without a query or fragment", self.url))),
            Ok(url) => {
                let host = url.host_str().unwrap_or("").trim_start_matches('[').trim_end_matches(']');
                let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback());
                if url.scheme() == "http" && !loopback {
                    p.push(warn("url", format!("{}: plain http sends the HEC token and the audit trail unencrypted", self.url)));
                }
            }
            Err(e) => p.push(err("url", format!("{}: {e}", self.url))),
        }
        if let Err(e) = self.token.read() {
            p.push(err("token", format!("no HEC token: {e}")));
        }
        if let Some(index) = &self.index {
            if index.is_empty() || !index.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-') || index.starts_with('-') {
                p.push(err("index", format!("{index:?} is not a Splunk index name (lowercase letters, digits, _ and -); leave it unset for the token's default index")));
            }
        }
        if let Err(e) = check_template(&self.source) {
            p.push(err("source", e));
        }
        for (key, v) in [("sourcetype.token_exchange", &self.sourcetype.token_exchange), ("sourcetype.user", &self.sourcetype.user), ("sourcetype.admin", &self.sourcetype.admin)] {
            if v.trim().is_empty() {
                p.push(err(key, "must not be empty".into()));
            }
        }
        if self.host.as_deref().is_some_and(|h| h.trim().is_empty()) {
            p.push(err("host", "must not be empty (leave it unset for this machine's host name)".into()));
        }
        for (key, v) in [("max_bytes", self.max_bytes as u64), ("timeout_ms", self.timeout_ms)] {
            if v == 0 {
                p.push(err(key, "must be greater than 0".into()));
            }
        }
        if self.indexer_ack {
            if self.ack_poll_interval_ms == 0 {
                p.push(err("ack_poll_interval_ms", "must be greater than 0".into()));
            }
            if self.ack_timeout_ms < self.ack_poll_interval_ms {
                p.push(err("ack_timeout_ms", format!("{} ms is shorter than ack_poll_interval_ms ({} ms): no acknowledgement could ever be seen", self.ack_timeout_ms, self.ack_poll_interval_ms)));
            }
        }
        if !self.tls.is_default() {
            if let Err(e) = self.tls.client_config() {
                p.push(err("tls", e));
            }
        }
        p
    }
}

/// `{realm}` and `{kind}` are the only placeholders; braces must pair up.
fn check_template(t: &str) -> Result<(), String> {
    let mut rest = t;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return Err(format!("{t:?}: unmatched '}}'"));
        }
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| format!("{t:?}: unmatched '{{'"))?;
        let name = &after[..close];
        if !matches!(name, "realm" | "kind") {
            return Err(format!("{t:?}: unknown placeholder {{{name}}} (known: {{realm}}, {{kind}})"));
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

/// Epoch seconds with exactly three decimals (`1773480413.589`), as HEC's `time` wants it.
pub fn epoch_seconds(t: &DateTime<Utc>) -> String {
    let ms = t.timestamp_millis();
    let sign = if ms < 0 { "-" } else { "" };
    let a = ms.unsigned_abs();
    format!("{sign}{}.{:03}", a / 1000, a % 1000)
}

/// The realm as people name it: its name, else its id.
fn realm_label(e: &AuditEvent) -> Option<&str> {
    e.realm.name.as_deref().or(e.realm.id.as_deref())
}

/// The index-time `fields` of an event: flat strings and arrays of strings only, absent values left
/// out, names distinct from the event's own top-level keys.
pub fn indexed_fields(e: &AuditEvent) -> BTreeMap<&'static str, Value> {
    let mut f = BTreeMap::new();
    let mut put = |k: &'static str, v: Option<&str>| {
        if let Some(v) = v {
            f.insert(k, Value::String(v.to_string()));
        }
    };
    put("event_kind", Some(e.kind.name()));
    put("event_type", Some(&e.event_type));
    put("event_outcome", Some(e.outcome.name()));
    put("realm", realm_label(e));
    put("realm_id", e.realm.id.as_deref());
    put("client", e.client_id.as_deref());
    put("exchanger", e.token_exchange.as_ref().and_then(|t| t.exchanger.as_deref()));
    put("finding_severity", e.severity.map(|s| s.name()));
    let list = |items: &mut dyn Iterator<Item = &str>| -> Option<Value> {
        let mut seen = HashSet::new();
        let v: Vec<Value> = items.filter(|s| seen.insert(*s)).map(|s| Value::String(s.to_string())).collect();
        (!v.is_empty()).then_some(Value::Array(v))
    };
    if let Some(v) = e.token_exchange.as_ref().and_then(|t| list(&mut t.audiences.iter().map(|a| a.as_str()))) {
        f.insert("audience", v);
    }
    if let Some(v) = list(&mut e.findings.iter().map(|x| x.rule.as_str())) {
        f.insert("finding_rule", v);
    }
    if let Some(v) = list(&mut e.findings.iter().flat_map(|x| x.attack.iter().map(String::as_str))) {
        f.insert("attack_technique", v);
    }
    f
}

/// What every envelope of this sink carries besides the event.
#[derive(Debug, Clone)]
pub struct EnvelopeSettings {
    pub host: String,
    pub index: Option<String>,
    pub source: String,
    pub sourcetype: SourcetypeOptions,
}

impl EnvelopeSettings {
    pub fn from_options(opts: &SplunkHecOptions) -> EnvelopeSettings {
        EnvelopeSettings {
            host: opts.host.clone().unwrap_or_else(host_name),
            index: opts.index.clone(),
            source: opts.source.clone(),
            sourcetype: opts.sourcetype.clone(),
        }
    }

    pub fn source_of(&self, e: &AuditEvent) -> String {
        self.source.replace("{realm}", realm_label(e).unwrap_or("unknown")).replace("{kind}", e.kind.name())
    }

    pub fn sourcetype_of(&self, e: &AuditEvent) -> &str {
        if e.is_token_exchange() {
            &self.sourcetype.token_exchange
        } else if e.kind == EventKind::Admin {
            &self.sourcetype.admin
        } else {
            &self.sourcetype.user
        }
    }

    /// One envelope, without a trailing newline.
    pub fn envelope(&self, e: &AuditEvent) -> String {
        self.wrap(e, &e.to_json_line())
    }

    /// As [`EnvelopeSettings::envelope`], writing the event through the sink's memo of shared
    /// enrichment parts.
    pub fn envelope_with(&self, e: &AuditEvent, memo: &mut crate::json_line::Memo) -> String {
        self.wrap(e, &e.to_json_line_with(memo))
    }

    fn wrap(&self, e: &AuditEvent, event_json: &str) -> String {
        let s = |v: &str| serde_json::to_string(v).unwrap_or_else(|_| "\"\"".into());
        let mut out = String::with_capacity(2048);
        out.push('{');
        if let Some(t) = e.time.as_ref().or(e.received_at.as_ref()) {
            out.push_str("\"time\":");
            out.push_str(&epoch_seconds(t));
            out.push(',');
        }
        out.push_str("\"host\":");
        out.push_str(&s(&self.host));
        out.push_str(",\"source\":");
        out.push_str(&s(&self.source_of(e)));
        out.push_str(",\"sourcetype\":");
        out.push_str(&s(self.sourcetype_of(e)));
        if let Some(index) = &self.index {
            out.push_str(",\"index\":");
            out.push_str(&s(index));
        }
        out.push_str(",\"event\":");
        out.push_str(event_json);
        out.push_str(",\"fields\":");
        out.push_str(&serde_json::to_string(&indexed_fields(e)).unwrap_or_else(|_| "{}".into()));
        out.push('}');
        out
    }
}

/// This machine's host name (`HOSTNAME`, then the kernel's), or `kcaudit`.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|s| s.trim().to_string()).filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "kcaudit".into())
}


/// HEC's answer body (`{"text":"Success","code":0,"ackId":7}`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct HecResponse {
    pub text: Option<String>,
    pub code: Option<i64>,
    #[serde(rename = "ackId")]
    pub ack_id: Option<u64>,
    #[serde(rename = "invalid-event-number")]
    pub invalid_event_number: Option<i64>,
}

/// HEC codes that mean "the token or the configuration is wrong": stop and alarm.
pub const CONFIG_CODES: &[i64] = &[1, 2, 3, 4, 7, 10, 11, 14, 16];
/// HEC codes that mean "one event of the request is bad".
pub const BAD_EVENT_CODES: &[i64] = &[6, 12, 13, 15];
/// HEC codes worth retrying.
pub const TRANSIENT_CODES: &[i64] = &[8, 9, 18, 19, 20];

/// What an answer means for the request's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Taken (with the ackId to wait for, when acknowledgement is on).
    Accepted { ack_id: Option<u64> },
    /// Retry later.
    Transient(String),
    /// The token or the configuration is refused: dead-letter and alarm.
    Config(String),
    /// One event is bad: `index` (0-based within the request) when HEC said which.
    BadEvent { index: Option<usize>, reason: String },
    /// The request is too large for the collector.
    TooLarge(String),
    /// The request was refused for another reason that a retry cannot fix.
    Permanent(String),
}

impl Verdict {
    /// The words behind a verdict (empty for `Accepted`).
    pub fn message(&self) -> &str {
        match self {
            Verdict::Accepted { .. } => "",
            Verdict::Transient(m) | Verdict::Config(m) | Verdict::TooLarge(m) | Verdict::Permanent(m) => m,
            Verdict::BadEvent { reason, .. } => reason,
        }
    }
}

/// Classify an answer from `url`, keeping HEC's words.
pub fn classify(url: &str, status: u16, body: &str) -> Verdict {
    let parsed: Option<HecResponse> = serde_json::from_str(body).ok();
    let describe = |r: &HecResponse| {
        let mut m = format!("{url}: HTTP {status}, HEC code {}", r.code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()));
        if let Some(t) = &r.text {
            m.push_str(&format!(" {t:?}"));
        }
        m
    };
    match parsed {
        Some(r) if r.code.is_some() => {
            let code = r.code.unwrap_or_default();
            let msg = describe(&r);
            if code == 0 && (200..300).contains(&status) {
                Verdict::Accepted { ack_id: r.ack_id }
            } else if CONFIG_CODES.contains(&code) {
                Verdict::Config(msg)
            } else if BAD_EVENT_CODES.contains(&code) {
                let index = r.invalid_event_number.and_then(|n| usize::try_from(n).ok());
                let reason = match index {
                    Some(k) => format!("{msg} (invalid-event-number {k})"),
                    None => msg,
                };
                Verdict::BadEvent { index, reason }
            } else if TRANSIENT_CODES.contains(&code) {
                Verdict::Transient(msg)
            } else if (200..300).contains(&status) {
                Verdict::Accepted { ack_id: r.ack_id }
            } else {
                by_status(status, msg)
            }
        }
        _ if (200..300).contains(&status) => Verdict::Accepted { ack_id: None },
        _ => {
            let msg = match http_client::status_error(url, status, body) {
                SinkError::Transient(m) | SinkError::Permanent(m) => m,
            };
            by_status(status, msg)
        }
    }
}

fn by_status(status: u16, msg: String) -> Verdict {
    match status {
        401 | 403 => Verdict::Config(msg),
        413 => Verdict::TooLarge(msg),
        s if http_client::transient_status(s) => Verdict::Transient(msg),
        _ => Verdict::Permanent(msg),
    }
}

/// Parse an `/ack` answer (`{"acks":{"7":true,"8":false}}`): the ackIds reported `true`.
pub fn acked_ids(body: &str) -> Result<HashSet<u64>, String> {
    #[derive(Deserialize)]
    struct AckAnswer {
        acks: BTreeMap<String, Value>,
    }
    let a: AckAnswer = serde_json::from_str(body).map_err(|e| format!("unreadable /ack answer ({e}): {}", body.chars().take(200).collect::<String>()))?;
    Ok(a.acks.into_iter().filter(|(_, v)| v.as_bool() == Some(true)).filter_map(|(k, _)| k.trim().parse().ok()).collect())
}

/// Events of a request that went out but whose acknowledgement did not come in time: asked again
/// before they are re-sent.
struct Unconfirmed {
    ack_id: u64,
    /// (address of the `Arc`, event id): the driver retries the very same `Arc`s.
    events: Vec<(usize, String)>,
}

/// The fate of each event of a batch while it is being written.
#[derive(Debug, Clone, PartialEq)]
enum Fate {
    Pending,
    Accepted,
    Rejected(String),
    Retry,
}

/// Writes events to a Splunk HTTP Event Collector.
pub struct SplunkHecSink {
    name: String,
    opts: SplunkHecOptions,
    client: reqwest::Client,
    token: String,
    channel: String,
    event_url: String,
    ack_url: String,
    envelope: EnvelopeSettings,
    /// ackIds that timed out in the previous write, asked once more before their events are re-sent.
    unconfirmed: Vec<Unconfirmed>,
    warned_no_ack_id: bool,
    /// The JSON of shared enrichment parts, kept across batches (see [`crate::json_line::Memo`]).
    memo: crate::json_line::Memo,
}

fn ptr(e: &Arc<AuditEvent>) -> usize {
    Arc::as_ptr(e) as usize
}

impl SplunkHecSink {
    pub fn new(name: &str, opts: &SplunkHecOptions) -> anyhow::Result<SplunkHecSink> {
        let problems: Vec<String> = opts.problems().iter().filter(|p| p.is_error).map(|p| p.to_string()).collect();
        if !problems.is_empty() {
            anyhow::bail!("invalid [sinks.splunk_hec]: {}", problems.join("; "));
        }
        let token = opts.token.read().map_err(|e| anyhow::anyhow!("[sinks.splunk_hec] token: {e}"))?;
        let client = http_client::client(&opts.tls, Duration::from_millis(opts.timeout_ms.max(1)))?;
        Ok(SplunkHecSink {
            name: name.to_string(),
            client,
            token,
            channel: uuid::Uuid::new_v4().to_string().to_uppercase(),
            event_url: opts.event_url(),
            ack_url: opts.ack_url(),
            envelope: EnvelopeSettings::from_options(opts),
            opts: opts.clone(),
            unconfirmed: Vec::new(),
            warned_no_ack_id: false,
            memo: Default::default(),
        })
    }

    /// The channel GUID this sink sends on (with `indexer_ack`).
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The envelope settings in use (host name resolved).
    pub fn envelope_settings(&self) -> &EnvelopeSettings {
        &self.envelope
    }

    fn request(&self, url: &str) -> reqwest::RequestBuilder {
        let mut r = self.client.post(url).header(reqwest::header::AUTHORIZATION, format!("Splunk {}", self.token)).header(reqwest::header::CONTENT_TYPE, "application/json");
        if self.opts.indexer_ack {
            r = r.header("X-Splunk-Request-Channel", &self.channel);
        }
        r
    }

    /// POST one request body (concatenated envelopes) and classify the answer.
    async fn send(&self, body: String) -> Verdict {
        let mut req = self.request(&self.event_url);
        let bytes = if self.opts.gzip {
            let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::default());
            match enc.write_all(body.as_bytes()).and_then(|_| enc.finish()) {
                Ok(b) => {
                    req = req.header(reqwest::header::CONTENT_ENCODING, "gzip");
                    b
                }
                Err(_) => body.into_bytes(),
            }
        } else {
            body.into_bytes()
        };
        match req.body(bytes).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                match resp.text().await {
                    Ok(text) => classify(&self.event_url, status, &text),
                    Err(e) => match http_client::request_error(&self.event_url, &e) {
                        SinkError::Transient(m) | SinkError::Permanent(m) => Verdict::Transient(format!("{m} (reading the answer to HTTP {status})")),
                    },
                }
            }
            Err(e) => match http_client::request_error(&self.event_url, &e) {
                SinkError::Transient(m) | SinkError::Permanent(m) => Verdict::Transient(m),
            },
        }
    }

    /// Ask `/services/collector/ack` about `ids`: the ones reported `true`.
    async fn query_acks(&self, ids: &[u64]) -> Result<HashSet<u64>, Verdict> {
        let url = format!("{}?channel={}", self.ack_url, self.channel);
        let body = serde_json::json!({ "acks": ids }).to_string();
        let resp = self.request(&url).body(body).send().await.map_err(|e| match http_client::request_error(&self.ack_url, &e) {
            SinkError::Transient(m) | SinkError::Permanent(m) => Verdict::Transient(m),
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| Verdict::Transient(format!("{}: reading the answer: {e}", self.ack_url)))?;
        if status == 200 {
            return acked_ids(&text).map_err(|e| Verdict::Transient(format!("{}: {e}", self.ack_url)));
        }
        Err(match classify(&self.ack_url, status, &text) {
            Verdict::Accepted { .. } => Verdict::Transient(format!("{}: HTTP {status} without acknowledgements", self.ack_url)),
            Verdict::BadEvent { reason, .. } => Verdict::Permanent(reason),
            v => v,
        })
    }

    fn alarm(&self, msg: &str) {
        tracing::error!(sink = %self.name, url = %self.event_url, error = %msg, "Splunk HEC refused kcaudit's token or configuration: events are being dead-lettered until this is fixed.");
    }

    async fn write_batch(&mut self, events: &[Arc<AuditEvent>]) -> Result<WriteReport, SinkError> {
        let mut fate = vec![Fate::Pending; events.len()];
        let mut last_error: Option<String> = None;
        if events.is_empty() {
            return Ok(WriteReport::default());
        }

        // Requests of the previous attempt whose acknowledgement came late: their events are in.
        let stale = std::mem::take(&mut self.unconfirmed);
        if !stale.is_empty() {
            let ids: Vec<u64> = stale.iter().map(|u| u.ack_id).collect();
            match self.query_acks(&ids).await {
                Ok(acked) => {
                    let done: HashSet<(usize, &str)> = stale.iter().filter(|u| acked.contains(&u.ack_id)).flat_map(|u| u.events.iter().map(|(p, id)| (*p, id.as_str()))).collect();
                    let mut late = 0usize;
                    for (i, e) in events.iter().enumerate() {
                        if done.contains(&(ptr(e), e.id.as_str())) {
                            fate[i] = Fate::Accepted;
                            late += 1;
                        }
                    }
                    if late > 0 {
                        tracing::info!(sink = %self.name, events = late, "Splunk acknowledged earlier requests late; their events are not sent again.");
                    }
                }
                Err(v) => tracing::warn!(sink = %self.name, error = %v.message(), "Could not ask Splunk about late acknowledgements; the unacknowledged events are sent again."),
            }
        }

        // Encode what is left and cut it into requests.
        let todo: Vec<usize> = (0..events.len()).filter(|&i| fate[i] == Fate::Pending).collect();
        let (envelope, memo) = (&self.envelope, &mut self.memo);
        let lines: Vec<String> = todo.iter().map(|&i| envelope.envelope_with(&events[i], memo) + "\n").collect();
        let sizes: Vec<usize> = lines.iter().map(String::len).collect();
        let mut queue: VecDeque<Vec<usize>> = super::cut(&sizes, usize::MAX, self.opts.max_bytes.max(1)).into_iter().map(|r| r.collect()).collect();
        // (ackId, batch indexes) of requests taken by HEC, waiting for their acknowledgement.
        let mut awaiting: Vec<(u64, Vec<usize>)> = Vec::new();

        while let Some(chunk_lines) = queue.pop_front() {
            let chunk: Vec<usize> = chunk_lines.iter().map(|&n| todo[n]).collect();
            let body: String = chunk_lines.iter().map(|&n| lines[n].as_str()).collect();
            let verdict = self.send(body).await;
            let stop_rest = |queue: &mut VecDeque<Vec<usize>>, fate: &mut Vec<Fate>, f: Fate| {
                for c in queue.drain(..) {
                    for n in c {
                        fate[todo[n]] = f.clone();
                    }
                }
            };
            match verdict {
                Verdict::Accepted { ack_id } => match (self.opts.indexer_ack, ack_id) {
                    (true, Some(id)) => awaiting.push((id, chunk)),
                    (ack, _) => {
                        if ack && !self.warned_no_ack_id {
                            self.warned_no_ack_id = true;
                            tracing::warn!(sink = %self.name, "indexer_ack is on but Splunk answered without an ackId: indexer acknowledgement is not enabled on this HEC token; a 200 is taken as delivered.");
                        }
                        for i in chunk {
                            fate[i] = Fate::Accepted;
                        }
                    }
                },
                Verdict::Transient(m) => {
                    // The collector is busy or unreachable: back off with the whole rest.
                    for i in chunk {
                        fate[i] = Fate::Retry;
                    }
                    stop_rest(&mut queue, &mut fate, Fate::Retry);
                    last_error = Some(m);
                }
                Verdict::Config(m) => {
                    self.alarm(&m);
                    let reason = format!("Splunk HEC refused the token or configuration: {m}");
                    for i in chunk {
                        fate[i] = Fate::Rejected(reason.clone());
                    }
                    stop_rest(&mut queue, &mut fate, Fate::Rejected(reason));
                    last_error = Some(m);
                }
                Verdict::BadEvent { index: Some(k), reason } if k < chunk.len() => {
                    // HEC handed the events before k on, refused k and never read the rest. The rest
                    // goes again at once (no backoff: nothing is wrong with the collector), so every
                    // request settles at least one event and a batch with many bad events still
                    // finishes in one write. With acknowledgements the events before k cannot be
                    // confirmed (an error carries no ackId): they go again too.
                    fate[chunk[k]] = Fate::Rejected(format!("Splunk HEC refused the event: {reason}"));
                    let mut again: Vec<usize> = Vec::new();
                    for (n, &line) in chunk_lines.iter().enumerate() {
                        if n > k || (n < k && self.opts.indexer_ack) {
                            again.push(line);
                        } else if n < k {
                            fate[todo[line]] = Fate::Accepted;
                        }
                    }
                    if !again.is_empty() {
                        queue.push_front(again);
                    }
                }
                Verdict::BadEvent { reason, .. } | Verdict::TooLarge(reason) if chunk.len() > 1 => {
                    // Which event is unknown: send them one by one.
                    tracing::warn!(sink = %self.name, events = chunk.len(), error = %reason, "Splunk HEC refused a request without naming the event; sending its events one at a time.");
                    for n in chunk_lines.into_iter().rev() {
                        queue.push_front(vec![n]);
                    }
                }
                Verdict::BadEvent { reason, .. } | Verdict::TooLarge(reason) | Verdict::Permanent(reason) => {
                    let why = format!("Splunk HEC refused the event: {reason}");
                    for i in chunk {
                        fate[i] = Fate::Rejected(why.clone());
                    }
                    last_error = Some(reason);
                }
            }
        }

        if !awaiting.is_empty() {
            self.await_acks(events, &mut fate, awaiting, &mut last_error).await;
        }

        let mut report = WriteReport::default();
        for (i, f) in fate.into_iter().enumerate() {
            match f {
                Fate::Accepted => {}
                Fate::Rejected(r) => report.rejected.push((i, r)),
                Fate::Retry | Fate::Pending => report.retry.push(i),
            }
        }
        report.error = last_error;
        if report.rejected.is_empty() && report.retry.len() == events.len() {
            return Err(SinkError::Transient(report.error.unwrap_or_else(|| "nothing was acknowledged".into())));
        }
        Ok(report)
    }

    /// Poll `/ack` until every request in `awaiting` is acknowledged, or `ack_timeout_ms` passes.
    async fn await_acks(&mut self, events: &[Arc<AuditEvent>], fate: &mut [Fate], mut awaiting: Vec<(u64, Vec<usize>)>, last_error: &mut Option<String>) {
        let interval = Duration::from_millis(self.opts.ack_poll_interval_ms.max(1));
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.opts.ack_timeout_ms);
        let mut ack_error: Option<String> = None;
        loop {
            let now = tokio::time::Instant::now();
            tokio::time::sleep(interval.min(deadline.saturating_duration_since(now))).await;
            let ids: Vec<u64> = awaiting.iter().map(|(id, _)| *id).collect();
            match self.query_acks(&ids).await {
                Ok(acked) => {
                    awaiting.retain(|(id, chunk)| {
                        if acked.contains(id) {
                            for &i in chunk {
                                fate[i] = Fate::Accepted;
                            }
                            false
                        } else {
                            true
                        }
                    });
                }
                Err(Verdict::Config(m)) | Err(Verdict::Permanent(m)) => {
                    // The acknowledgements cannot be asked for (token revoked meanwhile, ack switched
                    // off): the events went out but nothing will ever confirm them.
                    self.alarm(&m);
                    for (id, chunk) in awaiting.drain(..) {
                        for i in chunk {
                            fate[i] = Fate::Rejected(format!("Splunk HEC took the request (ackId {id}) but its acknowledgement cannot be asked for: {m}"));
                        }
                    }
                    *last_error = Some(m);
                    return;
                }
                Err(v) => {
                    let m = v.message().to_string();
                    tracing::warn!(sink = %self.name, error = %m, "Asking Splunk for indexer acknowledgements failed; asking again.");
                    ack_error = Some(m);
                }
            }
            if awaiting.is_empty() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        let ids: Vec<String> = awaiting.iter().map(|(id, _)| id.to_string()).collect();
        let mut msg = format!("{}: no indexer acknowledgement for ackId {} on channel {} within {} ms; sending again (Splunk may index these events twice)", self.ack_url, ids.join(", "), self.channel, self.opts.ack_timeout_ms);
        if let Some(e) = ack_error {
            msg.push_str(&format!("; last /ack error: {e}"));
        }
        tracing::warn!(sink = %self.name, error = %msg, "Splunk indexer acknowledgement timed out.");
        for (id, chunk) in awaiting {
            for &i in &chunk {
                fate[i] = Fate::Retry;
            }
            self.unconfirmed.push(Unconfirmed { ack_id: id, events: chunk.iter().map(|&i| (ptr(&events[i]), events[i].id.clone())).collect() });
        }
        *last_error = Some(msg);
    }
}

super::routed_sink!(SplunkHecSink);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Finding, Severity};

    /// The running example of the research note (§ "Running example").
    fn example() -> AuditEvent {
        serde_json::from_value(serde_json::json!({
            "schema_version": 1, "id": "0b6f3c8e-2f7a-4d51-9a52-6c1e3b7d9f10", "id_derived": false,
            "time": "2026-03-14T09:26:53.589Z", "time_source": "event",
            "kind": "user", "type": "TOKEN_EXCHANGE", "outcome": "success", "error": null,
            "realm": {"id": "7a0c-uuid", "name": "acme"}, "client_id": "svc-gateway",
            "subject": {"id": "5f1c2a9e-8b0d-4c1e-9a6f-2d3b4c5d6e7f", "username": "alice"},
            "session_id": null, "ip_address": "203.0.113.7", "ip": "203.0.113.7",
            "token_exchange": {"exchanger": "svc-gateway", "audiences": ["billing-api"], "subject_token_client_id": null,
                "requested_subject": null, "impersonator": null, "requested_token_type": null, "scope": null,
                "requested_issuer": null, "subject_issuer": null, "actor": null, "flavour": "standard_v2", "flavour_reason": "r"},
            "details": {"audience": "billing-api"}, "admin": null, "enrichment": null,
            "findings": [{"rule": "new-audience", "severity": "medium", "title": "t", "reason": "r", "attack": ["T1550.001"], "related_event_ids": []}],
            "severity": "medium",
            "origin": {"input": "t", "format": "keycloak", "line": null, "request_id": null, "index": null, "delivery_id": null, "log": null},
            "warnings": []
        }))
        .unwrap()
    }

    fn settings() -> EnvelopeSettings {
        EnvelopeSettings { host: "kc-audit-1".into(), index: Some("identity".into()), source: "keycloak:{realm}".into(), sourcetype: SourcetypeOptions::default() }
    }

    #[test]
    fn time_is_epoch_seconds_with_three_decimals() {
        let t = |s: &str| epoch_seconds(&s.parse::<DateTime<Utc>>().unwrap());
        assert_eq!(t("2026-03-14T09:26:53.589Z"), "1773480413.589");
        assert_eq!(t("2026-03-14T09:26:53Z"), "1773480413.000");
        assert_eq!(t("2026-03-14T09:26:53.005Z"), "1773480413.005");
        assert_eq!(t("1970-01-01T00:00:00Z"), "0.000");
        assert_eq!(t("1969-12-31T23:59:59.999Z"), "-0.001");
    }

    #[test]
    fn envelope_of_the_running_example() {
        let e = example();
        let env = settings().envelope(&e);
        let expected = format!(
            "{{\"time\":1773480413.589,\"host\":\"kc-audit-1\",\"source\":\"keycloak:acme\",\"sourcetype\":\"keycloak:token_exchange\",\"index\":\"identity\",\"event\":{},\"fields\":{}}}",
            e.to_json_line(),
            r#"{"attack_technique":["T1550.001"],"audience":["billing-api"],"client":"svc-gateway","event_kind":"user","event_outcome":"success","event_type":"TOKEN_EXCHANGE","exchanger":"svc-gateway","finding_rule":["new-audience"],"finding_severity":"medium","realm":"acme","realm_id":"7a0c-uuid"}"#
        );
        assert_eq!(env, expected);
        // Valid JSON, `event` is the canonical event.
        let v: Value = serde_json::from_str(&env).unwrap();
        assert_eq!(v["event"], serde_json::to_value(&e).unwrap());
    }

    #[test]
    fn fields_are_flat_deduplicated_and_never_shadow_event_keys() {
        let mut e = example();
        e.findings.push(Finding { rule: "new-audience".into(), severity: Severity::High, title: "t".into(), reason: "r".into(), attack: vec!["T1550.001".into(), "T1078".into()], related_event_ids: vec![] });
        e.realm.name = None;
        e.token_exchange = None;
        let f = indexed_fields(&e);
        assert_eq!(f["finding_rule"], serde_json::json!(["new-audience"]));
        assert_eq!(f["attack_technique"], serde_json::json!(["T1550.001", "T1078"]));
        assert_eq!(f["realm"], "7a0c-uuid", "the id stands in for an unknown name");
        assert!(!f.contains_key("audience") && !f.contains_key("exchanger"));
        let top: Value = serde_json::to_value(&e).unwrap();
        for (k, v) in &f {
            // An object-valued key (`realm`) is extracted as dotted paths (`realm.id`), never as itself.
            assert!(top.get(*k).is_none_or(Value::is_object), "{k} would be extracted twice");
            assert!(v.is_string() || v.as_array().is_some_and(|a| a.iter().all(Value::is_string)), "{k}: {v}");
        }
        // No time at all: HEC uses the receipt time.
        e.time = None;
        assert!(settings().envelope(&e).starts_with("{\"host\":"));
    }

    #[test]
    fn sourcetype_and_source_by_kind() {
        let s = EnvelopeSettings { source: "kc:{kind}:{realm}".into(), ..settings() };
        let mut e = example();
        assert_eq!(s.sourcetype_of(&e), "keycloak:token_exchange");
        e.token_exchange = None;
        assert_eq!(s.sourcetype_of(&e), "keycloak:event");
        e.kind = EventKind::Admin;
        assert_eq!(s.sourcetype_of(&e), "keycloak:admin_event");
        assert_eq!(s.source_of(&e), "kc:admin:acme");
        e.realm = Default::default();
        assert_eq!(s.source_of(&e), "kc:admin:unknown");
    }

    #[test]
    fn every_documented_code_is_classified() {
        let u = "http://h/services/collector/event";
        let c = |status: u16, body: &str| classify(u, status, body);
        assert_eq!(c(200, r#"{"text":"Success","code":0}"#), Verdict::Accepted { ack_id: None });
        assert_eq!(c(200, r#"{"text":"Success","code":0,"ackId":7}"#), Verdict::Accepted { ack_id: Some(7) });
        for (status, code) in [(403, 1), (401, 2), (401, 3), (403, 4), (400, 7), (400, 10), (400, 11), (400, 14), (400, 16)] {
            assert!(matches!(c(status, &format!(r#"{{"text":"x","code":{code}}}"#)), Verdict::Config(_)), "code {code}");
        }
        for (status, code) in [(500, 8), (503, 9), (503, 18), (503, 19), (503, 20)] {
            assert!(matches!(c(status, &format!(r#"{{"text":"x","code":{code}}}"#)), Verdict::Transient(_)), "code {code}");
        }
        for code in [6, 12, 13, 15] {
            let v = c(400, &format!(r#"{{"text":"Invalid data format","code":{code},"invalid-event-number":1}}"#));
            let Verdict::BadEvent { index: Some(1), reason } = v else { panic!("code {code}: {v:?}") };
            assert!(reason.contains("Invalid data format") && reason.contains(&format!("code {code}")) && reason.contains("invalid-event-number 1"), "{reason}");
            assert!(matches!(c(400, &format!(r#"{{"text":"x","code":{code}}}"#)), Verdict::BadEvent { index: None, .. }));
        }
        assert!(matches!(c(400, r#"{"text":"No data","code":5}"#), Verdict::Permanent(_)));
        // No HEC body: by HTTP status (a proxy in between).
        assert!(matches!(c(502, "<html>Bad Gateway</html>"), Verdict::Transient(m) if m.contains("Bad Gateway")));
        assert!(matches!(c(429, ""), Verdict::Transient(_)));
        assert!(matches!(c(401, ""), Verdict::Config(_)));
        assert!(matches!(c(413, "too large"), Verdict::TooLarge(_)));
        assert!(matches!(c(404, "not found"), Verdict::Permanent(_)));
        assert_eq!(c(200, ""), Verdict::Accepted { ack_id: None });
    }

    #[test]
    fn ack_answers_are_keyed_by_string() {
        assert_eq!(acked_ids(r#"{"acks":{"0":true,"1":false,"2":true}}"#).unwrap(), [0u64, 2].into_iter().collect());
        assert!(acked_ids(r#"{"acks":{}}"#).unwrap().is_empty());
        assert!(acked_ids(r#"{"text":"x","code":9}"#).is_err());
    }

    #[test]
    fn options_and_problems() {
        let o = SplunkHecOptions::default();
        assert!(o.problems().is_empty(), "disabled: nothing to check");
        assert_eq!(o.token.env.as_deref(), Some(DEFAULT_TOKEN_ENV));
        for (url, base) in [("https://s:8088", "https://s:8088"), ("https://s:8088/", "https://s:8088"), ("https://s:8088/services/collector/event", "https://s:8088"), ("https://p/splunk/services/collector", "https://p/splunk")] {
            let o = SplunkHecOptions { url: url.into(), ..Default::default() };
            assert_eq!(o.base_url(), base);
            assert_eq!(o.event_url(), format!("{base}/services/collector/event"));
        }
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "12345678-1234-1234-1234-1234567890AB\n").unwrap();
        let good = SplunkHecOptions { enabled: true, token: SecretOptions { env: None, file: Some(token.clone()) }, ..Default::default() };
        assert!(good.problems().iter().all(|p| !p.is_error), "{:?}", good.problems());
        assert_eq!(good.token.read().unwrap(), "12345678-1234-1234-1234-1234567890AB");
        let bad = SplunkHecOptions {
            url: "ftp://x".into(),
            token: SecretOptions { env: Some("KCAUDIT_TEST_NO_SUCH_VARIABLE_HEC".into()), file: None },
            index: Some("Main".into()),
            source: "kc:{tenant}".into(),
            indexer_ack: true,
            ack_poll_interval_ms: 1000,
            ack_timeout_ms: 10,
            max_bytes: 0,
            ..good.clone()
        };
        let keys: Vec<String> = bad.problems().iter().filter(|p| p.is_error).map(|p| p.key.clone()).collect();
        for k in ["url", "token", "index", "source", "ack_timeout_ms", "max_bytes"] {
            assert!(keys.contains(&format!("sinks.splunk_hec.{k}")), "{k} missing in {keys:?}");
        }
        let plain = SplunkHecOptions { url: "http://splunk.example.com:8088".into(), ..good.clone() };
        assert!(plain.problems().iter().any(|p| !p.is_error && p.message.contains("unencrypted")));
        assert!(check_template("keycloak:{realm}").is_ok() && check_template("a{b").is_err() && check_template("a}b").is_err());
    }
}
