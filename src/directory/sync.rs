//! `kcaudit directory sync`: write a directory snapshot from the live admin API.
//!
//! The snapshot has the layout [`super::Directory::load_snapshot`] reads, so enrichment can run from it
//! while Keycloak is unreachable (or where kcaudit may not call Keycloak at all). Files are written to a
//! temporary name and renamed, so a running kcaudit reloading the folder never reads half a file.
//! Client secrets are never written.

use std::path::Path;

use serde::Serialize;

use crate::keycloak_api::AdminApi;

#[derive(Debug, Default, Serialize)]
pub struct SyncSummary {
    pub realms: Vec<RealmCount>,
}

#[derive(Debug, Serialize)]
pub struct RealmCount {
    pub realm: String,
    pub clients: usize,
    pub users: usize,
    pub client_scopes: Option<usize>,
}

/// Write `realms.json` and the per-realm files for every realm (or only `only`, when not empty).
pub async fn sync(api: &AdminApi, out: &Path, only: &[String]) -> anyhow::Result<SyncSummary> {
    std::fs::create_dir_all(out).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
    let all = api.realms().await?;
    let realms: Vec<_> = all.iter().filter(|r| only.is_empty() || r.realm.as_ref().is_some_and(|n| only.contains(n))).cloned().collect();
    if let Some(missing) = only.iter().find(|n| !realms.iter().any(|r| r.realm.as_ref() == Some(n))) {
        anyhow::bail!("realm {missing} does not exist (or kcaudit's service account cannot see it)");
    }
    let mut summary = SyncSummary::default();
    for r in &realms {
        let Some(name) = r.realm.clone() else { continue };
        let clients = api.all_clients(&name).await?;
        let users = api.all_users(&name).await?;
        let scopes = api.client_scopes(&name).await?;
        write(out, &format!("{name}.clients.json"), &clients)?;
        write(out, &format!("{name}.users.json"), &users)?;
        if let Some(s) = &scopes {
            write(out, &format!("{name}.client-scopes.json"), s)?;
        }
        summary.realms.push(RealmCount { realm: name, clients: clients.len(), users: users.len(), client_scopes: scopes.map(|s| s.len()) });
    }
    // realms.json last: a reader that sees the new realm list finds its files already in place.
    let top: Vec<serde_json::Value> = realms.iter().map(|r| serde_json::json!({"id": r.id, "realm": r.realm, "displayName": r.display_name, "enabled": r.enabled})).collect();
    write(out, "realms.json", &top)?;
    Ok(summary)
}

fn write<T: Serialize>(dir: &Path, name: &str, v: &T) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(v)?)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(())
}
