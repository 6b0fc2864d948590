//! Standard output as a sink: JSON lines, flushed per batch (replay's default output, and handy for
//! piping `kcaudit serve` into another tool).

use std::io::Write;
use std::sync::Arc;

use super::{BoxFuture, Sink, SinkError, WriteReport};
use crate::event::AuditEvent;

/// Writes JSON lines to standard output, in the canonical shape or as OCSF / ECS records.
#[derive(Default)]
pub struct StdoutSink {
    pub format: super::encode::JsonFormat,
    pub memo: crate::json_line::Memo,
}

impl Sink for StdoutSink {
    fn name(&self) -> &str {
        "stdout"
    }

    fn write<'a>(&'a mut self, events: &'a [Arc<AuditEvent>]) -> BoxFuture<'a, Result<WriteReport, SinkError>> {
        let buf = match self.format {
            super::encode::JsonFormat::Canonical => super::file::encode_lines(events, &mut self.memo),
            other => {
                let mut buf = Vec::new();
                for e in events {
                    for r in super::encode::json_records(e, other) {
                        buf.extend_from_slice(r.as_bytes());
                        buf.push(b'\n');
                    }
                }
                buf
            }
        };
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut out = std::io::stdout().lock();
                // A closed stdout (broken pipe) will not come back: permanent.
                out.write_all(&buf).and_then(|_| out.flush()).map_err(|e| SinkError::Permanent(format!("writing to stdout: {e}")))
            })
            .await
            .map_err(|e| SinkError::Transient(e.to_string()))??;
            Ok(WriteReport::default())
        })
    }
}
