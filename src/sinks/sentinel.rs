//! The Microsoft Sentinel sink: one flat row per event, shaped for ASIM, sent to a Log Analytics
//! workspace through the Azure Monitor **Logs Ingestion API** (`siem-and-detection.md` §1.6). The legacy
//! HTTP Data Collector API is being retired and is not used.
//!
//! # What has to exist in Azure
//!
//! 1. A custom table in the Sentinel workspace (e.g. `KeycloakTokenExchange_CL`) with the columns
//!    below.
//! 2. A data collection rule (DCR) whose stream declaration lists the same columns: [`EXAMPLE_DCR`] is a
//!    complete, ready-to-use DCR (kind `Direct`, so it has its own logs-ingestion endpoint; replace the
//!    workspace resource id and the location), and [`stream_declaration`] builds just the
//!    `streamDeclarations` part for another stream name. The example's `transformKql` is `source`: the
//!    rows already match the table.
//! 3. An Entra ID application (client id + client secret) with the **Monitoring Metrics Publisher**
//!    role on the DCR. kcaudit gets its token with the OAuth 2.0 client-credentials grant.
//!
//! ```toml
//! [sinks.sentinel]
//! enabled = true
//! endpoint = "https://my-dcr-abcd.westeurope-1.ingest.monitor.azure.com"   # DCR or DCE logs-ingestion endpoint
//! dcr_immutable_id = "dcr-00000000000000000000000000000000"
//! stream = "Custom-KeycloakTokenExchange_CL"
//! tenant_id = "00000000-0000-0000-0000-000000000000"
//! client_id = "00000000-0000-0000-0000-000000000000"
//! client_secret = { file = "/run/secrets/sentinel" }   # default: env KCAUDIT_SENTINEL_CLIENT_SECRET
//! route = { min_severity = "medium" }                  # optional: only flagged events
//! ```
//!
//! Sovereign clouds need both `authority` and `scope`: Azure US Government
//! `https://login.microsoftonline.us` + `https://monitor.azure.us//.default`; Azure China
//! `https://login.chinacloudapi.cn` + `https://monitor.azure.cn//.default` (a 401 from the ingestion
//! endpoint usually means the token is for another cloud; `problems()` warns when the endpoint's cloud
//! and the scope disagree).
//!
//! # Rows
//!
//! One JSON object per event, flat (the only nested values are the `dynamic` columns), absent values
//! left out (the column is then empty). User events follow the **ASIM Authentication** schema 0.1.4;
//! admin events follow the **ASIM Audit Event** schema 0.1 (`EventSchema` tells them apart: an ASIM
//! parser over the table filters on it, e.g. `KeycloakTokenExchange_CL | where EventSchema ==
//! "Authentication"`). Admin events are not authentications: forcing them into the Authentication
//! schema (with `EventType` `Logon`) would make every ASIM sign-in analytic count a protocol-mapper
//! change as a logon; the Audit Event schema is ASIM's schema for configuration changes and keeps the
//! operation, the changed object and the acting administrator.
//!
//! | column | type | user event (Authentication) | admin event (AuditEvent) |
//! |---|---|---|---|
//! | `TimeGenerated`, `EventStartTime`, `EventEndTime` | datetime | event time (RFC 3339, ms); the receive time, else the send time, for an event without one | same |
//! | `EventCount` | int | 1 | 1 |
//! | `EventVendor`, `EventProduct` | string | `Keycloak`, `Keycloak` | same |
//! | `EventSchema`, `EventSchemaVersion` | string | `Authentication`, `0.1.4` | `AuditEvent`, `0.1` |
//! | `EventType` | string | `Elevate` for an impersonation (see below), `Logoff` for `*LOGOUT*`, else `Logon` | `Create` / `Set` / `Delete` / `Execute` from `CREATE` / `UPDATE` / `DELETE` / `ACTION`, else `Other` |
//! | `EventSubType` | string | `AssumeRole` with `Elevate` | the Keycloak resource type (`PROTOCOL_MAPPER`, …) |
//! | `EventResult` | string | `Success` / `Failure` | same |
//! | `EventResultDetails` | string | failures: the Keycloak error normalised to ASIM's list (see [`result_details`]) | same |
//! | `EventOriginalResultDetails` | string | the Keycloak error as sent (`not_allowed`, `invalid_token`, …) | same |
//! | `EventOriginalType` | string | the Keycloak type (`TOKEN_EXCHANGE`, `LOGIN_ERROR`, …) | `<RESOURCE>-<OPERATION>` |
//! | `EventUid` | string | the Keycloak event id (deduplicate on it: delivery is at least once) | same |
//! | `EventSeverity` | string | worst finding: none/info `Informational`, `Low`, `Medium`, high/critical `High` | same |
//! | `EventMessage` | string | one line for people (the syslog summary) | same |
//! | `Dvc`, `DvcHostname` | string | the Keycloak host from the log line when known (`Dvc` is `Keycloak` otherwise) | same |
//! | `LogonProtocol` | string | `OAuth 2.0 Token Exchange` for token exchanges | – |
//! | `TargetUsername`, `TargetUserId` | string | the subject of the issued token: for an impersonation the **impersonated** user (for a failed one, the requested subject) | – |
//! | `TargetUsernameType` | string | `Simple` | – |
//! | `TargetUserType` | string | from the directory: `Service` (service account), `Admin` (privileged), `Regular` | – |
//! | `TargetUserScope` | string | the realm (users are defined per realm) | – |
//! | `TargetSessionId` | string | the Keycloak user-session id | – |
//! | `ActorUsername`, `ActorUserId`, `ActorUsernameType`, `ActorUserType`, `ActorScope` | string | the **impersonator** (V1 impersonation) | the administrator (`authDetails`) and their realm |
//! | `ActingAppId`, `ActingAppName` | string | token exchange: the exchanger client (`clientId`; the name from the directory, else the clientId) | `ActingAppId` = the admin client's UUID |
//! | `TargetAppName` | string | token exchange: the audiences, space-separated (as Keycloak's `audience` detail); other user events: the event's client | the changed client, when the directory knows it |
//! | `SrcIpAddr` | string | the caller address, only when it parses as an IP (the raw text is in `AdditionalFields.IpAddress`) | the administrator's address |
//! | `Operation`, `Object`, `ObjectType` | string | – | the Keycloak type, the resource path, `Configuration Atom` |
//! | `NewValue`, `ValueType` | string | – | the representation Keycloak recorded, `Other` |
//! | `Realm` | string | the realm name (its id when the name is unknown) | the target realm |
//! | `Severity` | string | kcaudit's worst finding severity (`info` … `critical`) | same |
//! | `FindingRules` | dynamic | **array** of the findings' rule ids, in order (`FindingRules has "new-audience"`, `mv-expand`) | same |
//! | `FindingReasons` | dynamic | array of the findings' reasons, aligned with `FindingRules` | same |
//! | `AdditionalFields` | dynamic | token-exchange facts (`Scope`, `RequestedSubject`, `SubjectTokenClientId`, `RequestedTokenType`, `RequestedIssuer`, `SubjectIssuer`, `DelegationActor`, `ExchangeFlavour`), `WithinPolicy`, `IpAddress` when not an IP | `ResourceType`, `ResourcePath`, `ResourceId`, `IpAddress` when not an IP |
//! | `RawEvent` | string | the canonical kcaudit event as one JSON string (`parse_json(RawEvent)`) | same |
//!
//! **Why `Logon` and `Elevate`.** ASIM models an authentication as "an Actor, running an ActingApp,
//! authenticates as a TargetUser to a TargetApp". A token exchange is exactly that: the exchanger client
//! (ActingApp) obtains a token that authenticates the subject (TargetUser) to the audience (TargetApp),
//! and ASIM has no separate "token issuance" type, so it is a `Logon` (as are logins, code-to-token and
//! refresh-token grants: every one of them hands out a token for a user). An **impersonation** exchange
//! (V1 `requested_subject`, or Keycloak's `IMPERSONATE`) is different in kind: the caller ends up
//! holding *another* user's identity and privileges. That is ASIM's `Elevate` (with sub-type
//! `AssumeRole`, ASIM's value for taking on another identity), with the impersonator as the Actor and
//! the impersonated user as the TargetUser, so "who became whom" survives normalisation.
//!
//! `TimeGenerated` older than Log Analytics accepts (replays of old events) is replaced by the ingestion
//! time on Azure's side; `EventStartTime` keeps the event's own time. Log Analytics also truncates very
//! long string values (see the Azure Monitor service limits): `RawEvent` of a huge admin
//! representation may arrive cut.
//!
//! # Requests and answers
//!
//! `POST {endpoint}/dataCollectionRules/{dcr_immutable_id}/streams/{stream}?api-version={api_version}`
//! with `Authorization: Bearer <token>`, `Content-Type: application/json`, a JSON array of rows,
//! gzip-compressed (`Content-Encoding: gzip`) unless `gzip = false`. A batch is cut into requests whose
//! *uncompressed* array is at most `max_bytes` (Azure's limit is 1 MiB per call, as the official SDKs
//! cut it); a single event whose row alone is over the budget is dead-lettered with the reason.
//!
//! | answer | what kcaudit does |
//! |---|---|
//! | 204 (or any 2xx) | delivered |
//! | 413, or 404 saying the content is too large (`ContentLengthLimitExceeded`) | the request is split in half and the halves sent (recursively); an event refused alone is dead-lettered with Azure's words |
//! | 429, 503 with `Retry-After` (or `retry-after-ms` / `x-ms-retry-after-ms`) | wait that long (at most [`MAX_RETRY_AFTER`]) and send again, up to [`RETRY_AFTER_WAITS`] times within the write; then, and without `Retry-After`, the driver retries with its backoff |
//! | other 5xx, 408, no answer (connection, timeout) | transient: the driver retries with backoff |
//! | 401 | the token is fetched again once and the request re-sent; a second 401 is permanent (wrong `scope` / cloud) |
//! | 403 (the application lacks *Monitoring Metrics Publisher* on the DCR), 404 (wrong endpoint, DCR or stream) | permanent for the whole batch: dead-lettered with Azure's `error.code` and `error.message` |
//! | any other 4xx | permanent for that request's events, with Azure's words |
//!
//! A transient failure stops the write: that request and every later one of the batch are retried, the
//! requests before it stay delivered (the driver gets a [`WriteReport`]). Delivery is at least once (an
//! answer lost after Azure stored the rows means they are sent again): deduplicate on `EventUid`.
//!
//! **Token**: `POST {authority}/{tenant_id}/oauth2/v2.0/token` with `grant_type=client_credentials`,
//! `client_id`, `client_secret`, `scope`; the `access_token` is cached and fetched again 5 minutes before
//! it expires (half-way through its life for tokens shorter than 10 minutes). A 400/401 from Entra ID
//! (`invalid_client`, `unauthorized_client`, `invalid_scope`, unknown tenant, …) is permanent and the
//! events are dead-lettered with Entra's `error` and `error_description` (never the secret); 429, 5xx and
//! no answer are transient (a still-valid cached token is used meanwhile). The secret is read again for
//! every token request, so a rotated secret file is picked up.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::http_client::{self, SecretOptions};
use super::route::RouteFilter;
use super::tls::TlsOptions;
use super::{BatchOptions, RetryOptions, SinkError, WriteReport};
use crate::config::Problem;
use crate::event::{format_time, AuditEvent, EventKind, Outcome, Severity, UserInfo};
use crate::sinks::encode::{cef, syslog};

