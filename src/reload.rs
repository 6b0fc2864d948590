//! Hot reload: re-read the configuration on SIGHUP (and, with `[reload] watch`, when the file
//! changes) and apply what can change without dropping anything in flight.
//!
//! A reload is all or nothing. The file(s) and the same `--set` overrides as at start are loaded and
//! checked exactly as `kcaudit serve` / `kcaudit validate` would; then every new component (sinks,
//! the enrichment stage) is built. Only when all of that succeeded is one [`Reconfigure`] sent to the
//! central stage, which applies it between two batches (see `pipeline`). Any failure leaves the
//! running configuration untouched, is logged with its reason (file, key and message) and counted in
//! `kcaudit_config_reloads_total{outcome="rejected"}`.
//!
//! What reloads:
//! - `[detect]` (rules, thresholds, windows, per-rule overrides): the running detector takes the new
//!   options and keeps its state (baselines, windows, the redb store, owned partitions);
//! - `[enrich]`: a new enrichment stage is built (the admin API client and its cache are kept; the
//!   per-stage memo of directory views is rebuilt, which is only a cache);
//! - `[sinks.*]`, routes included: a sink whose options changed is rebuilt (new driver started, the
//!   old one drains, flushes and closes); sinks enabled or disabled are started or retired.
//!
//! Everything else (`data_dir`, `role`, `webhook`, `decode`, `admin_api`, `poll`, `kafka`, `dedup`,
//! `pipeline`, `dead_letter`, `spool`, `log`, `reload`, `detect.enabled`, `detect.state_file`) is
//! bound to listeners, files, consumer groups or tasks made at start: a change to any of these keys
//! is logged as needing a restart, keeps its running value, and does not stop the rest from applying.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::config::{Config, ConfigError, Role};
use crate::keycloak_api::AdminApi;
use crate::metrics::Metrics;
use crate::pipeline::{PipelineControl, Reconfigure};

/// `[reload]`: hot reload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadOptions {
    /// Re-read the configuration file when it changes (SIGHUP always does). The file's directory is
    /// watched, so editors that save by renaming and Kubernetes ConfigMap updates (a symlink swap)
    /// are seen. Needs `--config FILE`; `kcaudit serve --watch-config` sets it too.
    pub watch: bool,
    /// Quiet time after the last change before reloading, in milliseconds: one save is often several
    /// file events, and a ConfigMap update is a burst of them.
    pub debounce_ms: u64,
}

impl Default for ReloadOptions {
    fn default() -> Self {
        ReloadOptions { watch: false, debounce_ms: 500 }
    }
}

/// Why a reload was refused (the running configuration is unchanged).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot build {what}: {message}")]
    Build { what: String, message: String },
    #[error("kcaudit is shutting down")]
    ShuttingDown,
}

/// What an accepted reload did. Key names only: values (tokens, secrets) are never reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    /// The generation now in force (unchanged when nothing reloadable changed).
    pub generation: u64,
    /// Dotted keys whose new values are in force.
    pub applied: Vec<String>,
    /// Dotted keys that changed in the file but keep their running value until a restart.
    pub restart_needed: Vec<String>,
    pub sinks_started: Vec<String>,
    pub sinks_rebuilt: Vec<String>,
    pub sinks_stopped: Vec<String>,
}

/// Re-reads and applies the configuration of a running instance (`server::Running::reloader`).
pub struct Reloader {
    file: Option<PathBuf>,
    sets: Vec<String>,
    current: Config,
    api: Option<Arc<AdminApi>>,
    control: PipelineControl,
    metrics: Metrics,
    generation: u64,
    /// The file's bytes when last read: a watch event that left them as they were is not a change.
    last_text: Option<Vec<u8>>,
}

impl Reloader {
    pub fn new(file: Option<PathBuf>, sets: Vec<String>, current: Config, api: Option<Arc<AdminApi>>, control: PipelineControl, metrics: Metrics) -> Reloader {
        let last_text = file.as_deref().and_then(|f| std::fs::read(f).ok());
        Reloader { file, sets, current, api, control, metrics, generation: 1, last_text }
    }

