//! Syslog messages: RFC 5424 (with structured data) and RFC 3164 (BSD, for legacy receivers), and
//! RFC 6587 octet-counting framing. The payload (MSG) is the canonical JSON line, a CEF or LEEF record,
//! OCSF JSON records, or a one-line summary; [`messages`] puts the pieces together the way a syslog
//! sink needs them (one message per event, or per OCSF record), and [`frame_event`] adds the framing
//! for TCP/TLS.
//!
//! # RFC 5424
//!
//! `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA [SP MSG]`
//!
//! - PRI = facility × 8 + severity (facility default 10 = authpriv; values above 23 are clamped to 23,
//!   severities above 7 to 7).
//! - TIMESTAMP: RFC 3339 UTC with milliseconds (`2026-03-14T09:26:53.589Z`), or `-` without a time.
//! - HOSTNAME ≤255, APP-NAME ≤48, PROCID ≤128, MSGID ≤32 characters of PRINTUSASCII (33–126): any
//!   other character becomes `_`, the field is then cut to its limit, and an empty field is written
//!   as the NILVALUE `-`.
//! - SD-ID and PARAM-NAME (SD-NAME): ≤32 PRINTUSASCII except `=`, space, `]` and `"` (again replaced by
//!   `_`). PARAM-VALUE escapes `"`, `\` and `]` with a backslash; control characters and
//!   U+2028/U+2029 (which the escape grammar cannot express) become U+FFFD; values are cut to 1023
//!   characters.
//! - MSG: **no BOM**. RFC 5424 lets MSG start with a BOM to declare UTF-8, but CEF and LEEF receivers
//!   recognise their payload by its first bytes (`CEF:`, `LEEF:`) and JSON parsers reject a leading
//!   BOM; the MSG is UTF-8 all the same (MSG-ANY). CR and LF in a free-text MSG are written as the two
//!   characters `\r` / `\n`, other control characters and U+2028/U+2029 as U+FFFD, so the message is
//!   one line even for a receiver that ignores the octet count. The JSON, CEF and LEEF payloads never
//!   contain such characters (see [`json_message`]), so for them this is a no-op.
//!
//! # RFC 3164
//!
//! `<PRI>Mmm dd hh:mm:ss HOSTNAME TAG[PROCID]: CONTENT`, time in the time zone the caller picks
//! (`%b %e %H:%M:%S`: day padded with a space, no year, no zone), TAG = the APP-NAME's ASCII
//! alphanumerics cut to 32 (a TAG ends at its first non-alphanumeric character), CONTENT made one line
//! as for RFC 5424. The whole packet is cut to 1024 bytes (RFC 3164 §4.1) on a character boundary
//! unless the caller asks otherwise ([`rfc3164_with_limit`]): a JSON payload cut that way no longer
//! parses, so JSON belongs in RFC 5424. Without an event time the HEADER (time and hostname) is left
//! out, which RFC 3164 §4.3.3 allows: the receiver stamps its own time.
//!
//! # RFC 6587
//!
//! [`octet_counted`]: `MSG-LEN SP SYSLOG-MSG`. Non-transparent (LF) framing is left to the transport;
//! it is safe with these messages because none contains a raw CR, LF or NUL.

use std::fmt::Display;

use chrono::{DateTime, TimeZone, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event::{format_time, AuditEvent, EventKind, Outcome, Severity};

use super::cef::{self, truncate_chars, CefOptions};
use super::leef::{self, LeefOptions};

/// The fixed parts of a syslog header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogHeader {
    /// 0–23; default 10 (security/authorization, "authpriv").
    pub facility: u8,
    /// This machine's name (FQDN preferred); empty → `-`.
    pub hostname: String,
    /// Default `kcaudit`.
    pub app_name: String,
    /// Process id or empty (→ `-`).
    pub procid: String,
    /// Message type; empty → `-` (but see [`format_event`], which uses the event type).
    pub msgid: String,
}

impl Default for SyslogHeader {
    fn default() -> Self {
        SyslogHeader { facility: 10, hostname: String::new(), app_name: "kcaudit".into(), procid: String::new(), msgid: String::new() }
    }
}

