//! The same Keycloak event rendered in every wire format decodes to the same canonical record.
//! The shared timeline gives every event one id across formats (except jboss-logging lines, which
//! have none and are joined by position).

mod common;

use std::collections::HashMap;

use common::*;
use kcaudit::decode::Format;
use kcaudit::event::{AuditEvent, EventKind, ExchangeFlavour, Outcome, TimeSource};

const KEYCLOAK_FILES: &[&str] = &[
    "keycloak/keycloak-native-events.jsonl",
    "keycloak/keycloak-native-admin-events.jsonl",
    "keycloak/keycloak-rest-events-page.json",
    "keycloak/keycloak-kafka-events.jsonl",
    "keycloak/keycloak-kafka-admin-events.jsonl",
    "keycloak/p2inc-webhook.jsonl",
    "keycloak/jboss-logging.log",
];

async fn events(file: &str) -> (Vec<AuditEvent>, kcaudit::sources::replay::ReplayReport) {
    let dir = tempfile::tempdir().unwrap();
    replay(dir.path(), &[], &[fixture(file)], Format::Auto).await
}

/// What Keycloak said, independent of the wire format (listener additions like realm name excluded).
fn essence(e: &AuditEvent) -> serde_json::Value {
    serde_json::json!({
        "kind": e.kind, "type": e.event_type, "outcome": e.outcome, "error": e.error,
        "realm_id": e.realm.id, "client_id": e.client_id, "user": e.subject.id,
        "session": e.session_id, "ip": e.ip_address, "details": e.details,
        "token_exchange": e.token_exchange,
        "admin": e.admin.as_ref().map(|a| serde_json::json!({
            "op": a.operation, "rt": a.resource_type, "path": a.resource_path,
            "client": a.auth.client_uuid, "user": a.auth.user_id, "ip": a.auth.ip_address,
        })),
    })
}

#[tokio::test]
async fn counts_per_fixture_file() {
    let expected: HashMap<&str, (u64, u64, u64)> = [
        ("keycloak/keycloak-native-events.jsonl", (65, 65, 0)),
        ("keycloak/keycloak-native-admin-events.jsonl", (2, 2, 0)),
        ("keycloak/keycloak-rest-events-page.json", (16, 16, 0)),
        ("keycloak/keycloak-kafka-events.jsonl", (65, 65, 0)),
        ("keycloak/keycloak-kafka-admin-events.jsonl", (2, 2, 0)),
        ("keycloak/p2inc-webhook.jsonl", (67, 67, 0)),
        ("keycloak/jboss-logging.log", (70, 67, 3)),
    ]
    .into_iter()
    .collect();
    for file in KEYCLOAK_FILES {
        let (evs, rep) = events(file).await;
        let c = rep.totals;
        let (received, accepted, skipped) = expected[file];
        assert_eq!((c.received, c.accepted, c.skipped, c.rejected), (received, accepted, skipped, 0), "{file}: {c:?}");
        assert_eq!(evs.len() as u64, accepted, "{file}");
        assert_eq!(c.received, c.accepted + c.duplicates + c.rejected + c.skipped, "{file}: counting invariant");
        let lines = std::fs::read_to_string(fixture(file)).unwrap().lines().count() as u64;
        if file.ends_with(".jsonl") || file.ends_with(".log") {
            assert_eq!(c.received, lines, "{file}: every line accounted for");
        }
    }
}

