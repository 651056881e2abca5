//! Shared pieces of the reliability tests: deterministic events, appends retried through
//! faults, a load driver, an independent reader of the stream, and a seeded RNG.
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use async_trait::async_trait;
use cim_nats::jetstream::JetStreamEventStore;
use cim_nats::{
    headers, AggregateId, AppendResult, Envelope, EventId, ExpectedVersion, NewEvent, Projection,
    ProjectionError, StoreError, StoreErrorKind,
};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// A small xorshift64* generator: seeded, so a failing run can be replayed.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator; the same seed gives the same numbers.
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The aggregate id of aggregate number `a`.
pub fn aggregate(a: u64) -> AggregateId {
    AggregateId::new(format!("agg-{a:05}")).expect("valid id")
}

/// The id of the `version`-th event of aggregate `a`: the same on every attempt, so the store
/// recognises a retry.
pub fn event_id(a: u64, version: u64) -> EventId {
    EventId::from_uuid(uuid::Uuid::from_u64_pair(
        0x5eed_0000_0000_0000 | a,
        version,
    ))
}

/// The `version`-th event (1-based) of aggregate `a` in `domain`, ~150 bytes of JSON: an
/// [`ItemEvent::Noted`] as the derive encodes it.
pub fn event(domain: &str, a: u64, version: u64) -> NewEvent {
    NewEvent {
        event_id: event_id(a, version),
        event_type: "Noted".into(),
        schema_version: 1,
        entity_kind: "item".into(),
        routing_subject: format!("{domain}.item.noted").into(),
        payload: format!(
            "{{\"Noted\":{{\"aggregate\":{a},\"version\":{version},\"note\":\"{}\"}}}}",
            "r".repeat(100)
        )
        .into_bytes()
        .into(),
        timestamp: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
        correlation_id: None,
        causation_id: None,
        actor: None,
    }
}

/// Is this an error a client retries (the server is gone, restarting, or electing a leader)?
/// A version conflict, an invalid append or a decode error is not: it would be a bug here.
pub fn is_transient(e: &StoreError) -> bool {
    matches!(
        e.kind(),
        StoreErrorKind::TimedOut
            | StoreErrorKind::Connection
            | StoreErrorKind::Unavailable { .. }
            | StoreErrorKind::StreamNotFound
            | StoreErrorKind::Server { .. }
    )
}

/// A short name of an error's kind, to count them.
pub fn kind_name(e: &StoreError) -> String {
    match e.kind() {
        StoreErrorKind::Server { code, .. } => format!("server error {code}"),
        other => {
            let debug = format!("{other:?}");
            debug
                .split([' ', '(', '{'])
                .next()
                .unwrap_or_default()
                .to_owned()
        }
    }
}

/// What one append went through before it was acknowledged.
#[derive(Debug, Clone)]
pub struct Acked {
    /// The aggregate's number.
    pub aggregate: u64,
    /// The version the append stored (its event's version).
    pub version: u64,
    /// What the store answered.
    pub result: AppendResult,
    /// Attempts after the first.
    pub retries: u32,
    /// When it was acknowledged.
    pub at: Instant,
}

