//! Shared fixtures: value builders, command builders, and a history builder that records the
//! events of an infrastructure as it is set up.

#![allow(dead_code)]

use cim_domain_infrastructure::{
    Cidr, ComputeResourceSpec, ComputeType, ConnectionKind, ConnectionSpec, Hostname,
    InfrastructureAggregate, InfrastructureCommand, InfrastructureEvent, InfrastructureId,
    MessageIdentity, NetworkId, NetworkSpec, PolicyRule, PolicyScope, ResourceId,
    SoftwareConfiguration, SystemArchitecture,
};
use cim_nats::harness::AggregateTest;

/// A root command identity of the operator.
pub(crate) fn ops() -> MessageIdentity {
    MessageIdentity::new_from_user("ops")
}

/// A virtual machine spec with a new id.
pub(crate) fn host(name: &str) -> ComputeResourceSpec {
    ComputeResourceSpec::new(
        ComputeType::VirtualMachine,
        Hostname::new(name).unwrap(),
        SystemArchitecture::X86_64_LINUX,
    )
}

/// A network spec with a new id.
pub(crate) fn net(name: &str, cidr: &str) -> NetworkSpec {
    NetworkSpec::new(name, Cidr::new(cidr).unwrap()).unwrap()
}

/// An Ethernet connection spec with a new id.
pub(crate) fn link(from: ResourceId, to: ResourceId, network: NetworkId) -> ConnectionSpec {
    ConnectionSpec::new(from, to, network, ConnectionKind::Ethernet).unwrap()
}

/// A software configuration with a new id.
pub(crate) fn package(resource: ResourceId, name: &str) -> SoftwareConfiguration {
    SoftwareConfiguration::new(resource, name, "1.0").unwrap()
}

/// A policy rule with a new id.
pub(crate) fn rule(scope: PolicyScope) -> PolicyRule {
    PolicyRule::new("ssh-keys-only", scope, "deny password_auth").unwrap()
}

/// Builds the commands of one infrastructure, each with a new identity.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Commands(pub InfrastructureId);

impl Commands {
    pub(crate) fn register(self, spec: ComputeResourceSpec) -> InfrastructureCommand {
        InfrastructureCommand::RegisterComputeResource {
            infrastructure_id: self.0,
            spec,
            identity: ops(),
        }
    }

    pub(crate) fn decommission(self, resource: ResourceId) -> InfrastructureCommand {
        InfrastructureCommand::DecommissionComputeResource {
            infrastructure_id: self.0,
            resource,
            identity: ops(),
        }
    }

    pub(crate) fn update(
        self,
        resource: ResourceId,
        capabilities: cim_domain_infrastructure::ResourceCapabilities,
    ) -> InfrastructureCommand {
        InfrastructureCommand::UpdateComputeResource {
            infrastructure_id: self.0,
            resource,
            capabilities,
            identity: ops(),
        }
    }

    pub(crate) fn define(self, spec: NetworkSpec) -> InfrastructureCommand {
        InfrastructureCommand::DefineNetwork {
            infrastructure_id: self.0,
            spec,
            identity: ops(),
        }
    }

    pub(crate) fn remove_network(self, network: NetworkId) -> InfrastructureCommand {
        InfrastructureCommand::RemoveNetwork {
            infrastructure_id: self.0,
            network,
            identity: ops(),
        }
    }

    pub(crate) fn connect(self, spec: ConnectionSpec) -> InfrastructureCommand {
        InfrastructureCommand::EstablishConnection {
            infrastructure_id: self.0,
            spec,
            identity: ops(),
        }
    }

    pub(crate) fn sever(
        self,
        connection: cim_domain_infrastructure::ConnectionId,
    ) -> InfrastructureCommand {
        InfrastructureCommand::SeverConnection {
            infrastructure_id: self.0,
            connection,
            identity: ops(),
        }
    }

    pub(crate) fn configure(self, configuration: SoftwareConfiguration) -> InfrastructureCommand {
        InfrastructureCommand::ConfigureSoftware {
            infrastructure_id: self.0,
            configuration,
            identity: ops(),
        }
    }

    pub(crate) fn remove_software(
        self,
        software: cim_domain_infrastructure::SoftwareId,
    ) -> InfrastructureCommand {
        InfrastructureCommand::RemoveSoftware {
            infrastructure_id: self.0,
            software,
            identity: ops(),
        }
    }

