//! Event ids, one rule for every domain: derived by the store from the command's message id, the
//! aggregate, the version and what was decided (`EventId::derive`). So one identity can be
//! shared by any number of commands on different aggregates; writers sharing an identity and
//! racing for one version with different decisions get version conflicts, which
//! `execute_with_retry` retries; and a retry of the same decision on the same state keeps its
//! ids, so it is recognised.

mod support;

use std::sync::Arc;

use cim_domain_infrastructure::{InfrastructureAggregate, InfrastructureCommand, InfrastructureId};
use cim_nats::event::Position;
use cim_nats::jetstream::{JetStreamEventStore, StoreConfig};
use cim_nats::{AggregateId, EventId, EventStore, MessageIdentity, NatsEvent, Repository};
use futures::stream::{self, StreamExt};
use support::bank::{Account, AccountCommand, AccountEvent};

async fn bank(client: &async_nats::Client) -> Arc<JetStreamEventStore> {
    Arc::new(
        JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("bank"))
            .await
            .unwrap(),
    )
}

/// (a) One identity made at start-up, shared by 10,000 commands on 10,000 aggregates: every
/// command succeeds, and no two events share an id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_shared_by_ten_thousand_commands_on_ten_thousand_aggregates() {
    let (_server, client) = support::server().await;
    let store = bank(&client).await;
    let repo = Arc::new(Repository::<Account>::new(store.clone()));
    let identity = MessageIdentity::new_from_user("start-up");
    let failures: Vec<String> = stream::iter(0..10_000)
        .map(|i| {
            let (repo, identity) = (repo.clone(), identity.clone());
            async move {
                let id = AggregateId::new(format!("acc-{i}")).unwrap();
                repo.execute_as(
                    &id,
                    AccountCommand::Open {
                        owner: "ada".into(),
                    },
                    &identity,
                )
                .await
                .err()
                .map(|e| format!("acc-{i}: {e}"))
            }
        })
        .buffer_unordered(32)
        .filter_map(|f| async move { f })
        .collect()
        .await;
    assert!(
        failures.is_empty(),
        "{} failed, e.g. {:?}",
        failures.len(),
        &failures[..1]
    );
    let ids: std::collections::HashSet<EventId> = store
        .read_all()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(ids.len(), 10_000);
}

/// The same with the infrastructure domain and the seed's pattern: one identity, one compute
/// resource registered on each of many new infrastructures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_registers_a_resource_on_each_of_many_infrastructures() {
    use cim_infrastructure_nats::event_store::EventStoreConfig;
    use cim_infrastructure_nats::publisher::EventPublisher;
    let (_server, client) = support::server().await;
    let store = Arc::new(
        cim_infrastructure_nats::event_store::JetStreamEventStore::new(
            client.clone(),
            EventStoreConfig::default(),
        )
        .await
        .unwrap(),
    );
    let publisher = EventPublisher::new(client, store.clone() as Arc<dyn EventStore>);
    let repo = Repository::<InfrastructureAggregate>::new(store.clone());
    let identity = MessageIdentity::new_from_user("my-service");
    for i in 0..200 {
        // Through the publisher, as the seed's program does...
        let infra_id = InfrastructureId::new();
        let mut aggregate = InfrastructureAggregate::new(infra_id);
        let events = aggregate
            .handle_register_compute_resource(support::infra::spec(&format!("p{i}")), &identity)
            .unwrap();
        for (seq, event) in events.iter().enumerate() {
            publisher
                .publish(event, infra_id.into(), (seq + 1) as u64)
                .await
                .unwrap_or_else(|e| panic!("publish {i}: {e}"));
        }
        // ... and through the repository.
        let infra_id = InfrastructureId::new();
        repo.execute(
            &infra_id.into(),
            InfrastructureCommand::RegisterComputeResource {
                infrastructure_id: infra_id,
                spec: support::infra::spec(&format!("r{i}")),
                identity: identity.clone(),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("execute {i}: {e}"));
    }
    // 200 registrations each way; through the repository each with its hostname's
    // reservation (the seed's pure API keeps the infrastructure's own events only).
    assert_eq!(store.read_all().await.unwrap().len(), 600);
}

