//! Persisting detection state in redb, so a restart resumes with the same baselines.
//!
//! The whole state is one value (serialised JSON) under one key, written in one redb transaction:
//! atomic, crash-safe (redb commits are durable), and small enough because the state is bounded.
//! It is saved at most every `save_every` while running and always at shutdown; after a crash, at
//! most that much learning is lost (the events themselves were already delivered).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redb::{Database, TableDefinition};

use super::state::State;

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("detect_state");
const KEY: &str = "state/v1";

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

    pub fn load(&self) -> anyhow::Result<Option<State>> {
        let tx = self.db.begin_read()?;
        let table = match tx.open_table(TABLE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match table.get(KEY)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(|e| anyhow::anyhow!("detection state in {} is unreadable: {e}", self.path.display()))?)),
            None => Ok(None),
        }
    }

    pub fn save(&mut self, state: &State) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(state)?;
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(TABLE)?;
            t.insert(KEY, bytes.as_slice())?;
        }
        tx.commit()?;
        self.last_save = Instant::now();
        Ok(())
    }

    /// Save when `save_every` has passed since the last save.
    pub fn maybe_save(&mut self, state: &State) -> anyhow::Result<()> {
        if self.last_save.elapsed() >= self.save_every {
            self.save(state)?;
        }
        Ok(())
    }
}
