//! # cim-domain-infrastructure
//!
//! The CIM infrastructure domain: compute resources, networks, the connections between
//! resources, the software configured on them and the policies that govern them, modelled as an
//! event-sourced aggregate. The crate is pure: no I/O, no async. Persistence and messaging on NATS
//! JetStream live in `cim-infrastructure-nats`.
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

pub mod cidr;
pub mod compute;
pub mod connection;
pub mod error;
pub mod hostname;
pub mod ids;
pub mod network;
pub mod policy;
pub mod software;
pub mod system;

pub use cim_nats::{CausationId, CorrelationId, MessageId, MessageIdentity};

pub use cidr::{Cidr, CidrError};
pub use compute::{ComputeResourceSpec, ComputeType, ResourceCapabilities};
pub use connection::{ConnectionKind, ConnectionSpec};
pub use error::SpecError;
pub use hostname::{Hostname, HostnameError};
pub use ids::{
    ConnectionId, IdError, InfrastructureId, NetworkId, PolicyId, ResourceId, SoftwareId,
};
pub use network::NetworkSpec;
pub use policy::{PolicyRule, PolicyScope};
pub use software::SoftwareConfiguration;
pub use system::{CpuArch, OperatingSystem, SystemArchitecture, SystemArchitectureError};
