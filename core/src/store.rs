//! The [`EventStore`] trait: append with optimistic concurrency, read one aggregate, read all.

use std::borrow::Cow;
use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;

use crate::envelope::{StoredEvent, StreamSequence};
use crate::error::Error;
use crate::event::{EventId, NatsEvent};
use crate::identity::{CausationId, CorrelationId, MessageIdentity};
use crate::subject::{validate_subject, AggregateId, Subject};

/// The version an append expects the aggregate to be at.
///
/// The check is made by the store atomically with the write (on JetStream by the server), never
/// by reading first and writing after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// Append whatever the current version (the events still get gap-free versions).
    Any,
    /// The aggregate must have no events yet.
    NoStream,
    /// The aggregate must be at exactly this version (its number of events).
    Exact(u64),
}

impl ExpectedVersion {
    /// The expected version for an aggregate loaded at `version` (0 = no events).
    pub fn from_loaded(version: u64) -> Self {
        if version == 0 {
            Self::NoStream
        } else {
            Self::Exact(version)
        }
    }

    /// Does an aggregate at `actual` (`None`: no events) satisfy this expectation?
    pub fn accepts(&self, actual: Option<u64>) -> bool {
        match (self, actual) {
            (Self::Any, _) => true,
            (Self::NoStream, None | Some(0)) => true,
            (Self::NoStream, Some(_)) => false,
            (Self::Exact(0), None) => true,
            (Self::Exact(n), Some(v)) => *n == v,
            (Self::Exact(_), None) => false,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => write!(f, "any version"),
            Self::NoStream => write!(f, "no stream"),
            Self::Exact(n) => write!(f, "version {n}"),
        }
    }
}

/// An event ready to be appended: encoded payload and metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The event's id; the store sends it as `Nats-Msg-Id`.
    pub event_id: EventId,
    /// The event type.
    pub event_type: Cow<'static, str>,
    /// The payload's schema version.
    pub schema_version: u32,
    /// The entity kind (second subject token).
    pub entity_kind: Cow<'static, str>,
    /// The routing subject `{domain}.{aggregate}.{operation}`; the store appends the aggregate id.
    pub routing_subject: Cow<'static, str>,
    /// The event's JSON.
    pub payload: Bytes,
    /// When the event happened.
    pub timestamp: DateTime<Utc>,
    /// The conversation.
    pub correlation_id: Option<CorrelationId>,
    /// The causing message.
    pub causation_id: Option<CausationId>,
    /// Who acted.
    pub actor: Option<String>,
}

impl NewEvent {
    /// Encodes one domain event as it is, for hand-made appends and tests: its id is the
    /// event's own (the field marked `#[nats_event(event_id)]`) or, if it has none or it is
    /// [unassigned](EventId::unassigned), a new UUID v7. Its correlation, causation and actor
    /// are those of the identity the event carries (the field marked
    /// `#[nats_event(identity)]`, see [`NatsEvent::message_identity`]), if any.
    ///
    /// The typed appends (the repository, the publisher, [`crate::EventStoreExt::append_events`]) use
    /// [`crate::encode_events`] instead, which derives the ids from the command.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::Encode`] if serialisation fails.
    pub fn from_event<E: NatsEvent>(event: &E) -> Result<Self, StoreError> {
        let payload = event
            .encode()
            .map_err(|e| StoreError::with_source(StoreErrorKind::Encode, e))?;
        let d = event.descriptor();
        let identity = event.message_identity();
        Ok(Self {
            event_id: event
                .event_id()
                .filter(|id| !id.is_unassigned())
                .unwrap_or_default(),
            event_type: Cow::Borrowed(d.event_type),
            schema_version: d.version,
            entity_kind: Cow::Borrowed(d.entity_kind),
            routing_subject: Cow::Borrowed(d.subject),
            payload: Bytes::from(payload),
            timestamp: Utc::now(),
            correlation_id: identity.map(|id| id.correlation_id),
            causation_id: identity.map(|id| id.causation_id),
            actor: identity.map(|id| id.actor.clone()),
        })
    }

