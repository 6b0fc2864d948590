//! The ClickHouse sink: canonical events into `<database>.events` over HTTP with RowBinary, through
//! the official `clickhouse` crate.
//!
//! - **Batching** by time and count comes from the shared sink driver (`[sinks.clickhouse.batch]`);
//!   each batch is then cut into INSERTs by rows and bytes (`max_rows_per_insert`,
//!   `max_bytes_per_insert`). We cut the inserts ourselves rather than let the crate's `Inserter` do it
//!   because each INSERT carries an `insert_deduplication_token` derived from the event ids it holds,
//!   and that needs the INSERT's content known before it starts.
//! - **No duplicates from retries**: the token makes the server drop a repeated INSERT (and keeps it
//!   out of the materialized views); the table is a ReplacingMergeTree keyed by event id, so copies from
//!   any other at-least-once path (Kafka redelivery, two instances) collapse at merge time too.
//! - **Errors** (see [`error`]): connection errors, timeouts, 5xx and busy-server codes are retried with
//!   backoff and jitter by the driver, after failing over to the next replica URL; authentication
//!   failures, a missing table, a type mismatch are permanent: the INSERT's events go to the
//!   dead-letter store with the server's message (and, best effort, to `<database>.dead_letters`), and
//!   the source learns they were dead-lettered, not delivered.
//! - **Server capabilities** are probed once per replica (`SELECT version()`): schema validation
//!   (RowBinaryWithNamesAndTypes) and deduplication tokens are used where the server has them.

pub mod config;
pub mod error;
pub mod row;
pub mod schema;

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use self::config::{Auto, ClickHouseOptions};
use self::error::{classify, Classified, AUTH_CODES};
use self::row::{DeadLetterRow, EventRow};
use super::{cut, BoxFuture, Sink, SinkError, WriteReport};
use crate::event::AuditEvent;

/// What a replica's server can do, learned from its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    pub version: String,
    pub validation: bool,
    pub deduplication_token: bool,
    /// The server has the `Map` type (21.8+); older ones get `details` as a JSON string.
    pub map_type: bool,
}

/// `(major, minor)` of a version string such as `23.8.2.7` or `18.16.1`.
pub fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut it = v.trim().split('.');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

impl Capabilities {
    pub fn from_version(version: &str, opts: &ClickHouseOptions) -> Capabilities {
        let v = parse_version(version).unwrap_or((0, 0));
        let decide = |a: Auto, min: (u32, u32)| match a {
            Auto::On => true,
            Auto::Off => false,
            Auto::Auto => v >= min,
        };
        Capabilities {
            version: version.trim().to_string(),
            validation: decide(opts.validation, (23, 8)),
            deduplication_token: decide(opts.deduplication_token, (22, 8)),
            map_type: v >= (21, 8),
        }
    }
}

struct Replica {
    url: String,
    ready: Option<(clickhouse::Client, Capabilities)>,
}

/// The HTTP client: the crate's defaults (keep-alive, short idle pool, rustls with ring), plus the
/// configured CA and client certificate, plus TCP_NODELAY. Without NODELAY every INSERT stalled about
/// 40 ms: the request body's last small chunk waited (Nagle) for the server's delayed ACK of the
/// previous segment, capping one connection at ~25 inserts/s whatever the batch size (found with
/// `cargo bench --bench steps -- clickhouse`: 57 ms per 1,000-row insert before, see issue #9).
fn http_client(tls: &config::TlsOptions) -> Result<clickhouse::Client, String> {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_keepalive(Some(Duration::from_secs(60)));
    http.set_nodelay(true);
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls.client_config()?).https_or_http().enable_http1().wrap_connector(http);
    Ok(clickhouse::Client::with_http_client(hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(2)).build(connector)))
}

/// Build a client for one URL (shared with `kcaudit clickhouse migrate`). The TLS options were
/// checked when the config was loaded; if they fail here anyway the default client is used and the
/// TLS handshake fails visibly.
pub fn client_for(opts: &ClickHouseOptions, url: &str, password: Option<&str>, validation: bool) -> clickhouse::Client {
    let base = match http_client(&opts.tls) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "Invalid [sinks.clickhouse.tls]; using the default TLS settings.");
            clickhouse::Client::default()
        }
    };
    let mut c = base
        .with_url(url)
        .with_user(&opts.user)
        .with_validation(validation)
        .with_compression(match opts.compression {
            config::Compression::Lz4 => clickhouse::Compression::Lz4,
            config::Compression::None => clickhouse::Compression::None,
        });
    if let Some(p) = password {
        c = c.with_password(p);
    }
    c
}

/// Apply the pending migrations through the first URL that answers (`kcaudit clickhouse migrate`, and
/// `migrate_on_start`).
pub async fn migrate(opts: &ClickHouseOptions) -> anyhow::Result<(String, schema::MigrateReport)> {
    let password = opts.password().map_err(anyhow::Error::msg)?;
    let params = schema::SchemaParams { database: opts.database.clone(), options: opts.schema.clone() };
    let mut errors = Vec::new();
    for url in &opts.urls {
        let client = client_for(opts, url, password.as_deref(), false);
        match client.query("SELECT version()").fetch_one::<String>().await {
            Ok(_) => return Ok((url.clone(), schema::migrate(&client, &params, &instance_name()).await?)),
            Err(e) => errors.push(format!("{url}: {}", classify(&e).message)),
        }
    }
    anyhow::bail!("no ClickHouse URL answered: {}", errors.join("; "))
}

