//! Working off dead letters: list, inspect, discard, and redrive (handle again).
//!
//! A redrive is carried out by the subscriber that dead-lettered the event, because only it has
//! the handler: every durable subscriber with a dead letter serves requests on
//! `_CIM.redrive.{stream}.{consumer}` (a queue group, so one process of it answers). A request
//! names the dead letter by its sequence in the dead-letter stream; the subscriber rebuilds the
//! event from the letter, hands it to its handler once, and deletes the letter only when the
//! handler succeeded. The answer is JSON: `{"handled": true, "sequence": N}` or
//! `{"handled": false, "error": "..."}`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull::OrderedConfig};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::watch;

use crate::envelope::StoredEvent;
use crate::headers as h;
use crate::jetstream::subscriber::dead_letter::{self as dl, DeadLetterConfig};
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
    /// The handler failed again; the letter stays.
    Failed(String),
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

    /// Deletes the dead letter at `sequence` without handling it; `false` if there was none.
    ///
    /// # Errors
    ///
    /// The server refused or could not be reached.
    pub async fn discard(&self, sequence: u64) -> Result<bool, SubscriberError> {
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
        let subject = redrive_subject(&letter.stream, &letter.consumer);
        let request = self
            .client
            .request(subject.clone(), sequence.to_string().into());
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
                    "no answer from the subscriber on {subject} within {timeout:?}"
                )))
            }
        };
        let answer: serde_json::Value = serde_json::from_slice(&reply.payload).map_err(failed)?;
        if answer["handled"] == true {
            Ok(Redriven::Handled)
        } else {
            Ok(Redriven::Failed(
                answer["error"].as_str().unwrap_or("unknown").to_owned(),
            ))
        }
    }
}

/// Serves redrive requests of one consumer until `stop`: the subscriber's side of
/// [`DeadLetters::redrive`].
pub(crate) async fn serve_redrive(
    client: async_nats::Client,
    config: DeadLetterConfig,
    stream: Arc<str>,
    consumer: Arc<str>,
    handler: Arc<dyn EventHandler>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), SubscriberError> {
    let subject = redrive_subject(&stream, &consumer);
    let mut requests = client
        .queue_subscribe(subject.clone(), "cim-redrive".to_owned())
        .await
        .map_err(failed)?;
    let letters = DeadLetters::new(client.clone(), config);
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
        let answer = match std::str::from_utf8(&request.payload)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        {
            None => json!({ "handled": false, "error": "the request is not a sequence" }),
            Some(sequence) => redrive_one(&letters, &stream, &consumer, &handler, sequence).await,
        };
        if let Err(e) = client.publish(reply, answer.to_string().into()).await {
            tracing::warn!(%subject, error = %e, "a redrive's answer was not sent");
        }
    }
}

async fn redrive_one(
    letters: &DeadLetters,
    stream: &Arc<str>,
    consumer: &Arc<str>,
    handler: &Arc<dyn EventHandler>,
    sequence: u64,
) -> serde_json::Value {
    let letter = match letters.get(sequence).await {
        Ok(Some(letter)) => letter,
        Ok(None) => {
            return json!({ "handled": false, "error": format!("no dead letter {sequence}") })
        }
        Err(e) => return json!({ "handled": false, "error": e.to_string() }),
    };
    if letter.stream != **stream || letter.consumer != **consumer {
        return json!({
            "handled": false,
            "error": format!("dead letter {sequence} is of consumer {:?} of {}", letter.consumer, letter.stream),
        });
    }
    let event = match letter.event() {
        Ok(event) => event,
        Err(e) => return json!({ "handled": false, "error": e.to_string() }),
    };
    let delivery = Delivery {
        event,
        delivery_count: letter.deliveries + 1,
        max_deliveries: None,
        stream: Arc::clone(stream),
        consumer: Arc::clone(consumer),
        lease: None,
    };
    match handler.handle_delivery(delivery).await {
        Ok(()) => match letters.discard(sequence).await {
            Ok(_) => {
                tracing::info!(stream = %stream, consumer = %consumer, sequence,
                    original = letter.original_sequence, "dead letter handled and removed");
                json!({ "handled": true, "sequence": letter.original_sequence })
            }
            Err(e) => json!({
                "handled": false,
                "error": format!("handled, but the letter could not be removed: {e}"),
            }),
        },
        Err(e) => json!({ "handled": false, "error": e.to_string() }),
    }
}
