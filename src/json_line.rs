//! The audit event as one JSON line, written directly: the hot path of the audit log and of every
//! sink that carries the whole event (Splunk HEC, Sentinel's `RawEvent`).
//!
//! Why not `serde_json::to_writer`: the derived serializer escapes every key again for every event
//! and scans every value a byte at a time; with ~100 fields and ~2 KB per enriched event that was the
//! largest single cost of a webhook-to-audit-log run (issue #9, callgrind: ~31,000 instructions per
//! event; this writer: see the notes on the issue). Keys here are literals, and a string that needs
//! no escaping (nearly all of them) is checked and copied eight bytes at a time.
//!
//! The output is byte-for-byte what `serde_json::to_string(&event)` gives, field order included: the
//! serde derive stays the definition (schema, reading events back), and tests compare both writers on
//! every fixture event, on an event with every optional part present, and on random strings. A field
//! added to the model without being added here fails those tests.

use std::collections::HashMap;
use std::sync::Arc;

use crate::event::*;

/// The JSON of the enrichment's shared parts (clients, users, policy verdicts), written once and then
/// copied: the same few hundred clients and users appear on every event, and writing their ~10
/// fields each time was a third of an enriched line's cost (issue #9).
///
/// Keyed by the `Arc`'s address. An entry is never stale: it holds a clone of the `Arc`, so the
/// address cannot be freed and reused for another value while the entry exists, and a shared value
/// cannot change (none of these types has interior mutability, and `Arc::make_mut` copies a shared
/// value instead of changing it). Bounded: a map that reaches [`Memo::MAX_ENTRIES`] starts afresh,
/// which also lets go of values a directory reload replaced.
#[derive(Default)]
pub struct Memo {
    clients: Entries<ClientInfo>,
    users: Entries<UserInfo>,
    policies: Entries<PolicyVerdict>,
}

type Entries<T> = HashMap<usize, (Arc<T>, Box<[u8]>), ahash::RandomState>;

impl Memo {
    pub const MAX_ENTRIES: usize = 4096;

    fn write<T>(entries: &mut Entries<T>, out: &mut Vec<u8>, v: &Arc<T>, write: fn(&mut Vec<u8>, &T)) {
        let key = Arc::as_ptr(v) as usize;
        if let Some((_, json)) = entries.get(&key) {
            out.extend_from_slice(json);
            return;
        }
        let start = out.len();
        write(out, v);
        if entries.len() >= Self::MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(key, (v.clone(), out[start..].into()));
    }
}

/// Writes a shared enrichment part, through the memo when there is one.
struct Parts<'m>(Option<&'m mut Memo>);

impl Parts<'_> {
    fn client(&mut self, out: &mut Vec<u8>, c: &Arc<ClientInfo>) {
        match &mut self.0 {
            Some(m) => Memo::write(&mut m.clients, out, c, client),
            None => client(out, c),
        }
    }

    fn user(&mut self, out: &mut Vec<u8>, u: &Arc<UserInfo>) {
        match &mut self.0 {
            Some(m) => Memo::write(&mut m.users, out, u, user),
            None => user(out, u),
        }
    }

    fn policy(&mut self, out: &mut Vec<u8>, p: &Arc<PolicyVerdict>) {
        match &mut self.0 {
            Some(m) => Memo::write(&mut m.policies, out, p, policy),
            None => policy(out, p),
        }
    }
}

/// `,"name":` as one constant copy (every key here is a plain literal that needs no escaping).
macro_rules! key {
    ($out:expr, $name:literal) => {
        $out.extend_from_slice(concat!(",\"", $name, "\":").as_bytes())
    };
}

/// Append `ev` as JSON (no newline).
pub fn write_event(out: &mut Vec<u8>, ev: &AuditEvent) {
    write(out, ev, Parts(None));
}

/// Append `ev` as JSON (no newline), taking the enrichment's shared parts from `memo` (the same bytes
/// as [`write_event`]; a sink that writes many events keeps one memo for all of them).
pub fn write_event_memo(out: &mut Vec<u8>, ev: &AuditEvent, memo: &mut Memo) {
    write(out, ev, Parts(Some(memo)));
}

