//! The half-built event every format fills in, and the one place that turns it into an [`AuditEvent`].
//!
//! Each format only knows where its fields live; everything that interprets them (outcome, token
//! exchange facts, V1/V2 inference, IP parsing, caps, derived ids, suspicious-character warnings) lives
//! here so every format gets exactly the same interpretation.

use chrono::{DateTime, Utc};
use uuid::Uuid;
use std::sync::Arc;

use super::DecodeOptions;
use crate::event::*;

/// Keycloak's token-exchange grant type, as recorded in `details.grant_type`.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// Namespace for derived event ids (UUID v5), so derived ids never collide with Keycloak's v4 ids.
const DERIVED_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b63_6175_6469_7400_8000_0000_0000_0001);

#[derive(Debug, Default)]
pub struct Draft {
    pub kind: Option<EventKind>,
    pub id: Option<String>,
    pub time: Option<DateTime<Utc>>,
    pub time_source: Option<TimeSource>,
    pub event_type: Option<Text>,
    pub error: Option<Text>,
    pub realm_id: Option<String>,
    pub realm_name: Option<Text>,
    pub client_id: Option<Text>,
    pub user_id: Option<String>,
    pub username: Option<Text>,
    pub session_id: Option<String>,
    pub ip_address: Option<Text>,
    /// Details in arrival order; duplicates already resolved by the format.
    pub details: Vec<(Text, Text)>,
    /// `details` is already sorted by key, each key once (the fast path's visitor checks both), so
    /// building [`Details`] need not check the order again.
    pub details_sorted: bool,
    pub admin: Option<AdminInfo>,
    pub origin: Origin,
    pub warnings: Vec<Warning>,
}

impl Draft {
    pub fn warn(&mut self, code: &str, message: impl Into<String>) {
        self.warnings.push(Warning::new(code, message));
    }

