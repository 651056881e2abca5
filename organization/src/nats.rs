//! The organization domain on JetStream (feature `jetstream`): its stream, its repository and
//! its directory, running.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use cim_domain_organization::{nats, OrganizationCommand, OrganizationId};
//!
//! let client = async_nats::connect("nats://127.0.0.1:4222").await?;
//! let store = nats::open_store(client).await?; // stream ORGANIZATION_EVENTS on organization.>
//! let organizations = nats::repository(&store);
//! let directory = nats::start_directory(&store).await?;
//!
//! let id = OrganizationId::new();
//! let found = OrganizationCommand::Found { organization_id: id, name: "Acme".into() };
//! let identity = cim_nats::MessageIdentity::new_from_user("alice");
//! let outcome = organizations.execute_as(&id.into(), found, &identity).await?;
//! let stored = outcome.last_sequence();
//! directory.wait_for(stored, std::time::Duration::from_secs(5)).await?;
//! assert_eq!(directory.read().await.organization(id), Some("Acme"));
//! # Ok(()) }
//! ```

use cim_nats::jetstream::{
    JetStreamEventStore, ProjectionHandle, ProjectionOptions, ProjectionRunner, StoreConfig,
};
use cim_nats::{NatsEvent, ProjectionError, Repository, SetupError};

use crate::aggregate::Organization;
use crate::directory::Directory;
use crate::event::OrganizationEvent;

/// The stream of organization events.
pub const STREAM_NAME: &str = "ORGANIZATION_EVENTS";

/// The stream's configuration: [`STREAM_NAME`] on `organization.>`, file storage, kept forever.
pub fn store_config() -> StoreConfig {
    StoreConfig::for_domain(OrganizationEvent::DOMAIN)
}

/// Opens the organization event store, creating its stream if needed.
///
/// # Errors
///
/// From [`JetStreamEventStore::new`]: a server that is too old or without JetStream, a stream
/// of the same name with other settings, or subjects that overlap another stream's.
pub async fn open_store(client: async_nats::Client) -> Result<JetStreamEventStore, SetupError> {
    JetStreamEventStore::new(client, store_config()).await
}

/// Organizations, loaded from and saved to the store.
pub type OrganizationRepository = Repository<Organization>;

/// The repository of organizations on `store`.
pub fn repository(store: &JetStreamEventStore) -> OrganizationRepository {
    Repository::new(store.clone())
}

/// Starts the [`Directory`]: resumed from its checkpoint, caught up, then following live.
///
/// # Errors
///
/// [`ProjectionError::Store`] if its checkpoint bucket or consumer cannot be set up.
pub async fn start_directory(
    store: &JetStreamEventStore,
) -> Result<ProjectionHandle<Directory>, ProjectionError> {
    ProjectionRunner::start::<Directory>(store, ProjectionOptions::default()).await
}
