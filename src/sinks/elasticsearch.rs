//! The Elasticsearch / OpenSearch sink: ECS documents ([`crate::sinks::encode::ecs`]) into a data
//! stream through the `_bulk` API (`siem-and-detection.md` §1.2).
//!
//! - **Request**: `POST <url>/_bulk`, `Content-Type: application/x-ndjson`, one
//!   `{"create":{"_index":…,"_id":<event id>}}` action line and one document line per event, and a
//!   final newline. Data streams accept only `create`; the event id as `_id` makes a retried document
//!   a 409 instead of a copy. A batch larger than `max_bytes` (uncompressed) is cut into several
//!   requests; bodies are gzip-compressed unless `gzip = false`.
//! - **Whole-request answers**: no answer (connection refused, timeout) or 502/503/504 → the same
//!   request goes to the next URL at once (fail-over; every URL is tried once per write, and later
//!   writes start from the URL that answered), then the driver retries with backoff; 429, 408 and any
//!   other 5xx → retried with backoff (the cluster answered; another node would say the same); any
//!   other status (401 wrong credentials, 403, 404, 413, …) → the request's events are dead-lettered
//!   with the cluster's words. A 200 that is not a `_bulk` answer (a proxy's page) is permanent too.
//! - **Per item** (a 200 with `"errors":true`; items come back in request order): 200/201 delivered;
//!   409 `version_conflict_engine_exception` on a `create` = already indexed by an earlier attempt whose
//!   answer was lost → delivered; 429 (`es_rejected_execution_exception`) and 5xx → only those events
//!   are retried with backoff; any other item error (`mapper_parsing_exception`,
//!   `document_parsing_exception`, an `_id` that is too long, …) → that event is dead-lettered with the
//!   error type and reason.

use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::http_client::{self, SecretOptions};
use super::route::RouteFilter;
use super::tls::TlsOptions;
use super::{BatchOptions, RetryOptions, SinkError, WriteReport};
use crate::config::Problem;
use crate::event::{format_time, AuditEvent};
use crate::sinks::encode::ecs;

/// Default data stream: `<type>-<dataset>-<namespace>` as Elastic's data stream naming scheme wants it.
pub const DEFAULT_INDEX: &str = "logs-keycloak.token_exchange-default";
/// Default environment variable for the basic-auth password.
pub const DEFAULT_PASSWORD_ENV: &str = "KCAUDIT_ELASTICSEARCH_PASSWORD";
/// Default environment variable for the API key.
pub const DEFAULT_API_KEY_ENV: &str = "KCAUDIT_ELASTICSEARCH_API_KEY";
/// Elasticsearch refuses `_id`s longer than this many bytes.
pub const MAX_ID_BYTES: usize = 512;

/// How kcaudit authenticates to the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthStrategy {
    /// No `Authorization` header (a cluster without security, or a proxy that adds it).
    None,
    /// HTTP basic authentication with `user` and `password`.
    Basic,
    /// `Authorization: ApiKey <key>` with `api_key`.
    ApiKey,
}

/// `[sinks.elasticsearch.auth]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AuthOptions {
    /// `none`, `basic` or `api_key`.
    pub strategy: AuthStrategy,
    /// User name for `basic`.
    pub user: String,
    /// Password for `basic` (default: environment variable `KCAUDIT_ELASTICSEARCH_PASSWORD`).
    pub password: SecretOptions,
    /// API key for `api_key` (default: environment variable `KCAUDIT_ELASTICSEARCH_API_KEY`): the
    /// `encoded` value Elasticsearch returns when the key is created, or `<id>:<api_key>` (encoded by
    /// kcaudit).
    pub api_key: SecretOptions,
}

impl Default for AuthOptions {
    fn default() -> Self {
        AuthOptions {
            strategy: AuthStrategy::None,
            user: String::new(),
            password: SecretOptions::from_env(DEFAULT_PASSWORD_ENV),
            api_key: SecretOptions::from_env(DEFAULT_API_KEY_ENV),
        }
    }
}

impl AuthOptions {
    /// The `Authorization` header value, or why it cannot be built (the secret itself never appears).
    pub fn header(&self) -> Result<Option<String>, String> {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        match self.strategy {
            AuthStrategy::None => Ok(None),
            AuthStrategy::Basic => {
                if self.user.is_empty() {
                    return Err("basic authentication needs a user".into());
                }
                if self.user.contains(':') {
                    return Err("a basic-auth user name cannot contain ':'".into());
                }
                let password = self.password.read().map_err(|e| format!("password: {e}"))?;
                Ok(Some(format!("Basic {}", b64(&format!("{}:{password}", self.user)))))
            }
            AuthStrategy::ApiKey => {
                let key = self.api_key.read().map_err(|e| format!("api_key: {e}"))?;
                let key = key.trim();
                if key.contains(':') {
                    Ok(Some(format!("ApiKey {}", b64(key))))
                } else {
                    Ok(Some(format!("ApiKey {key}")))
                }
            }
        }
    }
}

