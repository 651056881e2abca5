//! Messages another client stored that the NATS client cannot parse (headers that are not UTF-8,
//! a header name with a space, a line without a colon, a block that is not `NATS/1.0`), a stored
//! status line, a 60 KB header and a body of `max_payload`, written over a raw socket between
//! valid events. Every reader names each unreadable one by its sequence and goes on: no stall,
//! no event lost, at most one reconnection per message the client cannot parse, and an append
//! pipeline sharing the reader's client keeps working throughout.

mod support;

use std::time::Duration;

use async_trait::async_trait;
use cim_nats::jetstream::{JetStreamEventStore, StoreConfig};
use cim_nats::{
    replay, AggregateId, Envelope, EventId, EventStore, EventStoreExt, ExpectedVersion,
    OnUnreadable, Projection, ProjectionError, ReadFrom, StoreError, StoreErrorKind,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use support::bank::AccountEvent;
use support::hostile::{connects, write_all, Expect, Pipeline};

#[track_caller]
fn assert_names(err: &StoreError, sequence: u64) {
    match err.kind() {
        StoreErrorKind::Decode { sequence: s, .. } => assert_eq!(*s, sequence, "{err}"),
        other => panic!("expected a decode error naming {sequence}, got {other:?}: {err}"),
    }
    assert!(
        err.to_string().contains(&format!("sequence {sequence}")),
        "{err}"
    );
}

async fn store(client: &async_nats::Client) -> JetStreamEventStore {
    JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("bank"))
        .await
        .unwrap()
}

/// `EventStore::stream`: one item per stored message, in order, with no sequence missing;
/// those the client cannot parse as errors naming their sequence, the others as stored events
/// (an untyped read does not decode payloads); within seconds, with at most one reconnection per message the
/// client cannot parse, while appends on the same client go on. `read_all` then fails naming
/// the first unreadable message instead of returning a stream with holes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_stream_reads_name_every_unreadable_message_and_skip_none() {
    let (server, client) = support::server().await;
    let store = store(&client).await;
    let written = write_all(&store, &server.url(), "s").await;
    let before = connects(&client);
    let pipeline = Pipeline::start(store.clone(), "s");

    let started = std::time::Instant::now();
    let items: Vec<_> = tokio::time::timeout(
        Duration::from_secs(20),
        store.stream(ReadFrom::Start).collect::<Vec<_>>(),
    )
    .await
    .expect("the read ends");
    let took = started.elapsed();
    let reconnections = connects(&client) - before;
    let report = pipeline.stop().await;

    let sequences: Vec<u64> = items
        .iter()
        .map(|item| match item {
            Ok(event) => event.stream_sequence.0,
            Err(e) => match e.kind() {
                StoreErrorKind::Decode { sequence, .. } => *sequence,
                other => panic!("not a decode error: {other:?}: {e}"),
            },
        })
        .collect();
    let expected: Vec<u64> = (1..=*sequences.last().unwrap()).collect();
    assert_eq!(sequences, expected, "one item per stored message, in order");
    for (seq, id, hostile) in &written.messages {
        let item = &items[(*seq - 1) as usize];
        match hostile.as_ref().map(|h| h.expect) {
            Some(Expect::Unparseable) => assert_names(item.as_ref().err().unwrap(), *seq),
            _ => {
                let event = item.as_ref().unwrap_or_else(|e| panic!("{seq}: {e}"));
                assert_eq!(&event.aggregate_id, id);
            }
        }
    }
    // Typed, the body that is not JSON is named too.
    let typed: Vec<_> = store
        .stream_events::<AccountEvent>(ReadFrom::Start)
        .take(written.last() as usize)
        .collect()
        .await;
    for (seq, _, hostile) in &written.messages {
        let item = &typed[(*seq - 1) as usize];
        match hostile.as_ref().map(|h| h.expect) {
            Some(Expect::Unparseable | Expect::Undecodable) => {
                assert_names(item.as_ref().err().unwrap(), *seq)
            }
            _ => assert!(item.is_ok(), "{seq}"),
        }
    }
    assert!(took < Duration::from_secs(5), "the read took {took:?}");
    assert!(
        reconnections <= written.unparseable(),
        "{reconnections} reconnections for {} unparseable messages",
        written.unparseable()
    );
    Pipeline::assert_kept_working(&report);

    // All at once: the first unreadable message is the error, nothing is returned with holes.
    let err = store.read_all().await.unwrap_err();
    assert_names(&err, written.unparseable_sequences()[0]);
}

