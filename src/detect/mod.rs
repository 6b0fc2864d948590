//! The detection stage: stateful rules for token exchange, each finding explained.
//!
//! Runs in the pipeline's central stage after enrichment, in arrival order, on event time only (never
//! the wall clock), so replaying a recorded day yields the same findings as living through it. The
//! state is one serialisable value ([`State`]) that can be persisted and restored (`state.rs`).
//!
//! Rules (ids are stable; each has a page in `rules/`):
//!
//! | id | fires when | default |
//! |---|---|---|
//! | `impersonation-privileged-target` | `requested_subject` resolves to a privileged user | critical (success) / high (denied) |
//! | `naked-impersonation-service-client` | a service client impersonates a human with no impersonator recorded | high / medium |
//! | `impersonation-first-by-client` | a client impersonates for the first time after the learning period | medium |
//! | `new-audience` | an established client obtains an audience it never obtained | medium; high with a precursor config change |
//! | `new-audience-attempt` | an established client asks, and fails, for an audience it never obtained | medium |
//! | `audience-outside-policy` | enrichment says the realm configuration does not grant the audience | high (success) / low (denied) |
//! | `new-origin-client` | an established exchanger receives subject tokens from a new origin client | medium |
//! | `error-burst-client` / `error-burst-ip` | ≥ N TOKEN_EXCHANGE_ERROR per client / per source IP in a window | high |
//! | `failures-then-success` | a success after ≥ N failures of the same client in the window | medium |
//! | `audience-spraying` | ≥ N distinct audiences asked by one client in a window | high |
//! | `new-network` | an established client calls from a network (IPv4 /24, IPv6 /64) never seen for it | medium |
//! | `unusual-hour` | a client active in an hour-of-day slot it (almost) never uses | low |
//! | `dormant-client` | a client silent for `dormant_after` is active again | medium |
//! | `volume-outlier` | a client's events in one hour exceed its usual hourly volume many times | medium |
//! | `exchange-config-change` | an admin event changes token-exchange configuration (mappers, scopes, permissions) | low, linked as a precursor |
//! | `admin-action-after-impersonation` | an admin action by a user shortly after a token exchange impersonated that user | high |
//! | `multi-hop-chain` | an exchange chain longer than `max_chain_hops`, or a delegation chain | low |
//! | `delegated-exchange` | an exchange made by an actor on behalf of a user (experimental delegation) | info |

pub mod config;
pub mod partitioned;
pub mod state;
pub mod store;
pub mod rules_test;
pub mod sigma;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use chrono::Timelike;

use crate::event::{AuditEvent, EventKind, Finding, Outcome, Severity, Within};
pub use config::{DetectOptions, RuleOverride};
use state::{ClientState, State};

/// ATT&CK ids per rule (`siem-and-detection.md` §3.4–3.5).
fn attack(rule: &str) -> Vec<String> {
    let ids: &[&str] = match rule {
        "impersonation-privileged-target" => &["T1550.001", "T1548", "T1134"],
        "naked-impersonation-service-client" | "impersonation-first-by-client" => &["T1550.001", "T1078.004", "T1134"],
        "new-audience" | "new-audience-attempt" | "audience-outside-policy" | "new-origin-client" => &["T1550.001", "T1078.004"],
        "error-burst-client" | "error-burst-ip" | "failures-then-success" => &["T1110", "T1550.001"],
        "audience-spraying" => &["T1550.001", "T1528"],
        "new-network" | "dormant-client" => &["T1078.004", "T1528"],
        "unusual-hour" | "volume-outlier" => &["T1550.001"],
        "exchange-config-change" => &["T1098.003"],
        "admin-action-after-impersonation" => &["T1550.001", "T1548", "T1098"],
        "multi-hop-chain" | "delegated-exchange" => &["T1550.001"],
        _ => &[],
    };
    ids.iter().map(|s| s.to_string()).collect()
}

