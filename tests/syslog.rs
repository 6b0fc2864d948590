//! The syslog sink against a real rsyslog (Debian's rsyslog, rsyslog-gnutls, rsyslog-relp) on
//! loopback: every transport and payload delivers the fixture timeline byte for byte; RELP rides out
//! a 30-second outage without losing an event; plain TCP's loss window is measured.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::clickhouse::fixture_events;
use common::services::{Rsyslog, TestPki};
use kcaudit::decode::{Decoded, Item};
use kcaudit::event::AuditEvent;
use kcaudit::pipeline::BatchReport;
use kcaudit::sinks::syslog::{formatter, Framing, MessageFormat, Payload, SyslogOptions, SyslogSink, Transport};
use kcaudit::sinks::{BatchOptions, RetryOptions, Sink};

fn options(transport: Transport, port: u16, pki: &TestPki) -> SyslogOptions {
    let mut o = SyslogOptions { enabled: true, transport, address: format!("127.0.0.1:{port}"), hostname: Some("kc-audit-test".into()), max_message_bytes: 60_000, ..Default::default() };
    if transport == Transport::Tls {
        o.tls.ca_file = Some(pki.path("ca.crt"));
    }
    o
}

/// Write events straight through the sink (no pipeline) and return the messages it should produce.
async fn send(o: &SyslogOptions, events: &[AuditEvent]) -> Vec<String> {
    let f = formatter(o);
    let mut sink = SyslogSink::new("syslog", o, f.clone()).unwrap();
    let arcs: Vec<Arc<AuditEvent>> = events.iter().cloned().map(Arc::new).collect();
    for chunk in arcs.chunks(20) {
        let r = sink.write(chunk).await.expect("delivered");
        assert!(r.rejected.is_empty() && r.retry.is_empty(), "{r:?}");
    }
    sink.close().await.unwrap();
    events.iter().flat_map(|e| f(e)).map(|m| String::from_utf8(m).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_and_payload_arrives_byte_for_byte() {
    let pki = TestPki::generate();
    let Some(rs) = Rsyslog::start(&pki) else { return };
    let events = fixture_events().await;
    let cases: Vec<(&str, SyslogOptions)> = vec![
        ("udp", SyslogOptions { format: MessageFormat::Rfc3164, payload: Payload::Cef, ..options(Transport::Udp, rs.udp, &pki) }),
        ("tcp", SyslogOptions { payload: Payload::Json, ..options(Transport::Tcp, rs.tcp, &pki) }),
        ("tls", SyslogOptions { payload: Payload::Cef, ..options(Transport::Tls, rs.tls, &pki) }),
        ("relp", SyslogOptions { payload: Payload::Ocsf, ..options(Transport::Relp, rs.relp, &pki) }),
    ];
    for (input, o) in &cases {
        let want = send(o, &events).await;
        assert!(want.len() >= events.len());
        let got = rs.wait_for(input, want.len(), 20);
        assert_eq!(got.len(), want.len(), "{input}: message count");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w, "{input}: rsyslog received exactly what kcaudit framed");
        }
    }
    // LF framing (for receivers without octet counting) into the same TCP input, LEEF payload.
    let before = rs.lines("tcp").len();
    let o = SyslogOptions { framing: Framing::NonTransparent, payload: Payload::Leef, ..options(Transport::Tcp, rs.tcp, &pki) };
    let want = send(&o, &events).await;
    let got = rs.wait_for("tcp", before + want.len(), 20);
    assert_eq!(&got[before..], &want[..], "LF-framed LEEF");
}

/// `n` generated events as pipeline items, with their ids.
fn generated(seed: u64, n: u64) -> (Vec<Item>, HashSet<String>) {
    let items = common::sink_run::generated(seed, n);
    let ids = items.iter().filter_map(|i| if let Decoded::Event(e) = &i.decoded { Some(e.id.clone()) } else { None }).collect();
    (items, ids)
}

/// The event ids in the messages an input received (JSON payload: the first `"id":"…"`).
fn received_ids(lines: &[String]) -> Vec<String> {
    lines.iter().filter_map(|l| l.split_once("\"id\":\"").and_then(|(_, r)| r.split_once('"')).map(|(id, _)| id.to_string())).collect()
}

