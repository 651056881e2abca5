//! A read model worked as partitions: each partition's runner reads its share of the
//! partitioned view (`ReadModelRunner::start_partition`), sees each event as the event stream
//! holds it, commits its rows fenced on its own checkpoint key, resumes where its checkpoint says
//! in the view, moves its checkpoint on when it has nothing to read (so that readers, who take
//! the smallest checkpoint, are not held back), and a runner whose lease has moved on has its
//! commit refused.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use cim_nats::jetstream::{
    partition_of, JetStreamEventStore, KeyedProjection, PartitionedView, ReadModel,
    ReadModelHandle, ReadModelOptions, ReadModelRunner, Rows, StoreConfig,
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

/// Balances per account, table `account`. Refuses an event applied twice or skipped (versions
/// must follow each other), an event of another partition, and a subject of the view.
struct Balances {
    /// The partition this instance works, of how many.
    partition: Option<(u32, u32)>,
    /// Events after this sequence wait until the gate opens.
    hold: Option<(u64, watch::Receiver<bool>)>,
}

impl Balances {
    fn of(partition: u32, partitions: u32) -> Self {
        Self {
            partition: Some((partition, partitions)),
            hold: None,
        }
    }
}

fn refuse(event: &Envelope<AccountEvent>, reason: String) -> ProjectionError {
    ProjectionError::Apply {
        projection: "balances".into(),
        sequence: event.sequence().0,
        reason,
    }
}

async fn apply_balance(
    this: &Balances,
    event: &Envelope<AccountEvent>,
    rows: &mut Rows<'_, AccountRow>,
) -> Result<(), ProjectionError> {
    let id = event.aggregate_id().to_string();
    let subject = &event.stored.subject;
    if !subject.starts_with("bank.account.") || !subject.ends_with(&format!(".{id}")) {
        return Err(refuse(
            event,
            format!("subject {subject} is not the event's"),
        ));
    }
    if rows.sequence() != event.sequence() {
        return Err(refuse(
            event,
            "the rows' sequence is not the event's".into(),
        ));
    }
    if let Some((partition, partitions)) = this.partition {
        let of = partition_of(event.aggregate_id(), partitions);
        if of != partition {
            return Err(refuse(
                event,
                format!("an event of partition {of} reached partition {partition}"),
            ));
        }
    }
    if let Some((after, gate)) = &this.hold {
        if event.sequence().0 > *after {
            let mut gate = gate.clone();
            let _ = gate.wait_for(|open| *open).await;
        }
    }
    let mut row = rows.get("account", &id).await?.unwrap_or_default();
    let version = event.version();
    if version != row.version + 1 {
        return Err(refuse(
            event,
            format!(
                "account {id}: version {version} applied after {}",
                row.version
            ),
        ));
    }
    match &event.event {
        AccountEvent::Opened { .. } => {}
        AccountEvent::Deposited { amount, .. } => row.balance += amount,
        AccountEvent::Withdrawn { amount, .. } => row.balance -= amount,
    }
    row.events += 1;
    row.version = version;
    row.sequence = event.sequence().0;
    rows.put("account", &id, row)
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
        apply_balance(self, event, rows).await
    }
}

/// The same model under another name (a bucket of its own).
struct OtherBalances(Balances);

#[async_trait]
impl KeyedProjection for OtherBalances {
    type Event = AccountEvent;
    type Row = AccountRow;
    const NAME: &'static str = "other_balances";

    async fn apply(
        &self,
        event: &Envelope<AccountEvent>,
        rows: &mut Rows<'_, AccountRow>,
    ) -> Result<(), ProjectionError> {
        apply_balance(&self.0, event, rows).await
    }
}

/// What the rows must be: per account, the row its events make.
#[derive(Default)]
struct Book {
    rows: BTreeMap<String, AccountRow>,
    last: StreamSequence,
}

