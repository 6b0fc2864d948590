//! The canonical audit event: the one shape every wire format decodes into.
//!
//! Every later stage (dedup, enrichment, detection, every sink) reads this type and nothing else, so a
//! field is added here once and every format and sink sees it. The JSON Schema committed under
//! `schemas/audit-event.schema.json` is generated from these types (`kcaudit schema event`) and a test
//! fails when the committed copy is stale.
//!
//! Design rules:
//! - Values are kept as Keycloak sent them (no trimming, no case folding, control and bidi characters
//!   kept); interpretation lives in separate typed fields (`ip` beside `ip_address`, `audiences` beside
//!   the raw `details.audience`).
//! - Nothing wall-clock-dependent is in a record unless the source is live (`received_at`), so replaying
//!   the same input twice yields byte-identical output.
//! - `details` keeps *every* detail Keycloak sent (capped), even those lifted into typed fields: an
//!   analyst can always see the original evidence.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize, Serializer};

mod details;
pub use details::{value_text, Details, Text, ValueText};

/// Version of this record layout; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

// Short texts (type, error, client id, address, realm name, username) are `Text`, kept inline
// without an allocation each; ids (UUIDs, 36 bytes) stay `String` (issue #9).
// Parts most events lack (admin facts; in `Origin`, the log envelope and the Kafka coordinates)
// are boxed: an event is moved several times between decoding and delivery, and those moves
// copied every byte of the absent parts too (issue #9).
/// One normalised Keycloak event (user event or admin event).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    /// Layout version of this record (currently 1).
    pub schema_version: u32,
    /// Keycloak's event `id` (a UUID minted per emitted event). Where the format carries none
    /// (jboss-logging lines, pre-26 REST events, some listeners) a stable id derived from the event's
    /// content is used instead and `id_derived` is true.
    pub id: String,
    /// True when `id` was derived from the content because the input had no event id.
    pub id_derived: bool,
    /// Event time, UTC, millisecond precision (RFC 3339, e.g. `2026-03-09T07:58:04.120Z`). Null when the
    /// input carried no usable time (see `time_source` and `warnings`).
    #[serde(serialize_with = "ser_opt_time")]
    #[schemars(with = "Option<String>")]
    pub time: Option<DateTime<Utc>>,
    /// Where `time` came from.
    pub time_source: TimeSource,
    /// When kcaudit received the record (live sources only; absent in replay so output is deterministic).
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "ser_opt_time")]
    #[schemars(with = "Option<String>")]
    pub received_at: Option<DateTime<Utc>>,
    /// User event or admin event.
    pub kind: EventKind,
    /// Keycloak event type. User events: the `EventType` name without any listener prefix
    /// (`TOKEN_EXCHANGE`, `TOKEN_EXCHANGE_ERROR`, `LOGIN`, ...). Admin events: `<RESOURCE_TYPE>-<OPERATION>`
    /// (e.g. `PROTOCOL_MAPPER-CREATE`), or just the operation when the resource type is unknown.
    #[serde(rename = "type")]
    #[schemars(with = "String")]
    pub event_type: Text,
    /// `success` unless the event carries an error or its type ends with `_ERROR`.
    pub outcome: Outcome,
    /// Keycloak's `Errors.*` string (`not_allowed`, `invalid_token`, ...), when the event failed.
    #[schemars(with = "Option<String>")]
    pub error: Option<Text>,
    /// The realm the event happened in. For admin events this is the *target* realm; the realm of the
    /// acting administrator is in `admin.auth`.
    pub realm: Realm,
    /// The event's `clientId` (a clientId string, never a UUID). For token exchange this is the
    /// exchanger. Absent for admin events (their client is a UUID, in `admin.auth.client_uuid`).
    #[schemars(with = "Option<String>")]
    pub client_id: Option<Text>,
    /// The user the event is about (`userId`). For token exchange, the subject of the issued token (for
    /// V1 impersonation, the impersonated user).
    pub subject: Subject,
    /// Keycloak user-session id, when present.
    pub session_id: Option<String>,
    /// The caller address exactly as Keycloak recorded it (free text: a proxy header can put anything
    /// here; Keycloak itself says it "will not be an address when a proxy does not provide a valid one").
    #[schemars(with = "Option<String>")]
    pub ip_address: Option<Text>,
    /// `ip_address` parsed as an IPv4/IPv6 address; null when it is not one.
    #[schemars(with = "Option<String>")]
    pub ip: Option<IpAddr>,
    /// Token-exchange facts, present for `TOKEN_EXCHANGE`/`TOKEN_EXCHANGE_ERROR` events and for events
    /// cloned from a token-exchange request (e.g. `REGISTER` with `grant_type` token-exchange).
    pub token_exchange: Option<TokenExchange>,
    /// Every detail Keycloak sent, as strings, sorted by key. Capped (see `decode` config): entries beyond
    /// the cap or values over the size limit are cut and a warning says so.
    #[schemars(with = "BTreeMap<String, String>")]
    pub details: Details,
    /// Admin-event facts (present when `kind` is `admin`).
    pub admin: Option<Box<AdminInfo>>,
    /// Context about the exchanger, the subject, the audiences and the realm's exchange policy, from
    /// the Keycloak directory (null when enrichment is not configured).
    pub enrichment: Option<Enrichment>,
    /// What the detection stage found, each finding explained (empty when nothing, or when detection
    /// is off).
    pub findings: Vec<Finding>,
    /// The highest finding's severity (null without findings).
    pub severity: Option<Severity>,
    /// Where this record came from.
    pub origin: Origin,
    /// Everything odd noticed while decoding this record. An empty list means a clean decode.
    pub warnings: Vec<Warning>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    User,
    Admin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimeSource {
    /// The event's own `time` field (epoch milliseconds from Keycloak).
    Event,
    /// The log line's timestamp (jboss-logging lines carry no event time), converted to UTC with the
    /// configured server time zone unless the line had an explicit offset.
    LogLine,
    /// No usable time in the input.
    Missing,
}

