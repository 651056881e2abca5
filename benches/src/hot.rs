//! The hot-aggregate cases: 32 tasks commanding ONE aggregate (the infrastructure domain keeps
//! one per data centre) through the repository's lanes, against the load-decide-save-retry way
//! and against raw async-nats making the same writes; and one aggregate growing to 100,000
//! machines.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;
use cim_domain_infrastructure::{
    ComputeResourceSpec, ComputeType, Hostname, InfrastructureAggregate, InfrastructureCommand,
    InfrastructureId, ResourceCapabilities, ResourceId, SystemArchitecture,
};
use cim_infrastructure_nats::event_store::{EventStoreConfig, JetStreamEventStore};
use cim_nats::{
    headers as h, Aggregate, AggregateId, EventId, MessageIdentity, Repository, StoreError,
    StoreErrorKind,
};

use crate::harness::{Row, Samples};

const TASKS: usize = 32;

fn register(infra: InfrastructureId, name: &str) -> InfrastructureCommand {
    InfrastructureCommand::RegisterComputeResource {
        infrastructure_id: infra,
        spec: ComputeResourceSpec {
            id: ResourceId::new(),
            resource_type: ComputeType::VirtualMachine,
            // Hostnames are unique across infrastructures: each infrastructure names its own.
            hostname: Hostname::new(format!("{name}.{infra}.example.com")).expect("host name"),
            system: SystemArchitecture::new("x86_64-linux").expect("system"),
            capabilities: ResourceCapabilities::default(),
        },
        identity: MessageIdentity::new_from_user("discovery"),
    }
}

/// The JSON of a registration event and of its hostname's reservation as the domain decides
/// them, for the raw side.
fn registration_payloads() -> (Bytes, Bytes) {
    let infra = InfrastructureId::new();
    let events = InfrastructureAggregate::new(infra)
        .handle(register(infra, "raw"))
        .expect("a registration");
    (
        Bytes::from(serde_json::to_vec(&events[0]).expect("json")),
        Bytes::from(serde_json::to_vec(&events[1]).expect("json")),
    )
}

fn repository(store: &Arc<JetStreamEventStore>) -> Repository<InfrastructureAggregate> {
    Repository::<InfrastructureAggregate>::new(Arc::clone(store)).with_cache(100)
}

/// The headers the store puts on an event: a registration, or a hostname's reservation
/// (`kind`), with the expectation on its aggregate's (or reservation's) scope where given.
fn headers(
    kind: (&str, &str),
    aggregate: &str,
    version: u64,
    expect_after: Option<u64>,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(h::MSG_ID, EventId::new().to_string().as_str());
    headers.insert(h::EVENT_TYPE, kind.0);
    headers.insert(h::EVENT_VERSION, "1");
    headers.insert(h::AGGREGATE_TYPE, kind.1);
    headers.insert(h::AGGREGATE_ID, aggregate);
    headers.insert(h::AGGREGATE_VERSION, version.to_string().as_str());
    headers.insert(h::TIMESTAMP, chrono::Utc::now().to_rfc3339().as_str());
    headers.insert(h::CONTENT_TYPE, h::JSON);
    headers.insert(h::ACTOR, "discovery");
    if let Some(last) = expect_after {
        headers.insert(h::EXPECTED_LAST_SUBJECT_SEQUENCE, last.to_string().as_str());
        headers.insert(
            h::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
            format!("infrastructure.*.*.{aggregate}").as_str(),
        );
    }
    headers
}