/// Appends `events` at `expected` until the store acknowledges them, retrying the same events
/// and expectation after a transient error or an attempt that took longer than
/// `attempt_timeout` (its future is dropped, as a client giving up on a request would).
///
/// # Panics
///
/// On a non-transient error (a conflict the store did not resolve as a duplicate), or if the
/// append is not acknowledged within `give_up`.
pub async fn append_until_stored(
    store: &JetStreamEventStore,
    id: &AggregateId,
    expected: ExpectedVersion,
    events: &[NewEvent],
    attempt_timeout: Duration,
    give_up: Duration,
    errors: &Mutex<BTreeMap<String, u64>>,
) -> (AppendResult, u32) {
    let deadline = Instant::now() + give_up;
    let mut retries = 0;
    loop {
        let error = match tokio::time::timeout(
            attempt_timeout,
            store.append(id, expected, events.to_vec()),
        )
        .await
        {
            Ok(Ok(result)) => return (result, retries),
            Ok(Err(e)) if is_transient(&e) => kind_name(&e),
            Ok(Err(e)) => panic!("append to {id} at {expected} failed for good: {e:?}"),
            Err(_) => "attempt timeout".to_owned(),
        };
        *errors.lock().unwrap().entry(error).or_default() += 1;
        assert!(
            Instant::now() < deadline,
            "append to {id} at {expected} not acknowledged within {give_up:?}"
        );
        retries += 1;
        // A pause between attempts while the server is away (not a synchronisation: the
        // append is retried until it is acknowledged).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A load: `aggregates` aggregates of `per_aggregate` events each, appended one event at a
/// time with `ExpectedVersion::Exact`, `in_flight` appends at once (each aggregate's appends
/// one after the other).
#[derive(Debug, Clone)]
pub struct Plan {
    /// The domain (first subject token).
    pub domain: String,
    /// How many aggregates.
    pub aggregates: u64,
    /// Events per aggregate.
    pub per_aggregate: u64,
    /// Appends in flight at once.
    pub in_flight: usize,
    /// How long one attempt may take before the client gives up on it and retries.
    pub attempt_timeout: Duration,
    /// How long one append may take, all attempts together.
    pub give_up: Duration,
}

impl Plan {
    /// Appends in the whole load.
    pub fn total(&self) -> u64 {
        self.aggregates * self.per_aggregate
    }
}

/// Progress of a load, readable while it runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Appends acknowledged so far.
    pub acked: AtomicU64,
    /// Failed attempts, by kind of error.
    pub errors: Mutex<BTreeMap<String, u64>>,
}

/// Runs the plan to the end and returns every acknowledged append.
pub async fn run_load(
    store: JetStreamEventStore,
    plan: Plan,
    progress: Arc<Progress>,
) -> Vec<Acked> {
    let mut ready: VecDeque<(u64, u64)> = (0..plan.aggregates).map(|a| (a, 0)).collect();
    let mut running = FuturesUnordered::new();
    let mut acked = Vec::with_capacity(plan.total() as usize);
    loop {
        while running.len() < plan.in_flight {
            let Some((a, version)) = ready.pop_front() else {
                break;
            };
            let (store, plan, progress) = (store.clone(), plan.clone(), Arc::clone(&progress));
            running.push(async move {
                let id = aggregate(a);
                let events = [event(&plan.domain, a, version + 1)];
                let (result, retries) = append_until_stored(
                    &store,
                    &id,
                    ExpectedVersion::Exact(version),
                    &events,
                    plan.attempt_timeout,
                    plan.give_up,
                    &progress.errors,
                )
                .await;
                progress.acked.fetch_add(1, Ordering::Relaxed);
                Acked {
                    aggregate: a,
                    version: version + 1,
                    result,
                    retries,
                    at: Instant::now(),
                }
            });
        }
        let Some(done) = running.next().await else {
            break;
        };
        assert_eq!(
            done.result.version, done.version,
            "append acknowledged at another version"
        );
        assert_eq!(done.result.sequences.len(), 1);
        if done.version < plan.per_aggregate {
            ready.push_back((done.aggregate, done.version));
        }
        acked.push(done);
    }
    acked
}

/// One stored message, as an independent reader sees it.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Stream sequence.
    pub sequence: u64,
    /// `Nats-Msg-Id`: the event id.
    pub msg_id: String,
    /// The aggregate id header.
    pub aggregate_id: String,
    /// The aggregate version header.
    pub version: u64,
}

