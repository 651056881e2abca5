//! Projections on a real server: resume after a crash with each event applied once, catch up
//! then follow live, rebuild on a version bump, unreadable events by policy.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use cim_nats::jetstream::{JetStreamEventStore, ProjectionOptions, ProjectionRunner, StoreConfig};
use cim_nats::{
    AggregateId, Envelope, EventId, EventStoreExt, ExpectedVersion, OnUnreadable, Projection,
    ProjectionError, StreamSequence,
};
use serde::{Deserialize, Serialize};
use support::bank::AccountEvent;

/// Counts what it applies and remembers each sequence, to prove each event is applied once and
/// in order.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Counter {
    applied: u64,
    deposits: u64,
    last: u64,
    seen: BTreeSet<u64>,
}

impl Counter {
    fn count(&mut self, event: &Envelope<AccountEvent>) -> Result<(), ProjectionError> {
        let seq = event.sequence().0;
        if seq <= self.last {
            return Err(ProjectionError::Apply {
                projection: "counter".into(),
                sequence: seq,
                reason: format!("out of order after {}", self.last),
            });
        }
        self.last = seq;
        self.applied += 1;
        self.seen.insert(seq);
        if let AccountEvent::Deposited { amount, .. } = &event.event {
            self.deposits += amount;
        }
        Ok(())
    }
}

#[async_trait]
impl Projection for Counter {
    type Event = AccountEvent;
    const NAME: &'static str = "counter";

    async fn apply(&mut self, event: &Envelope<AccountEvent>) -> Result<(), ProjectionError> {
        self.count(event)
    }
}

/// The same read model, version 2.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CounterV2(Counter);

#[async_trait]
impl Projection for CounterV2 {
    type Event = AccountEvent;
    const NAME: &'static str = "counter";
    const VERSION: u32 = 2;

    async fn apply(&mut self, event: &Envelope<AccountEvent>) -> Result<(), ProjectionError> {
        self.0.count(event)
    }
}

async fn publish(store: &JetStreamEventStore, accounts: u64, per_account: u64) -> StreamSequence {
    let mut last = StreamSequence(0);
    for a in 0..accounts {
        let id = AggregateId::new(format!("acc-{a}-{}", uuid::Uuid::now_v7())).unwrap();
        let mut events = vec![AccountEvent::Opened {
            id: EventId::new(),
            owner: format!("owner {a}"),
        }];
        events.extend((1..per_account).map(|_| AccountEvent::Deposited {
            id: EventId::new(),
            amount: 1,
        }));
        for chunk in events.chunks(100) {
            let version = store.aggregate_version(&id).await.unwrap().unwrap_or(0);
            let r = store
                .append_events(&id, ExpectedVersion::from_loaded(version), chunk, None)
                .await
                .unwrap();
            last = r.last_sequence().unwrap();
        }
    }
    last
}

use cim_nats::EventStore;

