//! `[sinks.clickhouse]`: where and how events are written to ClickHouse.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::Problem;
pub use crate::sinks::tls::TlsOptions;
use crate::sinks::{BatchOptions, RetryOptions};

/// Default environment variable for the ClickHouse password.
pub const DEFAULT_PASSWORD_ENV: &str = "KCAUDIT_CLICKHOUSE_PASSWORD";

/// A three-way switch: decide from the server's version, or force it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Auto {
    /// Decided from `SELECT version()` on first contact.
    Auto,
    On,
    Off,
}

/// Transport compression of the insert bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// ClickHouse's native LZ4 blocks (cheap on both ends; the default).
    Lz4,
    None,
}

/// `[sinks.clickhouse]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseOptions {
    /// Write to ClickHouse at all.
    pub enabled: bool,
    /// HTTP(S) endpoints of the replicas, tried in order; on a connection error, a timeout or a 5xx the
    /// next write goes to the next URL (failover), and every URL is tried before a batch counts as
    /// failed once. `https://` uses TLS with the public web PKI roots.
    pub urls: Vec<String>,
    /// Database holding the kcaudit tables (`kcaudit clickhouse migrate` creates it).
    pub database: String,
    /// Events table.
    pub table: String,
    pub user: String,
    /// Environment variable holding the password (default `KCAUDIT_CLICKHOUSE_PASSWORD`). An unset
    /// variable means "no password" (ClickHouse's `default` user on a laptop).
    pub password_env: Option<String>,
    /// File holding the password (trailing newline ignored); wins over `password_env`.
    pub password_file: Option<PathBuf>,
    /// Transport compression.
    pub compression: Compression,
    /// Send RowBinaryWithNamesAndTypes so the client checks every column's type against the table
    /// before sending (a type mismatch becomes a clear dead-letter reason instead of garbage). `auto`
    /// turns it on for servers 23.8 and newer, off for older ones that lack the format.
    pub validation: Auto,
    /// Tag each insert with `insert_deduplication_token` (a hash of the event ids it carries), so a
    /// retried insert is dropped by the server and never reaches the materialized views twice. `auto`:
    /// on for servers 22.8 and newer.
    pub deduplication_token: Auto,
    /// Most rows per INSERT statement (a batch larger than this is split).
    pub max_rows_per_insert: usize,
    /// Most uncompressed bytes per INSERT statement (estimated from the row sizes).
    pub max_bytes_per_insert: usize,
    /// Time limit for one INSERT (connect, send and the server's answer), in milliseconds.
    pub timeout_ms: u64,
    /// Also write refused batches into `<database>.dead_letters` (best effort; the local dead-letter
    /// store always has them).
    pub dead_letter_table: bool,
    /// Run the migrations when kcaudit starts (`kcaudit clickhouse migrate` does the same by hand).
    pub migrate_on_start: bool,
    /// TLS for `https://` URLs beyond the defaults (public web PKI roots, no client certificate).
    pub tls: TlsOptions,
    /// Schema options used by the migrations.
    pub schema: SchemaOptions,
    pub batch: BatchOptions,
    pub retry: RetryOptions,
}

impl Default for ClickHouseOptions {
    fn default() -> Self {
        ClickHouseOptions {
            enabled: false,
            urls: vec!["http://127.0.0.1:8123".into()],
            database: "kcaudit".into(),
            table: "events".into(),
            user: "default".into(),
            password_env: Some(DEFAULT_PASSWORD_ENV.into()),
            password_file: None,
            compression: Compression::Lz4,
            validation: Auto::Auto,
            deduplication_token: Auto::Auto,
            max_rows_per_insert: 100_000,
            max_bytes_per_insert: 32 * 1024 * 1024,
            timeout_ms: 30_000,
            dead_letter_table: true,
            migrate_on_start: false,
            tls: TlsOptions::default(),
            schema: SchemaOptions::default(),
            // ClickHouse prefers few large inserts (each one is a part to merge): up to 10k events or
            // one second, whichever comes first.
            batch: BatchOptions { max_events: 10_000, max_wait_ms: 1000, queue_capacity: 20_000 },
            retry: RetryOptions::default(),
        }
    }
}

