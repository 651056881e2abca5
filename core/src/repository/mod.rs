//! [`Repository`]: load an aggregate (snapshot + later events), decide, append with the loaded
//! version as the expected version; commands for one aggregate queue on its lane (`lane.rs`).

mod across;
mod claims;
mod lane;

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use lru::LruCache;

use crate::aggregate::Aggregate;
use crate::encode::encode_events;
use crate::envelope::StreamSequence;
use crate::event::NatsEvent;
use crate::identity::MessageIdentity;
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::store::{AppendResult, EventStore, ExpectedVersion};
use crate::store::{StoreError, StoreErrorKind};
use crate::subject::AggregateId;

/// An aggregate as loaded: its state, its version and the stream sequence of its last event.
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    /// The aggregate instance.
    pub id: AggregateId,
    /// The state after every event up to `version`.
    pub state: A,
    /// The number of events applied (0: none yet).
    pub version: u64,
    /// The stream sequence of the event at `version` (0 if none).
    pub sequence: StreamSequence,
    snapshot_version: u64,
}

impl<A> Loaded<A> {
    /// The expected version for appending to this aggregate.
    pub fn expected_version(&self) -> ExpectedVersion {
        ExpectedVersion::from_loaded(self.version)
    }
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError<E: std::error::Error + 'static> {
    /// The aggregate refused the command.
    #[error("command rejected: {0}")]
    Rejected(#[source] E),
    /// The store failed, or another writer changed the aggregate first
    /// ([`CommandError::is_conflict`]).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The aggregate's [`Aggregate::handle`] panicked on this command (with this message); the
    /// commands queued with it were decided as if it had not been sent.
    #[error("the aggregate panicked deciding the command: {0}")]
    Panicked(String),
}

impl<E: std::error::Error + 'static> CommandError<E> {
    /// Is this a concurrency conflict (another writer appended first)? Retrying the command on a
    /// fresh load may succeed.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            Self::Store(e) if matches!(e.kind(), StoreErrorKind::WrongExpectedVersion { .. })
        )
    }
}

/// What a command did.
#[derive(Debug)]
pub struct CommandOutcome<E> {
    /// The events it produced and the store appended (empty: nothing to do).
    pub events: Vec<E>,
    /// Where they were stored (`None` when there were no events).
    pub append: Option<AppendResult>,
    /// The aggregate's version afterwards.
    pub version: u64,
}

impl<E> CommandOutcome<E> {
    /// The stream sequence of the last event stored (0 when the command decided nothing): what
    /// a read model is waited for to read this command's writes.
    pub fn last_sequence(&self) -> StreamSequence {
        self.append
            .as_ref()
            .and_then(AppendResult::last_sequence)
            .unwrap_or_default()
    }
}

/// A bounded in-memory map of recently used aggregates (least recently used dropped first).
struct Cache<A>(LruCache<AggregateId, Loaded<A>>);

impl<A> Cache<A> {
    fn new(capacity: usize) -> Option<Self> {
        NonZeroUsize::new(capacity).map(|c| Self(LruCache::new(c)))
    }

    fn take(&mut self, id: &AggregateId) -> Option<Loaded<A>> {
        self.0.pop(id)
    }

    /// The kept copy of `id`, marked as just used.
    fn peek(&mut self, id: &AggregateId) -> Option<&Loaded<A>> {
        self.0.get(id)
    }

    /// Keeps `loaded`, unless a newer copy of the aggregate is already kept (put there by a
    /// command that finished meanwhile).
    fn put(&mut self, loaded: Loaded<A>) {
        match self.0.get_mut(&loaded.id) {
            Some(kept) if kept.version > loaded.version => {}
            Some(kept) => *kept = loaded,
            None => {
                self.0.put(loaded.id.clone(), loaded);
            }
        }
    }
}

/// What [`Repository::new`] takes as its store: any [`EventStore`], an `Arc` of one, or an
/// `Arc<dyn EventStore>`.
pub trait IntoEventStore {
    /// The store, shared.
    fn into_event_store(self) -> Arc<dyn EventStore>;
}

impl<S: EventStore + 'static> IntoEventStore for S {
    fn into_event_store(self) -> Arc<dyn EventStore> {
        Arc::new(self)
    }
}

impl<S: EventStore + 'static> IntoEventStore for Arc<S> {
    fn into_event_store(self) -> Arc<dyn EventStore> {
        self
    }
}