fn options() -> ProjectionOptions {
    ProjectionOptions {
        checkpoint_every: 100,
        checkpoint_interval: Duration::from_millis(50),
        ..ProjectionOptions::default()
    }
}

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_projection_resumes_and_applies_each_event_once() {
    let (_server, client) = support::server().await;
    let store = JetStreamEventStore::new(client, StoreConfig::for_domain("bank"))
        .await
        .unwrap();
    let last = publish(&store, 20, 100).await; // 2,000 events
    assert_eq!(last.0, 2000);

    let first = ProjectionRunner::start::<Counter>(&store, options())
        .await
        .unwrap();
    first.wait_for(StreamSequence(500), WAIT).await.unwrap();
    let at_kill = first.applied().0;
    first.abort().await; // a crash: no last checkpoint

    let second = ProjectionRunner::start::<Counter>(&store, options())
        .await
        .unwrap();
    let resumed_at = second.applied().0;
    second.wait_for(last, WAIT).await.unwrap();
    {
        let counter = second.read().await;
        assert_eq!(counter.applied, 2000, "each event applied exactly once");
        assert_eq!(counter.seen.len(), 2000);
        assert_eq!(counter.deposits, 20 * 99);
    }
    println!(
        "killed at about {at_kill}, resumed after {resumed_at}, finished at {}",
        second.applied()
    );
    second.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_during_catch_up_are_applied_in_order_once() {
    let (_server, client) = support::server().await;
    let store = JetStreamEventStore::new(client, StoreConfig::for_domain("bank"))
        .await
        .unwrap();
    publish(&store, 10, 100).await;
    let runner = ProjectionRunner::start::<Counter>(&store, options())
        .await
        .unwrap();
    // Publish while it catches up.
    let last = publish(&store, 5, 100).await;
    runner.wait_for(last, WAIT).await.unwrap();
    let counter = runner.read().await;
    assert_eq!(counter.applied, 1500);
    assert_eq!(counter.seen.len(), 1500);
    assert_eq!(counter.last, last.0);
    drop(counter);
    runner.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_bump_rebuilds_from_the_start() {
    let (_server, client) = support::server().await;
    let store = JetStreamEventStore::new(client, StoreConfig::for_domain("bank"))
        .await
        .unwrap();
    let last = publish(&store, 3, 100).await;
    let v1 = ProjectionRunner::start::<Counter>(&store, options())
        .await
        .unwrap();
    v1.wait_for(last, WAIT).await.unwrap();
    v1.shutdown().await.unwrap();
    // Version 1 resumes at the end: nothing more to apply.
    let again = ProjectionRunner::start::<Counter>(&store, options())
        .await
        .unwrap();
    assert_eq!(again.applied(), last);
    assert_eq!(again.read().await.applied, 300);
    again.shutdown().await.unwrap();
    // Version 2 of the same projection starts over and sees everything once.
    let v2 = ProjectionRunner::start::<CounterV2>(&store, options())
        .await
        .unwrap();
    assert_eq!(v2.applied(), StreamSequence(0));
    v2.wait_for(last, WAIT).await.unwrap();
    assert_eq!(v2.read().await.0.applied, 300);
    v2.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_events_stop_or_are_skipped_and_recorded() {
    let (_server, client) = support::server().await;
    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("bank"))
        .await
        .unwrap();
    publish(&store, 1, 3).await;
    // A foreign client writes something that is not an event.
    async_nats::jetstream::new(client)
        .publish("bank.account.deposited.x", "junk".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let last = publish(&store, 1, 2).await;

    let stop = ProjectionRunner::start::<Counter>(&store, options())
        .await
        .unwrap();
    let err = stop.wait_for(last, WAIT).await.unwrap_err();
    // The waiter is told why the runner stopped.
    match &err {
        ProjectionError::Stopped { cause, .. } => assert!(
            matches!(&**cause, ProjectionError::Unreadable { source, .. }
                if matches!(source.kind(), cim_nats::StoreErrorKind::Decode { sequence: 4, .. })),
            "{err}"
        ),
        other => panic!("expected Stopped with the cause, got {other:?}"),
    }
    assert!(err.to_string().contains("sequence 4"), "{err}");
    drop(err);
    assert_eq!(
        stop.applied(),
        StreamSequence(3),
        "stopped before the bad event"
    );
    match stop.shutdown().await.unwrap_err() {
        ProjectionError::Unreadable { source, .. } => {
            assert!(source.to_string().contains("sequence 4"), "{source}");
        }
        other => panic!("{other}"),
    }

    let skip = ProjectionRunner::start::<Counter>(
        &store,
        ProjectionOptions {
            bucket: "OTHER_CHECKPOINTS".into(),
            on_unreadable: OnUnreadable::SkipAndRecord,
            ..options()
        },
    )
    .await
    .unwrap();
    skip.wait_for(last, WAIT).await.unwrap();
    assert_eq!(skip.read().await.applied, 5);
    let skipped = skip.skipped();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].sequence, 4);
    skip.shutdown().await.unwrap();
}

/// A second read model on the same events: balances per account.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Balances {
    by_account: std::collections::BTreeMap<String, u64>,
}

#[async_trait]
impl Projection for Balances {
    type Event = AccountEvent;
    const NAME: &'static str = "balances";

