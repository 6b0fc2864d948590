//! One HTTP delivery, from route to decoded items: shared by the live webhook and by replay of
//! recorded deliveries, so both apply the same route, limits, signature check and decoding.

use std::io::Read;

use flate2::read::{GzDecoder, ZlibDecoder};

use super::auth::{AuthError, ResolvedAuth};
use super::config::WebhookOptions;
use crate::decode::recording::RecordedDelivery;
use crate::decode::{decode_body, Context, Decoded, DeliveryHandler, Format, Item};
use crate::event::Origin;

/// Why a delivery was refused before any record was decoded (maps to an HTTP status).
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeliveryError {
    #[error("no route for {0}")]
    NotFound(String),
    #[error("method {0} not allowed; use POST")]
    MethodNotAllowed(String),
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    #[error("unsupported Content-Encoding {0:?} (use gzip, deflate or none)")]
    UnsupportedEncoding(String),
    #[error("body is not valid {0} data: {1}")]
    BadEncoding(String, String),
    #[error(transparent)]
    Unauthorized(#[from] AuthError),
}

impl DeliveryError {
    pub fn status(&self) -> u16 {
        match self {
            DeliveryError::NotFound(_) => 404,
            DeliveryError::MethodNotAllowed(_) => 405,
            DeliveryError::TooLarge(_) => 413,
            DeliveryError::UnsupportedEncoding(_) => 415,
            DeliveryError::BadEncoding(..) => 400,
            DeliveryError::Unauthorized(_) => 401,
        }
    }
}

/// A route with its authentication resolved.
#[derive(Debug, Clone)]
pub struct Route {
    pub path: String,
    pub format: Format,
    pub auth: ResolvedAuth,
}

/// The webhook's routing table and limits, with secrets loaded.
#[derive(Debug, Clone)]
pub struct Routes {
    configured: Vec<Route>,
    default_auth: ResolvedAuth,
    pub max_decompressed_bytes: usize,
}

impl Routes {
    pub fn from_options(o: &WebhookOptions) -> Result<Routes, String> {
        let default_auth = ResolvedAuth::resolve(&o.auth).map_err(|e| format!("webhook.auth: {e}"))?;
        let mut configured = Vec::new();
        for (i, r) in o.routes.iter().enumerate() {
            let auth = match &r.auth {
                Some(a) => ResolvedAuth::resolve(a).map_err(|e| format!("webhook.routes[{i}].auth: {e}"))?,
                None => default_auth.clone(),
            };
            configured.push(Route { path: r.path.clone(), format: r.format, auth });
        }
        Ok(Routes { configured, default_auth, max_decompressed_bytes: o.max_decompressed_bytes })
    }

    /// Configured routes first (exact path), then `/v1/events` and `/v1/events/{format}`.
    pub fn resolve(&self, path: &str) -> Result<Route, DeliveryError> {
        let path = path.split('?').next().unwrap_or(path);
        if let Some(r) = self.configured.iter().find(|r| r.path == path) {
            return Ok(r.clone());
        }
        let trimmed = path.trim_end_matches('/');
        if trimmed == "/v1/events" {
            return Ok(Route { path: trimmed.into(), format: Format::Auto, auth: self.default_auth.clone() });
        }
        if let Some(fmt) = trimmed.strip_prefix("/v1/events/") {
            let format = Format::parse(fmt).map_err(|e| DeliveryError::NotFound(format!("{path}: {e}")))?;
            if format == Format::Recording {
                return Err(DeliveryError::NotFound(format!("{path}: recordings are replayed with `kcaudit replay`")));
            }
            return Ok(Route { path: trimmed.into(), format, auth: self.default_auth.clone() });
        }
        Err(DeliveryError::NotFound(path.to_string()))
    }

    /// Route, decompress, authenticate and decode one delivery. Records that fail to decode come back
    /// as rejected items (for the dead-letter store); a refused delivery is an error.
    pub fn process<'h>(
        &self,
        method: &str,
        path: &str,
        header: impl Fn(&str) -> Option<&'h str>,
        body: &[u8],
        origin: &Origin,
        ctx: &Context<'_>,
    ) -> Result<Vec<Item>, DeliveryError> {
        let route = self.resolve(path)?;
        if !method.eq_ignore_ascii_case("POST") {
            return Err(DeliveryError::MethodNotAllowed(method.to_string()));
        }
        let encoding = header("content-encoding").map(|e| e.trim().to_ascii_lowercase()).unwrap_or_default();
        let decompressed = match encoding.as_str() {
            "" | "identity" => None,
            "gzip" | "x-gzip" => Some(inflate(GzDecoder::new(body), "gzip", self.max_decompressed_bytes)?),
            "deflate" => Some(inflate(ZlibDecoder::new(body), "deflate", self.max_decompressed_bytes)?),
            other => return Err(DeliveryError::UnsupportedEncoding(other.to_string())),
        };
        let mut signed: Vec<&[u8]> = vec![body];
        if let Some(d) = &decompressed {
            signed.push(d);
        }
        route.auth.verify(&header, &signed)?;
        let mut out = Vec::new();
        let mut o = origin.clone();
        if o.input.is_empty() {
            o.input = format!("webhook:{}", route.path).into();
        }
        decode_body(decompressed.as_deref().unwrap_or(body), route.format, &o, ctx, &mut out);
        if matches!(route.auth, ResolvedAuth::None) && header("x-keycloak-signature").is_some() {
            note_all(&mut out, "signature_not_verified", "the request carried X-Keycloak-Signature but this route has no authentication configured; the signature was not checked");
        }
        Ok(out)
    }
}

/// Add a warning to every event among `items`.
fn note_all(items: &mut [Item], code: &str, message: &str) {
    for it in items {
        if let Decoded::Event(ev) = &mut it.decoded {
            std::sync::Arc::make_mut(ev).warnings.push(crate::event::Warning::new(code, message));
        }
    }
}

fn inflate(r: impl Read, name: &str, limit: usize) -> Result<Vec<u8>, DeliveryError> {
    let mut out = Vec::new();
    r.take(limit as u64 + 1).read_to_end(&mut out).map_err(|e| DeliveryError::BadEncoding(name.into(), e.to_string()))?;
    if out.len() > limit {
        return Err(DeliveryError::TooLarge(limit));
    }
    Ok(out)
}

/// Replays recorded deliveries through [`Routes::process`]: a refused delivery becomes one rejected
/// item carrying the same reason the live webhook would have answered with.
impl DeliveryHandler for Routes {
    fn handle(&self, d: &RecordedDelivery, origin: &Origin, ctx: &Context<'_>, out: &mut Vec<Item>) {
        let header = |name: &str| d.header(name);
        // A recording captured at another receiver's path is checked as if posted to /v1/events.
        let unrouted = matches!(self.resolve(&d.path), Err(DeliveryError::NotFound(_)));
        let path = if unrouted { "/v1/events" } else { d.path.as_str() };
        match self.process(&d.method, path, header, &d.body, origin, ctx) {
            Ok(mut items) => {
                if unrouted {
                    let msg = format!("recorded path {} is not a configured route; checked and decoded as /v1/events", crate::decode::json::preview(&d.path, 80));
                    note_all(&mut items, "recording_path_unrouted", &msg);
                }
                out.extend(items)
            }
            Err(e) => out.push(Item {
                origin: origin.clone(),
                decoded: Decoded::Rejected(format!("{e} (HTTP {} for {} {})", e.status(), d.method, d.path)),
                raw: Some(d.body.clone()),
            }),
        }
    }
}