    /// Build the canonical event. Fails only when the record has no event type at all, which means it
    /// is not a Keycloak event. The event is made straight into its shared allocation: returned by
    /// value it was copied (~800 bytes) at every layer on its way into the pipeline (issue #9).
    pub fn finish(mut self, opts: &DecodeOptions) -> Result<Arc<AuditEvent>, String> {
        let kind = self.kind.unwrap_or(EventKind::User);
        let event_type = match (kind, self.event_type.take()) {
            (_, Some(t)) if !t.is_empty() => t,
            (EventKind::Admin, _) => {
                // An empty string names nothing: `"operationType":""` must not yield a type of "" or
                // "PROTOCOL_MAPPER-" (found by the keycloak_kafka fuzz target).
                let a = self.admin.get_or_insert_with(Default::default);
                let resource = a.resource_type.as_deref().filter(|s| !s.is_empty());
                match (resource, a.operation.as_deref().filter(|s| !s.is_empty())) {
                    (Some(r), Some(o)) => compact_str::format_compact!("{r}-{o}"),
                    (None, Some(o)) => o.into(),
                    (Some(_), None) => return Err("admin event has a resourceType but no operationType".into()),
                    (None, None) => return Err("admin event has neither operationType nor resourceType".into()),
                }
            }
            _ => return Err("no event type: the record has no `type` field".into()),
        };

        // Cap every free-text top-level field; Keycloak itself cuts ids at 254 characters, so anything
        // much longer did not come from Keycloak unmodified.
        let max = opts.max_field_bytes;
        let fields: [(&str, Option<&mut dyn Truncate>); 9] = [
            ("id", self.id.as_mut().map(|v| v as _)),
            ("realmId", self.realm_id.as_mut().map(|v| v as _)),
            ("realmName", self.realm_name.as_mut().map(|v| v as _)),
            ("clientId", self.client_id.as_mut().map(|v| v as _)),
            ("userId", self.user_id.as_mut().map(|v| v as _)),
            ("username", self.username.as_mut().map(|v| v as _)),
            ("sessionId", self.session_id.as_mut().map(|v| v as _)),
            ("ipAddress", self.ip_address.as_mut().map(|v| v as _)),
            ("error", self.error.as_mut().map(|v| v as _)),
        ];
        for (name, field) in fields {
            if let Some(w) = field.and_then(|v| cap(v, max, name)) {
                self.warnings.push(w);
            }
        }

        let details = self.cap_details(opts);
        let error = self.error.filter(|e| !e.is_empty());
        let outcome = if error.is_some() || event_type.ends_with("_ERROR") {
            Outcome::Failure
        } else {
            Outcome::Success
        };
        let ip = self.ip_address.as_deref().and_then(|s| s.trim().parse().ok());
        if let Some(raw) = &self.ip_address {
            if ip.is_none() && !raw.is_empty() {
                self.warnings.push(Warning::new(
                    "ip_not_an_address",
                    format!("ipAddress {} is not an IP address; kept as text", super::json::preview(raw, 80)),
                ));
            }
        }
        let client_id = if kind == EventKind::Admin { None } else { self.client_id.take() };
        let known = Known::of(&details);
        let token_exchange = token_exchange(&event_type, client_id.as_deref(), &known);

        for (name, v) in [
            ("clientId", client_id.as_deref()),
            ("userId", self.user_id.as_deref()),
            ("username", self.username.as_deref()),
            ("realmName", self.realm_name.as_deref()),
        ] {
            if let Some(v) = v {
                flag_suspicious_chars(name, v, &mut self.warnings);
            }
        }
        for (key, v) in [
            ("requested_subject", known.requested_subject),
            ("impersonator", known.impersonator),
            ("audience", known.audience),
            ("subject_issuer", known.subject_issuer),
            ("requested_issuer", known.requested_issuer),
        ] {
            if let Some(v) = v {
                flag_suspicious_chars(key, v, &mut self.warnings);
            }
        }

        let (time, time_source) = match self.time {
            Some(t) => (Some(t), self.time_source.unwrap_or(TimeSource::Event)),
            None => (None, TimeSource::Missing),
        };
        let id = self.id.filter(|s| !s.trim().is_empty());
        let mut event = Arc::new(AuditEvent {
            schema_version: SCHEMA_VERSION,
            id: String::new(),
            id_derived: false,
            time,
            time_source,
            received_at: None,
            kind,
            event_type,
            outcome,
            error,
            realm: Realm { id: self.realm_id, name: self.realm_name },
            client_id,
            subject: Subject { id: self.user_id, username: self.username },
            session_id: self.session_id,
            ip_address: self.ip_address,
            ip,
            token_exchange,
            details,
            admin: self.admin.map(Box::new),
            enrichment: None,
            findings: Vec::new(),
            severity: None,
            origin: self.origin,
            warnings: self.warnings,
        });
        // Only this function holds the event yet: `make_mut` changes it in place, never copies.
        let e = Arc::make_mut(&mut event);
        match id {
            Some(id) => e.id = id,
            None => {
                e.id = derive_id(e);
                e.id_derived = true;
            }
        }
        Ok(event)
    }

    fn cap_details(&mut self, opts: &DecodeOptions) -> Details {
        // The usual case, nothing over a cap: the list becomes the details as it is (sorted once).
        // A duplicate key keeps the last value, as insert does.
        if self.details.len() <= opts.max_details
            && self.details.iter().all(|(k, v)| k.len() <= opts.max_field_bytes && v.len() <= opts.max_detail_value_bytes)
        {
            let pairs = std::mem::take(&mut self.details);
            return if self.details_sorted { Details::from_sorted(pairs) } else { Details::from_pairs(pairs) };
        }
        let mut out = Details::new();
        let total = self.details.len();
        let mut dropped = 0usize;
        for (mut k, mut v) in std::mem::take(&mut self.details) {
            if out.len() >= opts.max_details {
                dropped += 1;
                continue;
            }
            if let Some(w) = cap(&mut k, opts.max_field_bytes, "detail key") {
                self.warnings.push(w);
            }
            if let Some(w) = cap(&mut v, opts.max_detail_value_bytes, format_args!("details.{k}")) {
                self.warnings.push(w);
            }
            out.insert(k, v);
        }
        if dropped > 0 {
            self.warnings.push(Warning::new(
                "details_truncated",
                format!("{total} details received; only the first {} were kept", opts.max_details),
            ));
        }
        out
    }
}

