//! # cim-domain-infrastructure
//!
//! The CIM infrastructure domain: compute resources, networks, the connections between
//! resources, the software configured on them and the policies that govern them, modelled as an
//! event-sourced aggregate. The crate is pure: no I/O, no async. Persistence and messaging on NATS
//! JetStream live in `cim-infrastructure-nats`.
//!
//! ## The aggregate
//!
//! [`InfrastructureAggregate`] is the consistency unit: one per [`InfrastructureId`], every
//! event of one infrastructure on one version sequence, the id as the last subject token. It
//! implements [`cim_nats::Aggregate`]: [`InfrastructureCommand`]s are decided without changing
//! the state, into [`InfrastructureEvent`]s that alone change it; a refused command is an
//! [`InfrastructureError`] naming the invariant and the ids involved. The `handle_*` methods
//! decide and apply in one call and return the events to publish:
//!
//! ```
//! use cim_domain_infrastructure::{
//!     Cidr, ComputeResourceSpec, ComputeType, ConnectionKind, ConnectionSpec, Hostname,
//!     InfrastructureAggregate, InfrastructureEvent, InfrastructureId, MessageIdentity,
//!     NatsEvent, NetworkSpec, SystemArchitecture,
//! };
//!
//! let infra_id = InfrastructureId::new();
//! let mut infra = InfrastructureAggregate::new(infra_id);
//! let ops = MessageIdentity::new_from_user("ops");
//! let host = |name: &str| -> Result<ComputeResourceSpec, Box<dyn std::error::Error>> {
//!     Ok(ComputeResourceSpec::new(
//!         ComputeType::VirtualMachine,
//!         Hostname::new(name)?,
//!         SystemArchitecture::X86_64_LINUX,
//!     ))
//! };
//! let (web, db) = (host("web")?, host("db")?);
//! infra.handle_register_compute_resource(web.clone(), &ops)?;
//! infra.handle_register_compute_resource(db.clone(), &ops)?;
//! let lan = NetworkSpec::new("lan", Cidr::new("10.0.0.0/24")?)?;
//! infra.handle_define_network(lan.clone(), &ops)?;
//! let link = ConnectionSpec::new(web.id, db.id, lan.id, ConnectionKind::Ethernet)?;
//! infra.handle_establish_connection(link, &ops)?;
//!
//! // Decommissioning a connected resource severs its connections in the same command.
//! let events = infra.handle_decommission_compute_resource(db.id, &ops)?;
//! let subjects: Vec<_> = events.iter().map(|e| e.subject(&infra_id.into())).collect();
//! assert_eq!(subjects[0].as_str(), format!("infrastructure.connection.severed.{infra_id}"));
//! assert_eq!(subjects[1].as_str(), format!("infrastructure.compute.decommissioned.{infra_id}"));
//! assert!(infra.is_decommissioned(db.id));
//! assert_eq!(infra.connections().len(), 0);
//!
//! // Every event names the command that caused it.
//! assert!(events.iter().all(|e| *e.identity().causation_id.as_uuid() == *ops.message_id.as_uuid()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Value objects
//!
//! Every value is validated when it is built *and* when it is deserialised, so a value of these
//! types is always valid, whether it came from a caller or from an event stream.
//!
//! - Ids ([`ids`]): [`InfrastructureId`] (the aggregate, convertible into
//!   [`cim_nats::AggregateId`]), [`ResourceId`], [`NetworkId`], [`ConnectionId`], [`SoftwareId`],
//!   [`PolicyId`]: `Copy` UUID v7 newtypes.
//! - [`Hostname`]: an RFC 1123 host name, stored in lowercase.
//! - [`SystemArchitecture`]: a supported `{arch}-{os}` pair such as `x86_64-linux`.
//! - [`Cidr`]: an IPv4 or IPv6 network address range.
//! - Specifications: [`ComputeResourceSpec`], [`NetworkSpec`], [`ConnectionSpec`],
//!   [`SoftwareConfiguration`], [`PolicyRule`].
//!
//! ```
//! use cim_domain_infrastructure::{
//!     ComputeResourceSpec, ComputeType, Hostname, ResourceCapabilities, ResourceId,
//!     SystemArchitecture,
//! };
//!
//! let spec = ComputeResourceSpec {
//!     id: ResourceId::new(),
//!     resource_type: ComputeType::Physical,
//!     hostname: Hostname::new("server01")?,
//!     system: SystemArchitecture::new("x86_64-linux")?,
//!     capabilities: ResourceCapabilities::default(),
//! };
//! assert_eq!(spec.system, SystemArchitecture::X86_64_LINUX);
//!
//! assert!(Hostname::new("-bad").is_err());
//! assert!(SystemArchitecture::new("riscv64-darwin").is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Errors
//!
//! Each value object has its own error type ([`HostnameError`], [`SystemArchitectureError`],
//! [`CidrError`], [`IdError`]); checks spanning a specification fail with [`SpecError`]. Every
//! message names the rejected value and the rule it breaks.
//!
//! ## Message identity
//!
//! [`MessageIdentity`] and its ids are re-exported from `cim-nats`, so commands can be handled
//! with this crate alone.

pub mod aggregate;
pub mod cidr;
pub mod command;
pub mod compute;
pub mod connection;
pub mod error;
pub mod event;
pub mod hostname;
pub mod ids;
pub mod network;
pub mod policy;
pub mod software;
pub mod system;

pub use cim_nats::{
    Aggregate, CausationId, CorrelationId, EventId, MessageId, MessageIdentity, NatsEvent,
};

pub use aggregate::{ComputeResource, InfrastructureAggregate, ResourceStatus};
pub use cidr::{Cidr, CidrError};
pub use command::InfrastructureCommand;
pub use compute::{ComputeResourceSpec, ComputeType, ResourceCapabilities};
pub use connection::{ConnectionKind, ConnectionSpec};
pub use error::{InfrastructureError, SpecError};
pub use event::InfrastructureEvent;
pub use hostname::{Hostname, HostnameError};
pub use ids::{
    ConnectionId, IdError, InfrastructureId, NetworkId, PolicyId, ResourceId, SoftwareId,
};
pub use network::NetworkSpec;
pub use policy::{PolicyRule, PolicyScope};
pub use software::SoftwareConfiguration;
pub use system::{CpuArch, OperatingSystem, SystemArchitecture, SystemArchitectureError};
