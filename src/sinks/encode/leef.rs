//! IBM QRadar Log Event Extended Format, LEEF 2.0: one record per canonical event, without a syslog
//! header (the syslog encoder in [`super::syslog`] adds one).
//!
//! ```text
//! LEEF:2.0|kcaudit|kcaudit|0.1.0|TOKEN_EXCHANGE|^|devTime=1773480413589^cat=TokenExchange^sev=5^…
//! ```
//!
//! # Sanitising (LEEF defines no escaping)
//!
//! LEEF has no escape mechanism at all: a delimiter inside a value *is* an attribute boundary, and a
//! `|` inside a header field shifts every later header field. So kcaudit picks a delimiter (default
//! `^`, configurable: TAB or any ASCII punctuation except `=` and `|`) and replaces, with U+FFFD (the
//! Unicode replacement character):
//!
//! - in attribute values: the delimiter, and every control character (CR, LF, TAB, NUL, the rest of
//!   C0, DEL, C1 incl. NEL) and U+2028/U+2029;
//! - in header fields: `|`, the delimiter, and the same control characters.
//!
//! Nothing else is changed (`=` inside a value is fine: parsers split an attribute at its first `=`;
//! bidirectional formatting characters are kept as evidence). Values are cut to a maximum length on
//! character boundaries: `usrName` 255 (the LEEF limit), every other value 1023, header fields 255.
//!
//! # Attributes
//!
//! Predefined keys: `devTime` (epoch ms: 13 digits, so no `devTimeFormat` is needed), `cat`
//! (`TokenExchange`, `UserEvent`, `AdminEvent`), `sev` (1–10, see [`severity`]), `src` (IPv4 or IPv6),
//! `usrName` (the token subject: the impersonated user for V1 impersonation; the administrator for
//! admin events), `accountName` (the exchanger client), `realm`, `resource` (admin events: the resource
//! path). Custom keys (`kc` + camel case, never a predefined name): `kcEventId`, `kcUserId`,
//! `kcClientId` (non-exchange user events), `kcAudience`, `kcScope`, `kcOutcome`, `kcError`,
//! `kcImpersonator`, `kcRequestedSubject`, `kcSubjectTokenClient`, `kcSessionId`, `kcFindings` (rule
//! ids, comma-separated), `kcFindingReasons` (`; `-separated). Empty values are left out.
//!
//! EventID is the Keycloak event type (static, as QRadar's QID mapping requires; see
//! [`super::cef::event`] for why not the finding rule).

use crate::event::{AuditEvent, EventKind};

use super::cef::{self, truncate_chars};

/// Header identity and delimiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeefOptions {
    pub vendor: String,
    pub product: String,
    /// Defaults to kcaudit's version.
    pub version: String,
    /// Attribute delimiter: TAB or one ASCII punctuation character other than `=` and `|`. An invalid
    /// choice falls back to `^` (see [`LeefOptions::check`] to refuse it at configuration time).
    pub delimiter: char,
}

impl Default for LeefOptions {
    fn default() -> Self {
        LeefOptions {
            vendor: "kcaudit".into(),
            product: "kcaudit".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            delimiter: DEFAULT_DELIMITER,
        }
    }
}

pub const DEFAULT_DELIMITER: char = '^';
pub const MAX_HEADER: usize = 255;
pub const MAX_USR_NAME: usize = 255;
pub const MAX_VALUE: usize = 1023;

impl LeefOptions {
    /// Refuse a delimiter that could collide with the format's own syntax: alphanumerics and spaces
    /// (they occur in keys and ordinary values), `=` (key/value separator), `|` (header separator),
    /// control characters other than TAB (record terminators), and anything outside ASCII.
    pub fn check(&self) -> Result<(), String> {
        if valid_delimiter(self.delimiter) {
            Ok(())
        } else {
            Err(format!(
                "LEEF delimiter {:?} is not allowed: use TAB or one ASCII punctuation character other than '=' and '|' (default '^')",
                self.delimiter
            ))
        }
    }

    /// The delimiter actually used: the configured one when valid, else `^`.
    pub fn effective_delimiter(&self) -> char {
        if valid_delimiter(self.delimiter) {
            self.delimiter
        } else {
            DEFAULT_DELIMITER
        }
    }
}

fn valid_delimiter(c: char) -> bool {
    c == '\t' || (c.is_ascii_punctuation() && c != '=' && c != '|')
}

/// The delimiter as written in the header: the character itself when printable, else `0xHH`.
pub fn delimiter_field(d: char) -> String {
    if d.is_ascii_graphic() {
        d.to_string()
    } else {
        format!("0x{:02X}", d as u32)
    }
}