impl Book {
    async fn run(&mut self, repo: &Repository<Account>, i: usize, command: AccountCommand) {
        let id = account(i);
        let amount = match &command {
            AccountCommand::Deposit(amount) => *amount,
            _ => 0,
        };
        let outcome = repo.execute(&id, command).await.expect("command");
        let sequence = outcome.last_sequence();
        let row = self.rows.entry(id.to_string()).or_default();
        row.balance += amount;
        row.events += 1;
        row.version += 1;
        row.sequence = sequence.0;
        self.last = self.last.max(sequence);
    }

    /// Opens accounts `0..accounts` and deposits 1..=deposits on each.
    async fn fill(&mut self, repo: &Repository<Account>, accounts: usize, deposits: u64) {
        for i in 0..accounts {
            let owner = format!("owner {i}");
            self.run(repo, i, AccountCommand::Open { owner }).await;
        }
        for d in 1..=deposits {
            for i in 0..accounts {
                self.run(repo, i, AccountCommand::Deposit(d)).await;
            }
        }
    }

    /// Every row, exactly.
    async fn check(&self, reader: &ReadModel<AccountRow>) {
        for (id, want) in &self.rows {
            let row = reader.get("account", id).await.expect("get");
            assert_eq!(row.as_ref(), Some(want), "account {id}");
        }
        let mut ids = reader.ids("account").await.expect("ids");
        ids.sort();
        assert_eq!(ids, self.rows.keys().cloned().collect::<Vec<_>>());
    }
}

fn account(i: usize) -> AggregateId {
    AggregateId::new(format!("acc-{i}")).expect("id")
}

/// The accounts among `0..accounts` of partition `partition` of `partitions`.
fn accounts_of(accounts: usize, partition: u32, partitions: u32) -> Vec<usize> {
    (0..accounts)
        .filter(|i| partition_of(&account(*i), partitions) == partition)
        .collect()
}

/// A server, the bank's store with `accounts` accounts opened and `deposits` deposits made on
/// each, and its partitioned view of `partitions`. (Bind `_server` when taking it apart: the
/// server stops when it is dropped.)
struct Fixture {
    _server: cim_nats::testing::NatsServer,
    client: async_nats::Client,
    store: JetStreamEventStore,
    repo: Repository<Account>,
    book: Book,
    view: PartitionedView,
}

async fn fixture(accounts: usize, deposits: u64, partitions: u32) -> Fixture {
    let (server, client) = support::server().await;
    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("bank"))
        .await
        .expect("store");
    let repo = Repository::<Account>::new(store.clone());
    let mut book = Book::default();
    book.fill(&repo, accounts, deposits).await;
    let view = PartitionedView::ensure(&store, partitions)
        .await
        .expect("view");
    Fixture {
        _server: server,
        client,
        store,
        repo,
        book,
        view,
    }
}

fn lease(partition: u32, partitions: u32, epoch: u64) -> Lease {
    Lease::new(
        "balances",
        partition,
        partitions,
        epoch,
        format!("member-{epoch}"),
    )
}

async fn start(
    store: &JetStreamEventStore,
    view: &PartitionedView,
    partition: u32,
    epoch: u64,
) -> ReadModelHandle<Balances> {
    let partitions = view.partitions();
    ReadModelRunner::start_partition(
        store,
        view,
        Balances::of(partition, partitions),
        ReadModelOptions::default(),
        &lease(partition, partitions, epoch),
    )
    .await
    .expect("start a partition")
}

/// Every partition of the model, version 1.
async fn start_all(f: &Fixture) -> Vec<ReadModelHandle<Balances>> {
    let mut handles = Vec::new();
    for p in 0..f.view.partitions() {
        handles.push(start(&f.store, &f.view, p, 1).await);
    }
    handles
}

/// The model's typed reader, as another process opens it.
async fn open_reader(client: &async_nats::Client) -> ReadModel<AccountRow> {
    ReadModel::open(client.clone(), "balances", &ReadModelOptions::default())
        .await
        .expect("the first partition's runner made the model live")
}

