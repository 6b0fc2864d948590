//! Decoders: every Keycloak wire format in, one [`AuditEvent`] out.
//!
//! | file | format |
//! |---|---|
//! | `json_event.rs` | Keycloak `EventRepresentation`/`AdminEventRepresentation` (REST API, `ext-event-http`), p2-inc webhook bodies, SnuK87 keycloak-kafka values, vymalo payloads |
//! | `jboss.rs` + `logline.rs` | jboss-logging listener lines in every envelope seen in the wild (Quarkus, WildFly, Spring Boot, syslog, JSON console) |
//! | `recording.rs` | recorded webhook deliveries (`method`, `path`, `headers`, `body`) |
//! | `draft.rs` | the shared interpretation every format goes through |
//! | `json.rs`, `time.rs` | duplicate-key-aware JSON parsing; event-time normalisation |
//!
//! A *record* is one line of a file, one element of a JSON array, or one whole JSON document. Every
//! record becomes exactly one [`Item`] per event it holds, or one item saying why it was skipped or
//! rejected: that is what makes `received = accepted + duplicates + rejected + skipped` hold.

pub mod canonical;
pub mod draft;
pub mod fast;
pub mod jboss;
pub mod json;
pub mod json_event;
pub mod logline;
pub mod recording;
pub mod time;

use std::borrow::Cow;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::event::{AuditEvent, Origin, Warning};

/// Wire formats. `Auto` picks per record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// Detect the format of every record.
    Auto,
    /// Keycloak `EventRepresentation` / `AdminEventRepresentation` JSON (REST API, `ext-event-http`).
    Keycloak,
    /// p2-inc keycloak-events `ext-event-webhook` bodies.
    P2inc,
    /// SnuK87 keycloak-kafka record values.
    KeycloakKafka,
    /// jboss-logging listener log lines (plain or JSON console).
    JbossLogging,
    /// Recorded webhook deliveries, one JSON object per line.
    Recording,
    /// kcaudit's own canonical events (an edge instance's Kafka records, the audit log).
    Kcaudit,
}

impl Format {
    pub const ALL: [Format; 7] =
        [Format::Auto, Format::Keycloak, Format::P2inc, Format::KeycloakKafka, Format::JbossLogging, Format::Recording, Format::Kcaudit];

    pub fn name(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Keycloak => "keycloak",
            Format::P2inc => "p2inc",
            Format::KeycloakKafka => "keycloak-kafka",
            Format::JbossLogging => "jboss-logging",
            Format::Recording => "recording",
            Format::Kcaudit => "kcaudit",
        }
    }

    /// The name as a shared string for [`Origin::format`](crate::event::Origin): built once per
    /// format, so labelling a record is a reference-count increment, not an allocation.
    pub fn label(self) -> std::sync::Arc<str> {
        static LABELS: std::sync::OnceLock<Vec<std::sync::Arc<str>>> = std::sync::OnceLock::new();
        let labels = LABELS.get_or_init(|| Format::ALL.iter().map(|f| std::sync::Arc::from(f.name())).collect());
        let i = Format::ALL.iter().position(|f| *f == self).unwrap_or(0);
        labels[i].clone()
    }

    /// Parse a format name; common aliases accepted.
    pub fn parse(s: &str) -> Result<Format, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "auto" => Format::Auto,
            "keycloak" | "native" | "rest" | "keycloak-native" | "event-representation" => Format::Keycloak,
            "p2inc" | "p2-inc" | "p2" | "keycloak-events" => Format::P2inc,
            "keycloak-kafka" | "kafka" | "snuk87" => Format::KeycloakKafka,
            "jboss-logging" | "jboss" | "log" | "logs" => Format::JbossLogging,
            "recording" | "recorded-deliveries" | "deliveries" => Format::Recording,
            "kcaudit" | "canonical" | "audit-log" => Format::Kcaudit,
            other => {
                let names: Vec<_> = Format::ALL.iter().map(|f| f.name()).collect();
                return Err(format!("unknown format {other:?}; expected one of {}", names.join(", ")));
            }
        })
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Limits and settings for decoding (`[decode]` in the config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeOptions {
    /// Time zone of the Keycloak server's log timestamps (jboss-logging lines print local wall time with
    /// no offset): an IANA name such as `Europe/Berlin`, or `UTC`.
    pub log_time_zone: String,
    /// Most details kept per event; the rest are dropped with a warning.
    pub max_details: usize,
    /// Longest detail value kept, in bytes; longer values are cut with a warning.
    pub max_detail_value_bytes: usize,
    /// Longest top-level field (ids, names, IP text, detail keys) kept, in bytes.
    pub max_field_bytes: usize,
    /// Longest admin-event representation kept, in bytes.
    pub max_representation_bytes: usize,
    /// Largest single record (line or array element) decoded at all; larger ones are rejected.
    pub max_record_bytes: usize,
    /// Most records decoded from one body (webhook request, Kafka record value). The rest is not
    /// decoded: one rejected record says so and keeps its start. A few hundred bytes of gzip can
    /// expand to millions of blank lines or `[1,1,…]` elements, and each would cost a record's
    /// bookkeeping.
    pub max_records_per_body: usize,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            log_time_zone: "UTC".into(),
            max_details: 256,
            max_detail_value_bytes: 8 * 1024,
            max_field_bytes: 1024,
            max_representation_bytes: 64 * 1024,
            max_record_bytes: 4 * 1024 * 1024,
            max_records_per_body: 100_000,
        }
    }
}

