//! Replay: recorded files through the same pipeline as live ingest.
//!
//! Files are read in order (`-` is stdin; gzip is detected by its magic bytes), one record per line,
//! except a file that is a single JSON document (the REST API's array, a pretty-printed event), which
//! is read whole. Batches are submitted with a few in flight, in order, so output order is file order.
//! Output is deterministic: records carry no wall-clock values (`received_at` is a live-only field).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flate2::read::MultiGzDecoder;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::config::Config;
use crate::dead_letter::DeadLetterStore;
use crate::decode::recording::RecordedDelivery;
use crate::decode::{decode_body, decode_record, is_single_json_document, strip_bom, to_text, too_large, Context, Decoded, DeliveryHandler, Format, Item};
use crate::event::{AuditEvent, Origin, Warning};
use crate::metrics::Metrics;
use crate::pipeline::{BatchReport, Counts, ItemStatus, Pipeline, PipelineError, SinkSpec};
use crate::sinks::file::FileSink;
use crate::sinks::stdout::StdoutSink;
use crate::sinks::{BatchOptions, RetryOptions, Sink};
use crate::sources::webhook::delivery::Routes;

const BATCH_RECORDS: usize = 1000;
const IN_FLIGHT: usize = 4;
/// Largest file read whole as one JSON document.
const MAX_DOCUMENT_BYTES: u64 = 1 << 30;

/// What to replay and where the output goes.
#[derive(Debug, Clone)]
pub struct ReplayRequest {
    pub inputs: Vec<String>,
    pub format: Format,
    /// `None`: standard output.
    pub out: Option<PathBuf>,
    pub progress: bool,
    /// Detection state to resume from and save to (None: fresh, in memory).
    pub state: Option<PathBuf>,
    /// Deliver to the sinks the configuration enables (audit log, ClickHouse, ...) instead of `out`:
    /// backfilling a store from recordings, or benchmarking a sink.
    pub to_sinks: bool,
}

