//! Commands on one aggregate queue on its lane: decided one after another on the state in
//! memory, committed in order (alone or as a group), each answered with its own outcome. These
//! tests use the in-memory store behind a wrapper that slows, blocks or fails appends, so that
//! groups form and faults land where the test wants them.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cim_nats::memory::InMemoryEventStore;
use cim_nats::{
    Aggregate, AggregateId, AppendResult, CommandError, EventId, EventStore, EventStream,
    ExpectedVersion, MessageIdentity, NatsEvent, NewEvent, ReadFrom, Repository, StoreError,
    StoreErrorKind, StoredEvent, StreamSequence,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, NatsEvent)]
#[nats_event(domain = "roster", aggregate = "team")]
enum RosterEvent {
    #[nats_event(operation = "joined")]
    Joined {
        #[nats_event(event_id)]
        id: EventId,
        name: String,
    },
}

enum RosterCommand {
    Join(String),
    /// Joins every name (one command, several events).
    JoinAll(Vec<String>),
    Boom,
    Nothing,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0} is already on the team")]
struct Taken(String);

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Roster {
    names: BTreeSet<String>,
}

impl Aggregate for Roster {
    type Event = RosterEvent;
    type Command = RosterCommand;
    type Error = Taken;

    fn handle(&self, command: RosterCommand) -> Result<Vec<RosterEvent>, Taken> {
        let names = match command {
            RosterCommand::Join(name) => vec![name],
            RosterCommand::JoinAll(names) => names,
            RosterCommand::Boom => panic!("boom"),
            RosterCommand::Nothing => Vec::new(),
        };
        names
            .into_iter()
            .map(|name| {
                if self.names.contains(&name) {
                    Err(Taken(name))
                } else {
                    Ok(RosterEvent::Joined {
                        id: EventId::unassigned(),
                        name,
                    })
                }
            })
            .collect()
    }

    fn apply(&mut self, event: &RosterEvent) {
        let RosterEvent::Joined { name, .. } = event;
        self.names.insert(name.clone());
    }
}

/// Permits of the gate appends pass: taking them all closes it.
const GATE: u32 = 1_000_000;

/// What the wrapper does to the next appends.
#[derive(Default)]
struct Faults {
    /// Fail the next multi-event append with a server error (not stored).
    fail_next_group: bool,
    /// Store the next append, then say it timed out.
    lose_next_answer: bool,
}

/// The in-memory store, with appends that take a while, can be held at a gate, and fail as told.
struct Wrapped {
    inner: InMemoryEventStore,
    delay: Duration,
    gate: Arc<Semaphore>,
    faults: Mutex<Faults>,
    appends: Mutex<Vec<usize>>,
}

impl Wrapped {
    fn new(delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            inner: InMemoryEventStore::new(),
            delay,
            gate: Arc::new(Semaphore::new(GATE as usize)),
            faults: Mutex::new(Faults::default()),
            appends: Mutex::new(Vec::new()),
        })
    }
}

impl std::fmt::Debug for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Wrapped")
    }
}

#[async_trait]
impl EventStore for Wrapped {
    async fn append(
        &self,
        aggregate_id: &AggregateId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let _pass = self.gate.acquire().await.expect("gate");
        tokio::time::sleep(self.delay).await;
        let (fail, lose) = {
            let mut faults = self.faults.lock().unwrap();
            let fail = events.len() > 1 && std::mem::take(&mut faults.fail_next_group);
            (fail, std::mem::take(&mut faults.lose_next_answer))
        };
        if fail {
            return Err(StoreError::new(StoreErrorKind::Server {
                code: 10999,
                description: "refused for the test".to_owned(),
            }));
        }
        self.appends.lock().unwrap().push(events.len());
        let result = self.inner.append(aggregate_id, expected, events).await;
        if lose && result.is_ok() {
            return Err(StoreError::new(StoreErrorKind::TimedOut));
        }
        result
    }

    async fn read_aggregate(
        &self,
        id: &AggregateId,
        after_version: u64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.inner.read_aggregate(id, after_version).await
    }

    async fn read_aggregate_after(
        &self,
        id: &AggregateId,
        after_version: u64,
        after_sequence: StreamSequence,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.inner
            .read_aggregate_after(id, after_version, after_sequence)
            .await
    }

    async fn aggregate_version(&self, id: &AggregateId) -> Result<Option<u64>, StoreError> {
        self.inner.aggregate_version(id).await
    }

    fn stream(&self, from: ReadFrom) -> EventStream<'_> {
        self.inner.stream(from)
    }

    async fn last_sequence(&self) -> Result<StreamSequence, StoreError> {
        self.inner.last_sequence().await
    }
}

fn team() -> AggregateId {
    AggregateId::new("t1").unwrap()
}