fn write(out: &mut Vec<u8>, ev: &AuditEvent, parts: Parts<'_>) {
    out.extend_from_slice(b"{\"schema_version\":");
    num(out, ev.schema_version);
    key!(out, "id");
    string(out, &ev.id);
    key!(out, "id_derived");
    boolean(out, ev.id_derived);
    key!(out, "time");
    opt_time(out, ev.time.as_ref());
    key!(out, "time_source");
    string(out, ev.time_source.name());
    if let Some(t) = &ev.received_at {
        key!(out, "received_at");
        opt_time(out, Some(t));
    }
    key!(out, "kind");
    string(out, ev.kind.name());
    key!(out, "type");
    string(out, &ev.event_type);
    key!(out, "outcome");
    string(out, ev.outcome.name());
    key!(out, "error");
    opt_string(out, ev.error.as_deref());
    out.extend_from_slice(b",\"realm\":{\"id\":");
    opt_string(out, ev.realm.id.as_deref());
    key!(out, "name");
    opt_string(out, ev.realm.name.as_deref());
    out.extend_from_slice(b"},\"client_id\":");
    opt_string(out, ev.client_id.as_deref());
    out.extend_from_slice(b",\"subject\":{\"id\":");
    opt_string(out, ev.subject.id.as_deref());
    key!(out, "username");
    opt_string(out, ev.subject.username.as_deref());
    out.extend_from_slice(b"},\"session_id\":");
    opt_string(out, ev.session_id.as_deref());
    key!(out, "ip_address");
    opt_string(out, ev.ip_address.as_deref());
    key!(out, "ip");
    match &ev.ip {
        Some(ip) => {
            // An address's text never needs escaping. IPv4 (nearly every event) digit by digit, as
            // `Display` writes it, without the formatting machinery.
            out.push(b'"');
            match ip {
                std::net::IpAddr::V4(v4) => {
                    for (i, octet) in v4.octets().into_iter().enumerate() {
                        if i > 0 {
                            out.push(b'.');
                        }
                        num(out, octet);
                    }
                }
                std::net::IpAddr::V6(_) => {
                    let _ = std::io::Write::write_fmt(out, format_args!("{ip}"));
                }
            }
            out.push(b'"');
        }
        None => null(out),
    }
    key!(out, "token_exchange");
    match &ev.token_exchange {
        Some(te) => token_exchange(out, te),
        None => null(out),
    }
    key!(out, "details");
    string_map(out, &ev.details);
    key!(out, "admin");
    match &ev.admin {
        Some(a) => admin(out, a),
        None => null(out),
    }
    key!(out, "enrichment");
    match &ev.enrichment {
        Some(e) => enrichment(out, e, parts),
        None => null(out),
    }
    key!(out, "findings");
    list(out, &ev.findings, finding);
    key!(out, "severity");
    match ev.severity {
        Some(s) => string(out, s.name()),
        None => null(out),
    }
    key!(out, "origin");
    origin(out, &ev.origin);
    key!(out, "warnings");
    list(out, &ev.warnings, |out, w| {
        out.extend_from_slice(b"{\"code\":");
        string(out, &w.code);
        key!(out, "message");
        string(out, &w.message);
        out.push(b'}');
    });
    out.push(b'}');
}

fn token_exchange(out: &mut Vec<u8>, te: &TokenExchange) {
    out.extend_from_slice(b"{\"exchanger\":");
    opt_string(out, te.exchanger.as_deref());
    key!(out, "audiences");
    strings(out, &te.audiences);
    for (k, v) in [
        ("subject_token_client_id", &te.subject_token_client_id),
        ("requested_subject", &te.requested_subject),
        ("impersonator", &te.impersonator),
        ("requested_token_type", &te.requested_token_type),
        ("scope", &te.scope),
        ("requested_issuer", &te.requested_issuer),
        ("subject_issuer", &te.subject_issuer),
        ("actor", &te.actor),
    ] {
        key(out, k);
        opt_string(out, v.as_deref());
    }
    key!(out, "flavour");
    string(out, te.flavour.name());
    key!(out, "flavour_reason");
    string(out, &te.flavour_reason);
    out.push(b'}');
}

