//! OCSF 1.6.0 records (Open Cybersecurity Schema Framework): the event itself, then one Detection
//! Finding per finding. JSON values, serialised by the caller (serde_json escapes every control
//! character, so a record is always one line).
//!
//! # Classes
//!
//! | event | class | activity |
//! |---|---|---|
//! | token exchange | Authentication 3002 | 99 Other, `activity_name` "Token Exchange"; 7 Account Switch with `account_switch_type_id` 2 Impersonate when the caller named a `requested_subject` (V1 impersonation) |
//! | `LOGIN`, `CLIENT_LOGIN`, `IDENTITY_PROVIDER_LOGIN`, ... (`*_ERROR` included) | Authentication 3002 | 1 Logon |
//! | `LOGOUT`, ... | Authentication 3002 | 2 Logoff |
//! | `IMPERSONATE` (admin-console impersonation) | Authentication 3002 | 7 Account Switch, Impersonate |
//! | any other user event (`CODE_TO_TOKEN`, `REFRESH_TOKEN`, `REGISTER`, ...) | Authentication 3002 | 99 Other, `activity_name` = the Keycloak type |
//! | admin event | API Activity 6003 | 1 Create / 3 Update / 4 Delete / 99 Other ("Action") |
//! | each finding | Detection Finding 2004 | 1 Create |
//!
//! Admin events are Keycloak admin REST API calls on any resource (clients, protocol mappers, role
//! mappings, realm settings, users, ...). Account Change 3001 only fits the few that change a user
//! account and would force a `user` that most admin events do not have; API Activity 6003 is the class
//! for "CRUD API activity", keeps the operation and the resource for every one of them, and carries the
//! acting administrator as `actor` and their address as `src_endpoint`.
//!
//! # Who is who (Authentication)
//!
//! - `user` = the subject of the issued token. For V1 impersonation that is the **impersonated target**
//!   (Keycloak records the target as the event's user, and OCSF Account Switch describes the account
//!   switched *to*); when the exchange failed before a user was resolved, the requested subject stands
//!   in. Without any subject, `{"name": "unknown", "type_id": 0}` keeps the required attribute honest.
//! - `actor.app_uid` / `actor.app_name` = the requesting (exchanger) client; `actor.user` = the
//!   impersonator (V1 impersonation), i.e. who is acting.
//! - `service.name` = the audience(s), space-separated (several for V2); else the event's client;
//!   else `Keycloak` (the at-least-one `service`/`dst_endpoint` constraint always holds).
//! - `src_endpoint.ip` = the caller address when it parses as one (Keycloak's raw `ipAddress` is free
//!   text; an unparsable value goes to `unmapped.ip_address`).
//!
//! # Severity
//!
//! `severity_id` from the worst finding: none or info → 1 Informational, low 2, medium 3, high 4,
//! critical 5. Detection Findings carry their own finding's severity.
//!
//! `time` is the event time in epoch ms (received time, else 0, for the rare event without one); a
//! finding's `time` is its event's time, so output is deterministic on replay.

use serde_json::{json, Map, Value};

use crate::event::{AuditEvent, EventKind, Finding, Outcome, Severity};

use super::cef;

/// The OCSF version the records are written against (and [`validate`] checks).
pub const OCSF_VERSION: &str = "1.6.0";

/// The event record (3002 for user events, 6003 for admin events), then one 2004 per finding.
pub fn records(e: &AuditEvent) -> Vec<Value> {
    let mut out = vec![event_record(e)];
    out.extend(detection_findings(e));
    out
}

/// The record for the event itself: [`authentication`] for user events, [`api_activity`] for admin
/// events.
pub fn event_record(e: &AuditEvent) -> Value {
    match e.kind {
        EventKind::User => authentication(e),
        EventKind::Admin => api_activity(e),
    }
}

