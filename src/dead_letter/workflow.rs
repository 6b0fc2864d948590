//! `kcaudit dlq list|show|replay|purge|compact`: dead letters as a workflow.
//!
//! - `list` and `show` read the dead-letter file(s) and the ledger; they never write, never lock, and
//!   are safe next to a running server (an append in progress shows up as an incomplete last line
//!   and is left out).
//! - `replay` re-submits pending records through a pipeline built from the configuration: a record
//!   refused by a sink goes back to that sink only (every configured sink with `--all-sinks`) exactly
//!   as it was refused (already enriched and evaluated, so no enrichment or detection again); a record
//!   refused before the sinks (decode, auth, dedup) is decoded again from its raw input (or re-submitted
//!   as its event) and goes through enrichment, detection and every configured sink, like new input.
//!   A record is marked `replayed` only when the pipeline reported it delivered; one refused again is
//!   dead-lettered anew by the pipeline and marked `superseded` with the new record's id.
//! - `purge --yes` marks records `purged`; `compact` rewrites the file without the records the ledger
//!   resolved, under the writers' lock (refused while any kcaudit has the file open).
//!
//! Replay is at-least-once: the ledger line is written after the pipeline reported delivery, so a
//! crash in between leaves the record pending and the next replay delivers it again.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde::Serialize;

use super::ledger::{ledger_path, read_lines, scan, try_lock_within, Ledger, LedgerEntry, LedgerWriter, Line, Scan, Scanned, State, Unreadable};
use super::{derived_id, lock_path, open_lock_file, DeadLetter, DeadLetterStore, Stage};
use crate::cli::ConfigArgs;
use crate::config::{Config, Role};
use crate::decode::{decode_body, Context, Decoded, Format, Item};
use crate::event::AuditEvent;
use crate::metrics::Metrics;
use crate::pipeline::{BatchReport, ItemStatus, Pipeline, PipelineError, SinkSpec, Stages};

/// Records per pipeline submission (a record's items never straddle two).
const BATCH_ITEMS: usize = 500;
/// Submissions in flight.
const IN_FLIGHT: usize = 4;

// ---------------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------------

#[derive(Subcommand, Debug)]
pub enum DlqAction {
    /// List dead letters (pending ones by default) as a table, or JSON lines; counts by stage and sink.
    List {
        #[command(flatten)]
        files: FileArgs,
        #[command(flatten)]
        filter: Filter,
        /// Which records: pending, replayed, superseded, purged, or all.
        #[arg(long, default_value = "pending", value_parser = ["pending", "replayed", "superseded", "purged", "all"])]
        state: String,
        /// One JSON object per line (`{id, state, file, line, history, record}`) instead of a table;
        /// the summary goes to standard error.
        #[arg(long)]
        json: bool,
    },
    /// Print one record, whole, with its state and history (pretty JSON).
    Show {
        #[command(flatten)]
        files: FileArgs,
        /// The record's id (or a unique prefix of it).
        #[arg(value_name = "ID")]
        id: String,
        /// Print the line exactly as stored in the dead-letter file instead.
        #[arg(long)]
        raw: bool,
    },
    /// Re-submit pending records through the pipeline built from the configuration (fix the cause
    /// first). Exit 0 only when every selected record was delivered; 2 when any was not.
    Replay {
        #[command(flatten)]
        files: FileArgs,
        #[command(flatten)]
        filter: Filter,
        /// Show what would be replayed, and where to, without doing it.
        #[arg(long)]
        dry_run: bool,
        /// Send sink-stage records to every configured sink, not only to the sink that refused them
        /// (e.g. that sink was renamed or replaced). Sinks that already had the event get it again.
        #[arg(long)]
        all_sinks: bool,
        /// Detection state (redb) for records that go through detection again (decode, auth, dedup
        /// stages); without it detection starts from an empty state, as in `kcaudit replay`.
        #[arg(long, value_name = "FILE")]
        detect_state: Option<PathBuf>,
        /// No progress bar even on a terminal.
        #[arg(long)]
        quiet: bool,
    },
    /// Mark records purged (they are never replayed; `compact` drops them). Prints what would go and
    /// refuses without --yes.
    Purge {
        #[command(flatten)]
        files: FileArgs,
        #[command(flatten)]
        filter: Filter,
        /// Every pending record (required when no filter or --id is given).
        #[arg(long)]
        all: bool,
        /// Do it.
        #[arg(long)]
        yes: bool,
    },
    /// Rewrite the dead-letter file without the records the ledger marks replayed, superseded or
    /// purged. Refused while any kcaudit (serve, replay, dlq replay) has the file open.
    Compact {
        #[command(flatten)]
        files: FileArgs,
    },
}

impl DlqAction {
    pub fn config_args(&self) -> &ConfigArgs {
        match self {
            DlqAction::List { files, .. } | DlqAction::Show { files, .. } | DlqAction::Replay { files, .. } | DlqAction::Purge { files, .. } | DlqAction::Compact { files } => {
                &files.config
            }
        }
    }
}

/// Where the dead letters are.
#[derive(Args, Debug, Clone, Default)]
pub struct FileArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Read this dead-letter file instead of the configured `dead_letter.path` (repeatable, e.g. a
    /// rotated copy next to the live file). Replay still dead-letters into the configured file.
    #[arg(long = "file", value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The state ledger (default: `<dead_letter.path>.state.jsonl`).
    #[arg(long, value_name = "FILE")]
    pub ledger: Option<PathBuf>,
}

/// Which records. Every given filter must match (AND); repeated values of one filter are
/// alternatives (OR).
#[derive(Args, Debug, Clone, Default)]
pub struct Filter {
    /// A record id, or a unique prefix of one (repeatable).
    #[arg(long = "id", value_name = "ID")]
    pub ids: Vec<String>,
    /// The sink that refused it (repeatable).
    #[arg(long = "sink", value_name = "SINK")]
    pub sinks: Vec<String>,
    /// Pipeline stage: auth, decode, dedup, sink (repeatable).
    #[arg(long = "stage", value_name = "STAGE", value_parser = Stage::parse)]
    pub stages: Vec<Stage>,
    /// Reason contains this text (case-insensitive).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Dead-lettered at or after: RFC 3339 (2026-03-09T12:00:00Z) or a duration back from now (2h, 30m, 7d).
    #[arg(long, value_name = "TIME", value_parser = parse_when)]
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before: RFC 3339 or a duration back from now.
    #[arg(long, value_name = "TIME", value_parser = parse_when)]
    pub until: Option<DateTime<Utc>>,
}

