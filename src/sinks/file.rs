//! The audit log: append-only JSON lines on local disk, with a configurable fsync policy and
//! size-based rotation (`audit.jsonl` → `audit.jsonl.1` → … → `audit.jsonl.N`, oldest removed).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{BatchOptions, BoxFuture, RetryOptions, Sink, SinkError, WriteReport};
use crate::event::AuditEvent;

/// When the audit log is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// fsync after every batch, before its events are acknowledged (durable; the default).
    Batch,
    /// fsync at most every `fsync_interval_ms`; events are acknowledged once written to the OS, so a
    /// power loss can lose the last interval.
    Interval,
    /// Never fsync explicitly (the OS decides). For throwaway output only.
    Never,
}

/// `[sinks.audit_log]`: the local append-only audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AuditLogOptions {
    /// Write the audit log at all.
    pub enabled: bool,
    /// File path; relative paths are under `data_dir`.
    pub path: PathBuf,
    pub fsync: FsyncPolicy,
    /// With `fsync = "interval"`: the longest time between fsyncs, in milliseconds.
    pub fsync_interval_ms: u64,
    /// Rotate when the file would grow past this many bytes (0 = never rotate).
    pub rotate_bytes: u64,
    /// Rotated files kept (`audit.jsonl.1` is the newest).
    pub keep_rotated: usize,
    pub batch: BatchOptions,
    pub retry: RetryOptions,
}

impl Default for AuditLogOptions {
    fn default() -> Self {
        AuditLogOptions {
            enabled: true,
            path: PathBuf::from("audit.jsonl"),
            fsync: FsyncPolicy::Batch,
            fsync_interval_ms: 1000,
            rotate_bytes: 256 * 1024 * 1024,
            keep_rotated: 10,
            batch: BatchOptions::default(),
            retry: RetryOptions::default(),
        }
    }
}

struct State {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    last_sync: Instant,
    fsync: FsyncPolicy,
    fsync_interval: Duration,
    rotate_bytes: u64,
    keep_rotated: usize,
}

/// A JSON-lines file sink (the audit log, or `replay --out`).
pub struct FileSink {
    name: String,
    state: Arc<Mutex<State>>,
    /// This sink's own write options, put into the shared state at each write: after a hot reload
    /// the retired sink finishes its batches with the old options while the new one uses the new.
    opts: FileOptions,
    memo: crate::json_line::Memo,
}

#[derive(Clone, Copy)]
struct FileOptions {
    fsync: FsyncPolicy,
    fsync_interval: Duration,
    rotate_bytes: u64,
    keep_rotated: usize,
}

/// Append-mode files open in this process, by path. A hot reload starts a new audit-log sink while
/// the retired one may still be writing: opening the file afresh would run the torn-tail repair
/// against a write in progress and keep two views of its size (so rotation would go wrong). Both
/// sinks share one state instead, serialised by its lock.
static OPEN_FILES: std::sync::LazyLock<Mutex<std::collections::HashMap<PathBuf, std::sync::Weak<Mutex<State>>>>> = std::sync::LazyLock::new(Default::default);

impl FileSink {
    /// Open for appending (the audit log).
    pub fn open(name: &str, path: &Path, opts: &AuditLogOptions) -> anyhow::Result<Self> {
        Self::open_with(name, path, opts.fsync, Duration::from_millis(opts.fsync_interval_ms), opts.rotate_bytes, opts.keep_rotated, false)
    }

    /// Create or truncate a plain output file (replay `--out`): no rotation, fsync at close.
    pub fn create_output(path: &Path) -> anyhow::Result<Self> {
        Self::open_with("output", path, FsyncPolicy::Never, Duration::ZERO, 0, 0, true)
    }

    fn open_with(name: &str, path: &Path, fsync: FsyncPolicy, fsync_interval: Duration, rotate_bytes: u64, keep_rotated: usize, truncate: bool) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create directory {}: {e}", dir.display()))?;
        }
        let opts = FileOptions { fsync, fsync_interval, rotate_bytes, keep_rotated };
        let mut open = OPEN_FILES.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, s| s.strong_count() > 0);
        if !truncate {
            if let Some(state) = open.get(path).and_then(|s| s.upgrade()) {
                return Ok(FileSink { name: name.to_string(), state, opts, memo: Default::default() });
            }
        }
        let file = open_file(path, truncate).map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let state = Arc::new(Mutex::new(State {
            path: path.to_path_buf(),
            file: Some(file),
            size,
            last_sync: Instant::now(),
            fsync,
            fsync_interval,
            rotate_bytes,
            keep_rotated,
        }));
        if !truncate {
            open.insert(path.to_path_buf(), Arc::downgrade(&state));
        }
        Ok(FileSink { name: name.to_string(), state, opts, memo: Default::default() })
    }
}

fn open_file(path: &Path, truncate: bool) -> std::io::Result<File> {
    if truncate {
        OpenOptions::new().create(true).write(true).truncate(true).open(path)
    } else {
        let cut = repair_torn_tail(path)?;
        if cut > 0 {
            tracing::warn!(path = %path.display(), bytes = cut, "Removed a torn last line left by a crash (its events were never acknowledged and will be delivered again).");
        }
        OpenOptions::new().create(true).append(true).open(path)
    }
}

/// Cut a JSON-lines file back to its last complete line; returns the bytes removed. A crash (kill -9,
/// power loss) mid-write leaves a partial line, and the next append would glue a good record onto it.
/// Whatever was partial was never acknowledged, so removing it loses nothing.
pub fn repair_torn_tail(path: &Path) -> std::io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            let keep = start + i as u64 + 1;
            if keep < len {
                f.set_len(keep)?;
                f.sync_all()?;
            }
            return Ok(len - keep);
        }
        end = start;
    }
    if len > 0 {
        f.set_len(0)?;
        f.sync_all()?;
    }
    Ok(len)
}

