//! The organization's rules, given/when/then, and the repository's check of an event that
//! names its aggregate.

use cim_domain_organization::{
    DepartmentId, InventoryItem, Organization, OrganizationCommand, OrganizationError,
    OrganizationEvent, OrganizationId, PersonId, Role,
};
use cim_nats::harness::AggregateTest;
use cim_nats::memory::InMemoryEventStore;
use cim_nats::{EventId, MessageIdentity, Repository, StoreErrorKind};

fn founded(org: OrganizationId) -> OrganizationEvent {
    OrganizationEvent::OrganizationFounded {
        event_id: EventId::new(),
        organization_id: org,
        name: "Acme".into(),
    }
}

fn created(department: &DepartmentId) -> OrganizationEvent {
    OrganizationEvent::DepartmentCreated {
        event_id: EventId::new(),
        department: department.clone(),
        name: "Platform".into(),
    }
}

fn joined(department: &DepartmentId, person: PersonId) -> OrganizationEvent {
    OrganizationEvent::MemberJoined {
        event_id: EventId::new(),
        department: department.clone(),
        person,
        name: "Ada".into(),
        roles: vec![Role::Lead],
    }
}

/// An organization with a `platform` department.
fn with_platform() -> (OrganizationId, DepartmentId, Vec<OrganizationEvent>) {
    let org = OrganizationId::new();
    let platform = DepartmentId::new(org, "platform").unwrap();
    let events = vec![founded(org), created(&platform)];
    (org, platform, events)
}

#[test]
fn founding_names_the_organization() {
    let org = OrganizationId::new();
    let state = AggregateTest::<Organization>::given_no_events()
        .when(OrganizationCommand::Found {
            organization_id: org,
            name: "  Acme ".into(),
        })
        .then_expect_events(|events| {
            assert!(matches!(
                events,
                [OrganizationEvent::OrganizationFounded { organization_id, name, .. }]
                    if *organization_id == org && name == "Acme"
            ));
        });
    assert_eq!((state.id(), state.name()), (Some(org), "Acme"));
}

#[test]
fn an_organization_is_founded_once_and_before_anything_else() {
    let org = OrganizationId::new();
    AggregateTest::<Organization>::given(vec![founded(org)])
        .when(OrganizationCommand::Found {
            organization_id: org,
            name: "Again".into(),
        })
        .then_expect_error(OrganizationError::AlreadyFounded(org));
    AggregateTest::<Organization>::given_no_events()
        .when(OrganizationCommand::CreateDepartment {
            department: DepartmentId::new(org, "platform").unwrap(),
            name: "Platform".into(),
        })
        .then_expect_error(OrganizationError::NotFounded);
}

#[test]
fn a_department_of_another_organization_is_refused() {
    let (org, _, given) = with_platform();
    let elsewhere = DepartmentId::new(OrganizationId::new(), "platform").unwrap();
    AggregateTest::<Organization>::given(given)
        .when(OrganizationCommand::CreateDepartment {
            department: elsewhere.clone(),
            name: "Platform".into(),
        })
        .then_expect_error(OrganizationError::WrongOrganization {
            organization: org,
            department: elsewhere,
        });
}

#[test]
fn department_codes_are_unique() {
    let (_, platform, given) = with_platform();
    AggregateTest::<Organization>::given(given)
        .when(OrganizationCommand::CreateDepartment {
            department: platform.clone(),
            name: "Other".into(),
        })
        .then_expect_error(OrganizationError::DepartmentExists(platform));
}

#[test]
fn a_member_joins_once_with_sorted_roles() {
    let (_, platform, given) = with_platform();
    let ada = PersonId::new();
    let add = |roles: Vec<Role>| OrganizationCommand::AddMember {
        department: platform.clone(),
        person: ada,
        name: "Ada".into(),
        roles,
    };
    let state = AggregateTest::<Organization>::given(given.clone())
        .when(add(vec![Role::Member, Role::Admin, Role::Member]))
        .then_expect_events(|events| {
            assert!(matches!(
                events,
                [OrganizationEvent::MemberJoined { roles, .. }] if roles == &[Role::Admin, Role::Member]
            ));
        });
    let members = &state.department(&platform.code).unwrap().members;
    assert_eq!(members[&ada].roles, [Role::Admin, Role::Member]);

    let mut again = given.clone();
    again.push(joined(&platform, ada));
    AggregateTest::<Organization>::given(again)
        .when(add(vec![Role::Guest]))
        .then_expect_error(OrganizationError::AlreadyMember {
            department: platform.clone(),
            person: ada,
        });
    AggregateTest::<Organization>::given(given)
        .when(add(Vec::new()))
        .then_expect_error(OrganizationError::NoRoles);
}