/// Authentication (3002) for a user event (see the module documentation for the mapping).
pub fn authentication(e: &AuditEvent) -> Value {
    let te = e.token_exchange.as_ref();
    let base_type = e.event_type.strip_suffix("_ERROR").unwrap_or(&e.event_type);
    let impersonation = te.is_some_and(|t| t.requested_subject.as_deref().is_some_and(|s| !s.is_empty())) || base_type == "IMPERSONATE";
    let (activity_id, activity_name): (u32, String) = if impersonation {
        (7, "Account Switch".into())
    } else if te.is_some() {
        (99, "Token Exchange".into())
    } else if base_type.ends_with("LOGIN") {
        (1, "Logon".into())
    } else if base_type.ends_with("LOGOUT") {
        (2, "Logoff".into())
    } else {
        (99, if e.event_type.is_empty() { "Other".into() } else { e.event_type.to_string() })
    };

    let mut r = base(e, 3, "Identity & Access Management", 3002, "Authentication", activity_id, &activity_name);
    if impersonation {
        r.insert("account_switch_type_id".into(), json!(2));
        r.insert("account_switch_type".into(), json!("Impersonate"));
    }
    status(&mut r, e);
    r.insert("metadata".into(), keycloak_metadata(e, "keycloak-events"));

    if let Some((id, name)) = auth_protocol(e) {
        r.insert("auth_protocol_id".into(), json!(id));
        r.insert("auth_protocol".into(), json!(name));
    }

    // user: the subject (the impersonated target for impersonation).
    let mut user = Map::new();
    put(&mut user, "uid", cef::subject_id(e));
    put(&mut user, "name", cef::subject_name(e));
    if let Some(u) = e.enrichment.as_ref().and_then(|x| x.subject.as_ref()) {
        put(&mut user, "email_addr", u.email.as_deref());
    }
    if user.is_empty() {
        user.insert("name".into(), json!("unknown"));
        user.insert("type_id".into(), json!(0));
        user.insert("type".into(), json!("Unknown"));
    }
    r.insert("user".into(), Value::Object(user));

    // actor: the requesting client, and the impersonator.
    let mut actor = Map::new();
    let client = if te.is_some() { cef::exchanger(e) } else { e.client_id.as_deref() };
    put(&mut actor, "app_uid", client);
    let app_name = e
        .enrichment
        .as_ref()
        .and_then(|x| x.exchanger.as_ref())
        .filter(|c| Some(c.client_id.as_str()) == client)
        .and_then(|c| c.name.as_deref())
        .filter(|n| !n.is_empty())
        .or(client);
    put(&mut actor, "app_name", app_name);
    if let Some(imp) = te.and_then(|t| t.impersonator.as_deref()).filter(|s| !s.is_empty()) {
        let mut u = Map::new();
        u.insert("name".into(), json!(imp));
        put(&mut u, "uid", e.enrichment.as_ref().and_then(|x| x.impersonator.as_ref()).and_then(|i| i.id.as_deref()));
        actor.insert("user".into(), Value::Object(u));
    }
    if !actor.is_empty() {
        r.insert("actor".into(), Value::Object(actor));
    }

    let client = || e.client_id.as_deref().map(str::to_owned);
    let service = if te.is_some() { cef::audiences(e).or_else(client) } else { client() };
    let service = service.filter(|s| !s.is_empty()).unwrap_or_else(|| "Keycloak".into());
    r.insert("service".into(), json!({ "name": service }));

    src_endpoint(&mut r, e, None);
    if let Some(s) = e.session_id.as_deref().filter(|s| !s.is_empty()) {
        r.insert("session".into(), json!({ "uid": s }));
    }
    enrichments(&mut r, e);

    let mut un = unmapped_common(e);
    if let Some(t) = te {
        put(&mut un, "scope", t.scope.as_deref());
        if t.audiences.len() > 1 {
            un.insert("audiences".into(), json!(t.audiences));
        }
        put(&mut un, "requested_subject", t.requested_subject.as_deref());
        put(&mut un, "subject_token_client_id", t.subject_token_client_id.as_deref());
        put(&mut un, "requested_token_type", t.requested_token_type.as_deref());
        put(&mut un, "requested_issuer", t.requested_issuer.as_deref());
        put(&mut un, "subject_issuer", t.subject_issuer.as_deref());
        put(&mut un, "delegation_actor", t.actor.as_deref());
        un.insert("flavour".into(), json!(t.flavour.name()));
    }
    finish_unmapped(&mut r, e, un);
    Value::Object(r)
}

