//! Subjects, ids and schema versions of the organization's events, without a server.

use cim_domain_organization::{
    DepartmentId, Directory, OrganizationEvent, OrganizationId, PersonId, Role,
};
use cim_nats::{AggregateId, DecodeError, EventId, NatsEvent};
use serde_json::json;

#[test]
fn every_event_has_its_subject_in_the_organization_domain() {
    assert_eq!(OrganizationEvent::DOMAIN, "organization");
    assert_eq!(OrganizationEvent::DOMAIN_WILDCARD, "organization.>");
    assert_eq!(
        OrganizationEvent::SUBJECTS,
        [
            "organization.organization.founded",
            "organization.department.created",
            "organization.member.joined",
            "organization.member.left",
            "organization.inventory.assigned",
        ]
    );
    assert_eq!(
        OrganizationEvent::entity_wildcard("member"),
        Some("organization.member.>")
    );
    let org = OrganizationId::new();
    let event = OrganizationEvent::MemberLeft {
        event_id: EventId::new(),
        department: DepartmentId::new(org, "platform").unwrap(),
        person: PersonId::new(),
    };
    assert_eq!(
        event.subject(&org.into()).as_str(),
        format!("organization.member.left.{org}")
    );
}

#[test]
fn only_the_founding_event_names_its_organization() {
    let org = OrganizationId::new();
    let founded = OrganizationEvent::OrganizationFounded {
        event_id: EventId::new(),
        organization_id: org,
        name: "Acme".into(),
    };
    assert_eq!(
        founded.aggregate_id().unwrap(),
        Some(AggregateId::from(org))
    );
    let created = OrganizationEvent::DepartmentCreated {
        event_id: EventId::new(),
        department: DepartmentId::new(org, "platform").unwrap(),
        name: "Platform".into(),
    };
    assert_eq!(created.aggregate_id().unwrap(), None);
    assert!(created.event_id().is_some());
}

fn v1_member_joined(department: &DepartmentId, person: PersonId, role: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "MemberJoined": {
            "event_id": EventId::new(),
            "department": department,
            "person": person,
            "name": "Ada",
            "role": role,
        }
    }))
    .unwrap()
}

#[test]
fn a_version_1_member_joined_is_upcast_to_roles() {
    let department = DepartmentId::new(OrganizationId::new(), "platform").unwrap();
    let person = PersonId::new();
    let payload = v1_member_joined(&department, person, "Manager");
    let event = OrganizationEvent::decode("MemberJoined", 1, &payload).unwrap();
    match event {
        OrganizationEvent::MemberJoined {
            department: d,
            person: p,
            roles,
            ..
        } => assert_eq!((d, p, roles), (department, person, vec![Role::Lead])),
        other => panic!("decoded {other:?}"),
    }
}

#[test]
fn an_unknown_version_1_role_is_a_decode_error_naming_it() {
    let department = DepartmentId::new(OrganizationId::new(), "platform").unwrap();
    let payload = v1_member_joined(&department, PersonId::new(), "wizard");
    let err = OrganizationEvent::decode("MemberJoined", 1, &payload).unwrap_err();
    assert!(
        matches!(&err, DecodeError::Upcast { from: 1, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("wizard"), "{err}");
    // Version 3 does not exist yet.
    let err = OrganizationEvent::decode("MemberJoined", 3, &payload).unwrap_err();
    assert!(matches!(
        err,
        DecodeError::UnknownVersion { current: 2, .. }
    ));
}

#[test]
fn department_ids_are_scoped_and_key_json_maps() {
    let org = OrganizationId::new();
    let id = DepartmentId::new(org, "r-and-d").unwrap();
    assert_eq!(id.to_string(), format!("{org}/r-and-d"));
    assert!("r-and-d".parse::<DepartmentId>().is_err());
    assert!(format!("{org}/R&D").parse::<DepartmentId>().is_err());
    assert!(serde_json::from_value::<DepartmentId>(json!(format!("{org}/a.b"))).is_err());

    // The directory's state, keyed by department, survives a JSON round trip (its checkpoint).
    let mut directory = Directory::default();
    directory.apply_event(&OrganizationEvent::MemberJoined {
        event_id: EventId::new(),
        department: id.clone(),
        person: PersonId::new(),
        name: "Ada".into(),
        roles: vec![Role::Owner],
    });
    let json = serde_json::to_string(&directory).unwrap();
    assert_eq!(serde_json::from_str::<Directory>(&json).unwrap(), directory);
    assert_eq!(directory.with_role(Role::Owner).len(), 1);
}
