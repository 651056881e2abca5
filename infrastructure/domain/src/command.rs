//! The commands the infrastructure aggregate decides on.

use cim_nats::MessageIdentity;
use serde::{Deserialize, Serialize};

use crate::compute::{ComputeResourceSpec, ResourceCapabilities};
use crate::connection::ConnectionSpec;
use crate::ids::{ConnectionId, InfrastructureId, NetworkId, PolicyId, ResourceId, SoftwareId};
use crate::network::NetworkSpec;
use crate::policy::PolicyRule;
use crate::software::SoftwareConfiguration;

/// A request to change an infrastructure, decided by
/// [`InfrastructureAggregate`](crate::InfrastructureAggregate).
///
/// Every command names the infrastructure it is for (so that the first command of a new
/// infrastructure, decided on a `Default` aggregate, knows its id) and carries its own
/// [`MessageIdentity`]. Deciding is deterministic: the same command decided on the same state
/// yields the very same events. Their ids are assigned by the store when it appends them
/// ([`cim_nats::EventId::derive`]: from the identity's message id, the infrastructure, the
/// version and the content, with the command's time), so the store recognises a retry.
///
/// ```
/// use cim_domain_infrastructure::{
///     InfrastructureAggregate, InfrastructureCommand, InfrastructureId, MessageIdentity,
///     ResourceId,
/// };
/// use cim_nats::Aggregate;
///
/// let command = InfrastructureCommand::DecommissionComputeResource {
///     infrastructure_id: InfrastructureId::new(),
///     resource: ResourceId::new(),
///     identity: MessageIdentity::new_from_user("ops"),
/// };
/// assert_eq!(command.identity().actor, "ops");
/// // Nothing is registered yet: the command is refused.
/// assert!(InfrastructureAggregate::default().handle(command).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum InfrastructureCommand {
    /// Registers a compute resource. Refused if its id is already registered or an active
    /// resource has its host name.
    RegisterComputeResource {
        /// The infrastructure.
        infrastructure_id: InfrastructureId,
        /// The resource to register.
        spec: ComputeResourceSpec,
        /// The command's identity.
        identity: MessageIdentity,
    },
    /// Decommissions a compute resource, severing its connections and removing its software and
    /// the policies scoped to it in the same command.
    DecommissionComputeResource {
        /// The infrastructure.
        infrastructure_id: InfrastructureId,
        /// The resource.
        resource: ResourceId,
        /// The command's identity.
        identity: MessageIdentity,
    },
    /// Replaces an active compute resource's capabilities (no event if they are unchanged).
    UpdateComputeResource {
        /// The infrastructure.
        infrastructure_id: InfrastructureId,
        /// The resource.
        resource: ResourceId,
        /// Its new capabilities.
        capabilities: ResourceCapabilities,
        /// The command's identity.
        identity: MessageIdentity,
    },
    /// Defines a network. Refused if its address range overlaps another network's.
    DefineNetwork {
        /// The infrastructure.
        infrastructure_id: InfrastructureId,
        /// The network to define.
        spec: NetworkSpec,
        /// The command's identity.
        identity: MessageIdentity,
    },
    /// Removes a network that carries no connection, with the policies scoped to it.
    RemoveNetwork {
        /// The infrastructure.
        infrastructure_id: InfrastructureId,
        /// The network.
        network: NetworkId,
        /// The command's identity.
        identity: MessageIdentity,
    },
    /// Connects two distinct active compute resources over a defined network.
    EstablishConnection {
        /// The infrastructure.
        infrastructure_id: InfrastructureId,
        /// The connection to establish.
        spec: ConnectionSpec,
        /// The command's identity.
        identity: MessageIdentity,
    },
    /// Severs an established connection.
    SeverConnection {
        /// The infrastructure.
        infrastructure_id: InfrastructureId,
        /// The connection.
        connection: ConnectionId,
        /// The command's identity.
        identity: MessageIdentity,
    },
    /// Configures software on an active compute resource, or changes a configuration (no event
    /// if it is unchanged).
    ConfigureSoftware {
        /// The infrastructure.
        infrastructure_id: InfrastructureId,
        /// The configuration.
        configuration: SoftwareConfiguration,
        /// The command's identity.
        identity: MessageIdentity,
    },
    /// Removes a software configuration.
    RemoveSoftware {
        /// The infrastructure.
        infrastructure_id: InfrastructureId,
        /// The configuration.
        software: SoftwareId,
        /// The command's identity.
        identity: MessageIdentity,
    },
    /// Sets a policy rule, new or changed (no event if it is unchanged). A rule scoped to a
    /// resource or a network needs that resource active or that network defined.
    SetPolicy {
        /// The infrastructure.
        infrastructure_id: InfrastructureId,
        /// The rule.
        rule: PolicyRule,
        /// The command's identity.
        identity: MessageIdentity,
    },
    /// Removes a policy rule.
    RemovePolicy {
        /// The infrastructure.
        infrastructure_id: InfrastructureId,
        /// The rule.
        policy: PolicyId,
        /// The command's identity.
        identity: MessageIdentity,
    },
}

impl InfrastructureCommand {
    /// The infrastructure the command is for.
    pub fn infrastructure_id(&self) -> InfrastructureId {
        *self.parts().0
    }

    /// The command's identity.
    pub fn identity(&self) -> &MessageIdentity {
        self.parts().1
    }

    fn parts(&self) -> (&InfrastructureId, &MessageIdentity) {
        match self {
            Self::RegisterComputeResource {
                infrastructure_id,
                identity,
                ..
            }
            | Self::DecommissionComputeResource {
                infrastructure_id,
                identity,
                ..
            }
            | Self::UpdateComputeResource {
                infrastructure_id,
                identity,
                ..
            }
            | Self::DefineNetwork {
                infrastructure_id,
                identity,
                ..
            }
            | Self::RemoveNetwork {
                infrastructure_id,
                identity,
                ..
            }
            | Self::EstablishConnection {
                infrastructure_id,
                identity,
                ..
            }
            | Self::SeverConnection {
                infrastructure_id,
                identity,
                ..
            }
            | Self::ConfigureSoftware {
                infrastructure_id,
                identity,
                ..
            }
            | Self::RemoveSoftware {
                infrastructure_id,
                identity,
                ..
            }
            | Self::SetPolicy {
                infrastructure_id,
                identity,
                ..
            }
            | Self::RemovePolicy {
                infrastructure_id,
                identity,
                ..
            } => (infrastructure_id, identity),
        }
    }
}
