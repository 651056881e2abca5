//! [`Topology`]: the read model of every infrastructure on the stream, and
//! [`TopologyProjection`], the projection that keeps it.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use cim_domain_infrastructure::{
    Cidr, ComputeResourceSpec, ComputeType, ConnectionId, ConnectionKind, ConnectionSpec, Hostname,
    InfrastructureEvent, InfrastructureId, NetworkId, NetworkSpec, PolicyId, PolicyRule,
    PolicyScope, ResourceCapabilities, ResourceId, ResourceStatus, SoftwareConfiguration,
    SoftwareId, SystemArchitecture,
};
use cim_nats::{Envelope, Projection, ProjectionError, StreamSequence};
use serde::{Deserialize, Serialize};

/// A compute resource as the topology shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ComputeResourceView {
    /// The resource's id.
    pub id: ResourceId,
    /// The infrastructure it belongs to.
    pub infrastructure: InfrastructureId,
    /// Its host name.
    pub hostname: Hostname,
    /// Physical machine, virtual machine or container.
    pub resource_type: ComputeType,
    /// Its CPU architecture and operating system.
    pub system: SystemArchitecture,
    /// What it offers, as last updated.
    pub capabilities: ResourceCapabilities,
    /// In service or decommissioned.
    pub status: ResourceStatus,
}

impl ComputeResourceView {
    /// Is the resource in service?
    pub fn is_active(&self) -> bool {
        self.status == ResourceStatus::Active
    }
}

/// A network as the topology shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NetworkView {
    /// The network's id.
    pub id: NetworkId,
    /// The infrastructure it belongs to.
    pub infrastructure: InfrastructureId,
    /// Its human name.
    pub name: String,
    /// Its address range.
    pub cidr: Cidr,
}

/// A connection between two compute resources, as the topology shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ConnectionView {
    /// The connection's id.
    pub id: ConnectionId,
    /// The infrastructure it belongs to.
    pub infrastructure: InfrastructureId,
    /// The resource it starts from.
    pub from: ResourceId,
    /// The resource it leads to.
    pub to: ResourceId,
    /// The network it belongs to.
    pub network: NetworkId,
    /// What kind of link it is.
    pub kind: ConnectionKind,
}

impl ConnectionView {
    /// Is `resource` one of the two ends?
    pub fn connects(&self, resource: ResourceId) -> bool {
        self.from == resource || self.to == resource
    }
}

/// Software configured on a compute resource, as the topology shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SoftwareView {
    /// The configuration's id.
    pub id: SoftwareId,
    /// The infrastructure it belongs to.
    pub infrastructure: InfrastructureId,
    /// The resource the software runs on.
    pub resource: ResourceId,
    /// The software's name.
    pub name: String,
    /// The software's version.
    pub version: String,
    /// Its settings, sorted by key.
    pub settings: BTreeMap<String, String>,
}

/// A policy rule, as the topology shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PolicyView {
    /// The rule's id.
    pub id: PolicyId,
    /// The infrastructure it belongs to.
    pub infrastructure: InfrastructureId,
    /// Its human name.
    pub name: String,
    /// What it applies to.
    pub scope: PolicyScope,
    /// Its expression.
    pub rule: String,
}

/// The read model of every infrastructure on the stream: compute resources (with their host
/// name, type, system, capabilities and status), networks, connections, software and policies.
///
/// Built by applying [`InfrastructureEvent`]s in stream order ([`Topology::apply`]); kept up to
/// date by [`TopologyProjection`] under a [`ProjectionManager`](super::ProjectionManager).
/// Every entry names the infrastructure it belongs to; [`Topology::of_infrastructure`] selects
/// one. Lists are sorted by id (ids are UUID v7, so roughly by creation time).
///
/// Decommissioned resources stay (an id is never reused) with
/// [`ResourceStatus::Decommissioned`], but leave every "active" list, and their connections,
/// software and policies are gone. Removed networks, severed connections, removed software and
/// policies are gone.
///
/// The read model trusts the stream: an event about an unknown resource or network changes
/// nothing, and a decommissioning or a network's removal also drops anything still attached to
/// it (the aggregate emits those removals itself, first).
///
/// ```
/// use cim_domain_infrastructure::{
///     ComputeResourceSpec, ComputeType, Hostname, InfrastructureAggregate, InfrastructureId,
///     MessageIdentity, SystemArchitecture,
/// };
/// use cim_infrastructure_nats::projections::Topology;
///
/// let mut infra = InfrastructureAggregate::new(InfrastructureId::new());
/// let ops = MessageIdentity::new_from_user("ops");
/// let web = ComputeResourceSpec::new(
///     ComputeType::Container,
///     Hostname::new("web")?,
///     SystemArchitecture::X86_64_LINUX,
/// );
/// let events = infra.handle_register_compute_resource(web.clone(), &ops)?;
///
/// let topology = Topology::from_events(&events);
/// assert_eq!(topology.active_compute_resources().len(), 1);
/// assert_eq!(topology.resource_by_hostname("web").map(|r| r.id), Some(web.id));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    resources: BTreeMap<ResourceId, ComputeResourceView>,
    networks: BTreeMap<NetworkId, NetworkView>,
    connections: BTreeMap<ConnectionId, ConnectionView>,
    software: BTreeMap<SoftwareId, SoftwareView>,
    policies: BTreeMap<PolicyId, PolicyView>,
}

