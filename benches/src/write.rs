//! Write cases: appends and commands, cim-nats against raw async-nats doing the same JetStream
//! work (same subjects, headers, expected-sequence checks and message ids).

use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;

use async_nats::HeaderMap;
use bytes::Bytes;
use cim_nats::jetstream::{JetStreamEventStore, StoreConfig};
use cim_nats::{
    headers as h, AggregateId, EventId, EventStore, ExpectedVersion, NewEvent, Repository,
};
use futures::StreamExt;

use crate::harness::{latency, median_of_three, Row, Run};
use crate::sample::Ledger;

/// A ledger event of ~500 bytes on `routing`.
pub(crate) fn sample_event(routing: &'static str) -> NewEvent {
    NewEvent {
        event_id: EventId::new(),
        event_type: "Recorded".into(),
        schema_version: 1,
        entity_kind: "book".into(),
        routing_subject: routing.into(),
        payload: crate::payload(),
        timestamp: chrono::Utc::now(),
        correlation_id: None,
        causation_id: None,
        actor: Some("bench".to_owned()),
    }
}

/// Raw async-nats: one event with the store's headers and the expected-sequence check on the
/// aggregate's subjects; returns its stream sequence.
pub(crate) async fn raw_append(
    js: &async_nats::jetstream::Context,
    domain: &str,
    aggregate: &str,
    version: u64,
    last: u64,
    payload: Bytes,
) -> u64 {
    raw_append_with(
        js,
        domain,
        aggregate,
        version,
        last,
        payload,
        HeaderMap::new(),
    )
    .await
}

/// [`raw_append`] with `headers` (e.g. a trace context) besides the store's.
pub(crate) async fn raw_append_with(
    js: &async_nats::jetstream::Context,
    domain: &str,
    aggregate: &str,
    version: u64,
    last: u64,
    payload: Bytes,
    mut headers: HeaderMap,
) -> u64 {
    headers.insert(h::MSG_ID, EventId::new().to_string().as_str());
    headers.insert(h::EVENT_TYPE, "Recorded");
    headers.insert(h::EVENT_VERSION, "1");
    headers.insert(h::AGGREGATE_TYPE, "book");
    headers.insert(h::AGGREGATE_ID, aggregate);
    headers.insert(h::AGGREGATE_VERSION, version.to_string().as_str());
    headers.insert(h::TIMESTAMP, chrono::Utc::now().to_rfc3339().as_str());
    headers.insert(h::CONTENT_TYPE, h::JSON);
    headers.insert(h::ACTOR, "bench");
    headers.insert(h::EXPECTED_LAST_SUBJECT_SEQUENCE, last.to_string().as_str());
    headers.insert(
        h::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
        format!("{domain}.*.*.{aggregate}").as_str(),
    );
    js.publish_with_headers(
        format!("{domain}.book.recorded.{aggregate}"),
        headers,
        payload,
    )
    .await
    .expect("publish")
    .await
    .expect("stored")
    .sequence
}

/// Raw async-nats appending the esrc way: one exact subject per aggregate, an exact-subject
/// expectation and no message id (so no deduplication and no idempotent resend); returns the
/// stream sequence.
pub(crate) async fn raw_append_esrc(
    js: &async_nats::jetstream::Context,
    domain: &str,
    aggregate: &str,
    last: u64,
    payload: Bytes,
) -> u64 {
    let mut headers = HeaderMap::new();
    headers.insert(h::EVENT_TYPE, "Recorded");
    headers.insert(h::EVENT_VERSION, "1");
    headers.insert(h::EXPECTED_LAST_SUBJECT_SEQUENCE, last.to_string().as_str());
    js.publish_with_headers(format!("{domain}.book.esrc.{aggregate}"), headers, payload)
        .await
        .expect("publish")
        .await
        .expect("stored")
        .sequence
}