/// RFC 3339, or a duration back from now (`2h`, `30m`, `7d`, `1h 30m`).
pub fn parse_when(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s.trim()) {
        return Ok(t.with_timezone(&Utc));
    }
    let d = humantime::parse_duration(s.trim()).map_err(|_| format!("{s:?} is neither an RFC 3339 time (2026-03-09T12:00:00Z) nor a duration (2h, 30m, 7d)"))?;
    let d = chrono::Duration::from_std(d).map_err(|_| format!("duration {s:?} is too long"))?;
    Utc::now().checked_sub_signed(d).ok_or_else(|| format!("duration {s:?} is too long"))
}

impl Filter {
    /// No filter and no id given.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty() && self.sinks.is_empty() && self.stages.is_empty() && self.reason.is_none() && self.since.is_none() && self.until.is_none()
    }

    /// Whether `r` matches (ids are matched separately, once resolved).
    fn matches(&self, r: &DeadLetter) -> bool {
        if !self.sinks.is_empty() && !r.sink.as_ref().is_some_and(|s| self.sinks.contains(s)) {
            return false;
        }
        if !self.stages.is_empty() && !self.stages.contains(&r.stage) {
            return false;
        }
        if let Some(q) = &self.reason {
            if !r.reason.to_lowercase().contains(&q.to_lowercase()) {
                return false;
            }
        }
        if self.since.is_some() || self.until.is_some() {
            let Ok(t) = DateTime::parse_from_rfc3339(&r.dead_lettered_at) else { return false };
            let t = t.with_timezone(&Utc);
            if self.since.is_some_and(|s| t < s) || self.until.is_some_and(|u| t >= u) {
                return false;
            }
        }
        true
    }
}

// ---------------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------------

/// The dead-letter file(s) and the ledger one command works on.
#[derive(Debug, Clone)]
pub struct Store {
    /// The configured dead-letter file: where replay dead-letters again, what compact rewrites.
    pub primary: PathBuf,
    /// The files read (default: the primary one).
    pub files: Vec<PathBuf>,
    pub ledger: PathBuf,
}

impl Store {
    pub fn new(config: &Config, args: &FileArgs) -> Store {
        let primary = config.data_path(&config.dead_letter.path);
        let files = if args.files.is_empty() { vec![primary.clone()] } else { args.files.clone() };
        let ledger = args.ledger.clone().unwrap_or_else(|| ledger_path(&primary));
        Store { primary, files, ledger }
    }

    /// One dead-letter file with its default ledger.
    pub fn at(path: &Path) -> Store {
        Store { primary: path.to_path_buf(), files: vec![path.to_path_buf()], ledger: ledger_path(path) }
    }

    pub fn load(&self) -> anyhow::Result<Loaded> {
        Ok(Loaded { scan: scan(&self.files)?, ledger: Ledger::read(&self.ledger)? })
    }
}

/// Records and ledger, read.
#[derive(Debug)]
pub struct Loaded {
    pub scan: Scan,
    pub ledger: Ledger,
}

impl Loaded {
    pub fn state(&self, r: &Scanned) -> State {
        self.ledger.state(&r.record.id)
    }

    /// Ids as given (exact, or a unique prefix) to full ids; an unknown or ambiguous one is an error.
    pub fn resolve(&self, given: &[String]) -> anyhow::Result<HashSet<String>> {
        let mut out = HashSet::new();
        for g in given {
            let g = g.trim();
            anyhow::ensure!(!g.is_empty(), "an empty --id");
            if self.scan.records.iter().any(|s| s.record.id == g) {
                out.insert(g.to_string());
                continue;
            }
            let hits: BTreeSet<&str> = self.scan.records.iter().map(|s| s.record.id.as_str()).filter(|id| id.starts_with(g)).collect();
            match hits.len() {
                0 => anyhow::bail!("unknown dead-letter id {g:?}: no record in {} has it", self.files_text()),
                1 => {
                    out.extend(hits.into_iter().map(str::to_string));
                }
                n => anyhow::bail!("dead-letter id prefix {g:?} is ambiguous ({n} records: {})", hits.into_iter().take(5).collect::<Vec<_>>().join(", ")),
            }
        }
        Ok(out)
    }

    fn files_text(&self) -> String {
        let files: BTreeSet<String> = self.scan.records.iter().map(|s| s.file.display().to_string()).collect();
        if files.is_empty() {
            "the dead-letter file".into()
        } else {
            files.into_iter().collect::<Vec<_>>().join(", ")
        }
    }

    /// Records matching `filter` whose state is in `states` (None: any), in file order.
    pub fn select(&self, filter: &Filter, states: Option<&[State]>) -> anyhow::Result<Vec<&Scanned>> {
        let ids = self.resolve(&filter.ids)?;
        Ok(self
            .scan
            .records
            .iter()
            .filter(|s| ids.is_empty() || ids.contains(&s.record.id))
            .filter(|s| filter.matches(&s.record))
            .filter(|s| states.is_none_or(|st| st.contains(&self.state(s))))
            .collect())
    }

    /// A record, its state, where it is and its history: what `list --json` and `show` print.
    pub fn view<'a>(&'a self, s: &'a Scanned) -> View<'a> {
        View {
            id: &s.record.id,
            state: self.state(s),
            file: s.file.display().to_string(),
            line: s.line,
            replay_of: self.ledger.replay_of(&s.record.id),
            history: self.ledger.history(&s.record.id),
            record: &s.record,
        }
    }

    /// Lines that could not be read, for the user (file and line number each).
    pub fn problems(&self) -> Vec<&Unreadable> {
        self.scan.unreadable.iter().chain(&self.ledger.unreadable).collect()
    }
}

