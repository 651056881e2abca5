//! The commands an [`Organization`](crate::Organization) decides on, and why it refuses one.

use cim_nats::MessageIdentity;

use crate::ids::{DepartmentId, OrganizationId, PersonId};
use crate::values::{InventoryItem, Role};

/// A request to change an organization. Departments are named by their full
/// [`DepartmentId`]: the organization refuses one of another organization.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum OrganizationCommand {
    /// Founds the organization (its first command).
    Found {
        /// The organization's id: the aggregate's.
        organization_id: OrganizationId,
        /// Its name (not blank).
        name: String,
    },
    /// Creates a department.
    CreateDepartment {
        /// The new department.
        department: DepartmentId,
        /// Its name (not blank).
        name: String,
    },
    /// Adds a person to a department with at least one role.
    AddMember {
        /// The department.
        department: DepartmentId,
        /// The person.
        person: PersonId,
        /// The person's name (not blank).
        name: String,
        /// Their roles (at least one; order and repeats do not matter).
        roles: Vec<Role>,
    },
    /// Removes a person from a department.
    RemoveMember {
        /// The department.
        department: DepartmentId,
        /// The person.
        person: PersonId,
    },
    /// Puts an item in a department's inventory, because of `identity`'s cause (e.g. another
    /// domain's event). Assigning it again to the same department does nothing, so a redelivered
    /// cause is harmless.
    AssignResource {
        /// The department.
        department: DepartmentId,
        /// The item.
        resource: InventoryItem,
        /// The identity of the resulting event: its correlation, cause and actor.
        identity: MessageIdentity,
    },
}

/// Why an organization refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OrganizationError {
    /// The organization has not been founded.
    #[error("the organization is not founded")]
    NotFounded,
    /// The organization was founded already.
    #[error("organization {0} is already founded")]
    AlreadyFounded(OrganizationId),
    /// The command names a department of another organization.
    #[error("department {department} does not belong to organization {organization}")]
    WrongOrganization {
        /// This organization.
        organization: OrganizationId,
        /// The department named.
        department: DepartmentId,
    },
    /// A name is empty or blank.
    #[error("a name must not be blank")]
    BlankName,
    /// The department exists already.
    #[error("department {0} already exists")]
    DepartmentExists(DepartmentId),
    /// No such department.
    #[error("no department {0}")]
    NoSuchDepartment(DepartmentId),
    /// The person is a member of the department already.
    #[error("{person:?} is already a member of {department}")]
    AlreadyMember {
        /// The department.
        department: DepartmentId,
        /// The person.
        person: PersonId,
    },
    /// The person is not a member of the department.
    #[error("{person:?} is not a member of {department}")]
    NotAMember {
        /// The department.
        department: DepartmentId,
        /// The person.
        person: PersonId,
    },
    /// A member needs at least one role.
    #[error("a member needs at least one role")]
    NoRoles,
    /// The item is in another department's inventory.
    #[error("resource {resource} is already assigned to {department}")]
    AssignedElsewhere {
        /// The item's id.
        resource: uuid::Uuid,
        /// The department that holds it.
        department: DepartmentId,
    },
}
