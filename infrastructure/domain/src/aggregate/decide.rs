//! Deciding a command: the invariants, checked against the state without changing it, and the
//! events that follow.

use cim_nats::{CausationId, EventId, MessageId, MessageIdentity};

use super::{ComputeResource, InfrastructureAggregate};
use crate::command::InfrastructureCommand;
use crate::compute::{ComputeResourceSpec, ResourceCapabilities};
use crate::connection::ConnectionSpec;
use crate::error::InfrastructureError;
use crate::event::InfrastructureEvent;
use crate::ids::{ConnectionId, InfrastructureId, NetworkId, PolicyId, ResourceId, SoftwareId};
use crate::network::NetworkSpec;
use crate::policy::{PolicyRule, PolicyScope};
use crate::software::SoftwareConfiguration;

type Decided = Result<Vec<InfrastructureEvent>, InfrastructureError>;

/// The events of one command, built in order. Their ids are left to the store, which derives
/// them when it appends the events ([`EventId::derive`]).
struct Events<'a> {
    infrastructure_id: InfrastructureId,
    command: &'a MessageIdentity,
    events: Vec<InfrastructureEvent>,
}

/// The fields every event carries.
struct Meta {
    event_id: EventId,
    infrastructure_id: InfrastructureId,
    identity: MessageIdentity,
}

impl<'a> Events<'a> {
    fn new(infrastructure_id: InfrastructureId, command: &'a MessageIdentity) -> Self {
        Self {
            infrastructure_id,
            command,
            events: Vec::new(),
        }
    }

    /// Adds the event `make` builds from the next event's common fields: an unassigned id (the
    /// store assigns it: the same command decided on the same state gets the same ids, as the
    /// store derives them from the command, the infrastructure, the version and the content),
    /// and an identity caused by the command.
    fn push(&mut self, make: impl FnOnce(Meta) -> InfrastructureEvent) {
        let event_id = EventId::unassigned();
        let identity = MessageIdentity {
            message_id: MessageId::from_uuid(*event_id.as_uuid()),
            correlation_id: self.command.correlation_id,
            causation_id: CausationId::from(self.command.message_id),
            actor: self.command.actor.clone(),
        };
        self.events.push(make(Meta {
            event_id,
            infrastructure_id: self.infrastructure_id,
            identity,
        }));
    }

    fn done(self) -> Decided {
        Ok(self.events)
    }
}

/// [`Aggregate::handle`](cim_nats::Aggregate::handle) of [`InfrastructureAggregate`].
pub(super) fn decide(state: &InfrastructureAggregate, command: InfrastructureCommand) -> Decided {
    use InfrastructureCommand as C;
    let infrastructure_id = command.infrastructure_id();
    if let Some(expected) = state.id.filter(|id| *id != infrastructure_id) {
        return Err(InfrastructureError::WrongInfrastructure {
            expected,
            found: infrastructure_id,
        });
    }
    let identity = command.identity().clone();
    let out = Events::new(infrastructure_id, &identity);
    match command {
        C::RegisterComputeResource { spec, .. } => register(state, out, spec),
        C::DecommissionComputeResource { resource, .. } => decommission(state, out, resource),
        C::UpdateComputeResource {
            resource,
            capabilities,
            ..
        } => update(state, out, resource, capabilities),
        C::DefineNetwork { spec, .. } => define_network(state, out, spec),
        C::RemoveNetwork { network, .. } => remove_network(state, out, network),
        C::EstablishConnection { spec, .. } => establish(state, out, spec),
        C::SeverConnection { connection, .. } => sever(state, out, connection),
        C::ConfigureSoftware { configuration, .. } => configure(state, out, configuration),
        C::RemoveSoftware { software, .. } => remove_software(state, out, software),
        C::SetPolicy { rule, .. } => set_policy(state, out, rule),
        C::RemovePolicy { policy, .. } => remove_policy(state, out, policy),
    }
}

impl InfrastructureAggregate {
    /// The resource, if it is known and active.
    fn active_resource(&self, id: ResourceId) -> Result<&ComputeResource, InfrastructureError> {
        let resource = self
            .resources
            .get(&id)
            .ok_or(InfrastructureError::UnknownResource { resource: id })?;
        if !resource.is_active() {
            return Err(InfrastructureError::ResourceDecommissioned {
                resource: id,
                hostname: resource.spec.hostname.clone(),
            });
        }
        Ok(resource)
    }

    fn known_network(&self, id: NetworkId) -> Result<&NetworkSpec, InfrastructureError> {
        self.networks
            .get(&id)
            .ok_or(InfrastructureError::UnknownNetwork { network: id })
    }

    /// The ids of the policies scoped to `scope`, in id order.
    fn policies_scoped_to(&self, scope: PolicyScope) -> impl Iterator<Item = PolicyId> + '_ {
        self.policies
            .values()
            .filter(move |p| p.scope == scope)
            .map(|p| p.id)
    }
}

