//! JSON event objects: Keycloak's `EventRepresentation`/`AdminEventRepresentation` (REST API and
//! p2-inc `ext-event-http`), p2-inc `ext-event-webhook` bodies, SnuK87 keycloak-kafka values, vymalo
//! webhook payloads and the flattened objects custom log listeners print.
//!
//! These formats are one family: the same Keycloak bean serialised by different mappers. They differ
//! in where a field lives (p2 moves user-event fields into `authDetails`, whose `realmId` is the realm
//! *name*), in null handling (keycloak-kafka writes `null`s) and in the type prefix (p2's `access.` /
//! `admin.`). One tolerant mapper reads them all, so a new listener variant degrades to "decoded with a
//! warning" instead of "rejected".

use serde_json::{Map, Value};

use super::draft::Draft;
use super::time;
use super::{DecodeOptions, Format};
use crate::event::*;

/// Keys that belong to a listener's envelope, not to the Keycloak event; never copied into details.
const ENVELOPE_KEYS: &[&str] = &["@class", "uid", "resourceTypeAsString", "__TypeId__", "sourceType"];

/// Top-level keys the mapper reads. Any other top-level key with a scalar value is kept as a detail
/// (custom listeners flatten details into the top level).
const KNOWN_KEYS: &[&str] = &[
    "id", "eventId", "time", "type", "eventType", "realmId", "realmName", "clientId", "userId", "sessionId",
    "ipAddress", "error", "details", "authDetails", "operationType", "resourceType", "resourcePath",
    "resourceId", "representation",
];

/// Which family member an object looks like, from its markers (for `origin.format`; the mapping
/// itself is the same tolerant code for all of them).
pub fn classify(obj: &Map<String, Value>) -> Format {
    let type_str = obj.get("type").and_then(Value::as_str).unwrap_or("");
    if obj.contains_key("uid") || type_str.starts_with("access.") || type_str.starts_with("admin.") || type_str.starts_with("system.") {
        return Format::P2inc;
    }
    if obj.contains_key("resourceTypeAsString") || obj.values().any(Value::is_null) {
        return Format::KeycloakKafka;
    }
    Format::Keycloak
}

/// True when the object carries anything that makes it a Keycloak event.
pub fn looks_like_event(obj: &Map<String, Value>) -> bool {
    ["type", "eventType", "operationType"].iter().any(|k| obj.contains_key(*k))
        || (obj.contains_key("authDetails") && obj.contains_key("resourcePath"))
}

