//! Elastic Common Schema (ECS 9.x) documents for Elasticsearch / OpenSearch, one per canonical event.
//!
//! The mapping follows `siem-and-detection.md` §2.2 and keeps the custom field names of Elastic's own
//! Keycloak integration (`keycloak.realm.id`, `keycloak.client.id`, `keycloak.login.type`,
//! `keycloak.admin.operation`, `keycloak.admin.resource.{type,path}`, `keycloak.event_type`), so its
//! dashboards and the analyst's habits carry over. The index template that maps every field emitted
//! here is `schemas/elasticsearch/index-template.json`; a test walks the documents of the whole fixture
//! timeline against it.
//!
//! Decisions:
//! - **One document per event**, `_id` = the event id: a retried `create` is a 409, never a copy.
//!   An event that carries findings is `event.kind: alert` (kcaudit's detection is the monitoring
//!   system that flagged it, ECS's definition of an alert) with `rule.*`, `threat.*`,
//!   `event.severity` and `event.risk_score`; any other event is `event.kind: event`. kcaudit never
//!   writes `signal` (reserved for Elastic's own detection engine).
//! - **Who is `user`**: the principal that acted. For a token exchange that is the subject of the
//!   token; for a V1 impersonation it is the impersonator (`details.impersonator`), and the identity
//!   taken on is `user.effective.*` (ECS: a privilege change puts the requested identity in
//!   `user.effective`). A "naked" impersonation (no subject token) has no acting user, only
//!   `user.effective`. For admin events `user` is the administrator (`authDetails`) and the changed
//!   user, if the resource path names one, is `user.target.id` (a group: `group.id`).
//! - **IPs**: `source.ip` / `client.ip` only when Keycloak's `ipAddress` parses as an address (the raw
//!   text, which a proxy header can fill with anything, is always in `source.address` /
//!   `client.address`), so an odd value never fails the `ip` mapping.
//! - **Keycloak `details`** are kept whole in `keycloak.details`, mapped as one `flattened` field:
//!   listener- or extension-defined keys are unbounded, and a dotted key (`a.b`) in an ordinary object
//!   would be expanded into sub-objects (and can collide with a sibling `a`). In a flattened field the
//!   dot is part of the key, values are keywords, and the mapping never grows. Keys that are empty or
//!   only whitespace (Elasticsearch refuses empty field names) become `_blank` followed by the hex of
//!   their bytes (`""` → `_blank`, `" "` → `_blank20`). The user attributes carried by enrichment
//!   (`keycloak.enrichment.*.attributes`) are flattened the same way.
//! - **Timestamps**: `@timestamp` is the event time (or, for inputs without one, the time kcaudit
//!   received it); `event.created` is the receive time of live events. `event.ingested` belongs to the
//!   cluster: the optional ingest pipeline `schemas/elasticsearch/ingest-pipeline.json` sets it.
//! - Everything else of the canonical event is kept: the raw Keycloak fields under `keycloak.*`,
//!   kcaudit's own facts (findings, warnings, provenance) under `kcaudit.*`. Absent values are left
//!   out rather than written as null.


use serde_json::{json, Map, Value};

use crate::event::{format_time, AdminInfo, AudienceInfo, AuditEvent, ClientInfo, EventKind, Severity, UserInfo};

/// The ECS version the documents follow.
pub const ECS_VERSION: &str = "9.5.0";

/// `threat.framework` for the ATT&CK technique ids of findings.
pub const THREAT_FRAMEWORK: &str = "MITRE ATT&CK";

/// A JSON object builder that leaves out absent and empty values.
#[derive(Default)]
struct Obj(Map<String, Value>);

impl Obj {
    fn new() -> Obj {
        Obj::default()
    }

    fn str(&mut self, key: &str, v: Option<&str>) -> &mut Obj {
        if let Some(v) = v {
            self.0.insert(key.to_string(), Value::String(v.to_string()));
        }
        self
    }

    fn bool(&mut self, key: &str, v: Option<bool>) -> &mut Obj {
        if let Some(v) = v {
            self.0.insert(key.to_string(), Value::Bool(v));
        }
        self
    }

