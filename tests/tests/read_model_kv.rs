//! Read models kept per key in JetStream KV: rows and checkpoint committed in one atomic batch
//! fenced on the checkpoint key, read back by a plain KV client; a runner killed at random points
//! resumes with every event applied once; a second runner writes nothing; a new version is built
//! beside the live one and readers switch when it has caught up; a row too large is a clear
//! error before anything is sent.

mod support;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cim_nats::jetstream::{
    JetStreamEventStore, KeyedProjection, ReadModel, ReadModelOptions, ReadModelRunner, Rows,
    StoreConfig,
};
use cim_nats::{AggregateId, Envelope, ProjectionError, Repository, StreamSequence};
use serde::{Deserialize, Serialize};
use support::bank::{Account, AccountCommand, AccountEvent};

/// A row of the balances model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Balance {
    owner: String,
    balance: u64,
    operations: u64,
}

/// Balances per account (table `account`) and accounts per owner (table `owner`, ids with
/// characters KV keys do not take).
#[derive(Default)]
struct Balances;

async fn apply_balance(
    event: &Envelope<AccountEvent>,
    rows: &mut Rows<'_, Balance>,
    scale: u64,
) -> Result<(), ProjectionError> {
    let id = event.aggregate_id().to_string();
    match &event.event {
        AccountEvent::Opened { owner, .. } => {
            rows.put(
                "account",
                &id,
                Balance {
                    owner: owner.clone(),
                    balance: 0,
                    operations: 1,
                },
            )?;
            rows.put(
                "owner",
                &format!("{owner} <{id}>"),
                Balance {
                    owner: id.clone(),
                    balance: 0,
                    operations: 0,
                },
            )?;
        }
        AccountEvent::Deposited { amount, .. } | AccountEvent::Withdrawn { amount, .. } => {
            let mut row =
                rows.get("account", &id)
                    .await?
                    .ok_or_else(|| ProjectionError::Apply {
                        projection: "balances".into(),
                        sequence: event.sequence().0,
                        reason: format!("no account {id}"),
                    })?;
            if matches!(event.event, AccountEvent::Deposited { .. }) {
                row.balance += amount * scale;
            } else {
                row.balance -= amount * scale;
            }
            row.operations += 1;
            rows.put("account", &id, row)?;
        }
    }
    Ok(())
}

#[async_trait]
impl KeyedProjection for Balances {
    type Event = AccountEvent;
    type Row = Balance;
    const NAME: &'static str = "balances";

    async fn apply(
        &self,
        event: &Envelope<AccountEvent>,
        rows: &mut Rows<'_, Balance>,
    ) -> Result<(), ProjectionError> {
        apply_balance(event, rows, 1).await
    }
}

/// Version 2 of the model: balances in cents.
struct BalancesInCents;

#[async_trait]
impl KeyedProjection for BalancesInCents {
    type Event = AccountEvent;
    type Row = Balance;
    const NAME: &'static str = "balances";
    const VERSION: u32 = 2;

    async fn apply(
        &self,
        event: &Envelope<AccountEvent>,
        rows: &mut Rows<'_, Balance>,
    ) -> Result<(), ProjectionError> {
        apply_balance(event, rows, 100).await
    }
}

fn account(i: usize) -> AggregateId {
    AggregateId::new(format!("acc-{i}")).expect("id")
}

/// Opens `accounts` accounts and makes `deposits` deposits of 1..=deposits on each; the last
/// sequence.
async fn fill(repo: &Repository<Account>, accounts: usize, deposits: u64) -> StreamSequence {
    let mut last = StreamSequence(0);
    for i in 0..accounts {
        let outcome = repo
            .execute(
                &account(i),
                AccountCommand::Open {
                    owner: format!("owner {i}"),
                },
            )
            .await
            .expect("open");
        last = last.max(outcome.last_sequence());
    }
    for d in 1..=deposits {
        for i in 0..accounts {
            let outcome = repo
                .execute(&account(i), AccountCommand::Deposit(d))
                .await
                .expect("deposit");
            last = last.max(outcome.last_sequence());
        }
    }
    last
}