fn title(rule: &str) -> &'static str {
    match rule {
        "impersonation-privileged-target" => "Impersonation of a privileged user",
        "naked-impersonation-service-client" => "Service client impersonating a human without an impersonator",
        "impersonation-first-by-client" => "First impersonation by this client",
        "new-audience" => "New audience for an established exchanger",
        "new-audience-attempt" => "Exchange attempted for an audience the client never obtained",
        "audience-outside-policy" => "Audience outside the realm's exchange policy",
        "new-origin-client" => "Subject tokens from a new origin client",
        "error-burst-client" => "Burst of failed token exchanges by one client",
        "error-burst-ip" => "Burst of failed token exchanges from one address",
        "failures-then-success" => "Token exchange succeeded after repeated failures",
        "audience-spraying" => "Audience spraying",
        "new-network" => "Exchanger calling from a new network",
        "unusual-hour" => "Activity at an unusual hour for this client",
        "dormant-client" => "Dormant client active again",
        "volume-outlier" => "Unusual volume for this client",
        "exchange-config-change" => "Token-exchange configuration changed",
        "admin-action-after-impersonation" => "Admin action by an identity obtained through impersonation",
        "multi-hop-chain" => "Multi-hop token-exchange chain",
        "delegated-exchange" => "Delegated token exchange",
        _ => "Finding",
    }
}

/// Calls `$m!` with every rule id as string literals: the one list of rule ids, used for [`RULES`]
/// and for compiling each rule's documentation page into the Sigma export (`include_str!` needs
/// literals).
macro_rules! for_each_rule {
    ($m:ident) => {
        $m!(
            "impersonation-privileged-target",
            "naked-impersonation-service-client",
            "impersonation-first-by-client",
            "new-audience",
            "new-audience-attempt",
            "audience-outside-policy",
            "new-origin-client",
            "error-burst-client",
            "error-burst-ip",
            "failures-then-success",
            "audience-spraying",
            "new-network",
            "unusual-hour",
            "dormant-client",
            "volume-outlier",
            "exchange-config-change",
            "admin-action-after-impersonation",
            "multi-hop-chain",
            "delegated-exchange",
        )
    };
}
pub(crate) use for_each_rule;

macro_rules! id_slice {
    ($($id:literal),* $(,)?) => {
        &[$($id),*]
    };
}

/// Every rule id, for config validation and documentation.
pub const RULES: &[&str] = for_each_rule!(id_slice);

/// The detector: options, state, and where the state is persisted (if anywhere).
pub struct Detector {
    pub opts: DetectOptions,
    pub state: State,
    pub store: Option<store::StateStore>,
    /// Worker role: one state per owned Kafka partition instead of `state` (`partitioned.rs`).
    pub partitions: Option<partitioned::Partitions>,
}

struct Out {
    findings: Vec<Finding>,
}

impl Out {
    fn push(&mut self, rule: &str, severity: Severity, reason: String, related: Vec<String>) {
        self.findings.push(Finding { rule: rule.into(), severity, title: title(rule).into(), reason, attack: attack(rule), related_event_ids: related });
    }
}

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The network an address belongs to (IPv4 /24, IPv6 /64 by default) as text, written into `buf`
/// (on the stack: this runs for every token exchange and a `String` per event showed in profiles).
pub fn network<'b>(ip: &IpAddr, v4: u8, v6: u8, buf: &'b mut [u8; 64]) -> &'b str {
    use std::io::Write;
    let mut cur = std::io::Cursor::new(&mut buf[..]);
    // The longest form, an IPv6 address and "/128", is 43 bytes: the writes cannot run out of room.
    let _ = match ip {
        IpAddr::V4(a) => {
            // By hand: `Ipv4Addr`'s Display goes through the formatting machinery four times over.
            let bits = u32::from(*a) & (u32::MAX.checked_shl(32 - u32::from(v4.min(32))).unwrap_or(0));
            let mut r = Ok(());
            for (i, octet) in bits.to_be_bytes().into_iter().enumerate() {
                let mut digits = [b'.', 0, 0, 0];
                let mut n = 1;
                if octet >= 100 { digits[n] = b'0' + octet / 100; n += 1; }
                if octet >= 10 { digits[n] = b'0' + octet / 10 % 10; n += 1; }
                digits[n] = b'0' + octet % 10;
                r = r.and(cur.write_all(&digits[usize::from(i == 0)..=n]));
            }
            let p = v4.min(32);
            r.and(if p < 10 { cur.write_all(&[b'/', b'0' + p]) } else { cur.write_all(&[b'/', b'0' + p / 10, b'0' + p % 10]) })
        }
        IpAddr::V6(a) => {
            let bits = u128::from(*a) & (u128::MAX.checked_shl(128 - u32::from(v6.min(128))).unwrap_or(0));
            write!(cur, "{}/{}", std::net::Ipv6Addr::from(bits), v6.min(128))
        }
    };
    let n = cur.position() as usize;
    std::str::from_utf8(&buf[..n]).unwrap_or_default()
}

