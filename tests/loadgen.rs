//! The load tool: repeatable, decodable traffic, loopback only, and its counts agree with what the
//! server wrote.

mod common;

use common::*;
use kcaudit::decode::{Decoded, Format};
use kcaudit::loadgen::{check_loopback, drive, write_file, DriveOptions, GenOptions};

#[test]
fn generated_events_are_repeatable_and_decode_cleanly() {
    for format in ["keycloak", "p2inc"] {
        let gen = GenOptions { format: format.into(), ..Default::default() };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        write_file(gen.clone(), 2000, &mut a).unwrap();
        write_file(gen, 2000, &mut b).unwrap();
        assert_eq!(a, b, "same seed, same bytes");
        let items = decode(&a, Format::Auto);
        assert_eq!(items.len(), 2000);
        let events: Vec<_> = items.iter().filter_map(|i| if let Decoded::Event(e) = &i.decoded { Some(e) } else { None }).collect();
        assert_eq!(events.len(), 2000, "{format}: every generated event decodes");
        assert!(events.iter().all(|e| e.token_exchange.is_some() && e.warnings.is_empty()));
        assert!(events.iter().any(|e| e.error.is_some()), "some errors");
        assert_eq!(&*events[0].origin.format, if format == "p2inc" { "p2inc" } else { "keycloak" });
    }
}

/// The generator writes typed structs, not `serde_json::Value`s (5 µs per event less, issue #9);
/// the lines are what the `Value` version wrote: keys in order, compact, and these exact events.
#[test]
fn generated_lines_are_the_canonical_json_of_their_events() {
    for (format, error_share) in [("keycloak", 0.02), ("keycloak", 0.5), ("p2inc", 0.02), ("p2inc", 0.5)] {
        let mut out = Vec::new();
        write_file(GenOptions { format: format.into(), error_share, clients: 7, ..Default::default() }, 500, &mut out).unwrap();
        for line in String::from_utf8(out).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v.to_string(), line, "{format}: not in key order or not compact");
        }
    }
    // The first event, or the first V1 (refresh-token) exchange.
    let first = |format: &str, error_share: f64, clients: usize, v1_only: bool| {
        let mut out = Vec::new();
        write_file(GenOptions { format: format.into(), error_share, clients, ..Default::default() }, 20, &mut out).unwrap();
        String::from_utf8(out).unwrap().lines().find(|l| !v1_only || l.contains("onrtna")).unwrap().to_string()
    };
    assert_eq!(
        first("keycloak", 0.02, 200, false),
        r#"{"clientId":"client-6","details":{"audience":"api-42","auth_method":"token_exchange","client_auth_method":"client-secret","grant_type":"urn:ietf:params:oauth:grant-type:token-exchange","requested_token_type":"urn:ietf:params:oauth:token-type:access_token","scope":"profile email","subject_token_client_id":"web-portal","token_id":"onrtte:00000007-0000-4006-85ff-000000000000","username":"user1535"},"id":"00000007-0000-4006-85ff-000000000000","ipAddress":"10.42.6.7","realmId":"4f660473-c22b-4858-a484-cd314a37e778","sessionId":"10000000-0000-4000-8000-000000001535","time":1773043084120,"type":"TOKEN_EXCHANGE","userId":"00000000-0000-4000-8000-000000001535"}"#
    );
    assert_eq!(
        first("keycloak", 0.02, 5, true),
        r#"{"clientId":"client-0","details":{"audience":"api-0","auth_method":"token_exchange","client_auth_method":"client-secret","grant_type":"urn:ietf:params:oauth:grant-type:token-exchange","requested_token_type":"urn:ietf:params:oauth:token-type:refresh_token","scope":"profile email","token_id":"onrtna:00000007-0000-4000-85ff-000000000000"},"id":"00000007-0000-4000-85ff-000000000000","ipAddress":"10.42.0.1","realmId":"4f660473-c22b-4858-a484-cd314a37e778","sessionId":"10000000-0000-4000-8000-000000001535","time":1773043084120,"type":"TOKEN_EXCHANGE","userId":"00000000-0000-4000-8000-000000001535"}"#
    );
    assert_eq!(
        first("p2inc", 1.0, 200, false),
        r#"{"authDetails":{"clientId":"client-6","ipAddress":"10.42.6.7","realmId":"acme-prod","userId":null},"details":{"audience":"api-42","auth_method":"token_exchange","client_auth_method":"client-secret","grant_type":"urn:ietf:params:oauth:grant-type:token-exchange","reason":"client not allowed to exchange to audience","requested_token_type":"urn:ietf:params:oauth:token-type:access_token","scope":"profile email","subject_token_client_id":"web-portal","token_id":"onrtte:00000007-0000-4006-85ff-000000000000","username":"user1535"},"error":"not_allowed","id":"00000007-0000-4006-85ff-000000000000","realmId":"4f660473-c22b-4858-a484-cd314a37e778","realmName":"acme-prod","time":1773043084120,"type":"access.TOKEN_EXCHANGE_ERROR","uid":"d-00000007-0000-4006-85ff-000000000000"}"#
    );
}

