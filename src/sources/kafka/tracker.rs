//! Which Kafka offsets may be committed: per partition, only the **contiguous** prefix of records whose
//! events every sink accepted or dead-lettered. A record N that is still pending (or being retried)
//! holds the commit at N even if N+1..N+100 are done, so a crash can never skip it (Vector's bugs
//! #24215 and #24543 committed past failed records).
//!
//! Offsets here are Kafka's: the commit point is the offset of the next record to read (the first
//! record not yet done), which is exactly what a consumer group commit stores. No "+1" arithmetic is
//! left to the client library.

use std::collections::{BTreeMap, HashMap};

/// A topic partition.
pub type Tp = (String, i32);

#[derive(Debug, Default)]
struct Partition {
    /// Offsets read and not yet committable: offset → done.
    pending: BTreeMap<i64, bool>,
    /// The highest offset ever tracked + 1 (what to commit when nothing is pending).
    next: Option<i64>,
    /// The last commit point handed out.
    committed: Option<i64>,
    /// How many of `pending` are not done. Kept as a count: the consume loop asks for the total
    /// before every batch, and counting `pending` (which holds up to a commit interval of done
    /// records) was 4 % of the Kafka path's CPU (issue #9).
    in_flight: usize,
}

#[derive(Debug, Default)]
pub struct OffsetTracker {
    parts: HashMap<Tp, Partition>,
}

impl OffsetTracker {
    /// A record was read and handed to the pipeline.
    pub fn track(&mut self, tp: &Tp, offset: i64) {
        let p = self.parts.entry(tp.clone()).or_default();
        if p.pending.insert(offset, false) != Some(false) {
            p.in_flight += 1;
        }
        p.next = Some(p.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// Every event of the record is delivered or dead-lettered.
    pub fn done(&mut self, tp: &Tp, offset: i64) {
        if let Some(p) = self.parts.get_mut(tp) {
            if let Some(v) = p.pending.get_mut(&offset) {
                if !*v {
                    *v = true;
                    p.in_flight -= 1;
                }
            }
        }
    }

    /// Records of `tp` read but not yet done.
    pub fn in_flight(&self, tp: &Tp) -> usize {
        self.parts.get(tp).map_or(0, |p| p.in_flight)
    }

    /// All records in flight.
    pub fn total_in_flight(&self) -> usize {
        self.parts.values().map(|p| p.in_flight).sum()
    }

    /// The offsets to commit now (only partitions whose commit point moved): the first not-done
    /// offset, or one past the last record when all are done.
    pub fn commit_points(&mut self) -> Vec<(Tp, i64)> {
        let mut out = Vec::new();
        for (tp, p) in &mut self.parts {
            while let Some((&o, &done)) = p.pending.first_key_value() {
                if !done {
                    break;
                }
                p.pending.remove(&o);
            }
            let point = match p.pending.first_key_value() {
                Some((&o, _)) => Some(o),
                None => p.next,
            };
            if let Some(point) = point {
                if p.committed != Some(point) {
                    p.committed = Some(point);
                    out.push((tp.clone(), point));
                }
            }
        }
        out.sort();
        out
    }

    /// The partitions were revoked: forget them (their records' late completions are ignored).
    pub fn forget(&mut self, tps: &[Tp]) {
        for tp in tps {
            self.parts.remove(tp);
        }
    }

    /// The commit point of one partition without consuming it (for tests and the lag metric).
    pub fn position(&self, tp: &Tp) -> Option<i64> {
        let p = self.parts.get(tp)?;
        p.pending.iter().find(|(_, d)| !**d).map(|(o, _)| *o).or(p.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp() -> Tp {
        ("events".to_string(), 0)
    }

    #[test]
    fn a_pending_record_holds_the_commit_however_many_later_ones_finish() {
        let mut t = OffsetTracker::default();
        for o in 10..=110 {
            t.track(&tp(), o);
        }
        t.done(&tp(), 10);
        for o in 12..=110 {
            t.done(&tp(), o);
        }
        assert_eq!(t.commit_points(), vec![(tp(), 11)], "record 11 is pending: commit stops at 11 (the next to read)");
        assert_eq!(t.in_flight(&tp()), 1);
        assert_eq!(t.commit_points(), vec![], "nothing moved");
        t.done(&tp(), 11);
        assert_eq!(t.commit_points(), vec![(tp(), 111)]);
        assert_eq!(t.total_in_flight(), 0);
    }

    #[test]
    fn gaps_in_offsets_compacted_topics_and_transactions_do_not_block() {
        let mut t = OffsetTracker::default();
        for o in [5, 9, 20] {
            t.track(&tp(), o);
            t.done(&tp(), o);
        }
        assert_eq!(t.commit_points(), vec![(tp(), 21)]);
    }

    /// A record read twice (redelivered after a retry or a rebalance) is one record in flight, and
    /// a revoked partition's records stop counting.
    #[test]
    fn in_flight_counts_each_record_once() {
        let mut t = OffsetTracker::default();
        t.track(&tp(), 3);
        t.track(&tp(), 3);
        t.track(&tp(), 4);
        assert_eq!(t.total_in_flight(), 2);
        t.done(&tp(), 3);
        t.done(&tp(), 3);
        assert_eq!(t.in_flight(&tp()), 1);
        t.track(&("other".into(), 0), 0);
        t.forget(&[tp()]);
        assert_eq!(t.total_in_flight(), 1);
    }

    #[test]
    fn partitions_are_independent_and_forgotten_on_revoke() {
        let mut t = OffsetTracker::default();
        let other: Tp = ("events".into(), 1);
        t.track(&tp(), 0);
        t.track(&other, 7);
        t.done(&other, 7);
        assert_eq!(t.commit_points(), vec![(tp(), 0), (other.clone(), 8)]);
        t.forget(&[tp()]);
        t.done(&tp(), 0);
        assert_eq!(t.position(&tp()), None);
        assert_eq!(t.position(&other), Some(8));
    }

    proptest::proptest! {
        /// Whatever order records finish in, the commit point never passes a record that is not done.
        #[test]
        fn never_commits_past_an_unfinished_record(order in proptest::collection::vec(0usize..50, 0..200)) {
            let mut t = OffsetTracker::default();
            for o in 0..50 { t.track(&tp(), o); }
            let mut done = [false; 50];
            for i in order {
                t.done(&tp(), i as i64);
                done[i] = true;
                // The in-flight count follows the truth, repeated completions included.
                proptest::prop_assert_eq!(t.total_in_flight(), done.iter().filter(|d| !**d).count());
                for (_, point) in t.commit_points() {
                    let first_open = done.iter().position(|d| !d).unwrap_or(50) as i64;
                    proptest::prop_assert_eq!(point, first_open);
                }
            }
        }
    }
}