/// `map.entry(key).or_insert_with(new)` without copying the key when it is already there (these
/// maps are looked up for every event, and almost always hold the key).
fn slot<'m, V>(map: &'m mut BTreeMap<String, V>, key: &str, new: impl FnOnce() -> V) -> &'m mut V {
    if !map.contains_key(key) {
        map.insert(key.to_string(), new());
    }
    map.get_mut(key).expect("inserted above")
}

/// [`slot`] for the hashed client map.
fn client_slot<'m>(map: &'m mut state::ClientMap, client: &str) -> &'m mut state::ClientState {
    if !map.contains_key(client) {
        map.insert(client.to_string(), Default::default());
    }
    map.get_mut(client).expect("inserted above")
}

fn list(items: impl IntoIterator<Item = String>, max: usize) -> String {
    let v: Vec<String> = items.into_iter().collect();
    if v.is_empty() {
        return "nothing".into();
    }
    let mut s = v.iter().take(max).cloned().collect::<Vec<_>>().join(", ");
    if v.len() > max {
        s.push_str(&format!(" and {} more", v.len() - max));
    }
    s
}

fn span(ms: i64) -> String {
    let s = ms / 1000;
    if s < 120 {
        format!("{s} s")
    } else if s < 7200 {
        format!("{} min", s / 60)
    } else if s < 172_800 {
        format!("{} h", s / 3600)
    } else {
        format!("{} days", s / 86400)
    }
}

impl Detector {
    pub fn new(opts: DetectOptions) -> Detector {
        Detector { opts, state: State::default(), store: None, partitions: None }
    }

    /// A detector whose state is loaded from, and saved to, `path` (redb).
    pub fn with_store(opts: DetectOptions, path: &std::path::Path) -> anyhow::Result<Detector> {
        let store = store::StateStore::open(path)?;
        let state = store.load()?.unwrap_or_default();
        Ok(Detector { opts, state, store: Some(store), partitions: None })
    }

    /// Persist now (at shutdown) or when due (after a batch). Errors are logged, never fatal: losing
    /// some learning is better than stopping the audit trail.
    pub fn persist(&mut self, force: bool) {
        if let Some(p) = self.partitions.as_mut() {
            // The changelog takes every batch's changes: offsets are committed only behind it.
            p.persist();
            return;
        }
        if let Some(st) = self.store.as_mut() {
            if !force && !st.due() {
                return;
            }
            match st.save_changes(&mut self.state, false) {
                Ok(()) => {}
                Err(e) => tracing::error!(error = format!("{e:#}"), path = %st.path().display(), "Could not save detection state."),
            }
        }
    }