/// API Activity (6003) for an admin event.
pub fn api_activity(e: &AuditEvent) -> Value {
    let admin = e.admin.as_ref();
    let op = admin.and_then(|a| a.operation.as_deref()).unwrap_or("");
    let (activity_id, activity_name) = match op {
        "CREATE" => (1, "Create".to_string()),
        "UPDATE" => (3, "Update".to_string()),
        "DELETE" => (4, "Delete".to_string()),
        "" => (99, "Other".to_string()),
        other => (99, title_case(other)),
    };
    let mut r = base(e, 6, "Application Activity", 6003, "API Activity", activity_id, &activity_name);
    status(&mut r, e);
    r.insert("metadata".into(), keycloak_metadata(e, "keycloak-admin-events"));

    let auth = admin.map(|a| &a.auth);
    let mut actor = Map::new();
    let mut user = Map::new();
    put(&mut user, "uid", auth.and_then(|a| a.user_id.as_deref()));
    put(&mut user, "name", auth.and_then(|a| a.username.as_deref()));
    if !user.is_empty() {
        actor.insert("user".into(), Value::Object(user));
    }
    put(&mut actor, "app_uid", auth.and_then(|a| a.client_uuid.as_deref()));
    if actor.is_empty() {
        actor.insert("user".into(), json!({ "name": "unknown", "type_id": 0, "type": "Unknown" }));
    }
    r.insert("actor".into(), Value::Object(actor));

    let operation = if e.event_type.is_empty() { op.to_string() } else { e.event_type.to_string() };
    let operation = if operation.is_empty() { "UNKNOWN".to_string() } else { operation };
    r.insert("api".into(), json!({ "operation": operation, "service": { "name": "Keycloak Admin REST API" } }));

    if let Some(a) = admin {
        let mut res = Map::new();
        put(&mut res, "type", a.resource_type.as_deref());
        put(&mut res, "uid", a.resource_id.as_deref().or(a.resource_path.as_deref()));
        if let Some(c) = e.enrichment.as_ref().and_then(|x| x.resource_client.as_ref()) {
            res.insert("name".into(), json!(c.client_id));
        }
        if !res.is_empty() {
            r.insert("resources".into(), json!([Value::Object(res)]));
        }
    }
    src_endpoint(&mut r, e, auth.and_then(|a| a.ip_address.as_deref()));
    if !r.contains_key("src_endpoint") {
        // Required by the class: say plainly that the source is not known.
        r.insert("src_endpoint".into(), json!({ "name": "unknown" }));
    }
    enrichments(&mut r, e);

    let mut un = unmapped_common(e);
    if let Some(a) = admin {
        put(&mut un, "resource_path", a.resource_path.as_deref());
        put(&mut un, "auth_realm_id", a.auth.realm_id.as_deref());
        put(&mut un, "auth_realm_name", a.auth.realm_name.as_deref());
        put(&mut un, "representation", a.representation.as_deref());
    }
    finish_unmapped(&mut r, e, un);
    Value::Object(r)
}

/// One Detection Finding (2004) per finding, in the event's order.
pub fn detection_findings(e: &AuditEvent) -> Vec<Value> {
    e.findings.iter().map(|f| detection_finding(e, f)).collect()
}

