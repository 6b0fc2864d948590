//! The Keycloak directory: realms, clients and users, indexed for the enrichment stage.
//!
//! Loaded from a **snapshot** folder in the layout of the admin REST API's answers (`realms.json`,
//! `<realm>.clients.json`, `<realm>.users.json`, optionally `<realm>.client-scopes.json`), which
//! `kcaudit directory sync` writes, or from **realm exports** (`kc.sh export`, keycloak-config-cli
//! files). A [`DirectoryHandle`] reloads the files when they change, keeping the previous directory if
//! the new files do not parse, so a half-written snapshot never empties enrichment.

pub mod model;
pub mod sync;

use std::collections::BTreeSet;

use ahash::{AHashMap as HashMap, AHashSet as HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use model::{ClientRep, ClientScopeRep, RealmRep, UserRep};

/// One realm's clients and users, indexed.
#[derive(Debug, Default)]
pub struct RealmDir {
    pub id: Option<String>,
    pub name: Option<String>,
    pub access_token_lifespan: Option<i64>,
    clients: Vec<Arc<ClientRep>>,
    by_client_id: HashMap<String, usize>,
    by_uuid: HashMap<String, usize>,
    users: Vec<Arc<UserRep>>,
    by_user_id: HashMap<String, usize>,
    by_username: HashMap<String, usize>,
    /// Client-scope definitions; `None` when the source does not carry them (the admin-API snapshot
    /// without `client-scopes.json`), so policy questions that need them answer "unknown".
    pub client_scopes: Option<Vec<ClientScopeRep>>,
    /// Shared copies of the identifiers, handed to enrichment without allocating.
    shared: Option<crate::enrich::resolve::RealmRef>,
    /// Legacy V1 (FGAP v1) token-exchange and impersonation grants, when the source carries the
    /// `realm-management` authorization settings (realm exports); `None` means "cannot tell".
    pub v1: Option<V1Grants>,
}

/// Who FGAP v1 permissions let exchange to which client, and impersonate, as far as the file shows.
#[derive(Debug, Clone, Default)]
pub struct V1Grants {
    /// Target clientId → exchangers a token-exchange permission certainly lets through.
    pub exchange_to: HashMap<String, BTreeSet<String>>,
    /// Targets whose permission lets any client through (`*`: a permission on every client).
    pub exchange_any: HashSet<String>,
    /// Targets whose permission could not be decided from the file.
    pub exchange_undecided: HashSet<String>,
    pub impersonators: BTreeSet<String>,
    pub impersonation_any: bool,
    pub impersonation_undecided: bool,
}

impl V1Grants {
    fn from_analysis(a: &crate::realm_audit::fgap::V1Analysis) -> V1Grants {
        use crate::realm_audit::fgap::{PermissionKind, Target};
        let mut g = V1Grants::default();
        for p in &a.permissions {
            for t in &p.targets {
                match (p.kind, t) {
                    (PermissionKind::TokenExchange, Target::Client { client_id, .. }) => {
                        g.exchange_to.entry(client_id.clone()).or_default().extend(p.granted.iter().cloned());
                        if p.any_client {
                            g.exchange_any.insert(client_id.clone());
                        }
                        if p.undecided {
                            g.exchange_undecided.insert(client_id.clone());
                        }
                    }
                    (PermissionKind::TokenExchange, Target::AllResources) => {
                        g.exchange_to.entry("*".into()).or_default().extend(p.granted.iter().cloned());
                        if p.any_client {
                            g.exchange_any.insert("*".into());
                        }
                        if p.undecided {
                            g.exchange_undecided.insert("*".into());
                        }
                    }
                    (PermissionKind::TokenExchange, Target::Unresolved(_)) => {
                        g.exchange_undecided.insert("*".into());
                    }
                    (PermissionKind::Impersonate, _) => {
                        g.impersonators.extend(p.granted.iter().cloned());
                        g.impersonation_any |= p.any_client;
                        g.impersonation_undecided |= p.undecided || matches!(t, Target::Unresolved(_));
                    }
                    _ => {}
                }
            }
        }
        g
    }

    /// Whether some V1 permission lets `client` exchange to anything.
    pub fn is_exchanger(&self, client: &str) -> bool {
        self.exchange_to.values().any(|s| s.contains(client))
    }

    /// May `exchanger` obtain `target`? `None` when the file cannot tell.
    pub fn may_exchange(&self, exchanger: &str, target: &str) -> Option<bool> {
        if exchanger == target {
            return Some(true); // a client may always exchange to itself
        }
        for key in [target, "*"] {
            if self.exchange_to.get(key).is_some_and(|s| s.contains(exchanger)) || self.exchange_any.contains(key) {
                return Some(true);
            }
        }
        if self.exchange_undecided.contains(target) || self.exchange_undecided.contains("*") {
            return None;
        }
        Some(false)
    }

    /// May `client` impersonate users? `None` when the file cannot tell.
    pub fn may_impersonate(&self, client: &str) -> Option<bool> {
        if self.impersonation_any || self.impersonators.contains(client) {
            Some(true)
        } else if self.impersonation_undecided {
            None
        } else {
            Some(false)
        }
    }
}

impl RealmDir {
    /// The realm's identifiers as shared strings (None when the realm has no name).
    pub fn reference(&self) -> Option<crate::enrich::resolve::RealmRef> {
        self.shared.clone()
    }

    pub fn from_rep(rep: RealmRep) -> RealmDir {
        let mut r = RealmDir {
            id: rep.id,
            name: rep.realm,
            access_token_lifespan: rep.access_token_lifespan.as_ref().and_then(model::value_str).and_then(|s| s.parse().ok()),
            client_scopes: (!rep.client_scopes.is_empty()).then_some(rep.client_scopes),
            ..Default::default()
        };
        r.shared = r.name.as_deref().map(|n| crate::enrich::resolve::RealmRef { id: r.id.as_deref().map(Arc::from), name: Arc::from(n) });
        for c in rep.clients {
            r.add_client(c);
        }
        for u in rep.users {
            r.add_user(u);
        }
        r
    }

    fn add_client(&mut self, c: ClientRep) {
        let i = self.clients.len();
        if let Some(id) = &c.client_id {
            self.by_client_id.insert(id.clone(), i);
        }
        if let Some(uuid) = &c.id {
            self.by_uuid.insert(uuid.clone(), i);
        }
        self.clients.push(Arc::new(c));
    }

    fn add_user(&mut self, u: UserRep) {
        let i = self.users.len();
        if let Some(id) = &u.id {
            self.by_user_id.insert(id.clone(), i);
        }
        if let Some(name) = &u.username {
            // Keycloak usernames are case-insensitive (stored lowercased).
            self.by_username.insert(name.to_lowercase(), i);
        }
        self.users.push(Arc::new(u));
    }

    pub fn client(&self, client_id: &str) -> Option<&Arc<ClientRep>> {
        self.by_client_id.get(client_id).map(|&i| &self.clients[i])
    }

    pub fn client_by_uuid(&self, uuid: &str) -> Option<&Arc<ClientRep>> {
        self.by_uuid.get(uuid).map(|&i| &self.clients[i])
    }

    pub fn user(&self, id: &str) -> Option<&Arc<UserRep>> {
        self.by_user_id.get(id).map(|&i| &self.users[i])
    }

    pub fn user_by_username(&self, username: &str) -> Option<&Arc<UserRep>> {
        self.by_username.get(&username.to_lowercase()).map(|&i| &self.users[i])
    }

    pub fn clients(&self) -> &[Arc<ClientRep>] {
        &self.clients
    }

    /// The definition of a client scope by name, when scopes are known.
    pub fn client_scope(&self, name: &str) -> Option<&ClientScopeRep> {
        self.client_scopes.as_ref()?.iter().find(|s| s.name.as_deref() == Some(name))
    }
}

/// All realms known to one source.
#[derive(Debug, Default)]
pub struct Directory {
    pub realms: Vec<RealmDir>,
    /// Where it came from (`directory:<path>`, `realm-export:<file>`), for provenance on events.
    pub source: String,
}

impl Directory {
    /// The realm whose id or name is `key`.
    pub fn realm(&self, key: &str) -> Option<&RealmDir> {
        self.realms.iter().find(|r| r.id.as_deref() == Some(key)).or_else(|| self.realms.iter().find(|r| r.name.as_deref() == Some(key)))
    }

    /// Read a snapshot folder (`realms.json` plus per-realm files).
    pub fn load_snapshot(dir: &Path) -> anyhow::Result<Directory> {
        let realms: Vec<RealmRep> = read_json(&dir.join("realms.json"))?;
        let mut out = Directory { realms: Vec::new(), source: format!("directory:{}", dir.display()) };
        for mut rep in realms {
            let name = rep.realm.clone().ok_or_else(|| anyhow::anyhow!("{}: a realm without a `realm` name", dir.join("realms.json").display()))?;
            for (suffix, what) in [("clients", 0), ("users", 1), ("client-scopes", 2)] {
                let path = dir.join(format!("{name}.{suffix}.json"));
                if !path.exists() {
                    continue;
                }
                match what {
                    0 => rep.clients = read_json(&path)?,
                    1 => rep.users = read_json(&path)?,
                    _ => rep.client_scopes = read_json(&path)?,
                }
            }
            out.realms.push(RealmDir::from_rep(rep));
        }
        Ok(out)
    }

    /// Read realm exports: one realm object per file, or an array of them (`kc.sh export --file`);
    /// `kc.sh export --dir` user files (`{realm, users}`) merge into their realm.
    pub fn load_exports(files: &[PathBuf]) -> anyhow::Result<Directory> {
        let mut reps: Vec<(RealmRep, Option<V1Grants>)> = Vec::new();
        for f in files {
            let v: serde_json::Value = read_json(f)?;
            let raws: Vec<serde_json::Value> = match v {
                serde_json::Value::Array(a) => a,
                other => vec![other],
            };
            for raw in raws {
                let rep: RealmRep = serde_json::from_value(raw.clone()).map_err(|e| anyhow::anyhow!("{}: not a realm export: {e}", f.display()))?;
                let v1 = crate::realm_audit::fgap::analyze(&rep, &raw).map(|a| V1Grants::from_analysis(&a));
                match reps.iter_mut().find(|(r, _)| r.realm.is_some() && r.realm == rep.realm) {
                    Some((existing, ev1)) => {
                        existing.users.extend(rep.users);
                        existing.clients.extend(rep.clients);
                        existing.client_scopes.extend(rep.client_scopes);
                        existing.id = existing.id.take().or(rep.id);
                        if ev1.is_none() {
                            *ev1 = v1;
                        }
                    }
                    None => reps.push((rep, v1)),
                }
            }
        }
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        let realms = reps
            .into_iter()
            .map(|(rep, v1)| {
                let mut r = RealmDir::from_rep(rep);
                r.v1 = v1;
                r
            })
            .collect();
        Ok(Directory { realms, source: format!("realm-export:{}", names.join(",")) })
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(crate::decode::strip_bom(&text)).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Where a directory is loaded from.
#[derive(Debug, Clone, PartialEq)]
pub enum DirectorySpec {
    Snapshot(PathBuf),
    Exports(Vec<PathBuf>),
}

impl DirectorySpec {
    pub fn load(&self) -> anyhow::Result<Directory> {
        match self {
            DirectorySpec::Snapshot(p) => Directory::load_snapshot(p),
            DirectorySpec::Exports(f) => Directory::load_exports(f),
        }
    }

    /// The files whose modification times decide whether to reload.
    fn watched(&self) -> Vec<PathBuf> {
        match self {
            DirectorySpec::Snapshot(p) => std::fs::read_dir(p)
                .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "json")).collect())
                .unwrap_or_default(),
            DirectorySpec::Exports(f) => f.clone(),
        }
    }

    fn stamp(&self) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
        let mut v: Vec<_> = self
            .watched()
            .into_iter()
            .map(|p| {
                let m = std::fs::metadata(&p).ok();
                let stamp = (m.as_ref().and_then(|m| m.modified().ok()), m.map(|m| m.len()).unwrap_or(0));
                (p, stamp.0, stamp.1)
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// A directory that reloads itself when its files change (checked at most every `check_every`).
pub struct DirectoryHandle {
    spec: DirectorySpec,
    current: RwLock<Arc<Directory>>,
    check_every: Duration,
    state: Mutex<(Instant, Vec<(PathBuf, Option<SystemTime>, u64)>)>,
}

impl DirectoryHandle {
    pub fn open(spec: DirectorySpec, check_every: Duration) -> anyhow::Result<DirectoryHandle> {
        let stamp = spec.stamp();
        let dir = spec.load()?;
        Ok(DirectoryHandle { spec, current: RwLock::new(Arc::new(dir)), check_every, state: Mutex::new((Instant::now(), stamp)) })
    }

    /// The current directory, reloaded first if the files changed since the last check.
    pub fn get(&self) -> Arc<Directory> {
        self.maybe_reload();
        self.current.read().map(|d| d.clone()).unwrap_or_default()
    }

    fn maybe_reload(&self) {
        let Ok(mut st) = self.state.try_lock() else { return };
        if st.0.elapsed() < self.check_every {
            return;
        }
        st.0 = Instant::now();
        let stamp = self.spec.stamp();
        if stamp == st.1 {
            return;
        }
        match self.spec.load() {
            Ok(d) => {
                tracing::info!(source = %d.source, realms = d.realms.len(), "Directory reloaded.");
                if let Ok(mut cur) = self.current.write() {
                    *cur = Arc::new(d);
                }
                st.1 = stamp;
            }
            Err(e) => tracing::warn!(error = %e, "Directory files changed but could not be loaded; keeping the previous directory."),
        }
    }
}
