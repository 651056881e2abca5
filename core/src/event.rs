//! Domain events: the [`NatsEvent`] trait that routes an event to its subject and describes it,
//! and the ids every stored event carries.

use serde::{de::DeserializeOwned, Serialize};

use crate::identity::{MessageId, MessageIdentity};
use crate::subject::{AggregateId, InvalidSubject, Subject};

/// The id of one event, used as `Nats-Msg-Id` so that a retried append of the same event is
/// recognised as the same event. New ids are UUID v7 (time-ordered).
///
/// Made, like every UUID id of this crate and of the domains built on it, by
/// `#[derive(EntityId)]` (`new`, `from_uuid`, `as_uuid`, `Display`/`FromStr`/serde as a plain
/// UUID).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, cim_nats_macros::EntityId)]
pub struct EventId(uuid::Uuid);

impl EventId {
    /// The placeholder a domain puts in an event's id field when it decides the event: the
    /// store replaces it (see [`EventId::derive`]) when the event is appended. The nil UUID.
    pub const fn unassigned() -> Self {
        Self(uuid::Uuid::nil())
    }

    /// Is this the [`EventId::unassigned`] placeholder?
    pub fn is_unassigned(&self) -> bool {
        self.0.is_nil()
    }

    /// The id of one event, derived from what identifies it, so that the same decision on the
    /// same state always gets the same id (a retry is recognised as the event already stored)
    /// and anything else gets another one. Every typed append (the repository, the publisher,
    /// [`EventStoreExt::append_events`](crate::EventStoreExt::append_events)) gives events this
    /// id; one rule for every domain.
    ///
    /// It is made of:
    ///
    /// - `cause`: the message id of the command that decided the event (the identity passed with
    ///   the append; for an event carrying an identity and appended without one, that identity's
    ///   causation), or none;
    /// - `aggregate`: the aggregate the event is appended to, so that one identity shared by
    ///   commands on different aggregates never gives two events one id;
    /// - `position`: the version the event gives its aggregate ([`Position::Version`]); an
    ///   append with `ExpectedVersion::Any`, whose versions are not known before it is written,
    ///   uses a new message id as cause and the event's index in the append
    ///   ([`Position::Index`]);
    /// - `event_type` and `content`: what was decided, the event's JSON with its own id (and
    ///   the message id of the identity it carries) set to [`EventId::unassigned`], so that two
    ///   writers sharing an identity and racing for one version with different decisions get
    ///   different ids (the loser gets a version conflict, not a reused id).
    ///
    /// Two commands that share a message id, start from the same state of one aggregate and
    /// decide exactly the same events are one command to the store: the second is answered as
    /// a retry of the first (`duplicate: true`). Give each command its own message id
    /// ([`MessageIdentity::caused`]) when identical commands may run at once.
    ///
    /// The id has the UUID version 7 layout, so ids sort by the time of their command: its
    /// 48-bit millisecond timestamp is the cause's when that is a version 7 UUID (0 otherwise);
    /// the other 74 bits are bytes 6 to 15 of the name-based UUID (version 5, SHA-1) of the
    /// parts above in the namespace `619f8e1d-ee86-5dd7-9e89-59737768eb56` (the URL
    /// `https://github.com/thecowboyai/cim-nats/event-id`), the name being: the cause's 16
    /// bytes (zeros for none), the aggregate id, a 0 byte, `v` or `i` and the position as 8
    /// big-endian bytes, the event type, a 0 byte, and the content.
    ///
    /// ```
    /// use cim_nats::event::Position;
    /// use cim_nats::{AggregateId, EventId, MessageIdentity};
    ///
    /// let command = MessageIdentity::new_from_user("alice");
    /// let a = AggregateId::new("a").unwrap();
    /// let b = AggregateId::new("b").unwrap();
    /// let id = |aggregate: &AggregateId, content: &[u8]| {
    ///     EventId::derive(Some(&command.message_id), aggregate, Position::Version(1), "Opened", content)
    /// };
    /// assert_eq!(id(&a, b"{}"), id(&a, b"{}")); // a retry
    /// assert_ne!(id(&a, b"{}"), id(&b, b"{}")); // another aggregate
    /// assert_ne!(id(&a, b"{}"), id(&a, br#"{"x":1}"#)); // another decision
    /// assert_eq!(id(&a, b"{}").as_uuid().get_version_num(), 7);
    /// ```
    pub fn derive(
        cause: Option<&MessageId>,
        aggregate: &AggregateId,
        position: Position,
        event_type: &str,
        content: &[u8],
    ) -> EventId {
        /// The namespace of derived event ids: the name-based UUID (version 5) of
        /// `https://github.com/thecowboyai/cim-nats/event-id` in the URL namespace.
        const NAMESPACE: uuid::Uuid = uuid::uuid!("619f8e1d-ee86-5dd7-9e89-59737768eb56");
        let source = cause.map(MessageId::as_uuid);
        let millis = match source {
            Some(u) if u.get_version_num() == 7 && u.get_variant() == uuid::Variant::RFC4122 => {
                let b = u.as_bytes();
                u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
            }
            _ => 0,
        };
        let (tag, n) = match position {
            Position::Version(v) => (b'v', v),
            Position::Index(i) => (b'i', i),
        };
        let mut name = Vec::with_capacity(64 + aggregate.as_str().len() + content.len());
        name.extend_from_slice(source.map_or(&[0u8; 16], |u| u.as_bytes()));
        name.extend_from_slice(aggregate.as_str().as_bytes());
        name.push(0);
        name.push(tag);
        name.extend_from_slice(&n.to_be_bytes());
        name.extend_from_slice(event_type.as_bytes());
        name.push(0);
        name.extend_from_slice(content);
        let hash = uuid::Uuid::new_v5(&NAMESPACE, &name);
        let mut random = [0u8; 10];
        random.copy_from_slice(&hash.as_bytes()[6..]);
        EventId(uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid())
    }
}