/// Writes events to ClickHouse.
pub struct ClickHouseSink {
    name: String,
    opts: ClickHouseOptions,
    password: Option<String>,
    replicas: Vec<Replica>,
    current: usize,
    table: String,
    instance: String,
    /// The JSON of shared enrichment parts, kept across batches (see [`crate::json_line::Memo`]).
    memo: crate::json_line::Memo,
}

/// The token for one INSERT: a digest of the target and of every event id it carries, in order. The
/// same events retried give the same token; any other content gives another.
pub fn deduplication_token(table: &str, ids: &mut dyn Iterator<Item = &str>) -> String {
    let mut h = Sha256::new();
    h.update(table.as_bytes());
    for id in ids {
        h.update([0u8]);
        h.update(id.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// This machine's name (HOSTNAME, else the kernel's), for dead letters and syslog headers.
pub fn instance_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|s| s.trim().to_string()))
        .unwrap_or_else(|| "kcaudit".into())
}

impl ClickHouseSink {
    pub fn new(name: &str, opts: &ClickHouseOptions) -> anyhow::Result<ClickHouseSink> {
        let problems: Vec<String> = opts.problems().iter().filter(|p| p.is_error).map(|p| p.to_string()).collect();
        if !problems.is_empty() {
            anyhow::bail!("invalid [sinks.clickhouse]: {}", problems.join("; "));
        }
        let password = opts.password().map_err(anyhow::Error::msg)?;
        Ok(ClickHouseSink {
            name: name.to_string(),
            table: format!("{}.{}", opts.database, opts.table),
            replicas: opts.urls.iter().map(|u| Replica { url: u.clone(), ready: None }).collect(),
            opts: opts.clone(),
            password,
            current: 0,
            instance: instance_name(),
            memo: Default::default(),
        })
    }

    /// The client for the current replica, probing its version on first use.
    async fn client(&mut self) -> Result<(clickhouse::Client, Capabilities), Classified> {
        let r = &mut self.replicas[self.current];
        if let Some((c, caps)) = &r.ready {
            return Ok((c.clone(), caps.clone()));
        }
        let probe = client_for(&self.opts, &r.url, self.password.as_deref(), false);
        let version = tokio::time::timeout(Duration::from_millis(self.opts.timeout_ms), probe.query("SELECT version()").fetch_one::<String>())
            .await
            .map_err(|_| Classified { code: None, transient: true, fail_over: true, message: format!("{}: no answer to SELECT version() in time", r.url) })?
            .map_err(|e| {
                let mut c = classify(&e);
                c.message = format!("{}: {}", r.url, c.message);
                c
            })?;
        let caps = Capabilities::from_version(&version, &self.opts);
        tracing::info!(sink = %self.name, url = %r.url, version = %caps.version, validation = caps.validation, deduplication_token = caps.deduplication_token, "Connected to ClickHouse.");
        // The crate quotes a table name as one identifier, so `db.table` must be split: the database
        // goes on the client, the bare table name into the INSERT.
        let client = client_for(&self.opts, &r.url, self.password.as_deref(), caps.validation).with_database(&self.opts.database);
        r.ready = Some((client.clone(), caps.clone()));
        Ok((client, caps))
    }

    /// Move to the next replica (and forget what we knew of the failed one: it may come back upgraded).
    fn fail_over(&mut self) {
        self.replicas[self.current].ready = None;
        if self.replicas.len() > 1 {
            self.current = (self.current + 1) % self.replicas.len();
            tracing::warn!(sink = %self.name, url = %self.replicas[self.current].url, "Failing over to the next ClickHouse URL.");
        }
    }

