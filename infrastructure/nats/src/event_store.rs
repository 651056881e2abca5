//! The infrastructure event store: [`JetStreamEventStore`] on the stream `INFRASTRUCTURE_EVENTS`,
//! configured by [`EventStoreConfig`].
//!
//! The store itself is the framework's ([`cim_nats::jetstream::JetStreamEventStore`]): one
//! message per event on `infrastructure.{entity}.{operation}.{infrastructure_id}`, optimistic
//! concurrency per infrastructure, idempotent appends by event id, atomic multi-event appends.
//! This module adds the seed's four-field configuration and re-exports what a program needs to
//! use the store, so that `cim_infrastructure_nats::event_store::{JetStreamEventStore,
//! EventStoreConfig, EventStore}` is a complete import.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use cim_infrastructure_nats::event_store::{EventStore, EventStoreConfig, JetStreamEventStore};
//!
//! let client = async_nats::connect("nats://localhost:4222").await?;
//! let store = JetStreamEventStore::new(client, EventStoreConfig::default()).await?;
//! let events = store.read_all().await?;
//! println!("{} infrastructure events", events.len());
//! # Ok(()) }
//! ```

use std::time::Duration;

use cim_domain_infrastructure::InfrastructureEvent;
use cim_nats::NatsEvent;

pub use cim_nats::jetstream::{JetStreamEventStore, Storage, StoreConfig};
pub use cim_nats::memory::InMemoryEventStore;
pub use cim_nats::{
    AppendResult, Envelope, EventStore, EventStoreExt, EventStream, ExpectedVersion, NewEvent,
    ReadFrom, SetupError, SetupErrorKind, StoreError, StoreErrorKind, StoredEvent, StreamSequence,
};

/// The stream's name by default.
pub const DEFAULT_STREAM_NAME: &str = "INFRASTRUCTURE_EVENTS";

/// The retention by default: one year (365 days).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The most events the stream holds by default.
pub const DEFAULT_MAX_MESSAGES: u64 = 1_000_000;

/// The longest window in which the server recognises a retried append by its event id
/// (the store also recognises retries after it).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The stream of infrastructure events as the seed describes it: a name, a retention, a size
/// limit and a number of replicas.
///
/// Pass it to [`JetStreamEventStore::new`], which converts it into a [`StoreConfig`] on the
/// subjects `infrastructure.>` and creates the stream if it does not exist (or checks that the
/// existing one has these settings).
///
/// ```
/// use cim_infrastructure_nats::event_store::EventStoreConfig;
/// use std::time::Duration;
///
/// let config = EventStoreConfig {
///     stream_name: "INFRASTRUCTURE_EVENTS".to_string(),
///     max_age: Duration::from_secs(365 * 24 * 60 * 60), // 1 year retention
///     max_messages: 1_000_000,                            // Max 1M messages
///     replicas: 3,                                        // 3 replicas for HA
/// };
/// assert_eq!(config.max_age, EventStoreConfig::default().max_age);
/// ```
///
/// # Limits
///
/// The stream uses discard policy `New`: when it holds `max_messages` events, appends fail with
/// [`StoreErrorKind::StreamFull`] instead of deleting the oldest events, so a size limit never
/// drops history. `max_age` is different: JetStream removes each message once it is older than
/// `max_age`, whatever the discard policy. A retention of one year therefore means that events
/// older than a year are gone, and an aggregate whose first events have expired can no longer
/// be rebuilt from the stream. Set `max_age` to [`Duration::ZERO`] to keep every event, as an
/// event store of record should, and bound the stream by `max_messages` (or by bytes, below).
///
/// A zero value means "no limit", as it does for the server: `max_age: Duration::ZERO` keeps
/// events forever and `max_messages: 0` does not bound their number.
///
/// # More options
///
/// Storage (file or memory), a byte limit, the duplicate window and the description are
/// settings of the framework's [`StoreConfig`]; convert and adjust it:
///
/// ```
/// use cim_infrastructure_nats::event_store::{EventStoreConfig, Storage, StoreConfig};
///
/// let mut config = StoreConfig::from(EventStoreConfig::default()).with_storage(Storage::Memory);
/// config.max_bytes = Some(10 * 1024 * 1024 * 1024);
/// assert_eq!(config.subjects, ["infrastructure.>"]);
/// // JetStreamEventStore::new(client, config) accepts either type.
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventStoreConfig {
    /// The stream's name (no spaces, `.`, `*` or `>`).
    pub stream_name: String,
    /// How long JetStream keeps each event; [`Duration::ZERO`] keeps them forever.
    pub max_age: Duration,
    /// The most events the stream holds before it refuses appends; 0 for no limit.
    pub max_messages: u64,
    /// Number of copies in a cluster: 1, 3 or 5 (3 is the production answer; a single server
    /// accepts only 1).
    pub replicas: usize,
}

impl Default for EventStoreConfig {
    /// `INFRASTRUCTURE_EVENTS`, one year, 1,000,000 events, 1 replica.
    fn default() -> Self {
        Self {
            stream_name: DEFAULT_STREAM_NAME.to_owned(),
            max_age: DEFAULT_MAX_AGE,
            max_messages: DEFAULT_MAX_MESSAGES,
            replicas: 1,
        }
    }
}

impl EventStoreConfig {
    /// The framework's configuration for this stream (the same as `StoreConfig::from(self)`).
    pub fn to_store_config(&self) -> StoreConfig {
        StoreConfig::from(self.clone())
    }
}

impl From<EventStoreConfig> for StoreConfig {
    /// The stream on the subjects `infrastructure.>` with file storage, discard policy `New`
    /// (the store always uses it) and these limits; a zero limit becomes "no limit". The
    /// duplicate window is two minutes, or `max_age` if that is shorter.
    fn from(config: EventStoreConfig) -> Self {
        let base = StoreConfig::for_domain(InfrastructureEvent::DOMAIN);
        let max_age = (!config.max_age.is_zero()).then_some(config.max_age);
        StoreConfig {
            stream_name: config.stream_name,
            max_age,
            max_messages: (config.max_messages > 0).then_some(config.max_messages),
            duplicate_window: max_age.map_or(DUPLICATE_WINDOW, |age| age.min(DUPLICATE_WINDOW)),
            replicas: config.replicas,
            ..base
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_limits_mean_no_limit() {
        let config = StoreConfig::from(EventStoreConfig {
            max_age: Duration::ZERO,
            max_messages: 0,
            ..EventStoreConfig::default()
        });
        assert_eq!(config.max_age, None);
        assert_eq!(config.max_messages, None);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn a_short_retention_shortens_the_duplicate_window() {
        let config = StoreConfig::from(EventStoreConfig {
            max_age: Duration::from_secs(30),
            ..EventStoreConfig::default()
        });
        assert_eq!(config.duplicate_window, Duration::from_secs(30));
        assert!(config.validate().is_ok());
    }
}
