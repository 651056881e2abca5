//! Errors of the specifications built from several values, and of the aggregate's invariants.
//!
//! Each value object has its own error next to it ([`HostnameError`](crate::HostnameError),
//! [`SystemArchitectureError`](crate::SystemArchitectureError), [`CidrError`](crate::CidrError),
//! [`IdError`](crate::IdError)); [`SpecError`] covers the checks that span a whole specification;
//! [`InfrastructureError`] is why the aggregate refuses a command.

use crate::cidr::Cidr;
use crate::hostname::Hostname;
use crate::ids::{ConnectionId, InfrastructureId, NetworkId, PolicyId, ResourceId, SoftwareId};

/// Why a specification (network, connection, software configuration, policy rule) is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// A required text field is empty or only whitespace.
    #[error("invalid {spec}: `{field}` must not be empty or blank")]
    BlankField {
        /// The specification, e.g. `"network"`.
        spec: &'static str,
        /// The field, e.g. `"name"`.
        field: &'static str,
    },
    /// A connection whose two ends are the same resource.
    #[error("invalid connection: resource {resource} cannot be connected to itself")]
    SelfConnection {
        /// The resource at both ends.
        resource: ResourceId,
    },
}

/// Why [`InfrastructureAggregate`](crate::InfrastructureAggregate) refuses a command: one variant
/// per invariant, each naming the ids (and host names) involved.
///
/// ```
/// use cim_domain_infrastructure::{InfrastructureError, ResourceId};
///
/// let resource = ResourceId::new();
/// let err = InfrastructureError::UnknownResource { resource };
/// assert_eq!(err.to_string(), format!("unknown compute resource {resource}"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InfrastructureError {
    /// A specification breaks its own rules (its `validate()` fails).
    #[error(transparent)]
    InvalidSpec(#[from] SpecError),
    /// The aggregate does not know which infrastructure it is: it was built with `Default` and
    /// has had no event yet. Build it with
    /// [`InfrastructureAggregate::new`](crate::InfrastructureAggregate::new), or send a
    /// [`InfrastructureCommand`](crate::InfrastructureCommand), which names its infrastructure.
    #[error(
        "the aggregate has no infrastructure id yet: build it with \
         `InfrastructureAggregate::new(id)` or send a command that names its infrastructure"
    )]
    MissingInfrastructureId,
    /// The command names another infrastructure than the aggregate's.
    #[error("command for infrastructure {found} sent to infrastructure {expected}")]
    WrongInfrastructure {
        /// The aggregate's infrastructure.
        expected: InfrastructureId,
        /// The infrastructure the command names.
        found: InfrastructureId,
    },
    /// A compute resource with this id was already registered (ids are never reused, even after
    /// a decommissioning).
    #[error("compute resource {resource} is already registered")]
    DuplicateResource {
        /// The resource id.
        resource: ResourceId,
    },
    /// An active compute resource already has this host name.
    #[error("hostname {hostname} is already used by compute resource {existing}")]
    DuplicateHostname {
        /// The host name.
        hostname: Hostname,
        /// The active resource that has it.
        existing: ResourceId,
    },
    /// No compute resource has this id.
    #[error("unknown compute resource {resource}")]
    UnknownResource {
        /// The resource id.
        resource: ResourceId,
    },
    /// The compute resource is decommissioned: it can no longer be changed, connected, given
    /// software or be the scope of a policy.
    #[error("compute resource {resource} ({hostname}) is decommissioned")]
    ResourceDecommissioned {
        /// The resource id.
        resource: ResourceId,
        /// Its host name.
        hostname: Hostname,
    },
    /// The compute resource was already decommissioned.
    #[error("compute resource {resource} ({hostname}) is already decommissioned")]
    AlreadyDecommissioned {
        /// The resource id.
        resource: ResourceId,
        /// Its host name.
        hostname: Hostname,
    },
    /// A network with this id is already defined.
    #[error("network {network} is already defined")]
    DuplicateNetwork {
        /// The network id.
        network: NetworkId,
    },
    /// No network has this id.
    #[error("unknown network {network}")]
    UnknownNetwork {
        /// The network id.
        network: NetworkId,
    },
    /// The new network's address range shares addresses with a network of the infrastructure.
    #[error("network {network} ({cidr}) overlaps network {existing} ({existing_cidr})")]
    OverlappingCidr {
        /// The network being defined.
        network: NetworkId,
        /// Its address range.
        cidr: Cidr,
        /// The network it overlaps.
        existing: NetworkId,
        /// That network's address range.
        existing_cidr: Cidr,
    },
    /// The network still carries connections: sever them before removing it.
    #[error("network {network} still carries {connections} connection(s): sever them first")]
    NetworkInUse {
        /// The network id.
        network: NetworkId,
        /// How many connections it carries.
        connections: usize,
    },
    /// Both ends of a connection are the same resource.
    #[error("compute resource {resource} cannot be connected to itself")]
    SelfConnection {
        /// The resource at both ends.
        resource: ResourceId,
    },
    /// A connection with this id is already established.
    #[error("connection {connection} is already established")]
    DuplicateConnection {
        /// The connection id.
        connection: ConnectionId,
    },
    /// The two resources are already connected on this network (in either direction).
    #[error(
        "compute resources {from} and {to} are already connected on network {network} \
         by connection {existing}"
    )]
    AlreadyConnected {
        /// One end of the refused connection.
        from: ResourceId,
        /// The other end.
        to: ResourceId,
        /// The network.
        network: NetworkId,
        /// The connection that already links them.
        existing: ConnectionId,
    },
    /// No established connection has this id.
    #[error("unknown connection {connection}")]
    UnknownConnection {
        /// The connection id.
        connection: ConnectionId,
    },
    /// The resource already has a configuration of this software, under another id.
    #[error(
        "software {name:?} is already configured on compute resource {resource} as {existing}"
    )]
    DuplicateSoftware {
        /// The resource.
        resource: ResourceId,
        /// The software's name.
        name: String,
        /// The configuration that already exists.
        existing: SoftwareId,
    },
    /// A software configuration cannot move to another resource.
    #[error(
        "software configuration {software} belongs to compute resource {configured_on}, \
         not {resource}"
    )]
    SoftwareOnOtherResource {
        /// The configuration id.
        software: SoftwareId,
        /// The resource the command names.
        resource: ResourceId,
        /// The resource it is configured on.
        configured_on: ResourceId,
    },
    /// No software configuration has this id.
    #[error("unknown software configuration {software}")]
    UnknownSoftware {
        /// The configuration id.
        software: SoftwareId,
    },
    /// No policy rule has this id.
    #[error("unknown policy {policy}")]
    UnknownPolicy {
        /// The policy id.
        policy: PolicyId,
    },
}

/// Fails with [`SpecError::BlankField`] if `value` is empty or only whitespace.
pub(crate) fn require_text(
    spec: &'static str,
    field: &'static str,
    value: &str,
) -> Result<(), SpecError> {
    if value.trim().is_empty() {
        Err(SpecError::BlankField { spec, field })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_text_rejects_blank() {
        assert!(require_text("network", "name", "lan").is_ok());
        for blank in ["", " ", "\t\n"] {
            let err = require_text("network", "name", blank).unwrap_err();
            assert_eq!(
                err,
                SpecError::BlankField {
                    spec: "network",
                    field: "name"
                }
            );
            assert_eq!(
                err.to_string(),
                "invalid network: `name` must not be empty or blank"
            );
        }
    }
}
