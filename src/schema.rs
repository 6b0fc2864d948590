//! JSON Schemas generated from the Rust types, so documentation cannot drift from the code. The event
//! schema is committed as `schemas/audit-event.schema.json`; a test fails when it is stale
//! (regenerate with `cargo run -- schema event > schemas/audit-event.schema.json`).

pub fn render(which: &str) -> String {
    let schema = match which {
        "event" => schemars::schema_for!(crate::event::AuditEvent),
        "config" => schemars::schema_for!(crate::config::Config),
        "dead-letter" => schemars::schema_for!(crate::dead_letter::DeadLetter),
        other => return format!("unknown schema {other:?}"),
    };
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}
