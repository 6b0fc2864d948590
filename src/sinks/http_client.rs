//! What every HTTP-based sink shares: a reqwest client with the sink's TLS settings and time limit,
//! secrets read from a file or an environment variable (never inline), and the usual classification
//! of HTTP failures (429, 408 and 5xx are worth retrying; other statuses are the request's fault).

use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::tls::TlsOptions;
use super::SinkError;

/// A secret (token, password): from a file (trailing newline ignored) or an environment variable.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SecretOptions {
    /// Environment variable holding the secret.
    pub env: Option<String>,
    /// File holding the secret; wins over `env`.
    pub file: Option<PathBuf>,
}

impl SecretOptions {
    pub fn from_env(var: &str) -> SecretOptions {
        SecretOptions { env: Some(var.to_string()), file: None }
    }

    /// The secret, or why there is none.
    pub fn read(&self) -> Result<String, String> {
        let bytes = crate::config::read_secret(self.file.as_deref(), None, self.env.as_deref())?;
        String::from_utf8(bytes).map_err(|_| "the secret is not UTF-8".to_string())
    }
}

/// A reqwest client for one sink: its TLS settings, its time limit, gzip responses understood.
pub fn client(tls: &TlsOptions, timeout: Duration) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().timeout(timeout).connect_timeout(timeout.min(Duration::from_secs(10)));
    if !tls.is_default() {
        b = b.use_preconfigured_tls(tls.client_config().map_err(anyhow::Error::msg)?);
    }
    Ok(b.build()?)
}

/// Whether an HTTP status is worth retrying.
pub fn transient_status(status: u16) -> bool {
    status == 429 || status == 408 || status >= 500
}

/// A failed request (no response) as a sink error: always transient (the destination may come back).
pub fn request_error(url: &str, e: &reqwest::Error) -> SinkError {
    SinkError::Transient(format!("{url}: {}", super::text::error_chain(e)))
}

/// A non-success response as a sink error, keeping the destination's words (bounded).
pub fn status_error(url: &str, status: u16, body: &str) -> SinkError {
    let body = super::text::one_line(body, 1024);
    let msg = format!("{url}: HTTP {status}: {body}");
    if transient_status(status) {
        SinkError::Transient(msg)
    } else {
        SinkError::Permanent(msg)
    }
}