/// The checkpoint of partition `partition`, as any KV client reads it.
async fn checkpoint(client: &async_nats::Client, partition: u32) -> serde_json::Value {
    let bucket = async_nats::jetstream::new(client.clone())
        .get_key_value("RM_balances_V1")
        .await
        .expect("bucket");
    let value = bucket
        .get(format!("_cim.checkpoint.{partition}"))
        .await
        .expect("get")
        .expect("a checkpoint");
    serde_json::from_slice(&value).expect("json")
}

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_read_model_partitions_build_exact_rows_resume_and_advance_when_idle() {
    const ACCOUNTS: usize = 200;
    const PARTITIONS: u32 = 8;
    let f = fixture(ACCOUNTS, 2, PARTITIONS).await;
    let mut handles: Vec<_> = start_all(&f).await.into_iter().map(Some).collect();
    let Fixture {
        client,
        store,
        repo,
        mut book,
        view,
        _server,
    } = f;
    let reader = open_reader(&client).await;
    reader.wait_for(book.last, WAIT).await.expect("caught up");
    book.check(&reader).await;
    for (p, handle) in handles.iter().enumerate() {
        let handle = handle.as_ref().expect("running");
        assert!(handle.is_live(), "partition {p}");
        assert!(handle.committed() >= book.last, "partition {p}");
        let lag = handle.lag();
        assert!(
            lag.read >= lag.committed && lag.read >= book.last,
            "{lag:?}"
        );
        let c = checkpoint(&client, p as u32).await;
        assert_eq!(
            (c["partition"].as_u64(), c["partitions"].as_u64()),
            (Some(p as u64), Some(8))
        );
        assert!(c["view_sequence"].as_u64().is_some(), "{c}");
    }

    // Partition 3 stops; events arrive for it and for partition 5, none for the others.
    handles[3]
        .take()
        .expect("running")
        .shutdown()
        .await
        .expect("clean stop");
    let (three, five) = (
        accounts_of(ACCOUNTS, 3, PARTITIONS),
        accounts_of(ACCOUNTS, 5, PARTITIONS),
    );
    assert!(!three.is_empty() && !five.is_empty());
    for &i in three.iter().chain(&five) {
        book.run(&repo, i, AccountCommand::Deposit(10)).await;
    }
    for &i in &three[..3] {
        book.run(&repo, i, AccountCommand::Deposit(7)).await;
    }
    // Partition 3 resumes (another epoch) where its checkpoint says in the view.
    handles[3] = Some(start(&store, &view, 3, 2).await);
    reader
        .wait_for(book.last, WAIT)
        .await
        .expect("caught up again");
    book.check(&reader).await;

    // Partition 0 had nothing to read: its checkpoint moved on to the view's last event all
    // the same, so that the model is not held back.
    let idle = handles[0].as_ref().expect("running");
    idle.wait_for(book.last, WAIT)
        .await
        .expect("idle partition");
    let c = checkpoint(&client, 0).await;
    assert!(c["sequence"].as_u64().unwrap() >= book.last.0, "{c}");
    assert!(c["view_sequence"].as_u64().is_some(), "{c}");
    assert_eq!(reader.checkpoint().await.expect("checkpoint"), book.last);

    // A checkpoint without a view position (an older runner's): partition 5 reads its view
    // from the beginning and skips what the checkpoint holds.
    handles[5]
        .take()
        .expect("running")
        .shutdown()
        .await
        .expect("clean stop");
    let bucket = async_nats::jetstream::new(client.clone())
        .get_key_value("RM_balances_V1")
        .await
        .expect("bucket");
    let mut old = checkpoint(&client, 5).await;
    old.as_object_mut().expect("object").remove("view_sequence");
    bucket
        .put(
            "_cim.checkpoint.5",
            serde_json::to_vec(&old).expect("json").into(),
        )
        .await
        .expect("put");
    for &i in &five[..2] {
        book.run(&repo, i, AccountCommand::Deposit(2)).await;
    }
    handles[5] = Some(start(&store, &view, 5, 2).await);
    reader
        .wait_for(book.last, WAIT)
        .await
        .expect("caught up again");
    book.check(&reader).await;
    assert!(checkpoint(&client, 5).await["view_sequence"]
        .as_u64()
        .is_some());

    for handle in handles.into_iter().flatten() {
        assert!(handle.error().is_none());
        handle.shutdown().await.expect("clean stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_read_model_partition_stale_runner_has_its_commit_refused() {
    const ACCOUNTS: usize = 40;
    const PARTITIONS: u32 = 4;
    let Fixture {
        client,
        store,
        repo,
        mut book,
        view,
        _server,
    } = fixture(ACCOUNTS, 1, PARTITIONS).await;
    // The runner of partition 1 that will be deposed holds the events after these.
    let (open_gate, gate) = watch::channel(false);
    let stale = ReadModelRunner::start_partition(
        &store,
        &view,
        Balances {
            partition: Some((1, PARTITIONS)),
            hold: Some((book.last.0, gate)),
        },
        ReadModelOptions::default(),
        &lease(1, PARTITIONS, 1),
    )
    .await
    .expect("start");
    let mut others = Vec::new();
    for p in [0, 2, 3] {
        others.push(start(&store, &view, p, 1).await);
    }
    let reader = open_reader(&client).await;
    reader.wait_for(book.last, WAIT).await.expect("caught up");
    book.check(&reader).await;

    // The partition changes hands before the first runner stops: the new runner commits the
    // new events; the old one, applying them late, is refused.
    let fresh = start(&store, &view, 1, 2).await;
    let ones = accounts_of(ACCOUNTS, 1, PARTITIONS);
    for &i in &ones {
        book.run(&repo, i, AccountCommand::Deposit(5)).await;
    }
    fresh
        .wait_for(book.last, WAIT)
        .await
        .expect("the new runner");
    reader.wait_for(book.last, WAIT).await.expect("caught up");
    book.check(&reader).await;
    let committed = checkpoint(&client, 1).await;

    open_gate.send(true).expect("gate");
    support::wait_until(WAIT, "the deposed runner to stop", || {
        let done = stale.is_finished();
        async move { done }
    })
    .await;
    let err = stale.shutdown().await.expect_err("refused");
    assert!(matches!(err, ProjectionError::Contended(_)), "{err}");
    // Nothing of it is stored: the checkpoint is the new runner's, the rows exact.
    assert_eq!(checkpoint(&client, 1).await, committed);
    book.check(&reader).await;

    // The new runner goes on.
    book.run(&repo, ones[0], AccountCommand::Deposit(3)).await;
    reader.wait_for(book.last, WAIT).await.expect("caught up");
    book.check(&reader).await;
    assert!(fresh.error().is_none());
    fresh.shutdown().await.expect("clean stop");
    for handle in others {
        handle.shutdown().await.expect("clean stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_read_model_partition_counts_that_differ_are_a_clear_error() {
    let Fixture {
        _server,
        store,
        book,
        view,
        ..
    } = fixture(10, 1, 4).await;

    // A lease that does not fit the view.
    let err = ReadModelRunner::start_partition(
        &store,
        &view,
        Balances::of(0, 8),
        ReadModelOptions::default(),
        &lease(0, 8, 1),
    )
    .await
    .expect_err("8 partitions of a view of 4");
    assert!(err.to_string().contains("view of 4 partitions"), "{err}");

    // A model run by one runner is one partition: not 4.
    let single = ReadModelRunner::start(
        &store,
        Balances {
            partition: None,
            hold: None,
        },
        ReadModelOptions::default(),
    )
    .await
    .expect("start");
    single.wait_for(book.last, WAIT).await.expect("caught up");
    single.shutdown().await.expect("clean stop");
    let err = ReadModelRunner::start_partition(
        &store,
        &view,
        Balances::of(2, 4),
        ReadModelOptions::default(),
        &lease(2, 4, 1),
    )
    .await
    .expect_err("a model of 1 partition");
    let text = err.to_string();
    assert!(
        text.contains("worked as 1 partitions") && text.contains("partition 2 of 4"),
        "{text}"
    );

    // A model worked as 4 partitions is not run by one runner.
    let mut handles = Vec::new();
    for p in 0..4 {
        let handle = ReadModelRunner::start_partition(
            &store,
            &view,
            OtherBalances(Balances::of(p, 4)),
            ReadModelOptions::default(),
            &lease(p, 4, 1),
        )
        .await
        .expect("start");
        handles.push(handle);
    }
    for handle in &handles {
        handle.wait_for(book.last, WAIT).await.expect("caught up");
    }
    let err = ReadModelRunner::start(
        &store,
        OtherBalances(Balances {
            partition: None,
            hold: None,
        }),
        ReadModelOptions::default(),
    )
    .await
    .expect_err("a model of 4 partitions");
    assert!(err.to_string().contains("worked as 4 partitions"), "{err}");
    for handle in handles {
        handle.shutdown().await.expect("clean stop");
    }
}

/// Version 2 of the model: the same rows, built beside version 1.
struct BalancesV2(Balances);

#[async_trait]
impl KeyedProjection for BalancesV2 {
    type Event = AccountEvent;
    type Row = AccountRow;
    const NAME: &'static str = "balances";
    const VERSION: u32 = 2;

    async fn apply(
        &self,
        event: &Envelope<AccountEvent>,
        rows: &mut Rows<'_, AccountRow>,
    ) -> Result<(), ProjectionError> {
        apply_balance(&self.0, event, rows).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_read_model_partitions_of_a_new_version_go_live_together() {
    const ACCOUNTS: usize = 60;
    const PARTITIONS: u32 = 4;
    let mut f = fixture(ACCOUNTS, 1, PARTITIONS).await;
    let v1 = start_all(&f).await;
    let mut reader = open_reader(&f.client).await;
    reader.wait_for(f.book.last, WAIT).await.expect("caught up");
    for &i in &accounts_of(ACCOUNTS, 2, PARTITIONS)[..2] {
        f.book.run(&f.repo, i, AccountCommand::Deposit(4)).await;
    }
    let (store, view, book) = (&f.store, &f.view, &f.book);

    // Version 2, partition by partition: it goes live when every partition has caught up.
    let mut v2 = Vec::new();
    for p in 0..PARTITIONS {
        let handle = ReadModelRunner::start_partition(
            store,
            view,
            BalancesV2(Balances::of(p, PARTITIONS)),
            ReadModelOptions::default(),
            &lease(p, PARTITIONS, 1),
        )
        .await
        .expect("start version 2");
        assert!(!handle.is_live());
        v2.push(handle);
    }
    support::wait_until(WAIT, "version 2 to go live", || {
        let live = v2.iter().all(ReadModelHandle::is_live);
        async move { live }
    })
    .await;
    assert!(reader.refresh().await.expect("refresh"));
    assert_eq!(reader.pointer().version, 2);
    reader.wait_for(book.last, WAIT).await.expect("caught up");
    book.check(&reader).await;
    support::wait_until(WAIT, "version 1 to stop", || {
        let stopped = v1.iter().all(ReadModelHandle::is_finished);
        async move { stopped }
    })
    .await;
    for handle in v1 {
        let err = handle.shutdown().await.expect_err("superseded");
        assert!(
            matches!(err, ProjectionError::Superseded { live: 2, .. }),
            "{err}"
        );
    }
    let err = ReadModelRunner::start_partition(
        store,
        view,
        Balances::of(0, PARTITIONS),
        ReadModelOptions::default(),
        &lease(0, PARTITIONS, 2),
    )
    .await
    .expect_err("an older version");
    assert!(
        matches!(
            err,
            ProjectionError::Superseded {
                version: 1,
                live: 2,
                ..
            }
        ),
        "{err}"
    );
    for handle in v2 {
        handle.shutdown().await.expect("clean stop");
    }
}