/// `[sinks.elasticsearch]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ElasticsearchOptions {
    /// Write to Elasticsearch (or OpenSearch) at all.
    pub enabled: bool,
    /// Base URLs of the cluster's nodes (or of a load balancer), tried in order: when a node does not
    /// answer, times out or answers 502/503/504, the same request goes to the next URL at once, and
    /// later writes start from the node that answered.
    pub urls: Vec<String>,
    /// Data stream (or index) the documents are created in. Install
    /// `schemas/elasticsearch/index-template.json` first so the default name gets the ECS mappings.
    pub index: String,
    /// Ingest pipeline to run on every document (`?pipeline=`); unset = the index's default pipeline.
    /// `schemas/elasticsearch/ingest-pipeline.json` sets `event.ingested`.
    pub pipeline: Option<String>,
    /// Credentials.
    pub auth: AuthOptions,
    /// Compress request bodies with gzip (`Content-Encoding: gzip`).
    pub gzip: bool,
    /// Most uncompressed bytes per `_bulk` request; a larger batch is cut into several requests (a
    /// single larger document still goes alone). Elastic advises requests of a few MB to a few tens.
    pub max_bytes: usize,
    /// Time limit for one `_bulk` request (connect, send and the cluster's answer), in milliseconds.
    pub timeout_ms: u64,
    /// TLS for `https://` URLs beyond the defaults (public web PKI roots, no client certificate).
    pub tls: TlsOptions,
    /// Which events go to Elasticsearch (default: all).
    pub route: RouteFilter,
    pub batch: BatchOptions,
    pub retry: RetryOptions,
}

impl Default for ElasticsearchOptions {
    fn default() -> Self {
        ElasticsearchOptions {
            enabled: false,
            urls: vec!["http://127.0.0.1:9200".into()],
            index: DEFAULT_INDEX.into(),
            pipeline: None,
            auth: AuthOptions::default(),
            gzip: true,
            max_bytes: 10 * 1024 * 1024,
            timeout_ms: 30_000,
            tls: TlsOptions::default(),
            route: RouteFilter::default(),
            // `_bulk` likes a few thousand documents per request: up to 1000 events or half a second.
            batch: BatchOptions { max_events: 1000, max_wait_ms: 500, queue_capacity: 10_000 },
            retry: RetryOptions::default(),
        }
    }
}

/// Whether `s` is a valid Elasticsearch index / data stream name (lowercase, no `\ / * ? " < > | , #`,
/// space or `:`, not starting with `-`, `_` or `+`, not `.`/`..`, at most 255 bytes).
pub fn valid_index_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s != "."
        && s != ".."
        && !s.starts_with(['-', '_', '+'])
        && !s.chars().any(|c| c.is_uppercase() || matches!(c, '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ',' | '#' | ' ' | ':'))
}

/// `(type, dataset, namespace)` of a data stream named by Elastic's scheme.
pub fn data_stream_parts(index: &str) -> Option<(&str, &str, &str)> {
    let mut it = index.splitn(3, '-');
    let (t, d, n) = (it.next()?, it.next()?, it.next()?);
    (matches!(t, "logs" | "metrics" | "traces" | "synthetics" | "profiling") && !d.is_empty() && !n.is_empty() && !n.contains('-')).then_some((t, d, n))
}

impl ElasticsearchOptions {
    pub fn problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        if !self.enabled {
            return p;
        }
        let err = |key: &str, message: String| Problem { key: format!("sinks.elasticsearch.{key}"), message, is_error: true };
        if self.urls.is_empty() {
            p.push(err("urls", "list at least one http:// or https:// URL".into()));
        }
        for u in &self.urls {
            match reqwest::Url::parse(u) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => {
                    if !url.username().is_empty() || url.password().is_some() {
                        p.push(err("urls", format!("{}: put credentials in [sinks.elasticsearch.auth], not in the URL", redact_url(u))));
                    }
                }
                Ok(url) => p.push(err("urls", format!("{u}: scheme {} is not http or https", url.scheme()))),
                Err(e) => p.push(err("urls", format!("{u}: {e}"))),
            }
        }
        if !valid_index_name(&self.index) {
            p.push(err("index", format!("{:?} is not a valid index or data stream name (lowercase, no spaces or \\ / * ? \" < > | , # :)", self.index)));
        }
        if let Some(pl) = &self.pipeline {
            if pl.is_empty() || pl.contains(['/', '?', '#', '&', ' ']) {
                p.push(err("pipeline", format!("{pl:?} is not a pipeline id")));
            }
        }
        if self.max_bytes == 0 {
            p.push(err("max_bytes", "must be greater than 0".into()));
        }
        if self.timeout_ms == 0 {
            p.push(err("timeout_ms", "must be greater than 0".into()));
        }
        if let Err(e) = self.auth.header() {
            p.push(err("auth", e));
        }
        if !self.tls.is_default() {
            if let Err(e) = self.tls.client_config() {
                p.push(err("tls", e));
            }
        }
        p
    }
}

