//! Wire encodings of canonical events for SIEMs: CEF and LEEF (syslog payloads), RFC 5424 / 3164
//! syslog messages and RFC 6587 framing, OCSF and ECS JSON. Pure functions, shared by the sinks
//! (syslog, HTTP, Kafka, file), each escaping every field for the format it enters.

pub mod cef;
pub mod ecs;
pub mod leef;
pub mod ocsf;
pub mod syslog;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event::AuditEvent;

/// The JSON shape a JSON sink (HTTP, stdout, Kafka) writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JsonFormat {
    /// kcaudit's canonical event (`schemas/audit-event.schema.json`).
    #[default]
    Canonical,
    /// OCSF: an Authentication (3002) or API Activity (6003) record, then one Detection Finding
    /// (2004) record per finding.
    Ocsf,
    /// An Elastic Common Schema document.
    Ecs,
}

/// The JSON records `e` becomes in `format`, serialised (OCSF gives one per finding besides the
/// event's own). The canonical record is written by `json_line`, byte-identical to serde_json's
/// serialisation of the event; going through a `serde_json::Value` built a tree per event and sorted
/// its keys (issue #9).
pub fn json_records(e: &AuditEvent, format: JsonFormat) -> Vec<String> {
    match format {
        JsonFormat::Canonical => vec![e.to_json_line()],
        JsonFormat::Ocsf => ocsf::records(e).iter().map(serde_json::Value::to_string).collect(),
        JsonFormat::Ecs => vec![ecs::document(e).to_string()],
    }
}
