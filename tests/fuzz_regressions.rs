//! Fuzzing, on stable: every crash the fuzzers found, every seed they start from, and a set of hostile
//! inputs, through the same checks the fuzz targets run (`fuzz/src/lib.rs`, included below).
//!
//! - `tests/fixtures/fuzz/<target>-<name>`: minimised crash inputs, one per bug found (see
//!   `fuzz/README.md`); replayed through `run_target(<target>, bytes)`.
//! - `fuzz/corpus/<target>/`: the seed corpora (regenerate with
//!   `cargo test --test fuzz_regressions -- --ignored write_seed_corpus`).

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::*;
use kcaudit::decode::{DecodeOptions, Format};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// `webhook-bad-gzip` → `webhook`, `keycloak_kafka-deep` → `keycloak_kafka`.
fn target_of(file: &Path) -> &'static str {
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    TARGETS
        .iter()
        .filter(|t| name.starts_with(&format!("{t}-")))
        .max_by_key(|t| t.len())
        .unwrap_or_else(|| panic!("{}: name must start with one of {TARGETS:?} and a '-'", file.display()))
}

#[test]
fn saved_fuzz_crashes_stay_fixed() {
    let dir = root().join("tests/fixtures/fuzz");
    let mut n = 0;
    for f in files(&dir) {
        if f.extension().is_some_and(|e| e == "md") {
            continue;
        }
        let data = std::fs::read(&f).unwrap();
        let target = target_of(&f);
        // libFuzzer's -timeout is 10 s in release; a debug build gets some slack.
        within(Duration::from_secs(30), &f.display().to_string(), move || run_target(target, &data));
        n += 1;
    }
    assert!(n >= 2, "the saved crash inputs are missing from {}", dir.display());
}

/// Run `f` on another thread; fail (instead of hanging the suite) if it takes longer than `limit`.
fn within(limit: Duration, what: &str, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    let started = Instant::now();
    let h = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(limit) {
        Ok(()) => h.join().unwrap(),
        // The sender dropped without sending: the thread panicked; re-raise its panic.
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => std::panic::resume_unwind(h.join().unwrap_err()),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("{what}: still running after {:?} (a hang)", started.elapsed()),
    }
}

#[test]
fn seed_corpora_pass_every_check() {
    let mut n = 0;
    for t in TARGETS {
        let dir = root().join("fuzz/corpus").join(t);
        let seeds = files(&dir);
        assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
        for f in seeds {
            run_target(t, &std::fs::read(&f).unwrap());
            n += 1;
        }
    }
    assert!(n > 50, "only {n} seeds");
}

#[test]
fn seeds_decode_to_events() {
    // The seeds are real deliveries: each decoder target must find events in its own seeds.
    for t in TARGETS.iter().filter(|t| target_format(t).is_some()) {
        let format = target_format(t).unwrap();
        let mut events = 0;
        for f in files(&root().join("fuzz/corpus").join(t)) {
            // (Recorded deliveries decode to events only when replayed, with the route table.)
            events += check_decode_with(format, &std::fs::read(&f).unwrap(), &DecodeOptions::default()).replayed_events;
        }
        assert!(events > 0, "the {t} seeds decode to no events");
    }
}

#[test]
fn webhook_seeds_are_accepted() {
    let mut ok = 0;
    for f in files(&root().join("fuzz/corpus/webhook")) {
        let plan = WebhookPlan::parse(&std::fs::read(&f).unwrap());
        if let Some(a) = check_plan(&plan) {
            if a.status == 200 {
                ok += 1;
            }
        }
    }
    assert!(ok >= 5, "only {ok} webhook seeds got 200");
}

// -------------------------------------------------------------------------------------------------
// Hostile inputs, through every format, with the default (production) limits.
// -------------------------------------------------------------------------------------------------

const EVENT: &str = r#"{"id":"e1","time":1773043084120,"type":"TOKEN_EXCHANGE","realmId":"r","clientId":"c","userId":"u","details":{"audience":"a","subject_token_client_id":"w"}}"#;

fn every_format(data: &[u8]) -> Vec<(Format, Summary)> {
    let opts = DecodeOptions::default();
    Format::ALL
        .iter()
        .map(|&f| {
            let started = Instant::now();
            let s = check_decode_with(f, data, &opts);
            assert!(started.elapsed() < Duration::from_secs(20), "{f}: {} bytes took {:?}", data.len(), started.elapsed());
            (f, s)
        })
        .collect()
}

