//! Per-aggregate ordering: the events of one aggregate are handled one at a time, in stream
//! order; events of different aggregates concurrently.
//!
//! A *lane* is the queue of one ordering key (the aggregate id). It runs at most one event at a
//! time. When that event fails and is to be delivered again, the lane is *blocked* on it: later
//! events of the aggregate wait until the retried event is back and handled (or the block's
//! deadline passes, if the server never delivers it again, e.g. it was deleted).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::time::Instant;

/// What to do with an event offered to its lane.
#[derive(Debug)]
pub(crate) enum Offer<T> {
    /// Handle it now.
    Run(T),
    /// It waits in its lane.
    Queued,
}

#[derive(Debug)]
struct Blocked {
    sequence: u64,
    /// When the server is to deliver it again.
    due: Instant,
    /// When to stop waiting for it.
    until: Instant,
}

/// An event of a lane that will be delivered again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retry {
    /// When the server is to deliver it again.
    pub(crate) due: Instant,
    /// When the lane stops waiting for it (it may have been deleted meanwhile).
    pub(crate) until: Instant,
}

#[derive(Debug)]
struct Lane<T> {
    /// The stream sequence being handled.
    active: Option<u64>,
    /// Waiting for this event to be delivered again.
    blocked: Option<Blocked>,
    /// Events waiting, by stream sequence.
    queue: BTreeMap<u64, T>,
}

impl<T> Lane<T> {
    fn new() -> Self {
        Self {
            active: None,
            blocked: None,
            queue: BTreeMap::new(),
        }
    }

    fn is_idle(&self) -> bool {
        self.active.is_none() && self.blocked.is_none() && self.queue.is_empty()
    }

    /// Starts the first waiting event if the lane is free.
    fn start_next(&mut self) -> Option<(u64, T)> {
        if self.active.is_some() || self.blocked.is_some() {
            return None;
        }
        let (sequence, item) = self.queue.pop_first()?;
        self.active = Some(sequence);
        Some((sequence, item))
    }
}

/// A lane unblocked by [`Lanes::expire`]: its key, the sequence it waited for, and its next
/// event to handle.
pub(crate) type Expired<T> = (Arc<str>, u64, Option<(u64, T)>);

/// A lane taken out at shutdown by [`Lanes::take_not_running`]: when its retried event is due
/// again (if it waits for one), and its waiting events in stream order.
pub(crate) type Stopped<T> = (Option<Instant>, Vec<(u64, T)>);

/// The lanes of one consumer, by ordering key.
#[derive(Debug)]
pub(crate) struct Lanes<T> {
    lanes: HashMap<Arc<str>, Lane<T>>,
}

impl<T> Default for Lanes<T> {
    fn default() -> Self {
        Self {
            lanes: HashMap::new(),
        }
    }
}

impl<T> Lanes<T> {
    /// Offers a delivered event to its lane.
    pub(crate) fn offer(&mut self, key: Arc<str>, sequence: u64, item: T) -> Offer<T> {
        let lane = self.lanes.entry(key).or_insert_with(Lane::new);
        if let Some(blocked) = &lane.blocked {
            if blocked.sequence == sequence && lane.active.is_none() {
                lane.blocked = None;
                lane.active = Some(sequence);
                return Offer::Run(item);
            }
        }
        lane.queue.insert(sequence, item);
        match lane.start_next() {
            Some((_, item)) => Offer::Run(item),
            None => Offer::Queued,
        }
    }

    /// The event `sequence` of lane `key` is done; with `retry`, it will be delivered again and
    /// the lane waits for it. Returns the lane's next event to handle.
    pub(crate) fn finish(
        &mut self,
        key: &Arc<str>,
        sequence: u64,
        retry: Option<Retry>,
    ) -> Option<(u64, T)> {
        let lane = self.lanes.get_mut(key)?;
        if lane.active == Some(sequence) {
            lane.active = None;
        }
        if let Some(retry) = retry {
            // Delivered again before its handler had even returned: run it at once.
            if let Some(item) = lane.queue.remove(&sequence) {
                lane.active = Some(sequence);
                return Some((sequence, item));
            }
            lane.blocked = Some(Blocked {
                sequence,
                due: retry.due,
                until: retry.until,
            });
            return None;
        }
        let next = lane.start_next();
        if lane.is_idle() {
            self.lanes.remove(key);
        }
        next
    }

    /// Takes the waiting events of lane `key` out, in stream order (for a shutdown, once its
    /// running event is done).
    pub(crate) fn take_waiting(&mut self, key: &Arc<str>) -> Vec<(u64, T)> {
        let Some(lane) = self.lanes.get_mut(key) else {
            return Vec::new();
        };
        let waiting = std::mem::take(&mut lane.queue).into_iter().collect();
        if lane.active.is_none() {
            self.lanes.remove(key);
        }
        waiting
    }

    /// Takes out every lane with no running event (for a shutdown): for each, when its
    /// retried event is due again (if it waits for one), and its waiting events in stream
    /// order.
    pub(crate) fn take_not_running(&mut self) -> Vec<Stopped<T>> {
        let keys: Vec<Arc<str>> = self
            .lanes
            .iter()
            .filter(|(_, lane)| lane.active.is_none())
            .map(|(key, _)| key.clone())
            .collect();
        keys.into_iter()
            .filter_map(|key| self.lanes.remove(&key))
            .map(|lane| {
                (
                    lane.blocked.map(|b| b.due),
                    lane.queue.into_iter().collect(),
                )
            })
            .collect()
    }