/// Where an event goes in its aggregate, for [`EventId::derive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Position {
    /// The version the event gives its aggregate (1 for its first event): known when the
    /// append expects a version.
    Version(u64),
    /// The event's index among the events of one append (0 for the first): for an append with
    /// `ExpectedVersion::Any`, whose versions the store finds only when it writes.
    Index(u64),
}

/// Not public API: how `#[derive(NatsEvent)]` reads and sets a field marked
/// `#[nats_event(event_id)]`: an [`EventId`] or a `Uuid`.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "a field marked `#[nats_event(event_id)]` must be an `EventId` (or a `Uuid`), not `{Self}`",
    label = "not an `EventId`"
)]
pub trait EventIdField {
    /// The field as an event id.
    fn get_event_id(&self) -> EventId;
    /// Sets the field to `id`.
    fn set_event_id(&mut self, id: EventId);
}

impl EventIdField for EventId {
    fn get_event_id(&self) -> EventId {
        *self
    }

    fn set_event_id(&mut self, id: EventId) {
        *self = id;
    }
}

impl EventIdField for uuid::Uuid {
    fn get_event_id(&self) -> EventId {
        EventId(*self)
    }

    fn set_event_id(&mut self, id: EventId) {
        *self = id.0;
    }
}

/// Not public API: how `#[derive(NatsEvent)]` reads and sets a field marked
/// `#[nats_event(identity)]`.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "a field marked `#[nats_event(identity)]` must be a `MessageIdentity`, not `{Self}`",
    label = "not a `MessageIdentity`"
)]
pub trait IdentityField {
    /// The identity.
    fn identity(&self) -> &MessageIdentity;
    /// The identity, to change it.
    fn identity_mut(&mut self) -> &mut MessageIdentity;
}

impl IdentityField for MessageIdentity {
    fn identity(&self) -> &MessageIdentity {
        self
    }

    fn identity_mut(&mut self) -> &mut MessageIdentity {
        self
    }
}

/// The static description of a domain event enum, generated by `#[derive(NatsEvent)]` as
/// [`NatsEvent::SCHEMA`]: its domain and, for every event type, its routing.
///
/// The words: the *domain* is the first subject token and names the stream; the *entity kind*
/// is the second token, what an event is about inside its aggregate (`compute`, `network`);
/// the *aggregate* is the consistency unit, one version sequence and the last token of its
/// events' subjects (`{domain}.{entity kind}.{operation}.{aggregate id}`). The derive's
/// attribute key for the entity kind is `aggregate = "..."`, the seed's name for the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schema {
    /// The domain, the first token of every subject.
    pub domain: &'static str,
    /// Every event type, with its routing, in declaration order.
    pub events: &'static [EventDescriptor],
    /// Every event type name, in declaration order.
    pub event_types: &'static [&'static str],
    /// Every distinct routing subject `{domain}.{entity kind}.{operation}`.
    pub subjects: &'static [&'static str],
    /// Every distinct entity kind with its wildcard `{domain}.{entity kind}.>`.
    pub entity_wildcards: &'static [(&'static str, &'static str)],
    /// `{domain}.>`.
    pub domain_wildcard: &'static str,
}

