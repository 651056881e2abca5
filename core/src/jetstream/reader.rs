//! Reading a stream in order, from a sequence or a time, with no gap and no stall.
//!
//! Whole-stream reads (`EventStore::stream`, `read_all`, replays) and projection runners read
//! through an [`OrderedReader`]: one ephemeral pull consumer without acknowledgements, pulled in
//! batches on an inbox of its own, on a task of its own that hands messages over in chunks.
//! What makes it more than a consumer:
//!
//! - **Nothing is lost silently.** Every delivery carries the consumer's delivery sequence, which
//!   grows by one per message: a jump means messages were lost on the way (with a broken
//!   connection), and the reader starts again right after the last message it handed over.
//! - **A message the client cannot parse does not stall it.** `async-nats` drops the whole
//!   connection when a delivered message's headers do not parse (another client may have stored
//!   bytes that are not UTF-8, or a header name with a space); the message and the rest of its
//!   batch are gone with the socket, and a consumer that simply goes on would deliver it again
//!   or skip it. After a reconnection, the reader reads the next message through the JSON API
//!   ([`api::msg_get`], headers base64-encoded, never parsed by the client): if it is such a
//!   message, it is handed over as unreadable at its sequence ([`RawMessage::defect`]) and the
//!   reader goes on after it. One reconnection per such message and read.
//! - **A dead server or consumer is noticed**: pull requests ask for heartbeats, and silence for
//!   two of them recreates the consumer where the reader was.

use std::time::Duration;

use async_nats::{Client, StatusCode};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::jetstream::api::{self, Conn, MsgGet};
use crate::jetstream::codec::{ack_info, RawMessage};
use crate::store::{StoreError, StoreErrorKind};

/// Messages asked for per pull request.
const BATCH: usize = 5000;
/// How long a pull request waits on the server.
const EXPIRES: Duration = Duration::from_secs(5);
/// How often the server says a waiting pull request is alive.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Silence after which the consumer is taken as lost (two heartbeats and a margin).
const SILENCE: Duration = Duration::from_millis(2 * 1000 + 500);
/// Most messages handed over in one chunk.
const CHUNK: usize = 512;
/// Chunks buffered between the reader's task and its user.
const CHUNKS_AHEAD: usize = 16;
/// How often a waiting reader looks whether the client reconnected.
const RECONNECT_POLL: Duration = Duration::from_millis(100);
/// The longest pause between two attempts to recreate a consumer the server did not take.
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// At this stream sequence (1: the beginning).
    Sequence(u64),
    /// At the first message stored at or after this time.
    Time(DateTime<Utc>),
}

/// What to read.
#[derive(Debug, Clone)]
pub(crate) struct ReadSpec {
    /// The stream.
    pub(crate) stream: String,
    /// The filter subject (wildcards allowed); `None`: every message of the stream.
    pub(crate) filter: Option<String>,
    /// Where to start.
    pub(crate) start: Start,
    /// Follow new messages forever (`true`), or end at the last message stored when the end
    /// is reached (`false`).
    pub(crate) follow: bool,
    /// The timeout of the reader's API requests.
    pub(crate) timeout: Duration,
}

/// Where a following reader is: the last sequence it handed over and how many messages the
/// server says are still to come after it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    /// The stream sequence of the last message handed over (0: none yet).
    pub(crate) sequence: u64,
    /// Messages matching the filter after it, as the last delivery said.
    pub(crate) pending: u64,
}

/// One chunk of messages in stream order, or the error that ended the read.
pub(crate) type Chunk = Result<Vec<RawMessage>, StoreError>;

/// A read in progress: chunks of messages, in order, from a task of its own. Dropping it stops
/// the task, which deletes its consumer.
#[derive(Debug)]
pub(crate) struct OrderedReader {
    chunks: mpsc::Receiver<Chunk>,
    progress: watch::Receiver<Progress>,
}

impl OrderedReader {
    /// Starts reading.
    pub(crate) fn start(client: Client, spec: ReadSpec) -> Self {
        let (tx, chunks) = mpsc::channel(CHUNKS_AHEAD);
        let (progress_tx, progress) = watch::channel(Progress::default());
        tokio::spawn(async move {
            let mut task = Task {
                client: Conn::new(client),
                next: spec.start,
                spec,
                tx,
                progress: progress_tx,
                consumer: None,
            };
            task.run().await;
            task.close().await;
        });
        Self { chunks, progress }
    }

    /// The next chunk; `None` at the end of a read that does not follow.
    pub(crate) async fn next(&mut self) -> Option<Chunk> {
        self.chunks.recv().await
    }