impl DecodeOptions {
    pub fn time_zone(&self) -> Result<chrono_tz::Tz, String> {
        self.log_time_zone
            .parse::<chrono_tz::Tz>()
            .map_err(|_| format!("decode.log_time_zone {:?} is not an IANA time zone name (e.g. UTC, Europe/Berlin)", self.log_time_zone))
    }
}

/// What became of one record.
#[derive(Debug, Clone)]
pub enum Decoded {
    // An `Arc` from the start: the pipeline shares each accepted event with every sink, and an event
    // made as a `Box` was copied into a new allocation there (~500 instructions an event, issue #9).
    // Until then it has one owner, so the stages change it in place (`Arc::make_mut` never copies).
    Event(Arc<AuditEvent>),
    /// Not an event and not an error: blank lines, start-up log lines, stack traces.
    Skipped(String),
    /// Could not be decoded; goes to the dead-letter store with this reason.
    Rejected(String),
}

/// One decoded record with its provenance (and the raw bytes when it was rejected, for the
/// dead-letter store).
#[derive(Debug, Clone)]
pub struct Item {
    pub origin: Origin,
    pub decoded: Decoded,
    pub raw: Option<Vec<u8>>,
}

/// Decodes recorded webhook deliveries. Implemented by the webhook source, so a recorded delivery goes
/// through exactly the same route resolution, signature check and body decoding as a live request.
pub trait DeliveryHandler: Send + Sync {
    fn handle(&self, delivery: &recording::RecordedDelivery, origin: &Origin, ctx: &Context<'_>, out: &mut Vec<Item>);
}

/// Everything a decoder needs besides the bytes.
pub struct Context<'a> {
    pub opts: &'a DecodeOptions,
    pub tz: chrono_tz::Tz,
    /// Handler for recorded deliveries (replay); `None` rejects them.
    pub deliveries: Option<&'a dyn DeliveryHandler>,
    /// True for log files, where lines that are not events are normal and are skipped; false for
    /// webhook bodies, where such a line is rejected.
    pub lines_may_be_noise: bool,
}

/// Strip a UTF-8 byte-order mark.
pub fn strip_bom(b: &[u8]) -> &[u8] {
    b.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(b)
}

/// Bytes to text: invalid UTF-8 is replaced (U+FFFD) and reported, never fatal, so one corrupt byte
/// cannot hide an event.
pub fn to_text(b: &[u8]) -> (Cow<'_, str>, Option<Warning>) {
    // The SIMD check first: valid UTF-8 is the normal case and the std check was 3 % of replay's CPU.
    if let Ok(s) = simdutf8::basic::from_utf8(b) {
        return (Cow::Borrowed(s), None);
    }
    match String::from_utf8_lossy(b) {
        Cow::Borrowed(s) => (Cow::Borrowed(s), None),
        Cow::Owned(s) => {
            let w = Warning::new("invalid_utf8", "the record contained invalid UTF-8; the bad bytes were replaced with U+FFFD");
            (Cow::Owned(s), Some(w))
        }
    }
}

