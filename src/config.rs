//! Configuration: one TOML file, every option defaulted, unknown keys refused.
//!
//! `kcaudit serve` runs with no file at all (webhook on 127.0.0.1:8787, audit log and dead letters under
//! `./kcaudit-data/`). `--config FILE` loads a file; `--set KEY=VALUE` (dotted path, repeatable)
//! overrides any key after the file is read, and values parse as TOML (`--set dedup.enabled=false`,
//! `--set webhook.listen=0.0.0.0:8787`), falling back to a plain string. Secrets are read from
//! environment variables or files (`secret_env`, `secret_file`), never required inline. The annotated
//! reference is `deploy/kcaudit.example.toml`; `kcaudit schema config` prints the JSON Schema.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::decode::DecodeOptions;
use crate::detect::DetectOptions;
use crate::enrich::EnrichOptions;
use crate::keycloak_api::{AdminApi, AdminApiOptions};
use crate::pipeline::{DedupOptions, PipelineOptions};
use crate::sinks::clickhouse::config::ClickHouseOptions;
use crate::sinks::file::AuditLogOptions;
use crate::sinks::{BatchOptions, RetryOptions};
use crate::sources::admin_poll::PollOptions;
use crate::sources::webhook::config::WebhookOptions;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This instance's job: `all` (one process does everything), `edge` (webhooks in, normalised
    /// events out to `[sinks.kafka]`) or `worker` (`[kafka]` in, enrichment, per-partition detection,
    /// every other sink). See `docs/scale-out.md`.
    pub role: Role,
    /// Directory for the audit log and the dead-letter store (relative paths below resolve here).
    pub data_dir: PathBuf,
    pub log: LogOptions,
    /// OpenTelemetry export (traces and metrics over OTLP); off until an endpoint is set.
    pub telemetry: crate::telemetry::TelemetryOptions,
    pub webhook: WebhookOptions,
    pub decode: DecodeOptions,
    pub enrich: EnrichOptions,
    pub admin_api: AdminApiOptions,
    pub poll: PollOptions,
    pub kafka: crate::sources::kafka::KafkaSourceOptions,
    pub detect: DetectOptions,
    pub dedup: DedupOptions,
    pub pipeline: PipelineOptions,
    pub dead_letter: DeadLetterOptions,
    /// The durable ingest spool between the webhook and the sinks.
    pub spool: crate::spool::SpoolOptions,
    pub sinks: SinksOptions,
    /// Hot reload: SIGHUP always re-reads the configuration; `watch` re-reads it when the file changes.
    pub reload: crate::reload::ReloadOptions,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            role: Role::All,
            data_dir: PathBuf::from("kcaudit-data"),
            log: LogOptions::default(),
            telemetry: Default::default(),
            webhook: WebhookOptions::default(),
            decode: DecodeOptions::default(),
            enrich: EnrichOptions::default(),
            admin_api: AdminApiOptions::default(),
            poll: PollOptions::default(),
            kafka: Default::default(),
            detect: DetectOptions::default(),
            dedup: DedupOptions::default(),
            pipeline: PipelineOptions::default(),
            dead_letter: DeadLetterOptions::default(),
            spool: Default::default(),
            sinks: SinksOptions::default(),
            reload: Default::default(),
        }
    }
}

/// An instance's job in a scaled-out deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sources, enrichment, detection and every sink in one process.
    #[default]
    All,
    /// Takes webhooks (and polled admin events), validates and normalises them, and publishes the
    /// events to `[sinks.kafka]` keyed by realm and exchanger, answering the sender only once Kafka
    /// has them. No enrichment, no detection.
    Edge,
    /// Consumes `[kafka]`, enriches, detects with one state per owned partition (kept in the
    /// compacted `kafka.state_topic`), and writes to the sinks. Its HTTP listener serves health and
    /// metrics only.
    Worker,
}

/// `[log]`: kcaudit's own diagnostics (on stderr).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LogOptions {
    /// `auto` (human-readable on a terminal, JSON otherwise), `human` or `json`.
    pub format: LogFormat,
    /// A tracing filter: `info`, `debug`, `kcaudit=debug,tower_http=info`, ... (`RUST_LOG` overrides).
    pub level: String,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions { format: LogFormat::Auto, level: "info".into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Auto,
    Human,
    Json,
}

