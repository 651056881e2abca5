//! [`InfrastructureAggregate`]: the consistency unit of the domain, its state, and the
//! convenience methods that decide a command and apply its events in one call.

mod decide;

use std::collections::{BTreeMap, HashMap};

use cim_nats::{Aggregate, MessageIdentity};
use serde::{Deserialize, Serialize};

use crate::command::InfrastructureCommand;
use crate::compute::{ComputeResourceSpec, ResourceCapabilities};
use crate::connection::ConnectionSpec;
use crate::error::InfrastructureError;
use crate::event::InfrastructureEvent;
use crate::hostname::Hostname;
use crate::ids::{ConnectionId, InfrastructureId, NetworkId, PolicyId, ResourceId, SoftwareId};
use crate::network::NetworkSpec;
use crate::policy::PolicyRule;
use crate::software::SoftwareConfiguration;

/// Whether a compute resource is in service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceStatus {
    /// Registered and in service.
    Active,
    /// Taken out of service; kept so that its id is never reused.
    Decommissioned,
}

/// A compute resource as the aggregate knows it: its specification and its status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeResource {
    /// The resource as registered, with its current capabilities.
    pub spec: ComputeResourceSpec,
    /// In service or not.
    pub status: ResourceStatus,
}

impl ComputeResource {
    /// The resource's id.
    pub fn id(&self) -> ResourceId {
        self.spec.id
    }

    /// The resource's host name.
    pub fn hostname(&self) -> &Hostname {
        &self.spec.hostname
    }

    /// Is the resource in service?
    pub fn is_active(&self) -> bool {
        self.status == ResourceStatus::Active
    }
}

/// One infrastructure: its compute resources, networks, connections, software configurations
/// and policy rules. The consistency unit: every event of one infrastructure shares one version
/// sequence and the infrastructure's id as the last subject token.
///
/// As a [`cim_nats::Aggregate`], [`handle`](Aggregate::handle) decides which events a
/// [`InfrastructureCommand`] produces without changing anything, and
/// [`apply`](Aggregate::apply) changes the state from an event. `Default` is the state before
/// the first event (with no id: the id is learned from the first event, or set by
/// [`new`](Self::new)). The version is the repository's business, not the state's.
///
/// The `handle_*` methods decide a command for this aggregate's infrastructure, apply the
/// events to `self` and return them, to be stored together (atomically) in order:
///
/// ```
/// use cim_domain_infrastructure::{
///     ComputeResourceSpec, ComputeType, Hostname, InfrastructureAggregate, InfrastructureEvent,
///     InfrastructureId, MessageIdentity, ResourceCapabilities, ResourceId, SystemArchitecture,
/// };
///
/// let infra_id = InfrastructureId::new();
/// let mut aggregate = InfrastructureAggregate::new(infra_id);
/// let identity = MessageIdentity::new_from_user("my-service");
/// let spec = ComputeResourceSpec {
///     id: ResourceId::new(),
///     resource_type: ComputeType::Physical,
///     hostname: Hostname::new("server01")?,
///     system: SystemArchitecture::new("x86_64-linux")?,
///     capabilities: ResourceCapabilities::default(),
/// };
/// let events = aggregate.handle_register_compute_resource(spec.clone(), &identity)?;
/// assert!(matches!(&events[..], [InfrastructureEvent::ComputeResourceRegistered { .. }]));
/// assert_eq!(aggregate.resource(spec.id).map(|r| r.hostname().as_str()), Some("server01"));
///
/// // The invariants hold: the same host name cannot be registered twice.
/// let twin = ComputeResourceSpec { id: ResourceId::new(), ..spec };
/// assert!(aggregate.handle_register_compute_resource(twin, &identity).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// ## Rules
///
/// - Resource ids are never reused, even after a decommissioning; host names are unique among
///   active resources (a decommissioned resource's host name can be registered again).
/// - Decommissioning a resource severs its connections, removes its software configurations and
///   the policies scoped to it, in the same command: the `ConnectionSevered`, `SoftwareRemoved`
///   and `PolicyRemoved` events come first, then `ComputeResourceDecommissioned`.
/// - A connection links two distinct active resources over a defined network; the same pair is
///   linked at most once per network, in either direction.
/// - Networks of one infrastructure never overlap. A network that still carries connections
///   cannot be removed ([`InfrastructureError::NetworkInUse`]): cutting links is a decision of
///   its own (sever them first), unlike a decommissioned machine, whose links are gone with it.
///   Policies scoped to a removed network are removed with it.
/// - Updating, configuring software or setting a policy to what is already there yields no
///   event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "Stored")]
pub struct InfrastructureAggregate {
    id: Option<InfrastructureId>,
    resources: BTreeMap<ResourceId, ComputeResource>,
    networks: BTreeMap<NetworkId, NetworkSpec>,
    connections: BTreeMap<ConnectionId, ConnectionSpec>,
    software: BTreeMap<SoftwareId, SoftwareConfiguration>,
    policies: BTreeMap<PolicyId, PolicyRule>,
    /// Events applied so far (the aggregate's version).
    #[serde(default)]
    applied: u64,
    /// The active resources by host name: what makes deciding a registration cost the same
    /// with 100,000 resources as with ten. Derived from `resources`, so not serialised.
    #[serde(skip)]
    active_hostnames: HashMap<Hostname, ResourceId>,
}