    fn num(&mut self, key: &str, v: Option<i64>) -> &mut Obj {
        if let Some(v) = v {
            self.0.insert(key.to_string(), Value::from(v));
        }
        self
    }

    /// Any value; null, `{}` and `[]` are left out.
    fn val(&mut self, key: &str, v: Value) -> &mut Obj {
        let empty = match &v {
            Value::Null => true,
            Value::Object(m) => m.is_empty(),
            Value::Array(a) => a.is_empty(),
            _ => false,
        };
        if !empty {
            self.0.insert(key.to_string(), v);
        }
        self
    }

    fn strs<'a>(&mut self, key: &str, v: impl IntoIterator<Item = &'a str>) -> &mut Obj {
        self.val(key, Value::Array(v.into_iter().map(|s| Value::String(s.to_string())).collect()))
    }

    fn done(&mut self) -> Value {
        Value::Object(std::mem::take(&mut self.0))
    }
}

/// `TOKEN_EXCHANGE_ERROR` → `token-exchange-error`, `PROTOCOL_MAPPER-CREATE` → `protocol-mapper-create`.
pub fn action(event_type: &str) -> String {
    event_type.chars().map(|c| if c == '_' { '-' } else { c.to_ascii_lowercase() }).collect()
}

/// `event.severity`: the same 1 (info) … 5 (critical) rank as the ClickHouse `severity_rank` column.
pub fn severity_rank(s: Severity) -> i64 {
    match s {
        Severity::Info => 1,
        Severity::Low => 2,
        Severity::Medium => 3,
        Severity::High => 4,
        Severity::Critical => 5,
    }
}

/// `event.risk_score` (0–100): Elastic Security's default score for each severity (low 21, medium
/// 47, high 73, critical 99); an informational finding scores 0.
pub fn risk_score(s: Severity) -> i64 {
    match s {
        Severity::Info => 0,
        Severity::Low => 21,
        Severity::Medium => 47,
        Severity::High => 73,
        Severity::Critical => 99,
    }
}

/// A key safe inside a `flattened` field: blank keys (refused by Elasticsearch) become `_blank` plus
/// the hex of their bytes; every other key is kept as is (in a flattened field a dot is just a
/// character of the key).
pub fn flattened_key(k: &str) -> String {
    if k.trim().is_empty() {
        format!("_blank{}", hex::encode(k.as_bytes()))
    } else {
        k.to_string()
    }
}

/// A `flattened` object from pairs (a `BTreeMap`, or [`crate::event::Details`]).
fn flattened<K: AsRef<str>, V: Into<Value>>(m: impl IntoIterator<Item = (K, V)>) -> Value {
    Value::Object(m.into_iter().map(|(k, v)| (flattened_key(k.as_ref()), v.into())).collect())
}

fn push_unique(list: &mut Vec<String>, v: Option<&str>) {
    if let Some(v) = v {
        if !v.is_empty() && !list.iter().any(|x| x == v) {
            list.push(v.to_string());
        }
    }
}

fn client_info(c: Option<&ClientInfo>) -> Value {
    let Some(c) = c else { return Value::Null };
    Obj::new()
        .str("client_id", Some(&c.client_id))
        .str("uuid", c.uuid.as_deref())
        .str("name", c.name.as_deref())
        .str("description", c.description.as_deref())
        .bool("enabled", c.enabled)
        .str("access_type", c.access_type.as_deref())
        .bool("service_accounts_enabled", c.service_accounts_enabled)
        .str("token_exchange", Some(&c.token_exchange))
        .done()
}

fn user_info(u: Option<&UserInfo>) -> Value {
    let Some(u) = u else { return Value::Null };
    Obj::new()
        .str("id", u.id.as_deref())
        .str("username", u.username.as_deref())
        .str("email", u.email.as_deref())
        .bool("enabled", u.enabled)
        .bool("service_account", Some(u.service_account))
        .str("service_account_client_id", u.service_account_client_id.as_deref())
        .bool("privileged", Some(u.privileged))
        .str("privileged_reason", u.privileged_reason.as_deref())
        .val("attributes", flattened(u.attributes.iter().map(|(k, v)| (k, v.clone()))))
        .done()
}

