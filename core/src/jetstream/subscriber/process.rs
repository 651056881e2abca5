//! Handling one delivered message: decode, call the handler, then acknowledge, retry later, or
//! dead-letter and terminate.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use futures::FutureExt;
use tracing::Instrument;

use crate::event::DecodeError;
use crate::jetstream::api;
use crate::jetstream::codec::decode_delivery;
use crate::jetstream::order::VersionOrder;
use crate::jetstream::subscriber::builder::Options;
use crate::jetstream::subscriber::dead_letter::{
    fit_letter, letter_headers, Letter, REASON_DELIVERIES_EXHAUSTED, REASON_OUT_OF_ORDER,
    REASON_PARKED, REASON_PERMANENT_ERROR, REASON_UNDECODABLE,
};
use crate::jetstream::subscriber::parked::{Behind, Parking};
use crate::jetstream::subscriber::partition::PartitionContext;
use crate::subscriber::{Delivery, EventHandler, HandlerError};

/// How long the server has to confirm an acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts to get an acknowledgement confirmed.
const ACK_ATTEMPTS: u32 = 3;
/// Attempts to store a dead letter.
const DEAD_LETTER_ATTEMPTS: u32 = 3;

/// A delivery this subscriber holds (running or waiting in its lane): the latest reply subject
/// and delivery count of each held stream sequence.
#[derive(Debug, Clone, Default)]
pub(crate) struct Held(Arc<Mutex<HashMap<u64, HeldEntry>>>);

#[derive(Debug, Clone)]
struct HeldEntry {
    reply: Subject,
    delivered: u64,
}

impl Held {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, HeldEntry>> {
        // Entries are replaced whole: a panic elsewhere cannot leave one half-written.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a delivery; `false` if the sequence was already held (a newer delivery of it,
    /// whose reply subject and count replace the old ones).
    pub(crate) fn insert(&self, sequence: u64, reply: Subject, delivered: u64) -> bool {
        let mut held = self.lock();
        match held.get_mut(&sequence) {
            Some(entry) => {
                if delivered >= entry.delivered {
                    *entry = HeldEntry { reply, delivered };
                }
                false
            }
            None => {
                held.insert(sequence, HeldEntry { reply, delivered });
                true
            }
        }
    }

    fn get(&self, sequence: u64) -> Option<HeldEntry> {
        self.lock().get(&sequence).cloned()
    }

    pub(crate) fn remove(&self, sequence: u64) -> Option<Subject> {
        self.lock().remove(&sequence).map(|e| e.reply)
    }

    /// The reply subjects of every held delivery.
    pub(crate) fn replies(&self) -> Vec<Subject> {
        self.lock().values().map(|e| e.reply.clone()).collect()
    }

    /// Takes every held delivery out: sequences and reply subjects.
    pub(crate) fn take_all(&self) -> Vec<(u64, Subject)> {
        self.lock().drain().map(|(s, e)| (s, e.reply)).collect()
    }

    /// The stream sequences held.
    pub(crate) fn sequences(&self) -> Vec<u64> {
        self.lock().keys().copied().collect()
    }
}

/// The parts of a stored message a dead letter copies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Original<'a> {
    pub(crate) subject: &'a str,
    pub(crate) headers: Option<&'a HeaderMap>,
    pub(crate) payload: &'a Bytes,
}

impl<'a> Original<'a> {
    fn of(message: &'a jetstream::Message) -> Self {
        Self {
            subject: message.subject.as_str(),
            headers: message.headers.as_ref(),
            payload: &message.payload,
        }
    }
}

/// Where this consumer's dead letters go.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetterTarget {
    /// The dead-letter stream.
    pub(crate) stream: String,
    pub(crate) subject: String,
    pub(crate) js: jetstream::Context,
}

/// What one consumer's message handling needs.
pub(crate) struct ConsumerContext {
    pub(crate) client: api::Conn,
    pub(crate) stream: Arc<str>,
    pub(crate) consumer: Arc<str>,
    /// The subjects the consumer filters on.
    pub(crate) subjects: Arc<[String]>,
    pub(crate) handler: Arc<dyn EventHandler>,
    pub(crate) options: Arc<Options>,
    pub(crate) dead_letter: Option<DeadLetterTarget>,
    pub(crate) held: Held,
    /// The last version seen of each recent aggregate (events of one aggregate are handled one
    /// at a time, in stream order, so they are checked in order).
    pub(crate) order: Mutex<VersionOrder>,
    /// For a consumer group member: the partition this consumer works.
    pub(crate) partition: Option<Arc<PartitionContext>>,
    /// For a consumer group member: the handlers it may run at once across its partitions
    /// (`max_in_flight`), shared by its partitions' consumers.
    pub(crate) budget: Option<Arc<tokio::sync::Semaphore>>,
    /// Sequenced dead letters: the aggregates parked behind a dead letter.
    pub(crate) parking: Option<Arc<Parking>>,
}