/// The one record for `e`.
pub fn event(e: &AuditEvent, o: &LeefOptions) -> String {
    let d = o.effective_delimiter();
    let mut out = String::with_capacity(640);
    out.push_str("LEEF:2.0|");
    for v in [o.vendor.as_str(), o.product.as_str(), o.version.as_str(), event_id(e)] {
        out.push_str(&sanitize_header(truncate_chars(v, MAX_HEADER), d));
        out.push('|');
    }
    out.push_str(&delimiter_field(d));
    out.push('|');

    let mut a = Attrs { out, d, first: true };
    if let Some(t) = e.time {
        a.put("devTime", Some(&t.timestamp_millis().to_string()), MAX_VALUE);
    }
    a.put("cat", Some(category(e)), MAX_VALUE);
    a.put("sev", Some(&severity(e).to_string()), MAX_VALUE);
    a.put("src", cef::address(e).map(|ip| ip.to_string()).as_deref(), MAX_VALUE);
    let te = e.token_exchange.as_ref();
    match e.kind {
        EventKind::User => {
            a.put("usrName", cef::subject_name(e), MAX_USR_NAME);
            if te.is_some() {
                a.put("accountName", cef::exchanger(e), MAX_VALUE);
            }
        }
        EventKind::Admin => {
            a.put("usrName", e.admin.as_ref().and_then(|x| x.auth.username.as_deref()), MAX_USR_NAME);
        }
    }
    a.put("realm", cef::realm(e), MAX_VALUE);
    if e.kind == EventKind::Admin {
        a.put("resource", e.admin.as_ref().and_then(|x| x.resource_path.as_deref()), MAX_VALUE);
    }
    a.put("kcEventId", Some(&e.id), MAX_VALUE);
    match e.kind {
        EventKind::User => a.put("kcUserId", cef::subject_id(e), MAX_VALUE),
        EventKind::Admin => a.put("kcUserId", e.admin.as_ref().and_then(|x| x.auth.user_id.as_deref()), MAX_VALUE),
    }
    if e.kind == EventKind::User && te.is_none() {
        a.put("kcClientId", e.client_id.as_deref(), MAX_VALUE);
    }
    a.put("kcAudience", cef::audiences(e).as_deref(), MAX_VALUE);
    a.put("kcScope", te.and_then(|t| t.scope.as_deref()), MAX_VALUE);
    a.put("kcOutcome", Some(e.outcome.name()), MAX_VALUE);
    a.put("kcError", e.error.as_deref(), MAX_VALUE);
    a.put("kcImpersonator", te.and_then(|t| t.impersonator.as_deref()), MAX_VALUE);
    a.put("kcRequestedSubject", te.and_then(|t| t.requested_subject.as_deref()), MAX_VALUE);
    a.put("kcSubjectTokenClient", te.and_then(|t| t.subject_token_client_id.as_deref()), MAX_VALUE);
    a.put("kcSessionId", e.session_id.as_deref(), MAX_VALUE);
    a.put("kcFindings", cef::rules(e).as_deref(), MAX_VALUE);
    a.put("kcFindingReasons", cef::reasons(e).as_deref(), MAX_VALUE);
    a.out
}

/// LEEF `sev` (1–10): the CEF mapping ([`cef::severity`]), which never goes below 1.
pub fn severity(e: &AuditEvent) -> u8 {
    cef::severity(e).clamp(1, 10)
}

/// An attribute value made safe: the delimiter and every control character (and U+2028/U+2029)
/// become U+FFFD.
pub fn sanitize_value(s: &str, delimiter: char) -> String {
    s.chars().map(|c| if c == delimiter || cef::is_breaking(c) { '\u{FFFD}' } else { c }).collect()
}

/// A header field made safe: `|`, the delimiter and control characters become U+FFFD.
pub fn sanitize_header(s: &str, delimiter: char) -> String {
    s.chars().map(|c| if c == '|' || c == delimiter || cef::is_breaking(c) { '\u{FFFD}' } else { c }).collect()
}

fn event_id(e: &AuditEvent) -> &str {
    if e.event_type.is_empty() {
        "UNKNOWN"
    } else {
        &e.event_type
    }
}

fn category(e: &AuditEvent) -> &'static str {
    match e.kind {
        EventKind::Admin => "AdminEvent",
        EventKind::User if e.is_token_exchange() => "TokenExchange",
        EventKind::User => "UserEvent",
    }
}

struct Attrs {
    out: String,
    d: char,
    first: bool,
}

impl Attrs {
    fn put(&mut self, key: &str, value: Option<&str>, max: usize) {
        let Some(v) = value.filter(|v| !v.is_empty()) else { return };
        if !self.first {
            self.out.push(self.d);
        }
        self.first = false;
        self.out.push_str(key);
        self.out.push('=');
        self.out.push_str(&sanitize_value(truncate_chars(v, max), self.d));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delimiters() {
        assert_eq!(delimiter_field('^'), "^");
        assert_eq!(delimiter_field('\t'), "0x09");
        for bad in ['a', '7', '=', '|', ' ', '\n', '\0', 'é'] {
            let o = LeefOptions { delimiter: bad, ..Default::default() };
            assert!(o.check().is_err(), "{bad:?}");
            assert_eq!(o.effective_delimiter(), '^');
        }
        for good in ['^', '\t', ';', '#', '~'] {
            assert!(LeefOptions { delimiter: good, ..Default::default() }.check().is_ok());
        }
    }

    #[test]
    fn sanitising() {
        assert_eq!(sanitize_value("a^b=c|d\te\r\nf\0", '^'), "a\u{FFFD}b=c|d\u{FFFD}e\u{FFFD}\u{FFFD}f\u{FFFD}");
        assert_eq!(sanitize_value("a^b;c", ';'), "a^b\u{FFFD}c");
        assert_eq!(sanitize_header("ven|dor^x", '^'), "ven\u{FFFD}dor\u{FFFD}x");
        assert_eq!(sanitize_value("\u{202E}x", '^'), "\u{202E}x");
    }
}
