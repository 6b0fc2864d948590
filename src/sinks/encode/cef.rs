//! ArcSight Common Event Format (CEF:0): one record per canonical event, without a syslog header
//! (the syslog encoder in [`super::syslog`] adds one when the payload travels over syslog).
//!
//! ```text
//! CEF:0|kcaudit|kcaudit|0.1.0|TOKEN_EXCHANGE|Keycloak token exchange: New audience …|5|rt=… externalId=… …
//! ```
//!
//! # Escaping (CEF implementation standard, v27)
//!
//! | character | header field | extension value |
//! |---|---|---|
//! | `\` | `\\` | `\\` |
//! | `\|` | `\|` | literal (a pipe cannot end the extension) |
//! | `=` | literal | `\=` |
//! | CR, LF | not allowed: replaced by U+FFFD | the two characters `\r`, `\n` |
//! | every other control character (C0 incl. NUL and TAB, DEL, C1 incl. NEL) and U+2028/U+2029 | U+FFFD | U+FFFD |
//!
//! CEF defines no escape for the last row, so those characters are replaced by U+FFFD (the Unicode
//! replacement character): no record can be split, and no receiver sees a byte it might treat as a
//! terminator (NUL) or line break (NEL, LS, PS). Bidirectional formatting characters (U+202E, ...) are
//! kept, as everywhere in kcaudit: they are evidence, and they cannot move a field boundary.
//!
//! Lengths are enforced on the *unescaped* text, in characters, before escaping (never in the middle
//! of an escape sequence or a UTF-8 sequence): vendor and product 63, version 31, Device Event Class
//! ID 1023, Name 512, and each extension key its dictionary length (`externalId` 40, `act` and
//! `outcome` 63, `csN` 4000, most others 1023).
//!
//! # Extension layout
//!
//! The pairs are written in a fixed order and empty values are left out (a key is never written
//! without a value). The last pair is always `cat`, whose value kcaudit chooses: CEF says trailing
//! spaces of the last value are lost, so no attacker-controlled value is ever last.
//!
//! | key | token exchange | other user event | admin event |
//! |---|---|---|---|
//! | `rt` | event time, epoch ms | same | same |
//! | `externalId` | Keycloak event id | same | same |
//! | `src` (IPv4, incl. IPv4-mapped IPv6) or `c6a2` + `c6a2Label` | caller address | same | the administrator's address |
//! | `suser` / `suid` | exchanger client | – | administrator username / user id |
//! | `duser` / `duid` | token subject (the impersonated user for V1 impersonation) | event user | – |
//! | `destinationServiceName` | audience(s), space-separated | the event's client | – |
//! | `reason` | Keycloak `error` | same | same |
//! | `cs1` realm, `cs2` findings (rule ids, comma-separated), `cs3` scope, `cs4` impersonator, `cs5` requestedSubject (raw, as the caller sent it), `cs6` subjectTokenClient (TE) or resourcePath (admin) | | | |
//! | `msg` | the findings' reasons, `; `-separated | same | same |
//! | `act`, `outcome`, `cat` | `token-exchange`, `success`/`failure`, `/Authentication/OAuth/TokenExchange` | `login`, …, `/Authentication/Keycloak/UserEvent` | `create`, …, `/IAM/Keycloak/AdminEvent` |
//!
//! `requestClientApplication` is *not* used for the OAuth client: in CEF it is the User-Agent.

use std::net::IpAddr;

use crate::event::{AuditEvent, EventKind, Outcome, Severity};

/// Header identity of the records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CefOptions {
    /// Device Vendor (≤63 characters).
    pub vendor: String,
    /// Device Product (≤63 characters).
    pub product: String,
    /// Device Version (≤31 characters); defaults to kcaudit's version.
    pub version: String,
}

impl Default for CefOptions {
    fn default() -> Self {
        CefOptions { vendor: "kcaudit".into(), product: "kcaudit".into(), version: env!("CARGO_PKG_VERSION").into() }
    }
}