/// Realm identifiers, as the format gave them. Keycloak's REST representation has only the id (a UUID
/// on current servers, the name on very old ones); listeners may add the name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Realm {
    pub id: Option<String>,
    #[schemars(with = "Option<String>")]
    pub name: Option<Text>,
}

impl Realm {
    /// Whether `r` names this realm, by name or by id (configuration may use either).
    pub fn is(&self, r: &str) -> bool {
        self.name.as_deref() == Some(r) || self.id.as_deref() == Some(r)
    }
}

/// The user an event is about.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    /// Keycloak user id (`userId`). Keycloak's string `"null"` is mapped to null.
    pub id: Option<String>,
    /// Username when the format carries one (V2 `details.username`, p2-inc `authDetails.username`).
    #[schemars(with = "Option<String>")]
    pub username: Option<Text>,
}

/// Which token-exchange implementation produced the event (`keycloak-events.md` §2.4). Keycloak names
/// no version in its events; the flavour is inferred and `flavour_reason` says from what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExchangeFlavour {
    /// Standard token exchange V2 (Keycloak 26.2+, `standard.token.exchange.enabled`).
    StandardV2,
    /// Legacy V1 token exchange (preview feature `token-exchange`, FGAP v1 permissions).
    LegacyV1,
    /// Not enough evidence either way (typical for early failures such as client authentication).
    Unknown,
}

// The texts are `Text`: client ids, audiences and scopes are short and kept inline, without an
// allocation each (issue #9).
/// Token-exchange facts lifted from the details.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenExchange {
    /// The requesting client (`clientId` of the event).
    #[schemars(with = "Option<String>")]
    pub exchanger: Option<Text>,
    /// `details.audience` split on whitespace (V2 joins several audiences with spaces).
    #[schemars(with = "Vec<String>")]
    pub audiences: Vec<Text>,
    /// The client the subject token was originally issued to (`azp`); V2 only.
    #[schemars(with = "Option<String>")]
    pub subject_token_client_id: Option<Text>,
    /// V1 impersonation target as sent by the caller (a username or an id; attacker-controlled).
    #[schemars(with = "Option<String>")]
    pub requested_subject: Option<Text>,
    /// V1 impersonation: the username of the subject-token user. Absent for "naked" impersonation.
    #[schemars(with = "Option<String>")]
    pub impersonator: Option<Text>,
    /// Requested token type (`urn:ietf:params:oauth:token-type:...`).
    #[schemars(with = "Option<String>")]
    pub requested_token_type: Option<Text>,
    /// Granted scope.
    #[schemars(with = "Option<String>")]
    pub scope: Option<Text>,
    /// V1 internal-to-external: the identity-provider alias asked for.
    #[schemars(with = "Option<String>")]
    pub requested_issuer: Option<Text>,
    /// External-to-internal: the issuer of the external subject token (attacker-controlled).
    #[schemars(with = "Option<String>")]
    pub subject_issuer: Option<Text>,
    /// Delegation (experimental, Keycloak 26.8): the acting party from `details.actor`.
    #[schemars(with = "Option<String>")]
    pub actor: Option<Text>,
    /// Inferred implementation.
    pub flavour: ExchangeFlavour,
    /// Why `flavour` was chosen, in words (one of a fixed set of sentences, so not copied per event).
    pub flavour_reason: Cow<'static, str>,
}

