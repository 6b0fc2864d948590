//! Lookups across several sources of truth, in order of preference.
//!
//! Each source answers a lookup with `Found`, `Missing` (the source is authoritative and the thing
//! does not exist: a deleted user) or `Unavailable` (the source cannot answer now: Keycloak down,
//! circuit open, or the data is not in this kind of source). The chain takes the first answer that is
//! not `Unavailable`, so the live admin API wins when it answers and a snapshot or realm export serves
//! when it does not.

use std::sync::Arc;

use crate::directory::model::{ClientRep, ClientScopeRep, UserRep};
use crate::directory::{Directory, DirectoryHandle};
use crate::keycloak_api::AdminApi;

#[derive(Debug, Clone)]
pub enum Res<T> {
    Found(T),
    Missing(String),
    Unavailable(String),
}

/// The realm as every source can name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealmRef {
    pub id: Option<Arc<str>>,
    pub name: Arc<str>,
}

pub enum Source {
    Api(Arc<AdminApi>),
    Directory(DirectoryHandle),
}

impl Source {
    pub fn describe(&self, dir: Option<&Directory>) -> String {
        match self {
            Source::Api(a) => format!("admin-api:{}", a.base_url()),
            Source::Directory(_) => dir.map(|d| d.source.clone()).unwrap_or_else(|| "directory".into()),
        }
    }
}

/// One batch's view of the sources (the directory is pinned to one version for the whole batch).
pub struct Chain<'a> {
    pub sources: &'a [Source],
    pub dirs: Vec<Option<Arc<Directory>>>,
}

macro_rules! chain_lookup {
    ($self:ident, $what:expr, |$api:ident| $api_call:expr, |$dir:ident| $dir_call:expr) => {{
        let mut why = Vec::new();
        for (i, s) in $self.sources.iter().enumerate() {
            let r = match s {
                Source::Api($api) => match $api_call.await {
                    Ok(Some(v)) => Res::Found(v),
                    Ok(None) => Res::Missing(format!("{} not found (admin API)", $what)),
                    Err(e) => Res::Unavailable(e.to_string()),
                },
                Source::Directory(_) => match &$self.dirs[i] {
                    Some($dir) => $dir_call,
                    None => Res::Unavailable("directory not loaded".into()),
                },
            };
            match r {
                Res::Unavailable(w) => why.push(w),
                other => return other,
            }
        }
        Res::Unavailable(why.join("; "))
    }};
}

impl<'a> Chain<'a> {
    pub fn new(sources: &'a [Source]) -> Chain<'a> {
        let dirs = sources
            .iter()
            .map(|s| match s {
                Source::Directory(h) => Some(h.get()),
                Source::Api(_) => None,
            })
            .collect();
        Chain { sources, dirs }
    }

    /// Provenance for `enrichment.source`: the first source that is configured.
    pub fn describe(&self) -> String {
        self.sources.iter().enumerate().map(|(i, s)| s.describe(self.dirs[i].as_deref())).collect::<Vec<_>>().join(",")
    }

    pub async fn realm(&self, key: &str) -> Res<RealmRef> {
        chain_lookup!(
            self,
            format!("realm {key}"),
            |api| async { api.realm(key).await.map(|r| r.and_then(|r| r.realm.as_deref().map(|name| RealmRef { id: r.id.as_deref().map(Arc::from), name: Arc::from(name) }))) },
            |dir| match dir.realm(key) {
                Some(r) => match r.reference() {
                    Some(rr) => Res::Found(rr),
                    None => Res::Missing(format!("realm {key} has no name in the directory")),
                },
                None => Res::Missing(format!("realm {key} is not in the directory")),
            }
        )
    }

    pub async fn client(&self, realm: &RealmRef, client_id: &str) -> Res<Arc<ClientRep>> {
        chain_lookup!(
            self,
            format!("client {client_id}"),
            |api| api.client(&realm.name, client_id),
            |dir| match dir.realm(&realm.name).and_then(|r| r.client(client_id)) {
                Some(c) => Res::Found(c.clone()),
                None => Res::Missing(format!("client {client_id} not found in realm {}", realm.name)),
            }
        )
    }

    pub async fn client_by_uuid(&self, realm: &RealmRef, uuid: &str) -> Res<Arc<ClientRep>> {
        chain_lookup!(
            self,
            format!("client {uuid}"),
            |api| api.client_by_uuid(&realm.name, uuid),
            |dir| match dir.realm(&realm.name).and_then(|r| r.client_by_uuid(uuid)) {
                Some(c) => Res::Found(c.clone()),
                None => Res::Missing(format!("client {uuid} not found in realm {}", realm.name)),
            }
        )
    }

    pub async fn user(&self, realm: &RealmRef, id: &str) -> Res<Arc<UserRep>> {
        chain_lookup!(
            self,
            format!("user {id}"),
            |api| api.user(&realm.name, id),
            |dir| match dir.realm(&realm.name).and_then(|r| r.user(id)) {
                Some(u) => Res::Found(u.clone()),
                None => Res::Missing(format!("user {id} not found (deleted, or not in the directory)")),
            }
        )
    }

    pub async fn user_by_username(&self, realm: &RealmRef, username: &str) -> Res<Arc<UserRep>> {
        chain_lookup!(
            self,
            format!("user {username}"),
            |api| api.user_by_username(&realm.name, username),
            |dir| match dir.realm(&realm.name).and_then(|r| r.user_by_username(username)) {
                Some(u) => Res::Found(u.clone()),
                None => Res::Missing(format!("user {username} not found")),
            }
        )
    }

    /// FGAP v1 grants, from the first directory source that carries them (realm exports).
    pub fn v1(&self, realm: &RealmRef) -> Option<&crate::directory::V1Grants> {
        self.dirs.iter().flatten().find_map(|d| d.realm(&realm.name).and_then(|r| r.v1.as_ref()))
    }

    /// Client-scope definitions come only from directory sources that carry them.
    pub fn client_scope(&self, realm: &RealmRef, name: &str) -> Option<ClientScopeRep> {
        self.dirs.iter().flatten().find_map(|d| d.realm(&realm.name).and_then(|r| r.client_scope(name)).cloned())
    }
}