    pub(crate) fn set_policy(self, rule: PolicyRule) -> InfrastructureCommand {
        InfrastructureCommand::SetPolicy {
            infrastructure_id: self.0,
            rule,
            identity: ops(),
        }
    }

    pub(crate) fn remove_policy(
        self,
        policy: cim_domain_infrastructure::PolicyId,
    ) -> InfrastructureCommand {
        InfrastructureCommand::RemovePolicy {
            infrastructure_id: self.0,
            policy,
            identity: ops(),
        }
    }
}

/// An infrastructure set up step by step through its own commands, keeping the events: the
/// `given` of a test.
#[derive(Debug)]
pub(crate) struct History {
    pub(crate) id: InfrastructureId,
    pub(crate) state: InfrastructureAggregate,
    pub(crate) events: Vec<InfrastructureEvent>,
    /// The hostname events the commands decided (stored under the hostnames' reservations).
    pub(crate) claims: Vec<InfrastructureEvent>,
}

impl History {
    pub(crate) fn new() -> Self {
        let id = InfrastructureId::new();
        Self {
            id,
            state: InfrastructureAggregate::new(id),
            events: Vec::new(),
            claims: Vec::new(),
        }
    }

    pub(crate) fn cmd(&self) -> Commands {
        Commands(self.id)
    }

    /// Executes a command that must succeed, keeping its events.
    pub(crate) fn run(&mut self, command: InfrastructureCommand) -> Vec<InfrastructureEvent> {
        let decided = cim_nats::Aggregate::handle(&self.state, command.clone())
            .unwrap_or_else(|e| panic!("set-up command refused: {e}"));
        self.claims
            .extend(decided.into_iter().filter(|e| e.claim().is_some()));
        let events = self
            .state
            .execute(command)
            .unwrap_or_else(|e| panic!("set-up command refused: {e}"));
        self.events.extend(events.iter().cloned());
        events
    }

    pub(crate) fn resource(&mut self, name: &str) -> ComputeResourceSpec {
        let spec = host(name);
        self.run(self.cmd().register(spec.clone()));
        spec
    }

    pub(crate) fn network(&mut self, name: &str, cidr: &str) -> NetworkSpec {
        let spec = net(name, cidr);
        self.run(self.cmd().define(spec.clone()));
        spec
    }

    pub(crate) fn connect(
        &mut self,
        from: ResourceId,
        to: ResourceId,
        network: NetworkId,
    ) -> ConnectionSpec {
        let spec = link(from, to, network);
        self.run(self.cmd().connect(spec.clone()));
        spec
    }

    pub(crate) fn software(&mut self, resource: ResourceId, name: &str) -> SoftwareConfiguration {
        let spec = package(resource, name);
        self.run(self.cmd().configure(spec.clone()));
        spec
    }

    pub(crate) fn policy(&mut self, scope: PolicyScope) -> PolicyRule {
        let spec = rule(scope);
        self.run(self.cmd().set_policy(spec.clone()));
        spec
    }

    pub(crate) fn decommission(&mut self, resource: ResourceId) {
        self.run(self.cmd().decommission(resource));
    }

    /// The harness, given the events so far.
    pub(crate) fn given(&self) -> AggregateTest<InfrastructureAggregate> {
        AggregateTest::given(self.events.clone())
    }
}

/// A history in which every event type occurs at least once.
pub(crate) fn every_event() -> History {
    let mut h = History::new();
    let web = h.resource("web");
    let db = h.resource("db");
    let lan = h.network("lan", "10.0.0.0/24");
    let dmz = h.network("dmz", "10.1.0.0/24");
    let link = h.connect(web.id, db.id, lan.id);
    let nginx = h.software(web.id, "nginx");
    let policy = h.policy(PolicyScope::Infrastructure);
    h.run(h.cmd().update(
        web.id,
        cim_domain_infrastructure::ResourceCapabilities {
            cpu_cores: 8,
            ..Default::default()
        },
    ));
    h.run(h.cmd().remove_software(nginx.id));
    h.run(h.cmd().remove_policy(policy.id));
    h.run(h.cmd().sever(link.id));
    h.run(h.cmd().remove_network(dmz.id));
    h.decommission(db.id);
    h
}
