//! The durable ingest spool: a write-ahead log on local disk between the webhook and the pipeline.
//!
//! Keycloak's webhook senders retry little (p2-inc treats a refused connection as final), so with the
//! spool on, a request is answered 2xx as soon as its decoded records are on disk, and the sinks drain
//! the spool at their own pace: ClickHouse can be down for an hour and nothing is refused or lost.
//!
//! - **Group commit.** Requests hand their records to one writer thread, which appends every request
//!   waiting at that moment and covers them all with one `fdatasync` before answering any of them.
//! - **Framing.** Each request is one frame: `u32 length | u32 CRC-32 | JSON`, in numbered segment
//!   files (`spool/00000000000000000001.seg`, ...) rolled at `segment_bytes`.
//! - **Draining.** A drainer task reads committed frames in order, submits them to the pipeline, and
//!   advances a cursor (`spool/cursor`, replaced atomically) over the frames whose records every sink
//!   accepted or dead-lettered. Fully drained segments are deleted.
//! - **Crash recovery.** At start the segments are scanned from the cursor; frames after the cursor
//!   are drained again (at least once: the pipeline's dedup and downstream dedup by event id absorb
//!   the repeats). A torn or corrupt frame (short header, impossible length, short payload, CRC
//!   mismatch) and everything after it in its segment are moved to `spool/quarantine/` and the rest
//!   is recovered: kcaudit never refuses to start because of its spool (Vector's disk-buffer bug).
//! - **Bounded.** Undrained bytes are capped by `max_bytes`; beyond it the webhook answers 503 with
//!   `Retry-After`, never a silent drop.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::decode::{Decoded, Item};
use crate::event::{AuditEvent, Origin};
use crate::metrics::Metrics;
use crate::pipeline::{ItemStatus, PipelineHandle};

/// `[spool]`: the durable ingest spool (webhook → disk → pipeline).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolOptions {
    pub enabled: bool,
    /// Directory of the segments, the cursor and the quarantine; relative paths are under `data_dir`.
    pub path: PathBuf,
    /// Most undrained bytes kept; beyond it the webhook answers 503 + Retry-After.
    pub max_bytes: u64,
    /// A segment file is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// Spooled requests handed to the pipeline and not yet finished.
    pub max_in_flight: usize,
    /// How often the drain position is saved, in milliseconds (a crash drains at most this much again).
    pub cursor_save_ms: u64,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions { enabled: false, path: PathBuf::from("spool"), max_bytes: 1 << 30, segment_bytes: 64 << 20, max_in_flight: 16, cursor_save_ms: 200 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full ({0} bytes waiting for the sinks); retry later")]
    Full(u64),
    #[error("the spool could not be written: {0}")]
    Io(String),
}

/// One record as spooled (the decoded form, so draining does not decode again).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum SpoolItem {
    Event { event: std::sync::Arc<AuditEvent> },
    Rejected { origin: Origin, reason: String, raw_base64: Option<String> },
    Skipped { origin: Origin, reason: String },
}

#[derive(Debug, Serialize, Deserialize)]
struct Frame {
    items: Vec<SpoolItem>,
}

fn to_frame(items: Vec<Item>) -> Frame {
    let b64 = base64::engine::general_purpose::STANDARD;
    Frame {
        items: items
            .into_iter()
            .map(|i| match i.decoded {
                Decoded::Event(event) => SpoolItem::Event { event },
                Decoded::Rejected(reason) => SpoolItem::Rejected { origin: i.origin, reason, raw_base64: i.raw.map(|r| b64.encode(r)) },
                Decoded::Skipped(reason) => SpoolItem::Skipped { origin: i.origin, reason },
            })
            .collect(),
    }
}

fn from_frame(f: Frame) -> Vec<Item> {
    let b64 = base64::engine::general_purpose::STANDARD;
    f.items
        .into_iter()
        .map(|i| match i {
            SpoolItem::Event { event } => Item { origin: event.origin.clone(), decoded: Decoded::Event(event), raw: None },
            SpoolItem::Rejected { origin, reason, raw_base64 } => Item { origin, decoded: Decoded::Rejected(reason), raw: raw_base64.and_then(|r| b64.decode(r).ok()) },
            SpoolItem::Skipped { origin, reason } => Item { origin, decoded: Decoded::Skipped(reason), raw: None },
        })
        .collect()
}

