//! The infrastructure aggregate's invariants, each refused with its typed error, and what its
//! commands produce: given events, when a command, then events or an error.

mod support;

use cim_domain_infrastructure::{
    Aggregate, Cidr, ComputeResourceSpec, ComputeType, Hostname, InfrastructureAggregate,
    InfrastructureCommand, InfrastructureError, InfrastructureEvent, InfrastructureId,
    MessageIdentity, NatsEvent, NetworkSpec, PolicyScope, ResourceCapabilities, ResourceId,
    ResourceStatus, SpecError, SystemArchitecture,
};
use cim_nats::harness::AggregateTest;
use cim_nats::AggregateId;

use support::{host, link, net, ops, package, rule, Commands, History};

fn event_types(events: &[InfrastructureEvent]) -> Vec<&'static str> {
    events.iter().map(NatsEvent::event_type).collect()
}

// ---------------------------------------------------------------------------------------------
// Compute resources

#[test]
fn registering_a_resource_yields_its_event_and_the_hostnames_reservation() {
    let h = History::new();
    let spec = host("server01");
    let state = AggregateTest::<InfrastructureAggregate>::given_no_events()
        .when(h.cmd().register(spec.clone()))
        .then_expect_events(|events| match events {
            [InfrastructureEvent::ComputeResourceRegistered {
                infrastructure_id,
                resource,
                ..
            }, reserved @ InfrastructureEvent::HostnameReserved {
                hostname,
                resource_id,
                ..
            }] => {
                assert_eq!(*infrastructure_id, h.id);
                assert_eq!(*resource, spec);
                assert_eq!((hostname, *resource_id), (&spec.hostname, spec.id));
                // Stored under the hostname's reservation, held by this infrastructure.
                assert_eq!(
                    InfrastructureAggregate::claim(reserved),
                    Some(cim_nats::Claim::Take {
                        reservation: InfrastructureEvent::hostname_reservation(&spec.hostname),
                        holder: h.id.into(),
                    })
                );
            }
            other => panic!("unexpected events {other:?}"),
        });
    assert_eq!(state.id(), Some(h.id), "the id is learned from the event");
    assert_eq!(state.resources().len(), 1);
    assert_eq!(
        state.resource(spec.id).unwrap().status,
        ResourceStatus::Active
    );
}

#[test]
fn a_resource_id_is_registered_once() {
    let mut h = History::new();
    let web = h.resource("web");
    let again = ComputeResourceSpec {
        hostname: Hostname::new("other").unwrap(),
        ..web.clone()
    };
    h.given()
        .when(h.cmd().register(again))
        .then_expect_error(InfrastructureError::DuplicateResource { resource: web.id });
}

#[test]
fn a_resource_id_is_never_reused_after_decommissioning() {
    let mut h = History::new();
    let web = h.resource("web");
    h.decommission(web.id);
    h.given()
        .when(h.cmd().register(web.clone()))
        .then_expect_error(InfrastructureError::DuplicateResource { resource: web.id });
}

#[test]
fn a_hostname_is_unique_among_active_resources() {
    let mut h = History::new();
    let web = h.resource("web.example.com");
    // Host names compare case-insensitively and without the trailing dot.
    let twin = ComputeResourceSpec::new(
        ComputeType::Container,
        Hostname::new("WEB.example.com.").unwrap(),
        SystemArchitecture::AARCH64_LINUX,
    );
    h.given().when(h.cmd().register(twin)).then_expect_error(
        InfrastructureError::DuplicateHostname {
            hostname: web.hostname.clone(),
            existing: web.id,
        },
    );
}

#[test]
fn a_decommissioned_resource_frees_its_hostname() {
    let mut h = History::new();
    let old = h.resource("web");
    h.decommission(old.id);
    let new = host("web");
    let state = h
        .given()
        .when(h.cmd().register(new.clone()))
        .then_expect_events(|events| {
            assert_eq!(
                event_types(events),
                ["ComputeResourceRegistered", "HostnameReserved"]
            )
        });
    assert_eq!(
        state.resource_by_hostname(&new.hostname).map(|r| r.id()),
        Some(new.id)
    );
    assert_eq!(state.resources().len(), 2);
    assert_eq!(state.active_resources().count(), 1);
}

