//! Events as they are stored: [`StoredEvent`] (type-erased) and [`Envelope`] (decoded).

use std::fmt;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::{DecodeError, EventId, NatsEvent};
use crate::identity::{CausationId, CorrelationId};
use crate::subject::AggregateId;

/// A position in a stream: JetStream's stream sequence, from 1.
///
/// The other position, an aggregate's version (its number of events; an event's version is
/// the aggregate's version after it), stays a plain `u64`: the two are already different types,
/// so one cannot be passed where the other is meant, and `ExpectedVersion::Exact(3)` or
/// `publisher.publish(event, id, 3)` read as they should.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct StreamSequence(pub u64);

impl fmt::Display for StreamSequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<u64> for StreamSequence {
    fn from(seq: u64) -> Self {
        Self(seq)
    }
}

impl From<StreamSequence> for u64 {
    fn from(seq: StreamSequence) -> Self {
        seq.0
    }
}

/// An event as stored, with its metadata and its payload still encoded.
///
/// This is what readers of the whole stream and untyped subscribers see; [`StoredEvent::decode`]
/// turns the payload into the domain enum.
#[derive(Clone, PartialEq)]
pub struct StoredEvent {
    /// The event's id (also its `Nats-Msg-Id`).
    pub event_id: EventId,
    /// The event type (e.g. `ComputeResourceRegistered`).
    pub event_type: String,
    /// The schema version of the payload.
    pub schema_version: u32,
    /// The subject it is stored on, `{domain}.{aggregate}.{operation}.{aggregate_id}`.
    pub subject: String,
    /// The entity kind (the subject's second token).
    pub entity_kind: String,
    /// The aggregate instance.
    pub aggregate_id: AggregateId,
    /// The aggregate's version after this event (1 for its first event).
    pub aggregate_version: u64,
    /// The event's position in the stream.
    pub stream_sequence: StreamSequence,
    /// When the event happened.
    pub timestamp: DateTime<Utc>,
    /// The conversation the event belongs to.
    pub correlation_id: Option<CorrelationId>,
    /// The message that caused the event.
    pub causation_id: Option<CausationId>,
    /// Who acted.
    pub actor: Option<String>,
    /// The event's JSON.
    pub payload: Bytes,
}

impl StoredEvent {
    /// Decodes the payload into the domain enum `E`, upcasting an old schema version.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] if `E` does not know the event type or version, or the JSON does not fit.
    pub fn decode<E: NatsEvent>(&self) -> Result<E, DecodeError> {
        E::decode(&self.event_type, self.schema_version, &self.payload)
    }

    /// Decodes the payload into an [`Envelope`] that keeps this metadata.
    ///
    /// # Errors
    ///
    /// As [`StoredEvent::decode`].
    pub fn into_envelope<E: NatsEvent>(self) -> Result<Envelope<E>, DecodeError> {
        let event = self.decode()?;
        Ok(Envelope {
            event,
            stored: self,
        })
    }

    /// The payload as a JSON value, for untyped consumers.
    ///
    /// # Errors
    ///
    /// The JSON error if the payload is not JSON.
    pub fn json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }
}

impl fmt::Debug for StoredEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredEvent")
            .field("event_id", &self.event_id)
            .field("event_type", &self.event_type)
            .field("schema_version", &self.schema_version)
            .field("subject", &self.subject)
            .field("aggregate_version", &self.aggregate_version)
            .field("stream_sequence", &self.stream_sequence.0)
            .field("timestamp", &self.timestamp)
            .field("correlation_id", &self.correlation_id)
            .field("causation_id", &self.causation_id)
            .field("actor", &self.actor)
            .field("payload", &String::from_utf8_lossy(&self.payload))
            .finish_non_exhaustive()
    }
}

/// A decoded event with the metadata it was stored with.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<E> {
    /// The domain event.
    pub event: E,
    /// Its stored form and metadata (the payload bytes are shared, not copied).
    pub stored: StoredEvent,
}

impl<E> Envelope<E> {
    /// The event's position in the stream.
    pub fn sequence(&self) -> StreamSequence {
        self.stored.stream_sequence
    }

    /// The aggregate's version after this event.
    pub fn version(&self) -> u64 {
        self.stored.aggregate_version
    }

    /// The aggregate instance.
    pub fn aggregate_id(&self) -> &AggregateId {
        &self.stored.aggregate_id
    }

    /// The aggregate instance as the domain's typed id (any `FromStr`, e.g. an id made with
    /// `#[derive(EntityId)]`).
    ///
    /// # Errors
    ///
    /// The id's own parse error, when the stored id is not one of that type.
    ///
    /// ```
    /// use cim_nats::{Envelope, EntityId, EventId, NatsEvent};
    ///
    /// #[derive(EntityId)]
    /// #[entity_id(aggregate)]
    /// struct AccountId(uuid::Uuid);
    ///
    /// #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, NatsEvent)]
    /// #[nats_event(domain = "bank", aggregate = "account")]
    /// enum AccountEvent {
    ///     #[nats_event(operation = "opened")]
    ///     Opened { #[nats_event(event_id)] id: EventId },
    /// }
    ///
    /// # fn check(envelope: Envelope<AccountEvent>) -> Result<(), cim_nats::IdParseError> {
    /// let account: AccountId = envelope.typed_aggregate_id()?;
    /// # let _ = account; Ok(()) }
    /// ```
    pub fn typed_aggregate_id<T: std::str::FromStr>(&self) -> Result<T, T::Err> {
        self.stored.aggregate_id.as_str().parse()
    }

    /// The event's id.
    pub fn event_id(&self) -> EventId {
        self.stored.event_id
    }
}