fn register(
    state: &InfrastructureAggregate,
    mut out: Events<'_>,
    spec: ComputeResourceSpec,
) -> Decided {
    if state.resources.contains_key(&spec.id) {
        return Err(InfrastructureError::DuplicateResource { resource: spec.id });
    }
    if let Some(existing) = state.resource_by_hostname(&spec.hostname) {
        return Err(InfrastructureError::DuplicateHostname {
            hostname: spec.hostname,
            existing: existing.id(),
        });
    }
    let (hostname, resource_id) = (spec.hostname.clone(), spec.id);
    out.push(|m| InfrastructureEvent::ComputeResourceRegistered {
        event_id: m.event_id,
        infrastructure_id: m.infrastructure_id,
        identity: m.identity,
        resource: spec,
    });
    // Unique across infrastructures: the repository stores it under the hostname's
    // reservation, checked to be free, with the registration.
    out.push(|m| InfrastructureEvent::HostnameReserved {
        event_id: m.event_id,
        infrastructure_id: m.infrastructure_id,
        identity: m.identity,
        hostname,
        resource_id,
    });
    out.done()
}

fn decommission(
    state: &InfrastructureAggregate,
    mut out: Events<'_>,
    resource: ResourceId,
) -> Decided {
    let record = state
        .resources
        .get(&resource)
        .ok_or(InfrastructureError::UnknownResource { resource })?;
    if !record.is_active() {
        return Err(InfrastructureError::AlreadyDecommissioned {
            resource,
            hostname: record.spec.hostname.clone(),
        });
    }
    for connection_id in state.connections_of(resource).map(|c| c.id) {
        out.push(|m| InfrastructureEvent::ConnectionSevered {
            event_id: m.event_id,
            infrastructure_id: m.infrastructure_id,
            identity: m.identity,
            connection_id,
        });
    }
    for software_id in state
        .software
        .values()
        .filter(|s| s.resource == resource)
        .map(|s| s.id)
    {
        out.push(|m| InfrastructureEvent::SoftwareRemoved {
            event_id: m.event_id,
            infrastructure_id: m.infrastructure_id,
            identity: m.identity,
            software_id,
        });
    }
    for policy_id in state.policies_scoped_to(PolicyScope::Resource(resource)) {
        out.push(|m| policy_removed(m, policy_id));
    }
    out.push(|m| InfrastructureEvent::ComputeResourceDecommissioned {
        event_id: m.event_id,
        infrastructure_id: m.infrastructure_id,
        identity: m.identity,
        resource_id: resource,
    });
    let hostname = record.spec.hostname.clone();
    out.push(|m| InfrastructureEvent::HostnameReleased {
        event_id: m.event_id,
        infrastructure_id: m.infrastructure_id,
        identity: m.identity,
        hostname,
        resource_id: resource,
    });
    out.done()
}

fn update(
    state: &InfrastructureAggregate,
    mut out: Events<'_>,
    resource: ResourceId,
    capabilities: ResourceCapabilities,
) -> Decided {
    if state.active_resource(resource)?.spec.capabilities == capabilities {
        return out.done();
    }
    out.push(|m| InfrastructureEvent::ComputeResourceUpdated {
        event_id: m.event_id,
        infrastructure_id: m.infrastructure_id,
        identity: m.identity,
        resource_id: resource,
        capabilities,
    });
    out.done()
}

fn define_network(
    state: &InfrastructureAggregate,
    mut out: Events<'_>,
    spec: NetworkSpec,
) -> Decided {
    spec.validate()?;
    if state.networks.contains_key(&spec.id) {
        return Err(InfrastructureError::DuplicateNetwork { network: spec.id });
    }
    if let Some(existing) = state
        .networks
        .values()
        .find(|n| n.cidr.overlaps(&spec.cidr))
    {
        return Err(InfrastructureError::OverlappingCidr {
            network: spec.id,
            cidr: spec.cidr,
            existing: existing.id,
            existing_cidr: existing.cidr,
        });
    }
    out.push(|m| InfrastructureEvent::NetworkDefined {
        event_id: m.event_id,
        infrastructure_id: m.infrastructure_id,
        identity: m.identity,
        network: spec,
    });
    out.done()
}

fn remove_network(
    state: &InfrastructureAggregate,
    mut out: Events<'_>,
    network: NetworkId,
) -> Decided {
    state.known_network(network)?;
    let connections = state
        .connections
        .values()
        .filter(|c| c.network == network)
        .count();
    if connections > 0 {
        return Err(InfrastructureError::NetworkInUse {
            network,
            connections,
        });
    }
    for policy_id in state.policies_scoped_to(PolicyScope::Network(network)) {
        out.push(|m| policy_removed(m, policy_id));
    }
    out.push(|m| InfrastructureEvent::NetworkRemoved {
        event_id: m.event_id,
        infrastructure_id: m.infrastructure_id,
        identity: m.identity,
        network_id: network,
    });
    out.done()
}

