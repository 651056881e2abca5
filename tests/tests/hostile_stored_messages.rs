//! Messages written into a domain's stream by a foreign client: missing headers, headers of the
//! wrong type, huge values, invalid JSON, payloads near `max_payload`. Readers never panic and
//! never skip one silently: each bad message is a typed error naming its sequence in
//! `EventStore::stream`, `read_aggregate` and `stream_events`; a subscriber sends it to the dead
//! letter with the reason; a projection stops or skips and records it, as its policy says.

mod support;

use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use async_nats::HeaderMap;
use async_trait::async_trait;
use cim_nats::jetstream::subscriber::dead_letter as dl;
use cim_nats::jetstream::subscriber::{DeliverPolicy, EventSubscriberBuilder};
use cim_nats::jetstream::{JetStreamEventStore, ProjectionOptions, ProjectionRunner, StoreConfig};
use cim_nats::{
    AggregateId, Envelope, EventId, EventStore, EventStoreExt, ExpectedVersion, HandlerError,
    NewEvent, OnUnreadable, Projection, ProjectionError, ReadFrom, StoreError, StoreErrorKind,
    TypedHandler,
};
use futures::StreamExt;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use serde::{Deserialize, Serialize};
use support::bank::AccountEvent;

/// One message as a foreign client writes it.
#[derive(Debug, Clone)]
struct Foreign {
    operation: &'static str,
    headers: Vec<(&'static str, String)>,
    payload: Vec<u8>,
}

const NAMES: &[&str] = &[
    "Nats-Msg-Id",
    "Cim-Event-Type",
    "Cim-Event-Version",
    "Cim-Aggregate-Type",
    "Cim-Aggregate-Id",
    "Cim-Aggregate-Version",
    "Cim-Correlation-Id",
    "Cim-Causation-Id",
    "Cim-Actor",
    "Cim-Timestamp",
    "Content-Type",
    "X-Other",
];

/// A header value: right, of the wrong type, any text, or huge. (A value cannot hold `\r` or
/// `\n`, and a value the client sends is trimmed by the receiving client.)
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => (1u64..5).prop_map(|n| n.to_string()),
        1 => Just("one".to_owned()),
        1 => Just("-1".to_owned()),
        1 => Just("18446744073709551616".to_owned()),
        1 => Just(uuid::Uuid::new_v4().to_string()),
        1 => Just("2024-02-30T25:61:00Z".to_owned()),
        1 => Just("Opened".to_owned()),
        2 => "[!-~]{1,30}",
        1 => (1000usize..20_000).prop_map(|n| "9".repeat(n)),
    ]
}

/// A payload: the right event's JSON, other JSON, not JSON, or near the server's limit.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => Just(Vec::new()), // replaced by the event's own JSON
        1 => Just(b"{\"Opened\":{\"owner\":17}}".to_vec()),
        1 => Just(b"not json".to_vec()),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
        1 => Just(b"null".to_vec()),
        1 => (0usize..2).prop_map(|_| {
            let mut p = b"\"".to_vec();
            p.extend(std::iter::repeat_n(b'x', 1_048_576 - 4096));
            p.push(b'"');
            p
        }),
    ]
}

/// A well-formed event's headers, then up to three removed or replaced.
fn foreign() -> impl Strategy<Value = Foreign> {
    (
        proptest::sample::select(vec!["opened", "deposited", "withdrawn", "closed"]),
        proptest::collection::vec(
            (
                proptest::sample::select(NAMES),
                proptest::option::of(value()),
            ),
            0..4,
        ),
        payload(),
    )
        .prop_map(|(operation, changes, payload)| {
            let event_type = match operation {
                "opened" => "Opened",
                "deposited" => "Deposited",
                "withdrawn" => "Withdrawn",
                _ => "Closed",
            };
            let mut headers: Vec<(&'static str, String)> = vec![
                ("Nats-Msg-Id", uuid::Uuid::new_v4().to_string()),
                ("Cim-Event-Type", event_type.to_owned()),
                ("Cim-Event-Version", "1".to_owned()),
                ("Cim-Aggregate-Type", "account".to_owned()),
                ("Cim-Aggregate-Version", "1".to_owned()),
                ("Cim-Timestamp", chrono::Utc::now().to_rfc3339()),
                ("Content-Type", "application/json".to_owned()),
            ];
            for (name, change) in changes {
                headers.retain(|(n, _)| *n != name);
                if let Some(v) = change {
                    headers.push((name, v));
                }
            }
            Foreign {
                operation,
                headers,
                payload,
            }
        })
}