/// The views an event's subject becomes, shared by [`Topology::apply`] and the KV model.
impl ComputeResourceView {
    /// A resource as registered in `infrastructure`: active.
    pub(crate) fn registered(
        infrastructure: InfrastructureId,
        resource: &ComputeResourceSpec,
    ) -> Self {
        Self {
            id: resource.id,
            infrastructure,
            hostname: resource.hostname.clone(),
            resource_type: resource.resource_type,
            system: resource.system,
            capabilities: resource.capabilities.clone(),
            status: ResourceStatus::Active,
        }
    }
}

impl NetworkView {
    /// A network as defined in `infrastructure`.
    pub(crate) fn defined(infrastructure: InfrastructureId, network: &NetworkSpec) -> Self {
        Self {
            id: network.id,
            infrastructure,
            name: network.name.clone(),
            cidr: network.cidr,
        }
    }
}

impl ConnectionView {
    /// A connection as established in `infrastructure`.
    pub(crate) fn established(
        infrastructure: InfrastructureId,
        connection: &ConnectionSpec,
    ) -> Self {
        Self {
            id: connection.id,
            infrastructure,
            from: connection.from,
            to: connection.to,
            network: connection.network,
            kind: connection.kind,
        }
    }
}

impl SoftwareView {
    /// Software as configured in `infrastructure`.
    pub(crate) fn configured(
        infrastructure: InfrastructureId,
        software: &SoftwareConfiguration,
    ) -> Self {
        Self {
            id: software.id,
            infrastructure,
            resource: software.resource,
            name: software.name.clone(),
            version: software.version.clone(),
            settings: software.settings.clone(),
        }
    }
}

impl PolicyView {
    /// A policy as set in `infrastructure`.
    pub(crate) fn set(infrastructure: InfrastructureId, policy: &PolicyRule) -> Self {
        Self {
            id: policy.id,
            infrastructure,
            name: policy.name.clone(),
            scope: policy.scope,
            rule: policy.rule.clone(),
        }
    }
}

impl Topology {
    /// An empty topology.
    pub fn new() -> Self {
        Self::default()
    }

