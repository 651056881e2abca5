//! Read models kept per key in KV: a rebuild from the large stream against raw async-nats
//! reading the same events and writing the same keys as atomic batches, the client's memory
//! meanwhile, and what one commit costs in a model of 1,000 and of 100,000 keys.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_trait::async_trait;
use bytes::Bytes;
use cim_nats::jetstream::{
    JetStreamEventStore, KeyedProjection, ReadModelOptions, ReadModelRunner, Rows, StoreConfig,
};
use cim_nats::{
    headers as h, AggregateId, Envelope, EventStore, ExpectedVersion, NatsEvent, NewEvent,
    ProjectionError, StreamSequence,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::harness::{self, median_of_three, Row, Run, Samples};
use crate::sample::ItemEvent;

/// Events per item in the large stream, counted per item.
struct ItemCounts;

#[async_trait]
impl KeyedProjection for ItemCounts {
    type Event = ItemEvent;
    type Row = u64;
    const NAME: &'static str = "item_counts";

    async fn apply(
        &self,
        event: &Envelope<ItemEvent>,
        rows: &mut Rows<'_, u64>,
    ) -> Result<(), ProjectionError> {
        let id = event.aggregate_id().as_str();
        let n = rows.get("item", id).await?.unwrap_or(0);
        rows.put("item", id, n + 1)
    }
}

/// Opens the bucket `bucket` for the raw side, with atomic batches allowed.
async fn raw_bucket(js: &async_nats::jetstream::Context, bucket: &str) {
    js.create_key_value(async_nats::jetstream::kv::Config {
        bucket: bucket.to_owned(),
        history: 1,
        ..Default::default()
    })
    .await
    .expect("bucket");
    let mut stream = js.get_stream(format!("KV_{bucket}")).await.expect("stream");
    let mut config = stream.info().await.expect("info").config.clone();
    config.allow_atomic_publish = true;
    js.update_stream(&config).await.expect("allow atomic");
}

/// Raw async-nats: reads the whole stream (an ordered pull consumer), decodes each event,
/// counts per item, and writes the changed counts with a checkpoint as atomic batches of at
/// most 999 keys (the checkpoint first, fenced), one batch in flight: what the runner does.
async fn raw_rebuild(client: &async_nats::Client, stream: &str, bucket: &str) -> u64 {
    use async_nats::jetstream::consumer;
    let js = async_nats::jetstream::new(client.clone());
    raw_bucket(&js, bucket).await;
    let s = js.get_stream_no_info(stream).await.expect("stream");
    let c = s
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            memory_storage: true,
            inactive_threshold: Duration::from_secs(30),
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
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut pending: HashMap<String, u64> = HashMap::new();
    let (mut revision, mut since_commit, mut count) = (0u64, 0u64, 0u64);
    loop {
        let Some(m) = messages.next().await else {
            break;
        };
        let m = m.expect("message");
        let info = m.info().expect("info");
        let (sequence, left) = (info.stream_sequence, info.pending);
        let _: ItemEvent = serde_json::from_slice(&m.payload).expect("event");
        let id = m.subject.as_str().rsplit('.').next().unwrap_or_default();
        let n = counts.entry(id.to_owned()).or_default();
        *n += 1;
        pending.insert(id.to_owned(), *n);
        count += 1;
        since_commit += 1;
        if pending.len() >= 999 || since_commit >= 1000 || left == 0 {
            revision = raw_commit(client, bucket, &pending, sequence, revision).await;
            pending.clear();
            since_commit = 0;
        }
        if left == 0 {
            break;
        }
    }
    count
}

async fn raw_commit(
    client: &async_nats::Client,
    bucket: &str,
    rows: &HashMap<String, u64>,
    sequence: u64,
    revision: u64,
) -> u64 {
    let batch = uuid::Uuid::new_v4().simple().to_string();
    let total = rows.len() + 1;
    let checkpoint = Bytes::from(format!("{{\"sequence\":{sequence}}}"));
    let messages = rows
        .iter()
        .map(|(id, n)| (format!("item.r.{id}"), Bytes::from(n.to_string())))
        .chain(std::iter::once((
            "_cim.checkpoint.0".to_owned(),
            checkpoint,
        )));
    for (i, (key, value)) in messages.enumerate() {
        let mut headers = HeaderMap::new();
        if i + 1 == total {
            headers.insert(
                h::EXPECTED_LAST_SUBJECT_SEQUENCE,
                revision.to_string().as_str(),
            );
        }
        headers.insert(h::BATCH_ID, batch.as_str());
        headers.insert(h::BATCH_SEQUENCE, (i + 1).to_string().as_str());
        let subject = format!("$KV.{bucket}.{key}");
        if i + 1 == total {
            headers.insert(h::BATCH_COMMIT, "1");
            let reply = client
                .request_with_headers(subject, headers, value)
                .await
                .expect("commit");
            let ack: serde_json::Value = serde_json::from_slice(&reply.payload).expect("ack");
            let seq = ack["seq"].as_u64().expect("a stored batch");
            return seq + 1 - total as u64;
        }
        client
            .publish_with_headers(subject, headers, value)
            .await
            .expect("publish");
    }
    revision
}

/// A rebuild of the large stream into a KV read model, against raw async-nats doing the same;
/// then the client's memory during one more rebuild.
pub(crate) async fn rebuild(client: &async_nats::Client, rows: &mut Vec<Row>) {
    let config = StoreConfig::for_domain("large");
    let stream = config.stream_name.clone();
    let store = JetStreamEventStore::new(client.clone(), config)
        .await
        .expect("store");
    let total = store.last_sequence().await.expect("state");
    let run_framework = |round: u64| {
        let store = store.clone();
        async move {
            let options = ReadModelOptions {
                prefix: format!("RMBENCH{round}"),
                pointer_bucket: format!("RMBENCH{round}_POINTERS"),
                ..ReadModelOptions::default()
            };
            let t = Instant::now();
            let handle = ReadModelRunner::start(&store, ItemCounts, options)
                .await
                .expect("start");
            handle
                .wait_for(total, Duration::from_secs(600))
                .await
                .expect("rebuilt");
            let run = Run::since(total.0, t);
            handle.shutdown().await.expect("stop");
            run
        }
    };
    let measured = median_of_three(run_framework, |round| {
        let stream = stream.clone();
        async move {
            let t = Instant::now();
            let n = raw_rebuild(client, &stream, &format!("RAWBENCH{round}")).await;
            assert_eq!(n, total.0);
            Run::since(n, t)
        }
    })
    .await;
    rows.extend(measured.rows(
        &format!(
            "KV read model rebuilt from {} events (a count per item, commits of up to 999 rows)",
            total.0
        ),
        "events/s (median of 3)",
        "client CPU µs per event (median of 3)",
    ));
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = harness::rss_kib("VmRSS:");
    run_framework(9).await;
    let peak = harness::rss_kib("VmHWM:");
    rows.push(Row::info(
        &format!("KV read model rebuild of {} events: client RSS", total.0),
        "MiB before / peak",
        before as f64 / 1024.0,
        peak as f64 / 1024.0,
    ));
}

/// The events of the checkpoint case: one per key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, NatsEvent)]
#[nats_event(domain = "ckpt", aggregate = "item")]
enum KeyEvent {
    #[nats_event(operation = "created", event_type = "created")]
    Created { pad: String },
}

/// One row per aggregate.
struct KeyRows;

#[async_trait]
impl KeyedProjection for KeyRows {
    type Event = KeyEvent;
    type Row = u64;
    const NAME: &'static str = "key_rows";

    async fn apply(
        &self,
        event: &Envelope<KeyEvent>,
        rows: &mut Rows<'_, u64>,
    ) -> Result<(), ProjectionError> {
        rows.put("item", event.aggregate_id().as_str(), event.sequence().0)
    }
}

/// Publishes events `from..to` of the checkpoint case, pipelined.
async fn fill_keys(client: &async_nats::Client, from: u64, to: u64) {
    let js = async_nats::jetstream::new(client.clone());
    let payload = Bytes::from(
        serde_json::to_vec(&KeyEvent::Created {
            pad: "x".repeat(100),
        })
        .expect("json"),
    );
    let mut acks = futures::stream::FuturesUnordered::new();
    for k in from..to {
        let mut headers = HeaderMap::new();
        headers.insert(h::MSG_ID, uuid::Uuid::now_v7().to_string().as_str());
        headers.insert(h::EVENT_TYPE, "created");
        headers.insert(h::AGGREGATE_VERSION, "1");
        headers.insert(h::AGGREGATE_ID, format!("k{k}").as_str());
        headers.insert(h::CONTENT_TYPE, h::JSON);
        let ack = js
            .publish_with_headers(format!("ckpt.item.created.k{k}"), headers, payload.clone())
            .await
            .expect("publish");
        acks.push(std::future::IntoFuture::into_future(ack));
        if acks.len() >= 2048 {
            acks.next().await.expect("ack").expect("stored");
        }
    }
    while let Some(ack) = acks.next().await {
        ack.expect("stored");
    }
}

/// The time from an append to its row committed (the runner commits at once for a waiter), in a
/// model of 1,000 keys and of `large` keys.
pub(crate) async fn checkpoint_cost(
    client: &async_nats::Client,
    large: u64,
    reps: usize,
    rows: &mut Vec<Row>,
) {
    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("ckpt"))
        .await
        .expect("store");
    fill_keys(client, 0, 1_000).await;
    let handle = ReadModelRunner::start(&store, KeyRows, ReadModelOptions::default())
        .await
        .expect("start");
    let last = store.last_sequence().await.expect("last");
    handle
        .wait_for(last, Duration::from_secs(60))
        .await
        .expect("built");
    let small = commit_latencies(&store, &handle, "s", reps).await;
    fill_keys(client, 1_000, large).await;
    let last = store.last_sequence().await.expect("last");
    handle
        .wait_for(last, Duration::from_secs(600))
        .await
        .expect("built");
    let big = commit_latencies(&store, &handle, "b", reps).await;
    handle.shutdown().await.expect("stop");
    let mut row = Row::lower(
        &format!("KV read model: append one event and wait for its row committed, model of 1,000 vs {large} keys"),
        "p50 µs",
        small.percentile(0.5).as_secs_f64() * 1e6,
        big.percentile(0.5).as_secs_f64() * 1e6,
    );
    row.raw_label = Some("the larger model");
    rows.push(row);
}

