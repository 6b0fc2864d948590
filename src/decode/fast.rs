//! The fast path for the commonest record there is: a plain Keycloak `EventRepresentation` user event
//! (the REST API, `ext-event-http`, most webhook and log listeners). It deserialises straight into
//! typed fields instead of building a `serde_json::Value` tree and walking it, which roughly halves
//! the cost of decoding (issue #9; `cargo bench --bench steps -- decode`).
//!
//! It is strictly an optimisation: it accepts a record only when the general mapper
//! (`json_event::decode` after `json::parse`) would read it in exactly the same way, and returns
//! `None` for anything else (an unknown or flattened key, a `null`, a value of the wrong type, a
//! duplicate key, trailing bytes, a p2-inc or admin type, a time that is not an integer), which then
//! takes the general path with its warnings. A test checks both paths give identical events.

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::sync::Arc;

use super::draft::Draft;
use super::{DecodeOptions, Format};
use crate::event::{AuditEvent, EventKind, Origin, Text, TimeSource, ValueText, Warning};

/// The keys of a plain user event; any other key (or a null in any of them) leaves the fast path.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Plain {
    #[serde(default, deserialize_with = "text")]
    id: Option<String>,
    time: i64,
    #[serde(rename = "type")]
    event_type: Text,
    #[serde(default, deserialize_with = "text")]
    realm_id: Option<String>,
    #[serde(default, deserialize_with = "text")]
    realm_name: Option<Text>,
    #[serde(default, deserialize_with = "text")]
    client_id: Option<Text>,
    #[serde(default, deserialize_with = "text")]
    user_id: Option<String>,
    #[serde(default, deserialize_with = "text")]
    session_id: Option<String>,
    #[serde(default, deserialize_with = "text")]
    ip_address: Option<Text>,
    #[serde(default, deserialize_with = "text")]
    error: Option<Text>,
    #[serde(default, deserialize_with = "details")]
    details: Vec<(Text, Text)>,
}

/// A present field must be a string: `null` (which the general path treats as absent, but which
/// also changes the detected format) and other types leave the fast path.
fn text<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// `details`: an object of strings, in key order (the order the general path reads them in, which
/// decides which details a cap drops); a duplicate key leaves the fast path (the general path warns).
/// Keys and values are read as [`Text`]: short ones (most of them) need no allocation, nor do
/// Keycloak's constant URNs ([`crate::event::value_text`]).
fn details<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(Text, Text)>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<(Text, Text)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object of strings")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            // serde_json gives no size hint; token exchanges carry 8-12 details, and starting at 8
            // grew (reallocated) the list for most of them (issue #9).
            let mut out: Vec<(Text, Text)> = Vec::with_capacity(map.size_hint().unwrap_or(12));
            while let Some((k, v)) = map.next_entry::<Text, ValueText>()? {
                out.push((k, v.0));
            }
            out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            if out.windows(2).any(|w| w[0].0 == w[1].0) {
                return Err(serde::de::Error::custom("duplicate detail key"));
            }
            Ok(out)
        }
    }
    d.deserialize_map(V)
}

/// Decode `text` (one trimmed JSON object) if it is a plain Keycloak user event; `None` otherwise.
/// `pre` are warnings that apply to the whole record. The event's origin is `origin` labelled with
/// the Keycloak format, as the general path labels it.
pub fn decode(text: &str, origin: &Origin, pre: &[Warning], opts: &DecodeOptions) -> Option<Result<Arc<AuditEvent>, String>> {
    // serde_json::from_str also refuses trailing bytes, which the general path keeps with a warning.
    let p: Plain = serde_json::from_str(text).ok()?;
    let t = p.event_type.as_str();
    if t.starts_with("access.") || t.starts_with("admin.") || t.starts_with("system.") || t == "ADMIN_EVENT" || t == "AdminEvent" {
        return None;
    }
    let mut draft = Draft { origin: super::labelled(origin, Format::Keycloak), kind: Some(EventKind::User), ..Default::default() };
    draft.warnings.extend(pre.iter().cloned());
    draft.id = p.id;
    match super::time::from_json(&serde_json::Value::from(p.time)) {
        Ok((t, w)) => {
            draft.time = Some(t);
            draft.time_source = Some(TimeSource::Event);
            draft.warnings.extend(w);
        }
        Err(e) => draft.warn("time_invalid", format!("{e}; event time unknown")),
    }
    draft.error = p.error;
    draft.realm_id = p.realm_id;
    draft.realm_name = p.realm_name;
    draft.event_type = Some(p.event_type);
    draft.client_id = p.client_id;
    draft.user_id = p.user_id.filter(|u| u != "null");
    draft.session_id = p.session_id;
    draft.ip_address = p.ip_address;
    draft.username = p.details.iter().find(|(k, _)| k == "username").map(|(_, v)| v.clone());
    draft.details = p.details;
    draft.details_sorted = true;
    Some(draft.finish(opts))
}