/// Raw async-nats: `n` events as one atomic batch (the first two published, the last a request
/// that commits); returns the last stream sequence.
async fn raw_batch(
    client: &async_nats::Client,
    domain: &str,
    aggregate: &str,
    base: u64,
    last: u64,
    n: u64,
) -> u64 {
    let batch = uuid::Uuid::new_v4().simple().to_string();
    let subject = format!("{domain}.book.recorded.{aggregate}");
    for i in 1..=n {
        let mut headers = HeaderMap::new();
        headers.insert(h::MSG_ID, EventId::new().to_string().as_str());
        headers.insert(h::EVENT_TYPE, "Recorded");
        headers.insert(h::EVENT_VERSION, "1");
        headers.insert(h::AGGREGATE_TYPE, "book");
        headers.insert(h::AGGREGATE_ID, aggregate);
        headers.insert(h::AGGREGATE_VERSION, (base + i).to_string().as_str());
        headers.insert(h::TIMESTAMP, chrono::Utc::now().to_rfc3339().as_str());
        headers.insert(h::CONTENT_TYPE, h::JSON);
        headers.insert(h::BATCH_ID, batch.as_str());
        headers.insert(h::BATCH_SEQUENCE, i.to_string().as_str());
        if i == 1 {
            headers.insert(h::EXPECTED_LAST_SUBJECT_SEQUENCE, last.to_string().as_str());
            headers.insert(
                h::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
                format!("{domain}.*.*.{aggregate}").as_str(),
            );
        }
        if i == n {
            headers.insert(h::BATCH_COMMIT, "1");
            let reply = client
                .request_with_headers(subject.clone(), headers, crate::payload())
                .await
                .expect("commit");
            let ack: serde_json::Value = serde_json::from_slice(&reply.payload).expect("ack");
            return ack["seq"].as_u64().expect("a stored batch");
        }
        client
            .publish_with_headers(subject.clone(), headers, crate::payload())
            .await
            .expect("publish");
    }
    last
}

pub(crate) async fn store(client: &async_nats::Client, domain: &str) -> JetStreamEventStore {
    JetStreamEventStore::new(client.clone(), StoreConfig::for_domain(domain))
        .await
        .expect("store")
}

/// One event at a time on one aggregate.
pub(crate) async fn append_one(client: &async_nats::Client, reps: usize, rows: &mut Vec<Row>) {
    let store = store(client, "one").await;
    let js = async_nats::jetstream::new(client.clone());
    let id = AggregateId::new("f").expect("id");
    let f_version = Cell::new(0u64);
    let (r_version, r_last) = (Cell::new(0u64), Cell::new(0u64));
    let (f, r) = latency(
        50,
        reps,
        |_| {
            let (store, id, v) = (&store, &id, &f_version);
            async move {
                let result = store
                    .append(
                        id,
                        ExpectedVersion::from_loaded(v.get()),
                        vec![sample_event("one.book.recorded")],
                    )
                    .await
                    .expect("append");
                v.set(result.version);
            }
        },
        |_| {
            let (js, v, last) = (&js, &r_version, &r_last);
            async move {
                let seq =
                    raw_append(js, "one", "r", v.get() + 1, last.get(), crate::payload()).await;
                v.set(v.get() + 1);
                last.set(seq);
            }
        },
    )
    .await;
    let case = "append one event, awaited one at a time";
    rows.push(Row::latency(
        case,
        "p50 µs",
        f.percentile(0.5),
        r.percentile(0.5),
    ));
    rows.push(Row::latency(
        case,
        "p99 µs",
        f.percentile(0.99),
        r.percentile(0.99),
    ));
}

/// Appends across 1,000 aggregates, 256 aggregates in flight, each aggregate's appends in
/// order with its expected version.
pub(crate) async fn append_pipelined(
    client: &async_nats::Client,
    rounds: u64,
    rows: &mut Vec<Row>,
) {
    const AGGREGATES: usize = 1000;
    let store = store(client, "pipe").await;
    let js = async_nats::jetstream::new(client.clone());
    let ids: Vec<AggregateId> = (0..AGGREGATES)
        .map(|a| AggregateId::new(format!("f{a}")).expect("id"))
        .collect();
    let total = AGGREGATES as u64 * rounds;
    let measured = median_of_three(
        |round| {
            let (store, ids) = (&store, &ids);
            async move {
                let t = Instant::now();
                futures::stream::iter(ids)
                    .map(|id| async move {
                        for k in 0..rounds {
                            store
                                .append(
                                    id,
                                    ExpectedVersion::from_loaded(round * rounds + k),
                                    vec![sample_event("pipe.book.recorded")],
                                )
                                .await
                                .expect("append");
                        }
                    })
                    .buffer_unordered(256)
                    .collect::<Vec<()>>()
                    .await;
                Run::since(total, t)
            }
        },
        |round| {
            let js = &js;
            async move {
                let t = Instant::now();
                futures::stream::iter(0..AGGREGATES)
                    .map(|a| async move {
                        let name = format!("r{a}-{round}");
                        let mut last = 0;
                        for k in 0..rounds {
                            last =
                                raw_append(js, "pipe", &name, k + 1, last, crate::payload()).await;
                        }
                    })
                    .buffer_unordered(256)
                    .collect::<Vec<()>>()
                    .await;
                Run::since(total, t)
            }
        },
    )
    .await;
    rows.extend(measured.rows(
        "append pipelined across 1,000 aggregates (256 in flight, expected version + msg id)",
        "events/s (median of 3)",
        "client CPU µs per event (median of 3)",
    ));
}

