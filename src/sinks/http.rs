//! A generic HTTP sink: JSON (canonical, OCSF or ECS) to any collector or alert webhook, as NDJSON,
//! a JSON array, or one request per event; custom headers, bearer or basic authentication, gzip.
//! Several can be configured (`[[sinks.http]]`), each with its own route, so a team can post only
//! critical findings to an on-call webhook while a collector gets everything.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::encode::{json_records, JsonFormat};
use super::http_client::{self, SecretOptions};
use super::route::RouteFilter;
use super::tls::TlsOptions;
use super::{cut, BatchOptions, RetryOptions, SinkError, WriteReport};
use crate::config::Problem;
use crate::event::AuditEvent;

/// How records are put into request bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// One JSON record per line (`application/x-ndjson`).
    Ndjson,
    /// One JSON array per request.
    JsonArray,
    /// One request per record (`application/json`): for webhooks that take a single object.
    PerEvent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthStrategy {
    None,
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// HTTP basic authentication.
    Basic,
}

/// `[sinks.http.auth]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HttpAuth {
    pub strategy: AuthStrategy,
    /// Bearer token.
    pub token: SecretOptions,
    /// Basic authentication user.
    pub user: String,
    /// Basic authentication password.
    pub password: SecretOptions,
}

impl Default for HttpAuth {
    fn default() -> Self {
        HttpAuth { strategy: AuthStrategy::None, token: SecretOptions::from_env("KCAUDIT_HTTP_TOKEN"), user: String::new(), password: SecretOptions::from_env("KCAUDIT_HTTP_PASSWORD") }
    }
}

/// One `[[sinks.http]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSinkOptions {
    /// Name in metrics, logs and dead letters (unique among sinks).
    pub name: String,
    pub enabled: bool,
    pub url: String,
    /// `POST` or `PUT`.
    pub method: String,
    pub format: JsonFormat,
    pub encoding: Encoding,
    /// Extra headers (for secrets use `auth`, which reads them from the environment or a file).
    pub headers: BTreeMap<String, String>,
    pub auth: HttpAuth,
    pub gzip: bool,
    /// Most uncompressed bytes per request (a larger batch is split; a single larger record goes alone).
    pub max_bytes: usize,
    pub timeout_ms: u64,
    pub tls: TlsOptions,
    pub route: RouteFilter,
    pub batch: BatchOptions,
    pub retry: RetryOptions,
}

impl Default for HttpSinkOptions {
    fn default() -> Self {
        HttpSinkOptions {
            name: "http".into(),
            enabled: true,
            url: String::new(),
            method: "POST".into(),
            format: JsonFormat::Canonical,
            encoding: Encoding::Ndjson,
            headers: BTreeMap::new(),
            auth: HttpAuth::default(),
            gzip: false,
            max_bytes: 4 * 1024 * 1024,
            timeout_ms: 30_000,
            tls: TlsOptions::default(),
            route: RouteFilter::default(),
            batch: BatchOptions { max_events: 500, max_wait_ms: 200, queue_capacity: 4096 },
            retry: RetryOptions::default(),
        }
    }
}

impl HttpSinkOptions {
    pub fn problems(&self, index: usize) -> Vec<Problem> {
        let mut p = Vec::new();
        if !self.enabled {
            return p;
        }
        let err = |key: &str, message: String| Problem { key: format!("sinks.http[{index}].{key}"), message, is_error: true };
        match reqwest::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {
                if !u.username().is_empty() || u.password().is_some() {
                    p.push(err("url", "credentials in the URL would be logged; use [auth]".into()));
                }
            }
            Ok(u) => p.push(err("url", format!("scheme {} is not http or https", u.scheme()))),
            Err(e) => p.push(err("url", format!("{:?}: {e}", self.url))),
        }
        if !matches!(self.method.to_ascii_uppercase().as_str(), "POST" | "PUT") {
            p.push(err("method", format!("{} is not POST or PUT", self.method)));
        }
        for (k, v) in &self.headers {
            if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err() || reqwest::header::HeaderValue::from_str(v).is_err() {
                p.push(err("headers", format!("{k:?} is not a valid header")));
            }
            if k.eq_ignore_ascii_case("authorization") {
                p.push(err("headers", "put credentials in [auth], not in a plain header".into()));
            }
        }
        match self.auth.strategy {
            AuthStrategy::Bearer => {
                if let Err(e) = self.auth.token.read() {
                    p.push(err("auth.token", e));
                }
            }
            AuthStrategy::Basic => {
                if self.auth.user.is_empty() {
                    p.push(err("auth.user", "basic authentication needs a user".into()));
                }
                if let Err(e) = self.auth.password.read() {
                    p.push(err("auth.password", e));
                }
            }
            AuthStrategy::None => {}
        }
        if !self.tls.is_default() {
            if let Err(e) = self.tls.client_config() {
                p.push(err("tls", e));
            }
        }
        p
    }
}

/// Posts JSON records to an HTTP endpoint.
pub struct HttpSink {
    name: String,
    opts: HttpSinkOptions,
    client: reqwest::Client,
    method: reqwest::Method,
    headers: reqwest::header::HeaderMap,
}

