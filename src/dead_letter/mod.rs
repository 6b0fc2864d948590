//! The dead-letter store: where every record that could not be delivered goes, with the reason.
//!
//! An audit pipeline may not drop a record, so anything rejected (undecodable, bad signature, refused
//! by a sink, an event id reused with different content) is appended here, fsynced, before the source
//! is told the record is handled. Records are JSON lines carrying the stage, the reason, the origin,
//! the canonical event when there is one, and the raw input (UTF-8 text, or base64 when it is not).
//! If this store cannot be written, the batch fails and the source answers so the sender retries
//! (HTTP 503): the only safe answer when nothing else can hold the record.
//!
//! Every record has a stable `id` (a UUID minted when it is stored; records written before ids existed
//! get one derived from their line, [`derived_id`]). What became of a record later (replayed, purged,
//! superseded by a newer record) is not written into this file but appended to a ledger next to it
//! ([`ledger`]); `kcaudit dlq` ([`workflow`]) lists, shows, replays, purges and compacts. Writers hold
//! `<path>.lock` shared while the store is open, so `kcaudit dlq compact` (exclusive) can never rewrite
//! the file under a running server, and a store opening next to a live writer leaves the live writer's
//! last line alone (only a store with the file to itself cuts a torn tail).

pub mod ledger;
pub mod workflow;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine;
use chrono::Utc;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event::{format_time, AuditEvent, Origin};

/// Where in the pipeline a record was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The request failed authentication (bad or missing signature/token).
    Auth,
    /// The record could not be decoded.
    Decode,
    /// An event id arrived again with different content (first delivery kept).
    Dedup,
    /// A sink refused the event permanently or retries were exhausted.
    Sink,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Auth => "auth",
            Stage::Decode => "decode",
            Stage::Dedup => "dedup",
            Stage::Sink => "sink",
        }
    }

    pub fn parse(s: &str) -> Result<Stage, String> {
        Ok(match s {
            "auth" => Stage::Auth,
            "decode" => Stage::Decode,
            "dedup" => Stage::Dedup,
            "sink" => Stage::Sink,
            other => return Err(format!("unknown stage {other:?}; expected auth, decode, dedup or sink")),
        })
    }
}

/// One dead-letter record.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadLetter {
    /// Stable identity: a UUID (v4) minted when the record is created. Absent in records written
    /// before ids existed; readers then derive one from the line ([`derived_id`], a UUID v5).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Wall-clock time the record was stored (RFC 3339, UTC).
    pub dead_lettered_at: String,
    pub stage: Stage,
    /// The sink that refused it (stage `sink`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<String>,
    /// Why, in words (the destination's own error text where there is one).
    pub reason: String,
    pub origin: Origin,
    /// The canonical event, when decoding got that far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<AuditEvent>,
    /// The raw input when it is valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    /// The raw input, base64, when it is not valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_base64: Option<String>,
}

impl DeadLetter {
    pub fn new(stage: Stage, reason: impl Into<String>, origin: Origin) -> Self {
        DeadLetter {
            id: uuid::Uuid::new_v4().to_string(),
            dead_lettered_at: format_time(&Utc::now()),
            stage,
            sink: None,
            reason: reason.into(),
            origin,
            event: None,
            raw: None,
            raw_base64: None,
        }
    }

    pub fn with_raw(mut self, raw: &[u8]) -> Self {
        match std::str::from_utf8(raw) {
            Ok(s) => self.raw = Some(s.to_string()),
            Err(_) => self.raw_base64 = Some(base64::engine::general_purpose::STANDARD.encode(raw)),
        }
        self
    }

    pub fn with_event(mut self, event: AuditEvent) -> Self {
        self.event = Some(event);
        self
    }