fn admin(out: &mut Vec<u8>, a: &AdminInfo) {
    out.extend_from_slice(b"{\"operation\":");
    opt_string(out, a.operation.as_deref());
    for (k, v) in [
        ("resource_type", &a.resource_type),
        ("resource_path", &a.resource_path),
        ("resource_id", &a.resource_id),
        ("representation", &a.representation),
    ] {
        key(out, k);
        opt_string(out, v.as_deref());
    }
    out.extend_from_slice(b",\"auth\":{\"realm_id\":");
    opt_string(out, a.auth.realm_id.as_deref());
    for (k, v) in [
        ("realm_name", &a.auth.realm_name),
        ("client_uuid", &a.auth.client_uuid),
        ("user_id", &a.auth.user_id),
        ("username", &a.auth.username),
        ("ip_address", &a.auth.ip_address),
    ] {
        key(out, k);
        opt_string(out, v.as_deref());
    }
    out.extend_from_slice(b"}}");
}

fn enrichment(out: &mut Vec<u8>, e: &Enrichment, mut parts: Parts<'_>) {
    out.extend_from_slice(b"{\"status\":");
    string(out, e.status.name());
    key!(out, "misses");
    strings(out, &e.misses);
    key!(out, "source");
    opt_string(out, e.source.as_deref());
    key!(out, "exchanger");
    opt(out, e.exchanger.as_ref(), |out, c| parts.client(out, c));
    key!(out, "subject");
    opt(out, e.subject.as_ref(), |out, u| parts.user(out, u));
    key!(out, "audiences");
    list(out, &e.audiences, |out, a| {
        out.extend_from_slice(b"{\"audience\":");
        string(out, &a.audience);
        key!(out, "known");
        opt(out, a.known, |out, k| boolean(out, k));
        key!(out, "client");
        opt(out, a.client.as_ref(), |out, c| parts.client(out, c));
        out.push(b'}');
    });
    key!(out, "subject_token_client");
    opt(out, e.subject_token_client.as_ref(), |out, c| parts.client(out, c));
    key!(out, "impersonator");
    opt(out, e.impersonator.as_ref(), |out, u| parts.user(out, u));
    key!(out, "requested_subject");
    opt(out, e.requested_subject.as_ref(), |out, u| parts.user(out, u));
    key!(out, "policy");
    opt(out, e.policy.as_ref(), |out, p| parts.policy(out, p));
    key!(out, "resource_client");
    opt(out, e.resource_client.as_ref(), |out, c| parts.client(out, c));
    out.push(b'}');
}

fn policy(out: &mut Vec<u8>, p: &PolicyVerdict) {
    out.extend_from_slice(b"{\"within_policy\":");
    string(out, p.within_policy.name());
    key!(out, "reason");
    string(out, &p.reason);
    key!(out, "allowed_audiences");
    opt(out, p.allowed_audiences.as_deref(), strings);
    out.push(b'}');
}

fn client(out: &mut Vec<u8>, c: &ClientInfo) {
    out.extend_from_slice(b"{\"client_id\":");
    string(out, &c.client_id);
    key!(out, "uuid");
    opt_string(out, c.uuid.as_deref());
    key!(out, "name");
    opt_string(out, c.name.as_deref());
    key!(out, "description");
    opt_string(out, c.description.as_deref());
    key!(out, "enabled");
    opt(out, c.enabled, |out, b| boolean(out, b));
    key!(out, "access_type");
    opt_string(out, c.access_type.as_deref());
    key!(out, "service_accounts_enabled");
    opt(out, c.service_accounts_enabled, |out, b| boolean(out, b));
    key!(out, "token_exchange");
    string(out, &c.token_exchange);
    out.push(b'}');
}

fn user(out: &mut Vec<u8>, u: &UserInfo) {
    out.extend_from_slice(b"{\"id\":");
    opt_string(out, u.id.as_deref());
    key!(out, "username");
    opt_string(out, u.username.as_deref());
    key!(out, "email");
    opt_string(out, u.email.as_deref());
    key!(out, "enabled");
    opt(out, u.enabled, |out, b| boolean(out, b));
    key!(out, "service_account");
    boolean(out, u.service_account);
    key!(out, "service_account_client_id");
    opt_string(out, u.service_account_client_id.as_deref());
    key!(out, "privileged");
    boolean(out, u.privileged);
    key!(out, "privileged_reason");
    opt_string(out, u.privileged_reason.as_deref());
    key!(out, "attributes");
    map(out, &u.attributes, |out, v| strings(out, v));
    out.push(b'}');
}