impl IntoEventStore for Arc<dyn EventStore> {
    fn into_event_store(self) -> Arc<dyn EventStore> {
        self
    }
}

/// Loads and saves aggregates of type `A` on an [`EventStore`].
///
/// - Loads read the aggregate's events on the literal subjects of `A::Event` (never a scan), after
///   the latest snapshot when snapshots are on.
/// - Saves append with the loaded version as the expected version: a concurrent change is
///   refused by the store ([`CommandError::is_conflict`]); [`Repository::execute_with_retry`]
///   reloads and retries.
/// - With a cache ([`Repository::with_cache`]), a command on a recently used aggregate costs one
///   round trip: the cached state is used as is, and the store's concurrency check catches a
///   change made elsewhere (the aggregate is then reloaded). [`Repository::load_cached`] reads
///   through the same cache: one round trip checks the cached copy against the aggregate's last
///   stored event, and only the events after it are read when it is behind.
///
/// ## Commands on one aggregate
///
/// Commands are queued per aggregate ([`Repository::execute`]): within a process they are
/// decided one after another on the state in memory (no reload, no conflict between them) and
/// committed in order; each caller gets its own outcome, and a command the aggregate refuses
/// fails alone. While one append is on its way the next commands wait; when enough wait that
/// one atomic append of all their events is cheaper than one append each (as measured on this
/// connection), they go together as one group, still answered one by one. A lone command is
/// one plain append, without delay.
///
/// - The queue of an aggregate holds at most [`Repository::with_queue_capacity`] commands; more
///   callers wait for room.
/// - An append whose outcome is unknown (no answer, a lost connection) is sent again unchanged
///   until the server answers or [`Repository::with_outcome_deadline`] passes: the command is
///   then either stored and answered, or failed, never both. Only after the deadline does a
///   transient error ([`StoreError::is_transient`]) mean "not known". Loading the aggregate
///   while the server is away (a leader election) is tried again the same way.
/// - A conflict with another process is read (the events after the state in memory) and the
///   commands concerned decided again on the new state, with new event ids
///   ([`Repository::execute_with_retry`]), or answered with the conflict
///   ([`Repository::execute`]).
/// - A caller that stops waiting (its future dropped) does not cancel a command already being
///   decided or stored; a command still in the queue is dropped undecided.
pub struct Repository<A: Aggregate> {
    store: Arc<dyn EventStore>,
    snapshots: Option<Arc<dyn SnapshotStore>>,
    snapshot_every: u64,
    cache: Option<Mutex<Cache<A>>>,
    lanes: Mutex<HashMap<AggregateId, Arc<lane::Lane<A>>>>,
    queue_capacity: usize,
    outcome_deadline: Duration,
    cost: lane::CommitCost,
    across: across::Locks,
    _aggregate: PhantomData<fn() -> A>,
}

/// What a repository's commands appended ([`Repository::commit_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommitStats {
    /// Appends made for commands (each one plain append or one atomic batch).
    pub appends: u64,
    /// Commands with events those appends stored (more than `appends` when commands were
    /// grouped).
    pub commands: u64,
    /// The moving average of a single-event append, in microseconds (0: none yet).
    pub single_append_micros: u64,
    /// The moving average of an atomic (multi-event) append, in microseconds (0: none yet).
    pub group_append_micros: u64,
}

/// Commands one aggregate's queue holds by default ([`Repository::with_queue_capacity`]).
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;
/// How long an append with an unknown outcome is sent again by default
/// ([`Repository::with_outcome_deadline`]).
pub const DEFAULT_OUTCOME_DEADLINE: Duration = Duration::from_secs(60);

impl<A: Aggregate> fmt::Debug for Repository<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("aggregate", &A::TYPE)
            .field("store", &self.store)
            .field("snapshots", &self.snapshots)
            .field("snapshot_every", &self.snapshot_every)
            .field("cache", &self.cache.is_some())
            .finish()
    }
}

impl<A: Aggregate> Repository<A> {
    /// A repository on `store` (a store, an `Arc` of one, or an `Arc<dyn EventStore>`), without
    /// snapshots or cache.
    pub fn new(store: impl IntoEventStore) -> Self {
        Self {
            store: store.into_event_store(),
            snapshots: None,
            snapshot_every: 0,
            cache: None,
            lanes: Mutex::new(HashMap::new()),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            outcome_deadline: DEFAULT_OUTCOME_DEADLINE,
            cost: lane::CommitCost::default(),
            across: across::Locks::default(),
            _aggregate: PhantomData,
        }
    }

