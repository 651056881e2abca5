//! Rebuilding a read model on request, by its running runner: the model is built again from the
//! start of the stream into a bucket of a new generation while the live bucket keeps serving
//! and keeps being updated; the pointer moves once the rebuild has caught up, readers and the
//! runner's handle follow, and the old bucket is deleted. A second request gets the rebuild
//! under way; a runner started again after the switch goes on in the new bucket; a crash in the
//! middle leaves readers on the live bucket and a runner started again finishes the rebuild;
//! a partitioned model is rebuilt by every partition's runner.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cim_nats::jetstream::{
    request_rebuild, JetStreamEventStore, KeyedProjection, PartitionedView, Pointer, ReadModel,
    ReadModelHandle, ReadModelOptions, ReadModelRunner, Rows,
};
use cim_nats::subscriber::Lease;
use cim_nats::{AggregateId, Envelope, ProjectionError, Repository, StreamSequence};
use serde::{Deserialize, Serialize};
use support::bank::{Account, AccountCommand, AccountEvent};
use tokio::sync::watch;

/// One account's row: its balance, the events applied, the last version applied and the
/// stream sequence of the last event applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct AccountRow {
    balance: u64,
    events: u64,
    version: u64,
    sequence: u64,
}

/// Balances per account, table `account`. Refuses an event applied twice or skipped. Events
/// whose sequence lies in the held range wait until the range is lifted (only a rebuild reads
/// them again: the live runner has applied them before the range is set).
struct Balances {
    hold: watch::Receiver<Option<(u64, u64)>>,
}

impl Balances {
    fn free() -> Self {
        Self {
            hold: watch::channel(None).1,
        }
    }
}

#[async_trait]
impl KeyedProjection for Balances {
    type Event = AccountEvent;
    type Row = AccountRow;
    const NAME: &'static str = "balances";

    async fn apply(
        &self,
        event: &Envelope<AccountEvent>,
        rows: &mut Rows<'_, AccountRow>,
    ) -> Result<(), ProjectionError> {
        let sequence = event.sequence().0;
        let held =
            |h: &Option<(u64, u64)>| h.is_some_and(|(lo, hi)| lo < sequence && sequence <= hi);
        let mut hold = self.hold.clone();
        if held(&hold.borrow()) {
            let _ = hold.wait_for(|h| !held(h)).await;
        }
        let id = event.aggregate_id().to_string();
        let mut row = rows.get("account", &id).await?.unwrap_or_default();
        if event.version() != row.version + 1 {
            return Err(ProjectionError::Apply {
                projection: Self::NAME.into(),
                sequence,
                reason: format!(
                    "account {id}: version {} after {}",
                    event.version(),
                    row.version
                ),
            });
        }
        match &event.event {
            AccountEvent::Opened { .. } => {}
            AccountEvent::Deposited { amount, .. } => row.balance += amount,
            AccountEvent::Withdrawn { amount, .. } => row.balance -= amount,
        }
        row.events += 1;
        row.version = event.version();
        row.sequence = sequence;
        rows.put("account", &id, row)
    }
}

const WAIT: Duration = Duration::from_secs(30);

fn account(i: usize) -> AggregateId {
    AggregateId::new(format!("acc-{i}")).expect("id")
}

/// Opens `accounts` accounts and makes `deposits` deposits on each, from 8 tasks at once (each
/// its own accounts); the last sequence.
async fn fill(repo: &Arc<Repository<Account>>, accounts: usize, deposits: u64) -> StreamSequence {
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let repo = Arc::clone(repo);
        tasks.push(tokio::spawn(async move {
            let mine: Vec<usize> = (0..accounts).filter(|i| i % 8 == worker).collect();
            let mut last = StreamSequence(0);
            for &i in &mine {
                let owner = format!("owner {i}");
                let outcome = repo
                    .execute(&account(i), AccountCommand::Open { owner })
                    .await
                    .expect("open");
                last = last.max(outcome.last_sequence());
            }
            for d in 1..=deposits {
                for &i in &mine {
                    let outcome = repo
                        .execute(&account(i), AccountCommand::Deposit(d))
                        .await
                        .expect("deposit");
                    last = last.max(outcome.last_sequence());
                }
            }
            last
        }));
    }
    let mut last = StreamSequence(0);
    for task in tasks {
        last = last.max(task.await.expect("filler"));
    }
    last
}