    /// The raw input bytes (`raw`, or `raw_base64` decoded), when the record holds any.
    pub fn raw_bytes(&self) -> Option<Result<Vec<u8>, String>> {
        if let Some(r) = &self.raw {
            return Some(Ok(r.as_bytes().to_vec()));
        }
        self.raw_base64.as_ref().map(|b| base64::engine::general_purpose::STANDARD.decode(b).map_err(|e| format!("raw_base64 is not base64: {e}")))
    }
}

/// The id of a record stored without one: a UUID v5 of its line (trailing whitespace ignored), so the
/// same line gets the same id in every run, in a rotated copy, and after `kcaudit dlq compact` (which
/// keeps lines byte for byte).
pub fn derived_id(line: &str) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6b63_6175_6469_742d_646c_712d_6c69_6e65);
    uuid::Uuid::new_v5(&NAMESPACE, line.trim_end().as_bytes()).to_string()
}

/// `<path>.lock`, the writers' lock next to the dead-letter file (never renamed or removed).
pub fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

fn open_lock_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).read(true).write(true).truncate(false).open(lock_path(path))
}

/// Append-only JSON-lines dead-letter file; every append is fsynced before it returns.
#[derive(Clone)]
pub struct DeadLetterStore {
    path: PathBuf,
    file: Arc<Mutex<Option<File>>>,
    topic: Option<Arc<DeadLetterTopic>>,
    /// `<path>.lock`, held shared while any clone of this store lives (None where the file system has
    /// no advisory locks).
    _lock: Option<Arc<File>>,
    /// Every record stored through this store, after it is durable (`kcaudit dlq replay` links the
    /// records a replay dead-letters again to the ones it replayed).
    tap: Option<Arc<Mutex<Vec<DeadLetter>>>>,
}

/// `[dead_letter.kafka]`: publish every dead letter to a Kafka topic as well as the local file: the
/// shared, durable copy when instances run on ephemeral disks (Kubernetes pods). A dead letter counts
/// as stored only once the file *and* the topic have it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterTopicOptions {
    pub enabled: bool,
    /// `bootstrap.servers`.
    pub brokers: String,
    pub topic: String,
    /// Time limit for one record's delivery, in milliseconds.
    pub delivery_timeout_ms: u64,
    /// SASL password, from env or file (mechanism and user go in `options`).
    pub sasl_password: Option<crate::sinks::http_client::SecretOptions>,
    /// Any librdkafka producer property (`security.protocol`, `ssl.ca.location`, ...).
    pub options: std::collections::BTreeMap<String, String>,
}

impl Default for DeadLetterTopicOptions {
    fn default() -> Self {
        DeadLetterTopicOptions {
            enabled: false,
            brokers: "127.0.0.1:9092".into(),
            topic: "kcaudit-dead-letters".into(),
            delivery_timeout_ms: 30_000,
            sasl_password: None,
            options: Default::default(),
        }
    }
}

/// The producer behind `[dead_letter.kafka]`. Records are keyed by event id (or the input they came
/// from), valued with the same JSON line as the file.
pub struct DeadLetterTopic {
    topic: String,
    producer: rdkafka::producer::FutureProducer,
}

impl DeadLetterTopic {
    pub fn new(opts: &DeadLetterTopicOptions) -> anyhow::Result<DeadLetterTopic> {
        let c = crate::sinks::kafka::producer_config(&opts.brokers, &opts.options, opts.sasl_password.as_ref(), opts.delivery_timeout_ms)?;
        Ok(DeadLetterTopic { topic: opts.topic.clone(), producer: c.create()? })
    }

    async fn publish(&self, records: &[DeadLetter], lines: &[&[u8]]) -> std::io::Result<()> {
        use rdkafka::producer::FutureRecord;
        let mut pending = Vec::with_capacity(records.len());
        for (r, line) in records.iter().zip(lines) {
            let key = r.event.as_ref().map(|e| e.id.clone()).unwrap_or_else(|| r.origin.input.to_string());
            let record = FutureRecord::to(&self.topic).key(&key).payload(*line);
            let fut = self.producer.send_result(record).map_err(|(e, _)| std::io::Error::other(format!("dead-letter topic {}: {e}", self.topic)))?;
            pending.push(fut);
        }
        for fut in pending {
            match fut.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(std::io::Error::other(format!("dead-letter topic {}: {e}", self.topic))),
                Err(_) => return Err(std::io::Error::other(format!("dead-letter topic {}: producer went away", self.topic))),
            }
        }
        Ok(())
    }
}