/// Map one JSON object to a canonical event.
pub fn decode(obj: &Map<String, Value>, mut draft: Draft, opts: &DecodeOptions) -> Result<std::sync::Arc<AuditEvent>, String> {
    if !looks_like_event(obj) {
        return Err(format!(
            "JSON object is not a Keycloak event (no type, eventType or operationType; keys: {})",
            super::json::preview(&obj.keys().take(12).cloned().collect::<Vec<_>>().join(","), 120)
        ));
    }
    let mut f = Fields { obj, draft: &mut draft };
    let auth = obj.get("authDetails").and_then(Value::as_object);
    if obj.get("authDetails").is_some_and(|a| !a.is_object() && !a.is_null()) {
        f.draft.warn("wrong_type", "authDetails is not an object; ignored");
    }

    let mut type_str = f.string("type").or_else(|| f.string("eventType"));
    let mut kind = EventKind::User;
    if let Some(t) = type_str.take() {
        if let Some(rest) = t.strip_prefix("access.") {
            type_str = Some(rest.to_string());
        } else if t.starts_with("admin.") {
            kind = EventKind::Admin;
        } else if t == "ADMIN_EVENT" || t == "AdminEvent" {
            kind = EventKind::Admin;
        } else {
            type_str = Some(t);
        }
    }
    if obj.contains_key("operationType") || (auth.is_some() && obj.contains_key("resourcePath")) {
        kind = EventKind::Admin;
    }
    // vymalo admin events: type "<RESOURCE>-<OPERATION>" with no prefix, plus resourcePath.
    let vymalo_admin = type_str.as_deref().and_then(split_admin_type).filter(|_| obj.contains_key("resourcePath"));
    if vymalo_admin.is_some() {
        kind = EventKind::Admin;
    }
    f.draft.kind = Some(kind);
    f.draft.id = f.string("id").or_else(|| f.string("eventId"));
    f.read_time();
    f.draft.error = f.text("error");
    f.draft.realm_id = f.string("realmId");
    f.draft.realm_name = f.text("realmName");

    if kind == EventKind::Admin {
        let mut admin = AdminInfo {
            operation: f.string("operationType"),
            resource_type: f.string("resourceType").or_else(|| f.string("resourceTypeAsString")),
            resource_path: f.string("resourcePath"),
            resource_id: f.string("resourceId"),
            representation: f.representation(opts),
            auth: AdminAuth::default(),
        };
        if let Some((r, o)) = vymalo_admin {
            admin.resource_type.get_or_insert(r);
            admin.operation.get_or_insert(o);
        }
        match auth {
            Some(a) => {
                let mut af = Fields { obj: a, draft: &mut *f.draft };
                admin.auth = AdminAuth {
                    realm_id: af.string_at("realmId", "authDetails."),
                    realm_name: af.string_at("realmName", "authDetails."),
                    client_uuid: af.string_at("clientId", "authDetails."),
                    user_id: af.string_at("userId", "authDetails."),
                    username: af.string_at("username", "authDetails."),
                    ip_address: af.string_at("ipAddress", "authDetails."),
                };
            }
            // Flattened admin events (custom log listeners) put the actor at the top level.
            None => {
                admin.auth.client_uuid = f.string("clientId");
                admin.auth.user_id = f.string("userId");
                admin.auth.ip_address = f.string("ipAddress");
            }
        }
        f.draft.ip_address = admin.auth.ip_address.clone().map(Into::into).or_else(|| f.text("ipAddress"));
        // The type string p2 builds ("admin.CLIENT-UPDATE") is re-derived from the fields by Draft.
        f.draft.event_type = None;
        f.draft.admin = Some(admin);
    } else {
        f.draft.event_type = type_str.map(Into::into);
        f.draft.client_id = f.text("clientId");
        f.draft.user_id = f.string("userId");
        f.draft.session_id = f.string("sessionId");
        f.draft.ip_address = f.text("ipAddress");
        if let Some(a) = auth {
            // p2-inc: user-event fields live in authDetails; its realmId is the realm NAME.
            let mut af = Fields { obj: a, draft: &mut *f.draft };
            let auth_realm = af.string_at("realmId", "authDetails.");
            let client = af.string_at("clientId", "authDetails.");
            let user = af.string_at("userId", "authDetails.");
            let session = af.string_at("sessionId", "authDetails.");
            let ip = af.string_at("ipAddress", "authDetails.");
            let username = af.string_at("username", "authDetails.");
            let d = &mut *f.draft;
            d.client_id = d.client_id.take().or(client.map(Into::into));
            d.user_id = d.user_id.take().or(user);
            d.session_id = d.session_id.take().or(session);
            d.ip_address = d.ip_address.take().or(ip.map(Into::into));
            d.username = username.map(Into::into);
            if d.realm_name.is_none() {
                d.realm_name = auth_realm.map(Into::into);
            }
        }
    }
    f.read_details();
    if kind == EventKind::User && f.draft.username.is_none() {
        f.draft.username = f.draft.details.iter().find(|(k, _)| k == "username").map(|(_, v)| v.clone());
    }
    if f.draft.user_id.as_deref() == Some("null") {
        f.draft.user_id = None;
    }
    draft.finish(opts)
}

