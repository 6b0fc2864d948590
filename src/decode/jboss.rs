//! jboss-logging listener lines → canonical events.
//!
//! `logline.rs` splits the logging framework's envelope from the message and parses Keycloak's
//! `key="value"` text quote-aware; this file gives the pairs their Keycloak meaning
//! (`keycloak-events.md` §1.4):
//! - the line has no event id and no event time: the id is derived from the content and the time is
//!   the log timestamp, read in the configured server time zone when the line has no offset;
//! - `"null"` means absent for realmId, realmName, clientId, userId and ipAddress;
//! - admin lines print the *authenticating* realm, never the target realm;
//! - TRACE lines append the request's cookies, which are credentials: they are redacted here and never
//!   stored or forwarded.

use chrono::{LocalResult, TimeZone, Utc};
use serde_json::{Map, Value};

use super::draft::Draft;
use super::logline::{self, EventText, LogRecord, LogTimestamp};
use super::{json, json_event, labelled, Context, Decoded, Format, Item};
use crate::event::*;

/// Fields the jboss-logging listener prints as `"null"` when absent.
const NULLABLE: &[&str] = &["realmId", "realmName", "clientId", "userId", "ipAddress", "sessionId"];

/// Detail keys that carry credentials and are never kept.
const REDACTED_KEYS: &[&str] = &["cookies"];

/// True for a Keycloak JSON console log object (default or ECS layout) rather than an event object.
pub fn is_json_console_record(obj: &Map<String, Value>) -> bool {
    obj.contains_key("loggerName")
        || obj.contains_key("log.logger")
        || obj.contains_key("loggerClassName")
        || (obj.contains_key("message") && (obj.contains_key("@timestamp") || obj.contains_key("timestamp")) && !obj.contains_key("type"))
}

/// Decode one log line (plain or JSON console) into zero or one event.
pub fn decode_line(line: &str, origin: &Origin, pre: &[Warning], ctx: &Context<'_>, out: &mut Vec<Item>) {
    let skip = |reason: &str, out: &mut Vec<Item>| {
        out.push(Item { origin: labelled(origin, Format::JbossLogging), decoded: Decoded::Skipped(reason.into()), raw: None });
    };
    // Syslog over TCP with octet counting (RFC 6587/5425, vymalo's default) prefixes the length.
    let line = strip_octet_count(line);
    let Some(rec) = logline::split_envelope(line) else {
        if ctx.lines_may_be_noise {
            return skip("not a log record (continuation or unrelated text)", out);
        }
        out.push(Item {
            origin: labelled(origin, Format::JbossLogging),
            decoded: Decoded::Rejected(format!("neither JSON nor a Keycloak log line: {}", json::preview(line.trim(), 60))),
            raw: Some(line.as_bytes().to_vec()),
        });
        return;
    };
    let text = match logline::parse_event_text(&rec.message) {
        Some(t) => t,
        // p2-inc's MDC event logger puts the event in the MDC, not the message.
        None => match mdc_event(line) {
            Some(obj) => EventText::Json(obj),
            None => return skip("log record is not a Keycloak event", out),
        },
    };
    let mut draft = Draft { origin: labelled(origin, Format::JbossLogging), ..Default::default() };
    draft.origin.log = Some(Box::new(LogEnvelope {
        timestamp: rec.timestamp.as_ref().map(timestamp_text),
        level: rec.level.clone(),
        logger: rec.logger.clone(),
        thread: rec.thread.clone(),
        host: rec.host.clone(),
    }));
    draft.warnings.extend(pre.iter().cloned());
    apply_log_time(&rec, ctx.tz, &mut draft);

    let result = match text {
        EventText::Json(obj_text) => match json::parse(&obj_text) {
            Ok(p) => match p.value {
                Value::Object(obj) => {
                    draft.warnings.extend(p.warnings);
                    // A custom listener's JSON usually has no time; the log line's time is kept then.
                    let (t, ts) = (draft.time, draft.time_source);
                    let log_warnings = std::mem::take(&mut draft.warnings);
                    let mut d2 = Draft { origin: draft.origin, warnings: log_warnings, ..Default::default() };
                    // Say what the embedded event is (the envelope stays in origin.log).
                    d2.origin.format = json_event::classify(&obj).label();
                    let has_time = obj.get("time").is_some_and(|v| !v.is_null());
                    if !has_time {
                        d2.time = t;
                        d2.time_source = ts;
                    }
                    let mut ev = json_event::decode(&obj, d2, ctx.opts);
                    if let Ok(e) = &mut ev {
                        let e = std::sync::Arc::make_mut(e);
                        if !has_time {
                            e.warnings.retain(|w| w.code != "time_missing");
                            if e.time.is_some() {
                                e.time_source = TimeSource::LogLine;
                            }
                        }
                    }
                    ev
                }
                _ => Err("embedded JSON is not an object".into()),
            },
            Err(e) => Err(format!("embedded JSON event: {e}")),
        },
        EventText::KeyValue(kv) => {
            for w in kv.warnings {
                draft.warn("log_line_ambiguity", w);
            }
            from_pairs(kv.pairs, draft, ctx)
        }
    };
    match result {
        Ok(ev) => out.push(Item { origin: ev.origin.clone(), decoded: Decoded::Event(ev), raw: None }),
        Err(e) => out.push(Item {
            origin: labelled(origin, Format::JbossLogging),
            decoded: Decoded::Rejected(e),
            raw: Some(line.as_bytes().to_vec()),
        }),
    }
}