    /// One INSERT of `rows`, on whichever replica answers; tries each replica at most once.
    async fn insert(&mut self, rows: &mut [EventRow<'_>]) -> Result<(), Classified> {
        let mut last = None;
        for _ in 0..self.replicas.len() {
            let rows = &mut *rows;
            let outcome = async {
                let (client, caps) = self.client().await?;
                // The encoding follows the replica that takes this insert (they may differ in
                // version during an upgrade): RowBinary has no types on the wire to catch a mismatch.
                for r in rows.iter_mut() {
                    r.details.as_json = !caps.map_type;
                }
                let timeout = Some(Duration::from_millis(self.opts.timeout_ms));
                let mut insert = client.insert::<EventRow<'_>>(&self.opts.table).await.map_err(|e| classify(&e))?.with_timeouts(timeout, timeout);
                if caps.deduplication_token {
                    let token = deduplication_token(&self.table, &mut rows.iter().map(|r| r.event_id));
                    insert = insert.with_setting("insert_deduplication_token", token);
                }
                for row in rows {
                    insert.write(row).await.map_err(|e| classify(&e))?;
                }
                insert.end().await.map_err(|e| classify(&e))
            }
            .await;
            match outcome {
                Ok(()) => return Ok(()),
                Err(c) if c.fail_over && self.replicas.len() > 1 => {
                    tracing::warn!(sink = %self.name, url = %self.replicas[self.current].url, error = %c.message, "ClickHouse replica failed.");
                    self.fail_over();
                    last = Some(c);
                }
                Err(c) => {
                    if c.fail_over {
                        self.fail_over();
                    }
                    return Err(c);
                }
            }
        }
        Err(last.unwrap_or(Classified { code: None, transient: true, fail_over: true, message: "no ClickHouse URL configured".into() }))
    }

    /// Best effort: put refused events next to the data, in `<database>.dead_letters`.
    async fn dead_letter_rows(&mut self, events: &[Arc<AuditEvent>], rows: &[EventRow<'_>], why: &Classified) {
        if !self.opts.dead_letter_table || why.code.is_some_and(|c| AUTH_CODES.contains(&c)) || why.code == Some(81) {
            return; // the credentials or the database are the problem: this insert would fail the same way
        }
        let Ok((client, _)) = self.client().await else { return };
        let now = now_millis();
        let result = async {
            let mut insert = client.insert::<DeadLetterRow<'_>>("dead_letters").await?;
            for (e, r) in events.iter().zip(rows) {
                insert
                    .write(&DeadLetterRow {
                        dead_lettered_at: now,
                        instance: &self.instance,
                        sink: &self.name,
                        reason: &why.message,
                        error_code: why.code.unwrap_or(0),
                        event_id: &e.id,
                        event_time: r.event_time,
                        realm: r.realm,
                        client_id: r.client_id,
                        event_json: &r.event_json,
                    })
                    .await?;
            }
            insert.end().await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(sink = %self.name, error = %e, "Could not also record the refused events in the ClickHouse dead_letters table (they are in the local dead-letter store).");
        }
    }

    async fn write_batch(&mut self, events: &[Arc<AuditEvent>]) -> Result<WriteReport, SinkError> {
        let now = now_millis();
        let memo = &mut self.memo;
        let mut rows: Vec<EventRow<'_>> = events.iter().map(|e| EventRow::with_memo(e, now, memo)).collect();
        let sizes: Vec<usize> = rows.iter().map(EventRow::approx_bytes).collect();
        let chunks = cut(&sizes, self.opts.max_rows_per_insert, self.opts.max_bytes_per_insert);
        let mut report = WriteReport::default();
        for (n, range) in chunks.iter().enumerate() {
            let Err(c) = self.insert(&mut rows[range.clone()]).await else { continue };
            if n == 0 && c.transient {
                return Err(c.into_sink_error()); // nothing written yet: the driver retries the whole batch
            }
            if c.code.is_some_and(|code| AUTH_CODES.contains(&code)) {
                tracing::error!(sink = %self.name, error = %c.message, "ClickHouse refused kcaudit's credentials or grants: events are being dead-lettered until this is fixed.");
            }
            if c.transient {
                report.retry.extend(range.clone());
            } else {
                self.dead_letter_rows(&events[range.clone()], &rows[range.clone()], &c).await;
                report.rejected.extend(range.clone().map(|i| (i, format!("ClickHouse refused the insert: {}", c.message))));
            }
            // Later inserts of this batch are retried by the driver (a permanent error is most likely
            // the table's, so they will be refused with the same reason on the next attempt).
            for later in &chunks[n + 1..] {
                report.retry.extend(later.clone());
            }
            report.error = Some(c.message);
            break;
        }
        Ok(report)
    }
}

impl Sink for ClickHouseSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn otel_attributes(&self) -> Vec<(&'static str, String)> {
        vec![("db.system", "clickhouse".into()), ("db.system.name", "clickhouse".into()), ("db.collection.name", self.table.clone())]
    }

    fn write<'a>(&'a mut self, events: &'a [Arc<AuditEvent>]) -> BoxFuture<'a, Result<WriteReport, SinkError>> {
        Box::pin(self.write_batch(events))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_depends_on_every_id_and_the_table() {
        let t = |table: &str, ids: &[&str]| deduplication_token(table, &mut ids.iter().copied());
        assert_eq!(t("a.events", &["1", "2"]), t("a.events", &["1", "2"]));
        assert_ne!(t("a.events", &["1", "2"]), t("a.events", &["1", "3"]));
        assert_ne!(t("a.events", &["1", "2"]), t("a.events", &["12"]));
        assert_ne!(t("a.events", &["1"]), t("b.events", &["1"]));
    }

    #[test]
    fn capabilities_follow_the_server_version() {
        let o = ClickHouseOptions::default();
        let old = Capabilities::from_version("18.16.1\n", &o);
        assert!(!old.validation && !old.deduplication_token && !old.map_type);
        let lts = Capabilities::from_version("23.8.16.40", &o);
        assert!(lts.validation && lts.deduplication_token);
        let forced = Capabilities::from_version("26.9.2.1", &ClickHouseOptions { validation: Auto::Off, ..o });
        assert!(!forced.validation && forced.deduplication_token);
    }
}
