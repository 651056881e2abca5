//! Dead letters worked off: listed, inspected, handled again by the subscriber that gave up on
//! them (each once, the letter gone only when handled), discarded.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cim_nats::jetstream::subscriber::{
    DeadLetterConfig, DeadLetters, EventSubscriberBuilder, Redriven,
};
use cim_nats::testing::TestStore;
use cim_nats::{AggregateId, Envelope, HandlerError, Repository, TypedHandler};
use support::bank::{Account, AccountCommand, AccountEvent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_dead_letters_are_handled_again_once_each_and_leave() {
    let test = TestStore::start("bank").await.expect("fixture");
    let repo = Repository::<Account>::new(test.store.clone());
    for i in 0..10 {
        repo.execute(
            &AggregateId::new(format!("acc-{i}")).unwrap(),
            AccountCommand::Open {
                owner: format!("owner {i}"),
            },
        )
        .await
        .expect("open");
    }
    // A handler that refuses every event while its dependency is down.
    let down = Arc::new(AtomicBool::new(true));
    let handled: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let subscribe = || {
        let (down, handled) = (Arc::clone(&down), Arc::clone(&handled));
        EventSubscriberBuilder::new()
            .client(test.client.clone())
            .subject("bank.>")
            .durable("mailer")
            .handler(TypedHandler::<AccountEvent, _>::new(
                move |e: Envelope<AccountEvent>| {
                    let (down, handled) = (Arc::clone(&down), Arc::clone(&handled));
                    async move {
                        if down.load(Ordering::SeqCst) {
                            return Err(HandlerError::msg("the mail server is down").permanent());
                        }
                        *handled.lock().unwrap().entry(e.sequence().0).or_default() += 1;
                        Ok(())
                    }
                },
            ))
            .build()
            .expect("subscriber")
    };
    let subscription = subscribe().subscribe().await.expect("subscribed");
    let letters = DeadLetters::new(test.client.clone(), DeadLetterConfig::default());
    support::wait_until(Duration::from_secs(10), "ten dead letters", || {
        let letters = letters.clone();
        async move {
            letters
                .list(Some("BANK_EVENTS"), Some("mailer"))
                .await
                .map(|l| l.len())
                .unwrap_or(0)
                == 10
        }
    })
    .await;
    let listed = letters.list(None, None).await.expect("list");
    assert_eq!(listed.len(), 10);
    let first = &listed[0];
    assert_eq!(
        (first.stream.as_str(), first.consumer.as_str()),
        ("BANK_EVENTS", "mailer")
    );
    assert_eq!(first.reason, "permanent-error");
    assert!(first.error.contains("the mail server is down"));
    let event = first.event().expect("the event, rebuilt");
    assert_eq!(event.stream_sequence.0, first.original_sequence);
    assert_eq!(event.event_type, "Opened");
    assert!(handled.lock().unwrap().is_empty());

    // Still down: a redrive fails and the letter stays.
    assert!(matches!(
        letters.redrive(first.sequence, Duration::from_secs(10)).await.expect("answered"),
        Redriven::Failed(e) if e.contains("mail server")
    ));
    assert!(letters.get(first.sequence).await.expect("get").is_some());

    // Up again: each letter handled once, then gone.
    down.store(false, Ordering::SeqCst);
    for letter in &listed {
        assert_eq!(
            letters
                .redrive(letter.sequence, Duration::from_secs(10))
                .await
                .expect("redriven"),
            Redriven::Handled
        );
    }
    assert!(letters.list(None, None).await.expect("list").is_empty());
    let handled_now = handled.lock().unwrap().clone();
    assert_eq!(handled_now.len(), 10);
    assert!(handled_now.values().all(|n| *n == 1), "{handled_now:?}");
    let again = letters
        .redrive(first.sequence, Duration::from_secs(10))
        .await
        .expect_err("gone");
    assert!(again.to_string().contains("no dead letter"), "{again}");

    // Discarded: never handled.
    down.store(true, Ordering::SeqCst);
    let last = repo
        .execute(
            &AggregateId::new("acc-0").unwrap(),
            AccountCommand::Deposit(5),
        )
        .await
        .expect("deposit")
        .last_sequence();
    support::wait_until(Duration::from_secs(10), "one more dead letter", || {
        let letters = letters.clone();
        async move { letters.list(None, None).await.map(|l| l.len()).unwrap_or(0) == 1 }
    })
    .await;
    let doomed = letters.list(None, None).await.expect("list").remove(0);
    assert_eq!(doomed.original_sequence, last.0);
    assert!(letters.discard(doomed.sequence).await.expect("discard"));
    assert!(!letters
        .discard(doomed.sequence)
        .await
        .expect("discard again"));
    assert!(!handled.lock().unwrap().contains_key(&last.0));

    // With no subscriber of the consumer running, a redrive says so: an event dead-lettered by
    // a run of the subscriber that has stopped since.
    subscription.shutdown().await.expect("stop");
    let another = repo
        .execute(
            &AggregateId::new("acc-1").unwrap(),
            AccountCommand::Deposit(5),
        )
        .await
        .expect("deposit")
        .last_sequence();
    let subscription = subscribe().subscribe().await.expect("subscribed");
    support::wait_until(Duration::from_secs(10), "its dead letter", || {
        let letters = letters.clone();
        async move { letters.list(None, None).await.map(|l| l.len()).unwrap_or(0) == 1 }
    })
    .await;
    subscription.shutdown().await.expect("stop");
    let waiting = letters.list(None, None).await.expect("list").remove(0);
    assert_eq!(waiting.original_sequence, another.0);
    let nobody = letters
        .redrive(waiting.sequence, Duration::from_secs(5))
        .await
        .expect_err("nobody serves it");
    assert!(
        nobody
            .to_string()
            .contains("no subscriber of consumer \"mailer\""),
        "{nobody}"
    );
}
