//! The JetStream subscriber: durable, acknowledged, retried and dead-lettered delivery of stored
//! events to an [`EventHandler`].
//!
//! A subscription is one JetStream *pull* consumer per stream its subjects belong to (several
//! domains' streams can sit behind one handle). What it guarantees:
//!
//! - **At least once.** An event is acknowledged only after its handler succeeded, and the
//!   acknowledgement is confirmed by the server, so an acknowledged event is not delivered again.
//!   An event whose handler was stopped half-way is.
//! - **Per-aggregate order.** Events of one aggregate (same aggregate id) are handled one at a
//!   time in stream order, also across retries: while an event waits to be retried, the later
//!   events of its aggregate wait too. Different aggregates are handled concurrently, up to
//!   `max_in_flight` events held at once (the consumer's `max_ack_pending`, so the server never
//!   sends more and memory stays bounded): on the consumer's task by default, or each on a
//!   task of its own, on several cores, with `parallel_handlers(true)`.
//! - **Retries with backoff.** A failing handler's event is given back with a delay
//!   (`-NAK {"delay": ..}`), up to the maximum number of deliveries (the consumer's
//!   `max_deliver`).
//! - **Dead letter.** After the last failed delivery, on a permanent error, or for a message that
//!   is not a readable event, the event is copied with its headers and the error to the dead
//!   letter (see [`dead_letter`]) and terminated (`+TERM`); the consumer goes on.
//! - **Nothing stalls on a message the client cannot parse.** `async-nats` drops the connection
//!   when a delivery's headers do not parse (another client may have stored bytes that are not
//!   UTF-8); the deliveries lost with it are found and delivered again at once, and such a
//!   message goes to the dead letter and is terminated (see `recover.rs`): one reconnection
//!   per such message, and everything else on the same client goes on.
//! - **Liveness.** Running handlers and events waiting behind their aggregate report progress
//!   (`+WPI`) to the server, so a slow handler does not get its event delivered twice.
//! - **Graceful shutdown.** Stop pulling, give back events not started (in stream order, and
//!   after a retried event they wait for), let running handlers finish and acknowledge them,
//!   delete ephemeral consumers. A durable consumer's shutdown first waits for its pending
//!   one-second pull request to end, so nothing delivered is lost
//!   on its way and a restarted subscriber gets everything at once and in order.
//!
//! One subscription per durable name at a time: the order of an aggregate's events is kept
//! within one subscription (a second process pulling from the same durable consumer would
//! handle some of them in parallel).
//!
//! Pull requests last one second and are renewed; a lost one (e.g. after a reconnection) is
//! noticed within three seconds, and a consumer deleted from outside ends the subscription with
//! [`SubscriberErrorKind::ConsumerDeleted`].
//! - **Tracing.** Each event is handled inside a `handle_event` span with its subject, stream,
//!   consumer, stream sequence, delivery count, event type and aggregate id.
//!
//! # Examples
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use cim_nats::jetstream::subscriber::EventSubscriberBuilder;
//! use cim_nats::subscriber::FnEventHandler;
//! use cim_nats::StoredEvent;
//!
//! let client = async_nats::connect("nats://127.0.0.1:4222").await?;
//! let handler = Arc::new(FnEventHandler::new(|event: StoredEvent| {
//!     println!("Received: {} at {}", event.event_type, event.timestamp);
//!     Ok(())
//! }));
//! let subscriber = EventSubscriberBuilder::new()
//!     .client(client)
//!     .subject("infrastructure.compute.>")
//!     .handler(handler)
//!     .build()?;
//! let handle = subscriber.subscribe().await?;
//! handle.await?;
//! # Ok(()) }
//! ```

mod builder;
pub mod dead_letter;
mod error;
pub(crate) mod group;
mod handle;
mod lanes;
mod letters;
mod parked;
mod partition;
mod process;
mod pull;
mod recover;
mod run;
mod setup;

use std::fmt;
use std::sync::Arc;

use async_nats::jetstream;
use async_nats::Client;
use tokio::sync::watch;

use crate::subscriber::EventHandler;

pub use builder::{DeliverPolicy, EventSubscriberBuilder, DEFAULT_MAX_IN_FLIGHT};
pub use dead_letter::DeadLetterConfig;
pub use error::{SubscriberError, SubscriberErrorKind};
pub use handle::{ShutdownTrigger, SubscribedConsumer, SubscriptionFuture, SubscriptionHandle};
pub use letters::{redrive_subject, DeadLetter, DeadLetters, Discarded, Redriven};
pub use parked::{parked_bucket, parked_key, ParkedAggregate};

use builder::Options;
use handle::ConsumerRun;
use process::{ConsumerContext, DeadLetterTarget, Held};

/// A configured subscriber; [`EventSubscriber::subscribe`] starts it. Built by
/// [`EventSubscriberBuilder`].
pub struct EventSubscriber {
    client: Client,
    subjects: Vec<String>,
    handler: Arc<dyn EventHandler>,
    options: Arc<Options>,
}

