//! Splitting Keycloak server log lines into an envelope (timestamp, level,
//! logger, thread, host) and a message, and recognising the event text that
//! Keycloak's `jboss-logging` event listener (or a custom JSON listener)
//! writes into that message.
//!
//! Why this is two functions and not one: the envelope depends on how the
//! server was deployed (Quarkus, WildFly, Spring Boot, JSON console, syslog,
//! log collectors), while the event text depends only on the listener. Callers
//! that read JSON console logs, syslog or plain files all end up with a message
//! string and then need the same event parser.
//!
//! Why the key=value parser is careful: Keycloak's `sanitize()` wraps values in
//! `"` and turns an embedded `"` into `\"`, but it does **not** escape
//! backslashes. Several values are attacker-controlled (`reason`,
//! `requested_subject`, `audience`, `clientId` on authentication failures...).
//! A naive split on `", ` lets an attacker who sends `x", userId="evil` plant
//! a second `userId` in the audit trail. This parser only ever treats a
//! quote as structural when the *whole line* can be read consistently that
//! way (see [`parse_event_text`]).
//!
//! Robustness contract: no function here panics on any input. There is no
//! slice indexing that can go out of bounds (all byte access goes through
//! `get`), every `&str` slice is taken at an ASCII delimiter or through
//! `str::get`, and the work done is linear in the input length so a 1 MB line
//! costs milliseconds, not minutes.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone};
use serde_json::{Map, Value};

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/// A log timestamp as printed by the logging framework.
///
/// Kept as three variants instead of normalising to UTC here because most
/// Keycloak log formats print *local wall time without a zone*; only the
/// caller knows the server's configured zone, and guessing here would silently
/// shift audit events by hours.
#[derive(Debug, Clone, PartialEq)]
pub enum LogTimestamp {
    /// The line carried an explicit offset or zone (ISO 8601 with Z/+hh:mm, JSON console "timestamp"/"@timestamp").
    Zoned(chrono::DateTime<chrono::FixedOffset>),
    /// Date and time with no zone (Quarkus/WildFly `2026-03-09 07:58:04,123`, Spring Boot `2022-04-23 18:46:16.347`, ISO with `T` and no offset). The caller applies the configured server time zone.
    Local(chrono::NaiveDateTime),
    /// Time of day only, no date (old WildFly `16:30:11,662 INFO ...`).
    ///
    /// Also used for an RFC 3164 syslog header (`Mar  9 07:58:04`) when no
    /// inner Keycloak envelope follows: that header has no year, so its
    /// month and day cannot be turned into a date without guessing.
    TimeOnly(chrono::NaiveTime),
}

/// One log record split into its envelope and the message text.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    pub timestamp: Option<LogTimestamp>,
    pub level: Option<String>,
    pub logger: Option<String>, // e.g. "org.keycloak.events"
    pub thread: Option<String>,
    pub host: Option<String>, // from a syslog prefix or JSON console hostName/host.hostname, when present
    pub message: String, // the message text after the envelope (for JSON console lines, the decoded "message" field)
}

/// What kind of Keycloak event text a message holds.
#[derive(Debug, Clone, PartialEq)]
pub enum EventText {
    /// jboss-logging key=value form; pairs in order of appearance, keys as written, values unescaped.
    KeyValue(KvRecord),
    /// A JSON object embedded in the message after an optional prefix (custom listeners print e.g. `JSON_EVENT::{...}` or `FOO{...}`); the &str-equivalent owned JSON text starting at `{`.
    Json(String),
}

/// The pairs of one jboss-logging event line.
///
/// Pairs are a `Vec` rather than a map because duplicate keys are themselves
/// evidence (of tampering or of an unexpected listener) and must not be
/// silently collapsed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KvRecord {
    pub pairs: Vec<(String, String)>,
    /// Human-readable notes about ambiguities met while parsing (e.g. "value of X ends with a backslash before the closing quote: ambiguous escape", "unterminated quoted value for key X", "duplicate key X").
    pub warnings: Vec<String>,
}

// ---------------------------------------------------------------------------
// Small panic-free helpers
// ---------------------------------------------------------------------------

/// Byte at `i`, or `None` past the end. All byte access goes through this so
/// that no index can panic.
#[inline]
fn byte(b: &[u8], i: usize) -> Option<u8> {
    b.get(i).copied()
}

/// Byte just before `i` (None at the start).
#[inline]
fn prev(b: &[u8], i: usize) -> Option<u8> {
    i.checked_sub(1).and_then(|j| byte(b, j))
}

/// `s[a..b]`, or "" when the range is not valid. Callers only pass indices of
/// ASCII delimiters (always char boundaries); the fallback exists so that a
/// logic slip degrades to an empty string instead of a panic.
#[inline]
fn sub(s: &str, a: usize, b: usize) -> &str {
    s.get(a..b).unwrap_or("")
}

/// `s[a..]`, or "" when `a` is not a valid position.
#[inline]
fn tail(s: &str, a: usize) -> &str {
    s.get(a..).unwrap_or("")
}

/// Skips spaces and tabs (the padding of `%-5p` and friends).
fn skip_blanks(b: &[u8], mut i: usize) -> usize {
    while matches!(byte(b, i), Some(b' ' | b'\t')) {
        i += 1;
    }
    i
}

/// A run of non-whitespace starting at `i`: (the word, index after it).
fn word(s: &str, i: usize) -> Option<(&str, usize)> {
    let b = s.as_bytes();
    let mut j = i;
    while byte(b, j).is_some_and(|c| !c.is_ascii_whitespace()) {
        j += 1;
    }
    if j == i {
        return None;
    }
    Some((sub(s, i, j), j))
}

/// Exactly `n` ASCII digits at `i` as a number (`n` <= 9, so no overflow).
fn digits_exact(b: &[u8], i: usize, n: usize) -> Option<u32> {
    let mut v: u32 = 0;
    for k in 0..n {
        let d = byte(b, i + k)?;
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(d - b'0');
    }
    Some(v)
}

/// End of `b` once trailing ASCII whitespace (CR, LF, spaces) is ignored.
/// Line endings and `%n` must not leak into the last value.
fn trimmed_end(b: &[u8]) -> usize {
    let mut e = b.len();
    while e > 0 && prev(b, e).is_some_and(|c| c.is_ascii_whitespace()) {
        e -= 1;
    }
    e
}

// ---------------------------------------------------------------------------
// Timestamps
// ---------------------------------------------------------------------------

/// `HH:MM:SS` with an optional `,` or `.` fraction of 1 to 9 digits.
///
/// Both separators occur in the samples (JBoss `%d{...,SSS}` vs Logback and
/// ISO), and JSON console output has nanoseconds. More than 9 digits is
/// rejected rather than truncated: no framework Keycloak uses prints that,
/// so it is more likely not a timestamp at all.
fn parse_clock(b: &[u8], i: usize) -> Option<(NaiveTime, usize)> {
    let h = digits_exact(b, i, 2)?;
    if byte(b, i + 2)? != b':' {
        return None;
    }
    let m = digits_exact(b, i + 3, 2)?;
    if byte(b, i + 5)? != b':' {
        return None;
    }
    let s = digits_exact(b, i + 6, 2)?;
    let mut j = i + 8;
    let mut nanos = 0u32;
    if matches!(byte(b, j), Some(b',' | b'.')) && byte(b, j + 1).is_some_and(|c| c.is_ascii_digit())
    {
        j += 1;
        let start = j;
        while byte(b, j).is_some_and(|c| c.is_ascii_digit()) {
            j += 1;
        }
        let len = j - start;
        if len > 9 {
            return None;
        }
        let frac = digits_exact(b, start, len)?;
        nanos = frac * 10u32.pow(9 - len as u32);
    }
    let t = NaiveTime::from_hms_nano_opt(h, m, s, nanos)?;
    Some((t, j))
}

/// `Z`, `+hh:mm`, `+hhmm` or `+hh` (and `-`).
fn parse_offset(b: &[u8], i: usize) -> Option<(FixedOffset, usize)> {
    match byte(b, i)? {
        b'Z' => Some((FixedOffset::east_opt(0)?, i + 1)),
        sign @ (b'+' | b'-') => {
            let hh = digits_exact(b, i + 1, 2)?;
            let mut j = i + 3;
            let mut mm = 0;
            if byte(b, j) == Some(b':') {
                mm = digits_exact(b, j + 1, 2)?;
                j += 3;
            } else if let Some(v) = digits_exact(b, j, 2) {
                mm = v;
                j += 2;
            }
            if hh > 23 || mm > 59 {
                return None;
            }
            let secs = i32::try_from(hh * 3600 + mm * 60).ok()?;
            let off = if sign == b'-' {
                FixedOffset::west_opt(secs)?
            } else {
                FixedOffset::east_opt(secs)?
            };
            Some((off, j))
        }
        _ => None,
    }
}

/// A timestamp at the start of `s`, which must be followed by whitespace or
/// the end. Returns the timestamp and the index after it.
///
/// The "followed by whitespace" rule is what keeps corrupted text such as
/// `2021-10-22 21: Registered` (seen in the Elastic sample) from being taken
/// for a timestamp.
fn parse_timestamp_prefix(s: &str) -> Option<(LogTimestamp, usize)> {
    let b = s.as_bytes();
    let (ts, end) = if byte(b, 4) == Some(b'-') && digits_exact(b, 0, 4).is_some() {
        let y = digits_exact(b, 0, 4)?;
        if byte(b, 7)? != b'-' {
            return None;
        }
        let mo = digits_exact(b, 5, 2)?;
        let d = digits_exact(b, 8, 2)?;
        if !matches!(byte(b, 10)?, b' ' | b'T') {
            return None;
        }
        let date = NaiveDate::from_ymd_opt(i32::try_from(y).ok()?, mo, d)?;
        let (t, j) = parse_clock(b, 11)?;
        let naive = NaiveDateTime::new(date, t);
        match parse_offset(b, j) {
            Some((off, k)) => {
                let dt: DateTime<FixedOffset> = off.from_local_datetime(&naive).single()?;
                (LogTimestamp::Zoned(dt), k)
            }
            None => (LogTimestamp::Local(naive), j),
        }
    } else {
        let (t, j) = parse_clock(b, 0)?;
        (LogTimestamp::TimeOnly(t), j)
    };
    match byte(b, end) {
        None => Some((ts, end)),
        Some(c) if c.is_ascii_whitespace() => Some((ts, end)),
        _ => None,
    }
}