#[test]
fn decommissioning_an_unknown_resource_is_refused() {
    let h = History::new();
    let ghost = ResourceId::new();
    h.given()
        .when(h.cmd().decommission(ghost))
        .then_expect_error(InfrastructureError::UnknownResource { resource: ghost });
}

#[test]
fn decommissioning_twice_is_refused() {
    let mut h = History::new();
    let web = h.resource("web");
    h.decommission(web.id);
    h.given()
        .when(h.cmd().decommission(web.id))
        .then_expect_error(InfrastructureError::AlreadyDecommissioned {
            resource: web.id,
            hostname: web.hostname.clone(),
        });
}

#[test]
fn decommissioning_severs_every_connection_then_decommissions() {
    let mut h = History::new();
    let hub = h.resource("hub");
    let lan = h.network("lan", "10.0.0.0/24");
    let spokes: Vec<_> = (0..3).map(|i| h.resource(&format!("spoke{i}"))).collect();
    let mut links: Vec<_> = spokes
        .iter()
        .enumerate()
        .map(|(i, spoke)| {
            // Both directions: the hub is at either end.
            if i % 2 == 0 {
                h.connect(hub.id, spoke.id, lan.id).id
            } else {
                h.connect(spoke.id, hub.id, lan.id).id
            }
        })
        .collect();
    // A connection between two others stays.
    let other = h.connect(spokes[0].id, spokes[1].id, lan.id);
    links.sort();

    let state = h
        .given()
        .when(h.cmd().decommission(hub.id))
        .then_expect_events(|events| {
            assert_eq!(
                events.len(),
                links.len() + 2,
                "N severed + 1 decommissioned + the hostname released"
            );
            let severed: Vec<_> = events[..links.len()]
                .iter()
                .map(|e| match e {
                    InfrastructureEvent::ConnectionSevered { connection_id, .. } => *connection_id,
                    other => panic!("expected a severed connection, got {other:?}"),
                })
                .collect();
            assert_eq!(severed, links);
            assert!(matches!(
                &events[links.len()],
                InfrastructureEvent::ComputeResourceDecommissioned { resource_id, .. }
                    if *resource_id == hub.id
            ));
            assert!(matches!(
                events.last(),
                Some(InfrastructureEvent::HostnameReleased { resource_id, .. })
                    if *resource_id == hub.id
            ));
        });
    assert!(state.is_decommissioned(hub.id));
    assert_eq!(state.connections().collect::<Vec<_>>(), [&other]);
    assert_eq!(state.connections_of(hub.id).count(), 0);
}

#[test]
fn decommissioning_removes_the_resources_software_and_policies_too() {
    let mut h = History::new();
    let web = h.resource("web");
    let db = h.resource("db");
    let lan = h.network("lan", "10.0.0.0/24");
    h.connect(web.id, db.id, lan.id);
    h.software(db.id, "postgres");
    let kept_software = h.software(web.id, "nginx");
    h.policy(PolicyScope::Resource(db.id));
    let kept_policy = h.policy(PolicyScope::Infrastructure);

    let state = h
        .given()
        .when(h.cmd().decommission(db.id))
        .then_expect_events(|events| {
            assert_eq!(
                event_types(events),
                [
                    "ConnectionSevered",
                    "SoftwareRemoved",
                    "PolicyRemoved",
                    "ComputeResourceDecommissioned",
                    "HostnameReleased"
                ]
            );
        });
    assert_eq!(state.software().collect::<Vec<_>>(), [&kept_software]);
    assert_eq!(state.policies().collect::<Vec<_>>(), [&kept_policy]);
}

#[test]
fn updating_an_unknown_or_decommissioned_resource_is_refused() {
    let mut h = History::new();
    let web = h.resource("web");
    h.decommission(web.id);
    let ghost = ResourceId::new();
    h.given()
        .when(h.cmd().update(ghost, ResourceCapabilities::default()))
        .then_expect_error(InfrastructureError::UnknownResource { resource: ghost });
    h.given()
        .when(h.cmd().update(web.id, ResourceCapabilities::default()))
        .then_expect_error(InfrastructureError::ResourceDecommissioned {
            resource: web.id,
            hostname: web.hostname.clone(),
        });
}