/// Default environment variable for the client secret.
pub const DEFAULT_CLIENT_SECRET_ENV: &str = "KCAUDIT_SENTINEL_CLIENT_SECRET";
/// The Logs Ingestion API version kcaudit speaks.
pub const DEFAULT_API_VERSION: &str = "2023-01-01";
/// Entra ID of the public cloud.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// Token scope of Azure Monitor in the public cloud.
pub const DEFAULT_SCOPE: &str = "https://monitor.azure.com/.default";
/// Default stream (a custom stream of the DCR; `Custom-` + the table name is the usual choice).
pub const DEFAULT_STREAM: &str = "Custom-KeycloakTokenExchange_CL";
/// Azure's limit for one Logs Ingestion call (1 MiB); `max_bytes` may not exceed it.
pub const AZURE_MAX_BYTES: usize = 1024 * 1024;
/// Longest `Retry-After` kcaudit waits inside one write.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// How many `Retry-After` waits one request gets inside a write before the driver takes over.
pub const RETRY_AFTER_WAITS: u32 = 3;
/// Token refresh ahead of expiry.
pub const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// `EventVendor` and `EventProduct`.
pub const VENDOR: &str = "Keycloak";
pub const PRODUCT: &str = "Keycloak";
/// ASIM schema versions the rows follow.
pub const AUTHENTICATION_SCHEMA_VERSION: &str = "0.1.4";
pub const AUDIT_EVENT_SCHEMA_VERSION: &str = "0.1";

/// Every column a row can have, with its DCR / Log Analytics type, in declaration order.
pub const STREAM_COLUMNS: &[(&str, &str)] = &[
    ("TimeGenerated", "datetime"),
    ("EventStartTime", "datetime"),
    ("EventEndTime", "datetime"),
    ("EventCount", "int"),
    ("EventVendor", "string"),
    ("EventProduct", "string"),
    ("EventSchema", "string"),
    ("EventSchemaVersion", "string"),
    ("EventType", "string"),
    ("EventSubType", "string"),
    ("EventResult", "string"),
    ("EventResultDetails", "string"),
    ("EventOriginalResultDetails", "string"),
    ("EventOriginalType", "string"),
    ("EventUid", "string"),
    ("EventSeverity", "string"),
    ("EventMessage", "string"),
    ("Dvc", "string"),
    ("DvcHostname", "string"),
    ("LogonProtocol", "string"),
    ("TargetUsername", "string"),
    ("TargetUsernameType", "string"),
    ("TargetUserId", "string"),
    ("TargetUserType", "string"),
    ("TargetUserScope", "string"),
    ("TargetSessionId", "string"),
    ("ActorUsername", "string"),
    ("ActorUsernameType", "string"),
    ("ActorUserId", "string"),
    ("ActorUserType", "string"),
    ("ActorScope", "string"),
    ("ActingAppId", "string"),
    ("ActingAppName", "string"),
    ("TargetAppName", "string"),
    ("SrcIpAddr", "string"),
    ("Operation", "string"),
    ("Object", "string"),
    ("ObjectType", "string"),
    ("NewValue", "string"),
    ("ValueType", "string"),
    ("Realm", "string"),
    ("Severity", "string"),
    ("FindingRules", "dynamic"),
    ("FindingReasons", "dynamic"),
    ("AdditionalFields", "dynamic"),
    ("RawEvent", "string"),
];

