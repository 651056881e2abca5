//! Messages another client can store in a domain's stream that no cim-nats writer would: header
//! blocks the NATS client cannot parse, a stored status line, huge headers and bodies. Written
//! byte for byte over a raw socket (`cim_nats::testing::publish_raw`), between valid events, for
//! the tests of what every reader does with them.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cim_nats::jetstream::JetStreamEventStore;
use cim_nats::{AggregateId, EventId, EventStoreExt, ExpectedVersion, NewEvent};

use super::bank::AccountEvent;

/// What a reader must make of a hostile message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The NATS client cannot parse its headers: an unreadable event at its sequence.
    Unparseable,
    /// The client can parse it, but it is not a readable event (a decode error).
    Undecodable,
    /// A valid event after all: read as one.
    Readable,
}

/// One hostile message.
#[derive(Debug, Clone)]
pub struct Hostile {
    pub name: &'static str,
    pub headers: Vec<u8>,
    pub payload: Vec<u8>,
    pub expect: Expect,
}

/// A valid event's header block (an `Opened` at version 1), with `extra` lines added and
/// `first` as its first line.
fn block(first: &[u8], extra: &[&[u8]]) -> Vec<u8> {
    let mut out = first.to_vec();
    out.extend_from_slice(b"\r\n");
    let id = uuid::Uuid::new_v4().to_string();
    for line in [
        format!("Nats-Msg-Id: {id}").as_bytes(),
        b"Cim-Event-Type: Opened",
        b"Cim-Event-Version: 1",
        b"Cim-Aggregate-Type: account",
        b"Cim-Aggregate-Version: 1",
        b"Content-Type: application/json",
    ] {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    for line in extra {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn opened_json() -> Vec<u8> {
    NewEvent::from_event(&AccountEvent::Opened {
        id: EventId::new(),
        owner: "mallory".to_owned(),
    })
    .unwrap()
    .payload
    .to_vec()
}

/// Every kind of hostile message, each once. `max_payload` is the server's.
pub fn all(max_payload: usize) -> Vec<Hostile> {
    let big_header = format!("X-Big: {}", "h".repeat(60_000));
    // As large as the server takes with the headers: a dead letter that copies it whole, with
    // headers of its own, would not fit.
    let mut huge_body = vec![b'#'; max_payload - 400];
    huge_body[0] = b'<';
    vec![
        Hostile {
            name: "a header value that is not UTF-8",
            headers: block(b"NATS/1.0", &[b"Cim-Actor: \xff\xfe"]),
            payload: opened_json(),
            expect: Expect::Unparseable,
        },
        Hostile {
            name: "a header name with a space",
            headers: block(b"NATS/1.0", &[b"Cim Actor: bob"]),
            payload: opened_json(),
            expect: Expect::Unparseable,
        },
        Hostile {
            name: "a header line without a colon",
            headers: block(b"NATS/1.0", &[b"no-colon-here"]),
            payload: opened_json(),
            expect: Expect::Unparseable,
        },
        Hostile {
            name: "a header block that is not NATS/1.0",
            headers: block(b"HTTP/1.1", &[]),
            payload: opened_json(),
            expect: Expect::Unparseable,
        },
        Hostile {
            // nats-server (2.15) drops a published status line before storing: the message is
            // then an ordinary, valid event.
            name: "a NATS/1.0 503 status line",
            headers: block(b"NATS/1.0 503", &[]),
            payload: opened_json(),
            expect: Expect::Readable,
        },
        Hostile {
            name: "a 60 KB header",
            headers: block(b"NATS/1.0", &[big_header.as_bytes()]),
            payload: opened_json(),
            expect: Expect::Readable,
        },
        Hostile {
            name: "a body of max_payload that is not JSON",
            headers: block(b"NATS/1.0", &[]),
            payload: huge_body,
            expect: Expect::Undecodable,
        },
    ]
}

/// The stream as written: every message's sequence, aggregate and what it is.
#[derive(Debug, Clone)]
pub struct Written {
    /// `(sequence, aggregate, Some(kind) for a hostile message)`, in stream order.
    pub messages: Vec<(u64, AggregateId, Option<Hostile>)>,
}

impl Written {
    pub fn hostile(&self) -> impl Iterator<Item = (u64, &AggregateId, &Hostile)> {
        self.messages
            .iter()
            .filter_map(|(s, a, h)| h.as_ref().map(|h| (*s, a, h)))
    }

    /// Sequences a typed reader (one that decodes the domain's events) must deliver as events:
    /// valid events and readable hostile ones.
    pub fn readable(&self) -> Vec<u64> {
        self.messages
            .iter()
            .filter(|(_, _, h)| h.as_ref().is_none_or(|h| h.expect == Expect::Readable))
            .map(|(s, _, _)| *s)
            .collect()
    }

    /// Sequences a typed reader must name as unreadable.
    pub fn unreadable(&self) -> Vec<u64> {
        self.messages
            .iter()
            .filter(|(_, _, h)| h.as_ref().is_some_and(|h| h.expect != Expect::Readable))
            .map(|(s, _, _)| *s)
            .collect()
    }

    /// Sequences an untyped reader (stored events, payload not decoded) must name as
    /// unreadable: those the client cannot parse.
    pub fn unparseable_sequences(&self) -> Vec<u64> {
        self.hostile()
            .filter(|(_, _, h)| h.expect == Expect::Unparseable)
            .map(|(s, _, _)| s)
            .collect()
    }

    /// How many of them the client cannot parse (each may cost a reader one reconnection).
    pub fn unparseable(&self) -> u64 {
        self.hostile()
            .filter(|(_, _, h)| h.expect == Expect::Unparseable)
            .count() as u64
    }

    pub fn last(&self) -> u64 {
        self.messages.last().map_or(0, |(s, _, _)| *s)
    }
}

/// A valid `Opened` on a new aggregate; its sequence.
pub async fn valid(store: &JetStreamEventStore, id: &AggregateId) -> u64 {
    store
        .append_events(
            id,
            ExpectedVersion::NoStream,
            &[AccountEvent::Opened {
                id: EventId::new(),
                owner: format!("owner of {id}"),
            }],
            None,
        )
        .await
        .unwrap()
        .sequences[0]
        .0
}

/// Writes a valid event, then each hostile message (on an aggregate of its own, `{tag}-h{i}`)
/// followed by a valid event on another aggregate (`{tag}-v{i}`).
pub async fn write_all(store: &JetStreamEventStore, url: &str, tag: &str) -> Written {
    let max = store.client().server_info().max_payload;
    let mut messages = Vec::new();
    let first = AggregateId::new(format!("{tag}-v")).unwrap();
    messages.push((valid(store, &first).await, first, None));
    for (i, hostile) in all(max).into_iter().enumerate() {
        let id = AggregateId::new(format!("{tag}-h{i}")).unwrap();
        let subject = format!("bank.account.opened.{id}");
        let url = url.to_owned();
        let (headers, payload) = (hostile.headers.clone(), hostile.payload.clone());
        let seq = tokio::task::spawn_blocking(move || {
            cim_nats::testing::publish_raw(&url, &subject, &headers, &payload)
        })
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("storing {}: {e}", hostile.name));
        messages.push((seq, id, Some(hostile)));
        let after = AggregateId::new(format!("{tag}-v{i}")).unwrap();
        messages.push((valid(store, &after).await, after, None));
    }
    Written { messages }
}

/// Appends one event after another on the shared client while a reader works, and records
/// what went wrong: every append must succeed, and none may wait long.
#[derive(Debug)]
pub struct Pipeline {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<PipelineReport>,
    appended: Arc<AtomicU64>,
}

/// What the pipeline saw.
#[derive(Debug)]
pub struct PipelineReport {
    pub appended: u64,
    pub errors: Vec<String>,
    pub longest: Duration,
}

impl Pipeline {
    pub fn start(store: JetStreamEventStore, tag: &str) -> Self {
        let id = AggregateId::new(format!("{tag}-pipeline")).unwrap();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let appended = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&appended);
        let task = tokio::spawn(async move {
            let mut report = PipelineReport {
                appended: 0,
                errors: Vec::new(),
                longest: Duration::ZERO,
            };
            let mut version = 0;
            while !*stopped.borrow_and_update() {
                let started = tokio::time::Instant::now();
                let event = AccountEvent::Deposited {
                    id: EventId::new(),
                    amount: 1,
                };
                let expected = ExpectedVersion::from_loaded(version);
                match store.append_events(&id, expected, &[event], None).await {
                    Ok(r) => {
                        version = r.version;
                        report.appended += 1;
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => report.errors.push(e.to_string()),
                }
                report.longest = report.longest.max(started.elapsed());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            report
        });
        Self {
            stop,
            task,
            appended,
        }
    }

    /// Appends so far.
    pub fn appended(&self) -> u64 {
        self.appended.load(Ordering::Relaxed)
    }

    /// Stops it and checks that it kept working: appends went on, none failed, none took more
    /// than two seconds.
    #[track_caller]
    pub fn assert_kept_working(report: &PipelineReport) {
        assert!(report.appended > 0, "the pipeline appended nothing");
        assert!(
            report.errors.is_empty(),
            "appends on the shared client failed: {:?}",
            report.errors
        );
        assert!(
            report.longest < Duration::from_secs(2),
            "an append on the shared client took {:?}",
            report.longest
        );
    }

    pub async fn stop(self) -> PipelineReport {
        let _ = self.stop.send(true);
        self.task.await.unwrap()
    }
}

/// The client's connection generation (1 after the first connection).
pub fn connects(client: &async_nats::Client) -> u64 {
    client.statistics().connects.load(Ordering::Relaxed)
}