/// `[sinks.clickhouse.schema]`: parameters of the DDL in `schemas/clickhouse/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SchemaOptions {
    /// Days events and findings are kept (TTL on the event time); 0 keeps them forever. Mind that a
    /// replay of old recordings is subject to it too.
    pub ttl_days: u32,
    /// Days the per-client hourly aggregates are kept; 0 = forever.
    pub hourly_ttl_days: u32,
    /// Days rows of the dead-letter table are kept; 0 = forever.
    pub dead_letter_ttl_days: u32,
    /// Cluster name for `ON CLUSTER` DDL (empty: a single server).
    pub cluster: String,
    /// Use Replicated* engines (with the server's `default_replica_path` / `{shard}` / `{replica}` macros).
    pub replicated: bool,
}

impl Default for SchemaOptions {
    fn default() -> Self {
        SchemaOptions { ttl_days: 395, hourly_ttl_days: 0, dead_letter_ttl_days: 90, cluster: String::new(), replicated: false }
    }
}

impl ClickHouseOptions {
    /// The password, if one is configured (file first, then the environment variable).
    pub fn password(&self) -> Result<Option<String>, String> {
        if let Some(path) = &self.password_file {
            let bytes = crate::config::read_secret(Some(path), None, None)?;
            return String::from_utf8(bytes).map(Some).map_err(|_| format!("{} is not UTF-8", path.display()));
        }
        match self.password_env.as_deref() {
            Some(var) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(Some(v)),
                _ => Ok(None),
            },
            None => Ok(None),
        }
    }

    pub fn problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let err = |key: &str, message: String| Problem { key: format!("sinks.clickhouse.{key}"), message, is_error: true };
        // Schema settings matter to `kcaudit schema clickhouse` and `migrate` even with the sink off.
        for (key, days) in [("schema.ttl_days", self.schema.ttl_days), ("schema.hourly_ttl_days", self.schema.hourly_ttl_days), ("schema.dead_letter_ttl_days", self.schema.dead_letter_ttl_days)] {
            // TTL expressions are DateTime (32-bit, until 2106): a longer TTL wraps around and
            // expires every row at once.
            if days > 20_000 {
                p.push(err(key, format!("{days} days is past ClickHouse's DateTime range; use at most 20000, or 0 to keep rows forever")));
            }
        }
        if !self.enabled {
            return p;
        }
        if self.urls.is_empty() {
            p.push(err("urls", "list at least one http:// or https:// URL".into()));
        }
        for u in &self.urls {
            match reqwest::Url::parse(u) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => {}
                Ok(url) => p.push(err("urls", format!("{u}: scheme {} is not http or https", url.scheme()))),
                Err(e) => p.push(err("urls", format!("{u}: {e}"))),
            }
        }
        for (key, v) in [("database", &self.database), ("table", &self.table)] {
            if !is_identifier(v) {
                p.push(err(key, format!("{v:?} is not a plain identifier (letters, digits, underscore)")));
            }
        }
        if !self.schema.cluster.is_empty() && !is_identifier(&self.schema.cluster) {
            p.push(err("schema.cluster", format!("{:?} is not a plain identifier", self.schema.cluster)));
        }
        if self.max_rows_per_insert == 0 || self.max_bytes_per_insert == 0 {
            p.push(err("max_rows_per_insert", "limits must be greater than 0".into()));
        }
        if let Err(e) = self.password() {
            p.push(err("password_file", e));
        }
        if !self.tls.is_default() {
            if let Err(e) = self.tls.client_config() {
                p.push(err("tls", e));
            }
        }
        p
    }
}

/// Names kcaudit splices into SQL must be plain identifiers: no quoting games.
pub fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') && !s.as_bytes()[0].is_ascii_digit()
}
