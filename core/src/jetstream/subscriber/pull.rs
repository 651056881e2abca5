//! Pull requests on a subscription this module owns, so that a shutdown knows when nothing more
//! can arrive.
//!
//! A message the server has delivered but the subscriber never received stays pending until
//! the ack wait passes, and then comes back *after* later events of its aggregate may have been
//! handled by the next subscriber. Unsubscribing is not a fence: the server queues deliveries
//! internally, and one chosen before the unsubscribe can still be on its way after the
//! unsubscribe's acknowledgement. The pending pull request itself is the fence: once it has
//! received its whole batch, or its end status (sent through the same queue, so after its
//! messages), nothing more will come. Requests are short-lived (one second) so that a shutdown
//! waits at most that long; for an ephemeral consumer, which is deleted right after, the
//! subscription is only drained.

use std::time::Duration;

use async_nats::jetstream::consumer::pull::BatchConfig;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, Context};
use async_nats::{StatusCode, Subscriber};
use futures::StreamExt;
use tokio::time::Instant;

use crate::jetstream::subscriber::SubscriberErrorKind;

/// How long one pull request waits on the server.
const EXPIRES: Duration = Duration::from_secs(1);
/// How long after its expiry a request's end status may take to arrive before the request is
/// taken as lost (e.g. by a reconnection).
const END_MARGIN: Duration = Duration::from_secs(2);
/// Pause before pulling again after the server refused or did not answer.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How long a drain may take.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What one message on the pull subscription means.
// Nearly every value is a `Message`: boxing it would allocate once per event for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Pulled {
    /// An event to handle.
    Message(jetstream::Message),
    /// A status the puller took care of.
    Status,
    /// The consumer cannot be pulled from any more.
    Fatal(SubscriberErrorKind, String),
}

/// One consumer's pull subscription and its pending pull request.
#[derive(Debug)]
pub(crate) struct Puller {
    consumer: PullConsumer,
    context: Context,
    inbox: String,
    subscription: Subscriber,
    batch: usize,
    /// Messages received for the pending request.
    received: usize,
    /// A pull request is pending on the server.
    open: bool,
    /// Do not pull before this (after a failure).
    pause_until: Option<Instant>,
    /// When the pending request was sent.
    sent: Instant,
    /// Pull requests lost or refused in a row.
    failures: u32,
}

impl Puller {
    pub(crate) async fn new(
        consumer: PullConsumer,
        context: Context,
        batch: usize,
    ) -> Result<Self, async_nats::SubscribeError> {
        let client = context.client();
        let inbox = client.new_inbox();
        let subscription = client.subscribe(inbox.clone()).await?;
        Ok(Self {
            consumer,
            context,
            inbox,
            subscription,
            batch,
            received: 0,
            open: false,
            pause_until: None,
            sent: Instant::now(),
            failures: 0,
        })
    }

    /// Sends a pull request if none is pending and no pause is running. After repeated
    /// failures, checks first that the consumer still exists.
    ///
    /// # Errors
    ///
    /// The consumer (or its stream) was deleted.
    pub(crate) async fn ensure_request(&mut self) -> Result<(), (SubscriberErrorKind, String)> {
        let now = Instant::now();
        if self.open || self.pause_until.is_some_and(|t| now < t) {
            return Ok(());
        }
        self.pause_until = None;
        if self.failures >= 2 {
            self.failures = 0;
            use jetstream::context::ConsumerInfoErrorKind as K;
            match self.consumer.get_info().await {
                Err(e) if matches!(e.kind(), K::NotFound | K::StreamNotFound) => {
                    return Err((self.deleted(), e.to_string()));
                }
                Err(e) => tracing::warn!(error = %e, "consumer info unavailable"),
                Ok(_) => {}
            }
        }
        let request = BatchConfig {
            batch: self.batch,
            expires: Some(EXPIRES),
            ..BatchConfig::default()
        };
        match self
            .consumer
            .request_batch(request, self.inbox.clone().into())
            .await
        {
            Ok(()) => {
                self.open = true;
                self.received = 0;
                self.sent = now;
            }
            Err(e) => {
                tracing::warn!(error = %e, "pull request not sent; retrying");
                self.failures += 1;
                self.pause_until = Some(now + RETRY_PAUSE);
            }
        }
        Ok(())
    }