/// Raw async-nats doing what a registration is: for each machine, a look at its hostname's
/// reservation (one direct get: free), then atomic batches of `group` registrations on one
/// aggregate, each with its hostname's reservation event, the aggregate's expectation on its
/// first event and each reservation's on its own; the latency of each append.
async fn raw_writes(client: &async_nats::Client, n: usize, group: usize) -> (Duration, Samples) {
    const REGISTERED: (&str, &str) = ("ComputeResourceRegistered", "compute");
    const RESERVED: (&str, &str) = ("HostnameReserved", "hostname");
    let js = async_nats::jetstream::new(client.clone());
    let stream = js
        .get_stream("INFRASTRUCTURE_EVENTS")
        .await
        .expect("stream");
    let aggregate = InfrastructureId::new().to_string();
    let subject = format!("infrastructure.compute.registered.{aggregate}");
    let (payload, reserved) = registration_payloads();
    let (mut version, mut last) = (0u64, 0u64);
    let mut latencies = Samples::default();
    let started = Instant::now();
    let mut left = n;
    let mut machine = 0usize;
    while left > 0 {
        let size = group.min(left) as u64;
        let t = Instant::now();
        let mut reservations = Vec::with_capacity(size as usize);
        for _ in 0..size {
            machine += 1;
            let id = cim_nats::Reservation::new(
                "hostname",
                format!("raw-{machine}.{aggregate}.example.com"),
            )
            .id();
            let free = stream
                .direct_get_last_for_subject(format!("infrastructure.*.*.{id}"))
                .await
                .is_err();
            assert!(free, "a new hostname is free");
            reservations.push(id.as_str().to_owned());
        }
        let batch = uuid::Uuid::new_v4().simple().to_string();
        let count = 2 * size;
        let mut sent = 0;
        for i in 1..=size {
            let messages = [
                (
                    subject.clone(),
                    headers(
                        REGISTERED,
                        &aggregate,
                        version + i,
                        (i == 1).then_some(last),
                    ),
                    payload.clone(),
                ),
                (
                    format!(
                        "infrastructure.hostname.reserved.{}",
                        reservations[i as usize - 1]
                    ),
                    headers(RESERVED, &reservations[i as usize - 1], 1, Some(0)),
                    reserved.clone(),
                ),
            ];
            for (subject, mut headers, payload) in messages {
                sent += 1;
                headers.insert(h::BATCH_ID, batch.as_str());
                headers.insert(h::BATCH_SEQUENCE, sent.to_string().as_str());
                if sent == count {
                    headers.insert(h::BATCH_COMMIT, "1");
                    let reply = client
                        .request_with_headers(subject, headers, payload)
                        .await
                        .expect("commit");
                    let ack: serde_json::Value =
                        serde_json::from_slice(&reply.payload).expect("ack");
                    assert!(ack["seq"].as_u64().is_some(), "a stored batch: {ack}");
                    // The aggregate's last event: its last registration, one before the end.
                    last = ack["seq"].as_u64().unwrap_or(0) - 1;
                } else {
                    client
                        .publish_with_headers(subject, headers, payload)
                        .await
                        .expect("publish");
                }
            }
        }
        latencies.push(t.elapsed());
        version += size;
        left -= size as usize;
    }
    (started.elapsed(), latencies)
}

/// 32 tasks registering distinct machines on ONE infrastructure aggregate.
pub(crate) async fn one_aggregate_32_tasks(
    client: &async_nats::Client,
    per_task: usize,
    window: Duration,
    rows: &mut Vec<Row>,
) {
    let store = Arc::new(
        JetStreamEventStore::new(client.clone(), EventStoreConfig::default())
            .await
            .expect("store"),
    );
    let total = per_task * TASKS;

    // The repository's lanes (warmed up on another aggregate).
    let repo = Arc::new(repository(&store));
    lanes_run(&repo, 8).await;
    let before = repo.commit_stats();
    let (elapsed, latencies) = lanes_run(&repo, per_task).await;
    let after = repo.commit_stats();
    let lanes_rate = total as f64 / elapsed.as_secs_f64();
    let group = ((after.commands - before.commands) as f64
        / (after.appends - before.appends).max(1) as f64)
        .round()
        .max(1.0) as usize;

    // Raw async-nats making the same writes the lanes chose: batches of the mean group size,
    // each registration with its hostname's reservation.
    let (raw_elapsed, raw_latencies) = raw_writes(client, total, group).await;
    let raw_rate = total as f64 / raw_elapsed.as_secs_f64();

    // Load, decide, save and retry on a conflict (the way before lanes), for `window`.
    let old_rate = load_save_run(&store, window).await;

    let case = format!(
        "32 tasks on ONE aggregate registering distinct machines, each hostname reserved \
         (raw: same reads and writes, atomic batches of {group} registrations)"
    );
    rows.push(Row::throughput(&case, "commands/s", lanes_rate, raw_rate));
    rows.push(Row::latency(
        &case,
        "p50 µs (raw: per append)",
        latencies.percentile(0.5),
        raw_latencies.percentile(0.5),
    ));
    rows.push(Row::latency(
        &case,
        "p99 µs (raw: per append)",
        latencies.percentile(0.99),
        raw_latencies.percentile(0.99),
    ));
    let mut old = Row::throughput(
        "32 tasks on ONE aggregate: lanes vs load + decide + save, retried on conflict",
        "commands/s",
        lanes_rate,
        old_rate,
    );
    old.raw_label = Some("load/save/retry");
    rows.push(old);
}