/// A command of 3 events stored atomically: latency on one aggregate, throughput with 32
/// aggregates in flight.
pub(crate) async fn batch_of_three(client: &async_nats::Client, reps: usize, rows: &mut Vec<Row>) {
    let store = store(client, "three").await;
    let id = AggregateId::new("f").expect("id");
    let f_version = Cell::new(0u64);
    let (r_version, r_last) = (Cell::new(0u64), Cell::new(0u64));
    let (f, r) = latency(
        20,
        reps,
        |_| {
            let (store, id, v) = (&store, &id, &f_version);
            async move {
                let events = (0..3)
                    .map(|_| sample_event("three.book.recorded"))
                    .collect();
                let result = store
                    .append(id, ExpectedVersion::from_loaded(v.get()), events)
                    .await
                    .expect("append");
                v.set(result.version);
            }
        },
        |_| {
            let (v, last) = (&r_version, &r_last);
            async move {
                let seq = raw_batch(client, "three", "r", v.get(), last.get(), 3).await;
                v.set(v.get() + 3);
                last.set(seq);
            }
        },
    )
    .await;
    let case = "a command of 3 events stored atomically, one at a time";
    rows.push(Row::latency(
        case,
        "p50 µs",
        f.percentile(0.5),
        r.percentile(0.5),
    ));
    rows.push(Row::latency(
        case,
        "p99 µs",
        f.percentile(0.99),
        r.percentile(0.99),
    ));
    let mean = |s: &crate::harness::Samples| s.mean().as_secs_f64();
    rows.push(Row::throughput(
        case,
        "commands/s",
        1.0 / mean(&f),
        1.0 / mean(&r),
    ));
}

/// The JSON of the event a ledger command decides, as the raw side of the command cases
/// encodes it.
fn ledger_payload(amount: i64) -> Bytes {
    use cim_nats::Aggregate;
    let events = Ledger::default().handle(amount).expect("a ledger entry");
    Bytes::from(serde_json::to_vec(&events[0]).expect("json"))
}