    /// The configuration in force (restart-only keys keep their values from start).
    pub fn current(&self) -> &Config {
        &self.current
    }

    /// Re-read and apply; logs and counts the outcome (`trigger` names what asked: sighup, watch, ...).
    pub async fn reload(&mut self, trigger: &str) -> Result<ReloadSummary, ReloadError> {
        self.last_text = self.file.as_deref().and_then(|f| std::fs::read(f).ok());
        let result = self.try_reload().await;
        match &result {
            Ok(s) => {
                for key in &s.restart_needed {
                    tracing::warn!(trigger, key = %key, "Changed in the configuration but needs a restart; the running value is kept.");
                }
                let outcome = if s.applied.is_empty() { "unchanged" } else { "applied" };
                self.metrics.config_reloads.with_label_values(&[outcome]).inc();
                tracing::info!(
                    trigger,
                    generation = s.generation,
                    changed = ?s.applied,
                    sinks_started = ?s.sinks_started,
                    sinks_rebuilt = ?s.sinks_rebuilt,
                    sinks_stopped = ?s.sinks_stopped,
                    restart_needed = ?s.restart_needed,
                    "{}",
                    if s.applied.is_empty() { "Configuration re-read; nothing that reloads has changed." } else { "Configuration reloaded." }
                );
            }
            Err(e) => {
                self.metrics.config_reloads.with_label_values(&["rejected"]).inc();
                tracing::error!(trigger, error = %e, "Configuration reload refused; the running configuration is unchanged.");
            }
        }
        result
    }

    /// Reload only if the file's bytes differ from the last read (file-watch events include
    /// unrelated files in the directory and touches that change nothing).
    pub async fn reload_if_changed(&mut self, trigger: &str) -> Option<Result<ReloadSummary, ReloadError>> {
        let now = self.file.as_deref().and_then(|f| std::fs::read(f).ok());
        if now.is_none() || now == self.last_text {
            // Missing: mid-swap (a rename or a ConfigMap update); the next event brings it back.
            return None;
        }
        Some(self.reload(trigger).await)
    }