    /// Lets each aggregate's queue hold up to `capacity` commands (at least 1); callers beyond
    /// wait for room. Default [`DEFAULT_QUEUE_CAPACITY`].
    #[must_use]
    pub fn with_queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity.max(1);
        self
    }

    /// Sends an append whose outcome is unknown again for up to `deadline` before the command
    /// fails with the transient error. Default [`DEFAULT_OUTCOME_DEADLINE`].
    #[must_use]
    pub fn with_outcome_deadline(mut self, deadline: Duration) -> Self {
        self.outcome_deadline = deadline;
        self
    }

    /// Keeps a snapshot every `every` events (at least 1) in `snapshots`; loads start from the
    /// latest snapshot of the aggregate's schema.
    #[must_use]
    pub fn with_snapshots(mut self, snapshots: Arc<dyn SnapshotStore>, every: u64) -> Self {
        self.snapshots = Some(snapshots);
        self.snapshot_every = every.max(1);
        self
    }

    /// Keeps up to `capacity` recently used aggregates in memory.
    #[must_use]
    pub fn with_cache(mut self, capacity: usize) -> Self {
        self.cache = Cache::new(capacity).map(Mutex::new);
        self
    }

    /// The event store.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    fn take_cached(&self, id: &AggregateId) -> Option<Loaded<A>> {
        self.cache
            .as_ref()
            .and_then(|c| c.lock().ok().and_then(|mut c| c.take(id)))
    }

    fn put_cached(&self, loaded: Loaded<A>) {
        if let Some(cache) = &self.cache {
            if let Ok(mut c) = cache.lock() {
                c.put(loaded);
            }
        }
    }

    /// Drops a cached aggregate (e.g. after learning it changed elsewhere); the next command
    /// on it reads what it lacks.
    pub fn forget(&self, id: &AggregateId) {
        let _ = self.take_cached(id);
        if let Some(lane) = self.lanes_lock().get(id) {
            lane.mark_stale();
        }
    }

    fn lanes_lock(&self) -> MutexGuard<'_, HashMap<AggregateId, Arc<lane::Lane<A>>>> {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The aggregate's lane, made (with the cached state, if any) when it has none.
    fn lane(&self, id: &AggregateId) -> Arc<lane::Lane<A>> {
        let mut lanes = self.lanes_lock();
        if let Some(lane) = lanes.get(id) {
            return Arc::clone(lane);
        }
        let lane = Arc::new(lane::Lane::new(self.queue_capacity, self.take_cached(id)));
        lanes.insert(id.clone(), Arc::clone(&lane));
        lane
    }

    /// Removes an idle lane, keeping its state in the cache.
    fn retire(&self, id: &AggregateId, lane: &Arc<lane::Lane<A>>) {
        let mut lanes = self.lanes_lock();
        if !lanes.get(id).is_some_and(|l| Arc::ptr_eq(l, lane)) {
            return;
        }
        if let Some(state) = lane.retire() {
            lanes.remove(id);
            drop(lanes);
            if let Some(state) = state {
                self.put_cached(state);
            }
        }
    }

    /// Loads an aggregate from its latest usable snapshot and the events after it (all its
    /// events without snapshots). An aggregate with no events loads at version 0.
    ///
    /// # Errors
    ///
    /// From the store; a [`StoreErrorKind::Decode`] names the sequence of an event `A::Event`
    /// cannot decode.
    pub async fn load(&self, id: &AggregateId) -> Result<Loaded<A>, StoreError> {
        let mut loaded = Loaded {
            id: id.clone(),
            state: A::default(),
            version: 0,
            sequence: StreamSequence(0),
            snapshot_version: 0,
        };
        if let Some(snapshots) = &self.snapshots {
            if let Some(s) = snapshots.load(A::TYPE, id).await? {
                if s.schema == A::SNAPSHOT_VERSION && s.aggregate_id == *id {
                    match serde_json::from_slice::<A>(&s.state) {
                        Ok(state) => {
                            loaded.state = state;
                            loaded.version = s.version;
                            loaded.sequence = s.sequence;
                            loaded.snapshot_version = s.version;
                        }
                        Err(e) => tracing::warn!(
                            aggregate = A::TYPE, id = %id, error = %e,
                            "ignoring a snapshot that does not decode"
                        ),
                    }
                }
            }
        }
        self.catch_up(&mut loaded).await?;
        Ok(loaded)
    }

    /// Applies the events stored after `loaded`'s version.
    async fn catch_up(&self, loaded: &mut Loaded<A>) -> Result<(), StoreError> {
        let events = self
            .store
            .read_aggregate_routed(
                &loaded.id,
                <A::Event as NatsEvent>::SUBJECTS,
                loaded.version,
                loaded.sequence,
            )
            .await?;
        for stored in events {
            let event = stored
                .decode::<A::Event>()
                .map_err(|e| crate::typed::undecodable::<A::Event>(&stored, e))?;
            loaded.state.apply(&event);
            loaded.version = stored.aggregate_version;
            loaded.sequence = stored.stream_sequence;
        }
        Ok(())
    }

    /// Loads an aggregate through the cache ([`Repository::with_cache`]): a cached copy is
    /// checked against the aggregate's last stored event (one round trip) and returned when it
    /// is current; when it is behind, only the events after it are read and applied. Without a
    /// cached copy (or without a cache) this is [`Repository::load`], and the result is cached.
    ///
    /// The result is as current as a [`Repository::load`] made at the time of the check.
    ///
    /// # Errors
    ///
    /// As [`Repository::load`].
    pub async fn load_cached(&self, id: &AggregateId) -> Result<Loaded<A>, StoreError>
    where
        A: Clone,
    {
        let cached = self
            .cache
            .as_ref()
            .and_then(|c| c.lock().ok().and_then(|mut c| c.peek(id).cloned()));
        let loaded = match cached {
            None => self.load(id).await?,
            Some(mut cached) => {
                let stored = self.store.aggregate_version(id).await?.unwrap_or(0);
                match stored.cmp(&cached.version) {
                    // Current: the cache already holds this copy.
                    std::cmp::Ordering::Equal => return Ok(cached),
                    std::cmp::Ordering::Greater => {
                        self.catch_up(&mut cached).await?;
                        cached
                    }
                    // Fewer events than the copy has: the stream was replaced under it.
                    std::cmp::Ordering::Less => {
                        self.forget(id);
                        self.load(id).await?
                    }
                }
            }
        };
        self.put_cached(loaded.clone());
        Ok(loaded)
    }

    /// Appends `events` to a loaded aggregate with its version as the expected version, and
    /// applies them to it. The events get their ids on the way ([`crate::encode_events`]:
    /// derived from the command's message id, the aggregate, their versions and what they
    /// say), so after the call they are exactly the stored events.
    ///
    /// # Errors
    ///
    /// A conflict ([`StoreErrorKind::WrongExpectedVersion`]) if the aggregate changed since it
    /// was loaded; others from the store.
    pub async fn save(
        &self,
        loaded: &mut Loaded<A>,
        events: &mut [A::Event],
        identity: Option<&MessageIdentity>,
    ) -> Result<Option<AppendResult>, StoreError> {
        if events.is_empty() {
            return Ok(None);
        }
        let expected = loaded.expected_version();
        let claiming = events.iter().filter(|e| A::claim(e).is_some()).count();
        let result = if claiming == 0 {
            let new = encode_events(&loaded.id, expected, events, identity)?;
            self.store.append(&loaded.id, expected, new).await?
        } else {
            // The aggregate's own events first, then those claiming reservations: stored
            // together, each reservation checked.
            events.sort_by_key(|e| A::claim(e).is_some());
            let (own, claimed) = events.split_at_mut(events.len() - claiming);
            let new = encode_events(&loaded.id, expected, own, identity)?;
            claims::check::<A>(&loaded.id, claimed)?;
            if own.is_empty() {
                return Err(StoreError::new(StoreErrorKind::InvalidAppend(format!(
                    "events claiming reservations for aggregate {} come without an event of \
                     its own",
                    loaded.id
                ))));
            }
            let mut reservations = claims::Reservations::default();
            reservations.read::<A>(&*self.store, claimed).await?;
            let encoded = reservations.add::<A>(claimed, identity)?;
            let mut parts = vec![crate::store::AggregateAppend::new(
                loaded.id.clone(),
                expected,
                new,
            )];
            parts.extend(claims::parts(encoded.iter(), &reservations.versions()));
            let mut results = self.store.append_multi(parts).await?;
            if results.is_empty() {
                return Err(StoreError::new(StoreErrorKind::UnexpectedAnswer(
                    "a multi-aggregate append answered with no results".to_owned(),
                )));
            }
            results.remove(0)
        };
        for e in events.iter().filter(|e| A::claim(e).is_none()) {
            loaded.state.apply(e);
        }
        loaded.version = result.version;
        if let Some(seq) = result.last_sequence() {
            loaded.sequence = seq;
        }
        self.maybe_snapshot(loaded).await;
        Ok(Some(result))
    }

    async fn maybe_snapshot(&self, loaded: &mut Loaded<A>) {
        let Some(snapshots) = &self.snapshots else {
            return;
        };
        if loaded.version / self.snapshot_every <= loaded.snapshot_version / self.snapshot_every {
            return;
        }
        let state = match serde_json::to_vec(&loaded.state) {
            Ok(s) => Bytes::from(s),
            Err(e) => {
                loaded.snapshot_version = loaded.version;
                tracing::warn!(aggregate = A::TYPE, error = %e, "state does not serialise; no snapshot");
                return;
            }
        };
        let snapshot = Snapshot {
            aggregate_type: A::TYPE.to_owned(),
            aggregate_id: loaded.id.clone(),
            schema: A::SNAPSHOT_VERSION,
            version: loaded.version,
            sequence: loaded.sequence,
            state,
        };
        // A snapshot is a cache: failing to write one loses nothing. The next one is due
        // `snapshot_every` events later either way, so that a state the store cannot keep is
        // not serialised again on every command.
        loaded.snapshot_version = loaded.version;
        if let Err(e) = snapshots.save(snapshot).await {
            tracing::warn!(aggregate = A::TYPE, error = %e, "snapshot not saved");
        }
    }

    /// Decides `command` on the aggregate's current state (see "Commands on one aggregate":
    /// queued behind the commands on the same aggregate) and appends its events with that
    /// state's version as the expected version. One attempt: a conflict with another process is
    /// returned ([`CommandError::is_conflict`]).
    ///
    /// # Errors
    ///
    /// [`CommandError::Rejected`] with the aggregate's error; [`CommandError::Store`] for a
    /// conflict or a store failure; [`CommandError::Panicked`] when the aggregate panicked.
    pub async fn execute(
        &self,
        id: &AggregateId,
        command: A::Command,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        self.submit(
            id,
            lane::Request {
                source: lane::Source::Once(Some(command)),
                identity: None,
                retries: 0,
            },
        )
        .await
    }

    /// [`Repository::execute`] on behalf of `identity`, the message that asked for the command:
    /// its correlation, its message id (as causation) and its actor go with the events that do
    /// not carry an identity of their own, and its message id is the cause their ids are
    /// derived from.
    ///
    /// # Errors
    ///
    /// As [`Repository::execute`].
    pub async fn execute_as(
        &self,
        id: &AggregateId,
        command: A::Command,
        identity: &MessageIdentity,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        self.submit(
            id,
            lane::Request {
                source: lane::Source::Once(Some(command)),
                identity: Some(identity.clone()),
                retries: 0,
            },
        )
        .await
    }

    /// [`Repository::execute`], deciding again on the new state when another process appended
    /// first, up to `retries` times. `command` makes the command for each attempt.
    ///
    /// # Errors
    ///
    /// As [`Repository::execute`]; the last conflict when the retries run out.
    pub async fn execute_with_retry(
        &self,
        id: &AggregateId,
        command: impl FnMut() -> A::Command + Send + 'static,
        retries: usize,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        self.submit(
            id,
            lane::Request {
                source: lane::Source::Again(Box::new(command)),
                identity: None,
                retries,
            },
        )
        .await
    }

    /// [`Repository::execute_with_retry`] on behalf of `identity` (see
    /// [`Repository::execute_as`]).
    ///
    /// # Errors
    ///
    /// As [`Repository::execute_with_retry`].
    pub async fn execute_with_retry_as(
        &self,
        id: &AggregateId,
        command: impl FnMut() -> A::Command + Send + 'static,
        identity: &MessageIdentity,
        retries: usize,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        self.submit(
            id,
            lane::Request {
                source: lane::Source::Again(Box::new(command)),
                identity: Some(identity.clone()),
                retries,
            },
        )
        .await
    }

    /// Commands admitted to the aggregate's queue: waiting, being decided or being stored (at
    /// most [`Repository::with_queue_capacity`]; more callers wait for room).
    pub fn queue_depth(&self, id: &AggregateId) -> usize {
        self.queued(id)
    }

    /// What this repository's commands appended so far, and the costs its queues choose groups
    /// by: for metrics, and to see how commands were grouped (`commands / appends`).
    pub fn commit_stats(&self) -> CommitStats {
        self.commit_stats_inner()
    }
}