fn finding(out: &mut Vec<u8>, f: &Finding) {
    out.extend_from_slice(b"{\"rule\":");
    string(out, &f.rule);
    key!(out, "severity");
    string(out, f.severity.name());
    key!(out, "title");
    string(out, &f.title);
    key!(out, "reason");
    string(out, &f.reason);
    key!(out, "attack");
    strings(out, &f.attack);
    key!(out, "related_event_ids");
    strings(out, &f.related_event_ids);
    out.push(b'}');
}

fn origin(out: &mut Vec<u8>, o: &Origin) {
    out.extend_from_slice(b"{\"input\":");
    string(out, &o.input);
    key!(out, "format");
    string(out, &o.format);
    key!(out, "line");
    opt(out, o.line, num);
    key!(out, "request_id");
    opt_string(out, o.request_id.as_deref());
    key!(out, "index");
    opt(out, o.index, num);
    key!(out, "delivery_id");
    opt_string(out, o.delivery_id.as_deref());
    key!(out, "log");
    opt(out, o.log.as_ref(), |out, l| {
        out.extend_from_slice(b"{\"timestamp\":");
        opt_string(out, l.timestamp.as_deref());
        for (k, v) in [("level", &l.level), ("logger", &l.logger), ("thread", &l.thread), ("host", &l.host)] {
            key(out, k);
            opt_string(out, v.as_deref());
        }
        out.push(b'}');
    });
    if let Some(k) = &o.kafka {
        key!(out, "kafka");
        out.extend_from_slice(b"{\"topic\":");
        string(out, &k.topic);
        key!(out, "partition");
        num(out, k.partition);
        key!(out, "offset");
        num(out, k.offset);
        key!(out, "key");
        opt_string(out, k.key.as_deref());
        key!(out, "headers");
        string_map(out, &k.headers);
        key!(out, "timestamp_ms");
        opt(out, k.timestamp_ms, num);
        out.push(b'}');
    }
    out.push(b'}');
}


/// `,"name":` for a key chosen at run time (the loops over optional fields, the webhook's reply).
pub(crate) fn key(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

#[inline]
fn null(out: &mut Vec<u8>) {
    out.extend_from_slice(b"null");
}

#[inline]
fn boolean(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

pub(crate) fn num(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn opt<T>(out: &mut Vec<u8>, v: Option<T>, write: impl FnOnce(&mut Vec<u8>, T)) {
    match v {
        Some(v) => write(out, v),
        None => null(out),
    }
}

fn opt_string(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        Some(s) => string(out, s),
        None => null(out),
    }
}

fn opt_time(out: &mut Vec<u8>, t: Option<&chrono::DateTime<chrono::Utc>>) {
    use chrono::{Datelike, Timelike};
    let Some(t) = t else { return null(out) };
    let year = t.year();
    if !(0..=9999).contains(&year) || t.nanosecond() >= 1_000_000_000 {
        // Signed or five-digit years, leap seconds: rare enough for the general formatter.
        out.push(b'"');
        out.extend_from_slice(format_time(t).as_bytes());
        out.push(b'"');
        return;
    }
    // `YYYY-MM-DDTHH:MM:SS.mmmZ`, the text `event::format_time` gives, without chrono's format parser.
    let ms = t.timestamp_subsec_millis();
    let d = |n: u32| b'0' + (n % 10) as u8;
    let y = year as u32;
    let (mo, da, h, mi, se) = (t.month(), t.day(), t.hour(), t.minute(), t.second());
    out.extend_from_slice(&[
        b'"', d(y / 1000), d(y / 100), d(y / 10), d(y), b'-', d(mo / 10), d(mo), b'-', d(da / 10), d(da), b'T',
        d(h / 10), d(h), b':', d(mi / 10), d(mi), b':', d(se / 10), d(se), b'.', d(ms / 100), d(ms / 10), d(ms), b'Z', b'"',
    ]);
}

fn list<T>(out: &mut Vec<u8>, items: &[T], mut write: impl FnMut(&mut Vec<u8>, &T)) {
    out.push(b'[');
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write(out, it);
    }
    out.push(b']');
}

fn strings<S: AsRef<str>>(out: &mut Vec<u8>, items: &[S]) {
    list(out, items, |out, s| string(out, s.as_ref()));
}

fn string_map<K: AsRef<str>, V: AsRef<str>>(out: &mut Vec<u8>, m: impl IntoIterator<Item = (K, V)>) {
    map(out, m, |out, v| string(out, v.as_ref()));
}

/// A JSON object from pairs in key order (a `BTreeMap`, or [`crate::event::Details`]).
fn map<K: AsRef<str>, V>(out: &mut Vec<u8>, m: impl IntoIterator<Item = (K, V)>, mut write: impl FnMut(&mut Vec<u8>, V)) {
    out.push(b'{');
    for (i, (k, v)) in m.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, k.as_ref());
        out.push(b':');
        write(out, v);
    }
    out.push(b'}');
}

