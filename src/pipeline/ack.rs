//! End-to-end acknowledgements.
//!
//! Every accepted event travels to every sink with an [`AckToken`]. A sink resolves the token once the
//! event is durably written, or durably dead-lettered, or when it cannot do either. When every token of
//! a batch is resolved, the batch's completion runs and the source learns the fate of each event (the
//! HTTP response is sent then; Kafka offsets will be committed then). A token dropped without being
//! resolved (a sink task died) resolves itself as a failure, so a source can never wait forever and a
//! lost event is never reported as delivered.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What a sink did with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkResult {
    Delivered,
    /// Refused by the sink (or retries exhausted) and written to the dead-letter store.
    DeadLettered(String),
    /// Neither delivered nor dead-lettered: the source must not acknowledge it.
    Failed(String),
}

/// The combined fate of one event across all sinks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFate {
    /// (sink, reason) for each sink that dead-lettered the event.
    pub dead_lettered: Vec<(String, String)>,
    /// (sink, reason) for each sink that could neither deliver nor dead-letter it.
    pub failed: Vec<(String, String)>,
}

type Completion = Box<dyn FnOnce(Vec<EventFate>) + Send>;

pub struct AckGroup {
    remaining: AtomicUsize,
    fates: Mutex<Vec<EventFate>>,
    on_done: Mutex<Option<Completion>>,
}

impl AckGroup {
    /// A group for `events` events each going to `sinks` sinks. With nothing to wait for, `on_done`
    /// runs at once.
    pub fn new(events: usize, sinks: usize, on_done: Completion) -> Arc<Self> {
        let g = Arc::new(AckGroup {
            remaining: AtomicUsize::new(events * sinks),
            fates: Mutex::new(vec![EventFate::default(); events]),
            on_done: Mutex::new(Some(on_done)),
        });
        if events * sinks == 0 {
            g.complete();
        }
        g
    }

    pub fn token(self: &Arc<Self>, index: usize, sink: &Arc<str>) -> AckToken {
        AckToken { group: Some(self.clone()), index, sink: sink.clone() }
    }

    fn resolve(&self, index: usize, sink: &str, result: SinkResult) {
        // A delivery changes no fate (the common case takes no lock).
        let entry = match result {
            SinkResult::Delivered => None,
            SinkResult::DeadLettered(r) => Some((false, r)),
            SinkResult::Failed(r) => Some((true, r)),
        };
        if let Some((failed, reason)) = entry {
            if let Some(f) = self.fates.lock().ok().as_mut().and_then(|fates| fates.get_mut(index)) {
                let list = if failed { &mut f.failed } else { &mut f.dead_lettered };
                list.push((sink.to_string(), reason));
            }
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.complete();
        }
    }

    fn complete(&self) {
        let done = self.on_done.lock().ok().and_then(|mut d| d.take());
        if let Some(done) = done {
            let fates = self.fates.lock().map(|mut f| std::mem::take(&mut *f)).unwrap_or_default();
            done(fates);
        }
    }
}

/// One event's acknowledgement for one sink.
pub struct AckToken {
    group: Option<Arc<AckGroup>>,
    index: usize,
    sink: Arc<str>,
}

impl AckToken {
    pub fn resolve(mut self, result: SinkResult) {
        if let Some(g) = self.group.take() {
            g.resolve(self.index, &self.sink, result);
        }
    }
}

impl Drop for AckToken {
    fn drop(&mut self) {
        if let Some(g) = self.group.take() {
            g.resolve(self.index, &self.sink, SinkResult::Failed("the sink stopped before acknowledging the event".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_once_when_every_token_resolves() {
        let (tx, rx) = std::sync::mpsc::channel();
        let g = AckGroup::new(2, 2, Box::new(move |f| tx.send(f).unwrap()));
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        g.token(0, &a).resolve(SinkResult::Delivered);
        g.token(0, &b).resolve(SinkResult::DeadLettered("refused".into()));
        g.token(1, &a).resolve(SinkResult::Delivered);
        assert!(rx.try_recv().is_err(), "one token still outstanding");
        drop(g.token(1, &b)); // a sink that died
        let fates = rx.try_recv().unwrap();
        assert_eq!(fates[0].dead_lettered, vec![("b".to_string(), "refused".to_string())]);
        assert_eq!(fates[1].failed.len(), 1);
        assert!(rx.try_recv().is_err(), "completion runs exactly once");
    }

    #[test]
    fn empty_group_completes_immediately() {
        let (tx, rx) = std::sync::mpsc::channel();
        let _g = AckGroup::new(0, 3, Box::new(move |f| tx.send(f.len()).unwrap()));
        assert_eq!(rx.try_recv().unwrap(), 0);
    }
}
