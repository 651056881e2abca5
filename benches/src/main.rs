//! `cargo xtask bench [--quick]`: cim-nats against raw async-nats doing the same JetStream work,
//! on one server in one run, printed as a Markdown table of both figures and their ratio.

mod across;
mod group;
mod harness;
mod hot;
mod project;
mod read_model;
mod sample;
mod traced;
mod write;

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;
use cim_nats::jetstream::{JetStreamEventStore, StoreConfig};
use cim_nats::testing::NatsServer;
use cim_nats::{headers, AggregateId, EventStore};
use futures::StreamExt;

use harness::{latency, median_of_three, print_table, Row, Run};

/// Events per aggregate in the load cases.
pub(crate) const PER_AGGREGATE: u64 = 20;

struct Options {
    quick: bool,
    /// Runs only the cases whose names are given (`--only append,subscriber`); all when empty.
    only: Vec<String>,
}

/// The cases, by the names `--only` takes.
const CASES: [&str; 17] = [
    "append",
    "traced",
    "pipelined",
    "batch",
    "commands",
    "across",
    "hot",
    "growing",
    "load",
    "replay",
    "readmodel",
    "topologykv",
    "snapshot",
    "subscriber",
    "group",
    "topology",
    "memory",
];

impl Options {
    fn from_args() -> Result<Self, String> {
        let mut options = Self {
            quick: false,
            only: Vec::new(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => options.quick = true,
                "--only" => {
                    let list = args.next().ok_or("--only needs a list of cases")?;
                    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                        if !CASES.contains(&name) {
                            return Err(format!(
                                "unknown case `{name}`; the cases are: {}",
                                CASES.join(", ")
                            ));
                        }
                        options.only.push(name.to_owned());
                    }
                }
                other => {
                    return Err(format!(
                        "unknown argument `{other}`; usage: cim-nats-bench [--quick] [--only CASE,...] (cases: {})",
                        CASES.join(", ")
                    ))
                }
            }
        }
        Ok(options)
    }

    fn runs(&self, case: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|c| c == case)
    }
}

pub(crate) fn payload() -> Bytes {
    Bytes::from(format!("{{\"pad\":\"{}\"}}", "x".repeat(490)))
}

/// Fills `domain`'s stream with `aggregates` aggregates of 20 events each (1 `created`, 19
/// `updated`), interleaved across the whole stream, in the store's wire format, by pipelined
/// raw publishes.
pub(crate) async fn fill(client: &async_nats::Client, domain: &str, aggregates: u64) -> Duration {
    let js = async_nats::jetstream::new(client.clone());
    // The payloads are `sample::ItemEvent`s, so a repository can read them.
    let pad = "x".repeat(476);
    let json = |event: &sample::ItemEvent| Bytes::from(serde_json::to_vec(event).expect("json"));
    let created = json(&sample::ItemEvent::Created { pad: pad.clone() });
    let updated = json(&sample::ItemEvent::Updated { pad });
    let started = Instant::now();
    let mut acks = futures::stream::FuturesUnordered::new();
    let contiguous = std::env::var("BENCH_FILL").as_deref() == Ok("contiguous");
    let order: Vec<(u64, u64)> = if contiguous {
        (0..aggregates)
            .flat_map(|a| (1..=PER_AGGREGATE).map(move |v| (v, a)))
            .collect()
    } else {
        (1..=PER_AGGREGATE)
            .flat_map(|v| (0..aggregates).map(move |a| (v, a)))
            .collect()
    };
    {
        for (version, a) in order {
            let (op, payload) = if version == 1 {
                ("created", &created)
            } else {
                ("updated", &updated)
            };
            let mut h = HeaderMap::new();
            h.insert(headers::MSG_ID, uuid::Uuid::now_v7().to_string().as_str());
            h.insert(headers::EVENT_TYPE, op);
            h.insert(headers::AGGREGATE_VERSION, version.to_string().as_str());
            h.insert(headers::AGGREGATE_ID, format!("a{a}").as_str());
            h.insert(headers::CONTENT_TYPE, headers::JSON);
            let ack = js
                .publish_with_headers(format!("{domain}.item.{op}.a{a}"), h, payload.clone())
                .await
                .expect("publish");
            acks.push(ack.into_future());
            if acks.len() >= 2048 {
                acks.next().await.expect("ack").expect("stored");
            }
        }
    }
    while let Some(ack) = acks.next().await {
        ack.expect("stored");
    }
    started.elapsed()
}