/// A complete data collection rule for the default stream: create it (ARM / `az monitor
/// data-collection rule create --rule-file`) after the `KeycloakTokenExchange_CL` table, with your
/// workspace's resource id and region. Its `logsIngestion` endpoint (in the created rule's
/// properties) is `endpoint`, its `immutableId` is `dcr_immutable_id`.
pub const EXAMPLE_DCR: &str = r#"{
  "location": "westeurope",
  "kind": "Direct",
  "properties": {
    "description": "kcaudit: Keycloak token-exchange audit trail (ASIM Authentication / AuditEvent rows)",
    "streamDeclarations": {
      "Custom-KeycloakTokenExchange_CL": {
        "columns": [
          { "name": "TimeGenerated", "type": "datetime" },
          { "name": "EventStartTime", "type": "datetime" },
          { "name": "EventEndTime", "type": "datetime" },
          { "name": "EventCount", "type": "int" },
          { "name": "EventVendor", "type": "string" },
          { "name": "EventProduct", "type": "string" },
          { "name": "EventSchema", "type": "string" },
          { "name": "EventSchemaVersion", "type": "string" },
          { "name": "EventType", "type": "string" },
          { "name": "EventSubType", "type": "string" },
          { "name": "EventResult", "type": "string" },
          { "name": "EventResultDetails", "type": "string" },
          { "name": "EventOriginalResultDetails", "type": "string" },
          { "name": "EventOriginalType", "type": "string" },
          { "name": "EventUid", "type": "string" },
          { "name": "EventSeverity", "type": "string" },
          { "name": "EventMessage", "type": "string" },
          { "name": "Dvc", "type": "string" },
          { "name": "DvcHostname", "type": "string" },
          { "name": "LogonProtocol", "type": "string" },
          { "name": "TargetUsername", "type": "string" },
          { "name": "TargetUsernameType", "type": "string" },
          { "name": "TargetUserId", "type": "string" },
          { "name": "TargetUserType", "type": "string" },
          { "name": "TargetUserScope", "type": "string" },
          { "name": "TargetSessionId", "type": "string" },
          { "name": "ActorUsername", "type": "string" },
          { "name": "ActorUsernameType", "type": "string" },
          { "name": "ActorUserId", "type": "string" },
          { "name": "ActorUserType", "type": "string" },
          { "name": "ActorScope", "type": "string" },
          { "name": "ActingAppId", "type": "string" },
          { "name": "ActingAppName", "type": "string" },
          { "name": "TargetAppName", "type": "string" },
          { "name": "SrcIpAddr", "type": "string" },
          { "name": "Operation", "type": "string" },
          { "name": "Object", "type": "string" },
          { "name": "ObjectType", "type": "string" },
          { "name": "NewValue", "type": "string" },
          { "name": "ValueType", "type": "string" },
          { "name": "Realm", "type": "string" },
          { "name": "Severity", "type": "string" },
          { "name": "FindingRules", "type": "dynamic" },
          { "name": "FindingReasons", "type": "dynamic" },
          { "name": "AdditionalFields", "type": "dynamic" },
          { "name": "RawEvent", "type": "string" }
        ]
      }
    },
    "destinations": {
      "logAnalytics": [
        {
          "workspaceResourceId": "/subscriptions/<subscription-id>/resourceGroups/<resource-group>/providers/Microsoft.OperationalInsights/workspaces/<sentinel-workspace>",
          "name": "sentinelWorkspace"
        }
      ]
    },
    "dataFlows": [
      {
        "streams": ["Custom-KeycloakTokenExchange_CL"],
        "destinations": ["sentinelWorkspace"],
        "transformKql": "source",
        "outputStream": "Custom-KeycloakTokenExchange_CL"
      }
    ]
  }
}"#;

/// The `streamDeclarations` object of a DCR for `stream` (every column of [`STREAM_COLUMNS`]).
pub fn stream_declaration(stream: &str) -> Value {
    let columns: Vec<Value> = STREAM_COLUMNS.iter().map(|(n, t)| json!({ "name": n, "type": t })).collect();
    json!({ stream: { "columns": columns } })
}

/// `[sinks.sentinel]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SentinelOptions {
    /// Send events to Microsoft Sentinel (Azure Monitor Logs Ingestion API) at all.
    pub enabled: bool,
    /// The logs-ingestion endpoint: the DCR's own (`properties.endpoints.logsIngestion` of a `Direct`
    /// DCR) or a data collection endpoint's, e.g.
    /// `https://my-dcr-abcd.westeurope-1.ingest.monitor.azure.com`. kcaudit adds the path.
    pub endpoint: String,
    /// The DCR's immutable id (`dcr-` followed by 32 hex digits; `properties.immutableId`).
    pub dcr_immutable_id: String,
    /// The DCR input stream the rows are declared in (`Custom-<table>`).
    pub stream: String,
    /// Logs Ingestion API version (`api-version`).
    pub api_version: String,
    /// Entra ID tenant (directory) id, or its domain name.
    pub tenant_id: String,
    /// Application (client) id of the Entra ID application that has the Monitoring Metrics Publisher
    /// role on the DCR.
    pub client_id: String,
    /// The application's client secret (default: environment variable `KCAUDIT_SENTINEL_CLIENT_SECRET`).
    /// Never written inline in the configuration; read again for each token request.
    pub client_secret: SecretOptions,
    /// Entra ID authority: `https://login.microsoftonline.com` (public cloud),
    /// `https://login.microsoftonline.us` (US Government), `https://login.chinacloudapi.cn` (China).
    pub authority: String,
    /// Token scope: `https://monitor.azure.com/.default` (public cloud),
    /// `https://monitor.azure.us//.default` (US Government), `https://monitor.azure.cn//.default` (China).
    pub scope: String,
    /// Compress request bodies with gzip (`Content-Encoding: gzip`).
    pub gzip: bool,
    /// Most bytes of *uncompressed* JSON per request (Azure refuses calls over 1 MiB); a batch is cut
    /// into several requests, and an event whose row alone is larger is dead-lettered.
    pub max_bytes: usize,
    /// Time limit for one request (token or ingestion: connect, send and the answer), in milliseconds.
    pub timeout_ms: u64,
    /// TLS for both the token endpoint and the ingestion endpoint beyond the defaults (public web PKI
    /// roots, no client certificate), e.g. an inspecting proxy's CA.
    pub tls: TlsOptions,
    /// Which events go to Sentinel (default: all).
    pub route: RouteFilter,
    pub batch: BatchOptions,
    pub retry: RetryOptions,
}

impl Default for SentinelOptions {
    fn default() -> Self {
        SentinelOptions {
            enabled: false,
            endpoint: String::new(),
            dcr_immutable_id: String::new(),
            stream: DEFAULT_STREAM.into(),
            api_version: DEFAULT_API_VERSION.into(),
            tenant_id: String::new(),
            client_id: String::new(),
            client_secret: SecretOptions::from_env(DEFAULT_CLIENT_SECRET_ENV),
            authority: DEFAULT_AUTHORITY.into(),
            scope: DEFAULT_SCOPE.into(),
            gzip: true,
            max_bytes: 1_000_000,
            timeout_ms: 30_000,
            tls: TlsOptions::default(),
            route: RouteFilter::default(),
            // About a megabyte of rows per second at most: up to 1000 events or one second.
            batch: BatchOptions { max_events: 1000, max_wait_ms: 1000, queue_capacity: 10_000 },
            retry: RetryOptions::default(),
        }
    }
}

/// Which Azure cloud a host belongs to, by its suffix.
fn cloud_of(host: &str) -> Option<&'static str> {
    let h = host.to_ascii_lowercase();
    if h.ends_with(".azure.us") || h.ends_with(".microsoftonline.us") {
        Some("US Government")
    } else if h.ends_with(".azure.cn") || h.ends_with(".chinacloudapi.cn") {
        Some("China")
    } else if h.ends_with(".azure.com") || h.ends_with(".microsoftonline.com") {
        Some("public")
    } else {
        None
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or("").trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback())
}

impl SentinelOptions {
    /// The ingestion URL for these options.
    pub fn ingestion_url(&self) -> String {
        format!(
            "{}/dataCollectionRules/{}/streams/{}?api-version={}",
            self.endpoint.trim().trim_end_matches('/'),
            urlencoding::encode(&self.dcr_immutable_id),
            urlencoding::encode(&self.stream),
            urlencoding::encode(&self.api_version)
        )
    }