fn redact_url(u: &str) -> String {
    match reqwest::Url::parse(u) {
        Ok(mut url) => {
            let _ = url.set_password(None);
            let _ = url.set_username("");
            url.to_string()
        }
        Err(_) => "<url>".into(),
    }
}

/// One event's two NDJSON lines (each ending in `\n`), or why it cannot be sent.
pub fn bulk_lines(index: &str, e: &AuditEvent, now: chrono::DateTime<chrono::Utc>) -> Result<String, String> {
    if e.id.len() > MAX_ID_BYTES {
        return Err(format!("event id is {} bytes, longer than Elasticsearch's {MAX_ID_BYTES}-byte _id limit", e.id.len()));
    }
    // Written by hand to keep the documented key order (`_index`, then `_id`); the values are JSON
    // strings, escaped by serde.
    let quote = |s: &str| serde_json::to_string(s).map_err(|x| x.to_string());
    let mut line = format!("{{\"create\":{{\"_index\":{},\"_id\":{}}}}}\n", quote(index)?, quote(&e.id)?);
    line.push_str(&serde_json::to_string(&source(index, e, now)).map_err(|x| x.to_string())?);
    line.push('\n');
    Ok(line)
}

/// The document for `e` as it goes into `index`: the ECS document, the data stream's
/// `data_stream.*` / `event.dataset` when the name follows Elastic's scheme, and `@timestamp` = `now`
/// for events without any time (data streams refuse documents without one).
pub fn source(index: &str, e: &AuditEvent, now: chrono::DateTime<chrono::Utc>) -> Value {
    let mut doc = ecs::document(e);
    if let Value::Object(m) = &mut doc {
        if !m.contains_key("@timestamp") {
            m.insert("@timestamp".into(), Value::String(format_time(&now)));
        }
        if let Some((t, d, n)) = data_stream_parts(index) {
            m.insert("data_stream".into(), serde_json::json!({ "type": t, "dataset": d, "namespace": n }));
            if let Some(Value::Object(ev)) = m.get_mut("event") {
                ev.insert("dataset".into(), Value::String(d.to_string()));
            }
        }
    }
    doc
}

/// What happened to one document of a `_bulk` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemFate {
    Delivered,
    /// Retry later (429, 5xx), with the cluster's words.
    Retry(String),
    /// Refused for good, with the cluster's words.
    Rejected(String),
}

fn item_error(status: u64, err: Option<&Value>) -> String {
    let Some(err) = err else { return format!("HTTP {status}") };
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let mut text = format!("HTTP {status} {}: {}", s(err, "type"), s(err, "reason"));
    if let Some(c) = err.get("caused_by") {
        text.push_str(&format!(" (caused by {}: {})", s(c, "type"), s(c, "reason")));
    }
    text
}