fn json_of(operation: &str) -> Vec<u8> {
    let event = match operation {
        "opened" => AccountEvent::Opened {
            id: EventId::new(),
            owner: "ada".to_owned(),
        },
        "deposited" => AccountEvent::Deposited {
            id: EventId::new(),
            amount: 5,
        },
        _ => AccountEvent::Withdrawn {
            id: EventId::new(),
            amount: 1,
        },
    };
    NewEvent::from_event(&event).unwrap().payload.to_vec()
}

/// Writes `message` on `bank.account.{operation}.{id}` with a plain client; the sequence it got,
/// or `None` if JetStream refused it (e.g. a duplicate message id).
async fn write(js: &async_nats::jetstream::Context, id: &str, message: &Foreign) -> Option<u64> {
    let mut headers = HeaderMap::new();
    for (name, value) in &message.headers {
        headers.append(*name, value.as_str());
    }
    let payload = if message.payload.is_empty() {
        json_of(message.operation)
    } else {
        message.payload.clone()
    };
    let subject = format!("bank.account.{}.{id}", message.operation);
    let ack = js
        .publish_with_headers(subject, headers, payload.into())
        .await
        .ok()?
        .await
        .ok()?;
    (!ack.duplicate).then_some(ack.sequence)
}

#[track_caller]
fn assert_names_sequence(err: &StoreError, sequence: u64) {
    match err.kind() {
        StoreErrorKind::Decode {
            sequence: s,
            reason,
        } => {
            assert_eq!(*s, sequence, "{err}");
            assert!(!reason.is_empty());
        }
        other => panic!("expected a decode error for sequence {sequence}, got {other:?}: {err}"),
    }
    assert!(
        err.to_string().contains(&format!("sequence {sequence}")),
        "{err}"
    );
}

/// Generated foreign messages, written to a real stream and read back every way: one item per
/// message, in order; an event only if it is consistent; otherwise a decode error naming the
/// message's sequence. Nothing panics, nothing is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_foreign_messages_are_read_or_named_every_way() {
    let (_server, client) = support::server().await;
    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("bank"))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        ..Config::default()
    });
    let cases = if std::env::var("CIM_NATS_SOAK").is_ok_and(|v| v == "1") {
        200
    } else {
        6
    };
    let (mut decoded, mut refused) = (0, 0);
    for case in 0..cases {
        let messages = proptest::collection::vec(foreign(), 1..30)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let from = store.last_sequence().await.unwrap().0 + 1;
        let mut written: Vec<(AggregateId, u64, &Foreign)> = Vec::new();
        for (i, message) in messages.iter().enumerate() {
            let id = AggregateId::new(format!("c{case}-m{i}")).unwrap();
            if let Some(seq) = write(&js, id.as_str(), message).await {
                written.push((id, seq, message));
            }
        }

        let items: Vec<_> = store
            .stream(ReadFrom::Sequence(cim_nats::StreamSequence(from)))
            .collect()
            .await;
        let typed: Vec<_> = store
            .stream_events::<AccountEvent>(ReadFrom::Sequence(cim_nats::StreamSequence(from)))
            .collect()
            .await;
        assert_eq!(items.len(), written.len(), "one item per message");
        assert_eq!(typed.len(), written.len(), "one typed item per message");
        for (((id, seq, message), item), typed) in written.iter().zip(&items).zip(&typed) {
            match item {
                Ok(event) => {
                    decoded += 1;
                    assert_eq!(event.stream_sequence.0, *seq);
                    assert_eq!(&event.aggregate_id, id);
                    assert_eq!(
                        event.subject,
                        format!("bank.account.{}.{id}", message.operation)
                    );
                }
                Err(e) => {
                    refused += 1;
                    assert_names_sequence(e, *seq);
                }
            }
            match typed {
                Ok(envelope) => {
                    assert!(item.is_ok());
                    assert_eq!(envelope.stored.stream_sequence.0, *seq);
                }
                Err(e) => assert_names_sequence(e, *seq),
            }
            match store.read_aggregate(id, 0).await {
                Ok(events) => {
                    assert_eq!(events.len(), 1);
                    assert_eq!(Some(&events[0]), item.as_ref().ok());
                }
                Err(e) => assert_names_sequence(&e, *seq),
            }
            match store.load_events::<AccountEvent>(id, 0).await {
                Ok(events) => assert!(typed.is_ok() && events.len() == 1),
                Err(e) => assert_names_sequence(&e, *seq),
            }
        }
    }
    println!("{decoded} foreign messages read as events, {refused} refused with their sequence");
    assert!(
        decoded > 0 && refused > 0,
        "{decoded} decoded, {refused} refused"
    );
}