#[test]
fn updating_capabilities_yields_an_event_only_when_they_change() {
    let mut h = History::new();
    let web = h.resource("web");
    let bigger = ResourceCapabilities {
        cpu_cores: 32,
        memory_mb: 131_072,
        ..Default::default()
    }
    .with_metadata("rack", "r7");
    let state = h
        .given()
        .when(h.cmd().update(web.id, bigger.clone()))
        .then_expect_events(|events| assert_eq!(event_types(events), ["ComputeResourceUpdated"]));
    assert_eq!(state.resource(web.id).unwrap().spec.capabilities, bigger);

    h.given()
        .when(h.cmd().update(web.id, web.capabilities.clone()))
        .then_expect_events(|events| assert!(events.is_empty(), "unchanged: {events:?}"));
}

// ---------------------------------------------------------------------------------------------
// Networks

#[test]
fn an_invalid_network_spec_is_refused() {
    let h = History::new();
    let blank = NetworkSpec {
        name: "  ".to_owned(),
        ..net("lan", "10.0.0.0/24")
    };
    h.given()
        .when(h.cmd().define(blank))
        .then_expect_error(InfrastructureError::InvalidSpec(SpecError::BlankField {
            spec: "network",
            field: "name",
        }));
}

#[test]
fn a_network_id_is_defined_once() {
    let mut h = History::new();
    let lan = h.network("lan", "10.0.0.0/24");
    let again = NetworkSpec {
        cidr: Cidr::new("192.168.0.0/16").unwrap(),
        ..lan.clone()
    };
    h.given()
        .when(h.cmd().define(again))
        .then_expect_error(InfrastructureError::DuplicateNetwork { network: lan.id });
}

#[test]
fn overlapping_networks_are_refused() {
    let mut h = History::new();
    let lan = h.network("lan", "10.0.0.0/16");
    for cidr in ["10.0.5.0/24", "10.0.0.0/8", "10.0.0.0/16"] {
        let inner = net("inner", cidr);
        h.given()
            .when(h.cmd().define(inner.clone()))
            .then_expect_error(InfrastructureError::OverlappingCidr {
                network: inner.id,
                cidr: inner.cidr,
                existing: lan.id,
                existing_cidr: lan.cidr,
            });
    }
    // Disjoint ranges, and IPv6 next to IPv4, are fine.
    for cidr in ["10.1.0.0/16", "fd00::/8"] {
        h.given()
            .when(h.cmd().define(net("other", cidr)))
            .then_expect_events(|events| assert_eq!(event_types(events), ["NetworkDefined"]));
    }
}

#[test]
fn removing_an_unknown_network_is_refused() {
    let h = History::new();
    let ghost = net("ghost", "10.0.0.0/24").id;
    h.given()
        .when(h.cmd().remove_network(ghost))
        .then_expect_error(InfrastructureError::UnknownNetwork { network: ghost });
}

#[test]
fn a_network_that_carries_connections_cannot_be_removed() {
    let mut h = History::new();
    let (a, b, c) = (h.resource("a"), h.resource("b"), h.resource("c"));
    let lan = h.network("lan", "10.0.0.0/24");
    h.connect(a.id, b.id, lan.id);
    h.connect(b.id, c.id, lan.id);
    h.given()
        .when(h.cmd().remove_network(lan.id))
        .then_expect_error(InfrastructureError::NetworkInUse {
            network: lan.id,
            connections: 2,
        });
}

#[test]
fn removing_a_network_removes_its_policies_then_the_network() {
    let mut h = History::new();
    let lan = h.network("lan", "10.0.0.0/24");
    h.policy(PolicyScope::Network(lan.id));
    let state = h
        .given()
        .when(h.cmd().remove_network(lan.id))
        .then_expect_events(|events| {
            assert_eq!(event_types(events), ["PolicyRemoved", "NetworkRemoved"]);
        });
    assert_eq!(state.networks().len(), 0);
    assert_eq!(state.policies().len(), 0);
}

// ---------------------------------------------------------------------------------------------
// Connections

#[test]
fn a_resource_cannot_be_connected_to_itself() {
    let mut h = History::new();
    let web = h.resource("web");
    let lan = h.network("lan", "10.0.0.0/24");
    // Built field by field: `ConnectionSpec::new` would refuse it already.
    let loopback = cim_domain_infrastructure::ConnectionSpec {
        to: web.id,
        ..link(web.id, ResourceId::new(), lan.id)
    };
    h.given()
        .when(h.cmd().connect(loopback))
        .then_expect_error(InfrastructureError::SelfConnection { resource: web.id });
}