/// `233 <14>1 2026-…` → `<14>1 2026-…` (a syslog frame length in front of the priority).
fn strip_octet_count(line: &str) -> &str {
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    match line.as_bytes().get(digits..digits + 2) {
        Some([b' ', b'<']) if digits > 0 => &line[digits + 1..],
        _ => line,
    }
}

/// p2-inc's MDC event store logs `Event Logger` with the event in MDC keys (`event.id`, `event.type`,
/// …, `event.detailsJson`). Rebuild the JSON event object from them.
fn mdc_event(line: &str) -> Option<String> {
    let start = line.find('{')?;
    let v: Value = serde_json::from_str(line[start..].trim()).ok()?;
    let mdc = v.get("mdc")?.as_object()?;
    let get = |k: &str| mdc.get(&format!("event.{k}")).cloned();
    let ty = get("type")?;
    let mut obj = Map::new();
    obj.insert("type".into(), ty);
    for k in ["id", "time", "realmId", "realmName", "clientId", "userId", "sessionId", "ipAddress", "error"] {
        if let Some(v) = get(k) {
            obj.insert(k.into(), v);
        }
    }
    if let Some(Value::String(d)) = get("detailsJson") {
        obj.insert("details".into(), serde_json::from_str(&d).unwrap_or(Value::String(d)));
    }
    Some(Value::Object(obj).to_string())
}

fn timestamp_text(t: &LogTimestamp) -> String {
    match t {
        LogTimestamp::Zoned(d) => d.to_rfc3339(),
        LogTimestamp::Local(n) => n.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
        LogTimestamp::TimeOnly(t) => t.format("%H:%M:%S%.3f").to_string(),
    }
}

