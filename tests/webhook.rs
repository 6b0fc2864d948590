//! The webhook over real HTTP on loopback: signatures, batches, gzip, limits, concurrency, dedup,
//! and the acknowledgement contract (the response comes after the audit log has the events).

mod common;

use std::io::Write;
use std::path::Path;

use common::*;
use kcaudit::dead_letter::{DeadLetterStore, Stage};
use kcaudit::server::{self, Running};
use serde_json::Value;

const SECRET: &str = "public-fixture-secret-3f9c";

async fn start(dir: &Path, sets: &[&str]) -> Running {
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let sf = format!("webhook.auth.secret_file={:?}", secret_file.display().to_string());
    let mut all = vec!["webhook.listen=\"127.0.0.1:0\"", "webhook.auth.mode=\"hmac\"", sf.as_str(), "sinks.audit_log.batch.max_wait_ms=1"];
    all.extend_from_slice(sets);
    let config = temp_config(dir, &all);
    server::start(&config).await.expect("server starts")
}

/// The recorded deliveries: (headers, body).
fn deliveries() -> Vec<(Vec<(String, String)>, String)> {
    std::fs::read_to_string(fixture("keycloak/p2inc-webhook-deliveries.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let headers = v["headers"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect();
            (headers, v["body"].as_str().unwrap().to_string())
        })
        .collect()
}

fn audit_lines(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("audit.jsonl")).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