#[test]
fn connecting_an_unknown_resource_is_refused() {
    let mut h = History::new();
    let web = h.resource("web");
    let lan = h.network("lan", "10.0.0.0/24");
    let ghost = ResourceId::new();
    h.given()
        .when(h.cmd().connect(link(web.id, ghost, lan.id)))
        .then_expect_error(InfrastructureError::UnknownResource { resource: ghost });
    h.given()
        .when(h.cmd().connect(link(ghost, web.id, lan.id)))
        .then_expect_error(InfrastructureError::UnknownResource { resource: ghost });
}

#[test]
fn a_connection_needs_a_defined_network() {
    let mut h = History::new();
    let (a, b) = (h.resource("a"), h.resource("b"));
    let ghost = net("ghost", "10.9.0.0/24").id;
    h.given()
        .when(h.cmd().connect(link(a.id, b.id, ghost)))
        .then_expect_error(InfrastructureError::UnknownNetwork { network: ghost });

    // Nor a removed one.
    let lan = h.network("lan", "10.0.0.0/24");
    h.run(h.cmd().remove_network(lan.id));
    h.given()
        .when(h.cmd().connect(link(a.id, b.id, lan.id)))
        .then_expect_error(InfrastructureError::UnknownNetwork { network: lan.id });
}

#[test]
fn a_decommissioned_resource_cannot_be_connected() {
    let mut h = History::new();
    let (a, b) = (h.resource("a"), h.resource("b"));
    let lan = h.network("lan", "10.0.0.0/24");
    h.decommission(b.id);
    for spec in [link(a.id, b.id, lan.id), link(b.id, a.id, lan.id)] {
        h.given().when(h.cmd().connect(spec)).then_expect_error(
            InfrastructureError::ResourceDecommissioned {
                resource: b.id,
                hostname: b.hostname.clone(),
            },
        );
    }
}

#[test]
fn the_same_pair_is_connected_once_per_network_in_either_direction() {
    let mut h = History::new();
    let (a, b) = (h.resource("a"), h.resource("b"));
    let lan = h.network("lan", "10.0.0.0/24");
    let existing = h.connect(a.id, b.id, lan.id);
    for (from, to) in [(a.id, b.id), (b.id, a.id)] {
        h.given()
            .when(h.cmd().connect(link(from, to, lan.id)))
            .then_expect_error(InfrastructureError::AlreadyConnected {
                from,
                to,
                network: lan.id,
                existing: existing.id,
            });
    }
    // The same pair on another network is another link.
    let san = h.network("san", "10.2.0.0/24");
    h.given()
        .when(h.cmd().connect(link(b.id, a.id, san.id)))
        .then_expect_events(|events| assert_eq!(event_types(events), ["ConnectionEstablished"]));
}

#[test]
fn a_connection_id_is_established_once() {
    let mut h = History::new();
    let (a, b, c) = (h.resource("a"), h.resource("b"), h.resource("c"));
    let lan = h.network("lan", "10.0.0.0/24");
    let existing = h.connect(a.id, b.id, lan.id);
    let reused = cim_domain_infrastructure::ConnectionSpec {
        to: c.id,
        ..existing.clone()
    };
    h.given().when(h.cmd().connect(reused)).then_expect_error(
        InfrastructureError::DuplicateConnection {
            connection: existing.id,
        },
    );
}

#[test]
fn severing_an_unknown_or_severed_connection_is_refused() {
    let mut h = History::new();
    let (a, b) = (h.resource("a"), h.resource("b"));
    let lan = h.network("lan", "10.0.0.0/24");
    let existing = h.connect(a.id, b.id, lan.id);
    h.run(h.cmd().sever(existing.id));
    h.given()
        .when(h.cmd().sever(existing.id))
        .then_expect_error(InfrastructureError::UnknownConnection {
            connection: existing.id,
        });
    // Once severed, the pair can be connected again.
    h.given()
        .when(h.cmd().connect(link(a.id, b.id, lan.id)))
        .then_expect_events(|events| assert_eq!(event_types(events), ["ConnectionEstablished"]));
}

// ---------------------------------------------------------------------------------------------
// Software