/// One line of the report: a record that was not simply accepted, or was accepted with warnings.
#[derive(Debug, Clone, Serialize)]
pub struct ReportRecord {
    pub line: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    pub status: ItemStatus,
    pub format: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dead_lettered: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InputReport {
    pub input: String,
    pub counts: Counts,
    pub records: Vec<ReportRecord>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub format: String,
    pub inputs: Vec<InputReport>,
    pub totals: Counts,
    pub dead_letter_file: String,
}

/// Recorded deliveries need the webhook's routes; if its secrets cannot be loaded, every recording is
/// rejected with that reason instead of failing the whole replay.
struct RecordingRoutes(Result<Routes, String>);

impl DeliveryHandler for RecordingRoutes {
    fn handle(&self, d: &RecordedDelivery, origin: &Origin, ctx: &Context<'_>, out: &mut Vec<Item>) {
        match &self.0 {
            Ok(r) => r.handle(d, origin, ctx, out),
            Err(e) => out.push(Item {
                origin: origin.clone(),
                decoded: Decoded::Rejected(format!("cannot check the recorded delivery: {e}")),
                raw: Some(d.body.clone()),
            }),
        }
    }
}

/// Run a replay; returns the report (also written to `--report` by the CLI).
pub async fn run(config: &Config, req: &ReplayRequest) -> anyhow::Result<ReplayReport> {
    let tz = config.decode.time_zone().map_err(anyhow::Error::msg)?;
    let dlq_path = config.data_path(&config.dead_letter.path);
    let dlq = DeadLetterStore::open(&dlq_path)?;
    let specs = if req.to_sinks {
        let specs = crate::server::sinks(config)?;
        anyhow::ensure!(!specs.is_empty(), "the configuration enables no sink to replay into");
        specs
    } else {
        let sink: Box<dyn Sink> = match &req.out {
            Some(p) => Box::new(FileSink::create_output(p)?),
            None => Box::new(StdoutSink::default()),
        };
        vec![SinkSpec { sink, batch: BatchOptions { max_events: 4096, max_wait_ms: 5, queue_capacity: 8192 }, retry: RetryOptions::default() }]
    };
    let metrics = Metrics::new();
    let stages = config.stages(config.admin_api_client()?, metrics.clone(), req.state.as_deref())?;
    let pipeline = Pipeline::start_with(
        specs,
        stages,
        dlq,
        metrics,
        &config.dedup,
        &config.pipeline,
    );
    let handle = pipeline.handle();
    let routes = Arc::new(RecordingRoutes(Routes::from_options(&config.webhook)));

    let mut inputs = Vec::new();
    let mut failure = None;
    for input in &req.inputs {
        let mut rep = InputReport { input: input.clone(), counts: Counts::default(), records: Vec::new() };
        let (btx, mut brx) = tokio::sync::mpsc::channel::<anyhow::Result<Vec<Item>>>(2);
        let reader = {
            let (input, format, decode, routes, progress) = (input.clone(), req.format, config.decode.clone(), routes.clone(), req.progress);
            tokio::task::spawn_blocking(move || {
                let ctx = Context { opts: &decode, tz, deliveries: Some(&*routes), lines_may_be_noise: true };
                if let Err(e) = read_input(&input, format, &ctx, progress, &btx) {
                    let _ = btx.blocking_send(Err(e));
                }
            })
        };
        let outcome: anyhow::Result<()> = async {
            let mut pending: VecDeque<oneshot::Receiver<Result<BatchReport, PipelineError>>> = VecDeque::new();
            while let Some(batch) = brx.recv().await {
                pending.push_back(handle.submit(batch?, "replay", false).await?);
                if pending.len() >= IN_FLIGHT {
                    if let Some(rx) = pending.pop_front() {
                        let _waiting = handle.waiting_for_acks();
                        absorb(rx.await.map_err(|_| PipelineError::ShuttingDown)?, &mut rep)?;
                    }
                }
            }
            let _waiting = handle.waiting_for_acks(); // the input is read to its end
            while let Some(rx) = pending.pop_front() {
                absorb(rx.await.map_err(|_| PipelineError::ShuttingDown)?, &mut rep)?;
            }
            Ok(())
        }
        .await;
        drop(brx);
        let _ = reader.await;
        inputs.push(rep);
        if let Err(e) = outcome {
            failure = Some(e.context(format!("replaying {input}")));
            break;
        }
    }
    drop(handle);
    pipeline.shutdown().await;
    if let Some(e) = failure {
        return Err(e);
    }
    let mut totals = Counts::default();
    for i in &inputs {
        totals.add(&i.counts);
    }
    Ok(ReplayReport { format: req.format.name().into(), inputs, totals, dead_letter_file: dlq_path.display().to_string() })
}

/// Fold one batch report into the input's report: counts, plus every record worth listing.
fn absorb(r: Result<BatchReport, PipelineError>, rep: &mut InputReport) -> anyhow::Result<()> {
    let r = r?;
    rep.counts.add(&r.counts());
    for it in r.items {
        if !it.failed.is_empty() {
            anyhow::bail!("event {} could be neither delivered nor dead-lettered: {:?}", it.event_id.unwrap_or_default(), it.failed);
        }
        if it.status == ItemStatus::Accepted && it.warnings.is_empty() && it.dead_lettered.is_empty() {
            continue;
        }
        rep.records.push(ReportRecord {
            line: it.origin.line,
            index: it.origin.index,
            status: it.status,
            format: it.origin.format.to_string(),
            reason: it.reason,
            event_id: it.event_id,
            warnings: it.warnings,
            dead_lettered: it.dead_lettered,
        });
    }
    Ok(())
}

/// Read one input and send batches of decoded items (blocking; runs on a blocking thread).
fn read_input(input: &str, format: Format, ctx: &Context<'_>, progress: bool, tx: &tokio::sync::mpsc::Sender<anyhow::Result<Vec<Item>>>) -> anyhow::Result<()> {
    let (mut r, len) = open(input)?;
    let bar = (progress && std::io::stderr().is_terminal() && len.is_some_and(|l| l > 4 * 1024 * 1024)).then(|| {
        let b = indicatif::ProgressBar::new(len.unwrap_or(0));
        b.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_message(input.to_string());
        b
    });
    let base = Origin { input: input.into(), ..Default::default() };
    let send = |batch: Vec<Item>| tx.blocking_send(Ok(batch)).map_err(|_| anyhow::anyhow!("pipeline stopped"));

    // Peek: a file that is one JSON document (array, or a pretty-printed object) is read whole.
    // Enough of a line for any record within the limit, with its "\r\n"; the rest is dropped.
    let keep = ctx.opts.max_record_bytes.saturating_add(2);
    // A one-line JSON array is read whole below, so a first line that opens one is kept up to the
    // document cap; any other first line is a line like the rest.
    let opens_array = r.fill_buf().map(|b| strip_bom(b).iter().find(|c| !c.is_ascii_whitespace()) == Some(&b'[')).unwrap_or(false);
    let mut first = Vec::new();
    let first_len = read_line(&mut *r, &mut first, if opens_array { MAX_DOCUMENT_BYTES as usize } else { keep })?;
    let head = strip_bom(&first);
    let head_trim = head.iter().position(|b| !b.is_ascii_whitespace()).map(|p| &head[p..]).unwrap_or(&[]);
    // (A first line cut at `keep` is a line too long, never the start of a document.)
    let whole = first_len == first.len()
        && (head_trim.first() == Some(&b'[')
            || (head_trim.first() == Some(&b'{') && !std::str::from_utf8(head_trim).is_ok_and(|t| is_single_json_document(t.trim_end()))));
    if whole {
        let mut all = first;
        (&mut r).take(MAX_DOCUMENT_BYTES).read_to_end(&mut all)?;
        if let Some(b) = &bar {
            b.set_position(all.len() as u64);
        }
        let mut items = Vec::new();
        decode_body(&all, format, &base, ctx, &mut items);
        for chunk in items.chunks(BATCH_RECORDS) {
            send(chunk.to_vec())?;
        }
    } else {
        let mut line_no = 0u64;
        let mut batch = Vec::with_capacity(BATCH_RECORDS);
        let mut buf = first;
        let mut len = first_len;
        let mut read_bytes = 0u64;
        loop {
            if len == 0 {
                break;
            }
            line_no += 1;
            read_bytes += len as u64;
            let mut line: &[u8] = &buf;
            line = line.strip_suffix(b"\n").unwrap_or(line);
            line = line.strip_suffix(b"\r").unwrap_or(line);
            if line_no == 1 {
                line = strip_bom(line);
            }
            let (text, w) = to_text(line);
            let mut origin = base.clone();
            origin.line = Some(line_no);
            if len > buf.len() {
                // Its length as read, the line end included.
                batch.push(too_large(&text, len, format, &origin, ctx.opts.max_record_bytes));
            } else {
                let pre: Vec<Warning> = w.into_iter().collect();
                decode_record(&text, format, &origin, &pre, ctx, &mut batch);
            }
            if batch.len() >= BATCH_RECORDS {
                send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH_RECORDS)))?;
                if let Some(b) = &bar {
                    b.set_position(read_bytes);
                }
            }
            buf.clear();
            len = read_line(&mut *r, &mut buf, keep)?;
        }
        if !batch.is_empty() {
            send(batch)?;
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(())
}