/// Header field length limits (characters).
pub const MAX_VENDOR: usize = 63;
pub const MAX_PRODUCT: usize = 63;
pub const MAX_VERSION: usize = 31;
pub const MAX_CLASS_ID: usize = 1023;
pub const MAX_NAME: usize = 512;

/// Extension value length limits (characters), from the CEF dictionary.
pub const MAX_EXTERNAL_ID: usize = 40;
pub const MAX_STRING: usize = 1023;
pub const MAX_SHORT: usize = 63;
pub const MAX_CUSTOM_STRING: usize = 4000;

/// The one record for `e`.
///
/// **Device Event Class ID = the Keycloak event type** (`TOKEN_EXCHANGE`, `TOKEN_EXCHANGE_ERROR`,
/// `LOGIN`, `PROTOCOL_MAPPER-CREATE`, ...), not the top finding rule: ArcSight (and QRadar, for LEEF)
/// key their event categorisation on this field, so it must be a small, static vocabulary that means
/// the same thing for every occurrence. A finding rule would make the class of one event depend on the
/// detector's state (learning period, history), could not express two findings, and would leave
/// unflagged events with no class at all. The findings are in `cs2` (rule ids), in `Name` (the worst
/// finding's title) and in `Severity`.
///
/// **Severity** (0–10): see [`severity`].
pub fn event(e: &AuditEvent, o: &CefOptions) -> String {
    let mut out = String::with_capacity(640);
    out.push_str("CEF:0|");
    for (value, max) in [
        (o.vendor.as_str(), MAX_VENDOR),
        (o.product.as_str(), MAX_PRODUCT),
        (o.version.as_str(), MAX_VERSION),
        (class_id(e), MAX_CLASS_ID),
    ] {
        out.push_str(&escape_header(truncate_chars(value, max)));
        out.push('|');
    }
    out.push_str(&escape_header(truncate_chars(&name(e), MAX_NAME)));
    out.push('|');
    out.push_str(&severity(e).to_string());
    out.push('|');

    let mut x = Ext { out, first: true };
    if let Some(t) = e.time {
        x.pair("rt", Some(&t.timestamp_millis().to_string()), usize::MAX);
    }
    x.pair("externalId", Some(&e.id), MAX_EXTERNAL_ID);
    match address(e) {
        Some(IpAddr::V4(a)) => x.pair("src", Some(&a.to_string()), usize::MAX),
        Some(IpAddr::V6(a)) => {
            x.pair("c6a2", Some(&a.to_string()), usize::MAX);
            x.pair("c6a2Label", Some("Source IPv6 Address"), usize::MAX);
        }
        None => {}
    }
    let te = e.token_exchange.as_ref();
    match e.kind {
        EventKind::Admin => {
            let auth = e.admin.as_ref().map(|a| &a.auth);
            x.pair("suser", auth.and_then(|a| a.username.as_deref()), MAX_STRING);
            x.pair("suid", auth.and_then(|a| a.user_id.as_deref()), MAX_STRING);
        }
        EventKind::User => {
            if te.is_some() {
                x.pair("suser", exchanger(e), MAX_STRING);
            }
            x.pair("duser", subject_name(e), MAX_STRING);
            x.pair("duid", subject_id(e), MAX_STRING);
            let service = if te.is_some() { audiences(e) } else { e.client_id.as_deref().map(str::to_owned) };
            x.pair("destinationServiceName", service.as_deref(), MAX_STRING);
        }
    }
    x.pair("reason", e.error.as_deref(), MAX_STRING);
    x.custom(1, "realm", realm(e));
    x.custom(2, "findings", rules(e).as_deref());
    x.custom(3, "scope", te.and_then(|t| t.scope.as_deref()));
    x.custom(4, "impersonator", te.and_then(|t| t.impersonator.as_deref()));
    x.custom(5, "requestedSubject", te.and_then(|t| t.requested_subject.as_deref()));
    match e.kind {
        EventKind::User => x.custom(6, "subjectTokenClient", te.and_then(|t| t.subject_token_client_id.as_deref())),
        EventKind::Admin => x.custom(6, "resourcePath", e.admin.as_ref().and_then(|a| a.resource_path.as_deref())),
    }
    x.pair("msg", reasons(e).as_deref(), MAX_STRING);
    x.pair("act", Some(&action(e)), MAX_SHORT);
    x.pair("outcome", Some(e.outcome.name()), MAX_SHORT);
    x.pair("cat", Some(category(e)), MAX_STRING);
    x.out
}

