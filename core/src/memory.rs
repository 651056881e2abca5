//! [`InMemoryEventStore`]: the event store in memory, for users' unit tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};

use crate::envelope::{StoredEvent, StreamSequence};
use crate::event::EventId;
use crate::store::{
    check_append, check_multi, checked_version, AggregateAppend, AppendResult, EventStore,
    EventStream, ExpectedVersion, NewEvent, ReadFrom,
};
use crate::store::{StoreError, StoreErrorKind};
use crate::subject::AggregateId;

/// An event store in memory with the semantics of the JetStream store: optimistic concurrency
/// with the same errors, idempotent appends by event id, atomic multi-event appends, one global
/// order. For unit tests of domains; nothing survives the process.
///
/// Like a JetStream store (one stream per domain), one in-memory store holds one domain: the
/// first append fixes it, and events of another domain are refused.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use cim_nats::memory::InMemoryEventStore;
/// use cim_nats::{AggregateId, EventStore};
///
/// let store = InMemoryEventStore::new();
/// let id = AggregateId::new("a1").unwrap();
/// assert_eq!(store.aggregate_version(&id).await.unwrap(), None);
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct InMemoryEventStore {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    domain: Option<String>,
    /// Every event in stream order with the time it was appended; index = sequence - 1.
    events: Vec<(DateTime<Utc>, StoredEvent)>,
    /// Indexes into `events` of each aggregate's events, in version order.
    aggregates: HashMap<AggregateId, Vec<usize>>,
    /// Index of each event id.
    ids: HashMap<EventId, usize>,
}

impl InMemoryEventStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written: appends validate
        // everything before the first push.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of events stored.
    pub fn len(&self) -> usize {
        self.lock().events.len()
    }

    /// Is the store empty?
    pub fn is_empty(&self) -> bool {
        self.lock().events.is_empty()
    }
}

impl State {
    /// Stores `events` of `id` after version `base`; returns their sequences.
    fn store(
        &mut self,
        aggregate_id: &AggregateId,
        base: u64,
        events: Vec<NewEvent>,
        subjects: Vec<crate::subject::Subject>,
        now: DateTime<Utc>,
    ) -> Vec<StreamSequence> {
        let state = self;
        let mut sequences = Vec::with_capacity(events.len());
        for (i, (event, subject)) in events.into_iter().zip(subjects).enumerate() {
            let index = state.events.len();
            let sequence = StreamSequence(index as u64 + 1);
            sequences.push(sequence);
            let stored = StoredEvent {
                event_id: event.event_id,
                event_type: event.event_type.into_owned(),
                schema_version: event.schema_version,
                subject: subject.into_string(),
                entity_kind: event.entity_kind.into_owned(),
                aggregate_id: aggregate_id.clone(),
                aggregate_version: base + 1 + i as u64,
                stream_sequence: sequence,
                timestamp: event.timestamp,
                correlation_id: event.correlation_id,
                causation_id: event.causation_id,
                actor: event.actor,
                payload: event.payload,
            };
            state.ids.insert(stored.event_id, index);
            state
                .aggregates
                .entry(aggregate_id.clone())
                .or_default()
                .push(index);
            state.events.push((now, stored));
        }
        sequences
    }

    fn version(&self, id: &AggregateId) -> Option<u64> {
        self.aggregates.get(id).map(|v| v.len() as u64)
    }

    /// The events of `id` at versions `base+1 ..= base+k`, if they are exactly `events`.
    fn already_stored(
        &self,
        id: &AggregateId,
        base: u64,
        events: &[NewEvent],
    ) -> Option<AppendResult> {
        let indexes = self.aggregates.get(id)?;
        let start = usize::try_from(base).ok()?;
        let slice = indexes.get(start..start + events.len())?;
        let same = slice.iter().zip(events).all(|(&i, e)| {
            let stored = &self.events[i].1;
            stored.event_id == e.event_id && stored.payload == e.payload
        });
        same.then(|| AppendResult {
            sequences: slice
                .iter()
                .map(|&i| self.events[i].1.stream_sequence)
                .collect(),
            version: base + events.len() as u64,
            duplicate: true,
        })
    }
}

#[async_trait]
impl EventStore for InMemoryEventStore {
    async fn append(
        &self,
        aggregate_id: &AggregateId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let invalid = |why: String| Err(StoreError::new(StoreErrorKind::InvalidAppend(why)));
        let mut state = self.lock();
        let checked = check_append(aggregate_id, &events, state.domain.as_deref())?;
        let (domain, subjects) = (checked.domain.to_owned(), checked.subjects);
        let actual = state.version(aggregate_id);
        // A retry of events already stored succeeds with the original result.
        if let Some(&i) = state.ids.get(&events[0].event_id) {
            let first = &state.events[i].1;
            if first.aggregate_id == *aggregate_id {
                if let Some(result) =
                    state.already_stored(aggregate_id, first.aggregate_version - 1, &events)
                {
                    return Ok(result);
                }
            }
            return invalid(format!(
                "event id {} is already used by another event (stream sequence {}); a retry \
                 must resend the same event, and a new event needs a new id",
                events[0].event_id, first.stream_sequence
            ));
        }
        if !expected.accepts(actual) {
            return Err(StoreError::new(StoreErrorKind::WrongExpectedVersion {
                aggregate_id: aggregate_id.clone(),
                expected,
                actual,
            }));
        }
        if let Some(e) = events.iter().find(|e| state.ids.contains_key(&e.event_id)) {
            return invalid(format!("event id {} is already stored", e.event_id));
        }
        let base = actual.unwrap_or(0);
        state.domain.get_or_insert(domain);
        let sequences = state.store(aggregate_id, base, events, subjects, Utc::now());
        let version = base + sequences.len() as u64;
        Ok(AppendResult {
            sequences,
            version,
            duplicate: false,
        })
    }