/// `[dead_letter]`: the dead-letter store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterOptions {
    /// JSON-lines file; relative paths are under `data_dir`.
    pub path: PathBuf,
    /// Publish every dead letter to a Kafka topic too (the shared copy when disks are ephemeral).
    pub kafka: crate::dead_letter::DeadLetterTopicOptions,
}

impl Default for DeadLetterOptions {
    fn default() -> Self {
        DeadLetterOptions { path: PathBuf::from("dead-letter.jsonl"), kafka: Default::default() }
    }
}

/// `[sinks]`: where events go.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SinksOptions {
    pub audit_log: AuditLogOptions,
    pub stdout: StdoutOptions,
    pub clickhouse: ClickHouseOptions,
    pub splunk_hec: crate::sinks::splunk_hec::SplunkHecOptions,
    pub syslog: crate::sinks::syslog::SyslogOptions,
    pub elasticsearch: crate::sinks::elasticsearch::ElasticsearchOptions,
    pub sentinel: crate::sinks::sentinel::SentinelOptions,
    pub kafka: crate::sinks::kafka::KafkaSinkOptions,
    /// `[[sinks.http]]`: any number of generic HTTP destinations.
    pub http: Vec<crate::sinks::http::HttpSinkOptions>,
    /// `[sinks.blackhole]`: discards every event (benchmarks, dry runs).
    pub blackhole: crate::sinks::blackhole::BlackholeOptions,
}

impl SinksOptions {
    /// Whether any sink is enabled.
    pub fn any_enabled(&self) -> bool {
        self.audit_log.enabled || self.stdout.enabled || self.clickhouse.enabled || self.splunk_hec.enabled || self.syslog.enabled || self.elasticsearch.enabled || self.sentinel.enabled || self.kafka.enabled || self.http.iter().any(|h| h.enabled) || self.blackhole.enabled
    }
}

/// `[sinks.stdout]`: events as JSON lines on standard output.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StdoutOptions {
    pub enabled: bool,
    /// `canonical` (kcaudit's event), `ocsf` or `ecs`.
    pub format: crate::sinks::encode::JsonFormat,
    pub batch: BatchOptions,
    pub retry: RetryOptions,
}