/// Text that can be cut short: `String` and [`Text`].
pub trait Truncate: std::ops::Deref<Target = str> {
    fn truncate(&mut self, len: usize);
}

impl Truncate for String {
    fn truncate(&mut self, len: usize) {
        String::truncate(self, len)
    }
}

impl Truncate for Text {
    fn truncate(&mut self, len: usize) {
        Text::truncate(self, len)
    }
}

/// Truncate `v` to at most `max` bytes on a character boundary; returns a warning when it cut.
/// `name` is only formatted when a cut happens (this runs for every detail of every event).
pub fn cap(v: &mut (impl Truncate + ?Sized), max: usize, name: impl std::fmt::Display) -> Option<Warning> {
    if v.len() <= max {
        return None;
    }
    let original = v.len();
    let mut end = max;
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    v.truncate(end);
    Some(Warning::new("value_truncated", format!("{name} was {original} bytes; cut to {end}")))
}

/// Warn about characters that render invisibly or reorder text: an analyst reading `admin` on screen
/// must be told when the bytes say something else. The value itself is kept unchanged.
fn flag_suspicious_chars(name: &str, v: &str, warnings: &mut Vec<Warning>) {
    // Printable ASCII (the usual case) can hold neither: one vectorised pass instead of two char walks.
    if printable_ascii(v.as_bytes()) {
        return;
    }
    let bidi = v.chars().any(|c| matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}'));
    let control = v.chars().any(|c| c.is_control());
    if bidi || control {
        let what = match (bidi, control) {
            (true, true) => "bidirectional-override and control characters",
            (true, false) => "bidirectional-override characters",
            _ => "control characters",
        };
        warnings.push(Warning::new(
            "suspicious_characters",
            format!("{name} contains {what} (kept as received): {}", super::json::preview(v, 80)),
        ));
    }
}

/// True when every byte is printable ASCII (0x20-0x7e). Sixteen bytes at a time with no early exit
/// inside a block, which the compiler turns into vector compares; `all()` stopped at each byte and
/// was a byte-at-a-time loop (issue #9).
fn printable_ascii(b: &[u8]) -> bool {
    let printable = |x: u8| x.wrapping_sub(0x20) < 0x5f;
    let mut blocks = b.chunks_exact(16);
    for block in &mut blocks {
        if !block.iter().fold(true, |ok, &x| ok & printable(x)) {
            return false;
        }
    }
    blocks.remainder().iter().all(|&x| printable(x))
}

/// Declares [`Known`] with one field per detail key (the field name is the key).
macro_rules! known_details {
    ($($key:ident),* $(,)?) => {
        /// The details that token-exchange interpretation reads, found in one pass over the details
        /// (a dozen separate lookups were a twentieth of the pipeline's instructions, issue #9).
        #[derive(Default)]
        struct Known<'a> {
            $($key: Option<&'a str>,)*
        }

        impl<'a> Known<'a> {
            fn of(d: &'a Details) -> Self {
                let mut k = Known::default();
                for (key, v) in d {
                    match key {
                        $(stringify!($key) => k.$key = Some(v),)*
                        _ => {}
                    }
                }
                k
            }
        }
    };
}

known_details!(
    grant_type,
    audience,
    subject_token_client_id,
    requested_subject,
    impersonator,
    requested_token_type,
    scope,
    requested_issuer,
    subject_issuer,
    actor,
    reason,
    username,
);

/// A detail that is present and not empty.
fn set(v: Option<&str>) -> Option<&str> {
    v.filter(|v| !v.is_empty())
}

