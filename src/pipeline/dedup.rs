//! Deduplication by event id within a bounded window.
//!
//! Keycloak listeners deliver at most once, but webhook senders retry (p2-inc for up to 15 minutes)
//! and Kafka redelivers after a rebalance. Keycloak mints a fresh UUID per emitted event, so the id is
//! the key (never p2-inc's `uid`, which is per delivery). The window is measured in *event time* and
//! bounded in entries, so memory is bounded and a replay of the same input gives the same decisions
//! regardless of how fast it runs.

use std::collections::VecDeque;

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

/// A remembered id in 16 bytes, with no allocation. Keycloak mints lowercase UUIDs (and derived ids
/// are UUIDs too): those are kept as their own 16 bytes, exactly. Only the canonical lowercase
/// hyphenated form is packed, so two different strings never map to the same UUID. Any other id is
/// kept as a 128-bit hash keyed at random per process: two different ids share a key with
/// probability ~2^-128 per pair, and a sender cannot choose ids that collide, because it does not
/// know the key. (Kept as text, such ids cost an allocation each, and every slot the size of the
/// larger variant.)
type Key = [u64; 2];

/// `id` as a UUID when it is one in Keycloak's canonical spelling.
fn packed_uuid(id: &str) -> Option<uuid::Uuid> {
    if id.len() == 36 && !id.bytes().any(|b| b.is_ascii_uppercase()) {
        return uuid::Uuid::try_parse(id).ok();
    }
    None
}

/// One remembered id, in arrival order: 32 bytes.
#[derive(Clone, Copy)]
struct Slot {
    key: Key,
    fingerprint: u64,
    t: i64,
}

/// Slots per chunk of the arrival queue: 128 KiB.
const CHUNK: usize = 4096;

/// The arrival queue, in fixed chunks: it grows and shrinks a chunk at a time, so a full window
/// holds no doubling slack and growing it never copies it (a `VecDeque` of a million 40-byte slots
/// kept up to twice that, and held old and new buffers at once while it grew).
#[derive(Default)]
struct Slots {
    chunks: VecDeque<Vec<Slot>>,
    /// Slots already popped from the front chunk.
    head: usize,
    len: usize,
    /// One emptied chunk kept for the next push, so a steady window does not free and allocate a
    /// chunk every 4,096 events.
    spare: Option<Vec<Slot>>,
}

impl Slots {
    fn get(&self, i: usize) -> &Slot {
        let p = self.head + i;
        &self.chunks[p / CHUNK][p % CHUNK]
    }

    fn front(&self) -> Option<&Slot> {
        (self.len > 0).then(|| self.get(0))
    }

    fn push_back(&mut self, slot: Slot) {
        if self.chunks.back().is_none_or(|c| c.len() == CHUNK) {
            let chunk = self.spare.take().unwrap_or_else(|| Vec::with_capacity(CHUNK));
            self.chunks.push_back(chunk);
        }
        self.chunks.back_mut().expect("a chunk with room").push(slot);
        self.len += 1;
    }

    fn pop_front(&mut self) {
        if self.len == 0 {
            return;
        }
        self.len -= 1;
        self.head += 1;
        if self.head == CHUNK || self.len == 0 {
            let mut done = self.chunks.pop_front().expect("the front chunk");
            done.clear();
            self.spare = Some(done);
            self.head = 0;
        }
    }
}

/// The slot numbered `seq` when the front slot is numbered `first` (a free function: the index's
/// closures need it while the index itself is borrowed mutably).
fn slot_at(slots: &Slots, first: u32, seq: u32) -> &Slot {
    slots.get(seq.wrapping_sub(first) as usize)
}

/// The window is one queue of slots in arrival order (eviction pops its front) and a hash index of
/// the queue positions of the ids remembered. Each id is stored once, in its slot; the index holds a
/// 4-byte position. That is ~41-45 bytes per remembered id (issue #9: a map of id → data beside a
/// queue of ids took ~120, so the default million ids were ~120 MiB; 40-byte slots in a `VecDeque`
/// ~48-50; now ~43 MiB for a million, `cargo bench --bench steps -- dedup`).
pub struct Dedup {
    window_ms: i64,
    max_entries: usize,
    slots: Slots,
    /// Sequence number of the front slot; a slot's number is `first + its position` (wrapping, so
    /// at most `u32::MAX` slots: `max_entries` is capped below that).
    first: u32,
    /// Sequence numbers of the slots whose id is remembered (a forgotten id's slot stays queued until
    /// it is evicted, but leaves the index).
    index: HashTable<u32>,
    /// Keyed (random per process), so ids chosen by a sender cannot collide on purpose: `hasher`
    /// places keys in the index, `text_keys` turns ids that are not UUIDs into keys.
    hasher: ahash::RandomState,
    text_keys: [ahash::RandomState; 2],
    newest_ms: i64,
}