/// A timestamp that is the whole of `s` (JSON fields, syslog header fields).
fn parse_timestamp_full(s: &str) -> Option<LogTimestamp> {
    let (ts, end) = parse_timestamp_prefix(s)?;
    if end == s.len() {
        Some(ts)
    } else {
        None
    }
}

// ---------------------------------------------------------------------------
// Envelopes
// ---------------------------------------------------------------------------

/// Level words accepted after a timestamp. A fixed list, because a free
/// uppercase word would make any `<timestamp> <WORD>` text a log record.
const LEVELS: [&str; 8] = [
    "TRACE", "DEBUG", "INFO", "WARN", "WARNING", "ERROR", "FATAL", "SEVERE",
];

fn parse_level(s: &str, i: usize) -> Option<(&str, usize)> {
    let b = s.as_bytes();
    let mut j = i;
    while byte(b, j).is_some_and(|c| c.is_ascii_uppercase()) {
        j += 1;
    }
    let w = sub(s, i, j);
    if !LEVELS.contains(&w) {
        return None;
    }
    match byte(b, j) {
        None => Some((w, j)),
        Some(c) if c.is_ascii_whitespace() => Some((w, j)),
        _ => None,
    }
}

/// Index of the `)` closing the `(` at `i`.
///
/// Balanced matching first, so a thread name with nested parentheses stays
/// whole; if the parentheses never balance, the first `)` is used so that an
/// odd thread name costs at most a wrong split, not the whole record.
fn paren_close(b: &[u8], i: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut j = i;
    let mut first_close = None;
    while let Some(c) = byte(b, j) {
        match c {
            b'(' => depth += 1,
            b')' => {
                if first_close.is_none() {
                    first_close = Some(j);
                }
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return Some(j);
                }
            }
            _ => {}
        }
        j += 1;
    }
    first_close
}

/// JBoss/Quarkus tail after the level: `[logger] (thread) message`.
/// Returns (logger, thread, message start).
fn jboss_tail(line: &str, i: usize) -> Option<(String, Option<String>, usize)> {
    let b = line.as_bytes();
    if byte(b, i)? != b'[' {
        return None;
    }
    let close = i + 1 + tail(line, i + 1).find(']')?;
    let logger = sub(line, i + 1, close).to_string();
    let after = close + 1;
    let j = skip_blanks(b, after);
    if byte(b, j) == Some(b'(') {
        if let Some(pc) = paren_close(b, j) {
            let thread = sub(line, j + 1, pc).to_string();
            let mut m = pc + 1;
            if byte(b, m) == Some(b' ') {
                m += 1;
            }
            return Some((logger, Some(thread), m));
        }
    }
    // `[%c] %s` without a thread: the message follows one space.
    let m = if byte(b, after) == Some(b' ') {
        after + 1
    } else {
        after
    };
    Some((logger, None, m))
}

/// Spring Boot Logback tail after the level:
/// `PID --- [app] [thread] logger.name    : message`.
/// The last bracket group is the thread (Spring Boot 3.4 puts the
/// application name in a group before it).
fn spring_tail(line: &str, i: usize) -> Option<(String, Option<String>, usize)> {
    let b = line.as_bytes();
    let mut j = i;
    while byte(b, j).is_some_and(|c| c.is_ascii_digit()) {
        j += 1;
    }
    j = skip_blanks(b, j);
    if !tail(line, j).starts_with("---") {
        return None;
    }
    j = skip_blanks(b, j + 3);
    let mut thread = None;
    while byte(b, j) == Some(b'[') {
        let close = j + 1 + tail(line, j + 1).find(']')?;
        thread = Some(sub(line, j + 1, close).trim().to_string());
        j = skip_blanks(b, close + 1);
    }
    thread.as_ref()?;
    let (logger, k) = word(line, j)?;
    let k = skip_blanks(b, k);
    if byte(b, k)? != b':' {
        return None;
    }
    let mut m = k + 1;
    if byte(b, m) == Some(b' ') {
        m += 1;
    }
    Some((logger.to_string(), thread, m))
}

/// `<timestamp> <LEVEL> ...`: the JBoss/Quarkus, WildFly time-only, Spring
/// Boot, and generic "timestamp level text" envelopes.
fn parse_text_envelope(line: &str) -> Option<LogRecord> {
    let b = line.as_bytes();
    let (ts, i) = parse_timestamp_prefix(line)?;
    let i = skip_blanks(b, i);
    let (level, i) = parse_level(line, i)?;
    let i = skip_blanks(b, i);
    let mut rec = LogRecord {
        timestamp: Some(ts),
        level: Some(level.to_string()),
        logger: None,
        thread: None,
        host: None,
        message: String::new(),
    };
    match jboss_tail(line, i).or_else(|| spring_tail(line, i)) {
        Some((logger, thread, m)) => {
            rec.logger = Some(logger);
            rec.thread = thread;
            rec.message = tail(line, m).to_string();
        }
        None => rec.message = tail(line, i).to_string(),
    }
    Some(rec)
}

/// A key of a JSON console object: flat (`"log.logger"`, as Keycloak's ECS
/// output writes it) or nested (`{"log":{"logger":...}}`, which other ECS
/// writers use).
fn json_lookup<'a>(obj: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a Value> {
    for k in keys {
        if let Some(v) = obj.get(*k) {
            return Some(v);
        }
        if k.contains('.') {
            let mut parts = k.split('.');
            let mut cur = parts.next().and_then(|p| obj.get(p));
            for p in parts {
                cur = cur.and_then(|v| v.get(p));
            }
            if cur.is_some() {
                return cur;
            }
        }
    }
    None
}

fn json_scalar(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(x) => Some(x.to_string()),
        _ => None,
    }
}

/// Keycloak `--log-console-output=json` (default and ECS formats).
///
/// An object counts as a log record only if it has a timestamp, level or
/// logger key: a bare event object (e.g. a Kafka/webhook payload pasted into
/// a file) is not a *log line* and should reach the caller's JSON-event path
/// instead of becoming a record with an empty message.
fn parse_json_console(text: &str) -> Option<LogRecord> {
    let v: Value = serde_json::from_str(text).ok()?;
    let obj = v.as_object()?;
    let ts_v = json_lookup(obj, &["timestamp", "@timestamp"]);
    let level_v = json_lookup(obj, &["level", "log.level"]);
    let logger_v = json_lookup(obj, &["loggerName", "log.logger"]);
    if ts_v.is_none() && level_v.is_none() && logger_v.is_none() {
        return None;
    }
    let message = match obj.get("message") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    Some(LogRecord {
        timestamp: ts_v.and_then(Value::as_str).and_then(parse_timestamp_full),
        level: json_scalar(level_v),
        logger: json_scalar(logger_v),
        thread: json_scalar(json_lookup(obj, &["threadName", "process.thread.name"])),
        host: json_scalar(json_lookup(obj, &["hostName", "host.hostname"])),
        message,
    })
}

/// What may follow a syslog or collector header: a JSON console object or a
/// text envelope. Deliberately not syslog again, so nesting cannot recurse.
fn parse_inner(s: &str) -> Option<LogRecord> {
    if s.starts_with('{') {
        parse_json_console(s.trim_end())
    } else {
        parse_text_envelope(s)
    }
}

/// Combines an outer (syslog/collector) header with an optional inner record.
///
/// The inner values win: its timestamp is the Keycloak server's own clock
/// (the outer one is the relay's or collector's), and a JSON console
/// `hostName` names the server itself. The outer header only fills gaps.
fn merge(
    outer_ts: Option<LogTimestamp>,
    host: Option<String>,
    logger: Option<String>,
    inner: Option<LogRecord>,
    msg: &str,
) -> LogRecord {
    match inner {
        Some(mut r) => {
            if r.timestamp.is_none() {
                r.timestamp = outer_ts;
            }
            if r.host.is_none() {
                r.host = host;
            }
            if r.logger.is_none() {
                r.logger = logger;
            }
            r
        }
        None => LogRecord {
            timestamp: outer_ts,
            level: None,
            logger,
            thread: None,
            host,
            message: msg.to_string(),
        },
    }
}

fn nil_to_none(s: &str) -> Option<String> {
    if s == "-" {
        None
    } else {
        Some(s.to_string())
    }
}

/// One space-delimited RFC 5424 header field: (field, index after the space).
fn sp_field(s: &str, i: usize) -> Option<(&str, usize)> {
    let b = s.as_bytes();
    let mut j = i;
    while byte(b, j).is_some_and(|c| c != b' ') {
        j += 1;
    }
    if j == i {
        return None;
    }
    let next = if byte(b, j) == Some(b' ') { j + 1 } else { j };
    Some((sub(s, i, j), next))
}

/// Skips RFC 5424 STRUCTURED-DATA (`-` or `[id k="v\"]"]...`), honouring the
/// `\"`, `\\` and `\]` escapes inside parameter values. None if malformed.
fn skip_structured_data(b: &[u8], i: usize) -> Option<usize> {
    match byte(b, i) {
        None => Some(i),
        Some(b'-') => Some(i + 1),
        Some(b'[') => {
            let mut j = i;
            while byte(b, j) == Some(b'[') {
                let mut k = j + 1;
                let mut in_quotes = false;
                loop {
                    match byte(b, k)? {
                        b'\\' if in_quotes => k += 1,
                        b'"' => in_quotes = !in_quotes,
                        b']' if !in_quotes => break,
                        _ => {}
                    }
                    k += 1;
                }
                j = k + 1;
            }
            Some(j)
        }
        _ => None,
    }
}

/// RFC 5424 after `<PRI>VERSION `: `TS HOST APP PROCID MSGID SD [MSG]`.
/// MSGID is used as the logger only when no inner envelope names one
/// (Keycloak's syslog handler puts the category there).
fn parse_5424(line: &str, i: usize) -> Option<LogRecord> {
    let b = line.as_bytes();
    let (ts_tok, i) = sp_field(line, i)?;
    let ts = if ts_tok == "-" {
        None
    } else {
        parse_timestamp_full(ts_tok)
    };
    let (host, i) = sp_field(line, i)?;
    let (_app, i) = sp_field(line, i)?;
    let (_procid, i) = sp_field(line, i)?;
    let (msgid, i) = sp_field(line, i)?;
    let i = skip_structured_data(b, i).unwrap_or(i);
    let mut msg = tail(line, i);
    msg = msg.strip_prefix(' ').unwrap_or(msg);
    msg = msg.strip_prefix('\u{feff}').unwrap_or(msg);
    let msg = msg.trim_start();
    Some(merge(
        ts,
        nil_to_none(host),
        nil_to_none(msgid),
        parse_inner(msg),
        msg,
    ))
}

