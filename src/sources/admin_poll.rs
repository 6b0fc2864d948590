//! Polling Keycloak's stored events through the admin REST API, for deployments with no listener SPI.
//!
//! Keycloak offers no cursor: `GET /admin/realms/{realm}/events` filters by `dateFrom` (inclusive,
//! epoch ms) and pages with `first`/`max`. Events are not stored in strict time order (errors are
//! stored immediately, successes at commit), so each poll re-reads an overlap window before the high
//! water mark and drops the ids it already delivered. The cursor (high-water time plus the ids seen in
//! the overlap window) is persisted only after the pipeline has acknowledged the events, so a restart
//! neither duplicates nor skips.
//!
//! What this mode cannot see: only event types Keycloak *stores* are returned (`enabledEventTypes`,
//! or the save-by-default types: TOKEN_EXCHANGE and TOKEN_EXCHANGE_ERROR are stored, REFRESH_TOKEN is
//! not); events expire with the realm's `eventsExpiration`; admin events need "Save admin events";
//! and the REST representation carries no realm name (enrichment fills it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::decode::{decode_record, Context, Decoded, DecodeOptions, Format, Item};
use crate::event::Origin;
use crate::keycloak_api::AdminApi;
use crate::pipeline::PipelineHandle;

/// `[poll]`: read stored events from the admin API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PollOptions {
    /// Poll at all (needs `[admin_api]`).
    pub enabled: bool,
    /// Realm names to poll.
    pub realms: Vec<String>,
    /// Seconds between polls when caught up.
    pub interval_secs: u64,
    /// Events per request.
    pub page_size: usize,
    /// User event types to fetch (empty: every stored type).
    pub event_types: Vec<String>,
    /// Also poll admin events.
    pub admin_events: bool,
    /// Re-read this many milliseconds before the high-water mark on every poll (late-stored events).
    pub overlap_ms: i64,
    /// Where the cursor is kept; relative paths are under `data_dir`.
    pub cursor_file: PathBuf,
    /// Where the first poll starts when there is no cursor: epoch milliseconds (0 = everything stored).
    pub start_ms: i64,
    /// Longest backoff after failures, in seconds.
    pub max_backoff_secs: u64,
}

impl Default for PollOptions {
    fn default() -> Self {
        PollOptions {
            enabled: false,
            realms: Vec::new(),
            interval_secs: 10,
            page_size: 100,
            event_types: vec!["TOKEN_EXCHANGE".into(), "TOKEN_EXCHANGE_ERROR".into()],
            admin_events: true,
            overlap_ms: 60_000,
            cursor_file: PathBuf::from("poll-cursor.json"),
            start_ms: 0,
            max_backoff_secs: 300,
        }
    }
}

/// Position in one stream (a realm's events or admin events).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamCursor {
    /// Newest event time delivered.
    pub high_water_ms: i64,
    /// Ids delivered within the overlap window before `high_water_ms`, with their times.
    pub recent: BTreeMap<String, i64>,
}

/// All streams' positions, keyed `<realm>/events` and `<realm>/admin-events`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    pub streams: BTreeMap<String, StreamCursor>,
}

impl Cursor {
    pub fn load(path: &Path) -> anyhow::Result<Cursor> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| anyhow::anyhow!("poll cursor {} is corrupt ({e}); move it away to restart from poll.start_ms", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Cursor::default()),
            Err(e) => Err(anyhow::anyhow!("cannot read poll cursor {}: {e}", path.display())),
        }
    }

    /// Write atomically (temp file, fsync, rename) so a crash never leaves half a cursor.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(self)?)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}

/// The poller.
pub struct Poller {
    pub api: Arc<AdminApi>,
    pub opts: PollOptions,
    pub decode: DecodeOptions,
    pub cursor_path: PathBuf,
    pub pipeline: PipelineHandle,
}

/// Counts from one poll round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollCounts {
    pub fetched: u64,
    pub new: u64,
}