    async fn append_multi(
        &self,
        parts: Vec<AggregateAppend>,
    ) -> Result<Vec<AppendResult>, StoreError> {
        let mut state = self.lock();
        let (domain, checked) = check_multi(&parts, state.domain.as_deref())?;
        let subjects: Vec<Vec<crate::subject::Subject>> = checked
            .into_iter()
            .map(|c| c.map(|c| c.subjects).unwrap_or_default())
            .collect();
        // A retry of an append already stored succeeds with the original results.
        let first_written = parts.iter().find(|p| !p.events.is_empty());
        if let Some(first) = first_written.and_then(|p| state.ids.get(&p.events[0].event_id)) {
            let stored = &state.events[*first].1;
            let mut results = Vec::with_capacity(parts.len());
            for part in &parts {
                if part.events.is_empty() {
                    results.push(Some(AppendResult {
                        sequences: Vec::new(),
                        version: checked_version(part.expected),
                        duplicate: true,
                    }));
                    continue;
                }
                let base = state
                    .ids
                    .get(&part.events[0].event_id)
                    .map(|&i| &state.events[i].1)
                    .filter(|e| e.aggregate_id == part.aggregate_id)
                    .map(|e| e.aggregate_version - 1);
                results.push(
                    base.and_then(|b| state.already_stored(&part.aggregate_id, b, &part.events)),
                );
            }
            return match results.into_iter().collect::<Option<Vec<_>>>() {
                Some(results) => Ok(results),
                None => Err(StoreError::new(StoreErrorKind::InvalidAppend(format!(
                    "event id {} is already used by another event (stream sequence {}); a retry \
                     must resend the same events, and new events need new ids",
                    stored.event_id, stored.stream_sequence
                )))),
            };
        }
        for part in &parts {
            let actual = state.version(&part.aggregate_id);
            if !part.expected.accepts(actual) {
                return Err(StoreError::new(StoreErrorKind::WrongExpectedVersion {
                    aggregate_id: part.aggregate_id.clone(),
                    expected: part.expected,
                    actual,
                }));
            }
        }
        let mut ids = std::collections::HashSet::new();
        if let Some(e) = parts
            .iter()
            .flat_map(|p| &p.events)
            .find(|e| state.ids.contains_key(&e.event_id) || !ids.insert(e.event_id))
        {
            return Err(StoreError::new(StoreErrorKind::InvalidAppend(format!(
                "event id {} is already stored, or used twice in this append",
                e.event_id
            ))));
        }
        state.domain.get_or_insert(domain);
        let now = Utc::now();
        let mut results = Vec::with_capacity(parts.len());
        for (part, subjects) in parts.into_iter().zip(subjects) {
            let base = state.version(&part.aggregate_id).unwrap_or(0);
            if part.events.is_empty() {
                results.push(AppendResult {
                    sequences: Vec::new(),
                    version: base,
                    duplicate: false,
                });
                continue;
            }
            let n = part.events.len() as u64;
            let sequences = state.store(&part.aggregate_id, base, part.events, subjects, now);
            results.push(AppendResult {
                sequences,
                version: base + n,
                duplicate: false,
            });
        }
        Ok(results)
    }

    async fn read_aggregate(
        &self,
        aggregate_id: &AggregateId,
        after_version: u64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let state = self.lock();
        Ok(state
            .aggregates
            .get(aggregate_id)
            .map(|indexes| {
                indexes
                    .iter()
                    .skip(usize::try_from(after_version).unwrap_or(usize::MAX))
                    .map(|&i| state.events[i].1.clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn aggregate_version(
        &self,
        aggregate_id: &AggregateId,
    ) -> Result<Option<u64>, StoreError> {
        Ok(self.lock().version(aggregate_id))
    }

    fn stream(&self, from: ReadFrom) -> EventStream<'_> {
        const CHUNK: usize = 256;
        let start = {
            let state = self.lock();
            match from {
                ReadFrom::Start => 0,
                ReadFrom::Sequence(seq) => {
                    usize::try_from(seq.0.saturating_sub(1)).unwrap_or(usize::MAX)
                }
                ReadFrom::Time(t) => state.events.partition_point(|(at, _)| *at < t),
            }
        };
        let store = self.clone();
        Box::pin(
            stream::unfold(start, move |next| {
                let store = store.clone();
                async move {
                    let state = store.lock();
                    let end = (next + CHUNK).min(state.events.len());
                    if next >= end {
                        return None;
                    }
                    let chunk: Vec<Result<StoredEvent, StoreError>> = state.events[next..end]
                        .iter()
                        .map(|(_, e)| Ok(e.clone()))
                        .collect();
                    Some((stream::iter(chunk), end))
                }
            })
            .flatten(),
        )
    }

    async fn last_sequence(&self) -> Result<StreamSequence, StoreError> {
        Ok(StreamSequence(self.lock().events.len() as u64))
    }
}
