//! The enrichment stage: who exchanged, for whom, for which audiences, and whether the realm allows it.
//!
//! Runs in the pipeline's central stage on accepted events, before they reach the sinks. Every answer
//! comes from a [`DirectoryHandle`] (snapshot folder or realm exports). A miss (deleted user, unknown
//! client, unknown realm) never blocks or drops the event: the event carries `enrichment.status` and
//! the reasons, and a metric counts it.

pub mod policy;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::directory::model::{ClientRep, UserRep};
use crate::directory::{Directory, DirectoryHandle, DirectorySpec, RealmDir};
use crate::event::*;
use crate::metrics::Metrics;

/// `[enrich]`: where directory facts come from and what to add.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EnrichOptions {
    /// A directory snapshot folder (`realms.json`, `<realm>.clients.json`, `<realm>.users.json`), as
    /// written by `kcaudit directory sync`. Reloaded when its files change.
    pub directory: Option<PathBuf>,
    /// Realm export / keycloak-config-cli files, used when no snapshot folder is set.
    pub realm_exports: Vec<PathBuf>,
    /// How often to look for changed directory files, in seconds (0 = on every batch).
    pub reload_check_secs: u64,
    /// User attributes copied onto `enrichment.subject.attributes` (e.g. `department`).
    pub user_attributes: Vec<String>,
    /// What makes a user privileged.
    pub privileged: PrivilegedOptions,
}

/// A user is privileged when any rule matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PrivilegedOptions {
    /// Realm roles (as listed in the user's `realmRoles`).
    pub realm_roles: Vec<String>,
    /// Client roles as `client:role` (e.g. `realm-management:realm-admin`).
    pub client_roles: Vec<String>,
    /// Group paths (e.g. `/admins`).
    pub groups: Vec<String>,
    /// Attribute name → value that marks a privileged user (e.g. `privileged = "true"`).
    pub attributes: BTreeMap<String, String>,
}

impl Default for PrivilegedOptions {
    fn default() -> Self {
        PrivilegedOptions {
            realm_roles: vec!["admin".into(), "realm-admin".into()],
            client_roles: vec!["realm-management:realm-admin".into(), "realm-management:manage-users".into(), "realm-management:impersonation".into()],
            groups: vec![],
            attributes: [("privileged".to_string(), "true".to_string())].into_iter().collect(),
        }
    }
}

impl EnrichOptions {
    pub fn spec(&self) -> Option<DirectorySpec> {
        match (&self.directory, self.realm_exports.is_empty()) {
            (Some(d), _) => Some(DirectorySpec::Snapshot(d.clone())),
            (None, false) => Some(DirectorySpec::Exports(self.realm_exports.clone())),
            (None, true) => None,
        }
    }
}

/// Adds directory context to events.
pub struct Enricher {
    opts: EnrichOptions,
    dir: DirectoryHandle,
    metrics: Metrics,
}

impl Enricher {
    /// `None` when no directory source is configured.
    pub fn from_options(opts: &EnrichOptions, metrics: Metrics) -> anyhow::Result<Option<Arc<Enricher>>> {
        let Some(spec) = opts.spec() else { return Ok(None) };
        let dir = DirectoryHandle::open(spec, Duration::from_secs(opts.reload_check_secs))?;
        Ok(Some(Arc::new(Enricher { opts: opts.clone(), dir, metrics })))
    }

