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

pub struct Dedup {
    window_ms: i64,
    max_entries: usize,
    // One shared copy of each id for the map and the eviction queue (an `Arc<str>`, not two `String`s:
    // one allocation per event instead of two, and less memory per remembered id).
    seen: AHashMap<Arc<str>, (u64, i64)>,
    order: VecDeque<(Arc<str>, i64)>,
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
        if let Some((old_fp, _)) = self.seen.get(ev.id.as_str()) {
            return if *old_fp == fp { Verdict::Duplicate } else { Verdict::Conflict };
        }
        self.newest_ms = self.newest_ms.max(t);
        let id: Arc<str> = Arc::from(ev.id.as_str());
        self.seen.insert(id.clone(), (fp, t));
        self.order.push_back((id, t));
        self.evict();
        Verdict::New
    }

    /// Forget an id whose delivery failed, so the sender's retry is not mistaken for a duplicate.
    pub fn forget(&mut self, id: &str) {
        self.seen.remove(id);
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
            if self.seen.get(&**id).is_some_and(|(_, st)| st == t) {
                self.seen.remove(&**id);
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
}