    /// The Entra ID token URL for these options.
    pub fn token_url(&self) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.authority.trim().trim_end_matches('/'), urlencoding::encode(self.tenant_id.trim()))
    }

    pub fn problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        if !self.enabled {
            return p;
        }
        let err = |key: &str, message: String| Problem { key: format!("sinks.sentinel.{key}"), message, is_error: true };
        let warn = |key: &str, message: String| Problem { key: format!("sinks.sentinel.{key}"), message, is_error: false };
        // Both URLs carry a bearer token or a client secret: https, or http on loopback (a test fake).
        let mut clouds: Vec<(&str, Option<&str>)> = Vec::new();
        for (key, value, what) in [("endpoint", &self.endpoint, "the logs-ingestion endpoint"), ("authority", &self.authority, "the Entra ID authority")] {
            if value.trim().is_empty() {
                p.push(err(key, format!("set {what} (https://…)")));
                continue;
            }
            match reqwest::Url::parse(value.trim()) {
                Ok(url) if url.scheme() == "https" || (url.scheme() == "http" && is_loopback(&url)) => {
                    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
                        p.push(err(key, format!("{value}: give the base URL only, without credentials, query or fragment")));
                    } else if key == "endpoint" && url.path().contains("dataCollectionRules") {
                        p.push(err(key, format!("{value}: give the endpoint only; kcaudit adds /dataCollectionRules/<dcr>/streams/<stream>")));
                    }
                    clouds.push((key, url.host_str().and_then(cloud_of)));
                }
                Ok(url) if url.scheme() == "http" => p.push(err(key, format!("{value}: Azure serves it over https only (plain http is accepted only on loopback, for tests)"))),
                Ok(url) => p.push(err(key, format!("{value}: scheme {} is not https", url.scheme()))),
                Err(e) => p.push(err(key, format!("{value}: {e}"))),
            }
        }
        let dcr = self.dcr_immutable_id.trim();
        if !(dcr.len() > 4 && dcr.starts_with("dcr-") && dcr[4..].bytes().all(|b| b.is_ascii_alphanumeric())) {
            p.push(err("dcr_immutable_id", format!("{:?} is not a DCR immutable id (dcr- followed by 32 hex digits: the rule's properties.immutableId, not its name or resource id)", self.dcr_immutable_id)));
        }
        let name_chars = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_chars(&self.stream) {
            p.push(err("stream", format!("{:?} is not a stream name (letters, digits, _ and -, e.g. {DEFAULT_STREAM})", self.stream)));
        } else if !self.stream.starts_with("Custom-") && !self.stream.starts_with("Microsoft-") {
            p.push(warn("stream", format!("{:?}: DCR input streams are named Custom-<name> (or Microsoft-<table>)", self.stream)));
        }
        if !name_chars(&self.api_version) {
            p.push(err("api_version", format!("{:?} is not an api-version (e.g. {DEFAULT_API_VERSION})", self.api_version)));
        }
        let tenant = self.tenant_id.trim();
        if tenant.is_empty() || !tenant.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
            p.push(err("tenant_id", format!("{:?} is not an Entra ID tenant id (a GUID or a domain name)", self.tenant_id)));
        }
        if self.client_id.trim().is_empty() || self.client_id.contains(char::is_whitespace) {
            p.push(err("client_id", format!("{:?} is not an application (client) id", self.client_id)));
        }
        if let Err(e) = self.client_secret.read() {
            p.push(err("client_secret", format!("no client secret: {e}")));
        }
        if !self.scope.trim().ends_with("/.default") {
            p.push(err("scope", format!("{:?}: the client-credentials grant needs a `<resource>/.default` scope ({DEFAULT_SCOPE} in the public cloud)", self.scope)));
        }
        let scope_cloud = reqwest::Url::parse(self.scope.trim()).ok().and_then(|u| u.host_str().and_then(cloud_of));
        let endpoint_cloud = clouds.iter().find(|(k, _)| *k == "endpoint").and_then(|(_, c)| *c);
        let authority_cloud = clouds.iter().find(|(k, _)| *k == "authority").and_then(|(_, c)| *c);
        if let Some(ec) = endpoint_cloud {
            if scope_cloud.is_some_and(|sc| sc != ec) {
                p.push(warn("scope", format!("the endpoint is in the {ec} cloud but the scope {:?} is not: expect 401 from the ingestion endpoint", self.scope)));
            }
            if authority_cloud.is_some_and(|ac| ac != ec) {
                p.push(warn("authority", format!("the endpoint is in the {ec} cloud but the authority {:?} is not", self.authority)));
            }
        }
        if self.max_bytes == 0 || self.max_bytes > AZURE_MAX_BYTES {
            p.push(err("max_bytes", format!("{} is not between 1 and {AZURE_MAX_BYTES} (Azure refuses calls over 1 MiB)", self.max_bytes)));
        }
        if self.timeout_ms == 0 {
            p.push(err("timeout_ms", "must be greater than 0".into()));
        }
        if !self.tls.is_default() {
            if let Err(e) = self.tls.client_config() {
                p.push(err("tls", e));
            }
        }
        p
    }
}

// ---------------------------------------------------------------------------------------------
// Rows.

/// A row under construction: absent and empty values are left out.
#[derive(Default)]
struct Row(Map<String, Value>);

impl Row {
    fn str(&mut self, key: &str, v: Option<&str>) -> &mut Row {
        if let Some(v) = v.filter(|s| !s.is_empty()) {
            self.0.insert(key.to_string(), Value::String(v.to_string()));
        }
        self
    }

    fn val(&mut self, key: &str, v: Value) -> &mut Row {
        let empty = match &v {
            Value::Null => true,
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
            Value::String(s) => s.is_empty(),
            _ => false,
        };
        if !empty {
            self.0.insert(key.to_string(), v);
        }
        self
    }
}

/// ASIM `EventResultDetails` for a Keycloak error (`Errors.*`): ASIM's allowed values where one fits,
/// `Other` otherwise (the Keycloak string is always in `EventOriginalResultDetails`).
pub fn result_details(error: &str) -> &'static str {
    match error {
        "user_not_found" => "No such user",
        "invalid_user_credentials" | "invalid_authentication" => "Incorrect password",
        "invalid_client_credentials" => "Incorrect key",
        "user_disabled" => "User disabled",
        "user_temporarily_disabled" => "User locked",
        "expired_code" | "session_expired" | "user_session_not_found" | "invalid_user_session" => "Session expired",
        "not_allowed" | "access_denied" | "consent_denied" | "unauthorized_client" => "Logon violates policy",
        _ => "Other",
    }
}

/// ASIM `EventSeverity` for kcaudit's worst finding.
pub fn event_severity(s: Option<Severity>) -> &'static str {
    match s {
        None | Some(Severity::Info) => "Informational",
        Some(Severity::Low) => "Low",
        Some(Severity::Medium) => "Medium",
        Some(Severity::High) | Some(Severity::Critical) => "High",
    }
}

/// ASIM `UserType` from what the directory knows about a user.
fn user_type(u: Option<&UserInfo>) -> Option<&'static str> {
    let u = u?;
    Some(if u.service_account {
        "Service"
    } else if u.privileged {
        "Admin"
    } else {
        "Regular"
    })
}

/// Whether a user event is an impersonation (V1 `requested_subject` / `impersonator`, or Keycloak's
/// admin-console `IMPERSONATE`).
pub fn is_impersonation(e: &AuditEvent) -> bool {
    let base = e.event_type.strip_suffix("_ERROR").unwrap_or(&e.event_type);
    let te = e.token_exchange.as_ref();
    let filled = |v: Option<&str>| v.is_some_and(|s| !s.is_empty());
    base == "IMPERSONATE" || te.is_some_and(|t| filled(t.requested_subject.as_deref()) || filled(t.impersonator.as_deref()))
}

/// The row for `e`; `now` stands in for the time of an event that has none.
pub fn row(e: &AuditEvent, now: DateTime<Utc>) -> Value {
    let mut r = Row::default();
    let time = format_time(&e.time.or(e.received_at).unwrap_or(now));
    for k in ["TimeGenerated", "EventStartTime", "EventEndTime"] {
        r.str(k, Some(&time));
    }
    r.val("EventCount", json!(1));
    r.str("EventVendor", Some(VENDOR)).str("EventProduct", Some(PRODUCT));
    let host = e.origin.log.as_ref().and_then(|l| l.host.as_deref()).filter(|h| !h.is_empty());
    r.str("Dvc", Some(host.unwrap_or(PRODUCT))).str("DvcHostname", host);
    r.str("EventUid", Some(&e.id)).str("EventOriginalType", Some(&e.event_type));
    r.str("EventResult", Some(if e.outcome == Outcome::Failure { "Failure" } else { "Success" }));
    if e.outcome == Outcome::Failure {
        if let Some(err) = e.error.as_deref().filter(|s| !s.is_empty()) {
            r.str("EventResultDetails", Some(result_details(err))).str("EventOriginalResultDetails", Some(err));
        }
    }
    let worst = cef::worst(e);
    r.str("EventSeverity", Some(event_severity(worst))).str("Severity", worst.map(Severity::name));
    r.str("EventMessage", Some(&syslog::summary(e)));
    r.str("Realm", cef::realm(e));
    r.str("SrcIpAddr", e.ip.map(|ip| ip.to_string()).as_deref());
    r.val("FindingRules", e.findings.iter().map(|f| Value::String(f.rule.clone())).collect());
    r.val("FindingReasons", e.findings.iter().map(|f| Value::String(f.reason.clone())).collect());

    let mut extra = Row::default();
    if e.ip.is_none() {
        extra.str("IpAddress", e.ip_address.as_deref());
    }
    match e.kind {
        EventKind::User => user_columns(e, &mut r, &mut extra),
        EventKind::Admin => admin_columns(e, &mut r, &mut extra),
    }
    r.val("AdditionalFields", Value::Object(extra.0));
    r.str("RawEvent", Some(&e.to_json_line()));
    Value::Object(r.0)
}