#[test]
fn only_a_member_can_leave() {
    let (_, platform, mut given) = with_platform();
    let ada = PersonId::new();
    AggregateTest::<Organization>::given(given.clone())
        .when(OrganizationCommand::RemoveMember {
            department: platform.clone(),
            person: ada,
        })
        .then_expect_error(OrganizationError::NotAMember {
            department: platform.clone(),
            person: ada,
        });
    given.push(joined(&platform, ada));
    let state = AggregateTest::<Organization>::given(given)
        .when(OrganizationCommand::RemoveMember {
            department: platform.clone(),
            person: ada,
        })
        .then_expect_events(|events| {
            assert!(matches!(events, [OrganizationEvent::MemberLeft { .. }]));
        });
    assert!(state.department(&platform.code).unwrap().members.is_empty());
}

#[test]
fn an_assignment_carries_its_cause_and_is_idempotent() {
    let (org, platform, mut given) = with_platform();
    let item = InventoryItem {
        id: uuid::Uuid::now_v7(),
        label: "web01".into(),
    };
    let cause = EventId::new();
    let command = MessageIdentity::new_from_user("ops");
    let identity = MessageIdentity::caused_by(command.correlation_id, cause, "organization");
    let assign = |department: &DepartmentId| OrganizationCommand::AssignResource {
        department: department.clone(),
        resource: item.clone(),
        identity: identity.clone(),
    };
    // The id is left to the store, which assigns it when it appends the event.
    let expected = OrganizationEvent::ResourceAssigned {
        event_id: EventId::unassigned(),
        department: platform.clone(),
        resource: item.clone(),
        identity: identity.clone(),
    };
    AggregateTest::<Organization>::given(given.clone())
        .when(assign(&platform))
        .then_expect(vec![expected.clone()]);

    // Delivered again: nothing to do.
    given.push(expected);
    AggregateTest::<Organization>::given(given.clone())
        .when(assign(&platform))
        .then_expect(Vec::new());

    // Another department cannot take it.
    let labs = DepartmentId::new(org, "labs").unwrap();
    given.push(created(&labs));
    AggregateTest::<Organization>::given(given)
        .when(assign(&labs))
        .then_expect_error(OrganizationError::AssignedElsewhere {
            resource: item.id,
            department: platform,
        });
}

#[test]
fn blank_names_are_refused() {
    AggregateTest::<Organization>::given_no_events()
        .when(OrganizationCommand::Found {
            organization_id: OrganizationId::new(),
            name: " \t".into(),
        })
        .then_expect_error(OrganizationError::BlankName);
}

/// `OrganizationFounded` names its organization (`#[nats_event(aggregate_id)]`): the repository
/// refuses to append it to another aggregate.
#[tokio::test]
async fn the_repository_refuses_a_founding_event_for_another_organization() {
    let repo = Repository::<Organization>::new(InMemoryEventStore::new());
    let (here, there) = (OrganizationId::new(), OrganizationId::new());
    let found = OrganizationCommand::Found {
        organization_id: there,
        name: "Acme".into(),
    };
    let err = repo.execute(&here.into(), found).await.unwrap_err();
    match err {
        cim_nats::CommandError::Store(e) => {
            assert!(
                matches!(e.kind(), StoreErrorKind::InvalidAppend(why) if why.contains(&there.to_string())),
                "{e}"
            );
        }
        other => panic!("expected a store error, got {other}"),
    }
    let found = OrganizationCommand::Found {
        organization_id: here,
        name: "Acme".into(),
    };
    let outcome = repo.execute(&here.into(), found).await.unwrap();
    assert_eq!(outcome.version, 1);
}
