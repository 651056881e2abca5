//! The repository on a real server: load, decide, append; conflicts; snapshots in KV; cache.

mod support;

use std::sync::Arc;

use cim_nats::harness::AggregateTest;
use cim_nats::jetstream::{JetStreamEventStore, KvSnapshotStore, StoreConfig};
use cim_nats::{
    AggregateId, EventStore, EventStoreExt, ExpectedVersion, InMemorySnapshotStore,
    MessageIdentity, Repository, Snapshot, SnapshotStore, StreamSequence,
};
use support::bank::{Account, AccountCommand, AccountError, AccountEvent};

#[test]
fn the_harness_checks_decisions() {
    AggregateTest::<Account>::given_no_events()
        .when(AccountCommand::Deposit(5))
        .then_expect_error(AccountError::NotOpen);
    let state = AggregateTest::<Account>::given(vec![AccountEvent::Opened {
        id: cim_nats::EventId::new(),
        owner: "ann".into(),
    }])
    .when(AccountCommand::Deposit(5))
    .then_expect_events(|events| {
        assert!(matches!(
            events,
            [AccountEvent::Deposited { amount: 5, .. }]
        ));
    });
    assert_eq!(state.balance, 5);
    AggregateTest::<Account>::given(vec![AccountEvent::Opened {
        id: cim_nats::EventId::new(),
        owner: "ann".into(),
    }])
    .when(AccountCommand::Withdraw(1))
    .then_expect_error(AccountError::InsufficientFunds {
        balance: 0,
        asked: 1,
    });
}

async fn setup() -> (
    cim_nats::testing::NatsServer,
    async_nats::Client,
    Arc<dyn EventStore>,
) {
    let (server, client) = support::server().await;
    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("bank"))
        .await
        .unwrap();
    (server, client, Arc::new(store))
}

#[tokio::test]
async fn commands_load_decide_and_append() {
    let (_server, _client, store) = setup().await;
    let repo = Repository::<Account>::new(Arc::clone(&store));
    let id = AggregateId::new("acc-1").unwrap();
    let who = MessageIdentity::new_from_user("teller");
    let out = repo
        .execute_as(
            &id,
            AccountCommand::Open {
                owner: "ann".into(),
            },
            &who,
        )
        .await
        .unwrap();
    assert_eq!(out.version, 1);
    repo.execute_as(&id, AccountCommand::Deposit(100), &who)
        .await
        .unwrap();
    let err = repo
        .execute_as(&id, AccountCommand::Withdraw(500), &who)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        cim_nats::CommandError::Rejected(AccountError::InsufficientFunds {
            balance: 100,
            asked: 500
        })
    ));
    let loaded = repo.load(&id).await.unwrap();
    assert_eq!((loaded.version, loaded.state.balance), (2, 100));
    let stored = store.read_aggregate(&id, 0).await.unwrap();
    assert_eq!(stored[1].correlation_id, Some(who.correlation_id));
    assert_eq!(stored[1].actor.as_deref(), Some("teller"));
}

#[tokio::test]
async fn a_stale_copy_conflicts_and_a_retry_decides_again() {
    let (_server, _client, store) = setup().await;
    let a = Repository::<Account>::new(Arc::clone(&store)).with_cache(100);
    let b = Repository::<Account>::new(Arc::clone(&store)).with_cache(100);
    let id = AggregateId::new("acc-2").unwrap();
    a.execute(&id, AccountCommand::Open { owner: "bo".into() })
        .await
        .unwrap();
    a.execute(&id, AccountCommand::Deposit(10)).await.unwrap();
    // b loads (and caches) the aggregate, then a changes it.
    b.execute(&id, AccountCommand::Deposit(1)).await.unwrap();
    a.execute(&id, AccountCommand::Withdraw(10))
        .await
        .unwrap_err(); // a's cached copy is stale: conflict
    let err = b.execute(&id, AccountCommand::Withdraw(11)).await.unwrap();
    assert_eq!(err.version, 4);
    // a retries with a fresh load: the balance is now 0, so the withdrawal is refused.
    let err = a
        .execute_with_retry(&id, || AccountCommand::Withdraw(10), 3)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        cim_nats::CommandError::Rejected(AccountError::InsufficientFunds { balance: 0, .. })
    ));
}