/// CEF severity 0–10 (0–3 Low, 4–6 Medium, 7–8 High, 9–10 Very-High), from the worst finding:
/// info 2, low 3, medium 5, high 8, critical 10. Without findings: 1 for a success, 3 (still Low)
/// for a failure; a failure never lowers a finding's number.
pub fn severity(e: &AuditEvent) -> u8 {
    let base = match e.outcome {
        Outcome::Success => 1,
        Outcome::Failure => 3,
    };
    let finding = match worst(e) {
        None => 0,
        Some(Severity::Info) => 2,
        Some(Severity::Low) => 3,
        Some(Severity::Medium) => 5,
        Some(Severity::High) => 8,
        Some(Severity::Critical) => 10,
    };
    base.max(finding)
}

/// Escape a header field: `\` → `\\`, `|` → `\|`; control characters (which the header does not
/// allow) and U+2028/U+2029 → U+FFFD.
pub fn escape_header(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            c if is_breaking(c) => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// Escape an extension value: `\` → `\\`, `=` → `\=`, CR → `\r`, LF → `\n` (two characters each);
/// other control characters and U+2028/U+2029 → U+FFFD. Pipes and spaces stay literal.
pub fn escape_extension_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c if is_breaking(c) => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// Extension writer: skips absent and empty values, truncates, escapes.
struct Ext {
    out: String,
    first: bool,
}

impl Ext {
    fn pair(&mut self, key: &str, value: Option<&str>, max: usize) {
        let Some(v) = value.filter(|v| !v.is_empty()) else { return };
        if !self.first {
            self.out.push(' ');
        }
        self.first = false;
        self.out.push_str(key);
        self.out.push('=');
        self.out.push_str(&escape_extension_value(truncate_chars(v, max)));
    }

    /// `csN` with its mandatory `csNLabel`, both or neither.
    fn custom(&mut self, n: u8, label: &str, value: Option<&str>) {
        if value.is_some_and(|v| !v.is_empty()) {
            self.pair(&format!("cs{n}Label"), Some(label), MAX_STRING);
            self.pair(&format!("cs{n}"), value, MAX_CUSTOM_STRING);
        }
    }
}

fn class_id(e: &AuditEvent) -> &str {
    if e.event_type.is_empty() {
        "UNKNOWN"
    } else {
        &e.event_type
    }
}

/// Human-readable Name: what happened, then the worst finding's title.
fn name(e: &AuditEvent) -> String {
    let base = match (e.kind, e.is_token_exchange(), e.outcome) {
        (EventKind::User, true, Outcome::Success) => "Keycloak token exchange".to_string(),
        (EventKind::User, true, Outcome::Failure) => "Keycloak token exchange failed".to_string(),
        (EventKind::User, false, _) => format!("Keycloak user event {}", e.event_type),
        (EventKind::Admin, _, _) => format!("Keycloak admin event {}", e.event_type),
    };
    match worst_finding(e) {
        None => base,
        Some(f) if e.findings.len() > 1 => format!("{base}: {} (+{} more)", f.title, e.findings.len() - 1),
        Some(f) => format!("{base}: {}", f.title),
    }
}

/// `act`: `token-exchange` for exchanges (success or error), the admin operation for admin events,
/// else the event type in lower case with `-` (`login`, `code-to-token`, ...).
fn action(e: &AuditEvent) -> String {
    if e.is_token_exchange() && e.kind == EventKind::User {
        return "token-exchange".into();
    }
    if let Some(op) = e.admin.as_ref().and_then(|a| a.operation.as_deref()).filter(|o| !o.is_empty()) {
        return op.to_ascii_lowercase();
    }
    let t = e.event_type.strip_suffix("_ERROR").unwrap_or(&e.event_type);
    t.to_ascii_lowercase().replace('_', "-")
}

fn category(e: &AuditEvent) -> &'static str {
    match e.kind {
        EventKind::Admin => "/IAM/Keycloak/AdminEvent",
        EventKind::User if e.is_token_exchange() => "/Authentication/OAuth/TokenExchange",
        EventKind::User => "/Authentication/Keycloak/UserEvent",
    }
}