/// Deposits 1 on the accounts in turn until told to stop; the last sequence.
fn keep_depositing(
    repo: &Arc<Repository<Account>>,
    accounts: usize,
) -> (
    watch::Sender<bool>,
    watch::Receiver<StreamSequence>,
    tokio::task::JoinHandle<StreamSequence>,
) {
    let (stop, stop_rx) = watch::channel(false);
    let (appended_tx, appended) = watch::channel(StreamSequence(0));
    let repo = Arc::clone(repo);
    let task = tokio::spawn(async move {
        let mut last = StreamSequence(0);
        let mut i = 0;
        while !*stop_rx.borrow() {
            let outcome = repo
                .execute(&account(i % accounts), AccountCommand::Deposit(1))
                .await
                .expect("deposit");
            last = outcome.last_sequence();
            appended_tx.send_replace(last);
            i += 1;
        }
        last
    });
    (stop, appended, task)
}

/// Every row of `bucket` (checkpoints left out), as any KV client reads them.
async fn rows(client: &async_nats::Client, bucket: &str) -> BTreeMap<String, AccountRow> {
    let bucket = async_nats::jetstream::new(client.clone())
        .get_key_value(bucket)
        .await
        .unwrap_or_else(|e| panic!("bucket {bucket}: {e}"));
    let mut keys: Vec<String> =
        futures::TryStreamExt::try_collect(bucket.keys().await.expect("keys"))
            .await
            .expect("keys");
    keys.retain(|k| !k.starts_with("_cim."));
    let mut rows = BTreeMap::new();
    for key in keys {
        let value = bucket.get(&key).await.expect("get").expect("a row");
        rows.insert(key, serde_json::from_slice(&value).expect("row json"));
    }
    rows
}

/// The model built from scratch by a runner of its own (other bucket prefix and pointer
/// bucket) up to `last`: the rows a rebuild must have.
async fn from_scratch(
    client: &async_nats::Client,
    store: &JetStreamEventStore,
    last: StreamSequence,
) -> BTreeMap<String, AccountRow> {
    let options = ReadModelOptions {
        prefix: "SCRATCH".into(),
        pointer_bucket: "SCRATCH_MODELS".into(),
        ..ReadModelOptions::default()
    };
    let handle = ReadModelRunner::start(store, Balances::free(), options)
        .await
        .expect("a model from scratch");
    handle.wait_for(last, WAIT).await.expect("built");
    handle.shutdown().await.expect("clean stop");
    rows(client, "SCRATCH_balances_V1").await
}

async fn pointer(client: &async_nats::Client) -> Pointer {
    let value = async_nats::jetstream::new(client.clone())
        .get_key_value("READ_MODELS")
        .await
        .expect("pointers")
        .get("balances")
        .await
        .expect("get")
        .expect("a pointer");
    serde_json::from_slice(&value).expect("pointer json")
}

/// The checkpoint sequence of partition 0 in `bucket` (0 without one).
async fn checkpoint(client: &async_nats::Client, bucket: &str) -> u64 {
    let Ok(bucket) = async_nats::jetstream::new(client.clone())
        .get_key_value(bucket)
        .await
    else {
        return 0;
    };
    match bucket.get("_cim.checkpoint.0").await {
        Ok(Some(value)) => serde_json::from_slice::<serde_json::Value>(&value).expect("json")
            ["sequence"]
            .as_u64()
            .unwrap_or(0),
        _ => 0,
    }
}

async fn bucket_exists(client: &async_nats::Client, bucket: &str) -> bool {
    async_nats::jetstream::new(client.clone())
        .get_key_value(bucket)
        .await
        .is_ok()
}

