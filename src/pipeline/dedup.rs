//! Deduplication by event id within a bounded window.
//!
//! Keycloak listeners deliver at most once, but webhook senders retry (p2-inc for up to 15 minutes)
//! and Kafka redelivers after a rebalance. Keycloak mints a fresh UUID per emitted event, so the id is
//! the key (never p2-inc's `uid`, which is per delivery). The window is measured in *event time* and
//! bounded in entries, so memory is bounded and a replay of the same input gives the same decisions
//! regardless of how fast it runs.

use std::collections::VecDeque;
use std::sync::Arc;

use hashbrown::HashTable;

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
/// their 16 bytes, with no allocation, which is most of the window's memory. Anything else is kept as
/// shared text. Only the canonical lowercase hyphenated form is packed, so two different strings
/// never map to the same key.
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

/// One remembered id, in arrival order: 40 bytes.
struct Slot {
    key: Key,
    fingerprint: u64,
    t: i64,
}

/// The slot numbered `seq` when `slots[0]` is numbered `first` (a free function: the index's
/// closures need it while the index itself is borrowed mutably).
fn slot_at(slots: &VecDeque<Slot>, first: u32, seq: u32) -> &Slot {
    &slots[seq.wrapping_sub(first) as usize]
}

/// The window is one queue of slots in arrival order (eviction pops its front) and a hash index of
/// the queue positions of the ids remembered. Each id is stored once, in its slot; the index holds a
/// 4-byte position. That is ~50 bytes per remembered id (issue #9: a map of id → data beside a queue
/// of ids took ~120, so the default million ids were ~120 MiB; now ~50 MiB).
pub struct Dedup {
    window_ms: i64,
    max_entries: usize,
    slots: VecDeque<Slot>,
    /// Sequence number of `slots[0]`; a slot's number is `first + its index` (wrapping, so at most
    /// `u32::MAX` slots: `max_entries` is capped below that).
    first: u32,
    /// Sequence numbers of the slots whose id is remembered (a forgotten id's slot stays queued until
    /// it is evicted, but leaves the index).
    index: HashTable<u32>,
    /// Keyed (random per process), so ids chosen by a sender cannot collide on purpose.
    hasher: ahash::RandomState,
    newest_ms: i64,
}

impl Dedup {
    pub fn new(window_secs: u64, max_entries: usize) -> Self {
        Dedup {
            window_ms: (window_secs as i64).saturating_mul(1000),
            max_entries: max_entries.clamp(1, u32::MAX as usize / 2),
            slots: VecDeque::new(),
            first: 0,
            index: HashTable::new(),
            hasher: ahash::RandomState::new(),
            newest_ms: i64::MIN,
        }
    }

    pub fn check(&mut self, ev: &AuditEvent) -> Verdict {
        let fp = ev.content_fingerprint();
        let t = ev.time.map(|t| t.timestamp_millis()).unwrap_or(self.newest_ms.max(0));
        let key = Key::of(&ev.id);
        let hash = self.hasher.hash_one(&key);
        let (slots, first) = (&self.slots, self.first);
        if let Some(&seq) = self.index.find(hash, |&seq| slot_at(slots, first, seq).key == key) {
            return if slot_at(slots, first, seq).fingerprint == fp { Verdict::Duplicate } else { Verdict::Conflict };
        }
        self.newest_ms = self.newest_ms.max(t);
        let seq = self.first.wrapping_add(self.slots.len() as u32);
        self.slots.push_back(Slot { key, fingerprint: fp, t });
        let (slots, first, hasher) = (&self.slots, self.first, &self.hasher);
        self.index.insert_unique(hash, seq, |&s| hasher.hash_one(&slot_at(slots, first, s).key));
        self.evict();
        Verdict::New
    }

