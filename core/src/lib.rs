//! # cim-nats
//!
//! Event-sourced domains on NATS JetStream.
//!
//! - [`NatsEvent`]: a domain event enum that knows its subjects and metadata, implemented with
//!   `#[derive(NatsEvent)]` (feature `derive`).
//! - [`EventStore`]: append with optimistic concurrency ([`ExpectedVersion`]), idempotent by event
//!   id, atomic for the events of one command; read one aggregate; read everything as a stream.
//!   Implemented on JetStream by [`jetstream::JetStreamEventStore`] (feature `jetstream`).
//! - [`MessageIdentity`]: correlation, causation and actor of every message.
//! - [`testing`] (feature `testing`): a throwaway nats-server per test.
//!
//! ## Wire format
//!
//! An event is one message on `{domain}.{aggregate}.{operation}.{aggregate_id}`; its body is the
//! event's JSON and its metadata travels in the headers named in [`headers`]. Any NATS client can
//! read it.
//!
//! ## Features
//!
//! - `derive` (default): `#[derive(NatsEvent)]`.
//! - `jetstream` (default): the JetStream implementations; without it the crate has no I/O and
//!   no dependency on `async-nats`, for pure domain crates.
//! - `testing`: [`testing::NatsServer`] and friends.
#![cfg_attr(docsrs, feature(doc_cfg))]

// The crate's own ids use `#[derive(EntityId)]`, whose code names `::cim_nats`.
extern crate self as cim_nats;

pub mod aggregate;
pub mod encode;
pub mod envelope;
pub mod error;
pub mod event;
pub mod harness;
pub mod headers;
pub mod id;
pub mod identity;
pub mod memory;
pub mod metrics;
pub mod projection;
pub mod publisher;
pub mod repository;
pub mod reservation;
pub mod snapshot;
pub mod store;
pub mod subject;
pub mod subscriber;
pub(crate) mod trace;
pub mod typed;

#[cfg(feature = "jetstream")]
pub mod jetstream;

#[cfg(feature = "testing")]
pub mod testing;

pub use aggregate::Aggregate;
pub use encode::encode_events;
pub use envelope::{Envelope, StoredEvent, StreamSequence};
pub use error::Error;
pub use event::{DecodeError, EventDescriptor, EventId, NatsEvent, Schema, UpcastError, Upcaster};
pub use id::IdParseError;
pub use identity::{CausationId, CorrelationId, MessageId, MessageIdentity};
#[cfg(feature = "jetstream")]
pub use jetstream::{SetupError, SetupErrorKind, SubscriberError, SubscriberErrorKind};
pub use projection::{replay, OnUnreadable, Projection, ProjectionError};
pub use publisher::EventPublisher;
pub use repository::{
    CommandError, CommandOutcome, CommitStats, IntoEventStore, Loaded, Repository,
    DEFAULT_OUTCOME_DEADLINE, DEFAULT_QUEUE_CAPACITY,
};
pub use reservation::{Claim, Reservation, RESERVATION_NAMESPACE};
pub use snapshot::{InMemorySnapshotStore, Snapshot, SnapshotStore};
pub use store::{
    check_marker_subject, is_check_marker, AggregateAppend, AppendResult, EventStore, EventStream,
    ExpectedVersion, NewEvent, ReadFrom, StoreError, StoreErrorKind, MAX_EVENTS_PER_APPEND,
};
pub use subject::{AggregateId, InvalidSubject, Subject};
pub use subscriber::{
    AsyncFnHandler, Delivery, EventHandler, FnEventHandler, HandlerError, HandlerResultExt,
    TypedHandler,
};
pub use typed::{decode_envelope, EventStoreExt};

/// `#[derive(NatsEvent)]`: implements [`NatsEvent`] for a domain event enum.
#[cfg(feature = "derive")]
pub use cim_nats_macros::NatsEvent;

/// `#[derive(EntityId)]`: a UUID newtype as a typed id.
#[cfg(feature = "derive")]
pub use cim_nats_macros::EntityId;

/// Not public API: paths used by the code `#[derive(NatsEvent)]` generates.
#[doc(hidden)]
pub mod __private {
    pub use crate::event::{
        DecodeError, EventDescriptor, EventId, EventIdField, IdentityField, NatsEvent, Schema,
        UpcastError,
    };
    pub use crate::id::IdParseError;
    pub use crate::identity::{MessageId, MessageIdentity};
    pub use crate::subject::{AggregateId, InvalidSubject};
    pub use serde;
    pub use serde_json;
    pub use uuid;
}
