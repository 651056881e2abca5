//! [`Organization`]: the aggregate, its state and its rules.

use std::collections::BTreeMap;

use cim_nats::{Aggregate, EventId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::command::{OrganizationCommand, OrganizationError};
use crate::event::OrganizationEvent;
use crate::ids::{DepartmentCode, DepartmentId, OrganizationId, PersonId};
use crate::values::Role;

/// A member of a department as the organization knows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Their name.
    pub name: String,
    /// Their roles, sorted, without repeats.
    pub roles: Vec<Role>,
}

/// A department: its members and its inventory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Department {
    /// Its name.
    pub name: String,
    /// Its members.
    pub members: BTreeMap<PersonId, Member>,
    /// The items it holds, by id, with their labels.
    pub inventory: BTreeMap<Uuid, String>,
}

/// One organization: its departments, their members and inventories. The consistency unit:
/// every event of one organization is on one version sequence.
///
/// Rules: the organization is founded once, before anything else; department codes are unique
/// in it; a member has at least one role and joins a department once; an inventory item is in
/// at most one department.
///
/// ```
/// use cim_domain_organization::{
///     DepartmentId, Organization, OrganizationCommand, OrganizationId, PersonId, Role,
/// };
/// use cim_nats::Aggregate;
///
/// let id = OrganizationId::new();
/// let mut org = Organization::default();
/// let found = OrganizationCommand::Found { organization_id: id, name: "Acme".into() };
/// for event in org.handle(found)? {
///     org.apply(&event);
/// }
/// let platform = DepartmentId::new(id, "platform")?;
/// let create = OrganizationCommand::CreateDepartment { department: platform.clone(), name: "Platform".into() };
/// for event in org.handle(create)? {
///     org.apply(&event);
/// }
/// assert_eq!(org.department(&platform.code).map(|d| d.name.as_str()), Some("Platform"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Organization {
    id: Option<OrganizationId>,
    name: String,
    departments: BTreeMap<DepartmentCode, Department>,
}

impl Organization {
    /// The organization's id, once founded.
    pub fn id(&self) -> Option<OrganizationId> {
        self.id
    }

    /// Its name (empty before it is founded).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A department by its code.
    pub fn department(&self, code: &DepartmentCode) -> Option<&Department> {
        self.departments.get(code)
    }

    /// Every department, by code.
    pub fn departments(&self) -> impl Iterator<Item = (&DepartmentCode, &Department)> {
        self.departments.iter()
    }

    /// The department `id` names, if it is of this organization: `None` if it does not exist
    /// yet.
    fn scoped(&self, id: &DepartmentId) -> Result<Option<&Department>, OrganizationError> {
        let organization = self.id.ok_or(OrganizationError::NotFounded)?;
        if id.organization != organization {
            return Err(OrganizationError::WrongOrganization {
                organization,
                department: id.clone(),
            });
        }
        Ok(self.departments.get(&id.code))
    }

    fn existing(&self, id: &DepartmentId) -> Result<&Department, OrganizationError> {
        self.scoped(id)?
            .ok_or_else(|| OrganizationError::NoSuchDepartment(id.clone()))
    }
}

fn not_blank(name: String) -> Result<String, OrganizationError> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Err(OrganizationError::BlankName);
    }
    Ok(trimmed.to_owned())
}

impl Aggregate for Organization {
    type Event = OrganizationEvent;
    type Command = OrganizationCommand;
    type Error = OrganizationError;

    fn handle(
        &self,
        command: OrganizationCommand,
    ) -> Result<Vec<OrganizationEvent>, OrganizationError> {
        use OrganizationCommand as C;
        use OrganizationEvent as E;
        // Ids are assigned by the store when it appends the events (`EventId::derive`).
        let event_id = EventId::unassigned();
        let event = match command {
            C::Found {
                organization_id,
                name,
            } => {
                if let Some(id) = self.id {
                    return Err(OrganizationError::AlreadyFounded(id));
                }
                E::OrganizationFounded {
                    event_id,
                    organization_id,
                    name: not_blank(name)?,
                }
            }
            C::CreateDepartment { department, name } => {
                if self.scoped(&department)?.is_some() {
                    return Err(OrganizationError::DepartmentExists(department));
                }
                E::DepartmentCreated {
                    event_id,
                    department,
                    name: not_blank(name)?,
                }
            }
            C::AddMember {
                department,
                person,
                name,
                mut roles,
            } => {
                if self.existing(&department)?.members.contains_key(&person) {
                    return Err(OrganizationError::AlreadyMember { department, person });
                }
                roles.sort_unstable();
                roles.dedup();
                if roles.is_empty() {
                    return Err(OrganizationError::NoRoles);
                }
                E::MemberJoined {
                    event_id,
                    department,
                    person,
                    name: not_blank(name)?,
                    roles,
                }
            }
            C::RemoveMember { department, person } => {
                if !self.existing(&department)?.members.contains_key(&person) {
                    return Err(OrganizationError::NotAMember { department, person });
                }
                E::MemberLeft {
                    event_id,
                    department,
                    person,
                }
            }
            C::AssignResource {
                department,
                resource,
                identity,
            } => {
                if self
                    .existing(&department)?
                    .inventory
                    .contains_key(&resource.id)
                {
                    return Ok(Vec::new());
                }
                if let Some((code, _)) = self
                    .departments
                    .iter()
                    .find(|(_, d)| d.inventory.contains_key(&resource.id))
                {
                    return Err(OrganizationError::AssignedElsewhere {
                        resource: resource.id,
                        department: DepartmentId {
                            organization: department.organization,
                            code: code.clone(),
                        },
                    });
                }
                E::ResourceAssigned {
                    event_id,
                    department,
                    resource,
                    identity,
                }
            }
        };
        Ok(vec![event])
    }

    fn apply(&mut self, event: &OrganizationEvent) {
        use OrganizationEvent as E;
        match event {
            E::OrganizationFounded {
                organization_id,
                name,
                ..
            } => {
                self.id = Some(*organization_id);
                self.name.clone_from(name);
            }
            E::DepartmentCreated {
                department, name, ..
            } => {
                self.departments
                    .entry(department.code.clone())
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
                let member = Member {
                    name: name.clone(),
                    roles: roles.clone(),
                };
                self.departments
                    .entry(department.code.clone())
                    .or_default()
                    .members
                    .insert(*person, member);
            }
            E::MemberLeft {
                department, person, ..
            } => {
                if let Some(d) = self.departments.get_mut(&department.code) {
                    d.members.remove(person);
                }
            }
            E::ResourceAssigned {
                department,
                resource,
                ..
            } => {
                self.departments
                    .entry(department.code.clone())
                    .or_default()
                    .inventory
                    .insert(resource.id, resource.label.clone());
            }
        }
    }
}
