//! Detection state: per realm, per client baselines and sliding windows, all keyed on event time.
//!
//! One serialisable value, so it can be persisted (redb, `store.rs`), exported and imported
//! (`kcaudit state`), and compared in tests. Memory is bounded by construction: windows are pruned as
//! time advances, hourly volumes keep two weeks, and per-client maps grow only with distinct
//! audiences, networks and origins, which are few per client.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::event::Text;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Newest event time seen (ms), the reference for lateness.
    pub newest_ms: i64,
    /// Event time of the last pass that dropped clients unseen for the retention period.
    #[serde(default)]
    pub pruned_ms: i64,
    pub realms: BTreeMap<String, RealmState>,
}

/// A realm's clients, by clientId. Hashed, not ordered: it is looked up several times per event (the
/// client itself, its subject token's chain of origin clients) and a search through hundreds of
/// clients' ids was the detector's largest cost (issue #9). Nothing depends on its order; aHash's
/// random seed keeps attacker-chosen clientIds (failed client authentication) from colliding on purpose.
pub type ClientMap = std::collections::HashMap<String, ClientState, ahash::RandomState>;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RealmState {
    /// First event time seen in the realm: the learning period starts here.
    pub first_ms: i64,
    pub clients: ClientMap,
    /// Recent TOKEN_EXCHANGE_ERROR per source address: (time, event id, clientId).
    pub ip_errors: BTreeMap<String, VecDeque<(i64, String, String)>>,
    /// Users recently impersonated through token exchange: user id → (time, event id, clientId).
    #[serde(default)]
    pub impersonated: BTreeMap<String, (i64, String, String)>,
}

/// When something was first seen, and whether it was new at that time (after the baseline was
/// established), which keeps the follow-up events of a novelty visible for the novelty window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Seen {
    pub first_ms: i64,
    /// Last use; entries unused for `detect.baseline_retention` expire.
    #[serde(default)]
    pub last_ms: i64,
    pub novel: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Precursor {
    pub time_ms: i64,
    pub event_id: String,
    pub what: String,
    pub audience: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientState {
    pub first_ms: i64,
    pub last_ms: i64,
    pub events: u64,
    /// Audiences obtained (successful exchanges).
    pub audiences: BTreeMap<String, Seen>,
    /// Subject-token origin clients.
    pub origins: BTreeMap<String, Seen>,
    /// The latest origin: the hop behind this client's tokens, for chain depth.
    pub upstream: Option<String>,
    /// Networks (prefixes) called from.
    pub networks: BTreeMap<String, Seen>,
    /// Events per hour of day (UTC).
    pub hours: [u64; 24],
    pub impersonation_first_ms: Option<i64>,
    /// Recent failed exchanges: (time, event id).
    pub errors: VecDeque<(i64, String)>,
    /// Recent audiences asked for: (time, audience, event id). The audience is `Text` (inline when
    /// short, as client ids are): one allocation less per event; stored as the same JSON string.
    pub asked: VecDeque<(i64, Text, String)>,
    /// How often each audience occurs in `asked` (its length is the distinct count, kept in step
    /// with the window so spraying is not re-counted per event).
    #[serde(default)]
    pub asked_counts: BTreeMap<String, u32>,
    /// Hourly volume: the current hour bucket, its count, and the last two weeks of counts.
    pub hour_bucket: i64,
    pub hour_count: u64,
    pub hourly: VecDeque<u64>,
    pub volume_flagged_bucket: Option<i64>,
    /// The latest token-exchange configuration change on this client.
    pub precursor: Option<Precursor>,
    /// Event time of the last expiry pass over this client's maps.
    #[serde(default)]
    pub pruned_ms: i64,
    /// Changed since the last save (not persisted).
    #[serde(skip)]
    pub dirty: bool,
}

impl ClientState {
    /// Forget audiences, networks and origins unused since `horizon` (event time).
    pub fn expire(&mut self, horizon: i64) {
        self.audiences.retain(|_, s| s.last_ms.max(s.first_ms) >= horizon);
        self.networks.retain(|_, s| s.last_ms.max(s.first_ms) >= horizon);
        self.origins.retain(|_, s| s.last_ms.max(s.first_ms) >= horizon);
    }
}

impl State {
    /// Forget clients unseen since `horizon` and IP windows that emptied.
    pub fn expire(&mut self, horizon: i64) -> usize {
        let mut dropped = 0;
        for r in self.realms.values_mut() {
            let before = r.clients.len();
            r.clients.retain(|_, c| c.last_ms >= horizon);
            dropped += before - r.clients.len();
            r.ip_errors.retain(|_, w| w.back().is_some_and(|(t, _, _)| *t >= horizon));
        }
        dropped
    }

    /// Rough size in bytes of the serialised state (for `state inspect` and the benchmark).
    pub fn approx_bytes(&self) -> usize {
        serde_json::to_vec(self).map(|v| v.len()).unwrap_or(0)
    }

    /// Distinct keys: (realm, client, audience/network/origin) entries.
    pub fn key_count(&self) -> usize {
        self.realms.values().flat_map(|r| r.clients.values()).map(|c| 1 + c.audiences.len() + c.networks.len() + c.origins.len()).sum()
    }
}
