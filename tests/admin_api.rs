//! Enrichment from the live admin API, against a local stand-in that serves the fixtures in the real
//! endpoints' shapes: same answers as the snapshot, coalesced lookups, secrets dropped, and an outage
//! that never blocks or loses an event.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::fake_keycloak::{self, FakeKeycloak};
use common::*;
use kcaudit::dead_letter::DeadLetterStore;
use kcaudit::decode::Format;
use kcaudit::enrich::Enricher;
use kcaudit::event::{AuditEvent, EnrichmentStatus};
use kcaudit::metrics::Metrics;

fn api_sets(url: &str, secret_file: &std::path::Path) -> Vec<String> {
    vec![
        format!("admin_api.url={url:?}"),
        format!("admin_api.client_secret_file={:?}", secret_file.display().to_string()),
        "admin_api.breaker_open_secs=1".into(),
        "admin_api.timeout_ms=500".into(),
        "admin_api.requests_per_second=1000".into(),
    ]
}

fn secret_file(dir: &std::path::Path, secret: &str) -> std::path::PathBuf {
    let p = dir.join("kc-secret");
    std::fs::write(&p, secret).unwrap();
    p
}

/// Enrichment without provenance, for comparing sources.
fn enrichment_only(evs: &[AuditEvent]) -> Vec<serde_json::Value> {
    evs.iter()
        .map(|e| {
            let mut v = serde_json::to_value(&e.enrichment).unwrap();
            v["source"] = serde_json::Value::Null;
            serde_json::json!({"id": e.id, "realm": e.realm, "enrichment": v})
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_gives_the_same_answers_as_the_snapshot() {
    let kc = FakeKeycloak::start(fixture("keycloak/admin-api")).await;
    let dir = tempfile::tempdir().unwrap();
    let sf = secret_file(dir.path(), fake_keycloak::CLIENT_SECRET);
    let sets = api_sets(&kc.url(), &sf);
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let input = fixture("keycloak/keycloak-native-events.jsonl");
    let (from_api, rep) = replay(dir.path(), &sets, &[input.clone()], Format::Auto).await;
    assert_eq!(rep.totals.accepted, 65);
    let snap = format!("enrich.directory={:?}", fixture("keycloak/admin-api").display().to_string());
    let dir2 = tempfile::tempdir().unwrap();
    let (from_dir, _) = replay(dir2.path(), &[&snap], &[input], Format::Auto).await;
    assert_eq!(enrichment_only(&from_api), enrichment_only(&from_dir));
    assert!(from_api[0].enrichment.as_ref().unwrap().source.as_deref().unwrap().starts_with("admin-api:"));
    // Coalescing and caching: one request per distinct user, however many events name them.
    let distinct_users: std::collections::HashSet<_> = from_api.iter().filter_map(|e| e.subject.id.clone()).collect();
    let user_requests = kc.state.hits.lock().unwrap().iter().filter(|(k, _)| k.contains("/users/") && !k.contains("role-mappings") && !k.contains("/groups")).map(|(_, v)| *v).sum::<u64>();
    assert_eq!(user_requests, distinct_users.len() as u64, "each user fetched once");
    assert_eq!(kc.state.tokens_issued.load(Ordering::SeqCst), 1, "the token is cached");
    // Client secrets returned by the API never reach an event.
    let out = serde_json::to_string(&from_api).unwrap();
    assert!(!out.contains("super-secret-client-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_explained_and_events_flow() {
    let kc = FakeKeycloak::start(fixture("keycloak/admin-api")).await;
    let dir = tempfile::tempdir().unwrap();
    let sf = secret_file(dir.path(), "wrong-secret");
    let sets = api_sets(&kc.url(), &sf);
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let (evs, rep) = replay(dir.path(), &sets, &[fixture("keycloak/keycloak-native-events.jsonl")], Format::Auto).await;
    assert_eq!(rep.totals.accepted, 65, "nothing blocked");
    let en = evs[0].enrichment.as_ref().unwrap();
    assert_eq!(en.status, EnrichmentStatus::NotEnriched);
    assert!(en.misses[0].contains("refused kcaudit's credentials") || en.misses[0].contains("circuit open"), "{:?}", en.misses);
}

fn event(id: &str, user: &str) -> Vec<kcaudit::decode::Item> {
    decode(
        format!(r#"{{"id":"{id}","time":1773043084120,"type":"TOKEN_EXCHANGE","realmId":"4f660473-c22b-4858-a484-cd314a37e778","clientId":"api-gateway","userId":"{user}","details":{{"audience":"orders-api","subject_token_client_id":"web-portal","username":"x"}}}}"#).as_bytes(),
        Format::Auto,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_marks_events_not_enriched_and_enrichment_resumes() {
    let kc = FakeKeycloak::start(fixture("keycloak/admin-api")).await;
    let dir = tempfile::tempdir().unwrap();
    let sf = secret_file(dir.path(), fake_keycloak::CLIENT_SECRET);
    let config = temp_config(dir.path(), &api_sets(&kc.url(), &sf).iter().map(String::as_str).collect::<Vec<_>>());
    let metrics = Metrics::new();
    let enricher = config.enricher(config.admin_api_client().unwrap(), metrics.clone()).unwrap();
    let out = dir.path().join("out.jsonl");
    let pipeline = kcaudit::pipeline::Pipeline::start_with(
        vec![kcaudit::pipeline::SinkSpec {
            sink: Box::new(kcaudit::sinks::file::FileSink::create_output(&out).unwrap()),
            batch: Default::default(),
            retry: Default::default(),
        }],
        kcaudit::pipeline::Stages { enricher, detector: None },
        DeadLetterStore::open(&dir.path().join("dlq.jsonl")).unwrap(),
        metrics.clone(),
        &config.dedup,
        &config.pipeline,
    );
    let h = pipeline.handle();
    let alice = "cd3adec8-6fdc-414d-9093-31ddbb37ec99";
    let bob = "8a4a2d4e-4b4e-4d0e-9f62-3c3c1d8e8b11";
    let real_bob = std::fs::read_to_string(fixture("keycloak/admin-api/acme-prod.users.json")).unwrap();
    let real_bob: Vec<serde_json::Value> = serde_json::from_str(&real_bob).unwrap();
    let bob = real_bob.iter().find(|u| u["username"] == "bob.kramer").and_then(|u| u["id"].as_str()).unwrap_or(bob).to_string();

    let r1 = h.try_submit(event("o1", alice), "test").await.unwrap();
    assert_eq!(r1.counts().accepted, 1);
    let (addr, state) = kc.kill();
    // Keycloak is gone: bob was never looked up, so nothing is cached for him.
    let r2 = h.try_submit(event("o2", &bob), "test").await.unwrap();
    assert_eq!(r2.counts().accepted, 1, "the event is not blocked");
    // Back again (after the breaker's open period): enrichment resumes.
    let kc = FakeKeycloak::start_on(addr, state).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r3 = h.try_submit(event("o3", &bob), "test").await.unwrap();
    assert_eq!(r3.counts().accepted, 1);
    drop(h);
    pipeline.shutdown().await;
    let evs = kcaudit::sources::replay::read_events(&out).unwrap();
    let status: Vec<_> = evs.iter().map(|e| e.enrichment.as_ref().unwrap().status).collect();
    assert_eq!(evs.len(), 3, "nothing lost");
    assert_eq!(status[0], EnrichmentStatus::Enriched);
    assert_ne!(status[1], EnrichmentStatus::Enriched, "{:?}", evs[1].enrichment);
    assert!(evs[1].enrichment.as_ref().unwrap().misses.iter().any(|m| m.contains("admin API unavailable")), "{:?}", evs[1].enrichment);
    assert_eq!(status[2], EnrichmentStatus::Enriched, "{:?}", evs[2].enrichment);
    assert_eq!(evs[2].enrichment.as_ref().unwrap().subject.as_ref().unwrap().username.as_deref(), Some("bob.kramer"));
    assert!(metrics.render().contains(r#"kcaudit_enrichment_total{status="enriched"} 2"#));
    drop(kc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_api_falls_back_to_the_snapshot() {
    let kc = FakeKeycloak::start(fixture("keycloak/admin-api")).await;
    kc.state.delay_ms.store(2000, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let sf = secret_file(dir.path(), fake_keycloak::CLIENT_SECRET);
    let mut sets = api_sets(&kc.url(), &sf);
    sets.push(format!("enrich.directory={:?}", fixture("keycloak/admin-api").display().to_string()));
    let config = temp_config(dir.path(), &sets.iter().map(String::as_str).collect::<Vec<_>>());
    let en: Arc<Enricher> = config.enricher(config.admin_api_client().unwrap(), Metrics::new()).unwrap().unwrap();
    let items = event("s1", "cd3adec8-6fdc-414d-9093-31ddbb37ec99");
    let kcaudit::decode::Decoded::Event(mut ev) = items.into_iter().next().unwrap().decoded else { panic!() };
    en.enrich(Arc::make_mut(&mut ev)).await;
    let e = ev.enrichment.as_ref().unwrap();
    assert_eq!(e.status, EnrichmentStatus::Enriched, "{:?}", e.misses);
    assert_eq!(e.subject.as_ref().unwrap().username.as_deref(), Some("alice.nguyen"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_sync_writes_a_snapshot_that_enriches_the_same() {
    let kc = FakeKeycloak::start(fixture("keycloak/admin-api")).await;
    let dir = tempfile::tempdir().unwrap();
    let sf = secret_file(dir.path(), fake_keycloak::CLIENT_SECRET);
    let config = temp_config(dir.path(), &api_sets(&kc.url(), &sf).iter().map(String::as_str).collect::<Vec<_>>());
    let api = config.admin_api_client().unwrap().unwrap();
    let snap = dir.path().join("snapshot");
    let summary = kcaudit::directory::sync::sync(&api, &snap, &[]).await.unwrap();
    assert_eq!(summary.realms.len(), 3);
    let prod = summary.realms.iter().find(|r| r.realm == "acme-prod").unwrap();
    assert_eq!((prod.clients, prod.users), (11, 12));
    let written = std::fs::read_to_string(snap.join("acme-prod.clients.json")).unwrap();
    assert!(!written.contains("super-secret-client-secret"), "client secrets are never written");
    // Only one realm on request; an unknown realm is an error naming it.
    let only = dir.path().join("only");
    kcaudit::directory::sync::sync(&api, &only, &["acme-partners".into()]).await.unwrap();
    assert!(only.join("acme-partners.users.json").exists() && !only.join("acme-prod.users.json").exists());
    let e = kcaudit::directory::sync::sync(&api, &only, &["nope".into()]).await.unwrap_err().to_string();
    assert!(e.contains("realm nope does not exist"), "{e}");

    let input = fixture("keycloak/keycloak-native-events.jsonl");
    let d1 = tempfile::tempdir().unwrap();
    let (from_sync, _) = replay(d1.path(), &[&format!("enrich.directory={:?}", snap.display().to_string())], &[input.clone()], Format::Auto).await;
    let d2 = tempfile::tempdir().unwrap();
    let (from_fixture, _) = replay(d2.path(), &[&format!("enrich.directory={:?}", fixture("keycloak/admin-api").display().to_string())], &[input], Format::Auto).await;
    assert_eq!(enrichment_only(&from_sync), enrichment_only(&from_fixture));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refreshed_and_deleted_users_are_negative_cached() {
    let kc = FakeKeycloak::start(fixture("keycloak/admin-api")).await;
    let dir = tempfile::tempdir().unwrap();
    let sf = secret_file(dir.path(), fake_keycloak::CLIENT_SECRET);
    let config = temp_config(dir.path(), &api_sets(&kc.url(), &sf).iter().map(String::as_str).collect::<Vec<_>>());
    let api = config.admin_api_client().unwrap().unwrap();
    assert!(api.user("acme-prod", "cd3adec8-6fdc-414d-9093-31ddbb37ec99").await.unwrap().is_some());
    // Keycloak revokes the token (e.g. restart, key rotation): the next call gets 401, refreshes, succeeds.
    kc.state.tokens_issued.fetch_add(1, Ordering::SeqCst);
    let bob = api.user_by_username("acme-prod", "Bob.Kramer").await.unwrap();
    assert_eq!(bob.unwrap().username.as_deref(), Some("bob.kramer"), "usernames are case-insensitive");
    assert_eq!(kc.state.hits("/token"), 2);
    // A deleted user is a 404: an answer ("missing"), cached, not an outage.
    assert!(api.user("acme-prod", "deleted-user").await.unwrap().is_none());
    assert!(api.user("acme-prod", "deleted-user").await.unwrap().is_none());
    assert_eq!(kc.state.hits("/admin/realms/acme-prod/users/deleted-user"), 1, "the 404 is cached");
}
