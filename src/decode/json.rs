//! JSON parsing that notices what `serde_json::Value` hides: duplicate keys and trailing garbage.
//!
//! Keycloak never emits duplicate keys, so a duplicate is either a broken relay or someone trying to
//! make two parsers disagree (one reads the first `userId`, another the last). We keep the last value
//! (as Jackson, Python and Go do) and record a warning naming the key and the value we dropped.
//! Nesting depth is bounded by serde_json's recursion limit (128), so hostile nesting is an error, never
//! a stack overflow.

use std::cell::RefCell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::event::Warning;

/// A parsed JSON document plus what was odd about it.
#[derive(Debug)]
pub struct Parsed {
    pub value: Value,
    pub warnings: Vec<Warning>,
}

/// Parse one JSON value from `text`. Whitespace after it is fine; anything else after a complete value
/// is reported as a warning (the complete value is still returned, so an event is not lost because a
/// relay appended junk), unless the first value is itself incomplete, which is an error.
pub fn parse(text: &str) -> Result<Parsed, String> {
    let dups = RefCell::new(Vec::new());
    let mut de = serde_json::Deserializer::from_str(text);
    let value = Collect { dups: &dups }
        .deserialize(&mut de)
        .map_err(|e| describe_error(&e))?;
    let mut warnings: Vec<Warning> = dups
        .into_inner()
        .into_iter()
        .map(|(k, dropped)| {
            Warning::new(
                "duplicate_key",
                format!("key {k:?} appears more than once; the last value was kept, earlier value {dropped} dropped"),
            )
        })
        .collect();
    // serde_json's `end()` checks for trailing non-whitespace.
    if de.end().is_err() {
        let rest = &text[first_value_end(text)..];
        warnings.push(Warning::new(
            "trailing_garbage",
            format!("ignored {} bytes after the JSON value: {}", rest.trim().len(), preview(rest.trim(), 80)),
        ));
    }
    Ok(Parsed { value, warnings })
}

/// Byte offset just past the first complete JSON value (only called on the rare trailing-garbage path).
fn first_value_end(text: &str) -> usize {
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<serde::de::IgnoredAny>();
    match stream.next() {
        Some(Ok(_)) => stream.byte_offset().min(text.len()),
        _ => text.len(),
    }
}

/// A short, printable preview of untrusted text for messages: control and bidi-override characters
/// are shown as `\u{..}` escapes so a message cannot rewrite the terminal or reorder what is shown.
pub fn preview(s: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for c in s.chars().take(max_chars) {
        if c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}') {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    if s.chars().count() > max_chars {
        out.push('…');
    }
    out
}

fn describe_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Eof => "truncated JSON (input ended inside a value)",
        Category::Syntax => "invalid JSON syntax",
        Category::Data => "JSON with an unexpected shape",
        Category::Io => "I/O error while reading JSON",
    };
    format!("{what}: {e}")
}

/// Deserialize seed that builds a `Value` and records duplicate object keys.
struct Collect<'a> {
    dups: &'a RefCell<Vec<(String, String)>>,
}

impl<'de> DeserializeSeed<'de> for Collect<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Collect<'_> {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map(Value::Number).unwrap_or(Value::Null))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Collect { dups: self.dups })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let v = map.next_value_seed(Collect { dups: self.dups })?;
            if let Some(old) = out.insert(key.clone(), v) {
                self.dups.borrow_mut().push((key, preview(&old.to_string(), 80)));
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_reported_last_wins() {
        let p = parse(r#"{"userId":"a","x":{"k":1,"k":2},"userId":"b"}"#).unwrap();
        assert_eq!(p.value["userId"], "b");
        assert_eq!(p.value["x"]["k"], 2);
        let codes: Vec<_> = p.warnings.iter().map(|w| w.code.as_str()).collect();
        assert_eq!(codes, vec!["duplicate_key", "duplicate_key"]);
        assert!(p.warnings.iter().any(|w| w.message.contains("\"userId\"") && w.message.contains("\"a\"")));
    }

    #[test]
    fn trailing_garbage_is_a_warning_not_a_loss() {
        let p = parse(r#"{"id":"1"} xyz"#).unwrap();
        assert_eq!(p.value["id"], "1");
        assert_eq!(p.warnings[0].code, "trailing_garbage");
        assert!(p.warnings[0].message.contains("xyz"));
        assert!(parse("{\"id\":\"1\"}  \n").unwrap().warnings.is_empty());
    }

    #[test]
    fn truncated_json_is_an_error_with_a_reason() {
        let e = parse(r#"{"id":"1","time":17"#).unwrap_err();
        assert!(e.starts_with("truncated JSON"), "{e}");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        let e = parse(&deep).unwrap_err();
        assert!(e.contains("recursion limit"), "{e}");
        let deep_obj = "{\"a\":".repeat(50_000) + "1" + &"}".repeat(50_000);
        assert!(parse(&deep_obj).is_err());
    }
}