impl Poller {
    /// Run until `stop` resolves.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        tokio::pin!(stop);
        let mut backoff = Duration::from_secs(1);
        loop {
            let wait = match self.poll_once().await {
                Ok(c) => {
                    backoff = Duration::from_secs(1);
                    tracing::debug!(fetched = c.fetched, new = c.new, "Admin API poll done.");
                    Duration::from_secs(self.opts.interval_secs.max(1))
                }
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), retry_in_secs = backoff.as_secs(), "Admin API poll failed; backing off.");
                    let w = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(self.opts.max_backoff_secs.max(1)));
                    w
                }
            };
            tokio::select! {
                _ = &mut stop => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One round over every realm and stream; each stream's cursor is saved after its events are
    /// acknowledged by the pipeline.
    pub async fn poll_once(&self) -> anyhow::Result<PollCounts> {
        let mut cursor = Cursor::load(&self.cursor_path)?;
        let mut total = PollCounts::default();
        for realm in &self.opts.realms {
            for admin in [false, true] {
                if admin && !self.opts.admin_events {
                    continue;
                }
                let key = format!("{realm}/{}", if admin { "admin-events" } else { "events" });
                let mut sc = cursor.streams.get(&key).cloned().unwrap_or(StreamCursor { high_water_ms: self.opts.start_ms, recent: BTreeMap::new() });
                // One trace per stream and round: the admin-API pages, then the pipeline's stages.
                let span = tracing::info_span!(
                    target: "kcaudit_otel",
                    "admin_poll.batch",
                    kcaudit.realm = realm.as_str(),
                    kcaudit.stream = if admin { "admin-events" } else { "events" },
                );
                let c = tracing::Instrument::instrument(self.poll_stream(realm, admin, &mut sc), span).await?;
                total.fetched += c.fetched;
                total.new += c.new;
                cursor.streams.insert(key, sc);
                cursor.save(&self.cursor_path)?;
            }
        }
        Ok(total)
    }

    async fn poll_stream(&self, realm: &str, admin: bool, sc: &mut StreamCursor) -> anyhow::Result<PollCounts> {
        let from = sc.high_water_ms.saturating_sub(self.opts.overlap_ms).max(0);
        let filters: Vec<(&str, String)> = if admin { Vec::new() } else { self.opts.event_types.iter().map(|t| ("type", t.clone())).collect() };
        let tz = self.decode.time_zone().map_err(anyhow::Error::msg)?;
        let ctx = Context { opts: &self.decode, tz, deliveries: None, lines_may_be_noise: false };
        let input: std::sync::Arc<str> = format!("admin-api:{realm}/{}", if admin { "admin-events" } else { "events" }).into();
        let mut counts = PollCounts::default();
        let mut first = 0usize;
        let page = self.opts.page_size.max(1);
        let mut fresh: Vec<(String, i64, Item)> = Vec::new();
        loop {
            let batch = self.api.events_page(realm, admin, from, first, page, &filters).await?;
            let n = batch.len();
            counts.fetched += n as u64;
            for (i, v) in batch.into_iter().enumerate() {
                let text = v.to_string();
                let origin = Origin { input: input.clone(), index: Some((first + i) as u32), ..Default::default() };
                let mut items = Vec::new();
                decode_record(&text, Format::Keycloak, &origin, &[], &ctx, &mut items);
                for item in items {
                    let (id, t) = match &item.decoded {
                        Decoded::Event(e) => (e.id.clone(), e.time.map(|t| t.timestamp_millis()).unwrap_or(sc.high_water_ms)),
                        // An undecodable record still goes to the pipeline (and its dead-letter store);
                        // keyed by its text so it is not re-sent every poll.
                        _ => (format!("raw:{}", crate::decode::json::preview(&text, 200)), sc.high_water_ms),
                    };
                    if sc.recent.contains_key(&id) || t < from || fresh.iter().any(|(f, _, _)| f == &id) {
                        continue;
                    }
                    fresh.push((id, t, item));
                }
            }
            if n < page {
                break;
            }
            first += n;
        }
        counts.new = fresh.len() as u64;
        if fresh.is_empty() {
            return Ok(counts);
        }
        let items: Vec<Item> = fresh.iter().map(|(_, _, it)| it.clone()).collect();
        let rx = self.pipeline.submit(items, "admin_poll", false).await?;
        let report = rx.await.map_err(|_| anyhow::anyhow!("pipeline stopped"))??;
        if report.counts().failed > 0 {
            anyhow::bail!("some polled events could be neither delivered nor dead-lettered; the cursor stays put");
        }
        for (id, t, _) in fresh {
            sc.high_water_ms = sc.high_water_ms.max(t);
            sc.recent.insert(id, t);
        }
        let horizon = sc.high_water_ms.saturating_sub(self.opts.overlap_ms);
        sc.recent.retain(|_, t| *t >= horizon);
        Ok(counts)
    }
}