#[tokio::test]
async fn a_conflict_is_reported_as_such() {
    let (_server, _client, store) = setup().await;
    let a = Repository::<Account>::new(Arc::clone(&store)).with_cache(10);
    let id = AggregateId::new("acc-3").unwrap();
    a.execute(&id, AccountCommand::Open { owner: "cy".into() })
        .await
        .unwrap();
    // Someone else appends behind the cache's back.
    store
        .append_events(
            &id,
            ExpectedVersion::Exact(1),
            &[AccountEvent::Deposited {
                id: cim_nats::EventId::new(),
                amount: 3,
            }],
            None,
        )
        .await
        .unwrap();
    let err = a
        .execute(&id, AccountCommand::Deposit(1))
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err}");
    let ok = a
        .execute_with_retry(&id, || AccountCommand::Deposit(1), 1)
        .await
        .unwrap();
    assert_eq!(ok.version, 3);
}

#[tokio::test]
async fn snapshots_in_kv_shorten_loads_and_other_schemas_are_ignored() {
    let (_server, client, store) = setup().await;
    let snapshots: Arc<dyn SnapshotStore> = Arc::new(
        KvSnapshotStore::new(client.clone(), "BANK_SNAPSHOTS")
            .await
            .unwrap(),
    );
    let repo =
        Repository::<Account>::new(Arc::clone(&store)).with_snapshots(Arc::clone(&snapshots), 10);
    let id = AggregateId::new("acc-4").unwrap();
    repo.execute(&id, AccountCommand::Open { owner: "di".into() })
        .await
        .unwrap();
    for _ in 0..24 {
        repo.execute(&id, AccountCommand::Deposit(2)).await.unwrap();
    }
    let snap = snapshots
        .load("account", &id)
        .await
        .unwrap()
        .expect("a snapshot");
    assert_eq!(snap.version, 20, "a snapshot every 10 events");
    let loaded = repo.load(&id).await.unwrap();
    assert_eq!(
        (
            loaded.version,
            loaded.state.balance,
            loaded.state.operations
        ),
        (25, 48, 25)
    );

    // A snapshot of another schema (or that does not decode) is ignored, not misread.
    snapshots
        .save(Snapshot {
            schema: 99,
            version: 25,
            state: bytes::Bytes::from_static(
                b"{\"owner\":\"evil\",\"balance\":1,\"operations\":1}",
            ),
            ..snap.clone()
        })
        .await
        .unwrap();
    let loaded = repo.load(&id).await.unwrap();
    assert_eq!((loaded.version, loaded.state.balance), (25, 48));
    snapshots
        .save(Snapshot {
            state: bytes::Bytes::from_static(b"[1,2,3]"),
            sequence: StreamSequence(snap.sequence.0 + 100),
            ..snap
        })
        .await
        .unwrap();
    let loaded = repo.load(&id).await.unwrap();
    assert_eq!((loaded.version, loaded.state.balance), (25, 48));
}

#[tokio::test]
async fn repositories_work_on_the_in_memory_store_too() {
    let store: Arc<dyn EventStore> = Arc::new(cim_nats::memory::InMemoryEventStore::new());
    let repo = Repository::<Account>::new(store)
        .with_snapshots(Arc::new(InMemorySnapshotStore::new()), 3)
        .with_cache(4);
    let id = AggregateId::new("m").unwrap();
    repo.execute(&id, AccountCommand::Open { owner: "ed".into() })
        .await
        .unwrap();
    for i in 0..10 {
        repo.execute(&id, AccountCommand::Deposit(i)).await.unwrap();
    }
    repo.forget(&id);
    assert_eq!(repo.load(&id).await.unwrap().state.balance, 45);
}

/// An aggregate whose events name their aggregate.
mod tagged {
    use cim_nats::{Aggregate, NatsEvent};
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, NatsEvent)]
    #[nats_event(domain = "bank", aggregate = "tag")]
    pub(crate) enum TagEvent {
        #[nats_event(operation = "set")]
        Set {
            #[nats_event(aggregate_id)]
            owner: String,
        },
    }

    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    pub(crate) struct Tag;

    impl Aggregate for Tag {
        type Event = TagEvent;
        type Command = String;
        type Error = std::convert::Infallible;
        const TYPE: &'static str = "tag";

        fn handle(&self, owner: String) -> Result<Vec<TagEvent>, Self::Error> {
            Ok(vec![TagEvent::Set { owner }])
        }

        fn apply(&mut self, _: &TagEvent) {}
    }
}