fn assert_nothing_accepted(what: &str, data: &[u8]) {
    for (f, s) in every_format(data) {
        assert_eq!(s.events, 0, "{what} ({f}): decoded to an event");
        assert!(s.rejected + s.skipped >= 1, "{what} ({f}): no item");
    }
}

#[test]
fn hostile_deeply_nested_json() {
    let depth = 100_000;
    let arrays = "[".repeat(depth) + &"]".repeat(depth);
    assert_nothing_accepted("100k nested arrays", arrays.as_bytes());
    let objects = r#"{"a":"#.repeat(depth) + "1" + &"}".repeat(depth);
    assert_nothing_accepted("100k nested objects", objects.as_bytes());
    let unclosed = "[{\"a\":".repeat(depth);
    assert_nothing_accepted("100k unclosed", unclosed.as_bytes());
    // Nesting inside an otherwise valid event: deep is refused, shallow is kept as a detail's JSON.
    let deep_detail = format!(r#"{{"type":"LOGIN","time":1773043084120,"details":{{"x":{}1{}}}}}"#, "[".repeat(depth), "]".repeat(depth));
    assert_nothing_accepted("deep detail", deep_detail.as_bytes());
    let shallow = format!(r#"{{"type":"LOGIN","time":1773043084120,"details":{{"x":{}1{}}}}}"#, "[".repeat(50), "]".repeat(50));
    let s = check_decode_with(Format::Keycloak, shallow.as_bytes(), &DecodeOptions::default());
    assert_eq!(s.events, 1);
}

#[test]
fn hostile_ten_megabyte_lines() {
    let big = 10 * 1024 * 1024;
    // One 10 MB JSON event: over decode.max_record_bytes, rejected with that reason (never parsed).
    let event = format!(r#"{{"type":"LOGIN","details":{{"x":"{}"}}}}"#, "a".repeat(big));
    for (f, s) in every_format(event.as_bytes()) {
        assert_eq!((s.events, s.rejected), (0, 1), "{f}");
    }
    let line = "x".repeat(big);
    for (f, s) in every_format(line.as_bytes()) {
        assert_eq!((s.events, s.rejected + s.skipped), (0, 1), "{f}");
    }
    // A log line just under the limit: parsed (linearly), no event, an answer.
    let log = format!("2026-03-09 07:58:04,120 WARN  [org.keycloak.events] (executor-thread-1) type=\"LOGIN\", realmId=\"{}\"", "\\\"".repeat(1_000_000));
    let s = check_decode_with(Format::JbossLogging, log.as_bytes(), &DecodeOptions::default());
    assert_eq!(s.items(), 1);
    // Many short lines (10 MB of them) and many blank lines.
    let lines = format!("{EVENT}\n").repeat(big / (EVENT.len() + 1));
    let s = check_decode_with(Format::Keycloak, lines.as_bytes(), &DecodeOptions::default());
    assert_eq!(s.events, big / (EVENT.len() + 1));
}

#[test]
fn hostile_blank_lines_are_linear() {
    // 200k blank lines: once quadratic (every blank line re-counted all lines of the body).
    within(Duration::from_secs(30), "200k blank lines", || {
        // (Above decode.max_records_per_body's default: this is about time; tests/bad_input.rs covers the cap.)
        let uncapped = DecodeOptions { max_records_per_body: 1_000_000, ..Default::default() };
        let s = check_decode_with(Format::Auto, "\n".repeat(200_000).as_bytes(), &uncapped);
        assert_eq!((s.events, s.skipped), (0, 200_000));
        let body = format!("{EVENT}\n{}\n{EVENT}\n", "\r\n \t\n".repeat(100_000));
        let s = check_decode_with(Format::Keycloak, body.as_bytes(), &uncapped);
        assert_eq!(s.events, 2);
    });
}

#[test]
fn hostile_invalid_utf8_and_nul_bytes() {
    // Invalid UTF-8 inside a value: the event is kept, with the bytes replaced and a warning.
    let mut bad = EVENT.replace("\"u\"", "\"u~\"").into_bytes();
    let at = bad.iter().position(|&b| b == b'~').unwrap();
    bad[at] = 0xff;
    for f in [Format::Auto, Format::Keycloak, Format::P2inc, Format::KeycloakKafka] {
        let items = decode_items(f, &bad);
        assert_eq!(items.len(), 1);
        let ev = event_of(&items[0]);
        assert!(ev.warnings.iter().any(|w| w.code == "invalid_utf8"), "{f}: {:?}", ev.warnings);
        assert_eq!(ev.subject.id.as_deref(), Some("u\u{FFFD}"));
    }
    // Pure garbage: rejected (webhook) with a reason, never an event.
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    assert_nothing_accepted("random bytes", &garbage);
    assert_nothing_accepted("lone continuation bytes", b"\x80\x80\x80\n\xc0\xaf\n\xed\xa0\x80");
    // Raw NUL bytes: invalid inside JSON strings; escaped NULs are kept and flagged.
    assert_nothing_accepted("NULs", &[0u8; 1000]);
    let raw_nul = EVENT.replace("\"u\"", "\"u\0\"");
    for (f, s) in every_format(raw_nul.as_bytes()) {
        assert_eq!((s.events, s.rejected), (0, 1), "{f}: a raw NUL makes the JSON invalid");
    }
    let escaped = EVENT.replace("\"u\"", "\"u\\u0000\"");
    let ev = event_of(&decode_items(Format::Keycloak, escaped.as_bytes())[0]);
    assert_eq!(ev.subject.id.as_deref(), Some("u\0"));
    assert!(ev.warnings.iter().any(|w| w.code == "suspicious_characters"), "{:?}", ev.warnings);
    // A NUL in a log line.
    let log = "2026-03-09 07:58:04,120 WARN  [org.keycloak.events] (executor-thread-1) type=\"LOGIN\", realmId=\"r\0\", clientId=\"c\"";
    let s = check_decode_with(Format::JbossLogging, log.as_bytes(), &DecodeOptions::default());
    assert_eq!(s.events, 1);
}

#[test]
fn hostile_huge_numbers() {
    for time in [
        "1e400", "-1e400", "1e308", "-1", "0", "18446744073709551615", "18446744073709551616", "99999999999999999999999999999",
        "9223372036854775807", "-9223372036854775808", "1e16", "8.2e15", "8.3e15", "1e20", "0.0000001", "\"1e400\"",
        "\"99999999999999999999\"", "\"00000000000000000000000000000000001\"", "\"+275760-09-13T00:00:00Z\"",
        "\"9999-12-31T23:59:59.999999999Z\"",
    ] {
        let body = format!(r#"{{"type":"LOGIN","time":{time},"realmId":"r","details":{{"n":{time}}}}}"#);
        for (f, s) in every_format(body.as_bytes()) {
            assert_eq!(s.items(), 1, "time {time} ({f})");
            // serde_json refuses 1e400 outright; every other number gives an event (time or a warning).
            if !time.contains("e400") || time.starts_with('"') {
                if matches!(f, Format::Auto | Format::Keycloak | Format::P2inc | Format::KeycloakKafka) {
                    assert_eq!(s.events, 1, "time {time} ({f})");
                }
            }
        }
    }
    // Huge counts of things: details over the cap are dropped with a warning.
    let details: Vec<String> = (0..10_000).map(|i| format!("\"k{i}\":\"{i}\"")).collect();
    let body = format!(r#"{{"type":"LOGIN","time":1,"details":{{{}}}}}"#, details.join(","));
    let ev = event_of(&decode_items(Format::Keycloak, body.as_bytes())[0]);
    assert_eq!(ev.details.len(), DecodeOptions::default().max_details);
    assert!(ev.warnings.iter().any(|w| w.code == "details_truncated"));
    // A huge array of tiny records.
    let array = format!("[{}]", vec!["1"; 200_000].join(","));
    let s = check_decode_with(Format::Auto, array.as_bytes(), &DecodeOptions { max_records_per_body: 1_000_000, ..Default::default() });
    assert_eq!((s.events, s.rejected), (0, 200_000));
    // With the default cap: 100,000 of them, and one record saying the rest was not decoded.
    let s = check_decode_with(Format::Auto, array.as_bytes(), &DecodeOptions::default());
    assert_eq!((s.events, s.rejected), (0, 100_001));
}

#[test]
fn hostile_webhook_requests() {
    use harness::{F_DEFLATE, F_GZIP, F_RAW_ENCODING, F_SIGN};
    // A gzip bomb, over max_decompressed_bytes: 413.
    let a = check_plan(&WebhookPlan::post("/v1/events", F_GZIP, &vec![b'\n'; 2 * 1024 * 1024])).unwrap();
    assert_eq!(a.status, 413, "{}", a.text);
    // Gzip that is not gzip: 400 with a reason.
    let mut p = WebhookPlan::post("/v1/events", F_RAW_ENCODING, b"\x1f\x8b\x08\x00garbage");
    p.encoding = 0;
    let a = check_plan(&p).unwrap();
    assert_eq!(a.status, 400, "{}", a.text);
    // Unsupported encoding: 415.
    p.encoding = 5;
    assert_eq!(check_plan(&p).unwrap().status, 415);
    // Deflate, HMAC over the compressed bytes: accepted.
    let a = check_plan(&WebhookPlan::post("/hooks/hmac", F_DEFLATE | F_SIGN, EVENT.as_bytes())).unwrap();
    assert_eq!(a.status, 200, "{}", a.text);
    // Unsigned to the HMAC route: 401.
    let a = check_plan(&WebhookPlan::post("/hooks/hmac", 0, EVENT.as_bytes())).unwrap();
    assert_eq!(a.status, 401, "{}", a.text);
    // Over max_body_bytes: 413.
    let a = check_plan(&WebhookPlan::post("/v1/events", 0, &vec![b' '; 300 * 1024])).unwrap();
    assert_eq!(a.status, 413, "{}", a.text);
    // Deep nesting and garbage bodies: 400 with reasons, never 5xx.
    for body in ["[".repeat(100_000).into_bytes(), vec![0u8; 10_000], vec![0xff; 10_000], "\n".repeat(100_000).into_bytes()] {
        let a = check_plan(&WebhookPlan::post("/v1/events", F_GZIP, &body)).unwrap();
        assert!(matches!(a.status, 200 | 400), "{}", a.text);
    }
    // Every method on every path.
    for method in 0..harness::METHODS.len() as u8 {
        for path in 0..harness::PATHS.len() as u8 {
            let plan = WebhookPlan { method, path, body: EVENT.as_bytes().to_vec(), ..Default::default() };
            check_plan(&plan);
        }
    }
}

fn decode_items(format: Format, data: &[u8]) -> Vec<kcaudit::decode::Item> {
    let opts = DecodeOptions::default();
    let ctx = kcaudit::decode::Context { opts: &opts, tz: opts.time_zone().unwrap(), deliveries: None, lines_may_be_noise: false };
    let mut out = Vec::new();
    kcaudit::decode::decode_body(data, format, &kcaudit::event::Origin { input: "fuzz".into(), ..Default::default() }, &ctx, &mut out);
    out
}

fn event_of(item: &kcaudit::decode::Item) -> kcaudit::event::AuditEvent {
    match &item.decoded {
        kcaudit::decode::Decoded::Event(e) => (**e).clone(),
        other => panic!("expected an event, got {other:?}"),
    }
}

// -------------------------------------------------------------------------------------------------
// Seed corpus generator (run by hand; the output is committed).
// -------------------------------------------------------------------------------------------------

/// Writes `fuzz/corpus/<target>/seed-*` from `tests/fixtures/`: small whole files, and single records
/// (lines) of the large ones. `cargo test --test fuzz_regressions -- --ignored write_seed_corpus`.
#[test]
#[ignore]
fn write_seed_corpus() {
    let fx = |p: &str| std::fs::read(root().join("tests/fixtures").join(p)).unwrap();
    let lines = |p: &str, max: usize| -> Vec<Vec<u8>> {
        let data = fx(p);
        let all: Vec<&[u8]> = data.split(|&b| b == b'\n').filter(|l| !l.iter().all(u8::is_ascii_whitespace)).collect();
        let step = all.len().div_ceil(max).max(1);
        all.iter().step_by(step).map(|l| l.to_vec()).collect()
    };
    let chunks = |p: &str, per: usize, max: usize| -> Vec<Vec<u8>> {
        let data = fx(p);
        let all: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
        all.chunks(per).take(max).map(|c| c.join(&b'\n')).collect()
    };
    let public = |dir: &str| -> Vec<Vec<u8>> {
        files(&root().join("tests/fixtures/public-samples").join(dir))
            .into_iter()
            .filter(|f| !f.to_string_lossy().ends_with("-expected.json") && !f.to_string_lossy().ends_with(".yaml"))
            .map(|f| std::fs::read(f).unwrap())
            .collect()
    };
    let deliveries = lines("keycloak/p2inc-webhook-deliveries.jsonl", 100);
    let delivery_bodies: Vec<Vec<u8>> = deliveries
        .iter()
        .map(|l| serde_json::from_slice::<serde_json::Value>(l).unwrap()["body"].as_str().unwrap().as_bytes().to_vec())
        .collect();

    // kcaudit's own canonical events, as an edge instance writes them.
    let canonical: Vec<Vec<u8>> = [lines("keycloak/keycloak-native-events.jsonl", 12), lines("keycloak/p2inc-webhook.jsonl", 6), chunks("keycloak/jboss-logging.log", 20, 3)]
        .concat()
        .iter()
        .flat_map(|l| decode_items(Format::Auto, l))
        .filter_map(|i| match i.decoded {
            kcaudit::decode::Decoded::Event(e) => Some(serde_json::to_vec(&e).unwrap()),
            _ => None,
        })
        .collect();
    let mut seeds: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("kcaudit", [canonical.clone(), vec![canonical[..4].join(&b'\n')]].concat()),
        ("keycloak", [lines("keycloak/keycloak-native-events.jsonl", 24), lines("keycloak/keycloak-native-admin-events.jsonl", 8), vec![fx("keycloak/keycloak-rest-events-page.json")], public("event-json")].concat()),
        ("p2inc", [lines("keycloak/p2inc-webhook.jsonl", 24), delivery_bodies.clone()].concat()),
        ("keycloak_kafka", [lines("keycloak/keycloak-kafka-events.jsonl", 24), lines("keycloak/keycloak-kafka-admin-events.jsonl", 8)].concat()),
        ("jboss_logging", [chunks("keycloak/jboss-logging.log", 4, 40), lines("other-listener-shapes.log", 30), public("jboss-logging")].concat()),
        ("recording", [deliveries.clone(), vec![deliveries.join(&b'\n')]].concat()),
        (
            "auto",
            [
                lines("keycloak/keycloak-native-events.jsonl", 4),
                lines("keycloak/p2inc-webhook.jsonl", 4),
                lines("keycloak/keycloak-kafka-events.jsonl", 4),
                chunks("keycloak/jboss-logging.log", 8, 4),
                lines("other-listener-shapes.log", 30),
                deliveries.clone(),
                canonical[..4].to_vec(),
                public("event-json"),
            ]
            .concat(),
        ),
    ];
    // Webhook: the recorded deliveries signed to the HMAC route, plain, gzip and deflate to the
    // others, a batch per format, and a few refusals.
    let mut web = Vec::new();
    for (i, b) in delivery_bodies.iter().enumerate() {
        let (path, flags) = match i % 4 {
            0 => ("/hooks/hmac", F_SIGN),
            1 => ("/hooks/hmac", F_GZIP | F_SIGN_PLAIN),
            2 => ("/v1/events", F_GZIP),
            _ => ("/hooks/bearer", F_DEFLATE | F_BEARER),
        };
        web.push(WebhookPlan::post(path, flags, b).encode());
    }
    for (path, file) in [
        ("/v1/events/keycloak", "keycloak/keycloak-native-admin-events.jsonl"),
        ("/v1/events/keycloak-kafka", "keycloak/keycloak-kafka-admin-events.jsonl"),
        ("/v1/events/p2inc", "keycloak/p2inc-webhook.jsonl"),
        ("/hooks/jboss", "other-listener-shapes.log"),
        ("/v1/events/kcaudit", ""),
        ("/v1/events/jboss-logging", "public-samples/jboss-logging/kavahub-springseeds__FAQ.excerpt.log"),
    ] {
        let body: Vec<u8> = if file.is_empty() { canonical[..3].join(&b'\n') } else { fx(file).into_iter().take(8 * 1024).collect() };
        web.push(WebhookPlan::post(path, 0, &body).encode());
    }
    let mut raw_sig = WebhookPlan::post("/hooks/hmac", F_RAW_SIGNATURE | F_EXTRA_HEADERS, &delivery_bodies[0]);
    raw_sig.signature = b"sha256=00".to_vec();
    raw_sig.extra_headers = vec![(b"x-request-id".to_vec(), b"abc".to_vec()), (b"Content-Type".to_vec(), b"text/plain".to_vec())];
    web.push(raw_sig.encode());
    web.push(WebhookPlan { method: 1, path: 13, ..Default::default() }.encode());
    web.push(WebhookPlan { method: 0xff, path: 0xff, custom_path: b"/hooks/jboss?x=%zz".to_vec(), body: b"type=\"LOGIN\"".to_vec(), ..Default::default() }.encode());
    seeds.push(("webhook", web));

    let mut total = 0;
    for (target, list) in seeds {
        let dir = root().join("fuzz/corpus").join(target);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut seen = std::collections::HashSet::new();
        for (i, s) in list.into_iter().enumerate() {
            if !seen.insert(s.clone()) {
                continue;
            }
            total += s.len();
            std::fs::write(dir.join(format!("seed-{i:03}")), s).unwrap();
        }
    }
    assert!(total < 2 * 1024 * 1024, "seed corpora are {total} bytes; keep them under 2 MB");
    eprintln!("wrote {total} bytes of seeds");
}