fn names(events: &[StoredEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let RosterEvent::Joined { name, .. } = e.decode::<RosterEvent>().unwrap();
            name
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_tasks_on_one_aggregate_are_each_answered_once_and_stored_in_order() {
    let store = Wrapped::new(Duration::from_micros(200));
    let repo = Arc::new(Repository::<Roster>::new(Arc::clone(&store)).with_cache(10));
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..32 {
        let repo = Arc::clone(&repo);
        tasks.spawn(async move {
            let mut answers = Vec::new();
            for k in 0..50 {
                // Every tenth name is wanted by two tasks: one of them is refused.
                let name = if k % 10 == 0 {
                    format!("shared-{}-{k}", task / 2)
                } else {
                    format!("m-{task}-{k}")
                };
                let answer = repo
                    .execute(&team(), RosterCommand::Join(name.clone()))
                    .await;
                answers.push((name, answer));
            }
            answers
        });
    }
    let mut joined = HashMap::new();
    let mut refused = Vec::new();
    while let Some(answers) = tasks.join_next().await {
        for (name, answer) in answers.unwrap() {
            match answer {
                Ok(outcome) => {
                    assert_eq!(outcome.events.len(), 1);
                    let append = outcome.append.expect("stored");
                    assert_eq!(append.version, outcome.version);
                    assert!(
                        joined.insert(name, outcome.version).is_none(),
                        "answered twice"
                    );
                }
                Err(CommandError::Rejected(Taken(taken))) => {
                    assert_eq!(taken, name);
                    refused.push(name);
                }
                Err(other) => panic!("{other}"),
            }
        }
    }
    assert_eq!(
        joined.len() + refused.len(),
        32 * 50,
        "every command answered"
    );
    assert_eq!(refused.len(), 16 * 5, "one of each shared name refused");
    let stored = store.read_aggregate(&team(), 0).await.unwrap();
    let versions: Vec<u64> = stored.iter().map(|e| e.aggregate_version).collect();
    assert_eq!(versions, (1..=joined.len() as u64).collect::<Vec<_>>());
    for (event, name) in stored.iter().zip(names(&stored)) {
        assert_eq!(joined[&name], event.aggregate_version, "{name}");
    }
    for name in &refused {
        assert!(
            joined.contains_key(name),
            "{name} refused, and nobody has it"
        );
    }
    let appends = store.appends.lock().unwrap().clone();
    assert!(
        appends.iter().any(|&n| n > 1),
        "with 32 callers and slow appends, groups form: {appends:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_panics_fails_alone() {
    let store = Wrapped::new(Duration::from_millis(2));
    let repo = Arc::new(Repository::<Roster>::new(Arc::clone(&store)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let repo = Arc::clone(&repo);
        tasks.spawn(async move {
            let command = match i {
                7 | 13 => RosterCommand::Boom,
                11 => RosterCommand::Nothing,
                _ => RosterCommand::Join(format!("p{i}")),
            };
            (i, repo.execute(&team(), command).await)
        });
    }
    let mut ok = 0;
    while let Some(answer) = tasks.join_next().await {
        match answer.unwrap() {
            (7 | 13, Err(CommandError::Panicked(message))) => assert_eq!(message, "boom"),
            (11, Ok(outcome)) => assert!(outcome.events.is_empty() && outcome.append.is_none()),
            (_, Ok(outcome)) => {
                assert_eq!(outcome.events.len(), 1);
                ok += 1;
            }
            (i, other) => panic!("command {i}: {other:?}"),
        }
    }
    assert_eq!(ok, 17);
    assert_eq!(store.read_aggregate(&team(), 0).await.unwrap().len(), 17);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_group_fails_each_of_its_commands_with_that_error_and_leaves_no_trace() {
    let store = Wrapped::new(Duration::from_millis(5));
    let repo = Arc::new(Repository::<Roster>::new(Arc::clone(&store)));
    // One command in flight, with the gate closed: the next ones queue behind it.
    let hold = store.gate.acquire_many(GATE).await.unwrap();
    let first = {
        let repo = Arc::clone(&repo);
        tokio::spawn(async move { repo.execute(&team(), RosterCommand::Join("a".into())).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut queued = Vec::new();
    for name in ["b", "c", "d", "b"] {
        let repo = Arc::clone(&repo);
        queued.push(tokio::spawn(async move {
            repo.execute(&team(), RosterCommand::Join(name.into()))
                .await
        }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    store.faults.lock().unwrap().fail_next_group = true;
    // Ten queued commands make a group whatever the measured costs say (a probe).
    for name in ["e", "f", "g", "h", "i", "j"] {
        let repo = Arc::clone(&repo);
        queued.push(tokio::spawn(async move {
            repo.execute(&team(), RosterCommand::Join(name.into()))
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(hold);
    first.await.unwrap().expect("the first, alone, is stored");
    for handle in queued {
        match handle.await.unwrap() {
            Err(CommandError::Store(e)) => {
                assert!(
                    matches!(e.kind(), StoreErrorKind::Server { code: 10999, .. }),
                    "{e}"
                );
            }
            other => panic!("every command of the group fails with its error: {other:?}"),
        }
    }
    // Nothing of the group is in memory: "b" can join, and the state is "a" + "b".
    let outcome = repo
        .execute(&team(), RosterCommand::Join("b".into()))
        .await
        .expect("b joins");
    assert_eq!(outcome.version, 2);
    assert_eq!(
        names(&store.read_aggregate(&team(), 0).await.unwrap()),
        ["a", "b"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_whose_answer_is_lost_is_sent_again_and_stored_once() {
    let store = Wrapped::new(Duration::ZERO);
    let repo = Repository::<Roster>::new(Arc::clone(&store));
    repo.execute(&team(), RosterCommand::Join("a".into()))
        .await
        .unwrap();
    store.faults.lock().unwrap().lose_next_answer = true;
    let outcome = repo
        .execute(
            &team(),
            RosterCommand::JoinAll(vec!["b".into(), "c".into()]),
        )
        .await
        .expect("the resend learns it is stored");
    let append = outcome.append.unwrap();
    assert!(append.duplicate, "recognised as already stored");
    assert_eq!(append.version, 3);
    assert_eq!(outcome.version, 3);
    assert_eq!(
        names(&store.read_aggregate(&team(), 0).await.unwrap()),
        ["a", "b", "c"]
    );
    // The state in memory counts them once.
    repo.execute(&team(), RosterCommand::Join("d".into()))
        .await
        .unwrap();
    assert_eq!(repo.load(&team()).await.unwrap().state.names.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_holds_callers_back_and_every_command_gets_through() {
    let store = Wrapped::new(Duration::ZERO);
    let repo = Arc::new(Repository::<Roster>::new(Arc::clone(&store)).with_queue_capacity(3));
    let hold = store.gate.acquire_many(GATE).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..12 {
        let repo = Arc::clone(&repo);
        tasks.spawn(async move {
            repo.execute(&team(), RosterCommand::Join(format!("q{i}")))
                .await
        });
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        repo.queue_depth(&team()),
        3,
        "three admitted, nine held back"
    );
    drop(hold);
    while let Some(answer) = tasks.join_next().await {
        answer.unwrap().unwrap();
    }
    assert_eq!(repo.queue_depth(&team()), 0);
    assert_eq!(store.read_aggregate(&team(), 0).await.unwrap().len(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cancelled_mid_append_hands_over_and_its_append_is_settled() {
    let store = Wrapped::new(Duration::ZERO);
    let repo = Arc::new(Repository::<Roster>::new(Arc::clone(&store)));
    let hold = store.gate.acquire_many(GATE).await.unwrap();
    // The first caller leads; it gives up while its append waits at the gate.
    let leader = {
        let repo = Arc::clone(&repo);
        tokio::spawn(async move {
            tokio::time::timeout(
                Duration::from_millis(100),
                repo.execute(&team(), RosterCommand::Join("lead".into())),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let follower = {
        let repo = Arc::clone(&repo);
        tokio::spawn(async move {
            repo.execute(&team(), RosterCommand::Join("follow".into()))
                .await
        })
    };
    assert!(leader.await.unwrap().is_err(), "the leader timed out");
    drop(hold);
    let outcome = follower.await.unwrap().expect("the follower is answered");
    // The leader's command was in flight: the new leader sent it again, then the follower's.
    assert_eq!(outcome.version, 2);
    assert_eq!(
        names(&store.read_aggregate(&team(), 0).await.unwrap()),
        ["lead", "follow"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_with_another_writer_is_decided_again_on_the_new_state() {
    let store = Wrapped::new(Duration::ZERO);
    let ours = Repository::<Roster>::new(Arc::clone(&store)).with_cache(10);
    let theirs = Repository::<Roster>::new(Arc::clone(&store));
    ours.execute(&team(), RosterCommand::Join("a".into()))
        .await
        .unwrap();
    // Another writer (another process, as far as `ours` knows) appends.
    theirs
        .execute_as(
            &team(),
            RosterCommand::Join("x".into()),
            &MessageIdentity::new_from_user("them"),
        )
        .await
        .unwrap();
    // One attempt: the conflict is the answer. (The same command with the same identity on
    // the same state would be the same decision, with the same ids: a retry, not a conflict.)
    let err = ours
        .execute_as(
            &team(),
            RosterCommand::Join("x".into()),
            &MessageIdentity::new_from_user("us"),
        )
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err}");
    // Decided again on the new state: "x" is taken now, which the caller learns.
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let refused = ours
        .execute_with_retry(
            &team(),
            move || {
                counted.fetch_add(1, Ordering::Relaxed);
                RosterCommand::Join("x".into())
            },
            3,
        )
        .await
        .unwrap_err();
    assert!(matches!(refused, CommandError::Rejected(Taken(ref n)) if n == "x"));
    assert_eq!(
        calls.load(Ordering::Relaxed),
        1,
        "the conflict was read, not retried"
    );
    let outcome = ours
        .execute_with_retry(&team(), || RosterCommand::Join("y".into()), 3)
        .await
        .unwrap();
    assert_eq!(outcome.version, 3);
}
