//! Dead letters worked off: listed, inspected, handled again by the subscriber that gave up on
//! them (each once, the letter gone only when handled), discarded.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cim_nats::jetstream::subscriber::{
    DeadLetterConfig, DeadLetters, Discarded, EventSubscriberBuilder, Redriven,
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
    assert!(
        letters
            .discard(doomed.sequence, Duration::from_secs(5))
            .await
            .expect("discard")
            == Discarded::Deleted
    );
    assert_eq!(
        letters
            .discard(doomed.sequence, Duration::from_secs(5))
            .await
            .expect("discard again"),
        Discarded::Missing
    );
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

/// What a sequenced subscriber's handler did: each aggregate's versions in the order handled.
type Handled = Arc<Mutex<HashMap<String, Vec<u64>>>>;

/// A durable subscriber with sequenced dead letters whose handler refuses, for good, the
/// (aggregate, version) pairs in `poison` while they are there.
fn sequenced_subscriber(
    test: &TestStore,
    consumer: &str,
    poison: &Arc<Mutex<Vec<(String, u64)>>>,
    handled: &Handled,
    group: Option<&str>,
) -> cim_nats::jetstream::subscriber::EventSubscriber {
    let (poison, handled) = (Arc::clone(poison), Arc::clone(handled));
    let builder = EventSubscriberBuilder::new()
        .client(test.client.clone())
        .subject("bank.>")
        .durable(consumer)
        .sequenced_dead_letters()
        .handler(TypedHandler::<AccountEvent, _>::new(
            move |e: Envelope<AccountEvent>| {
                let (poison, handled) = (Arc::clone(&poison), Arc::clone(&handled));
                async move {
                    let at = (e.aggregate_id().to_string(), e.version());
                    if poison.lock().unwrap().contains(&at) {
                        return Err(HandlerError::msg(format!("{at:?} is refused")).permanent());
                    }
                    handled.lock().unwrap().entry(at.0).or_default().push(at.1);
                    Ok(())
                }
            },
        ));
    match group {
        Some(member) => builder.group(
            cim_nats::jetstream::group::GroupOptions::default()
                .partitions(2)
                .member(member),
        ),
        None => builder,
    }
    .build()
    .expect("subscriber")
}

async fn deposit(repo: &Repository<Account>, id: &str, amount: u64) -> u64 {
    repo.execute(
        &AggregateId::new(id).unwrap(),
        AccountCommand::Deposit(amount),
    )
    .await
    .expect("deposit")
    .last_sequence()
    .0
}

async fn open(repo: &Repository<Account>, id: &str) {
    repo.execute(
        &AggregateId::new(id).unwrap(),
        AccountCommand::Open {
            owner: id.to_owned(),
        },
    )
    .await
    .expect("open");
}