/// `TIMESTAMP HOST TAG rest`: rsyslog RFC 3339 headers and collector
/// prefixes such as OpenShift's
/// `2025-12-09T08:49:18.495105+00:00 openshift_1 service[keycloak-qk] ...`.
///
/// Without an inner envelope the tag must look like a tag (`name:` or
/// `name[...]`), otherwise any "timestamp word word" text would pass.
fn parse_iso_header(s: &str) -> Option<LogRecord> {
    let b = s.as_bytes();
    let (ts, i) = parse_timestamp_prefix(s)?;
    if matches!(ts, LogTimestamp::TimeOnly(_)) {
        return None;
    }
    let (host, i) = word(s, skip_blanks(b, i))?;
    let i = skip_blanks(b, i);
    // The Keycloak envelope may follow the host directly or after a tag.
    let tagged = word(s, i).map(|(tag, j)| (tag, tail(s, skip_blanks(b, j))));
    let inner = parse_inner(tail(s, i)).or_else(|| tagged.and_then(|(_, rest)| parse_inner(rest)));
    if let Some(inner) = inner {
        return Some(merge(Some(ts), Some(host.to_string()), None, Some(inner), ""));
    }
    let (tag, rest) = tagged?;
    if tag.ends_with(':') || tag.ends_with(']') {
        return Some(merge(Some(ts), Some(host.to_string()), None, None, rest));
    }
    None
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// RFC 3164 (BSD) header: `Mmm dd hh:mm:ss HOST TAG: MSG`.
fn parse_bsd(s: &str) -> Option<LogRecord> {
    let b = s.as_bytes();
    if !MONTHS.contains(&s.get(0..3)?) || byte(b, 3)? != b' ' {
        return None;
    }
    let ds = skip_blanks(b, 4);
    let mut i = ds;
    while byte(b, i).is_some_and(|c| c.is_ascii_digit()) {
        i += 1;
    }
    let day = sub(s, ds, i).parse::<u32>().ok()?;
    if i - ds > 2 || !(1..=31).contains(&day) || byte(b, i)? != b' ' {
        return None;
    }
    let (t, j) = parse_clock(b, i + 1)?;
    if byte(b, j)? != b' ' {
        return None;
    }
    let (host_tok, k) = word(s, skip_blanks(b, j))?;
    let mut rest = tail(s, skip_blanks(b, k));
    let host = if host_tok.ends_with(':') {
        // `Mmm dd hh:mm:ss tag: msg` (no HOSTNAME, as some local loggers write).
        None
    } else {
        if let Some((tag, e)) = word(rest, 0) {
            if tag.ends_with(':') {
                rest = tail(rest, skip_blanks(rest.as_bytes(), e));
            }
        }
        Some(host_tok.to_string())
    };
    Some(merge(
        Some(LogTimestamp::TimeOnly(t)),
        host,
        None,
        parse_inner(rest),
        rest,
    ))
}

/// Syslog-style prefixes, with or without `<PRI>`.
fn parse_syslog(line: &str) -> Option<LogRecord> {
    let b = line.as_bytes();
    let mut i = 0;
    let mut had_pri = false;
    if byte(b, 0) == Some(b'<') {
        let mut j = 1;
        while byte(b, j).is_some_and(|c| c.is_ascii_digit()) {
            j += 1;
        }
        if j == 1 || j > 4 || byte(b, j) != Some(b'>') {
            return None;
        }
        i = j + 1;
        had_pri = true;
        let mut k = i;
        while byte(b, k).is_some_and(|c| c.is_ascii_digit()) {
            k += 1;
        }
        if k > i && k - i <= 2 && byte(b, k) == Some(b' ') {
            return parse_5424(line, k + 1);
        }
    }
    let rest = tail(line, i);
    if had_pri {
        if let Some(r) = parse_inner(rest.trim_start()) {
            return Some(r);
        }
    }
    parse_iso_header(rest).or_else(|| parse_bsd(rest))
}

/// Split a physical log line into envelope + message. Returns None when the line is not recognisably a log record at all (blank, a stack-trace continuation such as "    at org.apache..." or "Caused by:", random text).
///
/// Lines that start with whitespace are rejected outright: every supported
/// envelope starts at column 0, and indented lines are continuations of a
/// multi-line record (stack traces), which must not be mistaken for events.
/// The message keeps its text exactly (trailing spaces included) apart from
/// the line terminator, because the event parser, not the envelope parser,
/// decides what is insignificant.
pub fn split_envelope(line: &str) -> Option<LogRecord> {
    let line = line.strip_prefix('\u{feff}').unwrap_or(line);
    let line = line.trim_end_matches(['\r', '\n']);
    let first = line.chars().next()?;
    if first.is_whitespace() {
        return None;
    }
    if first == '{' {
        return parse_json_console(line.trim_end());
    }
    if first == '<' {
        return parse_syslog(line);
    }
    parse_text_envelope(line).or_else(|| parse_syslog(line))
}

// ---------------------------------------------------------------------------
// Event text
// ---------------------------------------------------------------------------

/// Cap on warnings so that a hostile 1 MB line cannot produce a huge list.
const MAX_WARNINGS: usize = 64;

fn warn(w: &mut Vec<String>, msg: String) {
    if w.len() < MAX_WARNINGS {
        w.push(msg);
    } else if w.len() == MAX_WARNINGS {
        w.push("further warnings omitted".to_string());
    }
}

/// A key for display in a warning: attacker-sized keys are shortened.
fn show_key(k: &str) -> String {
    let mut out: String = k.chars().take(64).collect();
    if out.len() < k.len() {
        out.push('…');
    }
    out
}

fn is_key_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn is_key_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-')
}

/// If `[A-Za-z_][A-Za-z0-9_.-]*=` starts at `p`, the index of the `=`.
fn key_end(b: &[u8], p: usize) -> Option<usize> {
    if !is_key_start(byte(b, p)?) {
        return None;
    }
    let mut j = p + 1;
    while byte(b, j).is_some_and(is_key_char) {
        j += 1;
    }
    if byte(b, j) == Some(b'=') {
        Some(j)
    } else {
        None
    }
}

/// If a pair separator `, key=` starts at `i`, the index where the key starts.
fn boundary(b: &[u8], i: usize) -> Option<usize> {
    if byte(b, i) == Some(b',') && byte(b, i + 1) == Some(b' ') && key_end(b, i + 2).is_some() {
        Some(i + 2)
    } else {
        None
    }
}

/// A quote preceded by a backslash. Keycloak writes an embedded quote as
/// `\"`; because it does not escape backslashes, a value that *ends* with a
/// backslash looks the same, hence every use of this is a judgement call.
fn escaped(b: &[u8], k: usize) -> bool {
    prev(b, k) == Some(b'\\')
}

/// Inverse of Keycloak's quoting: every `\q` becomes `q`; every other
/// backslash is literal (Keycloak never escapes backslashes).
fn unescape_quote(raw: &str, q: u8) -> String {
    let qc = char::from(q);
    let mut out = String::with_capacity(raw.len());
    let mut it = raw.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\\' && it.peek() == Some(&qc) {
            out.push(qc);
            it.next();
        } else {
            out.push(c);
        }
    }
    out
}