/// Decode a whole body (a webhook request body or a recorded delivery's body): one JSON value (object
/// or array), or NDJSON / log lines.
pub fn decode_body(bytes: &[u8], format: Format, base: &Origin, ctx: &Context<'_>, out: &mut Vec<Item>) {
    let bytes = strip_bom(bytes);
    let (text, utf8_warning) = to_text(bytes);
    let pre: Vec<Warning> = utf8_warning.into_iter().collect();
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let mut single = base.clone();
        single.line = base.line.or(Some(1 + leading_newlines(&text)));
        // A body the fast path reads whole is one JSON document: taking it first spares single-event
        // bodies (webhook senders like p2-inc's, Kafka records) a second full parse just to check.
        // Only when nothing but JSON whitespace follows, where the check would have said yes too.
        let doc = trimmed.trim_end_matches([' ', '\n', '\r', '\t']);
        if doc.len() == doc.trim_end().len() && fast_record(trimmed, doc, format, &single, &pre, ctx, out) {
            return;
        }
        if is_single_json_document(trimmed) {
            decode_record(trimmed, format, &single, &pre, ctx, out);
            return;
        }
    }
    let mut index = 0u32;
    // Where the last segment starts (after the last newline), found once from the end: counting per
    // blank line made a body of newlines quadratic, and counting every newline up front was a tenth of
    // a batch's decoding (issue #9).
    let last_segment_start = memchr::memrchr(b'\n', text.as_bytes()).map(|p| p + 1);
    let start = out.len();
    let mut offset = 0usize;
    for (n, line) in split_lines(&text).enumerate() {
        let line_start = offset;
        offset += line.len() + 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() && n > 0 && Some(line_start) == last_segment_start {
            continue; // the newline that ends the body is not a blank record
        }
        if out.len() - start >= ctx.opts.max_records_per_body {
            let mut origin = base.clone();
            origin.line = base.line.or(Some(n as u64 + 1));
            out.push(too_many_records(&text[line_start.min(text.len())..], format, &origin, ctx.opts.max_records_per_body));
            return;
        }
        let mut origin = base.clone();
        if base.line.is_none() {
            origin.line = Some(n as u64 + 1);
        }
        let before = out.len();
        decode_record(line, format, &origin, &pre, ctx, out);
        for item in &mut out[before..] {
            if item.origin.index.is_none() {
                item.origin.index = Some(index);
            }
            index += 1;
        }
    }
}

/// `text.split('\n')`, with the memchr crate's SIMD search: std's word-at-a-time search was 2-3 % of
/// an NDJSON body's decoding (issue #9). A `\n` byte is always a character boundary in UTF-8.
pub fn split_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut start = 0;
    let mut ends = memchr::memchr_iter(b'\n', text.as_bytes()).chain(std::iter::once(text.len()));
    std::iter::from_fn(move || {
        let end = ends.next()?;
        let line = &text[start..end];
        start = end + 1;
        Some(line)
    })
}

fn leading_newlines(text: &str) -> u64 {
    let start = text.len() - text.trim_start().len();
    text[..start].bytes().filter(|&b| b == b'\n').count() as u64
}

/// True when `text` is exactly one JSON value (plus whitespace). Cheap: nothing is allocated.
pub fn is_single_json_document(text: &str) -> bool {
    let mut de = serde_json::Deserializer::from_str(text);
    serde::de::IgnoredAny::deserialize(&mut de).is_ok() && de.end().is_ok()
}

/// Decode one record (a line, or a whole JSON document). `pre` are warnings that apply to everything
/// decoded from it (e.g. invalid UTF-8 in the line).
pub fn decode_record(text: &str, format: Format, origin: &Origin, pre: &[Warning], ctx: &Context<'_>, out: &mut Vec<Item>) {
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    let trimmed = text.trim();
    let reject = |reason: String, out: &mut Vec<Item>| out.push(rejected(text, origin, format, reason));
    if trimmed.is_empty() {
        out.push(Item { origin: labelled(origin, format), decoded: Decoded::Skipped("blank line".into()), raw: None });
        return;
    }
    if trimmed.len() > ctx.opts.max_record_bytes {
        return out.push(too_large(text, trimmed.len(), format, origin, ctx.opts.max_record_bytes));
    }
    if format == Format::Kcaudit || (format == Format::Auto && canonical::looks_canonical(trimmed)) {
        return canonical::decode(trimmed, origin, pre, out);
    }
    let first = trimmed.as_bytes()[0];
    if first == b'[' {
        return decode_array(trimmed, format, origin, pre, ctx, out);
    }
    if first != b'{' {
        if format != Format::Auto && format != Format::JbossLogging {
            return reject(format!("expected a JSON object for format {format}, found text starting {}", json::preview(trimmed, 40)), out);
        }
        return jboss::decode_line(text, origin, pre, ctx, out);
    }
    if fast_record(text, trimmed, format, origin, pre, ctx, out) {
        return;
    }
    decode_object(text, trimmed, format, origin, pre, ctx, out)
}