    /// The earliest deadline of a blocked lane.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.lanes
            .values()
            .filter_map(|l| l.blocked.as_ref().map(|b| b.until))
            .min()
    }

    /// Unblocks the lanes whose deadline has passed (the retried event never came back) and
    /// returns, for each, the key, the sequence it waited for, and its next event to handle.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<Expired<T>> {
        let mut out = Vec::new();
        let mut idle = Vec::new();
        for (key, lane) in &mut self.lanes {
            let Some(blocked) = &lane.blocked else {
                continue;
            };
            if blocked.until > now {
                continue;
            }
            let waited = blocked.sequence;
            lane.blocked = None;
            let next = lane.start_next();
            if lane.is_idle() {
                idle.push(key.clone());
            }
            out.push((key.clone(), waited, next));
        }
        for key in idle {
            self.lanes.remove(&key);
        }
        out
    }

    /// How many events wait or run.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lanes
            .values()
            .map(|l| l.queue.len() + usize::from(l.active.is_some()))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn key(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    fn retry_in(secs: u64) -> Retry {
        let due = Instant::now() + Duration::from_secs(secs);
        Retry {
            due,
            until: due + Duration::from_secs(secs),
        }
    }

    fn run<T: std::fmt::Debug>(offer: Offer<T>) -> T {
        match offer {
            Offer::Run(item) => item,
            Offer::Queued => panic!("expected to run"),
        }
    }

    #[test]
    fn one_at_a_time_per_key_in_sequence_order() {
        let mut lanes = Lanes::default();
        assert_eq!(run(lanes.offer(key("a"), 1, "a1")), "a1");
        assert!(matches!(lanes.offer(key("a"), 3, "a3"), Offer::Queued));
        assert!(matches!(lanes.offer(key("a"), 2, "a2"), Offer::Queued));
        // Another aggregate runs in parallel.
        assert_eq!(run(lanes.offer(key("b"), 4, "b4")), "b4");
        assert_eq!(lanes.finish(&key("a"), 1, None), Some((2, "a2")));
        assert_eq!(lanes.finish(&key("a"), 2, None), Some((3, "a3")));
        assert_eq!(lanes.finish(&key("a"), 3, None), None);
        assert_eq!(lanes.finish(&key("b"), 4, None), None);
        assert_eq!(lanes.len(), 0);
        assert!(lanes.lanes.is_empty());
    }

    #[test]
    fn a_retried_event_blocks_its_lane_until_it_is_back() {
        let mut lanes = Lanes::default();
        let retry = retry_in(60);
        run(lanes.offer(key("a"), 1, "a1"));
        assert!(matches!(lanes.offer(key("a"), 2, "a2"), Offer::Queued));
        assert_eq!(lanes.finish(&key("a"), 1, Some(retry)), None);
        // Later events keep waiting while it is away.
        assert!(matches!(lanes.offer(key("a"), 5, "a5"), Offer::Queued));
        // Back again: it runs first, then the others in order.
        assert_eq!(run(lanes.offer(key("a"), 1, "a1 again")), "a1 again");
        assert_eq!(lanes.finish(&key("a"), 1, None), Some((2, "a2")));
        assert_eq!(lanes.finish(&key("a"), 2, None), Some((5, "a5")));
        assert_eq!(lanes.finish(&key("a"), 5, None), None);
        assert!(lanes.lanes.is_empty());
    }

    #[test]
    fn redelivered_before_its_handler_returned_runs_at_once() {
        let mut lanes = Lanes::default();
        run(lanes.offer(key("a"), 1, "first"));
        assert!(matches!(lanes.offer(key("a"), 1, "second"), Offer::Queued));
        assert_eq!(
            lanes.finish(&key("a"), 1, Some(retry_in(60))),
            Some((1, "second"))
        );
    }

    #[test]
    fn a_block_expires_when_the_event_never_comes_back() {
        let mut lanes = Lanes::default();
        let now = Instant::now();
        run(lanes.offer(key("a"), 1, "a1"));
        assert!(matches!(lanes.offer(key("a"), 2, "a2"), Offer::Queued));
        lanes.finish(
            &key("a"),
            1,
            Some(Retry {
                due: now,
                until: now + Duration::from_millis(5),
            }),
        );
        assert_eq!(lanes.next_deadline(), Some(now + Duration::from_millis(5)));
        assert!(lanes.expire(now).is_empty());
        let expired = lanes.expire(now + Duration::from_millis(5));
        assert_eq!(expired, vec![(key("a"), 1, Some((2, "a2")))]);
        assert_eq!(lanes.next_deadline(), None);
    }

    #[test]
    fn a_shutdown_takes_waiting_events_lane_by_lane() {
        let mut lanes = Lanes::default();
        let retry = retry_in(60);
        run(lanes.offer(key("a"), 1, "a1"));
        lanes.offer(key("a"), 3, "a3");
        lanes.offer(key("a"), 2, "a2");
        run(lanes.offer(key("b"), 4, "b4"));
        lanes.offer(key("b"), 5, "b5");
        assert_eq!(lanes.finish(&key("b"), 4, Some(retry)), None);
        // b waits for 4 again: taken with its due time; a still runs 1.
        let taken = lanes.take_not_running();
        assert_eq!(taken, vec![(Some(retry.due), vec![(5, "b5")])]);
        assert_eq!(lanes.take_waiting(&key("a")), vec![(2, "a2"), (3, "a3")]);
        assert_eq!(lanes.finish(&key("a"), 1, None), None);
        assert!(lanes.lanes.is_empty());
    }
}