/// Raw async-nats: the aggregate's events by batched direct gets on its literal subjects
/// (known in advance), collected on one inbox until every batch has ended.
async fn raw_load(client: &async_nats::Client, stream: &str, subjects: &[String]) -> usize {
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await.expect("subscribe");
    for s in subjects {
        let req = serde_json::json!({ "seq": 1, "next_by_subj": s, "batch": 1000 });
        client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{stream}"),
                inbox.clone(),
                serde_json::to_vec(&req).expect("json").into(),
            )
            .await
            .expect("request");
    }
    let mut ended = 0;
    let mut messages = Vec::new();
    while ended < subjects.len() {
        let m = sub.next().await.expect("reply");
        match m.status.map(|s| s.as_u16()) {
            None | Some(200) => messages.push(m),
            _ => ended += 1,
        }
    }
    let _ = sub.unsubscribe().await;
    messages.len()
}

/// Raw async-nats: the 20 events of item `a` of `domain`'s stream, on its two literal subjects.
async fn raw_item_load(client: &async_nats::Client, domain: &str, stream: &str, a: u64) {
    let subjects = [
        format!("{domain}.item.created.a{a}"),
        format!("{domain}.item.updated.a{a}"),
    ];
    let n = raw_load(client, stream, &subjects).await;
    assert_eq!(n as u64, PER_AGGREGATE);
}

async fn load_case(
    client: &async_nats::Client,
    domain: &str,
    aggregates: u64,
    reps: usize,
    rows: &mut Vec<Row>,
) {
    let config = StoreConfig::for_domain(domain);
    let stream = config.stream_name.clone();
    let store = JetStreamEventStore::new(client.clone(), config)
        .await
        .expect("store");
    let filled = fill(client, domain, aggregates).await;
    let total = aggregates * PER_AGGREGATE;
    eprintln!(
        "filled {total} events in {filled:?} ({:.0}/s)",
        total as f64 / filled.as_secs_f64()
    );
    let pick = |i: usize| (i as u64 * 7919) % aggregates;
    let raw = |i: usize| {
        let client = client.clone();
        let stream = stream.clone();
        async move { raw_item_load(&client, domain, &stream, pick(i)).await }
    };
    let routing = [
        format!("{domain}.item.created"),
        format!("{domain}.item.updated"),
    ];
    let (f, r) = latency(
        20,
        reps,
        |i| {
            let store = store.clone();
            let routing = routing.clone();
            async move {
                let id = AggregateId::new(format!("a{}", pick(i))).expect("id");
                let routing: Vec<&str> = routing.iter().map(String::as_str).collect();
                let events = store
                    .read_aggregate_routed(&id, &routing, 0, cim_nats::StreamSequence(0))
                    .await
                    .expect("load");
                assert_eq!(events.len() as u64, PER_AGGREGATE);
            }
        },
        raw,
    )
    .await;
    let case = format!("load a 20-event aggregate (typed), stream of {total}");
    rows.push(Row::latency(
        &case,
        "p50 µs",
        f.percentile(0.5),
        r.percentile(0.5),
    ));
    rows.push(Row::latency(
        &case,
        "p99 µs",
        f.percentile(0.99),
        r.percentile(0.99),
    ));
    let (f, r) = latency(
        20,
        reps,
        |i| {
            let store = store.clone();
            async move {
                let id = AggregateId::new(format!("a{}", pick(i))).expect("id");
                let events = store.read_aggregate(&id, 0).await.expect("load");
                assert_eq!(events.len() as u64, PER_AGGREGATE);
            }
        },
        raw,
    )
    .await;
    let case =
        format!("load a 20-event aggregate (untyped: subjects discovered), stream of {total}");
    rows.push(Row::latency(
        &case,
        "p50 µs",
        f.percentile(0.5),
        r.percentile(0.5),
    ));
    // The freshness check of a cached aggregate: its last event, by a direct get on the
    // aggregate's wildcard subject.
    let (f, r) = latency(
        20,
        reps,
        |i| {
            let store = store.clone();
            async move {
                let id = AggregateId::new(format!("a{}", pick(i))).expect("id");
                let version = store.aggregate_version(&id).await.expect("version");
                assert_eq!(version, Some(PER_AGGREGATE));
            }
        },
        |i| {
            let client = client.clone();
            let stream = stream.clone();
            async move {
                let req =
                    serde_json::json!({ "last_by_subj": format!("{domain}.*.*.a{}", pick(i)) });
                let m = client
                    .request(
                        format!("$JS.API.DIRECT.GET.{stream}"),
                        serde_json::to_vec(&req).expect("json").into(),
                    )
                    .await
                    .expect("direct get");
                assert!(m.status.is_none());
            }
        },
    )
    .await;
    rows.push(Row::latency(
        &format!("an aggregate's last event (wildcard subject), stream of {total}"),
        "p50 µs",
        f.percentile(0.5),
        r.percentile(0.5),
    ));
}

