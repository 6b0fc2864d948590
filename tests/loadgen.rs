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