fn establish(
    state: &InfrastructureAggregate,
    mut out: Events<'_>,
    spec: ConnectionSpec,
) -> Decided {
    if spec.from == spec.to {
        return Err(InfrastructureError::SelfConnection {
            resource: spec.from,
        });
    }
    spec.validate()?;
    if state.connections.contains_key(&spec.id) {
        return Err(InfrastructureError::DuplicateConnection {
            connection: spec.id,
        });
    }
    state.known_network(spec.network)?;
    state.active_resource(spec.from)?;
    state.active_resource(spec.to)?;
    if let Some(existing) = state
        .connections
        .values()
        .find(|c| c.network == spec.network && c.connects(spec.from) && c.connects(spec.to))
    {
        return Err(InfrastructureError::AlreadyConnected {
            from: spec.from,
            to: spec.to,
            network: spec.network,
            existing: existing.id,
        });
    }
    out.push(|m| InfrastructureEvent::ConnectionEstablished {
        event_id: m.event_id,
        infrastructure_id: m.infrastructure_id,
        identity: m.identity,
        connection: spec,
    });
    out.done()
}

fn sever(
    state: &InfrastructureAggregate,
    mut out: Events<'_>,
    connection: ConnectionId,
) -> Decided {
    if !state.connections.contains_key(&connection) {
        return Err(InfrastructureError::UnknownConnection { connection });
    }
    out.push(|m| InfrastructureEvent::ConnectionSevered {
        event_id: m.event_id,
        infrastructure_id: m.infrastructure_id,
        identity: m.identity,
        connection_id: connection,
    });
    out.done()
}

fn configure(
    state: &InfrastructureAggregate,
    mut out: Events<'_>,
    configuration: SoftwareConfiguration,
) -> Decided {
    configuration.validate()?;
    state.active_resource(configuration.resource)?;
    match state.software.get(&configuration.id) {
        Some(current) if current.resource != configuration.resource => {
            return Err(InfrastructureError::SoftwareOnOtherResource {
                software: configuration.id,
                resource: configuration.resource,
                configured_on: current.resource,
            });
        }
        Some(current) if *current == configuration => return out.done(),
        Some(_) => {}
        None => {
            if let Some(existing) = state
                .software
                .values()
                .find(|s| s.resource == configuration.resource && s.name == configuration.name)
            {
                return Err(InfrastructureError::DuplicateSoftware {
                    resource: configuration.resource,
                    name: configuration.name,
                    existing: existing.id,
                });
            }
        }
    }
    out.push(|m| InfrastructureEvent::SoftwareConfigured {
        event_id: m.event_id,
        infrastructure_id: m.infrastructure_id,
        identity: m.identity,
        software: configuration,
    });
    out.done()
}

fn remove_software(
    state: &InfrastructureAggregate,
    mut out: Events<'_>,
    software: SoftwareId,
) -> Decided {
    if !state.software.contains_key(&software) {
        return Err(InfrastructureError::UnknownSoftware { software });
    }
    out.push(|m| InfrastructureEvent::SoftwareRemoved {
        event_id: m.event_id,
        infrastructure_id: m.infrastructure_id,
        identity: m.identity,
        software_id: software,
    });
    out.done()
}

fn set_policy(state: &InfrastructureAggregate, mut out: Events<'_>, rule: PolicyRule) -> Decided {
    rule.validate()?;
    match rule.scope {
        PolicyScope::Infrastructure => {}
        PolicyScope::Resource(resource) => {
            state.active_resource(resource)?;
        }
        PolicyScope::Network(network) => {
            state.known_network(network)?;
        }
    }
    if state.policies.get(&rule.id) == Some(&rule) {
        return out.done();
    }
    out.push(|m| InfrastructureEvent::PolicySet {
        event_id: m.event_id,
        infrastructure_id: m.infrastructure_id,
        identity: m.identity,
        policy: rule,
    });
    out.done()
}

fn remove_policy(
    state: &InfrastructureAggregate,
    mut out: Events<'_>,
    policy: PolicyId,
) -> Decided {
    if !state.policies.contains_key(&policy) {
        return Err(InfrastructureError::UnknownPolicy { policy });
    }
    out.push(|m| policy_removed(m, policy));
    out.done()
}

fn policy_removed(m: Meta, policy_id: PolicyId) -> InfrastructureEvent {
    InfrastructureEvent::PolicyRemoved {
        event_id: m.event_id,
        infrastructure_id: m.infrastructure_id,
        identity: m.identity,
        policy_id,
    }
}