const HEADER: u64 = 8;
/// No single request can be larger than this (the webhook caps bodies far below).
const MAX_FRAME: u32 = 512 << 20;

/// A position in the spool: segment number and byte offset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Pos {
    pub segment: u64,
    pub offset: u64,
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:020}.seg"))
}

fn segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut v: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".seg")).and_then(|n| n.parse().ok()))
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// Read one frame at the file's position: `Ok(None)` at a clean end, `Err(reason)` when the bytes
/// there are not a whole, intact frame.
fn read_frame(f: &mut File, len_left: u64) -> Result<Option<Vec<u8>>, String> {
    if len_left == 0 {
        return Ok(None);
    }
    if len_left < HEADER {
        return Err(format!("torn frame header ({len_left} bytes)"));
    }
    let mut h = [0u8; 8];
    f.read_exact(&mut h).map_err(|e| e.to_string())?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if len == 0 || len > MAX_FRAME {
        return Err(format!("impossible frame length {len}"));
    }
    if u64::from(len) > len_left - HEADER {
        return Err(format!("torn frame: {len} bytes announced, {} present", len_left - HEADER));
    }
    let mut payload = vec![0u8; len as usize];
    f.read_exact(&mut payload).map_err(|e| e.to_string())?;
    if crc32fast::hash(&payload) != crc {
        return Err("checksum mismatch".into());
    }
    Ok(Some(payload))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// What recovery found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Frames after the saved cursor (to be drained again).
    pub frames: u64,
    pub bytes: u64,
    /// Bytes moved to the quarantine (torn or corrupt).
    pub quarantined: u64,
}

/// Scan from `from`, quarantining whatever is not a whole frame; returns the recovery summary and
/// the end position (where the writer continues).
fn recover(dir: &Path, from: Pos) -> std::io::Result<(Recovery, Pos)> {
    let mut r = Recovery::default();
    let segs = segments(dir)?;
    let mut end = Pos { segment: segs.last().copied().unwrap_or(1).max(from.segment), offset: 0 };
    for &n in segs.iter().filter(|&&n| n >= from.segment) {
        let path = segment_path(dir, n);
        let mut f = OpenOptions::new().read(true).write(true).open(&path)?;
        let len = f.metadata()?.len();
        let mut pos = if n == from.segment { from.offset.min(len) } else { 0 };
        f.seek(SeekFrom::Start(pos))?;
        loop {
            match read_frame(&mut f, len - pos) {
                Ok(None) => break,
                Ok(Some(p)) => {
                    pos += HEADER + p.len() as u64;
                    r.frames += 1;
                    r.bytes += HEADER + p.len() as u64;
                }
                Err(reason) => {
                    let qdir = dir.join("quarantine");
                    std::fs::create_dir_all(&qdir)?;
                    let qpath = qdir.join(format!("{n:020}-{pos}.bad"));
                    let mut tail = Vec::new();
                    f.seek(SeekFrom::Start(pos))?;
                    f.read_to_end(&mut tail)?;
                    std::fs::write(&qpath, &tail)?;
                    f.set_len(pos)?;
                    f.sync_all()?;
                    r.quarantined += tail.len() as u64;
                    tracing::error!(segment = %path.display(), offset = pos, bytes = tail.len(), reason = %reason, quarantine = %qpath.display(), "Spool damage: the bad tail was quarantined and the rest recovered.");
                    break;
                }
            }
        }
        end = Pos { segment: n, offset: pos };
    }
    Ok((r, end))
}

struct Append {
    payload: Vec<u8>,
    reply: oneshot::Sender<Result<(), String>>,
}

/// The running spool: cloneable handle for the webhook.
#[derive(Clone)]
pub struct Spool {
    tx: mpsc::Sender<Append>,
    pending: Arc<AtomicU64>,
    max_bytes: u64,
    metrics: Metrics,
}