/// One SD-ELEMENT: `[SD-ID PARAM="VALUE" ...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdElement {
    pub id: String,
    pub params: Vec<(String, String)>,
}

/// kcaudit's SD-ID. 32473 is the private enterprise number reserved for documentation (RFC 5612);
/// a deployment with its own PEN can build its own [`SdElement`]s.
pub const SD_ID: &str = "kcaudit@32473";

pub const MAX_HOSTNAME: usize = 255;
pub const MAX_APP_NAME: usize = 48;
pub const MAX_PROCID: usize = 128;
pub const MAX_MSGID: usize = 32;
pub const MAX_SD_NAME: usize = 32;
pub const MAX_PARAM_VALUE: usize = 1023;
pub const MAX_TAG: usize = 32;
/// RFC 3164 §4.1: "The total length of the packet MUST be 1024 bytes or less."
pub const RFC3164_MAX_BYTES: usize = 1024;

/// Header style: RFC 5424 or RFC 3164. (Not RFC 6587 stream framing, octet counting or LF: that is the
/// transport's business, see [`octet_counted`].)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    #[default]
    Rfc5424,
    Rfc3164,
}

/// What goes into MSG.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    /// The canonical event as one JSON line ([`json_message`]).
    #[default]
    Json,
    /// A CEF:0 record ([`cef::event`]).
    Cef,
    /// A LEEF 2.0 record ([`leef::event`]).
    Leef,
    /// OCSF JSON ([`super::ocsf::records`]): one message per record (the event, then each finding).
    Ocsf,
    /// A one-line human summary ([`summary`]).
    Text,
}

/// Everything a syslog sink decides once: header, header style, payload.
#[derive(Debug, Clone)]
pub struct SyslogFormat {
    pub header: SyslogHeader,
    pub framing: Framing,
    pub payload: Payload,
    pub cef: CefOptions,
    pub leef: LeefOptions,
    /// RFC 5424 only: add the `kcaudit@32473` SD-ELEMENT ([`structured_data`]).
    pub structured_data: bool,
    /// RFC 3164 only: the time zone of the timestamp (it carries no zone); default UTC.
    pub rfc3164_time_zone: chrono_tz::Tz,
    /// RFC 3164 only: the packet limit in bytes; `None` = no limit (only for receivers known to accept
    /// longer lines).
    pub rfc3164_max_bytes: Option<usize>,
}

impl Default for SyslogFormat {
    fn default() -> Self {
        SyslogFormat {
            header: SyslogHeader::default(),
            framing: Framing::Rfc5424,
            payload: Payload::Json,
            cef: CefOptions::default(),
            leef: LeefOptions::default(),
            structured_data: true,
            rfc3164_time_zone: chrono_tz::UTC,
            rfc3164_max_bytes: Some(RFC3164_MAX_BYTES),
        }
    }
}

/// The syslog messages for `e` (no framing): one, or for [`Payload::Ocsf`] one per OCSF record. MSGID
/// is the header's when set, else the event type; the severity is [`severity_of`] (for an OCSF
/// finding record, the finding's own); the time is the event time. None contains a raw CR, LF or NUL,
/// so LF framing is safe too.
pub fn messages(f: &SyslogFormat, e: &AuditEvent) -> Vec<String> {
    match f.payload {
        Payload::Ocsf => {
            let sev = severity_of(e);
            super::ocsf::records(e)
                .iter()
                .map(|r| {
                    let s = match r["class_uid"].as_i64() {
                        Some(2004) => match r["severity_id"].as_i64() {
                            Some(5..) => 2,
                            Some(4) => 3,
                            Some(3) => 4,
                            _ => 6,
                        },
                        _ => sev,
                    };
                    wrap(f, e, s, &json_line(r))
                })
                .collect()
        }
        _ => vec![format_event(f, e)],
    }
}

/// The single syslog message for `e` (no framing). For [`Payload::Ocsf`] this is the event record
/// only; use [`messages`] to get the findings too.
pub fn format_event(f: &SyslogFormat, e: &AuditEvent) -> String {
    wrap(f, e, severity_of(e), &payload(f, e))
}

