//! Deduplication by event id within a bounded window.
//!
//! Keycloak listeners deliver at most once, but webhook senders retry (p2-inc for up to 15 minutes)
//! and Kafka redelivers after a rebalance. Keycloak mints a fresh UUID per emitted event, so the id is
//! the key (never p2-inc's `uid`, which is per delivery). The window is measured in *event time* and
//! bounded in entries, so memory is bounded and a replay of the same input gives the same decisions
//! regardless of how fast it runs.

use std::collections::VecDeque;
use std::sync::Arc;

use ahash::AHashMap;

use crate::event::AuditEvent;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First time this id is seen in the window.
    New,
    /// Same id, same content: a redelivery.
    Duplicate,
    /// Same id, different content: first-wins; the repeat is flagged (and dead-lettered by the pipeline).
    Conflict,
}

/// A remembered id. Keycloak mints lowercase UUIDs (and derived ids are UUIDs too): those are kept as
/// their 16 bytes, with no allocation, which is most of the window's memory (issue #9: ~80 instead of
/// ~125 bytes per id). Anything else is kept as shared text. Only the canonical lowercase hyphenated
/// form is packed, so two different strings never map to the same key.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Uuid([u8; 16]),
    Text(Arc<str>),
}

impl Key {
    fn of(id: &str) -> Key {
        if id.len() == 36 && !id.bytes().any(|b| b.is_ascii_uppercase()) {
            if let Ok(u) = uuid::Uuid::try_parse(id) {
                return Key::Uuid(*u.as_bytes());
            }
        }
        Key::Text(Arc::from(id))
    }
}

pub struct Dedup {
    window_ms: i64,
    max_entries: usize,
    // One copy of each id serves the map and the eviction queue.
    seen: AHashMap<Key, (u64, i64)>,
    order: VecDeque<(Key, i64)>,
    newest_ms: i64,
}

impl Dedup {
    pub fn new(window_secs: u64, max_entries: usize) -> Self {
        Dedup {
            window_ms: (window_secs as i64).saturating_mul(1000),
            max_entries: max_entries.max(1),
            seen: AHashMap::new(),
            order: VecDeque::new(),
            newest_ms: i64::MIN,
        }
    }

    pub fn check(&mut self, ev: &AuditEvent) -> Verdict {
        let fp = ev.content_fingerprint();
        let t = ev.time.map(|t| t.timestamp_millis()).unwrap_or(self.newest_ms.max(0));
        let id = Key::of(&ev.id);
        if let Some((old_fp, _)) = self.seen.get(&id) {
            return if *old_fp == fp { Verdict::Duplicate } else { Verdict::Conflict };
        }
        self.newest_ms = self.newest_ms.max(t);
        self.seen.insert(id.clone(), (fp, t));
        self.order.push_back((id, t));
        self.evict();
        Verdict::New
    }

    /// Forget an id whose delivery failed, so the sender's retry is not mistaken for a duplicate.
    pub fn forget(&mut self, id: &str) {
        self.seen.remove(&Key::of(id));
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn evict(&mut self) {
        let horizon = self.newest_ms.saturating_sub(self.window_ms);
        while let Some((id, t)) = self.order.front() {
            if self.order.len() <= self.max_entries && *t >= horizon {
                break;
            }
            // Remove only when the map entry is the one this queue slot refers to (an id forgotten and
            // seen again has a newer slot further back).
            if self.seen.get(id).is_some_and(|(_, st)| st == t) {
                self.seen.remove(id);
            }
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::*;

    fn ev(id: &str, ms: i64, client: &str) -> AuditEvent {
        AuditEvent {
            schema_version: SCHEMA_VERSION,
            id: id.into(),
            id_derived: false,
            time: chrono::DateTime::from_timestamp_millis(ms),
            time_source: TimeSource::Event,
            received_at: None,
            kind: EventKind::User,
            event_type: "TOKEN_EXCHANGE".into(),
            outcome: Outcome::Success,
            error: None,
            realm: Realm::default(),
            client_id: Some(client.into()),
            subject: Subject::default(),
            session_id: None,
            ip_address: None,
            ip: None,
            token_exchange: None,
            details: Default::default(),
            admin: None,
            enrichment: None,
            findings: Vec::new(),
            severity: None,
            origin: Origin { input: "a".into(), ..Default::default() },
            warnings: vec![],
        }
    }

    #[test]
    fn repeats_and_conflicts() {
        let mut d = Dedup::new(3600, 100);
        assert_eq!(d.check(&ev("a", 1_000_000, "x")), Verdict::New);
        let mut redelivered = ev("a", 1_000_000, "x");
        redelivered.origin.input = "other-input".into();
        redelivered.realm.name = Some("listener-added".into());
        assert_eq!(d.check(&redelivered), Verdict::Duplicate, "origin and listener additions do not matter");
        assert_eq!(d.check(&ev("a", 1_000_000, "forged")), Verdict::Conflict);
        d.forget("a");
        assert_eq!(d.check(&ev("a", 1_000_000, "x")), Verdict::New);
    }

    #[test]
    fn window_is_bounded_in_time_and_entries() {
        let mut d = Dedup::new(10, 1000);
        d.check(&ev("old", 0, "x"));
        d.check(&ev("new", 20_000, "x"));
        assert_eq!(d.check(&ev("old", 0, "x")), Verdict::New, "outside the 10 s window");
        let mut d = Dedup::new(1_000_000, 3);
        for i in 0..10 {
            d.check(&ev(&i.to_string(), i, "x"));
        }
        assert_eq!(d.len(), 3);
        assert_eq!(d.check(&ev("9", 9, "x")), Verdict::Duplicate);
        assert_eq!(d.check(&ev("0", 0, "x")), Verdict::New);
    }

    /// Packed UUID keys behave like the text they came from: an uppercase or braced spelling of the
    /// same UUID is a different id (it is a different string from the sender), and forgetting works
    /// for packed and text ids alike.
    #[test]
    fn uuid_ids_are_packed_without_merging_different_spellings() {
        let id = "0f8b6c1e-3d7a-4b2e-9c4f-1a2b3c4d5e6f";
        assert!(matches!(Key::of(id), Key::Uuid(_)));
        for other in ["0F8B6C1E-3D7A-4B2E-9C4F-1A2B3C4D5E6F", "0f8b6c1e3d7a4b2e9c4f1a2b3c4d5e6f", "{0f8b6c1e-3d7a-4b2e-9c4f-1a2b3c4d5e6f}", "not-a-uuid-but-thirty-six-characters"] {
            assert!(matches!(Key::of(other), Key::Text(_)), "{other}");
        }
        let mut d = Dedup::new(3600, 100);
        assert_eq!(d.check(&ev(id, 1_000, "x")), Verdict::New);
        assert_eq!(d.check(&ev(&id.to_uppercase(), 1_000, "x")), Verdict::New, "another spelling is another id");
        assert_eq!(d.check(&ev(id, 1_000, "x")), Verdict::Duplicate);
        assert_eq!(d.check(&ev(id, 1_000, "forged")), Verdict::Conflict);
        d.forget(id);
        assert_eq!(d.check(&ev(id, 1_000, "x")), Verdict::New);
        d.forget(&id.to_uppercase());
        assert_eq!(d.check(&ev(&id.to_uppercase(), 1_000, "x")), Verdict::New);
        assert_eq!(d.len(), 2);
    }
}
