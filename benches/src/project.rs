//! Read-side cases: rebuilding the topology projection, a durable subscriber with acks, and the
//! in-memory store for reference.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use cim_domain_infrastructure::{
    Cidr, ComputeResourceSpec, ComputeType, Hostname, InfrastructureAggregate, InfrastructureEvent,
    InfrastructureId, NetworkSpec, SystemArchitecture,
};
use cim_infrastructure_nats::event_store::{EventStoreConfig, JetStreamEventStore};
use cim_infrastructure_nats::projections::{ProjectionManager, Topology};
use cim_nats::memory::InMemoryEventStore;
use cim_nats::{
    headers as h, AggregateId, EventStore, ExpectedVersion, MessageIdentity, NatsEvent, NewEvent,
    StoredEvent,
};
use futures::StreamExt;

use crate::harness::{latency, median_of_three, Row, Run};

/// Fills INFRASTRUCTURE_EVENTS with `infrastructures` × 100 real domain events (a network and
/// 99 machines each), made by the aggregate and published raw, pipelined, in the wire format.
pub(crate) async fn fill_infrastructure(
    client: &async_nats::Client,
    infrastructures: usize,
) -> u64 {
    let js = async_nats::jetstream::new(client.clone());
    let mut acks = futures::stream::FuturesUnordered::new();
    let mut total = 0;
    for _ in 0..infrastructures {
        let infra = InfrastructureId::new();
        let id: AggregateId = infra.into();
        let mut aggregate = InfrastructureAggregate::new(infra);
        let mut events = aggregate
            .handle_define_network(
                NetworkSpec::new("lan", Cidr::new("10.0.0.0/16").expect("cidr")).expect("net"),
                &MessageIdentity::new_from_user("bench"),
            )
            .expect("network");
        for m in 0..99 {
            let spec = ComputeResourceSpec::new(
                ComputeType::VirtualMachine,
                Hostname::new(format!("vm-{m}")).expect("hostname"),
                SystemArchitecture::new("x86_64-linux").expect("system"),
            );
            events.extend(
                aggregate
                    .handle_register_compute_resource(
                        spec,
                        &MessageIdentity::new_from_user("bench"),
                    )
                    .expect("register"),
            );
        }
        for (i, event) in events.iter().enumerate() {
            let new = NewEvent::from_event(event).expect("encode");
            let mut headers = HeaderMap::new();
            headers.insert(h::MSG_ID, new.event_id.to_string().as_str());
            headers.insert(h::EVENT_TYPE, &*new.event_type);
            headers.insert(h::EVENT_VERSION, "1");
            headers.insert(h::AGGREGATE_TYPE, &*new.entity_kind);
            headers.insert(h::AGGREGATE_ID, id.as_str());
            headers.insert(h::AGGREGATE_VERSION, (i + 1).to_string().as_str());
            headers.insert(h::CONTENT_TYPE, h::JSON);
            let ack = js
                .publish_with_headers(event.subject(&id).into_string(), headers, new.payload)
                .await
                .expect("publish");
            acks.push(std::future::IntoFuture::into_future(ack));
            if acks.len() >= 2048 {
                acks.next().await.expect("ack").expect("stored");
            }
            total += 1;
        }
    }
    while let Some(ack) = acks.next().await {
        ack.expect("stored");
    }
    total
}

