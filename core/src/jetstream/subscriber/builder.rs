//! [`EventSubscriberBuilder`]: the options of a subscriber, checked by `build()`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use chrono::{DateTime, Utc};

use crate::envelope::StreamSequence;
use crate::jetstream::subscriber::dead_letter::DeadLetterConfig;
use crate::jetstream::subscriber::EventSubscriber;
use crate::jetstream::subscriber::{SubscriberError, SubscriberErrorKind};
use crate::subject::{validate_subject, validate_token};
use crate::subscriber::EventHandler;

/// Where a new consumer starts reading.
///
/// It applies when the consumer is created: a durable consumer that already exists resumes
/// where it stopped, whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DeliverPolicy {
    /// Only events stored after the subscription starts, like a live subscription (the default
    /// of an ephemeral subscriber).
    #[default]
    New,
    /// Every event, from the first (the default of a new durable consumer: a new handler of a
    /// domain's events starts from its history).
    All,
    /// From this stream sequence on (inclusive). With subjects of several streams, it applies
    /// to each stream.
    FromSequence(StreamSequence),
    /// From the first event stored at or after this time.
    FromTime(DateTime<Utc>),
}

/// The checked options of a subscriber.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) durable: Option<String>,
    pub(crate) deliver: DeliverPolicy,
    pub(crate) max_in_flight: usize,
    pub(crate) parallel_handlers: bool,
    pub(crate) ack_wait: Duration,
    pub(crate) max_deliveries: Option<u64>,
    pub(crate) backoff: Vec<Duration>,
    pub(crate) redelivery_backoff: Vec<Duration>,
    pub(crate) dead_letter: Option<DeadLetterConfig>,
    /// Park an aggregate's later events behind its dead letter.
    pub(crate) sequenced_dead_letters: bool,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) inactive_threshold: Duration,
    pub(crate) description: Option<String>,
    /// Work as a member of a consumer group (partitions shared with other processes).
    pub(crate) group: Option<crate::jetstream::group::GroupOptions>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            durable: None,
            deliver: DeliverPolicy::New,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            parallel_handlers: false,
            ack_wait: Duration::from_secs(30),
            max_deliveries: Some(5),
            backoff: vec![
                Duration::from_millis(500),
                Duration::from_secs(2),
                Duration::from_secs(10),
                Duration::from_secs(30),
            ],
            redelivery_backoff: Vec::new(),
            dead_letter: Some(DeadLetterConfig::default()),
            sequenced_dead_letters: false,
            shutdown_timeout: Duration::from_secs(30),
            inactive_threshold: Duration::from_secs(300),
            description: None,
            group: None,
        }
    }
}

impl Options {
    /// The delay before delivery `delivered + 1` after delivery `delivered` failed.
    pub(crate) fn backoff_for(&self, delivered: u64) -> Duration {
        let i = usize::try_from(delivered.saturating_sub(1)).unwrap_or(usize::MAX);
        self.backoff
            .get(i)
            .or_else(|| self.backoff.last())
            .copied()
            .unwrap_or_default()
    }

    /// How long the server waits for an acknowledgement before delivering again: the first
    /// redelivery backoff if there is one (the server then ignores `ack_wait`), else `ack_wait`.
    pub(crate) fn effective_ack_wait(&self) -> Duration {
        self.redelivery_backoff
            .first()
            .copied()
            .unwrap_or(self.ack_wait)
    }
}

/// Events handled at once by default.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;

/// Builds an [`EventSubscriber`]: a JetStream pull consumer per stream, delivering to a handler.
///
/// Required: [`client`](Self::client), at least one [`subject`](Self::subject), and a
/// [`handler`](Self::handler). Defaults: ephemeral (deleted when the subscription ends) and
/// [`DeliverPolicy::New`] (a new [`durable`](Self::durable) consumer: [`DeliverPolicy::All`]),
/// 64 events in flight, ack wait 30 s, 5 deliveries with a backoff of
/// 0.5 s, 2 s, 10 s, 30 s between them, then the dead letter (stream `DLQ`, subjects
/// `dlq.{stream}.{consumer}`), shutdown timeout 30 s.
///
/// ```no_run
/// # async fn run(client: async_nats::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use cim_nats::jetstream::subscriber::{DeliverPolicy, EventSubscriberBuilder};
/// use cim_nats::subscriber::FnEventHandler;
/// use cim_nats::StoredEvent;
///
/// let subscriber = EventSubscriberBuilder::new()
///     .client(client)
///     .subject("inventory.>")
///     .handler(Arc::new(FnEventHandler::new(|event: StoredEvent| {
///         println!("{} #{}", event.event_type, event.stream_sequence);
///         Ok(())
///     })))
///     .durable("inventory-printer")
///     .deliver_policy(DeliverPolicy::All)
///     .max_in_flight(32)
///     .max_deliveries(3)
///     .backoff([Duration::from_secs(1), Duration::from_secs(10)])
///     .build()?;
/// let handle = subscriber.subscribe().await?;
/// // ... later
/// handle.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct EventSubscriberBuilder {
    client: Option<Client>,
    subjects: Vec<String>,
    handler: Option<Arc<dyn EventHandler>>,
    options: Options,
    /// Was a deliver policy given? Else a durable consumer starts with every event.
    deliver_given: bool,
}