    /// Evaluate one event (mutating it with its findings) and learn from it.
    pub fn process(&mut self, ev: &mut AuditEvent) {
        let Detector { opts: o, state, partitions, .. } = self;
        let state = match (partitions, partitioned::partition_of(ev)) {
            (Some(p), Some(tp)) => match p.owned.get_mut(&tp) {
                Some(s) => s,
                // Not (or no longer) ours: the partition's owner runs detection on it.
                None => return,
            },
            _ => state,
        };
        let mut out = Out { findings: Vec::new() };
        let t = ev.time.map(|t| t.timestamp_millis()).unwrap_or(state.newest_ms);
        let late = t < state.newest_ms.saturating_sub(ms(o.allowed_lateness));
        state.newest_ms = state.newest_ms.max(t);
        // Once a day of event time, forget clients unseen for the retention period.
        let retention = ms(o.baseline_retention);
        if t - state.pruned_ms > 86_400_000 {
            if state.pruned_ms != 0 {
                state.expire(t - retention);
            }
            state.pruned_ms = t;
        }
        let realm_key = ev.realm.name.as_deref().or(ev.realm.id.as_deref()).unwrap_or("?");
        if !state.realms.contains_key(realm_key) {
            state.realms.insert(realm_key.to_string(), Default::default());
        }
        let Some(rs) = state.realms.get_mut(realm_key) else { return };
        if rs.first_ms == 0 || t < rs.first_ms {
            rs.first_ms = t;
        }
        let learning = t < rs.first_ms.saturating_add(ms(o.learning_period));

        if ev.kind == EventKind::Admin {
            let actor = ev.admin.as_ref().and_then(|a| a.auth.user_id.clone());
            let window = ms(o.impersonation_followup_window);
            // User ids are UUIDs: look in every realm (the actor's realm may differ from the target's).
            let hit = actor.as_ref().and_then(|u| state.realms.values().find_map(|r| r.impersonated.get(u).filter(|(it, _, _)| t >= *it && t - *it <= window).cloned()));
            let Some(rs) = state.realms.get_mut(realm_key) else { return };
            if let (Some((it, imp_id, imp_client)), Some(a)) = (hit, ev.admin.as_ref()) {
                let who = ev.enrichment.as_ref().and_then(|e| e.subject.as_ref()).and_then(|u| u.username.clone()).or(actor.clone()).unwrap_or_default();
                out.push(
                    "admin-action-after-impersonation",
                    Severity::High,
                    format!(
                        "{who} performed {} {} on {} {} after {imp_client} issued a token impersonating {who}",
                        a.operation.as_deref().unwrap_or("an admin action"),
                        a.resource_type.as_deref().unwrap_or("").to_lowercase().replace('_', " "),
                        a.resource_path.as_deref().unwrap_or("?"),
                        span(t - it)
                    ),
                    vec![imp_id],
                );
            }
            if let Some(c) = admin_event(o, rs, ev, t, &mut out) {
                if let Some(cs) = rs.clients.get_mut(&c) {
                    cs.dirty = true;
                }
            }
        } else if let Some(client) = ev.client_id.as_deref() {
            // Per-IP error bursts (client authentication failures carry an attacker-chosen clientId).
            let te_error = ev.token_exchange.is_some() && ev.outcome == Outcome::Failure;
            if te_error {
                if let Some(ip) = ev.ip_address.as_deref() {
                    let w = rs.ip_errors.entry(ip.to_string()).or_default();
                    w.push_back((t, ev.id.clone(), client.to_string()));
                    while w.front().is_some_and(|(ft, _, _)| *ft < t - ms(o.error_burst_window)) {
                        w.pop_front();
                    }
                    let clients: BTreeSet<&String> = w.iter().map(|(_, _, c)| c).collect();
                    if w.len() >= o.error_burst_threshold && clients.len() > 1 {
                        out.push(
                            "error-burst-ip",
                            Severity::High,
                            format!("{} failed token exchanges from {ip} within {} naming {} different clients ({})", w.len(), span(ms(o.error_burst_window)), clients.len(), list(clients.iter().map(|c| c.to_string()), 5)),
                            w.iter().filter(|(_, id, _)| id != &ev.id).map(|(_, id, _)| id.clone()).collect(),
                        );
                    }
                }
            }
            let upstream_depth = ev.token_exchange.as_ref().and_then(|te| te.subject_token_client_id.as_deref()).map(|stc| chain_depth(rs, stc));
            let cs = client_slot(&mut rs.clients, client);
            client_rules(o, cs, ev, client, t, learning, late, upstream_depth, &mut out);
            cs.dirty = true;
            // Remember who was just impersonated, to catch that identity acting as an administrator.
            let window = ms(o.impersonation_followup_window);
            rs.impersonated.retain(|_, (it, _, _)| *it >= t - window);
            if let (Some(_), Some(uid), Outcome::Success) = (ev.token_exchange.as_ref().and_then(|te| te.requested_subject.as_ref()), ev.subject.id.as_ref(), ev.outcome) {
                rs.impersonated.insert(uid.clone(), (t, ev.id.clone(), client.to_string()));
            }
        }

        // Overrides, scoping, development realms; then the event's overall severity.
        let dev = o.dev_realms.iter().any(|r| ev.realm.is(r));
        out.findings.retain_mut(|f| {
            if let Some(ov) = o.rules.get(&f.rule) {
                if ov.enabled == Some(false) {
                    return false;
                }
                let in_realm = ov.realms.is_empty() || ov.realms.iter().any(|r| ev.realm.is(r));
                let client = ev.client_id.as_deref().unwrap_or("");
                let in_client = (ov.clients.is_empty() || ov.clients.iter().any(|c| c == client)) && !ov.exclude_clients.iter().any(|c| c == client);
                if !in_realm || !in_client {
                    return false;
                }
                if let Some(s) = ov.severity {
                    f.severity = s;
                }
            }
            if dev {
                f.severity = lower(f.severity);
            }
            true
        });
        ev.severity = out.findings.iter().map(|f| f.severity).max();
        ev.findings = out.findings;
    }
}

fn lower(s: Severity) -> Severity {
    match s {
        Severity::Critical => Severity::High,
        Severity::High => Severity::Medium,
        Severity::Medium => Severity::Low,
        _ => Severity::Info,
    }
}