/// Classify each item of a 200 `_bulk` response for a request of `n` documents.
pub fn classify_response(body: &[u8], n: usize) -> Result<Vec<ItemFate>, SinkError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        let preview: String = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        SinkError::Permanent(format!("the answer is not an Elasticsearch _bulk response ({e}): {preview}"))
    })?;
    let errors = v.get("errors").and_then(Value::as_bool);
    let items = v.get("items").and_then(Value::as_array);
    match (errors, items) {
        (Some(false), _) => return Ok(vec![ItemFate::Delivered; n]),
        (Some(true), Some(items)) if items.len() == n => {}
        (Some(true), Some(items)) => {
            return Err(SinkError::Transient(format!("_bulk answered {} items for {n} documents", items.len())));
        }
        _ => return Err(SinkError::Permanent(format!("the answer is not an Elasticsearch _bulk response: {}", preview_json(&v)))),
    }
    let items = items.expect("checked above");
    Ok(items
        .iter()
        .map(|item| {
            // `{"create": {...}}`: the one key is the action.
            let (action, r) = match item.as_object().and_then(|o| o.iter().next()) {
                Some((a, r)) => (a.as_str(), r),
                None => return ItemFate::Rejected("malformed _bulk item".into()),
            };
            let status = r.get("status").and_then(Value::as_u64).unwrap_or(0);
            let err = r.get("error");
            let etype = err.and_then(|e| e.get("type")).and_then(Value::as_str).unwrap_or("");
            match status {
                200 | 201 if err.is_none() => ItemFate::Delivered,
                409 if action == "create" && etype == "version_conflict_engine_exception" => ItemFate::Delivered,
                429 | 500..=599 => ItemFate::Retry(item_error(status, err)),
                _ => ItemFate::Rejected(item_error(status, err)),
            }
        })
        .collect())
}

fn preview_json(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 300 {
        format!("{}…", super::text::truncate_bytes(&s, 300))
    } else {
        s
    }
}

/// Writes ECS documents to Elasticsearch.
pub struct ElasticsearchSink {
    name: String,
    opts: ElasticsearchOptions,
    client: reqwest::Client,
    authorization: Option<String>,
    current: usize,
}

impl ElasticsearchSink {
    pub fn new(name: &str, opts: &ElasticsearchOptions) -> anyhow::Result<ElasticsearchSink> {
        let mut opts = opts.clone();
        opts.enabled = true;
        let problems: Vec<String> = opts.problems().iter().filter(|p| p.is_error).map(|p| p.to_string()).collect();
        if !problems.is_empty() {
            anyhow::bail!("invalid [sinks.elasticsearch]: {}", problems.join("; "));
        }
        let authorization = opts.auth.header().map_err(anyhow::Error::msg)?;
        let client = http_client::client(&opts.tls, Duration::from_millis(opts.timeout_ms))?;
        Ok(ElasticsearchSink { name: name.to_string(), opts, client, authorization, current: 0 })
    }

    fn endpoint(&self, base: &str) -> String {
        let mut url = format!("{}/_bulk", base.trim_end_matches('/'));
        if let Some(p) = &self.opts.pipeline {
            url.push_str("?pipeline=");
            url.push_str(&urlencoding::encode(p));
        }
        url
    }