/// The foreign messages of the subscriber and projection tests, with what each is.
struct Written {
    good: Vec<u64>,
    bad: Vec<(u64, &'static str)>,
}

/// Two good events around four foreign ones: no headers at all, a version header of the wrong
/// type, invalid JSON under valid headers, and a payload near `max_payload`.
async fn write_foreign_set(client: &async_nats::Client, store: &JetStreamEventStore) -> Written {
    let js = async_nats::jetstream::new(client.clone());
    let mut good = Vec::new();
    let mut bad = Vec::new();
    let opened = |n: u64| AccountEvent::Opened {
        id: EventId::new(),
        owner: format!("owner {n}"),
    };
    let r = store
        .append_events(
            &AggregateId::new("good-1").unwrap(),
            ExpectedVersion::NoStream,
            &[opened(1)],
            None,
        )
        .await
        .unwrap();
    good.push(r.sequences[0].0);

    let valid_headers = |version: &str| {
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", uuid::Uuid::new_v4().to_string().as_str());
        h.insert("Cim-Event-Type", "Opened");
        h.insert("Cim-Aggregate-Version", version);
        h
    };
    let publish = |subject: &'static str, headers: Option<HeaderMap>, payload: Vec<u8>| {
        let js = js.clone();
        async move {
            let ack = match headers {
                Some(h) => js.publish_with_headers(subject, h, payload.into()).await,
                None => js.publish(subject, payload.into()).await,
            };
            ack.unwrap().await.unwrap().sequence
        }
    };
    bad.push((
        publish("bank.account.opened.no-headers", None, json_of("opened")).await,
        "Cim-Event-Type is missing",
    ));
    bad.push((
        publish(
            "bank.account.opened.wrong-type",
            Some(valid_headers("one")),
            json_of("opened"),
        )
        .await,
        "Cim-Aggregate-Version",
    ));
    bad.push((
        publish(
            "bank.account.opened.not-json",
            Some(valid_headers("1")),
            b"{not json".to_vec(),
        )
        .await,
        "",
    ));
    let max = client.server_info().max_payload;
    let mut huge = b"{\"Opened\":{\"owner\":\"".to_vec();
    huge.extend(std::iter::repeat_n(b'x', max - 4096));
    huge.extend(b"\"}}");
    bad.push((
        publish("bank.account.opened.huge", Some(valid_headers("1")), huge).await,
        "",
    ));

    let r = store
        .append_events(
            &AggregateId::new("good-2").unwrap(),
            ExpectedVersion::NoStream,
            &[opened(2)],
            None,
        )
        .await
        .unwrap();
    good.push(r.sequences[0].0);
    Written { good, bad }
}

