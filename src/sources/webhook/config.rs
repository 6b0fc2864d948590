//! `[webhook]` configuration: listener, limits, authentication and routes.

use std::net::SocketAddr;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::Problem;
use crate::decode::Format;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookOptions {
    /// Run the HTTP listener (`kcaudit serve`).
    pub enabled: bool,
    /// Address to listen on. Loopback by default; a non-loopback address requires authentication
    /// unless `allow_unauthenticated_remote` is set.
    pub listen: String,
    /// Largest request body accepted, in bytes (as sent, before decompression); larger gets 413.
    pub max_body_bytes: usize,
    /// Largest body after gzip decompression, in bytes; larger gets 413 (decompression bombs).
    pub max_decompressed_bytes: usize,
    /// Requests processed at once; more get 503 with Retry-After.
    pub max_concurrent_requests: usize,
    /// Longest a request waits for every sink to acknowledge, in seconds; then 503 (the sender
    /// retries, and deduplication absorbs the repeat).
    pub request_timeout_secs: u64,
    /// On shutdown, how long in-flight requests may take to finish, in seconds.
    pub shutdown_grace_secs: u64,
    /// Permit `auth.mode = "none"` on a non-loopback address. Off: an audit trail anyone on the
    /// network can write to is not an audit trail.
    pub allow_unauthenticated_remote: bool,
    /// Default authentication for every route.
    pub auth: AuthOptions,
    /// Extra routes (e.g. the path your Keycloak webhook already posts to), each with a format and an
    /// optional authentication override. `/v1/events` (auto-detect) and `/v1/events/{format}` always exist;
    /// a route listed here with one of those paths overrides its authentication.
    pub routes: Vec<RouteOptions>,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        WebhookOptions {
            enabled: true,
            listen: "127.0.0.1:8787".into(),
            max_body_bytes: 10 * 1024 * 1024,
            max_decompressed_bytes: 64 * 1024 * 1024,
            max_concurrent_requests: 256,
            request_timeout_secs: 30,
            shutdown_grace_secs: 30,
            allow_unauthenticated_remote: false,
            auth: AuthOptions::default(),
            routes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteOptions {
    /// URL path, e.g. `/hooks/keycloak`.
    pub path: String,
    /// Format of bodies on this route (`auto`, `keycloak`, `p2inc`, `keycloak-kafka`, `jboss-logging`).
    #[serde(default = "auto")]
    pub format: Format,
    /// Authentication for this route; the default `[webhook.auth]` when absent.
    #[serde(default)]
    pub auth: Option<AuthOptions>,
}

fn auto() -> Format {
    Format::Auto
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// No authentication (loopback only, unless explicitly allowed).
    None,
    /// `Authorization: Bearer <secret>`, compared in constant time.
    Bearer,
    /// p2-inc keycloak-events HMAC: `X-Keycloak-Signature` = hex HMAC of the raw body.
    Hmac,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HmacAlgorithm {
    /// HmacSHA256 (p2-inc's default).
    Sha256,
    /// HmacSHA1: weak, accepted only when listed explicitly.
    Sha1,
}

/// Environment variable read for the secret when nothing else is configured.
pub const DEFAULT_SECRET_ENV: &str = "KCAUDIT_WEBHOOK_SECRET";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AuthOptions {
    pub mode: AuthMode,
    /// Environment variable holding the shared secret (HMAC key or bearer token); used when neither
    /// `secret_file` nor `secret` is set. Default `KCAUDIT_WEBHOOK_SECRET`.
    pub secret_env: Option<String>,
    /// File holding the shared secret (trailing newline ignored).
    pub secret_file: Option<PathBuf>,
    /// The secret inline. Discouraged (config files get committed and shared); `validate` warns.
    pub secret: Option<String>,
    /// HMAC algorithms accepted, in order of preference.
    pub hmac_algorithms: Vec<HmacAlgorithm>,
    /// Header carrying the HMAC signature.
    pub signature_header: String,
}

impl Default for AuthOptions {
    fn default() -> Self {
        AuthOptions {
            mode: AuthMode::None,
            secret_env: Some(DEFAULT_SECRET_ENV.into()),
            secret_file: None,
            secret: None,
            hmac_algorithms: vec![HmacAlgorithm::Sha256],
            signature_header: "X-Keycloak-Signature".into(),
        }
    }
}

impl AuthOptions {
    /// Read the secret from wherever it is configured.
    pub fn secret(&self) -> Result<Vec<u8>, String> {
        crate::config::read_secret(self.secret_file.as_deref(), self.secret.as_deref(), self.secret_env.as_deref())
    }

    pub fn problems(&self, key: &str) -> Vec<Problem> {
        let mut p = Vec::new();
        let err = |k: &str, m: String| Problem { key: format!("{key}.{k}"), message: m, is_error: true };
        if self.mode != AuthMode::None {
            if let Err(e) = self.secret() {
                p.push(err("secret_env", e));
            }
            if self.secret.is_some() && self.secret_file.is_none() {
                p.push(Problem {
                    key: format!("{key}.secret"),
                    message: "the secret is inline in the config file; prefer secret_env or secret_file".into(),
                    is_error: false,
                });
            }
        }
        if self.mode == AuthMode::Hmac && self.hmac_algorithms.is_empty() {
            p.push(err("hmac_algorithms", "at least one algorithm is needed".into()));
        }
        if self.signature_header.trim().is_empty() || axum::http::HeaderName::from_bytes(self.signature_header.as_bytes()).is_err() {
            p.push(err("signature_header", format!("{:?} is not a valid header name", self.signature_header)));
        }
        p
    }
}

impl WebhookOptions {
    pub fn problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        if !self.enabled {
            return p;
        }
        match self.listen.parse::<SocketAddr>() {
            Err(_) => p.push(Problem {
                key: "webhook.listen".into(),
                message: format!("{:?} is not an address:port such as 127.0.0.1:8787", self.listen),
                is_error: true,
            }),
            Ok(addr) if !addr.ip().is_loopback() && !self.allow_unauthenticated_remote => {
                let open = std::iter::once(&self.auth)
                    .chain(self.routes.iter().filter_map(|r| r.auth.as_ref()))
                    .any(|a| a.mode == AuthMode::None);
                if open {
                    p.push(Problem {
                        key: "webhook.auth.mode".into(),
                        message: format!(
                            "listening on {addr} (not loopback) with authentication \"none\": set webhook.auth.mode to \"hmac\" or \"bearer\" (or webhook.allow_unauthenticated_remote = true)"
                        ),
                        is_error: true,
                    });
                }
            }
            Ok(_) => {}
        }
        if self.max_decompressed_bytes < self.max_body_bytes {
            p.push(Problem {
                key: "webhook.max_decompressed_bytes".into(),
                message: "is smaller than max_body_bytes; uncompressed bodies would be refused below the body limit".into(),
                is_error: false,
            });
        }
        p.extend(self.auth.problems("webhook.auth"));
        for (i, r) in self.routes.iter().enumerate() {
            let key = format!("webhook.routes[{i}]");
            if !r.path.starts_with('/') {
                p.push(Problem { key: format!("{key}.path"), message: format!("{:?} must start with /", r.path), is_error: true });
            }
            if ["/healthz", "/readyz", "/metrics"].contains(&r.path.as_str()) {
                p.push(Problem { key: format!("{key}.path"), message: format!("{} is reserved", r.path), is_error: true });
            }
            if r.format == Format::Recording {
                p.push(Problem { key: format!("{key}.format"), message: "recordings are replayed with `kcaudit replay`, not posted".into(), is_error: true });
            }
            if self.routes[..i].iter().any(|o| o.path == r.path) {
                p.push(Problem { key: format!("{key}.path"), message: format!("{} is listed twice", r.path), is_error: true });
            }
            if let Some(a) = &r.auth {
                p.extend(a.problems(&format!("{key}.auth")));
            }
        }
        p
    }
}
