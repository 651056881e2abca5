//! Two domains on one server: infrastructure and organization, each on its own stream, one
//! subscriber across both, and an organization event caused by an infrastructure event that
//! carries the conversation (correlation) and its cause (causation) across.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cim_domain_infrastructure::{
    ComputeResourceSpec, ComputeType, Hostname, InfrastructureAggregate, InfrastructureCommand,
    InfrastructureEvent, InfrastructureId, SystemArchitecture,
};
use cim_domain_organization::{
    nats as organization, DepartmentId, InventoryItem, OrganizationCommand, OrganizationEvent,
    OrganizationId,
};
use cim_infrastructure_nats::event_store::{EventStoreConfig, JetStreamEventStore};
use cim_nats::jetstream::subscriber::EventSubscriberBuilder;
use cim_nats::subscriber::{AsyncFnHandler, HandlerError};
use cim_nats::{EventHandler, EventStore, EventStoreExt, MessageIdentity, Repository, StoredEvent};

const WAIT: Duration = Duration::from_secs(10);

/// Who the organization acts as when it reacts to another domain.
const INVENTORY_POLICY: &str = "organization-inventory";

/// The policy between the domains: a registered compute resource goes into the inventory of
/// `department`, as an organization event caused by the infrastructure event. Organization
/// events are collected into `seen`.
fn policy(
    organizations: Arc<organization::OrganizationRepository>,
    department: DepartmentId,
    seen: Arc<Mutex<Vec<StoredEvent>>>,
) -> impl EventHandler + 'static {
    AsyncFnHandler::new(move |event: StoredEvent| {
        let (organizations, department, seen) =
            (organizations.clone(), department.clone(), seen.clone());
        async move {
            if event.subject.starts_with("organization.") {
                seen.lock().unwrap().push(event);
                return Ok(());
            }
            let InfrastructureEvent::ComputeResourceRegistered { resource, .. } = event.decode()?
            else {
                return Ok(());
            };
            let correlation = event
                .correlation_id
                .ok_or_else(|| HandlerError::msg("the event has no correlation id").permanent())?;
            let identity =
                MessageIdentity::caused_by(correlation, event.event_id, INVENTORY_POLICY);
            let assign = OrganizationCommand::AssignResource {
                resource: InventoryItem {
                    id: *resource.id.as_uuid(),
                    label: resource.hostname.to_string(),
                },
                department: department.clone(),
                identity,
            };
            // The event carries its own identity: no command identity to stamp over it.
            organizations
                .execute(&department.organization.into(), assign)
                .await?;
            Ok(())
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infrastructure_event_causes_an_organization_event_across_streams() {
    let (_server, client) = support::server().await;

    // Two domains, two streams.
    let infra_store = JetStreamEventStore::new(client.clone(), EventStoreConfig::default())
        .await
        .unwrap();
    let org_store = organization::open_store(client.clone()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    for (stream, subjects) in [
        ("INFRASTRUCTURE_EVENTS", "infrastructure.>"),
        ("ORGANIZATION_EVENTS", "organization.>"),
    ] {
        let mut stream_handle = js.get_stream(stream).await.unwrap();
        let info = stream_handle.info().await.unwrap();
        assert_eq!(info.config.subjects, [subjects], "stream {stream}");
    }

    // The organization and the department that receives new machines.
    let organizations = Arc::new(organization::repository(&org_store));
    let org = OrganizationId::new();
    let platform = DepartmentId::new(org, "platform").unwrap();
    let admin = MessageIdentity::new_from_user("alice");
    for command in [
        OrganizationCommand::Found {
            organization_id: org,
            name: "Acme".into(),
        },
        OrganizationCommand::CreateDepartment {
            department: platform.clone(),
            name: "Platform".into(),
        },
    ] {
        organizations
            .execute_as(&org.into(), command, &admin)
            .await
            .unwrap();
    }

    // One subscriber, one handle, one consumer per stream.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handle = EventSubscriberBuilder::new()
        .client(client.clone())
        .subjects(["infrastructure.>", "organization.>"])
        .handler(policy(
            organizations.clone(),
            platform.clone(),
            seen.clone(),
        ))
        .build()
        .unwrap()
        .subscribe()
        .await
        .unwrap();
    let mut consumers: Vec<(String, Vec<String>)> = handle
        .consumers()
        .iter()
        .map(|c| (c.stream.clone(), c.subjects.clone()))
        .collect();
    consumers.sort();
    assert_eq!(
        consumers,
        [
            (
                "INFRASTRUCTURE_EVENTS".into(),
                vec!["infrastructure.>".into()]
            ),
            ("ORGANIZATION_EVENTS".into(), vec!["organization.>".into()]),
        ]
    );

    // Operations register a machine: the conversation starts here.
    let infrastructures = Repository::<InfrastructureAggregate>::new(infra_store.clone());
    let infra = InfrastructureId::new();
    let ops = MessageIdentity::new_from_user("ops");
    let spec = ComputeResourceSpec::new(
        ComputeType::VirtualMachine,
        Hostname::new("web01").unwrap(),
        SystemArchitecture::X86_64_LINUX,
    );
    let register = InfrastructureCommand::RegisterComputeResource {
        infrastructure_id: infra,
        spec: spec.clone(),
        identity: ops.clone(),
    };
    infrastructures
        .execute(&infra.into(), register)
        .await
        .unwrap();
    let registered = infra_store
        .read_aggregate(&infra.into(), 0)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(registered.correlation_id, Some(ops.correlation_id));

    // The organization reacted, and the subscriber saw its event on the other stream.
    support::wait_until(WAIT, "the organization's ResourceAssigned event", || {
        let n = seen.lock().unwrap().len();
        async move { n > 0 }
    })
    .await;
    let assigned = seen.lock().unwrap()[0].clone();
    assert_eq!(assigned.event_type, "ResourceAssigned");
    assert_eq!(
        assigned.subject,
        format!("organization.inventory.assigned.{org}")
    );

    // Its stored headers carry the conversation across and name the infrastructure event as
    // its cause.
    let raw = js
        .get_stream(organization::STREAM_NAME)
        .await
        .unwrap()
        .get_last_raw_message_by_subject(&assigned.subject)
        .await
        .unwrap();
    let header = |name: &str| raw.headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(
        header("Cim-Correlation-Id"),
        Some(ops.correlation_id.to_string())
    );
    assert_eq!(
        header("Cim-Causation-Id"),
        Some(registered.event_id.to_string())
    );
    assert_eq!(header("Cim-Actor").as_deref(), Some(INVENTORY_POLICY));
    assert_eq!(header("Nats-Msg-Id"), Some(assigned.event_id.to_string()));

    // The typed view agrees, and the machine is in the department's inventory.
    let events = org_store
        .load_events::<OrganizationEvent>(&org.into(), 2)
        .await
        .unwrap();
    let [event] = &events[..] else {
        panic!("{events:?}")
    };
    assert_eq!(event.stored.correlation_id, Some(ops.correlation_id));
    assert_eq!(event.stored.causation_id, Some(registered.event_id.into()));
    let loaded = organizations.load(&org.into()).await.unwrap();
    let inventory = &loaded.state.department(&platform.code).unwrap().inventory;
    assert_eq!(
        inventory.get(spec.id.as_uuid()).map(String::as_str),
        Some("web01")
    );

    handle.shutdown().await.unwrap();
    for stream in ["INFRASTRUCTURE_EVENTS", "ORGANIZATION_EVENTS"] {
        let mut stream = js.get_stream(stream).await.unwrap();
        assert_eq!(stream.info().await.unwrap().state.consumer_count, 0);
    }
}

/// Delivery is at least once: the policy may see the same infrastructure event twice, and the
/// organization then assigns the machine once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_cause_assigns_once() {
    let (_server, client) = support::server().await;
    let infra_store = JetStreamEventStore::new(client.clone(), EventStoreConfig::default())
        .await
        .unwrap();
    let org_store = organization::open_store(client.clone()).await.unwrap();
    let organizations = Arc::new(organization::repository(&org_store));
    let org = OrganizationId::new();
    let platform = DepartmentId::new(org, "platform").unwrap();
    for command in [
        OrganizationCommand::Found {
            organization_id: org,
            name: "Acme".into(),
        },
        OrganizationCommand::CreateDepartment {
            department: platform.clone(),
            name: "Platform".into(),
        },
    ] {
        organizations.execute(&org.into(), command).await.unwrap();
    }
    let infra = InfrastructureId::new();
    let register = InfrastructureCommand::RegisterComputeResource {
        infrastructure_id: infra,
        spec: ComputeResourceSpec::new(
            ComputeType::Physical,
            Hostname::new("db01").unwrap(),
            SystemArchitecture::X86_64_LINUX,
        ),
        identity: MessageIdentity::new_from_user("ops"),
    };
    Repository::<InfrastructureAggregate>::new(infra_store.clone())
        .execute(&infra.into(), register)
        .await
        .unwrap();
    let registered = infra_store
        .read_aggregate(&infra.into(), 0)
        .await
        .unwrap()
        .pop()
        .unwrap();

    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler = policy(organizations.clone(), platform, seen);
    for _ in 0..2 {
        handler.handle(registered.clone()).await.unwrap();
    }
    let events = org_store
        .load_events::<OrganizationEvent>(&org.into(), 0)
        .await
        .unwrap();
    let assigned = events
        .iter()
        .filter(|e| matches!(e.event, OrganizationEvent::ResourceAssigned { .. }))
        .count();
    assert_eq!((events.len(), assigned), (3, 1));
}