    /// Send one `_bulk` body, failing over between URLs; returns the 200 answer's body.
    async fn send(&mut self, body: &[u8]) -> Result<Vec<u8>, SinkError> {
        let payload: Vec<u8> = if self.opts.gzip {
            use std::io::Write;
            let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
            enc.write_all(body).map_err(|e| SinkError::Transient(format!("gzip: {e}")))?;
            enc.finish().map_err(|e| SinkError::Transient(format!("gzip: {e}")))?
        } else {
            body.to_vec()
        };
        let payload = bytes::Bytes::from(payload);
        let n = self.opts.urls.len();
        let mut errors = Vec::new();
        for k in 0..n {
            let i = (self.current + k) % n;
            let url = self.endpoint(&self.opts.urls[i]);
            let mut req = self.client.post(&url).header(reqwest::header::CONTENT_TYPE, "application/x-ndjson").body(payload.clone());
            if self.opts.gzip {
                req = req.header(reqwest::header::CONTENT_ENCODING, "gzip");
            }
            if let Some(a) = &self.authorization {
                req = req.header(reqwest::header::AUTHORIZATION, a);
            }
            let shown = redact_url(&url);
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    errors.push(http_client::request_error(&shown, &e).to_string());
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let text = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    errors.push(http_client::request_error(&shown, &e).to_string());
                    continue;
                }
            };
            if (200..300).contains(&status) {
                self.current = i;
                return Ok(text.to_vec());
            }
            let err = http_client::status_error(&shown, status, &String::from_utf8_lossy(&text));
            if matches!(status, 502..=504) {
                // The node (or the proxy in front of it) is down: the next one may be up.
                errors.push(err.to_string());
                continue;
            }
            self.current = i;
            return Err(err);
        }
        // Next write starts from the following node.
        self.current = (self.current + 1) % n.max(1);
        let msg = errors.iter().map(|e| e.trim_start_matches("transient failure: ").to_string()).collect::<Vec<_>>().join("; ");
        Err(SinkError::Transient(if n > 1 { format!("no Elasticsearch URL answered: {msg}") } else { msg }))
    }

    async fn write_batch(&mut self, events: &[Arc<AuditEvent>]) -> Result<WriteReport, SinkError> {
        let now = chrono::Utc::now();
        let mut report = WriteReport::default();
        // (batch index, lines) of the events that can be sent.
        let mut lines: Vec<(usize, String)> = Vec::with_capacity(events.len());
        for (i, e) in events.iter().enumerate() {
            match bulk_lines(&self.opts.index, e, now) {
                Ok(l) => lines.push((i, l)),
                Err(why) => report.rejected.push((i, why)),
            }
        }
        let sizes: Vec<usize> = lines.iter().map(|(_, l)| l.len()).collect();
        let chunks = super::cut(&sizes, usize::MAX, self.opts.max_bytes);
        let mut whole_error: Option<SinkError> = None;
        for (c, range) in chunks.iter().enumerate() {
            let members: Vec<usize> = lines[range.clone()].iter().map(|(i, _)| *i).collect();
            let mut body = String::with_capacity(sizes[range.clone()].iter().sum());
            for (_, l) in &lines[range.clone()] {
                body.push_str(l);
            }
            let outcome = match self.send(body.as_bytes()).await {
                Ok(answer) => classify_response(&answer, members.len()),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(fates) => {
                    for (i, fate) in members.iter().zip(fates) {
                        match fate {
                            ItemFate::Delivered => {}
                            ItemFate::Retry(why) => {
                                report.retry.push(*i);
                                report.error.get_or_insert(why);
                            }
                            ItemFate::Rejected(why) => report.rejected.push((*i, why)),
                        }
                    }
                }
                Err(SinkError::Permanent(why)) => {
                    report.rejected.extend(members.iter().map(|i| (*i, why.clone())));
                    whole_error.get_or_insert(SinkError::Permanent(why));
                }
                Err(SinkError::Transient(why)) => {
                    // The cluster is busy or away: do not hammer it with the rest of the batch.
                    let rest: Vec<usize> = chunks[c..].iter().flat_map(|r| lines[r.clone()].iter().map(|(i, _)| *i)).collect();
                    report.retry.extend(rest);
                    report.error = Some(why.clone());
                    whole_error.get_or_insert(SinkError::Transient(why));
                    break;
                }
            }
        }
        // One request that failed as a whole: say so as a whole.
        if chunks.len() == 1 && report.rejected.len() + report.retry.len() == events.len() && events.len() == lines.len() {
            if let Some(e) = whole_error {
                return Err(e);
            }
        }
        Ok(report)
    }
}

