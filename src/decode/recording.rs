//! Recorded webhook deliveries: one JSON object per line with `method`, `path`, `headers` and `body`
//! (the raw body as a string, or `body_base64` for bytes that are not UTF-8).
//!
//! A recording is replayed through the webhook's own code path ([`super::DeliveryHandler`], implemented
//! by `sources::webhook`), so a tampered recorded body fails its signature exactly as it would live.

use base64::Engine;
use serde_json::{Map, Value};

use super::{Context, Decoded, Item};
use crate::event::Origin;

/// One recorded HTTP delivery.
#[derive(Debug, Clone, Default)]
pub struct RecordedDelivery {
    pub method: String,
    pub path: String,
    /// Header names as recorded; look-ups are case-insensitive.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RecordedDelivery {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A JSON object is a recorded delivery when it has a body and a path or method, and no event type.
pub fn looks_like_delivery(obj: &Map<String, Value>) -> bool {
    (obj.contains_key("body") || obj.contains_key("body_base64"))
        && (obj.contains_key("path") || obj.contains_key("method"))
        && !obj.contains_key("type")
}

pub fn parse(obj: &Map<String, Value>) -> Result<RecordedDelivery, String> {
    let s = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
    let body = match (obj.get("body"), obj.get("body_base64")) {
        (Some(Value::String(b)), _) => b.clone().into_bytes(),
        (_, Some(Value::String(b))) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|e| format!("recorded delivery body_base64 is not base64: {e}"))?,
        (Some(other), _) => return Err(format!("recorded delivery body is a {}, expected the raw body as a string", super::time::type_name(other))),
        _ => return Err("recorded delivery has no body".into()),
    };
    let mut headers = Vec::new();
    match obj.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(h)) => {
            for (k, v) in h {
                match v {
                    Value::String(v) => headers.push((k.clone(), v.clone())),
                    Value::Array(vs) => headers.extend(vs.iter().filter_map(Value::as_str).map(|v| (k.clone(), v.to_string()))),
                    _ => return Err(format!("recorded delivery header {k:?} is not a string")),
                }
            }
        }
        Some(_) => return Err("recorded delivery headers is not an object".into()),
    }
    Ok(RecordedDelivery { method: s("method").unwrap_or_else(|| "POST".into()), path: s("path").unwrap_or_else(|| "/".into()), headers, body })
}

pub fn decode(obj: &Map<String, Value>, origin: &Origin, ctx: &Context<'_>, out: &mut Vec<Item>) {
    let mut o = origin.clone();
    o.format = super::Format::Recording.name().into();
    let delivery = match parse(obj) {
        Ok(d) => d,
        Err(e) => {
            out.push(Item { origin: o, decoded: Decoded::Rejected(e), raw: serde_json::to_vec(obj).ok() });
            return;
        }
    };
    match ctx.deliveries {
        Some(h) => h.handle(&delivery, &o, ctx, out),
        None => out.push(Item {
            origin: o,
            decoded: Decoded::Rejected("recorded deliveries can only be replayed with the webhook configuration (kcaudit replay)".into()),
            raw: Some(delivery.body),
        }),
    }
}