impl Dedup {
    pub fn new(window_secs: u64, max_entries: usize) -> Self {
        Dedup {
            window_ms: (window_secs as i64).saturating_mul(1000),
            max_entries: max_entries.clamp(1, u32::MAX as usize / 2),
            slots: Slots::default(),
            first: 0,
            index: HashTable::new(),
            hasher: ahash::RandomState::new(),
            text_keys: [ahash::RandomState::new(), ahash::RandomState::new()],
            newest_ms: i64::MIN,
        }
    }

    fn key(&self, id: &str) -> Key {
        match packed_uuid(id) {
            Some(u) => u.as_u64_pair().into(),
            None => [self.text_keys[0].hash_one(id), self.text_keys[1].hash_one(id)],
        }
    }

    pub fn check(&mut self, ev: &AuditEvent) -> Verdict {
        let fp = ev.content_fingerprint();
        let t = ev.time.map(|t| t.timestamp_millis()).unwrap_or(self.newest_ms.max(0));
        let key = self.key(&ev.id);
        let hash = self.hasher.hash_one(&key);
        let (slots, first) = (&self.slots, self.first);
        if let Some(&seq) = self.index.find(hash, |&seq| slot_at(slots, first, seq).key == key) {
            return if slot_at(slots, first, seq).fingerprint == fp { Verdict::Duplicate } else { Verdict::Conflict };
        }
        self.newest_ms = self.newest_ms.max(t);
        let seq = self.first.wrapping_add(self.slots.len as u32);
        self.slots.push_back(Slot { key, fingerprint: fp, t });
        let (slots, first, hasher) = (&self.slots, self.first, &self.hasher);
        self.index.insert_unique(hash, seq, |&s| hasher.hash_one(&slot_at(slots, first, s).key));
        self.evict();
        Verdict::New
    }

    /// Forget an id whose delivery failed, so the sender's retry is not mistaken for a duplicate.
    pub fn forget(&mut self, id: &str) {
        let key = self.key(id);
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
            if self.slots.len <= self.max_entries && front.t >= horizon {
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
        // A burst that was evicted leaves index capacity behind (the queue gives its chunks back as it
        // drains): give it back once it is mostly unused.
        if self.index.capacity() > CHUNK && self.index.len() < self.index.capacity() / 4 {
            let (slots, first, hasher) = (&self.slots, self.first, &self.hasher);
            self.index.shrink_to(self.index.len(), |&s| hasher.hash_one(slot_at(slots, first, s).key));
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
        assert!(packed_uuid(id).is_some());
        for other in ["0F8B6C1E-3D7A-4B2E-9C4F-1A2B3C4D5E6F", "0f8b6c1e3d7a4b2e9c4f1a2b3c4d5e6f", "{0f8b6c1e-3d7a-4b2e-9c4f-1a2b3c4d5e6f}", "not-a-uuid-but-thirty-six-characters"] {
            assert!(packed_uuid(other).is_none(), "{other}");
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

    fn ids(n: usize) -> Vec<String> {
        // Packed UUIDs, their other spellings (hashed text keys) and plain text, mixed.
        (0..n)
            .map(|i| match i % 4 {
                0 | 1 => format!("0f8b6c1e-3d7a-4b2e-9c4f-{i:012x}"),
                2 => format!("0F8B6C1E-3D7A-4B2E-9C4F-{:012X}", i - 2),
                _ => format!("id-{i}"),
            })
            .collect()
    }

    fn op(ids: usize) -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..ids, 0..40i64, proptest::bool::weighted(0.2)).prop_map(|(id, t, forged)| Op::Check { id, t: t * 1000, forged }),
            1 => (0..ids).prop_map(Op::Forget),
        ]
    }

    fn run(ids: &[String], ops: Vec<Op>, window: u64, max: usize) -> Result<(), TestCaseError> {
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
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn matches_the_plain_model(ops in proptest::collection::vec(op(12), 1..300), window in 1..30u64, max in 1..10usize) {
            run(&ids(12), ops, window, max)?;
        }
    }

    // Windows of thousands of ids, so the queue grows, drains (to empty, when event time jumps past
    // the window) and regrows across its 4,096-slot chunks.
    proptest! {
        #![proptest_config(ProptestConfig::with_cases(6))]
        #[test]
        fn matches_the_plain_model_across_chunks(ops in proptest::collection::vec(op(12_000), 20_000..40_000), window in 1..30u64, max in 3_000..10_000usize) {
            run(&ids(12_000), ops, window, max)?;
        }
    }
}
