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
        let mut rows = Rows::default();
        match tx.open_table(META) {
            Ok(t) => {
                if let Some(v) = t.get("newest_ms")? {
                    rows.apply(Row::Meta(v.value()));
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        if let Ok(t) = tx.open_table(REALMS) {
            for row in t.iter()? {
                let (k, v) = row?;
                rows.apply(Row::Realm(k.value().to_string(), v.value().to_vec()));
            }
        }
        if let Ok(t) = tx.open_table(CLIENTS) {
            for row in t.iter()? {
                let (k, v) = row?;
                let key = k.value();
                let (realm, client) = key.split_once('\u{0}').unwrap_or(("?", key));
                rows.apply(Row::Client(realm.to_string(), client.to_string(), v.value().to_vec()));
            }
        }
        rows.into_state().map(Some).map_err(|e| anyhow::anyhow!("detection state in {} is unreadable ({e})", self.path.display()))
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
            let mut realms = tx.open_table(REALMS)?;
            let mut clients = tx.open_table(CLIENTS)?;
            // Row by row: a save after a busy interval encodes megabytes of baselines, and collecting
            // them first would add all of it to the peak memory (issue #9 measured 6.8 MB).
            each_changed_row(state, all, |row| {
                match row {
                    Row::Meta(newest) => {
                        meta.insert("newest_ms", newest)?;
                    }
                    Row::Realm(name, v) => {
                        realms.insert(name.as_str(), v.as_slice())?;
                    }
                    Row::Client(realm, client, v) => {
                        clients.insert(client_key(&realm, &client).as_str(), v.as_slice())?;
                    }
                }
                Ok(())
            })?;
        }
        tx.commit()?;
        clear_changed(state);
        self.last_save = Instant::now();
        Ok(())
    }
}

/// One persisted piece of detection state. The redb store and the worker's Kafka changelog
/// (`partitioned.rs`) both write these rows, so a state saved by one reads back the same in the other.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    /// The newest event time seen.
    Meta(i64),
    /// A realm's own windows (JSON of the realm without its clients).
    Realm(String, Vec<u8>),
    /// One client's baseline (JSON).
    Client(String, String, Vec<u8>),
}

/// The rows to write: the newest time, every realm, and the clients changed since the last call (or
/// all of them with `all`). The changed marks stay until [`clear_changed`] (after a successful write).
pub fn changed_rows(state: &State, all: bool) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    each_changed_row(state, all, |row| {
        rows.push(row);
        Ok(())
    })?;
    Ok(rows)
}

/// [`changed_rows`] one at a time, encoded as they are handed to `f`; stops at `f`'s first error.
pub fn each_changed_row(state: &State, all: bool, mut f: impl FnMut(Row) -> anyhow::Result<()>) -> anyhow::Result<()> {
    f(Row::Meta(state.newest_ms))?;
    for (name, r) in state.realms.iter() {
        let realm = RealmRow { first_ms: r.first_ms, ip_errors: r.ip_errors.clone(), impersonated: r.impersonated.clone() };
        f(Row::Realm(name.clone(), serde_json::to_vec(&realm)?))?;
        for (client, c) in r.clients.iter().filter(|(_, c)| all || c.dirty) {
            f(Row::Client(name.clone(), client.clone(), serde_json::to_vec(c)?))?;
        }
    }
    Ok(())
}

pub fn clear_changed(state: &mut State) {
    for r in state.realms.values_mut() {
        for c in r.clients.values_mut() {
            c.dirty = false;
        }
    }
}

/// Rows read back (later rows of the same key win), turned into a state at the end.
#[derive(Default)]
pub struct Rows {
    newest_ms: i64,
    realms: BTreeMap<String, Vec<u8>>,
    clients: BTreeMap<(String, String), Vec<u8>>,
}

impl Rows {
    pub fn apply(&mut self, row: Row) {
        match row {
            Row::Meta(t) => self.newest_ms = t,
            Row::Realm(name, v) => {
                self.realms.insert(name, v);
            }
            Row::Client(realm, client, v) => {
                self.clients.insert((realm, client), v);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.realms.len() + self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn into_state(self) -> Result<State, String> {
        let mut state = State { newest_ms: self.newest_ms, ..Default::default() };
        for (name, v) in self.realms {
            let r: RealmRow = serde_json::from_slice(&v).map_err(|e| format!("realm {name:?}: {e}"))?;
            state.realms.insert(name, RealmState { first_ms: r.first_ms, ip_errors: r.ip_errors, impersonated: r.impersonated, clients: Default::default() });
        }
        for ((realm, client), v) in self.clients {
            let c: ClientState = serde_json::from_slice(&v).map_err(|e| format!("client {client:?} of realm {realm:?}: {e}"))?;
            state.realms.entry(realm).or_default().clients.insert(client, c);
        }
        Ok(state)
    }
}
