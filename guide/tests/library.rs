//! The library on real nats-servers, one per test: commands and a race, the shelf after a clean
//! stop and after a crash, the restock policy and where new consumers start, and the service.

// ANCHOR: fixture
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cim_nats::jetstream::{
    JetStreamEventStore, KeyedProjection, ReadModel, ReadModelOptions, ReadModelRunner,
};
use cim_nats::subscriber::TypedHandler;
use cim_nats::testing::{wait_until, NatsServer, TestStore};
use cim_nats::{
    AggregateId, CommandError, Envelope, EventStoreExt, NatsEvent, Repository, StreamSequence,
};
use cim_nats_guide::{
    restock, Book, BookCommand, BookError, BookId, LibraryEvent, MemberId, Shelf, ShelfRow,
};

const WAIT: Duration = Duration::from_secs(10);

fn add(book: BookId, copies: u32) -> BookCommand {
    BookCommand::Add {
        book,
        title: "Dune".into(),
        copies,
    }
}

fn lend(member: MemberId) -> BookCommand {
    BookCommand::Lend { member }
}
// ANCHOR_END: fixture

// ANCHOR: first_commands
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_stored_on_the_library_stream() {
    // A nats-server of its own (free port, own directory, removed on drop) and the store of
    // domain "library" on it: stream LIBRARY_EVENTS on library.>.
    let test = TestStore::start("library").await.unwrap();
    let books: Repository<Book> = test.store.repository();

    let (book, ada) = (BookId::new(), MemberId::new());
    books.execute(&book.into(), add(book, 1)).await.unwrap();
    let outcome = books.execute(&book.into(), lend(ada)).await.unwrap();
    assert_eq!(outcome.version, 2);

    // A refused command stores nothing and says why.
    let refused = books
        .execute(&book.into(), lend(MemberId::new()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            CommandError::Rejected(BookError::NoCopyLeft { .. })
        ),
        "{refused}"
    );

    let events = test
        .store
        .load_events::<LibraryEvent>(&book.into(), 0)
        .await
        .unwrap();
    let subjects: Vec<_> = events.iter().map(|e| e.stored.subject.as_str()).collect();
    assert_eq!(
        subjects,
        [
            format!("library.book.added.{book}"),
            format!("library.loan.started.{book}")
        ]
    );
    assert!(events
        .iter()
        .all(|e| !e.event.event_id().unwrap().is_unassigned()));
}
// ANCHOR_END: first_commands

// ANCHOR: race
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_race_for_the_last_copy() {
    let test = TestStore::start("library").await.unwrap();
    // Two repositories stand for two processes: one repository queues the commands on one
    // book and never races with itself. With a cache, each decides on the state it holds.
    let ours: Repository<Book> = test.store.repository().with_cache(100);
    let theirs: Repository<Book> = test.store.repository().with_cache(100);

    // One attempt each: both saw the last copy on the shelf, the server takes one append and
    // refuses the other (wrong last sequence), which `execute` returns as a conflict.
    let book = BookId::new();
    ours.execute(&book.into(), add(book, 1)).await.unwrap();
    theirs.load_cached(&book.into()).await.unwrap();
    let id = AggregateId::from(book);
    let (a, b) = tokio::join!(
        ours.execute(&id, lend(MemberId::new())),
        theirs.execute(&id, lend(MemberId::new())),
    );
    let (won, lost) = if a.is_ok() { (a, b) } else { (b, a) };
    assert_eq!(won.unwrap().version, 2);
    assert!(lost.unwrap_err().is_conflict());

    // With retries, the loser reads what the winner stored and decides again: the rule
    // refuses it, and the caller learns why instead of a conflict.
    let book = BookId::new();
    ours.execute(&book.into(), add(book, 1)).await.unwrap();
    theirs.load_cached(&book.into()).await.unwrap();
    let (ada, bob) = (MemberId::new(), MemberId::new());
    let id = AggregateId::from(book);
    let (a, b) = tokio::join!(
        ours.execute_with_retry(&id, move || lend(ada), 3),
        theirs.execute_with_retry(&id, move || lend(bob), 3),
    );
    let (won, lost) = if a.is_ok() { (a, b) } else { (b, a) };
    assert_eq!(won.unwrap().version, 2);
    let lost = lost.unwrap_err();
    assert!(
        matches!(lost, CommandError::Rejected(BookError::NoCopyLeft { .. })),
        "{lost}"
    );
    let stored = test
        .store
        .load_events::<LibraryEvent>(&book.into(), 0)
        .await
        .unwrap();
    assert_eq!(stored.len(), 2, "one loan stored, not two");
}
// ANCHOR_END: race

// ANCHOR: shelf_clean_stop
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shelf_after_a_clean_stop() {
    let test = TestStore::start("library").await.unwrap();
    let books: Repository<Book> = test.store.repository();
    let options = ReadModelOptions::default();
    let shelf = ReadModelRunner::start(&test.store, Shelf, options.clone())
        .await
        .unwrap();

    let book = BookId::new();
    books.execute(&book.into(), add(book, 2)).await.unwrap();
    let lent = books
        .execute(&book.into(), lend(MemberId::new()))
        .await
        .unwrap();

    // Read your own write: wait until the shelf has committed the loan.
    shelf.wait_for(lent.last_sequence(), WAIT).await.unwrap();
    // A clean stop commits what was applied; its result is how the runner ended (an event
    // `apply` refused would be the error here).
    shelf.shutdown().await.unwrap();

    // Any process reads the rows (any KV client can too: bucket RM_shelf_V1, key book.r.{id}).
    let reader = ReadModel::<ShelfRow>::open(test.client.clone(), Shelf::NAME, &options)
        .await
        .unwrap();
    let row = reader
        .get(Shelf::TABLE, &book.to_string())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((row.copies, row.on_loan, row.times_lent), (2, 1, 1));
    assert_eq!(reader.checkpoint().await.unwrap(), lent.last_sequence());
}
// ANCHOR_END: shelf_clean_stop

