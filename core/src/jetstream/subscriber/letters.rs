//! Working off dead letters: list, inspect, discard, and redrive (handle again).
//!
//! A redrive is carried out by the subscriber that dead-lettered the event, because only it has
//! the handler: every durable subscriber with a dead letter serves requests on
//! `_CIM.redrive.{stream}.{consumer}` (a queue group, so one process of it answers). A request
//! names the dead letter by its sequence in the dead-letter stream; the subscriber rebuilds the
//! event from the letter, hands it to its handler once, and deletes the letter only when the
//! handler succeeded. The answer is JSON: `{"handled": true, "sequence": N}` or
//! `{"handled": false, "error": "..."}`.
//!
//! With sequenced dead letters (see `parked`), a letter of a parked aggregate is redriven or
//! discarded only as the aggregate's first remaining letter, and always by the subscriber: the
//! request is JSON, `{"redrive": N}` or `{"discard": N}`; after it, the aggregate's parked
//! letters are handled in order, each removed when handled, until one fails (it becomes the
//! head: `"stopped_at"`) or none is left (the aggregate is released). The answer adds
//! `"released"`: how many parked letters were handled after the first.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull::OrderedConfig};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::watch;

use async_nats::jetstream::kv;

use crate::envelope::StoredEvent;
use crate::headers as h;
use crate::jetstream::subscriber::dead_letter::{self as dl, DeadLetterConfig};
use crate::jetstream::subscriber::parked::{self, ParkedAggregate, REDRIVE_HOLD};
use crate::jetstream::subscriber::{SubscriberError, SubscriberErrorKind};
use crate::store::{StoreError, StoreErrorKind};
use crate::subscriber::{Delivery, EventHandler};

/// The subject a subscriber serves redrive requests of its consumer on.
pub fn redrive_subject(stream: &str, consumer: &str) -> String {
    format!("_CIM.redrive.{stream}.{consumer}")
}

/// A dead letter as stored.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Its sequence in the dead-letter stream.
    pub sequence: u64,
    /// The stream the event was read from.
    pub stream: String,
    /// The consumer that gave up on it.
    pub consumer: String,
    /// The event's sequence in its stream.
    pub original_sequence: u64,
    /// The subject the event was stored on.
    pub original_subject: String,
    /// Why ([`dl::REASON_DELIVERIES_EXHAUSTED`], ...).
    pub reason: String,
    /// The last error.
    pub error: String,
    /// How many times it was delivered.
    pub deliveries: u64,
    /// When it was dead-lettered (RFC 3339).
    pub time: String,
    /// The letter's headers (the event's, and the dead letter's own).
    pub headers: HeaderMap,
    /// The event's body (empty when it was left out to fit, see [`dl::BODY`]).
    pub body: Bytes,
}

fn text(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default()
}

impl DeadLetter {
    /// The id of the aggregate of the event (`Cim-Aggregate-Id`, else the subject's last
    /// token): what sequenced dead letters park by.
    pub fn aggregate(&self) -> String {
        crate::jetstream::codec::aggregate_key(Some(&self.headers), &self.original_subject)
            .to_string()
    }

    fn from_parts(sequence: u64, headers: HeaderMap, body: Bytes) -> Self {
        Self {
            sequence,
            stream: text(&headers, dl::ORIGINAL_STREAM),
            consumer: text(&headers, dl::CONSUMER),
            original_sequence: text(&headers, dl::ORIGINAL_SEQUENCE).parse().unwrap_or(0),
            original_subject: text(&headers, dl::ORIGINAL_SUBJECT),
            reason: text(&headers, dl::REASON),
            error: text(&headers, dl::ERROR),
            deliveries: text(&headers, dl::DELIVERY_COUNT).parse().unwrap_or(0),
            time: text(&headers, dl::TIME),
            headers,
            body,
        }
    }

