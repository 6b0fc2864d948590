//! The admin-API polling source against the local Keycloak stand-in, with pages that change between
//! polls: nothing duplicated, nothing skipped, across restarts.

mod common;

use std::sync::Arc;

use common::fake_keycloak::{self, FakeKeycloak};
use common::*;
use kcaudit::dead_letter::DeadLetterStore;
use kcaudit::metrics::Metrics;
use kcaudit::pipeline::{Pipeline, SinkSpec};
use kcaudit::sinks::file::FileSink;
use kcaudit::sources::admin_poll::{Cursor, Poller};
use serde_json::Value;

fn native_events() -> Vec<Value> {
    std::fs::read_to_string(fixture("keycloak/keycloak-native-events.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

struct Rig {
    pipeline: Pipeline,
    out: std::path::PathBuf,
    cursor: std::path::PathBuf,
    config: kcaudit::config::Config,
}

fn rig(dir: &std::path::Path, kc: &FakeKeycloak) -> Rig {
    let secret = dir.join("kc-secret");
    std::fs::write(&secret, fake_keycloak::CLIENT_SECRET).unwrap();
    let config = temp_config(
        dir,
        &[
            &format!("admin_api.url={:?}", kc.url()),
            &format!("admin_api.client_secret_file={:?}", secret.display().to_string()),
            "admin_api.breaker_failures=100",
            "poll.enabled=true",
            "poll.realms=[\"acme-prod\"]",
            "poll.page_size=3",
            "poll.overlap_ms=60000",
        ],
    );
    let out = dir.join(format!("out-{}.jsonl", uuid::Uuid::new_v4()));
    let pipeline = Pipeline::start(
        vec![SinkSpec { sink: Box::new(FileSink::create_output(&out).unwrap()), batch: Default::default(), retry: Default::default() }],
        DeadLetterStore::open(&dir.join("dlq.jsonl")).unwrap(),
        Metrics::new(),
        &config.dedup,
        &config.pipeline,
    );
    Rig { pipeline, out, cursor: config.data_path(&config.poll.cursor_file), config }
}

fn poller(r: &Rig) -> Poller {
    Poller {
        api: r.config.admin_api_client().unwrap().unwrap(),
        opts: r.config.poll.clone(),
        decode: r.config.decode.clone(),
        cursor_path: r.cursor.clone(),
        pipeline: r.pipeline.handle(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_page_resume_and_never_duplicate() {
    let kc = FakeKeycloak::start(fixture("keycloak/admin-api")).await;
    let acme: Vec<Value> = native_events().into_iter().filter(|e| e["realmId"] == "4f660473-c22b-4858-a484-cd314a37e778").collect();
    let te: Vec<Value> = acme.iter().filter(|e| e["type"].as_str().unwrap().starts_with("TOKEN_EXCHANGE")).cloned().collect();
    assert!(te.len() > 20);
    let (first, rest) = te.split_at(10);
    kc.state.events.lock().unwrap().insert("acme-prod".into(), acme.iter().take_while(|e| e["id"] != rest[0]["id"]).cloned().collect());
    kc.state.admin_events.lock().unwrap().insert("acme-prod".into(), Vec::new());

    let dir = tempfile::tempdir().unwrap();
    let r = rig(dir.path(), &kc);
    let p = poller(&r);
    let c1 = p.poll_once().await.unwrap();
    assert_eq!(c1.new, 10, "only the token-exchange types are asked for");
    assert!(kc.state.hits("/admin/realms/acme-prod/events") >= 4, "paged in pages of 3");

    // New events arrive, one stored late (its time is before the newest already delivered).
    let mut store = acme.iter().take_while(|e| e["id"] != rest[5]["id"]).cloned().collect::<Vec<_>>();
    let mut late = rest[0].clone();
    late["id"] = Value::String("late-stored-event".into());
    late["time"] = Value::from(first[9]["time"].as_i64().unwrap() - 1000);
    store.push(late);
    kc.state.events.lock().unwrap().insert("acme-prod".into(), store);
    let c2 = p.poll_once().await.unwrap();
    assert_eq!(c2.new, 6, "5 new plus the late one, none of the first 10 again");

    // A restart (new poller, same cursor file) re-reads the overlap but delivers nothing twice.
    let p2 = poller(&r);
    assert_eq!(p2.poll_once().await.unwrap().new, 0);
    let cursor = Cursor::load(&r.cursor).unwrap();
    assert_eq!(cursor.streams["acme-prod/events"].high_water_ms, rest[4]["time"].as_i64().unwrap());

    // Keycloak down: the poll fails, the cursor does not move.
    let before = std::fs::read_to_string(&r.cursor).unwrap();
    let (_addr, _state) = kc.kill();
    assert!(p2.poll_once().await.is_err());
    assert_eq!(std::fs::read_to_string(&r.cursor).unwrap(), before);

    drop((p, p2));
    let Rig { pipeline, out, .. } = r;
    pipeline.shutdown().await;
    let evs = kcaudit::sources::replay::read_events(&out).unwrap();
    assert_eq!(evs.len(), 16);
    let ids: std::collections::HashSet<_> = evs.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids.len(), 16, "no duplicates");
    assert!(evs.iter().all(|e| &*e.origin.input == "admin-api:acme-prod/events"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_events_are_polled_too() {
    let kc = FakeKeycloak::start(fixture("keycloak/admin-api")).await;
    let admin: Vec<Value> = std::fs::read_to_string(fixture("keycloak/keycloak-native-admin-events.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    kc.state.admin_events.lock().unwrap().insert("acme-prod".into(), admin);
    let dir = tempfile::tempdir().unwrap();
    let r = rig(dir.path(), &kc);
    let p = Arc::new(poller(&r));
    assert_eq!(p.poll_once().await.unwrap().new, 2);
    assert_eq!(p.poll_once().await.unwrap().new, 0);
    drop(p);
    let Rig { pipeline, out, .. } = r;
    pipeline.shutdown().await;
    let evs = kcaudit::sources::replay::read_events(&out).unwrap();
    assert!(evs.iter().all(|e| e.kind == kcaudit::event::EventKind::Admin));
}