/// The fast path ([`fast`]) for a plain Keycloak event, behind the same checks `decode_record` makes
/// before it (size cap, canonical records). True when it took the record (its item is in `out`).
/// `trimmed` is `text` without surrounding whitespace.
fn fast_record(text: &str, trimmed: &str, format: Format, origin: &Origin, pre: &[Warning], ctx: &Context<'_>, out: &mut Vec<Item>) -> bool {
    if !matches!(format, Format::Auto | Format::Keycloak)
        || !trimmed.starts_with('{')
        || trimmed.len() > ctx.opts.max_record_bytes
        || (format == Format::Auto && canonical::looks_canonical(trimmed))
    {
        return false;
    }
    match fast::decode(trimmed, origin, pre, ctx.opts) {
        Some(Ok(ev)) => out.push(Item { origin: ev.origin.clone(), decoded: Decoded::Event(ev), raw: None }),
        Some(Err(e)) => out.push(rejected(text, origin, format, e)),
        None => return false,
    }
    true
}

/// A refused record: labelled with the format it was read as, its text kept for the dead-letter store.
fn rejected(text: &str, origin: &Origin, format: Format, reason: String) -> Item {
    Item { origin: labelled(origin, format), decoded: Decoded::Rejected(reason), raw: Some(text.as_bytes().to_vec()) }
}

/// A JSON object through the general mapper: parsed into a `Value` (duplicate keys and trailing bytes
/// noticed), then routed by its shape.
fn decode_object(text: &str, trimmed: &str, format: Format, origin: &Origin, pre: &[Warning], ctx: &Context<'_>, out: &mut Vec<Item>) {
    let reject = |reason: String, out: &mut Vec<Item>| out.push(rejected(text, origin, format, reason));
    let parsed = match json::parse(trimmed) {
        Ok(p) => p,
        Err(e) => return reject(e, out),
    };
    let Value::Object(obj) = &parsed.value else { unreachable!("starts with '{{'") };
    if format == Format::Auto && canonical::is_canonical(obj) {
        return canonical::decode(trimmed, origin, pre, out);
    }
    if format == Format::Recording || (format == Format::Auto && recording::looks_like_delivery(obj)) {
        return recording::decode(obj, origin, ctx, out);
    }
    if format == Format::JbossLogging || (format == Format::Auto && jboss::is_json_console_record(obj)) {
        return jboss::decode_line(text, origin, pre, ctx, out);
    }
    let detected = if format == Format::Auto { json_event::classify(obj) } else { format };
    let mut draft = draft::Draft { origin: labelled(origin, detected), ..Default::default() };
    draft.warnings.extend(pre.iter().cloned());
    draft.warnings.extend(parsed.warnings);
    match json_event::decode(obj, draft, ctx.opts) {
        Ok(ev) => out.push(Item { origin: ev.origin.clone(), decoded: Decoded::Event(ev), raw: None }),
        Err(e) => reject(e, out),
    }
}

/// A record over `decode.max_record_bytes`: rejected with its length; `text` is the record, or as much
/// of it as the reader kept (a file reader stops keeping a line's bytes past the limit).
pub fn too_large(text: &str, len: usize, format: Format, origin: &Origin, max: usize) -> Item {
    rejected(text, origin, format, format!("record is {len} bytes, over decode.max_record_bytes ({max})"))
}