    /// Where the reader is (for lag).
    pub(crate) fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }
}

/// The consumer a reader pulls from, and its inbox.
struct Consumer {
    name: String,
    inbox: String,
    subscription: async_nats::Subscriber,
    /// The delivery sequence of the last message received from it.
    delivered: u64,
    /// Messages asked for and not yet received or given up by the server.
    outstanding: usize,
    /// The connection generation when it was created.
    epoch: u64,
    /// When anything last arrived on the inbox (or a request was sent).
    heard: Instant,
}

/// Why a consumer is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lost {
    /// The client reconnected or a delivery went missing: perhaps a message it cannot parse
    /// broke the connection; look at the next message through the JSON API.
    Suspect,
    /// The server went quiet, or the consumer went away: recreate it.
    Quiet,
}

enum Step {
    /// Keep pulling.
    Go,
    /// The read is complete (a read that does not follow reached the end).
    End,
    /// Recreate the consumer where the read is.
    Recreate(Lost),
    /// Stop: the user went away, or an error was sent.
    Stop,
}

struct Task {
    client: Conn,
    spec: ReadSpec,
    /// Where the next consumer starts.
    next: Start,
    tx: mpsc::Sender<Chunk>,
    progress: watch::Sender<Progress>,
    consumer: Option<Consumer>,
}

fn connection(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::with_source(StoreErrorKind::Connection, e)
}

impl Task {
    fn epoch(&self) -> u64 {
        self.client.epoch()
    }

    async fn run(&mut self) {
        let mut pause = Duration::from_millis(100);
        loop {
            match self.open().await {
                Ok(true) => pause = Duration::from_millis(100),
                // Nothing to read, and the read does not follow.
                Ok(false) => return,
                Err(e) if is_lasting(&e) => {
                    let _ = self.tx.send(Err(e)).await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(stream = %self.spec.stream, error = %e, retry_in = ?pause,
                        "a reader's consumer could not be created; retrying");
                    if self.sleep_unless_gone(pause).await {
                        return;
                    }
                    pause = (pause * 2).min(MAX_PAUSE);
                    continue;
                }
            }
            let lost = match self.pull().await {
                Step::Go => continue,
                Step::End | Step::Stop => return,
                Step::Recreate(lost) => lost,
            };
            self.drop_consumer().await;
            if lost == Lost::Suspect {
                match self.look_at_next().await {
                    Step::Go | Step::Recreate(_) => {}
                    Step::End | Step::Stop => return,
                }
            }
        }
    }

    /// Sleeps, unless the user went away meanwhile (`true`).
    async fn sleep_unless_gone(&self, pause: Duration) -> bool {
        tokio::select! {
            () = self.tx.closed() => true,
            () = tokio::time::sleep(pause) => false,
        }
    }

    /// Creates the consumer at the read's position. `Ok(false)`: nothing to read and not
    /// following.
    async fn open(&mut self) -> Result<bool, StoreError> {
        let name = format!("cim-read-{}", uuid::Uuid::new_v4().simple());
        let policy = match self.next {
            Start::Sequence(seq) => {
                serde_json::json!({"deliver_policy": "by_start_sequence", "opt_start_seq": seq.max(1)})
            }
            Start::Time(t) => {
                serde_json::json!({"deliver_policy": "by_start_time", "opt_start_time": t})
            }
        };
        let mut config = serde_json::json!({
            "name": name,
            "ack_policy": "none",
            "replay_policy": "instant",
            "filter_subject": self.spec.filter.as_deref().unwrap_or_default(),
            "inactive_threshold": Duration::from_secs(30).as_nanos() as u64,
            "mem_storage": true,
            "num_replicas": 1,
        });
        if let (Some(config), Some(policy)) = (config.as_object_mut(), policy.as_object()) {
            config.extend(policy.clone());
        }
        let body = serde_json::json!({"stream_name": self.spec.stream, "config": config, "action": "create"});
        let subject = format!("$JS.API.CONSUMER.CREATE.{}.{name}", self.spec.stream);
        let epoch = self.epoch();
        let inbox = self.client.new_inbox();
        let subscription = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(connection)?;
        let info = api::create_consumer(
            &self.client,
            &subject,
            Bytes::from(body.to_string()),
            self.spec.timeout,
        )
        .await?;
        let consumer = Consumer {
            name,
            inbox,
            subscription,
            delivered: 0,
            outstanding: 0,
            epoch,
            heard: Instant::now(),
        };
        self.consumer = Some(consumer);
        if info.num_pending == 0 && !self.spec.follow {
            return Ok(false);
        }
        Ok(true)
    }