fn versions(handled: &Handled, id: &str) -> Vec<u64> {
    handled.lock().unwrap().get(id).cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequenced_dead_letters_park_a_poisoned_aggregate_in_order_while_others_flow() {
    let test = TestStore::start("bank").await.expect("fixture");
    let repo = Repository::<Account>::new(test.store.clone());
    let poison: Arc<Mutex<Vec<(String, u64)>>> = Arc::new(Mutex::new(vec![
        ("acc-p".to_owned(), 2),
        ("acc-q".to_owned(), 2),
        ("acc-q".to_owned(), 3),
    ]));
    let handled: Handled = Arc::default();
    let subscription = sequenced_subscriber(&test, "ledger", &poison, &handled, None)
        .subscribe()
        .await
        .expect("subscribed");
    for id in ["acc-p", "acc-q", "acc-0", "acc-1", "acc-2"] {
        open(&repo, id).await;
    }
    // acc-p: version 2 is refused; 3 to 6 come after it. acc-q: 2 and 3 refused, 4 after.
    // The others' deposits are interleaved.
    for round in 0..5u64 {
        deposit(&repo, "acc-p", 10 + round).await;
        for id in ["acc-0", "acc-1", "acc-2"] {
            deposit(&repo, id, 1).await;
        }
        if round < 3 {
            deposit(&repo, "acc-q", 1).await;
        }
    }
    let letters = DeadLetters::new(test.client.clone(), DeadLetterConfig::default());
    support::wait_until(
        Duration::from_secs(15),
        "the others handled, acc-p and acc-q parked",
        || {
            let (letters, handled) = (letters.clone(), Arc::clone(&handled));
            async move {
                let others = ["acc-0", "acc-1", "acc-2"]
                    .iter()
                    .all(|id| versions(&handled, id).len() == 6);
                others && letters.list(None, None).await.map(|l| l.len()).unwrap_or(0) == 8
            }
        },
    )
    .await;
    // The others flowed, each in order; the poisoned aggregates stopped at their first refusal.
    for id in ["acc-0", "acc-1", "acc-2"] {
        assert_eq!(versions(&handled, id), (1..=6).collect::<Vec<_>>(), "{id}");
    }
    assert_eq!(versions(&handled, "acc-p"), vec![1]);
    assert_eq!(versions(&handled, "acc-q"), vec![1]);
    let of = |id: &str, list: &[cim_nats::jetstream::subscriber::DeadLetter]| {
        list.iter()
            .filter(|l| l.aggregate() == id)
            .cloned()
            .collect::<Vec<_>>()
    };
    let listed = letters.list(None, None).await.expect("list");
    let p = of("acc-p", &listed);
    let reasons: Vec<&str> = p.iter().map(|l| l.reason.as_str()).collect();
    assert_eq!(
        reasons,
        ["permanent-error", "parked", "parked", "parked", "parked"]
    );
    assert!(
        p[1].error
            .contains(&format!("behind dead letter {}", p[0].sequence)),
        "{}",
        p[1].error
    );
    let parked = letters.parked(None, None).await.expect("parked");
    assert_eq!(parked.len(), 2, "{parked:?}");
    let parked_p = parked
        .iter()
        .find(|x| x.aggregate == "acc-p")
        .expect("acc-p parked");
    assert_eq!(
        (parked_p.head, parked_p.last),
        (p[0].sequence, p[4].original_sequence)
    );
    assert_eq!(
        (parked_p.stream.as_str(), parked_p.consumer.as_str()),
        ("BANK_EVENTS", "ledger")
    );

    // A parked letter cannot jump its head, by redrive or discard.
    let jumped = letters
        .redrive(p[2].sequence, Duration::from_secs(10))
        .await
        .expect_err("refused");
    assert!(
        jumped
            .to_string()
            .contains(&format!("waits behind dead letter {}", p[0].sequence)),
        "{jumped}"
    );
    let jumped = letters
        .discard(p[2].sequence, Duration::from_secs(10))
        .await
        .expect_err("refused");
    assert!(jumped.to_string().contains("waits behind"), "{jumped}");

    // Another event of acc-p while it is parked: parked too, behind the others.
    let seventh = deposit(&repo, "acc-p", 99).await;
    support::wait_until(Duration::from_secs(10), "version 7 parked", || {
        let letters = letters.clone();
        async move {
            letters
                .list(None, None)
                .await
                .map(|l| l.iter().any(|x| x.original_sequence == seventh))
                .unwrap_or(false)
        }
    })
    .await;
    assert_eq!(versions(&handled, "acc-p"), vec![1]);

    // Fixed: the head's redrive handles it and then every parked event, in order, once.
    poison.lock().unwrap().retain(|(id, _)| id != "acc-p");
    assert_eq!(
        letters
            .redrive(p[0].sequence, Duration::from_secs(20))
            .await
            .expect("redriven"),
        Redriven::Released { released: 5 }
    );
    assert_eq!(versions(&handled, "acc-p"), (1..=7).collect::<Vec<_>>());
    // Released: the next event is handled at once, and nothing of acc-p is left.
    deposit(&repo, "acc-p", 1).await;
    support::wait_until(Duration::from_secs(10), "version 8 handled", || {
        let handled = Arc::clone(&handled);
        async move { versions(&handled, "acc-p").len() == 8 }
    })
    .await;
    assert_eq!(versions(&handled, "acc-p"), (1..=8).collect::<Vec<_>>());
    let left = letters.list(None, None).await.expect("list");
    assert!(of("acc-p", &left).is_empty());
    assert!(letters
        .parked(None, None)
        .await
        .expect("parked")
        .iter()
        .all(|x| x.aggregate != "acc-p"));
    // Parked again by a later failure: its key, deleted at the release, is created anew.
    poison.lock().unwrap().push(("acc-p".to_owned(), 9));
    deposit(&repo, "acc-p", 1).await;
    deposit(&repo, "acc-p", 1).await;
    support::wait_until(Duration::from_secs(10), "acc-p parked again", || {
        let letters = letters.clone();
        async move {
            letters
                .parked(None, None)
                .await
                .map(|p| p.iter().any(|x| x.aggregate == "acc-p"))
                .unwrap_or(false)
                && letters.list(None, None).await.map(|l| l.len()).unwrap_or(0) == 5
        }
    })
    .await;
    let again = of("acc-p", &letters.list(None, None).await.expect("list"));
    assert_eq!(
        again.iter().map(|l| l.reason.as_str()).collect::<Vec<_>>(),
        ["permanent-error", "parked"]
    );
    poison.lock().unwrap().retain(|(id, _)| id != "acc-p");
    assert_eq!(
        letters
            .redrive(again[0].sequence, Duration::from_secs(20))
            .await
            .expect("redriven"),
        Redriven::Released { released: 1 }
    );
    assert_eq!(versions(&handled, "acc-p"), (1..=10).collect::<Vec<_>>());
    let left = letters.list(None, None).await.expect("list");

    // acc-q: its head discarded; the parked version 3 fails again and becomes the head; once
    // fixed, its redrive releases version 4.
    let q = of("acc-q", &left);
    assert_eq!(q.len(), 3);
    match letters
        .discard(q[0].sequence, Duration::from_secs(20))
        .await
        .expect("discarded")
    {
        Discarded::Stopped {
            released: 0,
            head,
            error,
        } => {
            assert_eq!(head, Some(q[1].sequence));
            assert!(error.contains("refused"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        versions(&handled, "acc-q"),
        vec![1],
        "version 2 discarded, 3 refused"
    );
    let parked_q = letters.parked(None, None).await.expect("parked");
    assert_eq!(parked_q.len(), 1);
    assert_eq!(parked_q[0].head, q[1].sequence);
    poison.lock().unwrap().clear();
    assert_eq!(
        letters
            .redrive(q[1].sequence, Duration::from_secs(20))
            .await
            .expect("redriven"),
        Redriven::Released { released: 1 }
    );
    assert_eq!(versions(&handled, "acc-q"), vec![1, 3, 4]);
    assert!(letters.list(None, None).await.expect("list").is_empty());
    assert!(letters.parked(None, None).await.expect("parked").is_empty());
    // Every event handled at most once.
    for (id, seen) in handled.lock().unwrap().iter() {
        let mut unique = seen.clone();
        unique.dedup();
        assert_eq!(&unique, seen, "{id} handled an event twice");
    }
    subscription.shutdown().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_member_that_takes_over_keeps_an_aggregate_parked() {
    let test = TestStore::start("bank").await.expect("fixture");
    let repo = Repository::<Account>::new(test.store.clone());
    let poison: Arc<Mutex<Vec<(String, u64)>>> =
        Arc::new(Mutex::new(vec![("acc-p".to_owned(), 2)]));
    let handled: Handled = Arc::default();
    let first = sequenced_subscriber(&test, "auditors", &poison, &handled, Some("m1"))
        .subscribe()
        .await
        .expect("m1");
    open(&repo, "acc-p").await;
    open(&repo, "acc-0").await;
    deposit(&repo, "acc-p", 5).await;
    deposit(&repo, "acc-p", 6).await;
    let letters = DeadLetters::new(test.client.clone(), DeadLetterConfig::default());
    support::wait_until(Duration::from_secs(20), "acc-p parked by m1", || {
        let letters = letters.clone();
        async move { letters.list(None, None).await.map(|l| l.len()).unwrap_or(0) == 2 }
    })
    .await;
    let listed = letters.list(None, None).await.expect("list");
    assert_eq!(
        (listed[0].stream.as_str(), listed[0].consumer.as_str()),
        ("BANK_EVENTS", "auditors")
    );
    assert_eq!(listed[1].reason, "parked");
    // m1 leaves; m2, a new process's member, takes every partition over.
    first.shutdown().await.expect("m1 stops");
    let handled_by_m2: Handled = Arc::default();
    let second = sequenced_subscriber(&test, "auditors", &poison, &handled_by_m2, Some("m2"))
        .subscribe()
        .await
        .expect("m2");
    let fourth = deposit(&repo, "acc-p", 7).await;
    deposit(&repo, "acc-0", 1).await;
    support::wait_until(
        Duration::from_secs(20),
        "m2 handles acc-0 and parks acc-p's next",
        || {
            let (letters, handled) = (letters.clone(), Arc::clone(&handled_by_m2));
            async move {
                versions(&handled, "acc-0") == vec![2]
                    && letters
                        .list(None, None)
                        .await
                        .map(|l| l.iter().any(|x| x.original_sequence == fourth))
                        .unwrap_or(false)
            }
        },
    )
    .await;
    assert!(
        versions(&handled_by_m2, "acc-p").is_empty(),
        "m2 honours the parked state"
    );
    poison.lock().unwrap().clear();
    assert_eq!(
        letters
            .redrive(listed[0].sequence, Duration::from_secs(20))
            .await
            .expect("redriven by m2"),
        Redriven::Released { released: 2 }
    );
    assert_eq!(versions(&handled_by_m2, "acc-p"), vec![2, 3, 4]);
    assert!(letters.parked(None, None).await.expect("parked").is_empty());
    second.shutdown().await.expect("m2 stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_parked_while_a_redrive_runs_are_handled_in_order_and_none_is_left_behind() {
    let test = TestStore::start("bank").await.expect("fixture");
    let repo = Arc::new(Repository::<Account>::new(test.store.clone()));
    let poison: Arc<Mutex<Vec<(String, u64)>>> =
        Arc::new(Mutex::new(vec![("acc-p".to_owned(), 2)]));
    let handled: Handled = Arc::default();
    let subscription = sequenced_subscriber(&test, "ledger", &poison, &handled, None)
        .subscribe()
        .await
        .expect("subscribed");
    open(&repo, "acc-p").await;
    for _ in 0..10 {
        deposit(&repo, "acc-p", 1).await;
    }
    let letters = DeadLetters::new(test.client.clone(), DeadLetterConfig::default());
    support::wait_until(
        Duration::from_secs(15),
        "versions 2 to 11 in the dead letter",
        || {
            let letters = letters.clone();
            async move { letters.list(None, None).await.map(|l| l.len()).unwrap_or(0) == 10 }
        },
    )
    .await;
    let head = letters.list(None, None).await.expect("list")[0].sequence;
    poison.lock().unwrap().clear();
    // Deposits keep coming (one every 20 ms) while the head is redriven: those stored before
    // the release are parked and taken by the redrive, the others handled after it, never one
    // before an earlier version.
    let writer = {
        let repo = Arc::clone(&repo);
        tokio::spawn(async move {
            for _ in 0..40 {
                deposit(&repo, "acc-p", 1).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let redriven = letters
        .redrive(head, Duration::from_secs(30))
        .await
        .expect("redriven");
    assert!(
        matches!(redriven, Redriven::Released { released } if released >= 9),
        "{redriven:?}"
    );
    writer.await.expect("writer");
    support::wait_until(Duration::from_secs(20), "all 51 versions handled", || {
        let handled = Arc::clone(&handled);
        async move { versions(&handled, "acc-p").len() >= 51 }
    })
    .await;
    assert_eq!(versions(&handled, "acc-p"), (1..=51).collect::<Vec<_>>());
    assert!(letters.list(None, None).await.expect("list").is_empty());
    assert!(letters.parked(None, None).await.expect("parked").is_empty());
    subscription.shutdown().await.expect("stop");
}
