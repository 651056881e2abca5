//! Aggregate versions out of order, as a reader of the stream in order sees them.
//!
//! The store writes each event with the version it gives its aggregate
//! (`Cim-Aggregate-Version`), one more than the one before. Another client can store anything.
//! What each reader does with a version out of order (one rule, documented in the README's
//! "hostile input" table):
//!
//! - **Loads** see all of an aggregate's events: versions must run 1, 2, 3, ... without a gap or
//!   a repeat; otherwise the load fails naming the first message out of place.
//! - **Readers in stream order** (whole-stream reads, replays, projection runners, subscribers)
//!   may see only some of an aggregate's events (a filtered subscriber, a read from the middle),
//!   so a gap means nothing to them; but an event whose version is not above that of the
//!   previous event of its aggregate they saw (a repeat, or a step back) is an unreadable event
//!   at its sequence, handled by the reader's policy. They remember the last version of the most
//!   recently seen 100,000 aggregates; one forgotten is checked again from its next event.

use std::num::NonZeroUsize;

use lru::LruCache;

use crate::subject::AggregateId;

/// Aggregates whose last version a reader remembers.
const REMEMBERED: usize = 100_000;

/// The last version seen of recently seen aggregates.
#[derive(Debug)]
pub(crate) struct VersionOrder {
    last: LruCache<AggregateId, (u64, u64)>,
}

impl Default for VersionOrder {
    fn default() -> Self {
        Self {
            last: LruCache::new(NonZeroUsize::new(REMEMBERED).unwrap_or(NonZeroUsize::MIN)),
        }
    }
}

impl VersionOrder {
    /// Records the event at stream `sequence` with `version` of `aggregate`; `Err` says why it
    /// is out of order. A delivery of an event already seen (the same or an earlier sequence: a
    /// redelivery) is not checked.
    pub(crate) fn check(
        &mut self,
        aggregate: &AggregateId,
        sequence: u64,
        version: u64,
    ) -> Result<(), String> {
        match self.last.get_mut(aggregate) {
            Some((last_sequence, _)) if sequence <= *last_sequence => Ok(()),
            Some((last_sequence, last_version)) if version <= *last_version => {
                let why = format!(
                    "aggregate {aggregate} has version {version} after version {last_version} \
                     (stream sequence {last_sequence}): its versions must grow"
                );
                // What follows is compared with this one: each step back is named once.
                *last_sequence = sequence;
                *last_version = version;
                Err(why)
            }
            Some(last) => {
                *last = (sequence, version);
                Ok(())
            }
            None => {
                self.last.put(aggregate.clone(), (sequence, version));
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_and_steps_back_are_named_gaps_and_redeliveries_are_not() {
        let a = AggregateId::new("a").unwrap();
        let b = AggregateId::new("b").unwrap();
        let mut order = VersionOrder::default();
        assert!(order.check(&a, 1, 1).is_ok());
        assert!(order.check(&b, 2, 5).is_ok(), "first seen: anything");
        assert!(order.check(&a, 3, 3).is_ok(), "a gap is not a fault");
        assert!(order.check(&a, 3, 3).is_ok(), "a redelivery");
        let err = order.check(&a, 4, 3).unwrap_err();
        assert!(err.contains("version 3 after version 3"), "{err}");
        assert!(order.check(&a, 5, 2).is_err(), "a step back");
        assert!(
            order.check(&a, 6, 3).is_ok(),
            "compared with the one before"
        );
        assert!(order.check(&b, 7, 6).is_ok());
    }
}