/// `read_until(b'\n')` with the memchr crate's SIMD search (std's was 2.5 % of replay's
/// instructions, issue #9): appends one line, its newline included, to `buf`, but keeps at most
/// `keep` bytes of it; returns the bytes read (the whole line's length: more than `buf` holds when the
/// line was longer). The rest of a long line is read and dropped, so a file without newlines cannot
/// fill memory. 0 at the end.
fn read_line(r: &mut dyn BufRead, buf: &mut Vec<u8>, keep: usize) -> std::io::Result<usize> {
    let start = buf.len();
    let mut total = 0;
    loop {
        let (found, used) = {
            let available = match r.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                return Ok(total);
            }
            let (found, used) = match memchr::memchr(b'\n', available) {
                Some(i) => (true, i + 1),
                None => (false, available.len()),
            };
            let room = keep.saturating_sub(buf.len() - start);
            buf.extend_from_slice(&available[..used.min(room)]);
            (found, used)
        };
        r.consume(used);
        total += used;
        if found {
            return Ok(total);
        }
    }
}

fn open(input: &str) -> anyhow::Result<(Box<dyn BufRead + Send>, Option<u64>)> {
    let (raw, len): (Box<dyn Read + Send>, Option<u64>) = if input == "-" {
        (Box::new(std::io::stdin()), None)
    } else {
        let f = File::open(Path::new(input)).map_err(|e| anyhow::anyhow!("cannot open {input}: {e}"))?;
        let len = f.metadata().ok().map(|m| m.len());
        (Box::new(f), len)
    };
    let mut r = BufReader::with_capacity(256 * 1024, raw);
    let gz = r.fill_buf().map(|b| b.starts_with(&[0x1f, 0x8b])).unwrap_or(false);
    if gz {
        Ok((Box::new(BufReader::new(MultiGzDecoder::new(r))), None))
    } else {
        Ok((Box::new(r), len))
    }
}

/// Events of a finished replay, read back from an output file (tests and tooling).
pub fn read_events(path: &Path) -> anyhow::Result<Vec<AuditEvent>> {
    std::fs::read_to_string(path)?.lines().map(|l| Ok(serde_json::from_str(l)?)).collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use std::io::BufRead;

    proptest! {
        /// `read_line` gives what `read_until(b'\n')` gives, line by line, whatever the buffer size
        /// (lines longer than the buffer, a last line without a newline, empty input): the same
        /// length read, and the line's first `keep` bytes.
        #[test]
        fn read_line_is_read_until_newline(bytes in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'x'), Just(b'\r'), any::<u8>()], 0..200), cap in 1usize..16, keep in prop_oneof![1usize..20, Just(usize::MAX)]) {
            let mut ours = std::io::BufReader::with_capacity(cap, &bytes[..]);
            let mut std = std::io::BufReader::with_capacity(cap, &bytes[..]);
            loop {
                let (mut a, mut b) = (Vec::new(), Vec::new());
                let n = super::read_line(&mut ours, &mut a, keep).unwrap();
                let m = std.read_until(b'\n', &mut b).unwrap();
                prop_assert_eq!((n, &a[..]), (m, &b[..b.len().min(keep)]));
                if n == 0 {
                    break;
                }
            }
        }
    }
}