    /// The topology after `events`, applied in order to an empty one.
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a InfrastructureEvent>) -> Self {
        let mut topology = Self::new();
        for event in events {
            topology.apply(event);
        }
        topology
    }

    /// Applies one event.
    pub fn apply(&mut self, event: &InfrastructureEvent) {
        use InfrastructureEvent as E;
        let infrastructure = event.infrastructure_id();
        match event {
            E::ComputeResourceRegistered { resource, .. } => {
                self.resources.insert(
                    resource.id,
                    ComputeResourceView::registered(infrastructure, resource),
                );
            }
            E::ComputeResourceDecommissioned { resource_id, .. } => {
                if let Some(resource) = self.resources.get_mut(resource_id) {
                    resource.status = ResourceStatus::Decommissioned;
                }
                let id = *resource_id;
                self.connections.retain(|_, c| !c.connects(id));
                self.software.retain(|_, s| s.resource != id);
                self.policies
                    .retain(|_, p| p.scope != PolicyScope::Resource(id));
            }
            E::ComputeResourceUpdated {
                resource_id,
                capabilities,
                ..
            } => {
                if let Some(resource) = self.resources.get_mut(resource_id) {
                    resource.capabilities = capabilities.clone();
                }
            }
            E::NetworkDefined { network, .. } => {
                self.networks
                    .insert(network.id, NetworkView::defined(infrastructure, network));
            }
            E::NetworkRemoved { network_id, .. } => {
                let id = *network_id;
                self.networks.remove(&id);
                self.connections.retain(|_, c| c.network != id);
                self.policies
                    .retain(|_, p| p.scope != PolicyScope::Network(id));
            }
            E::ConnectionEstablished { connection, .. } => {
                self.connections.insert(
                    connection.id,
                    ConnectionView::established(infrastructure, connection),
                );
            }
            E::ConnectionSevered { connection_id, .. } => {
                self.connections.remove(connection_id);
            }
            E::SoftwareConfigured { software, .. } => {
                self.software.insert(
                    software.id,
                    SoftwareView::configured(infrastructure, software),
                );
            }
            E::SoftwareRemoved { software_id, .. } => {
                self.software.remove(software_id);
            }
            E::PolicySet { policy, .. } => {
                self.policies
                    .insert(policy.id, PolicyView::set(infrastructure, policy));
            }
            E::PolicyRemoved { policy_id, .. } => {
                self.policies.remove(policy_id);
            }
            // The hostnames' reservations: the registrations and decommissions say the same.
            E::HostnameReserved { .. } | E::HostnameReleased { .. } => {}
        }
    }

    /// Puts a row of the KV model's `table` (its JSON) in place; `false` for an unknown table or
    /// a row that does not decode.
    pub(crate) fn put_row(&mut self, table: &str, json: &[u8]) -> bool {
        fn put<K: Ord, V: serde::de::DeserializeOwned>(
            map: &mut BTreeMap<K, V>,
            json: &[u8],
            key: impl Fn(&V) -> K,
        ) -> bool {
            match serde_json::from_slice::<V>(json) {
                Ok(view) => {
                    map.insert(key(&view), view);
                    true
                }
                Err(_) => false,
            }
        }
        match table {
            "compute" => put(&mut self.resources, json, |v: &ComputeResourceView| v.id),
            "network" => put(&mut self.networks, json, |v: &NetworkView| v.id),
            "connection" => put(&mut self.connections, json, |v: &ConnectionView| v.id),
            "software" => put(&mut self.software, json, |v: &SoftwareView| v.id),
            "policy" => put(&mut self.policies, json, |v: &PolicyView| v.id),
            _ => false,
        }
    }

    /// Removes row `id` of the KV model's `table`; `false` when there was none.
    pub(crate) fn remove_row(&mut self, table: &str, id: &str) -> bool {
        fn remove<K: Ord + std::str::FromStr, V>(map: &mut BTreeMap<K, V>, id: &str) -> bool {
            id.parse::<K>().ok().and_then(|k| map.remove(&k)).is_some()
        }
        match table {
            "compute" => remove(&mut self.resources, id),
            "network" => remove(&mut self.networks, id),
            "connection" => remove(&mut self.connections, id),
            "software" => remove(&mut self.software, id),
            "policy" => remove(&mut self.policies, id),
            _ => false,
        }
    }

    /// Nothing known yet?
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
            && self.networks.is_empty()
            && self.connections.is_empty()
            && self.software.is_empty()
            && self.policies.is_empty()
    }

    /// The infrastructures that have something in the topology, sorted.
    pub fn infrastructures(&self) -> Vec<InfrastructureId> {
        let ids: BTreeSet<InfrastructureId> = self
            .resources
            .values()
            .map(|r| r.infrastructure)
            .chain(self.networks.values().map(|n| n.infrastructure))
            .chain(self.connections.values().map(|c| c.infrastructure))
            .chain(self.software.values().map(|s| s.infrastructure))
            .chain(self.policies.values().map(|p| p.infrastructure))
            .collect();
        ids.into_iter().collect()
    }

    /// The part of the topology that belongs to one infrastructure.
    pub fn of_infrastructure(&self, infrastructure: InfrastructureId) -> Topology {
        fn select<K: Ord + Copy, V: Clone>(
            map: &BTreeMap<K, V>,
            keep: impl Fn(&V) -> bool,
        ) -> BTreeMap<K, V> {
            map.iter()
                .filter(|(_, v)| keep(v))
                .map(|(k, v)| (*k, v.clone()))
                .collect()
        }
        Topology {
            resources: select(&self.resources, |r| r.infrastructure == infrastructure),
            networks: select(&self.networks, |n| n.infrastructure == infrastructure),
            connections: select(&self.connections, |c| c.infrastructure == infrastructure),
            software: select(&self.software, |s| s.infrastructure == infrastructure),
            policies: select(&self.policies, |p| p.infrastructure == infrastructure),
        }
    }

    /// Every compute resource, active or decommissioned.
    pub fn resources(&self) -> impl ExactSizeIterator<Item = &ComputeResourceView> + '_ {
        self.resources.values()
    }

    /// A compute resource, active or decommissioned.
    pub fn resource(&self, id: ResourceId) -> Option<&ComputeResourceView> {
        self.resources.get(&id)
    }

    /// The compute resources in service.
    pub fn active_compute_resources(&self) -> Vec<&ComputeResourceView> {
        self.resources.values().filter(|r| r.is_active()).collect()
    }

    /// The compute resources taken out of service.
    pub fn decommissioned_resources(&self) -> Vec<&ComputeResourceView> {
        self.resources.values().filter(|r| !r.is_active()).collect()
    }

    /// The active compute resource with this host name (compared without regard to ASCII case).
    ///
    /// Host names are unique among the active resources of one infrastructure; if several
    /// infrastructures use the name, this is the one registered first (see
    /// [`Topology::resources_by_hostname`] for all of them).
    pub fn resource_by_hostname(&self, hostname: impl AsRef<str>) -> Option<&ComputeResourceView> {
        let hostname = hostname.as_ref();
        self.resources
            .values()
            .find(|r| r.is_active() && r.hostname.as_str().eq_ignore_ascii_case(hostname))
    }

    /// Every active compute resource with this host name, one per infrastructure at most.
    pub fn resources_by_hostname(&self, hostname: impl AsRef<str>) -> Vec<&ComputeResourceView> {
        let hostname = hostname.as_ref();
        self.resources
            .values()
            .filter(|r| r.is_active() && r.hostname.as_str().eq_ignore_ascii_case(hostname))
            .collect()
    }

    /// The active compute resources on a network: those with a connection that belongs to it.
    pub fn resources_on_network(&self, network: NetworkId) -> Vec<&ComputeResourceView> {
        let ids: BTreeSet<ResourceId> = self
            .connections
            .values()
            .filter(|c| c.network == network)
            .flat_map(|c| [c.from, c.to])
            .collect();
        ids.into_iter()
            .filter_map(|id| self.resources.get(&id))
            .filter(|r| r.is_active())
            .collect()
    }

    /// The networks (removed networks are gone).
    pub fn active_networks(&self) -> Vec<&NetworkView> {
        self.networks.values().collect()
    }

    /// A network.
    pub fn network(&self, id: NetworkId) -> Option<&NetworkView> {
        self.networks.get(&id)
    }

    /// The established connections (severed connections are gone).
    pub fn active_connections(&self) -> Vec<&ConnectionView> {
        self.connections.values().collect()
    }

    /// An established connection.
    pub fn connection(&self, id: ConnectionId) -> Option<&ConnectionView> {
        self.connections.get(&id)
    }

    /// The established connections with `resource` at one end.
    pub fn connections_of(&self, resource: ResourceId) -> Vec<&ConnectionView> {
        self.connections
            .values()
            .filter(|c| c.connects(resource))
            .collect()
    }

    /// The names of the networks `resource` is connected on, sorted, each once.
    pub fn network_names_of(&self, resource: ResourceId) -> Vec<String> {
        let mut names: Vec<String> = self
            .connections_of(resource)
            .iter()
            .filter_map(|c| self.network(c.network).map(|n| n.name.clone()))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The established connections that belong to a network.
    pub fn connections_on(&self, network: NetworkId) -> Vec<&ConnectionView> {
        self.connections
            .values()
            .filter(|c| c.network == network)
            .collect()
    }

    /// Every software configuration.
    pub fn software(&self) -> Vec<&SoftwareView> {
        self.software.values().collect()
    }

    /// The software configured on one compute resource.
    pub fn software_on(&self, resource: ResourceId) -> Vec<&SoftwareView> {
        self.software
            .values()
            .filter(|s| s.resource == resource)
            .collect()
    }

    /// Every policy rule.
    pub fn policies(&self) -> Vec<&PolicyView> {
        self.policies.values().collect()
    }

    /// The policy rules with exactly this scope (for [`PolicyScope::Infrastructure`], those of
    /// every infrastructure).
    pub fn policies_for(&self, scope: PolicyScope) -> Vec<&PolicyView> {
        self.policies
            .values()
            .filter(|p| p.scope == scope)
            .collect()
    }
}

