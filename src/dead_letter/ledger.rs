//! What became of each dead letter: an append-only JSON-lines ledger next to the dead-letter file
//! (`<path>.state.jsonl`), one line per state change, `{id, action, at, outcome, ...}`.
//!
//! The dead-letter file itself is only ever appended to (by every writer) and rewritten only by
//! `kcaudit dlq compact`; state lives in the ledger, keyed by record id, so it survives rotation and
//! compaction and the file's writers never contend with `kcaudit dlq`. A record with no ledger line
//! is `pending`. The first state-changing line for an id decides its state (the commands that write
//! the ledger hold an exclusive lock on it and only change pending records, so a second line would
//! only come from a hand edit). The ledger is also the durable count of every state change.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{derived_id, DeadLetter};

/// The ledger next to a dead-letter file: `<path>.state.jsonl`.
pub fn ledger_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".state.jsonl");
    PathBuf::from(s)
}

/// A record's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Not resolved yet: what `replay` and `purge` act on, and what `compact` always keeps.
    Pending,
    /// Re-submitted and reported delivered by every sink it was sent to.
    Replayed,
    /// Re-submitted and dead-lettered again: the new record(s) in `superseded_by` hold it now.
    Superseded,
    /// Dropped on purpose (`kcaudit dlq purge --yes`).
    Purged,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Replayed => "replayed",
            State::Superseded => "superseded",
            State::Purged => "purged",
        }
    }

    pub fn parse(s: &str) -> Result<State, String> {
        Ok(match s {
            "pending" => State::Pending,
            "replayed" => State::Replayed,
            "superseded" => State::Superseded,
            "purged" => State::Purged,
            other => return Err(format!("unknown state {other:?}; expected pending, replayed, superseded, purged or all")),
        })
    }
}

/// One ledger line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// The dead letter's id.
    pub id: String,
    /// The state it moved to (`replayed`, `superseded`, `purged`).
    pub action: State,
    /// When (RFC 3339, UTC).
    pub at: String,
    /// `delivered` (replayed), `failed_again` (superseded), `purged`.
    pub outcome: String,
    /// Sinks the record was delivered to (replayed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sinks: Vec<String>,
    /// Ids of the new dead letters that hold it now (superseded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub superseded_by: Vec<String>,
    /// The new failure's reason, or a note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl LedgerEntry {
    pub fn new(id: &str, action: State, outcome: &str) -> Self {
        LedgerEntry {
            id: id.to_string(),
            action,
            at: crate::event::format_time(&chrono::Utc::now()),
            outcome: outcome.to_string(),
            sinks: vec![],
            superseded_by: vec![],
            detail: None,
        }
    }
}

/// A line that could not be used, with where it is.
#[derive(Debug, Clone, Serialize)]
pub struct Unreadable {
    pub file: PathBuf,
    pub line: u64,
    pub error: String,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} line {}: {}", self.file.display(), self.line, self.error)
    }
}

/// The ledger, read.
#[derive(Debug, Default)]
pub struct Ledger {
    pub entries: Vec<LedgerEntry>,
    /// Index of the first entry per id (the one that decides the state).
    first: HashMap<String, usize>,
    /// New record id -> the record it superseded.
    replay_of: HashMap<String, String>,
    pub unreadable: Vec<Unreadable>,
}

impl Ledger {
    /// Read the ledger (missing: empty). A corrupt line is reported and skipped; an incomplete last
    /// line (a crash mid-append; cut by the next writer) is ignored.
    pub fn read(path: &Path) -> anyhow::Result<Ledger> {
        let mut l = Ledger::default();
        for line in read_lines(path)? {
            let (n, text) = match line {
                Line::Text(n, t) => (n, t),
                Line::Bad(n, e, _) => {
                    l.unreadable.push(Unreadable { file: path.to_path_buf(), line: n, error: e });
                    continue;
                }
                Line::Incomplete(..) => continue,
            };
            if text.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<LedgerEntry>(&text) {
                Ok(e) => l.push(e),
                Err(e) => l.unreadable.push(Unreadable { file: path.to_path_buf(), line: n, error: format!("not a ledger entry: {e}") }),
            }
        }
        Ok(l)
    }

    /// Add an entry (after it is durable), keeping the indexes up to date.
    pub fn push(&mut self, e: LedgerEntry) {
        if e.action != State::Pending {
            self.first.entry(e.id.clone()).or_insert(self.entries.len());
        }
        for n in &e.superseded_by {
            self.replay_of.entry(n.clone()).or_insert_with(|| e.id.clone());
        }
        self.entries.push(e);
    }

    pub fn state(&self, id: &str) -> State {
        self.first.get(id).map(|&i| self.entries[i].action).unwrap_or(State::Pending)
    }