/// Admin-event facts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminInfo {
    /// `CREATE`, `UPDATE`, `DELETE` or `ACTION`.
    pub operation: Option<String>,
    /// Keycloak `ResourceType` (`CLIENT`, `PROTOCOL_MAPPER`, `REALM_ROLE_MAPPING`, ...).
    pub resource_type: Option<String>,
    /// Path of the changed resource relative to the realm (`clients/<uuid>/protocol-mappers/...`).
    pub resource_path: Option<String>,
    /// Resource id when the listener provides it (keycloak-kafka, p2-inc).
    pub resource_id: Option<String>,
    /// The JSON representation of the change, as a string (only when Keycloak was configured to include
    /// it; capped).
    pub representation: Option<String>,
    /// Who acted.
    pub auth: AdminAuth,
}

/// The acting administrator of an admin event (`authDetails`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminAuth {
    /// Realm the administrator authenticated in (id; a name in jboss-logging lines and old servers).
    pub realm_id: Option<String>,
    pub realm_name: Option<String>,
    /// The admin client's internal UUID (Keycloak puts the UUID, not the clientId, in `authDetails`).
    pub client_uuid: Option<String>,
    pub user_id: Option<String>,
    pub username: Option<String>,
    pub ip_address: Option<String>,
}

/// Provenance of a record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    // `Arc<str>` for input and format: every record of an input carries the same text, and a copy
    // per record showed in profiles (issue #9).
    /// The input: a file path as given, `-` for stdin, or `webhook:<path>`.
    #[schemars(with = "String")]
    pub input: Arc<str>,
    /// The wire format the record was decoded as.
    #[schemars(with = "String")]
    pub format: Arc<str>,
    /// 1-based line number in the input file, when read from a file.
    pub line: Option<u64>,
    /// Request id of the webhook request that carried it (live ingest).
    #[schemars(with = "Option<String>")]
    pub request_id: Option<Arc<str>>,
    /// 0-based position of the record within its request body or recorded delivery.
    pub index: Option<u32>,
    /// p2-inc delivery id (`uid`), which is per webhook delivery, not per event.
    pub delivery_id: Option<String>,
    /// The log line's envelope, for log inputs.
    pub log: Option<Box<LogEnvelope>>,
    // Shared (`Arc`): a record's origin is copied into its item, its event and its report, and deep
    // copies of the topic, key and headers showed in Kafka profiles (issue #9).
    /// Where the record sat in Kafka, with its key and headers (Kafka inputs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<Arc<KafkaRecord>>,
}

/// A Kafka record's coordinates and metadata (the value is what was decoded).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The record key, as text (lossy for binary keys).
    pub key: Option<String>,
    /// Record headers, as text.
    pub headers: BTreeMap<String, String>,
    /// The record timestamp (epoch milliseconds), when the producer or broker set one.
    pub timestamp_ms: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogEnvelope {
    /// The timestamp text as printed.
    pub timestamp: Option<String>,
    pub level: Option<String>,
    pub logger: Option<String>,
    pub thread: Option<String>,
    pub host: Option<String>,
}

/// Something odd about a record that did not stop it from being accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Warning {
    /// Stable machine-readable code (`duplicate_key`, `value_truncated`, `time_in_seconds`, ...).
    pub code: String,
    /// One sentence for a human.
    pub message: String,
}

impl Warning {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Warning { code: code.to_string(), message: message.into() }
    }
}

/// RFC 3339 with exactly three fractional digits and `Z`: sortable, unambiguous, ClickHouse-friendly.
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn ser_opt_time<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&format_time(t)),
        None => s.serialize_none(),
    }
}

impl AuditEvent {
    /// True for token-exchange events (success or error).
    pub fn is_token_exchange(&self) -> bool {
        self.token_exchange.is_some()
    }