/// ASIM Authentication columns of a user event.
fn user_columns(e: &AuditEvent, r: &mut Row, extra: &mut Row) {
    let te = e.token_exchange.as_ref();
    let en = e.enrichment.as_ref();
    let base = e.event_type.strip_suffix("_ERROR").unwrap_or(&e.event_type);
    let elevate = is_impersonation(e);
    let event_type = if elevate {
        "Elevate"
    } else if base.ends_with("LOGOUT") {
        "Logoff"
    } else {
        "Logon"
    };
    r.str("EventSchema", Some("Authentication")).str("EventSchemaVersion", Some(AUTHENTICATION_SCHEMA_VERSION));
    r.str("EventType", Some(event_type)).str("EventSubType", elevate.then_some("AssumeRole"));
    r.str("LogonProtocol", te.map(|_| "OAuth 2.0 Token Exchange"));

    // Target user: the subject of the issued token (the impersonated user), with the requested
    // subject standing in when the exchange failed before a user was resolved.
    let target_name = cef::subject_name(e);
    let target_id = cef::subject_id(e);
    let target_info = en.and_then(|x| x.subject.as_deref()).or_else(|| if e.subject.id.is_none() { en.and_then(|x| x.requested_subject.as_deref()) } else { None });
    r.str("TargetUsername", target_name)
        .str("TargetUsernameType", target_name.filter(|s| !s.is_empty()).map(|_| "Simple"))
        .str("TargetUserId", target_id);
    if target_name.is_some() || target_id.is_some() {
        r.str("TargetUserType", user_type(target_info)).str("TargetUserScope", cef::realm(e));
    }
    r.str("TargetSessionId", e.session_id.as_deref());

    // Actor: the impersonator.
    let imp_info = en.and_then(|x| x.impersonator.as_deref());
    let actor_name = te.and_then(|t| t.impersonator.as_deref()).filter(|s| !s.is_empty()).or(imp_info.and_then(|u| u.username.as_deref()));
    if elevate && actor_name.is_some() {
        r.str("ActorUsername", actor_name)
            .str("ActorUsernameType", Some("Simple"))
            .str("ActorUserId", imp_info.and_then(|u| u.id.as_deref()))
            .str("ActorUserType", user_type(imp_info))
            .str("ActorScope", cef::realm(e));
    }

    if let Some(t) = te {
        let exchanger = cef::exchanger(e);
        let name = en
            .and_then(|x| x.exchanger.as_deref())
            .filter(|c| Some(c.client_id.as_str()) == exchanger)
            .and_then(|c| c.name.as_deref())
            .filter(|n| !n.trim().is_empty())
            .or(exchanger);
        r.str("ActingAppId", exchanger).str("ActingAppName", name);
        r.str("TargetAppName", cef::audiences(e).as_deref());
        extra
            .str("Scope", t.scope.as_deref())
            .str("RequestedSubject", t.requested_subject.as_deref())
            .str("SubjectTokenClientId", t.subject_token_client_id.as_deref())
            .str("RequestedTokenType", t.requested_token_type.as_deref())
            .str("RequestedIssuer", t.requested_issuer.as_deref())
            .str("SubjectIssuer", t.subject_issuer.as_deref())
            .str("DelegationActor", t.actor.as_deref())
            .str("ExchangeFlavour", Some(t.flavour.name()));
        extra.str("WithinPolicy", en.and_then(|x| x.policy.as_deref()).map(|p| p.within_policy.name()));
    } else {
        r.str("TargetAppName", e.client_id.as_deref());
    }
}

/// ASIM Audit Event columns of an admin event.
fn admin_columns(e: &AuditEvent, r: &mut Row, extra: &mut Row) {
    let admin = e.admin.as_ref();
    let op = admin.and_then(|a| a.operation.as_deref()).unwrap_or("");
    let event_type = match op {
        "CREATE" => "Create",
        "UPDATE" => "Set",
        "DELETE" => "Delete",
        "ACTION" => "Execute",
        _ => "Other",
    };
    r.str("EventSchema", Some("AuditEvent")).str("EventSchemaVersion", Some(AUDIT_EVENT_SCHEMA_VERSION));
    r.str("EventType", Some(event_type)).str("EventSubType", admin.and_then(|a| a.resource_type.as_deref()));
    let operation = if e.event_type.is_empty() { op } else { e.event_type.as_str() };
    r.str("Operation", Some(if operation.is_empty() { "UNKNOWN" } else { operation }));
    let object = admin.and_then(|a| a.resource_path.as_deref().filter(|s| !s.is_empty()).or(a.resource_type.as_deref()));
    r.str("Object", Some(object.filter(|s| !s.is_empty()).unwrap_or("unknown")));
    r.str("ObjectType", Some(if object.is_some() { "Configuration Atom" } else { "Other" }));
    let new_value = admin.and_then(|a| a.representation.as_deref()).filter(|s| !s.is_empty());
    r.str("NewValue", new_value).str("ValueType", new_value.map(|_| "Other"));

    let auth = admin.map(|a| &a.auth);
    let actor_id = auth.and_then(|a| a.user_id.as_deref());
    // Enrichment resolves the acting administrator as the event's subject: use the name when it is
    // the same user.
    let known = e.enrichment.as_ref().and_then(|x| x.subject.as_deref()).filter(|u| u.id.is_some() && u.id.as_deref() == actor_id);
    let actor_name = auth.and_then(|a| a.username.as_deref()).filter(|s| !s.is_empty()).or(known.and_then(|u| u.username.as_deref()));
    r.str("ActorUserId", actor_id)
        .str("ActorUsername", actor_name)
        .str("ActorUsernameType", actor_name.map(|_| "Simple"))
        .str("ActorUserType", user_type(known));
    if actor_id.is_some() || actor_name.is_some() {
        // The administrator's realm, by name: `authDetails` usually has only its id, which is the
        // event's realm when the administrator works in the realm they change.
        let realm_id = auth.and_then(|a| a.realm_id.as_deref());
        let same_realm = realm_id.is_some() && realm_id == e.realm.id.as_deref();
        let scope = auth
            .and_then(|a| a.realm_name.as_deref())
            .filter(|s| !s.is_empty())
            .or(if same_realm { cef::realm(e) } else { None })
            .or(realm_id);
        r.str("ActorScope", scope);
    }
    r.str("ActingAppId", auth.and_then(|a| a.client_uuid.as_deref()));
    r.str("TargetAppName", e.enrichment.as_ref().and_then(|x| x.resource_client.as_deref()).map(|c| c.client_id.as_str()));
    if let Some(a) = admin {
        extra.str("ResourceType", a.resource_type.as_deref()).str("ResourcePath", a.resource_path.as_deref()).str("ResourceId", a.resource_id.as_deref());
    }
}

// ---------------------------------------------------------------------------------------------
// Answers.

/// `(error.code, error.message)` of an Azure error body (`{"error":{"code":…,"message":…}}`).
pub fn azure_error(body: &str) -> Option<(String, String)> {
    let v: Value = serde_json::from_str(body).ok()?;
    let e = v.get("error")?;
    let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let (code, message) = (s("code"), s("message"));
    (!code.is_empty() || !message.is_empty()).then_some((code, message))
}

/// Whether a 404 (or 413) answer says the request was too large.
pub fn says_too_large(headers: &reqwest::header::HeaderMap, body: &str) -> bool {
    let header = headers.get("x-ms-error-code").and_then(|v| v.to_str().ok()).unwrap_or("");
    let (code, message) = azure_error(body).unwrap_or_default();
    let text = format!("{header} {code} {message}").to_ascii_lowercase();
    text.contains("contentlengthlimitexceeded") || text.contains("too large") || text.contains("content length") || text.contains("payloadtoolarge")
}

