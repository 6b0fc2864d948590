//! The dead-letter store: where every record that could not be delivered goes, with the reason.
//!
//! An audit pipeline may not drop a record, so anything rejected (undecodable, bad signature, refused
//! by a sink, an event id reused with different content) is appended here, fsynced, before the source
//! is told the record is handled. Records are JSON lines carrying the stage, the reason, the origin,
//! the canonical event when there is one, and the raw input (UTF-8 text, or base64 when it is not).
//! If this store cannot be written, the batch fails and the source answers so the sender retries
//! (HTTP 503): the only safe answer when nothing else can hold the record.

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
}

/// One dead-letter record.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadLetter {
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
}

/// Append-only JSON-lines dead-letter file; every append is fsynced before it returns.
#[derive(Clone)]
pub struct DeadLetterStore {
    path: PathBuf,
    file: Arc<Mutex<Option<File>>>,
}

impl DeadLetterStore {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create dead-letter directory {}: {e}", dir.display()))?;
        }
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| anyhow::anyhow!("cannot open dead-letter file {}: {e}", path.display()))?;
        Ok(DeadLetterStore { path: path.to_path_buf(), file: Arc::new(Mutex::new(Some(f))) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append records durably. Runs the blocking write and fsync off the async runtime.
    pub async fn append(&self, records: Vec<DeadLetter>) -> std::io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(records.len() * 512);
            for r in &records {
                serde_json::to_writer(&mut buf, r)?;
                buf.push(b'\n');
            }
            let mut guard = file.lock().map_err(|_| std::io::Error::other("dead-letter store lock poisoned"))?;
            let f = guard.as_mut().ok_or_else(|| std::io::Error::other("dead-letter store closed"))?;
            f.write_all(&buf)?;
            f.sync_data()
        })
        .await
        .map_err(|e| std::io::Error::other(format!("dead-letter writer task failed: {e}")))?
    }

    /// Read every record back (for tests and `kcaudit dlq` tooling).
    pub fn read_all(path: &Path) -> anyhow::Result<Vec<DeadLetter>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        text.lines().filter(|l| !l.trim().is_empty()).map(|l| Ok(serde_json::from_str(l)?)).collect()
    }
}