    /// The event, as it was stored (its id, subject, sequence and headers restored).
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::Decode`] when the letter is not of a readable event (dead-lettered as
    /// undecodable), or its body was left out.
    pub fn event(&self) -> Result<StoredEvent, StoreError> {
        if self.headers.get(dl::BODY).is_some() {
            return Err(StoreError::new(StoreErrorKind::Decode {
                sequence: self.original_sequence,
                reason: "the dead letter does not hold the event's body (too large); read it \
                         from its stream"
                    .to_owned(),
            }));
        }
        let mut headers = self.headers.clone();
        if let Some(id) = self.headers.get(dl::ORIGINAL_MSG_ID) {
            headers.insert(h::MSG_ID, id.clone());
        }
        let time = chrono::DateTime::parse_from_rfc3339(&self.time)
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or_default();
        crate::jetstream::codec::decode_parts(
            self.original_sequence,
            time,
            self.original_subject.clone(),
            &headers,
            self.body.clone(),
        )
    }
}

/// What a redrive came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redriven {
    /// The handler took the event; the letter is gone.
    Handled,
    /// Sequenced dead letters: the handler took the event, then the `released` events parked
    /// behind it, in order; the aggregate is no longer parked.
    Released {
        /// Parked events handled after the first.
        released: u64,
    },
    /// Sequenced dead letters: the handler took the event and `released` parked events after
    /// it, then failed on the letter `head`, which the aggregate now waits on (`None`: on an
    /// event being parked whose letter is not stored yet: redrive it when it is).
    Stopped {
        /// Parked events handled after the first.
        released: u64,
        /// The letter the aggregate waits on now.
        head: Option<u64>,
        /// Its handler's error.
        error: String,
    },
    /// The handler failed again; the letter stays.
    Failed(String),
}

/// What a discard came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discarded {
    /// There is no such letter.
    Missing,
    /// The letter is deleted.
    Deleted,
    /// Sequenced dead letters: the letter is deleted and the `released` events parked behind it
    /// were handled in order; the aggregate is no longer parked.
    Released {
        /// Parked events handled.
        released: u64,
    },
    /// Sequenced dead letters: the letter is deleted, `released` parked events after it were
    /// handled, then the handler failed on the letter `head`, which the aggregate now waits on
    /// (`None`: as for [`Redriven::Stopped`]).
    Stopped {
        /// Parked events handled.
        released: u64,
        /// The letter the aggregate waits on now.
        head: Option<u64>,
        /// Its handler's error.
        error: String,
    },
}

/// The dead letters of a dead-letter stream ([`DeadLetterConfig`]).
#[derive(Debug, Clone)]
pub struct DeadLetters {
    client: async_nats::Client,
    js: jetstream::Context,
    config: DeadLetterConfig,
}

fn failed(e: impl std::fmt::Display) -> SubscriberError {
    SubscriberError::with_source(SubscriberErrorKind::Connection, e.to_string())
}

impl DeadLetters {
    /// The dead letters of the stream `config` names.
    pub fn new(client: async_nats::Client, config: DeadLetterConfig) -> Self {
        Self {
            js: jetstream::new(client.clone()),
            client,
            config,
        }
    }

    async fn stream(&self) -> Result<Option<jetstream::stream::Stream>, SubscriberError> {
        match self.js.get_stream(&self.config.stream).await {
            Ok(stream) => Ok(Some(stream)),
            Err(e) if crate::jetstream::api::stream_missing(&e) => Ok(None),
            Err(e) => Err(failed(e)),
        }
    }

    /// The dead letters of `consumer` of `stream` (`None`: of every one), oldest first.
    ///
    /// # Errors
    ///
    /// The dead-letter stream cannot be read.
    pub async fn list(
        &self,
        stream: Option<&str>,
        consumer: Option<&str>,
    ) -> Result<Vec<DeadLetter>, SubscriberError> {
        let Some(dlq) = self.stream().await? else {
            return Ok(Vec::new());
        };
        let filter = self
            .config
            .subject_for(stream.unwrap_or("*"), consumer.unwrap_or("*"));
        let reader = dlq
            .create_consumer(OrderedConfig {
                filter_subject: filter,
                ..Default::default()
            })
            .await
            .map_err(failed)?;
        let mut pending = reader.cached_info().num_pending;
        let mut letters = Vec::new();
        if pending == 0 {
            return Ok(letters);
        }
        let mut messages = reader.messages().await.map_err(failed)?;
        while pending > 0 {
            let Some(message) = messages.next().await else {
                break;
            };
            let message = message.map_err(failed)?;
            let info = message.info().map_err(failed)?;
            pending = info.pending;
            let sequence = info.stream_sequence;
            letters.push(DeadLetter::from_parts(
                sequence,
                message.headers.clone().unwrap_or_default(),
                message.payload.clone(),
            ));
        }
        Ok(letters)
    }

    /// The dead letter at `sequence` of the dead-letter stream.
    ///
    /// # Errors
    ///
    /// The dead-letter stream cannot be read.
    pub async fn get(&self, sequence: u64) -> Result<Option<DeadLetter>, SubscriberError> {
        let Some(dlq) = self.stream().await? else {
            return Ok(None);
        };
        match dlq.get_raw_message(sequence).await {
            Ok(message) => Ok(Some(DeadLetter::from_parts(
                sequence,
                message.headers,
                message.payload,
            ))),
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::stream::LastRawMessageErrorKind::NoMessageFound
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(failed(e)),
        }
    }

    /// The aggregates parked behind dead letters (sequenced dead letters) of `consumer` of
    /// `stream` (of every one when either is `None`), by head.
    ///
    /// # Errors
    ///
    /// The parked bucket cannot be read.
    pub async fn parked(
        &self,
        stream: Option<&str>,
        consumer: Option<&str>,
    ) -> Result<Vec<ParkedAggregate>, SubscriberError> {
        match parked::existing(&self.js, &self.config).await? {
            Some(kv) => parked::list(&kv, stream, consumer).await,
            None => Ok(Vec::new()),
        }
    }

    /// The parked state of the letter's aggregate, if it is parked.
    async fn parked_of(
        &self,
        letter: &DeadLetter,
    ) -> Result<Option<ParkedAggregate>, SubscriberError> {
        let Some(kv) = parked::existing(&self.js, &self.config).await? else {
            return Ok(None);
        };
        let key = parked::parked_key(&letter.stream, &letter.consumer, &letter.aggregate());
        Ok(parked::read(&kv, &key).await?.map(|(p, _)| p))
    }

    /// Discards the dead letter at `sequence` without handling it.
    ///
    /// A letter of an aggregate parked behind it (sequenced dead letters) is discarded by the
    /// running subscriber of its consumer, which then handles the events parked behind it in
    /// order (it must be running; `timeout` bounds the wait for its answer); a letter parked
    /// behind an earlier one is refused.
    ///
    /// # Errors
    ///
    /// [`SubscriberErrorKind::InvalidConfig`] when the letter waits behind an earlier one of its
    /// aggregate, or its aggregate is parked and no subscriber of its consumer is running; a
    /// connection error otherwise.
    pub async fn discard(
        &self,
        sequence: u64,
        timeout: Duration,
    ) -> Result<Discarded, SubscriberError> {
        let Some(letter) = self.get(sequence).await? else {
            return Ok(Discarded::Missing);
        };
        if self.parked_of(&letter).await?.is_none() {
            return Ok(if self.delete(sequence).await? {
                Discarded::Deleted
            } else {
                Discarded::Missing
            });
        }
        let answer = self
            .ask(&letter, json!({ "discard": sequence }), timeout)
            .await?;
        if let Some(error) = answer["refused"].as_str() {
            return Err(SubscriberError::new(SubscriberErrorKind::InvalidConfig(
                error.to_owned(),
            )));
        }
        let released = answer["released"].as_u64().unwrap_or(0);
        Ok(match answer.get("stopped_at") {
            Some(head) => Discarded::Stopped {
                released,
                head: head.as_u64(),
                error: answer["error"].as_str().unwrap_or("unknown").to_owned(),
            },
            None if answer["discarded"] == true => Discarded::Released { released },
            None => {
                return Err(failed(
                    answer["error"].as_str().unwrap_or("the discard failed"),
                ))
            }
        })
    }

    /// Deletes the dead letter at `sequence`; `false` if there was none.
    async fn delete(&self, sequence: u64) -> Result<bool, SubscriberError> {
        let Some(dlq) = self.stream().await? else {
            return Ok(false);
        };
        if self.get(sequence).await?.is_none() {
            return Ok(false);
        }
        dlq.delete_message(sequence).await.map_err(failed)
    }

    /// Asks the subscriber that dead-lettered it to handle the letter at `sequence` again.
    ///
    /// # Errors
    ///
    /// [`SubscriberErrorKind::InvalidConfig`] when there is no such letter, or no subscriber of
    /// its consumer is running (naming the consumer); a connection error otherwise.
    pub async fn redrive(
        &self,
        sequence: u64,
        timeout: Duration,
    ) -> Result<Redriven, SubscriberError> {
        let letter = self.get(sequence).await?.ok_or_else(|| {
            SubscriberError::new(SubscriberErrorKind::InvalidConfig(format!(
                "no dead letter at sequence {sequence} of stream {}",
                self.config.stream
            )))
        })?;
        let answer = self
            .ask(&letter, json!({ "redrive": sequence }), timeout)
            .await?;
        if let Some(error) = answer["refused"].as_str() {
            return Err(SubscriberError::new(SubscriberErrorKind::InvalidConfig(
                error.to_owned(),
            )));
        }
        let error = || answer["error"].as_str().unwrap_or("unknown").to_owned();
        let released = answer["released"].as_u64();
        Ok(
            match (
                answer["handled"] == true,
                released,
                answer.get("stopped_at"),
            ) {
                (true, _, Some(head)) => Redriven::Stopped {
                    released: released.unwrap_or(0),
                    head: head.as_u64(),
                    error: error(),
                },
                (true, Some(released), None) => Redriven::Released { released },
                (true, None, None) => Redriven::Handled,
                (false, ..) => Redriven::Failed(error()),
            },
        )
    }

    /// Sends `request` to the running subscriber of the letter's consumer.
    async fn ask(
        &self,
        letter: &DeadLetter,
        request: serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value, SubscriberError> {
        let subject = redrive_subject(&letter.stream, &letter.consumer);
        let request = self
            .client
            .request(subject.clone(), request.to_string().into());
        let reply = match tokio::time::timeout(timeout, request).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                return Err(SubscriberError::new(SubscriberErrorKind::InvalidConfig(
                    format!(
                        "no subscriber of consumer {:?} of stream {} is running (nothing \
                         answers on {subject}): start it to redrive its dead letters",
                        letter.consumer, letter.stream
                    ),
                )))
            }
            Ok(Err(e)) => return Err(failed(e)),
            Err(_) => {
                return Err(failed(format!(
                    "no answer from the subscriber on {subject} within {timeout:?}: it may \
                     still be handling the letter and those parked behind it (list the dead \
                     letters and parked aggregates again to see)"
                )))
            }
        };
        serde_json::from_slice(&reply.payload).map_err(failed)
    }
}

/// What the subscriber is asked to do with a letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Redrive(u64),
    Discard(u64),
}

impl Request {
    /// A sequence (a redrive), or `{"redrive": N}` / `{"discard": N}`.
    fn parse(payload: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(payload).ok()?.trim();
        if let Ok(sequence) = text.parse::<u64>() {
            return Some(Self::Redrive(sequence));
        }
        let value: serde_json::Value = serde_json::from_str(text).ok()?;
        if let Some(sequence) = value["redrive"].as_u64() {
            return Some(Self::Redrive(sequence));
        }
        value["discard"].as_u64().map(Self::Discard)
    }

    fn sequence(self) -> u64 {
        match self {
            Self::Redrive(s) | Self::Discard(s) => s,
        }
    }

    /// The answer's field saying the first letter is done with.
    fn done_field(self) -> &'static str {
        match self {
            Self::Redrive(_) => "handled",
            Self::Discard(_) => "discarded",
        }
    }
}

/// How often a redrive looks again for a parked event whose letter is on its way, and how many
/// times.
const PARKED_POLL: Duration = Duration::from_millis(100);
const PARKED_POLLS: u32 = 50;

/// The subscriber's side of [`DeadLetters::redrive`] and of [`DeadLetters::discard`] for a
/// parked aggregate.
struct Server {
    letters: DeadLetters,
    stream: Arc<str>,
    consumer: Arc<str>,
    handler: Arc<dyn EventHandler>,
    parked: Option<kv::Store>,
}

/// Serves redrive requests of one consumer until `stop`: the subscriber's side of
/// [`DeadLetters::redrive`].
pub(crate) async fn serve_redrive(
    client: async_nats::Client,
    config: DeadLetterConfig,
    stream: Arc<str>,
    consumer: Arc<str>,
    handler: Arc<dyn EventHandler>,
    parked: Option<kv::Store>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), SubscriberError> {
    let subject = redrive_subject(&stream, &consumer);
    let mut requests = client
        .queue_subscribe(subject.clone(), "cim-redrive".to_owned())
        .await
        .map_err(failed)?;
    let server = Server {
        letters: DeadLetters::new(client.clone(), config),
        stream,
        consumer,
        handler,
        parked,
    };
    loop {
        let request = tokio::select! {
            _ = stop.changed() => return Ok(()),
            request = requests.next() => match request {
                Some(request) => request,
                None => return Ok(()),
            },
        };
        let Some(reply) = request.reply.clone() else {
            continue;
        };
        let answer = match Request::parse(&request.payload) {
            None => json!({ "handled": false, "error": "the request is not a sequence" }),
            Some(request) => server.serve(request).await,
        };
        if let Err(e) = client.publish(reply, answer.to_string().into()).await {
            tracing::warn!(%subject, error = %e, "a redrive's answer was not sent");
        }
    }
}

fn error_answer(e: impl std::fmt::Display) -> serde_json::Value {
    json!({ "handled": false, "error": e.to_string() })
}

impl Server {
    async fn serve(&self, request: Request) -> serde_json::Value {
        let sequence = request.sequence();
        let letter = match self.letters.get(sequence).await {
            Ok(Some(letter)) => letter,
            Ok(None) => return error_answer(format!("no dead letter {sequence}")),
            Err(e) => return error_answer(e),
        };
        if letter.stream != *self.stream || letter.consumer != *self.consumer {
            return error_answer(format!(
                "dead letter {sequence} is of consumer {:?} of {}",
                letter.consumer, letter.stream
            ));
        }
        // A parked aggregate (this subscriber's, or left by an earlier run in sequenced mode).
        let kv = match &self.parked {
            Some(kv) => Some(kv.clone()),
            None => match parked::existing(&self.letters.js, &self.letters.config).await {
                Ok(kv) => kv,
                Err(e) => return error_answer(e),
            },
        };
        if let Some(kv) = kv {
            let aggregate = letter.aggregate();
            let key = parked::parked_key(&self.stream, &self.consumer, &aggregate);
            match parked::read(&kv, &key).await {
                Ok(Some(_)) => return self.release(&kv, &key, &aggregate, letter, request).await,
                Ok(None) => {}
                Err(e) => return error_answer(e),
            }
        }
        match request {
            Request::Redrive(_) => match self.handle(&letter).await {
                Ok(()) => match self.letters.delete(sequence).await {
                    Ok(_) => {
                        tracing::info!(stream = %self.stream, consumer = %self.consumer, sequence,
                            original = letter.original_sequence, "dead letter handled and removed");
                        json!({ "handled": true, "sequence": letter.original_sequence })
                    }
                    Err(e) => {
                        error_answer(format!("handled, but the letter could not be removed: {e}"))
                    }
                },
                Err(e) => error_answer(e),
            },
            Request::Discard(_) => match self.letters.delete(sequence).await {
                Ok(_) => json!({ "discarded": true }),
                Err(e) => json!({ "discarded": false, "error": e.to_string() }),
            },
        }
    }

    /// Hands the letter's event to the handler once.
    async fn handle(&self, letter: &DeadLetter) -> Result<(), String> {
        let event = letter.event().map_err(|e| e.to_string())?;
        let delivery = Delivery {
            event,
            delivery_count: letter.deliveries + 1,
            max_deliveries: None,
            stream: Arc::clone(&self.stream),
            consumer: Arc::clone(&self.consumer),
            lease: None,
        };
        self.handler
            .handle_delivery(delivery)
            .await
            .map_err(|e| format!("{e:#}"))
    }

    /// The letters of this consumer's events of `aggregate`, oldest first; not those stored out
    /// of order (a stale copy of an earlier version is not one of the events parked).
    async fn letters_of(&self, aggregate: &str) -> Result<Vec<DeadLetter>, SubscriberError> {
        Ok(self
            .letters
            .list(Some(&self.stream), Some(&self.consumer))
            .await?
            .into_iter()
            .filter(|l| l.reason != dl::REASON_OUT_OF_ORDER && l.aggregate() == aggregate)
            .collect())
    }

    /// Sequenced dead letters: redrives (or discards) the first letter of a parked aggregate,
    /// then handles the letters parked behind it in order; releases the aggregate when none is
    /// left.
    async fn release(
        &self,
        kv: &kv::Store,
        key: &str,
        aggregate: &str,
        letter: DeadLetter,
        request: Request,
    ) -> serde_json::Value {
        let done = request.done_field();
        let refuse = |why: String| json!({ done: false, "refused": why });
        match self.letters_of(aggregate).await {
            Ok(mine) => {
                if let Some(first) = mine.first().filter(|f| f.sequence != letter.sequence) {
                    return refuse(format!(
                        "dead letter {} waits behind dead letter {} of aggregate {aggregate}: \
                         redrive or discard that one first",
                        letter.sequence, first.sequence
                    ));
                }
            }
            Err(e) => return json!({ done: false, "error": e.to_string() }),
        }
        // Hold the aggregate: one redrive at a time.
        let now = chrono::Utc::now().timestamp_millis();
        let held = parked::rewrite(kv, key, |p| {
            if p.redriving_until.is_some_and(|until| until > now) {
                return false;
            }
            p.redriving_until = Some(now + REDRIVE_HOLD.as_millis() as i64);
            true
        })
        .await;
        match held {
            Ok(Some((_, true))) => {}
            Ok(Some((_, false))) => {
                return refuse(format!(
                    "a redrive of aggregate {aggregate} is under way; try again when it ends"
                ))
            }
            Ok(None) => {
                return json!({ done: false, "error": "the aggregate was released meanwhile: ask again" })
            }
            Err(e) => return json!({ done: false, "error": e }),
        }
        let mut hold_until = now + REDRIVE_HOLD.as_millis() as i64;
        // The first letter.
        let first = match request {
            Request::Redrive(_) => self.handle(&letter).await,
            Request::Discard(_) => Ok(()),
        };
        if let Err(e) = first {
            self.stop_at(kv, key, letter.sequence).await;
            return json!({ done: false, "error": e });
        }
        if let Err(e) = self.letters.delete(letter.sequence).await {
            self.stop_at(kv, key, letter.sequence).await;
            return json!({ done: false, "error": format!("the letter could not be removed: {e}") });
        }
        let mut covered = letter.original_sequence;
        let mut released = 0u64;
        let mut polls = 0;
        loop {
            let next = match self.letters_of(aggregate).await {
                Ok(next) => next,
                Err(e) => {
                    self.stop_at(kv, key, 0).await;
                    return json!({
                        done: true,
                        "released": released,
                        "stopped_at": null,
                        "error": e.to_string(),
                    });
                }
            };
            for parked_letter in next {
                let now = chrono::Utc::now().timestamp_millis();
                if hold_until - now < REDRIVE_HOLD.as_millis() as i64 / 2 {
                    hold_until = now + REDRIVE_HOLD.as_millis() as i64;
                    let _ = parked::rewrite(kv, key, |p| {
                        p.redriving_until = Some(hold_until);
                        true
                    })
                    .await;
                }
                let handled = match self.handle(&parked_letter).await {
                    Ok(()) => self
                        .letters
                        .delete(parked_letter.sequence)
                        .await
                        .map(|_| ())
                        .map_err(|e| format!("handled, but the letter could not be removed: {e}")),
                    Err(e) => Err(e),
                };
                if let Err(e) = handled {
                    self.stop_at(kv, key, parked_letter.sequence).await;
                    tracing::warn!(stream = %self.stream, consumer = %self.consumer, aggregate,
                        released, head = parked_letter.sequence, error = %e,
                        "a parked event failed again: the aggregate waits on it");
                    return json!({
                        done: true,
                        "released": released,
                        "stopped_at": parked_letter.sequence,
                        "error": e,
                    });
                }
                released += 1;
                covered = covered.max(parked_letter.original_sequence);
            }
            // None left: release the aggregate if every event parked is covered, with the
            // revision read, so that one parked meanwhile is handled first.
            let state = match parked::read(kv, key).await {
                Ok(state) => state,
                Err(e) => {
                    return json!({
                        done: true,
                        "released": released,
                        "stopped_at": null,
                        "error": e.to_string(),
                    })
                }
            };
            let Some((state, revision)) = state else {
                return json!({ done: true, "released": released });
            };
            if state.last <= covered {
                match kv.delete_expect_revision(key, Some(revision)).await {
                    Ok(()) => {
                        tracing::info!(stream = %self.stream, consumer = %self.consumer, aggregate,
                            released, "parked aggregate released");
                        return json!({ done: true, "released": released });
                    }
                    // An event was parked meanwhile: handle it too.
                    Err(_) => continue,
                }
            }
            polls += 1;
            if polls > PARKED_POLLS {
                self.stop_at(kv, key, 0).await;
                return json!({
                    done: true,
                    "released": released,
                    "stopped_at": null,
                    "error": format!(
                        "event {} of aggregate {aggregate} is being parked but is not in the \
                         dead letter yet: redrive it when it is",
                        state.last
                    ),
                });
            }
            tokio::time::sleep(PARKED_POLL).await;
        }
    }

    /// Ends a redrive that did not release the aggregate: `head` (if not 0) is what it waits
    /// on now; the hold is given up.
    async fn stop_at(&self, kv: &kv::Store, key: &str, head: u64) {
        let written = parked::rewrite(kv, key, |p| {
            if head != 0 {
                p.head = head;
            }
            p.redriving_until = None;
            true
        })
        .await;
        if let Err(e) = written {
            tracing::warn!(key, error = %e, "the parked aggregate's head could not be updated");
        }
    }
}