fn wrap(f: &SyslogFormat, e: &AuditEvent, sev: u8, msg: &str) -> String {
    match f.framing {
        Framing::Rfc5424 => {
            let mut h = f.header.clone();
            if h.msgid.is_empty() {
                h.msgid = e.event_type.to_string();
            }
            let sd = if f.structured_data { structured_data(e) } else { Vec::new() };
            rfc5424(&h, sev, e.time, &sd, msg)
        }
        Framing::Rfc3164 => {
            rfc3164_with_limit(&f.header, sev, e.time.map(|t| t.with_timezone(&f.rfc3164_time_zone)), msg, f.rfc3164_max_bytes)
        }
    }
}

/// [`messages`] with RFC 6587 octet counting, concatenated, ready for a TCP/TLS stream.
pub fn frame_event(f: &SyslogFormat, e: &AuditEvent) -> Vec<u8> {
    messages(f, e).iter().flat_map(|m| octet_counted(m.as_bytes())).collect()
}

/// The MSG for the chosen payload (for [`Payload::Ocsf`], the event record).
pub fn payload(f: &SyslogFormat, e: &AuditEvent) -> String {
    match f.payload {
        Payload::Json => json_message(e),
        Payload::Cef => cef::event(e, &f.cef),
        Payload::Leef => leef::event(e, &f.leef),
        Payload::Ocsf => json_line(&super::ocsf::event_record(e)),
        Payload::Text => summary(e),
    }
}

/// An RFC 5424 message (see the module documentation for every rule applied).
pub fn rfc5424(h: &SyslogHeader, severity: u8, time: Option<DateTime<Utc>>, sd: &[SdElement], msg: &str) -> String {
    let mut out = String::with_capacity(256 + msg.len());
    out.push_str(&format!("<{}>1 ", pri(h.facility, severity)));
    match time {
        Some(t) => out.push_str(&format_time(&t)),
        None => out.push('-'),
    }
    for (v, max) in [(&h.hostname, MAX_HOSTNAME), (&h.app_name, MAX_APP_NAME), (&h.procid, MAX_PROCID), (&h.msgid, MAX_MSGID)] {
        out.push(' ');
        out.push_str(&header_field(v, max));
    }
    out.push(' ');
    out.push_str(&format_structured_data(sd));
    if !msg.is_empty() {
        out.push(' ');
        out.push_str(&one_line(msg));
    }
    out
}

/// An RFC 3164 message, cut to [`RFC3164_MAX_BYTES`].
pub fn rfc3164<Tz: TimeZone>(h: &SyslogHeader, severity: u8, time: Option<DateTime<Tz>>, msg: &str) -> String
where
    Tz::Offset: Display,
{
    rfc3164_with_limit(h, severity, time, msg, Some(RFC3164_MAX_BYTES))
}

/// An RFC 3164 message, cut to `max_bytes` when given.
pub fn rfc3164_with_limit<Tz: TimeZone>(h: &SyslogHeader, severity: u8, time: Option<DateTime<Tz>>, msg: &str, max_bytes: Option<usize>) -> String
where
    Tz::Offset: Display,
{
    let mut out = String::with_capacity(64 + msg.len());
    out.push_str(&format!("<{}>", pri(h.facility, severity)));
    if let Some(t) = time {
        out.push_str(&t.format("%b %e %H:%M:%S").to_string());
        out.push(' ');
        let host = header_field(&h.hostname, MAX_HOSTNAME);
        out.push_str(&host);
        out.push(' ');
    }
    out.push_str(&tag(&h.app_name));
    let procid: String = header_field(&h.procid, MAX_PROCID).chars().filter(|c| !matches!(c, '[' | ']' | ':')).collect();
    if !procid.is_empty() && procid != "-" {
        out.push('[');
        out.push_str(&procid);
        out.push(']');
    }
    out.push_str(": ");
    out.push_str(&one_line(msg));
    match max_bytes {
        Some(max) if out.len() > max => crate::sinks::text::truncate_bytes(&out, max).to_string(),
        _ => out,
    }
}