#[test]
fn an_invalid_software_configuration_is_refused() {
    let mut h = History::new();
    let web = h.resource("web");
    let mut spec = package(web.id, "nginx");
    spec.version = String::new();
    h.given()
        .when(h.cmd().configure(spec))
        .then_expect_error(InfrastructureError::InvalidSpec(SpecError::BlankField {
            spec: "software configuration",
            field: "version",
        }));
}

#[test]
fn software_needs_an_active_resource() {
    let mut h = History::new();
    let ghost = ResourceId::new();
    h.given()
        .when(h.cmd().configure(package(ghost, "nginx")))
        .then_expect_error(InfrastructureError::UnknownResource { resource: ghost });
    let web = h.resource("web");
    h.decommission(web.id);
    h.given()
        .when(h.cmd().configure(package(web.id, "nginx")))
        .then_expect_error(InfrastructureError::ResourceDecommissioned {
            resource: web.id,
            hostname: web.hostname.clone(),
        });
}

#[test]
fn software_is_configured_once_per_name_and_stays_on_its_resource() {
    let mut h = History::new();
    let (web, db) = (h.resource("web"), h.resource("db"));
    let nginx = h.software(web.id, "nginx");
    h.given()
        .when(h.cmd().configure(package(web.id, "nginx")))
        .then_expect_error(InfrastructureError::DuplicateSoftware {
            resource: web.id,
            name: "nginx".to_owned(),
            existing: nginx.id,
        });
    let moved = cim_domain_infrastructure::SoftwareConfiguration {
        resource: db.id,
        ..nginx.clone()
    };
    h.given().when(h.cmd().configure(moved)).then_expect_error(
        InfrastructureError::SoftwareOnOtherResource {
            software: nginx.id,
            resource: db.id,
            configured_on: web.id,
        },
    );
    // Reconfiguring: an event only when something changed.
    h.given()
        .when(h.cmd().configure(nginx.clone()))
        .then_expect_events(|events| assert!(events.is_empty()));
    let state = h
        .given()
        .when(
            h.cmd()
                .configure(nginx.clone().with_setting("workers", "4")),
        )
        .then_expect_events(|events| assert_eq!(event_types(events), ["SoftwareConfigured"]));
    assert_eq!(
        state.software_configuration(nginx.id).unwrap().settings["workers"],
        "4"
    );
}

#[test]
fn removing_unknown_software_is_refused() {
    let h = History::new();
    let ghost = cim_domain_infrastructure::SoftwareId::new();
    h.given()
        .when(h.cmd().remove_software(ghost))
        .then_expect_error(InfrastructureError::UnknownSoftware { software: ghost });
}

// ---------------------------------------------------------------------------------------------
// Policies

#[test]
fn an_invalid_policy_rule_is_refused() {
    let h = History::new();
    let mut blank = rule(PolicyScope::Infrastructure);
    blank.rule = "\t".to_owned();
    h.given()
        .when(h.cmd().set_policy(blank))
        .then_expect_error(InfrastructureError::InvalidSpec(SpecError::BlankField {
            spec: "policy rule",
            field: "rule",
        }));
}

#[test]
fn a_policy_scope_must_exist() {
    let mut h = History::new();
    let ghost = ResourceId::new();
    h.given()
        .when(h.cmd().set_policy(rule(PolicyScope::Resource(ghost))))
        .then_expect_error(InfrastructureError::UnknownResource { resource: ghost });
    let no_net = net("ghost", "10.0.0.0/8").id;
    h.given()
        .when(h.cmd().set_policy(rule(PolicyScope::Network(no_net))))
        .then_expect_error(InfrastructureError::UnknownNetwork { network: no_net });
    let web = h.resource("web");
    h.decommission(web.id);
    h.given()
        .when(h.cmd().set_policy(rule(PolicyScope::Resource(web.id))))
        .then_expect_error(InfrastructureError::ResourceDecommissioned {
            resource: web.id,
            hostname: web.hostname.clone(),
        });
}

#[test]
fn setting_a_policy_yields_an_event_only_when_it_changes() {
    let mut h = History::new();
    let policy = h.policy(PolicyScope::Infrastructure);
    h.given()
        .when(h.cmd().set_policy(policy.clone()))
        .then_expect_events(|events| assert!(events.is_empty()));
    let mut stricter = policy.clone();
    stricter.rule = "deny password_auth, deny root_login".to_owned();
    let state = h
        .given()
        .when(h.cmd().set_policy(stricter.clone()))
        .then_expect_events(|events| assert_eq!(event_types(events), ["PolicySet"]));
    assert_eq!(state.policy(policy.id), Some(&stricter));
}

