//! Domain events: the [`NatsEvent`] trait that routes an event to its subject and describes it,
//! and the ids every stored event carries.

use std::fmt;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::identity::{MessageId, MessageIdentity};
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

    /// The id of the event at position `index` among the events decided for the command whose
    /// message id is `message_id`: the same command (same message id) always yields the same
    /// event ids, so the store recognises the events of a retried command as the ones it already
    /// has (`Nats-Msg-Id` dedupe), while another command's events at the same version conflict.
    ///
    /// The id has the UUID version 7 layout: its 48-bit millisecond timestamp is the message
    /// id's when that is itself a version 7 UUID (0 otherwise), so event ids still sort by the
    /// time of their command; the other 74 bits are a deterministic mix (splitmix64) of the
    /// whole message id and `index`, and the version and variant bits are set as RFC 9562 says.
    ///
    /// ```
    /// use cim_nats::{EventId, MessageIdentity};
    ///
    /// let command = MessageIdentity::new_from_user("alice");
    /// let first = EventId::for_command(&command.message_id, 0);
    /// assert_eq!(first, EventId::for_command(&command.message_id, 0));
    /// assert_ne!(first, EventId::for_command(&command.message_id, 1));
    /// assert_eq!(first.as_uuid().get_version_num(), 7);
    /// assert_eq!(first.as_uuid().as_bytes()[..6], command.message_id.as_uuid().as_bytes()[..6]);
    /// ```
    pub fn for_command(message_id: &MessageId, index: u32) -> EventId {
        let source = message_id.as_uuid();
        let millis =
            if source.get_version_num() == 7 && source.get_variant() == uuid::Variant::RFC4122 {
                let b = source.as_bytes();
                u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
            } else {
                0
            };
        let bits = source.as_u128();
        let (high, low) = ((bits >> 64) as u64, bits as u64);
        let first = splitmix64(high ^ splitmix64(low ^ splitmix64(u64::from(index))));
        let second = splitmix64(first ^ low.rotate_left(29) ^ u64::from(index).rotate_left(47));
        let mut random = [0u8; 10];
        random[..8].copy_from_slice(&first.to_be_bytes());
        random[8..].copy_from_slice(&second.to_be_bytes()[..2]);
        EventId(uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid())
    }
}

/// One step of the splitmix64 generator: a bijective, well-mixing map of 64-bit values.
const fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
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
/// event at version `n + 1`. Declared with `upcast(from = n, with = f)`, it gets the whole event
/// as serde wrote it (for a default, externally tagged enum: `{"Variant": {...}}`); with
/// `upcast(from = n, fields = f)`, only the variant's content (`{...}`).
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

    /// The identity carried by the event, if the enum marks a field for it
    /// (`#[nats_event(identity)]`): its correlation (the conversation), its causation (the
    /// command that caused it) and its actor (who acted). The store writes them in the event's
    /// headers.
    fn message_identity(&self) -> Option<&MessageIdentity> {
        None
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn for_command_is_deterministic() {
        let message = MessageId::from_uuid(uuid::Uuid::now_v7());
        for index in [0, 1, 7, u32::MAX] {
            assert_eq!(
                EventId::for_command(&message, index),
                EventId::for_command(&message, index)
            );
        }
    }

    #[test]
    fn for_command_differs_by_index_and_by_command() {
        let message = MessageId::from_uuid(uuid::Uuid::now_v7());
        let ids: std::collections::HashSet<_> = (0..10_000)
            .map(|i| EventId::for_command(&message, i))
            .collect();
        assert_eq!(ids.len(), 10_000);
        let other = MessageId::from_uuid(uuid::Uuid::now_v7());
        assert_ne!(
            EventId::for_command(&message, 0),
            EventId::for_command(&other, 0)
        );
    }

    #[test]
    fn for_command_has_the_v7_layout_and_the_command_time() {
        let source = uuid::Uuid::now_v7();
        let message = MessageId::from_uuid(source);
        for index in 0..100 {
            let id = *EventId::for_command(&message, index).as_uuid();
            assert_eq!(id.get_version_num(), 7);
            assert_eq!(id.get_version(), Some(uuid::Version::SortRand));
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            assert_eq!(id.as_bytes()[..6], source.as_bytes()[..6]);
        }
    }

    /// The derivation is part of the wire format: a retry after an upgrade must still yield the
    /// ids of the first attempt.
    #[test]
    fn for_command_is_stable() {
        let message = MessageId::from_uuid(uuid::uuid!("01890a5d-ac96-774b-bcce-b302099a8057"));
        assert_eq!(
            EventId::for_command(&message, 0).to_string(),
            "01890a5d-ac96-79ef-bbae-170be8efcc62"
        );
        assert_eq!(
            EventId::for_command(&message, 1).to_string(),
            "01890a5d-ac96-73ba-a896-3054e1e961e4"
        );
    }

    #[test]
    fn for_command_of_a_non_v7_message_has_time_zero() {
        let message = MessageId::from_uuid(uuid::Uuid::new_v4());
        let id = *EventId::for_command(&message, 3).as_uuid();
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(id.as_bytes()[..6], [0; 6]);
        assert_eq!(
            EventId::for_command(&message, 3),
            EventId::for_command(&message, 3)
        );
    }
}