    /// A fingerprint of what Keycloak said, ignoring how it was delivered (origin, warnings, receive
    /// time) and what a listener added on top (realm name, username). Two deliveries of the same event
    /// have the same fingerprint; a different event that reuses an id does not.
    pub fn content_fingerprint(&self) -> u64 {
        use std::hash::{BuildHasher, Hash, Hasher};
        // Fixed seeds: stable within a build, which is all dedup needs (never persisted). aHash, not
        // SipHash: this runs for every event and SipHash was 5 % of the pipeline's CPU (issue #9).
        let mut h = ahash::RandomState::with_seeds(0x6b63, 0x6175, 0x6469, 0x7400).build_hasher();
        self.kind.hash(&mut h);
        self.event_type.hash(&mut h);
        self.time.map(|t| t.timestamp_millis()).hash(&mut h);
        self.realm.id.hash(&mut h);
        self.client_id.hash(&mut h);
        self.subject.id.hash(&mut h);
        self.session_id.hash(&mut h);
        self.ip_address.hash(&mut h);
        self.error.hash(&mut h);
        self.details.hash(&mut h);
        if let Some(a) = &self.admin {
            a.operation.hash(&mut h);
            a.resource_type.hash(&mut h);
            a.resource_path.hash(&mut h);
            a.representation.hash(&mut h);
            a.auth.client_uuid.hash(&mut h);
            a.auth.user_id.hash(&mut h);
        }
        h.finish()
    }

    /// Drop what the pipeline computes (enrichment, findings, severity): an event that enters the
    /// pipeline again, from another instance's topic or as a retry, is judged afresh.
    pub fn clear_verdicts(&mut self) {
        self.enrichment = None;
        self.findings.clear();
        self.severity = None;
    }

    /// The event as one JSON line (no trailing newline): what `serde_json::to_string` gives, written
    /// by [`crate::json_line`] at a fraction of the cost.
    pub fn to_json_line(&self) -> String {
        let mut out = Vec::with_capacity(4096);
        crate::json_line::write_event(&mut out, self);
        Self::utf8(out)
    }

    /// [`AuditEvent::to_json_line`] through a sink's memo of the enrichment's shared parts.
    pub fn to_json_line_with(&self, memo: &mut crate::json_line::Memo) -> String {
        let mut out = Vec::with_capacity(4096);
        crate::json_line::write_event_memo(&mut out, self, memo);
        Self::utf8(out)
    }

    fn utf8(out: Vec<u8>) -> String {
        // The writer only appends whole UTF-8 strings and ASCII.
        String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

/// Directory context added by the enrichment stage. A lookup that fails never blocks the event: the
/// event goes on with `status` saying what is missing and why. The parts are shared (`Arc`): the same
/// client or user appears on many events, and is built once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Enrichment {
    pub status: EnrichmentStatus,
    /// Why something could not be resolved (deleted user, unknown client, directory unavailable, ...).
    pub misses: Vec<String>,
    /// Where the facts came from (`directory:<path>`, `realm-export:<file>`, `admin-api:<url>`).
    pub source: Option<Arc<str>>,
    /// The requesting client (token exchange) or the event's client.
    pub exchanger: Option<Arc<ClientInfo>>,
    /// The user the event is about.
    pub subject: Option<Arc<UserInfo>>,
    /// Each requested audience resolved to a client; `known: false` when no such client exists.
    pub audiences: Vec<AudienceInfo>,
    /// The client the subject token was issued to (V2 `subject_token_client_id`).
    pub subject_token_client: Option<Arc<ClientInfo>>,
    /// V1 impersonation: the impersonating user (the detail is a username).
    pub impersonator: Option<Arc<UserInfo>>,
    /// V1 impersonation: the user asked for (`requested_subject`, a username or an id), resolved even
    /// when the exchange failed and the event has no `userId`.
    pub requested_subject: Option<Arc<UserInfo>>,
    /// Whether the exchange was within what the realm configuration allows the exchanger.
    pub policy: Option<Arc<PolicyVerdict>>,
    /// Admin events on a client (`clients/<uuid>/...`): the client that was changed.
    pub resource_client: Option<Arc<ClientInfo>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EnrichmentStatus {
    /// Everything the event names was resolved.
    Enriched,
    /// Some lookups missed (see `misses`).
    Partial,
    /// Nothing could be resolved (directory unavailable, unknown realm, ...).
    NotEnriched,
}

/// A Keycloak client, as a security analyst needs to see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientInfo {
    pub client_id: String,
    /// Internal UUID.
    pub uuid: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
    /// `confidential`, `public` or `bearer_only`.
    pub access_type: Option<String>,
    pub service_accounts_enabled: Option<bool>,
    /// Token exchange the client has enabled: `standard_v2`, `legacy_v1`, `none`, or `unknown` when the
    /// source cannot tell (V1 permissions are only visible in realm exports).
    pub token_exchange: String,
}

/// A Keycloak user, as a security analyst needs to see them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserInfo {
    pub id: Option<String>,
    pub username: Option<String>,
    pub email: Option<String>,
    pub enabled: Option<bool>,
    /// True for a client's service-account user.
    pub service_account: bool,
    /// The owning client of a service account.
    pub service_account_client_id: Option<String>,
    /// Matches the configured privilege rules (roles, groups or attributes).
    pub privileged: bool,
    /// Which rule made the user privileged.
    pub privileged_reason: Option<String>,
    /// The user attributes the configuration asks to carry.
    pub attributes: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AudienceInfo {
    pub audience: String,
    /// False when the realm has no client with this clientId (a fact worth recording: probing); null
    /// when no source could answer.
    pub known: Option<bool>,
    pub client: Option<Arc<ClientInfo>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Within {
    Yes,
    No,
    Unknown,
}

/// The exchange measured against the realm configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyVerdict {
    pub within_policy: Within,
    /// One sentence: what the configuration allows and how this exchange compares.
    pub reason: String,
    /// Audiences the configuration grants the exchanger, when known.
    pub allowed_audiences: Option<Vec<String>>,
}

/// How bad a finding is. Ordered so that `>=` means "at least as bad" (`--fail-on` uses that).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    /// All severities from the worst down: the order people read reports in.
    pub const DESCENDING: [Severity; 5] = [
        Severity::Critical,
        Severity::High,
        Severity::Medium,
        Severity::Low,
        Severity::Info,
    ];

