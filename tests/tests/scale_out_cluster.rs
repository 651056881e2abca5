//! Consumer groups on a three-node JetStream cluster: the event stream, its partitioned view,
//! the group bucket and the read model's bucket on three replicas. Three members of a
//! subscriber group and three of a per-key read-model group (each on a client of its own)
//! work while events are stored; the event stream's leader is killed (`SIGKILL`) in the middle
//! of the load. Afterwards every event was handled, per aggregate in order within each lease
//! epoch and with no gap between epochs, every event handled twice is marked a redelivery,
//! and every row of the read model is exact.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_trait::async_trait;
use cim_nats::jetstream::group::{GroupMember, GroupOptions, GroupStatus, GROUPS_BUCKET};
use cim_nats::jetstream::subscriber::EventSubscriberBuilder;
use cim_nats::jetstream::{
    KeyedProjection, ReadModel, ReadModelOptions, ReadModelRunner, Rows, SubscriptionHandle,
};
use cim_nats::testing::{wait_until, NatsCluster};
use cim_nats::{AsyncFnHandler, Delivery, Envelope, EventStore, ProjectionError};
use serde::{Deserialize, Serialize};
use support::reliability::{self as rs, ItemEvent, Plan, Progress};

/// Deadline around elections and catching up.
const WAIT: Duration = Duration::from_secs(60);
const PARTITIONS: u32 = 8;
const SUBSCRIBERS: &str = "cluster-audit";
const MODEL: &str = "cluster_notes";

/// One row per item: the events applied and the last version applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct NoteRow {
    events: u64,
    version: u64,
}

/// A per-key model of the load's items; it refuses a version out of order.
struct Notes;

#[async_trait]
impl KeyedProjection for Notes {
    type Event = ItemEvent;
    type Row = NoteRow;
    const NAME: &'static str = MODEL;

    async fn apply(
        &self,
        event: &Envelope<ItemEvent>,
        rows: &mut Rows<'_, NoteRow>,
    ) -> Result<(), ProjectionError> {
        let id = event.aggregate_id().to_string();
        let mut row = rows.get("item", &id).await?.unwrap_or_default();
        if event.version() != row.version + 1 {
            return Err(ProjectionError::Apply {
                projection: MODEL.to_owned(),
                sequence: event.sequence().0,
                reason: format!(
                    "item {id}: version {} after {}",
                    event.version(),
                    row.version
                ),
            });
        }
        row.events += 1;
        row.version = event.version();
        rows.put("item", &id, row)
    }
}

/// One handled event, as a member recorded it.
#[derive(Debug, Clone)]
struct Handled {
    at: Instant,
    aggregate: String,
    version: u64,
    delivered: u64,
    epoch: u64,
    member: &'static str,
}

type Log = Arc<Mutex<Vec<Handled>>>;