fn detection_finding(e: &AuditEvent, f: &Finding) -> Value {
    let sev = severity_id(Some(f.severity));
    let uid = finding_uid(e, f);
    let mut r = Map::new();
    r.insert("category_uid".into(), json!(2));
    r.insert("category_name".into(), json!("Findings"));
    r.insert("class_uid".into(), json!(2004));
    r.insert("class_name".into(), json!("Detection Finding"));
    r.insert("activity_id".into(), json!(1));
    r.insert("activity_name".into(), json!("Create"));
    r.insert("type_uid".into(), json!(200401));
    r.insert("type_name".into(), json!("Detection Finding: Create"));
    r.insert("time".into(), json!(time_ms(e)));
    r.insert("severity_id".into(), json!(sev));
    r.insert("severity".into(), json!(severity_caption(sev)));
    r.insert("status_id".into(), json!(1));
    r.insert("status".into(), json!("New"));
    r.insert("is_alert".into(), json!(true));
    r.insert("message".into(), json!(f.reason));
    r.insert(
        "metadata".into(),
        json!({
            "version": OCSF_VERSION,
            "uid": uid,
            "correlation_uid": e.id,
            "product": { "name": "kcaudit", "vendor_name": "kcaudit", "version": env!("CARGO_PKG_VERSION") },
            "log_name": "kcaudit-findings",
            "event_code": f.rule,
        }),
    );

    let attacks: Vec<Value> = f
        .attack
        .iter()
        .filter(|t| !t.is_empty())
        .map(|t| match t.split_once('.') {
            Some((parent, _)) => json!({ "technique": { "uid": parent }, "sub_technique": { "uid": t } }),
            None => json!({ "technique": { "uid": t } }),
        })
        .collect();
    // The triggering event first (with its class), then the other events of the story.
    let mut related = vec![json!({ "uid": e.id, "type_uid": event_type_uid(e) })];
    related.extend(f.related_event_ids.iter().filter(|id| **id != e.id).map(|id| json!({ "uid": id })));
    let mut info = Map::new();
    info.insert("uid".into(), json!(uid));
    info.insert("title".into(), json!(f.title));
    info.insert("desc".into(), json!(f.reason));
    info.insert("analytic".into(), json!({ "uid": f.rule, "name": f.rule, "type_id": 1, "type": "Rule" }));
    if !attacks.is_empty() {
        info.insert("attacks".into(), Value::Array(attacks));
    }
    info.insert("related_events".into(), Value::Array(related));
    info.insert("product".into(), json!({ "name": "kcaudit", "vendor_name": "kcaudit" }));
    r.insert("finding_info".into(), Value::Object(info));

    let mut un = Map::new();
    put(&mut un, "realm", cef::realm(e));
    put(&mut un, "keycloak_event_type", Some(&e.event_type));
    put(&mut un, "subject", cef::subject_name(e));
    put(&mut un, "client", cef::exchanger(e));
    put(&mut un, "audience", cef::audiences(e).as_deref());
    r.insert("unmapped".into(), Value::Object(un));
    Value::Object(r)
}

/// `<event id>:<rule>`: unique per finding (a rule fires at most once per event).
pub fn finding_uid(e: &AuditEvent, f: &Finding) -> String {
    format!("{}:{}", e.id, f.rule)
}

/// OCSF `severity_id`: none/info 1, low 2, medium 3, high 4, critical 5.
pub fn severity_id(s: Option<Severity>) -> u8 {
    match s {
        None | Some(Severity::Info) => 1,
        Some(Severity::Low) => 2,
        Some(Severity::Medium) => 3,
        Some(Severity::High) => 4,
        Some(Severity::Critical) => 5,
    }
}

fn severity_caption(id: u8) -> &'static str {
    match id {
        0 => "Unknown",
        1 => "Informational",
        2 => "Low",
        3 => "Medium",
        4 => "High",
        5 => "Critical",
        6 => "Fatal",
        _ => "Other",
    }
}

fn time_ms(e: &AuditEvent) -> i64 {
    e.time.or(e.received_at).map(|t| t.timestamp_millis()).unwrap_or(0)
}

fn event_type_uid(e: &AuditEvent) -> i64 {
    let r = event_record(e);
    r["type_uid"].as_i64().unwrap_or(0)
}

fn base(e: &AuditEvent, category: u32, category_name: &str, class: u32, class_name: &str, activity: u32, activity_name: &str) -> Map<String, Value> {
    let sev = severity_id(cef::worst(e));
    let mut r = Map::new();
    r.insert("category_uid".into(), json!(category));
    r.insert("category_name".into(), json!(category_name));
    r.insert("class_uid".into(), json!(class));
    r.insert("class_name".into(), json!(class_name));
    r.insert("activity_id".into(), json!(activity));
    r.insert("activity_name".into(), json!(activity_name));
    r.insert("type_uid".into(), json!(u64::from(class) * 100 + u64::from(activity)));
    r.insert("type_name".into(), json!(format!("{class_name}: {activity_name}")));
    r.insert("time".into(), json!(time_ms(e)));
    r.insert("severity_id".into(), json!(sev));
    r.insert("severity".into(), json!(severity_caption(sev)));
    r
}