#[tokio::test]
async fn events_naming_another_aggregate_are_refused() {
    let store: Arc<dyn EventStore> = Arc::new(cim_nats::memory::InMemoryEventStore::new());
    let repo = Repository::<tagged::Tag>::new(Arc::clone(&store));
    let id = AggregateId::new("t1").unwrap();
    repo.execute(&id, "t1".to_owned()).await.unwrap();
    let err = repo.execute(&id, "t2".to_owned()).await.unwrap_err();
    match err {
        cim_nats::CommandError::Store(e) => {
            assert!(e.to_string().contains("names aggregate t2"), "{e}");
        }
        other => panic!("{other}"),
    }
    assert_eq!(store.read_all().await.unwrap().len(), 1);
}

/// An aggregate whose events carry the identity of what caused them.
mod caused {
    use cim_nats::{Aggregate, MessageIdentity, NatsEvent};
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, NatsEvent)]
    #[nats_event(domain = "bank", aggregate = "audit")]
    pub(crate) enum AuditEvent {
        #[nats_event(operation = "noted")]
        Noted {
            #[nats_event(identity)]
            identity: MessageIdentity,
        },
    }

    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    pub(crate) struct Audit;

    impl Aggregate for Audit {
        type Event = AuditEvent;
        type Command = MessageIdentity;
        type Error = std::convert::Infallible;
        const TYPE: &'static str = "audit";

        fn handle(&self, identity: MessageIdentity) -> Result<Vec<AuditEvent>, Self::Error> {
            Ok(vec![AuditEvent::Noted { identity }])
        }

        fn apply(&mut self, _: &AuditEvent) {}
    }
}

#[tokio::test]
async fn an_identity_an_event_carries_is_kept() {
    let store: Arc<dyn EventStore> = Arc::new(cim_nats::memory::InMemoryEventStore::new());
    let repo = Repository::<caused::Audit>::new(Arc::clone(&store));
    let id = AggregateId::new("a1").unwrap();
    // The event was caused by something else (e.g. another domain's event) ...
    let upstream = MessageIdentity::new_from_user("other-domain");
    let own =
        MessageIdentity::caused_by(upstream.correlation_id, cim_nats::EventId::new(), "auditor");
    // ... and the command that records it has its own identity.
    let command = MessageIdentity::new_from_user("ops");
    repo.execute_as(&id, own.clone(), &command).await.unwrap();
    let stored = &store.read_aggregate(&id, 0).await.unwrap()[0];
    assert_eq!(stored.correlation_id, Some(own.correlation_id));
    assert_eq!(stored.causation_id, Some(own.causation_id));
    assert_eq!(stored.actor.as_deref(), Some("auditor"));
}

/// Counts what the repository asks of the store it wraps.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn EventStore>,
    /// Reads of events: (after_version) of each.
    reads: std::sync::Mutex<Vec<u64>>,
    version_checks: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl EventStore for Counting {
    async fn append(
        &self,
        aggregate_id: &AggregateId,
        expected: ExpectedVersion,
        events: Vec<cim_nats::NewEvent>,
    ) -> Result<cim_nats::AppendResult, cim_nats::StoreError> {
        self.inner.append(aggregate_id, expected, events).await
    }

    async fn read_aggregate(
        &self,
        aggregate_id: &AggregateId,
        after_version: u64,
    ) -> Result<Vec<cim_nats::StoredEvent>, cim_nats::StoreError> {
        self.reads.lock().unwrap().push(after_version);
        self.inner.read_aggregate(aggregate_id, after_version).await
    }

    async fn read_aggregate_routed(
        &self,
        aggregate_id: &AggregateId,
        routing_subjects: &[&str],
        after_version: u64,
        after_sequence: StreamSequence,
    ) -> Result<Vec<cim_nats::StoredEvent>, cim_nats::StoreError> {
        self.reads.lock().unwrap().push(after_version);
        self.inner
            .read_aggregate_routed(
                aggregate_id,
                routing_subjects,
                after_version,
                after_sequence,
            )
            .await
    }

    async fn aggregate_version(
        &self,
        aggregate_id: &AggregateId,
    ) -> Result<Option<u64>, cim_nats::StoreError> {
        self.version_checks
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.aggregate_version(aggregate_id).await
    }

    fn stream(&self, from: cim_nats::ReadFrom) -> cim_nats::EventStream<'_> {
        self.inner.stream(from)
    }

    async fn last_sequence(&self) -> Result<StreamSequence, cim_nats::StoreError> {
        self.inner.last_sequence().await
    }
}