/// RFC 6587 octet counting: `MSG-LEN SP MSG`, MSG-LEN the byte length in decimal.
pub fn octet_counted(msg: &[u8]) -> Vec<u8> {
    let len = msg.len().to_string();
    let mut out = Vec::with_capacity(len.len() + 1 + msg.len());
    out.extend_from_slice(len.as_bytes());
    out.push(b' ');
    out.extend_from_slice(msg);
    out
}

/// Syslog severity for an event: 2 critical, 3 error (high finding), 4 warning (medium finding, or a
/// failed event), 6 informational otherwise; the worse of the finding's and the outcome's.
pub fn severity_of(e: &AuditEvent) -> u8 {
    let by_outcome = match e.outcome {
        Outcome::Failure => 4,
        Outcome::Success => 6,
    };
    let by_finding = match cef::worst(e) {
        Some(Severity::Critical) => 2,
        Some(Severity::High) => 3,
        Some(Severity::Medium) => 4,
        _ => 6,
    };
    by_outcome.min(by_finding)
}

/// The `kcaudit@32473` SD-ELEMENT: `id` (event id), `type`, `realm`, `client` (exchanger / the event's
/// client / for admin events the acting administrator's username), `sub` and `subId` (the subject, as
/// for CEF `duser`/`duid`), `aud` (audiences, space-separated), `outcome`, `error`, `impersonator`,
/// `severity` (worst finding) and `findings` (rule ids, comma-separated). Absent or empty values are
/// left out.
pub fn structured_data(e: &AuditEvent) -> Vec<SdElement> {
    let mut p: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: Option<&str>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            p.push((k.to_string(), v.to_string()));
        }
    };
    let te = e.token_exchange.as_ref();
    put("id", Some(&e.id));
    put("type", Some(&e.event_type));
    put("realm", cef::realm(e));
    match e.kind {
        EventKind::User => {
            put("client", if te.is_some() { cef::exchanger(e) } else { e.client_id.as_deref() });
            put("sub", cef::subject_name(e));
            put("subId", cef::subject_id(e));
        }
        EventKind::Admin => {
            let auth = e.admin.as_ref().map(|a| &a.auth);
            put("admin", auth.and_then(|a| a.username.as_deref()));
            put("adminId", auth.and_then(|a| a.user_id.as_deref()));
            put("resource", e.admin.as_ref().and_then(|a| a.resource_path.as_deref()));
        }
    }
    put("aud", cef::audiences(e).as_deref());
    put("outcome", Some(e.outcome.name()));
    put("error", e.error.as_deref());
    put("impersonator", te.and_then(|t| t.impersonator.as_deref()));
    put("severity", cef::worst(e).map(|s| s.name()));
    put("findings", cef::rules(e).as_deref());
    vec![SdElement { id: SD_ID.into(), params: p }]
}

/// STRUCTURED-DATA: `-` when there is nothing, else the elements with no space between them. Elements
/// without parameters are kept (`[id]` is valid).
pub fn format_structured_data(sd: &[SdElement]) -> String {
    if sd.is_empty() {
        return "-".into();
    }
    let mut out = String::new();
    for el in sd {
        out.push('[');
        out.push_str(&sd_name(&el.id));
        for (k, v) in &el.params {
            out.push(' ');
            out.push_str(&sd_name(k));
            out.push_str("=\"");
            out.push_str(&escape_param_value(truncate_chars(v, MAX_PARAM_VALUE)));
            out.push('"');
        }
        out.push(']');
    }
    out
}

/// A valid SD-NAME: PRINTUSASCII except `=`, space, `]`, `"` (others → `_`), at most 32, never empty.
pub fn sd_name(s: &str) -> String {
    let n: String = s
        .chars()
        .map(|c| if (33..=126).contains(&(c as u32)) && !matches!(c, '=' | ']' | '"') { c } else { '_' })
        .take(MAX_SD_NAME)
        .collect();
    if n.is_empty() {
        "_".into()
    } else {
        n
    }
}