async fn post(url: &str, headers: &[(String, String)], body: Vec<u8>) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(url).body(body);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn recorded_delivery_is_accepted_and_in_the_audit_log_before_the_response() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), &[]).await;
    let url = format!("http://{}/v1/events", srv.webhook_addr.unwrap());
    let (headers, body) = deliveries().remove(1);
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"].as_str().unwrap().to_string();
    let (status, resp) = post(&url, &headers, body.clone().into_bytes()).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!((resp["accepted"].as_u64(), resp["rejected"].as_u64()), (Some(1), Some(0)));
    // The acknowledgement contract: the event is durably in the audit log when the 2xx arrives.
    let log = audit_lines(dir.path());
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["id"], id.as_str());
    assert!(log[0]["received_at"].is_string());
    assert_eq!(log[0]["origin"]["request_id"], resp["request_id"]);

    // A retry of the same delivery is a duplicate, still 2xx, and not written twice.
    let (status, resp) = post(&url, &headers, body.into_bytes()).await;
    assert_eq!(status, 200);
    assert_eq!(resp["duplicates"].as_u64(), Some(1));
    assert_eq!(audit_lines(dir.path()).len(), 1);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn signatures_tampered_missing_uppercase() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), &[]).await;
    let url = format!("http://{}/v1/events", srv.webhook_addr.unwrap());
    let (headers, body) = deliveries().remove(0);

    let tampered = body.replace("203.0.113.66", "192.0.2.99");
    let (status, resp) = post(&url, &headers, tampered.clone().into_bytes()).await;
    assert_eq!(status, 401, "{resp}");
    assert!(resp["error"].as_str().unwrap().contains("signature does not match"));

    let no_sig: Vec<_> = headers.iter().filter(|(k, _)| k != "X-Keycloak-Signature").cloned().collect();
    let (status, _) = post(&url, &no_sig, body.clone().into_bytes()).await;
    assert_eq!(status, 401);

    let upper: Vec<_> = headers.iter().map(|(k, v)| if k == "X-Keycloak-Signature" { (k.clone(), v.to_uppercase()) } else { (k.clone(), v.clone()) }).collect();
    let (status, resp) = post(&url, &upper, body.into_bytes()).await;
    assert_eq!(status, 200, "uppercase hex is the same signature: {resp}");

    // The tampered body is in the dead-letter store, verbatim, with the reason.
    let dlq = DeadLetterStore::read_all(&dir.path().join("dead-letter.jsonl")).unwrap();
    let auth: Vec<_> = dlq.iter().filter(|d| d.stage == Stage::Auth).collect();
    assert_eq!(auth.len(), 2);
    assert_eq!(auth[0].raw.as_deref(), Some(tampered.as_str()));
    assert!(auth[0].reason.contains("signature does not match"));
    assert!(auth[1].reason.contains("missing X-Keycloak-Signature"));
    assert_eq!(audit_lines(dir.path()).len(), 1, "only the valid delivery reached the audit log");
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn batch_bodies_array_ndjson_and_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), &["webhook.auth.mode=\"none\""]).await;
    let url = format!("http://{}/v1/events", srv.webhook_addr.unwrap());
    let ndjson = std::fs::read_to_string(fixture("keycloak/keycloak-kafka-events.jsonl")).unwrap();
    let (status, resp) = post(&url, &[], ndjson.clone().into_bytes()).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["accepted"].as_u64(), Some(65));

    let array = std::fs::read(fixture("keycloak/keycloak-rest-events-page.json")).unwrap();
    let (status, resp) = post(&format!("{url}/keycloak"), &[], array).await;
    assert_eq!(status, 200);
    assert_eq!((resp["received"].as_u64(), resp["duplicates"].as_u64()), (Some(16), Some(16)), "same ids as the kafka batch: {resp}");

    let p2 = std::fs::read_to_string(fixture("keycloak/p2inc-webhook.jsonl")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(p2.as_bytes()).unwrap();
    let (status, resp) = post(&url, &[("Content-Encoding".into(), "gzip".into())], gz.finish().unwrap()).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!((resp["received"].as_u64(), resp["accepted"].as_u64(), resp["duplicates"].as_u64()), (Some(67), Some(2), Some(65)));
    assert_eq!(audit_lines(dir.path()).len(), 67);

    // A mixed batch: one good record, one truncated; the good one is kept, the bad one explained.
    let mixed = r#"{"id":"m1","time":1773043084120,"type":"LOGIN","realmId":"r","clientId":"c"}
{"id":"m2","time":17730"#;
    let (status, resp) = post(&url, &[], mixed.as_bytes().to_vec()).await;
    assert_eq!(status, 200);
    assert_eq!(resp["rejections"][0]["line"].as_u64(), Some(2));
    assert!(resp["rejections"][0]["reason"].as_str().unwrap().starts_with("truncated JSON"));

    // Nothing decodable: 400, and the record is dead-lettered.
    let (status, resp) = post(&url, &[], b"definitely not an event".to_vec()).await;
    assert_eq!(status, 400, "{resp}");
    let (status, _) = post(&format!("{url}/no-such-format"), &[], b"{}".to_vec()).await;
    assert_eq!(status, 404);
    let dlq = DeadLetterStore::read_all(&dir.path().join("dead-letter.jsonl")).unwrap();
    assert_eq!(dlq.iter().filter(|d| d.stage == Stage::Decode).count(), 2);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn oversize_and_decompression_bombs_get_413() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), &["webhook.auth.mode=\"none\"", "webhook.max_body_bytes=4096", "webhook.max_decompressed_bytes=8192"]).await;
    let url = format!("http://{}/v1/events", srv.webhook_addr.unwrap());
    let (status, _) = post(&url, &[], vec![b' '; 5000]).await;
    assert_eq!(status, 413);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![b' '; 1_000_000]).unwrap();
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 4096);
    let (status, resp) = post(&url, &[("Content-Encoding".into(), "gzip".into())], bomb).await;
    assert_eq!(status, 413, "{resp}");
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn concurrent_senders_lose_nothing_and_counts_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), &["webhook.auth.mode=\"bearer\""]).await;
    let url = format!("http://{}/v1/events", srv.webhook_addr.unwrap());
    let senders: usize = 16;
    let per_sender: usize = 25;
    let mut tasks = Vec::new();
    for s in 0..senders {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut accepted = 0;
            for i in 0..per_sender {
                let body = format!(r#"{{"id":"s{s}-e{i}","time":{},"type":"TOKEN_EXCHANGE","realmId":"r","clientId":"c{s}","userId":"u{i}","details":{{"audience":"a"}}}}"#, 1773043084120u64 + i as u64);
                loop {
                    let r = client.post(&url).bearer_auth(SECRET).body(body.clone()).send().await.unwrap();
                    match r.status().as_u16() {
                        200 => {
                            let v: Value = r.json().await.unwrap();
                            accepted += v["accepted"].as_u64().unwrap();
                            break;
                        }
                        503 => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                        other => panic!("unexpected status {other}"),
                    }
                }
            }
            accepted
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, (senders * per_sender) as u64);
    let log = audit_lines(dir.path());
    assert_eq!(log.len(), senders * per_sender);
    let ids: std::collections::HashSet<_> = log.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), senders * per_sender, "no event written twice");

    // A wrong token is refused.
    let r = reqwest::Client::new().post(&url).bearer_auth("nope").body("{}").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // The metrics agree with what was sent.
    let metrics = reqwest::get(format!("http://{}/metrics", srv.webhook_addr.unwrap())).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("kcaudit_events_accepted_total 400"), "{metrics}");
    assert!(metrics.contains(r#"kcaudit_events_delivered_total{sink="audit_log"} 400"#));
    assert!(metrics.contains("kcaudit_webhook_request_duration_seconds_bucket"));
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn health_readiness_and_method_checks() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), &["webhook.auth.mode=\"none\""]).await;
    let base = format!("http://{}", srv.webhook_addr.unwrap());
    assert_eq!(reqwest::get(format!("{base}/healthz")).await.unwrap().status().as_u16(), 200);
    assert_eq!(reqwest::get(format!("{base}/readyz")).await.unwrap().status().as_u16(), 200);
    assert_eq!(reqwest::get(format!("{base}/v1/events")).await.unwrap().status().as_u16(), 405);
    assert_eq!(reqwest::get(format!("{base}/elsewhere")).await.unwrap().status().as_u16(), 404);
    let handle = srv.pipeline.clone();
    handle.begin_shutdown();
    assert_eq!(reqwest::get(format!("{base}/readyz")).await.unwrap().status().as_u16(), 503);
    let r = reqwest::Client::new().post(format!("{base}/v1/events")).body("{}").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503, "shutting down: the sender must retry");
    assert!(r.headers().get("retry-after").is_some());
    drop(handle);
    srv.stop().await.unwrap();
}