    /// Enrich a batch against one consistent directory version.
    pub fn enrich_all<'a>(&self, events: impl Iterator<Item = &'a mut AuditEvent>) {
        let dir = self.dir.get();
        for e in events {
            self.enrich_with(&dir, e);
        }
    }

    pub fn enrich(&self, ev: &mut AuditEvent) {
        let dir = self.dir.get();
        self.enrich_with(&dir, ev);
    }

    fn enrich_with(&self, dir: &Directory, ev: &mut AuditEvent) {
        let mut en = Enrichment {
            status: EnrichmentStatus::Enriched,
            misses: Vec::new(),
            source: Some(dir.source.clone()),
            exchanger: None,
            subject: None,
            audiences: Vec::new(),
            subject_token_client: None,
            impersonator: None,
            policy: None,
        };
        let realm_key = ev.realm.id.clone().or_else(|| ev.realm.name.clone()).or_else(|| ev.admin.as_ref().and_then(|a| a.auth.realm_id.clone()));
        let realm = realm_key.as_deref().and_then(|k| dir.realm(k)).or_else(|| ev.realm.name.as_deref().and_then(|n| dir.realm(n)));
        let Some(realm) = realm else {
            en.status = EnrichmentStatus::NotEnriched;
            en.misses.push(match realm_key {
                Some(k) => format!("realm {k} is not in the directory"),
                None => "the event names no realm".into(),
            });
            self.count(&en);
            ev.enrichment = Some(en);
            return;
        };
        // Fill the realm identifier the format did not give.
        if ev.kind == EventKind::User || ev.realm.id.is_some() || ev.realm.name.is_some() {
            if ev.realm.name.is_none() {
                ev.realm.name = realm.name.clone();
            }
            if ev.realm.id.is_none() {
                ev.realm.id = realm.id.clone();
            }
        }

        if ev.kind == EventKind::Admin {
            self.enrich_admin(dir, ev, &mut en);
        } else {
            if let Some(cid) = ev.client_id.clone() {
                en.exchanger = self.client(realm, &cid, "client", &mut en.misses);
            }
            if let Some(uid) = ev.subject.id.clone() {
                match realm.user(&uid).or_else(|| ev.subject.username.as_deref().and_then(|u| realm.user_by_username(u))) {
                    Some(u) => en.subject = Some(self.user_info(u)),
                    None => en.misses.push(format!("user {uid} not found (deleted, or not in the directory)")),
                }
            }
            if let Some(te) = ev.token_exchange.clone() {
                for a in &te.audiences {
                    let client = realm.client(a).map(|c| client_info(c));
                    en.audiences.push(AudienceInfo { audience: a.clone(), known: client.is_some(), client });
                }
                if let Some(stc) = &te.subject_token_client_id {
                    en.subject_token_client = self.client(realm, stc, "subject-token client", &mut en.misses);
                }
                if let Some(imp) = &te.impersonator {
                    match realm.user_by_username(imp) {
                        Some(u) => en.impersonator = Some(self.user_info(u)),
                        None => en.misses.push(format!("impersonator {imp} not found")),
                    }
                }
                en.policy = Some(policy::verdict(realm, ev, &te));
            }
        }
        if !en.misses.is_empty() {
            en.status = if en.exchanger.is_some() || en.subject.is_some() { EnrichmentStatus::Partial } else { EnrichmentStatus::NotEnriched };
        }
        self.count(&en);
        ev.enrichment = Some(en);
    }

    fn enrich_admin(&self, dir: &Directory, ev: &mut AuditEvent, en: &mut Enrichment) {
        let Some(a) = ev.admin.as_ref() else { return };
        // The acting administrator lives in the realm they authenticated in.
        let auth_realm = a.auth.realm_id.as_deref().or(a.auth.realm_name.as_deref()).and_then(|k| dir.realm(k));
        let Some(auth_realm) = auth_realm else {
            en.misses.push("the administrator's realm is not in the directory".into());
            return;
        };
        if let Some(uuid) = &a.auth.client_uuid {
            match auth_realm.client_by_uuid(uuid) {
                Some(c) => en.exchanger = Some(client_info(c)),
                None => en.misses.push(format!("admin client {uuid} not found")),
            }
        }
        if let Some(uid) = &a.auth.user_id {
            match auth_realm.user(uid) {
                Some(u) => en.subject = Some(self.user_info(u)),
                None => en.misses.push(format!("administrator {uid} not found")),
            }
        }
    }

    fn client(&self, realm: &RealmDir, client_id: &str, what: &str, misses: &mut Vec<String>) -> Option<ClientInfo> {
        match realm.client(client_id) {
            Some(c) => Some(client_info(c)),
            None => {
                misses.push(format!("{what} {client_id} not found in realm {}", realm.name.as_deref().unwrap_or("?")));
                None
            }
        }
    }

    fn user_info(&self, u: &UserRep) -> UserInfo {
        let (privileged, privileged_reason) = match privileged(&self.opts.privileged, u) {
            Some(r) => (true, Some(r)),
            None => (false, None),
        };
        let service_account_client_id = u.service_account_client_id.clone();
        UserInfo {
            id: u.id.clone(),
            username: u.username.clone(),
            email: u.email.clone(),
            enabled: u.enabled,
            service_account: service_account_client_id.is_some(),
            service_account_client_id,
            privileged,
            privileged_reason,
            attributes: self
                .opts
                .user_attributes
                .iter()
                .filter_map(|k| {
                    let v = u.attr_values(k);
                    (!v.is_empty()).then(|| (k.clone(), v))
                })
                .collect(),
        }
    }

    fn count(&self, en: &Enrichment) {
        let status = match en.status {
            EnrichmentStatus::Enriched => "enriched",
            EnrichmentStatus::Partial => "partial",
            EnrichmentStatus::NotEnriched => "not_enriched",
        };
        self.metrics.enrichment.with_label_values(&[status]).inc();
    }
}

/// The analyst's view of a client.
pub fn client_info(c: &ClientRep) -> ClientInfo {
    let access_type = if c.bearer_only == Some(true) {
        Some("bearer_only")
    } else {
        c.public_client.map(|p| if p { "public" } else { "confidential" })
    };
    ClientInfo {
        client_id: c.client_id.clone().unwrap_or_default(),
        uuid: c.id.clone(),
        name: c.name.clone(),
        description: c.description.clone(),
        enabled: c.enabled,
        access_type: access_type.map(str::to_string),
        service_accounts_enabled: c.service_accounts_enabled,
        token_exchange: if c.standard_token_exchange_enabled() { "standard_v2" } else { "unknown" }.to_string(),
    }
}

/// Which privilege rule a user matches, in words.
fn privileged(p: &PrivilegedOptions, u: &UserRep) -> Option<String> {
    if let Some(r) = u.realm_roles.iter().find(|r| p.realm_roles.contains(r)) {
        return Some(format!("realm role {r}"));
    }
    for spec in &p.client_roles {
        if let Some((client, role)) = spec.split_once(':') {
            if u.client_roles.get(client).is_some_and(|rs| rs.iter().any(|r| r == role)) {
                return Some(format!("client role {spec}"));
            }
        }
    }
    if let Some(g) = u.groups.iter().find(|g| p.groups.contains(g)) {
        return Some(format!("group {g}"));
    }
    for (k, want) in &p.attributes {
        if u.attr_values(k).iter().any(|v| v.eq_ignore_ascii_case(want)) {
            return Some(format!("attribute {k}={want}"));
        }
    }
    None
}