#[test]
fn removing_an_unknown_policy_is_refused() {
    let h = History::new();
    let ghost = cim_domain_infrastructure::PolicyId::new();
    h.given()
        .when(h.cmd().remove_policy(ghost))
        .then_expect_error(InfrastructureError::UnknownPolicy { policy: ghost });
}

// ---------------------------------------------------------------------------------------------
// The aggregate itself

#[test]
fn a_command_for_another_infrastructure_is_refused() {
    let mut h = History::new();
    h.resource("web");
    let other = InfrastructureId::new();
    h.given()
        .when(Commands(other).register(host("db")))
        .then_expect_error(InfrastructureError::WrongInfrastructure {
            expected: h.id,
            found: other,
        });
}

#[test]
fn convenience_methods_need_an_infrastructure_id() {
    let mut aggregate = InfrastructureAggregate::default();
    assert_eq!(
        aggregate.handle_register_compute_resource(host("web"), &ops()),
        Err(InfrastructureError::MissingInfrastructureId)
    );
    assert_eq!(aggregate, InfrastructureAggregate::default());
}

#[test]
fn handle_never_changes_the_state() {
    let mut h = History::new();
    let web = h.resource("web");
    let before = h.state.clone();
    assert!(h.state.handle(h.cmd().register(host("db"))).is_ok());
    assert!(h.state.handle(h.cmd().register(web.clone())).is_err());
    assert!(h.state.handle(h.cmd().decommission(web.id)).is_ok());
    assert_eq!(h.state, before);
}

#[test]
fn a_refused_convenience_call_leaves_the_state_as_it_was() {
    let mut h = History::new();
    let web = h.resource("web");
    let before = h.state.clone();
    let err = h
        .state
        .handle_register_compute_resource(web.clone(), &ops())
        .unwrap_err();
    assert_eq!(
        err,
        InfrastructureError::DuplicateResource { resource: web.id }
    );
    assert_eq!(h.state, before);
}

/// The seed's "Basic Event Publishing" program, up to the publishing (which needs a server).
#[test]
#[allow(clippy::clone_on_copy)]
fn the_seed_program_registers_a_resource() -> Result<(), Box<dyn std::error::Error>> {
    // Create infrastructure aggregate
    let infra_id = InfrastructureId::new();
    let mut aggregate = InfrastructureAggregate::new(infra_id.clone());

    // Register a compute resource
    let identity = MessageIdentity::new_from_user("my-service");
    let spec = ComputeResourceSpec {
        id: cim_domain_infrastructure::ResourceId::new(),
        resource_type: ComputeType::Physical,
        hostname: Hostname::new("server01")?,
        system: SystemArchitecture::new("x86_64-linux")?,
        capabilities: ResourceCapabilities::default(),
    };
    let resource_id = spec.id;

    let events = aggregate.handle_register_compute_resource(spec, &identity)?;

    // What the publisher receives: the event, `infra_id.into()`, and versions from 1; it
    // encodes each as the version it is given.
    let mut published = Vec::new();
    for (seq, event) in events.iter().enumerate() {
        let aggregate_id: AggregateId = infra_id.into();
        let mut stored = [event.clone()];
        let new = cim_nats::encode_events(
            &aggregate_id,
            cim_nats::ExpectedVersion::from_loaded(seq as u64),
            &mut stored,
            None,
        )?;
        published.push((
            event.subject(&aggregate_id).to_string(),
            (seq + 1) as u64,
            new.into_iter().next().unwrap(),
            stored[0].id(),
        ));
    }
    assert_eq!(published.len(), 1);
    let (subject, version, new, stored_id) = &published[0];
    assert_eq!(
        *subject,
        format!("infrastructure.compute.registered.{infra_id}")
    );
    assert_eq!(*version, 1);
    assert_eq!(new.event_id, *stored_id);
    assert!(!stored_id.is_unassigned());
    assert_eq!(new.correlation_id, Some(identity.correlation_id));
    assert_eq!(new.causation_id, Some(identity.message_id.into()));
    assert_eq!(new.actor.as_deref(), Some("my-service"));

    // The aggregate has applied its own events.
    assert_eq!(aggregate.id(), Some(infra_id));
    let resource = aggregate.resource(resource_id).expect("registered");
    assert_eq!(resource.hostname().as_str(), "server01");
    assert!(!aggregate.is_decommissioned(resource_id));
    Ok(())
}