#[tokio::test]
async fn same_event_id_same_canonical_record_across_json_formats() {
    let (native, _) = events("keycloak/keycloak-native-events.jsonl").await;
    let (native_admin, _) = events("keycloak/keycloak-native-admin-events.jsonl").await;
    let by_id: HashMap<String, AuditEvent> = native.iter().chain(native_admin.iter()).map(|e| (e.id.clone(), e.clone())).collect();
    assert_eq!(by_id.len(), 67);
    let mut compared = 0;
    for file in [
        "keycloak/keycloak-rest-events-page.json",
        "keycloak/keycloak-kafka-events.jsonl",
        "keycloak/keycloak-kafka-admin-events.jsonl",
        "keycloak/p2inc-webhook.jsonl",
    ] {
        let (evs, _) = events(file).await;
        for e in &evs {
            let n = by_id.get(&e.id).unwrap_or_else(|| panic!("{file}: id {} not in the native files", e.id));
            assert_eq!(e.time, n.time, "{file} {}", e.id);
            assert_eq!(essence(e), essence(n), "{file} {}", e.id);
            assert!(!e.id_derived);
            compared += 1;
        }
    }
    assert_eq!(compared, 16 + 65 + 2 + 67);
}

#[tokio::test]
async fn listener_additions_fill_gaps_the_rest_api_leaves() {
    let (p2, _) = events("keycloak/p2inc-webhook.jsonl").await;
    let (native, _) = events("keycloak/keycloak-native-events.jsonl").await;
    // REST has no realm name; p2-inc has it (and the username, looked up by the listener).
    assert!(native.iter().all(|e| e.realm.name.is_none()));
    assert!(p2.iter().all(|e| e.realm.name.is_some()));
    assert!(p2.iter().all(|e| e.origin.delivery_id.is_some()), "p2 uid kept as the delivery id");
    // p2's authDetails.realmId is the realm NAME and must not overwrite the realm id.
    assert!(p2.iter().filter(|e| e.kind == EventKind::User).all(|e| e.realm.id.as_deref().unwrap().len() == 36));
}

#[tokio::test]
async fn jboss_lines_match_the_json_rendering_by_position() {
    let (jboss, _) = events("keycloak/jboss-logging.log").await;
    let (p2, _) = events("keycloak/p2inc-webhook.jsonl").await;
    assert_eq!(jboss.len(), p2.len());
    for (j, p) in jboss.iter().zip(&p2) {
        assert!(j.id_derived, "jboss lines have no event id");
        assert_eq!(j.time_source, TimeSource::LogLine);
        let dt = (j.time.unwrap() - p.time.unwrap()).num_milliseconds().abs();
        assert!(dt < 1000, "log time within a second of the event time ({dt} ms) for {}", p.id);
        assert_eq!(j.kind, p.kind);
        assert_eq!(j.event_type, p.event_type);
        assert_eq!(j.details, p.details, "{}", p.id);
        if j.kind == EventKind::User {
            assert_eq!(essence(j)["token_exchange"], essence(p)["token_exchange"], "{}", p.id);
            assert_eq!((&j.client_id, &j.subject.id, &j.session_id, &j.ip_address, &j.error), (&p.client_id, &p.subject.id, &p.session_id, &p.ip_address, &p.error));
            assert_eq!((&j.realm.id, &j.realm.name), (&p.realm.id, &p.realm.name));
        } else {
            let (ja, pa) = (j.admin.as_ref().unwrap(), p.admin.as_ref().unwrap());
            assert_eq!((&ja.operation, &ja.resource_type, &ja.resource_path), (&pa.operation, &pa.resource_type, &pa.resource_path));
            assert_eq!(ja.auth.client_uuid, pa.auth.client_uuid);
            assert!(j.realm.id.is_none(), "jboss admin lines do not name the target realm");
            assert!(j.warnings.iter().any(|w| w.code == "target_realm_unknown"));
        }
    }
}

