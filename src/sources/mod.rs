//! Sources: where records come from. Each decodes in its own task and hands batches to the pipeline,
//! then acts on the batch report (HTTP response, replay report; Kafka offsets later).

pub mod admin_poll;
pub mod replay;
pub mod webhook;
