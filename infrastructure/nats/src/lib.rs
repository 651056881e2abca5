//! # cim-infrastructure-nats
//!
//! NATS JetStream integration for the CIM infrastructure domain
//! (`cim-domain-infrastructure`): event sourcing of infrastructures with a persistent event
//! store, publishing and subscribing to their events, and read-model projections. It applies
//! the domain-agnostic framework `cim-nats` to
//! [`InfrastructureEvent`](cim_domain_infrastructure::InfrastructureEvent).
//!
//! ## Modules
//!
//! - [`event_store`]: [`event_store::JetStreamEventStore`] on the stream
//!   `INFRASTRUCTURE_EVENTS` (subjects `infrastructure.>`), configured by
//!   [`event_store::EventStoreConfig`].
//! - [`publisher`]: [`publisher::EventPublisher`], publishing of domain events through the store.
//! - [`subscriber`]: [`subscriber::EventSubscriberBuilder`], [`subscriber::FnEventHandler`] and
//!   the other handlers.
//! - [`projections`]: the [`projections::Topology`] read model and
//!   [`projections::ProjectionManager`].
//! - [`subjects`]: the subject hierarchy, `subjects::subjects::all_compute_events()` and the
//!   other subjects and wildcards.
//!
//! ## Subjects
//!
//! Every event is stored on `infrastructure.{entity}.{operation}.{infrastructure_id}`, for
//! example `infrastructure.compute.registered.<id>`, so the wildcards
//! `infrastructure.compute.>` and `infrastructure.>` select every compute event or every event.
//! The body is the event's JSON; its metadata (event type, schema version, aggregate version,
//! correlation, causation, actor, time) travels in NATS headers.
//!
//! ## Example
//!
//! ```no_run
//! use cim_infrastructure_nats::{
//!     event_store::{EventStoreConfig, JetStreamEventStore},
//!     projections::ProjectionManager,
//!     EventStore,
//! };
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = async_nats::connect("nats://localhost:4222").await?;
//! let store = JetStreamEventStore::new(client, EventStoreConfig::default()).await?;
//!
//! let manager = ProjectionManager::new();
//! manager.rebuild(store.read_all().await?).await?;
//! let topology = manager.get_topology().await;
//! println!("{} active compute resources", topology.active_compute_resources().len());
//! println!("{}", topology.to_mermaid());
//! # Ok(()) }
//! ```

pub mod event_store;
pub mod projections;
pub mod publisher;
pub mod subjects;
pub mod subscriber;

pub use cim_nats::{
    AggregateId, AppendResult, CausationId, CorrelationId, Envelope, EventId, EventStore,
    EventStoreExt, ExpectedVersion, MessageId, MessageIdentity, NatsEvent, ProjectionError,
    ReadFrom, SetupError, SetupErrorKind, StoreError, StoreErrorKind, StoredEvent, StreamSequence,
};

/// The infrastructure domain this crate persists and publishes.
pub use cim_domain_infrastructure as domain;