    async fn apply(&mut self, event: &Envelope<AccountEvent>) -> Result<(), ProjectionError> {
        let entry = self
            .by_account
            .entry(event.aggregate_id().to_string())
            .or_default();
        if let AccountEvent::Deposited { amount, .. } = &event.event {
            *entry += amount;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_projections_run_at_once_and_read_their_own_writes() {
    let (_server, client) = support::server().await;
    let store = JetStreamEventStore::new(client, StoreConfig::for_domain("bank"))
        .await
        .unwrap();
    publish(&store, 4, 50).await;
    let counter = ProjectionRunner::start::<Counter>(&store, options())
        .await
        .unwrap();
    let balances = ProjectionRunner::start::<Balances>(&store, options())
        .await
        .unwrap();
    // A new write, then read it back through both projections.
    let last = publish(&store, 1, 10).await;
    counter.wait_for(last, WAIT).await.unwrap();
    balances.wait_for(last, WAIT).await.unwrap();
    assert_eq!(counter.read().await.applied, 210);
    let b = balances.read().await;
    assert_eq!(b.by_account.len(), 5);
    assert!(b.by_account.values().all(|v| *v == 49 || *v == 9));
    drop(b);
    counter.shutdown().await.unwrap();
    balances.shutdown().await.unwrap();
}

/// Holds the [`Gated`] projection's runner before it applies sequence 600, until opened.
static GATE: std::sync::OnceLock<tokio::sync::watch::Sender<bool>> = std::sync::OnceLock::new();

fn gate() -> &'static tokio::sync::watch::Sender<bool> {
    GATE.get_or_init(|| tokio::sync::watch::channel(false).0)
}

/// [`Counter`] that waits at sequence 600 until the gate opens.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Gated(Counter);

#[async_trait]
impl Projection for Gated {
    type Event = AccountEvent;
    const NAME: &'static str = "gated";

    async fn apply(&mut self, event: &Envelope<AccountEvent>) -> Result<(), ProjectionError> {
        if event.sequence().0 == 600 {
            let mut open = gate().subscribe();
            let _ = open.wait_for(|open| *open).await;
        }
        self.0.count(event)
    }
}

/// Warnings logged by the code under test, as `message field=value ...` lines.
static WARNINGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Records every warning into [`WARNINGS`].
struct RecordWarnings;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RecordWarnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Line(String);
        impl tracing::field::Visit for Line {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!(" {}={value:?}", field.name()));
            }
        }
        if *event.metadata().level() == tracing::Level::WARN {
            let mut line = Line(String::new());
            event.record(&mut line);
            WARNINGS.lock().unwrap().push(line.0);
        }
    }
}

fn record_warnings() {
    use tracing_subscriber::layer::SubscriberExt;
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let subscriber = tracing_subscriber::registry().with(RecordWarnings);
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber per test run");
    });
}

/// The server goes away while the runner has progress to checkpoint, until a checkpoint write
/// has failed: the write is retried until the server is back, and the runner ends with each
/// event applied once, without stopping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_write_is_retried_across_a_server_restart() {
    record_warnings();
    let (mut server, client) = support::server().await;
    let store = JetStreamEventStore::new(client, StoreConfig::for_domain("bank"))
        .await
        .unwrap();
    let last = publish(&store, 10, 100).await; // 1,000 events
    let runner = ProjectionRunner::start::<Gated>(&store, options())
        .await
        .unwrap();
    // Waiting at 600, with 599 applied (checkpointed every 100 events).
    runner.wait_for(StreamSequence(599), WAIT).await.unwrap();
    server.kill();
    gate().send_replace(true);
    // The runner applies what it holds and tries to checkpoint with the server down; the server
    // stays down until that write has failed (after its request's timeout) and is to be retried.
    support::wait_until(WAIT, "a failed checkpoint write of `gated`", || {
        let failed = WARNINGS.lock().unwrap().iter().any(|w| {
            w.contains("checkpoint not written; retrying") && w.contains("projection=gated")
        });
        async move { failed }
    })
    .await;
    assert!(
        !runner.is_finished(),
        "the runner stopped while the server was down"
    );
    server.restart().unwrap();
    runner.wait_for(last, WAIT).await.unwrap();
    {
        let gated = runner.read().await;
        assert_eq!(gated.0.applied, 1000, "each event applied exactly once");
        assert_eq!(gated.0.seen.len(), 1000);
    }
    runner.shutdown().await.unwrap();

    // The last checkpoint holds every event: a new runner starts there.
    let again = ProjectionRunner::start::<Gated>(&store, options())
        .await
        .unwrap();
    assert_eq!(again.applied(), last);
    again.shutdown().await.unwrap();
}