/// (b) 32 writers share one identity and race for the same version of one aggregate, each with
/// another decision: exactly one wins, the others get a version conflict (not a reused id); and
/// `execute_with_retry` gets every one of them in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_sharing_an_identity_racing_for_one_version_conflict_and_retry() {
    let (_server, client) = support::server().await;
    let store = bank(&client).await;
    let repo = Arc::new(Repository::<Account>::new(store.clone()));
    let identity = MessageIdentity::new_from_user("shared");
    let id = AggregateId::new("hot").unwrap();
    repo.execute_as(
        &id,
        AccountCommand::Open {
            owner: "ada".into(),
        },
        &identity,
    )
    .await
    .unwrap();
    // Every racer decides from the same (soon stale) state.
    let loaded = repo.load(&id).await.unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(32));
    let tasks: Vec<_> = (1..=32u64)
        .map(|amount| {
            let (repo, identity, barrier) = (repo.clone(), identity.clone(), barrier.clone());
            let mut loaded = loaded.clone();
            tokio::spawn(async move {
                let mut events =
                    cim_nats::Aggregate::handle(&loaded.state, AccountCommand::Deposit(amount))
                        .unwrap();
                barrier.wait().await;
                repo.save(&mut loaded, &mut events, Some(&identity)).await
            })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => won += 1,
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    cim_nats::StoreErrorKind::WrongExpectedVersion { .. }
                ),
                "a loser gets a version conflict: {e}"
            ),
        }
    }
    assert_eq!(won, 1, "exactly one racer wins");

    // The same race through execute_with_retry: every deposit goes in, once.
    let before = repo.load(&id).await.unwrap().state.balance;
    let tasks: Vec<_> = (1..=32u64)
        .map(|amount| {
            let (repo, identity, id) = (repo.clone(), identity.clone(), id.clone());
            tokio::spawn(async move {
                repo.execute_with_retry_as(
                    &id,
                    move || AccountCommand::Deposit(amount),
                    &identity,
                    100,
                )
                .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let after = repo.load(&id).await.unwrap().state;
    assert_eq!(after.balance, before + (1..=32).sum::<u64>());
}

/// (c) The same decision on the same state, appended twice (a retry after a lost answer): the
/// same ids, the original result, nothing stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_the_same_decision_keeps_its_ids() {
    let (_server, client) = support::server().await;
    let store = bank(&client).await;
    let repo = Repository::<Account>::new(store.clone());
    let identity = MessageIdentity::new_from_user("ops");
    let id = AggregateId::new("acc").unwrap();
    repo.execute_as(
        &id,
        AccountCommand::Open {
            owner: "ada".into(),
        },
        &identity,
    )
    .await
    .unwrap();
    let loaded = repo.load(&id).await.unwrap();
    let command = MessageIdentity::new_from_user("ops");
    let decide = || cim_nats::Aggregate::handle(&loaded.state, AccountCommand::Deposit(5)).unwrap();
    let (mut first, mut again) = (decide(), decide());
    let (mut a, mut b) = (loaded.clone(), loaded.clone());
    let r1 = repo
        .save(&mut a, &mut first, Some(&command))
        .await
        .unwrap()
        .unwrap();
    let r2 = repo
        .save(&mut b, &mut again, Some(&command))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, again, "the same ids");
    assert!(!r1.duplicate && r2.duplicate);
    assert_eq!(r1.sequences, r2.sequences);
    assert_eq!(store.read_all().await.unwrap().len(), 2);
}

/// (d) One rule for every domain: the stored id of an event is `EventId::derive` of the
/// command's message id, the aggregate, the version, the type and the content without the id,
/// whichever domain it belongs to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_domain_gets_its_ids_by_the_same_rule() {
    let (_server, client) = support::server().await;
    let store = bank(&client).await;
    let repo = Repository::<Account>::new(store.clone());
    let command = MessageIdentity::new_from_user("ops");
    let id = AggregateId::new("acc").unwrap();
    let outcome = repo
        .execute_as(
            &id,
            AccountCommand::Open {
                owner: "ada".into(),
            },
            &command,
        )
        .await
        .unwrap();
    let stored = store.read_aggregate(&id, 0).await.unwrap();
    let mut neutral = outcome.events[0].clone();
    neutral.set_event_id(EventId::unassigned());
    let expected = EventId::derive(
        Some(&command.message_id),
        &id,
        Position::Version(1),
        "Opened",
        &neutral.encode().unwrap(),
    );
    assert_eq!(stored[0].event_id, expected);
    assert_eq!(outcome.events[0].event_id(), Some(expected));
    assert!(matches!(&outcome.events[0], AccountEvent::Opened { id, .. } if *id == expected));

    // The infrastructure domain, on its own stream.
    let infra = Arc::new(
        JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("infrastructure"))
            .await
            .unwrap(),
    );
    let repo = Repository::<InfrastructureAggregate>::new(infra.clone());
    let infra_id = InfrastructureId::new();
    let outcome = repo
        .execute(
            &infra_id.into(),
            InfrastructureCommand::RegisterComputeResource {
                infrastructure_id: infra_id,
                spec: support::infra::spec("web"),
                identity: command.clone(),
            },
        )
        .await
        .unwrap();
    let stored = infra.read_aggregate(&infra_id.into(), 0).await.unwrap();
    let mut neutral = outcome.events[0].clone();
    neutral.set_event_id(EventId::unassigned());
    // Without an identity passed, the cause is the causation of the identity the event carries:
    // the command's message id.
    let expected = EventId::derive(
        Some(&command.message_id),
        &infra_id.into(),
        Position::Version(1),
        "ComputeResourceRegistered",
        &neutral.encode().unwrap(),
    );
    assert_eq!(stored[0].event_id, expected);
    assert_eq!(outcome.events[0].id(), expected);
    assert_eq!(
        *outcome.events[0].identity().message_id.as_uuid(),
        *expected.as_uuid()
    );
}
