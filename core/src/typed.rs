//! Typed operations on any [`EventStore`]: appending a domain's events (encoded by
//! [`crate::encode_events`]) and reading them back decoded.

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::envelope::{Envelope, StoredEvent, StreamSequence};
use crate::event::NatsEvent;
use crate::identity::MessageIdentity;
use crate::store::{
    AppendResult, EventStore, ExpectedVersion, ReadFrom, StoreError, StoreErrorKind,
};
use crate::subject::AggregateId;

/// The decode error of a stored event that `E` cannot read; the [`crate::DecodeError`] is its
/// source.
pub(crate) fn undecodable<E: NatsEvent>(
    event: &StoredEvent,
    e: crate::event::DecodeError,
) -> StoreError {
    StoreError::with_source(
        StoreErrorKind::Decode {
            sequence: event.stream_sequence.0,
            reason: format!("not readable as a {:?} event", E::DOMAIN),
        },
        e,
    )
}

/// Decodes a stored event into an envelope of `E`; a failure is a [`StoreErrorKind::Decode`]
/// naming the event's stream sequence.
///
/// # Errors
///
/// [`StoreErrorKind::Decode`].
pub fn decode_envelope<E: NatsEvent>(event: StoredEvent) -> Result<Envelope<E>, StoreError> {
    match event.decode::<E>() {
        Ok(decoded) => Ok(Envelope {
            event: decoded,
            stored: event,
        }),
        Err(e) => Err(undecodable::<E>(&event, e)),
    }
}

/// Typed operations on any [`EventStore`], for a domain event enum `E`.
#[async_trait]
pub trait EventStoreExt: EventStore {
    /// Encodes and appends the events of one command ([`crate::encode_events`]: ids derived
    /// from the command, the aggregate and what was decided; the command's identity as
    /// correlation, causation and actor for events that do not carry their own).
    ///
    /// # Errors
    ///
    /// As [`EventStore::append`]; [`StoreErrorKind::InvalidAppend`] for an event that names
    /// another aggregate; [`StoreErrorKind::Encode`].
    async fn append_events<E: NatsEvent + Clone>(
        &self,
        aggregate_id: &AggregateId,
        expected: ExpectedVersion,
        events: &[E],
        identity: Option<&MessageIdentity>,
    ) -> Result<AppendResult, StoreError> {
        let mut events = events.to_vec();
        let new = crate::encode::encode_events(aggregate_id, expected, &mut events, identity)?;
        self.append(aggregate_id, expected, new).await
    }

    /// Reads and decodes one aggregate's events after `after_version`.
    ///
    /// # Errors
    ///
    /// As [`EventStore::read_aggregate`]; a [`StoreErrorKind::Decode`] naming the sequence of an
    /// event `E` cannot decode.
    async fn load_events<E: NatsEvent>(
        &self,
        aggregate_id: &AggregateId,
        after_version: u64,
    ) -> Result<Vec<Envelope<E>>, StoreError> {
        self.read_aggregate_routed(aggregate_id, E::SUBJECTS, after_version, StreamSequence(0))
            .await?
            .into_iter()
            .map(decode_envelope)
            .collect()
    }

    /// Every event of the store decoded as `E`, in order; an event that cannot be read or decoded
    /// is an `Err` item naming its sequence, and the stream goes on after it.
    fn stream_events<E: NatsEvent>(
        &self,
        from: ReadFrom,
    ) -> BoxStream<'_, Result<Envelope<E>, StoreError>> {
        use futures::StreamExt;
        self.stream(from)
            .map(|item| item.and_then(decode_envelope))
            .boxed()
    }
}

impl<T: EventStore + ?Sized> EventStoreExt for T {}
