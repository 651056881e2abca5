//! [`Directory`]: the read model of who is where, with which roles, across organizations.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use cim_nats::{Envelope, Projection, ProjectionError};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::OrganizationEvent;
use crate::ids::{DepartmentId, OrganizationId, PersonId};
use crate::values::Role;

/// A member as the directory lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    /// Their name.
    pub name: String,
    /// Their roles in the department.
    pub roles: Vec<Role>,
}

/// A department in the directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryDepartment {
    /// Its name.
    pub name: String,
    /// Its members.
    pub members: BTreeMap<PersonId, Listing>,
    /// The ids of the items in its inventory.
    pub inventory: BTreeSet<Uuid>,
}

/// Members by department with their roles, for every organization of the stream.
///
/// A [`Projection`]: run it with `cim_nats::jetstream::ProjectionRunner` (see
/// `crate::nats::start_directory`), which keeps it and its checkpoint in JetStream KV, or feed
/// it events with [`Directory::apply_event`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Directory {
    organizations: BTreeMap<OrganizationId, String>,
    departments: BTreeMap<DepartmentId, DirectoryDepartment>,
}

impl Directory {
    /// Applies one event.
    pub fn apply_event(&mut self, event: &OrganizationEvent) {
        use OrganizationEvent as E;
        match event {
            E::OrganizationFounded {
                organization_id,
                name,
                ..
            } => {
                self.organizations.insert(*organization_id, name.clone());
            }
            E::DepartmentCreated {
                department, name, ..
            } => {
                self.departments
                    .entry(department.clone())
                    .or_default()
                    .name
                    .clone_from(name);
            }
            E::MemberJoined {
                department,
                person,
                name,
                roles,
                ..
            } => {
                let listing = Listing {
                    name: name.clone(),
                    roles: roles.clone(),
                };
                self.departments
                    .entry(department.clone())
                    .or_default()
                    .members
                    .insert(*person, listing);
            }
            E::MemberLeft {
                department, person, ..
            } => {
                if let Some(d) = self.departments.get_mut(department) {
                    d.members.remove(person);
                }
            }
            E::ResourceAssigned {
                department,
                resource,
                ..
            } => {
                self.departments
                    .entry(department.clone())
                    .or_default()
                    .inventory
                    .insert(resource.id);
            }
        }
    }

    /// An organization's name.
    pub fn organization(&self, id: OrganizationId) -> Option<&str> {
        self.organizations.get(&id).map(String::as_str)
    }

    /// A department.
    pub fn department(&self, id: &DepartmentId) -> Option<&DirectoryDepartment> {
        self.departments.get(id)
    }

    /// The departments of an organization.
    pub fn departments_of(
        &self,
        organization: OrganizationId,
    ) -> impl Iterator<Item = (&DepartmentId, &DirectoryDepartment)> {
        self.departments
            .iter()
            .filter(move |(id, _)| id.organization == organization)
    }

    /// A department's members with their roles (none if the department is unknown).
    pub fn members_of(&self, id: &DepartmentId) -> impl Iterator<Item = (&PersonId, &Listing)> {
        self.departments
            .get(id)
            .into_iter()
            .flat_map(|d| &d.members)
    }

    /// Where a person is a member, with their roles there.
    pub fn memberships(&self, person: PersonId) -> Vec<(&DepartmentId, &Listing)> {
        self.departments
            .iter()
            .filter_map(|(id, d)| d.members.get(&person).map(|l| (id, l)))
            .collect()
    }

    /// Every member holding `role`, with their department.
    pub fn with_role(&self, role: Role) -> Vec<(&DepartmentId, &PersonId)> {
        self.departments
            .iter()
            .flat_map(|(id, d)| {
                d.members
                    .iter()
                    .filter(move |(_, l)| l.roles.contains(&role))
                    .map(move |(person, _)| (id, person))
            })
            .collect()
    }
}

#[async_trait]
impl Projection for Directory {
    type Event = OrganizationEvent;
    const NAME: &'static str = "organization-directory";

    async fn apply(&mut self, event: &Envelope<OrganizationEvent>) -> Result<(), ProjectionError> {
        self.apply_event(&event.event);
        Ok(())
    }
}
