//! # cim-domain-organization
//!
//! The CIM organization domain, event-sourced on NATS JetStream with `cim-nats`:
//! organizations, their departments, the people who are members of them with roles, and the
//! items (such as compute resources of the infrastructure domain) each department holds.
//!
//! - [`Organization`] is the aggregate: one per [`OrganizationId`], deciding
//!   [`OrganizationCommand`]s into [`OrganizationEvent`]s.
//! - Departments are scoped in their organization: a [`DepartmentId`] is
//!   `{organization}/{code}`.
//! - [`OrganizationEvent::MemberJoined`] is at schema version 2 (a list of [`Role`]s); stored
//!   version 1 events (one free-text role) are upcast when read.
//! - [`Directory`] is a read model: members by department with their roles.
//! - [`nats`] (feature `jetstream`, on by default) puts it on JetStream: stream
//!   `ORGANIZATION_EVENTS` on `organization.>`. Without the feature the crate does no I/O.
//!
//! ```
//! use cim_domain_organization::{
//!     DepartmentId, Organization, OrganizationCommand, OrganizationEvent, OrganizationId,
//!     PersonId, Role,
//! };
//! use cim_nats::harness::AggregateTest;
//!
//! let org = OrganizationId::new();
//! let platform = DepartmentId::new(org, "platform")?;
//! AggregateTest::<Organization>::given(vec![
//!     OrganizationEvent::OrganizationFounded {
//!         event_id: cim_nats::EventId::new(),
//!         organization_id: org,
//!         name: "Acme".into(),
//!     },
//!     OrganizationEvent::DepartmentCreated {
//!         event_id: cim_nats::EventId::new(),
//!         department: platform.clone(),
//!         name: "Platform".into(),
//!     },
//! ])
//! .when(OrganizationCommand::AddMember {
//!     department: platform,
//!     person: PersonId::new(),
//!     name: "Ada".into(),
//!     roles: vec![Role::Member, Role::Lead, Role::Member],
//! })
//! .then_expect_events(|events| {
//!     let [OrganizationEvent::MemberJoined { roles, .. }] = events else { panic!("{events:?}") };
//!     assert_eq!(roles, &[Role::Lead, Role::Member]);
//! });
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod aggregate;
pub mod command;
pub mod directory;
pub mod event;
pub mod ids;
#[cfg(feature = "jetstream")]
pub mod nats;
pub mod values;

pub use aggregate::{Department, Member, Organization};
pub use command::{OrganizationCommand, OrganizationError};
pub use directory::{Directory, DirectoryDepartment, Listing};
pub use event::OrganizationEvent;
pub use ids::{DepartmentCode, DepartmentId, DepartmentIdError, OrganizationId, PersonId};
pub use values::{InventoryItem, Role, UnknownRole};