#[cfg(test)]
mod tests {
    use super::super::{decode_object, decode_record, Context, DecodeOptions, Format, Item};
    use crate::event::Origin;
    use proptest::prelude::*;

    fn both(line: &str, opts: &DecodeOptions) -> (String, String, bool) {
        let ctx = Context { opts, tz: opts.time_zone().unwrap(), deliveries: None, lines_may_be_noise: false };
        let origin = Origin { input: "test".into(), line: Some(1), ..Default::default() };
        let trimmed = line.trim();
        let (mut a, mut b): (Vec<Item>, Vec<Item>) = (Vec::new(), Vec::new());
        decode_record(line, Format::Auto, &origin, &[], &ctx, &mut a);
        decode_object(line, trimmed, Format::Auto, &origin, &[], &ctx, &mut b);
        let fast = super::decode(trimmed, &origin, &[], opts).is_some();
        (format!("{a:?}"), format!("{b:?}"), fast)
    }

    fn assert_same(line: &str, opts: &DecodeOptions) -> bool {
        let (fast, general, took) = both(line, opts);
        assert_eq!(fast, general, "fast and general paths differ for {line}");
        took
    }

    #[test]
    fn the_fast_path_reads_every_fixture_and_generated_event_like_the_general_path() {
        let opts = DecodeOptions::default();
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keycloak");
        let mut taken = 0;
        let mut lines = 0;
        for f in std::fs::read_dir(dir).unwrap().flatten().filter(|f| f.path().extension().is_some_and(|e| e == "jsonl")) {
            for line in std::fs::read_to_string(f.path()).unwrap().lines().filter(|l| l.trim_start().starts_with('{')) {
                lines += 1;
                taken += assert_same(line, &opts) as usize;
            }
        }
        let mut gen = Vec::new();
        crate::loadgen::write_file(crate::loadgen::GenOptions::default(), 2000, &mut gen).unwrap();
        for line in String::from_utf8(gen).unwrap().lines() {
            lines += 1;
            taken += assert_same(line, &opts) as usize;
        }
        // Most records are plain user events: the fast path must actually be used.
        assert!(taken * 2 > lines, "fast path took {taken} of {lines} records");
    }