    /// Sets correlation, causation and actor from the identity of the message that caused the
    /// event (the command).
    #[must_use]
    pub fn with_identity(mut self, identity: &MessageIdentity) -> Self {
        self.correlation_id = Some(identity.correlation_id);
        self.causation_id = Some(CausationId::from(identity.message_id));
        self.actor = Some(identity.actor.clone());
        self
    }

    /// Sets the event id (e.g. a deterministic one, so that a retry is recognised).
    #[must_use]
    pub fn with_event_id(mut self, id: EventId) -> Self {
        self.event_id = id;
        self
    }

    /// Sets the time the event happened.
    #[must_use]
    pub fn with_timestamp(mut self, timestamp: DateTime<Utc>) -> Self {
        self.timestamp = timestamp;
        self
    }
}

/// Most events one append may carry: the server's limit for an atomic batch.
pub const MAX_EVENTS_PER_APPEND: usize = 1000;

/// An append that passed [`check_append`]: its domain, the scope of its aggregate's events
/// and the subject of each event.
#[derive(Debug)]
pub(crate) struct CheckedAppend<'a> {
    /// The domain (the first subject token) of every event.
    pub(crate) domain: &'a str,
    /// `{domain}.*.*.{aggregate_id}` ([`Subject::aggregate_scope`]), the scope of the
    /// JetStream store's expectation.
    #[cfg_attr(not(feature = "jetstream"), allow(dead_code))]
    pub(crate) scope: String,
    /// Each event's stored subject.
    pub(crate) subjects: Vec<Subject>,
}

/// The checks every store makes of an append before writing anything, the same for all: at
/// least one event and at most [`MAX_EVENTS_PER_APPEND`]; every routing subject a valid
/// `{domain}.{aggregate}.{operation}` (three tokens, no wildcard); one domain for all of them,
/// and `domain` when the store holds one already.
///
/// # Errors
///
/// [`StoreErrorKind::InvalidAppend`] or [`StoreErrorKind::InvalidSubject`], saying why.
pub(crate) fn check_append<'a>(
    aggregate_id: &AggregateId,
    events: &'a [NewEvent],
    domain: Option<&str>,
) -> Result<CheckedAppend<'a>, StoreError> {
    let invalid = |why: String| Err(StoreError::new(StoreErrorKind::InvalidAppend(why)));
    let Some(first) = events.first() else {
        return invalid("no events to append".to_owned());
    };
    if events.len() > MAX_EVENTS_PER_APPEND {
        return invalid(format!(
            "{} events in one append; at most {MAX_EVENTS_PER_APPEND}",
            events.len()
        ));
    }
    let own = first.routing_subject.split('.').next().unwrap_or_default();
    if let Some(domain) = domain {
        if domain != own {
            return invalid(format!(
                "this store holds domain {domain:?}, not {own:?} ({:?})",
                first.routing_subject
            ));
        }
    }
    let mut subjects = Vec::with_capacity(events.len());
    for event in events {
        validate_subject(&event.routing_subject, false)
            .map_err(|e| StoreError::with_source(StoreErrorKind::InvalidSubject, e))?;
        let mut tokens = event.routing_subject.split('.');
        if tokens.next() != Some(own) {
            return invalid(format!(
                "events of one append must share the domain: {:?} and {:?}",
                first.routing_subject, event.routing_subject
            ));
        }
        let kind = tokens.next();
        if kind.is_none() || tokens.count() != 1 {
            return invalid(format!(
                "routing subject {:?} is not {{domain}}.{{aggregate}}.{{operation}}",
                event.routing_subject
            ));
        }
        if kind != Some(&*event.entity_kind) {
            return invalid(format!(
                "entity kind {:?} is not the routing subject's second token ({:?}): readers \
                 would refuse the event",
                event.entity_kind, event.routing_subject
            ));
        }
        subjects.push(Subject::for_event(&event.routing_subject, aggregate_id));
    }
    Ok(CheckedAppend {
        domain: own,
        scope: Subject::aggregate_scope(own, aggregate_id),
        subjects,
    })
}