super::routed_sink!(ElasticsearchSink);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_problems() {
        let o = ElasticsearchOptions::default();
        assert_eq!(o.index, "logs-keycloak.token_exchange-default");
        assert!(o.problems().is_empty(), "disabled: nothing to check");
        let on = ElasticsearchOptions { enabled: true, ..Default::default() };
        assert!(on.problems().is_empty(), "{:?}", on.problems());
        let bad = ElasticsearchOptions {
            enabled: true,
            urls: vec!["ftp://x".into(), "http://u:secret@h:9200".into()],
            index: "Logs-X".into(),
            max_bytes: 0,
            auth: AuthOptions { strategy: AuthStrategy::Basic, user: String::new(), ..Default::default() },
            ..Default::default()
        };
        let text: Vec<String> = bad.problems().iter().map(|p| p.to_string()).collect();
        let all = text.join("\n");
        for needle in ["scheme ftp", "not in the URL", "\"Logs-X\"", "max_bytes", "needs a user"] {
            assert!(all.contains(needle), "{needle}: {all}");
        }
        assert!(!all.contains("secret"), "{all}");
        let toml_text = "enabled = true\nurls = [\"https://a:9200\", \"https://b:9200\"]\n[auth]\nstrategy = \"api_key\"\napi_key = { file = \"/run/secrets/es\" }\n";
        let parsed: ElasticsearchOptions = toml::from_str(toml_text).unwrap();
        assert_eq!(parsed.auth.strategy, AuthStrategy::ApiKey);
        assert_eq!(parsed.batch, ElasticsearchOptions::default().batch);
        assert!(toml::from_str::<ElasticsearchOptions>("indx = \"x\"").is_err(), "unknown keys are refused");
    }

    #[test]
    fn authorization_headers() {
        std::env::set_var("KCAUDIT_ES_UNIT_PW", "pässword");
        let basic = AuthOptions { strategy: AuthStrategy::Basic, user: "kcaudit".into(), password: SecretOptions::from_env("KCAUDIT_ES_UNIT_PW"), ..Default::default() };
        use base64::Engine;
        let expect = base64::engine::general_purpose::STANDARD.encode("kcaudit:pässword");
        assert_eq!(basic.header().unwrap(), Some(format!("Basic {expect}")));
        std::env::set_var("KCAUDIT_ES_UNIT_KEY", "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==");
        let key = AuthOptions { strategy: AuthStrategy::ApiKey, api_key: SecretOptions::from_env("KCAUDIT_ES_UNIT_KEY"), ..Default::default() };
        assert_eq!(key.header().unwrap().unwrap(), "ApiKey VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==");
        std::env::set_var("KCAUDIT_ES_UNIT_KEY2", "VuaCfGcBCdbkQm-e5aOx:ui2lp2axTNmsyakw9tvNnw");
        let pair = AuthOptions { strategy: AuthStrategy::ApiKey, api_key: SecretOptions::from_env("KCAUDIT_ES_UNIT_KEY2"), ..Default::default() };
        assert_eq!(pair.header().unwrap(), key.header().unwrap(), "id:key is encoded like Elasticsearch's `encoded`");
        let missing = AuthOptions { strategy: AuthStrategy::ApiKey, api_key: SecretOptions::from_env("KCAUDIT_ES_UNIT_UNSET"), ..Default::default() };
        assert!(missing.header().unwrap_err().contains("KCAUDIT_ES_UNIT_UNSET"));
        assert_eq!(AuthOptions::default().header().unwrap(), None);
    }

    #[test]
    fn data_stream_names() {
        assert_eq!(data_stream_parts(DEFAULT_INDEX), Some(("logs", "keycloak.token_exchange", "default")));
        assert_eq!(data_stream_parts("kcaudit-events"), None);
        assert_eq!(data_stream_parts("logs-a-b-c"), None);
        assert!(valid_index_name(DEFAULT_INDEX));
        for bad in ["", "_x", "-x", "a b", "a,b", "A", "a:b", ".."] {
            assert!(!valid_index_name(bad), "{bad}");
        }
    }

    #[test]
    fn per_item_outcomes() {
        let body = serde_json::json!({"took": 3, "errors": true, "items": [
            {"create": {"_index": "x", "_id": "a", "status": 201, "result": "created"}},
            {"create": {"_index": "x", "_id": "b", "status": 409, "error": {"type": "version_conflict_engine_exception", "reason": "[b]: version conflict, document already exists (current version [1])"}}},
            {"create": {"_index": "x", "_id": "c", "status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "rejected execution of coordinating operation"}}},
            {"create": {"_index": "x", "_id": "d", "status": 400, "error": {"type": "document_parsing_exception", "reason": "[1:20] failed to parse field [source.ip] of type [ip]", "caused_by": {"type": "illegal_argument_exception", "reason": "'x' is not an IP string literal."}}}},
            {"create": {"_index": "x", "_id": "e", "status": 503, "error": {"type": "unavailable_shards_exception", "reason": "primary shard is not active"}}},
            {"index": {"_index": "x", "_id": "f", "status": 409, "error": {"type": "version_conflict_engine_exception", "reason": "conflict"}}}
        ]});
        let fates = classify_response(body.to_string().as_bytes(), 6).unwrap();
        assert_eq!(fates[0], ItemFate::Delivered);
        assert_eq!(fates[1], ItemFate::Delivered, "a create that conflicts was indexed by an earlier attempt");
        assert!(matches!(&fates[2], ItemFate::Retry(w) if w.contains("es_rejected_execution_exception")));
        assert_eq!(fates[3], ItemFate::Rejected("HTTP 400 document_parsing_exception: [1:20] failed to parse field [source.ip] of type [ip] (caused by illegal_argument_exception: 'x' is not an IP string literal.)".into()));
        assert!(matches!(&fates[4], ItemFate::Retry(_)));
        assert!(matches!(&fates[5], ItemFate::Rejected(_)), "only a create's conflict means 'already there'");
        assert_eq!(classify_response(br#"{"took":1,"errors":false,"items":[]}"#, 2).unwrap(), vec![ItemFate::Delivered; 2]);
        assert!(matches!(classify_response(b"<html>", 1), Err(SinkError::Permanent(_))));
        assert!(matches!(classify_response(br#"{"errors":true,"items":[]}"#, 1), Err(SinkError::Transient(_))));
    }
}
