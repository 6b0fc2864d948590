//! Keycloak's representations of realms, clients and users, as the admin REST API returns them and as
//! realm exports (`kc.sh export`) and keycloak-config-cli files contain them.
//!
//! Deliberately tolerant: every field is optional, unknown fields are ignored (these are Keycloak's
//! shapes, which grow with every release), and values that keycloak-config-cli writes loosely
//! (attributes as strings or lists, `$placeholders`) are accepted as JSON values with typed accessors.
//! Secrets are read (the realm audit must see inline secrets) but never serialised back out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `RealmRepresentation` (a realm export or config-cli file; `GET /admin/realms` returns a list of
/// these with only the top-level fields).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RealmRep {
    pub id: Option<String>,
    pub realm: Option<String>,
    pub display_name: Option<String>,
    pub enabled: Option<bool>,
    /// Seconds; the lifetime of access tokens, exchanged ones included.
    pub access_token_lifespan: Option<Value>,
    pub admin_permissions_enabled: Option<bool>,
    pub clients: Vec<ClientRep>,
    pub users: Vec<UserRep>,
    pub client_scopes: Vec<ClientScopeRep>,
    pub roles: Option<Value>,
    pub groups: Vec<Value>,
    pub identity_providers: Vec<Value>,
    pub attributes: BTreeMap<String, Value>,
}

/// `ClientRepresentation`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClientRep {
    /// Internal UUID (what admin events' `authDetails.clientId` holds).
    pub id: Option<String>,
    /// The clientId string events carry.
    pub client_id: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
    pub public_client: Option<bool>,
    pub bearer_only: Option<bool>,
    pub service_accounts_enabled: Option<bool>,
    pub standard_flow_enabled: Option<bool>,
    pub direct_access_grants_enabled: Option<bool>,
    pub full_scope_allowed: Option<bool>,
    pub client_authenticator_type: Option<String>,
    /// Read for the realm audit (inline secrets); never written out.
    #[serde(skip_serializing)]
    pub secret: Option<String>,
    pub protocol: Option<String>,
    pub attributes: BTreeMap<String, Value>,
    pub protocol_mappers: Vec<ProtocolMapperRep>,
    pub default_client_scopes: Vec<String>,
    pub optional_client_scopes: Vec<String>,
    /// Fine-grained permissions (FGAP v1 lives on the `realm-management` client's settings).
    pub authorization_settings: Option<Value>,
}

/// `ProtocolMapperRepresentation` (audience mappers decide which audiences a token can carry).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProtocolMapperRep {
    pub id: Option<String>,
    pub name: Option<String>,
    pub protocol: Option<String>,
    pub protocol_mapper: Option<String>,
    pub config: BTreeMap<String, Value>,
}

/// `ClientScopeRepresentation`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClientScopeRep {
    pub id: Option<String>,
    pub name: Option<String>,
    pub protocol: Option<String>,
    pub protocol_mappers: Vec<ProtocolMapperRep>,
    pub attributes: BTreeMap<String, Value>,
}

/// `UserRepresentation`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UserRep {
    pub id: Option<String>,
    pub username: Option<String>,
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub enabled: Option<bool>,
    /// Set on service-account users: the owning client's clientId (not its UUID).
    pub service_account_client_id: Option<String>,
    pub attributes: BTreeMap<String, Value>,
    pub realm_roles: Vec<String>,
    pub client_roles: BTreeMap<String, Vec<String>>,
    pub groups: Vec<String>,
    pub federation_link: Option<String>,
    pub created_timestamp: Option<i64>,
}

/// A string from a value that may be a string, a number/bool, or a one-element list (config-cli and
/// user attributes use all three).
pub fn value_str(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Array(a) => a.first().and_then(value_str),
        _ => None,
    }
}

/// Every string of a value that may be a string or a list of strings.
pub fn value_strs(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a.iter().filter_map(value_str).collect(),
        other => value_str(other).into_iter().collect(),
    }
}

impl ClientRep {
    pub fn attr(&self, key: &str) -> Option<String> {
        self.attributes.get(key).and_then(value_str)
    }

    /// `standard.token.exchange.enabled = "true"`: the client may use standard (V2) token exchange.
    pub fn standard_token_exchange_enabled(&self) -> bool {
        self.attr("standard.token.exchange.enabled").is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// Audiences this client's own audience mappers add (`oidc-audience-mapper`,
    /// `included.client.audience` / `included.custom.audience`).
    pub fn audience_mapper_audiences(&self) -> Vec<String> {
        audience_mapper_audiences(&self.protocol_mappers)
    }
}

/// Audiences added by `oidc-audience-mapper` protocol mappers.
pub fn audience_mapper_audiences(mappers: &[ProtocolMapperRep]) -> Vec<String> {
    let mut out = Vec::new();
    for m in mappers.iter().filter(|m| m.protocol_mapper.as_deref() == Some("oidc-audience-mapper")) {
        for key in ["included.client.audience", "included.custom.audience"] {
            if let Some(a) = m.config.get(key).and_then(value_str).filter(|a| !a.is_empty()) {
                out.push(a);
            }
        }
    }
    out
}

impl UserRep {
    pub fn attr_values(&self, key: &str) -> Vec<String> {
        self.attributes.get(key).map(value_strs).unwrap_or_default()
    }
}
