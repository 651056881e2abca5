//! Domain events: the [`NatsEvent`] trait that routes an event to its subject and describes it,
//! and the ids every stored event carries.

use std::fmt;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::subject::{AggregateId, InvalidSubject, Subject};

/// The id of one event, used as `Nats-Msg-Id` so that a retried append of the same event is
/// recognised as the same event. New ids are UUID v7 (time-ordered).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(uuid::Uuid);

impl EventId {
    /// A new, time-ordered (UUID v7) event id.
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    /// Wraps an existing UUID.
    pub const fn from_uuid(id: uuid::Uuid) -> Self {
        Self(id)
    }

    /// The underlying UUID.
    pub const fn as_uuid(&self) -> &uuid::Uuid {
        &self.0
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<uuid::Uuid> for EventId {
    fn from(id: uuid::Uuid) -> Self {
        Self(id)
    }
}

impl From<EventId> for uuid::Uuid {
    fn from(id: EventId) -> Self {
        id.0
    }
}

impl std::str::FromStr for EventId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(Self)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({})", self.0)
    }
}

/// Static description of one event type (one variant of a domain event enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventDescriptor {
    /// The event type, as written in the `Cim-Event-Type` header (e.g. `ComputeRegistered`).
    pub event_type: &'static str,
    /// The second subject token: the entity kind inside the domain (e.g. `compute`).
    pub aggregate: &'static str,
    /// The third subject token: what happened (e.g. `registered`).
    pub operation: &'static str,
    /// Current schema version of this event type (1 for a type that never changed).
    pub version: u32,
    /// Older schema versions that can still be decoded, by upcasting to `version`.
    pub upcasts_from: &'static [u32],
    /// The routing subject `{domain}.{aggregate}.{operation}`; stored subjects append the
    /// aggregate id to it.
    pub subject: &'static str,
}

impl EventDescriptor {
    /// Can a stored event of this type at schema `version` be decoded?
    pub fn accepts_version(&self, version: u32) -> bool {
        version == self.version || self.upcasts_from.contains(&version)
    }
}

/// Why a stored event could not be turned back into a domain event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// No variant of the enum has this event type.
    #[error("unknown event type {event_type:?} for domain {domain:?}")]
    UnknownEventType {
        /// The domain of the enum that was asked to decode.
        domain: &'static str,
        /// The event type found in the stored event.
        event_type: String,
    },
    /// The event type is known, but not at this schema version.
    #[error(
        "event type {event_type:?} has no schema version {version} \
         (current version {current}, upcasts from {upcasts_from:?})"
    )]
    UnknownVersion {
        /// The event type.
        event_type: String,
        /// The version found in the stored event.
        version: u32,
        /// The current version of this event type in code.
        current: u32,
        /// The older versions that can be upcast.
        upcasts_from: &'static [u32],
    },
    /// The payload decoded, but into another event type than the stored one.
    #[error("payload decodes to event type {found:?}, but the event is stored as {expected:?}")]
    TypeMismatch {
        /// The event type in the stored metadata.
        expected: String,
        /// The event type of the decoded value.
        found: &'static str,
    },
    /// The payload is not valid JSON for this event.
    #[error("invalid payload for {event_type:?}: {source}")]
    Payload {
        /// The event type.
        event_type: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// An upcaster refused the stored payload.
    #[error("cannot upcast {event_type:?} from version {from}: {source}")]
    Upcast {
        /// The event type.
        event_type: String,
        /// The version the failing upcaster starts from.
        from: u32,
        /// The upcaster's error.
        #[source]
        source: UpcastError,
    },
}

/// An upcaster's refusal: the stored JSON of an old schema version cannot be turned into the
/// next version.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct UpcastError {
    message: String,
}

impl UpcastError {
    /// An upcast error with the given message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl From<serde_json::Error> for UpcastError {
    fn from(e: serde_json::Error) -> Self {
        Self::new(e.to_string())
    }
}

impl From<String> for UpcastError {
    fn from(message: String) -> Self {
        Self { message }
    }
}