fn status(r: &mut Map<String, Value>, e: &AuditEvent) {
    match e.outcome {
        Outcome::Success => {
            r.insert("status_id".into(), json!(1));
            r.insert("status".into(), json!("Success"));
        }
        Outcome::Failure => {
            r.insert("status_id".into(), json!(2));
            r.insert("status".into(), json!("Failure"));
            if let Some(err) = e.error.as_deref().filter(|s| !s.is_empty()) {
                r.insert("status_code".into(), json!(err));
            }
            // Keycloak's `details.reason` explains the error in words, when it sent one.
            let detail = e.details.get("reason").filter(|s| !s.is_empty()).or(e.error.as_deref());
            if let Some(d) = detail.filter(|s| !s.is_empty()) {
                r.insert("status_detail".into(), json!(d));
            }
        }
    }
}

fn keycloak_metadata(e: &AuditEvent, log_name: &str) -> Value {
    let mut m = Map::new();
    m.insert("version".into(), json!(OCSF_VERSION));
    m.insert("uid".into(), json!(e.id));
    m.insert("product".into(), json!({ "name": "Keycloak", "vendor_name": "Keycloak" }));
    m.insert("log_name".into(), json!(log_name));
    if !e.event_type.is_empty() {
        m.insert("event_code".into(), json!(e.event_type));
    }
    put(&mut m, "tenant_uid", e.realm.id.as_deref());
    if let Some(t) = e.received_at {
        m.insert("logged_time".into(), json!(t.timestamp_millis()));
    }
    Value::Object(m)
}

fn auth_protocol(e: &AuditEvent) -> Option<(u32, &'static str)> {
    if e.is_token_exchange() {
        return Some((6, "OAUTH 2.0"));
    }
    match e.details.get("auth_method") {
        Some("openid-connect") => Some((4, "OpenID")),
        Some("saml") => Some((5, "SAML")),
        _ if e.details.contains_key("grant_type") => Some((6, "OAUTH 2.0")),
        _ => None,
    }
}

fn src_endpoint(r: &mut Map<String, Value>, e: &AuditEvent, admin_raw: Option<&str>) {
    if let Some(ip) = cef::address(e) {
        r.insert("src_endpoint".into(), json!({ "ip": ip.to_string() }));
    } else if let Some(raw) = e.ip_address.as_deref().or(admin_raw).filter(|s| !s.is_empty()) {
        // Not an address (a proxy header can put anything here): keep it, but not in an ip_t field.
        r.insert("src_endpoint".into(), json!({ "name": raw }));
    }
}

fn enrichments(r: &mut Map<String, Value>, e: &AuditEvent) {
    if e.findings.is_empty() {
        return;
    }
    let list: Vec<Value> = e
        .findings
        .iter()
        .map(|f| {
            json!({
                "name": "finding",
                "value": f.rule,
                "type": "kcaudit-detection",
                "provider": "kcaudit",
                "data": { "uid": finding_uid(e, f), "severity": f.severity.name(), "title": f.title },
            })
        })
        .collect();
    r.insert("enrichments".into(), Value::Array(list));
}

fn unmapped_common(e: &AuditEvent) -> Map<String, Value> {
    let mut un = Map::new();
    put(&mut un, "realm", cef::realm(e));
    put(&mut un, "realm_id", e.realm.id.as_deref());
    put(&mut un, "keycloak_event_type", Some(&e.event_type));
    if cef::address(e).is_none() {
        put(&mut un, "ip_address", e.ip_address.as_deref());
    }
    put(&mut un, "error", e.error.as_deref());
    un
}

fn finish_unmapped(r: &mut Map<String, Value>, e: &AuditEvent, mut un: Map<String, Value>) {
    if let Some(x) = e.enrichment.as_ref() {
        if let Some(p) = x.policy.as_ref() {
            un.insert("within_policy".into(), json!(p.within_policy.name()));
        }
        if let Some(u) = x.subject.as_ref() {
            un.insert("subject_privileged".into(), json!(u.privileged));
        }
    }
    if !e.details.is_empty() {
        un.insert("details".into(), json!(e.details));
    }
    r.insert("unmapped".into(), Value::Object(un));
}