async fn dead_letters(client: &async_nats::Client) -> Vec<StreamMessage> {
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

fn header<'a>(m: &'a StreamMessage, name: &str) -> Option<&'a str> {
    m.headers.get(name).map(|v| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_dead_letters_every_foreign_message_with_its_reason() {
    let (_server, client) = support::server().await;
    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("bank"))
        .await
        .unwrap();
    let written = write_foreign_set(&client, &store).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let handle = EventSubscriberBuilder::new()
        .client(client.clone())
        .subject("bank.>")
        .handler(TypedHandler::<AccountEvent, _>::new(
            move |envelope: Envelope<AccountEvent>| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(envelope.sequence().0);
                    Ok::<_, HandlerError>(())
                }
            },
        ))
        .deliver_policy(DeliverPolicy::All)
        .backoff([Duration::from_secs(60)])
        .build()
        .unwrap()
        .subscribe()
        .await
        .unwrap();
    let consumer = handle.consumers()[0].name.clone();
    let mut handled = Vec::new();
    while handled.len() < written.good.len() {
        let seq = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("good events are handled")
            .unwrap();
        handled.push(seq);
    }
    support::wait_until(
        Duration::from_secs(10),
        "a dead letter per foreign message",
        || {
            let client = client.clone();
            let n = written.bad.len();
            async move { dead_letters(&client).await.len() >= n }
        },
    )
    .await;
    handle.shutdown().await.unwrap();

    handled.sort_unstable();
    assert_eq!(
        handled, written.good,
        "only the good events reach the handler"
    );
    assert!(rx.try_recv().is_err());
    let letters = dead_letters(&client).await;
    assert_eq!(letters.len(), written.bad.len());
    for (seq, needle) in &written.bad {
        let letter = letters
            .iter()
            .find(|m| header(m, dl::ORIGINAL_SEQUENCE) == Some(seq.to_string().as_str()))
            .unwrap_or_else(|| panic!("no dead letter for sequence {seq}"));
        assert_eq!(
            letter.subject.as_str(),
            format!("dlq.BANK_EVENTS.{consumer}")
        );
        assert_eq!(header(letter, dl::REASON), Some(dl::REASON_UNDECODABLE));
        assert_eq!(header(letter, dl::DELIVERY_COUNT), Some("1"));
        let error = header(letter, dl::ERROR).unwrap();
        assert!(!error.is_empty() && error.contains(needle), "{error}");
        assert!(header(letter, dl::ORIGINAL_SUBJECT)
            .unwrap()
            .starts_with("bank.account.opened."));
    }
}

/// Counts what it applies.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Applied {
    sequences: Vec<u64>,
}

#[async_trait]
impl Projection for Applied {
    type Event = AccountEvent;
    const NAME: &'static str = "applied";

    async fn apply(&mut self, event: &Envelope<AccountEvent>) -> Result<(), ProjectionError> {
        self.sequences.push(event.sequence().0);
        Ok(())
    }
}

fn options(on_unreadable: OnUnreadable) -> ProjectionOptions {
    ProjectionOptions {
        on_unreadable,
        ..ProjectionOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_stops_at_the_first_foreign_message_by_default() {
    let (_server, client) = support::server().await;
    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("bank"))
        .await
        .unwrap();
    let written = write_foreign_set(&client, &store).await;
    let handle = ProjectionRunner::start::<Applied>(&store, options(OnUnreadable::Stop))
        .await
        .unwrap();
    support::wait_until(Duration::from_secs(10), "the projection to stop", || {
        let done = handle.is_finished();
        async move { done }
    })
    .await;
    let err = handle.shutdown().await.unwrap_err();
    match &err {
        ProjectionError::Unreadable { projection, source } => {
            assert_eq!(projection, "applied");
            assert_names_sequence(source, written.bad[0].0);
        }
        other => panic!("expected Unreadable, got {other:?}"),
    }
    // Restarted, it stops at the same message: the event before it was applied and
    // checkpointed, the foreign one never skipped.
    let handle = ProjectionRunner::start::<Applied>(&store, options(OnUnreadable::Stop))
        .await
        .unwrap();
    support::wait_until(
        Duration::from_secs(10),
        "the projection to stop again",
        || {
            let done = handle.is_finished();
            async move { done }
        },
    )
    .await;
    assert_eq!(handle.applied().0, written.good[0]);
    assert!(matches!(
        handle.shutdown().await,
        Err(ProjectionError::Unreadable { source, .. })
            if matches!(source.kind(), StoreErrorKind::Decode { sequence, .. } if *sequence == written.bad[0].0)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_that_skips_records_every_foreign_message() {
    let (_server, client) = support::server().await;
    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("bank"))
        .await
        .unwrap();
    let written = write_foreign_set(&client, &store).await;
    let handle = ProjectionRunner::start::<Applied>(&store, options(OnUnreadable::SkipAndRecord))
        .await
        .unwrap();
    let last = *written.good.last().unwrap();
    handle
        .wait_for(cim_nats::StreamSequence(last), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(handle.read().await.sequences, written.good);
    let skipped = handle.skipped();
    let sequences: Vec<u64> = skipped.iter().map(|s| s.sequence).collect();
    let expected: Vec<u64> = written.bad.iter().map(|(s, _)| *s).collect();
    assert_eq!(sequences, expected, "every foreign message is recorded");
    for (skip, (_, needle)) in skipped.iter().zip(&written.bad) {
        assert!(
            !skip.reason.is_empty() && skip.reason.contains(needle),
            "{skip:?}"
        );
    }
    handle.shutdown().await.unwrap();
}