impl Spool {
    /// Open (recovering whatever a crash left), start the writer thread and the drainer task.
    pub fn start(opts: &SpoolOptions, dir: &Path, pipeline: PipelineHandle) -> anyhow::Result<(Spool, tokio::task::JoinHandle<()>, Recovery)> {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create spool directory {}: {e}", dir.display()))?;
        let cursor_path = dir.join("cursor");
        let cursor: Pos = match std::fs::read(&cursor_path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::error!(error = %e, "Spool cursor unreadable; draining from the oldest segment (at least once).");
                Pos::default()
            }),
            Err(_) => Pos::default(),
        };
        let first = segments(dir)?.first().copied().unwrap_or(1);
        let cursor = if cursor.segment < first { Pos { segment: first, offset: 0 } } else { cursor };
        let (recovery, end) = recover(dir, cursor)?;
        if recovery.frames > 0 || recovery.quarantined > 0 {
            tracing::info!(frames = recovery.frames, bytes = recovery.bytes, quarantined = recovery.quarantined, "Spool recovered; draining what the sinks had not taken.");
        }
        let metrics = pipeline.metrics.clone();
        metrics.spool_quarantined.inc_by(recovery.quarantined);
        let pending = Arc::new(AtomicU64::new(recovery.bytes));
        metrics.spool_bytes.set(recovery.bytes as i64);
        let (tx, rx) = mpsc::channel::<Append>(1024);
        let (committed_tx, committed_rx) = watch::channel(end);
        let writer = Writer { dir: dir.to_path_buf(), segment_bytes: opts.segment_bytes.max(1 << 16), end, file: None, metrics: metrics.clone() };
        std::thread::Builder::new().name("kcaudit-spool".into()).spawn(move || writer.run(rx, committed_tx))?;
        let drainer = Drainer {
            dir: dir.to_path_buf(),
            pipeline,
            cursor,
            committed: committed_rx,
            pending: pending.clone(),
            max_in_flight: opts.max_in_flight.max(1),
            save_every: Duration::from_millis(opts.cursor_save_ms.max(1)),
        };
        let task = tokio::spawn(drainer.run());
        Ok((Spool { tx, pending, max_bytes: opts.max_bytes, metrics }, task, recovery))
    }

    /// Append one request's records durably (returns once fsynced).
    pub async fn append(&self, items: Vec<Item>) -> Result<(), SpoolError> {
        let payload = serde_json::to_vec(&to_frame(items)).map_err(|e| SpoolError::Io(e.to_string()))?;
        let size = HEADER + payload.len() as u64;
        let before = self.pending.fetch_add(size, Ordering::AcqRel);
        if before + size > self.max_bytes {
            self.pending.fetch_sub(size, Ordering::AcqRel);
            self.metrics.spool_full.inc();
            return Err(SpoolError::Full(before));
        }
        let (reply, rx) = oneshot::channel();
        let failed = |e: String, pending: &AtomicU64| {
            pending.fetch_sub(size, Ordering::AcqRel);
            SpoolError::Io(e)
        };
        if self.tx.send(Append { payload, reply }).await.is_err() {
            return Err(failed("the spool writer stopped".into(), &self.pending));
        }
        match rx.await {
            Ok(Ok(())) => {
                self.metrics.spool_bytes.set(self.pending.load(Ordering::Acquire) as i64);
                Ok(())
            }
            Ok(Err(e)) => Err(failed(e, &self.pending)),
            Err(_) => Err(failed("the spool writer stopped".into(), &self.pending)),
        }
    }
}

struct Writer {
    dir: PathBuf,
    segment_bytes: u64,
    end: Pos,
    file: Option<File>,
    metrics: Metrics,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Append>, committed: watch::Sender<Pos>) {
        while let Some(first) = rx.blocking_recv() {
            // Group commit: everything waiting now shares one fsync.
            let mut group = vec![first];
            while group.len() < 4096 {
                match rx.try_recv() {
                    Ok(a) => group.push(a),
                    Err(_) => break,
                }
            }
            let result = self.write_group(&group);
            self.metrics.spool_fsyncs.inc();
            if result.is_ok() {
                self.metrics.spool_appends.inc_by(group.len() as u64);
                let _ = committed.send(self.end);
            }
            for a in group {
                let _ = a.reply.send(result.clone());
            }
        }
    }

    fn write_group(&mut self, group: &[Append]) -> Result<(), String> {
        let mut buf = Vec::with_capacity(group.iter().map(|a| a.payload.len() + 8).sum());
        for a in group {
            buf.extend_from_slice(&(a.payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(&a.payload).to_le_bytes());
            buf.extend_from_slice(&a.payload);
        }
        if self.end.offset > 0 && self.end.offset + buf.len() as u64 > self.segment_bytes {
            self.file = None;
            self.end = Pos { segment: self.end.segment + 1, offset: 0 };
        }
        if self.file.is_none() {
            let path = segment_path(&self.dir, self.end.segment);
            let f = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            sync_dir(&self.dir);
            self.file = Some(f);
        }
        let f = self.file.as_mut().expect("opened above");
        let start = self.end.offset;
        let r = f.write_all(&buf).and_then(|_| f.sync_data());
        if let Err(e) = r {
            // Leave no half-written group behind to be mistaken for data.
            let _ = f.set_len(start);
            self.file = None;
            return Err(e.to_string());
        }
        self.end.offset += buf.len() as u64;
        Ok(())
    }
}