    #[test]
    fn anything_unusual_takes_the_general_path_with_the_same_result() {
        let base = r#""id":"e1","time":1773043083214,"type":"TOKEN_EXCHANGE","realmId":"r","clientId":"c","userId":"u""#;
        let cases = [
            (format!("{{{base},\"details\":{{\"audience\":\"a\",\"username\":\"bob\"}}}}"), true),
            (format!("{{{base},\"details\":{{\"audience\":\"a\\u0041\\n\"}}}}"), true),
            (format!("{{{base},\"sessionId\":null}}"), false),
            (format!("{{{base},\"details\":{{\"audience\":null}}}}"), false),
            (format!("{{{base},\"details\":{{\"a\":\"1\",\"a\":\"2\"}}}}"), false),
            (format!("{{{base},\"clientId\":\"again\"}}"), false),
            (format!("{{{base},\"details\":{{\"n\":5}}}}"), false),
            (format!("{{{base},\"custom\":\"flattened\"}}"), false),
            (format!("{{{base}}} trailing"), false),
            (r#"{"id":"e2","time":"2026-03-09T08:11:23Z","type":"LOGIN"}"#.to_string(), false),
            (r#"{"id":"e3","time":1773043083.5,"type":"LOGIN"}"#.to_string(), false),
            (r#"{"id":"e4","time":1773043083,"type":"LOGIN"}"#.to_string(), true),
            (r#"{"id":"e5","time":-99999999999999999,"type":"LOGIN"}"#.to_string(), true),
            (r#"{"id":"e6","time":1773043083214,"type":""}"#.to_string(), true),
            (r#"{"id":"e7","time":1773043083214,"type":"access.LOGIN"}"#.to_string(), false),
            (r#"{"id":"e8","time":1773043083214,"type":"admin.CLIENT-UPDATE"}"#.to_string(), false),
            (r#"{"time":1773043083214,"type":"LOGIN","userId":"null","ipAddress":"not-an-ip"}"#.to_string(), true),
            (r#"{"id":" ","time":1773043083214,"type":"LOGIN","clientId":"c\u202e"}"#.to_string(), true),
        ];
        let opts = DecodeOptions::default();
        for (line, fast) in &cases {
            assert_eq!(assert_same(line, &opts), *fast, "fast path use for {line}");
        }
        // Caps apply identically (which details are dropped, which fields are cut).
        let small = DecodeOptions { max_details: 2, max_field_bytes: 8, ..DecodeOptions::default() };
        let line = format!("{{{base},\"ipAddress\":\"203.0.113.77777\",\"details\":{{\"z\":\"1\",\"b\":\"2\",\"a\":\"3\",\"username\":\"a-very-long-name\"}}}}");
        assert!(assert_same(&line, &small));
    }

    /// `decode_body` takes single-document bodies through the fast path without the separate
    /// single-document check; it must give exactly what the check-then-decode path gives.
    #[test]
    fn whole_bodies_decode_as_before_the_fast_single_document_path() {
        use super::super::{decode_body, is_single_json_document};
        let opts = DecodeOptions::default();
        let ctx = Context { opts: &opts, tz: opts.time_zone().unwrap(), deliveries: None, lines_may_be_noise: false };
        let base = Origin { input: "webhook:/v1/events".into(), ..Default::default() };
        let mut gen = Vec::new();
        crate::loadgen::write_file(crate::loadgen::GenOptions::default(), 200, &mut gen).unwrap();
        let gen = String::from_utf8(gen).unwrap();
        let lines: Vec<&str> = gen.lines().collect();
        let mut checked = 0;
        for line in &lines[..50] {
            for body in [
                line.to_string(),
                format!("{line}\n"),
                format!("\n\n  {line}\r\n"),
                format!("{line}\u{2028}"),
                format!("{line} {line}"),
                format!("{line}\n{}", lines[60]),
                format!("{line}x"),
                format!("[{line}]"),
                format!("\u{feff}{line}"),
            ] {
                let mut got = Vec::new();
                decode_body(body.as_bytes(), Format::Auto, &base, &ctx, &mut got);
                let text = body.strip_prefix('\u{feff}').unwrap_or(&body);
                let trimmed = text.trim_start();
                let mut want = Vec::new();
                if is_single_json_document(trimmed) {
                    let leading = text[..text.len() - trimmed.len()].bytes().filter(|&b| b == b'\n').count() as u64;
                    let origin = Origin { line: Some(1 + leading), ..base.clone() };
                    decode_record(trimmed, Format::Auto, &origin, &[], &ctx, &mut want);
                    checked += 1;
                } else {
                    // Not one document: the line-by-line path (which numbers every record) must have it.
                    assert!(!got.is_empty() && got.iter().all(|i| i.origin.index.is_some()), "body {body:?}: {got:?}");
                    continue;
                }
                assert_eq!(format!("{got:?}"), format!("{want:?}"), "body {body:?}");
            }
        }
        assert!(checked >= 200, "only {checked} single-document bodies compared");
    }

    proptest! {
        #[test]
        fn random_keycloak_like_objects_decode_the_same_either_way(
            fields in proptest::collection::vec((0usize..12, prop_oneof![
                Just(serde_json::Value::Null),
                "[a-zA-Z0-9 ._\u{e9}\u{202e}-]{0,12}".prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                Just(serde_json::json!({"audience": "x", "username": "u"})),
                Just(serde_json::json!({"k": null})),
            ]), 0..10),
            time in prop_oneof![Just(serde_json::json!(1773043083214i64)), any::<i64>().prop_map(serde_json::Value::from), Just(serde_json::json!("1773043083214"))],
        ) {
            const KEYS: [&str; 12] = ["id", "type", "realmId", "realmName", "clientId", "userId", "sessionId", "ipAddress", "error", "details", "username", "eventType"];
            let mut text = format!("{{\"time\":{time},\"type\":\"TOKEN_EXCHANGE\"");
            for (k, v) in &fields {
                text.push_str(&format!(",\"{}\":{v}", KEYS[*k]));
            }
            text.push('}');
            assert_same(&text, &DecodeOptions::default());
        }
    }
}