/// The serialised state (a snapshot): [`InfrastructureAggregate`] without its derived index.
#[derive(Deserialize)]
struct Stored {
    id: Option<InfrastructureId>,
    resources: BTreeMap<ResourceId, ComputeResource>,
    networks: BTreeMap<NetworkId, NetworkSpec>,
    connections: BTreeMap<ConnectionId, ConnectionSpec>,
    software: BTreeMap<SoftwareId, SoftwareConfiguration>,
    policies: BTreeMap<PolicyId, PolicyRule>,
    #[serde(default)]
    applied: u64,
}

impl From<Stored> for InfrastructureAggregate {
    fn from(s: Stored) -> Self {
        let active_hostnames = s
            .resources
            .values()
            .filter(|r| r.is_active())
            .map(|r| (r.spec.hostname.clone(), r.spec.id))
            .collect();
        Self {
            id: s.id,
            resources: s.resources,
            networks: s.networks,
            connections: s.connections,
            software: s.software,
            policies: s.policies,
            applied: s.applied,
            active_hostnames,
        }
    }
}

impl InfrastructureAggregate {
    /// An empty infrastructure with this id.
    pub fn new(id: InfrastructureId) -> Self {
        Self {
            id: Some(id),
            ..Self::default()
        }
    }

    /// The number of events applied to this state.
    pub fn events_applied(&self) -> u64 {
        self.applied
    }

    /// The infrastructure's id: set by [`new`](Self::new) or learned from the first event.
    pub fn id(&self) -> Option<InfrastructureId> {
        self.id
    }

