//! The blackhole sink: accepts every event and discards it. For benchmarks (the pipeline's own cost,
//! without an output's) and for dry runs of a configuration; its deliveries are counted like any
//! sink's (`kcaudit_events_delivered_total{sink="blackhole"}`).

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{BatchOptions, BoxFuture, RetryOptions, Sink, SinkError, WriteReport};
use crate::event::AuditEvent;

/// `[sinks.blackhole]`: discard every event (benchmarks, dry runs).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BlackholeOptions {
    pub enabled: bool,
    pub batch: BatchOptions,
    pub retry: RetryOptions,
}

pub struct BlackholeSink;

impl Sink for BlackholeSink {
    fn name(&self) -> &str {
        "blackhole"
    }

    fn write<'a>(&'a mut self, _events: &'a [Arc<AuditEvent>]) -> BoxFuture<'a, Result<WriteReport, SinkError>> {
        Box::pin(async { Ok(WriteReport::default()) })
    }
}