/// How many exchange hops lie behind a subject token issued to `client` (0: it came from a login).
fn chain_depth(rs: &state::RealmState, client: &str) -> u32 {
    let mut depth = 0;
    let mut cur = client;
    let mut seen = BTreeSet::new();
    while let Some(up) = rs.clients.get(cur).and_then(|c| c.upstream.as_deref()) {
        if !seen.insert(cur) || depth > 16 {
            break;
        }
        depth += 1;
        cur = up;
    }
    depth
}

/// Admin events that change what a client may exchange: recorded as precursors on that client,
/// whose clientId is returned (its state changed).
fn admin_event(o: &DetectOptions, rs: &mut state::RealmState, ev: &AuditEvent, t: i64, out: &mut Out) -> Option<String> {
    let Some(a) = &ev.admin else { return None };
    let rt = a.resource_type.as_deref().unwrap_or("");
    let path = a.resource_path.as_deref().unwrap_or("");
    let repr = a.representation.as_deref().unwrap_or("");
    let relevant = matches!(rt, "PROTOCOL_MAPPER" | "CLIENT_SCOPE" | "CLIENT_SCOPE_MAPPING" | "CLIENT_SCOPE_CLIENT_MAPPING" | "AUTHORIZATION_POLICY" | "AUTHORIZATION_SCOPE" | "AUTHORIZATION_RESOURCE" | "AUTHORIZATION_RESOURCE_SERVER")
        // A full client representation always carries every attribute, so only a representation that
        // mentions token exchange counts (a `fullScopeAllowed` flip cannot be told from any update).
        || (rt == "CLIENT" && repr.contains("token.exchange"))
        || path.contains("/permissions")
        || repr.contains("oidc-audience-mapper");
    if !relevant {
        return None;
    }
    let en = ev.enrichment.as_ref();
    let client = en.and_then(|e| e.resource_client.as_ref()).map(|c| c.client_id.clone());
    let actor = en.and_then(|e| e.subject.as_ref()).and_then(|u| u.username.clone()).or_else(|| a.auth.user_id.clone()).unwrap_or_else(|| "an administrator".into());
    // The audience a new mapper adds, when the representation says so.
    let audience = serde_json::from_str::<serde_json::Value>(repr)
        .ok()
        .and_then(|v| v["config"]["included.client.audience"].as_str().or(v["config"]["included.custom.audience"].as_str()).map(str::to_string));
    let what = match (&audience, rt) {
        (Some(aud), _) => format!("added an audience mapper for {aud}"),
        (None, "PROTOCOL_MAPPER") => "changed a protocol mapper".to_string(),
        (None, other) => format!("changed {}", other.to_lowercase().replace('_', " ")),
    };
    let target = client.clone().unwrap_or_else(|| path.to_string());
    let link = if client.is_some() { "; later findings on this client are linked to it" } else { " (client not resolved: enrichment needed to link later findings)" };
    out.push("exchange-config-change", Severity::Low, format!("{actor} {} ({}) on {target}{link}", what, a.operation.as_deref().unwrap_or("change")), vec![]);
    let _ = o;
    let c = client?;
    let cs = rs.clients.entry(c.clone()).or_default();
    cs.last_ms = cs.last_ms.max(t); // keep the precursor through the daily expiry
    cs.precursor = Some(state::Precursor { time_ms: t, event_id: ev.id.clone(), what: format!("{actor} {what}"), audience });
    Some(c)
}