    /// Every compute resource, active or decommissioned, by id.
    pub fn resources(&self) -> impl ExactSizeIterator<Item = &ComputeResource> + '_ {
        self.resources.values()
    }

    /// The compute resources in service, by id.
    pub fn active_resources(&self) -> impl Iterator<Item = &ComputeResource> + '_ {
        self.resources.values().filter(|r| r.is_active())
    }

    /// A compute resource, active or decommissioned.
    pub fn resource(&self, id: ResourceId) -> Option<&ComputeResource> {
        self.resources.get(&id)
    }

    /// The active compute resource with this host name.
    pub fn resource_by_hostname(&self, hostname: &Hostname) -> Option<&ComputeResource> {
        self.active_hostnames
            .get(hostname)
            .and_then(|id| self.resources.get(id))
            .filter(|r| r.is_active() && r.spec.hostname == *hostname)
    }

    /// Was this compute resource decommissioned? (`false` for an unknown id.)
    pub fn is_decommissioned(&self, id: ResourceId) -> bool {
        self.resources
            .get(&id)
            .is_some_and(|r| r.status == ResourceStatus::Decommissioned)
    }

    /// Every network, by id.
    pub fn networks(&self) -> impl ExactSizeIterator<Item = &NetworkSpec> + '_ {
        self.networks.values()
    }

    /// A network.
    pub fn network(&self, id: NetworkId) -> Option<&NetworkSpec> {
        self.networks.get(&id)
    }

    /// Every established connection, by id.
    pub fn connections(&self) -> impl ExactSizeIterator<Item = &ConnectionSpec> + '_ {
        self.connections.values()
    }

    /// An established connection.
    pub fn connection(&self, id: ConnectionId) -> Option<&ConnectionSpec> {
        self.connections.get(&id)
    }

    /// The established connections with `resource` at one end, by id.
    pub fn connections_of(
        &self,
        resource: ResourceId,
    ) -> impl Iterator<Item = &ConnectionSpec> + '_ {
        self.connections
            .values()
            .filter(move |c| c.connects(resource))
    }

    /// Every software configuration, by id.
    pub fn software(&self) -> impl ExactSizeIterator<Item = &SoftwareConfiguration> + '_ {
        self.software.values()
    }

    /// A software configuration.
    pub fn software_configuration(&self, id: SoftwareId) -> Option<&SoftwareConfiguration> {
        self.software.get(&id)
    }

    /// Every policy rule, by id.
    pub fn policies(&self) -> impl ExactSizeIterator<Item = &PolicyRule> + '_ {
        self.policies.values()
    }

    /// A policy rule.
    pub fn policy(&self, id: PolicyId) -> Option<&PolicyRule> {
        self.policies.get(&id)
    }

    /// Decides `command` ([`Aggregate::handle`]) and applies its events to `self`; returns the
    /// events, in the order they are to be stored (together, in one atomic append).
    ///
    /// # Errors
    ///
    /// The [`InfrastructureError`] of the invariant the command breaks; the state is unchanged.
    pub fn execute(
        &mut self,
        command: InfrastructureCommand,
    ) -> Result<Vec<InfrastructureEvent>, InfrastructureError> {
        let mut events = self.handle(command)?;
        // The hostname events keep hostnames unique across infrastructures when the commands
        // go through a repository; the events of this infrastructure alone are its own.
        events.retain(|e| e.claim().is_none());
        for event in &events {
            self.apply(event);
        }
        Ok(events)
    }

    fn own_id(&self) -> Result<InfrastructureId, InfrastructureError> {
        self.id.ok_or(InfrastructureError::MissingInfrastructureId)
    }

    /// Registers a compute resource ([`InfrastructureCommand::RegisterComputeResource`]).
    ///
    /// # Errors
    ///
    /// [`InfrastructureError::DuplicateResource`], [`InfrastructureError::DuplicateHostname`],
    /// [`InfrastructureError::MissingInfrastructureId`].
    pub fn handle_register_compute_resource(
        &mut self,
        spec: ComputeResourceSpec,
        identity: &MessageIdentity,
    ) -> Result<Vec<InfrastructureEvent>, InfrastructureError> {
        self.execute(InfrastructureCommand::RegisterComputeResource {
            infrastructure_id: self.own_id()?,
            spec,
            identity: identity.clone(),
        })
    }

    /// Decommissions a compute resource
    /// ([`InfrastructureCommand::DecommissionComputeResource`]): one `ConnectionSevered` per
    /// connection, one `SoftwareRemoved` per configuration, one `PolicyRemoved` per policy
    /// scoped to it, then `ComputeResourceDecommissioned`.
    ///
    /// # Errors
    ///
    /// [`InfrastructureError::UnknownResource`], [`InfrastructureError::AlreadyDecommissioned`],
    /// [`InfrastructureError::MissingInfrastructureId`].
    pub fn handle_decommission_compute_resource(
        &mut self,
        resource: ResourceId,
        identity: &MessageIdentity,
    ) -> Result<Vec<InfrastructureEvent>, InfrastructureError> {
        self.execute(InfrastructureCommand::DecommissionComputeResource {
            infrastructure_id: self.own_id()?,
            resource,
            identity: identity.clone(),
        })
    }

    /// Replaces a compute resource's capabilities
    /// ([`InfrastructureCommand::UpdateComputeResource`]).
    ///
    /// # Errors
    ///
    /// [`InfrastructureError::UnknownResource`], [`InfrastructureError::ResourceDecommissioned`],
    /// [`InfrastructureError::MissingInfrastructureId`].
    pub fn handle_update_compute_resource(
        &mut self,
        resource: ResourceId,
        capabilities: ResourceCapabilities,
        identity: &MessageIdentity,
    ) -> Result<Vec<InfrastructureEvent>, InfrastructureError> {
        self.execute(InfrastructureCommand::UpdateComputeResource {
            infrastructure_id: self.own_id()?,
            resource,
            capabilities,
            identity: identity.clone(),
        })
    }

    /// Defines a network ([`InfrastructureCommand::DefineNetwork`]).
    ///
    /// # Errors
    ///
    /// [`InfrastructureError::InvalidSpec`], [`InfrastructureError::DuplicateNetwork`],
    /// [`InfrastructureError::OverlappingCidr`], [`InfrastructureError::MissingInfrastructureId`].
    pub fn handle_define_network(
        &mut self,
        spec: NetworkSpec,
        identity: &MessageIdentity,
    ) -> Result<Vec<InfrastructureEvent>, InfrastructureError> {
        self.execute(InfrastructureCommand::DefineNetwork {
            infrastructure_id: self.own_id()?,
            spec,
            identity: identity.clone(),
        })
    }

    /// Removes a network and the policies scoped to it ([`InfrastructureCommand::RemoveNetwork`]).
    ///
    /// # Errors
    ///
    /// [`InfrastructureError::UnknownNetwork`], [`InfrastructureError::NetworkInUse`],
    /// [`InfrastructureError::MissingInfrastructureId`].
    pub fn handle_remove_network(
        &mut self,
        network: NetworkId,
        identity: &MessageIdentity,
    ) -> Result<Vec<InfrastructureEvent>, InfrastructureError> {
        self.execute(InfrastructureCommand::RemoveNetwork {
            infrastructure_id: self.own_id()?,
            network,
            identity: identity.clone(),
        })
    }

    /// Connects two compute resources ([`InfrastructureCommand::EstablishConnection`]).
    ///
    /// # Errors
    ///
    /// [`InfrastructureError::SelfConnection`], [`InfrastructureError::InvalidSpec`],
    /// [`InfrastructureError::DuplicateConnection`], [`InfrastructureError::UnknownNetwork`],
    /// [`InfrastructureError::UnknownResource`], [`InfrastructureError::ResourceDecommissioned`],
    /// [`InfrastructureError::AlreadyConnected`],
    /// [`InfrastructureError::MissingInfrastructureId`].
    pub fn handle_establish_connection(
        &mut self,
        spec: ConnectionSpec,
        identity: &MessageIdentity,
    ) -> Result<Vec<InfrastructureEvent>, InfrastructureError> {
        self.execute(InfrastructureCommand::EstablishConnection {
            infrastructure_id: self.own_id()?,
            spec,
            identity: identity.clone(),
        })
    }

    /// Severs a connection ([`InfrastructureCommand::SeverConnection`]).
    ///
    /// # Errors
    ///
    /// [`InfrastructureError::UnknownConnection`],
    /// [`InfrastructureError::MissingInfrastructureId`].
    pub fn handle_sever_connection(
        &mut self,
        connection: ConnectionId,
        identity: &MessageIdentity,
    ) -> Result<Vec<InfrastructureEvent>, InfrastructureError> {
        self.execute(InfrastructureCommand::SeverConnection {
            infrastructure_id: self.own_id()?,
            connection,
            identity: identity.clone(),
        })
    }

    /// Configures software on a compute resource ([`InfrastructureCommand::ConfigureSoftware`]).
    ///
    /// # Errors
    ///
    /// [`InfrastructureError::InvalidSpec`], [`InfrastructureError::UnknownResource`],
    /// [`InfrastructureError::ResourceDecommissioned`],
    /// [`InfrastructureError::SoftwareOnOtherResource`],
    /// [`InfrastructureError::DuplicateSoftware`],
    /// [`InfrastructureError::MissingInfrastructureId`].
    pub fn handle_configure_software(
        &mut self,
        configuration: SoftwareConfiguration,
        identity: &MessageIdentity,
    ) -> Result<Vec<InfrastructureEvent>, InfrastructureError> {
        self.execute(InfrastructureCommand::ConfigureSoftware {
            infrastructure_id: self.own_id()?,
            configuration,
            identity: identity.clone(),
        })
    }

    /// Removes a software configuration ([`InfrastructureCommand::RemoveSoftware`]).
    ///
    /// # Errors
    ///
    /// [`InfrastructureError::UnknownSoftware`],
    /// [`InfrastructureError::MissingInfrastructureId`].
    pub fn handle_remove_software(
        &mut self,
        software: SoftwareId,
        identity: &MessageIdentity,
    ) -> Result<Vec<InfrastructureEvent>, InfrastructureError> {
        self.execute(InfrastructureCommand::RemoveSoftware {
            infrastructure_id: self.own_id()?,
            software,
            identity: identity.clone(),
        })
    }

    /// Sets a policy rule ([`InfrastructureCommand::SetPolicy`]).
    ///
    /// # Errors
    ///
    /// [`InfrastructureError::InvalidSpec`], [`InfrastructureError::UnknownResource`],
    /// [`InfrastructureError::ResourceDecommissioned`], [`InfrastructureError::UnknownNetwork`],
    /// [`InfrastructureError::MissingInfrastructureId`].
    pub fn handle_set_policy(
        &mut self,
        rule: PolicyRule,
        identity: &MessageIdentity,
    ) -> Result<Vec<InfrastructureEvent>, InfrastructureError> {
        self.execute(InfrastructureCommand::SetPolicy {
            infrastructure_id: self.own_id()?,
            rule,
            identity: identity.clone(),
        })
    }

    /// Removes a policy rule ([`InfrastructureCommand::RemovePolicy`]).
    ///
    /// # Errors
    ///
    /// [`InfrastructureError::UnknownPolicy`], [`InfrastructureError::MissingInfrastructureId`].
    pub fn handle_remove_policy(
        &mut self,
        policy: PolicyId,
        identity: &MessageIdentity,
    ) -> Result<Vec<InfrastructureEvent>, InfrastructureError> {
        self.execute(InfrastructureCommand::RemovePolicy {
            infrastructure_id: self.own_id()?,
            policy,
            identity: identity.clone(),
        })
    }
}