    /// Deletes the current consumer (in the background: nothing waits for it).
    async fn drop_consumer(&mut self) {
        if let Some(consumer) = self.consumer.take() {
            let Consumer {
                name,
                mut subscription,
                ..
            } = consumer;
            let _ = subscription.unsubscribe().await;
            let client = self.client.clone();
            let subject = format!("$JS.API.CONSUMER.DELETE.{}.{name}", self.spec.stream);
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    client.request(subject, Bytes::new()),
                )
                .await;
            });
        }
    }

    async fn close(&mut self) {
        self.drop_consumer().await;
    }

    /// Asks for more messages when fewer than half a batch are on their way.
    async fn request_more(&mut self) -> Result<(), StoreError> {
        let stream = self.spec.stream.clone();
        let Some(c) = self.consumer.as_mut() else {
            return Ok(());
        };
        if c.outstanding >= BATCH / 2 {
            return Ok(());
        }
        let body = format!(
            "{{\"batch\":{BATCH},\"expires\":{},\"idle_heartbeat\":{}}}",
            EXPIRES.as_nanos(),
            HEARTBEAT.as_nanos()
        );
        self.client
            .publish_with_reply(
                format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{}", c.name),
                c.inbox.clone(),
                Bytes::from(body),
            )
            .await
            .map_err(connection)?;
        if c.outstanding == 0 {
            c.heard = Instant::now();
        }
        c.outstanding += BATCH;
        Ok(())
    }

    /// Pulls and hands over messages until the consumer must be recreated or the read ends.
    async fn pull(&mut self) -> Step {
        loop {
            if let Err(e) = self.request_more().await {
                tracing::debug!(error = %e, "pull request not sent");
                return Step::Recreate(Lost::Quiet);
            }
            let conn = self.client.clone();
            let Some(c) = self.consumer.as_mut() else {
                return Step::Recreate(Lost::Quiet);
            };
            // Wakes a few times a second to see whether the client reconnected: the server may
            // have dropped the pull request meanwhile, and then nothing more arrives.
            let message = loop {
                let silence = c.heard + SILENCE;
                let wake = silence.min(Instant::now() + RECONNECT_POLL);
                let next = tokio::select! {
                    () = self.tx.closed() => return Step::Stop,
                    next = tokio::time::timeout_at(wake, c.subscription.next()) => next,
                };
                match next {
                    Ok(Some(message)) => break message,
                    Ok(None) => return Step::Recreate(Lost::Quiet),
                    Err(_) if conn.epoch() != c.epoch => {
                        return Step::Recreate(Lost::Suspect);
                    }
                    Err(_) if Instant::now() >= silence => {
                        tracing::debug!(stream = %self.spec.stream, "a reader's consumer went quiet; recreating it");
                        return Step::Recreate(Lost::Quiet);
                    }
                    Err(_) => {}
                }
            };
            let mut chunk = Vec::new();
            let mut step = self.on_message(message, &mut chunk);
            while matches!(step, Step::Go) && chunk.len() < CHUNK {
                let Some(c) = self.consumer.as_mut() else {
                    break;
                };
                match c.subscription.next().now_or_never() {
                    Some(Some(message)) => step = self.on_message(message, &mut chunk),
                    _ => break,
                }
            }
            if matches!(step, Step::Go) {
                if let Some(c) = &self.consumer {
                    if self.epoch() != c.epoch {
                        // What arrived before the break is in order and complete up to here;
                        // what follows is looked at through the JSON API.
                        step = self.drain_then_suspect(&mut chunk);
                    }
                }
            }
            if !chunk.is_empty() {
                if let Some(last) = chunk.last() {
                    self.next = Start::Sequence(last.sequence + 1);
                }
                if self.tx.send(Ok(chunk)).await.is_err() {
                    return Step::Stop;
                }
            }
            if !matches!(step, Step::Go) {
                return step;
            }
        }
    }

    /// After a reconnection: what is already on the inbox arrived before the break; take it,
    /// then have the next message looked at.
    fn drain_then_suspect(&mut self, chunk: &mut Vec<RawMessage>) -> Step {
        while let Some(Some(message)) = self
            .consumer
            .as_mut()
            .and_then(|c| c.subscription.next().now_or_never())
        {
            match self.on_message(message, chunk) {
                Step::Go => {}
                other => return other,
            }
        }
        Step::Recreate(Lost::Suspect)
    }

    /// One message on the inbox: a delivery (added to `chunk`), or a status of a pull request.
    fn on_message(&mut self, message: async_nats::Message, chunk: &mut Vec<RawMessage>) -> Step {
        let Some(c) = self.consumer.as_mut() else {
            return Step::Recreate(Lost::Quiet);
        };
        c.heard = Instant::now();
        if let Some(info) = message.reply.as_deref().and_then(ack_info) {
            if info.delivery_sequence != c.delivered + 1 {
                tracing::warn!(
                    stream = %self.spec.stream,
                    expected = c.delivered + 1,
                    got = info.delivery_sequence,
                    "deliveries went missing on the way; reading again after the last one received"
                );
                return Step::Recreate(Lost::Suspect);
            }
            c.delivered = info.delivery_sequence;
            c.outstanding = c.outstanding.saturating_sub(1);
            let time = DateTime::from_timestamp_nanos(info.time_ns);
            let defect = match message.status {
                None | Some(StatusCode::OK) => None,
                Some(status) => Some(format!("it was delivered with the status {status}")),
            };
            chunk.push(RawMessage {
                subject: message.subject.to_string(),
                sequence: info.stream_sequence,
                time,
                headers: message.headers.unwrap_or_default(),
                payload: message.payload,
                defect,
            });
            let _ = self.progress.send(Progress {
                sequence: info.stream_sequence,
                pending: info.pending,
            });
            if info.pending == 0 && !self.spec.follow {
                return Step::End;
            }
            return Step::Go;
        }
        match message.status {
            Some(StatusCode::IDLE_HEARTBEAT) => Step::Go,
            // A pull request ended: expired, or nothing (more) to deliver.
            Some(StatusCode::TIMEOUT | StatusCode::NOT_FOUND) => {
                let undelivered = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Pending-Messages"))
                    .and_then(|v| v.as_str().parse::<usize>().ok());
                c.outstanding = match undelivered {
                    Some(n) => c.outstanding.saturating_sub(n),
                    None => 0,
                };
                Step::Go
            }
            Some(StatusCode::REQUEST_TERMINATED) => {
                let description = message.description.unwrap_or_default();
                tracing::debug!(stream = %self.spec.stream, %description, "a reader's pull request ended");
                if description.eq_ignore_ascii_case("consumer deleted")
                    || description.contains("Leadership")
                {
                    Step::Recreate(Lost::Quiet)
                } else {
                    c.outstanding = 0;
                    Step::Go
                }
            }
            Some(StatusCode::NO_RESPONDERS) => Step::Recreate(Lost::Quiet),
            _ => Step::Go,
        }
    }

    /// After a suspect loss: the next message after the read's position, through the JSON API.
    /// If the client cannot parse it, it is handed over as unreadable and the read goes on
    /// after it.
    async fn look_at_next(&mut self) -> Step {
        let mut request = MsgGet {
            next_by_subj: Some(self.spec.filter.as_deref().unwrap_or(">")),
            ..MsgGet::default()
        };
        match self.next {
            Start::Sequence(seq) => request.seq = Some(seq.max(1)),
            Start::Time(t) => request.start_time = Some(t),
        }
        let found =
            api::msg_get(&self.client, &self.spec.stream, &request, self.spec.timeout).await;
        match found {
            Ok(Some(raw)) if raw.defect.is_some() => {
                tracing::warn!(
                    stream = %self.spec.stream,
                    sequence = raw.sequence,
                    subject = %raw.subject,
                    "a stored message the NATS client cannot parse broke the connection; it is \
                     handed over as unreadable and the read goes on after it"
                );
                self.next = Start::Sequence(raw.sequence + 1);
                let pending = self.progress.borrow().pending.saturating_sub(1);
                let _ = self.progress.send(Progress {
                    sequence: raw.sequence,
                    pending,
                });
                if self.tx.send(Ok(vec![raw])).await.is_err() {
                    return Step::Stop;
                }
                Step::Go
            }
            Ok(Some(raw)) => {
                // A message the client can read: the reconnection had another cause. Read on
                // from it.
                self.next = Start::Sequence(raw.sequence);
                Step::Go
            }
            Ok(None) => Step::Go,
            Err(e) => {
                tracing::debug!(error = %e, "the next message could not be looked at");
                Step::Go
            }
        }
    }
}

/// An error that retrying does not cure: the stream is gone, or the user may not read it.
fn is_lasting(e: &StoreError) -> bool {
    matches!(
        e.kind(),
        StoreErrorKind::StreamNotFound | StoreErrorKind::PermissionDenied { .. }
    ) || matches!(e.kind(), StoreErrorKind::Server { code, .. } if *code != 0)
}