async fn switched<P: KeyedProjection>(handle: &ReadModelHandle<P>, bucket: &str) {
    support::wait_until(WAIT, &format!("the runner to go on in {bucket}"), || {
        let there = handle.bucket() == bucket && handle.is_live();
        async move { there }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_builds_beside_the_live_bucket_while_events_come_and_readers_switch() {
    let (_server, client, store, repo) = support::bank_store().await;
    let options = ReadModelOptions {
        // Commits before the held events are stored while the rebuild waits.
        commit_every: 100,
        retire_after: Duration::from_millis(500),
        ..ReadModelOptions::default()
    };
    let filled = fill(&repo, 200, 10).await;
    let (hold, hold_rx) = watch::channel(None);
    let handle = ReadModelRunner::start(&store, Balances { hold: hold_rx }, options.clone())
        .await
        .expect("start");
    handle.wait_for(filled, WAIT).await.expect("caught up");
    assert_eq!(handle.bucket(), "RM_balances_V1");
    let mut reader = ReadModel::<AccountRow>::open(client.clone(), "balances", &options)
        .await
        .expect("reader");

    // The rebuild is held half-way through what the stream holds now.
    hold.send_replace(Some((filled.0 / 2, filled.0)));
    let (stop, appended, appender) = keep_depositing(&repo, 200);
    let answer = request_rebuild(&client, "READ_MODELS", "balances", WAIT)
        .await
        .expect("an answer");
    assert!(answer.accepted && !answer.under_way, "{answer:?}");
    assert_eq!(answer.bucket.as_deref(), Some("RM_balances_V1_G1"));
    assert_eq!(answer.live.as_deref(), Some("RM_balances_V1"));
    assert_eq!((answer.generation, answer.partitions), (Some(1), Some(1)));
    assert!(answer.target.expect("a target") >= filled.0);
    // The pointer records it; readers stay on the live bucket.
    let recorded = pointer(&client).await;
    assert_eq!(recorded.bucket, "RM_balances_V1");
    assert_eq!(recorded.rebuild, answer.rebuild());

    // A second request gets the rebuild under way.
    let again = request_rebuild(&client, "READ_MODELS", "balances", WAIT)
        .await
        .expect("an answer");
    assert!(!again.accepted && again.under_way, "{again:?}");
    assert_eq!(again.bucket, answer.bucket);
    assert!(again.reason.expect("why").contains("already under way"));
    support::wait_until(WAIT, "the rebuild to be built half-way", || {
        let client = client.clone();
        async move { checkpoint(&client, "RM_balances_V1_G1").await > 0 }
    })
    .await;
    assert_eq!(handle.rebuilding().as_deref(), Some("RM_balances_V1_G1"));

    // Meanwhile the live bucket keeps being updated and serving.
    let during = *appended.borrow();
    let more = {
        let mut appended = appended.clone();
        let more = *appended
            .wait_for(|s| s.0 > during.0 + 20)
            .await
            .expect("appender");
        more
    };
    handle
        .wait_for(more, WAIT)
        .await
        .expect("the live bucket goes on");
    assert_eq!(handle.bucket(), "RM_balances_V1");
    assert!(handle.is_live());
    assert!(reader.checkpoint().await.expect("checkpoint") >= more);
    assert!(
        !reader.refresh().await.expect("refresh"),
        "still on the live bucket"
    );
    assert!(
        checkpoint(&client, "RM_balances_V1_G1").await <= filled.0 / 2,
        "the rebuild waits"
    );

    // Let it go: it catches up with the events still coming, and the pointer moves.
    let released = std::time::Instant::now();
    hold.send_replace(None);
    switched(&handle, "RM_balances_V1_G1").await;
    println!(
        "switched {:.2} s after the rebuild was released",
        released.elapsed().as_secs_f64()
    );
    assert_eq!(handle.rebuilding(), None);
    stop.send_replace(true);
    let last = appender.await.expect("appender");
    handle
        .wait_for(last, WAIT)
        .await
        .expect("the new bucket goes on");
    assert!(handle.committed() >= last);
    assert!(handle.lag().committed >= last);
    let live = pointer(&client).await;
    assert_eq!(
        (
            live.bucket.as_str(),
            live.version,
            live.generation,
            live.rebuild
        ),
        ("RM_balances_V1_G1", 1, 1, None)
    );

    // Exactly the rows of a model built from scratch.
    let rebuilt = rows(&client, "RM_balances_V1_G1").await;
    assert_eq!(rebuilt.len(), 200);
    assert_eq!(rebuilt, from_scratch(&client, &store, last).await);
    // The typed reader follows the switch.
    assert!(
        reader.refresh().await.expect("refresh"),
        "the pointer moved"
    );
    assert_eq!(reader.pointer().generation, 1);
    let row = reader.get("account", "acc-7").await.expect("get");
    assert_eq!(row.as_ref(), rebuilt.get("account.r.acc-7"));
    reader.wait_for(last, WAIT).await.expect("read your writes");
    // The old bucket is gone once readers had time to follow.
    support::wait_until(WAIT, "the replaced bucket to be deleted", || {
        let client = client.clone();
        async move { !bucket_exists(&client, "RM_balances_V1").await }
    })
    .await;

    // A runner started again goes on in the rebuilt bucket, from its checkpoint.
    handle.shutdown().await.expect("clean stop");
    let after = repo
        .execute(&account(3), AccountCommand::Deposit(5))
        .await
        .expect("deposit")
        .last_sequence();
    let restarted = ReadModelRunner::start(&store, Balances::free(), options)
        .await
        .expect("restart");
    assert_eq!(restarted.bucket(), "RM_balances_V1_G1");
    assert!(restarted.is_live());
    assert!(
        restarted.committed() >= last,
        "resumed at {} in the rebuilt bucket, not from the start",
        restarted.committed()
    );
    restarted.wait_for(after, WAIT).await.expect("caught up");
    let row = rows(&client, "RM_balances_V1_G1").await["account.r.acc-3"].clone();
    assert_eq!(row.sequence, after.0);
    assert!(!bucket_exists(&client, "RM_balances_V1_G2").await);
    restarted.shutdown().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_a_rebuild_leaves_readers_on_the_live_bucket_and_a_restart_finishes_it() {
    let (_server, client, store, repo) = support::bank_store().await;
    let options = ReadModelOptions {
        commit_every: 100,
        retire_after: Duration::from_millis(200),
        ..ReadModelOptions::default()
    };
    let filled = fill(&repo, 150, 10).await;
    let (hold, hold_rx) = watch::channel(None);
    let handle = ReadModelRunner::start(&store, Balances { hold: hold_rx }, options.clone())
        .await
        .expect("start");
    handle.wait_for(filled, WAIT).await.expect("caught up");
    let live_rows = rows(&client, "RM_balances_V1").await;
    hold.send_replace(Some((filled.0 / 2, filled.0)));
    let answer = request_rebuild(&client, "READ_MODELS", "balances", WAIT)
        .await
        .expect("an answer");
    assert!(answer.accepted, "{answer:?}");
    support::wait_until(WAIT, "part of the rebuild to be committed", || {
        let client = client.clone();
        async move { checkpoint(&client, "RM_balances_V1_G1").await > filled.0 / 4 }
    })
    .await;

    // The crash: nothing more is committed, the rebuild is left half-built.
    handle.abort().await;
    let half = checkpoint(&client, "RM_balances_V1_G1").await;
    assert!(half > 0 && half <= filled.0 / 2, "half-built at {half}");
    let left = pointer(&client).await;
    assert_eq!(
        left.bucket, "RM_balances_V1",
        "readers stay on the live bucket"
    );
    assert_eq!(
        left.rebuild,
        answer.rebuild(),
        "the rebuild is still recorded"
    );
    let mut reader = ReadModel::<AccountRow>::open(client.clone(), "balances", &options)
        .await
        .expect("reader");
    assert_eq!(reader.pointer().bucket, "RM_balances_V1");
    assert_eq!(
        reader.get("account", "acc-9").await.expect("get").as_ref(),
        live_rows.get("account.r.acc-9")
    );
    assert_eq!(rows(&client, "RM_balances_V1").await, live_rows);

    // Started again, the runner finishes the rebuild from where it was, and switches.
    let last = repo
        .execute(&account(1), AccountCommand::Deposit(7))
        .await
        .expect("deposit")
        .last_sequence();
    let restarted = ReadModelRunner::start(&store, Balances::free(), options)
        .await
        .expect("restart");
    assert_eq!(
        restarted.bucket(),
        "RM_balances_V1",
        "the live bucket first"
    );
    switched(&restarted, "RM_balances_V1_G1").await;
    restarted.wait_for(last, WAIT).await.expect("caught up");
    let rebuilt = rows(&client, "RM_balances_V1_G1").await;
    assert_eq!(rebuilt, from_scratch(&client, &store, last).await);
    assert!(reader.refresh().await.expect("refresh"));
    assert_eq!(
        reader
            .get("account", "acc-1")
            .await
            .expect("get")
            .map(|r| r.sequence),
        Some(last.0)
    );
    restarted.shutdown().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_model_is_rebuilt_by_every_partition_and_switches_when_all_caught_up() {
    let (_server, client, store, repo) = support::bank_store().await;
    let last = fill(&repo, 120, 5).await;
    let view = PartitionedView::ensure(&store, 2).await.expect("view");
    let options = ReadModelOptions {
        retire_after: Duration::from_millis(200),
        ..ReadModelOptions::default()
    };
    let mut handles = Vec::new();
    for partition in 0..2 {
        let lease = Lease::new("balances", partition, 2, 1, "member-1");
        handles.push(
            ReadModelRunner::start_partition(
                &store,
                &view,
                Balances::free(),
                options.clone(),
                &lease,
            )
            .await
            .expect("a partition"),
        );
    }
    let reader = ReadModel::<AccountRow>::open(client.clone(), "balances", &options)
        .await
        .expect("reader");
    reader.wait_for(last, WAIT).await.expect("every partition");

    let answer = request_rebuild(&client, "READ_MODELS", "balances", WAIT)
        .await
        .expect("an answer");
    assert!(answer.accepted, "{answer:?}");
    assert_eq!(answer.partitions, Some(2));
    for handle in &handles {
        switched(handle, "RM_balances_V1_G1").await;
    }
    let live = pointer(&client).await;
    assert_eq!(
        (live.bucket.as_str(), live.generation),
        ("RM_balances_V1_G1", 1)
    );
    let rebuilt = rows(&client, "RM_balances_V1_G1").await;
    assert_eq!(rebuilt.len(), 120);
    assert_eq!(rebuilt, from_scratch(&client, &store, last).await);
    support::wait_until(WAIT, "the replaced bucket to be deleted", || {
        let client = client.clone();
        async move { !bucket_exists(&client, "RM_balances_V1").await }
    })
    .await;
    // Both partitions go on in the new bucket.
    let more = repo
        .execute(&account(0), AccountCommand::Deposit(3))
        .await
        .expect("deposit")
        .last_sequence();
    let mut reader = reader;
    reader.refresh().await.expect("refresh");
    reader.wait_for(more, WAIT).await.expect("every partition");
    for handle in handles {
        handle.shutdown().await.expect("clean stop");
    }
    // With no runner left, nothing answers.
    let none = request_rebuild(&client, "READ_MODELS", "balances", Duration::from_secs(5)).await;
    match none {
        Err(e @ ProjectionError::NotRunning { .. }) => assert_eq!(
            e.to_string(),
            "no runner of read model balances is running (nothing answers on \
             _CIM.rebuild.READ_MODELS.balances): start the service that runs it"
        ),
        other => panic!("{other:?}"),
    }
}