/// Commands through the repository (load from its cache, decide, append): on one aggregate
/// one at a time, and across 1,000 aggregates with 32 tasks. The raw side does the same
/// appends, keeping each aggregate's last sequence itself, and encodes the same event.
pub(crate) async fn commands(
    client: &async_nats::Client,
    reps: usize,
    total: usize,
    rows: &mut Vec<Row>,
) {
    let store: Arc<dyn EventStore> = Arc::new(store(client, "ledger").await);
    let repo = Arc::new(Repository::<Ledger>::new(Arc::clone(&store)).with_cache(2_000));
    let js = async_nats::jetstream::new(client.clone());
    let id = AggregateId::new("hot").expect("id");
    let (r_version, r_last) = (Cell::new(0u64), Cell::new(0u64));
    let one = |i: usize| {
        let (repo, id) = (&repo, &id);
        async move {
            repo.execute(id, i as i64 + 1).await.expect("command");
        }
    };
    let (f, r) = latency(50, reps, one, |_| {
        let (js, v, last) = (&js, &r_version, &r_last);
        async move {
            let seq = raw_append(
                js,
                "ledger",
                "raw-hot",
                v.get() + 1,
                last.get(),
                ledger_payload(1),
            )
            .await;
            v.set(v.get() + 1);
            last.set(seq);
        }
    })
    .await;
    let case = "command through the repository, ONE aggregate, one at a time";
    rows.push(Row::throughput(
        case,
        "commands/s",
        1.0 / f.mean().as_secs_f64(),
        1.0 / r.mean().as_secs_f64(),
    ));
    let esrc_last = Cell::new(0u64);
    let (f, e) = latency(50, reps, one, |_| {
        let (js, last) = (&js, &esrc_last);
        async move {
            last.set(
                raw_append_esrc(js, "ledger", "esrc-hot", last.get(), ledger_payload(1)).await,
            );
        }
    })
    .await;
    let mut esrc = Row::throughput(
        case,
        "commands/s",
        1.0 / f.mean().as_secs_f64(),
        1.0 / e.mean().as_secs_f64(),
    );
    esrc.raw_label = Some(ESRC_STYLE);
    rows.push(esrc);
    rows.push(Row::latency(
        case,
        "p50 µs",
        f.percentile(0.5),
        r.percentile(0.5),
    ));
    rows.push(Row::latency(
        case,
        "p99 µs",
        f.percentile(0.99),
        r.percentile(0.99),
    ));

    // 1,000 aggregates, 32 tasks, each task owning every 32nd aggregate.
    const TASKS: usize = 32;
    const AGGREGATES: usize = 1000;
    let per_task = total / TASKS;
    let commands = (per_task * TASKS) as u64;
    let mut framework = |_| {
        let repo = Arc::clone(&repo);
        async move {
            let t = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for task in 0..TASKS {
                let repo = Arc::clone(&repo);
                set.spawn(async move {
                    let mine: Vec<usize> = (task..AGGREGATES).step_by(TASKS).collect();
                    for k in 0..per_task {
                        let a = mine[k % mine.len()];
                        let id = AggregateId::new(format!("m{a}")).expect("id");
                        repo.execute(&id, 1).await.expect("command");
                    }
                });
            }
            while set.join_next().await.is_some() {}
            Run::since(commands, t)
        }
    };
    let measured = median_of_three(&mut framework, |round| {
        let js = js.clone();
        async move {
            let t = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for task in 0..TASKS {
                let js = js.clone();
                set.spawn(async move {
                    let mut state = std::collections::HashMap::<usize, (u64, u64)>::new();
                    let mine: Vec<usize> = (task..AGGREGATES).step_by(TASKS).collect();
                    for k in 0..per_task {
                        let a = mine[k % mine.len()];
                        let (v, last) = state.get(&a).copied().unwrap_or((0, 0));
                        let name = format!("rm{a}-{round}");
                        let seq =
                            raw_append(&js, "ledger", &name, v + 1, last, ledger_payload(1)).await;
                        state.insert(a, (v + 1, seq));
                    }
                });
            }
            while set.join_next().await.is_some() {}
            Run::since(commands, t)
        }
    })
    .await;
    let case = "commands through the repository, 1,000 aggregates, 32 tasks";
    rows.extend(measured.rows(
        case,
        "commands/s (median of 3)",
        "client CPU µs per command (median of 3)",
    ));

    // The same raw writes the esrc way, interleaved with the framework again.
    let esrc = median_of_three(&mut framework, |round| {
        let js = js.clone();
        async move {
            let t = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for task in 0..TASKS {
                let js = js.clone();
                set.spawn(async move {
                    let mut last = std::collections::HashMap::<usize, u64>::new();
                    let mine: Vec<usize> = (task..AGGREGATES).step_by(TASKS).collect();
                    for k in 0..per_task {
                        let a = mine[k % mine.len()];
                        let name = format!("em{a}-{round}");
                        let before = last.get(&a).copied().unwrap_or(0);
                        let seq =
                            raw_append_esrc(&js, "ledger", &name, before, ledger_payload(1)).await;
                        last.insert(a, seq);
                    }
                });
            }
            while set.join_next().await.is_some() {}
            Run::since(commands, t)
        }
    })
    .await;
    let [mut rate, mut cpu] = esrc.rows(
        case,
        "commands/s (median of 3)",
        "client CPU µs per command (median of 3)",
    );
    rate.raw_label = Some(ESRC_STYLE);
    cpu.raw_label = Some(ESRC_STYLE);
    rows.extend([rate, cpu]);
}

/// What the esrc-style baseline rows compare with.
const ESRC_STYLE: &str = "raw async-nats, esrc-style: exact subject, no msg id";