/// Encode events as JSON lines into one buffer (`memo`: the sink's, kept across batches).
pub fn encode_lines(events: &[Arc<AuditEvent>], memo: &mut crate::json_line::Memo) -> Vec<u8> {
    // Sized from the first line (2-3 KB with enrichment), with room to spare, instead of a fixed guess:
    // a guess below the real size grew (copied) the buffer for nearly every batch (issue #9).
    let mut buf = Vec::with_capacity(4096);
    for (i, e) in events.iter().enumerate() {
        crate::json_line::write_event_memo(&mut buf, e, memo);
        buf.push(b'\n');
        if i == 0 {
            buf.reserve((events.len() - 1) * (buf.len() + buf.len() / 4));
        }
    }
    buf
}

impl State {
    fn rotated(&self, n: usize) -> PathBuf {
        let mut s = self.path.as_os_str().to_owned();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if let Some(f) = self.file.take() {
            f.sync_all()?;
        }
        if self.keep_rotated == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(self.rotated(self.keep_rotated));
            for n in (1..self.keep_rotated).rev() {
                let from = self.rotated(n);
                if from.exists() {
                    std::fs::rename(&from, self.rotated(n + 1))?;
                }
            }
            std::fs::rename(&self.path, self.rotated(1))?;
        }
        self.file = Some(open_file(&self.path, false)?);
        self.size = 0;
        Ok(())
    }

    fn append(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.rotate_bytes > 0 && self.size > 0 && self.size + buf.len() as u64 > self.rotate_bytes {
            self.rotate()?;
        }
        if self.file.is_none() {
            self.file = Some(open_file(&self.path, false)?);
        }
        let f = self.file.as_mut().ok_or_else(|| std::io::Error::other("file not open"))?;
        f.write_all(buf)?;
        self.size += buf.len() as u64;
        let sync = match self.fsync {
            FsyncPolicy::Batch => true,
            FsyncPolicy::Interval => self.last_sync.elapsed() >= self.fsync_interval,
            FsyncPolicy::Never => false,
        };
        if sync {
            f.sync_data()?;
            self.last_sync = Instant::now();
        }
        Ok(())
    }
}

impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn write<'a>(&'a mut self, events: &'a [Arc<AuditEvent>]) -> BoxFuture<'a, Result<WriteReport, SinkError>> {
        let buf = encode_lines(events, &mut self.memo);
        let state = self.state.clone();
        let o = self.opts;
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut s = state.lock().map_err(|_| SinkError::Permanent("file sink lock poisoned".into()))?;
                (s.fsync, s.fsync_interval, s.rotate_bytes, s.keep_rotated) = (o.fsync, o.fsync_interval, o.rotate_bytes, o.keep_rotated);
                let path = s.path.display().to_string();
                // A failed write may have left a partial line; the file handle is reopened on retry so
                // the next append starts clean after whatever the OS kept.
                s.append(&buf).map_err(|e| {
                    s.file = None;
                    SinkError::Transient(format!("writing {path}: {e}"))
                })
            })
            .await
            .map_err(|e| SinkError::Transient(format!("file writer task failed: {e}")))??;
            Ok(WriteReport::default())
        })
    }

    fn close<'a>(&'a mut self) -> BoxFuture<'a, Result<(), SinkError>> {
        let state = self.state.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut s = state.lock().map_err(|_| SinkError::Permanent("file sink lock poisoned".into()))?;
                if let Some(f) = s.file.as_mut() {
                    f.flush().and_then(|_| f.sync_all()).map_err(|e| SinkError::Transient(e.to_string()))?;
                }
                Ok(())
            })
            .await
            .map_err(|e| SinkError::Transient(e.to_string()))?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_is_cut_and_whole_lines_stay() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        for (content, want, cut) in [
            (&b"{\"a\":1}\n{\"b\":2}\n"[..], &b"{\"a\":1}\n{\"b\":2}\n"[..], 0),
            (b"{\"a\":1}\n{\"b\":", b"{\"a\":1}\n", 5),
            (b"{\"torn", b"", 6),
            (b"", b"", 0),
        ] {
            std::fs::write(&p, content).unwrap();
            assert_eq!(repair_torn_tail(&p).unwrap(), cut);
            assert_eq!(std::fs::read(&p).unwrap(), want);
        }
        // Larger than one read chunk: the last newline is far from the end.
        let mut big = b"{\"a\":1}\n".to_vec();
        big.extend(std::iter::repeat_n(b'x', 200_000));
        std::fs::write(&p, &big).unwrap();
        assert_eq!(repair_torn_tail(&p).unwrap(), 200_000);
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"a\":1}\n");
        assert_eq!(repair_torn_tail(&dir.path().join("missing")).unwrap(), 0);
    }

    #[test]
    fn rotation_keeps_n_files_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut st = State {
            path: path.clone(),
            file: Some(open_file(&path, false).unwrap()),
            size: 0,
            last_sync: Instant::now(),
            fsync: FsyncPolicy::Batch,
            fsync_interval: Duration::ZERO,
            rotate_bytes: 10,
            keep_rotated: 2,
        };
        for i in 0..5 {
            st.append(format!("line-{i}-xx\n").as_bytes()).unwrap();
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "line-4-xx\n");
        assert_eq!(std::fs::read_to_string(dir.path().join("audit.jsonl.1")).unwrap(), "line-3-xx\n");
        assert_eq!(std::fs::read_to_string(dir.path().join("audit.jsonl.2")).unwrap(), "line-2-xx\n");
        assert!(!dir.path().join("audit.jsonl.3").exists());
    }
}
