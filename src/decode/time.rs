//! Event-time normalisation.
//!
//! Keycloak sends `time` as epoch milliseconds, but relays re-encode it: as a numeric string, as an ISO
//! string, or as epoch seconds (some SIEM forwarders). Reading seconds as milliseconds puts an event in
//! January 1970 and silently breaks every time-window rule, so the unit is decided by magnitude: any
//! epoch value below 10^11 cannot be milliseconds of a plausible date (10^11 ms is 1973-03-03) and is
//! read as seconds, with a warning saying so.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde_json::Value;

use crate::event::Warning;

const SECONDS_BELOW: f64 = 1e11;
const MILLIS_BELOW: f64 = 1e14;
const MICROS_BELOW: f64 = 1e17;

/// Result of reading a time value: the instant plus an optional note about how it was read.
pub type TimeRead = (DateTime<Utc>, Option<Warning>);

/// Read a JSON `time` value.
pub fn from_json(v: &Value) -> Result<TimeRead, String> {
    match v {
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => from_epoch(i as f64, false),
            (None, Some(f)) => from_epoch(f, true),
            _ => Err(format!("time {n} is out of range")),
        },
        Value::String(s) => from_str(s),
        other => Err(format!("time has type {} (expected epoch milliseconds)", type_name(other))),
    }
}

/// Read a time given as text (numeric string or ISO 8601).
pub fn from_str(s: &str) -> Result<TimeRead, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("time is an empty string".into());
    }
    if t.bytes().all(|b| b.is_ascii_digit() || b == b'.') && t.bytes().filter(|&b| b == b'.').count() <= 1 {
        let f: f64 = t.parse().map_err(|_| format!("time {t:?} is not a number"))?;
        let (dt, w) = from_epoch(f, t.contains('.'))?;
        let note = w.map(|w| w.message).unwrap_or_else(|| "read as epoch milliseconds".into());
        return Ok((dt, Some(Warning::new("time_as_string", format!("time was the string {t:?}; {note}")))));
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok((dt.with_timezone(&Utc), None));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(t, fmt) {
            return Ok((
                Utc.from_utc_datetime(&naive),
                Some(Warning::new("time_without_zone", format!("time {t:?} has no zone offset; read as UTC"))),
            ));
        }
    }
    Err(format!("time {:?} is neither epoch milliseconds nor an ISO 8601 timestamp", super::json::preview(t, 60)))
}

fn from_epoch(v: f64, fractional: bool) -> Result<TimeRead, String> {
    if !v.is_finite() || v < 0.0 {
        return Err(format!("time {v} is negative or not finite"));
    }
    let (ms, note) = if v < SECONDS_BELOW {
        (
            (v * 1000.0).round(),
            Some(Warning::new("time_in_seconds", format!("time {v} is too small to be epoch milliseconds; read as epoch seconds"))),
        )
    } else if v < MILLIS_BELOW {
        let w = fractional.then(|| Warning::new("time_fractional_millis", format!("time {v} had a fraction of a millisecond; truncated")));
        (v.trunc(), w)
    } else if v < MICROS_BELOW {
        ((v / 1e3).trunc(), Some(Warning::new("time_in_microseconds", format!("time {v} read as epoch microseconds"))))
    } else {
        ((v / 1e6).trunc(), Some(Warning::new("time_in_nanoseconds", format!("time {v} read as epoch nanoseconds"))))
    };
    let dt = Utc
        .timestamp_millis_opt(ms as i64)
        .single()
        .ok_or_else(|| format!("time {v} is out of range"))?;
    Ok((dt, note))
}

pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ms(v: Value) -> i64 {
        from_json(&v).unwrap().0.timestamp_millis()
    }

    #[test]
    fn every_encoding_of_one_instant_agrees() {
        let want = 1773043084120;
        assert_eq!(ms(json!(1773043084120u64)), want);
        assert_eq!(ms(json!("1773043084120")), want);
        assert_eq!(ms(json!(1773043084.120)), want);
        assert_eq!(ms(json!("1773043084.120")), want);
        assert_eq!(ms(json!("2026-03-09T07:58:04.120Z")), want);
        assert_eq!(ms(json!("2026-03-09T08:58:04.120+01:00")), want);
        assert_eq!(ms(json!(1773043084120000u64)), want);
    }

    #[test]
    fn seconds_are_never_read_as_milliseconds() {
        let (dt, w) = from_json(&json!(1773043084)).unwrap();
        assert_eq!(dt.timestamp(), 1773043084);
        assert_eq!(w.unwrap().code, "time_in_seconds");
        let (_, w) = from_json(&json!(1773043084120u64)).unwrap();
        assert!(w.is_none(), "plain epoch ms needs no warning");
    }

    #[test]
    fn bad_times_are_errors_with_reasons() {
        assert!(from_json(&json!(-5)).unwrap_err().contains("negative"));
        assert!(from_json(&json!(true)).unwrap_err().contains("boolean"));
        assert!(from_json(&json!("yesterday")).unwrap_err().contains("neither"));
        assert!(from_json(&json!("")).is_err());
        assert!(from_json(&json!(1e300)).is_err());
    }
}