fn audience_info(a: &AudienceInfo) -> Value {
    Obj::new().str("audience", Some(&a.audience)).bool("known", a.known).val("client", client_info(a.client.as_deref())).done()
}

/// The id in a resource path `<prefix>/<id>[/...]`.
fn path_id<'a>(path: Option<&'a str>, prefix: &str) -> Option<&'a str> {
    let rest = path?.strip_prefix(prefix)?.strip_prefix('/')?;
    let id = rest.split('/').next()?;
    (!id.is_empty()).then_some(id)
}

fn admin_object(a: &AdminInfo) -> Value {
    let auth = &a.auth;
    Obj::new()
        .str("operation", a.operation.as_deref())
        .val("resource", Obj::new().str("type", a.resource_type.as_deref()).str("path", a.resource_path.as_deref()).str("id", a.resource_id.as_deref()).done())
        .str("representation", a.representation.as_deref())
        .val(
            "auth",
            Obj::new()
                .str("realm_id", auth.realm_id.as_deref())
                .str("realm_name", auth.realm_name.as_deref())
                .str("client_uuid", auth.client_uuid.as_deref())
                .str("user_id", auth.user_id.as_deref())
                .str("username", auth.username.as_deref())
                .str("ip_address", auth.ip_address.as_deref())
                .done(),
        )
        .done()
}

