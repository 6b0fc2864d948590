//! SIEM encoders (CEF, LEEF, syslog RFC 5424 / 3164 / 6587, OCSF): golden snapshots of the running
//! example of `siem-and-detection.md`, strict re-parsing of hostile values, and OCSF validation of the
//! whole fixture timeline.
//!
//! The running example (doc, top): event `0b6f3c8e-…`, 2026-03-14T09:26:53.589Z, realm `acme`,
//! exchanger `svc-gateway`, subject `alice` (`5f1c2a9e-…`), audience `billing-api`, from 203.0.113.7,
//! success, flagged as a first-seen client→audience pair. Intended differences from the doc's example
//! lines, common to every format:
//! - the flag is kcaudit's rule `new-audience` (medium), not the doc's placeholder
//!   `first_seen_client_audience`; so CEF severity is 5 (medium band), LEEF `sev` 5, syslog severity 4
//!   (warning, `<84>`), OCSF `severity_id` 3 — the doc's 7 / `<86>` are for an example with no
//!   severity model;
//! - vendor/product are `kcaudit` (configurable) and the version is this crate's, not `Acme|kc-audit|1.4.0`;
//! - the exchanger is the client id `svc-gateway` (the doc's CEF line shows its service-account user
//!   `service-account-svc-gateway`; the event names the client, and that is what analysts search for);
//! - the realm is the realm *id* `acme` (Keycloak events carry the id; the name when a listener adds it);
//! - the example event also carries Keycloak's `subject_token_client_id` (`web-portal`), which every
//!   format keeps.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{TimeZone, Utc};
use kcaudit::event::{AuditEvent, EventKind, Finding, Outcome, Severity};
use kcaudit::sinks::encode::cef::{self, CefOptions};
use kcaudit::sinks::encode::leef::{self, LeefOptions};
use kcaudit::sinks::encode::ocsf;
use kcaudit::sinks::encode::syslog::{self, Framing, Payload, SyslogFormat, SyslogHeader};
use proptest::prelude::*;
use serde_json::Value;

const RUNNING_EXAMPLE: &str = r#"{"id":"0b6f3c8e-2f7a-4d51-9a52-6c1e3b7d9f10","time":1773480413589,"type":"TOKEN_EXCHANGE","realmId":"acme","clientId":"svc-gateway","userId":"5f1c2a9e-8b0d-4c1e-9a6f-2d3b4c5d6e7f","ipAddress":"203.0.113.7","details":{"auth_method":"token_exchange","audience":"billing-api","grant_type":"urn:ietf:params:oauth:grant-type:token-exchange","scope":"openid billing:read","subject_token_client_id":"web-portal","requested_token_type":"urn:ietf:params:oauth:token-type:access_token","client_auth_method":"client-secret","username":"alice"}}"#;

/// The running example as kcaudit records it after detection.
fn running_example() -> AuditEvent {
    let mut e = common::one_event(RUNNING_EXAMPLE.as_bytes());
    e.findings = vec![Finding {
        rule: "new-audience".into(),
        severity: Severity::Medium,
        title: "New audience for an established exchanger".into(),
        reason: "svc-gateway obtained audience billing-api for the first time; over 30 days it obtained only orders-api".into(),
        attack: vec!["T1550.001".into(), "T1078.004".into()],
        related_event_ids: vec![],
    }];
    e.severity = Some(Severity::Medium);
    e
}

/// Fixed options so the snapshots do not move with the crate version.
fn cef_opts() -> CefOptions {
    CefOptions { version: "1.4.0".into(), ..Default::default() }
}

fn leef_opts() -> LeefOptions {
    LeefOptions { version: "1.4.0".into(), ..Default::default() }
}

fn doc_header() -> SyslogHeader {
    SyslogHeader { hostname: "kc-audit-1.example.com".into(), app_name: "kc-audit".into(), procid: "4711".into(), ..Default::default() }
}

fn format(framing: Framing, payload: Payload) -> SyslogFormat {
    SyslogFormat { header: doc_header(), framing, payload, cef: cef_opts(), leef: leef_opts(), ..Default::default() }
}

// ---------------------------------------------------------------------------------------------
// Snapshots of the running example
// ---------------------------------------------------------------------------------------------

/// Doc §1.4: `CEF:0|Acme|kc-audit|1.4.0|TOKEN_EXCHANGE|Keycloak token exchange|7|rt=… externalId=… src=…
/// suser=service-account-svc-gateway duser=alice duid=… destinationServiceName=billing-api
/// act=token-exchange outcome=success cat=/Authentication/OAuth/TokenExchange cs1Label=realm cs1=acme
/// cs2Label=anomaly cs2=… cs3Label=scope cs3=openid billing:read msg=…`. Differences besides the common
/// ones: the Name adds the finding's title; `cs2Label` is `findings`; `msg` is the finding's reason;
/// `cs6` adds the subject-token client; and the order ends with `act outcome cat` so the last value
/// (whose trailing spaces CEF loses) is always kcaudit's own.
#[test]
fn snapshot_cef() {
    insta::assert_snapshot!("cef_running_example", cef::event(&running_example(), &cef_opts()));
}

/// Doc §1.5: `LEEF:2.0|Acme|kc-audit|1.4.0|TOKEN_EXCHANGE|^|devTime=1773480413589^cat=TokenExchange^sev=7^
/// src=203.0.113.7^usrName=alice^accountName=svc-gateway^realm=acme^kcAudience=billing-api^kcOutcome=success^
/// kcAnomaly=…^kcEventId=…`. Differences: `kcEventId` comes right after the predefined keys, `kcUserId`,
/// `kcScope`, `kcSubjectTokenClient` and `kcFindingReasons` are added, `kcAnomaly` is `kcFindings`.
#[test]
fn snapshot_leef() {
    insta::assert_snapshot!("leef_running_example", leef::event(&running_example(), &leef_opts()));
}