    /// Parse a `--fail-on` value. Case-insensitive because people type `HIGH` as often as `high`.
    pub fn parse(s: &str) -> Result<Severity, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "info" => Ok(Severity::Info),
            "low" => Ok(Severity::Low),
            "medium" => Ok(Severity::Medium),
            "high" => Ok(Severity::High),
            "critical" => Ok(Severity::Critical),
            other => Err(format!(
                "unknown severity '{other}' (expected one of: info, low, medium, high, critical)"
            )),
        }
    }

    /// The lowercase name, the same string serde writes.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One detection result, explained for a tired on-call analyst.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Finding {
    /// Stable rule id (`new-audience`, `impersonation-privileged-target`, ...; see `rules/`).
    pub rule: String,
    pub severity: Severity,
    /// Short title.
    pub title: String,
    /// One sentence saying what happened and why it is unusual, with the evidence.
    pub reason: String,
    /// MITRE ATT&CK technique ids.
    pub attack: Vec<String>,
    /// Other events that belong to the story (earlier failures, the precursor admin event, ...).
    pub related_event_ids: Vec<String>,
}

/// `name()` for the small enums: the same lowercase string serde writes, without going through serde
/// (sinks that build columns or CEF fields need it per event).
macro_rules! wire_names {
    ($($t:ty { $($v:ident => $s:literal),* $(,)? })*) => {
        $(impl $t {
            /// The wire name (as serialized).
            pub fn name(self) -> &'static str {
                match self { $(Self::$v => $s),* }
            }
        })*
    };
}

wire_names! {
    EventKind { User => "user", Admin => "admin" }
    Outcome { Success => "success", Failure => "failure" }
    TimeSource { Event => "event", LogLine => "log_line", Missing => "missing" }
    ExchangeFlavour { StandardV2 => "standard_v2", LegacyV1 => "legacy_v1", Unknown => "unknown" }
    EnrichmentStatus { Enriched => "enriched", Partial => "partial", NotEnriched => "not_enriched" }
    Within { Yes => "yes", No => "no", Unknown => "unknown" }
}

#[cfg(test)]
mod wire_name_tests {
    use super::*;

    /// `name()` must agree with serde, or a ClickHouse column and the JSON audit log would disagree.
    #[test]
    fn names_match_serde() {
        fn check<T: Serialize + Copy>(v: T, name: &str) {
            assert_eq!(serde_json::to_value(v).unwrap(), serde_json::Value::String(name.to_string()));
        }
        for v in [EventKind::User, EventKind::Admin] { check(v, v.name()); }
        for v in [Outcome::Success, Outcome::Failure] { check(v, v.name()); }
        for v in [TimeSource::Event, TimeSource::LogLine, TimeSource::Missing] { check(v, v.name()); }
        for v in [ExchangeFlavour::StandardV2, ExchangeFlavour::LegacyV1, ExchangeFlavour::Unknown] { check(v, v.name()); }
        for v in [EnrichmentStatus::Enriched, EnrichmentStatus::Partial, EnrichmentStatus::NotEnriched] { check(v, v.name()); }
        for v in [Within::Yes, Within::No, Within::Unknown] { check(v, v.name()); }
        for v in Severity::DESCENDING { check(v, v.name()); }
    }
}