/// A load through the repository's cache: the aggregates are cached first, then each load is one
/// check of the aggregate's last event; against raw async-nats loading all 20 events.
async fn cached_load_case(
    client: &async_nats::Client,
    aggregates: u64,
    reps: usize,
    rows: &mut Vec<Row>,
) {
    use cim_nats::Repository;
    use std::sync::Arc;
    let store: Arc<dyn EventStore> = Arc::new(
        JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("large"))
            .await
            .expect("store"),
    );
    let total = aggregates * PER_AGGREGATE;
    let hot = (reps + 20) as u64;
    let pick = |i: usize| (i as u64 * 7919) % aggregates.min(hot);
    let repo = Repository::<sample::Item>::new(store).with_cache(hot as usize);
    for a in 0..aggregates.min(hot) {
        let id = AggregateId::new(format!("a{a}")).expect("id");
        repo.load_cached(&id).await.expect("warm");
    }
    let (f, r) = latency(
        20,
        reps,
        |i| {
            let repo = &repo;
            async move {
                let id = AggregateId::new(format!("a{}", pick(i))).expect("id");
                let loaded = repo.load_cached(&id).await.expect("load");
                assert_eq!(loaded.state.events, PER_AGGREGATE);
            }
        },
        |i| {
            let client = client.clone();
            async move { raw_item_load(&client, "large", "LARGE_EVENTS", pick(i)).await }
        },
    )
    .await;
    let mut row = Row::latency(
        &format!("load a 20-event aggregate through the repository's cache (one freshness check), stream of {total}"),
        "p50 µs",
        f.percentile(0.5),
        r.percentile(0.5),
    );
    row.raw_label = Some("raw async-nats, full load");
    rows.push(row);
}