impl DeadLetterStore {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create dead-letter directory {}: {e}", dir.display()))?;
        }
        // The writers' lock: exclusive for a moment when nobody else has the file open (then a partial
        // last line is a crash's leftover and is cut), shared for the store's lifetime. A partial last
        // line while another writer holds the lock is that writer's append in progress: left alone.
        let mut lock = match open_lock_file(path) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(path = %lock_path(path).display(), error = %e, "Cannot create the dead-letter lock file; continuing without it (do not run `kcaudit dlq compact` while kcaudit runs).");
                None
            }
        };
        let mut alone = true;
        if let Some(l) = &lock {
            match l.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => alone = false,
                Err(std::fs::TryLockError::Error(e)) => {
                    tracing::warn!(path = %lock_path(path).display(), error = %e, "File locks are not available here; continuing without (do not run `kcaudit dlq compact` while kcaudit runs).");
                    lock = None;
                }
            }
        }
        if alone {
            let cut = crate::sinks::file::repair_torn_tail(path).map_err(|e| anyhow::anyhow!("cannot check dead-letter file {}: {e}", path.display()))?;
            if cut > 0 {
                tracing::warn!(path = %path.display(), bytes = cut, "Removed a torn last dead-letter line left by a crash (its batch was never acknowledged).");
            }
        }
        if let Some(l) = &lock {
            if alone {
                l.unlock().map_err(|e| anyhow::anyhow!("cannot release {}: {e}", lock_path(path).display()))?;
            }
            // Blocks while `kcaudit dlq compact` rewrites the file; the file is opened only after, so
            // this store always appends to the file compaction left in place.
            l.lock_shared().map_err(|e| anyhow::anyhow!("cannot lock {}: {e}", lock_path(path).display()))?;
        }
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| anyhow::anyhow!("cannot open dead-letter file {}: {e}", path.display()))?;
        Ok(DeadLetterStore { path: path.to_path_buf(), file: Arc::new(Mutex::new(Some(f))), topic: None, _lock: lock.map(Arc::new), tap: None })
    }

    /// Also publish to `[dead_letter.kafka]` (when enabled).
    pub fn with_topic(mut self, opts: &DeadLetterTopicOptions) -> anyhow::Result<Self> {
        if opts.enabled {
            self.topic = Some(Arc::new(DeadLetterTopic::new(opts)?));
        }
        Ok(self)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with_tap(mut self, tap: Arc<Mutex<Vec<DeadLetter>>>) -> Self {
        self.tap = Some(tap);
        self
    }

    /// Append records durably. Runs the blocking write and fsync off the async runtime.
    pub async fn append(&self, records: Vec<DeadLetter>) -> std::io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(records.len() * 512);
        let mut ends = Vec::with_capacity(records.len());
        for r in &records {
            serde_json::to_writer(&mut buf, r)?;
            buf.push(b'\n');
            ends.push(buf.len());
        }
        let file = self.file.clone();
        let buf = tokio::task::spawn_blocking(move || {
            let mut guard = file.lock().map_err(|_| std::io::Error::other("dead-letter store lock poisoned"))?;
            let f = guard.as_mut().ok_or_else(|| std::io::Error::other("dead-letter store closed"))?;
            f.write_all(&buf)?;
            f.sync_data()?;
            Ok::<_, std::io::Error>(buf)
        })
        .await
        .map_err(|e| std::io::Error::other(format!("dead-letter writer task failed: {e}")))??;
        if let Some(topic) = &self.topic {
            let lines: Vec<&[u8]> = ends.iter().scan(0, |start, &end| {
                let line = &buf[*start..end - 1];
                *start = end;
                Some(line)
            }).collect();
            topic.publish(&records, &lines).await?;
        }
        if let Some(tap) = &self.tap {
            if let Ok(mut t) = tap.lock() {
                t.extend(records);
            }
        }
        Ok(())
    }

    /// Read every record back (tests; `kcaudit dlq` reads with [`ledger::scan`], which reports and
    /// skips a corrupt line instead of failing). Records without an id get their [`derived_id`].
    pub fn read_all(path: &Path) -> anyhow::Result<Vec<DeadLetter>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let mut d: DeadLetter = serde_json::from_str(l)?;
                if d.id.is_empty() {
                    d.id = derived_id(l);
                }
                Ok(d)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(reason: &str) -> DeadLetter {
        DeadLetter::new(Stage::Decode, reason, Origin { input: "test".into(), ..Default::default() }).with_raw(b"not json")
    }

    #[test]
    fn new_records_get_ids_and_old_lines_get_stable_derived_ones() {
        let a = record("x");
        let b = record("x");
        assert_eq!(uuid::Uuid::parse_str(&a.id).unwrap().get_version_num(), 4);
        assert_ne!(a.id, b.id);
        let line = serde_json::to_string(&a).unwrap();
        assert!(line.starts_with("{\"id\":"), "{line}");

        // A line written before ids existed still reads; its id is derived from the line, stably.
        let old = r#"{"dead_lettered_at":"2026-03-09T12:00:00.000Z","stage":"decode","reason":"bad","origin":{"input":"f","format":"auto","line":3,"request_id":null,"index":null,"delivery_id":null,"log":null},"raw":"x"}"#;
        let d: DeadLetter = serde_json::from_str(old).unwrap();
        assert!(d.id.is_empty());
        assert_eq!(derived_id(old), derived_id(&format!("{old}  \r")));
        assert_ne!(derived_id(old), derived_id(&old.replace("bad", "worse")));
        assert_eq!(uuid::Uuid::parse_str(&derived_id(old)).unwrap().get_version_num(), 5);

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dl.jsonl");
        std::fs::write(&p, format!("{old}\n{line}\n")).unwrap();
        let all = DeadLetterStore::read_all(&p).unwrap();
        assert_eq!(all[0].id, derived_id(old));
        assert_eq!(all[1].id, a.id);
    }

    #[test]
    fn raw_bytes_come_back_from_text_or_base64() {
        assert_eq!(record("x").raw_bytes().unwrap().unwrap(), b"not json");
        let bin = DeadLetter::new(Stage::Decode, "x", Origin::default()).with_raw(&[0xff, 0x00, 0x41]);
        assert!(bin.raw.is_none());
        assert_eq!(bin.raw_bytes().unwrap().unwrap(), vec![0xff, 0x00, 0x41]);
        assert!(DeadLetter::new(Stage::Decode, "x", Origin::default()).raw_bytes().is_none());
    }

    #[tokio::test]
    async fn only_a_store_alone_with_the_file_cuts_a_partial_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dl.jsonl");
        let live = DeadLetterStore::open(&p).unwrap();
        live.append(vec![record("one")]).await.unwrap();
        // Another writer's append in progress (as seen from outside): a line without its newline.
        {
            let mut f = OpenOptions::new().append(true).open(&p).unwrap();
            f.write_all(b"{\"id\":\"partial").unwrap();
        }
        let second = DeadLetterStore::open(&p).unwrap();
        assert!(std::fs::read_to_string(&p).unwrap().ends_with("{\"id\":\"partial"), "a live writer's tail is left alone");
        drop(second);
        drop(live);
        // Nobody has the file open any more: the partial line is a crash's leftover.
        let _alone = DeadLetterStore::open(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.ends_with("}\n") && text.lines().count() == 1, "{text}");
    }
}