/// `USER-CREATE` → (`USER`, `CREATE`) when both halves look like Keycloak enum names.
fn split_admin_type(t: &str) -> Option<(String, String)> {
    let (r, o) = t.rsplit_once('-')?;
    let ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase() || b == b'_');
    (ok(r) && matches!(o, "CREATE" | "UPDATE" | "DELETE" | "ACTION")).then(|| (r.to_string(), o.to_string()))
}

struct Fields<'a, 'd> {
    obj: &'a Map<String, Value>,
    draft: &'d mut Draft,
}

impl Fields<'_, '_> {
    fn string(&mut self, key: &str) -> Option<String> {
        self.string_at(key, "")
    }

    fn text(&mut self, key: &str) -> Option<Text> {
        self.string_at(key, "").map(Into::into)
    }

    /// Read a scalar as a string. Keycloak only ever sends strings here, so another type is kept (as its
    /// JSON text) with a `wrong_type` warning rather than dropped.
    fn string_at(&mut self, key: &str, prefix: &str) -> Option<String> {
        match self.obj.get(key)? {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => {
                let text = match other {
                    Value::Bool(_) | Value::Number(_) => other.to_string(),
                    _ => serde_json::to_string(other).unwrap_or_default(),
                };
                self.draft.warn(
                    "wrong_type",
                    format!("{prefix}{key} is a {}, expected a string; kept as {}", time::type_name(other), super::json::preview(&text, 60)),
                );
                Some(text)
            }
        }
    }

    fn read_time(&mut self) {
        match self.obj.get("time") {
            None | Some(Value::Null) => self.draft.warn("time_missing", "the event has no time field"),
            Some(v) => match time::from_json(v) {
                Ok((t, w)) => {
                    self.draft.time = Some(t);
                    self.draft.time_source = Some(TimeSource::Event);
                    if let Some(w) = w {
                        self.draft.warnings.push(w);
                    }
                }
                Err(e) => self.draft.warn("time_invalid", format!("{e}; event time unknown")),
            },
        }
    }

    fn representation(&mut self, opts: &DecodeOptions) -> Option<String> {
        let mut s = match self.obj.get("representation")? {
            Value::Null => return None,
            Value::String(s) => s.clone(),
            other => serde_json::to_string(other).unwrap_or_default(),
        };
        if let Some(w) = super::draft::cap(&mut s, opts.max_representation_bytes, "representation") {
            self.draft.warnings.push(w);
        }
        Some(s)
    }

    fn read_details(&mut self) {
        match self.obj.get("details") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    match v {
                        Value::Null => {}
                        Value::String(s) => self.draft.details.push((k.as_str().into(), value_text(s))),
                        other => {
                            let text = match other {
                                Value::Bool(_) | Value::Number(_) => other.to_string(),
                                _ => serde_json::to_string(other).unwrap_or_default(),
                            };
                            self.draft.warn(
                                "wrong_type",
                                format!("details.{k} is a {}, expected a string; kept as its JSON text", time::type_name(other)),
                            );
                            self.draft.details.push((k.as_str().into(), text.into()));
                        }
                    }
                }
            }
            Some(other) => self.draft.warn(
                "wrong_type",
                format!("details is a {}, expected an object; ignored: {}", time::type_name(other), super::json::preview(&other.to_string(), 60)),
            ),
        }
        // Flattened listeners (custom JSON log listeners) put details at the top level.
        for (k, v) in self.obj {
            if KNOWN_KEYS.contains(&k.as_str()) || ENVELOPE_KEYS.contains(&k.as_str()) {
                continue;
            }
            let text = match v {
                Value::Null => continue,
                Value::String(s) => s.clone(),
                other => serde_json::to_string(other).unwrap_or_default(),
            };
            if !self.draft.details.iter().any(|(dk, _)| dk == k) {
                self.draft.details.push((k.as_str().into(), text.into()));
            }
        }
        if let Some(uid) = self.obj.get("uid").and_then(Value::as_str) {
            self.draft.origin.delivery_id = Some(uid.to_string());
        }
    }
}