/// Counts the events it applies.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Seen(Vec<u64>);

#[async_trait]
impl Projection for Seen {
    type Event = AccountEvent;
    const NAME: &'static str = "seen";

    async fn apply(&mut self, event: &Envelope<AccountEvent>) -> Result<(), ProjectionError> {
        self.0.push(event.sequence().0);
        Ok(())
    }
}

/// `replay` with either policy, from the start and from the middle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_stop_or_skip_at_each_unreadable_message() {
    let (server, client) = support::server().await;
    let store = store(&client).await;
    let written = write_all(&store, &server.url(), "r").await;
    let pipeline = Pipeline::start(store.clone(), "r");

    let mut seen = Seen::default();
    let err = replay(&store, &mut seen, ReadFrom::Start, OnUnreadable::Stop)
        .await
        .unwrap_err();
    let first = written.unreadable()[0];
    match &err {
        ProjectionError::Unreadable { source, .. } => assert_names(source, first),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        seen.0,
        vec![1],
        "applied up to the first unreadable message"
    );

    let mut seen = Seen::default();
    let last = tokio::time::timeout(
        Duration::from_secs(10),
        replay(
            &store,
            &mut seen,
            ReadFrom::Start,
            OnUnreadable::SkipAndRecord,
        ),
    )
    .await
    .expect("the replay ends")
    .unwrap();
    assert!(last.0 >= written.last());
    let applied: Vec<u64> = seen
        .0
        .iter()
        .copied()
        .filter(|s| *s <= written.last())
        .collect();
    assert_eq!(
        applied,
        written.readable(),
        "every readable event, once, in order"
    );

    // From the middle: right after the first unreadable message.
    let mut seen = Seen::default();
    replay(
        &store,
        &mut seen,
        ReadFrom::Sequence(cim_nats::StreamSequence(first + 1)),
        OnUnreadable::SkipAndRecord,
    )
    .await
    .unwrap();
    let applied: Vec<u64> = seen
        .0
        .iter()
        .copied()
        .filter(|s| *s <= written.last())
        .collect();
    let expected: Vec<u64> = written
        .readable()
        .into_iter()
        .filter(|s| *s > first)
        .collect();
    assert_eq!(applied, expected);
    Pipeline::assert_kept_working(&pipeline.stop().await);
}

/// Loading an aggregate whose history holds an unreadable message fails at once, naming it;
/// later loads do not reconnect again; the aggregate can still be appended to (the store needs
/// only its last version); other aggregates load as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_name_the_unreadable_message_at_once() {
    let (server, client) = support::server().await;
    let store = store(&client).await;
    let written = write_all(&store, &server.url(), "l").await;
    let pipeline = Pipeline::start(store.clone(), "l");
    let before = connects(&client);
    for round in 0..2 {
        for (seq, id, hostile) in written.hostile() {
            let started = std::time::Instant::now();
            let untyped = store.read_aggregate(id, 0).await;
            let typed = store.load_events::<AccountEvent>(id, 0).await;
            match hostile.expect {
                Expect::Readable => {
                    assert_eq!(untyped.unwrap().len(), 1, "{}", hostile.name);
                    assert_eq!(typed.unwrap().len(), 1, "{}", hostile.name);
                }
                Expect::Undecodable => {
                    assert_eq!(untyped.unwrap().len(), 1, "{}", hostile.name);
                    assert_names(&typed.err().unwrap(), seq);
                }
                Expect::Unparseable => {
                    assert_names(&untyped.err().unwrap(), seq);
                    assert_names(&typed.err().unwrap(), seq);
                }
            }
            let took = started.elapsed();
            assert!(
                took < Duration::from_secs(2),
                "round {round}: loading past {} took {took:?}",
                hostile.name
            );
        }
    }
    let reconnections = connects(&client) - before;
    assert!(
        reconnections <= written.unparseable(),
        "{reconnections} reconnections for {} unparseable messages over two rounds",
        written.unparseable()
    );
    for (_, id, hostile) in written.hostile() {
        let r = store
            .append_events(
                id,
                ExpectedVersion::Exact(1),
                &[AccountEvent::Deposited {
                    id: EventId::new(),
                    amount: 1,
                }],
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("append after {}: {e}", hostile.name));
        assert_eq!(r.version, 2);
    }
    for (_, id, hostile) in &written.messages {
        if hostile.is_none() {
            assert_eq!(store.read_aggregate(id, 0).await.unwrap().len(), 1);
        }
    }
    Pipeline::assert_kept_working(&pipeline.stop().await);
    let _ = AggregateId::new("unused").unwrap();
}