/// How the handling of one message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Handled and acknowledged (confirmed by the server).
    Acked,
    /// Handled, but the acknowledgement was not confirmed: it may be delivered again.
    Unconfirmed,
    /// Its handling panicked in the framework's own code (not the handler's, which is an
    /// error like any other): it is delivered again after the ack wait.
    Abandoned,
    /// Failed; it will be delivered again after this delay.
    Retry(Duration),
    /// Dead-lettered (or dropped, with no dead letter) and terminated.
    Settled,
    /// Not parked after all: its aggregate was released meanwhile (only ever returned by
    /// `settle` for a parked event, which is then handled).
    Released,
}

/// The end of one message's handling, for its lane.
#[derive(Debug)]
pub(crate) struct Done {
    pub(crate) key: Arc<str>,
    pub(crate) sequence: u64,
    pub(crate) outcome: Outcome,
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_owned()
    }
}

impl ConsumerContext {
    /// Handles one message, inside a span naming it.
    pub(crate) async fn process(
        self: Arc<Self>,
        key: Arc<str>,
        sequence: u64,
        message: jetstream::Message,
    ) -> Done {
        let delivered = self.held.get(sequence).map_or(1, |e| e.delivered);
        let span = tracing::info_span!(
            "handle_event",
            subject = %message.subject,
            stream = %self.stream,
            consumer = %self.consumer,
            stream_sequence = sequence,
            delivery_count = delivered,
            event_type = tracing::field::Empty,
            aggregate_id = %key,
        );
        // The trace of the span that appended the event, carried in its headers.
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str())
        };
        crate::trace::set_parent(
            &span,
            header(crate::headers::TRACEPARENT),
            header(crate::headers::TRACESTATE),
        );
        let outcome = AssertUnwindSafe(self.handle(&key, sequence, delivered, &message))
            .catch_unwind()
            .instrument(span)
            .await
            .unwrap_or_else(|panic| {
                tracing::error!(
                    stream_sequence = sequence,
                    panic = %panic_message(&*panic),
                    "handling a message panicked; it will be delivered again"
                );
                self.held.remove(sequence);
                Outcome::Abandoned
            });
        Done {
            key,
            sequence,
            outcome,
        }
    }

    async fn handle(
        &self,
        key: &str,
        sequence: u64,
        delivered: u64,
        message: &jetstream::Message,
    ) -> Outcome {
        if crate::store::is_check_marker(message.subject.as_str()) {
            // A check marker of an append to several aggregates: not an event, nothing to do.
            return self.ack(sequence).await;
        }
        let decoded = match &self.partition {
            Some(_) => crate::jetstream::codec::decode_view_delivery(message),
            None => decode_delivery(message),
        };
        let event = match decoded {
            Some(Ok(event)) => event,
            Some(Err(e)) => {
                return Box::pin(self.settle(
                    key,
                    sequence,
                    delivered,
                    message,
                    REASON_UNDECODABLE,
                    &e.to_string(),
                ))
                .await
            }
            None => {
                return Box::pin(self.settle(
                    key,
                    sequence,
                    delivered,
                    message,
                    REASON_UNDECODABLE,
                    "the message carries no JetStream metadata",
                ))
                .await
            }
        };
        let in_order = self.order.lock().unwrap_or_else(|p| p.into_inner()).check(
            &event.aggregate_id,
            sequence,
            event.aggregate_version,
        );
        if let Err(reason) = in_order {
            return Box::pin(self.settle(
                key,
                sequence,
                delivered,
                message,
                REASON_OUT_OF_ORDER,
                &reason,
            ))
            .await;
        }
        tracing::Span::current().record("event_type", event.event_type.as_str());
        if self.parking.as_ref().is_some_and(|p| p.is_parked(key)) {
            // Sequenced dead letters: behind its aggregate's dead letter, unless released.
            let outcome = Box::pin(self.settle(
                key,
                sequence,
                delivered,
                message,
                REASON_PARKED,
                "its aggregate is parked behind an earlier event in the dead letter",
            ))
            .await;
            if outcome != Outcome::Released {
                return outcome;
            }
        }
        let delivery = match &self.partition {
            Some(p) => Delivery {
                event,
                // Delivered by an earlier epoch's consumer: a redelivery.
                delivery_count: if sequence <= p.redelivered_upto {
                    delivered.max(2)
                } else {
                    delivered
                },
                max_deliveries: self.options.max_deliveries,
                stream: Arc::clone(&p.origin),
                consumer: Arc::clone(&p.lease.group),
                lease: Some(p.lease.clone()),
            },
            None => Delivery {
                event,
                delivery_count: delivered,
                max_deliveries: self.options.max_deliveries,
                stream: self.stream.clone(),
                consumer: self.consumer.clone(),
                lease: None,
            },
        };
        let labels = (Arc::clone(&delivery.stream), Arc::clone(&delivery.consumer));
        let count = delivery.delivery_count;
        let started = std::time::Instant::now();
        let result = AssertUnwindSafe(self.handler.handle_delivery(delivery))
            .catch_unwind()
            .await;
        crate::metrics::handled(
            &labels.0,
            &labels.1,
            started.elapsed(),
            !matches!(result, Ok(Ok(()))),
            count,
        );
        let error = match result {
            Ok(Ok(())) => return self.ack(sequence).await,
            Ok(Err(e)) => e,
            Err(panic) => {
                HandlerError::msg(format!("handler panicked: {}", panic_message(&*panic)))
            }
        };
        let text = format!("{error:#}");
        if error.is_permanent() {
            tracing::warn!(error = %text, "handler failed permanently");
            // A typed handler that cannot decode the event: say so.
            let reason = if error.downcast_ref::<DecodeError>().is_some() {
                REASON_UNDECODABLE
            } else {
                REASON_PERMANENT_ERROR
            };
            return Box::pin(self.settle(key, sequence, delivered, message, reason, &text)).await;
        }
        if self
            .options
            .max_deliveries
            .is_some_and(|max| delivered >= max)
        {
            tracing::warn!(error = %text, "handler failed on the last delivery");
            return Box::pin(self.settle(
                key,
                sequence,
                delivered,
                message,
                REASON_DELIVERIES_EXHAUSTED,
                &text,
            ))
            .await;
        }
        let delay = error
            .retry_delay()
            .unwrap_or_else(|| self.options.backoff_for(delivered));
        tracing::warn!(error = %text, retry_in = ?delay, "handler failed; the event will be delivered again");
        self.nak(sequence, delay).await;
        Outcome::Retry(delay)
    }

    /// Acknowledges a handled event and waits for the server to confirm.
    async fn ack(&self, sequence: u64) -> Outcome {
        let Some(entry) = self.held.get(sequence) else {
            return Outcome::Unconfirmed;
        };
        let confirmed = match &self.partition {
            Some(p) => self.settle_in_order(p, sequence, AckKind::Ack.into()).await,
            None => {
                let confirmed = self.confirm(entry.reply, AckKind::Ack.into()).await;
                self.held.remove(sequence);
                confirmed
            }
        };
        if confirmed {
            tracing::debug!("event handled and acknowledged");
            Outcome::Acked
        } else {
            tracing::warn!("acknowledgement not confirmed; the event may be delivered again");
            Outcome::Unconfirmed
        }
    }

    /// For a group member: settles `sequence` with `body` (`+ACK` or `+TERM`) once every
    /// earlier open sequence of its partition is settled; sends what became sendable, in
    /// order, the last one confirmed. `false` only when a confirmation failed.
    async fn settle_in_order(
        &self,
        partition: &PartitionContext,
        sequence: u64,
        body: Bytes,
    ) -> bool {
        let _sending = partition.sending.lock().await;
        let Some(reply) = self.held.remove(sequence) else {
            return false;
        };
        if !partition.is_open(sequence) {
            // Not tracked (cannot happen for a delivered event): settle it alone.
            return self.confirm(reply, body).await;
        }
        let batch = partition.settle(sequence, reply, body);
        let Some((last_reply, last_body)) = batch.last().cloned() else {
            return true;
        };
        for (reply, body) in &batch[..batch.len() - 1] {
            if let Err(e) = self.client.publish(reply.clone(), body.clone()).await {
                tracing::debug!(error = %e, "acknowledgement not sent");
            }
        }
        self.confirm(last_reply, last_body).await
    }

    /// Asks for the event again after `delay`. The sequence stops being held first, so that
    /// its next delivery is recognised as new.
    pub(crate) async fn nak(&self, sequence: u64, delay: Duration) {
        if let Some(reply) = self.held.remove(sequence) {
            self.nak_reply(reply, delay).await;
        }
    }

    pub(crate) async fn nak_reply(&self, reply: Subject, delay: Duration) {
        let body: Bytes = AckKind::Nak((!delay.is_zero()).then_some(delay)).into();
        if let Err(e) = self.client.publish(reply, body).await {
            tracing::warn!(error = %e, "negative acknowledgement not sent; the event comes back after the ack wait");
        }
    }

    /// Sends an acknowledgement of the given kind as a request, so the server confirms it;
    /// sent again at once if the client reconnects meanwhile (an acknowledgement is
    /// idempotent).
    pub(crate) async fn confirm(&self, reply: Subject, body: Bytes) -> bool {
        for attempt in 1..=ACK_ATTEMPTS {
            match api::request_again_on_reconnect(&self.client, &reply, body.clone(), ACK_TIMEOUT)
                .await
            {
                Ok(_) => return true,
                Err(e) => {
                    tracing::debug!(attempt, error = %e, "acknowledgement not confirmed");
                    if matches!(e.kind(), crate::StoreErrorKind::StreamNotFound) {
                        // No responders: the consumer is gone.
                        return false;
                    }
                }
            }
        }
        false
    }

    /// Sends the event to the dead letter, then terminates it. If the dead letter cannot be
    /// stored and the server would deliver the event again, it is retried later instead.
    ///
    /// With sequenced dead letters, the event's aggregate (`key`) is parked behind its letter,
    /// or, if it is parked already, the event is parked behind the head (its `last` raised
    /// before the letter is stored); an event stored out of order parks nothing.
    async fn settle(
        &self,
        key: &str,
        sequence: u64,
        delivered: u64,
        message: &jetstream::Message,
        reason: &'static str,
        error: &str,
    ) -> Outcome {
        let parking = self
            .parking
            .as_deref()
            .filter(|_| reason != REASON_OUT_OF_ORDER);
        match &self.dead_letter {
            Some(target) => {
                // A group member's dead letter names the event stream, its sequence and the
                // group, as a single subscriber's would.
                let origin = self
                    .partition
                    .as_ref()
                    .and_then(|_| crate::jetstream::codec::view_origin(message));
                let (stream, consumer, letter_sequence, original) = match (&self.partition, &origin)
                {
                    (Some(p), Some((origin_sequence, subject))) => (
                        &p.origin,
                        &p.lease.group,
                        *origin_sequence,
                        Original {
                            subject,
                            headers: message.headers.as_ref(),
                            payload: &message.payload,
                        },
                    ),
                    _ => (
                        &self.stream,
                        &self.consumer,
                        sequence,
                        Original::of(message),
                    ),
                };
                // Parked behind the aggregate's head (raised `last` first), or the new head.
                let mut head = parking.is_some();
                let mut error = std::borrow::Cow::Borrowed(error);
                if let Some(parking) = parking.filter(|p| p.is_parked(key)) {
                    match parking.promise(key, letter_sequence).await {
                        Ok(Behind::Head(letter)) => {
                            head = false;
                            if reason == REASON_PARKED {
                                error = format!("parked behind dead letter {letter}").into();
                            }
                        }
                        Ok(Behind::Released) if reason == REASON_PARKED => {
                            return Outcome::Released
                        }
                        Ok(Behind::Released) => {}
                        Err(e) => {
                            if let Some(retry) = self
                                .retry_unsettled(
                                    sequence,
                                    delivered,
                                    "parked state not written",
                                    &e,
                                )
                                .await
                            {
                                return retry;
                            }
                            // The last delivery: stored as a letter of its own rather than lost.
                        }
                    }
                }
                let letter = Letter {
                    stream,
                    consumer,
                    sequence: letter_sequence,
                    delivered,
                    reason,
                    error: &error,
                };
                match self.send_letter(target, original, &letter).await {
                    Ok(stored) => {
                        if let (true, Some(parking)) = (head, parking) {
                            if let Err(e) = parking.park(key, stored, letter_sequence).await {
                                // Not terminated without its parked state while it can come
                                // back: the letter goes and the event is delivered again. On
                                // the last delivery the letter stays, unparked.
                                if self.may_deliver_again(delivered) {
                                    self.remove_letter(target, stored).await;
                                }
                                if let Some(retry) = self
                                    .retry_unsettled(
                                        sequence,
                                        delivered,
                                        "parked state not written",
                                        &e,
                                    )
                                    .await
                                {
                                    return retry;
                                }
                            }
                        }
                        crate::metrics::dead_letter(stream, consumer);
                        tracing::error!(
                            dead_letter = %target.subject,
                            reason,
                            error = %error,
                            "event sent to the dead letter"
                        );
                    }
                    Err(e) => {
                        if let Some(retry) = self
                            .retry_unsettled(sequence, delivered, "dead letter not stored", &e)
                            .await
                        {
                            return retry;
                        }
                        tracing::error!(
                            error = %e,
                            reason,
                            handler_error = %error,
                            "dead letter not stored on the last delivery; the event is terminated and stays only in its stream"
                        );
                    }
                }
            }
            None => tracing::error!(
                reason,
                error,
                "event given up (no dead letter configured); terminated"
            ),
        }
        if let Some(p) = &self.partition {
            if !self
                .settle_in_order(p, sequence, AckKind::Term.into())
                .await
            {
                tracing::warn!("termination not confirmed");
            }
        } else if let Some(reply) = self.held.remove(sequence) {
            if !self.confirm(reply, AckKind::Term.into()).await {
                tracing::warn!("termination not confirmed");
            }
        }
        Outcome::Settled
    }

    /// Will the server deliver the event again after delivery `delivered`?
    fn may_deliver_again(&self, delivered: u64) -> bool {
        self.options
            .max_deliveries
            .is_none_or(|max| delivered < max)
    }

    /// The event could not be settled (`what`): if the server delivers it again, it comes back
    /// after the backoff ([`Outcome::Retry`]); `None` on its last delivery.
    async fn retry_unsettled(
        &self,
        sequence: u64,
        delivered: u64,
        what: &str,
        error: &str,
    ) -> Option<Outcome> {
        if !self.may_deliver_again(delivered) {
            return None;
        }
        let delay = self.options.backoff_for(delivered);
        tracing::error!(error, "{what}; the event will be delivered again");
        self.nak(sequence, delay).await;
        Some(Outcome::Retry(delay))
    }

    /// Removes a dead letter this consumer stored (its parked state could not be written).
    async fn remove_letter(&self, target: &DeadLetterTarget, sequence: u64) {
        let removed = match target.js.get_stream(&target.stream).await {
            Ok(stream) => stream
                .delete_message(sequence)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = removed {
            tracing::error!(error = %e, dead_letter = sequence,
                "a dead letter whose parked state was not written could not be removed; discard it");
        }
    }

    /// Sends a message the client cannot parse (read through the JSON API, its headers
    /// leniently) to the dead letter, if there is one. It was never delivered intact, so it is
    /// counted as delivered once.
    pub(crate) async fn dead_letter_unparseable(
        &self,
        sequence: u64,
        original: &Original<'_>,
        error: &str,
    ) {
        let Some(target) = &self.dead_letter else {
            tracing::error!(
                stream_sequence = sequence,
                error,
                "a message the client cannot parse is terminated (no dead letter configured)"
            );
            return;
        };
        let letter = Letter {
            stream: &self.stream,
            consumer: &self.consumer,
            sequence,
            delivered: 1,
            reason: REASON_UNDECODABLE,
            error,
        };
        match self.send_letter(target, *original, &letter).await {
            Ok(_) => tracing::error!(
                dead_letter = %target.subject,
                stream_sequence = sequence,
                error,
                "a message the client cannot parse was sent to the dead letter"
            ),
            Err(e) => tracing::error!(
                stream_sequence = sequence,
                error = %e,
                "a message the client cannot parse is terminated; its dead letter was not stored \
                 and it stays only in its stream"
            ),
        }
    }

    async fn send_letter(
        &self,
        target: &DeadLetterTarget,
        original: Original<'_>,
        letter: &Letter<'_>,
    ) -> Result<u64, String> {
        let headers = letter_headers(original.headers, original.subject, letter);
        let max = self.client.server_info().max_payload;
        let (headers, payload) = fit_letter(headers, original.payload, letter, max);
        let mut last = String::new();
        for attempt in 1..=DEAD_LETTER_ATTEMPTS {
            let sent = async {
                target
                    .js
                    .publish_with_headers(target.subject.clone(), headers.clone(), payload.clone())
                    .await
                    .map_err(|e| e.to_string())?
                    .await
                    .map_err(|e| e.to_string())
            };
            match sent.await {
                // A retry the server recognised answers with the first copy's sequence.
                Ok(ack) => return Ok(ack.sequence),
                Err(e) => last = e,
            }
            if attempt < DEAD_LETTER_ATTEMPTS {
                tokio::time::sleep(Duration::from_millis(200) * attempt).await;
            }
        }
        Err(last)
    }
}