/// The projection that keeps a [`Topology`]: name `topology`, version 1.
///
/// It is `Default + Serialize + Deserialize`, so the framework's
/// [`ProjectionRunner`](cim_nats::jetstream::ProjectionRunner) can run it and keep its state
/// with its checkpoint in JetStream KV; [`ProjectionManager`](super::ProjectionManager) does
/// that for you. It also remembers the stream sequence of the last event applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyProjection {
    topology: Topology,
    last_sequence: StreamSequence,
}

impl TopologyProjection {
    /// The read model.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Consumes the projection, returning the read model.
    pub fn into_topology(self) -> Topology {
        self.topology
    }

    /// The stream sequence of the last event applied (0 before the first).
    pub fn last_sequence(&self) -> StreamSequence {
        self.last_sequence
    }
}

#[async_trait]
impl Projection for TopologyProjection {
    type Event = InfrastructureEvent;
    const NAME: &'static str = "topology";
    const VERSION: u32 = 1;

    async fn apply(
        &mut self,
        event: &Envelope<InfrastructureEvent>,
    ) -> Result<(), ProjectionError> {
        self.topology.apply(&event.event);
        self.last_sequence = self.last_sequence.max(event.sequence());
        Ok(())
    }

    async fn reset(&mut self) -> Result<(), ProjectionError> {
        *self = Self::default();
        Ok(())
    }
}
