//! Enrichment from directory snapshots and realm exports: resolution, misses that never block,
//! reloads, and the exchange-policy verdict.

mod common;

use std::path::Path;

use common::*;
use kcaudit::decode::Format;
use kcaudit::event::{AuditEvent, EnrichmentStatus, ExchangeFlavour, Within};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

async fn enriched(sets: &[&str], input: &str) -> Vec<AuditEvent> {
    let dir = tempfile::tempdir().unwrap();
    let (evs, rep) = replay(dir.path(), sets, &[fixture(input)], Format::Auto).await;
    assert_eq!(rep.totals.rejected, 0);
    evs
}

fn snapshot_set() -> String {
    format!("enrich.directory={:?}", fixture("keycloak/admin-api").display().to_string())
}

#[tokio::test]
async fn every_token_exchange_is_resolved_from_the_snapshot() {
    let evs = enriched(&[&snapshot_set()], "keycloak/keycloak-native-events.jsonl").await;
    let te: Vec<&AuditEvent> = evs.iter().filter(|e| e.token_exchange.is_some()).collect();
    assert!(te.len() > 30);
    for e in &te {
        let en = e.enrichment.as_ref().unwrap();
        let x = en.exchanger.as_ref().unwrap_or_else(|| panic!("exchanger of {} resolved", e.id));
        assert_eq!(Some(x.client_id.as_str()), e.client_id.as_deref());
        let expected_realm = if e.realm.id.as_deref() == Some("4f660473-c22b-4858-a484-cd314a37e778") { "acme-prod" } else { "acme-partners" };
        assert_eq!(e.realm.name.as_deref(), Some(expected_realm), "the REST format has no realm name; enrichment fills it");
        if e.subject.id.is_some() {
            let s = en.subject.as_ref().unwrap_or_else(|| panic!("subject of {} resolved", e.id));
            assert!(s.username.is_some());
            assert_eq!(s.service_account, s.username.as_deref().unwrap().starts_with("service-account-"));
            assert_eq!(s.privileged, s.username.as_deref() == Some("ops.admin"), "{:?}", s);
        }
        let te = e.token_exchange.as_ref().unwrap();
        assert_eq!(en.audiences.len(), te.audiences.len());
        for a in &en.audiences {
            assert_eq!(a.known, Some(a.client.is_some()));
        }
        if te.flavour == ExchangeFlavour::StandardV2 {
            let stc = en.subject_token_client.as_ref().unwrap_or_else(|| panic!("subject-token client of {} resolved", e.id));
            assert_eq!(Some(stc.client_id.as_str()), te.subject_token_client_id.as_deref());
        }
        assert_eq!(en.status, EnrichmentStatus::Enriched, "{}: {:?}", e.id, en.misses);
    }
    // Specific facts an analyst relies on.
    let s3 = te.iter().find(|e| e.id == "8103771d-fd89-4b0d-b38d-539594fc64eb").unwrap();
    let en = s3.enrichment.as_ref().unwrap();
    assert_eq!(en.subject.as_ref().unwrap().privileged_reason.as_deref(), Some("attribute privileged=true"));
    assert_eq!(en.impersonator.as_ref().unwrap().username.as_deref(), Some("sam.ortiz"));
    let s1 = te.iter().find(|e| e.id == "da217bd6-ce7c-410b-8a2f-18233ba504da").unwrap();
    let hr = s1.enrichment.as_ref().unwrap().audiences[0].client.as_ref().unwrap();
    assert_eq!(hr.description.as_deref(), Some("PII: employee records, payroll"));
    assert_eq!(s1.enrichment.as_ref().unwrap().exchanger.as_ref().unwrap().token_exchange, "standard_v2");
    // Probing for audiences that do not exist is recorded, and is outside any policy.
    let probe = te.iter().find(|e| e.token_exchange.as_ref().unwrap().audiences == ["vault-api"]).unwrap();
    let en = probe.enrichment.as_ref().unwrap();
    assert_eq!(en.audiences[0].known, Some(false));
    assert_eq!(en.policy.as_ref().unwrap().within_policy, Within::No);
}