impl HttpSink {
    pub fn new(opts: &HttpSinkOptions) -> anyhow::Result<HttpSink> {
        let problems: Vec<String> = opts.problems(0).iter().filter(|p| p.is_error).map(|p| p.to_string()).collect();
        anyhow::ensure!(problems.is_empty(), "invalid [[sinks.http]] {}: {}", opts.name, problems.join("; "));
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &opts.headers {
            headers.insert(reqwest::header::HeaderName::from_bytes(k.as_bytes())?, reqwest::header::HeaderValue::from_str(v)?);
        }
        let content_type = if opts.encoding == Encoding::Ndjson { "application/x-ndjson" } else { "application/json" };
        headers.insert(reqwest::header::CONTENT_TYPE, reqwest::header::HeaderValue::from_static(content_type));
        match opts.auth.strategy {
            AuthStrategy::Bearer => {
                let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", opts.auth.token.read().map_err(anyhow::Error::msg)?))?;
                v.set_sensitive(true);
                headers.insert(reqwest::header::AUTHORIZATION, v);
            }
            AuthStrategy::Basic => {
                use base64::Engine as _;
                let pw = opts.auth.password.read().map_err(anyhow::Error::msg)?;
                let mut v = reqwest::header::HeaderValue::from_str(&format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{}:{pw}", opts.auth.user))))?;
                v.set_sensitive(true);
                headers.insert(reqwest::header::AUTHORIZATION, v);
            }
            AuthStrategy::None => {}
        }
        if opts.gzip {
            headers.insert(reqwest::header::CONTENT_ENCODING, reqwest::header::HeaderValue::from_static("gzip"));
        }
        Ok(HttpSink {
            name: opts.name.clone(),
            client: http_client::client(&opts.tls, Duration::from_millis(opts.timeout_ms))?,
            method: reqwest::Method::from_bytes(opts.method.to_ascii_uppercase().as_bytes())?,
            headers,
            opts: opts.clone(),
        })
    }

    /// One request body for `records` (already serialised).
    fn body(&self, records: &[&str]) -> Vec<u8> {
        let mut b = Vec::with_capacity(records.iter().map(|r| r.len() + 1).sum::<usize>() + 2);
        match self.opts.encoding {
            Encoding::Ndjson => {
                for r in records {
                    b.extend_from_slice(r.as_bytes());
                    b.push(b'\n');
                }
            }
            Encoding::JsonArray | Encoding::PerEvent => {
                if self.opts.encoding == Encoding::JsonArray {
                    b.push(b'[');
                }
                for (i, r) in records.iter().enumerate() {
                    if i > 0 {
                        b.push(b',');
                    }
                    b.extend_from_slice(r.as_bytes());
                }
                if self.opts.encoding == Encoding::JsonArray {
                    b.push(b']');
                }
            }
        }
        if self.opts.gzip {
            use std::io::Write as _;
            let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let _ = z.write_all(&b);
            return z.finish().unwrap_or_default();
        }
        b
    }

    async fn send(&self, body: Vec<u8>) -> Result<(), SinkError> {
        let r = self.client.request(self.method.clone(), &self.opts.url).headers(self.headers.clone()).body(body).send().await.map_err(|e| http_client::request_error(&self.opts.url, &e))?;
        let status = r.status().as_u16();
        if r.status().is_success() {
            return Ok(());
        }
        let text = r.text().await.unwrap_or_default();
        Err(http_client::status_error(&self.opts.url, status, &text))
    }

    async fn write_batch(&mut self, events: &[Arc<AuditEvent>]) -> Result<WriteReport, SinkError> {
        // Every record of every event, remembering its event.
        let mut records: Vec<String> = Vec::new();
        let mut owner: Vec<usize> = Vec::new();
        for (i, e) in events.iter().enumerate() {
            for r in json_records(e, self.opts.format) {
                records.push(r);
                owner.push(i);
            }
        }
        let max_rows = if self.opts.encoding == Encoding::PerEvent { 1 } else { usize::MAX };
        let sizes: Vec<usize> = records.iter().map(|r| r.len() + 1).collect();
        let chunks = cut(&sizes, max_rows, self.opts.max_bytes);
        let mut report = WriteReport::default();
        let mut failed_events = std::collections::BTreeSet::new();
        for (n, range) in chunks.iter().enumerate() {
            let body = self.body(&records[range.clone()].iter().map(String::as_str).collect::<Vec<_>>());
            let Err(e) = self.send(body).await else { continue };
            let idx: std::collections::BTreeSet<usize> = range.clone().map(|k| owner[k]).collect();
            match e {
                SinkError::Transient(msg) if n == 0 && chunks.len() == 1 => return Err(SinkError::Transient(msg)),
                SinkError::Transient(msg) => {
                    failed_events.extend(idx);
                    report.error = Some(msg);
                    // The rest of the batch waits for the retry too (the endpoint is struggling).
                    for later in &chunks[n + 1..] {
                        failed_events.extend(later.clone().map(|k| owner[k]));
                    }
                    break;
                }
                SinkError::Permanent(msg) => {
                    for i in idx {
                        report.rejected.push((i, msg.clone()));
                    }
                }
            }
        }
        // An event whose records were refused is dead-lettered, not also retried.
        let rejected: std::collections::BTreeSet<usize> = report.rejected.iter().map(|(i, _)| *i).collect();
        report.retry = failed_events.into_iter().filter(|i| !rejected.contains(i)).collect();
        Ok(report)
    }
}

super::routed_sink!(HttpSink, |s: &HttpSink| {
    // The host only: a URL's path or query may carry a token.
    let host = reqwest::Url::parse(&s.opts.url).ok().and_then(|u| u.host_str().map(str::to_string));
    host.map(|h| vec![("server.address", h)]).unwrap_or_default()
});
