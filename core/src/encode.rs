//! Turning a command's domain events into [`NewEvent`]s: the one function every typed append
//! goes through ([`crate::Repository::save`], [`crate::EventStoreExt::append_events`],
//! [`crate::EventPublisher`]), with one rule on aggregate ids, one on identity and one on event
//! ids.

use std::borrow::Cow;

use bytes::Bytes;
use chrono::Utc;

use crate::event::{EventId, NatsEvent, Position};
use crate::identity::{CausationId, MessageIdentity};
use crate::store::{ExpectedVersion, NewEvent};
use crate::store::{StoreError, StoreErrorKind};
use crate::subject::AggregateId;

/// Encodes the events one command decided for one aggregate, in place: each event gets its id,
/// and the [`NewEvent`]s to append are returned.
///
/// - **Aggregate.** An event that names its aggregate (a field marked
///   `#[nats_event(aggregate_id)]`) must name `aggregate_id`.
/// - **Identity.** An event that carries its own identity (`#[nats_event(identity)]`) keeps its
///   correlation, causation and actor (its cause may be another domain's event); the others
///   take the command's `identity`: its correlation, its message id as causation, its actor.
/// - **Id.** Every event gets [`EventId::derive`] of the command's message id (or, without an
///   `identity`, the causation of the identity the event carries), the aggregate, the event's
///   version, its type and its content; the event's own id field and the message id of the
///   identity it carries are set to it ([`NatsEvent::set_event_id`]). With
///   [`ExpectedVersion::Any`] the version is not known before the store writes the events:
///   they get new ids instead (derived from a new message id and their index), so two appends
///   of the same events under one identity are two appends; sending the returned `NewEvent`s
///   again is still recognised.
///
/// # Errors
///
/// [`StoreErrorKind::InvalidAppend`] for an event naming another aggregate,
/// [`StoreErrorKind::InvalidSubject`] for a carried aggregate id that is not a valid token,
/// [`StoreErrorKind::Encode`] if an event does not serialise.
pub fn encode_events<E: NatsEvent>(
    aggregate_id: &AggregateId,
    expected: ExpectedVersion,
    events: &mut [E],
    identity: Option<&MessageIdentity>,
) -> Result<Vec<NewEvent>, StoreError> {
    encode(aggregate_id, expected, events, identity, true)
}

/// [`encode_events`] of the events of a reservation ([`crate::Reservation`]), stored under the
/// reservation's id while they name their holder.
pub(crate) fn encode_claims<E: NatsEvent>(
    reservation_id: &AggregateId,
    expected: ExpectedVersion,
    events: &mut [E],
    identity: Option<&MessageIdentity>,
) -> Result<Vec<NewEvent>, StoreError> {
    encode(reservation_id, expected, events, identity, false)
}

fn encode<E: NatsEvent>(
    aggregate_id: &AggregateId,
    expected: ExpectedVersion,
    events: &mut [E],
    identity: Option<&MessageIdentity>,
    check_carried: bool,
) -> Result<Vec<NewEvent>, StoreError> {
    let first = match expected {
        ExpectedVersion::NoStream => Some(1),
        ExpectedVersion::Exact(v) => Some(v + 1),
        ExpectedVersion::Any => None,
    };
    let timestamp = Utc::now();
    let fresh = crate::MessageId::from_uuid(uuid::Uuid::now_v7());
    let mut out = Vec::with_capacity(events.len());
    for (i, event) in events.iter_mut().enumerate() {
        let carried = if check_carried {
            event.aggregate_id()
        } else {
            Ok(None)
        };
        match carried {
            Ok(Some(carried)) if carried != *aggregate_id => {
                return Err(StoreError::new(StoreErrorKind::InvalidAppend(format!(
                    "a {} event names aggregate {carried} but is appended to {aggregate_id}",
                    event.event_type()
                ))));
            }
            Ok(_) => {}
            Err(invalid) => {
                return Err(StoreError::with_source(
                    StoreErrorKind::InvalidSubject,
                    invalid,
                ))
            }
        }
        let position = match first {
            Some(v) => Position::Version(v + i as u64),
            None => Position::Index(i as u64),
        };
        let carried = event.message_identity().cloned();
        let cause = match first {
            // Without an expected version the version is not known yet: the events get new
            // ids (a retry sends the same `NewEvent`s, which keep theirs).
            None => Some(fresh),
            Some(_) => identity.map(|id| id.message_id).or_else(|| {
                carried
                    .as_ref()
                    .map(|c| crate::MessageId::from_uuid(*c.causation_id.as_uuid()))
            }),
        };
        let d = event.descriptor();
        let owns_id = event.event_id().is_some() || carried.is_some();
        let encode = |e: &E| {
            e.encode()
                .map_err(|err| StoreError::with_source(StoreErrorKind::Encode, err))
        };
        let derive = |content: &[u8]| {
            EventId::derive(
                cause.as_ref(),
                aggregate_id,
                position,
                d.event_type,
                content,
            )
        };
        let (event_id, payload) = if owns_id {
            // What was decided, without the id that is being derived from it.
            event.set_event_id(EventId::unassigned());
            let id = derive(&encode(event)?);
            event.set_event_id(id);
            (id, encode(event)?)
        } else {
            let content = encode(event)?;
            (derive(&content), content)
        };
        let (correlation_id, causation_id, actor) = match (&carried, identity) {
            (Some(own), _) => (
                Some(own.correlation_id),
                Some(own.causation_id),
                Some(own.actor.clone()),
            ),
            (None, Some(command)) => (
                Some(command.correlation_id),
                Some(CausationId::from(command.message_id)),
                Some(command.actor.clone()),
            ),
            (None, None) => (None, None, None),
        };
        out.push(NewEvent {
            event_id,
            event_type: Cow::Borrowed(d.event_type),
            schema_version: d.version,
            entity_kind: Cow::Borrowed(d.entity_kind),
            routing_subject: Cow::Borrowed(d.subject),
            payload: Bytes::from(payload),
            timestamp,
            correlation_id,
            causation_id,
            actor,
        });
    }
    Ok(out)
}