/// PARAM-VALUE escaping: `"` → `\"`, `\` → `\\`, `]` → `\]`; control characters and U+2028/U+2029 →
/// U+FFFD.
pub fn escape_param_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        match c {
            '"' | '\\' | ']' => {
                out.push('\\');
                out.push(c);
            }
            c if cef::is_breaking(c) => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// A header field: PRINTUSASCII (others → `_`), cut to `max`, `-` when empty.
pub fn header_field(s: &str, max: usize) -> String {
    let v: String = s.chars().map(|c| if (33..=126).contains(&(c as u32)) { c } else { '_' }).take(max).collect();
    if v.is_empty() {
        "-".into()
    } else {
        v
    }
}

/// The RFC 3164 TAG: ASCII alphanumerics of `app_name`, at most 32; `kcaudit` when none remain.
pub fn tag(app_name: &str) -> String {
    let t: String = app_name.chars().filter(|c| c.is_ascii_alphanumeric()).take(MAX_TAG).collect();
    if t.is_empty() {
        "kcaudit".into()
    } else {
        t
    }
}

/// A MSG made one line: CR → `\r`, LF → `\n` (two characters), other control characters (TAB
/// excepted) and U+2028/U+2029 → U+FFFD.
pub fn one_line(s: &str) -> String {
    if !s.chars().any(|c| c != '\t' && cef::is_breaking(c)) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push('\t'),
            c if cef::is_breaking(c) => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// The canonical event as one JSON line ([`json_line`]): decodes to exactly the same event.
pub fn json_message(e: &AuditEvent) -> String {
    json_line(e)
}

/// Any value as one JSON line that every receiver keeps on one line. serde_json already escapes C0
/// controls; DEL, C1 controls (NEL) and U+2028/U+2029, legal raw in JSON strings but line breaks or
/// terminators to some receivers, are written as `\uXXXX` too. The JSON means the same.
pub fn json_line<T: Serialize + ?Sized>(v: &T) -> String {
    // Serialising kcaudit's types and serde_json values cannot fail (string keys, no NaN).
    let line = serde_json::to_string(v).unwrap_or_else(|e| format!("{{\"serialize_error\":{:?}}}", e.to_string()));
    if !line.chars().any(cef::is_breaking) {
        return line;
    }
    let mut out = String::with_capacity(line.len() + 16);
    for c in line.chars() {
        if cef::is_breaking(c) {
            // Outside strings serde_json writes no such character, so this only touches string contents.
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// One line for people: `token exchange svc-gateway -> billing-api on behalf of alice`, with
/// ` (impersonated by sam)`, ` failed: not_allowed` and ` [findings: new-audience]` when they apply;
/// `LOGIN web-portal user alice` for other user events; `PROTOCOL_MAPPER-CREATE clients/… by admin`
/// for admin events. The values are the event's own (the caller makes the line safe: [`one_line`]).
pub fn summary(e: &AuditEvent) -> String {
    let dash = |v: Option<&str>| v.filter(|s| !s.is_empty()).unwrap_or("-").to_string();
    let mut s = match e.kind {
        EventKind::User if e.is_token_exchange() => {
            let mut s = format!(
                "token exchange {} -> {} on behalf of {}",
                dash(cef::exchanger(e)),
                dash(cef::audiences(e).as_deref()),
                dash(cef::subject_name(e))
            );
            if let Some(i) = e.token_exchange.as_ref().and_then(|t| t.impersonator.as_deref()) {
                s.push_str(&format!(" (impersonated by {i})"));
            }
            s
        }
        EventKind::User => format!("{} {} user {}", e.event_type, dash(e.client_id.as_deref()), dash(cef::subject_name(e))),
        EventKind::Admin => {
            let a = e.admin.as_ref();
            format!(
                "{} {} by {}",
                e.event_type,
                dash(a.and_then(|a| a.resource_path.as_deref())),
                dash(a.and_then(|a| a.auth.username.as_deref().or(a.auth.user_id.as_deref())))
            )
        }
    };
    if e.outcome == Outcome::Failure {
        s.push_str(&format!(" failed: {}", dash(e.error.as_deref())));
    }
    if let Some(r) = cef::rules(e) {
        s.push_str(&format!(" [findings: {r}]"));
    }
    s
}

fn pri(facility: u8, severity: u8) -> u16 {
    u16::from(facility.min(23)) * 8 + u16::from(severity.min(7))
}


#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SyslogHeader {
        SyslogHeader { hostname: "kc-audit-1.example.com".into(), app_name: "kc-audit".into(), procid: "4711".into(), msgid: "TOKEN_EXCHANGE".into(), ..Default::default() }
    }

    #[test]
    fn rfc5424_fields() {
        let t = Utc.timestamp_millis_opt(1773480413589).unwrap();
        let sd = vec![SdElement { id: "kcx@32473".into(), params: vec![("realm".into(), "acme".into()), ("q".into(), "a\"b\\c]d\ne".into())] }];
        let m = rfc5424(&header(), 6, Some(t), &sd, "hello\nworld");
        assert_eq!(m, "<86>1 2026-03-14T09:26:53.589Z kc-audit-1.example.com kc-audit 4711 TOKEN_EXCHANGE [kcx@32473 realm=\"acme\" q=\"a\\\"b\\\\c\\]d\u{FFFD}e\"] hello\\nworld");
        let nil = rfc5424(&SyslogHeader { app_name: String::new(), ..Default::default() }, 4, None, &[], "");
        assert_eq!(nil, "<84>1 - - - - - -");
        let long = SyslogHeader { hostname: "h o\u{e9}st".into(), app_name: "a".repeat(60), procid: "p".repeat(200), msgid: "m".repeat(40), facility: 99 };
        let m = rfc5424(&long, 9, None, &[], "x");
        assert_eq!(m, format!("<191>1 - h_o_st {} {} {} - x", "a".repeat(48), "p".repeat(128), "m".repeat(32)));
    }

    #[test]
    fn sd_names() {
        assert_eq!(sd_name("a b=c]d\"e"), "a_b_c_d_e");
        assert_eq!(sd_name(""), "_");
        assert_eq!(sd_name(&"x".repeat(40)).len(), 32);
    }

    #[test]
    fn rfc3164_format() {
        let t = Utc.timestamp_millis_opt(1772616413000).unwrap(); // 2026-03-04T09:26:53Z
        let m = rfc3164(&header(), 6, Some(t), "token exchange\r\nx");
        assert_eq!(m, "<86>Mar  4 09:26:53 kc-audit-1.example.com kcaudit[4711]: token exchange\\r\\nx");
        let tz: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
        let m = rfc3164(&header(), 6, Some(t.with_timezone(&tz)), "x");
        assert!(m.starts_with("<86>Mar  4 10:26:53 "), "{m}");
        let m = rfc3164::<Utc>(&SyslogHeader::default(), 6, None, "x");
        assert_eq!(m, "<86>kcaudit: x");
        let m = rfc3164(&header(), 6, Some(t), &"é".repeat(2000));
        assert!(m.len() <= 1024 && m.len() >= 1022, "{}", m.len());
        assert!(m.ends_with('é'));
        assert_eq!(tag("kc-audit!"), "kcaudit");
        assert_eq!(tag("---"), "kcaudit");
        assert_eq!(tag(&"a".repeat(40)).len(), 32);
    }

    #[test]
    fn octet_counting() {
        assert_eq!(octet_counted(b"<86>1 - - - - - -"), b"17 <86>1 - - - - - -".to_vec());
        assert_eq!(octet_counted("é".as_bytes()), b"2 \xc3\xa9".to_vec());
    }

    #[test]
    fn json_lines_escape_line_breakers() {
        let v = serde_json::json!({ "k": "a\u{85}b\u{2028}c\u{7f}\n" });
        let line = json_line(&v);
        assert_eq!(line, r#"{"k":"a\u0085b\u2028c\u007f\n"}"#);
        assert_eq!(serde_json::from_str::<serde_json::Value>(&line).unwrap(), v);
    }

    #[test]
    fn one_line_messages() {
        assert_eq!(one_line("a\tb"), "a\tb");
        assert_eq!(one_line("a\r\nb\0c\u{2028}"), "a\\r\\nb\u{FFFD}c\u{FFFD}");
    }
}