/// Removes one layer of `\\` / `\"` escaping from a whole line (the
/// `type=\"LOGOUT\"` form: a Keycloak line that was string-escaped again by
/// whatever stored it). Only those two escapes are undone because they are
/// the ones needed to put a quoted line inside quotes; anything else is left
/// as written rather than guessed.
fn unescape_layer(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.peek() {
                Some('\\') => {
                    out.push('\\');
                    it.next();
                }
                Some('"') => {
                    out.push('"');
                    it.next();
                }
                _ => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A forward search for the first position satisfying a *position-local*
/// predicate, remembering its last answer.
///
/// Why: several value scans can run to the end of the line without finding
/// a terminator (unterminated or hostile input). Because the predicates only
/// look at the bytes around the position, a later search that starts after
/// an earlier one can reuse its answer; this keeps the lenient parser linear
/// instead of quadratic on lines like `a='x, b='x, c='x, ...`.
#[derive(Default)]
struct Seek {
    cached: Option<(usize, Option<usize>)>,
}

impl Seek {
    fn find(&mut self, from: usize, limit: usize, pred: impl Fn(usize) -> bool) -> Option<usize> {
        if let Some((f0, found)) = self.cached {
            if f0 <= from {
                match found {
                    None => return None,
                    Some(k) if k >= from => return Some(k),
                    Some(_) => {}
                }
            }
        }
        let mut k = from;
        let mut r = None;
        while k < limit {
            if pred(k) {
                r = Some(k);
                break;
            }
            k += 1;
        }
        self.cached = Some((from, r));
        r
    }
}

/// How one value of a strictly parsed line is delimited.
#[derive(Clone, Copy)]
struct Choice {
    /// Index of the opening quote (or `[`).
    open: usize,
    /// Index of the closing quote (or `]`).
    close: usize,
    /// Start of the next pair's key, if any.
    next: Option<usize>,
    /// The closing quote is a `\"`: the value ends with a backslash.
    ambiguous: bool,
    /// A TRACE `cookies=[...]` value.
    bracket: bool,
}

/// Strict parse of a line quoted with `q`, as Keycloak's `sanitize()` writes
/// it: every value is `q`-quoted (or the TRACE `cookies=[...]` tail), and
/// inside a value every `q` is preceded by a backslash.
///
/// Why a whole-line analysis: from `sanitize()`'s rules, an unescaped quote
/// can only be a wrapper, but `\"` is either an embedded quote or the end of
/// a value that ends with `\`. Deciding that locally is unsafe: the attacker
/// value `x", userId=` renders as `reason="x\", userId=", next="..."`, which
/// *locally* looks like a backslash-ended `reason` followed by `userId`.
/// So validity is computed right to left over every possible pair start
/// (each is evaluated once, in O(1) amortised, so the whole pass is linear),
/// and the line is then read left to right, treating `\"` as an embedded
/// quote whenever that still leads to a valid reading of the rest of the
/// line, and as a backslash-terminated value only when nothing else fits.
///
/// Returns None if no reading of the whole line fits the grammar (truncated
/// lines, `sanitize=false`, other producers); the caller then falls back to
/// the lenient parser.
fn parse_strict(m: &str, q: u8, warnings: &mut Vec<String>) -> Option<Vec<(String, String)>> {
    let b = m.as_bytes();
    let n = b.len();
    let end = trimmed_end(b);
    let is_bare = |k: usize| byte(b, k) == Some(q) && !escaped(b, k);

    // Right-to-left sweep for "first unescaped quote at or after x", queried
    // with decreasing x (openers decrease as pair starts decrease).
    let mut cursor = n;
    let mut nearest_bare: Option<usize> = None;
    let mut next_bare = |x: usize| -> Option<usize> {
        while cursor > x {
            cursor -= 1;
            if is_bare(cursor) {
                nearest_bare = Some(cursor);
            }
        }
        nearest_bare.filter(|&k| k >= x)
    };

    let mut valid: HashMap<usize, Choice> = HashMap::new();
    let mut p = n;
    loop {
        let is_start = p == 0 || (prev(b, p) == Some(b' ') && prev(b, p - 1) == Some(b','));
        if p < n && is_start {
            if let Some(choice) = eval_pair(b, q, end, p, &valid, &mut next_bare) {
                valid.insert(p, choice);
            }
        }
        if p == 0 {
            break;
        }
        p -= 1;
    }

    let mut pairs = Vec::new();
    let mut at = Some(0usize);
    while let Some(p) = at {
        let c = *valid.get(&p)?;
        let key = sub(m, p, c.open.saturating_sub(1));
        let raw = sub(m, c.open + 1, c.close);
        let value = if c.bracket {
            raw.to_string()
        } else {
            unescape_quote(raw, q)
        };
        if c.ambiguous {
            warn(
                warnings,
                format!(
                    "value of {} ends with a backslash before the closing quote: ambiguous escape",
                    show_key(key)
                ),
            );
        }
        pairs.push((key.to_string(), value));
        at = match c.next {
            Some(nx) if nx > p => Some(nx),
            _ => None,
        };
    }
    Some(pairs)
}

/// Evaluates the pair starting at `p` for [`parse_strict`], given the
/// validity of every later pair start.
fn eval_pair(
    b: &[u8],
    q: u8,
    end: usize,
    p: usize,
    valid: &HashMap<usize, Choice>,
    next_bare: &mut impl FnMut(usize) -> Option<usize>,
) -> Option<Choice> {
    let eq = key_end(b, p)?;
    let o = eq + 1;
    let first = byte(b, o)?;
    if first == b'[' {
        // TRACE `cookies=[...]`: unquoted, always the last pair.
        if end >= 1 && end - 1 > o && byte(b, end - 1) == Some(b']') {
            return Some(Choice {
                open: o,
                close: end - 1,
                next: None,
                ambiguous: false,
                bracket: true,
            });
        }
        return None;
    }
    if first != q {
        return None;
    }
    let plain = |close: usize, next: Option<usize>, ambiguous: bool| Choice {
        open: o,
        close,
        next,
        ambiguous,
        bracket: false,
    };
    match next_bare(o + 1) {
        Some(qn) => {
            // (a) The next unescaped quote closes the value.
            if qn + 1 >= end {
                return Some(plain(qn, None, false));
            }
            if let Some(p2) = boundary(b, qn + 1) {
                if valid.contains_key(&p2) {
                    return Some(plain(qn, Some(p2), false));
                }
            }
            // (b) That quote opens the *next* value instead, so this value
            // must end with `\"` right before `, key=` and that quote.
            if prev(b, qn) == Some(b'=') {
                let eqi = qn - 1;
                let mut ks = eqi;
                while ks > 0 && prev(b, ks).is_some_and(is_key_char) {
                    ks -= 1;
                }
                if ks < eqi
                    && byte(b, ks).is_some_and(is_key_start)
                    && ks >= 4
                    && byte(b, ks - 1) == Some(b' ')
                    && byte(b, ks - 2) == Some(b',')
                    && byte(b, ks - 3) == Some(q)
                    && byte(b, ks - 4) == Some(b'\\')
                    && ks - 4 > o
                    && valid.contains_key(&ks)
                {
                    return Some(plain(ks - 3, Some(ks), true));
                }
            }
            None
        }
        None => {
            // No wrapper quote left: the value ends with `\"` at the end of
            // the line, or before a TRACE `cookies=[...]` tail.
            if end >= 3
                && end - 2 > o
                && byte(b, end - 1) == Some(q)
                && byte(b, end - 2) == Some(b'\\')
            {
                return Some(plain(end - 1, None, true));
            }
            let mut k = o + 2;
            while k < end {
                if byte(b, k) == Some(q) && escaped(b, k) {
                    if let Some(p2) = boundary(b, k + 1) {
                        if valid.get(&p2).is_some_and(|c| c.bracket) {
                            return Some(plain(k, Some(p2), true));
                        }
                    }
                }
                k += 1;
            }
            None
        }
    }
}

/// Lenient parse, used for unquoted (pre-quoting Keycloak) lines and for
/// quoted lines that [`parse_strict`] could not read.
///
/// Rules (from the module brief): a quoted value ends at the first
/// unescaped quote followed by `, key=` or the end; an escaped quote at the
/// very end closes a backslash-ended value (with a warning); an escaped
/// quote before `, key=` is used only as a last resort; an unquoted value
/// runs to the next `, key=`. Unquoted lines give no protection against
/// injected `, key=` text: the format itself cannot express it.
fn parse_lenient(m: &str, line_quote: Option<u8>, rec: &mut KvRecord) {
    let b = m.as_bytes();
    let end = trimmed_end(b);
    let mut closers: [Seek; 2] = Default::default();
    let mut fallbacks: [Seek; 2] = Default::default();
    let mut brackets = Seek::default();
    let mut commas = Seek::default();

    let closer_pred = |q: u8| {
        move |k: usize| {
            byte(b, k) == Some(q)
                && if escaped(b, k) {
                    k + 1 >= end
                } else {
                    k + 1 >= end || boundary(b, k + 1).is_some()
                }
        }
    };
    let fallback_pred = |q: u8| {
        move |k: usize| byte(b, k) == Some(q) && escaped(b, k) && boundary(b, k + 1).is_some()
    };
    let slot = |q: u8| usize::from(q == b'\'');
    let next_after = |k: usize| {
        if k + 1 >= end {
            None
        } else {
            boundary(b, k + 1)
        }
    };

    let mut p = 0usize;
    while let Some(eq) = key_end(b, p) {
        let key = sub(m, p, eq);
        let o = eq + 1;
        let first = byte(b, o);
        let mut result: Option<(String, Option<usize>)> = None;

        match first {
            Some(q @ (b'"' | b'\'')) => {
                let s = slot(q);
                if let Some(k) = closers[s].find(o + 1, end, closer_pred(q)) {
                    let raw = sub(m, o + 1, k);
                    if escaped(b, k) {
                        warn(
                            &mut rec.warnings,
                            format!(
                                "value of {} ends with a backslash before the closing quote: ambiguous escape",
                                show_key(key)
                            ),
                        );
                    }
                    if Some(q) == line_quote {
                        let rb = raw.as_bytes();
                        let bare_inside = (0..rb.len())
                            .any(|i| byte(rb, i) == Some(q) && prev(rb, i) != Some(b'\\'));
                        if bare_inside {
                            warn(
                                &mut rec.warnings,
                                format!("unescaped quote inside the value of {}", show_key(key)),
                            );
                        }
                    }
                    result = Some((unescape_quote(raw, q), next_after(k)));
                } else if Some(q) == line_quote {
                    if let Some(k) = fallbacks[s].find(o + 1, end, fallback_pred(q)) {
                        warn(
                            &mut rec.warnings,
                            format!(
                                "value of {} ends with a backslash before the closing quote: ambiguous escape",
                                show_key(key)
                            ),
                        );
                        result = Some((unescape_quote(sub(m, o + 1, k), q), next_after(k)));
                    } else {
                        warn(
                            &mut rec.warnings,
                            format!("unterminated quoted value for key {}", show_key(key)),
                        );
                        result = Some((unescape_quote(sub(m, o + 1, end), q), None));
                    }
                }
            }
            Some(b'[') => {
                if key == "cookies" && end >= 1 && end - 1 > o && byte(b, end - 1) == Some(b']') {
                    result = Some((sub(m, o + 1, end - 1).to_string(), None));
                } else if let Some(k) = brackets.find(o + 1, end, |k| {
                    byte(b, k) == Some(b']') && (k + 1 >= end || boundary(b, k + 1).is_some())
                }) {
                    result = Some((sub(m, o + 1, k).to_string(), next_after(k)));
                }
            }
            _ => {}
        }

        let (value, next) = match result {
            Some(r) => r,
            None => match commas.find(o, end, |k| boundary(b, k).is_some()) {
                Some(k) => (sub(m, o, k).to_string(), Some(k + 2)),
                None => (sub(m, o, end).to_string(), None),
            },
        };
        rec.pairs.push((key.to_string(), value));
        match next {
            Some(nx) if nx > p => p = nx,
            _ => break,
        }
    }
}

/// Parses a message that starts with `type=` or `operationType=`.
fn parse_kv(m: &str) -> KvRecord {
    let mut rec = KvRecord::default();
    let b = m.as_bytes();
    let o = key_end(b, 0).map_or(0, |e| e + 1);
    if byte(b, o) == Some(b'\\') && byte(b, o + 1) == Some(b'"') {
        let un = unescape_layer(m);
        warn(
            &mut rec.warnings,
            "values are wrapped in literal \\\" (the line was escaped again after Keycloak wrote it); one layer of \\\\ and \\\" escaping was removed".to_string(),
        );
        parse_kv_body(&un, &mut rec);
    } else {
        parse_kv_body(m, &mut rec);
    }

    let mut seen: HashSet<&str> = HashSet::new();
    let mut dups: Vec<String> = Vec::new();
    for (k, _) in &rec.pairs {
        if !seen.insert(k.as_str()) && !dups.iter().any(|d| d == k) {
            dups.push(k.clone());
        }
    }
    for d in dups {
        warn(&mut rec.warnings, format!("duplicate key {}", show_key(&d)));
    }
    rec
}

fn parse_kv_body(m: &str, rec: &mut KvRecord) {
    let b = m.as_bytes();
    let o = key_end(b, 0).map_or(0, |e| e + 1);
    match byte(b, o) {
        Some(q @ (b'"' | b'\'')) => {
            let mut w = Vec::new();
            if let Some(pairs) = parse_strict(m, q, &mut w) {
                rec.pairs = pairs;
                for x in w {
                    warn(&mut rec.warnings, x);
                }
            } else {
                warn(
                    &mut rec.warnings,
                    "line does not follow Keycloak's quoting exactly (truncated, sanitize disabled, or another producer); parsed leniently".to_string(),
                );
                parse_lenient(m, Some(q), rec);
            }
        }
        _ => parse_lenient(m, None, rec),
    }
}

/// A custom listener's JSON object after a short prefix (`FOO{...}`,
/// `JSON_EVENT::{...}`).
///
/// The prefix must be a short word without whitespace and the object must
/// have a `type` or `operationType` key: other loggers print JSON too
/// (`Received {...}`), and those are not events.
fn parse_json_event(m: &str) -> Option<EventText> {
    let brace = m.find('{')?;
    let prefix = m.get(..brace)?;
    if prefix.len() > 64 || prefix.chars().any(char::is_whitespace) {
        return None;
    }
    let text = m.get(brace..)?.trim_end();
    let obj: Map<String, Value> = serde_json::from_str(text).ok()?;
    if !obj.contains_key("type") && !obj.contains_key("operationType") {
        return None;
    }
    Some(EventText::Json(text.to_string()))
}

/// Recognise Keycloak event text inside a message. Returns None when the message is not an event (startup messages, other loggers' text). A user event starts with `type=`, an admin event with `operationType=` (see the samples); quoted, unquoted and single-quoted forms and the literal backslash-escaped quotes form (`type=\"LOGOUT\", ...`) must all work.
///
/// The quoting form is taken from the first value (`type=` or
/// `operationType=` is always first, and Keycloak quotes all values or
/// none). Values are returned losslessly: control characters, bidi
/// overrides and the literal `null` are kept, because deciding what they
/// mean is the caller's job and stripping them would hide evidence.
pub fn parse_event_text(message: &str) -> Option<EventText> {
    let m = message.trim_start();
    if m.starts_with("type=") || m.starts_with("operationType=") {
        return Some(EventText::KeyValue(parse_kv(m)));
    }
    parse_json_event(m)
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    fn read(rel: &str) -> String {
        let path = format!("{FIXTURES}/{rel}");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
    }

    fn kv(msg: &str) -> KvRecord {
        match parse_event_text(msg) {
            Some(EventText::KeyValue(r)) => r,
            other => panic!("expected key=value event for {msg:?}, got {other:?}"),
        }
    }

    fn values<'a>(r: &'a KvRecord, key: &str) -> Vec<&'a str> {
        r.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn one<'a>(r: &'a KvRecord, key: &str) -> &'a str {
        let v = values(r, key);
        assert_eq!(v.len(), 1, "expected exactly one {key} in {r:?}");
        v[0]
    }

    fn local(s: &str) -> LogTimestamp {
        LogTimestamp::Local(NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").unwrap())
    }

    /// Keycloak's `sanitize()` with `quotes="` : wrap, escape `"` as `\"`,
    /// leave backslashes alone.
    fn sanitize(v: &str) -> String {
        format!("\"{}\"", v.replace('"', "\\\""))
    }

    fn render(pairs: &[(&str, &str)]) -> String {
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", sanitize(v)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    // -- fixture: the project's own jboss-logging.log ---------------------

    #[test]
    fn fixture_jboss_log_has_67_events_and_3_startup_lines() {
        let text = read("keycloak/jboss-logging.log");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 70);
        let (mut events, mut others) = (0, 0);
        for line in &lines {
            let rec = split_envelope(line).expect("every fixture line is a log record");
            assert!(
                matches!(rec.timestamp, Some(LogTimestamp::Local(_))),
                "{line}"
            );
            assert!(rec.thread.is_some());
            match parse_event_text(&rec.message) {
                Some(EventText::KeyValue(r)) => {
                    events += 1;
                    assert_eq!(rec.logger.as_deref(), Some("org.keycloak.events"));
                    assert!(
                        r.warnings.is_empty(),
                        "clean fixture line gave warnings: {r:?}"
                    );
                    assert!(r.pairs.len() >= 7, "{r:?}");
                }
                Some(EventText::Json(j)) => panic!("unexpected JSON event {j}"),
                None => {
                    others += 1;
                    assert_eq!(rec.logger.as_deref(), Some("io.quarkus"));
                }
            }
        }
        assert_eq!((events, others), (67, 3));
    }

    #[test]
    fn fixture_token_exchange_and_admin_spot_checks() {
        let text = read("keycloak/jboss-logging.log");
        let line = text.lines().find(|l| l.contains("07:58:04,123")).unwrap();
        let rec = split_envelope(line).unwrap();
        assert_eq!(rec.timestamp, Some(local("2026-03-09 07:58:04.123")));
        assert_eq!(rec.level.as_deref(), Some("INFO"));
        assert_eq!(rec.thread.as_deref(), Some("executor-thread-4"));
        let r = kv(&rec.message);
        assert_eq!(
            r.pairs[0],
            ("type".to_string(), "TOKEN_EXCHANGE".to_string())
        );
        assert_eq!(one(&r, "audience"), "orders-api");
        assert_eq!(one(&r, "subject_token_client_id"), "web-portal");
        assert_eq!(one(&r, "userId"), "cd3adec8-6fdc-414d-9093-31ddbb37ec99");
        assert_eq!(
            one(&r, "grant_type"),
            "urn:ietf:params:oauth:grant-type:token-exchange"
        );
        assert_eq!(one(&r, "scope"), "profile email");

        let admin = text.lines().find(|l| l.contains("17:45:12,643")).unwrap();
        let r = kv(&split_envelope(admin).unwrap().message);
        assert_eq!(r.pairs[0].0, "operationType");
        assert_eq!(one(&r, "operationType"), "CREATE");
        assert_eq!(one(&r, "realmName"), "master");
        assert_eq!(one(&r, "resourceType"), "PROTOCOL_MAPPER");
        assert_eq!(
            one(&r, "resourcePath"),
            "clients/b23530eb-4654-4ef0-87b0-da0b39ebbd63/protocol-mappers/models/16281dfd-a580-4fc1-8aa0-5c9c43cd3849"
        );
        assert!(values(&r, "type").is_empty());
    }

    /// The fixture log is a rendering of the same 65 user events as
    /// keycloak-native-events.jsonl: every field and detail must match.
    #[test]
    fn fixture_user_events_match_native_json_rendering() {
        let log = read("keycloak/jboss-logging.log");
        let native = read("keycloak/keycloak-native-events.jsonl");
        let natives: Vec<Value> = native
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let users: Vec<KvRecord> = log
            .lines()
            .filter_map(split_envelope)
            .filter_map(|r| match parse_event_text(&r.message) {
                Some(EventText::KeyValue(k)) if k.pairs[0].0 == "type" => Some(k),
                _ => None,
            })
            .collect();
        assert_eq!(users.len(), 65);
        assert_eq!(natives.len(), 65);
        for (r, ev) in users.iter().zip(&natives) {
            for f in [
                "type",
                "realmId",
                "clientId",
                "userId",
                "sessionId",
                "ipAddress",
                "error",
            ] {
                match ev.get(f).and_then(Value::as_str) {
                    Some(v) => assert_eq!(one(r, f), v, "{f} in {r:?}"),
                    None if f == "userId" || f == "clientId" => assert_eq!(one(r, f), "null"),
                    None => assert!(values(r, f).is_empty(), "{f} should be absent in {r:?}"),
                }
            }
            let details = ev
                .get("details")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            for (k, v) in &details {
                assert_eq!(one(r, k), v.as_str().unwrap(), "detail {k}");
            }
            let fixed = r.pairs.iter().filter(|(k, _)| {
                [
                    "type",
                    "realmId",
                    "realmName",
                    "clientId",
                    "userId",
                    "sessionId",
                    "ipAddress",
                    "error",
                ]
                .contains(&k.as_str())
            });
            assert_eq!(
                fixed.count() + details.len(),
                r.pairs.len(),
                "extra pairs in {r:?}"
            );
        }
    }

    // -- public samples ----------------------------------------------------

    const PUB: &str = "public-samples/jboss-logging";

    /// Counts (event lines, KeyValue, Json) over lines naming org.keycloak.events.
    fn event_lines(file: &str) -> (usize, usize, usize) {
        let text = read(&format!("{PUB}/{file}"));
        let (mut n, mut kvs, mut jsons) = (0, 0, 0);
        for line in text.lines().filter(|l| l.contains("org.keycloak.events")) {
            n += 1;
            let rec = split_envelope(line).unwrap_or_else(|| panic!("no envelope: {line}"));
            assert_eq!(rec.logger.as_deref(), Some("org.keycloak.events"), "{line}");
            match parse_event_text(&rec.message) {
                Some(EventText::KeyValue(r)) => {
                    kvs += 1;
                    assert!(!r.pairs.is_empty());
                }
                Some(EventText::Json(j)) => {
                    jsons += 1;
                    assert!(j.starts_with('{') && j.ends_with('}'));
                    let v: Value = serde_json::from_str(&j).unwrap();
                    assert!(v.get("type").is_some());
                }
                None => panic!("not an event: {line}"),
            }
        }
        (n, kvs, jsons)
    }

    #[test]
    fn public_elastic_test_log() {
        // 14 plain events + the escaped-quote LOGOUT line = 15 lines naming
        // org.keycloak.events (SOURCES.md: 9 user + 6 admin events).
        assert_eq!(
            event_lines("elastic-integrations__keycloak__test-log.log"),
            (15, 15, 0)
        );
        let text = read(&format!(
            "{PUB}/elastic-integrations__keycloak__test-log.log"
        ));
        let recs: Vec<Option<LogRecord>> = text.lines().map(split_envelope).collect();
        assert_eq!(recs.len(), 30);
        // The 6 stack-trace continuation lines are not records; the other 24 are.
        assert_eq!(recs.iter().filter(|r| r.is_none()).count(), 6);
        let events: Vec<KvRecord> = recs
            .iter()
            .flatten()
            .filter_map(|r| match parse_event_text(&r.message) {
                Some(EventText::KeyValue(k)) => Some(k),
                _ => None,
            })
            .collect();
        assert_eq!(events.len(), 15);
        assert_eq!(
            events
                .iter()
                .filter(|e| e.pairs[0].0 == "operationType")
                .count(),
            6
        );

        let abcd = events
            .iter()
            .find(|e| one(e, "clientId") == "https://www.example.com/shibboleth")
            .unwrap();
        assert_eq!(one(abcd, "realmId"), "ABCD TEST");
        assert_eq!(
            one(abcd, "redirect_uri"),
            "https://www.example.com/Shibboleth.sso/SAML2/POST"
        );
        assert_eq!(one(abcd, "authSessionTabId"), "97qImXws36A");
        let login = events.iter().find(|e| one(e, "type") == "LOGIN").unwrap();
        assert_eq!(
            one(login, "redirect_uri"),
            "https://www.example.com/auth/admin/test/console/#/realms/test/events"
        );
        assert_eq!(one(login, "userId"), "ce637d23-b89c-4fca-9088-1aea1d053e19");
        let null_user = events
            .iter()
            .find(|e| one(e, "error") == "user_not_found")
            .unwrap();
        assert_eq!(one(null_user, "userId"), "null");

        let logout = events
            .iter()
            .find(|e| values(e, "clientId") == ["user-console"])
            .unwrap();
        assert_eq!(one(logout, "type"), "LOGOUT");
        assert_eq!(
            one(logout, "realmId"),
            "12345678-9abc-def0-1234-56789abcdef0"
        );
        assert_eq!(
            one(logout, "sessionId"),
            "abcd1234-5678-90ab-cdef-1234567890ab"
        );
        assert_eq!(one(logout, "response_mode"), "fragment");
        assert_eq!(one(logout, "authSessionTabId"), "zXY987wvuTsr");
        assert!(logout
            .pairs
            .iter()
            .all(|(_, v)| !v.contains('"') && !v.contains('\\')));
        assert_eq!(logout.pairs.len(), 16);
    }

    #[test]
    fn public_elastic_deploy_sample_mixed_formats() {
        let f = "elastic-integrations__keycloak__deploy-sample_logs__test-log.log";
        assert_eq!(event_lines(f), (5, 5, 0));
        let text = read(&format!("{PUB}/{f}"));
        let recs: Vec<LogRecord> = text.lines().map(|l| split_envelope(l).unwrap()).collect();
        assert_eq!(recs.len(), 10);
        let ecs: Vec<&LogRecord> = recs.iter().filter(|r| r.host.is_some()).collect();
        assert_eq!(ecs.len(), 4);
        for r in ecs {
            assert!(matches!(r.timestamp, Some(LogTimestamp::Zoned(_))));
            assert!(parse_event_text(&r.message).is_none(), "{r:?}");
        }
        let resteasy = &recs[2];
        assert_eq!(
            resteasy.thread.as_deref(),
            Some("ServerService Thread Pool -- 64")
        );
        assert!(parse_event_text(&resteasy.message).is_none());
        let group = kv(&recs[5].message);
        assert_eq!(one(&group, "resourceType"), "GROUP");
        assert_eq!(one(&group, "realmId"), "TEST-REALM");
    }

    #[test]
    fn public_elastic_ecs_log_has_no_events() {
        let text = read(&format!(
            "{PUB}/elastic-integrations__keycloak__test-ecs-log.log"
        ));
        let mut n = 0;
        for line in text.lines() {
            n += 1;
            let r = split_envelope(line).expect("ECS JSON line is a record");
            assert_eq!(r.host.as_deref(), Some("068a18c2f627"));
            assert_eq!(r.level.as_deref(), Some("INFO"));
            assert_eq!(r.thread.as_deref(), Some("main"));
            assert!(r.logger.is_some());
            assert!(matches!(r.timestamp, Some(LogTimestamp::Zoned(_))));
            assert!(!r.message.is_empty());
            assert!(parse_event_text(&r.message).is_none(), "{line}");
        }
        assert_eq!(n, 18);
        let first = split_envelope(text.lines().next().unwrap()).unwrap();
        assert_eq!(
            first.logger.as_deref(),
            Some("org.keycloak.url.HostnameV2ProviderFactory")
        );
        let want = DateTime::parse_from_rfc3339("2025-05-01T01:16:31.591777597Z").unwrap();
        assert_eq!(first.timestamp, Some(LogTimestamp::Zoned(want)));
    }

    #[test]
    fn public_kill9zombie_time_only_json_events() {
        let f = "kill9zombie-keycloak_jsonlog_eventlistener__README.excerpt.log";
        assert_eq!(event_lines(f), (7, 0, 7));
        let text = read(&format!("{PUB}/{f}"));
        let first = split_envelope(text.lines().next().unwrap()).unwrap();
        assert_eq!(
            first.timestamp,
            Some(LogTimestamp::TimeOnly(
                NaiveTime::from_hms_milli_opt(16, 30, 11, 662).unwrap()
            ))
        );
        assert_eq!(first.thread.as_deref(), Some("default task-6"));
        match parse_event_text(&first.message) {
            Some(EventText::Json(j)) => {
                assert!(j.starts_with("{\"type\":\"ADMIN_EVENT\""));
                assert!(
                    j.ends_with("\"resourcePath\":\"users/633ff1ce-a695-4c07-a083-1af595a839e8\"}")
                );
            }
            other => panic!("{other:?}"),
        }
        let third = split_envelope(text.lines().nth(2).unwrap()).unwrap();
        match parse_event_text(&third.message) {
            Some(EventText::Json(j)) => assert!(j.starts_with("{\"type\":\"LOGIN\"")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn public_kavahub_spring_boot_events() {
        let f = "kavahub-springseeds__FAQ.excerpt.log";
        assert_eq!(event_lines(f), (3, 3, 0));
        let text = read(&format!("{PUB}/{f}"));
        let lines: Vec<&str> = text.lines().collect();
        let r0 = split_envelope(lines[0]).unwrap();
        assert_eq!(r0.timestamp, Some(local("2022-04-23 18:46:16.347")));
        assert_eq!(r0.level.as_deref(), Some("WARN"));
        assert_eq!(r0.thread.as_deref(), Some("nio-9000-exec-2"));
        assert_eq!(
            one(&kv(&r0.message), "redirect_uri"),
            "http://localhost:4200/"
        );
        let r1 = split_envelope(lines[1]).unwrap();
        let e1 = kv(&r1.message);
        assert_eq!(one(&e1, "type"), "INTROSPECT_TOKEN_ERROR");
        assert_eq!(one(&e1, "detail"), "Client not allowed.");
        assert_eq!(one(&e1, "client_auth_method"), "client-secret");
        assert!(e1.warnings.is_empty());
        let r2 = split_envelope(lines[2]).unwrap();
        assert_eq!(r2.thread.as_deref(), Some("io-9000-exec-11"));
        assert_eq!(one(&kv(&r2.message), "grant_type"), "authorization_code");
    }

    fn datadog_samples() -> Vec<String> {
        let text = read(&format!(
            "{PUB}/datadog-integrations-core__keycloak__keycloak_tests.yaml"
        ));
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        doc.get("tests")
            .and_then(|t| t.as_sequence())
            .unwrap()
            .iter()
            .map(|t| {
                t.get("sample")
                    .and_then(|s| s.as_str())
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn public_datadog_json_console_samples() {
        let samples = datadog_samples();
        assert_eq!(samples.len(), 2);
        let r = split_envelope(&samples[0]).unwrap();
        assert_eq!(r.logger.as_deref(), Some("org.keycloak.events"));
        assert_eq!(r.level.as_deref(), Some("DEBUG"));
        assert_eq!(r.thread.as_deref(), Some("executor-thread-7"));
        assert_eq!(r.host.as_deref(), Some("keycloak"));
        let want = DateTime::parse_from_rfc3339("2024-10-30T17:27:03.414798073+05:30").unwrap();
        assert_eq!(r.timestamp, Some(LogTimestamp::Zoned(want)));
        let e = kv(&r.message);
        assert_eq!(one(&e, "type"), "CODE_TO_TOKEN");
        assert_eq!(one(&e, "realmName"), "master");
        assert_eq!(one(&e, "scope"), "openid email profile");
        assert!(e.warnings.is_empty());

        let r2 =
            split_envelope(&samples[1]).expect("a JSON record without message is still a record");
        assert_eq!(r2.message, "");
        assert_eq!(r2.level.as_deref(), Some("ERROR"));
        assert_eq!(r2.host.as_deref(), Some("keycloak-cdslab.cdsys.local"));
        assert!(parse_event_text(&r2.message).is_none());
    }

    #[test]
    fn version_mismatch_records_from_expected_json() {
        let text = read(&format!(
            "{PUB}/elastic-integrations__keycloak__test-log.log-expected.json"
        ));
        let doc: Value = serde_json::from_str(&text).unwrap();
        let originals: Vec<String> = doc["expected"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| {
                e.pointer("/event/original")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .collect();
        let iso = originals
            .iter()
            .find(|o| o.starts_with("2024-07-17T12:05:32,104"))
            .unwrap();
        let r = split_envelope(iso).unwrap();
        assert_eq!(r.timestamp, Some(local("2024-07-17 12:05:32.104")));
        assert_eq!(r.thread.as_deref(), Some("main-thread-1"));
        let e = kv(&r.message);
        assert_eq!(one(&e, "type"), "LOGOUT");
        assert_eq!(one(&e, "clientId"), "user-console");
        assert_eq!(one(&e, "username"), "dummyuser");

        let osh = originals
            .iter()
            .find(|o| o.contains("openshift_1"))
            .unwrap();
        let r = split_envelope(osh).unwrap();
        assert_eq!(
            r.timestamp,
            Some(local("2025-12-09 09:49:17.971")),
            "inner timestamp wins"
        );
        assert_eq!(r.host.as_deref(), Some("openshift_1"));
        assert_eq!(r.logger.as_deref(), Some("org.keycloak.events"));
        assert_eq!(r.thread.as_deref(), Some("executor-thread-399"));
        assert_eq!(r.level.as_deref(), Some("INFO"));
        let e = kv(&r.message);
        assert_eq!(one(&e, "type"), "IMPERSONATE");
        assert_eq!(one(&e, "ipAddress"), "");
        assert_eq!(one(&e, "clientId"), "null");
        assert_eq!(one(&e, "impersonator"), "admin");
        assert_eq!(one(&e, "impersonator_realm"), "master");
        assert!(e.warnings.is_empty());
    }

    // -- injection and escaping --------------------------------------------

    #[test]
    fn injected_quotes_stay_inside_reason() {
        let evil = "x\", userId=\"evil\", realmId=\"r";
        let base = [
            ("type", "TOKEN_EXCHANGE_ERROR"),
            ("realmId", "realm-uuid"),
            ("realmName", "acme"),
            ("clientId", "c1"),
            ("userId", "real-user"),
            ("ipAddress", "10.0.0.1"),
            ("error", "invalid_request"),
        ];
        // reason in the middle and reason last.
        for tail_pairs in [
            vec![("reason", evil), ("auth_method", "token_exchange")],
            vec![("reason", evil)],
        ] {
            let mut all = base.to_vec();
            all.extend(tail_pairs);
            let line = format!(
                "2026-03-11 11:20:05,119 WARN  [org.keycloak.events] (t-1) {}",
                render(&all)
            );
            assert!(line.contains("reason=\"x\\\", userId=\\\"evil\\\", realmId=\\\"r\""));
            let r = kv(&split_envelope(&line).unwrap().message);
            assert_eq!(values(&r, "userId"), ["real-user"]);
            assert_eq!(values(&r, "realmId"), ["realm-uuid"]);
            assert_eq!(one(&r, "reason"), evil);
            let want: Vec<(String, String)> = all
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(r.pairs, want);
            assert!(r.warnings.is_empty(), "{r:?}");
        }
    }

    #[test]
    fn injection_ending_in_key_equals_does_not_create_pair() {
        // Attacker value ends with `, userId=`: the real closing quote then
        // looks like the opening quote of a userId value.
        let all = [
            ("type", "TOKEN_EXCHANGE_ERROR"),
            ("userId", "null"),
            ("requested_subject", "x\", userId="),
            ("audience", ", clientId="),
            ("reason", "r"),
        ];
        let r = kv(&render(&all));
        assert_eq!(values(&r, "userId"), ["null"]);
        assert!(values(&r, "clientId").is_empty());
        assert_eq!(one(&r, "requested_subject"), "x\", userId=");
        assert_eq!(one(&r, "audience"), ", clientId=");
    }

    #[test]
    fn value_ending_in_backslash() {
        let line = render(&[
            ("type", "LOGIN_ERROR"),
            ("userId", "u1"),
            ("reason", "C:\\dir\\"),
            ("audience", "aud"),
        ]);
        assert_eq!(
            line,
            r#"type="LOGIN_ERROR", userId="u1", reason="C:\dir\", audience="aud""#
        );
        let r = kv(&line);
        assert_eq!(one(&r, "reason"), "C:\\dir\\");
        assert_eq!(one(&r, "audience"), "aud");
        assert_eq!(r.pairs.len(), 4);
        assert!(
            r.warnings
                .iter()
                .any(|w| w.contains("reason") && w.contains("backslash")),
            "{r:?}"
        );

        // At the end of the line.
        let r = kv("type=\"X\", reason=\"trailing\\\"\r\n");
        assert_eq!(one(&r, "reason"), "trailing\\");
        assert!(r.warnings.iter().any(|w| w.contains("ambiguous escape")));

        // A value that is only a backslash, then an injected-looking tail.
        let r = kv(&render(&[("type", "X"), ("a", "\\"), ("b", "y\", c=\"z")]));
        assert_eq!(one(&r, "a"), "\\");
        assert_eq!(one(&r, "b"), "y\", c=\"z");
        assert!(values(&r, "c").is_empty());
    }

    #[test]
    fn unterminated_quote_warns() {
        let r = kv("type=\"LOGIN\", realmId=\"r\", userId=\"abc");
        assert_eq!(one(&r, "type"), "LOGIN");
        assert_eq!(one(&r, "realmId"), "r");
        assert_eq!(one(&r, "userId"), "abc");
        assert!(
            r.warnings
                .iter()
                .any(|w| w.contains("unterminated quoted value for key userId")),
            "{r:?}"
        );
        let r = kv("type=\"");
        assert_eq!(one(&r, "type"), "");
        assert!(!r.warnings.is_empty());
    }

    #[test]
    fn control_and_bidi_characters_preserved() {
        let nasty = "ad\u{202E}nimda\u{1b}[31m\0\u{85}\u{a0}é😀";
        let line = render(&[
            ("type", "LOGIN"),
            ("username", nasty),
            ("ipAddress", "1.2.3.4"),
        ]);
        let r = kv(&line);
        assert_eq!(one(&r, "username"), nasty);
        assert_eq!(one(&r, "ipAddress"), "1.2.3.4");
        let unq = format!("type=LOGIN, username={nasty}, ipAddress=1.2.3.4");
        assert_eq!(one(&kv(&unq), "username"), nasty);
    }

    #[test]
    fn duplicate_keys_kept_and_warned() {
        let r = kv("type=\"LOGIN\", userId=\"a\", userId=\"b\", x=\"1\", x=\"2\", x=\"3\"");
        assert_eq!(values(&r, "userId"), ["a", "b"]);
        assert_eq!(values(&r, "x"), ["1", "2", "3"]);
        assert_eq!(
            r.warnings
                .iter()
                .filter(|w| w.starts_with("duplicate key"))
                .count(),
            2
        );
        assert!(r.warnings.contains(&"duplicate key userId".to_string()));
    }

    #[test]
    fn quoted_unquoted_single_and_escaped_forms_agree() {
        let pairs = [
            ("type", "LOGIN_ERROR"),
            ("realmId", "ABCD TEST"),
            ("clientId", "https://www.example.com/shibboleth"),
            ("userId", "null"),
            ("ipAddress", "10.2.2.156"),
            ("error", "invalid_user_credentials"),
            ("redirect_uri", "http://x/#/realms/test/events?a=b"),
            ("detail", "Client not allowed."),
        ];
        let want: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let quoted = render(&pairs);
        let unquoted = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let single = pairs
            .iter()
            .map(|(k, v)| format!("{k}='{v}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let escaped = quoted.replace('"', "\\\"");
        for form in [&quoted, &unquoted, &single, &escaped] {
            let r = kv(form);
            assert_eq!(r.pairs, want, "{form}");
        }
        assert!(kv(&quoted).warnings.is_empty());
        assert!(kv(&unquoted).warnings.is_empty());
        assert!(kv(&single).warnings.is_empty());
    }

    #[test]
    fn trace_cookies_bracket_value() {
        let line = "type=\"LOGIN\", userId=\"u\", requestUri=\"https://kc/realms/r/protocol\", cookies=[AUTH_SESSION_ID=abc, KC_RESTART=x=y]";
        let r = kv(line);
        assert_eq!(one(&r, "requestUri"), "https://kc/realms/r/protocol");
        assert_eq!(one(&r, "cookies"), "AUTH_SESSION_ID=abc, KC_RESTART=x=y");
        assert!(values(&r, "KC_RESTART").is_empty());
        assert!(r.warnings.is_empty());
        let r = kv("type=LOGIN, requestUri=https://kc/x, cookies=[A=1, B=2]");
        assert_eq!(one(&r, "cookies"), "A=1, B=2");
    }

    #[test]
    fn unquoted_values_with_spaces_and_equals() {
        let r = kv("type=LOGIN_ERROR, realmId=ABCD TEST, clientId=https://www.example.com/shibboleth, redirect_uri=http://x/#/realms/test/events?q=1&r=a b, reason=a,b");
        assert_eq!(one(&r, "realmId"), "ABCD TEST");
        assert_eq!(one(&r, "clientId"), "https://www.example.com/shibboleth");
        assert_eq!(
            one(&r, "redirect_uri"),
            "http://x/#/realms/test/events?q=1&r=a b"
        );
        assert_eq!(one(&r, "reason"), "a,b");
    }

    #[test]
    fn non_events_are_none() {
        for m in [
            "",
            "Keycloak 26.5.4 on JVM (powered by Quarkus 3.27.1) started in 14.882s.",
            "Installed features: [agroal, cdi]",
            "Received {\"type\":\"x\"} from peer",
            "FOO{\"no\":\"type key\"}",
            "JSON_EVENT::{broken",
            "types=LOGIN",
            "xtype=\"LOGIN\"",
        ] {
            assert!(parse_event_text(m).is_none(), "{m:?}");
        }
        assert!(matches!(
            parse_event_text("{\"operationType\":\"CREATE\"}"),
            Some(EventText::Json(_))
        ));
    }

    /// Round trip of random adversarial records through Keycloak's quoting.
    #[test]
    fn round_trip_adversarial_values() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let atoms = [
            "\"", "\\", ", ", "=", "userId", "realmId=", "'", "[", "]", "a", " ", "é", "\u{202E}",
            "x=\"",
        ];
        let keys = [
            "type",
            "realmId",
            "clientId",
            "userId",
            "ipAddress",
            "reason",
            "requested_subject",
            "audience",
        ];
        for _ in 0..20_000 {
            let npairs = 2 + rng.below(5);
            let mut owned: Vec<(String, String)> = Vec::new();
            for i in 0..npairs {
                let key = keys[i % keys.len()].to_string();
                let mut v = String::new();
                for _ in 0..rng.below(7) {
                    v.push_str(atoms[rng.below(atoms.len())]);
                }
                owned.push((key, v));
            }
            let line = owned
                .iter()
                .map(|(k, v)| format!("{k}={}", sanitize(v)))
                .collect::<Vec<_>>()
                .join(", ");
            let r = kv(&line);
            assert_eq!(r.pairs, owned, "round trip failed for {line}");
        }
    }

    // -- envelopes -------------------------------------------------------------

    #[test]
    fn rfc5424_syslog_prefix() {
        let plain = "<15>1 2024-10-30T17:27:03.414+05:30 keycloak keycloak 81812 org.keycloak.events -  type=\"LOGIN\", realmId=\"r\"";
        let r = split_envelope(plain).unwrap();
        let want = DateTime::parse_from_rfc3339("2024-10-30T17:27:03.414+05:30").unwrap();
        assert_eq!(r.timestamp, Some(LogTimestamp::Zoned(want)));
        assert_eq!(r.host.as_deref(), Some("keycloak"));
        assert_eq!(r.logger.as_deref(), Some("org.keycloak.events"));
        assert_eq!(one(&kv(&r.message), "type"), "LOGIN");

        let wrapped = "<15>1 2024-10-30T17:27:03.414+05:30 kc-host keycloak 81812 - [meta x=\"a]b\\\"\"] 2024-10-30 17:27:03,400 DEBUG [org.keycloak.events] (executor-thread-7) type=\"LOGOUT\"";
        let r = split_envelope(wrapped).unwrap();
        assert_eq!(r.timestamp, Some(local("2024-10-30 17:27:03.400")));
        assert_eq!(r.host.as_deref(), Some("kc-host"));
        assert_eq!(r.level.as_deref(), Some("DEBUG"));
        assert_eq!(r.message, "type=\"LOGOUT\"");

        let sample = &datadog_samples()[0];
        let json = format!("<15>1 2024-10-30T12:00:00Z relay keycloak 81812 - - {sample}");
        let r = split_envelope(&json).unwrap();
        assert_eq!(r.host.as_deref(), Some("keycloak"), "JSON hostName wins");
        assert!(
            matches!(r.timestamp, Some(LogTimestamp::Zoned(t)) if t.to_rfc3339().starts_with("2024-10-30T17:27:03"))
        );
        assert_eq!(one(&kv(&r.message), "type"), "CODE_TO_TOKEN");
    }

    #[test]
    fn rfc3164_syslog_prefix() {
        let r = split_envelope("<134>Mar  9 07:58:04 kc1 keycloak: type=\"LOGIN\", userId=\"u\"")
            .unwrap();
        assert_eq!(r.host.as_deref(), Some("kc1"));
        assert_eq!(
            r.timestamp,
            Some(LogTimestamp::TimeOnly(
                NaiveTime::from_hms_opt(7, 58, 4).unwrap()
            ))
        );
        assert_eq!(r.message, "type=\"LOGIN\", userId=\"u\"");
        let r = split_envelope(
            "Mar 19 07:58:04 kc1 keycloak[42]: 2026-03-09 07:58:04,123 INFO  [org.keycloak.events] (executor-thread-4) type=\"LOGIN\"",
        )
        .unwrap();
        assert_eq!(r.timestamp, Some(local("2026-03-09 07:58:04.123")));
        assert_eq!(r.host.as_deref(), Some("kc1"));
        assert_eq!(r.logger.as_deref(), Some("org.keycloak.events"));
    }

    #[test]
    fn collector_prefix_without_inner_envelope() {
        let r = split_envelope("2025-12-09T08:49:18.495105+00:00 node-1 keycloak: type=\"LOGIN\"")
            .unwrap();
        assert_eq!(r.host.as_deref(), Some("node-1"));
        assert!(matches!(r.timestamp, Some(LogTimestamp::Zoned(_))));
        assert_eq!(r.message, "type=\"LOGIN\"");
        assert!(split_envelope("2025-12-09T08:49:18Z just some words here").is_none());
    }

    #[test]
    fn quarkus_variants_and_generic() {
        let r = split_envelope(
            "2024-07-17T12:05:32,104 INFO [org.keycloak.events] (main-thread-1) type=\"X\"",
        )
        .unwrap();
        assert_eq!(r.timestamp, Some(local("2024-07-17 12:05:32.104")));
        assert_eq!(r.message, "type=\"X\"");
        let r = split_envelope("2024-07-17 12:05:32.123456789 WARN  [a.b] (pool (x) 1) msg (y)")
            .unwrap();
        assert_eq!(r.thread.as_deref(), Some("pool (x) 1"));
        assert_eq!(r.message, "msg (y)");
        assert_eq!(r.timestamp, Some(local("2024-07-17 12:05:32.123456789")));
        let r = split_envelope("2026-03-09 07:58:04,123 ERROR something broke: x=1").unwrap();
        assert_eq!(r.level.as_deref(), Some("ERROR"));
        assert_eq!(r.logger, None);
        assert_eq!(r.message, "something broke: x=1");
        let r = split_envelope("2026-03-09T07:58:04.5+02:00 SEVERE boom").unwrap();
        assert!(
            matches!(r.timestamp, Some(LogTimestamp::Zoned(t)) if t.offset().local_minus_utc() == 7200)
        );
        // Ten fraction digits and impossible dates are not timestamps.
        assert!(split_envelope("2026-03-09 07:58:04.1234567890 INFO x").is_none());
        assert!(split_envelope("2026-02-30 07:58:04,123 INFO x").is_none());
        assert!(split_envelope("2026-03-09 07:58:04,123 NOTICE x").is_none());
    }

    #[test]
    fn non_records_are_none() {
        for l in [
            "",
            "\r\n",
            "    at org.apache.http.impl.conn.DefaultHttpClientConnectionOperator.connect(X.java:156)",
            "\tat java.base/java.lang.Thread.run(Thread.java:1583)",
            "Caused by: java.net.ConnectException: Connection refused",
            "random text",
            "{\"not\":\"a log record\"}",
            "{broken json",
            "<999999>1 x",
            "WFLYUT002021-10-22 21: Registered web context",
        ] {
            assert!(split_envelope(l).is_none(), "{l:?}");
        }
    }

    // -- robustness ------------------------------------------------------------

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: usize) -> usize {
            if n == 0 {
                0
            } else {
                (self.next() % n as u64) as usize
            }
        }
    }

    fn check_invariants(input: &str) {
        if let Some(rec) = split_envelope(input) {
            let _ = parse_event_text(&rec.message);
        }
        if let Some(EventText::KeyValue(r)) = parse_event_text(input) {
            assert!(!r.pairs.is_empty());
            assert!(r.warnings.len() <= MAX_WARNINGS + 1);
            for (k, _) in &r.pairs {
                let kb = k.as_bytes();
                assert!(
                    kb.first().is_some_and(|&c| is_key_start(c))
                        && kb.iter().all(|&c| is_key_char(c)),
                    "{k:?}"
                );
            }
        }
    }

    #[test]
    fn no_panic_on_random_and_mutated_input() {
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        let mut seeds: Vec<String> = Vec::new();
        for f in [
            "keycloak/jboss-logging.log",
            "public-samples/jboss-logging/elastic-integrations__keycloak__test-log.log",
            "public-samples/jboss-logging/elastic-integrations__keycloak__deploy-sample_logs__test-log.log",
            "public-samples/jboss-logging/kavahub-springseeds__FAQ.excerpt.log",
            "public-samples/jboss-logging/kill9zombie-keycloak_jsonlog_eventlistener__README.excerpt.log",
        ] {
            seeds.extend(read(f).lines().map(str::to_string));
        }
        seeds.extend(datadog_samples());
        seeds.push("<15>1 2024-10-30T17:27:03.414+05:30 keycloak keycloak 81812 org.keycloak.events [a b=\"c\"] x".into());
        seeds.push("<134>Mar  9 07:58:04 host keycloak: type=\"A\\\", b=\\\"c\"".into());
        let tokens: [&[u8]; 24] = [
            b"\"",
            b"\\",
            b", ",
            b"=",
            b"type=",
            b"operationType=",
            b"'",
            b"[",
            b"]",
            b"{",
            b"}",
            b"(",
            b")",
            b"<15>1 ",
            b"2026-03-09 07:58:04,123 ",
            b"16:30:11,662 ",
            b"INFO ",
            b"[org.keycloak.events] ",
            b"userId",
            "\u{202E}".as_bytes(),
            b"\xff\xfe",
            "é".as_bytes(),
            b"\0",
            b"\r\n",
        ];
        for i in 0..30_000 {
            let mut bytes: Vec<u8> = if i % 2 == 0 {
                seeds[rng.below(seeds.len())].clone().into_bytes()
            } else {
                Vec::new()
            };
            let edits = 1 + rng.below(8);
            for _ in 0..edits {
                let pos = rng.below(bytes.len() + 1);
                match rng.below(4) {
                    0 if !bytes.is_empty() && pos < bytes.len() => {
                        bytes.remove(pos);
                    }
                    1 if pos < bytes.len() => bytes[pos] = (rng.next() & 0xff) as u8,
                    2 => {
                        let t = tokens[rng.below(tokens.len())];
                        bytes.splice(pos..pos, t.iter().copied());
                    }
                    _ => {
                        let len = rng.below(bytes.len().saturating_sub(pos) + 1);
                        bytes.truncate(pos + len);
                    }
                }
            }
            let s = String::from_utf8_lossy(&bytes);
            check_invariants(&s);
            // Also as a message with the event prefixes in front.
            check_invariants(&format!("type=\"{s}"));
            check_invariants(&format!("type={s}"));
        }
    }

    #[test]
    fn one_megabyte_hostile_lines_complete() {
        let mb = 1 << 20;
        let rep = |unit: &str| -> String { unit.repeat(mb / unit.len()) };
        let cases = [
            format!("type=\"{}", rep("\\\", a=")),
            format!("type=\"x\", {}", rep("a=\"\\\", ")),
            format!("type=x, {}", rep("a='x, ")),
            format!("type=x, {}", rep("c=[x, ")),
            format!("type=\"x\", {}", rep("aaaaaaaa")),
            format!("type=\"x\", {}", rep(", a")),
            format!("type=\"{}\"", rep("\\\"")),
            format!("type=\"x\", {}", rep("k=\"v\", ")),
            format!("type=x, {}", rep("k=v, ")),
            format!("JSON_EVENT::{{\"type\":\"{}\"}}", rep("a")),
            format!(
                "2026-03-09 07:58:04,123 INFO  [org.keycloak.events] ({}",
                rep("(")
            ),
            format!("<15>1 - h a p m [{}", rep("\\\"")),
        ];
        // Speed is measured in benchmarks, not here; this checks that hostile megabyte lines complete
        // and keep the parser's invariants.
        for c in &cases {
            check_invariants(c);
            let line = format!("2026-03-09 07:58:04,123 INFO  [org.keycloak.events] (t) {c}");
            let rec = split_envelope(&line).unwrap();
            let _ = parse_event_text(&rec.message);
        }
        // A well-formed 1 MB event keeps every pair.
        let r = kv(&format!(
            "type=\"x\", {}",
            rep("k=\"v\", ").trim_end_matches(", ")
        ));
        assert_eq!(r.pairs.len(), 1 + mb / "k=\"v\", ".len());
        assert!(r.warnings.iter().any(|w| w.starts_with("duplicate key k")));
    }
}