    async fn try_reload(&mut self) -> Result<ReloadSummary, ReloadError> {
        let (new, warnings) = Config::load_checked(self.file.as_deref(), &self.sets)?;
        for w in warnings {
            tracing::warn!(key = %w.key, "{}", w.message);
        }
        let old = &self.current;
        let effective = reloadable_part(old, &new);
        // The combination of kept and new values must hold together too (e.g. a sink the running
        // role forbids).
        let problems: Vec<_> = effective.problems().into_iter().filter(|p| p.is_error).collect();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems).into());
        }
        let mut summary = ReloadSummary {
            applied: changed_keys(old, &effective),
            restart_needed: changed_keys(old, &new).into_iter().filter(|k| !reloadable(k)).collect(),
            ..Default::default()
        };
        let (before, after) = (sink_options(old), sink_options(&effective));
        for (name, opts) in &after {
            match before.get(name) {
                None => summary.sinks_started.push(name.clone()),
                Some(o) if o != opts => summary.sinks_rebuilt.push(name.clone()),
                Some(_) => {}
            }
        }
        summary.sinks_stopped = before.keys().filter(|n| !after.contains_key(*n)).cloned().collect();
        let mut change = Reconfigure { stop: summary.sinks_stopped.clone(), ..Default::default() };
        let build: BTreeSet<&String> = summary.sinks_started.iter().chain(&summary.sinks_rebuilt).collect();
        change.start = crate::server::sinks_named(&effective, |n| build.contains(&n.to_string()))
            .map_err(|e| ReloadError::Build { what: "the sinks".into(), message: format!("{e:#}") })?;
        if effective.enrich != old.enrich && effective.role != Role::Edge {
            // The privilege rules decide whether the API client fetches role mappings.
            let api = if effective.enrich.wants_roles() == old.enrich.wants_roles() { Ok(self.api.clone()) } else { effective.admin_api_client() };
            let enricher = api
                .and_then(|api| effective.enricher(api, self.metrics.clone()))
                .map_err(|e| ReloadError::Build { what: "the enrichment stage".into(), message: format!("{e:#}") })?;
            change.enricher = Some(enricher);
        }
        if effective.detect != old.detect {
            change.detect = Some(effective.detect.clone());
        }
        if summary.applied.is_empty() {
            summary.generation = self.generation;
            return Ok(summary);
        }
        self.control.reconfigure(change).await.map_err(|_| ReloadError::ShuttingDown)?;
        self.generation += 1;
        self.current = effective;
        self.metrics.config_generation.set(i64::try_from(self.generation).unwrap_or(i64::MAX));
        self.metrics.config_last_applied.set(chrono::Utc::now().timestamp());
        summary.generation = self.generation;
        Ok(summary)
    }

    /// Serve reloads until the task is dropped: SIGHUP, and file changes when `[reload] watch` is on
    /// (as at start: switching the watch itself needs a restart).
    pub async fn run(mut self) {
        let opts = self.current.reload.clone();
        let mut changes = None;
        if opts.watch {
            match self.file.as_deref().map(watch_file) {
                Some(Ok(w)) => {
                    tracing::info!(file = %self.file.as_deref().unwrap_or(Path::new("")).display(), "Watching the configuration file for changes.");
                    changes = Some(w);
                }
                Some(Err(e)) => tracing::error!(error = format!("{e:#}"), "Cannot watch the configuration file; reload with SIGHUP."),
                None => tracing::warn!("reload.watch needs --config FILE; reload with SIGHUP."),
            }
        }
        let debounce = Duration::from_millis(opts.debounce_ms);
        let mut hup = hangups();
        loop {
            tokio::select! {
                Some(()) = hup.recv() => {
                    let _ = self.reload("sighup").await;
                }
                Some(()) = async { match changes.as_mut() { Some((_, rx)) => rx.recv().await, None => std::future::pending().await } } => {
                    let Some((_, rx)) = changes.as_mut() else { continue };
                    // Debounce: wait until the directory has been quiet for `debounce`.
                    while let Ok(Some(())) = tokio::time::timeout(debounce, rx.recv()).await {}
                    let _ = self.reload_if_changed("watch").await;
                }
                else => std::future::pending::<()>().await,
            }
        }
    }
}

/// SIGHUPs as a channel (never fires where there are no signals).
fn hangups() -> mpsc::UnboundedReceiver<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut s) => {
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    if tx.send(()).is_err() {
                        break;
                    }
                }
            });
        }
        Err(e) => tracing::error!(error = %e, "Cannot listen for SIGHUP; configuration reload by signal is off."),
    }
    #[cfg(not(unix))]
    drop(tx);
    rx
}

/// Watch the directory holding `file` (not the file: a rename-on-save or a ConfigMap symlink swap
/// replaces it, and a watch on the old inode would go silent). Every event but reads is passed on;
/// [`Reloader::reload_if_changed`] decides whether the file itself changed.
fn watch_file(file: &Path) -> anyhow::Result<(notify::RecommendedWatcher, mpsc::UnboundedReceiver<()>)> {
    use notify::Watcher;
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| match e {
        Ok(e) if e.kind.is_access() => {}
        Ok(_) => {
            let _ = tx.send(());
        }
        Err(e) => tracing::warn!(error = %e, "Configuration file watch error."),
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive).map_err(|e| anyhow::anyhow!("cannot watch {}: {e}", dir.display()))?;
    Ok((watcher, rx))
}

/// Whether a change to this dotted key takes effect without a restart.
pub fn reloadable(key: &str) -> bool {
    const PINNED: [&str; 2] = ["detect.enabled", "detect.state_file"];
    !PINNED.iter().any(|p| key == *p || key.starts_with(&format!("{p}."))) && ["detect.", "enrich.", "sinks."].iter().any(|p| key.starts_with(p))
}