/// A projection runner, with either policy: `Stop` stops at the first unreadable message and a
/// waiter is told why; `SkipAndRecord` goes past every one, records each, and applies every
/// readable event once, within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projection_runners_stop_or_skip_at_each_unreadable_message() {
    use cim_nats::jetstream::{ProjectionOptions, ProjectionRunner};
    if std::env::var("HOSTILE_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("cim_nats=debug")
            .try_init();
    }
    let (server, client) = support::server().await;
    let store = store(&client).await;
    let written = write_all(&store, &server.url(), "p").await;
    let pipeline = Pipeline::start(store.clone(), "p");
    let last = cim_nats::StreamSequence(written.last());
    let first = written.unreadable()[0];

    // The stopping runner on a connection of its own, so that the reconnections counted below
    // are the other runner's.
    let other = self::store(&server.connect().await.unwrap()).await;
    let stop = ProjectionRunner::start::<Seen>(&other, ProjectionOptions::default())
        .await
        .unwrap();
    let err = stop
        .wait_for(last, Duration::from_secs(5))
        .await
        .unwrap_err();
    match &err {
        ProjectionError::Stopped { cause, .. } => match &**cause {
            ProjectionError::Unreadable { source, .. } => assert_names(source, first),
            other => panic!("{other:?}"),
        },
        other => panic!("expected Stopped, got {other:?}"),
    }
    assert_eq!(stop.applied().0, first - 1);
    drop(err);
    assert!(stop.shutdown().await.is_err());

    let before = connects(&client);
    let skip = ProjectionRunner::start::<Seen>(
        &store,
        ProjectionOptions {
            bucket: "SKIPPING".into(),
            on_unreadable: OnUnreadable::SkipAndRecord,
            ..ProjectionOptions::default()
        },
    )
    .await
    .unwrap();
    skip.wait_for(last, Duration::from_secs(5))
        .await
        .expect("every later event arrives within 5 s");
    let skipped: Vec<u64> = skip.skipped().iter().map(|s| s.sequence).collect();
    assert_eq!(skipped, written.unreadable());
    let applied: Vec<u64> = skip
        .read()
        .await
        .0
        .iter()
        .copied()
        .filter(|s| *s <= written.last())
        .collect();
    assert_eq!(applied, written.readable());
    let reconnections = connects(&client) - before;
    assert!(
        reconnections <= written.unparseable(),
        "{reconnections} reconnections for {} unparseable messages",
        written.unparseable()
    );
    // Appends after the bad messages keep arriving.
    let more = support::hostile::valid(&store, &AggregateId::new("p-later").unwrap()).await;
    skip.wait_for(cim_nats::StreamSequence(more), Duration::from_secs(5))
        .await
        .unwrap();
    skip.shutdown().await.unwrap();
    Pipeline::assert_kept_working(&pipeline.stop().await);
}