/// Reads every message of `stream` with a plain ordered consumer of async-nats (not the
/// framework's read path). Creating the consumer is retried for a while: right after a
/// fail-over the cluster may still be electing the leader that assigns it.
pub async fn read_stream(client: &async_nats::Client, stream: &str) -> Vec<Stored> {
    let js = jetstream::new(client.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    let (count, ordered) = loop {
        let attempt = async {
            let stream = js.get_stream(stream).await.map_err(|e| e.to_string())?;
            let count = stream.cached_info().state.messages;
            let ordered = stream
                .create_consumer(consumer::pull::OrderedConfig {
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((count, ordered))
        };
        match attempt.await {
            Ok(ready) => break ready,
            Err(e) if Instant::now() < deadline => {
                eprintln!("reading {stream}: {e}; again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("reading {stream}: {e}"),
        }
    };
    let mut messages = ordered.messages().await.expect("messages");
    let mut out = Vec::with_capacity(count as usize);
    while (out.len() as u64) < count {
        let message = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .expect("stream read stalled")
            .expect("stream read ended")
            .expect("stream read failed");
        let info = message.info().expect("JetStream metadata");
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        out.push(Stored {
            sequence: info.stream_sequence,
            msg_id: header(headers::MSG_ID),
            aggregate_id: header(headers::AGGREGATE_ID),
            version: header(headers::AGGREGATE_VERSION).parse().unwrap_or(0),
        });
    }
    out
}

/// What the stream holds compared with what was acknowledged.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Appends acknowledged.
    pub acknowledged: u64,
    /// Acknowledged appends found at the sequence they were acknowledged with.
    pub present: u64,
    /// Event ids (or aggregate versions) stored more than once.
    pub doubled: u64,
    /// Appends that needed more than one attempt.
    pub retried: u64,
    /// Appends the store answered as duplicates (an earlier attempt, the writer's or the
    /// store's own after a reconnection, had been stored).
    pub resolved_as_duplicate: u64,
    /// Messages in the stream.
    pub stored: u64,
}

/// Checks the stream against the acknowledgements: every acknowledged event is stored exactly
/// once at its acknowledged sequence, each aggregate's versions run 1..=n without a gap, and
/// nothing else is stored.
///
/// # Panics
///
/// When any of that does not hold.
pub fn verify(plan: &Plan, acked: &[Acked], stored: &[Stored]) -> Verdict {
    let mut by_id: HashMap<&str, Vec<&Stored>> = HashMap::with_capacity(stored.len());
    let mut versions: HashMap<&str, BTreeMap<u64, u64>> = HashMap::new();
    for s in stored {
        by_id.entry(s.msg_id.as_str()).or_default().push(s);
        *versions
            .entry(s.aggregate_id.as_str())
            .or_default()
            .entry(s.version)
            .or_default() += 1;
    }
    let mut v = Verdict {
        acknowledged: acked.len() as u64,
        stored: stored.len() as u64,
        ..Verdict::default()
    };
    v.doubled = by_id.values().filter(|s| s.len() > 1).count() as u64
        + versions
            .values()
            .flat_map(|m| m.values())
            .filter(|n| **n > 1)
            .count() as u64;
    let mut missing = Vec::new();
    for a in acked {
        if a.retries > 0 {
            v.retried += 1;
        }
        if a.result.duplicate {
            v.resolved_as_duplicate += 1;
        }
        let id = event_id(a.aggregate, a.version).to_string();
        match by_id.get(id.as_str()).map(Vec::as_slice) {
            Some([one]) if Some(one.sequence) == a.result.last_sequence().map(|s| s.0) => {
                v.present += 1;
            }
            other => missing.push((a.aggregate, a.version, other.map(<[_]>::len))),
        }
    }
    assert!(
        missing.is_empty(),
        "{} acknowledged appends not stored once at their sequence, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(v.doubled, 0, "events stored twice");
    for (id, got) in &versions {
        let expected: Vec<u64> = (1..=got.len() as u64).collect();
        let have: Vec<u64> = got.keys().copied().collect();
        assert_eq!(have, expected, "versions of {id} are not gap-free");
    }
    assert_eq!(
        v.stored,
        plan.total(),
        "the stream holds something that was not acknowledged"
    );
    assert_eq!(v.acknowledged, plan.total());
    v
}

/// The longest time without an acknowledgement between `from` and `until` (or the last
/// acknowledgement).
pub fn longest_pause(acked: &[Acked], from: Instant, until: Option<Instant>) -> Duration {
    let mut times: Vec<Instant> = acked
        .iter()
        .map(|a| a.at)
        .filter(|t| *t >= from && until.is_none_or(|u| *t < u))
        .collect();
    times.sort();
    let mut last = from;
    let mut longest = Duration::ZERO;
    for t in times {
        longest = longest.max(t - last);
        last = t;
    }
    longest
}

/// A read model that counts events and remembers every sequence it applied, in its state (so
/// in its checkpoint): applying a sequence twice is an error.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Counter {
    /// Events applied.
    pub applied: u64,
    /// The stream sequence of each event applied.
    pub seen: BTreeSet<u64>,
}

/// The events the counter reads: any event of the `reliab` domains (it only looks at
/// envelopes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, cim_nats::NatsEvent)]
#[nats_event(domain = "reliab", aggregate = "item")]
pub enum ItemEvent {
    /// A note on an item.
    #[nats_event(operation = "noted")]
    Noted {
        /// The aggregate's number.
        aggregate: u64,
        /// Its version.
        version: u64,
        /// Some text.
        note: String,
    },
}

#[async_trait]
impl Projection for Counter {
    type Event = ItemEvent;
    const NAME: &'static str = "reliability-counter";

    async fn apply(&mut self, event: &Envelope<ItemEvent>) -> Result<(), ProjectionError> {
        let sequence = event.sequence().0;
        if !self.seen.insert(sequence) {
            return Err(ProjectionError::Apply {
                projection: Self::NAME.to_owned(),
                sequence,
                reason: "applied twice".to_owned(),
            });
        }
        self.applied += 1;
        Ok(())
    }
}

/// The domain of [`ItemEvent`], for stores the counter reads.
pub const DOMAIN: &str = "reliab";

/// How many appends were sent again because their outcome was unknown: by the store itself when
/// the client reconnected while they were in flight, or by a repository's command lane after a
/// timeout or a lost connection (counted from their debug logs; [`count_store_resends`] installs
/// the counter).
pub static STORE_RESENDS: AtomicU64 = AtomicU64::new(0);

/// Counts the store's own resends into [`STORE_RESENDS`] (once per test binary).
pub fn count_store_resends() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer as _;
    struct Count;
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Count {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct Message(bool);
            impl tracing::field::Visit for Message {
                fn record_debug(
                    &mut self,
                    field: &tracing::field::Field,
                    value: &dyn std::fmt::Debug,
                ) {
                    let text = format!("{value:?}");
                    if field.name() == "message"
                        && (text.contains("reconnected during an append")
                            || text.contains("append outcome unknown"))
                    {
                        self.0 = true;
                    }
                }
            }
            let mut m = Message(false);
            event.record(&mut m);
            if m.0 {
                STORE_RESENDS.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let subscriber = tracing_subscriber::registry().with(
            Count.with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("cim_nats", tracing::Level::DEBUG),
            ),
        );
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

/// A client of every server of a cluster.
pub async fn cluster_connect(urls: &[String]) -> async_nats::Client {
    async_nats::connect(urls)
        .await
        .expect("connect to the cluster")
}

/// The [`DOMAIN`] store on three replicas, retried until the cluster can create it (or `wait`
/// passes).
pub async fn cluster_store(client: async_nats::Client, wait: Duration) -> JetStreamEventStore {
    let config = cim_nats::jetstream::StoreConfig::for_domain(DOMAIN).with_replicas(3);
    let deadline = Instant::now() + wait;
    loop {
        match JetStreamEventStore::new(client.clone(), config.clone()).await {
            Ok(store) => return store,
            Err(e) if Instant::now() < deadline => {
                eprintln!("store not ready yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("store: {e}"),
        }
    }
}

/// The index of cluster server `n1`..`n3`.
pub fn server_index(name: &str) -> usize {
    name.trim_start_matches('n')
        .parse::<usize>()
        .expect("server name n<i>")
        - 1
}
