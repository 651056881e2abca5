//! Subscriptions that used to fail silently: a typed handler's subject with a typo, and a new
//! durable consumer that started after the events it was made for.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cim_nats::jetstream::subscriber::{DeliverPolicy, EventSubscriberBuilder};
use cim_nats::subscriber::FnEventHandler;
use cim_nats::{
    AggregateId, Envelope, HandlerError, Repository, StoredEvent, SubscriberErrorKind, TypedHandler,
};
use support::bank::{Account, AccountCommand, AccountEvent};

fn typed(
    seen: Arc<Mutex<Vec<u64>>>,
) -> TypedHandler<
    AccountEvent,
    impl Fn(Envelope<AccountEvent>) -> std::future::Ready<Result<(), HandlerError>> + Send + Sync,
> {
    TypedHandler::<AccountEvent, _>::new(move |e: Envelope<AccountEvent>| {
        seen.lock().unwrap().push(e.sequence().0);
        std::future::ready(Ok(()))
    })
}

#[tokio::test]
async fn a_typed_handler_refuses_a_subject_none_of_its_events_has_naming_the_nearest() {
    let (_server, client) = support::server().await;
    let refused = EventSubscriberBuilder::new()
        .client(client.clone())
        .subject("bank.account.depositted.*")
        .handler(typed(Arc::default()))
        .build()
        .expect_err("a typo in the operation");
    match refused.kind() {
        SubscriberErrorKind::InvalidConfig(why) => {
            assert!(why.contains("bank.account.depositted.*"), "{why}");
            assert!(
                why.contains("nearest is \"bank.account.deposited.*\""),
                "{why}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Another domain's subjects are none of its events either.
    assert!(EventSubscriberBuilder::new()
        .client(client.clone())
        .subject("shop.>")
        .handler(typed(Arc::default()))
        .build()
        .is_err());
    // Real subjects and wildcards over them are taken.
    for subject in [
        "bank.>",
        "bank.account.>",
        "bank.*.opened.*",
        "bank.account.withdrawn.acc-1",
    ] {
        EventSubscriberBuilder::new()
            .client(client.clone())
            .subject(subject)
            .handler(typed(Arc::default()))
            .build()
            .unwrap_or_else(|e| panic!("{subject}: {e}"));
    }
    // An untyped handler reads anything: no check.
    EventSubscriberBuilder::new()
        .client(client)
        .subject("bank.account.depositted.*")
        .handler(FnEventHandler::new(|_: StoredEvent| Ok(())))
        .build()
        .expect("untyped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_durable_consumer_reads_the_history_and_an_ephemeral_one_only_what_comes() {
    let test = cim_nats::testing::TestStore::start("bank")
        .await
        .expect("fixture");
    let client = test.client.clone();
    let repo = Repository::<Account>::new(test.store.clone());
    let id = AggregateId::new("acc-1").unwrap();
    repo.execute(
        &id,
        AccountCommand::Open {
            owner: "ada".into(),
        },
    )
    .await
    .expect("open");
    repo.execute(&id, AccountCommand::Deposit(5))
        .await
        .expect("deposit");

    let (durable, ephemeral) = (Arc::<Mutex<Vec<u64>>>::default(), Arc::default());
    let durable_handle = EventSubscriberBuilder::new()
        .client(client.clone())
        .subject("bank.>")
        .durable("late-handler")
        .handler(typed(Arc::clone(&durable)))
        .build()
        .unwrap()
        .subscribe()
        .await
        .unwrap();
    let ephemeral_handle = EventSubscriberBuilder::new()
        .client(client.clone())
        .subject("bank.>")
        .handler(typed(Arc::clone(&ephemeral)))
        .build()
        .unwrap()
        .subscribe()
        .await
        .unwrap();
    let third = repo
        .execute(&id, AccountCommand::Deposit(7))
        .await
        .expect("deposit")
        .last_sequence();
    support::wait_until(Duration::from_secs(10), "both to see the new event", || {
        let done = durable.lock().unwrap().contains(&third.0)
            && ephemeral.lock().unwrap().contains(&third.0);
        async move { done }
    })
    .await;
    assert_eq!(
        *durable.lock().unwrap(),
        [1, 2, 3],
        "the durable one read the history"
    );
    assert_eq!(
        *ephemeral.lock().unwrap(),
        [3],
        "the ephemeral one only what came"
    );
    durable_handle.shutdown().await.expect("stop");
    ephemeral_handle.shutdown().await.expect("stop");

    // Asked for explicitly, a new durable consumer starts where it is told.
    let live = Arc::<Mutex<Vec<u64>>>::default();
    let handle = EventSubscriberBuilder::new()
        .client(client.clone())
        .subject("bank.>")
        .durable("live-only")
        .deliver_policy(DeliverPolicy::New)
        .handler(typed(Arc::clone(&live)))
        .build()
        .unwrap()
        .subscribe()
        .await
        .unwrap();
    let fourth = repo
        .execute(&id, AccountCommand::Deposit(9))
        .await
        .expect("deposit")
        .last_sequence();
    support::wait_until(
        Duration::from_secs(10),
        "the live-only one to see it",
        || {
            let done = live.lock().unwrap().contains(&fourth.0);
            async move { done }
        },
    )
    .await;
    assert_eq!(*live.lock().unwrap(), [4]);
    handle.shutdown().await.expect("stop");
}