/// An aggregate's deliveries, for a failure's message.
fn describe(handled: &[&Handled]) -> String {
    handled
        .iter()
        .map(|h| format!("v{}/d{}/e{}/{}", h.version, h.delivered, h.epoch, h.member))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A subscriber-group member on a client of its own that records what it handles.
async fn subscriber_member(urls: &[String], member: &'static str, log: Log) -> SubscriptionHandle {
    let client = rs::cluster_connect(urls).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let log = Arc::clone(&log);
        let attempt = EventSubscriberBuilder::new()
            .client(client.clone())
            .subject(format!("{}.>", rs::DOMAIN))
            .durable(SUBSCRIBERS)
            .max_in_flight(32)
            .ack_wait(Duration::from_secs(5))
            .handler(AsyncFnHandler::with_delivery(move |d: Delivery| {
                let log = Arc::clone(&log);
                async move {
                    let epoch = d.lease.as_ref().map_or(0, |l| l.epoch);
                    log.lock().unwrap().push(Handled {
                        at: Instant::now(),
                        aggregate: d.event.aggregate_id.to_string(),
                        version: d.event.aggregate_version,
                        delivered: d.delivery_count,
                        epoch,
                        member,
                    });
                    Ok(())
                }
            }))
            .group(
                GroupOptions::default()
                    .partitions(PARTITIONS)
                    .member(member),
            )
            .build()
            .expect("subscriber")
            .subscribe()
            .await;
        match attempt {
            Ok(handle) => return handle,
            Err(e) if Instant::now() < deadline => {
                eprintln!("{member}: joining failed, again: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{member}: {e}"),
        }
    }
}

/// A read-model-group member on a client of its own.
async fn model_member(urls: &[String], member: &'static str) -> GroupMember {
    let store = rs::cluster_store(rs::cluster_connect(urls).await, WAIT).await;
    let options = ReadModelOptions {
        commit_interval: Duration::from_millis(100),
        ..ReadModelOptions::default()
    };
    let deadline = Instant::now() + WAIT;
    loop {
        match ReadModelRunner::join_group(
            &store,
            MODEL,
            || Notes,
            options.clone(),
            GroupOptions::default()
                .partitions(PARTITIONS)
                .member(member),
        )
        .await
        {
            Ok(m) => return m,
            Err(e) if Instant::now() < deadline => {
                eprintln!("{member}: joining failed, again: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{member}: {e}"),
        }
    }
}

async fn status(client: &async_nats::Client, group: &str) -> GroupStatus {
    GroupStatus::read(client, GROUPS_BUCKET, group)
        .await
        .unwrap_or_default()
}

/// Waits until the partitions of `group` are held, each by one of 3 members, fairly.
async fn wait_shared(client: &async_nats::Client, group: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = status(client, group).await;
        let shares: Vec<usize> = s
            .members
            .iter()
            .map(|m| s.held_by(&m.member).len())
            .collect();
        if s.members.len() == 3
            && s.leases.len() == PARTITIONS as usize
            && shares.iter().all(|&n| n * 3 >= PARTITIONS as usize - 2)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{group}: the partitions are not shared by 3 members: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_groups_on_a_cluster_lose_nothing_when_the_stream_leader_is_killed() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut cluster = NatsCluster::start(3).unwrap_or_else(|e| panic!("{e}"));
    cluster
        .wait_for_jetstream(WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let urls = cluster.urls();
    let client = rs::cluster_connect(&urls).await;
    let js = jetstream::new(client.clone());
    let store = rs::cluster_store(client.clone(), WAIT).await;
    let name = store.stream_name().to_owned();

    let log: Log = Arc::default();
    let mut subscribers = Vec::new();
    let mut models = Vec::new();
    for (s, m) in [("s1", "r1"), ("s2", "r2"), ("s3", "r3")] {
        subscribers.push(subscriber_member(&urls, s, Arc::clone(&log)).await);
        models.push(model_member(&urls, m).await);
    }
    wait_shared(&client, SUBSCRIBERS).await;
    wait_shared(&client, MODEL).await;
    // Everything the groups rely on has 3 replicas, the bucket of leases included.
    for stream in [
        name.clone(),
        format!("{name}_PARTITIONED"),
        format!("KV_{GROUPS_BUCKET}"),
    ] {
        let mut s = js.get_stream(&stream).await.expect("stream");
        assert_eq!(
            s.info().await.expect("info").config.num_replicas,
            3,
            "{stream}"
        );
    }

    let plan = Plan {
        domain: rs::DOMAIN.to_owned(),
        aggregates: 200,
        per_aggregate: 25,
        in_flight: 64,
        attempt_timeout: Duration::from_secs(1),
        give_up: Duration::from_secs(120),
    };
    let total = plan.total();
    let progress = Arc::new(Progress::default());
    let load = tokio::spawn(rs::run_load(
        store.clone(),
        plan.clone(),
        Arc::clone(&progress),
    ));

    // Mid-load: kill the event stream's leader.
    let kill_at = total * 3 / 10;
    wait_until(WAIT, "the load to reach the kill point", || {
        let acked = progress.acked.load(Ordering::Relaxed);
        async move { acked >= kill_at }
    })
    .await;
    let leader = {
        let mut s = js.get_stream(&name).await.expect("stream");
        s.info()
            .await
            .expect("info")
            .cluster
            .clone()
            .and_then(|c| c.leader)
            .expect("a stream leader")
    };
    let killed = Instant::now();
    tokio::task::block_in_place(|| {
        cluster
            .server_mut(rs::server_index(&leader))
            .expect("server")
            .kill()
    });
    let acked = load.await.expect("load");
    let load_done = killed.elapsed();
    let verdict = rs::verify(&plan, &acked, &rs::read_stream(&client, &name).await);
    let last = store.last_sequence().await.expect("last sequence");
    assert_eq!(last.0, total, "every append stored once");

    // The view catches up (the server sources it from the event stream, again after the
    // election).
    let view = format!("{name}_PARTITIONED");
    let deadline = Instant::now() + 2 * WAIT;
    loop {
        let messages = match js.get_stream(&view).await {
            Ok(mut s) => s.info().await.map_or(0, |i| i.state.messages),
            Err(_) => 0,
        };
        if messages >= total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the view has {messages} of {total} events"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let view_done = killed.elapsed();

    // The subscriber group handles every event.
    let deadline = Instant::now() + 2 * WAIT;
    loop {
        let seen: HashSet<(String, u64)> = log
            .lock()
            .unwrap()
            .iter()
            .map(|h| (h.aggregate.clone(), h.version))
            .collect();
        if seen.len() as u64 == total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the subscriber group handled {} of {total} events; {:?}",
            seen.len(),
            status(&client, SUBSCRIBERS).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let subscribers_done = killed.elapsed();
    // The read-model group reaches the last event.
    let model = ReadModel::<NoteRow>::open(client.clone(), MODEL, &ReadModelOptions::default())
        .await
        .expect("model");
    model
        .wait_for(last, 2 * WAIT)
        .await
        .expect("the model reaches the last event");
    let model_done = killed.elapsed();

    // Nothing left behind in any partition, as the operations view shows it.
    wait_until(
        WAIT,
        "every partition's consumer to be acknowledged to the end",
        || {
            let client = client.clone();
            let name = name.clone();
            async move {
                let s = status(&client, SUBSCRIBERS).await;
                s.subscriber_lag(&client, &name).await.is_ok_and(|lag| {
                    lag.len() == PARTITIONS as usize
                        && lag.iter().all(|l| l.pending == 0 && l.ack_pending == 0)
                })
            }
        },
    )
    .await;
    for handle in subscribers {
        handle.shutdown().await.expect("subscriber shutdown");
    }
    for member in models {
        member.shutdown().await.expect("model member shutdown");
    }

    // Order per aggregate: by epoch, consecutive versions, no gap, no two epochs at once.
    let mut lines = log.lock().unwrap().clone();
    lines.sort_by_key(|h| h.at);
    let mut by_aggregate: HashMap<&str, Vec<&Handled>> = HashMap::new();
    for h in &lines {
        by_aggregate
            .entry(h.aggregate.as_str())
            .or_default()
            .push(h);
    }
    let mut duplicates = 0usize;
    let mut epochs_seen: HashSet<u64> = HashSet::new();
    for (aggregate, handled) in &by_aggregate {
        let mut epochs: BTreeMap<u64, Vec<&Handled>> = BTreeMap::new();
        for h in handled {
            epochs.entry(h.epoch).or_default().push(h);
            epochs_seen.insert(h.epoch);
        }
        let mut max_before = 0u64;
        let mut last_at_before: Option<Instant> = None;
        let mut handled_versions: HashSet<u64> = HashSet::new();
        for (epoch, lines) in &epochs {
            let first_at = lines.iter().map(|h| h.at).min().expect("a line");
            assert!(
                last_at_before.is_none_or(|before| first_at > before),
                "{aggregate}: epoch {epoch} handled it while an earlier epoch still did"
            );
            last_at_before = lines.iter().map(|h| h.at).max();
            let start = lines[0].version;
            assert!(
                start <= max_before + 1,
                "{aggregate}: epoch {epoch} starts at version {start} after {max_before}: a gap"
            );
            // Within an epoch, each version first comes right after the highest one handled;
            // a version comes again only as a redelivery.
            let mut highest = max_before;
            for h in lines {
                assert!(
                    h.version == highest + 1 || (h.delivered >= 2 && h.version <= highest),
                    "{aggregate}: epoch {epoch} handled version {} (delivery {}) after {highest}; \
                     all its deliveries: {}",
                    h.version,
                    h.delivered,
                    describe(handled)
                );
                highest = highest.max(h.version);
            }
            for h in lines {
                if !handled_versions.insert(h.version) {
                    duplicates += 1;
                    assert!(
                        h.delivered >= 2,
                        "{aggregate} v{} handled again by {} without being marked a redelivery",
                        h.version,
                        h.member
                    );
                }
            }
            max_before = max_before.max(lines.iter().map(|h| h.version).max().unwrap_or(0));
        }
        assert_eq!(max_before, plan.per_aggregate, "{aggregate}");
    }
    assert_eq!(by_aggregate.len() as u64, plan.aggregates);

    // Every row exact.
    for a in 0..plan.aggregates {
        let id = rs::aggregate(a);
        let row = model
            .get("item", id.as_str())
            .await
            .expect("row")
            .unwrap_or_else(|| panic!("no row for {id}"));
        assert_eq!(
            row,
            NoteRow {
                events: plan.per_aggregate,
                version: plan.per_aggregate,
            },
            "{id}"
        );
    }
    assert!(model.checkpoint().await.expect("checkpoint") >= last);

    println!(
        "scale_out cluster: {total} events on {} aggregates, 3 replicas, {PARTITIONS} partitions; \
         killed stream leader {leader} at {kill_at} acknowledged\n  \
         appends: acknowledged {} / present {} / doubled {} / retried {}, the last {:.1} s \
         after the kill\n  \
         partitioned view: every event {:.1} s after the kill\n  \
         subscriber group: every event handled {:.1} s after the kill, {duplicates} duplicates \
         (all redeliveries), {} lease epochs\n  \
         read-model group: every row exact, the last event {:.1} s after the kill",
        plan.aggregates,
        verdict.acknowledged,
        verdict.present,
        verdict.doubled,
        verdict.retried,
        load_done.as_secs_f64(),
        view_done.as_secs_f64(),
        subscribers_done.as_secs_f64(),
        epochs_seen.len(),
        model_done.as_secs_f64(),
    );
}
