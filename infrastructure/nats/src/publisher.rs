//! Publishing infrastructure events through the event store.
//!
//! [`EventPublisher::publish`] stores one event at the aggregate version it will have (the
//! seed's `publisher.publish(event, infra_id.into(), (seq + 1) as u64)`): another event already
//! at that version is a concurrency conflict, and publishing the same event again (a retry
//! after a lost acknowledgement) succeeds without a second copy. The publisher writes only
//! through the store, never also on core NATS, so each event is stored once.
//!
//! To store the events of one command atomically, use [`EventPublisher::publish_events`], or a
//! [`cim_nats::Repository`] of
//! [`InfrastructureAggregate`](cim_domain_infrastructure::InfrastructureAggregate).

pub use cim_nats::EventPublisher;