#[test]
fn every_convenience_method_decides_and_applies() -> Result<(), InfrastructureError> {
    let id = InfrastructureId::new();
    let mut infra = InfrastructureAggregate::new(id);
    let me = ops();
    let (web, db) = (host("web"), host("db"));
    infra.handle_register_compute_resource(web.clone(), &me)?;
    infra.handle_register_compute_resource(db.clone(), &me)?;
    infra.handle_update_compute_resource(
        web.id,
        ResourceCapabilities {
            gpu_count: 2,
            ..Default::default()
        },
        &me,
    )?;
    let lan = net("lan", "10.0.0.0/24");
    infra.handle_define_network(lan.clone(), &me)?;
    let wire = link(web.id, db.id, lan.id);
    infra.handle_establish_connection(wire.clone(), &me)?;
    let nginx = package(web.id, "nginx");
    infra.handle_configure_software(nginx.clone(), &me)?;
    let policy = rule(PolicyScope::Network(lan.id));
    infra.handle_set_policy(policy.clone(), &me)?;
    assert_eq!(
        (
            infra.resources().len(),
            infra.networks().len(),
            infra.connections().len(),
            infra.software().len(),
            infra.policies().len()
        ),
        (2, 1, 1, 1, 1)
    );
    assert_eq!(
        infra.resource(web.id).unwrap().spec.capabilities.gpu_count,
        2
    );

    infra.handle_remove_policy(policy.id, &me)?;
    infra.handle_remove_software(nginx.id, &me)?;
    infra.handle_sever_connection(wire.id, &me)?;
    infra.handle_remove_network(lan.id, &me)?;
    let events = infra.handle_decommission_compute_resource(db.id, &me)?;
    assert_eq!(event_types(&events), ["ComputeResourceDecommissioned"]);
    assert_eq!(
        (
            infra.networks().len(),
            infra.connections().len(),
            infra.software().len(),
            infra.policies().len()
        ),
        (0, 0, 0, 0)
    );
    assert!(infra.is_decommissioned(db.id));
    assert!(!infra.is_decommissioned(web.id));
    assert!(!infra.is_decommissioned(ResourceId::new()));
    assert_eq!(infra.id(), Some(id));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Event ids and identity

#[test]
fn a_retried_command_yields_the_same_events() {
    let mut h = History::new();
    let (a, b) = (h.resource("a"), h.resource("b"));
    let lan = h.network("lan", "10.0.0.0/24");
    h.connect(a.id, b.id, lan.id);
    h.software(a.id, "nginx");
    let command = h.cmd().decommission(a.id);

    let first = h.state.handle(command.clone()).unwrap();
    let retried = h.state.handle(command.clone()).unwrap();
    assert_eq!(
        first, retried,
        "same command, same state: the very same events"
    );
    // Decided on a state rebuilt from the events, too.
    let rebuilt = InfrastructureAggregate::from_events(&h.events);
    assert_eq!(rebuilt.handle(command.clone()).unwrap(), first);

    // The aggregate leaves the ids to the store, which derives them when it encodes the
    // events: the same command on the same state gets the same ids.
    assert!(first.iter().all(|e| e.id().is_unassigned()));
    let base = h.state.events_applied();
    assert_eq!(base, h.events.len() as u64);
    let encode =
        |events: &[InfrastructureEvent], id: InfrastructureId, command: &MessageIdentity| {
            let mut events = events.to_vec();
            let new = cim_nats::encode_events(
                &id.into(),
                cim_nats::ExpectedVersion::Exact(base),
                &mut events,
                Some(command),
            )
            .unwrap();
            (events, new)
        };
    let (stored, new) = encode(&first, h.id, command.identity());
    let (again, _) = encode(&retried, h.id, command.identity());
    assert_eq!(stored, again, "a retry gets the very same ids");
    for (event, new) in stored.iter().zip(&new) {
        assert_eq!(event.id(), new.event_id);
        assert_eq!(event.event_id(), Some(new.event_id));
        assert_eq!(event.id().as_uuid().get_version_num(), 7);
        // The event's identity is its own: its message id is the event id.
        assert_eq!(
            *event.identity().message_id.as_uuid(),
            *event.id().as_uuid()
        );
    }
    let distinct: std::collections::HashSet<_> = stored.iter().map(|e| e.id()).collect();
    assert_eq!(distinct.len(), stored.len());

    // The same identity on another infrastructure, at the same version: other ids.
    let elsewhere = InfrastructureId::new();
    let moved: Vec<InfrastructureEvent> = first
        .iter()
        .cloned()
        .map(|mut e| {
            // The same decision, for the other infrastructure.
            let json = serde_json::to_string(&e)
                .unwrap()
                .replace(&h.id.to_string(), &elsewhere.to_string());
            e = serde_json::from_str(&json).unwrap();
            e
        })
        .collect();
    let (there, _) = encode(&moved, elsewhere, command.identity());
    assert!(there.iter().all(|e| !distinct.contains(&e.id())));

    // The same identity reused for another decision on a later state: other ids, never
    // mistaken for a retry.
    let reused = InfrastructureCommand::RegisterComputeResource {
        infrastructure_id: h.id,
        spec: host("late"),
        identity: command.identity().clone(),
    };
    let mut later = h.state.clone();
    for e in &stored {
        cim_nats::Aggregate::apply(&mut later, e);
    }
    let late_events = later.handle(reused).unwrap();
    let mut late = late_events.clone();
    let new = cim_nats::encode_events(
        &h.id.into(),
        cim_nats::ExpectedVersion::Exact(base + stored.len() as u64),
        &mut late,
        Some(command.identity()),
    )
    .unwrap();
    assert!(new.iter().all(|e| !distinct.contains(&e.event_id)));

    // Another command (another message id) with the same content yields other ids.
    let other = h.cmd().decommission(a.id);
    let other_events = h.state.handle(other.clone()).unwrap();
    let (other_stored, _) = encode(&other_events, h.id, other.identity());
    assert_eq!(other_stored.len(), stored.len());
    for (x, y) in stored.iter().zip(&other_stored) {
        assert_ne!(x.id(), y.id());
    }
}

#[test]
fn events_carry_an_identity_caused_by_the_command() {
    let h = History::new();
    let root = MessageIdentity::new_from_user("alice");
    let command_identity = root.caused();
    let command = InfrastructureCommand::RegisterComputeResource {
        infrastructure_id: h.id,
        spec: host("web"),
        identity: command_identity.clone(),
    };
    let mut events = h.state.handle(command).unwrap();
    // The store assigns the id when it encodes the event.
    let new = cim_nats::encode_events(
        &h.id.into(),
        cim_nats::ExpectedVersion::NoStream,
        &mut events,
        None,
    )
    .unwrap();
    let event = &events[0];
    let identity = event.identity();
    assert_eq!(*identity.message_id.as_uuid(), *event.id().as_uuid());
    assert_eq!(identity.correlation_id, root.correlation_id);
    assert_eq!(
        *identity.causation_id.as_uuid(),
        *command_identity.message_id.as_uuid()
    );
    assert_eq!(identity.actor, "alice");
    assert_eq!(event.message_identity(), Some(identity));

    // The event's time is the command's, to the millisecond.
    let command_ms = command_identity
        .message_id
        .as_uuid()
        .get_timestamp()
        .map(|t| t.to_unix())
        .map(|(s, n)| s * 1000 + u64::from(n) / 1_000_000);
    let event_ms = event
        .occurred_at()
        .map(|t| u64::try_from(t.timestamp_millis()).unwrap());
    assert_eq!(event_ms, command_ms);

    // The store's encoding carries them as headers.
    let new = &new[0];
    assert_eq!(new.event_id, event.id());
    assert_eq!(new.correlation_id, Some(root.correlation_id));
    assert_eq!(new.causation_id, Some(command_identity.message_id.into()));
    assert_eq!(new.actor.as_deref(), Some("alice"));
}

#[test]
fn the_state_is_a_snapshot_that_round_trips() {
    let h = support::every_event();
    let json = serde_json::to_vec(&h.state).unwrap();
    let back: InfrastructureAggregate = serde_json::from_slice(&json).unwrap();
    assert_eq!(back, h.state);
    assert_eq!(InfrastructureAggregate::from_events(&h.events), h.state);
}
