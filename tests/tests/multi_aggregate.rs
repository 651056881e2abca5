//! Decisions across several aggregates on a real server: transfers between accounts under
//! concurrency (total unchanged, no account below zero, conflicts retried, the stream agrees),
//! checks on aggregates only read, and the check markers every reader passes over.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cim_nats::jetstream::subscriber::{DeliverPolicy, EventSubscriberBuilder};
use cim_nats::jetstream::{JetStreamEventStore, StoreConfig};
use cim_nats::subscriber::FnEventHandler;
use cim_nats::{AggregateId, EventStore, Repository, StoreErrorKind, StoredEvent};
use support::bank::{Account, AccountCommand, AccountError, AccountEvent};

const ACCOUNTS: usize = 20;
const OPENING: u64 = 1_000;

fn account(i: usize) -> AggregateId {
    AggregateId::new(format!("acc-{i}")).expect("id")
}

async fn setup() -> (
    cim_nats::testing::NatsServer,
    async_nats::Client,
    JetStreamEventStore,
    Arc<Repository<Account>>,
) {
    let (server, client) = support::server().await;
    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("bank"))
        .await
        .expect("store");
    let repo = Arc::new(Repository::<Account>::new(store.clone()).with_cache(1_000));
    for i in 0..ACCOUNTS {
        repo.execute(
            &account(i),
            AccountCommand::Open {
                owner: format!("owner {i}"),
            },
        )
        .await
        .expect("open");
        repo.execute(&account(i), AccountCommand::Deposit(OPENING))
            .await
            .expect("deposit");
    }
    (server, client, store, repo)
}

/// A count from the environment (the soak run's), or `default`, rounded down to a multiple of
/// 16 tasks.
fn count(var: &str, default: u64) -> u64 {
    let n = std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    n - n % 16
}

/// A transfer: a withdrawal from one account and a deposit to another, decided together.
fn transfer(
    [from, to]: [&Account; 2],
    amount: u64,
) -> Result<[Vec<AccountEvent>; 2], AccountError> {
    Ok([
        cim_nats::Aggregate::handle(from, AccountCommand::Withdraw(amount))?,
        cim_nats::Aggregate::handle(to, AccountCommand::Deposit(amount))?,
    ])
}

