//! Hostnames unique across every infrastructure, through the repository on a real server: a
//! registration is stored with its hostname's reservation, in one atomic write checked by the
//! server; a decommission gives the hostname up.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cim_domain_infrastructure::{
    Hostname, InfrastructureAggregate, InfrastructureCommand, InfrastructureError,
    InfrastructureEvent, InfrastructureId, MessageIdentity,
};
use cim_nats::jetstream::{JetStreamEventStore, StoreConfig};
use cim_nats::{AggregateId, CommandError, EventStore, Repository, StoreErrorKind};

async fn repository(
    client: &async_nats::Client,
) -> (
    JetStreamEventStore,
    Arc<Repository<InfrastructureAggregate>>,
) {
    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("infrastructure"))
        .await
        .expect("store");
    let repo = Arc::new(Repository::<InfrastructureAggregate>::new(store.clone()).with_cache(100));
    (store, repo)
}

fn register(infra: InfrastructureId, hostname: &str) -> InfrastructureCommand {
    InfrastructureCommand::RegisterComputeResource {
        infrastructure_id: infra,
        spec: support::infra::spec(hostname),
        identity: MessageIdentity::new_from_user("discovery"),
    }
}

/// The holder a refusal names, if it is "already taken".
fn taken_by<E: std::error::Error>(err: &CommandError<E>) -> Option<AggregateId> {
    match err {
        CommandError::Store(e) => match e.kind() {
            StoreErrorKind::Reserved { kind, holder, .. } if kind == "hostname" => {
                Some(holder.clone())
            }
            _ => None,
        },
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_32_infrastructures_gets_a_hostname_and_the_others_are_told_who_holds_it() {
    let (_server, client) = support::server().await;
    let (_store, repo) = repository(&client).await;
    // A second service on its own connection, as another process would be.
    let (_other_store, other) = repository(&client).await;
    let infras: Vec<InfrastructureId> = (0..32).map(|_| InfrastructureId::new()).collect();
    let mut tasks = Vec::new();
    for (i, infra) in infras.iter().copied().enumerate() {
        let repo = Arc::clone(if i % 2 == 0 { &repo } else { &other });
        tasks.push(tokio::spawn(async move {
            let outcome = repo
                .execute_with_retry(
                    &infra.into(),
                    move || register(infra, "db.dc1.example.com"),
                    5,
                )
                .await;
            (infra, outcome)
        }));
    }
    let mut winners = Vec::new();
    let mut refusals = Vec::new();
    for task in tasks {
        let (infra, outcome) = task.await.expect("task");
        match outcome {
            Ok(_) => winners.push(infra),
            Err(e) => refusals.push((infra, taken_by(&e).unwrap_or_else(|| panic!("{e}")))),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one infrastructure holds the hostname"
    );
    let holder: AggregateId = winners[0].into();
    assert_eq!(refusals.len(), 31);
    assert!(
        refusals.iter().all(|(_, by)| *by == holder),
        "each refusal names the holder"
    );

    // Given up by a decommission, the hostname can be taken again, elsewhere.
    let winner = repo.load(&holder).await.expect("load");
    let resource = winner
        .state
        .resource_by_hostname(&Hostname::new("db.dc1.example.com").unwrap())
        .expect("registered")
        .id();
    repo.execute(
        &holder,
        InfrastructureCommand::DecommissionComputeResource {
            infrastructure_id: winners[0],
            resource,
            identity: MessageIdentity::new_from_user("ops"),
        },
    )
    .await
    .expect("decommissioned");
    let next = refusals[0].0;
    repo.execute(&next.into(), register(next, "DB.dc1.example.com."))
        .await
        .expect("the hostname is free again (names compare as hostnames do)");
    let err = repo
        .execute(&holder, register(winners[0], "db.dc1.example.com"))
        .await
        .expect_err("now held by the next one");
    assert_eq!(taken_by(&err), Some(next.into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_registrations_and_decommissions_never_hold_a_hostname_twice() {
    let (_server, client) = support::server().await;
    let (store, repo) = repository(&client).await;
    let (_other_store, other) = repository(&client).await;
    const TASKS: u64 = 16;
    // 2,000 here; `cargo xtask soak` runs 10,000.
    let operations: u64 = std::env::var("CIM_SOAK_HOSTNAME_OPERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    const NAMES: u64 = 50;
    let infras: Arc<Vec<InfrastructureId>> =
        Arc::new((0..4).map(|_| InfrastructureId::new()).collect());
    let (registered, decommissioned, taken) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let repo = Arc::clone(if t % 2 == 0 { &repo } else { &other });
        let infras = Arc::clone(&infras);
        let (registered, decommissioned, taken) = (
            Arc::clone(&registered),
            Arc::clone(&decommissioned),
            Arc::clone(&taken),
        );
        tasks.push(tokio::spawn(async move {
            let mut x = 0xD1B5_4A32_D192_ED03u64 ^ (t + 1);
            let mut next = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            for _ in 0..operations / TASKS {
                let infra = infras[(next() % infras.len() as u64) as usize];
                let name = format!("host-{}.example.com", next() % NAMES);
                let hostname = Hostname::new(&name).unwrap();
                let id: AggregateId = infra.into();
                let held_here = repo
                    .load_cached(&id)
                    .await
                    .expect("load")
                    .state
                    .resource_by_hostname(&hostname)
                    .map(|r| r.id());
                let outcome = match held_here {
                    Some(resource) => repo
                        .execute_with_retry(
                            &id,
                            move || InfrastructureCommand::DecommissionComputeResource {
                                infrastructure_id: infra,
                                resource,
                                identity: MessageIdentity::new_from_user("ops"),
                            },
                            20,
                        )
                        .await
                        .map(|_| &decommissioned),
                    None => {
                        let name = name.clone();
                        repo.execute_with_retry(&id, move || register(infra, &name), 20)
                            .await
                            .map(|_| &registered)
                    }
                };
                match outcome {
                    Ok(counter) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if taken_by(&e).is_some() => {
                        taken.fetch_add(1, Ordering::Relaxed);
                    }
                    // Raced by another task on the same infrastructure: decided on a newer
                    // state, the command no longer applies.
                    Err(CommandError::Rejected(
                        InfrastructureError::DuplicateHostname { .. }
                        | InfrastructureError::AlreadyDecommissioned { .. }
                        | InfrastructureError::UnknownResource { .. },
                    )) => {}
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let (registered, decommissioned, taken) = (
        registered.load(Ordering::Relaxed),
        decommissioned.load(Ordering::Relaxed),
        taken.load(Ordering::Relaxed),
    );
    assert!(
        registered > 0 && decommissioned > 0 && taken > 0,
        "{registered} {decommissioned} {taken}"
    );

    // Replay the stream: at no point is a hostname held by two resources, and the
    // reservations say the same as the registrations.
    let mut holders: HashMap<
        String,
        Vec<(InfrastructureId, cim_domain_infrastructure::ResourceId)>,
    > = HashMap::new();
    let mut reserved: HashMap<String, InfrastructureId> = HashMap::new();
    let mut hostnames = HashMap::new();
    let (mut registrations, mut reservations) = (0u64, 0u64);
    for stored in store.read_all().await.expect("read") {
        let event = stored
            .decode::<InfrastructureEvent>()
            .expect("an infrastructure event");
        match event {
            InfrastructureEvent::ComputeResourceRegistered {
                infrastructure_id,
                resource,
                ..
            } => {
                registrations += 1;
                let name = resource.hostname.as_str().to_owned();
                hostnames.insert(resource.id, name.clone());
                let active = holders.entry(name.clone()).or_default();
                active.push((infrastructure_id, resource.id));
                assert_eq!(
                    active.len(),
                    1,
                    "{name} held twice at {}",
                    stored.stream_sequence
                );
            }
            InfrastructureEvent::ComputeResourceDecommissioned { resource_id, .. } => {
                let name = &hostnames[&resource_id];
                holders
                    .get_mut(name)
                    .expect("held")
                    .retain(|(_, r)| *r != resource_id);
            }
            InfrastructureEvent::HostnameReserved {
                infrastructure_id,
                hostname,
                ..
            } => {
                reservations += 1;
                let previous = reserved.insert(hostname.as_str().to_owned(), infrastructure_id);
                assert!(previous.is_none(), "{hostname} reserved twice");
                assert_eq!(
                    stored.aggregate_id,
                    InfrastructureEvent::hostname_reservation(&hostname).id()
                );
            }
            InfrastructureEvent::HostnameReleased {
                infrastructure_id,
                hostname,
                ..
            } => {
                assert_eq!(reserved.remove(hostname.as_str()), Some(infrastructure_id));
            }
            _ => {}
        }
    }
    assert_eq!(
        registrations, reservations,
        "one reservation per registration"
    );
    assert_eq!(registrations, registered);
    for (name, held) in &holders {
        assert_eq!(
            held.first().map(|(i, _)| *i),
            reserved.get(name).copied(),
            "{name}"
        );
    }
    eprintln!(
        "{operations} operations by {TASKS} tasks: {registered} registered, {decommissioned} \
         decommissioned, {taken} refused as taken elsewhere"
    );
}