/// Raw async-nats: the same read model from a no-ack pull consumer, decoding each payload with
/// serde_json and applying it to the same `Topology`.
async fn raw_rebuild(client: &async_nats::Client) -> Topology {
    use async_nats::jetstream::consumer;
    let js = async_nats::jetstream::new(client.clone());
    let stream = js
        .get_stream_no_info("INFRASTRUCTURE_EVENTS")
        .await
        .expect("stream");
    let name = format!("raw-topology-{}", uuid::Uuid::new_v4().simple());
    let c = stream
        .create_consumer(consumer::pull::Config {
            name: Some(name.clone()),
            ack_policy: consumer::AckPolicy::None,
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = c
        .stream()
        .max_messages_per_batch(5000)
        .messages()
        .await
        .expect("messages");
    let mut topology = Topology::default();
    while let Some(m) = messages.next().await {
        let m = m.expect("message");
        let event: InfrastructureEvent = serde_json::from_slice(&m.payload).expect("event");
        topology.apply(&event);
        if m.info().expect("info").pending == 0 {
            break;
        }
    }
    js.delete_consumer_from_stream(&name, "INFRASTRUCTURE_EVENTS")
        .await
        .expect("delete");
    topology
}

pub(crate) async fn topology_rebuild(
    client: &async_nats::Client,
    infrastructures: usize,
    rows: &mut Vec<Row>,
) {
    let store = JetStreamEventStore::new(
        client.clone(),
        EventStoreConfig {
            max_age: Duration::ZERO,
            max_messages: 0,
            ..EventStoreConfig::default()
        },
    )
    .await
    .expect("store");
    let started = Instant::now();
    let total = fill_infrastructure(client, infrastructures).await;
    eprintln!(
        "filled {total} infrastructure events in {:?}",
        started.elapsed()
    );
    let measured = median_of_three(
        |_| async {
            let t = Instant::now();
            let manager = ProjectionManager::new();
            manager.rebuild_from(&store).await.expect("rebuild");
            let n = manager
                .read_topology(|t| t.active_compute_resources().len())
                .await;
            assert_eq!(n, infrastructures * 99);
            Run::since(total, t)
        },
        |_| async {
            let t = Instant::now();
            let topology = raw_rebuild(client).await;
            assert_eq!(
                topology.active_compute_resources().len(),
                infrastructures * 99
            );
            Run::since(total, t)
        },
    )
    .await;
    rows.extend(measured.rows(
        &format!("rebuild the topology projection from {total} events"),
        "events/s (median of 3)",
        "client CPU µs per event (median of 3)",
    ));
}

/// A durable subscriber acknowledging every event (confirmed acks), 256 in flight, against a
/// raw durable pull consumer doing the same.
pub(crate) async fn subscriber(client: &async_nats::Client, events: u64, rows: &mut Vec<Row>) {
    use async_nats::jetstream::consumer;
    use cim_infrastructure_nats::subscriber::{
        DeliverPolicy, EventSubscriberBuilder, FnEventHandler,
    };
    JetStreamEventStore::new(
        client.clone(),
        cim_nats::jetstream::StoreConfig::for_domain("subs"),
    )
    .await
    .expect("store");
    let filled = crate::fill(client, "subs", events / crate::PER_AGGREGATE).await;
    eprintln!("filled {events} events for the subscriber case in {filled:?}");
    let js = async_nats::jetstream::new(client.clone());
    let measured = median_of_three(
        |round| async move {
            let seen = Arc::new(AtomicU64::new(0));
            let handler = {
                let seen = Arc::clone(&seen);
                Arc::new(FnEventHandler::new(move |_: StoredEvent| {
                    seen.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }))
            };
            let t = Instant::now();
            let handle = EventSubscriberBuilder::new()
                .client(client.clone())
                .subject("subs.>")
                .durable(format!("bench-{round}"))
                .deliver_policy(DeliverPolicy::All)
                .max_in_flight(256)
                .handler(handler)
                .build()
                .expect("subscriber")
                .subscribe()
                .await
                .expect("subscribe");
            while seen.load(Ordering::Relaxed) < events {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let run = Run::since(events, t);
            handle.shutdown().await.expect("shutdown");
            run
        },
        |round| {
            let js = js.clone();
            async move {
                let t = Instant::now();
                let stream = js.get_stream_no_info("SUBS_EVENTS").await.expect("stream");
                let c = stream
                    .create_consumer(consumer::pull::Config {
                        durable_name: Some(format!("raw-{round}")),
                        ack_policy: consumer::AckPolicy::Explicit,
                        max_ack_pending: 256,
                        ..Default::default()
                    })
                    .await
                    .expect("consumer");
                let mut messages = c.messages().await.expect("messages");
                let mut acks = futures::stream::FuturesUnordered::new();
                let mut done = 0u64;
                while done < events {
                    tokio::select! {
                        Some(m) = messages.next(), if acks.len() < 256 => {
                            let m = m.expect("message");
                            acks.push(async move { m.double_ack().await.expect("ack") });
                        }
                        Some(()) = acks.next() => done += 1,
                    }
                }
                Run::since(events, t)
            }
        },
    )
    .await;
    rows.extend(measured.rows(
        &format!("durable subscriber, confirmed acks, 256 in flight, {events} events"),
        "events/s (median of 3)",
        "client CPU µs per event (median of 3)",
    ));
}

/// The in-memory store, for reference: an append one at a time and a load of 20 events.
pub(crate) async fn in_memory(reps: usize, rows: &mut Vec<Row>) {
    let store = InMemoryEventStore::new();
    let id = AggregateId::new("m").expect("id");
    let loaded = AggregateId::new("l").expect("id");
    let events: Vec<NewEvent> = (0..20)
        .map(|_| crate::write::sample_event("mem.book.recorded"))
        .collect();
    store
        .append(&loaded, ExpectedVersion::NoStream, events)
        .await
        .expect("fill");
    let version = std::cell::Cell::new(0u64);
    let (append, load) = latency(
        50,
        reps,
        |_| {
            let (store, id, version) = (&store, &id, &version);
            async move {
                let r = store
                    .append(
                        id,
                        ExpectedVersion::from_loaded(version.get()),
                        vec![crate::write::sample_event("mem.book.recorded")],
                    )
                    .await
                    .expect("append");
                version.set(r.version);
            }
        },
        |_| {
            let (store, loaded) = (&store, &loaded);
            async move {
                assert_eq!(
                    store.read_aggregate(loaded, 0).await.expect("load").len(),
                    20
                );
            }
        },
    )
    .await;
    let mut row = Row::latency(
        "in-memory store: append one event / load a 20-event aggregate",
        "p50 µs",
        append.percentile(0.5),
        load.percentile(0.5),
    );
    row.raw_label = Some("load");
    rows.push(row);
}