/// Doc §1.3: `<86>1 2026-03-14T09:26:53.589Z kc-audit-1.example.com kc-audit 4711 TOKEN_EXCHANGE
/// [kcx@32473 realm="acme" client="svc-gateway" sub="alice" aud="billing-api" outcome="success"
/// anomaly="first_seen_client_audience"] token exchange svc-gateway -> billing-api on behalf of alice`.
/// Differences: PRI 84 (warning: a medium finding), SD-ID `kcaudit@32473` with `id`, `type`, `subId`,
/// `severity` added and `anomaly` named `findings`, and the text ends with the findings.
#[test]
fn snapshot_rfc5424_text_with_sd() {
    let e = running_example();
    let m = syslog::format_event(&format(Framing::Rfc5424, Payload::Text), &e);
    insta::assert_snapshot!("rfc5424_text_running_example", m);
    // Framed for TCP/TLS: the length prefix counts bytes.
    let framed = syslog::frame_event(&format(Framing::Rfc5424, Payload::Text), &e);
    assert_eq!(framed, format!("{} {m}", m.len()).into_bytes());
}

/// Doc §1.4 sends CEF over RFC 3164: `<86>Mar 14 09:26:53 kc-audit-1 CEF:0|…` (no TAG). A TAG is
/// mandatory in RFC 3164 (`kcaudit[4711]:`: `kc-audit` loses its `-`, TAGs are alphanumeric).
#[test]
fn snapshot_rfc3164_cef() {
    let m = syslog::format_event(&format(Framing::Rfc3164, Payload::Cef), &running_example());
    insta::assert_snapshot!("rfc3164_cef_running_example", m);
}

/// Doc §1.5 shows LEEF behind an RFC 5424 header without APP-NAME etc.; ours is a full header, no SD.
#[test]
fn snapshot_rfc5424_leef() {
    let f = SyslogFormat { structured_data: false, ..format(Framing::Rfc5424, Payload::Leef) };
    insta::assert_snapshot!("rfc5424_leef_running_example", syslog::format_event(&f, &running_example()));
}

/// Doc §2.1: Authentication 3002, activity 99 "Token Exchange", type_uid 300299, severity_id 3,
/// metadata 1.6.0 / Keycloak, `auth_protocol_id` 6, user alice, actor svc-gateway, service billing-api,
/// src_endpoint 203.0.113.7, enrichment for the flag, unmapped realm + scope. Added: the Detection
/// Finding 2004 record, captions, session-less `unmapped.details`.
#[test]
fn snapshot_ocsf() {
    let mut recs = ocsf::records(&running_example());
    assert_eq!(recs.len(), 2);
    for r in &recs {
        ocsf::validate(r).unwrap();
    }
    // The finding's product version is this crate's: pinned separately so the snapshot survives releases.
    assert_eq!(recs[1]["metadata"]["product"]["version"], env!("CARGO_PKG_VERSION"));
    recs[1]["metadata"]["product"]["version"] = "[crate version]".into();
    insta::assert_snapshot!("ocsf_running_example", serde_json::to_string_pretty(&recs).unwrap());
}

/// V1 impersonation (fixture line 14: support-console, impersonator sam.ortiz, target carol.diaz):
/// Account Switch / Impersonate, user = the target, actor.user = the impersonator.
#[test]
fn snapshot_ocsf_impersonation_and_admin() {
    let imp = fixture_line("keycloak/keycloak-native-events.jsonl", 14);
    let r = ocsf::authentication(&imp);
    ocsf::validate(&r).unwrap();
    assert_eq!(r["activity_id"], 7);
    assert_eq!(r["account_switch_type_id"], 2);
    assert_eq!(r["user"]["uid"], imp.subject.id.as_deref().unwrap());
    assert_eq!(r["actor"]["user"]["name"], "sam.ortiz");
    insta::assert_snapshot!("ocsf_impersonation", serde_json::to_string_pretty(&r).unwrap());

    let admin = fixture_line("keycloak/keycloak-native-admin-events.jsonl", 1);
    let r = ocsf::event_record(&admin);
    ocsf::validate(&r).unwrap();
    assert_eq!(r["class_uid"], 6003);
    insta::assert_snapshot!("ocsf_admin_event", serde_json::to_string_pretty(&r).unwrap());
    insta::assert_snapshot!("cef_admin_event", cef::event(&admin, &cef_opts()));
}

fn fixture_line(file: &str, n: usize) -> AuditEvent {
    let text = std::fs::read_to_string(common::fixture(file)).unwrap();
    common::one_event(text.lines().nth(n - 1).unwrap().as_bytes())
}

// ---------------------------------------------------------------------------------------------
// Strict parsers
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Cef {
    header: Vec<String>,
    ext: BTreeMap<String, String>,
}

/// CEF: the header is split on unescaped pipes (only `\\` and `\|` are valid escapes there) into
/// exactly 7 fields; the extension is `key=value` pairs separated by single spaces, where a key is the
/// alphanumeric run before an unescaped `=` and a value runs to the space before the next key; values
/// allow only the escapes `\\ \= \n \r`. Keys must be unique. No raw control character anywhere.
fn parse_cef(s: &str) -> Result<Cef, String> {
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(format!("raw control character {c:?}"));
    }
    let mut header = Vec::new();
    let mut cur = String::new();
    let mut chars = s.char_indices();
    let mut ext_start = None;
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, '\\')) => cur.push('\\'),
                Some((_, '|')) => cur.push('|'),
                other => return Err(format!("invalid header escape {other:?}")),
            },
            '|' => {
                header.push(std::mem::take(&mut cur));
                if header.len() == 7 {
                    ext_start = Some(i + 1);
                    break;
                }
            }
            c => cur.push(c),
        }
    }
    let ext = &s[ext_start.ok_or("fewer than 7 header fields")?..];
    if header[0] != "CEF:0" {
        return Err(format!("bad version field {:?}", header[0]));
    }
    // Extension: units are literal characters or escape sequences.
    #[derive(Clone, Copy, PartialEq)]
    enum U {
        Lit(char),
        Esc(char),
    }
    let mut units = Vec::new();
    let mut it = ext.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.next() {
                Some(e @ ('\\' | '=' | 'n' | 'r')) => units.push(U::Esc(e)),
                other => return Err(format!("invalid extension escape {other:?}")),
            }
        } else {
            units.push(U::Lit(c));
        }
    }
    let mut pairs: Vec<(String, usize, usize)> = Vec::new(); // key, value start, (value end set later)
    for (i, u) in units.iter().enumerate() {
        if *u != U::Lit('=') {
            continue;
        }
        let mut ks = i;
        while ks > 0 && matches!(units[ks - 1], U::Lit(c) if c.is_ascii_alphanumeric()) {
            ks -= 1;
        }
        if ks == i {
            return Err("unescaped '=' without a key".into());
        }
        if ks > 0 && units[ks - 1] != U::Lit(' ') {
            return Err("key not preceded by a space".into());
        }
        if pairs.is_empty() && ks != 0 {
            return Err("extension does not start with a key".into());
        }
        if let Some(last) = pairs.last_mut() {
            if ks == 0 {
                return Err("pair without separator".into());
            }
            last.2 = ks - 1;
        }
        let key: String = units[ks..i].iter().map(|u| if let U::Lit(c) = u { *c } else { unreachable!() }).collect();
        pairs.push((key, i + 1, units.len()));
    }
    if pairs.is_empty() && !units.is_empty() {
        return Err("extension without pairs".into());
    }
    let mut map = BTreeMap::new();
    for (k, a, b) in pairs {
        let v: String = units[a..b]
            .iter()
            .map(|u| match u {
                U::Lit(c) => *c,
                U::Esc('n') => '\n',
                U::Esc('r') => '\r',
                U::Esc(c) => *c,
            })
            .collect();
        if map.insert(k.clone(), v).is_some() {
            return Err(format!("duplicate key {k}"));
        }
    }
    Ok(Cef { header, ext: map })
}