/// Static description of one event type (one variant of a domain event enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventDescriptor {
    /// The event type, as written in the `Cim-Event-Type` header (e.g. `ComputeResourceRegistered`).
    pub event_type: &'static str,
    /// The entity kind: the second subject token, what the event is about inside its
    /// aggregate (e.g. `compute`).
    pub entity_kind: &'static str,
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
    /// Everything static about the enum, in one value: the derive generates it; the constants
    /// below read it.
    const SCHEMA: Schema;
    /// The domain, the first token of every subject (e.g. `infrastructure`).
    const DOMAIN: &'static str = Self::SCHEMA.domain;
    /// Every event type this enum can produce, with its routing, in declaration order.
    const EVENTS: &'static [EventDescriptor] = Self::SCHEMA.events;
    /// Every event type name, in declaration order.
    const EVENT_TYPES: &'static [&'static str] = Self::SCHEMA.event_types;
    /// Every distinct routing subject `{domain}.{entity kind}.{operation}`.
    const SUBJECTS: &'static [&'static str] = Self::SCHEMA.subjects;
    /// Every distinct entity kind (second subject token), with its wildcard
    /// `{domain}.{entity kind}.>`.
    const ENTITY_WILDCARDS: &'static [(&'static str, &'static str)] = Self::SCHEMA.entity_wildcards;
    /// The wildcard for the whole domain, `{domain}.>`.
    const DOMAIN_WILDCARD: &'static str = Self::SCHEMA.domain_wildcard;

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

    /// Sets the event's own id (the field marked `#[nats_event(event_id)]`) and the message id
    /// of the identity it carries (the field marked `#[nats_event(identity)]`: an event's
    /// identity is its own, its message id is the event id). The store calls it with the id
    /// it derives ([`EventId::derive`]) when the event is appended. The derive implements it;
    /// the default does nothing (an enum without such fields: the id lives in the headers).
    fn set_event_id(&mut self, id: EventId) {
        let _ = id;
    }

    /// The identity carried by the event, if the enum marks a field for it
    /// (`#[nats_event(identity)]`): its correlation (the conversation), its causation (the
    /// command that caused it) and its actor (who acted). The store writes them in the event's
    /// headers.
    fn message_identity(&self) -> Option<&MessageIdentity> {
        None
    }

    /// The event type name (e.g. `ComputeResourceRegistered`).
    fn event_type(&self) -> &'static str {
        self.descriptor().event_type
    }

    /// The entity kind, the second subject token (e.g. `compute`).
    fn entity_kind(&self) -> &'static str {
        self.descriptor().entity_kind
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

    /// The wildcard `{domain}.{entity kind}.>` of one entity kind, if the enum has it.
    fn entity_wildcard(kind: &str) -> Option<&'static str> {
        Self::ENTITY_WILDCARDS
            .iter()
            .find(|(k, _)| *k == kind)
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

    fn id(
        cause: Option<&MessageId>,
        aggregate: &str,
        position: Position,
        content: &[u8],
    ) -> EventId {
        let aggregate = AggregateId::new(aggregate).unwrap();
        EventId::derive(cause, &aggregate, position, "Opened", content)
    }

    #[test]
    fn derived_ids_change_with_every_part() {
        let message = MessageId::from_uuid(uuid::Uuid::now_v7());
        let other = MessageId::from_uuid(uuid::Uuid::now_v7());
        let base = id(Some(&message), "a", Position::Version(1), b"{}");
        assert_eq!(base, id(Some(&message), "a", Position::Version(1), b"{}"));
        for different in [
            id(Some(&other), "a", Position::Version(1), b"{}"),
            id(None, "a", Position::Version(1), b"{}"),
            id(Some(&message), "b", Position::Version(1), b"{}"),
            id(Some(&message), "a", Position::Version(2), b"{}"),
            id(Some(&message), "a", Position::Index(1), b"{}"),
            id(Some(&message), "a", Position::Version(1), b"{ }"),
        ] {
            assert_ne!(base, different);
        }
        let aggregate = AggregateId::new("a").unwrap();
        assert_ne!(
            base,
            EventId::derive(
                Some(&message),
                &aggregate,
                Position::Version(1),
                "Closed",
                b"{}"
            )
        );
    }

    #[test]
    fn derived_ids_have_the_v7_layout_and_the_command_time() {
        let source = uuid::Uuid::now_v7();
        let message = MessageId::from_uuid(source);
        for n in 0..100 {
            let id = *id(Some(&message), "a", Position::Version(n), b"{}").as_uuid();
            assert_eq!(id.get_version_num(), 7);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            assert_eq!(id.as_bytes()[..6], source.as_bytes()[..6]);
        }
        let id = *id(None, "a", Position::Index(0), b"{}").as_uuid();
        assert_eq!(id.as_bytes()[..6], [0; 6]);
    }

    /// The derivation is part of the wire format: a retry after an upgrade must still yield the
    /// ids of the first attempt.
    #[test]
    fn derived_ids_are_stable() {
        let message = MessageId::from_uuid(uuid::uuid!("01890a5d-ac96-774b-bcce-b302099a8057"));
        assert_eq!(
            id(
                Some(&message),
                "acc-1",
                Position::Version(1),
                br#"{"Opened":{}}"#
            )
            .to_string(),
            STABLE_V1
        );
        assert_eq!(
            id(
                Some(&message),
                "acc-1",
                Position::Index(0),
                br#"{"Opened":{}}"#
            )
            .to_string(),
            STABLE_I0
        );
    }

    const STABLE_V1: &str = "01890a5d-ac96-737c-b314-9a585142a5cd";
    const STABLE_I0: &str = "01890a5d-ac96-749d-ba34-ba00fa885f2c";

    #[test]
    fn unassigned_is_the_nil_uuid() {
        assert!(EventId::unassigned().is_unassigned());
        assert!(!EventId::new().is_unassigned());
    }
}