#[tokio::test]
async fn admin_events_resolve_the_acting_administrator() {
    let evs = enriched(&[&snapshot_set()], "keycloak/keycloak-native-admin-events.jsonl").await;
    // n43: ops.admin acting through support-console in acme-prod.
    let e = evs.iter().find(|e| e.id == "9e47220e-774b-4eb9-adff-8f99481fdd18").unwrap();
    let en = e.enrichment.as_ref().unwrap();
    assert_eq!(en.exchanger.as_ref().unwrap().client_id, "support-console");
    assert_eq!(en.subject.as_ref().unwrap().username.as_deref(), Some("ops.admin"));
    assert!(en.subject.as_ref().unwrap().privileged);
}

#[tokio::test]
async fn misses_never_block_the_event() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        concat!(
            r#"{"id":"m1","time":1773043084120,"type":"TOKEN_EXCHANGE","realmId":"4f660473-c22b-4858-a484-cd314a37e778","clientId":"api-gateway","userId":"deleted-user","details":{"audience":"orders-api","subject_token_client_id":"web-portal","username":"ghost"}}"#,
            "\n",
            r#"{"id":"m2","time":1773043084120,"type":"TOKEN_EXCHANGE","realmId":"no-such-realm","clientId":"api-gateway","details":{"audience":"orders-api"}}"#,
            "\n"
        ),
    )
    .unwrap();
    let (evs, rep) = replay(dir.path(), &[&snapshot_set()], &[input], Format::Auto).await;
    assert_eq!(rep.totals.accepted, 2);
    let m1 = evs[0].enrichment.as_ref().unwrap();
    assert_eq!(m1.status, EnrichmentStatus::Partial);
    assert!(m1.misses[0].contains("deleted-user"), "{:?}", m1.misses);
    assert!(m1.exchanger.is_some());
    let m2 = evs[1].enrichment.as_ref().unwrap();
    assert_eq!(m2.status, EnrichmentStatus::NotEnriched);
    assert!(m2.misses[0].contains("no-such-realm"));
}

#[tokio::test]
async fn the_snapshot_reloads_when_its_files_change() {
    use kcaudit::directory::{DirectoryHandle, DirectorySpec};
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap");
    copy_dir(&fixture("keycloak/admin-api"), &snap);
    let h = DirectoryHandle::open(DirectorySpec::Snapshot(snap.clone()), std::time::Duration::ZERO).unwrap();
    let realm = |h: &DirectoryHandle, user: &str| h.get().realm("acme-prod").unwrap().user_by_username(user).is_some();
    assert!(!realm(&h, "new.hire"));
    let users_path = snap.join("acme-prod.users.json");
    let mut users: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&users_path).unwrap()).unwrap();
    users.as_array_mut().unwrap().push(serde_json::json!({"id": "nh-1", "username": "new.hire", "enabled": true}));
    std::fs::write(&users_path, serde_json::to_string(&users).unwrap()).unwrap();
    assert!(realm(&h, "new.hire"), "reloaded after the change");
    // A broken file keeps the last good directory.
    std::fs::write(&users_path, "[{\"id\": ").unwrap();
    assert!(realm(&h, "new.hire"), "a half-written snapshot does not empty the directory");
    assert!(realm(&h, "alice.nguyen"));
}