async fn commit_latencies(
    store: &JetStreamEventStore,
    handle: &cim_nats::jetstream::ReadModelHandle<KeyRows>,
    tag: &str,
    reps: usize,
) -> Samples {
    let mut samples = Samples::default();
    let payload = Bytes::from(
        serde_json::to_vec(&KeyEvent::Created {
            pad: "x".repeat(100),
        })
        .expect("json"),
    );
    for i in 0..reps + 20 {
        let id = AggregateId::new(format!("{tag}{i}")).expect("id");
        let event = NewEvent {
            payload: payload.clone(),
            ..NewEvent::from_event(&KeyEvent::Created { pad: String::new() }).expect("event")
        };
        let t = Instant::now();
        let appended = store
            .append(&id, ExpectedVersion::NoStream, vec![event])
            .await
            .expect("append");
        handle
            .wait_for(
                appended.last_sequence().unwrap_or(StreamSequence(0)),
                Duration::from_secs(10),
            )
            .await
            .expect("committed");
        if i >= 20 {
            samples.push(t.elapsed());
        }
    }
    samples
}

/// The infrastructure topology as a KV read model with 100,000 machines (over 1,011
/// infrastructures): built live, the manager restarted (the time until it serves the topology
/// again, from the checkpoint and the rows, without replaying), and the rows compared with a
/// plain KV client's reads.
pub(crate) async fn topology_live(infrastructures: usize, rows: &mut Vec<Row>) {
    use cim_infrastructure_nats::event_store::EventStoreConfig;
    // A server of its own: the infrastructure stream starts empty.
    let server = cim_nats::testing::NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let client = &server.connect().await.expect("connect");
    use cim_infrastructure_nats::projections::{ProjectionManager, ProjectionOptions};
    let store = cim_infrastructure_nats::event_store::JetStreamEventStore::new(
        client.clone(),
        EventStoreConfig {
            max_age: Duration::ZERO,
            max_messages: 0,
            ..EventStoreConfig::default()
        },
    )
    .await
    .expect("store");
    let total = crate::project::fill_infrastructure(client, infrastructures).await;
    let last = store.last_sequence().await.expect("last");
    let machines = infrastructures * 99;

    let t = Instant::now();
    let manager = ProjectionManager::start(&store, ProjectionOptions::default())
        .await
        .expect("start");
    manager
        .wait_for(last, Duration::from_secs(600))
        .await
        .expect("built");
    let built = t.elapsed();
    let expected = manager.get_topology().await;
    assert_eq!(expected.active_compute_resources().len(), machines);
    manager.shutdown().await.expect("stop");

    let t = Instant::now();
    let resumed = ProjectionManager::start(&store, ProjectionOptions::default())
        .await
        .expect("restart");
    let serving = t.elapsed();
    let lag = resumed.handle().expect("live").lag();
    assert_eq!(lag.committed, last, "resumed from its checkpoint");
    assert_eq!(
        resumed.last_sequence().await,
        last,
        "served without replaying"
    );
    assert_eq!(resumed.get_topology().await, expected);

    // A plain KV client: the same rows.
    let js = async_nats::jetstream::new(client.clone());
    let bucket = js.get_key_value("RM_topology_V1").await.expect("bucket");
    let mut keys = bucket.keys().await.expect("keys");
    let mut compute = 0;
    while let Some(key) = keys.next().await {
        if key.expect("key").starts_with("compute.") {
            compute += 1;
        }
    }
    assert_eq!(compute, machines);
    for resource in expected.resources().step_by(997) {
        let row: serde_json::Value = serde_json::from_slice(
            &bucket
                .get(format!("compute.r.{}", resource.id))
                .await
                .expect("get")
                .expect("a row"),
        )
        .expect("json");
        assert_eq!(row["hostname"], resource.hostname.as_str());
    }
    resumed.shutdown().await.expect("stop");
    let mut row = Row::info(
        &format!(
            "topology KV read model, {machines} machines ({total} events): built live (events/s), \
             restarted without replaying (ms until the topology is served again)"
        ),
        "events/s / ms",
        total as f64 / built.as_secs_f64(),
        serving.as_secs_f64() * 1e3,
    );
    row.raw_label = Some("ms to resume");
    rows.push(row);
}