/// One round of the lanes: 32 tasks × `per_task` commands on a new aggregate; the time and each
/// command's latency.
async fn lanes_run(
    repo: &Arc<Repository<InfrastructureAggregate>>,
    per_task: usize,
) -> (Duration, Samples) {
    let infra = InfrastructureId::new();
    let id: AggregateId = infra.into();
    let latencies = Arc::new(Mutex::new(Samples::default()));
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let (repo, id, latencies) = (Arc::clone(repo), id.clone(), Arc::clone(&latencies));
        set.spawn(async move {
            for k in 0..per_task {
                let command = register(infra, &format!("m-{task}-{k}"));
                let t = Instant::now();
                repo.execute(&id, command).await.expect("registered");
                latencies.lock().expect("latencies").push(t.elapsed());
            }
        });
    }
    while set.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let latencies = std::mem::take(&mut *latencies.lock().expect("latencies"));
    (elapsed, latencies)
}

/// 32 tasks, each loading the aggregate through the cache, deciding and saving, and starting
/// again on a conflict, for `window`: commands stored per second.
async fn load_save_run(store: &Arc<JetStreamEventStore>, window: Duration) -> f64 {
    let repo = Arc::new(repository(store));
    let infra = InfrastructureId::new();
    let id: AggregateId = infra.into();
    let deadline = Instant::now() + window;
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let (repo, id) = (Arc::clone(&repo), id.clone());
        set.spawn(async move {
            let mut done = 0u64;
            let mut k = 0;
            while Instant::now() < deadline {
                let command = register(infra, &format!("o-{task}-{k}"));
                loop {
                    let mut loaded = repo.load_cached(&id).await.expect("load");
                    let mut events = loaded.state.handle(command.clone()).expect("decided");
                    match repo.save(&mut loaded, &mut events, None).await {
                        Ok(_) => break,
                        Err(e) if conflict(&e) && Instant::now() < deadline => {}
                        Err(e) if conflict(&e) => return done,
                        Err(e) => panic!("{e}"),
                    }
                }
                done += 1;
                k += 1;
            }
            done
        });
    }
    let mut done = 0;
    while let Some(n) = set.join_next().await {
        done += n.expect("task");
    }
    done as f64 / started.elapsed().as_secs_f64()
}

fn conflict(e: &StoreError) -> bool {
    matches!(e.kind(), StoreErrorKind::WrongExpectedVersion { .. })
}

/// One task registering machines on ONE aggregate until it holds `machines`: the rate around
/// 1,000 machines and at the end.
pub(crate) async fn growing_aggregate(
    client: &async_nats::Client,
    machines: usize,
    rows: &mut Vec<Row>,
) {
    const WINDOW: usize = 1_000;
    let store = Arc::new(
        JetStreamEventStore::new(client.clone(), EventStoreConfig::default())
            .await
            .expect("store"),
    );
    let repo = repository(&store);
    let infra = InfrastructureId::new();
    let id: AggregateId = infra.into();
    let mut early = 0.0;
    let mut window_started = Instant::now();
    for k in 0..machines {
        if k == WINDOW / 2 || k == machines - WINDOW {
            window_started = Instant::now();
        }
        repo.execute(&id, register(infra, &format!("g-{k}")))
            .await
            .expect("registered");
        if k + 1 == WINDOW / 2 + WINDOW {
            early = WINDOW as f64 / window_started.elapsed().as_secs_f64();
        }
    }
    let late = WINDOW as f64 / window_started.elapsed().as_secs_f64();
    let mut row = Row::throughput(
        &format!("one task registering machines on ONE aggregate up to {machines}"),
        "commands/s: at ~1,000 machines / at the last 1,000",
        early,
        late,
    );
    row.raw_label = Some("at the end");
    rows.push(row);
}