#[tokio::test]
async fn cached_loads_check_one_event_and_read_only_what_is_new() {
    let (_server, _client, store) = setup().await;
    let counting = Arc::new(Counting {
        inner: Arc::clone(&store),
        reads: std::sync::Mutex::new(Vec::new()),
        version_checks: std::sync::atomic::AtomicUsize::new(0),
    });
    let repo = Repository::<Account>::new(counting.clone() as Arc<dyn EventStore>).with_cache(16);
    let id = AggregateId::new("cached-1").unwrap();

    // Not cached yet: a full load, which is then cached.
    let first = repo.load_cached(&id).await.unwrap();
    assert_eq!(first.version, 0);
    assert_eq!(*counting.reads.lock().unwrap(), vec![0]);
    repo.execute(
        &id,
        AccountCommand::Open {
            owner: "flo".into(),
        },
    )
    .await
    .unwrap();
    for amount in 1..=4 {
        repo.execute(&id, AccountCommand::Deposit(amount))
            .await
            .unwrap();
    }

    // Cached and current: one check of the last event, no events read.
    counting.reads.lock().unwrap().clear();
    let checks = counting
        .version_checks
        .load(std::sync::atomic::Ordering::SeqCst);
    let cached = repo.load_cached(&id).await.unwrap();
    assert_eq!((cached.version, cached.state.balance), (5, 10));
    assert!(counting.reads.lock().unwrap().is_empty());
    assert_eq!(
        counting
            .version_checks
            .load(std::sync::atomic::Ordering::SeqCst),
        checks + 1
    );

    // Changed elsewhere: only the events after the cached version are read.
    let other = Repository::<Account>::new(Arc::clone(&store));
    other
        .execute(&id, AccountCommand::Deposit(100))
        .await
        .unwrap();
    other
        .execute(&id, AccountCommand::Withdraw(30))
        .await
        .unwrap();
    let caught_up = repo.load_cached(&id).await.unwrap();
    assert_eq!(*counting.reads.lock().unwrap(), vec![5]);
    let full = Repository::<Account>::new(Arc::clone(&store))
        .load(&id)
        .await
        .unwrap();
    assert_eq!(
        (caught_up.version, caught_up.sequence),
        (full.version, full.sequence)
    );
    assert_eq!(caught_up.state, full.state);
    assert_eq!(caught_up.state.balance, 80);

    // The caught-up copy is what the cache now holds: a command on it needs no reload.
    counting.reads.lock().unwrap().clear();
    repo.execute(&id, AccountCommand::Withdraw(80))
        .await
        .unwrap();
    assert!(counting.reads.lock().unwrap().is_empty());
    assert_eq!(repo.load_cached(&id).await.unwrap().state.balance, 0);
}

#[tokio::test]
async fn cached_loads_on_the_in_memory_store_agree_with_full_loads() {
    let store: Arc<dyn EventStore> = Arc::new(cim_nats::memory::InMemoryEventStore::new());
    let repo = Repository::<Account>::new(Arc::clone(&store)).with_cache(2);
    let other = Repository::<Account>::new(Arc::clone(&store));
    let ids: Vec<AggregateId> = (0..5)
        .map(|i| AggregateId::new(format!("m{i}")).unwrap())
        .collect();
    for (i, id) in ids.iter().enumerate() {
        repo.execute(
            id,
            AccountCommand::Open {
                owner: "gus".into(),
            },
        )
        .await
        .unwrap();
        for amount in 0..=i as u64 {
            // Alternate writers, so that cached copies fall behind.
            let writer = if amount % 2 == 0 { &repo } else { &other };
            writer
                .execute_with_retry(id, move || AccountCommand::Deposit(amount), 2)
                .await
                .unwrap();
        }
    }
    for id in &ids {
        let cached = repo.load_cached(id).await.unwrap();
        let full = other.load(id).await.unwrap();
        assert_eq!((cached.version, &cached.state), (full.version, &full.state));
    }
}