    /// The entry that decided the state.
    pub fn decision(&self, id: &str) -> Option<&LedgerEntry> {
        self.first.get(id).map(|&i| &self.entries[i])
    }

    /// Every entry for `id`, oldest first.
    pub fn history(&self, id: &str) -> Vec<&LedgerEntry> {
        self.entries.iter().filter(|e| e.id == id).collect()
    }

    /// The record a replay superseded with this one.
    pub fn replay_of(&self, id: &str) -> Option<&str> {
        self.replay_of.get(id).map(String::as_str)
    }
}

/// The ledger open for appending, locked exclusively: one `kcaudit dlq replay|purge|compact` at a
/// time per ledger. Dropping it releases the lock.
pub struct LedgerWriter {
    path: PathBuf,
    file: File,
}

impl LedgerWriter {
    /// Lock the ledger, waiting up to two seconds for another command to finish.
    pub fn lock(path: &Path) -> anyhow::Result<LedgerWriter> {
        Self::lock_within(path, std::time::Duration::from_secs(2))
    }

    pub fn lock_within(path: &Path, wait: std::time::Duration) -> anyhow::Result<LedgerWriter> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(|e| anyhow::anyhow!("cannot open the dead-letter ledger {}: {e}", path.display()))?;
        match try_lock_within(&file, wait) {
            Ok(true) => {}
            Ok(false) => anyhow::bail!("another `kcaudit dlq replay|purge|compact` is working on {}; wait for it to finish", path.display()),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "File locks are not available here; run one `kcaudit dlq` command at a time.");
            }
        }
        // Ours alone now: a partial last line is a crash's leftover.
        let cut = crate::sinks::file::repair_torn_tail(path).map_err(|e| anyhow::anyhow!("cannot check the dead-letter ledger {}: {e}", path.display()))?;
        if cut > 0 {
            tracing::warn!(path = %path.display(), bytes = cut, "Removed a torn last ledger line left by a crash (that state change did not happen).");
        }
        Ok(LedgerWriter { path: path.to_path_buf(), file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append entries durably (written, then fsynced).
    pub fn append(&mut self, entries: &[LedgerEntry]) -> anyhow::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(entries.len() * 160);
        for e in entries {
            serde_json::to_writer(&mut buf, e)?;
            buf.push(b'\n');
        }
        self.file
            .write_all(&buf)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| anyhow::anyhow!("cannot write the dead-letter ledger {}: {e}", self.path.display()))
    }
}

/// Take `file`'s exclusive lock, retrying for up to `wait` (a lock can also be held for a moment by a
/// process forked while this one had the file open, until it execs). Ok(false): still held.
pub(crate) fn try_lock_within(file: &File, wait: std::time::Duration) -> std::io::Result<bool> {
    let until = std::time::Instant::now() + wait;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(true),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < until => std::thread::sleep(std::time::Duration::from_millis(25)),
            Err(std::fs::TryLockError::WouldBlock) => return Ok(false),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
}

/// One dead letter as read from a file, with where it is and its stored line.
#[derive(Debug, Clone)]
pub struct Scanned {
    pub file: PathBuf,
    pub line: u64,
    /// The line exactly as stored (without its newline).
    pub text: String,
    /// The record; `id` filled in ([`derived_id`]) when the line has none.
    pub record: DeadLetter,
}

/// The dead-letter files, read: records in file order (first occurrence of an id wins; a copy of the
/// same record in a second file, e.g. a rotated one, is skipped), and the lines that could not be read.
#[derive(Debug, Default)]
pub struct Scan {
    pub records: Vec<Scanned>,
    pub unreadable: Vec<Unreadable>,
    /// Lines skipped as copies of a record already read.
    pub copies: usize,
    /// A last line without its newline: an append in progress, or a crash's leftover.
    pub incomplete: Vec<Unreadable>,
}

/// Read dead-letter files. A missing file is empty; a corrupt line is reported (file and line number)
/// and skipped, never fatal.
pub fn scan(files: &[PathBuf]) -> anyhow::Result<Scan> {
    let mut out = Scan::default();
    let mut seen: HashSet<String> = HashSet::new();
    for file in files {
        for line in read_lines(file)? {
            let (n, text) = match line {
                Line::Text(n, t) => (n, t),
                Line::Bad(n, e, _) => {
                    out.unreadable.push(Unreadable { file: file.clone(), line: n, error: e });
                    continue;
                }
                Line::Incomplete(n) => {
                    out.incomplete.push(Unreadable { file: file.clone(), line: n, error: "incomplete last line (an append in progress, or left by a crash)".into() });
                    continue;
                }
            };
            if text.trim().is_empty() {
                continue;
            }
            let mut record: DeadLetter = match serde_json::from_str(&text) {
                Ok(r) => r,
                Err(e) => {
                    out.unreadable.push(Unreadable { file: file.clone(), line: n, error: format!("not a dead-letter record: {e}") });
                    continue;
                }
            };
            if record.id.is_empty() {
                record.id = derived_id(&text);
            }
            if !seen.insert(record.id.clone()) {
                out.copies += 1;
                continue;
            }
            out.records.push(Scanned { file: file.clone(), line: n, text, record });
        }
    }
    Ok(out)
}