// ANCHOR: shelf_crash
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shelf_resumes_after_a_crash() {
    let test = TestStore::start("library").await.unwrap();
    let books: Repository<Book> = test.store.repository();
    let book = BookId::new();
    books.execute(&book.into(), add(book, 100)).await.unwrap();
    let mut last = StreamSequence(0);
    for _ in 0..30 {
        last = books
            .execute(&book.into(), lend(MemberId::new()))
            .await
            .unwrap()
            .last_sequence();
    }

    // A commit every 5 events while catching up: kill the runner once it has committed some,
    // without a clean stop, as a crash would. What it applied after its last commit is lost.
    let options = ReadModelOptions {
        commit_every: 5,
        ..ReadModelOptions::default()
    };
    let shelf = ReadModelRunner::start(&test.store, Shelf, options.clone())
        .await
        .unwrap();
    wait_until(WAIT, "a first commit", || async { shelf.committed().0 > 1 }).await;
    shelf.abort().await;

    // A new runner resumes from the checkpoint, not from the start, and applies every event
    // after it once, wherever the crash fell.
    let shelf = ReadModelRunner::start(&test.store, Shelf, options.clone())
        .await
        .unwrap();
    assert!(shelf.committed().0 > 1, "resumed from the checkpoint");
    shelf.wait_for(last, WAIT).await.unwrap();
    let reader = ReadModel::<ShelfRow>::open(test.client.clone(), Shelf::NAME, &options)
        .await
        .unwrap();
    let row = reader
        .get(Shelf::TABLE, &book.to_string())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (row.on_loan, row.times_lent),
        (30, 30),
        "each loan applied once"
    );
    shelf.shutdown().await.unwrap();
}
// ANCHOR_END: shelf_crash

// ANCHOR: restock_test
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_durable_consumer_reads_the_history_and_a_live_one_does_not() {
    let test = TestStore::start("library").await.unwrap();
    let books: Arc<Repository<Book>> = Arc::new(test.store.repository());
    // History: the only copy is out before any subscriber exists.
    let (book, ada) = (BookId::new(), MemberId::new());
    books.execute(&book.into(), add(book, 1)).await.unwrap();
    let history = books
        .execute(&book.into(), lend(ada))
        .await
        .unwrap()
        .last_sequence();

    // An ephemeral subscriber: it starts with the events stored after it subscribed.
    let seen: Arc<Mutex<Vec<StreamSequence>>> = Arc::default();
    let record = Arc::clone(&seen);
    let live = test
        .store
        .subscriber()
        .subject(LibraryEvent::DOMAIN_WILDCARD)
        .handler(TypedHandler::new(move |event: Envelope<LibraryEvent>| {
            record.lock().unwrap().push(event.sequence());
            async { Ok(()) }
        }))
        .build()
        .unwrap()
        .subscribe()
        .await
        .unwrap();

    // A new durable consumer starts from the first event: the policy sees the past loan.
    let policy = test
        .store
        .subscriber()
        .subject(LibraryEvent::COPY_LENT_EVENTS)
        .handler(restock(Arc::clone(&books)))
        .durable("library-restock")
        .build()
        .unwrap()
        .subscribe()
        .await
        .unwrap();
    let repository = Arc::clone(&books);
    wait_until(WAIT, "a copy bought", || {
        let books = Arc::clone(&repository);
        async move { books.load(&book.into()).await.unwrap().state.copies() == 2 }
    })
    .await;

    // The live subscriber saw the purchase, and nothing of the history.
    wait_until(WAIT, "the purchase seen live", || async {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    assert!(seen
        .lock()
        .unwrap()
        .iter()
        .all(|&sequence| sequence > history));

    // A typed handler knows its subjects: a typo is refused at `build()`.
    let typo = test
        .store
        .subscriber()
        .subject("library.loan.strated.*")
        .handler(restock(Arc::clone(&books)))
        .build()
        .unwrap_err();
    assert!(
        typo.to_string().contains("library.loan.started.*"),
        "{typo}"
    );

    policy.shutdown().await.unwrap();
    live.shutdown().await.unwrap();
}
// ANCHOR_END: restock_test

// ANCHOR: service_test
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_runs_on_nats_url() {
    let server = NatsServer::start().unwrap();
    let mut service = std::process::Command::new(env!("CARGO_BIN_EXE_library"))
        .env("NATS_URL", server.url())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(service.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert!(line.starts_with("library: running"), "{line:?}");

    // Another process lends the last copy; the service buys one and its shelf shows it.
    let client = server.connect().await.unwrap();
    let store = JetStreamEventStore::for_events::<LibraryEvent>(client.clone())
        .await
        .unwrap();
    let books: Repository<Book> = store.repository();
    let (book, ada) = (BookId::new(), MemberId::new());
    books.execute(&book.into(), add(book, 1)).await.unwrap();
    books.execute(&book.into(), lend(ada)).await.unwrap();
    let shelf = ReadModel::<ShelfRow>::open(client, Shelf::NAME, &ReadModelOptions::default())
        .await
        .unwrap();
    wait_until(WAIT, "the purchase on the shelf", || async {
        let row = shelf.get(Shelf::TABLE, &book.to_string()).await.unwrap();
        row.is_some_and(|row| row.copies == 2)
    })
    .await;

    // Ctrl-C: the service stops its subscriber and its shelf, and exits cleanly.
    let pid = service.id().to_string();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(service.wait().unwrap().success());
    assert_eq!(rest, "library: stopped\n");
}
// ANCHOR_END: service_test
