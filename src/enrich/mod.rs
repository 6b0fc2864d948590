//! The enrichment stage: who exchanged, for whom, for which audiences, and whether the realm allows it.
//!
//! Runs in the pipeline's central stage on accepted events, before they reach the sinks. Every answer
//! comes from the sources in `resolve.rs`, in order of preference: the live admin API, then a snapshot
//! folder or realm exports. A miss (deleted user, unknown
//! client, unknown realm) never blocks or drops the event: the event carries `enrichment.status` and
//! the reasons, and a metric counts it.

pub mod policy;
pub mod resolve;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::directory::model::{ClientRep, UserRep};
use crate::directory::{DirectoryHandle, DirectorySpec};
use crate::event::*;
use crate::keycloak_api::AdminApi;
use crate::metrics::Metrics;
use resolve::{Chain, Res, Source};

/// `[enrich]`: where directory facts come from and what to add.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
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
    /// Use the live Keycloak Admin REST API (`[admin_api]`) when it is configured; it is preferred over
    /// the files, which serve while it is unavailable.
    pub use_admin_api: bool,
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

impl Default for EnrichOptions {
    fn default() -> Self {
        EnrichOptions {
            directory: None,
            realm_exports: Vec::new(),
            reload_check_secs: 5,
            user_attributes: Vec::new(),
            privileged: PrivilegedOptions::default(),
            use_admin_api: true,
        }
    }
}

impl EnrichOptions {
    /// Whether privilege rules need role mappings and groups from the admin API.
    pub fn wants_roles(&self) -> bool {
        let p = &self.privileged;
        !p.realm_roles.is_empty() || !p.client_roles.is_empty() || !p.groups.is_empty()
    }

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
    sources: Vec<Source>,
    metrics: Metrics,
}

impl Enricher {
    /// `None` when no source is configured. `api` is the shared admin API client, if configured.
    pub fn from_options(opts: &EnrichOptions, api: Option<Arc<AdminApi>>, metrics: Metrics) -> anyhow::Result<Option<Arc<Enricher>>> {
        let mut sources = Vec::new();
        if let Some(api) = api.filter(|_| opts.use_admin_api) {
            sources.push(Source::Api(api));
        }
        if let Some(spec) = opts.spec() {
            sources.push(Source::Directory(DirectoryHandle::open(spec, Duration::from_secs(opts.reload_check_secs))?));
        }
        if sources.is_empty() {
            return Ok(None);
        }
        Ok(Some(Arc::new(Enricher { opts: opts.clone(), sources, metrics })))
    }