/// The caller address for the format's address field: the parsed `ip` of a user event, the
/// administrator's address of an admin event. IPv4-mapped IPv6 addresses are given as IPv4.
pub(crate) fn address(e: &AuditEvent) -> Option<IpAddr> {
    let ip = match e.kind {
        EventKind::User => e.ip,
        EventKind::Admin => e.ip.or_else(|| {
            e.admin.as_ref().and_then(|a| a.auth.ip_address.as_deref()).and_then(|s| s.trim().parse().ok())
        }),
    }?;
    Some(match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    })
}

// ---- Shared field choices (also used by the LEEF, syslog and OCSF encoders) ----

/// The realm as people name it: the name when known, else the id.
pub(crate) fn realm(e: &AuditEvent) -> Option<&str> {
    e.realm.name.as_deref().filter(|s| !s.is_empty()).or(e.realm.id.as_deref())
}

/// The requesting client of a token exchange (falls back to the event's client id).
pub(crate) fn exchanger(e: &AuditEvent) -> Option<&str> {
    e.token_exchange.as_ref().and_then(|t| t.exchanger.as_deref()).or(e.client_id.as_deref())
}

/// The user a user event is about, by name. For token exchange this is the subject of the issued
/// token: in V1 impersonation Keycloak records the impersonated user as the event's user, so this is
/// the *target*. When the exchange failed before a user was resolved, the requested subject (as the
/// directory resolved it, else as the caller sent it) stands in.
pub(crate) fn subject_name(e: &AuditEvent) -> Option<&str> {
    let enr = e.enrichment.as_ref();
    e.subject
        .username
        .as_deref()
        .or_else(|| enr.and_then(|x| x.subject.as_ref()).and_then(|u| u.username.as_deref()))
        .or_else(|| {
            if e.subject.id.is_some() {
                return None;
            }
            enr.and_then(|x| x.requested_subject.as_ref())
                .and_then(|u| u.username.as_deref())
                .or_else(|| e.token_exchange.as_ref().and_then(|t| t.requested_subject.as_deref()))
        })
}

/// The user id matching [`subject_name`].
pub(crate) fn subject_id(e: &AuditEvent) -> Option<&str> {
    e.subject.id.as_deref().or_else(|| {
        e.enrichment.as_ref().and_then(|x| x.requested_subject.as_ref()).and_then(|u| u.id.as_deref())
    })
}

/// The audiences, space-separated (as Keycloak's `details.audience`).
pub(crate) fn audiences(e: &AuditEvent) -> Option<String> {
    let t = e.token_exchange.as_ref()?;
    if t.audiences.is_empty() {
        return None;
    }
    Some(t.audiences.join(" "))
}

/// The findings' rule ids, comma-separated, in the event's order.
pub(crate) fn rules(e: &AuditEvent) -> Option<String> {
    if e.findings.is_empty() {
        return None;
    }
    Some(e.findings.iter().map(|f| f.rule.as_str()).collect::<Vec<_>>().join(","))
}

/// The findings' reasons, `; `-separated.
pub(crate) fn reasons(e: &AuditEvent) -> Option<String> {
    if e.findings.is_empty() {
        return None;
    }
    Some(e.findings.iter().map(|f| f.reason.as_str()).collect::<Vec<_>>().join("; "))
}