/// Balances rebuilt from every stored event, in stream order.
fn replayed(events: &[StoredEvent]) -> HashMap<String, i128> {
    let mut balances = HashMap::new();
    for stored in events {
        let event = stored.decode::<AccountEvent>().expect("an account event");
        let balance = balances
            .entry(stored.aggregate_id.as_str().to_owned())
            .or_insert(0i128);
        match event {
            AccountEvent::Opened { .. } => {}
            AccountEvent::Deposited { amount, .. } => *balance += i128::from(amount),
            AccountEvent::Withdrawn { amount, .. } => *balance -= i128::from(amount),
        }
        assert!(
            *balance >= 0,
            "{} below zero at {}",
            stored.aggregate_id,
            stored.stream_sequence
        );
    }
    balances
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_keep_the_total_and_the_stream_agrees() {
    let (server, _client, store, repo) = setup().await;
    // A second service on its own connection, as another process would be: decisions of one
    // repository are made one after another per aggregate, those of two conflict, and the
    // server's checks decide.
    let other_client = server.connect().await.expect("second client");
    let other_store = JetStreamEventStore::new(other_client, StoreConfig::for_domain("bank"))
        .await
        .expect("store");
    let other = Arc::new(Repository::<Account>::new(other_store).with_cache(1_000));
    const TASKS: u64 = 16;
    // 2,000 here; `cargo xtask soak` runs 10,000.
    let transfers = count("CIM_SOAK_TRANSFERS", 2_000);
    let decisions = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let repo = Arc::clone(if t % 2 == 0 { &repo } else { &other });
        let (decisions, refused) = (Arc::clone(&decisions), Arc::clone(&refused));
        tasks.push(tokio::spawn(async move {
            // A small deterministic generator per task.
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (t + 1);
            let mut next = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            for _ in 0..transfers / TASKS {
                let from = (next() % ACCOUNTS as u64) as usize;
                let mut to = (next() % ACCOUNTS as u64) as usize;
                if to == from {
                    to = (to + 1) % ACCOUNTS;
                }
                let amount = 1 + next() % 400;
                let decisions = Arc::clone(&decisions);
                let result = repo
                    .execute_across(
                        [&account(from), &account(to)],
                        move |states| {
                            decisions.fetch_add(1, Ordering::Relaxed);
                            transfer(states, amount)
                        },
                        1_000,
                    )
                    .await;
                match result {
                    Ok([debit, credit]) => {
                        assert_eq!(debit.events.len(), 1);
                        assert_eq!(credit.events.len(), 1);
                    }
                    Err(cim_nats::CommandError::Rejected(AccountError::InsufficientFunds {
                        ..
                    })) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => panic!("transfer failed: {e}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let decisions = decisions.load(Ordering::Relaxed);
    let refused = refused.load(Ordering::Relaxed);
    // Conflicts between the two services happened, and each was decided again (no transfer
    // failed with one): more decisions than transfers.
    assert!(
        decisions > transfers,
        "{decisions} decisions for {transfers} transfers"
    );

    let events = store.read_all().await.expect("read");
    let stored_transfers = events
        .iter()
        .filter(|e| e.event_type == "Withdrawn" || e.event_type.ends_with("withdrawn"))
        .count() as u64;
    let balances = replayed(&events);
    assert_eq!(
        stored_transfers + refused,
        transfers,
        "each transfer stored once or refused"
    );
    let total: i128 = balances.values().sum();
    assert_eq!(
        total,
        i128::from(OPENING) * ACCOUNTS as i128,
        "money is neither made nor lost"
    );
    for i in 0..ACCOUNTS {
        let loaded = repo.load(&account(i)).await.expect("load");
        assert_eq!(
            i128::from(loaded.state.balance),
            balances[account(i).as_str()],
            "acc-{i}: the stream and the state agree"
        );
    }
    eprintln!(
        "{transfers} transfers by {TASKS} tasks: {stored_transfers} stored, {refused} refused \
         for funds, {} decisions",
        decisions
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_on_an_aggregate_only_read_holds_the_decision_and_readers_pass_over_its_marker() {
    let (_server, client, store, repo) = setup().await;
    let (a, b) = (account(0), account(1));
    // Deposit to A only while B's balance is what the decision read: B is checked, not written.
    let [to_a, read_b] = repo
        .execute_across(
            [&a, &b],
            |[a, b]| {
                Ok([
                    cim_nats::Aggregate::handle(a, AccountCommand::Deposit(b.balance))?,
                    Vec::new(),
                ])
            },
            0,
        )
        .await
        .expect("decided");
    assert_eq!(to_a.events.len(), 1);
    assert!(read_b.append.is_none());
    assert_eq!(read_b.version, 2);
    // The check rode on a marker: the stream's last message, on bank._cim.check.
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js.get_stream("BANK_EVENTS").await.expect("stream");
    let last = stream.info().await.expect("info").state.last_sequence;
    let marker = stream.get_raw_message(last).await.expect("marker");
    assert_eq!(marker.subject.as_str(), "bank._cim.check");

    // B moves between the read and the write (another writer, while the decision is made):
    // the decision is refused whole, naming B.
    let other = Arc::new(Repository::<Account>::new(store.clone()));
    let decide_while_b_moves = |other: Arc<Repository<Account>>| {
        let mut first = true;
        move |[a, b]: [&Account; 2]| {
            if std::mem::take(&mut first) {
                tokio::task::block_in_place(|| {
                    tokio::runtime::Handle::current().block_on(async {
                        other
                            .execute(&account(1), AccountCommand::Deposit(7))
                            .await
                            .expect("B moves elsewhere");
                    })
                });
            }
            Ok([
                cim_nats::Aggregate::handle(a, AccountCommand::Deposit(b.balance))?,
                Vec::new(),
            ])
        }
    };
    let before = repo.load(&a).await.expect("load").version;
    let err = repo
        .execute_across([&a, &b], decide_while_b_moves(Arc::clone(&other)), 0)
        .await
        .expect_err("B moved");
    assert!(err.is_conflict(), "{err}");
    match &err {
        cim_nats::CommandError::Store(e) => match e.kind() {
            StoreErrorKind::WrongExpectedVersion { aggregate_id, .. } => {
                assert_eq!(aggregate_id, &b)
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other}"),
    }
    assert_eq!(
        repo.load(&a).await.expect("load").version,
        before,
        "nothing written to A"
    );
    // With a retry, the decision is made again on B as it now is.
    let [to_a, _] = repo
        .execute_across([&a, &b], decide_while_b_moves(other), 1)
        .await
        .expect("decided again");
    let b_now = repo.load(&b).await.expect("load").state.balance;
    assert_eq!(b_now, OPENING + 14);
    assert_eq!(
        to_a.events,
        vec![AccountEvent::Deposited {
            id: match &to_a.events[0] {
                AccountEvent::Deposited { id, .. } => *id,
                other => panic!("{other:?}"),
            },
            amount: b_now
        }]
    );

    // Every reader passes over the marker: the store's whole-stream read, a durable
    // subscriber on bank.>, and the aggregate loads.
    let events = store.read_all().await.expect("read all");
    assert!(events
        .iter()
        .all(|e| e.subject.starts_with("bank.account.")));
    let seen = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&seen);
    let subscriber = EventSubscriberBuilder::new()
        .client(client.clone())
        .subject("bank.>")
        .handler(Arc::new(FnEventHandler::new(move |_event: StoredEvent| {
            counted.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })))
        .durable("every-event")
        .deliver_policy(DeliverPolicy::All)
        .build()
        .expect("subscriber");
    let handle = subscriber.subscribe().await.expect("subscribed");
    let total = events.len() as u64;
    cim_nats::testing::wait_until(Duration::from_secs(10), "every event handled", || {
        let n = seen.load(Ordering::Relaxed);
        async move { n >= total }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        seen.load(Ordering::Relaxed),
        total,
        "the marker is not an event"
    );
    handle.shutdown().await.expect("clean stop");
    if let Ok(mut dead) = js.get_stream("DLQ").await {
        assert_eq!(
            dead.info().await.expect("info").state.messages,
            0,
            "nothing dead-lettered"
        );
    }
}

/// Transfers go on across the death (`SIGKILL`) of the stream's leader on a 3-node cluster:
/// each transfer is stored once or not at all (a write whose answer was lost is sent again
/// unchanged and recognised), and the total holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_survive_a_killed_stream_leader() {
    use cim_nats::testing::NatsCluster;
    const WAIT: Duration = Duration::from_secs(60);
    let mut cluster = NatsCluster::start(3).unwrap_or_else(|e| panic!("{e}"));
    cluster
        .wait_for_jetstream(WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let urls = cluster.urls();
    let client = async_nats::connect(&urls[..]).await.expect("connect");
    let config = StoreConfig::for_domain("bank").with_replicas(3);
    let deadline = std::time::Instant::now() + WAIT;
    let store = loop {
        match JetStreamEventStore::new(client.clone(), config.clone()).await {
            Ok(store) => break store,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("store not ready yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("store: {e}"),
        }
    };
    let repo = Arc::new(Repository::<Account>::new(store.clone()).with_cache(100));
    for i in 0..ACCOUNTS {
        repo.execute_with_retry(
            &account(i),
            move || AccountCommand::Open {
                owner: format!("owner {i}"),
            },
            3,
        )
        .await
        .expect("open");
        repo.execute_with_retry(&account(i), || AccountCommand::Deposit(OPENING), 3)
            .await
            .expect("deposit");
    }
    let done = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    const TOTAL: u64 = 400;
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let (repo, done, refused) = (Arc::clone(&repo), Arc::clone(&done), Arc::clone(&refused));
        tasks.push(tokio::spawn(async move {
            let mut x = 0x2545_F491_4F6C_DD1Du64 ^ (t + 1);
            let mut next = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            while done.load(Ordering::Relaxed) + refused.load(Ordering::Relaxed) < TOTAL {
                let from = (next() % ACCOUNTS as u64) as usize;
                let to = (from + 1 + (next() % (ACCOUNTS as u64 - 1)) as usize) % ACCOUNTS;
                let amount = 1 + next() % 300;
                match repo
                    .execute_across(
                        [&account(from), &account(to)],
                        move |states| transfer(states, amount),
                        1_000,
                    )
                    .await
                {
                    Ok(_) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(cim_nats::CommandError::Rejected(_)) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => panic!("a transfer failed across the election: {e}"),
                }
            }
        }));
    }
    cim_nats::testing::wait_until(WAIT, "a quarter of the transfers", || {
        let n = done.load(Ordering::Relaxed);
        async move { n >= TOTAL / 4 }
    })
    .await;
    let js = async_nats::jetstream::new(client.clone());
    let leader = js
        .get_stream(store.stream_name())
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .cluster
        .clone()
        .and_then(|c| c.leader)
        .expect("a leader");
    let victim = leader
        .trim_start_matches('n')
        .parse::<usize>()
        .expect("n<i>")
        - 1;
    let at_kill = done.load(Ordering::Relaxed);
    tokio::task::block_in_place(|| cluster.server_mut(victim).expect("server").kill());
    for task in tasks {
        task.await.expect("task");
    }
    let done = done.load(Ordering::Relaxed);
    assert!(done > at_kill, "transfers went on after the kill");

    let events = store.read_all().await.expect("read");
    let withdrawals = events
        .iter()
        .filter(|e| e.event_type == "Withdrawn")
        .count() as u64;
    assert_eq!(withdrawals, done, "each transfer stored exactly once");
    let balances = replayed(&events);
    let total: i128 = balances.values().sum();
    assert_eq!(total, i128::from(OPENING) * ACCOUNTS as i128);
    eprintln!(
        "{done} transfers ({} refused for funds), leader {leader} killed after {at_kill}",
        refused.load(Ordering::Relaxed)
    );
}
