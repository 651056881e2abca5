//! The acknowledgement floor of a group member's partition: settlements sent in stream order
//! (see `group.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::Subject;
use bytes::Bytes;

use crate::subscriber::Lease;

/// The partition a group member's consumer works.
pub(crate) struct PartitionContext {
    /// The event stream the view copies.
    pub(crate) origin: Arc<str>,
    pub(crate) lease: Lease,
    /// View sequences up to this one were delivered by an earlier epoch's consumer.
    pub(crate) redelivered_upto: u64,
    /// The highest view sequence this member received in the partition, in any epoch (it
    /// outlives the work of one epoch, which may be aborted when its lease is lost).
    pub(crate) seen: Arc<AtomicU64>,
    /// Delivered and not yet settled, and settled but waiting for an earlier one.
    pub(crate) state: Mutex<Floor>,
    /// One drain at a time, so settlements reach the server in order.
    pub(crate) sending: tokio::sync::Mutex<()>,
}

/// The open and settled sequences of a partition.
#[derive(Default)]
pub(crate) struct Floor {
    open: BTreeSet<u64>,
    ready: BTreeMap<u64, (Subject, Bytes)>,
    /// Every delivery up to this sequence was settled and its settlement sent (the consumer's
    /// start less one at first).
    through: u64,
}

impl Floor {
    /// The floor of a consumer that starts at view sequence `start`.
    pub(crate) fn starting_at(start: u64) -> Self {
        Self {
            through: start.saturating_sub(1),
            ..Self::default()
        }
    }
}

impl PartitionContext {
    fn lock(&self) -> std::sync::MutexGuard<'_, Floor> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new delivery of `sequence`: it is open until settled.
    pub(crate) fn opened(&self, sequence: u64) {
        self.lock().open.insert(sequence);
        self.seen.fetch_max(sequence, Ordering::Relaxed);
    }

    /// Every delivery up to this sequence was settled, in order, and its settlement sent; with
    /// no delivery lost on the way, every event of the partition up to it.
    pub(crate) fn through(&self) -> u64 {
        let floor = self.lock();
        match floor.open.first() {
            Some(&open) => floor.through.min(open.saturating_sub(1)),
            None => floor.through,
        }
    }

    /// `sequence` will not come back (deleted from the stream while waiting for its retry).
    pub(crate) fn forget(&self, sequence: u64) {
        self.lock().open.remove(&sequence);
    }

    /// Whether `sequence` is open (delivered and not yet settled).
    pub(crate) fn is_open(&self, sequence: u64) -> bool {
        self.lock().open.contains(&sequence)
    }

    /// Takes the settlement of open `sequence` (`reply`, `body`: `+ACK` or `+TERM`); returns
    /// what became sendable, in order: every settled sequence up to the first still open.
    /// The caller sends them holding [`PartitionContext::sending`].
    pub(crate) fn settle(
        &self,
        sequence: u64,
        reply: Subject,
        body: Bytes,
    ) -> Vec<(Subject, Bytes)> {
        {
            let mut floor = self.lock();
            floor.ready.insert(sequence, (reply, body));
            let mut batch = Vec::new();
            while let Some(&first) = floor.open.first() {
                let Some(ready) = floor.ready.remove(&first) else {
                    break;
                };
                floor.open.pop_first();
                floor.through = floor.through.max(first);
                batch.push(ready);
            }
            batch
        }
    }
}