pub(crate) enum Line {
    Text(u64, String),
    /// Not UTF-8 (the reason, and the bytes as stored).
    Bad(u64, String, Vec<u8>),
    /// The last line, without a newline.
    Incomplete(u64),
}

/// Every line of a file with its 1-based number (missing file: none).
pub(crate) fn read_lines(path: &Path) -> anyhow::Result<Vec<Line>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    };
    let mut r = BufReader::with_capacity(256 * 1024, f);
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut n = 0u64;
    loop {
        buf.clear();
        let got = r.read_until(b'\n', &mut buf).map_err(|e| anyhow::anyhow!("cannot read {} after line {n}: {e}", path.display()))?;
        if got == 0 {
            break;
        }
        n += 1;
        if buf.last() != Some(&b'\n') {
            out.push(Line::Incomplete(n));
            break;
        }
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        match String::from_utf8(std::mem::take(&mut buf)) {
            Ok(t) => out.push(Line::Text(n, t)),
            Err(e) => {
                let reason = format!("not UTF-8: {}", e.utf8_error());
                out.push(Line::Bad(n, reason, e.into_bytes()))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dead_letter::Stage;
    use crate::event::Origin;

    #[test]
    fn the_first_state_change_decides_and_bad_lines_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dl.jsonl.state.jsonl");
        let mut w = LedgerWriter::lock(&p).unwrap();
        let mut s = LedgerEntry::new("a", State::Superseded, "failed_again");
        s.superseded_by = vec!["b".into()];
        w.append(&[LedgerEntry::new("x", State::Replayed, "delivered"), s, LedgerEntry::new("x", State::Purged, "purged")]).unwrap();
        assert!(LedgerWriter::lock_within(&p, std::time::Duration::ZERO).is_err(), "one writer at a time");
        drop(w);
        // A corrupt line, then a torn one at the end.
        {
            let mut f = OpenOptions::new().append(true).open(&p).unwrap();
            f.write_all(b"garbage\n{\"id\":\"y\",\"act").unwrap();
        }
        let l = Ledger::read(&p).unwrap();
        assert_eq!(l.state("x"), State::Replayed);
        assert_eq!(l.history("x").len(), 2);
        assert_eq!(l.state("a"), State::Superseded);
        assert_eq!(l.replay_of("b"), Some("a"));
        assert_eq!(l.state("b"), State::Pending);
        assert_eq!(l.state("y"), State::Pending);
        assert_eq!(l.unreadable.len(), 1);
        assert_eq!(l.unreadable[0].line, 4);
        // The next writer cuts the torn line before appending.
        let mut w = LedgerWriter::lock(&p).unwrap();
        w.append(&[LedgerEntry::new("y", State::Purged, "purged")]).unwrap();
        let l = Ledger::read(&p).unwrap();
        assert_eq!(l.state("y"), State::Purged);
        assert_eq!(l.unreadable.len(), 1);
    }

    #[test]
    fn scan_reports_corrupt_lines_and_skips_copies() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("dl.jsonl"), dir.path().join("dl.jsonl.1"));
        let r = |reason: &str| serde_json::to_string(&DeadLetter::new(Stage::Sink, reason, Origin::default())).unwrap();
        let (one, two) = (r("one"), r("two"));
        std::fs::write(&a, format!("{one}\n{{not json\n\n{two}\n{{\"id\":\"in-progress")).unwrap();
        let mut bytes = format!("{one}\n").into_bytes();
        bytes.extend_from_slice(b"\xff\xfe\n");
        std::fs::write(&b, bytes).unwrap();
        let s = scan(&[a.clone(), b.clone(), dir.path().join("missing")]).unwrap();
        assert_eq!(s.records.len(), 2);
        assert_eq!((s.records[1].line, s.records[1].record.reason.as_str()), (4, "two"));
        assert_eq!(s.copies, 1, "the same record in a rotated copy is one record");
        let bad: Vec<(String, u64)> = s.unreadable.iter().map(|u| (u.file.file_name().unwrap().to_string_lossy().into_owned(), u.line)).collect();
        assert_eq!(bad, vec![("dl.jsonl".to_string(), 2), ("dl.jsonl.1".to_string(), 2)]);
        assert!(s.unreadable[0].error.contains("not a dead-letter record"));
        assert!(s.unreadable[1].error.contains("UTF-8"));
        assert_eq!(s.incomplete.len(), 1);
        assert_eq!(s.incomplete[0].line, 5);
    }
}