#[derive(Debug, Serialize)]
pub struct View<'a> {
    pub id: &'a str,
    pub state: State,
    pub file: String,
    pub line: u64,
    /// The record this one superseded (it was dead-lettered again by a replay of that record).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<&'a LedgerEntry>,
    pub record: &'a DeadLetter,
}

/// `N dead letters (pending): stage decode 2, sink 5; sink audit_log 5`.
pub fn summary_line(records: &[&Scanned], state: &str) -> String {
    let mut stages: BTreeMap<&str, usize> = BTreeMap::new();
    let mut sinks: BTreeMap<&str, usize> = BTreeMap::new();
    for s in records {
        *stages.entry(s.record.stage.name()).or_default() += 1;
        if let Some(k) = &s.record.sink {
            *sinks.entry(k.as_str()).or_default() += 1;
        }
    }
    let join = |m: &BTreeMap<&str, usize>| m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ");
    let mut out = format!("{} dead letter{} ({state})", records.len(), if records.len() == 1 { "" } else { "s" });
    if !stages.is_empty() {
        out.push_str(&format!(": stage {}", join(&stages)));
    }
    if !sinks.is_empty() {
        out.push_str(&format!("; sink {}", join(&sinks)));
    }
    out
}

/// The table `list` prints.
pub fn table(loaded: &Loaded, records: &[&Scanned]) -> String {
    let mut rows: Vec<[String; 7]> = vec![["ID", "TIME", "STATE", "STAGE", "SINK", "EVENT", "REASON"].map(String::from)];
    for s in records {
        let r = &s.record;
        let event = match &r.event {
            Some(e) => format!("{} {}", e.event_type, crate::sinks::text::one_line(&e.id, 40)),
            None => match r.origin.line {
                Some(l) => format!("({}:{l})", crate::sinks::text::one_line(&r.origin.input, 40)),
                None => format!("({})", crate::sinks::text::one_line(&r.origin.input, 40)),
            },
        };
        rows.push([
            r.id.clone(),
            r.dead_lettered_at.clone(),
            loaded.state(s).name().to_string(),
            r.stage.name().to_string(),
            r.sink.clone().unwrap_or_else(|| "-".into()),
            event,
            crate::sinks::text::one_line(&r.reason, 80),
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, c) in row.iter().enumerate() {
            if i == row.len() - 1 {
                line.push_str(c);
            } else {
                line.push_str(c);
                line.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------------------------------
// Replay
// ---------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    pub all_sinks: bool,
    pub dry_run: bool,
    /// A progress bar on standard error (when it is a terminal).
    pub progress: bool,
    /// Detection state for records that go through detection again.
    pub detect_state: Option<PathBuf>,
}

/// Builds the sinks a replay delivers to (`crate::server::sinks` outside tests). Called once per
/// group of records with the same destinations, since a pipeline consumes its sinks.
pub type MakeSinks<'a> = &'a (dyn Fn(&Config) -> anyhow::Result<Vec<SinkSpec>> + Sync);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Delivered; marked `replayed`.
    Delivered,
    /// Dead-lettered again (new record(s)); marked `superseded`.
    FailedAgain,
    /// Neither delivered nor dead-lettered (the dead-letter store failed): still pending.
    Failed,
    /// Not attempted, or nothing came of it (sink gone, no payload, decoder skips it): still pending.
    Skipped,
    /// `--dry-run`: would be re-submitted.
    WouldReplay,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::FailedAgain => "failed_again",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
            Outcome::WouldReplay => "would_replay",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RecordOutcome {
    pub id: String,
    pub stage: Stage,
    pub outcome: Outcome,
    /// The sinks it was (or would be) sent to.
    pub targets: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The dead letters that hold it now (failed again).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub new_ids: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplaySummary {
    pub dry_run: bool,
    /// Pending records selected.
    pub selected: usize,
    pub replayed: usize,
    pub failed_again: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Pending auth and dedup records the filters matched but that a replay takes only when asked for
    /// by `--stage` or `--id`.
    pub not_selected: usize,
    pub records: Vec<RecordOutcome>,
    /// Notes for the user (e.g. an `--id` that is already replayed).
    pub notes: Vec<String>,
    pub unreadable: Vec<Unreadable>,
}

impl ReplaySummary {
    pub fn all_replayed(&self) -> bool {
        self.failed_again == 0 && self.failed == 0 && self.skipped == 0
    }

    fn count(&mut self, o: &RecordOutcome, metrics: &Metrics) {
        match o.outcome {
            Outcome::Delivered => self.replayed += 1,
            Outcome::FailedAgain => self.failed_again += 1,
            Outcome::Failed => self.failed += 1,
            Outcome::Skipped => self.skipped += 1,
            Outcome::WouldReplay => {}
        }
        if o.outcome != Outcome::WouldReplay {
            metrics.dead_letters_replayed.with_label_values(&[o.outcome.name()]).inc();
        }
        self.records.push(o.clone());
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Mode {
    /// Sink-stage records: the event exactly as the sink refused it, no enrichment or detection.
    Redeliver,
    /// Everything else: through enrichment and detection, like new input.
    Fresh,
}

enum Work {
    Event(Arc<AuditEvent>),
    Raw { bytes: Vec<u8>, format: Format },
}

struct Planned<'a> {
    rec: &'a Scanned,
    mode: Mode,
    targets: Vec<String>,
    work: Work,
    /// Pending records holding the same event (id and content) for the same sinks: they share this
    /// one's fate.
    copies: Vec<&'a Scanned>,
}

/// Where a new dead letter of this replay is matched to the record it came from.
fn tap_key(d: &DeadLetter) -> String {
    match d.stage {
        Stage::Sink => format!("sink\u{0}{}\u{0}{}", d.sink.as_deref().unwrap_or(""), d.event.as_ref().map(|e| e.id.as_str()).unwrap_or("")),
        Stage::Dedup => format!("dedup\u{0}{}", d.event.as_ref().map(|e| e.id.as_str()).unwrap_or("")),
        Stage::Decode | Stage::Auth => format!("reject\u{0}{}", serde_json::to_string(&d.origin).unwrap_or_default()),
    }
}

/// Re-submit the pending records `filter` selects. See the module documentation for where they go.
pub async fn replay(config: &Config, store: &Store, filter: &Filter, opts: &ReplayOptions, make_sinks: MakeSinks<'_>, metrics: &Metrics) -> anyhow::Result<ReplaySummary> {
    // The ledger lock first, so the states read next cannot change under this run.
    let mut writer = if opts.dry_run { None } else { Some(LedgerWriter::lock(&store.ledger)?) };
    let loaded = store.load()?;
    let mut summary = ReplaySummary { dry_run: opts.dry_run, unreadable: loaded.problems().into_iter().cloned().collect(), ..Default::default() };

    let explicit = !filter.stages.is_empty() || !filter.ids.is_empty();
    for s in loaded.select(filter, None)? {
        let st = loaded.state(s);
        if st != State::Pending && !filter.ids.is_empty() {
            let when = loaded.ledger.decision(&s.record.id).map(|d| format!(" at {}", d.at)).unwrap_or_default();
            summary.notes.push(format!("{} is already {}{when}; not replayed", s.record.id, st.name()));
        }
    }
    let mut candidates = Vec::new();
    for s in loaded.select(filter, Some(&[State::Pending]))? {
        if !explicit && matches!(s.record.stage, Stage::Auth | Stage::Dedup) {
            summary.not_selected += 1;
            continue;
        }
        candidates.push(s);
    }
    summary.selected = candidates.len();
    if candidates.is_empty() {
        return Ok(summary);
    }

    let mut spare = Some(make_sinks(config)?);
    let names: Vec<String> = spare.iter().flatten().map(|s| s.sink.name().to_string()).collect();
    anyhow::ensure!(!names.is_empty(), "the configuration enables no sink to replay into");
    let all: Vec<String> = {
        let mut v = names.clone();
        v.sort();
        v.dedup();
        v
    };

    // Plan: where each record goes and what is submitted.
    let mut planned: Vec<Planned> = Vec::new();
    // Two deliveries of one event (same id, same content fingerprint as dedup sees it, however it
    // arrived) dead-lettered for the same sinks are sent once; both records share the outcome.
    let mut first_of: HashMap<(Mode, Vec<String>, String, u64), usize> = HashMap::new();
    for s in candidates {
        let r = &s.record;
        let skip = |why: String| RecordOutcome { id: r.id.clone(), stage: r.stage, outcome: Outcome::Skipped, targets: vec![], detail: Some(why), new_ids: vec![] };
        let (mode, targets, work) = match r.stage {
            Stage::Sink => {
                let Some(ev) = &r.event else {
                    summary.count(&skip("a sink-stage record without its event; nothing to re-send".into()), metrics);
                    continue;
                };
                let targets = if opts.all_sinks {
                    all.clone()
                } else {
                    match &r.sink {
                        Some(k) if all.contains(k) => vec![k.clone()],
                        Some(k) => {
                            summary.count(&skip(format!("sink {k:?} is not configured (configured: {}); enable it, or use --all-sinks", all.join(", "))), metrics);
                            continue;
                        }
                        None => {
                            summary.count(&skip("the record names no sink; use --all-sinks".into()), metrics);
                            continue;
                        }
                    }
                };
                (Mode::Redeliver, targets, Work::Event(Arc::new(ev.clone())))
            }
            Stage::Dedup | Stage::Decode | Stage::Auth => match (&r.event, r.raw_bytes()) {
                (Some(ev), _) => (Mode::Fresh, all.clone(), Work::Event(Arc::new(ev.clone()))),
                (None, Some(Ok(bytes))) => {
                    // The format the record was read as; `recording` failures store the delivery's
                    // body, and `unknown` (auth) says nothing: detect those.
                    let format = match Format::parse(&r.origin.format) {
                        Ok(Format::Recording) | Err(_) => Format::Auto,
                        Ok(f) => f,
                    };
                    (Mode::Fresh, all.clone(), Work::Raw { bytes, format })
                }
                (None, Some(Err(e))) => {
                    summary.count(&skip(e), metrics);
                    continue;
                }
                (None, None) => {
                    summary.count(&skip("the record holds neither an event nor its raw input".into()), metrics);
                    continue;
                }
            },
        };
        if let Work::Event(ev) = &work {
            let key = (mode, targets.clone(), ev.id.clone(), ev.content_fingerprint());
            if let Some(&i) = first_of.get(&key) {
                let p: &mut Planned = &mut planned[i];
                p.copies.push(s);
                continue;
            }
            first_of.insert(key, planned.len());
        }
        planned.push(Planned { rec: s, mode, targets, work, copies: vec![] });
    }

    if opts.dry_run {
        for p in &planned {
            for r in std::iter::once(p.rec).chain(p.copies.iter().copied()) {
                let detail = (!std::ptr::eq(r, p.rec)).then(|| format!("same event as {}", p.rec.record.id));
                summary.count(&RecordOutcome { id: r.record.id.clone(), stage: r.record.stage, outcome: Outcome::WouldReplay, targets: p.targets.clone(), detail, new_ids: vec![] }, metrics);
            }
        }
        return Ok(summary);
    }
    let Some(writer) = writer.as_mut() else { unreachable!("not a dry run") };

    let total: u64 = planned.iter().map(|p| 1 + p.copies.len() as u64).sum();
    let bar = (opts.progress && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(indicatif::ProgressStyle::with_template("dlq replay [{bar:40}] {pos}/{len} records ({per_sec}, {eta})").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()));
        b
    });

    // New dead letters from this run, by what they are matched on.
    let tap = Arc::new(Mutex::new(Vec::new()));
    let dlq = DeadLetterStore::open(&store.primary)?.with_topic(&config.dead_letter.kafka)?.with_tap(tap.clone());
    let mut fresh_ids: HashMap<String, VecDeque<String>> = HashMap::new();

    let mut groups: BTreeMap<(Mode, Vec<String>), Vec<Planned>> = BTreeMap::new();
    for p in planned {
        groups.entry((p.mode, p.targets.clone())).or_default().push(p);
    }
    let tz = config.decode.time_zone().map_err(anyhow::Error::msg)?;
    let routes = crate::sources::webhook::delivery::Routes::from_options(&config.webhook).ok();
    let ctx = Context { opts: &config.decode, tz, deliveries: routes.as_ref().map(|r| r as &dyn crate::decode::DeliveryHandler), lines_may_be_noise: false };
    let mut dedup_off = config.dedup.clone();
    dedup_off.enabled = false;

    for ((mode, targets), group) in groups {
        let specs = match spare.take() {
            Some(s) => s,
            None => make_sinks(config)?,
        };
        let specs: Vec<SinkSpec> = specs.into_iter().filter(|s| targets.iter().any(|t| t == s.sink.name())).collect();
        let stages = match mode {
            Mode::Redeliver => Stages::default(),
            Mode::Fresh => {
                let mut c = config.clone();
                if c.role == Role::Worker {
                    // A worker's detection state lives in per-partition changelogs, not here.
                    c.detect.enabled = false;
                }
                c.stages(c.admin_api_client()?, metrics.clone(), opts.detect_state.as_deref())?
            }
        };
        tracing::info!(records = group.len(), sinks = %targets.join(","), mode = ?mode, "Replaying dead letters.");
        let pipeline = Pipeline::start_with(specs, stages, dlq.clone(), metrics.clone(), &dedup_off, &config.pipeline);
        let handle = pipeline.handle();
        let mut in_flight: VecDeque<(tokio::sync::oneshot::Receiver<Result<BatchReport, PipelineError>>, Vec<(usize, usize)>)> = VecDeque::new();
        let mut items: Vec<Item> = Vec::new();
        let mut owners: Vec<(usize, usize)> = Vec::new(); // (index in group, item count)
        let mut outcome: anyhow::Result<()> = Ok(());
        for (gi, p) in group.iter().enumerate() {
            let before = items.len();
            match &p.work {
                Work::Event(ev) => items.push(Item { origin: p.rec.record.origin.clone(), decoded: Decoded::Event(ev.clone()), raw: None }),
                Work::Raw { bytes, format } => decode_body(bytes, *format, &p.rec.record.origin, &ctx, &mut items),
            }
            owners.push((gi, items.len() - before));
            if items.len() >= BATCH_ITEMS || gi + 1 == group.len() {
                match handle.submit(std::mem::take(&mut items), "dlq", false).await {
                    Ok(rx) => in_flight.push_back((rx, std::mem::take(&mut owners))),
                    Err(e) => {
                        outcome = Err(anyhow::anyhow!("the replay pipeline stopped: {e}"));
                        break;
                    }
                }
                while in_flight.len() >= IN_FLIGHT {
                    let Some((rx, owners)) = in_flight.pop_front() else { break };
                    let report = rx.await.unwrap_or(Err(PipelineError::ShuttingDown));
                    let entries = settle(report, &owners, &group, &tap, &mut fresh_ids, &mut summary, metrics);
                    if let Err(e) = record(writer, entries, &bar, owners_len(&owners, &group)) {
                        outcome = Err(e);
                        break;
                    }
                }
                if outcome.is_err() {
                    break;
                }
            }
        }
        while let Some((rx, owners)) = in_flight.pop_front() {
            let report = rx.await.unwrap_or(Err(PipelineError::ShuttingDown));
            let entries = settle(report, &owners, &group, &tap, &mut fresh_ids, &mut summary, metrics);
            if outcome.is_ok() {
                if let Err(e) = record(writer, entries, &bar, owners_len(&owners, &group)) {
                    outcome = Err(e);
                }
            }
        }
        drop(handle);
        pipeline.shutdown().await;
        outcome?;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(summary)
}

fn owners_len(owners: &[(usize, usize)], group: &[Planned]) -> u64 {
    owners.iter().map(|(gi, _)| 1 + group[*gi].copies.len() as u64).sum()
}

/// Write a batch's ledger entries durably, then move the progress bar.
fn record(writer: &mut LedgerWriter, entries: Vec<LedgerEntry>, bar: &Option<indicatif::ProgressBar>, done: u64) -> anyhow::Result<()> {
    writer.append(&entries).map_err(|e| e.context("the records were re-submitted but their new state could not be recorded; they stay pending and a later replay sends them again"))?;
    if let Some(b) = bar {
        b.inc(done);
    }
    Ok(())
}

/// Turn one batch report into each record's outcome (counted in `summary` and metrics) and the
/// ledger entries for the state changes.
fn settle(
    report: Result<BatchReport, PipelineError>,
    owners: &[(usize, usize)],
    group: &[Planned],
    tap: &Arc<Mutex<Vec<DeadLetter>>>,
    fresh_ids: &mut HashMap<String, VecDeque<String>>,
    summary: &mut ReplaySummary,
    metrics: &Metrics,
) -> Vec<LedgerEntry> {
    // Everything this run dead-lettered so far (the report arrives after its dead letters are stored).
    if let Ok(mut t) = tap.lock() {
        for d in t.drain(..) {
            fresh_ids.entry(tap_key(&d)).or_default().push_back(d.id);
        }
    }
    let mut claim = |key: String| fresh_ids.get_mut(&key).and_then(|q| q.pop_front());
    let mut entries = Vec::new();
    let items = match report {
        Ok(r) => Some(r.items),
        Err(e) => {
            for (gi, _) in owners {
                let p = &group[*gi];
                for r in std::iter::once(p.rec).chain(p.copies.iter().copied()) {
                    let o = RecordOutcome { id: r.record.id.clone(), stage: r.record.stage, outcome: Outcome::Failed, targets: p.targets.clone(), detail: Some(e.to_string()), new_ids: vec![] };
                    summary.count(&o, metrics);
                }
            }
            None
        }
    };
    let Some(items) = items else { return entries };
    let mut it = items.into_iter();
    for (gi, n) in owners {
        let p = &group[*gi];
        let (mut delivered, mut new_ids, mut reasons, mut failed, mut skipped) = (0usize, Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for item in it.by_ref().take(*n) {
            match item.status {
                ItemStatus::Accepted => {
                    if !item.failed.is_empty() {
                        failed.extend(item.failed.iter().map(|(s, r)| format!("{s}: {r}")));
                    } else if !item.dead_lettered.is_empty() {
                        for (sink, reason) in &item.dead_lettered {
                            let key = format!("sink\u{0}{sink}\u{0}{}", item.event_id.as_deref().unwrap_or(""));
                            new_ids.extend(claim(key));
                            reasons.push(format!("{sink}: {reason}"));
                        }
                    } else {
                        delivered += 1;
                    }
                }
                ItemStatus::Rejected => {
                    new_ids.extend(claim(format!("reject\u{0}{}", serde_json::to_string(&item.origin).unwrap_or_default())));
                    reasons.push(item.reason.unwrap_or_default());
                }
                ItemStatus::Skipped | ItemStatus::Duplicate => skipped.push(item.reason.unwrap_or_default()),
            }
        }
        let (outcome, detail) = if !failed.is_empty() {
            (Outcome::Failed, Some(failed.join("; ")))
        } else if !reasons.is_empty() {
            (Outcome::FailedAgain, Some(reasons.join("; ")))
        } else if delivered == 0 {
            (Outcome::Skipped, Some(format!("nothing to deliver: {}", skipped.join("; "))))
        } else {
            (Outcome::Delivered, (!skipped.is_empty()).then(|| format!("{} part(s) skipped by the decoder: {}", skipped.len(), skipped.join("; "))))
        };
        for r in std::iter::once(p.rec).chain(p.copies.iter().copied()) {
            let copy_note = (!std::ptr::eq(r, p.rec)).then(|| format!("same event as {}", p.rec.record.id));
            let detail = match (&detail, &copy_note) {
                (Some(d), Some(c)) => Some(format!("{c}; {d}")),
                (d, c) => d.clone().or(c.clone()),
            };
            let o = RecordOutcome { id: r.record.id.clone(), stage: r.record.stage, outcome, targets: p.targets.clone(), detail: detail.clone(), new_ids: new_ids.clone() };
            summary.count(&o, metrics);
            match outcome {
                Outcome::Delivered => {
                    let mut e = LedgerEntry::new(&r.record.id, State::Replayed, "delivered");
                    e.sinks = p.targets.clone();
                    e.detail = detail;
                    entries.push(e);
                }
                Outcome::FailedAgain => {
                    let mut e = LedgerEntry::new(&r.record.id, State::Superseded, "failed_again");
                    e.sinks = p.targets.clone();
                    e.superseded_by = new_ids.clone();
                    e.detail = detail;
                    entries.push(e);
                }
                Outcome::Failed | Outcome::Skipped | Outcome::WouldReplay => {}
            }
        }
    }
    entries
}

// ---------------------------------------------------------------------------------------------------
// Purge and compact
// ---------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default)]
pub struct PurgeSummary {
    /// The pending records the selection matched (what goes, or would go).
    pub selected: Vec<Scanned>,
    /// Whether they were marked purged (`--yes`).
    pub purged: bool,
    pub unreadable: Vec<Unreadable>,
    /// E.g. an `--id` that is not pending (left as it is).
    pub notes: Vec<String>,
}

/// Mark the pending records `filter` selects as purged (only with `yes`; otherwise just select them).
/// With no filter and no id, `all` is required.
pub fn purge(store: &Store, filter: &Filter, all: bool, yes: bool, metrics: &Metrics) -> anyhow::Result<PurgeSummary> {
    anyhow::ensure!(all || !filter.is_empty(), "say which records to purge: a filter (--sink, --stage, --reason, --since, --until), --id, or --all");
    let mut writer = if yes { Some(LedgerWriter::lock(&store.ledger)?) } else { None };
    let loaded = store.load()?;
    let selected: Vec<Scanned> = loaded.select(filter, Some(&[State::Pending]))?.into_iter().cloned().collect();
    let unreadable = loaded.problems().into_iter().cloned().collect();
    let mut notes = Vec::new();
    if !filter.ids.is_empty() {
        for s in loaded.select(filter, None)? {
            let st = loaded.state(s);
            if st != State::Pending {
                notes.push(format!("{} is already {}; left as it is", s.record.id, st.name()));
            }
        }
    }
    if let Some(w) = writer.as_mut() {
        let entries: Vec<LedgerEntry> = selected.iter().map(|s| LedgerEntry::new(&s.record.id, State::Purged, "purged")).collect();
        w.append(&entries)?;
        metrics.dead_letters_purged.inc_by(entries.len() as u64);
    }
    Ok(PurgeSummary { selected, purged: yes, unreadable, notes })
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CompactSummary {
    pub file: PathBuf,
    /// Records kept (pending), and lines kept because they could not be read (never dropped).
    pub kept: usize,
    pub unreadable_kept: usize,
    /// Records dropped (replayed, superseded or purged in the ledger).
    pub removed: usize,
    /// A torn last line (from a crash) dropped.
    pub torn_dropped: bool,
}

/// Rewrite the dead-letter file without resolved records: write a temporary file, fsync, rename over
/// the file, fsync the directory. Holds the ledger lock and the writers' lock exclusively, so it is
/// refused while any kcaudit has the file open, and a kcaudit starting meanwhile waits for it.
pub fn compact(store: &Store) -> anyhow::Result<CompactSummary> {
    anyhow::ensure!(store.files.len() == 1, "compact rewrites one file at a time; give one --file");
    let path = store.files[0].clone();
    let _ledger_lock = LedgerWriter::lock(&store.ledger)?;
    let lock = open_lock_file(&path).map_err(|e| anyhow::anyhow!("cannot open {}: {e}", lock_path(&path).display()))?;
    match try_lock_within(&lock, std::time::Duration::from_secs(1)) {
        Ok(true) => {}
        Ok(false) => anyhow::bail!(
            "{} is open in a running kcaudit (serve, replay or dlq replay hold {}); stop it, then compact",
            path.display(),
            lock_path(&path).display()
        ),
        Err(e) => anyhow::bail!("cannot lock {} ({e}); without file locks, compaction cannot tell whether kcaudit is writing the file", lock_path(&path).display()),
    }
    let ledger = Ledger::read(&store.ledger)?;
    let mut out = CompactSummary { file: path.clone(), ..Default::default() };
    let mut buf: Vec<u8> = Vec::new();
    for line in read_lines(&path)? {
        match line {
            Line::Text(_, t) => {
                if t.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<DeadLetter>(&t) {
                    Ok(r) => {
                        let id = if r.id.is_empty() { derived_id(&t) } else { r.id };
                        if ledger.state(&id) != State::Pending {
                            out.removed += 1;
                            continue;
                        }
                        out.kept += 1;
                    }
                    Err(_) => out.unreadable_kept += 1,
                }
                buf.extend_from_slice(t.as_bytes());
                buf.push(b'\n');
            }
            Line::Bad(_, _, bytes) => {
                out.unreadable_kept += 1;
                buf.extend_from_slice(&bytes);
                buf.push(b'\n');
            }
            Line::Incomplete(..) => out.torn_dropped = true,
        }
    }
    if out.removed == 0 && !out.torn_dropped {
        return Ok(out);
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".compact-tmp");
    let tmp = PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        #[cfg(unix)]
        if let Some(dir) = path.parent() {
            let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        anyhow::bail!("cannot rewrite {}: {e} (the file is unchanged unless the rename happened)", path.display());
    }
    drop(lock);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------
// The command
// ---------------------------------------------------------------------------------------------------

fn print_problems(p: &[&Unreadable]) {
    for u in p {
        eprintln!("kcaudit dlq: {u}: skipped");
    }
}

/// Run a `kcaudit dlq` command (the configuration is loaded and logging set up by the caller).
pub fn run(config: Config, action: DlqAction) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    match run_to(config, action, &mut stdout) {
        // The reader went away (`kcaudit dlq list | head`): not an error. State changes are written
        // before anything is printed about them.
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) => Ok(ExitCode::SUCCESS),
        r => r,
    }
}

fn run_to(config: Config, action: DlqAction, stdout: &mut dyn std::io::Write) -> anyhow::Result<ExitCode> {
    let metrics = Metrics::new();
    match action {
        DlqAction::List { files, filter, state, json } => {
            let store = Store::new(&config, &files);
            let loaded = store.load()?;
            print_problems(&loaded.problems());
            let states = match state.as_str() {
                "all" => None,
                s => Some(vec![State::parse(s).map_err(anyhow::Error::msg)?]),
            };
            let records = loaded.select(&filter, states.as_deref())?;
            let summary = summary_line(&records, &state);
            if json {
                for s in &records {
                    let line = serde_json::to_string(&loaded.view(s))?;
                    writeln!(stdout, "{line}")?;
                }
                eprintln!("{summary}");
            } else {
                if !records.is_empty() {
                    write!(stdout, "{}", table(&loaded, &records))?;
                }
                writeln!(stdout, "{summary}")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqAction::Show { files, id, raw } => {
            let store = Store::new(&config, &files);
            let loaded = store.load()?;
            print_problems(&loaded.problems());
            let ids = loaded.resolve(std::slice::from_ref(&id))?;
            let s = loaded.scan.records.iter().find(|s| ids.contains(&s.record.id)).ok_or_else(|| anyhow::anyhow!("unknown dead-letter id {id:?}"))?;
            if raw {
                writeln!(stdout, "{}", s.text)?;
            } else {
                writeln!(stdout, "{}", serde_json::to_string_pretty(&loaded.view(s))?)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqAction::Replay { files, filter, dry_run, all_sinks, detect_state, quiet } => {
            let store = Store::new(&config, &files);
            let opts = ReplayOptions { all_sinks, dry_run, progress: !quiet, detect_state };
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let make = |c: &Config| crate::server::sinks(c);
            let s = rt.block_on(replay(&config, &store, &filter, &opts, &make, &metrics))?;
            for u in &s.unreadable {
                eprintln!("kcaudit dlq: {u}: skipped");
            }
            for n in &s.notes {
                eprintln!("kcaudit dlq replay: {n}");
            }
            if dry_run {
                for r in s.records.iter().filter(|r| r.outcome == Outcome::WouldReplay) {
                    writeln!(stdout, "{}  {}  -> {}{}", r.id, r.stage.name(), r.targets.join(","), r.detail.as_ref().map(|d| format!("  ({d})")).unwrap_or_default())?;
                }
            }
            for r in s.records.iter().filter(|r| !matches!(r.outcome, Outcome::Delivered | Outcome::WouldReplay)) {
                let new = if r.new_ids.is_empty() { String::new() } else { format!(" -> now {}", r.new_ids.join(", ")) };
                eprintln!("kcaudit dlq replay: {} {}: {}{new}", r.id, r.outcome.name().replace('_', " "), r.detail.as_deref().unwrap_or(""));
            }
            let not_selected = if s.not_selected > 0 {
                format!("; {} pending auth/dedup record(s) not selected (replay them with --stage or --id)", s.not_selected)
            } else {
                String::new()
            };
            if dry_run {
                let would = s.records.iter().filter(|r| r.outcome == Outcome::WouldReplay).count();
                eprintln!("kcaudit dlq replay --dry-run: {} pending record(s) selected: {would} would be replayed, {} skipped{not_selected}", s.selected, s.skipped);
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!(
                "kcaudit dlq replay: {} pending record(s) selected: {} replayed, {} failed again, {} failed, {} skipped{not_selected}",
                s.selected, s.replayed, s.failed_again, s.failed, s.skipped
            );
            Ok(if s.all_replayed() { ExitCode::SUCCESS } else { ExitCode::from(2) })
        }
        DlqAction::Purge { files, filter, all, yes } => {
            let store = Store::new(&config, &files);
            let s = purge(&store, &filter, all, yes, &metrics)?;
            for u in &s.unreadable {
                eprintln!("kcaudit dlq: {u}: skipped");
            }
            for n in &s.notes {
                eprintln!("kcaudit dlq purge: {n}");
            }
            let refs: Vec<&Scanned> = s.selected.iter().collect();
            if !yes {
                if !refs.is_empty() {
                    let loaded = Loaded { scan: Scan::default(), ledger: Ledger::default() };
                    write!(stdout, "{}", table(&loaded, &refs))?;
                }
                eprintln!("kcaudit dlq purge: {} would be purged; nothing done: add --yes to purge them", summary_line(&refs, "pending"));
                return Ok(ExitCode::FAILURE);
            }
            eprintln!("kcaudit dlq purge: {} marked purged in {}", summary_line(&refs, "pending"), store.ledger.display());
            Ok(ExitCode::SUCCESS)
        }
        DlqAction::Compact { files } => {
            let store = Store::new(&config, &files);
            let s = compact(&store)?;
            eprintln!(
                "kcaudit dlq compact: {}: {} kept, {} removed{}{}",
                s.file.display(),
                s.kept,
                s.removed,
                if s.unreadable_kept > 0 { format!(", {} unreadable line(s) kept as they are", s.unreadable_kept) } else { String::new() },
                if s.torn_dropped { ", a torn last line dropped" } else { "" }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Origin;

    fn line(stage: Stage, sink: Option<&str>, reason: &str, at: &str) -> String {
        let mut d = DeadLetter::new(stage, reason, Origin { input: "t".into(), ..Default::default() });
        d.sink = sink.map(String::from);
        d.dead_lettered_at = at.into();
        serde_json::to_string(&d).unwrap()
    }

    #[test]
    fn times_are_rfc3339_or_durations_back_from_now() {
        assert_eq!(parse_when("2026-03-09T12:00:00Z").unwrap().to_rfc3339(), "2026-03-09T12:00:00+00:00");
        assert_eq!(parse_when("2026-03-09T14:00:00+02:00").unwrap(), parse_when("2026-03-09T12:00:00Z").unwrap());
        let two_h = parse_when("2h").unwrap();
        let age = Utc::now() - two_h;
        assert!(age >= chrono::Duration::hours(2) && age < chrono::Duration::hours(2) + chrono::Duration::minutes(1));
        assert!(parse_when("7d").is_ok());
        assert!(parse_when("yesterday").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn filters_combine_and_ids_resolve_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dl.jsonl");
        let lines = [
            line(Stage::Sink, Some("audit_log"), "gave up after 1 attempts: No space left", "2026-03-09T10:00:00.000Z"),
            line(Stage::Sink, Some("clickhouse"), "Code: 27. Cannot parse", "2026-03-09T11:00:00.000Z"),
            line(Stage::Decode, None, "invalid JSON", "2026-03-09T12:00:00.000Z"),
        ];
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        let loaded = Store::at(&p).load().unwrap();
        let n = |f: Filter| loaded.select(&f, Some(&[State::Pending])).unwrap().len();
        assert_eq!(n(Filter::default()), 3);
        assert_eq!(n(Filter { sinks: vec!["audit_log".into()], ..Default::default() }), 1);
        assert_eq!(n(Filter { sinks: vec!["audit_log".into(), "clickhouse".into()], ..Default::default() }), 2);
        assert_eq!(n(Filter { stages: vec![Stage::Decode], ..Default::default() }), 1);
        assert_eq!(n(Filter { reason: Some("NO SPACE".into()), ..Default::default() }), 1);
        assert_eq!(n(Filter { since: Some(parse_when("2026-03-09T11:00:00Z").unwrap()), ..Default::default() }), 2, "since is inclusive");
        assert_eq!(n(Filter { until: Some(parse_when("2026-03-09T11:00:00Z").unwrap()), ..Default::default() }), 1, "until is exclusive");
        assert_eq!(n(Filter { stages: vec![Stage::Sink], reason: Some("cannot parse".into()), ..Default::default() }), 1);

        let id = loaded.scan.records[1].record.id.clone();
        assert_eq!(loaded.resolve(&[id[..8].to_string()]).unwrap(), HashSet::from([id.clone()]));
        assert!(loaded.resolve(&["nope".into()]).unwrap_err().to_string().contains("unknown dead-letter id"));
        assert!(loaded.resolve(&[String::new()]).is_err());
        let summary = summary_line(&loaded.select(&Filter::default(), None).unwrap(), "all");
        assert_eq!(summary, "3 dead letters (all): stage decode 1, sink 2; sink audit_log 1, clickhouse 1");
    }

    #[test]
    fn compact_keeps_pending_and_unreadable_lines_and_waits_for_writers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dl.jsonl");
        let (a, b, c) = (line(Stage::Decode, None, "a", "2026-03-09T10:00:00.000Z"), line(Stage::Decode, None, "b", "2026-03-09T10:00:00.000Z"), line(Stage::Decode, None, "c", "2026-03-09T10:00:00.000Z"));
        std::fs::write(&p, format!("{a}\n{{corrupt\n{b}\n{c}\n")).unwrap();
        let store = Store::at(&p);
        let ids: Vec<String> = store.load().unwrap().scan.records.iter().map(|s| s.record.id.clone()).collect();
        let metrics = Metrics::new();
        let f = Filter { ids: vec![ids[0].clone(), ids[2].clone()], ..Default::default() };
        let dry = purge(&store, &f, false, false, &metrics).unwrap();
        assert_eq!((dry.selected.len(), dry.purged), (2, false));
        assert!(!store.ledger.exists() || Ledger::read(&store.ledger).unwrap().entries.is_empty(), "nothing marked without --yes");
        assert!(purge(&store, &Filter::default(), false, true, &metrics).is_err(), "no selector, no --all");
        let done = purge(&store, &f, false, true, &metrics).unwrap();
        assert_eq!(done.selected.len(), 2);
        assert_eq!(metrics.dead_letters_purged.get(), 2);

        // A running writer holds the lock: compaction is refused and the file is untouched.
        let writer = DeadLetterStore::open(&p).unwrap();
        let err = compact(&store).unwrap_err().to_string();
        assert!(err.contains("running kcaudit"), "{err}");
        assert_eq!(std::fs::read_to_string(&p).unwrap().lines().count(), 4);
        drop(writer);

        let s = compact(&store).unwrap();
        assert_eq!((s.kept, s.removed, s.unreadable_kept), (1, 2, 1));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), format!("{{corrupt\n{b}\n"));
        let after = store.load().unwrap();
        assert_eq!(after.scan.records.len(), 1);
        assert_eq!(after.scan.records[0].record.id, ids[1], "ids survive compaction");
        assert_eq!(after.ledger.state(&ids[0]), State::Purged, "the ledger keeps the history");
        let again = compact(&store).unwrap();
        assert_eq!((again.kept, again.removed), (1, 0));
    }
}