fn put(m: &mut Map<String, Value>, k: &str, v: Option<&str>) {
    if let Some(v) = v.filter(|v| !v.is_empty()) {
        m.insert(k.into(), json!(v));
    }
}

fn title_case(s: &str) -> String {
    let lower = s.to_ascii_lowercase().replace('_', " ");
    let mut c = lower.chars();
    match c.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

// ---- Validation ----

/// Check a record against the OCSF 1.6.0 requirements of the classes kcaudit emits (3002, 6003, 2004):
/// the base-event required attributes and their types (`category_uid` matching the class,
/// `type_uid = class_uid × 100 + activity_id`, `time` integer ms, `severity_id` in its enum,
/// `metadata.product` with a name or uid, `metadata.version`), `activity_name` when `activity_id` is 99,
/// `status` when `status_id` is 99, and the class's own required attributes and constraints: 3002
/// `user` (at least one of account, name, uid) and at least one of `service` / `dst_endpoint`; 6003
/// `actor` (at least one of its identifying attributes), `api.operation`, `src_endpoint`; 2004
/// `finding_info.uid` (and `analytic.type_id` in its enum, each `attacks` entry naming a tactic,
/// technique or sub-technique, each related event a `uid`). Enrichments need `name`, `value`, `data`;
/// network endpoints need an identifying attribute and a parsable `ip`.
pub fn validate(v: &Value) -> Result<(), String> {
    let r = v.as_object().ok_or("record is not a JSON object")?;
    let int = |k: &str| -> Result<i64, String> { r.get(k).and_then(Value::as_i64).ok_or_else(|| format!("`{k}` is required and must be an integer")) };
    let class = int("class_uid")?;
    let category = int("category_uid")?;
    let activity = int("activity_id")?;
    let type_uid = int("type_uid")?;
    if category != class / 1000 {
        return Err(format!("category_uid {category} does not match class_uid {class}"));
    }
    if type_uid != class * 100 + activity {
        return Err(format!("type_uid {type_uid} != class_uid {class} * 100 + activity_id {activity}"));
    }
    if activity == 99 && !nonempty_str(r.get("activity_name")) {
        return Err("activity_id 99 (Other) requires activity_name".into());
    }
    match r.get("time") {
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {}
        _ => return Err("`time` is required and must be an integer (epoch ms)".into()),
    }
    let sev = int("severity_id")?;
    if !matches!(sev, 0..=6 | 99) {
        return Err(format!("severity_id {sev} is not in the enum"));
    }
    if let Some(s) = r.get("status_id") {
        let s = s.as_i64().ok_or("status_id must be an integer")?;
        let ok = if class == 2004 { matches!(s, 0..=6 | 99) } else { matches!(s, 0..=2 | 99) };
        if !ok {
            return Err(format!("status_id {s} is not in the enum"));
        }
        if s == 99 && !nonempty_str(r.get("status")) {
            return Err("status_id 99 requires status".into());
        }
    }
    let md = obj(r, "metadata")?;
    let product = md.get("product").and_then(Value::as_object).ok_or("metadata.product is required")?;
    if !(nonempty_str(product.get("name")) || nonempty_str(product.get("uid"))) {
        return Err("metadata.product needs a name or a uid".into());
    }
    if !md.get("version").and_then(Value::as_str).is_some_and(is_semver) {
        return Err("metadata.version is required and must be a version string (x.y.z)".into());
    }
    if let Some(en) = r.get("enrichments") {
        for x in en.as_array().ok_or("enrichments must be an array")? {
            let x = x.as_object().ok_or("enrichment must be an object")?;
            if !(nonempty_str(x.get("name")) && x.get("value").is_some_and(Value::is_string) && x.contains_key("data")) {
                return Err("an enrichment needs name, value and data".into());
            }
        }
    }
    for k in ["src_endpoint", "dst_endpoint"] {
        if let Some(ep) = r.get(k) {
            endpoint(ep).map_err(|m| format!("{k}: {m}"))?;
        }
    }
    if let Some(a) = r.get("actor") {
        actor(a)?;
    }
    match class {
        3002 => {
            if !matches!(activity, 0..=7 | 99) {
                return Err(format!("Authentication activity_id {activity} is not in the enum"));
            }
            user(r.get("user").ok_or("Authentication requires `user`")?).map_err(|m| format!("user: {m}"))?;
            if !r.contains_key("service") && !r.contains_key("dst_endpoint") {
                return Err("Authentication requires at least one of service, dst_endpoint".into());
            }
            if let Some(s) = r.get("service") {
                let s = s.as_object().ok_or("service must be an object")?;
                if !(nonempty_str(s.get("name")) || nonempty_str(s.get("uid"))) {
                    return Err("service needs a name or a uid".into());
                }
            }
            if let Some(p) = r.get("auth_protocol_id") {
                if !p.as_i64().is_some_and(|p| matches!(p, 0..=12 | 99)) {
                    return Err("auth_protocol_id is not in the enum".into());
                }
            }
            if let Some(t) = r.get("account_switch_type_id") {
                if !t.as_i64().is_some_and(|t| matches!(t, 0..=2 | 99)) {
                    return Err("account_switch_type_id is not in the enum".into());
                }
            }
        }
        6003 => {
            if !matches!(activity, 0..=4 | 99) {
                return Err(format!("API Activity activity_id {activity} is not in the enum"));
            }
            if !r.contains_key("actor") {
                return Err("API Activity requires `actor`".into());
            }
            let api = obj(r, "api")?;
            if !nonempty_str(api.get("operation")) {
                return Err("API Activity requires api.operation".into());
            }
            if !r.contains_key("src_endpoint") {
                return Err("API Activity requires `src_endpoint`".into());
            }
        }
        2004 => {
            if !matches!(activity, 0..=3 | 99) {
                return Err(format!("Detection Finding activity_id {activity} is not in the enum"));
            }
            let fi = obj(r, "finding_info")?;
            if !nonempty_str(fi.get("uid")) {
                return Err("finding_info.uid is required".into());
            }
            if let Some(a) = fi.get("analytic") {
                let a = a.as_object().ok_or("analytic must be an object")?;
                if !a.get("type_id").and_then(Value::as_i64).is_some_and(|t| matches!(t, 0..=4 | 99)) {
                    return Err("finding_info.analytic.type_id is required and must be in the enum".into());
                }
            }
            for list in [fi.get("attacks"), r.get("attacks")].into_iter().flatten() {
                for a in list.as_array().ok_or("attacks must be an array")? {
                    let a = a.as_object().ok_or("attack must be an object")?;
                    if !["tactic", "technique", "sub_technique"].iter().any(|k| a.contains_key(*k)) {
                        return Err("an attack needs a tactic, technique or sub_technique".into());
                    }
                }
            }
            if let Some(rel) = fi.get("related_events") {
                for x in rel.as_array().ok_or("related_events must be an array")? {
                    if !nonempty_str(x.get("uid")) {
                        return Err("a related event needs a uid".into());
                    }
                }
            }
        }
        other => return Err(format!("class_uid {other} is not one kcaudit emits")),
    }
    Ok(())
}

fn obj<'a>(r: &'a Map<String, Value>, k: &str) -> Result<&'a Map<String, Value>, String> {
    r.get(k).and_then(Value::as_object).ok_or_else(|| format!("`{k}` is required and must be an object"))
}

