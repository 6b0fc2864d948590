//! `[admin_api]`: the live Keycloak Admin REST API, used by enrichment and by the polling source.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AdminApiOptions {
    /// Keycloak base URL (e.g. `https://keycloak.example.com`, with any `/auth` prefix your server
    /// uses). Unset: the admin API is not used.
    pub url: Option<String>,
    /// Realm of kcaudit's own service-account client.
    pub auth_realm: String,
    /// kcaudit's confidential client (client-credentials grant; needs `view-users`, `view-clients`,
    /// `view-realm`, and `view-events` for the polling source).
    pub client_id: String,
    /// Environment variable holding the client secret (used when no file or inline secret is set).
    pub client_secret_env: Option<String>,
    /// File holding the client secret.
    pub client_secret_file: Option<PathBuf>,
    /// The secret inline (discouraged).
    pub client_secret: Option<String>,
    /// PEM file with an extra CA certificate to trust.
    pub ca_file: Option<PathBuf>,
    /// How long a found client/user is cached, in seconds.
    pub cache_ttl_secs: u64,
    /// How long a 404 (deleted user, unknown client) is cached, in seconds.
    pub negative_ttl_secs: u64,
    /// Most cached lookups.
    pub cache_max_entries: u64,
    /// Requests per second to Keycloak, at most.
    pub requests_per_second: u32,
    /// Per-request timeout, in milliseconds.
    pub timeout_ms: u64,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before one trial request, in seconds.
    pub breaker_open_secs: u64,
}

impl Default for AdminApiOptions {
    fn default() -> Self {
        AdminApiOptions {
            url: None,
            auth_realm: "master".into(),
            client_id: "kcaudit".into(),
            client_secret_env: Some("KCAUDIT_KEYCLOAK_CLIENT_SECRET".into()),
            client_secret_file: None,
            client_secret: None,
            ca_file: None,
            cache_ttl_secs: 300,
            negative_ttl_secs: 30,
            cache_max_entries: 100_000,
            requests_per_second: 20,
            timeout_ms: 2000,
            breaker_failures: 5,
            breaker_open_secs: 30,
        }
    }
}

impl AdminApiOptions {
    pub fn secret(&self) -> Result<Vec<u8>, String> {
        crate::config::read_secret(self.client_secret_file.as_deref(), self.client_secret.as_deref(), self.client_secret_env.as_deref())
    }
}