#[allow(clippy::too_many_arguments)]
fn client_rules(o: &DetectOptions, cs: &mut ClientState, ev: &AuditEvent, client: &str, t: i64, learning: bool, late: bool, upstream_depth: Option<u32>, out: &mut Out) {
    // Forget what this client has not used for the retention period (once a day of event time).
    if !late && t - cs.pruned_ms > 86_400_000 {
        cs.expire(t - ms(o.baseline_retention));
        cs.pruned_ms = t;
    }
    let established = !learning && cs.events >= u64::from(o.min_observations);
    let en = ev.enrichment.as_ref();
    // Network, hours, dormancy and volume describe the client's own calls: token exchanges and its
    // service-account logins. Browser-facing events (LOGIN, CODE_TO_TOKEN of a public client) carry
    // end users' addresses and times, which say nothing about the client.
    let own_call = ev.token_exchange.is_some() || ev.event_type == "CLIENT_LOGIN" || ev.event_type == "CLIENT_LOGIN_ERROR";
    let success = ev.outcome == Outcome::Success;
    let novelty = ms(o.novelty_window);

    // Dormant client reactivated.
    if own_call && established && cs.last_ms > 0 && t - cs.last_ms >= ms(o.dormant_after) {
        out.push("dormant-client", Severity::Medium, format!("{client} was silent for {} and is active again", span(t - cs.last_ms)), vec![]);
    }

    // New network.
    if let Some(ip) = ev.ip.filter(|_| own_call) {
        let mut buf = [0u8; 64];
        let net = network(&ip, o.ipv4_prefix, o.ipv6_prefix, &mut buf);
        match cs.networks.get(net) {
            None => {
                if established && !late {
                    let known = cs.networks.keys().cloned();
                    out.push("new-network", Severity::Medium, format!("{client} called from {ip} ({net}) for the first time; before it used only {}", list(known, 4)), vec![]);
                }
                if !late {
                    cs.networks.insert(net.to_string(), state::Seen { first_ms: t, last_ms: t, novel: established });
                }
            }
            Some(seen) if seen.novel && t - seen.first_ms <= novelty => {
                out.push("new-network", Severity::Medium, format!("{client} called again from {ip} ({net}), a network first seen for it {} ago", span(t - seen.first_ms)), vec![]);
            }
            Some(_) => {}
        }
        if let Some(s) = cs.networks.get_mut(net).filter(|_| !late) {
            s.last_ms = s.last_ms.max(t);
        }
    }

    // Usual hours, learned per client.
    let hour = ev.time.map(|t| t.hour() as usize).unwrap_or(0);
    let total: u64 = cs.hours.iter().sum();
    if own_call && !learning && total >= u64::from(o.hours_min_observations) && ev.time.is_some() {
        let around: u64 = [23, 0, 1].iter().map(|d| cs.hours[(hour + d) % 24]).sum();
        if (around as f64) < o.hours_rare_share * total as f64 {
            let busy: Vec<String> = {
                let mut h: Vec<(usize, u64)> = cs.hours.iter().copied().enumerate().filter(|(_, c)| *c > 0).collect();
                h.sort_by(|a, b| b.1.cmp(&a.1));
                h.iter().take(3).map(|(h, _)| format!("{h:02}:00")).collect()
            };
            out.push("unusual-hour", Severity::Low, format!("{client} is active at {hour:02}:xx UTC; its {total} earlier events cluster around {}", list(busy, 3)), vec![]);
        }
    }

    // Volume per hour.
    let bucket = t.div_euclid(3_600_000);
    if own_call && !late && cs.hour_bucket != bucket {
        if cs.hour_bucket != 0 {
            cs.hourly.push_back(cs.hour_count);
            while cs.hourly.len() > 24 * 14 {
                cs.hourly.pop_front();
            }
        }
        cs.hour_bucket = bucket;
        cs.hour_count = 0;
    }
    if own_call && !late && cs.hour_bucket == bucket {
        cs.hour_count += 1;
    }
    if own_call && established && cs.hourly.len() >= 24 {
        let mean = cs.hourly.iter().sum::<u64>() as f64 / cs.hourly.len() as f64;
        let limit = (mean * o.volume_factor).max(o.volume_min_per_hour as f64);
        if cs.hour_count as f64 > limit && !cs.volume_flagged_bucket.is_some_and(|b| b == bucket) {
            cs.volume_flagged_bucket = Some(bucket);
            out.push("volume-outlier", Severity::Medium, format!("{client} made {} calls in this hour; it usually makes {mean:.1} per hour", cs.hour_count), vec![]);
        }
    }

    if let Some(te) = &ev.token_exchange {
        let window = ms(o.error_burst_window);
        // Failures: bursts, and successes after failures.
        while cs.errors.front().is_some_and(|(ft, _)| *ft < t - window) {
            cs.errors.pop_front();
        }
        if success {
            if cs.errors.len() >= o.failures_before_success {
                out.push(
                    "failures-then-success",
                    Severity::Medium,
                    format!("{client} succeeded after {} failed exchanges in the last {}", cs.errors.len(), span(window)),
                    cs.errors.iter().map(|(_, id)| id.clone()).collect(),
                );
                // The episode is over: the next success needs fresh failures to be reported.
                cs.errors.clear();
            }
        } else {
            cs.errors.push_back((t, ev.id.clone()));
            if cs.errors.len() >= o.error_burst_threshold {
                out.push(
                    "error-burst-client",
                    Severity::High,
                    format!("{client} had {} failed token exchanges within {} (latest: {})", cs.errors.len(), span(window), ev.error.as_deref().unwrap_or("error")),
                    cs.errors.iter().filter(|(_, id)| id != &ev.id).map(|(_, id)| id.clone()).collect(),
                );
            }
        }

        // Audience spraying: distinct audiences asked for (successfully or not).
        let sw = ms(o.spray_window);
        for a in &te.audiences {
            cs.asked.push_back((t, a.clone(), ev.id.clone()));
            *slot(&mut cs.asked_counts, a, || 0) += 1;
        }
        while cs.asked.front().is_some_and(|(ft, _, _)| *ft < t - sw) {
            let Some((_, a, _)) = cs.asked.pop_front() else { break };
            if let Some(n) = cs.asked_counts.get_mut(a.as_str()) {
                *n -= 1;
                if *n == 0 {
                    cs.asked_counts.remove(a.as_str());
                }
            }
        }
        if !te.audiences.is_empty() && cs.asked_counts.len() >= o.spray_threshold {
            let distinct: BTreeSet<&String> = cs.asked_counts.keys().collect();
            out.push(
                "audience-spraying",
                Severity::High,
                format!("{client} asked for {} different audiences within {}: {}", distinct.len(), span(sw), list(distinct.iter().map(|s| s.to_string()), 6)),
                cs.asked.iter().map(|(_, _, id)| id.clone()).filter(|id| id != &ev.id).collect::<BTreeSet<_>>().into_iter().collect(),
            );
        }

        // Audiences: first use, attempts for never-obtained audiences, policy.
        for a in &te.audiences {
            match cs.audiences.get(a.as_str()) {
                None if established && a != client => {
                    let before = list(cs.audiences.keys().cloned(), 4);
                    if success {
                        let (sev, extra, related) = match &cs.precursor {
                            Some(p) if t - p.time_ms <= ms(o.precursor_window) => (
                                Severity::High,
                                format!("; {} {} earlier ({})", p.what, span(t - p.time_ms), if p.audience.as_deref() == Some(a.as_str()) { "the same audience" } else { "a configuration change" }),
                                vec![p.event_id.clone()],
                            ),
                            _ => (Severity::Medium, String::new(), vec![]),
                        };
                        out.push("new-audience", sev, format!("{client} obtained audience {a} for the first time; over {} it obtained only {before}{extra}", span(t - cs.first_ms)), related);
                    } else {
                        out.push("new-audience-attempt", Severity::Medium, format!("{client} asked for audience {a}, which it never obtained before ({}); Keycloak answered {}", before, ev.error.as_deref().unwrap_or("an error")), vec![]);
                    }
                }
                Some(seen) if success && seen.novel && t - seen.first_ms <= novelty => {
                    let related = cs.precursor.as_ref().filter(|p| t - p.time_ms <= ms(o.precursor_window)).map(|p| vec![p.event_id.clone()]).unwrap_or_default();
                    let sev = if related.is_empty() { Severity::Medium } else { Severity::High };
                    out.push("new-audience", sev, format!("{client} obtained audience {a} again, {} after its first use", span(t - seen.first_ms)), related);
                }
                _ => {}
            }
            if success && !late {
                slot(&mut cs.audiences, a, || state::Seen { first_ms: t, last_ms: t, novel: established }).last_ms = t;
            }
        }
        if let Some(p) = en.and_then(|e| e.policy.as_ref()).filter(|p| p.within_policy == Within::No) {
            let sev = if success { Severity::High } else { Severity::Low };
            out.push("audience-outside-policy", sev, format!("{}: {}", if success { "Keycloak issued a token the configuration does not grant" } else { "denied" }, p.reason), vec![]);
        }

        // Impersonation.
        if let Some(rsub) = &te.requested_subject {
            let target = en.and_then(|e| e.requested_subject.as_ref().or(e.subject.as_ref()));
            let target_name = target.and_then(|u| u.username.clone()).unwrap_or_else(|| rsub.to_string());
            let exchanger_is_service = en.and_then(|e| e.exchanger.as_ref()).and_then(|c| c.service_accounts_enabled).unwrap_or(false);
            let verb = if success { "impersonated" } else { "tried to impersonate" };
            let mut flagged = false;
            if let Some(u) = target.filter(|u| u.privileged) {
                out.push(
                    "impersonation-privileged-target",
                    if success { Severity::Critical } else { Severity::High },
                    format!(
                        "{client} {verb} {target_name}, a privileged user ({}){}",
                        u.privileged_reason.as_deref().unwrap_or("privileged"),
                        te.impersonator.as_ref().map(|i| format!(", on behalf of {i}")).unwrap_or_else(|| ", with no impersonator recorded".into())
                    ),
                    vec![],
                );
                flagged = true;
            }
            let human_target = target.map(|u| !u.service_account).unwrap_or(true);
            if te.impersonator.is_none() && exchanger_is_service && human_target {
                out.push(
                    "naked-impersonation-service-client",
                    if success { Severity::High } else { Severity::Medium },
                    format!("service client {client} {verb} the human user {target_name} directly (no subject token, so no human actor is on record)"),
                    vec![],
                );
                flagged = true;
            }
            if cs.impersonation_first_ms.is_none() && !learning && !flagged {
                out.push("impersonation-first-by-client", Severity::Medium, format!("{client} {verb} {target_name}; it never impersonated anyone before"), vec![]);
            }
            if !late && cs.impersonation_first_ms.is_none() {
                cs.impersonation_first_ms = Some(t);
            }
        }

        // Subject-token origin client.
        if let Some(stc) = &te.subject_token_client_id {
            if success {
                if cs.origins.is_empty() || cs.origins.contains_key(stc.as_str()) {
                    // first origin ever is the baseline
                } else if established {
                    out.push("new-origin-client", Severity::Medium, format!("{client} exchanged a token first issued to {stc} for the first time; its subject tokens came only from {}", list(cs.origins.keys().cloned(), 4)), vec![]);
                }
                if !late {
                    slot(&mut cs.origins, stc, || state::Seen { first_ms: t, last_ms: t, novel: established }).last_ms = t;
                    if cs.upstream.as_deref() != Some(stc.as_str()) {
                        cs.upstream = Some(stc.to_string());
                    }
                }
            }
            if let Some(d) = upstream_depth {
                let before = d + 1; // the clients the token passed through before reaching this one
                if before + 1 > o.max_chain_hops + 1 {
                    out.push("multi-hop-chain", Severity::Low, format!("{client} exchanged a token that had already passed through {before} clients (last: {stc})"), vec![]);
                }
            }
        }
        if let Some(actor) = &te.actor {
            let depth = ev.details.get("delegation_chain_depth").and_then(|d| d.parse::<u32>().ok()).unwrap_or(1);
            if depth > 1 {
                out.push("multi-hop-chain", Severity::Low, format!("delegation chain of depth {depth} ending at {actor}"), vec![]);
            }
            out.push("delegated-exchange", Severity::Info, format!("{actor} acted on behalf of {} (experimental delegation)", ev.subject.username.as_deref().or(ev.subject.id.as_deref()).unwrap_or("a user")), vec![]);
        }

        // Link recent configuration changes on this client to anything notable.
        if let Some(p) = cs.precursor.as_ref().filter(|p| t - p.time_ms <= ms(o.precursor_window) && t >= p.time_ms) {
            for f in out.findings.iter_mut().filter(|f| f.severity >= Severity::Medium && f.rule != "exchange-config-change") {
                if !f.related_event_ids.contains(&p.event_id) {
                    f.related_event_ids.push(p.event_id.clone());
                }
            }
        }
    }

    if !late {
        if cs.first_ms == 0 || t < cs.first_ms {
            cs.first_ms = t;
        }
        cs.events += 1;
        if own_call {
            cs.last_ms = cs.last_ms.max(t);
            if ev.time.is_some() {
                cs.hours[hour] += 1;
            }
        }
    }
}