/// How long an answer asks to wait: `retry-after-ms`, `x-ms-retry-after-ms` (milliseconds), or
/// `Retry-After` (seconds or an HTTP date).
pub fn retry_after(headers: &reqwest::header::HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(ms) = get(name).and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite() && *v >= 0.0) {
            return Some(Duration::from_millis(ms as u64));
        }
    }
    let v = get("retry-after")?;
    if let Ok(s) = v.parse::<f64>() {
        return (s.is_finite() && s >= 0.0).then(|| Duration::from_millis((s * 1000.0) as u64));
    }
    let at = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// A bounded, one-line version of a body for messages.
fn bounded(body: &str) -> String {
    super::text::one_line(body, 1024)
}

/// The reason text for a failed ingestion answer: Azure's code and message, and what usually causes it.
pub fn ingestion_error(url: &str, status: u16, body: &str) -> String {
    let words = match azure_error(body) {
        Some((code, message)) if code.is_empty() => message,
        Some((code, message)) => format!("{code}: {message}"),
        None => bounded(body),
    };
    let hint = match status {
        401 => " (the token was refused even after fetching a new one: check that `scope` and `authority` are those of the endpoint's cloud)",
        403 => " (the application needs the Monitoring Metrics Publisher role on the data collection rule)",
        404 => " (check endpoint, dcr_immutable_id and stream)",
        _ => "",
    };
    format!("{url}: HTTP {status}: {words}{hint}")
}

/// The reason text for a refused token request: Entra's `error` and `error_description`, never the
/// secret (removed should Entra ever echo it).
pub fn token_error(url: &str, status: u16, body: &str, secret: &str) -> String {
    let v: Option<Value> = serde_json::from_str(body).ok();
    let s = |k: &str| v.as_ref().and_then(|v| v.get(k)).and_then(Value::as_str).map(str::to_string);
    let text = match (s("error"), s("error_description")) {
        (Some(e), Some(d)) => format!("{e}: {d}"),
        (Some(e), None) => e,
        (None, Some(d)) => d,
        (None, None) => bounded(body),
    };
    let text = bounded(&text);
    let text = if secret.len() >= 4 { text.replace(secret, "<redacted>") } else { text };
    format!("Entra ID token request {url} failed: HTTP {status}: {text}")
}

// ---------------------------------------------------------------------------------------------
// The sink.

struct CachedToken {
    value: String,
    refresh_at: Instant,
    expires_at: Instant,
}

/// What one ingestion request came to.
enum Sent {
    Delivered,
    /// Too large for Azure: split it.
    TooLarge(String),
    /// Retry later (after the driver's backoff).
    Transient(String),
    /// Refused; `global` when every other request of the batch would be refused the same way.
    Refused { why: String, global: bool },
}

/// Writes ASIM rows to Microsoft Sentinel through the Logs Ingestion API.
pub struct SentinelSink {
    name: String,
    opts: SentinelOptions,
    client: reqwest::Client,
    url: String,
    token_url: String,
    token: Option<CachedToken>,
}

impl SentinelSink {
    pub fn new(name: &str, opts: &SentinelOptions) -> anyhow::Result<SentinelSink> {
        let mut opts = opts.clone();
        opts.enabled = true;
        let problems: Vec<String> = opts.problems().iter().filter(|p| p.is_error).map(|p| p.to_string()).collect();
        if !problems.is_empty() {
            anyhow::bail!("invalid [sinks.sentinel]: {}", problems.join("; "));
        }
        let client = http_client::client(&opts.tls, Duration::from_millis(opts.timeout_ms))?;
        let url = opts.ingestion_url();
        let token_url = opts.token_url();
        Ok(SentinelSink { name: name.to_string(), opts, client, url, token_url, token: None })
    }

    /// Fetch a new token from Entra ID.
    async fn fetch_token(&self) -> Result<CachedToken, SinkError> {
        let secret = self.opts.client_secret.read().map_err(|e| SinkError::Transient(format!("client secret: {e}")))?;
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.opts.client_id.trim()),
            ("client_secret", secret.as_str()),
            ("scope", self.opts.scope.trim()),
        ];
        let started = Instant::now();
        let resp = self.client.post(&self.token_url).form(&form).send().await.map_err(|e| http_client::request_error(&self.token_url, &e))?;
        let status = resp.status().as_u16();
        let body = resp.text().await.map_err(|e| http_client::request_error(&self.token_url, &e))?;
        if !(200..300).contains(&status) {
            let why = token_error(&self.token_url, status, &body, &secret);
            return Err(if http_client::transient_status(status) { SinkError::Transient(why) } else { SinkError::Permanent(why) });
        }
        let v: Value = serde_json::from_str(&body).map_err(|_| SinkError::Permanent(format!("Entra ID token request {} answered something that is not a token response", self.token_url)))?;
        let value = v.get("access_token").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
        let Some(value) = value else {
            return Err(SinkError::Permanent(format!("Entra ID token request {} answered without an access_token", self.token_url)));
        };
        // `expires_in` is a number (v2.0 endpoint) or a numeric string (older answers).
        let lifetime = match v.get("expires_in") {
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
            _ => None,
        }
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(3600));
        let margin = TOKEN_REFRESH_MARGIN.min(lifetime / 2);
        tracing::debug!(sink = %self.name, lifetime_s = lifetime.as_secs(), "Fetched an Entra ID token.");
        Ok(CachedToken { value, refresh_at: started + (lifetime - margin), expires_at: started + lifetime })
    }

    /// A token to use now: the cached one unless it is due for refresh.
    async fn token(&mut self) -> Result<String, SinkError> {
        let now = Instant::now();
        if let Some(t) = self.token.as_ref().filter(|t| now < t.refresh_at) {
            return Ok(t.value.clone());
        }
        match self.fetch_token().await {
            Ok(t) => {
                let v = t.value.clone();
                self.token = Some(t);
                Ok(v)
            }
            Err(SinkError::Transient(why)) => match self.token.as_ref().filter(|t| Instant::now() < t.expires_at) {
                Some(t) => {
                    tracing::warn!(sink = %self.name, error = %why, "Could not refresh the Entra ID token; using the cached one until it expires.");
                    Ok(t.value.clone())
                }
                None => Err(SinkError::Transient(why)),
            },
            Err(e) => Err(e),
        }
    }

    /// Send one JSON array (uncompressed bytes) and classify the answer; 401 (refresh the token once)
    /// and 429/503 with `Retry-After` are handled here.
    async fn send(&mut self, json: &[u8]) -> Sent {
        let payload = if self.opts.gzip {
            let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(json.len() / 4 + 64), flate2::Compression::fast());
            match enc.write_all(json).and_then(|_| enc.finish()) {
                Ok(b) => b,
                Err(e) => return Sent::Transient(format!("gzip: {e}")),
            }
        } else {
            json.to_vec()
        };
        let payload = bytes::Bytes::from(payload);
        let (mut refreshed, mut waits) = (false, 0u32);
        loop {
            let token = match self.token().await {
                Ok(t) => t,
                Err(SinkError::Transient(why)) => return Sent::Transient(why),
                Err(SinkError::Permanent(why)) => return Sent::Refused { why, global: true },
            };
            let mut req = self
                .client
                .post(&self.url)
                .bearer_auth(&token)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(payload.clone());
            if self.opts.gzip {
                req = req.header(reqwest::header::CONTENT_ENCODING, "gzip");
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => return Sent::Transient(strip(http_client::request_error(&self.url, &e))),
            };
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = match resp.text().await {
                Ok(b) => b,
                Err(e) => return Sent::Transient(strip(http_client::request_error(&self.url, &e))),
            };
            match status {
                200..=299 => return Sent::Delivered,
                401 if !refreshed => {
                    refreshed = true;
                    tracing::info!(sink = %self.name, "The ingestion endpoint refused the token (401); fetching a new one.");
                    self.token = None;
                    continue;
                }
                413 => return Sent::TooLarge(ingestion_error(&self.url, status, &body)),
                404 if says_too_large(&headers, &body) => return Sent::TooLarge(ingestion_error(&self.url, status, &body)),
                429 | 503 => {
                    let why = ingestion_error(&self.url, status, &body);
                    match retry_after(&headers, Utc::now()) {
                        Some(wait) if waits < RETRY_AFTER_WAITS => {
                            waits += 1;
                            let wait = wait.min(MAX_RETRY_AFTER);
                            tracing::warn!(sink = %self.name, status, wait_ms = wait.as_millis() as u64, "Azure Monitor asks to wait (Retry-After); waiting.");
                            tokio::time::sleep(wait).await;
                            continue;
                        }
                        _ => return Sent::Transient(why),
                    }
                }
                s if http_client::transient_status(s) => return Sent::Transient(ingestion_error(&self.url, status, &body)),
                401 | 403 | 404 => return Sent::Refused { why: ingestion_error(&self.url, status, &body), global: true },
                _ => return Sent::Refused { why: ingestion_error(&self.url, status, &body), global: false },
            }
        }
    }

    async fn write_batch(&mut self, events: &[Arc<AuditEvent>]) -> Result<WriteReport, SinkError> {
        let now = Utc::now();
        let mut report = WriteReport::default();
        // (batch index, row JSON) of the events that fit in a request.
        let mut rows: Vec<(usize, String)> = Vec::with_capacity(events.len());
        for (i, e) in events.iter().enumerate() {
            let text = serde_json::to_string(&row(e, now)).unwrap_or_else(|x| format!("{{\"serialize_error\":{:?}}}", x.to_string()));
            // `[` + row + `]`: the smallest request this row can go in.
            if text.len() + 2 > self.opts.max_bytes {
                report.rejected.push((i, format!("the Sentinel row of this event is {} bytes, more than max_bytes ({}) allows in one request", text.len() + 2, self.opts.max_bytes)));
            } else {
                rows.push((i, text));
            }
        }
        // An array of n rows is 1 + Σ(len + 1) bytes (brackets and commas).
        let sizes: Vec<usize> = rows.iter().map(|(_, r)| r.len() + 1).collect();
        let mut queue: VecDeque<std::ops::Range<usize>> = super::cut(&sizes, usize::MAX, self.opts.max_bytes.saturating_sub(1)).into();
        while let Some(range) = queue.pop_front() {
            let mut body = Vec::with_capacity(sizes[range.clone()].iter().sum::<usize>() + 1);
            body.push(b'[');
            for (k, (_, r)) in rows[range.clone()].iter().enumerate() {
                if k > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(r.as_bytes());
            }
            body.push(b']');
            match self.send(&body).await {
                Sent::Delivered => {}
                Sent::TooLarge(why) if range.len() > 1 => {
                    let mid = range.start + range.len() / 2;
                    tracing::info!(sink = %self.name, events = range.len(), error = %why, "Azure Monitor found the request too large; splitting it.");
                    queue.push_front(mid..range.end);
                    queue.push_front(range.start..mid);
                }
                Sent::TooLarge(why) => report.rejected.push((rows[range.start].0, format!("refused as too large even alone: {why}"))),
                Sent::Refused { why, global } => {
                    report.rejected.extend(rows[range.clone()].iter().map(|(i, _)| (*i, why.clone())));
                    if global {
                        for r in queue.drain(..) {
                            report.rejected.extend(rows[r].iter().map(|(i, _)| (*i, why.clone())));
                        }
                    }
                }
                Sent::Transient(why) => {
                    // Azure is busy or away: this request and the rest of the batch are retried later.
                    report.retry.extend(rows[range.clone()].iter().map(|(i, _)| *i));
                    for r in queue.drain(..) {
                        report.retry.extend(rows[r].iter().map(|(i, _)| *i));
                    }
                    report.error = Some(why);
                }
            }
        }
        if report.retry.len() == events.len() {
            return Err(SinkError::Transient(report.error.unwrap_or_default()));
        }
        Ok(report)
    }
}

