//! kcaudit's own canonical events as input: what an edge instance publishes to Kafka for the workers,
//! and what the audit log holds (so an audit log can be replayed through a new rule set).
//!
//! The record is the [`AuditEvent`] JSON exactly as kcaudit writes it (`deny_unknown_fields`, the
//! current `schema_version` only). What later stages derive is recomputed, never trusted from the
//! input: `enrichment`, `findings` and `severity` are cleared, so a replayed audit log is enriched and
//! flagged by the running configuration and a hostile producer on the topic cannot plant a verdict.
//! The event keeps its own `origin` (the edge's webhook request, line, delivery id) and gains the
//! Kafka coordinates it was read from.

use super::{labelled, Decoded, Format, Item};
use crate::event::{AuditEvent, Origin, Warning, SCHEMA_VERSION};

/// kcaudit's own serialisation starts with this (the struct's field order): a test that needs no
/// parse. Re-serialised copies (sorted keys) are recognised after parsing by [`is_canonical`].
const PREFIX: &str = "{\"schema_version\":";

pub fn looks_canonical(text: &str) -> bool {
    text.starts_with(PREFIX)
}

/// Top-level fields no Keycloak representation or listener format has, but every canonical event does.
pub fn is_canonical(obj: &serde_json::Map<String, serde_json::Value>) -> bool {
    obj.get("schema_version").is_some_and(|v| v.is_u64()) && obj.contains_key("time_source") && obj.contains_key("id_derived") && obj.contains_key("origin")
}

/// Decode one canonical event.
pub fn decode(text: &str, origin: &Origin, pre: &[Warning], out: &mut Vec<Item>) {
    let origin = labelled(origin, Format::Kcaudit);
    let reject = |reason: String, out: &mut Vec<Item>| out.push(Item { origin: origin.clone(), decoded: Decoded::Rejected(reason), raw: Some(text.as_bytes().to_vec()) });
    let mut ev: AuditEvent = match serde_json::from_str(text) {
        Ok(ev) => ev,
        Err(e) => return reject(format!("not a kcaudit canonical event (schema version {SCHEMA_VERSION}): {e}"), out),
    };
    if ev.schema_version != SCHEMA_VERSION {
        return reject(format!("canonical event has schema_version {}, this kcaudit reads {SCHEMA_VERSION}", ev.schema_version), out);
    }
    if ev.id.is_empty() || ev.event_type.is_empty() {
        return reject("canonical event without an id or a type".into(), out);
    }
    ev.warnings.extend(pre.iter().cloned());
    ev.clear_verdicts();
    if origin.kafka.is_some() {
        ev.origin.kafka = origin.kafka.clone();
    }
    if origin.line.is_some() && origin.kafka.is_none() {
        // Replaying a file: the file position is the provenance that matters now.
        ev.origin.line = origin.line;
    }
    out.push(Item { origin, decoded: Decoded::Event(std::sync::Arc::new(ev)), raw: None });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{decode_body, Context, DecodeOptions};
    use crate::event::{Finding, KafkaRecord, Severity};

    fn decoded(body: &str, origin: &Origin) -> Vec<Item> {
        let opts = DecodeOptions::default();
        let ctx = Context { opts: &opts, tz: chrono_tz::UTC, deliveries: None, lines_may_be_noise: false };
        let mut out = Vec::new();
        decode_body(body.as_bytes(), Format::Auto, origin, &ctx, &mut out);
        out
    }

    fn sample() -> AuditEvent {
        let native = r#"{"id":"e1","time":1773043083214,"type":"TOKEN_EXCHANGE","realmId":"r1","clientId":"svc-a","userId":"u1","ipAddress":"10.0.0.1","details":{"audience":"api"}}"#;
        let items = decoded(native, &Origin { input: "webhook:/v1/events".into(), ..Default::default() });
        match &items[0].decoded {
            Decoded::Event(e) => (**e).clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn canonical_events_round_trip_and_derived_fields_are_recomputed() {
        let mut ev = sample();
        ev.findings.push(Finding { rule: "planted".into(), severity: Severity::Critical, title: "t".into(), reason: "r".into(), attack: vec![], related_event_ids: vec![] });
        ev.severity = Some(Severity::Critical);
        let kafka = Origin { input: "kafka:kcaudit-ingest/2".into(), kafka: Some(std::sync::Arc::new(KafkaRecord { topic: "kcaudit-ingest".into(), partition: 2, offset: 7, ..Default::default() })), ..Default::default() };
        // kcaudit's own field order, and a re-serialised copy with sorted keys (serde_json::Value).
        let as_written = serde_json::to_string(&ev).unwrap();
        let sorted = serde_json::to_value(&ev).unwrap().to_string();
        assert!(looks_canonical(&as_written) && !looks_canonical(&sorted));
        for body in [as_written, sorted] {
            let items = decoded(&body, &kafka);
            assert_eq!(items.len(), 1);
            assert_eq!(&*items[0].origin.format, "kcaudit");
            let Decoded::Event(got) = &items[0].decoded else { panic!("{:?}", items[0].decoded) };
            assert!(got.findings.is_empty() && got.severity.is_none() && got.enrichment.is_none(), "verdicts are never taken from the input");
            assert_eq!(&*got.origin.input, "webhook:/v1/events", "the edge's provenance is kept");
            assert_eq!(got.origin.kafka.as_ref().map(|k| (k.partition, k.offset)), Some((2, 7)));
            let mut want = ev.clone();
            want.findings.clear();
            want.severity = None;
            want.origin = got.origin.clone();
            assert_eq!(**got, want);
        }
    }

    #[test]
    fn other_versions_and_unknown_fields_are_rejected_with_a_reason() {
        let ev = sample();
        let mut v = serde_json::to_value(&ev).unwrap();
        v["schema_version"] = 2.into();
        let items = decoded(&v.to_string(), &Origin::default());
        assert!(matches!(&items[0].decoded, Decoded::Rejected(r) if r.contains("schema_version 2")), "{:?}", items[0].decoded);
        let mut v = serde_json::to_value(&ev).unwrap();
        v["verdict"] = "benign".into();
        let items = decoded(&v.to_string(), &Origin::default());
        assert!(matches!(&items[0].decoded, Decoded::Rejected(r) if r.contains("verdict")), "{:?}", items[0].decoded);
        // A Keycloak event whose details mention the canonical field names is still a Keycloak event.
        let sneaky = r#"{"id":"e2","time":1773043083214,"type":"LOGIN","realmId":"r1","details":{"schema_version":"1","time_source":"x","id_derived":"y","origin":"z"}}"#;
        let items = decoded(sneaky, &Origin::default());
        assert!(matches!(&items[0].decoded, Decoded::Event(e) if &*e.origin.format != "kcaudit"), "{:?}", items[0].decoded);
    }
}