fn token_exchange(event_type: &str, exchanger: Option<&str>, d: &Known) -> Option<TokenExchange> {
    let is_te = event_type == "TOKEN_EXCHANGE" || event_type == "TOKEN_EXCHANGE_ERROR" || d.grant_type == Some(TOKEN_EXCHANGE_GRANT);
    if !is_te {
        return None;
    }
    // Through value_text: the requested token type is nearly always one of the constant URNs.
    let get = |v: Option<&str>| set(v).map(crate::event::value_text);
    let (flavour, flavour_reason) = infer_flavour(event_type, d);
    Some(TokenExchange {
        exchanger: exchanger.map(Text::from),
        audiences: d.audience.map(|a| a.split_whitespace().map(Text::from).collect()).unwrap_or_default(),
        subject_token_client_id: get(d.subject_token_client_id),
        requested_subject: get(d.requested_subject),
        impersonator: get(d.impersonator),
        requested_token_type: get(d.requested_token_type),
        scope: get(d.scope),
        requested_issuer: get(d.requested_issuer),
        subject_issuer: get(d.subject_issuer),
        actor: get(d.actor),
        flavour,
        flavour_reason: flavour_reason.into(),
    })
}

/// V1 versus V2, from the evidence Keycloak leaves (`keycloak-events.md` §2.4, §5.4). Keycloak names no
/// version, so each answer carries its reason.
fn infer_flavour(event_type: &str, d: &Known) -> (ExchangeFlavour, &'static str) {
    let has = |v: Option<&str>| set(v).is_some();
    if has(d.subject_token_client_id) {
        return (ExchangeFlavour::StandardV2, "details.subject_token_client_id is set only by standard (V2) token exchange");
    }
    if has(d.requested_subject) || has(d.impersonator) {
        return (ExchangeFlavour::LegacyV1, "impersonation (requested_subject/impersonator) is handled only by legacy V1 token exchange");
    }
    if has(d.requested_issuer) {
        return (ExchangeFlavour::LegacyV1, "internal-to-external exchange (requested_issuer) exists only in legacy V1 token exchange");
    }
    if d.reason.is_some_and(|r| r.contains("standard token exchange")) {
        return (ExchangeFlavour::StandardV2, "the error reason names standard token exchange");
    }
    let success = !event_type.ends_with("_ERROR");
    if success && event_type == "TOKEN_EXCHANGE" {
        if has(d.username) {
            return (ExchangeFlavour::StandardV2, "a successful exchange with details.username is standard (V2) token exchange");
        }
        return (
            ExchangeFlavour::LegacyV1,
            "a successful exchange without details.username or subject_token_client_id is legacy V1 token exchange",
        );
    }
    (ExchangeFlavour::Unknown, "no detail distinguishes V1 from V2 (typical of early failures)")
}