    /// Enrich a batch: lookups for different events run concurrently (the admin API's cache coalesces
    /// repeats), and the directory is pinned to one version for the whole batch.
    pub async fn enrich_all<'e>(&self, events: impl IntoIterator<Item = &'e mut AuditEvent>) {
        let chain = Chain::new(&self.sources);
        let source = chain.describe();
        futures::future::join_all(events.into_iter().map(|e| self.enrich_with(&chain, &source, e))).await;
    }

    /// Enrich one event.
    pub async fn enrich(&self, ev: &mut AuditEvent) {
        let chain = Chain::new(&self.sources);
        let source = chain.describe();
        self.enrich_with(&chain, &source, ev).await;
    }

    async fn enrich_with(&self, chain: &Chain<'_>, source: &str, ev: &mut AuditEvent) {
        let mut en = Enrichment {
            status: EnrichmentStatus::Enriched,
            misses: Vec::new(),
            source: Some(source.to_string()),
            exchanger: None,
            subject: None,
            audiences: Vec::new(),
            subject_token_client: None,
            impersonator: None,
            policy: None,
        };
        let mut resolved_any = false;
        let realm_key = ev.realm.id.clone().or_else(|| ev.realm.name.clone());
        let realm = match &realm_key {
            Some(k) => match chain.realm(k).await {
                Res::Found(r) => Some(r),
                Res::Missing(m) | Res::Unavailable(m) => {
                    en.misses.push(m);
                    None
                }
            },
            None if ev.kind == EventKind::Admin => None,
            None => {
                en.misses.push("the event names no realm".into());
                None
            }
        };
        if let Some(r) = &realm {
            resolved_any = true;
            // Fill the realm identifier the format did not give.
            ev.realm.name.get_or_insert_with(|| r.name.clone());
            if ev.realm.id.is_none() {
                ev.realm.id = r.id.clone();
            }
        }
        if ev.kind == EventKind::Admin {
            resolved_any |= self.enrich_admin(chain, ev, &mut en).await;
        } else if let Some(realm) = &realm {
            if let Some(cid) = ev.client_id.clone() {
                en.exchanger = self.note(chain.client(realm, &cid).await, &mut en.misses).map(|c| client_info(&c));
            }
            if let Some(uid) = ev.subject.id.clone() {
                en.subject = self.note(chain.user(realm, &uid).await, &mut en.misses).map(|u| self.user_info(&u));
            }
            if let Some(te) = ev.token_exchange.clone() {
                for a in &te.audiences {
                    let (known, client) = match chain.client(realm, a).await {
                        Res::Found(c) => (Some(true), Some(client_info(&c))),
                        Res::Missing(_) => (Some(false), None),
                        Res::Unavailable(m) => {
                            en.misses.push(m);
                            (None, None)
                        }
                    };
                    en.audiences.push(AudienceInfo { audience: a.clone(), known, client });
                }
                if let Some(stc) = &te.subject_token_client_id {
                    en.subject_token_client = self.note(chain.client(realm, stc).await, &mut en.misses).map(|c| client_info(&c));
                }
                if let Some(imp) = &te.impersonator {
                    en.impersonator = self.note(chain.user_by_username(realm, imp).await, &mut en.misses).map(|u| self.user_info(&u));
                }
                let exchanger = match &ev.client_id {
                    Some(cid) => match chain.client(realm, cid).await {
                        Res::Found(c) => Some(c),
                        _ => None,
                    },
                    None => None,
                };
                en.policy = Some(policy::verdict(
                    &realm.name,
                    ev.client_id.as_deref().unwrap_or("?"),
                    exchanger.as_deref(),
                    &en.audiences,
                    |name| chain.client_scope(realm, name),
                    &te,
                ));
            }
        }
        if !en.misses.is_empty() {
            resolved_any |= en.exchanger.is_some() || en.subject.is_some();
            en.status = if resolved_any { EnrichmentStatus::Partial } else { EnrichmentStatus::NotEnriched };
        }
        self.count(&en);
        ev.enrichment = Some(en);
    }

    /// Admin events: the acting administrator and client live in the realm they authenticated in.
    async fn enrich_admin(&self, chain: &Chain<'_>, ev: &AuditEvent, en: &mut Enrichment) -> bool {
        let Some(a) = ev.admin.as_ref() else { return false };
        let Some(key) = a.auth.realm_id.as_deref().or(a.auth.realm_name.as_deref()) else { return false };
        let realm = match chain.realm(key).await {
            Res::Found(r) => r,
            Res::Missing(m) | Res::Unavailable(m) => {
                en.misses.push(format!("administrator's {m}"));
                return false;
            }
        };
        if let Some(uuid) = &a.auth.client_uuid {
            en.exchanger = self.note(chain.client_by_uuid(&realm, uuid).await, &mut en.misses).map(|c| client_info(&c));
        }
        if let Some(uid) = &a.auth.user_id {
            en.subject = self.note(chain.user(&realm, uid).await, &mut en.misses).map(|u| self.user_info(&u));
        }
        true
    }

    fn note<T>(&self, r: Res<T>, misses: &mut Vec<String>) -> Option<T> {
        match r {
            Res::Found(v) => Some(v),
            Res::Missing(m) | Res::Unavailable(m) => {
                misses.push(m);
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