/// One aggregate's part of an append to several aggregates at once
/// ([`EventStore::append_multi`]): its events, appended if it is at `expected`; with no events,
/// a check only (the decision read the aggregate and changes nothing, but holds only if it has
/// not moved).
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateAppend {
    /// The aggregate.
    pub aggregate_id: AggregateId,
    /// The version the decision was made on.
    pub expected: ExpectedVersion,
    /// Its new events (none: a check only).
    pub events: Vec<NewEvent>,
}

impl AggregateAppend {
    /// Appends `events` to `aggregate_id` if it is at `expected`.
    pub fn new(
        aggregate_id: AggregateId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Self {
        Self {
            aggregate_id,
            expected,
            events,
        }
    }

    /// Writes nothing to `aggregate_id`, but the whole append holds only if it is at `expected`.
    pub fn check(aggregate_id: AggregateId, expected: ExpectedVersion) -> Self {
        Self::new(aggregate_id, expected, Vec::new())
    }
}

/// The subject of the messages that carry a check on an aggregate an append to several
/// aggregates reads but does not write, when its events cannot carry them all
/// (`{domain}._cim.check`). They are not events: the store's readers pass over them, and the
/// wire format says so for other clients. An entity kind starting with `_` is reserved.
pub fn check_marker_subject(domain: &str) -> String {
    format!("{domain}._cim.check")
}

/// Is `subject` the subject of a check marker ([`check_marker_subject`])?
pub fn is_check_marker(subject: &str) -> bool {
    let mut tokens = subject.split('.');
    tokens.next().is_some()
        && tokens.next() == Some("_cim")
        && tokens.next() == Some("check")
        && tokens.next().is_none()
}

/// The shared checks of an append to several aggregates: at least one event, no aggregate
/// twice, every part a valid append of the same domain, at most [`MAX_EVENTS_PER_APPEND`]
/// messages in all (events, and a marker for each check its events cannot carry), and a
/// version for each check. Returns the domain and each part's checked subjects.
pub(crate) fn check_multi<'a>(
    parts: &'a [AggregateAppend],
    domain: Option<&str>,
) -> Result<(String, Vec<Option<CheckedAppend<'a>>>), StoreError> {
    let invalid = |why: String| Err(StoreError::new(StoreErrorKind::InvalidAppend(why)));
    if !parts.iter().any(|p| !p.events.is_empty()) {
        return invalid("an append to several aggregates needs at least one event".to_owned());
    }
    let mut seen = std::collections::HashSet::new();
    for part in parts {
        if !seen.insert(&part.aggregate_id) {
            return invalid(format!(
                "aggregate {} appears twice in one append: decide its events together",
                part.aggregate_id
            ));
        }
        if part.events.is_empty() && part.expected == ExpectedVersion::Any {
            return invalid(format!(
                "a check on aggregate {} needs an expected version (it is `Any`)",
                part.aggregate_id
            ));
        }
    }
    let mut own: Option<String> = domain.map(str::to_owned);
    let mut checked = Vec::with_capacity(parts.len());
    for part in parts {
        if part.events.is_empty() {
            checked.push(None);
            continue;
        }
        let c = check_append(&part.aggregate_id, &part.events, own.as_deref())?;
        own.get_or_insert_with(|| c.domain.to_owned());
        checked.push(Some(c));
    }
    let Some(own) = own else {
        return invalid("an append to several aggregates needs at least one event".to_owned());
    };
    let markers = markers_needed(parts);
    let total = parts.iter().map(|p| p.events.len()).sum::<usize>() + markers;
    if total > MAX_EVENTS_PER_APPEND {
        return invalid(format!(
            "{total} messages in one append to several aggregates ({markers} of them check              markers); at most {MAX_EVENTS_PER_APPEND}"
        ));
    }
    Ok((own, checked))
}