/// A stable id for events whose format has none: UUID v5 over the content, so the same log line
/// replayed twice gets the same id (and is deduplicated) while different events do not collide.
fn derive_id(e: &AuditEvent) -> String {
    let mut s = String::with_capacity(256);
    let mut push = |k: &str, v: Option<&str>| {
        s.push_str(k);
        s.push('=');
        if let Some(v) = v {
            s.push_str(&v.len().to_string());
            s.push(':');
            s.push_str(v);
        }
        s.push('\n');
    };
    let time = e.time.map(|t| t.timestamp_millis().to_string());
    push("kind", Some(if e.kind == EventKind::Admin { "admin" } else { "user" }));
    push("type", Some(&e.event_type));
    push("time", time.as_deref());
    push("log_ts", e.origin.log.as_ref().and_then(|l| l.timestamp.as_deref()));
    push("realm_id", e.realm.id.as_deref());
    push("realm_name", e.realm.name.as_deref());
    push("client", e.client_id.as_deref());
    push("user", e.subject.id.as_deref());
    push("session", e.session_id.as_deref());
    push("ip", e.ip_address.as_deref());
    push("error", e.error.as_deref());
    for (k, v) in &e.details {
        push(k, Some(v));
    }
    if let Some(a) = &e.admin {
        push("op", a.operation.as_deref());
        push("resource_type", a.resource_type.as_deref());
        push("resource_path", a.resource_path.as_deref());
        push("auth_client", a.auth.client_uuid.as_deref());
        push("auth_user", a.auth.user_id.as_deref());
        push("representation", a.representation.as_deref());
    }
    Uuid::new_v5(&DERIVED_ID_NAMESPACE, s.as_bytes()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_ascii_is_exactly_0x20_to_0x7e() {
        for b in 0..=255u8 {
            for len in [1usize, 15, 16, 17, 40] {
                for at in [0, len / 2, len - 1] {
                    let mut v = vec![b'a'; len];
                    v[at] = b;
                    assert_eq!(super::printable_ascii(&v), (0x20..0x7f).contains(&b), "byte {b:#x} at {at} of {len}");
                }
            }
        }
        assert!(super::printable_ascii(b""));
    }

    fn d(pairs: &[(&str, &str)]) -> Details {
        pairs.iter().copied().collect()
    }

    #[test]
    fn admin_type_is_built_from_named_parts_only() {
        let opts = DecodeOptions::default();
        let admin = |r: Option<&str>, o: Option<&str>| {
            let mut d = Draft { kind: Some(EventKind::Admin), id: Some("x".into()), ..Default::default() };
            d.admin = Some(AdminInfo { resource_type: r.map(Into::into), operation: o.map(Into::into), ..Default::default() });
            d.finish(&opts).map(|e| e.event_type.clone())
        };
        assert_eq!(admin(Some("CLIENT"), Some("CREATE")).unwrap(), "CLIENT-CREATE");
        assert_eq!(admin(None, Some("DELETE")).unwrap(), "DELETE");
        assert_eq!(admin(Some(""), Some("DELETE")).unwrap(), "DELETE");
        for (r, o) in [(None, Some("")), (Some("PROTOCOL_MAPPER"), Some("")), (Some("CLIENT"), None), (Some(""), Some("")), (None, None)] {
            let got = admin(r, o);
            assert!(got.is_err(), "resourceType {r:?} operationType {o:?}: expected a refusal, got {got:?}");
        }
    }

    #[test]
    fn flavour_inference_follows_the_evidence() {
        let v2 = d(&[("subject_token_client_id", "web-portal"), ("username", "alice")]);
        assert_eq!(infer_flavour("TOKEN_EXCHANGE", &Known::of(&v2)).0, ExchangeFlavour::StandardV2);
        let v1_imp = d(&[("requested_subject", "ops.admin")]);
        assert_eq!(infer_flavour("TOKEN_EXCHANGE_ERROR", &Known::of(&v1_imp)).0, ExchangeFlavour::LegacyV1);
        let v1_plain = d(&[("audience", "billing-api")]);
        assert_eq!(infer_flavour("TOKEN_EXCHANGE", &Known::of(&v1_plain)).0, ExchangeFlavour::LegacyV1);
        let client_auth_failure = d(&[("grant_type", TOKEN_EXCHANGE_GRANT)]);
        assert_eq!(infer_flavour("TOKEN_EXCHANGE_ERROR", &Known::of(&client_auth_failure)).0, ExchangeFlavour::Unknown);
        let v2_refusal = d(&[("reason", "Standard token exchange is not enabled for the requested client".to_lowercase().as_str())]);
        assert_eq!(infer_flavour("TOKEN_EXCHANGE_ERROR", &Known::of(&v2_refusal)).0, ExchangeFlavour::StandardV2);
    }

    #[test]
    fn cap_respects_char_boundaries() {
        let mut s = "ééééé".to_string(); // 10 bytes
        let w = cap(&mut s, 5, "x").unwrap();
        assert_eq!(s, "éé");
        assert!(w.message.contains("10 bytes"));
        let mut short = "abc".to_string();
        assert!(cap(&mut short, 5, "x").is_none());
    }
}