impl From<&str> for UpcastError {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

/// An upcaster: turns the stored JSON of an event at schema version `n` into the JSON of the same
/// event at version `n + 1`. The JSON is the whole event as serde wrote it (for a default,
/// externally tagged enum: `{"Variant": {...}}`).
pub type Upcaster = fn(serde_json::Value) -> Result<serde_json::Value, UpcastError>;

/// A domain event enum that knows its subjects and its metadata.
///
/// Implement it with `#[derive(NatsEvent)]` (feature `derive`, on by default); the derive fills in
/// every constant and the required methods from `#[nats_event(...)]` attributes and checks them at
/// compile time. All static metadata is `&'static str` or a `const`: nothing is allocated to route
/// an event.
///
/// The stored payload is the event's serde JSON (`serde_json::to_vec(&event)`); the event type
/// and schema version travel in headers, so a reader picks the variant and upcasts old versions
/// before deserialising.
pub trait NatsEvent: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The domain, the first token of every subject (e.g. `infrastructure`).
    const DOMAIN: &'static str;
    /// Every event type this enum can produce, with its routing, in declaration order.
    const EVENTS: &'static [EventDescriptor];
    /// Every event type name, in declaration order.
    const EVENT_TYPES: &'static [&'static str];
    /// Every distinct routing subject `{domain}.{aggregate}.{operation}`.
    const SUBJECTS: &'static [&'static str];
    /// Every distinct entity kind (second subject token), with its wildcard
    /// `{domain}.{aggregate}.>`.
    const AGGREGATE_WILDCARDS: &'static [(&'static str, &'static str)];
    /// The wildcard for the whole domain, `{domain}.>`.
    const DOMAIN_WILDCARD: &'static str;

    /// The static description of this event's variant.
    fn descriptor(&self) -> &'static EventDescriptor;

    /// The event's own id, if the enum marks a field for it; the store uses it as `Nats-Msg-Id`.
    fn event_id(&self) -> Option<EventId>;

    /// The aggregate id carried by the event, if the enum marks a field for it.
    ///
    /// # Errors
    ///
    /// [`InvalidSubject`] if the field's value is not a valid subject token.
    fn aggregate_id(&self) -> Result<Option<AggregateId>, InvalidSubject>;

    /// Upcasts the stored JSON of `event_type` at schema version `from` to the current version.
    /// The derive generates the chain from the variant's `upcast(...)` declarations.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] if the type or version is unknown or an upcaster fails.
    fn upcast(
        event_type: &str,
        from: u32,
        json: serde_json::Value,
    ) -> Result<serde_json::Value, DecodeError>;

    /// The event type name (e.g. `ComputeRegistered`).
    fn event_type(&self) -> &'static str {
        self.descriptor().event_type
    }

    /// The entity kind, the second subject token (e.g. `compute`).
    fn aggregate_kind(&self) -> &'static str {
        self.descriptor().aggregate
    }

    /// The operation, the third subject token (e.g. `registered`).
    fn operation(&self) -> &'static str {
        self.descriptor().operation
    }

    /// The current schema version of this event's type.
    fn schema_version(&self) -> u32 {
        self.descriptor().version
    }

    /// The routing subject `{domain}.{aggregate}.{operation}`.
    fn routing_subject(&self) -> &'static str {
        self.descriptor().subject
    }

    /// The stored subject `{domain}.{aggregate}.{operation}.{aggregate_id}`.
    fn subject(&self, aggregate_id: &AggregateId) -> Subject {
        Subject::for_event(self.routing_subject(), aggregate_id)
    }

    /// The descriptor of an event type, if the enum has it.
    fn descriptor_for(event_type: &str) -> Option<&'static EventDescriptor> {
        Self::EVENTS.iter().find(|d| d.event_type == event_type)
    }

    /// The wildcard `{domain}.{aggregate}.>` of one entity kind, if the enum has it.
    fn aggregate_wildcard(aggregate: &str) -> Option<&'static str> {
        Self::AGGREGATE_WILDCARDS
            .iter()
            .find(|(a, _)| *a == aggregate)
            .map(|(_, w)| *w)
    }

    /// Encodes the event as its stored payload (serde JSON).
    ///
    /// # Errors
    ///
    /// The serde error if the event cannot be serialised (e.g. a map with non-string keys).
    fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// Decodes a stored payload given its event type and schema version, upcasting old versions.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] for an unknown type or version, invalid JSON, a failing upcaster, or a
    /// payload whose variant is not the stored event type.
    fn decode(event_type: &str, version: u32, payload: &[u8]) -> Result<Self, DecodeError> {
        let descriptor =
            Self::descriptor_for(event_type).ok_or_else(|| DecodeError::UnknownEventType {
                domain: Self::DOMAIN,
                event_type: event_type.to_owned(),
            })?;
        if !descriptor.accepts_version(version) {
            return Err(DecodeError::UnknownVersion {
                event_type: event_type.to_owned(),
                version,
                current: descriptor.version,
                upcasts_from: descriptor.upcasts_from,
            });
        }
        let payload_error = |source| DecodeError::Payload {
            event_type: event_type.to_owned(),
            source,
        };
        let event: Self = if version == descriptor.version {
            serde_json::from_slice(payload).map_err(payload_error)?
        } else {
            let json = serde_json::from_slice(payload).map_err(payload_error)?;
            let json = Self::upcast(event_type, version, json)?;
            serde_json::from_value(json).map_err(payload_error)?
        };
        let found = event.event_type();
        if found != event_type {
            return Err(DecodeError::TypeMismatch {
                expected: event_type.to_owned(),
                found,
            });
        }
        Ok(event)
    }
}