/// Stream `items` through a pipeline at a steady pace (`per_tick` every 20 ms) into a syslog sink,
/// stop rsyslog `stop_after` into the run for `outage`, then start it again. Returns every report.
async fn stream_with_outage(rs: &mut Rsyslog, o: SyslogOptions, items: Vec<Item>, per_tick: usize, stop_after: Duration, outage: Duration) -> Vec<BatchReport> {
    let run = common::sink_run::start_sink(Box::new(SyslogSink::new("syslog", &o, formatter(&o)).unwrap()), &o.batch, &o.retry);
    let h = run.pipeline.handle();
    let pusher = tokio::spawn(async move {
        let mut pending = Vec::new();
        let mut items = items;
        while !items.is_empty() {
            let rest = items.split_off(items.len().min(per_tick));
            pending.push(h.submit(std::mem::replace(&mut items, rest), "test", false).await.unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut out = Vec::new();
        for rx in pending {
            out.push(rx.await.unwrap().unwrap());
        }
        out
    });
    tokio::time::sleep(stop_after).await;
    rs.stop();
    tokio::time::sleep(outage).await;
    rs.resume();
    let reports = pusher.await.unwrap();
    run.pipeline.shutdown().await;
    reports
}

fn relp_or_tcp(transport: Transport, rs: &Rsyslog, pki: &TestPki) -> SyslogOptions {
    let port = if transport == Transport::Relp { rs.relp } else { rs.tcp };
    SyslogOptions {
        batch: BatchOptions { max_events: 100, max_wait_ms: 20, queue_capacity: 1000 },
        retry: RetryOptions { max_attempts: 10_000, initial_backoff_ms: 100, max_backoff_ms: 1000 },
        timeout_ms: 2000,
        ..options(transport, port, pki)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relp_loses_nothing_when_rsyslog_is_down_for_30_seconds() {
    let pki = TestPki::generate();
    let Some(mut rs) = Rsyslog::start(&pki) else { return };
    let (items, ids) = generated(31, 6000);
    let o = relp_or_tcp(Transport::Relp, &rs, &pki);
    let reports = stream_with_outage(&mut rs, o, items, 25, Duration::from_secs(2), Duration::from_secs(30)).await;
    let delivered: usize = reports.iter().flat_map(|r| &r.items).filter(|i| i.event_id.is_some() && i.dead_lettered.is_empty() && i.failed.is_empty()).count();
    assert_eq!(delivered, ids.len(), "every event acknowledged as delivered");
    let got = rs.wait_for("relp", ids.len(), 30);
    let seen: HashSet<String> = received_ids(&got).into_iter().collect();
    let missing: Vec<&String> = ids.iter().filter(|id| !seen.contains(*id)).collect();
    assert!(missing.is_empty(), "{} of {} events never reached rsyslog over RELP, e.g. {:?}", missing.len(), ids.len(), &missing[..missing.len().min(3)]);
    eprintln!("RELP: {} messages written for {} events ({} duplicates from re-sent unanswered messages)", got.len(), ids.len(), got.len() - ids.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_loss_window_is_measured() {
    let pki = TestPki::generate();
    let Some(mut rs) = Rsyslog::start(&pki) else { return };
    let (items, ids) = generated(32, 3000);
    let o = relp_or_tcp(Transport::Tcp, &rs, &pki);
    let reports = stream_with_outage(&mut rs, o, items, 25, Duration::from_secs(2), Duration::from_secs(5)).await;
    let delivered: usize = reports.iter().flat_map(|r| &r.items).filter(|i| i.event_id.is_some() && i.dead_lettered.is_empty() && i.failed.is_empty()).count();
    assert_eq!(delivered, ids.len(), "TCP reports every event delivered (it cannot know better)");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen: HashSet<String> = received_ids(&rs.lines("tcp")).into_iter().collect();
    let lost = ids.iter().filter(|id| !seen.contains(*id)).count();
    eprintln!("plain TCP: {lost} of {} events reported delivered never reached rsyslog across a stop/start", ids.len());
    // The window is bounded: what was in flight when rsyslog stopped (socket buffers and one batch),
    // not the outage (kcaudit notices the closed connection and waits for the receiver).
    assert!(lost <= 2 * 100 + 50, "loss window larger than in-flight data: {lost}");
}