/// The version a check held at: what it expected.
pub(crate) fn checked_version(expected: ExpectedVersion) -> u64 {
    match expected {
        ExpectedVersion::Exact(n) => n,
        ExpectedVersion::NoStream | ExpectedVersion::Any => 0,
    }
}

/// How many checks of an append to several aggregates need a marker message: each written
/// aggregate's first event carries its own check, and its other events can carry a check each
/// on the aggregates only read.
pub(crate) fn markers_needed(parts: &[AggregateAppend]) -> usize {
    let checks = parts.iter().filter(|p| p.events.is_empty()).count();
    let carriers: usize = parts.iter().map(|p| p.events.len().saturating_sub(1)).sum();
    checks.saturating_sub(carriers)
}

/// What an append stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendResult {
    /// The stream sequence of each appended event, in order.
    pub sequences: Vec<StreamSequence>,
    /// The aggregate's version after the append.
    pub version: u64,
    /// The events were already stored (a retried append): nothing new was written and the
    /// original sequences are returned.
    pub duplicate: bool,
}

impl AppendResult {
    /// The sequence of the last appended event.
    pub fn last_sequence(&self) -> Option<StreamSequence> {
        self.sequences.last().copied()
    }
}

/// Where a read of the whole stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadFrom {
    /// From the first event.
    #[default]
    Start,
    /// From this stream sequence (inclusive).
    Sequence(StreamSequence),
    /// From the first event stored at or after this time.
    Time(DateTime<Utc>),
}

/// A stream of stored events; a message that cannot be read as an event is an `Err` item that
/// names its sequence, and the stream goes on after it: the caller chooses to skip or stop.
pub type EventStream<'a> = BoxStream<'a, Result<StoredEvent, StoreError>>;

