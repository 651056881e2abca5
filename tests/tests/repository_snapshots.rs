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
        .execute(
            &id,
            AccountCommand::Open {
                owner: "ann".into(),
            },
            Some(&who),
        )
        .await
        .unwrap();
    assert_eq!(out.version, 1);
    repo.execute(&id, AccountCommand::Deposit(100), Some(&who))
        .await
        .unwrap();
    let err = repo
        .execute(&id, AccountCommand::Withdraw(500), Some(&who))
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
    a.execute(&id, AccountCommand::Open { owner: "bo".into() }, None)
        .await
        .unwrap();
    a.execute(&id, AccountCommand::Deposit(10), None)
        .await
        .unwrap();
    // b loads (and caches) the aggregate, then a changes it.
    b.execute(&id, AccountCommand::Deposit(1), None)
        .await
        .unwrap();
    a.execute(&id, AccountCommand::Withdraw(10), None)
        .await
        .unwrap_err(); // a's cached copy is stale: conflict
    let err = b
        .execute(&id, AccountCommand::Withdraw(11), None)
        .await
        .unwrap();
    assert_eq!(err.version, 4);
    // a retries with a fresh load: the balance is now 0, so the withdrawal is refused.
    let err = a
        .execute_with_retry(&id, || AccountCommand::Withdraw(10), None, 3)
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
    a.execute(&id, AccountCommand::Open { owner: "cy".into() }, None)
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
        .execute(&id, AccountCommand::Deposit(1), None)
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err}");
    let ok = a
        .execute_with_retry(&id, || AccountCommand::Deposit(1), None, 1)
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
    repo.execute(&id, AccountCommand::Open { owner: "di".into() }, None)
        .await
        .unwrap();
    for _ in 0..24 {
        repo.execute(&id, AccountCommand::Deposit(2), None)
            .await
            .unwrap();
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
    repo.execute(&id, AccountCommand::Open { owner: "ed".into() }, None)
        .await
        .unwrap();
    for i in 0..10 {
        repo.execute(&id, AccountCommand::Deposit(i), None)
            .await
            .unwrap();
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

    #[derive(Debug, Default, Serialize, Deserialize)]
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
    repo.execute(&id, "t1".to_owned(), None).await.unwrap();
    let err = repo.execute(&id, "t2".to_owned(), None).await.unwrap_err();
    match err {
        cim_nats::CommandError::Store(e) => {
            assert!(e.to_string().contains("carries aggregate id t2"), "{e}");
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

    #[derive(Debug, Default, Serialize, Deserialize)]
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
    repo.execute(&id, own.clone(), Some(&command))
        .await
        .unwrap();
    let stored = &store.read_aggregate(&id, 0).await.unwrap()[0];
    assert_eq!(stored.correlation_id, Some(own.correlation_id));
    assert_eq!(stored.causation_id, Some(own.causation_id));
    assert_eq!(stored.actor.as_deref(), Some("auditor"));
}