#[derive(Debug)]
struct Leef {
    header: Vec<String>,
    delimiter: char,
    attrs: BTreeMap<String, String>,
}

/// LEEF 2.0: `LEEF:2.0|vendor|product|version|eventID|delimiter|attributes`, header fields without
/// pipes; attributes split on the delimiter, each `key=value` with an alphanumeric key (split at the
/// first `=`), keys unique, no control character except the delimiter itself.
fn parse_leef(s: &str) -> Result<Leef, String> {
    let parts: Vec<&str> = s.splitn(7, '|').collect();
    if parts.len() != 7 {
        return Err("fewer than 7 header parts".into());
    }
    if parts[0] != "LEEF:2.0" {
        return Err(format!("bad version {:?}", parts[0]));
    }
    let d = parts[5];
    let delimiter = if d.chars().count() == 1 {
        d.chars().next().unwrap()
    } else if let Some(h) = d.strip_prefix("0x").or_else(|| d.strip_prefix('x')) {
        char::from_u32(u32::from_str_radix(h, 16).map_err(|e| e.to_string())?).ok_or("bad hex delimiter")?
    } else {
        return Err(format!("bad delimiter field {d:?}"));
    };
    if let Some(c) = s.chars().find(|c| c.is_control() && *c != delimiter) {
        return Err(format!("raw control character {c:?}"));
    }
    let mut attrs = BTreeMap::new();
    if !parts[6].is_empty() {
        for a in parts[6].split(delimiter) {
            let (k, v) = a.split_once('=').ok_or_else(|| format!("attribute without '=': {a:?}"))?;
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(format!("bad key {k:?}"));
            }
            if attrs.insert(k.to_string(), v.to_string()).is_some() {
                return Err(format!("duplicate key {k}"));
            }
        }
    }
    Ok(Leef { header: parts[..5].iter().map(|s| s.to_string()).collect(), delimiter, attrs })
}

#[derive(Debug)]
struct Rfc5424 {
    pri: u16,
    fields: Vec<String>, // timestamp, hostname, app-name, procid, msgid
    sd: Vec<(String, BTreeMap<String, String>)>,
    msg: Option<String>,
}

fn is_printusascii(c: char) -> bool {
    ('!'..='~').contains(&c)
}

fn is_sd_name(s: &str) -> bool {
    !s.is_empty() && s.chars().count() <= 32 && s.chars().all(|c| is_printusascii(c) && !matches!(c, '=' | ']' | '"'))
}

/// RFC 5424: PRI, VERSION 1, five PRINTUSASCII header fields, STRUCTURED-DATA (`-` or elements with
/// `"`, `\`, `]` escaped in values and any other backslash refused), then optionally SP MSG. No CR,
/// LF or NUL anywhere (one record), no control characters before MSG.
fn parse_5424(s: &str) -> Result<Rfc5424, String> {
    if s.contains(['\r', '\n', '\0']) {
        return Err("raw CR/LF/NUL".into());
    }
    let rest = s.strip_prefix('<').ok_or("no PRI")?;
    let (pri, rest) = rest.split_once('>').ok_or("unterminated PRI")?;
    if pri.is_empty() || pri.len() > 3 || !pri.bytes().all(|b| b.is_ascii_digit()) || (pri.len() > 1 && pri.starts_with('0')) {
        return Err(format!("bad PRI {pri:?}"));
    }
    let pri: u16 = pri.parse().unwrap();
    if pri > 191 {
        return Err("PRI out of range".into());
    }
    let mut rest = rest.strip_prefix("1 ").ok_or("VERSION is not 1")?;
    let mut fields = Vec::new();
    for _ in 0..5 {
        let (f, r) = rest.split_once(' ').ok_or("missing header field")?;
        if f.is_empty() || !f.chars().all(is_printusascii) {
            return Err(format!("bad header field {f:?}"));
        }
        fields.push(f.to_string());
        rest = r;
    }
    let chars: Vec<char> = rest.chars().collect();
    let mut i = 0;
    let mut sd = Vec::new();
    if chars.first() == Some(&'-') {
        i = 1;
    } else {
        while chars.get(i) == Some(&'[') {
            i += 1;
            let start = i;
            while i < chars.len() && chars[i] != ' ' && chars[i] != ']' {
                i += 1;
            }
            let id: String = chars[start..i].iter().collect();
            if !is_sd_name(&id) {
                return Err(format!("bad SD-ID {id:?}"));
            }
            let mut params = BTreeMap::new();
            loop {
                match chars.get(i) {
                    Some(']') => {
                        i += 1;
                        break;
                    }
                    Some(' ') => {
                        i += 1;
                        let ns = i;
                        while i < chars.len() && chars[i] != '=' {
                            i += 1;
                        }
                        let name: String = chars[ns..i].iter().collect();
                        if !is_sd_name(&name) {
                            return Err(format!("bad PARAM-NAME {name:?}"));
                        }
                        if chars.get(i + 1) != Some(&'"') {
                            return Err("PARAM-VALUE not quoted".into());
                        }
                        i += 2;
                        let mut v = String::new();
                        loop {
                            match chars.get(i) {
                                None => return Err("unterminated PARAM-VALUE".into()),
                                Some('\\') => match chars.get(i + 1) {
                                    Some(c @ ('"' | '\\' | ']')) => {
                                        v.push(*c);
                                        i += 2;
                                    }
                                    other => return Err(format!("invalid escape in PARAM-VALUE: {other:?}")),
                                },
                                Some('"') => {
                                    i += 1;
                                    break;
                                }
                                Some(']') => return Err("unescaped ']' in PARAM-VALUE".into()),
                                Some(c) if c.is_control() => return Err("control character in PARAM-VALUE".into()),
                                Some(c) => {
                                    v.push(*c);
                                    i += 1;
                                }
                            }
                        }
                        if params.insert(name.clone(), v).is_some() {
                            return Err(format!("duplicate PARAM-NAME {name}"));
                        }
                    }
                    other => return Err(format!("unexpected {other:?} in SD-ELEMENT")),
                }
            }
            sd.push((id, params));
        }
        if sd.is_empty() {
            return Err("STRUCTURED-DATA is neither '-' nor an element".into());
        }
    }
    let msg = match chars.get(i) {
        None => None,
        Some(' ') => Some(chars[i + 1..].iter().collect::<String>()),
        Some(c) => return Err(format!("unexpected {c:?} after STRUCTURED-DATA")),
    };
    Ok(Rfc5424 { pri, fields, sd, msg })
}

