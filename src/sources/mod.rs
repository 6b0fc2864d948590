//! Sources: where records come from. Each decodes in its own task and hands batches to the pipeline,
//! then acts on the batch report (HTTP response, replay report, Kafka offset commits).

pub mod admin_poll;
pub mod kafka;
pub mod replay;
pub mod webhook;
