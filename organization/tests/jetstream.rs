//! The organization domain on a real nats-server: its own stream, the repository, the
//! directory following live, and an event stored at schema version 1 by an older writer.

use std::time::Duration;

use cim_domain_organization::{
    nats, DepartmentId, OrganizationCommand, OrganizationEvent, OrganizationId, PersonId, Role,
};
use cim_nats::testing::NatsServer;
use cim_nats::{AggregateId, EventStoreExt, MessageIdentity, StreamSequence};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

async fn server() -> (NatsServer, async_nats::Client) {
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let client = server.connect().await.unwrap();
    (server, client)
}

/// Founds an organization with a `platform` department; returns the sequence of the last event.
async fn found_with_platform(
    repo: &nats::OrganizationRepository,
    org: OrganizationId,
) -> (DepartmentId, StreamSequence) {
    let alice = MessageIdentity::new_from_user("alice");
    let id = AggregateId::from(org);
    let found = OrganizationCommand::Found {
        organization_id: org,
        name: "Acme".into(),
    };
    repo.execute_as(&id, found, &alice).await.unwrap();
    let platform = DepartmentId::new(org, "platform").unwrap();
    let create = OrganizationCommand::CreateDepartment {
        department: platform.clone(),
        name: "Platform".into(),
    };
    let outcome = repo.execute_as(&id, create, &alice).await.unwrap();
    let last = outcome.last_sequence();
    (platform, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_stored_on_the_organization_stream_and_the_directory_follows() {
    let (_server, client) = server().await;
    let store = nats::open_store(client.clone()).await.unwrap();
    assert_eq!(store.stream_name(), nats::STREAM_NAME);
    assert_eq!(store.config().subjects, ["organization.>"]);
    let repo = nats::repository(&store);
    let directory = nats::start_directory(&store).await.unwrap();

    let org = OrganizationId::new();
    let (platform, _) = found_with_platform(&repo, org).await;
    let (ada, bob) = (PersonId::new(), PersonId::new());
    let alice = MessageIdentity::new_from_user("alice");
    for (person, name, roles) in [
        (ada, "Ada", vec![Role::Lead, Role::Member]),
        (bob, "Bob", vec![Role::Member]),
    ] {
        let add = OrganizationCommand::AddMember {
            department: platform.clone(),
            person,
            name: name.into(),
            roles,
        };
        repo.execute_as(&org.into(), add, &alice).await.unwrap();
    }
    let remove = OrganizationCommand::RemoveMember {
        department: platform.clone(),
        person: bob,
    };
    let outcome = repo.execute_as(&org.into(), remove, &alice).await.unwrap();
    assert_eq!(outcome.version, 5);

    // Stored on `organization.{entity}.{operation}.{id}`, with the command's identity.
    let events = store
        .load_events::<OrganizationEvent>(&org.into(), 0)
        .await
        .unwrap();
    let subjects: Vec<&str> = events.iter().map(|e| e.stored.subject.as_str()).collect();
    let tail = format!(".{org}");
    assert_eq!(
        subjects,
        [
            format!("organization.organization.founded{tail}"),
            format!("organization.department.created{tail}"),
            format!("organization.member.joined{tail}"),
            format!("organization.member.joined{tail}"),
            format!("organization.member.left{tail}"),
        ]
    );
    assert!(events
        .iter()
        .all(|e| e.stored.actor.as_deref() == Some("alice")));
    assert!(events[2..]
        .iter()
        .all(|e| e.stored.correlation_id == Some(alice.correlation_id)));

    let last = outcome.last_sequence();
    directory.wait_for(last, WAIT).await.unwrap();
    {
        let view = directory.read().await;
        assert_eq!(view.organization(org), Some("Acme"));
        let members: Vec<_> = view
            .members_of(&platform)
            .map(|(p, l)| (*p, l.name.as_str(), l.roles.clone()))
            .collect();
        assert_eq!(members, [(ada, "Ada", vec![Role::Lead, Role::Member])]);
        assert_eq!(view.with_role(Role::Lead), [(&platform, &ada)]);
    }
    directory.shutdown().await.unwrap();
}

/// An older writer stored `MemberJoined` at schema version 1 (`"role": "manager"`), with any
/// NATS client: reading it gives the current variant (`roles: [Lead]`), for the repository, the
/// typed load and the directory alike, and the organization's history goes on after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_version_1_event_is_read_as_the_current_variant() {
    let (_server, client) = server().await;
    let store = nats::open_store(client.clone()).await.unwrap();
    let repo = nats::repository(&store);
    let org = OrganizationId::new();
    let (platform, _) = found_with_platform(&repo, org).await;

    // The store's wire format, written by hand: version 3 of the organization.
    let ada = PersonId::new();
    let event_id = uuid::Uuid::now_v7();
    let body = json!({
        "MemberJoined": {
            "event_id": event_id,
            "department": platform.to_string(),
            "person": ada,
            "name": "Ada",
            "role": "manager",
        }
    });
    let stored = cim_nats::testing::RawEvent::new("organization.member.joined", org.to_string(), 3)
        .event_type("MemberJoined", 1)
        .event_id(event_id)
        .body(body)
        .publish(&client)
        .await
        .unwrap();
    assert_eq!(stored, StreamSequence(3));

    let events = store
        .load_events::<OrganizationEvent>(&org.into(), 2)
        .await
        .unwrap();
    let [joined] = &events[..] else {
        panic!("{events:?}")
    };
    assert_eq!(joined.stored.schema_version, 1);
    assert_eq!(joined.version(), 3);
    assert_eq!(*joined.event_id().as_uuid(), event_id);
    assert!(matches!(
        &joined.event,
        OrganizationEvent::MemberJoined { person, roles, .. } if *person == ada && roles == &[Role::Lead]
    ));

    let loaded = repo.load(&org.into()).await.unwrap();
    assert_eq!(loaded.version, 3);
    let department = loaded.state.department(&platform.code).unwrap();
    assert_eq!(department.members[&ada].roles, [Role::Lead]);

    // Appending goes on after it, at version 4 (the repository's store remembered version 2).
    let leave = OrganizationCommand::RemoveMember {
        department: platform.clone(),
        person: ada,
    };
    let identity = MessageIdentity::new_from_user("alice");
    let outcome = repo
        .execute_as(&org.into(), leave, &identity)
        .await
        .unwrap();
    assert_eq!(outcome.version, 4);

    // A directory started now reads it too, and applies what came after.
    let directory = nats::start_directory(&store).await.unwrap();
    directory
        .wait_for(outcome.append.unwrap().last_sequence().unwrap(), WAIT)
        .await
        .unwrap();
    assert!(directory.read().await.memberships(ada).is_empty());
    directory.shutdown().await.unwrap();
}

/// A member moves between two organizations in one atomic write: never in both, never in
/// neither; two moves of the same person at once: one is stored, the other finds them gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_moves_between_organizations_in_one_write() {
    let (_server, client) = server().await;
    let store = nats::open_store(client.clone()).await.unwrap();
    let repo = nats::repository(&store);
    let (acme, globex, initech) = (
        OrganizationId::new(),
        OrganizationId::new(),
        OrganizationId::new(),
    );
    let (from, _) = found_with_platform(&repo, acme).await;
    let (to, _) = found_with_platform(&repo, globex).await;
    let (elsewhere, _) = found_with_platform(&repo, initech).await;
    let ada = PersonId::new();
    let alice = MessageIdentity::new_from_user("alice");
    repo.execute_as(
        &acme.into(),
        OrganizationCommand::AddMember {
            department: from.clone(),
            person: ada,
            name: "Ada".into(),
            roles: vec![Role::Lead],
        },
        &alice,
    )
    .await
    .unwrap();

    let moved = nats::move_member(&repo, &from, &to, ada, &alice, 3)
        .await
        .unwrap();
    assert_eq!(moved.len(), 2);
    let (removed, added) = (&moved[0], &moved[1]);
    assert_eq!(
        added.last_sequence().0,
        removed.last_sequence().0 + 1,
        "stored together"
    );
    let acme_now = repo.load(&acme.into()).await.unwrap().state;
    let globex_now = repo.load(&globex.into()).await.unwrap().state;
    assert!(!acme_now
        .department(&from.code)
        .unwrap()
        .members
        .contains_key(&ada));
    let member = &globex_now.department(&to.code).unwrap().members[&ada];
    assert_eq!(
        (member.name.as_str(), member.roles.as_slice()),
        ("Ada", &[Role::Lead][..])
    );

    // Two moves of Ada out of Globex at once, to Acme and to Initech: one wins.
    let (a, b) = tokio::join!(
        nats::move_member(&repo, &to, &from, ada, &alice, 3),
        nats::move_member(&repo, &to, &elsewhere, ada, &alice, 3),
    );
    assert!(a.is_ok() != b.is_ok(), "exactly one move: {a:?} {b:?}");
    let lost = a.err().or(b.err()).unwrap();
    assert!(
        matches!(
            lost,
            cim_nats::CommandError::Rejected(
                cim_domain_organization::OrganizationError::NotAMember { .. }
            )
        ),
        "{lost}"
    );
    let mut holding = 0;
    for (org, dept) in [(acme, &from), (globex, &to), (initech, &elsewhere)] {
        let state = repo.load(&org.into()).await.unwrap().state;
        holding += usize::from(
            state
                .department(&dept.code)
                .unwrap()
                .members
                .contains_key(&ada),
        );
    }
    assert_eq!(holding, 1, "Ada is in exactly one department");
}