struct Drainer {
    dir: PathBuf,
    pipeline: PipelineHandle,
    cursor: Pos,
    committed: watch::Receiver<Pos>,
    pending: Arc<AtomicU64>,
    max_in_flight: usize,
    save_every: Duration,
}

type Report = oneshot::Receiver<Result<crate::pipeline::BatchReport, crate::pipeline::PipelineError>>;

impl Drainer {
    async fn run(mut self) {
        self.drain().await;
        self.save_cursor();
    }

    /// Drain until kcaudit shuts down: then stop taking frames, let the in-flight ones finish, return.
    async fn drain(&mut self) {
        let mut read = self.cursor;
        let mut file: Option<(u64, File)> = None;
        let mut in_flight: VecDeque<(Pos, u64, Vec<u8>, Report)> = VecDeque::new();
        let mut last_save = Instant::now();
        let mut saved = self.cursor;
        loop {
            let closing = self.pipeline.is_closing();
            // Submit committed frames while there is room.
            let committed = *self.committed.borrow();
            while !closing && in_flight.len() < self.max_in_flight && read < committed {
                match self.next_frame(&mut read, &mut file, committed) {
                    Ok(Some((payload, size))) => {
                        let Some(rx) = self.submit(&payload).await else { return };
                        in_flight.push_back((read, size, payload, rx));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "Spool read failed; retrying.");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                }
            }
            if let Some((end, size, payload, rx)) = in_flight.pop_front() {
                // The oldest in-flight request decides how far the cursor may move. Until it is
                // finished nothing more is submitted, so sinks need not wait to fill their batches.
                let report = {
                    let _waiting = self.pipeline.waiting_for_acks();
                    rx.await
                };
                match report.ok().and_then(Result::ok) {
                    Some(report) if report.items.iter().all(|i| i.status != ItemStatus::Accepted || i.failed.is_empty()) => {
                        self.cursor = end;
                        self.pending.fetch_sub(size, Ordering::AcqRel);
                        self.pipeline.metrics.spool_bytes.set(self.pending.load(Ordering::Acquire) as i64);
                    }
                    _ if self.pipeline.is_closing() => return,
                    _ => {
                        // Neither delivered nor dead-lettered: submit again (in place, order kept).
                        tracing::warn!("Spooled records could be neither delivered nor dead-lettered; retrying.");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        let Some(rx) = self.submit(&payload).await else { return };
                        in_flight.push_front((end, size, payload, rx));
                    }
                }
            } else if closing {
                return;
            } else {
                tokio::select! {
                    r = self.committed.changed() => if r.is_err() { return },
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
            if self.cursor != saved && (last_save.elapsed() >= self.save_every || in_flight.is_empty()) {
                self.save_cursor();
                saved = self.cursor;
                last_save = Instant::now();
            }
        }
    }

    async fn submit(&self, payload: &[u8]) -> Option<Report> {
        let items = match serde_json::from_slice::<Frame>(payload) {
            Ok(f) => from_frame(f),
            Err(e) => {
                // A frame that passed its checksum but does not parse was written by another version.
                let origin = Origin { input: "spool".into(), ..Default::default() };
                vec![Item { origin, decoded: Decoded::Rejected(format!("spooled frame unreadable: {e}")), raw: Some(payload.to_vec()) }]
            }
        };
        self.pipeline.submit(items, "webhook", false).await.ok()
    }

    /// The next committed frame at `read` (advancing it), moving to the next segment at a segment's end.
    fn next_frame(&self, read: &mut Pos, file: &mut Option<(u64, File)>, committed: Pos) -> std::io::Result<Option<(Vec<u8>, u64)>> {
        loop {
            if *read >= committed {
                return Ok(None);
            }
            if file.as_ref().map(|(n, _)| *n) != Some(read.segment) {
                let path = segment_path(&self.dir, read.segment);
                match File::open(&path) {
                    Ok(mut f) => {
                        f.seek(SeekFrom::Start(read.offset))?;
                        *file = Some((read.segment, f));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && read.segment < committed.segment => {
                        *read = Pos { segment: read.segment + 1, offset: 0 };
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let (_, f) = file.as_mut().expect("opened above");
            let seg_end = if read.segment == committed.segment { committed.offset } else { f.metadata()?.len() };
            match read_frame(f, seg_end.saturating_sub(read.offset)) {
                Ok(Some(p)) => {
                    let size = HEADER + p.len() as u64;
                    read.offset += size;
                    return Ok(Some((p, size)));
                }
                Ok(None) => {
                    if read.segment < committed.segment {
                        *read = Pos { segment: read.segment + 1, offset: 0 };
                        *file = None;
                        continue;
                    }
                    return Ok(None);
                }
                Err(reason) => return Err(std::io::Error::other(format!("spool segment {} at {}: {reason}", read.segment, read.offset))),
            }
        }
    }

    /// Save the drain position atomically and delete segments wholly before it.
    fn save_cursor(&self) {
        let tmp = self.dir.join("cursor.tmp");
        let r = (|| -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(&self.cursor).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, self.dir.join("cursor"))?;
            sync_dir(&self.dir);
            Ok(())
        })();
        if let Err(e) = r {
            tracing::error!(error = %e, "Could not save the spool cursor (a restart drains more again).");
            return;
        }
        if let Ok(segs) = segments(&self.dir) {
            for n in segs.into_iter().filter(|&n| n < self.cursor.segment) {
                let _ = std::fs::remove_file(segment_path(&self.dir, n));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut b = (payload.len() as u32).to_le_bytes().to_vec();
        b.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn recovery_keeps_whole_frames_and_quarantines_a_torn_or_corrupt_tail() {
        let dir = tempfile::tempdir().unwrap();
        let good = [frame(b"{\"items\":[]}"), frame(b"{\"items\":[] }")].concat();
        for (name, tail, want_frames) in [
            ("torn header", vec![7u8, 0, 0], 2),
            ("torn payload", frame(b"{\"items\":[]}")[..10].to_vec(), 2),
            ("bad checksum", {
                let mut f = frame(b"{\"items\":[]}");
                f[9] ^= 0xff;
                f
            }, 2),
            ("impossible length", [u32::MAX.to_le_bytes(), [0; 4]].concat(), 2),
            ("clean", vec![], 2),
        ] {
            let d = dir.path().join(name.replace(' ', "-"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(segment_path(&d, 1), [good.clone(), tail.clone()].concat()).unwrap();
            let (r, end) = recover(&d, Pos::default()).unwrap();
            assert_eq!(r.frames, want_frames, "{name}");
            assert_eq!(r.quarantined, tail.len() as u64, "{name}");
            assert_eq!(end, Pos { segment: 1, offset: good.len() as u64 }, "{name}");
            assert_eq!(std::fs::read(segment_path(&d, 1)).unwrap(), good, "{name}: the segment is cut back to its whole frames");
            if !tail.is_empty() {
                let q: Vec<_> = std::fs::read_dir(d.join("quarantine")).unwrap().collect();
                assert_eq!(q.len(), 1, "{name}");
            }
        }
    }

    #[test]
    fn recovery_starts_at_the_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let a = frame(b"{\"items\":[]}");
        std::fs::write(segment_path(dir.path(), 3), [a.clone(), a.clone(), a.clone()].concat()).unwrap();
        let (r, _) = recover(dir.path(), Pos { segment: 3, offset: a.len() as u64 }).unwrap();
        assert_eq!((r.frames, r.bytes), (2, 2 * a.len() as u64));
    }
}