#[cfg(test)]
mod network_tests {
    use super::network;
    use std::net::IpAddr;

    /// The hand-written IPv4 form must equal what `Ipv4Addr`'s Display gives (the state keys and the
    /// finding text were written that way before, and persisted state must still match).
    #[test]
    fn network_text_matches_the_standard_display() {
        let mut buf = [0u8; 64];
        for (ip, v4, v6, want) in [
            ("203.0.113.77", 24, 64, "203.0.113.0/24"),
            ("10.1.2.3", 8, 64, "10.0.0.0/8"),
            ("255.255.255.255", 32, 64, "255.255.255.255/32"),
            ("0.0.0.0", 0, 64, "0.0.0.0/0"),
            ("192.168.100.9", 5, 64, "192.0.0.0/5"),
            ("2001:db8:1:2:3:4:5:6", 24, 64, "2001:db8:1:2::/64"),
            ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", 24, 128, "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff/128"),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(network(&ip, v4, v6, &mut buf), want);
        }
        for n in [0u32, 1, 9, 10, 99, 100, 101, 199, 200, 255, 0x0a0b0c0d, 0xfffefdfc, 0x01020304] {
            let a = std::net::Ipv4Addr::from(n);
            assert_eq!(network(&IpAddr::V4(a), 32, 64, &mut buf), format!("{a}/32"));
        }
    }
}