/// A JSON string, escaped exactly as serde_json escapes (the two-character forms for `"`, `\`, and
/// backspace, form feed, newline, carriage return and tab; `\u00xx` with lowercase hex for the other
/// control characters; everything else, DEL and non-ASCII included, as is).
///
/// Why eight bytes at a time: an event has ~60 strings of ~20 bytes, nearly none needing escapes.
/// Checking and copying them a word at a time, the tail as one overlapping word, takes no call into
/// `memcpy` and no byte loop (issue #9's note has the callgrind figures).
pub(crate) fn string(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    let clean = if b.len() < 8 { copy_short(out, b) } else { copy_long(out, b) };
    if clean < b.len() {
        escape_from(out, b, clean);
    }
    out.push(b'"');
}

const ONES: u64 = 0x0101_0101_0101_0101;

/// Whether any of the eight bytes of `w` must be escaped: below 0x20, `"` or `\`. The classic
/// "has a byte less than n" and "has a zero byte" tests: a borrow only ever starts at a byte that
/// matches, so the answer (not the position) is exact.
#[inline(always)]
fn word_needs_escape(w: u64) -> bool {
    let control = w.wrapping_sub(ONES * 0x20) & !w;
    let q = w ^ (ONES * u64::from(b'"'));
    let quote = q.wrapping_sub(ONES) & !q;
    let bs = w ^ (ONES * u64::from(b'\\'));
    let backslash = bs.wrapping_sub(ONES) & !bs;
    (control | quote | backslash) & (ONES * 0x80) != 0
}

#[inline(always)]
fn word_at(b: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(w)
}

/// `b` (8 bytes or more) copied while it needs no escaping; returns how many bytes were copied.
#[inline(always)]
fn copy_long(out: &mut Vec<u8>, b: &[u8]) -> usize {
    let mut i = 0;
    while b.len() - i > 8 {
        let w = word_at(b, i);
        if word_needs_escape(w) {
            return i;
        }
        out.extend_from_slice(&w.to_le_bytes());
        i += 8;
    }
    // The last (up to) eight bytes as one word that overlaps what was copied: step back over the
    // overlap and write the whole word (the overlapping bytes are the same bytes again).
    let last = word_at(b, b.len() - 8);
    if word_needs_escape(last) {
        return i;
    }
    out.truncate(out.len() - (8 - (b.len() - i)));
    out.extend_from_slice(&last.to_le_bytes());
    b.len()
}

/// `b` (under 8 bytes), padded with spaces (which need no escaping) to one word.
#[inline(always)]
fn copy_short(out: &mut Vec<u8>, b: &[u8]) -> usize {
    let mut w = [b' '; 8];
    for (d, &c) in w.iter_mut().zip(b) {
        *d = c;
    }
    let w = u64::from_le_bytes(w);
    if word_needs_escape(w) {
        return 0;
    }
    out.extend_from_slice(&w.to_le_bytes());
    out.truncate(out.len() - (8 - b.len()));
    b.len()
}