/// The rejected record standing for everything past `decode.max_records_per_body` (its first 64 KiB
/// kept as evidence).
fn too_many_records(rest: &str, format: Format, origin: &Origin, max: usize) -> Item {
    let mut cut = rest.len().min(64 * 1024);
    while !rest.is_char_boundary(cut) {
        cut -= 1;
    }
    let reason = format!("the body holds more than decode.max_records_per_body ({max}) records; the remaining {} bytes were not decoded", rest.len());
    Item { origin: labelled(origin, format), decoded: Decoded::Rejected(reason), raw: Some(rest.as_bytes()[..cut].to_vec()) }
}

/// The elements of a JSON array, at most `max` of them; also says whether there were more. Memory
/// stays bounded however many elements the array has.
fn array_elements(text: &str, max: usize) -> Result<(Vec<&RawValue>, bool), serde_json::Error> {
    struct Elems(usize);
    impl<'de> serde::de::Visitor<'de> for Elems {
        type Value = (Vec<&'de RawValue>, bool);
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON array")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut v = Vec::new();
            while v.len() < self.0 {
                match seq.next_element::<&RawValue>()? {
                    Some(e) => v.push(e),
                    None => return Ok((v, false)),
                }
            }
            let mut more = false;
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                more = true;
            }
            Ok((v, more))
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let r = serde::Deserializer::deserialize_seq(&mut de, Elems(max))?;
    de.end()?;
    Ok(r)
}

fn decode_array(text: &str, format: Format, origin: &Origin, pre: &[Warning], ctx: &Context<'_>, out: &mut Vec<Item>) {
    let (elems, more) = match array_elements(text, ctx.opts.max_records_per_body) {
        Ok(v) => v,
        Err(e) => {
            // Fall back to the duplicate-aware parser for the error message (it classifies the error).
            let reason = json::parse(text).err().unwrap_or_else(|| format!("JSON array could not be read: {e}"));
            out.push(Item { origin: labelled(origin, format), decoded: Decoded::Rejected(reason), raw: Some(text.as_bytes().to_vec()) });
            return;
        }
    };
    if elems.is_empty() {
        out.push(Item { origin: labelled(origin, format), decoded: Decoded::Skipped("empty JSON array".into()), raw: None });
        return;
    }
    let base_ptr = text.as_ptr() as usize;
    let mut line = origin.line;
    let mut scanned = 0usize;
    for (i, raw) in elems.iter().enumerate() {
        let s = raw.get();
        let offset = (s.as_ptr() as usize).saturating_sub(base_ptr).min(text.len());
        if let Some(l) = line.as_mut() {
            *l += text.as_bytes()[scanned..offset].iter().filter(|&&b| b == b'\n').count() as u64;
        }
        scanned = offset;
        let mut o = origin.clone();
        o.line = line;
        o.index = Some(origin.index.unwrap_or(0) + i as u32);
        if !s.starts_with('{') {
            let kind = s.chars().next().map(|c| match c {
                '[' => "an array",
                '"' => "a string",
                'n' => "null",
                't' | 'f' => "a boolean",
                _ => "a number",
            });
            out.push(Item {
                origin: labelled(&o, format),
                decoded: Decoded::Rejected(format!("array element {i} is {}, expected an event object", kind.unwrap_or("empty"))),
                raw: Some(s.as_bytes().to_vec()),
            });
            continue;
        }
        decode_record(s, format, &o, pre, ctx, out);
    }
    if more {
        let last = elems.last().map(|e| e.get()).unwrap_or("");
        let after = (last.as_ptr() as usize + last.len()).saturating_sub(text.as_ptr() as usize).min(text.len());
        out.push(too_many_records(&text[after..], format, origin, ctx.opts.max_records_per_body));
    }
}

/// The origin with its `format` set (auto-detected records say what they were detected as).
pub fn labelled(origin: &Origin, format: Format) -> Origin {
    let mut o = origin.clone();
    if o.format.is_empty() || &*o.format == Format::Auto.name() || format != Format::Auto {
        o.format = format.label();
    }
    o
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        /// `split_lines` is `split('\n')`, empty segments and multi-byte characters included.
        #[test]
        fn split_lines_is_split_on_newline(text in "[a\n\r\u{e9}\u{2028} ]{0,40}") {
            let ours: Vec<&str> = super::split_lines(&text).collect();
            let std: Vec<&str> = text.split('\n').collect();
            prop_assert_eq!(ours, std);
        }
    }
}