/// The seed's topology rebuilt from a stream holding a message the client cannot parse: an
/// error naming it, not a topology missing events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topology_rebuild_names_the_unreadable_message() {
    use cim_domain_infrastructure::{InfrastructureAggregate, InfrastructureId, MessageIdentity};
    use cim_infrastructure_nats::event_store::EventStoreConfig;
    use cim_infrastructure_nats::projections::ProjectionManager;
    let (server, client) = support::server().await;
    let store = cim_infrastructure_nats::event_store::JetStreamEventStore::new(
        client.clone(),
        EventStoreConfig::default(),
    )
    .await
    .unwrap();
    let mut sequences = Vec::new();
    for i in 0..3 {
        let identity = MessageIdentity::new_from_user("ops");
        let id = InfrastructureId::new();
        let mut aggregate = InfrastructureAggregate::new(id);
        let events = aggregate
            .handle_register_compute_resource(support::infra::spec(&format!("h{i}")), &identity)
            .unwrap();
        let r = store
            .append_events(&id.into(), ExpectedVersion::NoStream, &events, None)
            .await
            .unwrap();
        sequences.push(r.sequences[0].0);
        if i == 0 {
            let url = server.url();
            let bad = tokio::task::spawn_blocking(move || {
                cim_nats::testing::publish_raw(
                    &url,
                    "infrastructure.compute.registered.foreign",
                    b"NATS/1.0\r\nCim-Event-Type: ComputeResourceRegistered\r\nCim-Actor: \xff\xfe\r\n\r\n",
                    b"{}",
                )
            })
            .await
            .unwrap()
            .unwrap();
            sequences.push(bad);
        }
    }
    let manager = ProjectionManager::new();
    let err = tokio::time::timeout(Duration::from_secs(10), manager.rebuild_from(&store))
        .await
        .expect("no stall")
        .unwrap_err();
    match &err {
        ProjectionError::Unreadable { source, .. } => assert_names(source, sequences[1]),
        other => panic!("{other:?}"),
    }
}

/// What a subscriber test's handler saw, by stream sequence.
type Handled = std::sync::Arc<std::sync::Mutex<Vec<u64>>>;

async fn dead_letters(
    client: &async_nats::Client,
) -> Vec<async_nats::jetstream::message::StreamMessage> {
    let js = async_nats::jetstream::new(client.clone());
    let Ok(mut stream) = js.get_stream("DLQ").await else {
        return Vec::new();
    };
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.push(m);
        }
    }
    out
}