/// `old` with the sections that reload taken from `new`: the configuration a reload puts in force.
fn reloadable_part(old: &Config, new: &Config) -> Config {
    let mut c = old.clone();
    c.detect = new.detect.clone();
    c.detect.enabled = old.detect.enabled;
    c.detect.state_file = old.detect.state_file.clone();
    c.enrich = new.enrich.clone();
    c.sinks = new.sinks.clone();
    c
}

/// The dotted keys (tables descended, arrays compared whole) whose values differ.
pub fn changed_keys(a: &Config, b: &Config) -> Vec<String> {
    fn leaves(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
        match v.as_object() {
            Some(m) => {
                for (k, v) in m {
                    leaves(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, v, out);
                }
            }
            None => {
                out.insert(prefix.to_string(), v.clone());
            }
        }
    }
    let (mut x, mut y) = (BTreeMap::new(), BTreeMap::new());
    leaves("", &serde_json::to_value(a).unwrap_or_default(), &mut x);
    leaves("", &serde_json::to_value(b).unwrap_or_default(), &mut y);
    let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
    keys.into_iter().filter(|k| x.get(*k) != y.get(*k)).cloned().collect()
}

/// Each enabled sink's options by sink name (`[[sinks.http]]` entries by their `name`).
fn sink_options(c: &Config) -> BTreeMap<String, Value> {
    let all = serde_json::to_value(&c.sinks).unwrap_or_default();
    let mut out = BTreeMap::new();
    for (key, opts) in all.as_object().into_iter().flatten() {
        let each: Vec<(String, &Value)> = match opts.as_array() {
            Some(list) => list.iter().map(|o| (o["name"].as_str().unwrap_or(key).to_string(), o)).collect(),
            None => vec![(key.clone(), opts)],
        };
        for (name, o) in each.into_iter().filter(|(_, o)| o["enabled"] == Value::Bool(true)) {
            out.insert(name, o.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(sets: &[&str]) -> Config {
        Config::load(None, &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn keys_are_split_into_reloadable_and_restart_needed() {
        assert!(reloadable("detect.error_burst_threshold"));
        assert!(reloadable("detect.rules.new-audience.severity"));
        assert!(reloadable("sinks.audit_log.route.realms"));
        assert!(reloadable("enrich.directory"));
        assert!(!reloadable("detect.enabled"));
        assert!(!reloadable("detect.state_file"));
        assert!(!reloadable("webhook.listen"));
        assert!(!reloadable("data_dir"));
        assert!(!reloadable("reload.watch"));
        assert!(!reloadable("sinksx"));
    }

    #[test]
    fn the_effective_config_keeps_restart_only_values() {
        let old = load(&[]);
        let new = load(&["webhook.listen=127.0.0.1:1", "detect.enabled=false", "detect.spray_threshold=9", "sinks.stdout.enabled=true"]);
        let eff = reloadable_part(&old, &new);
        assert_eq!(eff.webhook.listen, old.webhook.listen);
        assert!(eff.detect.enabled);
        assert_eq!(eff.detect.spray_threshold, 9);
        assert_eq!(changed_keys(&old, &eff), vec!["detect.spray_threshold", "sinks.stdout.enabled"]);
        let restart: Vec<String> = changed_keys(&old, &new).into_iter().filter(|k| !reloadable(k)).collect();
        assert_eq!(restart, vec!["detect.enabled", "webhook.listen"]);
    }

    #[test]
    fn sinks_are_keyed_by_name_and_only_when_enabled() {
        let c = load(&["sinks.stdout.enabled=false", "sinks.http=[{ name = \"siem\", enabled = true, url = \"http://127.0.0.1:1/x\" }, { name = \"off\", enabled = false, url = \"http://127.0.0.1:1/y\" }]"]);
        let names: Vec<String> = sink_options(&c).into_keys().collect();
        assert_eq!(names, vec!["audit_log", "siem"]);
    }
}