/// A configuration problem found by loading or by `kcaudit validate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The dotted key it concerns (empty for the file as a whole).
    pub key: String,
    pub message: String,
    /// Warnings do not stop kcaudit; errors do.
    pub is_error: bool,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let level = if self.is_error { "error" } else { "warning" };
        if self.key.is_empty() {
            write!(f, "{level}: {}", self.message)
        } else {
            write!(f, "{level}: {}: {}", self.key, self.message)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("invalid --set {arg:?}: {message}")]
    Set { arg: String, message: String },
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl Config {
    /// Load defaults, then the file (if any), then each `--set`; refuse unknown keys and bad values.
    pub fn load(file: Option<&Path>, sets: &[String]) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
                toml::from_str::<toml::Table>(&text).map_err(|e| ConfigError::Syntax { path: path.into(), message: e.to_string() })?
            }
            None => toml::Table::new(),
        };
        for arg in sets {
            apply_set(&mut table, arg)?;
        }
        complete_sink_batches(&mut table);
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            let message = e.into_inner().to_string();
            let key = if key == "." { String::new() } else { key };
            ConfigError::Invalid(vec![Problem { key, message, is_error: true }])
        })?;
        Ok(config)
    }

    /// Semantic checks beyond types: addresses, time zones, secrets, unsafe combinations.
    pub fn problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        if let Err(e) = self.decode.time_zone() {
            p.push(Problem { key: "decode.log_time_zone".into(), message: e, is_error: true });
        }
        for (key, v) in [
            ("decode.max_details", self.decode.max_details),
            ("decode.max_field_bytes", self.decode.max_field_bytes),
            ("decode.max_record_bytes", self.decode.max_record_bytes),
            ("webhook.max_body_bytes", self.webhook.max_body_bytes),
            ("dedup.max_entries", self.dedup.max_entries),
        ] {
            if v == 0 {
                p.push(Problem { key: key.into(), message: "must be greater than 0".into(), is_error: true });
            }
        }
        if self.data_dir.is_file() {
            p.push(Problem { key: "data_dir".into(), message: format!("{} is a file, not a directory", self.data_dir.display()), is_error: true });
        }
        if !self.sinks.any_enabled() {
            p.push(Problem {
                key: "sinks".into(),
                message: "no sink is enabled: `kcaudit serve` would accept events and keep them nowhere".into(),
                is_error: true,
            });
        }
        if let Some(d) = &self.enrich.directory {
            if !d.join("realms.json").is_file() {
                p.push(Problem { key: "enrich.directory".into(), message: format!("{} has no realms.json (expected a snapshot written by `kcaudit directory sync`)", d.display()), is_error: true });
            }
        }
        for f in &self.enrich.realm_exports {
            if !f.is_file() {
                p.push(Problem { key: "enrich.realm_exports".into(), message: format!("{} does not exist", f.display()), is_error: true });
            }
        }
        for id in self.detect.rules.keys() {
            if !crate::detect::RULES.contains(&id.as_str()) {
                p.push(Problem { key: format!("detect.rules.{id}"), message: format!("unknown rule; known rules: {}", crate::detect::RULES.join(", ")), is_error: true });
            }
        }
        if self.poll.enabled {
            if self.admin_api.url.is_none() {
                p.push(Problem { key: "poll.enabled".into(), message: "polling needs [admin_api] url and credentials".into(), is_error: true });
            }
            if self.poll.realms.is_empty() {
                p.push(Problem { key: "poll.realms".into(), message: "list the realms to poll".into(), is_error: true });
            }
        }
        if !self.webhook.enabled && !self.poll.enabled && !self.kafka.enabled {
            p.push(Problem { key: "webhook.enabled".into(), message: "no source is enabled: `kcaudit serve` would receive nothing".into(), is_error: false });
        }
        if self.admin_api.url.is_some() {
            if let Err(e) = self.admin_api.secret() {
                p.push(Problem { key: "admin_api.client_secret_env".into(), message: e, is_error: true });
            }
        }
        p.extend(self.role_problems());
        if self.spool.enabled && self.spool.max_bytes < 1 << 20 {
            p.push(Problem { key: "spool.max_bytes".into(), message: "at least 1 MiB".into(), is_error: true });
        }
        p.extend(self.webhook.problems());
        p.extend(self.telemetry.problems());
        p.extend(self.sinks.clickhouse.problems());
        p.extend(self.kafka.problems());
        p.extend(self.sinks.splunk_hec.problems());
        p.extend(self.sinks.syslog.problems());
        p.extend(self.sinks.elasticsearch.problems());
        p.extend(self.sinks.sentinel.problems());
        p.extend(self.sinks.kafka.problems());
        for (i, h) in self.sinks.http.iter().enumerate() {
            p.extend(h.problems(i));
        }
        // Sink names key metrics, dead letters and acknowledgements: they must be unique.
        let mut names: Vec<&str> = self.sinks.http.iter().filter(|h| h.enabled).map(|h| h.name.as_str()).collect();
        names.extend(["audit_log", "stdout", "clickhouse", "splunk_hec", "syslog", "elasticsearch", "sentinel", "kafka"]);
        names.sort_unstable();
        for w in names.windows(2) {
            if w[0] == w[1] {
                p.push(Problem { key: "sinks.http".into(), message: format!("sink name {:?} is used twice", w[0]), is_error: true });
            }
        }
        p
    }

    /// What the role requires and forbids.
    fn role_problems(&self) -> Vec<Problem> {
        let err = |key: &str, message: String| Problem { key: key.into(), message, is_error: true };
        let mut p = Vec::new();
        let s = &self.sinks;
        let loop_topic = self.kafka.enabled && s.kafka.enabled && self.kafka.topics.contains(&s.kafka.topic);
        if loop_topic {
            p.push(err("sinks.kafka.topic", format!("{:?} is also consumed by [kafka]: events would go round in a loop", s.kafka.topic)));
        }
        match self.role {
            Role::All => {}
            Role::Edge => {
                if !s.kafka.enabled {
                    p.push(err("role", "the edge role publishes to Kafka: enable [sinks.kafka]".into()));
                } else if s.kafka.format != crate::sinks::encode::JsonFormat::Canonical {
                    p.push(err("sinks.kafka.format", "the edge role publishes canonical events (the workers decode them); use format = \"canonical\"".into()));
                }
                let others = [
                    ("stdout", s.stdout.enabled),
                    ("clickhouse", s.clickhouse.enabled),
                    ("splunk_hec", s.splunk_hec.enabled),
                    ("syslog", s.syslog.enabled),
                    ("elasticsearch", s.elasticsearch.enabled),
                    ("sentinel", s.sentinel.enabled),
                    ("http", s.http.iter().any(|h| h.enabled)),
                ];
                for (name, _) in others.iter().filter(|(_, on)| *on) {
                    p.push(err(&format!("sinks.{name}"), format!("the edge role only publishes to Kafka (events are not enriched or flagged yet); enable sinks.{name} on the workers")));
                }
            }
            Role::Worker => {
                if self.spool.enabled {
                    p.push(err("spool.enabled", "a worker takes no webhooks; its durability is Kafka's (offsets follow delivery)".into()));
                }
                if !self.kafka.enabled {
                    p.push(err("role", "the worker role consumes [kafka]: set kafka.enabled = true".into()));
                }
                if self.poll.enabled {
                    p.push(err("poll.enabled", "poll the admin events API from one edge (or all-in-one) instance: every worker polling would duplicate the work".into()));
                }
                if self.detect.enabled && self.kafka.state_topic.trim().is_empty() {
                    p.push(err("kafka.state_topic", "the worker keeps detection state in a compacted topic; name it".into()));
                }
            }
        }
        p
    }

    /// The shared admin API client, when `[admin_api].url` is set.
    pub fn admin_api_client(&self) -> anyhow::Result<Option<std::sync::Arc<AdminApi>>> {
        if self.admin_api.url.is_none() {
            return Ok(None);
        }
        Ok(Some(std::sync::Arc::new(AdminApi::new(&self.admin_api, self.enrich.wants_roles())?)))
    }

    /// The enrichment stage this config asks for (None: no source configured).
    pub fn enricher(&self, api: Option<std::sync::Arc<AdminApi>>, metrics: crate::metrics::Metrics) -> anyhow::Result<Option<std::sync::Arc<crate::enrich::Enricher>>> {
        crate::enrich::Enricher::from_options(&self.enrich, api, metrics)
    }

    /// The enrichment and detection stages this config asks for.
    /// `state`: where detection state is persisted (None: memory only).
    pub fn stages(&self, api: Option<std::sync::Arc<AdminApi>>, metrics: crate::metrics::Metrics, state: Option<&Path>) -> anyhow::Result<crate::pipeline::Stages> {
        if self.role == Role::Edge {
            // An edge only validates and publishes; the workers enrich and detect.
            return Ok(crate::pipeline::Stages::default());
        }
        let detector = if self.detect.enabled && self.role == Role::Worker {
            let changelog = crate::detect::partitioned::Changelog::new(
                crate::sources::kafka::KafkaSource::connection_config(&self.kafka)?,
                &self.kafka.state_topic,
                std::time::Duration::from_millis(self.kafka.state_restore_timeout_ms),
                metrics.clone(),
            )?;
            Some(std::sync::Arc::new(std::sync::Mutex::new(crate::detect::Detector::new(self.detect.clone()).partitioned(Some(std::sync::Arc::new(changelog))))))
        } else if self.detect.enabled {
            let mut d = match state {
                Some(p) => crate::detect::Detector::with_store(self.detect.clone(), p)?,
                None => crate::detect::Detector::new(self.detect.clone()),
            };
            if let Some(s) = d.store.as_mut() {
                s.save_every = self.detect.state_save_every;
            }
            Some(std::sync::Arc::new(std::sync::Mutex::new(d)))
        } else {
            None
        };
        Ok(crate::pipeline::Stages { enricher: self.enricher(api, metrics)?, detector })
    }

    /// `path` resolved against `data_dir` when relative.
    pub fn data_path(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.data_dir.join(path)
        }
    }

    /// Load and fail on any error-level problem (warnings are returned for logging).
    pub fn load_checked(file: Option<&Path>, sets: &[String]) -> Result<(Config, Vec<Problem>), ConfigError> {
        let c = Config::load(file, sets)?;
        let problems = c.problems();
        if problems.iter().any(|p| p.is_error) {
            return Err(ConfigError::Invalid(problems));
        }
        Ok((c, problems))
    }
}

