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

use ahash::AHashMap as HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::directory::model::{ClientRep, UserRep};
use crate::directory::{DirectoryHandle, DirectorySpec};
use crate::event::*;
use crate::keycloak_api::AdminApi;
use crate::metrics::Metrics;
use resolve::{Chain, RealmRef, Res, Source};

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
    /// `kcaudit_enrichment_total` for enriched, partial, not_enriched (resolved once, not per event).
    counters: [prometheus::IntCounter; 3],
    memo: Mutex<Memo>,
}

/// Client and user views, and policy verdicts, built once per directory entry and shared by every
/// event that names it (keyed by the entry's allocation, which the memo keeps alive so the key cannot
/// be reused). This is what keeps the cached path well under a microsecond per event.
#[derive(Default)]
struct Memo {
    clients: HashMap<usize, (Arc<ClientRep>, Arc<ClientInfo>)>,
    users: HashMap<usize, (Arc<UserRep>, Arc<UserInfo>)>,
    policies: HashMap<(usize, u64), (Arc<ClientRep>, PolicyKey, Arc<PolicyVerdict>)>,
}

/// What a memoised verdict was computed for (checked on every hit, so a hash collision cannot
/// return another exchange's verdict).
struct PolicyKey {
    audiences: Vec<(String, Option<bool>)>,
    impersonation: bool,
}

impl Memo {
    /// `v1`: the realm's FGAP v1 grants, when known (a client's Arc belongs to one realm, so the
    /// pointer key stays exact).
    fn client(&mut self, c: Arc<ClientRep>, v1: Option<&crate::directory::V1Grants>) -> Arc<ClientInfo> {
        let key = Arc::as_ptr(&c) as usize;
        if let Some((_, info)) = self.clients.get(&key) {
            return info.clone();
        }
        let info = Arc::new(client_info(&c, v1));
        self.clients.insert(key, (c, info.clone()));
        info
    }

    fn user(&mut self, opts: &EnrichOptions, u: Arc<UserRep>) -> Arc<UserInfo> {
        let key = Arc::as_ptr(&u) as usize;
        if let Some((_, info)) = self.users.get(&key) {
            return info.clone();
        }
        let info = Arc::new(user_info(opts, &u));
        self.users.insert(key, (u, info.clone()));
        info
    }

    fn policy(&mut self, realm: &RealmRef, name: &str, exchanger: Option<Arc<ClientRep>>, audiences: &[AudienceInfo], chain: &Chain<'_>, te: &TokenExchange) -> Arc<PolicyVerdict> {
        let compute = |c: Option<&ClientRep>| Arc::new(policy::verdict(&realm.name, name, c, audiences, |s| chain.client_scope(realm, s), chain.v1(realm), te));
        let Some(c) = exchanger else { return compute(None) };
        // The verdict depends only on the exchanger's configuration, the audiences (and whether they
        // exist) and whether impersonation was asked for.
        let impersonation = te.requested_subject.is_some();
        let key = {
            use std::hash::{BuildHasher, Hash, Hasher};
            // In-memory only, and `same` below confirms a hit: a fast fixed-seed hash will do (SipHash
            // here was 0.7 % of the pipeline's instructions, issue #9).
            let mut h = ahash::RandomState::with_seeds(1, 2, 3, 4).build_hasher();
            for a in audiences {
                a.audience.hash(&mut h);
                a.known.hash(&mut h);
            }
            impersonation.hash(&mut h);
            (Arc::as_ptr(&c) as usize, h.finish())
        };
        let same = |p: &PolicyKey| p.impersonation == impersonation && p.audiences.len() == audiences.len() && p.audiences.iter().zip(audiences).all(|((a, k), b)| *a == b.audience && *k == b.known);
        if let Some((_, k, v)) = self.policies.get(&key) {
            if same(k) {
                return v.clone();
            }
        }
        let v = compute(Some(&c));
        let pk = PolicyKey { audiences: audiences.iter().map(|a| (a.audience.clone(), a.known)).collect(), impersonation };
        self.policies.insert(key, (c, pk, v.clone()));
        v
    }

}