/// Raw async-nats: the whole stream through a pull consumer without acknowledgements, batches
/// of 5,000, without decoding; the consumer is deleted afterwards (the same work the store does).
async fn raw_replay(client: &async_nats::Client, stream: &str) -> u64 {
    use async_nats::jetstream::consumer;
    let js = async_nats::jetstream::new(client.clone());
    let s = js.get_stream_no_info(stream).await.expect("stream");
    let name = format!("raw-read-{}", uuid::Uuid::new_v4().simple());
    let c = s
        .create_consumer(consumer::pull::Config {
            name: Some(name.clone()),
            ack_policy: consumer::AckPolicy::None,
            memory_storage: true,
            num_replicas: 1,
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
    let mut count = 0u64;
    while let Some(m) = messages.next().await {
        let m = m.expect("message");
        count += 1;
        if m.info().expect("info").pending == 0 {
            break;
        }
    }
    js.delete_consumer_from_stream(&name, stream)
        .await
        .expect("delete");
    count
}

async fn replay_case(client: &async_nats::Client, domain: &str, rows: &mut Vec<Row>) {
    let config = StoreConfig::for_domain(domain);
    let stream = config.stream_name.clone();
    let store = JetStreamEventStore::new(client.clone(), config)
        .await
        .expect("store");
    let total = store.last_sequence().await.expect("state").0;
    let measured = median_of_three(
        |_| async {
            let t = Instant::now();
            let n = store
                .stream(cim_nats::ReadFrom::Start)
                .fold(0u64, |n, e| async move {
                    e.expect("event");
                    n + 1
                })
                .await;
            assert_eq!(n, total);
            Run::since(n, t)
        },
        |_| async {
            let t = Instant::now();
            let n = raw_replay(client, &stream).await;
            assert_eq!(n, total);
            Run::since(n, t)
        },
    )
    .await;
    rows.extend(measured.rows(
        &format!("replay the whole stream of {total}"),
        "events/s (median of 3)",
        "client CPU µs per event (median of 3)",
    ));
    // Client memory of a replay, on its own: reset the peak, read everything, read the peak.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = harness::rss_kib("VmRSS:");
    let n = store
        .stream(cim_nats::ReadFrom::Start)
        .fold(0u64, |n, e| async move {
            e.expect("event");
            n + 1
        })
        .await;
    let peak = harness::rss_kib("VmHWM:");
    rows.push(Row::info(
        &format!("replay of {n} events: client RSS"),
        "MiB before / peak",
        before as f64 / 1024.0,
        peak as f64 / 1024.0,
    ));
}

/// A repository load of an aggregate of 10,000 events (from its snapshot) against one of 10
/// events (no snapshot yet), both through the repository.
async fn snapshot_case(client: &async_nats::Client, reps: usize, rows: &mut Vec<Row>) {
    use cim_nats::jetstream::KvSnapshotStore;
    use cim_nats::{EventStore, Repository};
    use std::sync::Arc;
    let store: Arc<dyn EventStore> = Arc::new(
        JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("ledger"))
            .await
            .expect("store"),
    );
    let snapshots = Arc::new(
        KvSnapshotStore::new(client.clone(), "LEDGER_SNAPSHOTS")
            .await
            .expect("bucket"),
    );
    let repo = Repository::<sample::Ledger>::new(Arc::clone(&store)).with_snapshots(snapshots, 100);
    let long = AggregateId::new("long").expect("id");
    let short = AggregateId::new("short").expect("id");
    for i in 0..10_000i64 {
        repo.execute(&long, i + 1).await.expect("command");
    }
    for i in 0..10i64 {
        repo.execute(&short, i + 1).await.expect("command");
    }
    let (f, r) = latency(
        20,
        reps,
        |_| {
            let repo = &repo;
            let long = long.clone();
            async move {
                let loaded = repo.load(&long).await.expect("load");
                assert_eq!(loaded.version, 10_000);
            }
        },
        |_| {
            let repo = &repo;
            let short = short.clone();
            async move {
                let loaded = repo.load(&short).await.expect("load");
                assert_eq!(loaded.version, 10);
            }
        },
    )
    .await;
    let mut row = Row::latency(
        "repository load: 10,000-event aggregate (snapshot) vs 10-event aggregate",
        "p50 µs",
        f.percentile(0.5),
        r.percentile(0.5),
    );
    row.raw_label = Some("10-event aggregate");
    rows.push(row);
}

#[tokio::main]
async fn main() {
    let options = Options::from_args().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let client = server.connect().await.expect("connect");
    eprintln!(
        "nats-server {} at {}; mode {}",
        server.binary().version,
        server.url(),
        if options.quick { "quick" } else { "full" }
    );
    let mut rows = Vec::new();
    let quick = options.quick;
    let reps = if quick { 200 } else { 2000 };
    if options.runs("append") {
        write::append_one(&client, reps, &mut rows).await;
    }
    if options.runs("traced") {
        traced::append_traced(&client, reps, &mut rows).await;
    }
    if options.runs("pipelined") {
        write::append_pipelined(&client, if quick { 5 } else { 20 }, &mut rows).await;
    }
    if options.runs("batch") {
        write::batch_of_three(&client, reps / 2, &mut rows).await;
    }
    if options.runs("commands") {
        write::commands(&client, reps, if quick { 3_200 } else { 32_000 }, &mut rows).await;
    }
    if options.runs("across") {
        across::two_aggregates(&client, if quick { 20 } else { 200 }, &mut rows).await;
    }
    let big = if quick { 5_000 } else { 50_000 };
    if options.runs("load") {
        load_case(&client, "small", 50, reps, &mut rows).await;
    }
    if options.runs("load") || options.runs("replay") {
        // The replay reads the large stream the load case fills.
        load_case(&client, "large", big, reps, &mut rows).await;
    }
    if options.runs("load") {
        cached_load_case(&client, big, reps, &mut rows).await;
    }
    if options.runs("replay") {
        replay_case(&client, "large", &mut rows).await;
    }
    if options.runs("topologykv") {
        read_model::topology_live(if quick { 101 } else { 1_011 }, &mut rows).await;
    }
    if options.runs("readmodel") {
        // Reads the large stream the load case fills.
        if !options.runs("load") && !options.runs("replay") {
            load_case(&client, "large", big, reps, &mut rows).await;
        }
        read_model::rebuild(&client, &mut rows).await;
        read_model::checkpoint_cost(
            &client,
            if quick { 10_000 } else { 100_000 },
            reps / 10,
            &mut rows,
        )
        .await;
    }
    if options.runs("snapshot") {
        snapshot_case(&client, reps, &mut rows).await;
    }
    if options.runs("subscriber") {
        project::subscriber(&client, if quick { 10_000 } else { 100_000 }, &mut rows).await;
    }
    if options.runs("group") {
        group::group(
            &client,
            &server.url(),
            if quick { 5_000 } else { 20_000 },
            &mut rows,
        )
        .await;
    }
    if options.runs("topology") {
        project::topology_rebuild(&client, if quick { 100 } else { 10_000 }, &mut rows).await;
    }
    if options.runs("memory") {
        project::in_memory(reps, &mut rows).await;
    }

    // The hot-aggregate cases write the infrastructure domain's stream, which the topology
    // case fills itself: they get a server of their own. They run after the others, whose
    // figures the memory they leave behind (a 100,000-machine state) would disturb.
    let hot_server = (options.runs("hot") || options.runs("growing"))
        .then(|| NatsServer::start().unwrap_or_else(|e| panic!("{e}")));
    let hot_client = match &hot_server {
        Some(server) => Some(server.connect().await.expect("connect")),
        None => None,
    };
    if let (true, Some(hot_client)) = (options.runs("hot"), &hot_client) {
        hot::one_aggregate_32_tasks(
            hot_client,
            if quick { 50 } else { 250 },
            Duration::from_secs(if quick { 1 } else { 5 }),
            &mut rows,
        )
        .await;
    }
    if let (true, Some(hot_client)) = (options.runs("growing"), &hot_client) {
        hot::growing_aggregate(hot_client, if quick { 5_000 } else { 100_000 }, &mut rows).await;
    }
    drop(hot_client);
    drop(hot_server);

    // The command cases again on a server that fsyncs every write.
    if options.runs("append") || options.runs("commands") {
        let durable = NatsServer::builder()
            .jetstream_config("sync_interval: always")
            .start()
            .unwrap_or_else(|e| panic!("{e}"));
        let durable_client = durable.connect().await.expect("connect");
        let first = rows.len();
        if options.runs("append") {
            write::append_one(&durable_client, reps / 4, &mut rows).await;
        }
        if options.runs("commands") {
            write::commands(
                &durable_client,
                reps / 4,
                if quick { 640 } else { 6_400 },
                &mut rows,
            )
            .await;
        }
        for row in &mut rows[first..] {
            row.case.push_str(" [sync_interval: always]");
        }
    }
    print_table(&rows);
}
