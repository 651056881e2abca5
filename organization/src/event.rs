//! The events of an organization, each on `organization.{entity}.{operation}.{organization_id}`.

use cim_nats::{EventId, MessageIdentity, NatsEvent, UpcastError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{DepartmentId, OrganizationId, PersonId};
use crate::values::{InventoryItem, Role};

/// What happened to an organization: the events of [`Organization`](crate::Organization).
///
/// | event | subject | schema |
/// |---|---|---|
/// | [`OrganizationFounded`](Self::OrganizationFounded) | `organization.organization.founded` | 1 |
/// | [`DepartmentCreated`](Self::DepartmentCreated) | `organization.department.created` | 1 |
/// | [`MemberJoined`](Self::MemberJoined) | `organization.member.joined` | 2 (upcasts 1) |
/// | [`MemberLeft`](Self::MemberLeft) | `organization.member.left` | 1 |
/// | [`ResourceAssigned`](Self::ResourceAssigned) | `organization.inventory.assigned` | 1 |
///
/// Every variant has an `event_id` (the enum's `event_id = "event_id"`), sent as `Nats-Msg-Id`.
/// Only [`OrganizationFounded`](Self::OrganizationFounded) names its organization
/// (`#[nats_event(aggregate_id)]`), and the repository refuses to append it to another one;
/// the other events take the id of the aggregate they are appended to.
/// [`ResourceAssigned`](Self::ResourceAssigned) carries its own identity
/// (`#[nats_event(identity)]`): it is caused by another domain's event, and the store writes
/// that cause in its headers.
///
/// ```
/// use cim_domain_organization::OrganizationEvent;
/// use cim_nats::NatsEvent;
///
/// assert_eq!(OrganizationEvent::DOMAIN_WILDCARD, "organization.>");
/// assert!(OrganizationEvent::SUBJECTS.contains(&"organization.member.joined"));
/// let joined = OrganizationEvent::descriptor_for("MemberJoined").unwrap();
/// assert_eq!((joined.version, joined.upcasts_from), (2, &[1][..]));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, NatsEvent)]
#[nats_event(domain = "organization", event_id = "event_id")]
pub enum OrganizationEvent {
    /// An organization was founded: its first event.
    #[nats_event(aggregate = "organization", operation = "founded")]
    OrganizationFounded {
        /// The event's id.
        event_id: EventId,
        /// The organization, the aggregate's id.
        #[nats_event(aggregate_id)]
        organization_id: OrganizationId,
        /// Its name.
        name: String,
    },
    /// A department was created.
    #[nats_event(aggregate = "department", operation = "created")]
    DepartmentCreated {
        /// The event's id.
        event_id: EventId,
        /// The department.
        department: DepartmentId,
        /// Its name.
        name: String,
    },
    /// A person joined a department. Version 1 had one free-text `role`; version 2 has a list
    /// of [`Role`]s, and stored version 1 events are upcast on reading.
    #[nats_event(
        aggregate = "member",
        operation = "joined",
        version = 2,
        upcast(from = 1, fields = member_joined_v1_to_v2)
    )]
    MemberJoined {
        /// The event's id.
        event_id: EventId,
        /// The department.
        department: DepartmentId,
        /// The person.
        person: PersonId,
        /// The person's name.
        name: String,
        /// Their roles in the department, sorted, without repeats.
        roles: Vec<Role>,
    },
    /// A person left a department.
    #[nats_event(aggregate = "member", operation = "left")]
    MemberLeft {
        /// The event's id.
        event_id: EventId,
        /// The department.
        department: DepartmentId,
        /// The person.
        person: PersonId,
    },
    /// An item of another domain was put in a department's inventory.
    #[nats_event(aggregate = "inventory", operation = "assigned")]
    ResourceAssigned {
        /// The event's id (its identity's message id).
        event_id: EventId,
        /// The department.
        department: DepartmentId,
        /// The item.
        resource: InventoryItem,
        /// The event's correlation, cause and actor.
        #[nats_event(identity)]
        identity: MessageIdentity,
    },
}

/// `MemberJoined` version 1 (`"role": "lead"`) to version 2 (`"roles": ["lead"]`), given the
/// variant's fields (`upcast(from = 1, fields = ...)`).
fn member_joined_v1_to_v2(mut fields: Value) -> Result<Value, UpcastError> {
    let object = fields
        .as_object_mut()
        .ok_or("MemberJoined is not an object")?;
    let role = object.remove("role").ok_or("version 1 has no `role`")?;
    let role: Role = role
        .as_str()
        .ok_or("`role` is not a string")?
        .parse()
        .map_err(|e: crate::values::UnknownRole| UpcastError::new(e.to_string()))?;
    object.insert("roles".to_owned(), serde_json::to_value([role])?);
    Ok(fields)
}