fn expected(deposits: u64) -> (u64, u64) {
    (deposits * (deposits + 1) / 2, deposits + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_and_checkpoint_commit_together_and_any_kv_client_reads_them() {
    let (_server, client, store, repo) = support::bank_store().await;
    let last = fill(&repo, 600, 3).await;
    let handle = ReadModelRunner::start(&store, Balances, ReadModelOptions::default())
        .await
        .expect("start");
    handle
        .wait_for(last, Duration::from_secs(30))
        .await
        .expect("caught up");
    assert!(handle.is_live());
    let lag = handle.lag();
    assert!(lag.committed >= last && lag.read >= last, "{lag:?}");

    // A plain KV client: the pointer names the bucket; rows are JSON under documented keys.
    let js = async_nats::jetstream::new(client.clone());
    let pointer = js
        .get_key_value("READ_MODELS")
        .await
        .expect("pointers")
        .get("balances")
        .await
        .expect("get")
        .expect("a pointer");
    let pointer: serde_json::Value = serde_json::from_slice(&pointer).expect("json");
    assert_eq!(pointer["bucket"], "RM_balances_V1");
    assert_eq!(pointer["version"], 1);
    let bucket = js.get_key_value("RM_balances_V1").await.expect("bucket");
    let row: Balance = serde_json::from_slice(
        &bucket
            .get("account.r.acc-7")
            .await
            .expect("get")
            .expect("a row"),
    )
    .expect("json");
    let (balance, operations) = expected(3);
    assert_eq!(
        row,
        Balance {
            owner: "owner 7".into(),
            balance,
            operations
        }
    );
    let checkpoint: serde_json::Value = serde_json::from_slice(
        &bucket
            .get("_cim.checkpoint.0")
            .await
            .expect("get")
            .expect("a checkpoint"),
    )
    .expect("json");
    assert!(checkpoint["sequence"].as_u64().unwrap() >= last.0);
    assert_eq!(checkpoint["partition"], 0);
    assert_eq!(checkpoint["partitions"], 1);
    // The owner index has ids with a space and angle brackets: hex-encoded keys.
    let owner_key = format!(
        "owner.h.x{}",
        "owner 7 <acc-7>"
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    assert!(bucket.get(&owner_key).await.expect("get").is_some());

    // The typed reader, as another process would use it.
    let reader =
        ReadModel::<Balance>::open(client.clone(), "balances", &ReadModelOptions::default())
            .await
            .expect("reader");
    let mut ids = reader.ids("account").await.expect("ids");
    ids.sort();
    assert_eq!(ids.len(), 600);
    assert_eq!(reader.ids("owner").await.expect("ids").len(), 600);
    assert!(ids.contains(&"acc-599".to_owned()));
    assert_eq!(
        reader
            .get("account", "acc-599")
            .await
            .expect("get")
            .map(|r| r.balance),
        Some(balance)
    );
    assert!(reader.checkpoint().await.expect("checkpoint") >= last);

    // Read your own writes from another process: commit, then wait through the reader.
    let outcome = repo
        .execute(&account(3), AccountCommand::Withdraw(2))
        .await
        .expect("withdraw");
    reader
        .wait_for(outcome.last_sequence(), Duration::from_secs(10))
        .await
        .expect("seen");
    assert_eq!(
        reader
            .get("account", "acc-3")
            .await
            .expect("get")
            .map(|r| r.balance),
        Some(balance - 2)
    );
    // 600 accounts opened at once changed 1,200 rows: more than one commit holds, so the first
    // commits were split at event boundaries; the stream holds each row once (history 1).
    let info = bucket.status().await.expect("status");
    assert_eq!(info.values(), 1 + 1200);
    handle.shutdown().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_killed_at_random_points_resumes_with_every_event_applied_once() {
    let (_server, client, store, repo) = support::bank_store().await;
    const ACCOUNTS: usize = 20;
    const DEPOSITS: u64 = 30;
    let options = ReadModelOptions {
        commit_every: 7,
        commit_interval: Duration::from_millis(5),
        ..ReadModelOptions::default()
    };
    let writer = {
        let repo = Arc::clone(&repo);
        tokio::spawn(async move { fill(&repo, ACCOUNTS, DEPOSITS).await })
    };
    // A seeded sequence of kill points (xorshift), between 5 and 60 ms after each start.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        5 + seed % 56
    };
    let mut resumed_from = Vec::new();
    for _ in 0..20 {
        let handle = ReadModelRunner::start(&store, Balances, options.clone())
            .await
            .expect("start");
        resumed_from.push(handle.committed().0);
        tokio::time::sleep(Duration::from_millis(next())).await;
        handle.abort().await;
    }
    let last = writer.await.expect("writer");
    let handle = ReadModelRunner::start(&store, Balances, options.clone())
        .await
        .expect("start");
    handle
        .wait_for(last, Duration::from_secs(30))
        .await
        .expect("caught up");
    let reader = ReadModel::<Balance>::open(client, "balances", &options)
        .await
        .expect("reader");
    let (balance, operations) = expected(DEPOSITS);
    for i in 0..ACCOUNTS {
        let row = reader
            .get("account", &format!("acc-{i}"))
            .await
            .expect("get")
            .expect("a row");
        assert_eq!(
            (row.balance, row.operations),
            (balance, operations),
            "acc-{i}"
        );
    }
    assert!(
        resumed_from.windows(2).any(|w| w[1] > w[0]) && resumed_from.iter().any(|&s| s > 0),
        "the runners resumed from checkpoints, not from the start: {resumed_from:?}"
    );
    println!("20 kills; the runners resumed from {resumed_from:?}");
    handle.shutdown().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_runner_on_the_same_model_stops_and_writes_nothing() {
    let (_server, client, store, repo) = support::bank_store().await;
    let options = ReadModelOptions {
        commit_interval: Duration::from_millis(5),
        ..ReadModelOptions::default()
    };
    let first = fill(&repo, 5, 2).await;
    let a = ReadModelRunner::start(&store, Balances, options.clone())
        .await
        .expect("a");
    let b = ReadModelRunner::start(&store, Balances, options.clone())
        .await
        .expect("b");
    let mut last = first;
    for d in 0..20u64 {
        let outcome = repo
            .execute(&account((d % 5) as usize), AccountCommand::Deposit(1))
            .await
            .expect("deposit");
        last = outcome.last_sequence();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    support::wait_until(Duration::from_secs(20), "one runner to stop", || {
        let stopped = a.is_finished() || b.is_finished();
        async move { stopped }
    })
    .await;
    let (winner, loser) = if a.is_finished() { (b, a) } else { (a, b) };
    let err = loser.shutdown().await.expect_err("the loser stops");
    assert!(matches!(err, ProjectionError::Contended(_)), "{err}");
    winner
        .wait_for(last, Duration::from_secs(20))
        .await
        .expect("the winner goes on");
    let reader = ReadModel::<Balance>::open(client, "balances", &options)
        .await
        .expect("reader");
    let mut total = 0;
    for i in 0..5 {
        let row = reader
            .get("account", &format!("acc-{i}"))
            .await
            .expect("get")
            .expect("a row");
        assert_eq!(row.operations, 3 + 4, "acc-{i}: every event counted once");
        total += row.balance;
    }
    assert_eq!(total, 5 * 3 + 20);
    winner.shutdown().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_builds_beside_the_live_one_and_readers_switch_when_it_caught_up() {
    let (_server, client, store, repo) = support::bank_store().await;
    let options = ReadModelOptions {
        retire_after: Duration::from_millis(300),
        ..ReadModelOptions::default()
    };
    let last = fill(&repo, 300, 10).await;
    let v1 = ReadModelRunner::start(&store, Balances, options.clone())
        .await
        .expect("v1");
    v1.wait_for(last, Duration::from_secs(30))
        .await
        .expect("v1");
    let mut reader = ReadModel::<Balance>::open(client.clone(), "balances", &options)
        .await
        .expect("reader");
    let (balance, _) = expected(10);

    let v2 = ReadModelRunner::start(&store, BalancesInCents, options.clone())
        .await
        .expect("v2");
    assert!(!v2.is_live(), "v2 builds beside v1");
    // Queries are answered throughout, from v1, until the switch.
    let mut answered_by_v1 = 0;
    while !v2.is_live() {
        reader.refresh().await.expect("refresh");
        let row = reader
            .get("account", "acc-42")
            .await
            .expect("get")
            .expect("row");
        if reader.pointer().version == 1 {
            assert_eq!(row.balance, balance);
            answered_by_v1 += 1;
        } else {
            assert_eq!(row.balance, balance * 100);
        }
        assert!(v2.error().is_none(), "{:?}", v2.error());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(answered_by_v1 > 0);
    assert!(v2.committed() >= last, "switched only once caught up");
    reader.refresh().await.expect("refresh");
    assert_eq!(reader.pointer().version, 2, "the pointer moved");
    assert_eq!(
        reader
            .get("account", "acc-42")
            .await
            .expect("get")
            .map(|r| r.balance),
        Some(balance * 100)
    );
    let js = async_nats::jetstream::new(client);
    support::wait_until(
        Duration::from_secs(10),
        "the old version's bucket to be deleted",
        || {
            let js = js.clone();
            async move { js.get_key_value("RM_balances_V1").await.is_err() }
        },
    )
    .await;
    // v1's runner saw the pointer move and stopped by itself, saying why.
    support::wait_until(Duration::from_secs(10), "v1 to stop", || {
        let finished = v1.is_finished();
        async move { finished }
    })
    .await;
    assert!(!v1.is_live());
    assert!(
        matches!(
            v1.shutdown().await,
            Err(ProjectionError::Superseded {
                version: 1,
                live: 2,
                ..
            })
        ),
        "v1 ends replaced by v2"
    );
    v2.shutdown().await.expect("v2 stops cleanly");
    // A runner of the old version refuses to start.
    let restarted = ReadModelRunner::start(&store, Balances, options).await;
    assert!(matches!(
        restarted,
        Err(ProjectionError::Superseded {
            version: 1,
            live: 2,
            ..
        })
    ));
}

/// A model whose rows grow with every deposit: one of 2 MB is over the server's 1 MiB.
struct Hoarder;

#[async_trait]
impl KeyedProjection for Hoarder {
    type Event = AccountEvent;
    type Row = String;
    const NAME: &'static str = "hoarder";

    async fn apply(
        &self,
        event: &Envelope<AccountEvent>,
        rows: &mut Rows<'_, String>,
    ) -> Result<(), ProjectionError> {
        let size = match event.event {
            AccountEvent::Deposited { amount, .. } => amount as usize,
            _ => 10,
        };
        rows.put("blob", event.aggregate_id().as_str(), "x".repeat(size))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_too_large_stops_the_runner_naming_the_key_and_sends_nothing_of_it() {
    let (_server, client, store, repo) = support::bank_store().await;
    let id = account(1);
    repo.execute(&id, AccountCommand::Open { owner: "o".into() })
        .await
        .expect("open");
    let big = repo
        .execute(&id, AccountCommand::Deposit(2_000_000))
        .await
        .expect("deposit");
    let handle = ReadModelRunner::start(&store, Hoarder, ReadModelOptions::default())
        .await
        .expect("start");
    let err = handle
        .wait_for(big.last_sequence(), Duration::from_secs(20))
        .await
        .expect_err("the row cannot be stored");
    let text = err.to_string();
    drop(err);
    assert!(
        text.contains("blob.r.acc-1")
            && text.contains("bytes")
            && text.contains(&big.last_sequence().0.to_string()),
        "{text}"
    );
    let reader = ReadModel::<String>::open(client, "hoarder", &ReadModelOptions::default())
        .await
        .expect("reader");
    assert!(
        reader.checkpoint().await.expect("checkpoint") < big.last_sequence(),
        "nothing of the event is committed"
    );
    assert!(matches!(
        handle.shutdown().await,
        Err(ProjectionError::Apply { .. })
    ));
}

/// A model whose events change as many rows as they say.
struct Fanout;

#[async_trait]
impl KeyedProjection for Fanout {
    type Event = AccountEvent;
    type Row = u64;
    const NAME: &'static str = "fanout";

    async fn apply(
        &self,
        event: &Envelope<AccountEvent>,
        rows: &mut Rows<'_, u64>,
    ) -> Result<(), ProjectionError> {
        let n = match event.event {
            AccountEvent::Deposited { amount, .. } => amount,
            _ => 0,
        };
        for i in 0..n {
            rows.put("row", &i.to_string(), event.sequence().0)?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_changing_999_rows_commits_in_one_batch_and_one_changing_1000_stops() {
    let (_server, client, store, repo) = support::bank_store().await;
    let id = account(1);
    repo.execute(&id, AccountCommand::Open { owner: "o".into() })
        .await
        .expect("open");
    let fits = repo
        .execute(&id, AccountCommand::Deposit(999))
        .await
        .expect("deposit");
    let handle = ReadModelRunner::start(&store, Fanout, ReadModelOptions::default())
        .await
        .expect("start");
    handle
        .wait_for(fits.last_sequence(), Duration::from_secs(20))
        .await
        .expect("999 rows and the checkpoint: one batch of 1,000 messages");
    let reader = ReadModel::<u64>::open(client, "fanout", &ReadModelOptions::default())
        .await
        .expect("reader");
    assert_eq!(reader.ids("row").await.expect("ids").len(), 999);
    let too_many = repo
        .execute(&id, AccountCommand::Deposit(1000))
        .await
        .expect("deposit");
    let err = handle
        .wait_for(too_many.last_sequence(), Duration::from_secs(20))
        .await
        .expect_err("1,000 rows cannot be one commit");
    assert!(err.to_string().contains("changes 1000 rows"), "{err}");
    drop(err);
    assert_eq!(
        reader.checkpoint().await.expect("checkpoint"),
        fits.last_sequence()
    );
    assert_eq!(
        reader.get("row", "0").await.expect("get"),
        Some(fits.last_sequence().0),
        "nothing of the refused event is stored"
    );
    let _ = handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_the_user_may_not_publish_stops_the_runner_naming_the_bucket() {
    let server = cim_nats::testing::NatsServerBuilder::new()
        .config(
            "authorization {\n  users: [\n    { user: admin, password: admin }\n    \
             { user: limited, password: limited, permissions: { publish: { deny: \
             [\"$KV.RM_balances_V1.>\"] } } }\n  ]\n}",
        )
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let connect = |user: &'static str| {
        let url = server.url();
        async move {
            async_nats::ConnectOptions::with_user_and_password(user.into(), user.into())
                .connect(url)
                .await
                .expect("connect")
        }
    };
    let admin = JetStreamEventStore::new(connect("admin").await, StoreConfig::for_domain("bank"))
        .await
        .expect("store");
    let repo = Repository::<Account>::new(admin);
    let last = fill(&repo, 2, 1).await;
    let limited =
        JetStreamEventStore::new(connect("limited").await, StoreConfig::for_domain("bank"))
            .await
            .expect("store");
    let started = std::time::Instant::now();
    let handle = ReadModelRunner::start(&limited, Balances, ReadModelOptions::default())
        .await
        .expect("start");
    let err = handle
        .wait_for(last, Duration::from_secs(60))
        .await
        .expect_err("the rows cannot be written");
    let text = err.to_string();
    assert!(
        text.contains("RM_balances_V1") && text.to_lowercase().contains("permission"),
        "{text}"
    );
    println!(
        "refused in {:.1} s: {text}",
        started.elapsed().as_secs_f64()
    );
}

/// A model worked as several partitions (here written by a plain KV client, as a runner of
/// another language would): readers see the smallest of the partitions' checkpoints, and a
/// single runner refuses to work it as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_model_reflects_its_slowest_partition() {
    let (_server, client, store, _repo) = support::bank_store().await;
    let js = async_nats::jetstream::new(client.clone());
    let kv = |bucket: &str| async_nats::jetstream::kv::Config {
        bucket: bucket.to_owned(),
        ..Default::default()
    };
    let pointers = js
        .create_key_value(kv("READ_MODELS"))
        .await
        .expect("pointers");
    let bucket = js
        .create_key_value(kv("RM_balances_V1"))
        .await
        .expect("bucket");
    pointers
        .put(
            "balances",
            r#"{"bucket":"RM_balances_V1","version":1}"#.into(),
        )
        .await
        .expect("pointer");
    let put_checkpoint = |partition: u32, sequence: u64| {
        let bucket = bucket.clone();
        async move {
            let value = serde_json::json!({"name": "balances", "version": 1,
                "partition": partition, "partitions": 2, "sequence": sequence});
            bucket
                .put(
                    format!("_cim.checkpoint.{partition}"),
                    serde_json::to_vec(&value).expect("json").into(),
                )
                .await
                .expect("checkpoint");
        }
    };
    put_checkpoint(0, 30).await;
    let reader = ReadModel::<Balance>::open(client, "balances", &ReadModelOptions::default())
        .await
        .expect("reader");
    assert_eq!(
        reader.checkpoint().await.expect("checkpoint"),
        StreamSequence(0)
    );
    put_checkpoint(1, 12).await;
    assert_eq!(
        reader.checkpoint().await.expect("checkpoint"),
        StreamSequence(12)
    );
    let waiting = tokio::spawn(async move {
        reader
            .wait_for(StreamSequence(20), Duration::from_secs(10))
            .await
    });
    put_checkpoint(1, 25).await;
    waiting
        .await
        .expect("join")
        .expect("both partitions past 20");
    let refused = ReadModelRunner::start(&store, Balances, ReadModelOptions::default())
        .await
        .expect_err("a single runner does not work a partitioned model");
    assert!(refused.to_string().contains("2 partitions"), "{refused}");
}