/// The rest of `b` from `start`, escaping what must be.
#[cold]
fn escape_from(out: &mut Vec<u8>, b: &[u8], mut start: usize) {
    for i in start..b.len() {
        let c = b[i];
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => &[],
            _ => continue,
        };
        out.extend_from_slice(&b[start..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(c >> 4)], HEX[usize::from(c & 0xf)]]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn check(ev: &AuditEvent) {
        let mut ours = Vec::new();
        write_event(&mut ours, ev);
        let serde = serde_json::to_string(ev).unwrap();
        assert_eq!(String::from_utf8(ours).unwrap(), serde);
    }

    /// Every optional part present, every list non-empty, awkward characters everywhere: a field
    /// missing from this writer (or written in another order or form) fails here.
    fn full_event() -> AuditEvent {
        let odd = "q\"b\\s/\u{0}\u{1f}\u{7f}\n\r\t\u{8}\u{c}é\u{202e}😀";
        let client = Arc::new(ClientInfo {
            client_id: format!("c{odd}"),
            uuid: Some("u".into()),
            name: Some("n".into()),
            description: Some(odd.into()),
            enabled: Some(true),
            access_type: Some("confidential".into()),
            service_accounts_enabled: Some(false),
            token_exchange: "standard_v2".into(),
        });
        let user = Arc::new(UserInfo {
            id: Some("i".into()),
            username: Some(odd.into()),
            email: Some("e@x".into()),
            enabled: Some(false),
            service_account: true,
            service_account_client_id: Some("sa".into()),
            privileged: true,
            privileged_reason: Some("role admin".into()),
            attributes: BTreeMap::from([("dept".to_string(), vec!["a".to_string(), odd.to_string()]), ("z".to_string(), vec![])]),
        });
        AuditEvent {
            schema_version: SCHEMA_VERSION,
            id: odd.into(),
            id_derived: true,
            time: Some(chrono::DateTime::from_timestamp_millis(1_773_043_083_214).unwrap()),
            time_source: TimeSource::LogLine,
            received_at: Some(chrono::DateTime::from_timestamp_millis(-62_000_000_000_001).unwrap()),
            kind: EventKind::Admin,
            event_type: "TOKEN_EXCHANGE_ERROR".into(),
            outcome: Outcome::Failure,
            error: Some(odd.into()),
            realm: Realm { id: Some("r".into()), name: Some(odd.into()) },
            client_id: Some("c".into()),
            subject: Subject { id: Some("s".into()), username: Some("u".into()) },
            session_id: Some("sess".into()),
            ip_address: Some("2001:db8::1".into()),
            ip: Some("2001:db8::1".parse().unwrap()),
            token_exchange: Some(TokenExchange {
                exchanger: Some("c".into()),
                audiences: vec!["a".into(), odd.into()],
                subject_token_client_id: Some("stc".into()),
                requested_subject: Some("rs".into()),
                impersonator: Some("imp".into()),
                requested_token_type: Some("rtt".into()),
                scope: Some("openid".into()),
                requested_issuer: Some("ri".into()),
                subject_issuer: Some("si".into()),
                actor: Some("act".into()),
                flavour: ExchangeFlavour::LegacyV1,
                flavour_reason: odd.into(),
            }),
            details: [(odd, odd), ("audience", "a b")].into_iter().collect(),
            admin: Some(Box::new(AdminInfo {
                operation: Some("UPDATE".into()),
                resource_type: Some("CLIENT".into()),
                resource_path: Some("clients/x".into()),
                resource_id: Some("x".into()),
                representation: Some("{\"a\":1}".into()),
                auth: AdminAuth {
                    realm_id: Some("master".into()),
                    realm_name: Some("master".into()),
                    client_uuid: Some("cu".into()),
                    user_id: Some("ui".into()),
                    username: Some("admin".into()),
                    ip_address: Some("10.0.0.1".into()),
                },
            })),
            enrichment: Some(Enrichment {
                status: EnrichmentStatus::Partial,
                misses: vec![odd.into()],
                source: Some(Arc::from("directory:x")),
                exchanger: Some(client.clone()),
                subject: Some(user.clone()),
                audiences: vec![
                    AudienceInfo { audience: "a".into(), known: Some(true), client: Some(client.clone()) },
                    AudienceInfo { audience: odd.into(), known: None, client: None },
                ],
                subject_token_client: Some(client.clone()),
                impersonator: Some(user.clone()),
                requested_subject: Some(user),
                policy: Some(Arc::new(PolicyVerdict { within_policy: Within::No, reason: odd.into(), allowed_audiences: Some(vec!["a".into()]) })),
                resource_client: Some(client),
            }),
            findings: vec![Finding {
                rule: "new-audience".into(),
                severity: Severity::High,
                title: "t".into(),
                reason: odd.into(),
                attack: vec!["T1550.001".into()],
                related_event_ids: vec!["e1".into(), "e2".into()],
            }],
            severity: Some(Severity::Critical),
            origin: Origin {
                input: Arc::from(odd),
                format: Arc::from("jboss-logging"),
                line: Some(u64::MAX),
                request_id: Some(Arc::from("rid")),
                index: Some(7),
                delivery_id: Some("d".into()),
                log: Some(Box::new(LogEnvelope {
                    timestamp: Some("2026-03-09 07:58:04,120".into()),
                    level: Some("INFO".into()),
                    logger: Some("org.keycloak.events".into()),
                    thread: Some(odd.into()),
                    host: Some("kc-0".into()),
                })),
                kafka: Some(Arc::new(KafkaRecord {
                    topic: "t".into(),
                    partition: -1,
                    offset: i64::MIN,
                    key: Some(odd.into()),
                    headers: BTreeMap::from([("h".to_string(), odd.to_string())]),
                    timestamp_ms: Some(-5),
                })),
            },
            warnings: vec![Warning::new("value_truncated", odd)],
        }
    }

    #[test]
    fn an_event_with_every_part_is_written_exactly_as_serde_writes_it() {
        let mut full = full_event();
        check(&full);
        // Times at the edges of the formats (before year 0, after 9999, the epoch, sub-millisecond).
        for ms in [-62_198_755_200_001i64, -1, 0, 253_402_300_800_000, 8_210_298_412_799_999] {
            full.time = chrono::DateTime::from_timestamp_millis(ms);
            check(&full);
        }
        full.time = chrono::DateTime::from_timestamp(1_773_043_083, 123_456_789);
        check(&full);
        full.time = chrono::NaiveDate::from_ymd_opt(2016, 12, 31).and_then(|d| d.and_hms_milli_opt(23, 59, 59, 1_500)).map(|t| t.and_utc());
        assert!(full.time.is_some());
        check(&full);
        // And with every optional part absent.
        let mut bare = full.clone();
        bare.time = None;
        bare.received_at = None;
        bare.error = None;
        bare.realm = Realm::default();
        bare.client_id = None;
        bare.subject = Subject::default();
        bare.session_id = None;
        bare.ip_address = None;
        bare.ip = Some("203.0.113.9".parse().unwrap());
        bare.token_exchange = None;
        bare.details.clear();
        bare.admin = None;
        bare.enrichment = None;
        bare.findings.clear();
        bare.severity = None;
        bare.origin = Origin::default();
        bare.warnings.clear();
        check(&bare);
        bare.ip = None;
        let mut en = full.enrichment.clone().unwrap();
        en.exchanger = None;
        en.subject = None;
        en.audiences.clear();
        en.subject_token_client = None;
        en.impersonator = None;
        en.requested_subject = None;
        en.policy = Some(Arc::new(PolicyVerdict { within_policy: Within::Unknown, reason: String::new(), allowed_audiences: None }));
        en.resource_client = None;
        en.source = None;
        bare.enrichment = Some(en);
        check(&bare);
    }

    #[test]
    fn every_fixture_event_after_the_whole_pipeline_is_written_exactly_as_serde_writes_it() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keycloak");
        let tmp = tempfile::tempdir().unwrap();
        let sets = vec![format!("enrich.directory=\"{dir}/admin-api\""), format!("data_dir=\"{}\"", tmp.path().display())];
        let config = crate::config::Config::load(None, &sets).unwrap();
        let mut n = 0;
        for f in std::fs::read_dir(dir).unwrap().flatten().filter(|f| f.path().extension().is_some_and(|e| e == "jsonl" || e == "log")) {
            let out = tmp.path().join("out.jsonl");
            let req = crate::sources::replay::ReplayRequest {
                inputs: vec![f.path().display().to_string()],
                format: crate::decode::Format::Auto,
                out: Some(out.clone()),
                progress: false,
                state: None,
                to_sinks: false,
            };
            tokio::runtime::Runtime::new().unwrap().block_on(crate::sources::replay::run(&config, &req)).unwrap();
            for ev in crate::sources::replay::read_events(&out).unwrap() {
                check(&ev);
                n += u32::from(ev.enrichment.is_some());
            }
        }
        assert!(n > 100, "only {n} enriched events compared");
    }

    /// The memo gives the bytes `write_event` gives: on first use, on every reuse, for a shared part
    /// changed through `make_mut` (a copy at a new address, written afresh), and past its bound.
    #[test]
    fn the_memo_writes_exactly_what_the_plain_writer_writes() {
        let mut memo = Memo::default();
        let ev = full_event();
        let line = |ev: &AuditEvent, memo: &mut Memo| {
            let mut out = Vec::new();
            write_event_memo(&mut out, ev, memo);
            String::from_utf8(out).unwrap()
        };
        let serde = serde_json::to_string(&ev).unwrap();
        for _ in 0..3 {
            assert_eq!(line(&ev.clone(), &mut memo), serde);
        }
        let en = ev.enrichment.as_ref().unwrap();
        let exchanger = en.exchanger.clone().unwrap();
        // The memo holds the parts it wrote, so their addresses cannot be reused while it has them.
        let held = memo.clients.get(&(Arc::as_ptr(&exchanger) as usize)).map(|(c, _)| c.clone());
        assert!(held.is_some_and(|c| Arc::ptr_eq(&c, &exchanger)), "the exchanger's JSON was not memoised with its Arc");
        assert!(!memo.users.is_empty() && !memo.policies.is_empty());

        let mut changed = ev.clone();
        Arc::make_mut(changed.enrichment.as_mut().unwrap().exchanger.as_mut().unwrap()).name = Some("renamed".into());
        let got = line(&changed, &mut memo);
        assert!(got.contains(r#""name":"renamed""#), "{got}");
        assert_eq!(got, serde_json::to_string(&changed).unwrap());
        assert_eq!(line(&ev, &mut memo), serde, "the original is unchanged");

        // Past the bound the memo starts afresh and stays exact.
        for i in 0..Memo::MAX_ENTRIES + 10 {
            let mut e = ev.clone();
            Arc::make_mut(e.enrichment.as_mut().unwrap().exchanger.as_mut().unwrap()).client_id = format!("c{i}");
            assert_eq!(line(&e, &mut memo), serde_json::to_string(&e).unwrap());
            assert!(memo.clients.len() <= Memo::MAX_ENTRIES);
        }
    }

    /// The word-at-a-time writer at every length around its word boundaries, with each kind of byte
    /// (every control character, the two escaped printables, their neighbours, DEL, multi-byte
    /// UTF-8) at every position, alone and next to another.
    #[test]
    fn every_length_and_position_is_escaped_as_serde_escapes_it() {
        let mut specials: Vec<String> = (0u8..0x20).map(|c| char::from(c).to_string()).collect();
        specials.extend(["\"", "\\", "!", "#", "[", "]", " ", "\u{7f}", "é", "\u{202e}", "😀"].map(String::from));
        let compare = |s: &str| {
            let mut ours = b"prefix".to_vec();
            string(&mut ours, s);
            assert_eq!(std::str::from_utf8(&ours[6..]).unwrap(), serde_json::to_string(s).unwrap(), "{s:?}");
        };
        for len in 0..=40 {
            compare(&"a".repeat(len));
            for pos in 0..=len {
                for sp in &specials {
                    compare(&format!("{}{sp}{}", "a".repeat(pos), "b".repeat(len - pos)));
                    compare(&format!("{}{sp}{sp}{}", "a".repeat(pos), "\"".repeat(len - pos)));
                }
            }
        }
    }

    /// IPv4 addresses are written digit by digit: the same text as `Display`, at every octet width.
    #[test]
    fn ipv4_addresses_are_written_as_display_writes_them() {
        let mut ev = full_event();
        for octets in [[0, 0, 0, 0], [255, 255, 255, 255], [10, 42, 6, 7], [1, 22, 133, 9], [192, 168, 100, 10]] {
            ev.ip = Some(std::net::IpAddr::from(octets));
            check(&ev);
        }
    }

    proptest! {
        #[test]
        fn any_string_is_escaped_as_serde_escapes_it(s in "\\PC*", raw in proptest::collection::vec(0u8..0x80, 0..40)) {
            let ascii = String::from_utf8(raw).unwrap();
            for s in [s.as_str(), ascii.as_str()] {
                let mut ours = Vec::new();
                string(&mut ours, s);
                prop_assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(s).unwrap());
            }
        }
    }
}