/// Memo entries kept before the memo is cleared (bounds memory when the admin API's cache churns).
const MEMO_MAX: usize = 100_000;

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
        let counters = ["enriched", "partial", "not_enriched"].map(|s| metrics.enrichment.with_label_values(&[s]));
        Ok(Some(Arc::new(Enricher { opts: opts.clone(), sources, counters, memo: Mutex::new(Memo::default()) })))
    }

    /// Enrich a batch: lookups for different events run concurrently (the admin API's cache coalesces
    /// repeats), and the directory is pinned to one version for the whole batch.
    pub async fn enrich_all<'e>(&self, events: impl IntoIterator<Item = &'e mut AuditEvent>) {
        let chain = Chain::new(&self.sources);
        let source: Arc<str> = chain.describe().into();
        if self.sources.iter().any(|s| matches!(s, Source::Api(_))) {
            futures::future::join_all(events.into_iter().map(|e| self.enrich_with(&chain, &source, e))).await;
        } else {
            // Directory lookups never wait: no need to interleave.
            for e in events {
                self.enrich_with(&chain, &source, e).await;
            }
        }
    }

    /// Enrich one event.
    pub async fn enrich(&self, ev: &mut AuditEvent) {
        let chain = Chain::new(&self.sources);
        let source: Arc<str> = chain.describe().into();
        self.enrich_with(&chain, &source, ev).await;
    }

    async fn enrich_with(&self, chain: &Chain<'_>, source: &Arc<str>, ev: &mut AuditEvent) {
        let (en, realm) = self.lookup(chain, source, ev).await;
        // Fill the realm identifier the format did not give.
        if let Some(r) = realm {
            if ev.realm.name.is_none() {
                ev.realm.name = Some(Text::from(&*r.name));
            }
            if ev.realm.id.is_none() {
                ev.realm.id = r.id.map(|i| i.to_string());
            }
        }
        let counter = match en.status {
            EnrichmentStatus::Enriched => &self.counters[0],
            EnrichmentStatus::Partial => &self.counters[1],
            EnrichmentStatus::NotEnriched => &self.counters[2],
        };
        counter.inc();
        ev.enrichment = Some(en);
    }

    /// Everything the sources know about the event (read-only on the event, so nothing is cloned).
    async fn lookup(&self, chain: &Chain<'_>, source: &Arc<str>, ev: &AuditEvent) -> (Enrichment, Option<RealmRef>) {
        let mut en = Enrichment {
            status: EnrichmentStatus::Enriched,
            misses: Vec::new(),
            source: Some(source.clone()),
            exchanger: None,
            subject: None,
            audiences: Vec::new(),
            subject_token_client: None,
            impersonator: None,
            policy: None,
            resource_client: None,
            requested_subject: None,
        };
        let mut resolved_any = false;
        let realm = match ev.realm.id.as_deref().or(ev.realm.name.as_deref()) {
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
        resolved_any |= realm.is_some();
        if ev.kind == EventKind::Admin {
            resolved_any |= self.enrich_admin(chain, ev, &mut en).await;
        } else if let Some(realm) = &realm {
            // All lookups first (they may wait on the admin API), then one pass over the memo.
            let exchanger = match ev.client_id.as_deref() {
                Some(cid) => self.note(chain.client(realm, cid).await, &mut en.misses),
                None => None,
            };
            let subject = match ev.subject.id.as_deref() {
                Some(uid) => self.note(chain.user(realm, uid).await, &mut en.misses),
                None => None,
            };
            let mut audiences = Vec::new();
            let (mut stc, mut imp, mut target) = (None, None, None);
            if let Some(te) = &ev.token_exchange {
                audiences.reserve(te.audiences.len());
                for a in &te.audiences {
                    audiences.push(match chain.client(realm, a).await {
                        Res::Found(c) => (Some(true), Some(c)),
                        Res::Missing(_) => (Some(false), None),
                        Res::Unavailable(m) => {
                            en.misses.push(m);
                            (None, None)
                        }
                    });
                }
                if let Some(id) = &te.subject_token_client_id {
                    stc = self.note(chain.client(realm, id).await, &mut en.misses);
                }
                if let Some(name) = &te.impersonator {
                    imp = self.note(chain.user_by_username(realm, name).await, &mut en.misses);
                }
                if let Some(rs) = &te.requested_subject {
                    // The parameter is a username or a user id; the event's userId (on success) is the id.
                    target = match chain.user_by_username(realm, rs).await {
                        Res::Found(u) => Some(u),
                        _ => match chain.user(realm, ev.subject.id.as_deref().unwrap_or(rs)).await {
                            Res::Found(u) => Some(u),
                            Res::Missing(m) | Res::Unavailable(m) => {
                                en.misses.push(format!("requested subject: {m}"));
                                None
                            }
                        },
                    };
                }
            }
            let mut memo = self.memo();
            let v1 = chain.v1(realm);
            en.exchanger = exchanger.clone().map(|c| memo.client(c, v1));
            en.subject = subject.map(|u| memo.user(&self.opts, u));
            en.subject_token_client = stc.map(|c| memo.client(c, v1));
            en.impersonator = imp.map(|u| memo.user(&self.opts, u));
            en.requested_subject = target.map(|u| memo.user(&self.opts, u));
            if let Some(te) = &ev.token_exchange {
                en.audiences = te
                    .audiences
                    .iter()
                    .zip(audiences)
                    .map(|(a, (known, c))| AudienceInfo { audience: a.to_string(), known, client: c.map(|c| memo.client(c, v1)) })
                    .collect();
                en.policy = Some(memo.policy(realm, ev.client_id.as_deref().unwrap_or("?"), exchanger, &en.audiences, chain, te));
            }
        }
        if !en.misses.is_empty() {
            resolved_any |= en.exchanger.is_some() || en.subject.is_some();
            en.status = if resolved_any { EnrichmentStatus::Partial } else { EnrichmentStatus::NotEnriched };
        }
        (en, realm)
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
            en.exchanger = self.note(chain.client_by_uuid(&realm, uuid).await, &mut en.misses).map(|c| self.memo().client(c, chain.v1(&realm)));
        }
        if let Some(uid) = &a.auth.user_id {
            en.subject = self.note(chain.user(&realm, uid).await, &mut en.misses).map(|u| self.memo().user(&self.opts, u));
        }
        // The changed client (`clients/<uuid>/...`) lives in the event's (target) realm.
        let target = ev.realm.id.as_deref().or(ev.realm.name.as_deref());
        let uuid = a.resource_path.as_deref().and_then(|p| p.strip_prefix("clients/")).map(|p| p.split('/').next().unwrap_or(p));
        if let (Some(target), Some(uuid)) = (target, uuid) {
            if let Res::Found(r) = chain.realm(target).await {
                en.resource_client = self.note(chain.client_by_uuid(&r, uuid).await, &mut en.misses).map(|c| self.memo().client(c, chain.v1(&r)));
            }
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

    fn memo(&self) -> std::sync::MutexGuard<'_, Memo> {
        let mut m = self.memo.lock().unwrap_or_else(|p| p.into_inner());
        if m.clients.len() + m.users.len() + m.policies.len() > MEMO_MAX {
            *m = Memo::default();
        }
        m
    }


}

fn user_info(opts: &EnrichOptions, u: &UserRep) -> UserInfo {
    let (privileged, privileged_reason) = match privileged(&opts.privileged, u) {
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
        attributes: opts
            .user_attributes
            .iter()
            .filter_map(|k| {
                let v = u.attr_values(k);
                (!v.is_empty()).then(|| (k.clone(), v))
            })
            .collect(),
    }
}

/// The analyst's view of a client.
pub fn client_info(c: &ClientRep, v1: Option<&crate::directory::V1Grants>) -> ClientInfo {
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
        token_exchange: match (c.standard_token_exchange_enabled(), v1) {
            (true, _) => "standard_v2",
            (false, Some(g)) if c.client_id.as_deref().is_some_and(|id| g.is_exchanger(id)) => "legacy_v1",
            (false, Some(_)) => "none",
            (false, None) => "unknown",
        }
        .to_string(),
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