    /// Forget an id whose delivery failed, so the sender's retry is not mistaken for a duplicate.
    pub fn forget(&mut self, id: &str) {
        let key = Key::of(id);
        let (slots, first) = (&self.slots, self.first);
        if let Ok(entry) = self.index.find_entry(self.hasher.hash_one(&key), |&seq| slot_at(slots, first, seq).key == key) {
            entry.remove();
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn evict(&mut self) {
        let horizon = self.newest_ms.saturating_sub(self.window_ms);
        while let Some(front) = self.slots.front() {
            if self.slots.len() <= self.max_entries && front.t >= horizon {
                break;
            }
            // The index entry goes only if it is this slot's (an id forgotten and seen again has a
            // newer slot further back).
            let seq = self.first;
            if let Ok(entry) = self.index.find_entry(self.hasher.hash_one(&front.key), |&s| s == seq) {
                entry.remove();
            }
            self.slots.pop_front();
            self.first = self.first.wrapping_add(1);
        }
        // A burst that was evicted leaves capacity behind: give it back once it is mostly unused.
        if self.slots.capacity() > 4096 && self.slots.len() < self.slots.capacity() / 4 {
            self.slots.shrink_to(self.slots.len() * 2);
            let (slots, first, hasher) = (&self.slots, self.first, &self.hasher);
            self.index.shrink_to(self.index.len(), |&s| hasher.hash_one(&slot_at(slots, first, s).key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::*;

    pub(super) fn ev(id: &str, ms: i64, client: &str) -> AuditEvent {
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

/// The window against a plain model (a map of id → content and arrival, beside a queue of arrivals,
/// which is what the packed queue + index replaced): any sequence of checks, forgets, time jumps and
/// entry-bound evictions gives the same verdicts and the same size. The model numbers its arrivals:
/// the replaced code matched a queue slot to its map entry by event time, so an id forgotten and
/// seen again with the same time lost its new entry when its old slot was evicted (this test found
/// that; the sequence numbers fixed it).
#[cfg(test)]
mod model {
    use std::collections::{HashMap, VecDeque};

    use proptest::prelude::*;

    use super::tests::ev;
    use super::{Dedup, Verdict};

    struct Model {
        window_ms: i64,
        max_entries: usize,
        /// id → (content: client and time, arrival number)
        seen: HashMap<String, ((String, i64), u64)>,
        /// (id, arrival number, event time)
        order: VecDeque<(String, u64, i64)>,
        arrivals: u64,
        newest_ms: i64,
    }

    impl Model {
        fn check(&mut self, id: &str, t: i64, client: &str) -> Verdict {
            if let Some((content, _)) = self.seen.get(id) {
                return if *content == (client.to_string(), t) { Verdict::Duplicate } else { Verdict::Conflict };
            }
            self.newest_ms = self.newest_ms.max(t);
            self.arrivals += 1;
            self.seen.insert(id.to_string(), ((client.to_string(), t), self.arrivals));
            self.order.push_back((id.to_string(), self.arrivals, t));
            let horizon = self.newest_ms.saturating_sub(self.window_ms);
            while let Some((front, arrival, ft)) = self.order.front() {
                if self.order.len() <= self.max_entries && *ft >= horizon {
                    break;
                }
                if self.seen.get(front).is_some_and(|(_, a)| a == arrival) {
                    self.seen.remove(front);
                }
                self.order.pop_front();
            }
            Verdict::New
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Check { id: usize, t: i64, forged: bool },
        Forget(usize),
    }

    fn ids() -> Vec<String> {
        // Packed UUIDs, their other spellings (text keys) and plain text, mixed.
        let mut v: Vec<String> = (0..6).map(|i| format!("0f8b6c1e-3d7a-4b2e-9c4f-1a2b3c4d5e{i:02x}")).collect();
        v.extend((0..3).map(|i| format!("0F8B6C1E-3D7A-4B2E-9C4F-1A2B3C4D5E{i:02X}")));
        v.extend(["a", "b", "c"].map(String::from));
        v
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..12usize, 0..40i64, proptest::bool::weighted(0.2)).prop_map(|(id, t, forged)| Op::Check { id, t: t * 1000, forged }),
            1 => (0..12usize).prop_map(Op::Forget),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn matches_the_plain_model(ops in proptest::collection::vec(op(), 1..300), window in 1..30u64, max in 1..10usize) {
            let ids = ids();
            let mut d = Dedup::new(window, max);
            let mut m = Model { window_ms: window as i64 * 1000, max_entries: max, seen: HashMap::new(), order: VecDeque::new(), arrivals: 0, newest_ms: i64::MIN };
            for op in ops {
                match op {
                    Op::Check { id, t, forged } => {
                        let client = if forged { "forged" } else { "x" };
                        prop_assert_eq!(d.check(&ev(&ids[id], t, client)), m.check(&ids[id], t, client));
                    }
                    Op::Forget(id) => {
                        d.forget(&ids[id]);
                        m.seen.remove(&ids[id]);
                    }
                }
                prop_assert_eq!(d.len(), m.seen.len());
            }
        }
    }
}
