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

use cim_nats::jetstream::{JetStreamEventStore, ProjectionHandle, ProjectionOptions, StoreConfig};
use cim_nats::{
    Aggregate, CommandError, CommandOutcome, MessageIdentity, NatsEvent, ProjectionError,
    Repository, SetupError,
};

use crate::aggregate::Organization;
use crate::command::{OrganizationCommand, OrganizationError};
use crate::directory::Directory;
use crate::event::OrganizationEvent;
use crate::ids::{DepartmentId, PersonId};

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
    JetStreamEventStore::for_events::<OrganizationEvent>(client).await
}

/// Organizations, loaded from and saved to the store.
pub type OrganizationRepository = Repository<Organization>;

/// The repository of organizations on `store`.
pub fn repository(store: &JetStreamEventStore) -> OrganizationRepository {
    store.repository()
}

/// Starts the [`Directory`]: resumed from its checkpoint, caught up, then following live.
///
/// # Errors
///
/// [`ProjectionError::Store`] if its checkpoint bucket or consumer cannot be set up.
pub async fn start_directory(
    store: &JetStreamEventStore,
) -> Result<ProjectionHandle<Directory>, ProjectionError> {
    store
        .projection::<Directory>(ProjectionOptions::default())
        .await
}

/// Moves `person` from department `from` to department `to`, keeping their name and roles: the
/// removal and the addition are decided together and stored in one atomic write, so the person
/// is never in both departments nor in neither. Across two organizations, both are checked by
/// the server at the versions decided on ([`Repository::execute_across`]); a conflict is
/// decided again up to `retries` times.
///
/// # Errors
///
/// [`CommandError::Rejected`] with [`OrganizationError::NotAMember`] when the person is not in
/// `from` (perhaps moved by someone else meanwhile), or another rule of either organization;
/// [`CommandError::Store`] for a conflict left after the retries, or a store failure.
pub async fn move_member(
    organizations: &OrganizationRepository,
    from: &DepartmentId,
    to: &DepartmentId,
    person: PersonId,
    identity: &MessageIdentity,
    retries: usize,
) -> Result<Vec<CommandOutcome<OrganizationEvent>>, CommandError<OrganizationError>> {
    let remove = || OrganizationCommand::RemoveMember {
        department: from.clone(),
        person,
    };
    // The addition, as the source organization knows the person.
    let add = |source: &Organization| -> Result<OrganizationCommand, OrganizationError> {
        let member = source
            .department(&from.code)
            .and_then(|d| d.members.get(&person))
            .ok_or_else(|| OrganizationError::NotAMember {
                department: from.clone(),
                person,
            })?;
        Ok(OrganizationCommand::AddMember {
            department: to.clone(),
            person,
            name: member.name.clone(),
            roles: member.roles.clone(),
        })
    };
    let (source, target) = (from.organization.into(), to.organization.into());
    if from.organization == to.organization {
        // One organization: both decided on it, the addition on the state after the removal.
        let [moved] = organizations
            .execute_across_as(
                [&source],
                |[org]| {
                    let addition = add(org)?;
                    let mut events = org.handle(remove())?;
                    let mut after = org.clone();
                    for event in &events {
                        after.apply(event);
                    }
                    events.extend(after.handle(addition)?);
                    Ok([events])
                },
                identity,
                retries,
            )
            .await?;
        return Ok(vec![moved]);
    }
    let [removed, added] = organizations
        .execute_across_as(
            [&source, &target],
            |[from_org, to_org]| {
                let addition = add(from_org)?;
                Ok([from_org.handle(remove())?, to_org.handle(addition)?])
            },
            identity,
            retries,
        )
        .await?;
    Ok(vec![removed, added])
}
