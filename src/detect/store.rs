//! Persisting detection state in redb, so a restart resumes with the same baselines.
//!
//! One row per (realm, client) baseline, one row per realm for realm-wide windows, and one for the
//! newest event time. Only the clients changed since the last save are written, in one redb
//! transaction (atomic and durable), so saving stays cheap however large the state grows. The state
//! is saved at most every `save_every` while running and always at shutdown; after a crash, at most
//! that much learning is lost (the events themselves were already delivered).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::state::{ClientState, RealmState, State};

const CLIENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("detect_clients");
const REALMS: TableDefinition<&str, &[u8]> = TableDefinition::new("detect_realms");
const META: TableDefinition<&str, i64> = TableDefinition::new("detect_meta");

/// Realm-wide state without the clients (they have rows of their own).
#[derive(Serialize, Deserialize)]
struct RealmRow {
    first_ms: i64,
    ip_errors: BTreeMap<String, VecDeque<(i64, String, String)>>,
    #[serde(default)]
    impersonated: BTreeMap<String, (i64, String, String)>,
}

fn client_key(realm: &str, client: &str) -> String {
    format!("{realm}\u{0}{client}")
}

pub struct StateStore {
    path: PathBuf,
    db: Database,
    last_save: Instant,
    pub save_every: Duration,
}

impl StateStore {
    pub fn open(path: &Path) -> anyhow::Result<StateStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let db = Database::create(path).map_err(|e| anyhow::anyhow!("cannot open detection state {}: {e}", path.display()))?;
        Ok(StateStore { path: path.to_path_buf(), db, last_save: Instant::now(), save_every: Duration::from_secs(10) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `save_every` has passed since the last save.
    pub fn due(&self) -> bool {
        self.last_save.elapsed() >= self.save_every
    }

    pub fn load(&self) -> anyhow::Result<Option<State>> {
        let tx = self.db.begin_read()?;
        let bad = |what: &str, e: serde_json::Error| anyhow::anyhow!("detection state in {} is unreadable ({what}): {e}", self.path.display());
        let mut state = State::default();
        match tx.open_table(META) {
            Ok(t) => {
                if let Some(v) = t.get("newest_ms")? {
                    state.newest_ms = v.value();
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        if let Ok(t) = tx.open_table(REALMS) {
            for row in t.iter()? {
                let (k, v) = row?;
                let r: RealmRow = serde_json::from_slice(v.value()).map_err(|e| bad("realm", e))?;
                state.realms.insert(k.value().to_string(), RealmState { first_ms: r.first_ms, ip_errors: r.ip_errors, impersonated: r.impersonated, clients: BTreeMap::new() });
            }
        }
        if let Ok(t) = tx.open_table(CLIENTS) {
            for row in t.iter()? {
                let (k, v) = row?;
                let key = k.value();
                let (realm, client) = key.split_once('\u{0}').unwrap_or(("?", key));
                let c: ClientState = serde_json::from_slice(v.value()).map_err(|e| bad("client", e))?;
                state.realms.entry(realm.to_string()).or_default().clients.insert(client.to_string(), c);
            }
        }
        Ok(Some(state))
    }

    /// Write the whole state (import).
    pub fn save(&mut self, state: &State) -> anyhow::Result<()> {
        let mut copy = state.clone();
        self.save_changes(&mut copy, true)
    }

    /// Write the realm rows, the newest time, and the clients changed since the last save (or all of
    /// them with `all`); clears the changed marks.
    pub fn save_changes(&mut self, state: &mut State, all: bool) -> anyhow::Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            meta.insert("newest_ms", state.newest_ms)?;
            let mut realms = tx.open_table(REALMS)?;
            for (name, r) in &state.realms {
                let row = serde_json::to_vec(&RealmRow { first_ms: r.first_ms, ip_errors: r.ip_errors.clone(), impersonated: r.impersonated.clone() })?;
                realms.insert(name.as_str(), row.as_slice())?;
            }
            let mut clients = tx.open_table(CLIENTS)?;
            for (realm, r) in state.realms.iter() {
                for (client, c) in r.clients.iter().filter(|(_, c)| all || c.dirty) {
                    clients.insert(client_key(realm, client).as_str(), serde_json::to_vec(c)?.as_slice())?;
                }
            }
        }
        tx.commit()?;
        for r in state.realms.values_mut() {
            for c in r.clients.values_mut() {
                c.dirty = false;
            }
        }
        self.last_save = Instant::now();
        Ok(())
    }
}