/// The parsers have teeth: naive encodings of hostile values are refused or show the forged field.
#[test]
fn strict_parsers_reject_forgeries() {
    // CEF: an unescaped `=` forges a key, a raw pipe in the header shifts fields, a raw LF splits.
    let forged = parse_cef("CEF:0|v|p|1|c|n|5|duser=alice act=allowed cat=x").unwrap();
    assert!(forged.ext.contains_key("act"), "the naive value 'alice act=allowed' yields a forged key");
    let ok = parse_cef(&format!("CEF:0|v|p|1|c|n|5|duser={} cat=x", cef::escape_extension_value("alice act=allowed"))).unwrap();
    assert_eq!(ok.ext.keys().collect::<Vec<_>>(), ["cat", "duser"]);
    assert_eq!(ok.ext["duser"], "alice act=allowed");
    // A raw pipe in Name ("a|b") shifts Severity into the extension, which then no longer parses.
    assert!(parse_cef("CEF:0|v|p|1|c|a|b|5|k=v").is_err());
    assert!(parse_cef("CEF:0|v|p|1|c|n|5|msg=a\\nb\nCEF:0|v|p|1|c|n|10|").is_err());
    assert!(parse_cef(r"CEF:0|v|p|1|c|n|5|msg=a\tb").is_err());
    assert!(parse_cef("CEF:0|v|p|1|c|n|5|msg=a duser=b duser=c").is_err());
    // LEEF: a raw delimiter forges an attribute; a raw pipe in the header shifts the delimiter field.
    let l = parse_leef("LEEF:2.0|v|p|1|E|^|usrName=alice^sev=1").unwrap();
    assert_eq!(l.attrs.len(), 2);
    assert!(parse_leef("LEEF:2.0|v|p|1|E|x|^|usrName=a").is_err());
    assert!(parse_leef("LEEF:2.0|v|p|1|E|^|usrName=a\nb").is_err());
    // RFC 5424: unescaped `]` or `"` in a PARAM-VALUE, a backslash before anything else, raw LF.
    assert!(parse_5424(r#"<86>1 - h a p m [x@1 k="a]b"]"#).is_err());
    assert!(parse_5424(r#"<86>1 - h a p m [x@1 k="a"b"]"#).is_err());
    assert!(parse_5424(r#"<86>1 - h a p m [x@1 k="a\nb"]"#).is_err());
    assert!(parse_5424("<86>1 - h a p m - msg\n<86>1 - h a p m - forged").is_err());
    assert!(parse_5424("<86>1 - h\tx a p m - msg").is_err());
    let p = parse_5424(r#"<86>1 - h a p m [x@1 k="a\]\"\\b"][y@1] hi"#).unwrap();
    assert_eq!(p.sd[0].1["k"], r#"a]"\b"#);
    assert_eq!(p.sd[1].0, "y@1");
    assert_eq!(p.msg.as_deref(), Some("hi"));
}

// ---------------------------------------------------------------------------------------------
// Hostile values
// ---------------------------------------------------------------------------------------------

/// Strings made of what breaks formats: pipes, `=`, backslashes, CR/LF, NUL, TAB, `]`, `"`, `^`, U+202E,
/// U+2028, NEL, spaces, and anything else; sometimes very long. Never empty (empty values are left out
/// by design, tested separately).
fn hostile() -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        3 => prop::char::range('a', 'z'),
        1 => prop::sample::select(vec!['|', '=', '\\', '\r', '\n', '\0', '\t', ']', '"', '^', ' ', '[', '\u{202E}', '\u{2028}', '\u{85}', '\u{7f}', 'é', '€', '😀', ';', ':', '-']),
        1 => any::<char>(),
    ];
    prop_oneof![
        8 => prop::collection::vec(ch.clone(), 1..40).prop_map(|v| v.into_iter().collect::<String>()),
        1 => (prop::collection::vec(ch, 1..8), 700usize..1200).prop_map(|(v, n)| v.into_iter().cycle().take(n * 5).collect::<String>()),
    ]
}

#[derive(Debug, Clone)]
struct Evil {
    client: String,
    username: String,
    user_id: String,
    audience: String,
    scope: String,
    detail: String,
    error: String,
    realm: String,
    reason: String,
    title: String,
    event_type: String,
    requested_subject: String,
    impersonator: String,
    subject_token_client: String,
    session: String,
}

fn evil() -> impl Strategy<Value = Evil> {
    (
        (hostile(), hostile(), hostile(), hostile(), hostile(), hostile(), hostile(), hostile()),
        (hostile(), hostile(), hostile(), hostile(), hostile(), hostile(), hostile()),
    )
        .prop_map(|((client, username, user_id, audience, scope, detail, error, realm), (reason, title, event_type, requested_subject, impersonator, subject_token_client, session))| Evil {
            client,
            username,
            user_id,
            audience,
            scope,
            detail,
            error,
            realm,
            reason,
            title,
            event_type,
            requested_subject,
            impersonator,
            subject_token_client,
            session,
        })
}

/// The running example with every attacker-controlled field replaced.
fn hostile_event(v: &Evil) -> AuditEvent {
    let mut e = running_example();
    e.event_type = v.event_type.as_str().into();
    e.outcome = Outcome::Failure;
    e.error = Some(v.error.as_str().into());
    e.realm.id = Some(v.realm.clone());
    e.client_id = Some(v.client.as_str().into());
    e.subject.id = Some(v.user_id.clone());
    e.subject.username = Some(v.username.as_str().into());
    e.session_id = Some(v.session.clone());
    e.details.insert("audience".into(), v.audience.as_str().into());
    e.details.insert("scope".into(), v.scope.as_str().into());
    e.details.insert("x-evil".into(), v.detail.as_str().into());
    e.details.insert("reason".into(), v.detail.as_str().into());
    let te = e.token_exchange.as_mut().unwrap();
    te.exchanger = Some(v.client.as_str().into());
    te.audiences = vec![v.audience.as_str().into()];
    te.scope = Some(v.scope.as_str().into());
    te.requested_subject = Some(v.requested_subject.as_str().into());
    te.impersonator = Some(v.impersonator.as_str().into());
    te.subject_token_client_id = Some(v.subject_token_client.as_str().into());
    e.findings[0].reason = v.reason.clone();
    e.findings[0].title = v.title.clone();
    e
}

fn cut(s: &str, n: usize) -> String {
    cef::truncate_chars(s, n).to_string()
}

/// What the formats without an escape for them do to control characters and line separators.
fn fffd(s: &str, keep: &[char]) -> String {
    s.chars().map(|c| if !keep.contains(&c) && (c.is_control() || c == '\u{2028}' || c == '\u{2029}') { '\u{FFFD}' } else { c }).collect()
}

/// CEF: escaped values come back exactly, except controls other than CR/LF (U+FFFD) and lengths.
fn cef_value(s: &str, n: usize) -> String {
    fffd(&cut(s, n), &['\r', '\n'])
}

fn check_cef(rec: &str, v: &Evil, e: &AuditEvent) -> Result<(), TestCaseError> {
    let p = parse_cef(rec).map_err(|m| TestCaseError::fail(format!("{m}\n{rec:?}")))?;
    let version = env!("CARGO_PKG_VERSION");
    let class = if v.event_type.is_empty() { "UNKNOWN".to_string() } else { fffd(&cut(&v.event_type, 1023), &[]) };
    let name = fffd(&cut(&format!("Keycloak token exchange failed: {}", v.title), 512), &[]);
    prop_assert_eq!(&p.header, &vec!["CEF:0".to_string(), "kcaudit".into(), "kcaudit".into(), version.into(), class, name, "5".into()]);
    let mut want: BTreeMap<String, String> = BTreeMap::new();
    let mut w = |k: &str, val: String| {
        want.insert(k.to_string(), val);
    };
    w("rt", "1773480413589".into());
    w("externalId", e.id.clone());
    w("src", "203.0.113.7".into());
    w("suser", cef_value(&v.client, 1023));
    w("duser", cef_value(&v.username, 1023));
    w("duid", cef_value(&v.user_id, 1023));
    w("destinationServiceName", cef_value(&v.audience, 1023));
    w("reason", cef_value(&v.error, 1023));
    w("cs1Label", "realm".into());
    w("cs1", cef_value(&v.realm, 4000));
    w("cs2Label", "findings".into());
    w("cs2", "new-audience".into());
    w("cs3Label", "scope".into());
    w("cs3", cef_value(&v.scope, 4000));
    w("cs4Label", "impersonator".into());
    w("cs4", cef_value(&v.impersonator, 4000));
    w("cs5Label", "requestedSubject".into());
    w("cs5", cef_value(&v.requested_subject, 4000));
    w("cs6Label", "subjectTokenClient".into());
    w("cs6", cef_value(&v.subject_token_client, 4000));
    w("msg", cef_value(&v.reason, 1023));
    w("act", "token-exchange".into());
    w("outcome", "failure".into());
    w("cat", "/Authentication/OAuth/TokenExchange".into());
    prop_assert_eq!(p.ext.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (k, val) in &want {
        prop_assert_eq!(&p.ext[k], val, "key {}", k);
    }
    Ok(())
}

fn check_leef(rec: &str, v: &Evil, e: &AuditEvent, d: char) -> Result<(), TestCaseError> {
    let p = parse_leef(rec).map_err(|m| TestCaseError::fail(format!("{m}\n{rec:?}")))?;
    prop_assert_eq!(p.delimiter, d);
    let hv = |s: &str| leef::sanitize_header(&cut(s, 255), d);
    let et = if v.event_type.is_empty() { "UNKNOWN".to_string() } else { hv(&v.event_type) };
    prop_assert_eq!(&p.header, &vec!["LEEF:2.0".to_string(), "kcaudit".into(), "kcaudit".into(), env!("CARGO_PKG_VERSION").into(), et]);
    // The documented sanitised form: delimiter and controls → U+FFFD (checked independently here).
    let val = |s: &str, n: usize| -> String { cut(s, n).chars().map(|c| if c == d || c.is_control() || c == '\u{2028}' || c == '\u{2029}' { '\u{FFFD}' } else { c }).collect() };
    let want: BTreeMap<&str, String> = [
        ("devTime", "1773480413589".to_string()),
        ("cat", "TokenExchange".into()),
        ("sev", "5".into()),
        ("src", "203.0.113.7".into()),
        ("usrName", val(&v.username, 255)),
        ("accountName", val(&v.client, 1023)),
        ("realm", val(&v.realm, 1023)),
        ("kcEventId", e.id.clone()),
        ("kcUserId", val(&v.user_id, 1023)),
        ("kcAudience", val(&v.audience, 1023)),
        ("kcScope", val(&v.scope, 1023)),
        ("kcOutcome", "failure".into()),
        ("kcError", val(&v.error, 1023)),
        ("kcImpersonator", val(&v.impersonator, 1023)),
        ("kcRequestedSubject", val(&v.requested_subject, 1023)),
        ("kcSubjectTokenClient", val(&v.subject_token_client, 1023)),
        ("kcSessionId", val(&v.session, 1023)),
        ("kcFindings", "new-audience".into()),
        ("kcFindingReasons", val(&v.reason, 1023)),
    ]
    .into_iter()
    .collect();
    prop_assert_eq!(p.attrs.keys().map(String::as_str).collect::<BTreeSet<_>>(), want.keys().copied().collect::<BTreeSet<_>>());
    for (k, val) in &want {
        prop_assert_eq!(&p.attrs[*k], val, "key {}", k);
    }
    Ok(())
}

fn check_5424(m: &str, v: &Evil, e: &AuditEvent) -> Result<Rfc5424, TestCaseError> {
    let p = parse_5424(m).map_err(|x| TestCaseError::fail(format!("{x}\n{m:?}")))?;
    prop_assert_eq!(p.pri, 10 * 8 + 4);
    let msgid: String = v.event_type.chars().map(|c| if is_printusascii(c) { c } else { '_' }).take(32).collect();
    prop_assert_eq!(&p.fields, &vec!["2026-03-14T09:26:53.589Z".to_string(), "kc-audit-1.example.com".into(), "kc-audit".into(), "4711".into(), msgid]);
    prop_assert_eq!(p.sd.len(), 1);
    prop_assert_eq!(p.sd[0].0.as_str(), "kcaudit@32473");
    let val = |s: &str| fffd(&cut(s, 1023), &[]);
    let want: BTreeMap<&str, String> = [
        ("id", e.id.clone()),
        ("type", val(&v.event_type)),
        ("realm", val(&v.realm)),
        ("client", val(&v.client)),
        ("sub", val(&v.username)),
        ("subId", val(&v.user_id)),
        ("aud", val(&v.audience)),
        ("outcome", "failure".into()),
        ("error", val(&v.error)),
        ("impersonator", val(&v.impersonator)),
        ("severity", "medium".into()),
        ("findings", "new-audience".into()),
    ]
    .into_iter()
    .collect();
    let got = &p.sd[0].1;
    prop_assert_eq!(got.keys().map(String::as_str).collect::<BTreeSet<_>>(), want.keys().copied().collect::<BTreeSet<_>>());
    for (k, val) in &want {
        prop_assert_eq!(&got[*k], val, "param {}", k);
    }
    Ok(p)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, .. ProptestConfig::default() })]

    #[test]
    fn cef_round_trips_hostile_values(v in evil()) {
        let e = hostile_event(&v);
        check_cef(&cef::event(&e, &CefOptions::default()), &v, &e)?;
    }

    #[test]
    fn cef_header_options_are_escaped(vendor in hostile(), product in hostile(), version in hostile()) {
        let e = running_example();
        let rec = cef::event(&e, &CefOptions { vendor: vendor.clone(), product: product.clone(), version: version.clone() });
        let p = parse_cef(&rec).map_err(TestCaseError::fail)?;
        prop_assert_eq!(&p.header[1], &fffd(&cut(&vendor, 63), &[]));
        prop_assert_eq!(&p.header[2], &fffd(&cut(&product, 63), &[]));
        prop_assert_eq!(&p.header[3], &fffd(&cut(&version, 31), &[]));
        prop_assert_eq!(p.ext.get("duser").map(String::as_str), Some("alice"));
    }

    #[test]
    fn escape_functions_round_trip(s in hostile()) {
        // Extension value alone, behind a key, and followed by another pair.
        let rec = format!("CEF:0|v|p|1|c|n|1|msg={} cat=x", cef::escape_extension_value(&s));
        let p = parse_cef(&rec).map_err(TestCaseError::fail)?;
        prop_assert_eq!(&p.ext["msg"], &cef_value(&s, usize::MAX));
        prop_assert_eq!(p.ext.len(), 2);
        let rec = format!("CEF:0|{}|p|1|c|n|1|", cef::escape_header(&s));
        let p = parse_cef(&rec).map_err(TestCaseError::fail)?;
        prop_assert_eq!(&p.header[1], &fffd(&s, &[]));
    }

    #[test]
    fn leef_sanitises_hostile_values(v in evil(), d in prop::sample::select(vec!['^', '\t', ';', '#'])) {
        let e = hostile_event(&v);
        let o = LeefOptions { delimiter: d, ..Default::default() };
        check_leef(&leef::event(&e, &o), &v, &e, d)?;
    }

    #[test]
    fn rfc5424_carries_hostile_values(v in evil()) {
        let e = hostile_event(&v);
        // CEF payload: MSG is exactly the CEF record, which parses strictly again.
        let p = check_5424(&syslog::format_event(&format(Framing::Rfc5424, Payload::Cef), &e), &v, &e)?;
        let msg = p.msg.unwrap();
        prop_assert_eq!(&msg, &cef::event(&e, &cef_opts()));
        check_cef_opts(&msg, &v, &e)?;
        // LEEF payload.
        let p = check_5424(&syslog::format_event(&format(Framing::Rfc5424, Payload::Leef), &e), &v, &e)?;
        prop_assert_eq!(p.msg.unwrap(), leef::event(&e, &leef_opts()));
        // JSON payload: decodes to the same event.
        let p = check_5424(&syslog::format_event(&format(Framing::Rfc5424, Payload::Json), &e), &v, &e)?;
        let back: AuditEvent = serde_json::from_str(&p.msg.unwrap()).map_err(|x| TestCaseError::fail(x.to_string()))?;
        prop_assert_eq!(&back, &e);
        // OCSF: one message per record, each MSG the record as JSON.
        let ms = syslog::messages(&format(Framing::Rfc5424, Payload::Ocsf), &e);
        prop_assert_eq!(ms.len(), 2);
        for (m, r) in ms.iter().zip(ocsf::records(&e)) {
            let p = check_5424(m, &v, &e)?;
            let back: Value = serde_json::from_str(&p.msg.unwrap()).map_err(|x| TestCaseError::fail(x.to_string()))?;
            prop_assert_eq!(back, r);
        }
        // Free text: one line, CR/LF visible as \r \n.
        let p = check_5424(&syslog::format_event(&format(Framing::Rfc5424, Payload::Text), &e), &v, &e)?;
        prop_assert_eq!(p.msg.unwrap(), syslog::one_line(&syslog::summary(&e)));
        // Octet counting: the prefix is the byte length of what follows.
        let framed = syslog::frame_event(&format(Framing::Rfc5424, Payload::Json), &e);
        let sp = framed.iter().position(|b| *b == b' ').unwrap();
        let n: usize = std::str::from_utf8(&framed[..sp]).unwrap().parse().unwrap();
        prop_assert_eq!(n, framed.len() - sp - 1);
    }

    #[test]
    fn rfc3164_is_one_bounded_line(v in evil(), payload in prop::sample::select(vec![Payload::Cef, Payload::Leef, Payload::Json, Payload::Text])) {
        let e = hostile_event(&v);
        let m = syslog::format_event(&format(Framing::Rfc3164, payload), &e);
        prop_assert!(m.len() <= 1024);
        prop_assert!(!m.contains(['\r', '\n', '\0']), "{:?}", m);
        prop_assert!(m.starts_with("<84>Mar 14 09:26:53 kc-audit-1.example.com kcaudit[4711]: "), "{:?}", m);
    }

    #[test]
    fn ocsf_carries_hostile_values(v in evil()) {
        let e = hostile_event(&v);
        let recs = ocsf::records(&e);
        prop_assert_eq!(recs.len(), 2);
        for r in &recs {
            ocsf::validate(r).map_err(TestCaseError::fail)?;
            let line = serde_json::to_string(r).unwrap();
            prop_assert!(!line.bytes().any(|b| b < 0x20), "raw control byte in {}", line);
        }
        let line = serde_json::to_string(&recs[0]).unwrap();
        let a: Value = serde_json::from_str(&line).unwrap();
        prop_assert_eq!(a["activity_id"].as_i64(), Some(7)); // requested_subject set: impersonation
        prop_assert_eq!(a["type_uid"].as_i64(), Some(300207));
        prop_assert_eq!(a["user"]["name"].as_str(), Some(v.username.as_str()));
        prop_assert_eq!(a["user"]["uid"].as_str(), Some(v.user_id.as_str()));
        prop_assert_eq!(a["actor"]["app_uid"].as_str(), Some(v.client.as_str()));
        prop_assert_eq!(a["actor"]["user"]["name"].as_str(), Some(v.impersonator.as_str()));
        prop_assert_eq!(a["service"]["name"].as_str(), Some(v.audience.as_str()));
        prop_assert_eq!(a["status_code"].as_str(), Some(v.error.as_str()));
        prop_assert_eq!(a["status_detail"].as_str(), Some(v.detail.as_str()));
        prop_assert_eq!(a["session"]["uid"].as_str(), Some(v.session.as_str()));
        prop_assert_eq!(a["unmapped"]["realm"].as_str(), Some(v.realm.as_str()));
        prop_assert_eq!(a["unmapped"]["scope"].as_str(), Some(v.scope.as_str()));
        prop_assert_eq!(a["unmapped"]["requested_subject"].as_str(), Some(v.requested_subject.as_str()));
        prop_assert_eq!(a["unmapped"]["details"]["x-evil"].as_str(), Some(v.detail.as_str()));
        prop_assert_eq!(a["unmapped"]["keycloak_event_type"].as_str(), Some(v.event_type.as_str()));
        let f: Value = serde_json::from_str(&serde_json::to_string(&recs[1]).unwrap()).unwrap();
        prop_assert_eq!(f["finding_info"]["desc"].as_str(), Some(v.reason.as_str()));
        prop_assert_eq!(f["finding_info"]["title"].as_str(), Some(v.title.as_str()));
        let uid = format!("{}:new-audience", e.id);
        prop_assert_eq!(f["finding_info"]["uid"].as_str(), Some(uid.as_str()));
        // The canonical JSON line too.
        let j = syslog::json_message(&e);
        let breaking = j.chars().any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}');
        prop_assert!(!breaking, "raw control or line separator in {:?}", j);
        let back: AuditEvent = serde_json::from_str(&j).unwrap();
        prop_assert_eq!(back, e);
    }
}

fn check_cef_opts(rec: &str, v: &Evil, e: &AuditEvent) -> Result<(), TestCaseError> {
    // The snapshot options only change the version field.
    let normal = rec.replacen("|1.4.0|", &format!("|{}|", env!("CARGO_PKG_VERSION")), 1);
    check_cef(&normal, v, e)
}

// ---------------------------------------------------------------------------------------------
// Edge cases outside the property tests
// ---------------------------------------------------------------------------------------------

#[test]
fn empty_values_are_left_out() {
    let mut e = running_example();
    e.subject.username = Some(Default::default());
    e.error = Some(Default::default());
    e.token_exchange.as_mut().unwrap().scope = Some(Default::default());
    let p = parse_cef(&cef::event(&e, &CefOptions::default())).unwrap();
    assert!(!p.ext.contains_key("duser") && !p.ext.contains_key("reason") && !p.ext.contains_key("cs3") && !p.ext.contains_key("cs3Label"));
    let l = parse_leef(&leef::event(&e, &LeefOptions::default())).unwrap();
    assert!(!l.attrs.contains_key("usrName") && !l.attrs.contains_key("kcScope"));
    let sd = syslog::structured_data(&e);
    assert!(!sd[0].params.iter().any(|(k, _)| k == "sub" || k == "error"));
}

#[test]
fn ipv6_and_unparsable_addresses() {
    let mut e = running_example();
    e.ip = Some("2001:db8::7".parse().unwrap());
    e.ip_address = Some("2001:db8::7".into());
    let p = parse_cef(&cef::event(&e, &CefOptions::default())).unwrap();
    assert_eq!(p.ext.get("c6a2").map(String::as_str), Some("2001:db8::7"));
    assert_eq!(p.ext.get("c6a2Label").map(String::as_str), Some("Source IPv6 Address"));
    assert!(!p.ext.contains_key("src"));
    e.ip = Some("::ffff:203.0.113.9".parse().unwrap());
    let p = parse_cef(&cef::event(&e, &CefOptions::default())).unwrap();
    assert_eq!(p.ext.get("src").map(String::as_str), Some("203.0.113.9"));
    e.ip = None;
    e.ip_address = Some("unknown, 10.0.0.1".into());
    let p = parse_cef(&cef::event(&e, &CefOptions::default())).unwrap();
    assert!(!p.ext.contains_key("src") && !p.ext.contains_key("c6a2"));
    let r = ocsf::authentication(&e);
    ocsf::validate(&r).unwrap();
    assert_eq!(r["src_endpoint"], serde_json::json!({"name": "unknown, 10.0.0.1"}));
    assert_eq!(r["unmapped"]["ip_address"], "unknown, 10.0.0.1");
}

#[test]
fn syslog_severity_mapping() {
    let mut e = running_example();
    assert_eq!(syslog::severity_of(&e), 4); // medium finding
    e.findings.clear();
    e.severity = None;
    assert_eq!(syslog::severity_of(&e), 6);
    e.outcome = Outcome::Failure;
    assert_eq!(syslog::severity_of(&e), 4);
    for (s, n) in [(Severity::Info, 4), (Severity::Low, 4), (Severity::Medium, 4), (Severity::High, 3), (Severity::Critical, 2)] {
        let mut f = running_example();
        f.outcome = Outcome::Failure;
        f.findings[0].severity = s;
        f.severity = Some(s);
        assert_eq!(syslog::severity_of(&f), n, "{s}");
    }
    let m = syslog::rfc5424(&SyslogHeader::default(), syslog::severity_of(&e), Some(Utc.timestamp_millis_opt(0).unwrap()), &[], "x");
    assert_eq!(m, "<84>1 1970-01-01T00:00:00.000Z - kcaudit - - - x");
}

#[test]
fn payload_and_framing_are_serde_names() {
    assert_eq!(serde_json::to_value(Payload::Cef).unwrap(), "cef");
    assert_eq!(serde_json::from_value::<Framing>("rfc3164".into()).unwrap(), Framing::Rfc3164);
}

// ---------------------------------------------------------------------------------------------
// The whole fixture timeline (67 enriched, flagged events)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_timeline_in_every_format() {
    let events = common::clickhouse::fixture_events().await;
    assert_eq!(events.len(), 67);
    let mut finding_uids = BTreeSet::new();
    let (mut n_findings, mut n_impersonation, mut n_admin) = (0, 0, 0);
    for e in &events {
        let recs = ocsf::records(e);
        assert_eq!(recs.len(), 1 + e.findings.len(), "{}", e.id);
        for r in &recs {
            if let Err(m) = ocsf::validate(r) {
                panic!("{}: {m}\n{r:#}", e.id);
            }
            let class = r["class_uid"].as_i64().unwrap();
            assert_eq!(r["type_uid"].as_i64().unwrap(), class * 100 + r["activity_id"].as_i64().unwrap());
            assert_eq!(r["category_uid"].as_i64().unwrap(), class / 1000);
            assert_eq!(r["time"].as_i64().unwrap(), e.time.unwrap().timestamp_millis());
        }
        let ev = &recs[0];
        match e.kind {
            EventKind::User => {
                assert_eq!(ev["class_uid"], 3002);
                let te = e.token_exchange.as_ref();
                if te.is_some_and(|t| t.requested_subject.is_some()) {
                    n_impersonation += 1;
                    assert_eq!((ev["activity_id"].as_i64(), ev["account_switch_type_id"].as_i64()), (Some(7), Some(2)), "{}", e.id);
                } else if te.is_some() {
                    assert_eq!((ev["activity_id"].as_i64(), ev["activity_name"].as_str()), (Some(99), Some("Token Exchange")));
                } else if e.event_type.starts_with("LOGIN") {
                    assert_eq!(ev["activity_id"], 1);
                }
                assert_eq!(ev["status_id"], if e.outcome == Outcome::Success { 1 } else { 2 });
            }
            EventKind::Admin => {
                n_admin += 1;
                assert_eq!(ev["class_uid"], 6003);
            }
        }
        assert_eq!(ev["severity_id"].as_i64().unwrap() as u8, ocsf::severity_id(e.severity));
        for f in &recs[1..] {
            n_findings += 1;
            assert_eq!(f["class_uid"], 2004);
            assert_eq!(f["finding_info"]["related_events"][0]["uid"], e.id.as_str());
            assert!(finding_uids.insert(f["finding_info"]["uid"].as_str().unwrap().to_string()), "duplicate finding uid");
        }

        // The line formats parse strictly for every real event too.
        let c = parse_cef(&cef::event(e, &CefOptions::default())).unwrap_or_else(|m| panic!("{}: {m}", e.id));
        assert_eq!(c.header[4], e.event_type);
        assert_eq!(c.header[6], cef::severity(e).to_string());
        assert_eq!(c.ext["externalId"], e.id);
        if !e.findings.is_empty() {
            assert_eq!(c.ext["cs2"], e.findings.iter().map(|f| f.rule.as_str()).collect::<Vec<_>>().join(","));
        }
        let l = parse_leef(&leef::event(e, &LeefOptions::default())).unwrap_or_else(|m| panic!("{}: {m}", e.id));
        assert_eq!(l.attrs["kcEventId"], e.id);
        for payload in [Payload::Json, Payload::Cef, Payload::Leef, Payload::Text, Payload::Ocsf] {
            let ms = syslog::messages(&format(Framing::Rfc5424, payload), e);
            assert_eq!(ms.len(), if payload == Payload::Ocsf { recs.len() } else { 1 });
            for (k, m) in ms.iter().enumerate() {
                let p = parse_5424(m).unwrap_or_else(|x| panic!("{}: {x}\n{m}", e.id));
                if k == 0 {
                    assert_eq!(p.pri, 80 + u16::from(syslog::severity_of(e)));
                }
                assert_eq!(p.sd[0].1["id"], e.id);
                if payload == Payload::Ocsf {
                    let v: Value = serde_json::from_str(p.msg.as_deref().unwrap()).unwrap();
                    assert_eq!(v, recs[k]);
                }
            }
            for m in syslog::messages(&format(Framing::Rfc3164, payload), e) {
                assert!(m.len() <= 1024 && !m.contains(['\r', '\n', '\0']));
            }
        }
    }
    assert!(n_findings > 0 && n_impersonation > 0 && n_admin > 0, "{n_findings} {n_impersonation} {n_admin}");
}