#[tokio::test]
async fn token_exchange_facts_follow_the_spec() {
    let (evs, _) = events("keycloak/keycloak-native-events.jsonl").await;
    let get = |id: &str| evs.iter().find(|e| e.id == id).unwrap_or_else(|| panic!("{id}"));
    // n3: V2 exchange by api-gateway, subject token from web-portal.
    let n3 = get("0be0b73a-05f5-41ca-a8f7-a1590036af85");
    let te = n3.token_exchange.as_ref().unwrap();
    assert_eq!(te.flavour, ExchangeFlavour::StandardV2);
    assert_eq!(te.exchanger.as_deref(), Some("api-gateway"));
    assert_eq!(te.audiences, vec!["orders-api"]);
    assert_eq!(te.subject_token_client_id.as_deref(), Some("web-portal"));
    assert_eq!(n3.subject.username.as_deref(), Some("alice.nguyen"));
    // n42: V1 impersonation of ops.admin by sam.ortiz.
    let n42 = get("8103771d-fd89-4b0d-b38d-539594fc64eb");
    let te = n42.token_exchange.as_ref().unwrap();
    assert_eq!(te.flavour, ExchangeFlavour::LegacyV1);
    assert_eq!(te.requested_subject.as_deref(), Some("ops.admin"));
    assert_eq!(te.impersonator.as_deref(), Some("sam.ortiz"));
    // n40: naked impersonation: requested_subject without impersonator.
    let n40 = get("02cdbb18-4db3-46cd-9f6f-5eaa54313a9d");
    let te = n40.token_exchange.as_ref().unwrap();
    assert!(te.requested_subject.is_some() && te.impersonator.is_none());
    // Every TOKEN_EXCHANGE_ERROR is a failure with an error string.
    for e in evs.iter().filter(|e| e.event_type == "TOKEN_EXCHANGE_ERROR") {
        assert_eq!(e.outcome, Outcome::Failure);
        assert!(e.error.is_some(), "{}", e.id);
        assert!(e.token_exchange.is_some());
    }
    // n34: several audiences in one detail.
    let n34 = evs.iter().find(|e| e.token_exchange.as_ref().is_some_and(|t| t.audiences.len() == 2)).expect("a multi-audience exchange");
    assert_eq!(n34.token_exchange.as_ref().unwrap().audiences, vec!["orders-api", "billing-api"]);
    // The REGISTER clone of an external exchange carries token-exchange facts too.
    assert!(evs.iter().any(|e| e.event_type == "REGISTER" && e.token_exchange.is_some()));
    // Non-exchange events carry none.
    assert!(evs.iter().filter(|e| e.event_type == "LOGIN").all(|e| e.token_exchange.is_none()));
}

#[tokio::test]
async fn recorded_deliveries_replay_through_the_signature_check() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "public-fixture-secret-3f9c\n").unwrap();
    let sf = format!("webhook.auth.secret_file={:?}", secret_file.display().to_string());
    let (evs, rep) = replay(dir.path(), &["webhook.auth.mode=\"hmac\"", &sf], &[fixture("keycloak/p2inc-webhook-deliveries.jsonl")], Format::Auto).await;
    assert_eq!(rep.totals.accepted, 5, "{rep:?}");
    assert_eq!(evs.len(), 5);
    assert!(evs.iter().all(|e| &*e.origin.format == "p2inc"));

    // The wrong secret rejects every delivery, with the same reason the live webhook gives.
    let dir2 = tempfile::tempdir().unwrap();
    let wrong = dir2.path().join("secret");
    std::fs::write(&wrong, "not-the-secret").unwrap();
    let sf = format!("webhook.auth.secret_file={:?}", wrong.display().to_string());
    let (evs, rep) = replay(dir2.path(), &["webhook.auth.mode=\"hmac\"", &sf], &[fixture("keycloak/p2inc-webhook-deliveries.jsonl")], Format::Auto).await;
    assert!(evs.is_empty());
    assert_eq!(rep.totals.rejected, 5);
    let recs = &rep.inputs[0].records;
    assert!(recs.iter().all(|r| r.reason.as_deref().unwrap().contains("signature does not match")), "{recs:?}");
    let dlq = kcaudit::dead_letter::DeadLetterStore::read_all(&dir2.path().join("dead-letter.jsonl")).unwrap();
    assert_eq!(dlq.len(), 5);
    assert!(dlq.iter().all(|d| d.stage == kcaudit::dead_letter::Stage::Auth && d.raw.is_some()));
}