fn nonempty_str(v: Option<&Value>) -> bool {
    v.and_then(Value::as_str).is_some_and(|s| !s.is_empty())
}

fn is_semver(s: &str) -> bool {
    let core = s.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

fn user(v: &Value) -> Result<(), String> {
    let u = v.as_object().ok_or("must be an object")?;
    if ["account", "name", "uid"].iter().any(|k| match u.get(*k) {
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Object(_)) => true,
        _ => false,
    }) {
        Ok(())
    } else {
        Err("needs at least one of account, name, uid".into())
    }
}

fn actor(v: &Value) -> Result<(), String> {
    let a = v.as_object().ok_or("actor must be an object")?;
    if !["process", "user", "invoked_by", "session", "app_name", "app_uid"].iter().any(|k| a.contains_key(*k)) {
        return Err("actor needs at least one of process, user, invoked_by, session, app_name, app_uid".into());
    }
    if let Some(u) = a.get("user") {
        user(u).map_err(|m| format!("actor.user: {m}"))?;
    }
    Ok(())
}

fn endpoint(v: &Value) -> Result<(), String> {
    let ep = v.as_object().ok_or("must be an object")?;
    const IDS: [&str; 9] = ["ip", "uid", "name", "hostname", "svc_name", "instance_uid", "interface_uid", "interface_name", "domain"];
    if !IDS.iter().any(|k| ep.contains_key(*k)) {
        return Err("needs at least one of ip, uid, name, hostname, ...".into());
    }
    if let Some(ip) = ep.get("ip") {
        if !ip.as_str().is_some_and(|s| s.parse::<std::net::IpAddr>().is_ok()) {
            return Err("ip is not an IP address".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_what_it_should() {
        let good = json!({
            "category_uid": 3, "class_uid": 3002, "activity_id": 99, "activity_name": "Token Exchange", "type_uid": 300299,
            "time": 1773480413589i64, "severity_id": 1,
            "metadata": { "version": "1.6.0", "product": { "name": "Keycloak" } },
            "user": { "name": "alice" }, "service": { "name": "billing-api" },
        });
        assert_eq!(validate(&good), Ok(()));
        let broken = |f: &dyn Fn(&mut Value)| {
            let mut v = good.clone();
            f(&mut v);
            validate(&v)
        };
        assert!(broken(&|v| v["type_uid"] = json!(300201)).is_err());
        assert!(broken(&|v| v["category_uid"] = json!(2)).is_err());
        assert!(broken(&|v| v["time"] = json!("2026-03-14T09:26:53.589Z")).is_err());
        assert!(broken(&|v| v["time"] = json!(1.5)).is_err());
        assert!(broken(&|v| v["severity_id"] = json!(7)).is_err());
        assert!(broken(&|v| { v.as_object_mut().unwrap().remove("activity_name"); }).is_err());
        assert!(broken(&|v| { v.as_object_mut().unwrap().remove("user"); }).is_err());
        assert!(broken(&|v| v["user"] = json!({ "email_addr": "a@b" })).is_err());
        assert!(broken(&|v| { v.as_object_mut().unwrap().remove("service"); }).is_err());
        assert!(broken(&|v| v["metadata"]["version"] = json!("1.6")).is_err());
        assert!(broken(&|v| { v["metadata"].as_object_mut().unwrap().remove("product"); }).is_err());
        assert!(broken(&|v| v["src_endpoint"] = json!({ "ip": "not-an-ip" })).is_err());
        assert!(broken(&|v| v["class_uid"] = json!(3005)).is_err());
        assert!(broken(&|v| v["actor"] = json!({ "nothing": 1 })).is_err());
        assert!(broken(&|v| v["enrichments"] = json!([{ "name": "x" }])).is_err());

        let finding = json!({
            "category_uid": 2, "class_uid": 2004, "activity_id": 1, "type_uid": 200401, "time": 0, "severity_id": 3,
            "metadata": { "version": "1.6.0", "product": { "name": "kcaudit" } },
            "finding_info": { "uid": "e:r", "analytic": { "type_id": 1 }, "attacks": [{ "technique": { "uid": "T1550" } }], "related_events": [{ "uid": "e" }] },
        });
        assert_eq!(validate(&finding), Ok(()));
        let mut f = finding.clone();
        f["finding_info"]["uid"] = json!("");
        assert!(validate(&f).is_err());
        let mut f = finding.clone();
        f["finding_info"]["attacks"] = json!([{ "version": "14" }]);
        assert!(validate(&f).is_err());
    }

    #[test]
    fn semver() {
        assert!(is_semver("1.6.0"));
        assert!(is_semver("1.9.0-dev"));
        assert!(!is_semver("1.6"));
        assert!(!is_semver("v1.6.0"));
    }
}