/// The ECS document for one event (no `@timestamp` when the event has neither an event time nor a
/// receive time; the Elasticsearch sink supplies the write time then, since data streams require one).
pub fn document(e: &AuditEvent) -> Value {
    let te = e.token_exchange.as_ref();
    let en = e.enrichment.as_ref();
    let admin = e.admin.as_ref();
    let is_admin = e.kind == EventKind::Admin;
    let realm_label = e.realm.name.as_deref().or(e.realm.id.as_deref());
    let mut doc = Obj::new();

    if let Some(t) = e.time.or(e.received_at) {
        doc.str("@timestamp", Some(&format_time(&t)));
    }
    doc.val("ecs", json!({ "version": ECS_VERSION }));

    // event.*
    let mut types = vec!["info"];
    if is_admin {
        types.push("admin");
        match admin.and_then(|a| a.operation.as_deref()) {
            Some("CREATE") => types.push("creation"),
            Some("UPDATE") => types.push("change"),
            Some("DELETE") => types.push("deletion"),
            _ => {}
        }
        let (rtype, rpath) = (admin.and_then(|a| a.resource_type.as_deref()), admin.and_then(|a| a.resource_path.as_deref()));
        if rtype == Some("USER") || path_id(rpath, "users").is_some() {
            types.push("user");
        }
        if rtype == Some("GROUP") || path_id(rpath, "groups").is_some() {
            types.push("group");
        }
    } else if e.event_type == "LOGIN" {
        types.push("start");
    } else if e.event_type == "LOGOUT" {
        types.push("end");
    }
    let worst = e.severity.or_else(|| e.findings.iter().map(|f| f.severity).max());
    let mut event = Obj::new();
    event
        .str("kind", Some(if e.findings.is_empty() { "event" } else { "alert" }))
        .strs("category", [if is_admin { "iam" } else { "authentication" }])
        .strs("type", types)
        .str("action", Some(&action(&e.event_type)))
        .str("outcome", Some(e.outcome.name()))
        .str("code", e.error.as_deref())
        .str("reason", e.details.get("reason"))
        .str("id", Some(&e.id))
        .str("created", e.received_at.as_ref().map(format_time).as_deref())
        .num("severity", worst.map(severity_rank))
        .num("risk_score", worst.map(risk_score));
    doc.val("event", event.done());

    // user.*, user.effective.*, user.target.*, group.id
    let impersonation = te.is_some_and(|t| t.requested_subject.is_some() || t.impersonator.is_some());
    let mut user = Obj::new();
    if is_admin {
        let auth = admin.map(|a| &a.auth);
        let actor_id = auth.and_then(|a| a.user_id.as_deref());
        // Enrichment resolves the acting administrator as the event's subject: use its name and
        // e-mail when it is the same user.
        let known = en.and_then(|x| x.subject.as_deref()).filter(|u| u.id.is_some() && u.id.as_deref() == actor_id);
        user.str("id", actor_id)
            .str("name", auth.and_then(|a| a.username.as_deref()).or(known.and_then(|u| u.username.as_deref())))
            .str("email", known.and_then(|u| u.email.as_deref()));
        let rpath = admin.and_then(|a| a.resource_path.as_deref());
        user.val("target", Obj::new().str("id", path_id(rpath, "users")).done());
        if let Some(g) = path_id(rpath, "groups") {
            doc.val("group", json!({ "id": g }));
        }
    } else if impersonation {
        let te = te.expect("impersonation implies token exchange");
        let imp = en.and_then(|x| x.impersonator.as_deref());
        let req = en.and_then(|x| x.requested_subject.as_deref());
        let subj = en.and_then(|x| x.subject.as_deref());
        user.str("id", imp.and_then(|u| u.id.as_deref()))
            .str("name", te.impersonator.as_deref().or(imp.and_then(|u| u.username.as_deref())))
            .str("email", imp.and_then(|u| u.email.as_deref()));
        user.val(
            "effective",
            Obj::new()
                .str("id", e.subject.id.as_deref().or(req.and_then(|u| u.id.as_deref())))
                .str(
                    "name",
                    req.and_then(|u| u.username.as_deref())
                        .or(subj.and_then(|u| u.username.as_deref()))
                        .or(e.subject.username.as_deref())
                        .or(te.requested_subject.as_deref()),
                )
                .str("email", req.and_then(|u| u.email.as_deref()).or(subj.and_then(|u| u.email.as_deref())))
                .done(),
        );
    } else {
        let subj = en.and_then(|x| x.subject.as_deref());
        user.str("id", e.subject.id.as_deref().or(subj.and_then(|u| u.id.as_deref())))
            .str("name", e.subject.username.as_deref().or(subj.and_then(|u| u.username.as_deref())))
            .str("email", subj.and_then(|u| u.email.as_deref()));
    }
    doc.val("user", user.done());

    // source.* / client.*
    let ip = e.ip.map(|ip| ip.to_string());
    for key in ["source", "client"] {
        doc.val(key, Obj::new().str("address", e.ip_address.as_deref()).str("ip", ip.as_deref()).done());
    }

    // service.*: the observed service is Keycloak; the audiences are the services the token is for.
    let audiences: Vec<&str> = te.map(|t| t.audiences.iter().map(|a| a.as_str()).collect()).unwrap_or_default();
    doc.val("service", Obj::new().str("type", Some("keycloak")).val("target", Obj::new().strs("name", audiences.iter().copied()).done()).done());

    // related.*
    let mut users = Vec::new();
    push_unique(&mut users, e.subject.username.as_deref());
    push_unique(&mut users, e.subject.id.as_deref());
    if let Some(t) = te {
        push_unique(&mut users, t.impersonator.as_deref());
        push_unique(&mut users, t.requested_subject.as_deref());
    }
    if let Some(x) = en {
        for u in [x.subject.as_deref(), x.impersonator.as_deref(), x.requested_subject.as_deref()].into_iter().flatten() {
            push_unique(&mut users, u.username.as_deref());
            push_unique(&mut users, u.id.as_deref());
        }
    }
    if let Some(a) = admin {
        push_unique(&mut users, a.auth.username.as_deref());
        push_unique(&mut users, a.auth.user_id.as_deref());
        push_unique(&mut users, path_id(a.resource_path.as_deref(), "users"));
    }
    let mut ips = Vec::new();
    push_unique(&mut ips, ip.as_deref());
    if let Some(a) = admin {
        let auth_ip = a.auth.ip_address.as_deref().and_then(|s| s.parse::<std::net::IpAddr>().ok()).map(|i| i.to_string());
        push_unique(&mut ips, auth_ip.as_deref());
    }
    doc.val("related", Obj::new().strs("user", users.iter().map(String::as_str)).strs("ip", ips.iter().map(String::as_str)).done());

    // labels: a flat keyword map.
    let rules: Vec<&str> = e.findings.iter().map(|f| f.rule.as_str()).collect();
    doc.val(
        "labels",
        Obj::new()
            .str("realm", realm_label)
            .str("exchanger", te.and_then(|t| t.exchanger.as_deref()).or(e.client_id.as_deref()))
            .str("severity", worst.map(Severity::name))
            .str("finding_rules", (!rules.is_empty()).then(|| rules.join(",")).as_deref())
            .done(),
    );

    // rule.* / threat.* from the findings.
    if !e.findings.is_empty() {
        doc.val(
            "rule",
            Obj::new()
                .strs("id", e.findings.iter().map(|f| f.rule.as_str()))
                .strs("name", e.findings.iter().map(|f| f.title.as_str()))
                .str("ruleset", Some("kcaudit"))
                .done(),
        );
        let (mut techniques, mut subtechniques) = (Vec::new(), Vec::new());
        for id in e.findings.iter().flat_map(|f| &f.attack) {
            match id.split_once('.') {
                Some((base, _)) => {
                    push_unique(&mut techniques, Some(base));
                    push_unique(&mut subtechniques, Some(id));
                }
                None => push_unique(&mut techniques, Some(id)),
            }
        }
        if !techniques.is_empty() {
            let mut technique = Obj::new();
            technique.strs("id", techniques.iter().map(String::as_str)).val("subtechnique", Obj::new().strs("id", subtechniques.iter().map(String::as_str)).done());
            doc.val("threat", Obj::new().str("framework", Some(THREAT_FRAMEWORK)).val("technique", technique.done()).done());
        }
    }

    // keycloak.*: everything Keycloak said, in the integration's names where it has them.
    let mut kc = Obj::new();
    kc.str("event_type", Some(if is_admin { "admin" } else { "login" }))
        .str("type", Some(&e.event_type))
        .val("realm", Obj::new().str("id", e.realm.id.as_deref()).str("name", e.realm.name.as_deref()).done())
        .val("client", Obj::new().str("id", e.client_id.as_deref()).done())
        .val("session", Obj::new().str("id", e.session_id.as_deref()).done())
        .str("error", e.error.as_deref());
    if !is_admin {
        let d = |k: &str| e.details.get(k);
        kc.val(
            "login",
            Obj::new()
                .str("type", Some(&e.event_type))
                .str("auth_method", d("auth_method"))
                .str("auth_type", d("auth_type"))
                .str("code_id", d("code_id"))
                .str("redirect_uri", d("redirect_uri"))
                .done(),
        );
    }
    if let Some(t) = te {
        kc.val(
            "token_exchange",
            Obj::new()
                .str("exchanger", t.exchanger.as_deref())
                .strs("audience", t.audiences.iter().map(|a| a.as_str()))
                .str("subject_token_client_id", t.subject_token_client_id.as_deref())
                .str("requested_subject", t.requested_subject.as_deref())
                .str("impersonator", t.impersonator.as_deref())
                .str("requested_token_type", t.requested_token_type.as_deref())
                .str("scope", t.scope.as_deref())
                .str("requested_issuer", t.requested_issuer.as_deref())
                .str("subject_issuer", t.subject_issuer.as_deref())
                .str("actor", t.actor.as_deref())
                .str("flavour", Some(t.flavour.name()))
                .str("flavour_reason", Some(&t.flavour_reason))
                .done(),
        );
    }
    kc.val("details", flattened(&e.details));
    if let Some(a) = admin {
        kc.val("admin", admin_object(a));
    }
    if let Some(x) = en {
        let policy = x.policy.as_deref().map(|p| {
            Obj::new()
                .str("within_policy", Some(p.within_policy.name()))
                .str("reason", Some(&p.reason))
                .val("allowed_audiences", p.allowed_audiences.as_ref().map(|v| json!(v)).unwrap_or(Value::Null))
                .done()
        });
        kc.val(
            "enrichment",
            Obj::new()
                .str("status", Some(x.status.name()))
                .strs("misses", x.misses.iter().map(String::as_str))
                .str("source", x.source.as_deref())
                .val("exchanger", client_info(x.exchanger.as_deref()))
                .val("subject", user_info(x.subject.as_deref()))
                .val("audiences", Value::Array(x.audiences.iter().map(audience_info).collect()))
                .val("subject_token_client", client_info(x.subject_token_client.as_deref()))
                .val("impersonator", user_info(x.impersonator.as_deref()))
                .val("requested_subject", user_info(x.requested_subject.as_deref()))
                .val("policy", policy.unwrap_or(Value::Null))
                .val("resource_client", client_info(x.resource_client.as_deref()))
                .done(),
        );
    }
    doc.val("keycloak", kc.done());

    // kcaudit.*: what kcaudit found and how the record reached it.
    let o = &e.origin;
    let log = o.log.as_ref().map(|l| {
        Obj::new()
            .str("timestamp", l.timestamp.as_deref())
            .str("level", l.level.as_deref())
            .str("logger", l.logger.as_deref())
            .str("thread", l.thread.as_deref())
            .str("host", l.host.as_deref())
            .done()
    });
    let findings: Vec<Value> = e
        .findings
        .iter()
        .map(|f| {
            Obj::new()
                .str("rule", Some(&f.rule))
                .str("severity", Some(f.severity.name()))
                .str("title", Some(&f.title))
                .str("reason", Some(&f.reason))
                .strs("attack", f.attack.iter().map(String::as_str))
                .strs("related_event_ids", f.related_event_ids.iter().map(String::as_str))
                .done()
        })
        .collect();
    let warnings: Vec<Value> = e.warnings.iter().map(|w| json!({ "code": w.code, "message": w.message })).collect();
    doc.val(
        "kcaudit",
        Obj::new()
            .num("schema_version", Some(i64::from(e.schema_version)))
            .bool("id_derived", Some(e.id_derived))
            .str("time_source", Some(e.time_source.name()))
            .str("severity", e.severity.map(Severity::name))
            .val("findings", Value::Array(findings))
            .val("warnings", Value::Array(warnings))
            .val(
                "origin",
                Obj::new()
                    .str("input", Some(&o.input))
                    .str("format", Some(&o.format))
                    .num("line", o.line.map(|n| n as i64))
                    .str("request_id", o.request_id.as_deref())
                    .num("index", o.index.map(i64::from))
                    .str("delivery_id", o.delivery_id.as_deref())
                    .val("log", log.unwrap_or(Value::Null))
                    .done(),
            )
            .done(),
    );
    doc.done()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use crate::event::*;
    use std::sync::Arc;

    fn base() -> AuditEvent {
        serde_json::from_value(json!({
            "schema_version": 1, "id": "0b6f3c8e-2f7a-4d51-9a52-6c1e3b7d9f10", "id_derived": false,
            "time": "2026-03-14T09:26:53.589Z", "time_source": "event",
            "kind": "user", "type": "TOKEN_EXCHANGE", "outcome": "success", "error": null,
            "realm": {"id": "acme", "name": null}, "client_id": "svc-gateway",
            "subject": {"id": "5f1c2a9e-8b0d-4c1e-9a6f-2d3b4c5d6e7f", "username": "alice"},
            "session_id": null, "ip_address": "203.0.113.7", "ip": "203.0.113.7",
            "token_exchange": {"exchanger": "svc-gateway", "audiences": ["billing-api"], "subject_token_client_id": null,
                "requested_subject": null, "impersonator": null, "requested_token_type": null, "scope": null,
                "requested_issuer": null, "subject_issuer": null, "actor": null, "flavour": "standard_v2", "flavour_reason": "r"},
            "details": {"audience": "billing-api", "username": "alice"},
            "admin": null, "enrichment": null, "findings": [], "severity": null,
            "origin": {"input": "t", "format": "keycloak", "line": null, "request_id": null, "index": null, "delivery_id": null, "log": null},
            "warnings": []
        }))
        .unwrap()
    }

    /// The running example of `siem-and-detection.md` §1.2: every field the note shows, with the
    /// note's values.
    #[test]
    fn running_example() {
        let d = document(&base());
        assert_eq!(d["@timestamp"], "2026-03-14T09:26:53.589Z");
        assert_eq!(d["event"]["kind"], "event");
        assert_eq!(d["event"]["category"], json!(["authentication"]));
        assert_eq!(d["event"]["type"], json!(["info"]));
        assert_eq!(d["event"]["action"], "token-exchange");
        assert_eq!(d["event"]["outcome"], "success");
        assert_eq!(d["event"]["id"], "0b6f3c8e-2f7a-4d51-9a52-6c1e3b7d9f10");
        assert_eq!(d["user"], json!({"id": "5f1c2a9e-8b0d-4c1e-9a6f-2d3b4c5d6e7f", "name": "alice"}));
        assert_eq!(d["source"], json!({"address": "203.0.113.7", "ip": "203.0.113.7"}));
        assert_eq!(d["client"]["ip"], "203.0.113.7");
        assert_eq!(d["keycloak"]["realm"], json!({"id": "acme"}));
        assert_eq!(d["keycloak"]["client"], json!({"id": "svc-gateway"}));
        assert_eq!(d["keycloak"]["token_exchange"]["audience"], json!(["billing-api"]));
        assert_eq!(d["service"]["target"]["name"], json!(["billing-api"]));
        assert_eq!(d["related"], json!({"user": ["alice", "5f1c2a9e-8b0d-4c1e-9a6f-2d3b4c5d6e7f"], "ip": ["203.0.113.7"]}));
        assert_eq!(d["labels"], json!({"realm": "acme", "exchanger": "svc-gateway"}));
        assert!(d.get("rule").is_none() && d.get("threat").is_none());
        assert!(d["event"].get("severity").is_none() && d["event"].get("code").is_none());
        // Keys are sorted and no value is null: stable bytes for the same event.
        assert!(!serde_json::to_string(&d).unwrap().contains("null"));
    }

    #[test]
    fn findings_make_an_alert() {
        let mut e = base();
        e.findings = vec![
            Finding { rule: "new-audience".into(), severity: Severity::Medium, title: "New audience".into(), reason: "r1".into(), attack: vec!["T1550.001".into(), "T1078.004".into()], related_event_ids: vec![] },
            Finding { rule: "error-burst-client".into(), severity: Severity::High, title: "Burst".into(), reason: "r2".into(), attack: vec!["T1110".into(), "T1550.001".into()], related_event_ids: vec!["x".into()] },
        ];
        e.severity = Some(Severity::High);
        let d = document(&e);
        assert_eq!(d["event"]["kind"], "alert");
        assert_eq!(d["event"]["severity"], 4);
        assert_eq!(d["event"]["risk_score"], 73);
        assert_eq!(d["rule"], json!({"id": ["new-audience", "error-burst-client"], "name": ["New audience", "Burst"], "ruleset": "kcaudit"}));
        assert_eq!(d["threat"], json!({"framework": "MITRE ATT&CK", "technique": {"id": ["T1550", "T1078", "T1110"], "subtechnique": {"id": ["T1550.001", "T1078.004"]}}}));
        assert_eq!(d["labels"]["severity"], "high");
        assert_eq!(d["labels"]["finding_rules"], "new-audience,error-burst-client");
        assert_eq!(d["kcaudit"]["findings"][1]["related_event_ids"], json!(["x"]));
    }

    #[test]
    fn impersonation_puts_the_taken_identity_in_user_effective() {
        let mut e = base();
        let te = e.token_exchange.as_mut().unwrap();
        te.impersonator = Some("sam.ortiz".into());
        te.requested_subject = Some("carol.diaz".into());
        e.subject = Subject { id: Some("c-id".into()), username: None };
        let user = |id: &str, name: &str| UserInfo { id: Some(id.into()), username: Some(name.into()), email: None, enabled: Some(true), service_account: false, service_account_client_id: None, privileged: false, privileged_reason: None, attributes: BTreeMap::from([("a.b".to_string(), vec!["v".to_string()]), (String::new(), vec![])]) };
        e.enrichment = Some(Enrichment {
            status: EnrichmentStatus::Enriched, misses: vec![], source: None, exchanger: None,
            subject: Some(Arc::new(user("c-id", "carol.diaz"))), audiences: vec![], subject_token_client: None,
            impersonator: Some(Arc::new(user("s-id", "sam.ortiz"))), requested_subject: Some(Arc::new(user("c-id", "carol.diaz"))),
            policy: None, resource_client: None,
        });
        let d = document(&e);
        assert_eq!(d["user"], json!({"id": "s-id", "name": "sam.ortiz", "effective": {"id": "c-id", "name": "carol.diaz"}}));
        assert_eq!(d["related"]["user"], json!(["c-id", "sam.ortiz", "carol.diaz", "s-id"]));
        assert_eq!(d["keycloak"]["enrichment"]["impersonator"]["attributes"], json!({"a.b": ["v"], "_blank": []}));
        // Naked impersonation: nobody acted as a user; only the taken identity is known.
        e.token_exchange.as_mut().unwrap().impersonator = None;
        e.enrichment = None;
        let d = document(&e);
        assert_eq!(d["user"], json!({"effective": {"id": "c-id", "name": "carol.diaz"}}));
    }

    #[test]
    fn admin_events_are_iam_with_a_target() {
        let mut e = base();
        e.kind = EventKind::Admin;
        e.event_type = "REALM_ROLE_MAPPING-CREATE".into();
        e.token_exchange = None;
        e.client_id = None;
        e.subject = Subject::default();
        e.details.clear();
        e.admin = Some(Box::new(AdminInfo {
            operation: Some("CREATE".into()),
            resource_type: Some("REALM_ROLE_MAPPING".into()),
            resource_path: Some("users/6ae5c024/role-mappings/realm".into()),
            resource_id: None,
            representation: Some("[{}]".into()),
            auth: AdminAuth { realm_id: Some("m".into()), realm_name: None, client_uuid: Some("cu".into()), user_id: Some("admin-id".into()), username: None, ip_address: Some("203.0.113.7".into()) },
        }));
        let d = document(&e);
        assert_eq!(d["event"]["category"], json!(["iam"]));
        assert_eq!(d["event"]["type"], json!(["info", "admin", "creation", "user"]));
        assert_eq!(d["event"]["action"], "realm-role-mapping-create");
        assert_eq!(d["user"], json!({"id": "admin-id", "target": {"id": "6ae5c024"}}));
        assert_eq!(d["keycloak"]["event_type"], "admin");
        assert_eq!(d["keycloak"]["admin"]["resource"]["type"], "REALM_ROLE_MAPPING");
        assert_eq!(d["keycloak"]["admin"]["auth"]["client_uuid"], "cu");
        assert!(d["keycloak"].get("login").is_none() && d.get("service").unwrap().get("target").is_none());
    }

    #[test]
    fn odd_addresses_and_detail_keys_stay_out_of_typed_fields() {
        let mut e = base();
        e.ip_address = Some("unknown, 10.0.0.1".into());
        e.ip = None;
        e.details.insert("x.y".into(), "1".into());
        e.details.insert(" ".into(), "2".into());
        e.error = Some("invalid_token".into());
        e.details.insert("reason".into(), "bad token".into());
        let d = document(&e);
        assert_eq!(d["source"], json!({"address": "unknown, 10.0.0.1"}));
        assert!(d.get("related").unwrap().get("ip").is_none());
        assert_eq!(d["keycloak"]["details"]["x.y"], "1");
        assert_eq!(d["keycloak"]["details"]["_blank20"], "2");
        assert_eq!(d["event"]["code"], "invalid_token");
        assert_eq!(d["event"]["reason"], "bad token");
        assert_eq!(action("TOKEN_EXCHANGE_ERROR"), "token-exchange-error");
    }
}