#[tokio::test]
async fn exchange_policy_from_a_realm_export() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let line = |id: &str, client: &str, aud: &str| {
        format!(
            r#"{{"id":"{id}","time":1773043084120,"type":"TOKEN_EXCHANGE","realmId":"4f660473-c22b-4858-a484-cd314a37e778","clientId":"{client}","userId":"cd3adec8-6fdc-414d-9093-31ddbb37ec99","details":{{"audience":"{aud}","subject_token_client_id":"web-portal","username":"alice.nguyen"}}}}"#
        )
    };
    std::fs::write(
        &input,
        [line("p1", "api-gateway", "orders-api"), line("p2", "api-gateway", "orders-api billing-api"), line("p3", "api-gateway", "hr-records-api"), line("p4", "portal-bff", "hr-records-api")].join("\n"),
    )
    .unwrap();
    let export = format!("enrich.realm_exports=[{:?}]", fixture("enrich/policy-realm.json").display().to_string());
    let (evs, _) = replay(dir.path(), &[&export, "enrich.user_attributes=[\"department\"]"], &[input], Format::Auto).await;
    let verdict = |i: usize| evs[i].enrichment.as_ref().unwrap().policy.clone().unwrap();
    assert_eq!(verdict(0).within_policy, Within::Yes, "{:?}", verdict(0));
    assert_eq!(verdict(1).within_policy, Within::Yes, "own mapper plus client-scope mapper");
    let no = verdict(2);
    assert_eq!(no.within_policy, Within::No, "{no:?}");
    assert!(no.reason.contains("grant only billing-api, orders-api") && no.reason.contains("hr-records-api"), "{}", no.reason);
    assert_eq!(verdict(3).within_policy, Within::Unknown, "role-based audiences cannot be read from configuration");
    let subject = evs[0].enrichment.as_ref().unwrap().subject.as_ref().unwrap();
    assert_eq!(subject.attributes.get("department").map(|v| v.as_slice()), Some(&["sales".to_string()][..]));
    assert!(!subject.privileged);
}

#[tokio::test]
async fn legacy_v1_permissions_from_a_realm_export() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let ev = |id: &str, client: &str, aud: &str| {
        format!(r#"{{"id":"{id}","time":1773043084120,"type":"TOKEN_EXCHANGE","realmId":"acme-legacy","clientId":"{client}","details":{{"audience":"{aud}","requested_token_type":"urn:ietf:params:oauth:token-type:refresh_token"}}}}"#)
    };
    std::fs::write(&input, [ev("v1", "stock-sync", "inventory-api"), ev("v2", "stock-sync", "partner-gateway")].join("\n")).unwrap();
    let export = format!("enrich.realm_exports=[{:?}]", fixture("realm-audit/te009-legacy-v1.json").display().to_string());
    let (evs, _) = replay(dir.path(), &[&export], &[input], Format::Auto).await;
    let en0 = evs[0].enrichment.as_ref().unwrap();
    assert_eq!(en0.exchanger.as_ref().unwrap().token_exchange, "legacy_v1");
    assert_eq!(en0.audiences[0].client.as_ref().unwrap().token_exchange, "none");
    assert_eq!(en0.policy.as_ref().unwrap().within_policy, Within::Yes, "{:?}", en0.policy);
    let p1 = evs[1].enrichment.as_ref().unwrap().policy.clone().unwrap();
    assert_eq!(p1.within_policy, Within::No, "{p1:?}");
    assert!(p1.reason.contains("partner-gateway"));

    // Impersonation: granted to support-console by an FGAP v1 Users permission, to nobody else.
    let input = dir.path().join("imp.jsonl");
    let imp = |id: &str, client: &str| {
        format!(r#"{{"id":"{id}","time":1773043084120,"type":"TOKEN_EXCHANGE","realmId":"acme-support","clientId":"{client}","details":{{"audience":"{client}","requested_subject":"someone"}}}}"#)
    };
    let realm_name: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("realm-audit/te006-impersonation.json")).unwrap()).unwrap();
    let realm_name = realm_name["realm"].as_str().unwrap().to_string();
    std::fs::write(&input, [imp("i1", "support-console"), imp("i2", "helpdesk-bot")].join("\n").replace("acme-support", &realm_name)).unwrap();
    let export = format!("enrich.realm_exports=[{:?}]", fixture("realm-audit/te006-impersonation.json").display().to_string());
    let (evs, _) = replay(dir.path(), &[&export, "dedup.enabled=false"], &[input], Format::Auto).await;
    let verdict = |i: usize| evs[i].enrichment.as_ref().unwrap().policy.clone().unwrap();
    assert_eq!(verdict(0).within_policy, Within::Yes, "{:?}", verdict(0));
    assert_eq!(verdict(1).within_policy, Within::No, "{:?}", verdict(1));
}