impl fmt::Debug for EventSubscriberBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventSubscriberBuilder")
            .field("subjects", &self.subjects)
            .field("has_client", &self.client.is_some())
            .field("has_handler", &self.handler.is_some())
            .field("options", &self.options)
            .finish()
    }
}

impl EventSubscriberBuilder {
    /// A builder with the defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// The NATS client to consume with.
    #[must_use]
    pub fn client(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Adds a subject to consume (wildcards allowed, e.g. `infrastructure.compute.>`).
    /// Repeatable; subjects of several streams give one consumer per stream behind one handle.
    #[must_use]
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subjects.push(subject.into());
        self
    }

    /// Adds several subjects.
    #[must_use]
    pub fn subjects<S: Into<String>>(mut self, subjects: impl IntoIterator<Item = S>) -> Self {
        self.subjects.extend(subjects.into_iter().map(Into::into));
        self
    }

    /// The handler events are delivered to: any [`EventHandler`], including an
    /// `Arc<H>` or `Arc<dyn EventHandler>`.
    #[must_use]
    pub fn handler<H: EventHandler + 'static>(mut self, handler: H) -> Self {
        self.handler = Some(Arc::new(handler));
        self
    }

    /// Makes the consumer durable under this name: the server remembers what it acknowledged,
    /// and a subscription with the same name resumes where the last one stopped. Run one
    /// subscription per durable name at a time: the per-aggregate order is kept within one.
    #[must_use]
    pub fn durable(mut self, name: impl Into<String>) -> Self {
        self.options.durable = Some(name.into());
        self
    }

    /// Where a new consumer starts. Default: [`DeliverPolicy::All`] for a new durable consumer
    /// (a new handler reads the history), [`DeliverPolicy::New`] for an ephemeral one (a live
    /// subscription). A durable consumer that exists resumes where it stopped, whatever this
    /// says; where each consumer starts is logged (`info`).
    #[must_use]
    pub fn deliver_policy(mut self, policy: DeliverPolicy) -> Self {
        self.options.deliver = policy;
        self.deliver_given = true;
        self
    }

    /// How many events may be held at once (handled, or waiting behind an earlier event of
    /// the same aggregate); the server delivers no more until some are acknowledged, so memory
    /// stays bounded. Default 64. A consumer group member ([`group`](Self::group)) holds up to
    /// this many per partition it works, and runs at most this many handlers at once across
    /// them.
    #[must_use]
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.options.max_in_flight = max;
        self
    }

    /// Runs each event's handler on a Tokio task of its own, so that handlers of different
    /// aggregates can use several cores at once (for handlers with CPU-heavy work).
    ///
    /// By default handlers run concurrently on the consumer's own task: events of different
    /// aggregates still overlap wherever a handler awaits, at a lower cost per event (on the
    /// benchmark machine, 14 instead of 21 µs of client CPU per event, the spawn and the
    /// cross-thread wake-ups saved). Either way one aggregate's events are handled one at a
    /// time, in order.
    #[must_use]
    pub fn parallel_handlers(mut self, parallel: bool) -> Self {
        self.options.parallel_handlers = parallel;
        self
    }

    /// How long the server waits for an acknowledgement before delivering an event again,
    /// should this process stop answering (a running handler keeps its event by reporting
    /// progress). Default 30 s.
    #[must_use]
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.options.ack_wait = ack_wait;
        self
    }

    /// The most deliveries of one event (default 5); after the last failed one it goes to the
    /// dead letter.
    #[must_use]
    pub fn max_deliveries(mut self, max: u64) -> Self {
        self.options.max_deliveries = Some(max);
        self
    }

    /// Retries a failing event forever (it never reaches the dead letter unless its handler
    /// returns a permanent error).
    #[must_use]
    pub fn unlimited_deliveries(mut self) -> Self {
        self.options.max_deliveries = None;
        self
    }

    /// The delays before delivering a failed event again: the n-th failure waits the n-th
    /// delay (the last one repeats). A handler's
    /// [`retry_after`](crate::subscriber::HandlerError::retry_after) takes precedence.
    #[must_use]
    pub fn backoff(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.options.backoff = delays.into_iter().collect();
        self
    }

    /// The server-side redelivery schedule (JetStream's consumer `backoff`) used when no
    /// acknowledgement arrives at all, e.g. after a crash. The server then takes its first
    /// value as the ack wait. Must be shorter than the maximum number of deliveries.
    #[must_use]
    pub fn redelivery_backoff(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.options.redelivery_backoff = delays.into_iter().collect();
        self
    }

    /// Where events go after their last failed delivery (default: [`DeadLetterConfig::default`]).
    #[must_use]
    pub fn dead_letter(mut self, config: DeadLetterConfig) -> Self {
        self.options.dead_letter = Some(config);
        self
    }

    /// Sequenced dead letters: while an aggregate has an event in the dead letter, this
    /// subscriber's later events of that aggregate are not handled but parked behind it (in
    /// the dead letter, reason `parked`), and are handled in order when the first is redriven
    /// or discarded ([`super::DeadLetters`]); other aggregates' events flow on. The parked state
    /// lives in the KV bucket `{DLQ}_PARKED`, so a process that restarts, or a consumer group
    /// member that takes a partition over, honours it. Requires a durable consumer and a dead
    /// letter.
    ///
    /// Off by default: most handlers are independent side effects (a mail, a notification)
    /// that need no order between a failed event and the next, and parking stops an
    /// aggregate's progress until someone acts. Turn it on when a handler's effect depends on
    /// the previous events of the aggregate having been handled (a projection into another
    /// system, a workflow).
    #[must_use]
    pub fn sequenced_dead_letters(mut self) -> Self {
        self.options.sequenced_dead_letters = true;
        self
    }

    /// No dead letter: an event whose last delivery failed is only logged and terminated.
    #[must_use]
    pub fn without_dead_letter(mut self) -> Self {
        self.options.dead_letter = None;
        self
    }

    /// How long a shutdown waits for running handlers (default 30 s).
    #[must_use]
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.options.shutdown_timeout = timeout;
        self
    }

    /// How long the server keeps an ephemeral consumer whose process vanished without
    /// deleting it (default 5 min). Durable consumers are kept until deleted.
    #[must_use]
    pub fn inactive_threshold(mut self, threshold: Duration) -> Self {
        self.options.inactive_threshold = threshold;
        self
    }

    /// A description shown by `nats consumer info`.
    #[must_use]
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.options.description = Some(description.into());
        self
    }

    /// Runs this subscriber as a member of a consumer group named by its durable name: the
    /// same subscriber started in several processes shares the work, each of
    /// [`GroupOptions::partitions`](crate::jetstream::group::GroupOptions) partitions of the
    /// aggregates worked by one member at a time, in stream order, and taken over by the others
    /// when its member dies (see [`group`](crate::jetstream::group)). It reads the stream's
    /// partitioned view ([`PartitionedView`](crate::jetstream::PartitionedView)) through one
    /// consumer per held partition and lease epoch (`{durable}_p{partition}_e{epoch}`), and
    /// acknowledges each partition's events in stream order, so a take-over resumes exactly
    /// after the last acknowledged event: only unacknowledged events come again, counted as
    /// redeliveries. Handlers see the lease in [`Delivery::lease`](crate::subscriber::Delivery).
    ///
    /// Needs a durable name; a group starts from the beginning (the default), from new events,
    /// or from a time, not from a stream sequence.
    pub fn group(mut self, options: crate::jetstream::group::GroupOptions) -> Self {
        self.options.group = Some(options);
        self
    }

    /// Checks the options and builds the subscriber. Nothing is sent to the server until
    /// [`EventSubscriber::subscribe`].
    ///
    /// # Errors
    ///
    /// [`SubscriberErrorKind::MissingClient`], [`SubscriberErrorKind::MissingHandler`],
    /// [`SubscriberErrorKind::NoSubjects`], or [`SubscriberErrorKind::InvalidConfig`] naming the
    /// invalid option, or a subject that matches none of a typed handler's events (naming the
    /// nearest one).
    pub fn build(self) -> Result<EventSubscriber, SubscriberError> {
        let client = self
            .client
            .ok_or_else(|| SubscriberError::new(SubscriberErrorKind::MissingClient))?;
        let handler = self
            .handler
            .ok_or_else(|| SubscriberError::new(SubscriberErrorKind::MissingHandler))?;
        if self.subjects.is_empty() {
            return Err(SubscriberError::new(SubscriberErrorKind::NoSubjects));
        }
        let invalid = |why: String| {
            Err(SubscriberError::new(SubscriberErrorKind::InvalidConfig(
                why,
            )))
        };
        let mut subjects = Vec::with_capacity(self.subjects.len());
        for subject in self.subjects {
            if let Err(e) = validate_subject(&subject, true) {
                return invalid(format!("subject: {e}"));
            }
            if let Some(known) = handler.event_subjects() {
                // A typed handler's events: a filter that matches none of them would subscribe
                // and never receive anything.
                if !known
                    .iter()
                    .any(|routing| overlap(&subject, &format!("{routing}.*")))
                {
                    let nearest = known
                        .iter()
                        .map(|routing| format!("{routing}.*"))
                        .min_by_key(|candidate| distance(&subject, candidate))
                        .unwrap_or_default();
                    return invalid(format!(
                        "subject {subject:?} matches none of the handler's events; the nearest \
                         is {nearest:?}"
                    ));
                }
            }
            if !subjects.contains(&subject) {
                subjects.push(subject);
            }
        }
        let mut options = self.options;
        if options.durable.is_some() && !self.deliver_given {
            options.deliver = DeliverPolicy::All;
        }
        let o = &options;
        if let Some(name) = &o.durable {
            if let Err(e) = validate_token(name) {
                return invalid(format!("durable name: {e}"));
            }
            if name.contains(['/', '\\']) {
                return invalid(format!("durable name {name:?} contains a path separator"));
            }
        }
        if o.group.is_some() {
            if o.durable.is_none() {
                return invalid(
                    "a consumer group needs a durable name (the group's name)".to_owned(),
                );
            }
            if matches!(o.deliver, DeliverPolicy::FromSequence(_)) {
                return invalid(
                    "a consumer group starts from the beginning, from new events or from a time, \
                     not from a stream sequence"
                        .to_owned(),
                );
            }
        }
        if o.max_in_flight == 0 {
            return invalid("max_in_flight must be at least 1".to_owned());
        }
        if o.max_deliveries == Some(0) {
            return invalid("max_deliveries must be at least 1".to_owned());
        }
        if o.ack_wait < Duration::from_millis(100) {
            return invalid("ack_wait must be at least 100 ms".to_owned());
        }
        if o.redelivery_backoff
            .iter()
            .any(|d| *d < Duration::from_millis(100))
        {
            return invalid("redelivery_backoff values must be at least 100 ms".to_owned());
        }
        if let Some(max) = o.max_deliveries {
            if o.redelivery_backoff.len() as u64 > max {
                return invalid(format!(
                    "redelivery_backoff has {} values but max_deliveries is {max}",
                    o.redelivery_backoff.len()
                ));
            }
        }
        if let Some(dl) = &o.dead_letter {
            dl.validate()
                .map_err(|why| SubscriberError::new(SubscriberErrorKind::InvalidConfig(why)))?;
        }
        if o.sequenced_dead_letters {
            if o.dead_letter.is_none() {
                return invalid(
                    "sequenced dead letters park events behind a dead letter: they need one \
                     (drop without_dead_letter)"
                        .to_owned(),
                );
            }
            if o.durable.is_none() {
                return invalid(
                    "sequenced dead letters need a durable consumer: an ephemeral one's parked \
                     events could never be redriven"
                        .to_owned(),
                );
            }
        }
        Ok(EventSubscriber {
            client,
            subjects,
            handler,
            options: Arc::new(options),
        })
    }
}

/// Can a message match both subject filters?
fn overlap(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('.'), b.split('.'));
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(">"), _) | (_, Some(">")) => return true,
            (Some(x), Some(y)) if x == "*" || y == "*" || x == y => {}
            _ => return false,
        }
    }
}

/// The edit distance between two subjects, by characters.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substituted = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substituted.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::{distance, overlap};

    #[test]
    fn filters_overlap_token_by_token() {
        assert!(overlap("bank.account.opened.*", "bank.account.opened.*"));
        assert!(overlap("bank.>", "bank.account.opened.*"));
        assert!(overlap("bank.*.opened.a1", "bank.account.opened.*"));
        assert!(overlap(">", "bank.account.opened.*"));
        assert!(!overlap("bank.account.opend.*", "bank.account.opened.*"));
        assert!(!overlap("bank.account.opened", "bank.account.opened.*"));
        assert!(!overlap("shop.>", "bank.account.opened.*"));
    }

    #[test]
    fn the_nearest_subject_is_the_fewest_edits_away() {
        assert_eq!(
            distance("library.loan.overdeu.*", "library.loan.overdue.*"),
            2
        );
        assert_eq!(distance("a", "a"), 0);
        assert_eq!(distance("", "abc"), 3);
    }
}