/// Read a secret from the first configured place: a file (trailing newline ignored), an inline value
/// (discouraged), or an environment variable. Never logged.
pub fn read_secret(file: Option<&Path>, inline: Option<&str>, env: Option<&str>) -> Result<Vec<u8>, String> {
    let found: Option<Vec<u8>> = if let Some(path) = file {
        let v = std::fs::read(path).map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
        let trimmed = v.strip_suffix(b"\n").map(|v| v.strip_suffix(b"\r").unwrap_or(v)).unwrap_or(&v);
        Some(trimmed.to_vec())
    } else if let Some(s) = inline {
        Some(s.as_bytes().to_vec())
    } else if let Some(var) = env {
        let v = std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?;
        Some(v.into_bytes())
    } else {
        None
    };
    match found {
        Some(s) if !s.is_empty() => Ok(s),
        Some(_) => Err("the configured secret is empty".into()),
        None => Err("no secret configured: set an environment variable or a file".into()),
    }
}

/// Fill the keys missing from each `[sinks.<name>.batch]` table with *that sink's* defaults. Serde
/// alone fills them from `BatchOptions::default()` (the local sinks' values: no wait, 4,096 queued),
/// so `[sinks.clickhouse.batch] max_events = 5000` silently turned ClickHouse's 1-second wait into
/// none (an insert per handful of events) and halved its queue.
fn complete_sink_batches(table: &mut toml::Table) {
    let Some(sinks) = table.get_mut("sinks").and_then(toml::Value::as_table_mut) else { return };
    let Ok(serde_json::Value::Object(defaults)) = serde_json::to_value(SinksOptions::default()) else { return };
    let http = serde_json::to_value(crate::sinks::http::HttpSinkOptions::default()).unwrap_or_default();
    let fill = |batch: Option<&mut toml::Value>, default: Option<&serde_json::Value>| {
        let (Some(batch), Some(serde_json::Value::Object(default))) = (batch.and_then(toml::Value::as_table_mut), default) else { return };
        for (k, v) in default {
            if let (false, Ok(v)) = (batch.contains_key(k), toml::Value::try_from(v)) {
                batch.insert(k.clone(), v);
            }
        }
    };
    for (name, sink) in sinks.iter_mut() {
        match sink {
            // `[[sinks.http]]`: each destination completes from the generic HTTP sink's defaults.
            toml::Value::Array(list) => {
                for dest in list.iter_mut() {
                    fill(dest.get_mut("batch"), http.get("batch"));
                }
            }
            sink => fill(sink.get_mut("batch"), defaults.get(name).and_then(|d| d.get("batch"))),
        }
    }
}