impl Aggregate for InfrastructureAggregate {
    type Event = InfrastructureEvent;
    type Command = InfrastructureCommand;
    type Error = InfrastructureError;

    fn handle(
        &self,
        command: InfrastructureCommand,
    ) -> Result<Vec<InfrastructureEvent>, InfrastructureError> {
        decide::decide(self, command)
    }

    fn claim(event: &InfrastructureEvent) -> Option<cim_nats::Claim> {
        event.claim()
    }

    fn apply(&mut self, event: &InfrastructureEvent) {
        use InfrastructureEvent as E;
        if event.claim().is_some() {
            // Stored with the hostname's reservation, not with the infrastructure.
            return;
        }
        self.applied += 1;
        if self.id.is_none() {
            self.id = Some(event.infrastructure_id());
        }
        match event {
            E::ComputeResourceRegistered { resource, .. } => {
                if let Some(replaced) = self.resources.get(&resource.id) {
                    if self.active_hostnames.get(&replaced.spec.hostname) == Some(&resource.id) {
                        self.active_hostnames.remove(&replaced.spec.hostname);
                    }
                }
                self.active_hostnames
                    .insert(resource.hostname.clone(), resource.id);
                self.resources.insert(
                    resource.id,
                    ComputeResource {
                        spec: resource.clone(),
                        status: ResourceStatus::Active,
                    },
                );
            }
            E::ComputeResourceDecommissioned { resource_id, .. } => {
                if let Some(resource) = self.resources.get_mut(resource_id) {
                    resource.status = ResourceStatus::Decommissioned;
                    if self.active_hostnames.get(&resource.spec.hostname) == Some(resource_id) {
                        self.active_hostnames.remove(&resource.spec.hostname);
                    }
                }
            }
            E::ComputeResourceUpdated {
                resource_id,
                capabilities,
                ..
            } => {
                if let Some(resource) = self.resources.get_mut(resource_id) {
                    resource.spec.capabilities = capabilities.clone();
                }
            }
            E::NetworkDefined { network, .. } => {
                self.networks.insert(network.id, network.clone());
            }
            E::NetworkRemoved { network_id, .. } => {
                self.networks.remove(network_id);
            }
            E::ConnectionEstablished { connection, .. } => {
                self.connections.insert(connection.id, connection.clone());
            }
            E::ConnectionSevered { connection_id, .. } => {
                self.connections.remove(connection_id);
            }
            E::SoftwareConfigured { software, .. } => {
                self.software.insert(software.id, software.clone());
            }
            E::SoftwareRemoved { software_id, .. } => {
                self.software.remove(software_id);
            }
            E::PolicySet { policy, .. } => {
                self.policies.insert(policy.id, policy.clone());
            }
            E::PolicyRemoved { policy_id, .. } => {
                self.policies.remove(policy_id);
            }
            E::HostnameReserved { .. } | E::HostnameReleased { .. } => {}
        }
    }
}