/// A durable subscriber: every readable event reaches the handler once, within seconds; each
/// message the client cannot parse goes to the dead letter (its headers read leniently) and is
/// terminated; the body of `max_payload` that is not JSON goes there too, left out of the
/// letter so that it fits; one reconnection per unparseable message; appends on the same client
/// go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_subscriber_dead_letters_each_unreadable_message_and_loses_nothing() {
    use cim_nats::jetstream::subscriber::dead_letter as dl;
    use cim_nats::jetstream::subscriber::{DeliverPolicy, EventSubscriberBuilder};
    use cim_nats::{HandlerError, TypedHandler};
    let (server, client) = support::server().await;
    let store = store(&client).await;
    let written = write_all(&store, &server.url(), "d").await;
    let pipeline = Pipeline::start(store.clone(), "d");
    let before = connects(&client);
    let handled: Handled = Default::default();
    let seen = handled.clone();
    let started = std::time::Instant::now();
    let handle = EventSubscriberBuilder::new()
        .client(client.clone())
        .subject("bank.account.opened.>")
        .durable("hostile")
        .deliver_policy(DeliverPolicy::All)
        .handler(TypedHandler::<AccountEvent, _>::new(
            move |e: Envelope<AccountEvent>| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(e.sequence().0);
                    Ok::<_, HandlerError>(())
                }
            },
        ))
        .build()
        .unwrap()
        .subscribe()
        .await
        .unwrap();
    let readable = written.readable();
    support::wait_until(
        Duration::from_secs(5),
        "every readable event handled",
        || {
            let done = readable.iter().all(|s| handled.lock().unwrap().contains(s));
            async move { done }
        },
    )
    .await;
    let took = started.elapsed();
    support::wait_until(
        Duration::from_secs(5),
        "a dead letter per unreadable message",
        || {
            let client = client.clone();
            let n = written.unreadable().len();
            async move { dead_letters(&client).await.len() >= n }
        },
    )
    .await;
    let reconnections = connects(&client) - before;
    handle.shutdown().await.unwrap();
    let report = pipeline.stop().await;

    let mut got = handled.lock().unwrap().clone();
    got.sort_unstable();
    assert_eq!(got, readable, "each readable event handled once");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let letters = dead_letters(&client).await;
    assert_eq!(letters.len(), written.unreadable().len());
    for (seq, _, hostile) in written.hostile() {
        if hostile.expect == Expect::Readable {
            continue;
        }
        let letter = letters
            .iter()
            .find(|m| {
                m.headers.get(dl::ORIGINAL_SEQUENCE).map(|v| v.as_str())
                    == Some(seq.to_string().as_str())
            })
            .unwrap_or_else(|| panic!("no dead letter for {} at {seq}", hostile.name));
        assert_eq!(
            letter.headers.get(dl::REASON).unwrap().as_str(),
            dl::REASON_UNDECODABLE
        );
        let error = letter.headers.get(dl::ERROR).unwrap().as_str();
        match hostile.expect {
            Expect::Unparseable => {
                assert!(
                    error.contains("cannot read this message's headers"),
                    "{error}"
                );
                assert_eq!(letter.payload, hostile.payload);
            }
            _ => {
                // The body of max_payload is left out; the letter says where the event is.
                assert!(letter.payload.is_empty());
                let body = letter.headers.get(dl::BODY).unwrap().as_str();
                assert!(body.contains(&format!("sequence {seq}")), "{body}");
            }
        }
    }
    assert!(
        reconnections <= written.unparseable(),
        "{reconnections} reconnections for {} unparseable messages",
        written.unparseable()
    );
    Pipeline::assert_kept_working(&report);
    // Started again, the durable consumer has nothing more to deliver: each bad message was
    // terminated, never to come back.
    let js = async_nats::jetstream::new(client.clone());
    let mut consumer = js
        .get_stream("BANK_EVENTS")
        .await
        .unwrap()
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>("hostile")
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(info.num_ack_pending, 0, "{info:?}");
}

/// The server finds a pending message by the stream sequence of an acknowledgement subject
/// built by hand (`$JS.ACK.<stream>.<consumer>.1.<stream seq>.<delivery seq>.0.0`), whatever
/// delivery sequence it names among those delivered: a `+TERM` ends it, a `-NAK` brings it
/// back at once. The subscriber relies on this to terminate a message it never received intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgement_subjects_built_for_a_stream_sequence_are_honoured() {
    use async_nats::jetstream::consumer::pull::Config;
    use futures::StreamExt as _;
    let (_server, client) = support::server().await;
    let store = store(&client).await;
    for i in 0..3 {
        support::hostile::valid(&store, &AggregateId::new(format!("a{i}")).unwrap()).await;
    }
    let js = async_nats::jetstream::new(client.clone());
    let consumer = js
        .get_stream("BANK_EVENTS")
        .await
        .unwrap()
        .create_consumer(Config {
            durable_name: Some("manual".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    // Delivered, never acknowledged.
    let mut batch = consumer.fetch().max_messages(3).messages().await.unwrap();
    while batch.next().await.is_some() {}
    // Terminate 1, give back 2, with the latest delivery sequence (3) in both subjects.
    client
        .request("$JS.ACK.BANK_EVENTS.manual.1.1.3.0.0", "+TERM".into())
        .await
        .unwrap();
    client
        .publish("$JS.ACK.BANK_EVENTS.manual.1.2.3.0.0", "-NAK".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let mut again = consumer
        .fetch()
        .max_messages(3)
        .expires(Duration::from_millis(500))
        .messages()
        .await
        .unwrap();
    let mut redelivered = Vec::new();
    while let Some(m) = again.next().await {
        let m = m.unwrap();
        redelivered.push(m.info().unwrap().stream_sequence);
        m.ack().await.unwrap();
    }
    assert_eq!(
        redelivered,
        vec![2],
        "1 terminated, 2 back at once, 3 still waiting"
    );
}