/// The worst severity among the findings (the event's `severity` when findings were stripped).
pub(crate) fn worst(e: &AuditEvent) -> Option<Severity> {
    e.findings.iter().map(|f| f.severity).max().or(e.severity)
}

/// The first finding with the worst severity.
pub(crate) fn worst_finding(e: &AuditEvent) -> Option<&crate::event::Finding> {
    let w = e.findings.iter().map(|f| f.severity).max()?;
    e.findings.iter().find(|f| f.severity == w)
}

/// Control characters and the Unicode line/paragraph separators: what no encoder lets through raw.
pub(crate) fn is_breaking(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// The longest prefix of `s` with at most `max` characters.
pub fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_escaping() {
        assert_eq!(escape_header(r"a|b\c=d"), r"a\|b\\c=d");
        assert_eq!(escape_header("l1\nl2\r\0\t"), "l1\u{FFFD}l2\u{FFFD}\u{FFFD}\u{FFFD}");
        assert_eq!(escape_header("\u{202E}rlo"), "\u{202E}rlo");
    }

    #[test]
    fn extension_escaping() {
        assert_eq!(escape_extension_value(r"a=b | path C:\kc"), r"a\=b | path C:\\kc");
        assert_eq!(escape_extension_value("x\r\ny"), r"x\r\ny");
        assert_eq!(escape_extension_value("nul\0tab\tdel\u{7f}nel\u{85}ls\u{2028}"), "nul\u{FFFD}tab\u{FFFD}del\u{FFFD}nel\u{FFFD}ls\u{FFFD}");
        // A literal backslash-n in the input stays distinguishable from an encoded newline.
        assert_eq!(escape_extension_value("\\n"), "\\\\n");
    }

    #[test]
    fn truncation_is_on_char_boundaries() {
        assert_eq!(truncate_chars("héllo", 2), "hé");
        assert_eq!(truncate_chars("hé", 5), "hé");
        assert_eq!(truncate_chars("", 0), "");
        assert_eq!(truncate_chars("€€€", 0), "");
    }

    #[test]
    fn severity_mapping() {
        let mut e = crate::event::AuditEvent {
            schema_version: 1,
            id: "x".into(),
            id_derived: false,
            time: None,
            time_source: crate::event::TimeSource::Missing,
            received_at: None,
            kind: EventKind::User,
            event_type: "LOGIN".into(),
            outcome: Outcome::Success,
            error: None,
            realm: Default::default(),
            client_id: None,
            subject: Default::default(),
            session_id: None,
            ip_address: None,
            ip: None,
            token_exchange: None,
            details: Default::default(),
            admin: None,
            enrichment: None,
            findings: vec![],
            severity: None,
            origin: Default::default(),
            warnings: vec![],
        };
        assert_eq!(severity(&e), 1);
        e.outcome = Outcome::Failure;
        assert_eq!(severity(&e), 3);
        for (s, n) in [(Severity::Info, 3), (Severity::Low, 3), (Severity::Medium, 5), (Severity::High, 8), (Severity::Critical, 10)] {
            e.findings = vec![crate::event::Finding {
                rule: "r".into(),
                severity: s,
                title: "t".into(),
                reason: "why".into(),
                attack: vec![],
                related_event_ids: vec![],
            }];
            assert_eq!(severity(&e), n, "{s}");
        }
        let rec = event(&e, &CefOptions::default());
        assert!(rec.starts_with(&format!("CEF:0|kcaudit|kcaudit|{}|LOGIN|Keycloak user event LOGIN: t|10|", env!("CARGO_PKG_VERSION"))), "{rec}");
        assert!(rec.ends_with(" act=login outcome=failure cat=/Authentication/Keycloak/UserEvent"), "{rec}");
        assert!(rec.contains("cs2Label=findings cs2=r msg=why "), "{rec}");
    }
}
