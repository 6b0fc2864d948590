//! Shared helpers for the integration tests.
#![allow(dead_code)]

pub mod clickhouse;
pub mod fake_keycloak;
pub mod services;
pub mod sink_run;

use std::path::{Path, PathBuf};

use kcaudit::config::Config;
use kcaudit::decode::{decode_body, Context, DecodeOptions, Decoded, Format, Item};
use kcaudit::event::{AuditEvent, Origin};
use kcaudit::sources::replay::{self, ReplayReport, ReplayRequest};

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

/// A config whose data directory is a fresh temp dir.
pub fn temp_config(dir: &Path, sets: &[&str]) -> Config {
    let mut all = vec![format!("data_dir={:?}", dir.display().to_string())];
    all.extend(sets.iter().map(|s| s.to_string()));
    Config::load(None, &all).expect("test config loads")
}

/// Replay files through the real pipeline into a temp output file; returns events and report.
pub async fn replay(dir: &Path, sets: &[&str], inputs: &[PathBuf], format: Format) -> (Vec<AuditEvent>, ReplayReport) {
    let config = temp_config(dir, sets);
    let out = dir.join(format!("out-{}.jsonl", uuid::Uuid::new_v4()));
    let req = ReplayRequest {
        inputs: inputs.iter().map(|p| p.display().to_string()).collect(),
        format,
        out: Some(out.clone()),
        progress: false,
        state: None,
        to_sinks: false,
    };
    let report = replay::run(&config, &req).await.expect("replay runs");
    (replay::read_events(&out).expect("output is JSON lines of events"), report)
}

/// Decode a body with default options (no pipeline), as a webhook body would be.
pub fn decode(body: &[u8], format: Format) -> Vec<Item> {
    let opts = DecodeOptions::default();
    decode_with(body, format, &opts)
}

pub fn decode_with(body: &[u8], format: Format, opts: &DecodeOptions) -> Vec<Item> {
    let ctx = Context { opts, tz: opts.time_zone().unwrap(), deliveries: None, lines_may_be_noise: false };
    let mut out = Vec::new();
    decode_body(body, format, &Origin { input: "test".into(), ..Default::default() }, &ctx, &mut out);
    out
}

/// The single event a body must decode to.
pub fn one_event(body: &[u8]) -> AuditEvent {
    let items = decode(body, Format::Auto);
    assert_eq!(items.len(), 1, "expected one record, got {items:?}");
    match &items[0].decoded {
        Decoded::Event(e) => (**e).clone(),
        other => panic!("expected an event, got {other:?}"),
    }
}

pub fn rejected_reason(body: &[u8]) -> String {
    let items = decode(body, Format::Auto);
    assert_eq!(items.len(), 1, "expected one record, got {items:?}");
    match &items[0].decoded {
        Decoded::Rejected(r) => r.clone(),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

pub fn codes(e: &AuditEvent) -> Vec<String> {
    e.warnings.iter().map(|w| w.code.clone()).collect()
}

/// Poll `f` until it holds or `secs` pass; returns its last answer.
pub async fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let t = std::time::Instant::now();
    while t.elapsed() < std::time::Duration::from_secs(secs) {
        if f() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    f()
}

/// Run the `kcaudit serve` binary with `--set` overrides, its diagnostics appended to `log`.
pub fn spawn_serve(sets: &[String], log: &Path) -> std::process::Child {
    spawn_serve_args(&[], sets, log)
}

/// `kcaudit serve ARGS...` with `--set` overrides (e.g. `--config FILE`, `--watch-config`).
pub fn spawn_serve_args(args: &[&str], sets: &[String], log: &Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_kcaudit"))
        .arg("serve")
        .args(args)
        .args(sets.iter().flat_map(|s| ["--set", s.as_str()]))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file"))
        .spawn()
        .expect("start kcaudit")
}

/// The complete lines of a JSON-lines file another process may be appending to: everything up to the
/// last newline (a reader can see the writer's last line half written).
pub fn complete_lines(path: &Path) -> String {
    let mut text = std::fs::read_to_string(path).unwrap_or_default();
    text.truncate(text.rfind('\n').map_or(0, |i| i + 1));
    text
}