#[test]
fn only_loopback_targets() {
    assert!(check_loopback("http://127.0.0.1:8787/v1/events").is_ok());
    assert!(check_loopback("http://[::1]:8787/v1/events").is_ok());
    assert!(check_loopback("http://localhost:1/").is_ok());
    for bad in ["http://10.0.0.1:8787/", "http://192.168.1.5/", "https://example.com/", "not a url"] {
        assert!(check_loopback(bad).is_err(), "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drives_a_real_server_and_counts_match() {
    let dir = tempfile::tempdir().unwrap();
    let config = temp_config(dir.path(), &["webhook.listen=\"127.0.0.1:0\"", "sinks.audit_log.batch.max_wait_ms=1"]);
    let srv = kcaudit::server::start(&config).await.unwrap();
    let target = format!("http://{}/v1/events", srv.webhook_addr.unwrap());
    let batch = drive(GenOptions::default(), DriveOptions { target: target.clone(), batch: 50, connections: 4, count: 1000, max_duration: std::time::Duration::from_secs(60), rate: 0, secret: None }).await.unwrap();
    assert_eq!((batch.events_sent, batch.events_accepted, batch.requests, batch.errors), (1000, 1000, 20, 0), "{batch:?}");
    let single = drive(GenOptions { seed: 8, ..Default::default() }, DriveOptions { target, batch: 1, connections: 2, count: 100, max_duration: std::time::Duration::from_secs(60), rate: 0, secret: None }).await.unwrap();
    assert_eq!((single.requests, single.errors), (100, 0));
    assert!(single.latency_ms_p99 >= single.latency_ms_p50 && single.latency_ms_p50 > 0.0);
    srv.stop().await.unwrap();
    let written = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap().lines().count();
    assert_eq!(written, 1100, "every generated event reached the audit log");
}

/// Refused requests are errors, not throughput: their events are sent but not accepted, the rate
/// counts accepted events only, and the command exits non-zero (so a script cannot take a run full of
/// 413s for a fast one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_count_as_errors_and_fail_the_command() {
    let dir = tempfile::tempdir().unwrap();
    // Generated events are 500-800 bytes: 8 of them exceed 3,000 bytes, 2 do not.
    let config = temp_config(dir.path(), &["webhook.listen=\"127.0.0.1:0\"", "webhook.max_body_bytes=3000", "sinks.audit_log.batch.max_wait_ms=1"]);
    let srv = kcaudit::server::start(&config).await.unwrap();
    let target = format!("http://{}/v1/events", srv.webhook_addr.unwrap());
    let rep = drive(GenOptions::default(), DriveOptions { target: target.clone(), batch: 8, connections: 1, count: 18, max_duration: std::time::Duration::from_secs(60), rate: 0, secret: None }).await.unwrap();
    assert_eq!((rep.events_sent, rep.events_accepted, rep.requests, rep.errors), (18, 2, 3, 2), "{rep:?}");
    assert_eq!(rep.status_counts.get(&413), Some(&2), "{rep:?}");
    assert!(rep.events_per_sec > 0.0 && rep.events_per_sec <= 2.0 / rep.seconds + 1e-9, "{rep:?}");

    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_kcaudit"))
            .args(["loadgen", "--target", &target, "--count", "18", "--batch", "8", "--connections", "1"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("2 of 3 requests failed (2 of 18 events accepted)"), "stderr: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the report is still printed");
    assert_eq!(report["events_accepted"], 2);
    srv.stop().await.unwrap();
    let written = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap().lines().count();
    // The command sent the same events again (same seed): the two it got accepted were duplicates.
    assert_eq!(written, 2, "only the accepted events reached the audit log");
}
