//! Where recently appended aggregates are: their last version and stream sequence, so that an
//! append to an aggregate this store wrote to a moment ago skips the last-event lookup (the
//! server's expected-sequence check still decides).

use std::num::NonZeroUsize;
use std::sync::Mutex;

use bytes::Bytes;
use lru::LruCache;

use crate::subject::AggregateId;

/// Aggregates whose last known position is remembered.
const REMEMBERED: usize = 16_384;

/// The last event of an aggregate: its version and stream sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Position {
    pub(super) version: u64,
    pub(super) sequence: u64,
}

/// The last event of an aggregate as read from the server: its position, id and payload.
#[derive(Debug, Clone)]
pub(super) struct Last {
    pub(super) position: Position,
    pub(super) event_id: Option<uuid::Uuid>,
    pub(super) payload: Bytes,
}

/// The positions of the most recently appended aggregates (least recently used dropped first).
#[derive(Debug)]
pub(super) struct Positions(Mutex<LruCache<AggregateId, Position>>);

impl Default for Positions {
    fn default() -> Self {
        Self(Mutex::new(LruCache::new(
            NonZeroUsize::new(REMEMBERED).unwrap_or(NonZeroUsize::MIN),
        )))
    }
}

impl Positions {
    /// The remembered position of `id`.
    pub(super) fn get(&self, id: &AggregateId) -> Option<Position> {
        self.0.lock().ok().and_then(|mut p| p.get(id).copied())
    }

    /// Remembers `position` for `id`, unless a later one is remembered already.
    pub(super) fn remember(&self, id: &AggregateId, position: Position) {
        if let Ok(mut p) = self.0.lock() {
            match p.get_mut(id) {
                Some(kept) if kept.sequence > position.sequence => {}
                Some(kept) => *kept = position,
                None => {
                    p.put(id.clone(), position);
                }
            }
        }
    }

    /// Forgets `id` (it changed elsewhere).
    pub(super) fn forget(&self, id: &AggregateId) {
        if let Ok(mut p) = self.0.lock() {
            p.pop(id);
        }
    }
}
