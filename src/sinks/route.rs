//! Routing: which events a sink takes. A team sends everything to ClickHouse and only findings of
//! medium or worse to the SIEM by giving the SIEM sink `min_severity = "medium"`.
//!
//! An event a sink's route does not take is resolved for that sink at once ("nothing to do"), counted
//! in `kcaudit_events_filtered_total{sink}`, and never delays the acknowledgement.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event::{AuditEvent, EventKind, Severity};

/// `[sinks.<name>.route]`: every list empty and no minimum severity = every event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RouteFilter {
    /// Event kinds to send (`user`, `admin`); empty = both.
    pub kinds: Vec<EventKind>,
    /// Keycloak event types, exact (`TOKEN_EXCHANGE`) or a prefix ending in `*` (`TOKEN_EXCHANGE*`,
    /// `admin.*`); empty = all. Admin events match their resource type (`CLIENT`, `USER`, ...) too.
    pub types: Vec<String>,
    /// Realm names (or ids, for events that carry only the id); empty = all.
    pub realms: Vec<String>,
    /// Only events whose worst finding is at least this severe (`info` … `critical`); unset = all
    /// events, with or without findings.
    pub min_severity: Option<Severity>,
}

impl RouteFilter {
    pub fn is_everything(&self) -> bool {
        self == &RouteFilter::default()
    }

    pub fn matches(&self, e: &AuditEvent) -> bool {
        if !self.kinds.is_empty() && !self.kinds.contains(&e.kind) {
            return false;
        }
        if !self.types.is_empty() {
            let resource = e.admin.as_ref().and_then(|a| a.resource_type.as_deref());
            let hit = |t: &str| {
                let m = |v: &str| match t.strip_suffix('*') {
                    Some(prefix) => v.starts_with(prefix),
                    None => v == t,
                };
                m(&e.event_type) || resource.is_some_and(m) || (e.kind == EventKind::Admin && t == "admin.*")
            };
            if !self.types.iter().any(|t| hit(t)) {
                return false;
            }
        }
        if !self.realms.is_empty() {
            if !self.realms.iter().any(|r| e.realm.is(r)) {
                return false;
            }
        }
        match self.min_severity {
            Some(min) => e.severity.is_some_and(|s| s >= min),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Finding, Realm};

    fn event(kind: EventKind, ty: &str, realm: &str, sev: Option<Severity>) -> AuditEvent {
        let mut e: AuditEvent = serde_json::from_value(serde_json::json!({
            "schema_version": 1, "id": "x", "id_derived": false, "time": null, "time_source": "missing",
            "received_at": null, "kind": "user", "type": ty, "outcome": "success", "error": null,
            "realm": {"id": null, "name": null}, "client_id": null, "subject": {"id": null, "username": null},
            "session_id": null, "ip_address": null, "ip": null, "token_exchange": null, "details": {},
            "admin": null, "enrichment": null, "findings": [], "severity": null,
            "origin": {"input": "t", "format": "keycloak", "line": null, "request_id": null, "index": null, "delivery_id": null, "log": null},
            "warnings": []
        }))
        .unwrap();
        e.kind = kind;
        e.realm = Realm { id: Some(format!("{realm}-uuid")), name: Some(realm.into()) };
        if let Some(s) = sev {
            e.findings.push(Finding { rule: "r".into(), severity: s, title: "t".into(), reason: "r".into(), attack: vec![], related_event_ids: vec![] });
            e.severity = Some(s);
        }
        e
    }

    #[test]
    fn default_takes_everything() {
        assert!(RouteFilter::default().matches(&event(EventKind::User, "LOGIN", "a", None)));
    }

    #[test]
    fn findings_at_or_above_a_severity() {
        let f = RouteFilter { min_severity: Some(Severity::Medium), ..Default::default() };
        assert!(!f.matches(&event(EventKind::User, "TOKEN_EXCHANGE", "a", None)));
        assert!(!f.matches(&event(EventKind::User, "TOKEN_EXCHANGE", "a", Some(Severity::Low))));
        assert!(f.matches(&event(EventKind::User, "TOKEN_EXCHANGE", "a", Some(Severity::Medium))));
        assert!(f.matches(&event(EventKind::User, "TOKEN_EXCHANGE", "a", Some(Severity::Critical))));
    }

    #[test]
    fn kinds_types_with_prefixes_and_realms_by_name_or_id() {
        let f = RouteFilter { kinds: vec![EventKind::User], types: vec!["TOKEN_EXCHANGE*".into()], realms: vec!["prod".into()], min_severity: None };
        assert!(f.matches(&event(EventKind::User, "TOKEN_EXCHANGE_ERROR", "prod", None)));
        assert!(!f.matches(&event(EventKind::User, "LOGIN", "prod", None)));
        assert!(!f.matches(&event(EventKind::User, "TOKEN_EXCHANGE", "dev", None)));
        assert!(!f.matches(&event(EventKind::Admin, "TOKEN_EXCHANGE", "prod", None)));
        let by_id = RouteFilter { realms: vec!["prod-uuid".into()], ..Default::default() };
        assert!(by_id.matches(&event(EventKind::User, "LOGIN", "prod", None)));
    }
}