/// The text of a sink error without its "transient failure: " prefix.
fn strip(e: SinkError) -> String {
    match e {
        SinkError::Transient(s) | SinkError::Permanent(s) => s,
    }
}

super::routed_sink!(SentinelSink);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Finding, TokenExchange};

    fn on() -> SentinelOptions {
        std::env::set_var("KCAUDIT_SENTINEL_UNIT_SECRET", "s3cr3t-value");
        SentinelOptions {
            enabled: true,
            endpoint: "https://my-dcr-abcd.westeurope-1.ingest.monitor.azure.com".into(),
            dcr_immutable_id: "dcr-0123456789abcdef0123456789abcdef".into(),
            tenant_id: "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
            client_id: "0f7a1c2e-6a55-4c7b-9d43-0d6cbd4e6b1a".into(),
            client_secret: SecretOptions::from_env("KCAUDIT_SENTINEL_UNIT_SECRET"),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_and_problems() {
        let d = SentinelOptions::default();
        assert_eq!((d.stream.as_str(), d.api_version.as_str(), d.authority.as_str(), d.scope.as_str()), (DEFAULT_STREAM, "2023-01-01", DEFAULT_AUTHORITY, DEFAULT_SCOPE));
        assert_eq!((d.gzip, d.max_bytes, d.client_secret.env.as_deref()), (true, 1_000_000, Some(DEFAULT_CLIENT_SECRET_ENV)));
        assert!(d.problems().is_empty(), "disabled: nothing to check");
        let good = on();
        assert!(good.problems().is_empty(), "{:?}", good.problems());
        assert_eq!(good.ingestion_url(), "https://my-dcr-abcd.westeurope-1.ingest.monitor.azure.com/dataCollectionRules/dcr-0123456789abcdef0123456789abcdef/streams/Custom-KeycloakTokenExchange_CL?api-version=2023-01-01");
        assert_eq!(good.token_url(), "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/oauth2/v2.0/token");
        let loopback = SentinelOptions { endpoint: "http://127.0.0.1:9000/".into(), authority: "http://localhost:9000".into(), ..on() };
        assert!(loopback.problems().is_empty(), "{:?}", loopback.problems());

        let bad = SentinelOptions {
            endpoint: "http://ingest.example.com".into(),
            authority: "ftp://login".into(),
            dcr_immutable_id: "my-rule".into(),
            stream: "Custom KeycloakTokenExchange_CL".into(),
            tenant_id: "".into(),
            client_id: " ".into(),
            client_secret: SecretOptions::from_env("KCAUDIT_SENTINEL_UNIT_UNSET"),
            scope: "https://monitor.azure.com".into(),
            max_bytes: 2_000_000,
            timeout_ms: 0,
            ..on()
        };
        let all = bad.problems().iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n");
        for needle in ["endpoint: http://ingest.example.com: Azure serves it over https only", "authority: ftp://login: scheme ftp", "dcr_immutable_id", "stream", "tenant_id", "client_id", "KCAUDIT_SENTINEL_UNIT_UNSET", "/.default", "max_bytes", "timeout_ms"] {
            assert!(all.contains(needle), "{needle}: {all}");
        }
        assert!(!all.contains("s3cr3t"), "{all}");
        let full_url = SentinelOptions { endpoint: format!("{}/dataCollectionRules/x/streams/y", on().endpoint), ..on() };
        assert!(full_url.problems().iter().any(|p| p.message.contains("kcaudit adds")));

        // The scope of another cloud is a warning, not an error.
        let gov = SentinelOptions { endpoint: "https://x.usgovvirginia-1.ingest.monitor.azure.us".into(), ..on() };
        let p = gov.problems();
        assert!(p.iter().all(|p| !p.is_error), "{p:?}");
        assert!(p.iter().any(|p| p.key == "sinks.sentinel.scope" && p.message.contains("US Government")), "{p:?}");
        let gov_ok = SentinelOptions { authority: "https://login.microsoftonline.us".into(), scope: "https://monitor.azure.us//.default".into(), ..gov };
        assert!(gov_ok.problems().is_empty(), "{:?}", gov_ok.problems());

        let parsed: SentinelOptions = toml::from_str("enabled = true\nendpoint = \"https://e\"\nclient_secret = { file = \"/run/secrets/sentinel\" }\n[route]\nmin_severity = \"medium\"\n").unwrap();
        assert_eq!(parsed.route.min_severity, Some(Severity::Medium));
        assert_eq!(parsed.batch, SentinelOptions::default().batch);
        assert!(toml::from_str::<SentinelOptions>("dcr = \"x\"").is_err(), "unknown keys are refused");
    }

    #[test]
    fn example_dcr_declares_every_column() {
        let dcr: Value = serde_json::from_str(EXAMPLE_DCR).unwrap();
        let decl = &dcr["properties"]["streamDeclarations"];
        assert_eq!(decl, &stream_declaration(DEFAULT_STREAM));
        let flow = &dcr["properties"]["dataFlows"][0];
        assert_eq!(flow["streams"][0], DEFAULT_STREAM);
        assert_eq!(flow["outputStream"], DEFAULT_STREAM);
        assert_eq!(flow["destinations"][0], dcr["properties"]["destinations"]["logAnalytics"][0]["name"]);
        let names: std::collections::HashSet<_> = STREAM_COLUMNS.iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), STREAM_COLUMNS.len(), "no column twice");
        for (_, t) in STREAM_COLUMNS {
            assert!(["string", "int", "long", "real", "boolean", "datetime", "dynamic"].contains(t));
        }
    }

    #[test]
    fn retry_after_forms() {
        use reqwest::header::{HeaderMap, HeaderValue};
        let now = DateTime::parse_from_rfc3339("2026-03-14T09:00:00Z").unwrap().with_timezone(&Utc);
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        assert_eq!(retry_after(&h(&[("retry-after", "7")]), now), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&h(&[("retry-after", "Sat, 14 Mar 2026 09:00:30 GMT")]), now), Some(Duration::from_secs(30)));
        assert_eq!(retry_after(&h(&[("retry-after", "Sat, 14 Mar 2026 08:00:00 GMT")]), now), Some(Duration::ZERO));
        assert_eq!(retry_after(&h(&[("retry-after", "7"), ("retry-after-ms", "250")]), now), Some(Duration::from_millis(250)));
        assert_eq!(retry_after(&h(&[("x-ms-retry-after-ms", "1500")]), now), Some(Duration::from_millis(1500)));
        assert_eq!(retry_after(&h(&[("retry-after", "soon")]), now), None);
        assert_eq!(retry_after(&h(&[]), now), None);
    }

    #[test]
    fn azure_and_entra_errors() {
        use reqwest::header::{HeaderMap, HeaderValue};
        let big = r#"{"error":{"code":"ContentLengthLimitExceeded","message":"Maximum allowed content length: 1048576 bytes (1 MB). Provided content length: 1068792 bytes."}}"#;
        assert!(says_too_large(&HeaderMap::new(), big));
        let mut h = HeaderMap::new();
        h.insert("x-ms-error-code", HeaderValue::from_static("ContentLengthLimitExceeded"));
        assert!(says_too_large(&h, ""));
        assert!(!says_too_large(&HeaderMap::new(), r#"{"error":{"code":"NotFound","message":"Data collection rule with immutable Id 'dcr-x' not found."}}"#));
        let forbidden = r#"{"error":{"code":"OperationFailed","message":"The authentication token provided does not have access to ingest data for the data collection rule with immutable Id 'dcr-1'."}}"#;
        let why = ingestion_error("https://e/x", 403, forbidden);
        assert!(why.starts_with("https://e/x: HTTP 403: OperationFailed: The authentication token provided does not have access"), "{why}");
        assert!(why.contains("Monitoring Metrics Publisher"), "{why}");
        assert_eq!(ingestion_error("u", 400, "<html> bad\n gateway </html>"), "u: HTTP 400: <html> bad gateway </html>");

        let entra = r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID. The secret was hunter2-secret.","error_codes":[7000215]}"#;
        let why = token_error("https://login/t", 401, entra, "hunter2-secret");
        assert!(why.contains("HTTP 401: invalid_client: AADSTS7000215: Invalid client secret provided."), "{why}");
        assert!(!why.contains("hunter2-secret") && why.contains("<redacted>"), "{why}");
    }

    fn user_event() -> AuditEvent {
        let mut e: AuditEvent = serde_json::from_value(json!({
            "schema_version": 1, "id": "ev-1", "id_derived": false, "time": "2026-03-14T09:26:53.589Z", "time_source": "event",
            "kind": "user", "type": "TOKEN_EXCHANGE_ERROR", "outcome": "failure", "error": "not_allowed",
            "realm": {"id": "r-uuid", "name": "acme"}, "client_id": "svc-gateway", "subject": {"id": null, "username": null},
            "session_id": null, "ip_address": "unknown", "ip": null, "token_exchange": null, "details": {},
            "admin": null, "enrichment": null, "findings": [], "severity": null,
            "origin": {"input": "t", "format": "keycloak", "line": null, "request_id": null, "index": null, "delivery_id": null, "log": null},
            "warnings": []
        }))
        .unwrap();
        e.token_exchange = Some(TokenExchange {
            exchanger: Some("svc-gateway".into()),
            audiences: vec!["orders-api".into(), "billing-api".into()],
            subject_token_client_id: None,
            requested_subject: Some("carol".into()),
            impersonator: Some("sam".into()),
            requested_token_type: None,
            scope: Some("openid".into()),
            requested_issuer: None,
            subject_issuer: None,
            actor: None,
            flavour: crate::event::ExchangeFlavour::LegacyV1,
            flavour_reason: "x".into(),
        });
        e.findings.push(Finding { rule: "impersonation".into(), severity: Severity::Critical, title: "t".into(), reason: "sam tried to become carol".into(), attack: vec![], related_event_ids: vec![] });
        e.severity = Some(Severity::Critical);
        e
    }

    #[test]
    fn a_failed_impersonation_row() {
        let e = user_event();
        let now = Utc::now();
        let mut r = row(&e, now);
        let raw = r.as_object_mut().unwrap().remove("RawEvent").unwrap();
        assert_eq!(serde_json::from_str::<AuditEvent>(raw.as_str().unwrap()).unwrap(), e);
        assert_eq!(
            r,
            json!({
                "TimeGenerated": "2026-03-14T09:26:53.589Z", "EventStartTime": "2026-03-14T09:26:53.589Z", "EventEndTime": "2026-03-14T09:26:53.589Z",
                "EventCount": 1, "EventVendor": "Keycloak", "EventProduct": "Keycloak", "Dvc": "Keycloak",
                "EventSchema": "Authentication", "EventSchemaVersion": "0.1.4", "EventType": "Elevate", "EventSubType": "AssumeRole",
                "EventResult": "Failure", "EventResultDetails": "Logon violates policy", "EventOriginalResultDetails": "not_allowed",
                "EventOriginalType": "TOKEN_EXCHANGE_ERROR", "EventUid": "ev-1", "EventSeverity": "High", "Severity": "critical",
                "EventMessage": "token exchange svc-gateway -> orders-api billing-api on behalf of carol (impersonated by sam) failed: not_allowed [findings: impersonation]",
                "LogonProtocol": "OAuth 2.0 Token Exchange",
                "TargetUsername": "carol", "TargetUsernameType": "Simple", "TargetUserScope": "acme",
                "ActorUsername": "sam", "ActorUsernameType": "Simple", "ActorScope": "acme",
                "ActingAppId": "svc-gateway", "ActingAppName": "svc-gateway", "TargetAppName": "orders-api billing-api",
                "Realm": "acme", "FindingRules": ["impersonation"], "FindingReasons": ["sam tried to become carol"],
                "AdditionalFields": {"IpAddress": "unknown", "Scope": "openid", "RequestedSubject": "carol", "ExchangeFlavour": "legacy_v1"}
            })
        );
        // No time at all: the send time.
        let mut untimed = e.clone();
        untimed.time = None;
        assert_eq!(row(&untimed, now)["TimeGenerated"], format_time(&now));
        // Every key is a declared column.
        let names: Vec<&str> = STREAM_COLUMNS.iter().map(|(n, _)| *n).collect();
        for k in row(&e, now).as_object().unwrap().keys() {
            assert!(names.contains(&k.as_str()), "{k}");
        }
    }

    #[test]
    fn result_details_and_severity() {
        assert_eq!(result_details("invalid_user_credentials"), "Incorrect password");
        assert_eq!(result_details("user_not_found"), "No such user");
        assert_eq!(result_details("not_allowed"), "Logon violates policy");
        assert_eq!(result_details("invalid_token"), "Other");
        assert_eq!(event_severity(None), "Informational");
        assert_eq!(event_severity(Some(Severity::Critical)), "High");
        assert_eq!(event_severity(Some(Severity::Medium)), "Medium");
    }
}