    /// Is a pull request pending on the server (something may still arrive)?
    pub(crate) fn is_open(&self) -> bool {
        self.open
    }

    /// The consumer pulled from.
    pub(crate) fn consumer_mut(&mut self) -> &mut PullConsumer {
        &mut self.consumer
    }

    fn deleted(&self) -> SubscriberErrorKind {
        SubscriberErrorKind::ConsumerDeleted {
            stream: self.consumer.cached_info().stream_name.clone(),
            consumer: self.consumer.cached_info().name.clone(),
        }
    }

    /// When the puller needs attention if nothing arrives: a request whose end never came, or
    /// the end of a pause.
    pub(crate) fn deadline(&self) -> Instant {
        if self.open {
            self.sent + EXPIRES + END_MARGIN
        } else {
            self.pause_until.unwrap_or_else(Instant::now)
        }
    }

    /// Called at [`Puller::deadline`].
    pub(crate) fn on_deadline(&mut self, now: Instant) {
        if self.open && now >= self.deadline() {
            tracing::warn!("a pull request got no answer; pulling again");
            self.open = false;
            self.failures += 1;
        }
    }

    /// The next message on the subscription (cancel-safe); `None` once it is closed.
    pub(crate) async fn recv(&mut self) -> Option<async_nats::Message> {
        self.subscription.next().await
    }

    /// Interprets a message received on the subscription.
    pub(crate) fn on_message(&mut self, message: async_nats::Message) -> Pulled {
        match message.status {
            None | Some(StatusCode::OK) => {
                self.failures = 0;
                self.received += 1;
                if self.received >= self.batch {
                    self.open = false;
                }
                Pulled::Message(jetstream::Message {
                    message,
                    context: self.context.clone(),
                })
            }
            Some(StatusCode::IDLE_HEARTBEAT) => Pulled::Status,
            // The request expired or found nothing: pull again.
            Some(StatusCode::TIMEOUT | StatusCode::NOT_FOUND) => {
                self.open = false;
                self.failures = 0;
                Pulled::Status
            }
            Some(StatusCode::REQUEST_TERMINATED) => {
                self.open = false;
                let description = message.description.unwrap_or_default();
                if description.eq_ignore_ascii_case("consumer deleted") {
                    Pulled::Fatal(self.deleted(), description)
                } else if description.eq_ignore_ascii_case("consumer is push based")
                    || description.starts_with("Exceeded MaxRequest")
                {
                    Pulled::Fatal(self.pull_error(), description)
                } else {
                    // Leadership change, too many waiting requests, ...: pull again.
                    tracing::debug!(%description, "pull request ended");
                    Pulled::Status
                }
            }
            Some(status) => {
                tracing::warn!(
                    status = status.as_u16(),
                    description = message.description.as_deref().unwrap_or_default(),
                    "pull request refused; retrying"
                );
                self.open = false;
                self.failures += 1;
                self.pause_until = Some(Instant::now() + RETRY_PAUSE);
                Pulled::Status
            }
        }
    }

    pub(crate) fn pull_error(&self) -> SubscriberErrorKind {
        SubscriberErrorKind::Pull {
            stream: self.consumer.cached_info().stream_name.clone(),
            consumer: self.consumer.cached_info().name.clone(),
        }
    }

    /// Stops pulling and returns every event that arrived and was not handed out. With
    /// `fence`, first waits (at most a request's lifetime) until the pending request is over,
    /// so that nothing delivered is left on its way.
    pub(crate) async fn finish(mut self, fence: bool) -> Vec<jetstream::Message> {
        let mut out = Vec::new();
        if fence {
            let deadline = self.sent + EXPIRES + END_MARGIN;
            while self.open {
                match tokio::time::timeout_at(deadline, self.subscription.next()).await {
                    Ok(Some(message)) => {
                        if let Pulled::Message(m) = self.on_message(message) {
                            out.push(m);
                        }
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
        if let Err(e) = self.subscription.drain().await {
            tracing::debug!(error = %e, "drain not sent");
            return out;
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while let Ok(Some(message)) =
            tokio::time::timeout_at(deadline, self.subscription.next()).await
        {
            if let Pulled::Message(m) = self.on_message(message) {
                out.push(m);
            }
        }
        out
    }
}