impl fmt::Debug for EventSubscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventSubscriber")
            .field("subjects", &self.subjects)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl EventSubscriber {
    /// A builder.
    pub fn builder() -> EventSubscriberBuilder {
        EventSubscriberBuilder::new()
    }

    /// The subjects consumed.
    pub fn subjects(&self) -> &[String] {
        &self.subjects
    }

    /// The durable name, if the consumer is durable.
    pub fn durable_name(&self) -> Option<&str> {
        self.options.durable.as_deref()
    }

    /// Finds the stream of each subject, creates the dead-letter stream if needed and one
    /// consumer per stream (or resumes the durable one), and starts delivering.
    ///
    /// # Errors
    ///
    /// [`SubscriberErrorKind::NoStream`] if no stream captures one of the subjects;
    /// [`SubscriberErrorKind::ConsumerSetup`] or [`SubscriberErrorKind::DeadLetterSetup`] if the
    /// server refuses the consumer or the dead-letter stream; [`SubscriberErrorKind::Connection`].
    /// Nothing is left behind on error: ephemeral consumers already created are deleted.
    pub async fn subscribe(&self) -> Result<SubscriptionHandle, SubscriberError> {
        let js = jetstream::new(self.client.clone());
        let by_stream = setup::resolve_streams(&self.client, &self.subjects).await?;
        if let Some(dl) = &self.options.dead_letter {
            dl.ensure(&js).await?;
        }
        // Sequenced dead letters: the bucket of parked aggregates.
        let parked = match (
            &self.options.dead_letter,
            self.options.sequenced_dead_letters,
        ) {
            (Some(dl), true) => Some(parked::open(&js, dl).await?),
            _ => None,
        };
        let (stop, stop_rx) = watch::channel(false);
        let mut runs: Vec<ConsumerRun> = Vec::with_capacity(by_stream.len());
        let mut consumers = Vec::with_capacity(by_stream.len());
        let mut groups = Vec::new();
        for (stream, subjects) in by_stream {
            if let (Some(group_options), Some(durable)) =
                (&self.options.group, &self.options.durable)
            {
                // A member of a consumer group: its consumers come and go with its leases.
                let dead_letter = self
                    .options
                    .dead_letter
                    .as_ref()
                    .map(|dl| DeadLetterTarget {
                        stream: dl.stream.clone(),
                        subject: dl.subject_for(&stream, durable),
                        js: js.clone(),
                    });
                let member = match group::start_member(
                    &self.client,
                    &stream,
                    subjects.clone(),
                    Arc::clone(&self.handler),
                    Arc::clone(&self.options),
                    dead_letter.clone(),
                    parked.clone(),
                    durable,
                    group_options.clone(),
                )
                .await
                {
                    Ok(member) => member,
                    Err(e) => {
                        handle::cleanup(&js, &consumers).await;
                        return Err(e);
                    }
                };
                groups.push(member.observer());
                consumers.push(SubscribedConsumer {
                    stream: stream.clone(),
                    name: durable.clone(),
                    durable: true,
                    subjects,
                    dead_letter_subject: dead_letter.as_ref().map(|d| d.subject.clone()),
                });
                let mut stop = stop_rx.clone();
                runs.push(Box::pin(async move {
                    let _ = stop.wait_for(|s| *s).await;
                    member
                        .shutdown()
                        .await
                        .map_err(|e| SubscriberError::new(SubscriberErrorKind::Group(e)))
                }));
                if let Some(config) = &self.options.dead_letter {
                    runs.push(Box::pin(letters::serve_redrive(
                        self.client.clone(),
                        config.clone(),
                        Arc::from(stream.as_str()),
                        Arc::from(durable.as_str()),
                        Arc::clone(&self.handler),
                        parked.clone(),
                        stop_rx.clone(),
                    )));
                }
                continue;
            }
            let consumer =
                match setup::create_consumer(&js, &stream, &subjects, &self.options).await {
                    Ok(c) => c,
                    Err(e) => {
                        handle::cleanup(&js, &consumers).await;
                        return Err(e);
                    }
                };
            let name = consumer.cached_info().name.clone();
            let filters = subjects.clone();
            let dead_letter = self
                .options
                .dead_letter
                .as_ref()
                .map(|dl| DeadLetterTarget {
                    stream: dl.stream.clone(),
                    subject: dl.subject_for(&stream, &name),
                    js: js.clone(),
                });
            consumers.push(SubscribedConsumer {
                stream: stream.clone(),
                name: name.clone(),
                durable: self.options.durable.is_some(),
                subjects,
                dead_letter_subject: dead_letter.as_ref().map(|d| d.subject.clone()),
            });
            let parking = match &parked {
                Some(kv) => match parked::Parking::load(
                    kv.clone(),
                    Arc::from(stream.as_str()),
                    Arc::from(name.as_str()),
                )
                .await
                {
                    Ok(parking) => Some(Arc::new(parking)),
                    Err(e) => {
                        handle::cleanup(&js, &consumers).await;
                        return Err(e);
                    }
                },
                None => None,
            };
            let ctx = Arc::new(ConsumerContext {
                client: crate::jetstream::api::Conn::new(self.client.clone()),
                stream: Arc::from(stream.as_str()),
                consumer: Arc::from(name.as_str()),
                subjects: Arc::from(filters),
                handler: Arc::clone(&self.handler),
                options: Arc::clone(&self.options),
                dead_letter,
                held: Held::default(),
                order: std::sync::Mutex::default(),
                partition: None,
                budget: None,
                parking,
            });
            let run = run::run(ctx, js.clone(), consumer, stop_rx.clone());
            runs.push(Box::pin(async move { run.await.map(|_| ()) }));
            // A durable consumer's dead letters can be handled again on request.
            if let (Some(config), true) =
                (&self.options.dead_letter, self.options.durable.is_some())
            {
                runs.push(Box::pin(letters::serve_redrive(
                    self.client.clone(),
                    config.clone(),
                    Arc::from(stream.as_str()),
                    Arc::from(name.as_str()),
                    Arc::clone(&self.handler),
                    parked.clone(),
                    stop_rx.clone(),
                )));
            }
        }
        tracing::info!(subjects = ?self.subjects, consumers = consumers.len(), "subscribed");
        Ok(handle::start(js, runs, consumers, groups, stop))
    }
}