/// Apply one `KEY=VALUE` override to the raw table.
fn apply_set(table: &mut toml::Table, arg: &str) -> Result<(), ConfigError> {
    let err = |message: &str| ConfigError::Set { arg: arg.to_string(), message: message.to_string() };
    let (key, raw) = arg.split_once('=').ok_or_else(|| err("expected KEY=VALUE"))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(err("the key must be a dotted path such as webhook.listen"));
    }
    // Parse as a TOML value when possible (numbers, booleans, arrays, quoted strings); else a string.
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = table;
    for (i, part) in parts.iter().enumerate() {
        if i == parts.len() - 1 {
            cur.insert(part.to_string(), value);
            return Ok(());
        }
        let next = cur.entry(part.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = next.as_table_mut().ok_or_else(|| err(&format!("{} is not a table", parts[..=i].join("."))))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_batch_table_keeps_the_sinks_own_defaults() {
        let sets = ["sinks.clickhouse.batch.max_events=5000", "sinks.splunk_hec.batch.max_wait_ms=50", "sinks.audit_log.batch.queue_capacity=99"].map(String::from);
        let c = Config::load(None, &sets).unwrap();
        let d = Config::default();
        assert_eq!(c.sinks.clickhouse.batch, BatchOptions { max_events: 5000, ..d.sinks.clickhouse.batch.clone() });
        assert_eq!(c.sinks.clickhouse.batch.max_wait_ms, 1000, "ClickHouse's own wait, not the local sinks' 0");
        assert_eq!(c.sinks.splunk_hec.batch, BatchOptions { max_wait_ms: 50, ..d.sinks.splunk_hec.batch.clone() });
        assert_eq!(c.sinks.audit_log.batch, BatchOptions { queue_capacity: 99, ..d.sinks.audit_log.batch.clone() });
        // Each [[sinks.http]] destination completes from the HTTP sink's defaults.
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[[sinks.http]]\nname = \"a\"\nurl = \"https://siem.example/in\"\n[sinks.http.batch]\nmax_events = 7\n").unwrap();
        let c = Config::load(Some(&f), &[]).unwrap();
        let http = crate::sinks::http::HttpSinkOptions::default().batch;
        assert_eq!(c.sinks.http[0].batch, BatchOptions { max_events: 7, ..http });
        // Unknown keys are still refused.
        assert!(Config::load(None, &["sinks.clickhouse.batch.max_event=1".to_string()]).is_err());
    }

    #[test]
    fn defaults_run_with_no_file() {
        let (c, problems) = Config::load_checked(None, &[]).unwrap();
        assert_eq!(c, Config::default());
        assert!(problems.iter().all(|p| !p.is_error), "{problems:?}");
        assert_eq!(c.webhook.listen, "127.0.0.1:8787");
        assert_eq!(c.data_path(&c.sinks.audit_log.path), PathBuf::from("kcaudit-data/audit.jsonl"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[webhook]\nlisten = \"127.0.0.1:1\"\nmax_body_byte = 5\n").unwrap();
        let e = Config::load(Some(&f), &[]).unwrap_err().to_string();
        assert!(e.contains("webhook.max_body_byte"), "{e}");
        assert!(e.contains("unknown field"), "{e}");
        let e = Config::load(None, &["dedup.windw_secs=5".into()]).unwrap_err().to_string();
        assert!(e.contains("dedup.windw_secs"), "{e}");
    }

    #[test]
    fn set_parses_toml_values_and_strings() {
        let c = Config::load(None, &["dedup.enabled=false".into(), "dedup.window_secs=60".into(), "webhook.listen=0.0.0.0:9000".into()]).unwrap();
        assert!(!c.dedup.enabled);
        assert_eq!(c.dedup.window_secs, 60);
        assert_eq!(c.webhook.listen, "0.0.0.0:9000");
        let e = Config::load(None, &["dedup.window_secs=soon".into()]).unwrap_err().to_string();
        assert!(e.contains("dedup.window_secs"), "{e}");
        assert!(Config::load(None, &["nokey".into()]).is_err());
    }

    #[test]
    fn semantic_problems_are_explained() {
        let c = Config::load(None, &["decode.log_time_zone=Mars/Olympus".into(), "webhook.listen=0.0.0.0:8787".into()]).unwrap();
        let p = c.problems();
        assert!(p.iter().any(|p| p.key == "decode.log_time_zone" && p.is_error));
        assert!(p.iter().any(|p| p.key == "webhook.auth.mode" && p.is_error), "{p:?}");
    }

    #[test]
    fn roles_say_what_they_need_and_refuse() {
        let errors = |sets: &[&str]| -> Vec<String> {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            Config::load(None, &sets).unwrap().problems().into_iter().filter(|p| p.is_error).map(|p| p.to_string()).collect()
        };
        let edge = ["role=\"edge\"", "sinks.audit_log.enabled=false", "sinks.kafka.enabled=true"];
        assert!(errors(&edge).is_empty(), "{:?}", errors(&edge));
        let e = errors(&["role=\"edge\""]);
        assert!(e.iter().any(|m| m.contains("role") && m.contains("[sinks.kafka]")), "{e:?}");
        let e = errors(&[&edge[..], &["sinks.clickhouse.enabled=true"]].concat());
        assert!(e.iter().any(|m| m.contains("sinks.clickhouse") && m.contains("workers")), "{e:?}");
        let e = errors(&[&edge[..], &["sinks.kafka.format=\"ocsf\""]].concat());
        assert!(e.iter().any(|m| m.contains("sinks.kafka.format")), "{e:?}");

        let worker = ["role=\"worker\"", "kafka.enabled=true"];
        assert!(errors(&worker).is_empty(), "{:?}", errors(&worker));
        let e = errors(&["role=\"worker\""]);
        assert!(e.iter().any(|m| m.contains("kafka.enabled")), "{e:?}");
        let e = errors(&[&worker[..], &["kafka.state_topic=\"\""]].concat());
        assert!(e.iter().any(|m| m.contains("kafka.state_topic")), "{e:?}");
        let e = errors(&[&worker[..], &["sinks.kafka.enabled=true", "sinks.kafka.topic=\"keycloak-events\""]].concat());
        assert!(e.iter().any(|m| m.contains("loop")), "{e:?}");
    }
}