/// An event store: the source of truth of event-sourced aggregates.
///
/// Object-safe: use it as `Arc<dyn EventStore>`. Implementations: the JetStream store
/// (`cim_nats::jetstream::JetStreamEventStore`) and [`crate::memory::InMemoryEventStore`].
#[async_trait]
pub trait EventStore: Send + Sync + fmt::Debug {
    /// Appends the events of one aggregate, all or nothing, if the aggregate is at `expected`.
    ///
    /// Events get consecutive versions after the current one. Appending events that are already
    /// stored (same ids at the same versions, e.g. a retry after a lost acknowledgement) succeeds
    /// with the original sequences and `duplicate: true`.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::WrongExpectedVersion`] on a concurrency conflict; others for invalid
    /// input, a full stream, or the server.
    async fn append(
        &self,
        aggregate_id: &AggregateId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError>;

    /// Reads the events of one aggregate whose version is greater than `after_version`
    /// (0 = all), in order.
    ///
    /// # Errors
    ///
    /// A [`StoreErrorKind::Decode`] naming the sequence of a stored message that is not a
    /// readable event; others from the server.
    async fn read_aggregate(
        &self,
        aggregate_id: &AggregateId,
        after_version: u64,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// Reads the events of one aggregate with a version greater than `after_version`, knowing
    /// that they are all stored after `after_sequence` (e.g. the sequence of a snapshot), which
    /// lets an implementation skip what comes before.
    ///
    /// # Errors
    ///
    /// As [`EventStore::read_aggregate`].
    async fn read_aggregate_after(
        &self,
        aggregate_id: &AggregateId,
        after_version: u64,
        after_sequence: StreamSequence,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut events = self.read_aggregate(aggregate_id, after_version).await?;
        events.retain(|e| e.stream_sequence > after_sequence);
        Ok(events)
    }

    /// Reads one aggregate's events knowing the routing subjects its events can be on (a domain
    /// enum's [`NatsEvent::SUBJECTS`]), which lets an implementation skip discovering them.
    /// Events on other subjects are still found (by a slower path), never skipped.
    ///
    /// # Errors
    ///
    /// As [`EventStore::read_aggregate`].
    async fn read_aggregate_routed(
        &self,
        aggregate_id: &AggregateId,
        routing_subjects: &[&str],
        after_version: u64,
        after_sequence: StreamSequence,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let _ = routing_subjects;
        self.read_aggregate_after(aggregate_id, after_version, after_sequence)
            .await
    }

    /// The aggregate's current version (`None` if it has no events).
    ///
    /// # Errors
    ///
    /// From the server.
    async fn aggregate_version(
        &self,
        aggregate_id: &AggregateId,
    ) -> Result<Option<u64>, StoreError>;

    /// Reads every event of the store in stream order, from `from`, with bounded memory.
    fn stream(&self, from: ReadFrom) -> EventStream<'_>;

    /// The aggregate's last event (`None`: it has none).
    ///
    /// # Errors
    ///
    /// From the server; a [`StoreErrorKind::Decode`] names the sequence of a message that is
    /// not an event.
    async fn last_event(
        &self,
        aggregate_id: &AggregateId,
    ) -> Result<Option<StoredEvent>, StoreError> {
        let Some(version) = self.aggregate_version(aggregate_id).await? else {
            return Ok(None);
        };
        Ok(self
            .read_aggregate(aggregate_id, version.saturating_sub(1))
            .await?
            .pop())
    }

    /// Appends the events of several aggregates of one domain in one all-or-nothing write,
    /// if each aggregate is at its `expected` version; a part without events is a check only
    /// (the append holds only if that aggregate has not moved). Returns one result per part, in
    /// order (a check's has no sequences and its version as checked).
    ///
    /// A retry of an append already stored (same event ids) succeeds with the original
    /// results and `duplicate: true`.
    ///
    /// The default implementation takes one part with events and no checks (as
    /// [`EventStore::append`]) and refuses more: a store must override it to be atomic.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::WrongExpectedVersion`] naming the (first) aggregate that moved;
    /// [`StoreErrorKind::InvalidAppend`] for an aggregate twice, more than
    /// [`MAX_EVENTS_PER_APPEND`] messages, parts of several domains (or of another domain than
    /// the store's), a check without a version; others as [`EventStore::append`].
    async fn append_multi(
        &self,
        parts: Vec<AggregateAppend>,
    ) -> Result<Vec<AppendResult>, StoreError> {
        let mut parts = parts;
        if parts.len() == 1 && !parts[0].events.is_empty() {
            let part = parts.remove(0);
            return Ok(vec![
                self.append(&part.aggregate_id, part.expected, part.events)
                    .await?,
            ]);
        }
        Err(StoreError::new(StoreErrorKind::InvalidAppend(
            "this store cannot append to several aggregates in one write".to_owned(),
        )))
    }

    /// The sequence of the last message in the store (0 if empty).
    ///
    /// # Errors
    ///
    /// From the server.
    async fn last_sequence(&self) -> Result<StreamSequence, StoreError>;

    /// Reads every event into memory, in stream order. Prefer [`EventStore::stream`] for large
    /// stores.
    ///
    /// # Errors
    ///
    /// The first error of the stream.
    async fn read_all(&self) -> Result<Vec<StoredEvent>, StoreError> {
        use futures::TryStreamExt;
        self.stream(ReadFrom::Start).try_collect().await
    }
}

/// Errors of event-store operations: appends and reads.
pub type StoreError = Error<StoreErrorKind>;

/// What went wrong in an event-store operation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The aggregate was not at the version the caller expected: another writer got there first.
    WrongExpectedVersion {
        /// The aggregate.
        aggregate_id: AggregateId,
        /// What the caller expected.
        expected: ExpectedVersion,
        /// The aggregate's version when the append was refused (`None`: it has no events).
        actual: Option<u64>,
    },
    /// A subject or token built from the caller's data is not a valid NATS subject token.
    InvalidSubject,
    /// The append was empty, mixed aggregates, or was otherwise malformed.
    InvalidAppend(String),
    /// A value unique across the aggregates of a domain ([`crate::Reservation`]) is held by
    /// another aggregate.
    Reserved {
        /// The reservation's kind.
        kind: String,
        /// The value.
        value: String,
        /// The aggregate that holds it.
        holder: AggregateId,
    },
    /// An event could not be encoded to JSON.
    Encode,
    /// A stored message could not be decoded into an event.
    Decode {
        /// Stream sequence of the message.
        sequence: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The event is larger than the server's `max_payload`.
    PayloadTooLarge {
        /// Size of the message (payload and headers) in bytes.
        size: usize,
        /// The server's limit in bytes.
        max: usize,
    },
    /// The stream reached one of its limits; with discard policy `New` it refuses appends
    /// rather than dropping old history.
    StreamFull,
    /// The stream does not exist (it was deleted after the store was created).
    StreamNotFound,
    /// The stream exists, but nothing took the request: its leader is being elected, or the
    /// servers holding it are down (or its subjects were changed under the store). Transient
    /// in the first two cases: retry ([`StoreError::is_transient`]).
    Unavailable {
        /// The stream.
        stream: String,
    },
    /// The connection's user is not permitted to publish to (or receive from) this subject, as
    /// its permissions say; the error's source names the user and the rule.
    PermissionDenied {
        /// The refused subject.
        subject: String,
    },
    /// The server answered something this client cannot make sense of (a malformed reply, an
    /// acknowledgement that contradicts the request): a fault of the server or of something
    /// between, not of the caller.
    UnexpectedAnswer(String),
    /// An operation on a KV bucket (snapshots, checkpoints) failed; the source says how.
    Bucket {
        /// The bucket.
        bucket: String,
    },
    /// The server did not answer in time.
    TimedOut,
    /// The server refused the operation with a JetStream error.
    Server {
        /// JetStream error code (`err_code`), 0 if the server gave none.
        code: u64,
        /// The server's description.
        description: String,
    },
    /// Talking to the server failed.
    Connection,
}

impl fmt::Display for StoreErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongExpectedVersion {
                aggregate_id,
                expected,
                actual,
            } => {
                write!(
                    f,
                    "wrong expected version of aggregate {aggregate_id}: expected {expected}, actual "
                )?;
                match actual {
                    Some(v) => write!(f, "{v}"),
                    None => write!(f, "no stream"),
                }
            }
            Self::InvalidSubject => write!(f, "invalid subject"),
            Self::InvalidAppend(why) => write!(f, "invalid append: {why}"),
            Self::Reserved {
                kind,
                value,
                holder,
            } => write!(f, "{kind} {value:?} is already taken, by {holder}"),
            Self::Encode => write!(f, "event could not be encoded"),
            Self::Decode { sequence, reason } => {
                write!(f, "stored message at sequence {sequence} could not be decoded: {reason}")
            }
            Self::PayloadTooLarge { size, max } => write!(
                f,
                "message of {size} bytes exceeds the server's max_payload of {max} bytes"
            ),
            Self::StreamFull => write!(
                f,
                "stream is full: a limit (max messages, bytes or age) is reached and the store never drops history"
            ),
            Self::StreamNotFound => write!(f, "stream not found"),
            Self::Unavailable { stream } => write!(
                f,
                "stream {stream} exists but nothing answered for it (no leader at the moment, \
                 or its servers are down); retry"
            ),
            Self::UnexpectedAnswer(what) => write!(f, "unexpected answer from the server: {what}"),
            Self::Bucket { bucket } => write!(f, "KV bucket {bucket:?}"),
            Self::PermissionDenied { subject } => {
                write!(f, "permission denied for subject {subject:?}")
            }
            Self::TimedOut => write!(f, "timed out waiting for the server"),
            Self::Server { code, description } => {
                write!(f, "server error {code}: {description}")
            }
            Self::Connection => write!(f, "connection to the server failed"),
        }
    }
}

impl StoreError {
    /// Is this worth retrying as it is: the server did not answer in time, the connection
    /// failed, or the stream has no leader at the moment? A version conflict is not (decide
    /// again on a fresh load), nor is invalid input.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind(),
            StoreErrorKind::TimedOut
                | StoreErrorKind::Connection
                | StoreErrorKind::Unavailable { .. }
        )
    }
}