fn apply_log_time(rec: &LogRecord, tz: chrono_tz::Tz, draft: &mut Draft) {
    let t = match &rec.timestamp {
        None => {
            draft.warn("time_missing", "the log line has no timestamp and jboss-logging events carry no event time");
            return;
        }
        Some(LogTimestamp::Zoned(d)) => d.with_timezone(&Utc),
        Some(LogTimestamp::Local(n)) => match tz.from_local_datetime(n) {
            LocalResult::Single(d) => d.with_timezone(&Utc),
            LocalResult::Ambiguous(a, _) => {
                draft.warn(
                    "time_ambiguous",
                    format!("log time {n} occurs twice in {tz} (daylight-saving change); the earlier instant was used"),
                );
                a.with_timezone(&Utc)
            }
            LocalResult::None => {
                let shifted = *n + chrono::Duration::hours(1);
                draft.warn("time_nonexistent", format!("log time {n} does not exist in {tz} (daylight-saving gap); read one hour later"));
                match tz.from_local_datetime(&shifted).earliest() {
                    Some(d) => d.with_timezone(&Utc),
                    None => return,
                }
            }
        },
        Some(LogTimestamp::TimeOnly(t)) => {
            draft.warn("time_missing", format!("the log line has a time of day ({t}) but no date; event time unknown"));
            return;
        }
    };
    draft.time = Some(t);
    draft.time_source = Some(TimeSource::LogLine);
}

/// Give key=value pairs their meaning. Keycloak prints its fixed fields before the details, and detail
/// keys are fixed strings in Keycloak's code, so for a repeated key the first occurrence is the real one.
fn from_pairs(pairs: Vec<(String, String)>, mut d: Draft, ctx: &Context<'_>) -> Result<std::sync::Arc<AuditEvent>, String> {
    let admin = match pairs.first().map(|(k, _)| k.as_str()) {
        Some("type") => false,
        Some("operationType") => true,
        _ => return Err("log line has no type= or operationType= field".into()),
    };
    let mut seen = std::collections::HashSet::new();
    let mut a = AdminInfo::default();
    for (k, v) in pairs {
        if !seen.insert(k.clone()) {
            d.warn("duplicate_key", format!("key {k:?} repeated in the log line; the first value was kept"));
            continue;
        }
        let val = if NULLABLE.contains(&k.as_str()) && v == "null" { None } else { Some(v) };
        match (k.as_str(), admin) {
            ("type", false) => d.event_type = val.map(Into::into),
            ("operationType", true) => a.operation = val,
            ("realmId", false) => d.realm_id = val,
            ("realmName", false) => d.realm_name = val.map(Into::into),
            ("realmId", true) => a.auth.realm_id = val,
            ("realmName", true) => a.auth.realm_name = val,
            ("clientId", false) => d.client_id = val.map(Into::into),
            ("clientId", true) => a.auth.client_uuid = val,
            ("userId", false) => d.user_id = val,
            ("userId", true) => a.auth.user_id = val,
            ("sessionId", _) => d.session_id = val,
            ("ipAddress", true) => {
                a.auth.ip_address = val.clone();
                d.ip_address = val.map(Into::into);
            }
            ("ipAddress", false) => d.ip_address = val.map(Into::into),
            ("error", _) => d.error = val.map(Into::into),
            ("resourceType", true) => a.resource_type = val,
            ("resourcePath", true) => a.resource_path = val,
            ("representation", true) => {
                let mut r = val.unwrap_or_default();
                if let Some(w) = super::draft::cap(&mut r, ctx.opts.max_representation_bytes, "representation") {
                    d.warnings.push(w);
                }
                a.representation = Some(r);
            }
            (key, _) if REDACTED_KEYS.contains(&key) => {
                d.details.push((key.into(), "[redacted]".into()));
                d.warn("credential_redacted", format!("{key} (TRACE-level request data) holds credentials; redacted"));
            }
            (_, _) => d.details.push((k.into(), val.map_or_else(|| "null".into(), |v| value_text(&v)))),
        }
    }
    if admin {
        if a.auth.realm_id.is_some() || a.auth.realm_name.is_some() {
            d.warn(
                "target_realm_unknown",
                "jboss-logging admin lines name the administrator's realm, not the changed realm; it is in admin.auth",
            );
        }
        d.kind = Some(EventKind::Admin);
        d.admin = Some(a);
    } else {
        d.kind = Some(EventKind::User);
        d.username = d.details.iter().find(|(k, _)| k == "username").map(|(_, v)| v.clone());
    }
    d.finish(ctx.opts)
}
