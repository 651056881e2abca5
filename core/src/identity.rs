//! Who caused a message and which conversation it belongs to.

use serde::{Deserialize, Serialize};

/// The id of one message (a command or an event).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, cim_nats_macros::EntityId)]
pub struct MessageId(uuid::Uuid);

/// Ties together every message of one conversation: the id of the message that started it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, cim_nats_macros::EntityId)]
pub struct CorrelationId(uuid::Uuid);

/// The id of the message that directly caused this one.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, cim_nats_macros::EntityId)]
pub struct CausationId(uuid::Uuid);

impl From<MessageId> for CausationId {
    fn from(id: MessageId) -> Self {
        Self(id.0)
    }
}

impl From<crate::EventId> for CausationId {
    fn from(id: crate::EventId) -> Self {
        Self(*id.as_uuid())
    }
}

/// The identity of a message: its id, the conversation it belongs to, what caused it, and who
/// acted.
///
/// A message that starts a conversation is its own correlation and causation. A message caused by
/// another keeps the correlation and takes the other's id as causation:
///
/// ```
/// use cim_nats::MessageIdentity;
///
/// let command = MessageIdentity::new_from_user("alice");
/// let event = command.caused();
/// assert_eq!(event.correlation_id, command.correlation_id);
/// assert_eq!(*event.causation_id.as_uuid(), *command.message_id.as_uuid());
/// assert_eq!(event.actor, "alice");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageIdentity {
    /// This message's id.
    pub message_id: MessageId,
    /// The conversation this message belongs to.
    pub correlation_id: CorrelationId,
    /// The message that caused this one (itself for a root message).
    pub causation_id: CausationId,
    /// Who acted: a user, a service, a system component.
    pub actor: String,
}

impl MessageIdentity {
    /// The identity of a new root message sent by `user` (a person or a service): a new id that
    /// is also its correlation and causation.
    pub fn new_from_user(user: impl Into<String>) -> Self {
        let id = uuid::Uuid::now_v7();
        Self {
            message_id: MessageId(id),
            correlation_id: CorrelationId(id),
            causation_id: CausationId(id),
            actor: user.into(),
        }
    }

    /// The identity of a new message caused by this one: a new id, the same correlation and
    /// actor, and this message as causation.
    pub fn caused(&self) -> Self {
        Self {
            message_id: MessageId(uuid::Uuid::now_v7()),
            correlation_id: self.correlation_id,
            causation_id: CausationId(self.message_id.0),
            actor: self.actor.clone(),
        }
    }

    /// The identity of a message caused by the given message id within the given conversation
    /// (e.g. an event received from another domain), acting as `actor`.
    pub fn caused_by(
        correlation_id: CorrelationId,
        causation_id: impl Into<CausationId>,
        actor: impl Into<String>,
    ) -> Self {
        Self {
            message_id: MessageId(uuid::Uuid::now_v7()),
            correlation_id,
            causation_id: causation_id.into(),
            actor: actor.into(),
        }
    }

    /// Is this a root message (it started its conversation)?
    pub fn is_root(&self) -> bool {
        self.correlation_id.0 == self.message_id.0 && self.causation_id.0 == self.message_id.0
    }
}
