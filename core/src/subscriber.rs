//! Handling delivered events: the [`EventHandler`] trait, the [`HandlerError`] a handler
//! returns, and adapters that turn closures into handlers.
//!
//! This module does no I/O. The JetStream subscriber that delivers events to handlers is
//! `cim_nats::jetstream::subscriber` (feature `jetstream`).
//!
//! | adapter | handler | use it for |
//! |---|---|---|
//! | [`FnEventHandler`] | `Fn(StoredEvent) -> Result<(), HandlerError>` | short, synchronous work |
//! | [`AsyncFnHandler`] | `Fn(StoredEvent) -> impl Future<Output = Result<(), HandlerError>>` | I/O |
//! | [`AsyncFnHandler::with_delivery`] | the same, given the whole [`Delivery`] | retry-aware handlers |
//! | [`TypedHandler`] | `Fn(Envelope<E>) -> impl Future<...>` | a domain's own events, decoded |
//!
//! A handler's result decides what happens to the event: `Ok` acknowledges it; an error has
//! it delivered again after a delay, until the subscriber's maximum number of deliveries, after
//! which it goes to the dead letter; a [permanent](HandlerError::permanent) error sends it to the
//! dead letter at once.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::envelope::{Envelope, StoredEvent};
use crate::event::NatsEvent;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// One delivery of an event to a handler: the event, and how many times it has been delivered.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Delivery {
    /// The event.
    pub event: StoredEvent,
    /// How many times the event has been delivered to this consumer, this delivery included
    /// (1 the first time).
    pub delivery_count: u64,
    /// The most deliveries before the event goes to the dead letter (`None`: no limit).
    pub max_deliveries: Option<u64>,
    /// The stream the event was read from.
    pub stream: Arc<str>,
    /// The consumer that delivered it (for a consumer group: the group's name).
    pub consumer: Arc<str>,
    /// For a member of a consumer group: the lease of the partition the event belongs to
    /// (its epoch grows each time the partition changes hands).
    pub lease: Option<Lease>,
}

/// A partition of a consumer group held by a member: what its work is given
/// (see `cim_nats::jetstream::group`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lease {
    /// The group.
    pub group: Arc<str>,
    /// The partition.
    pub partition: u32,
    /// The group's partition count.
    pub partitions: u32,
    /// The lease's epoch: grows each time the partition changes hands (the bucket revision
    /// that took it).
    pub epoch: u64,
    /// The member holding it.
    pub member: Arc<str>,
}

impl Lease {
    /// The lease of partition `partition` of `partitions` of `group`, held by `member` at
    /// `epoch` (for work started by hand, e.g.
    /// `cim_nats::jetstream::ReadModelRunner::start_partition`, and for tests).
    pub fn new(
        group: impl Into<Arc<str>>,
        partition: u32,
        partitions: u32,
        epoch: u64,
        member: impl Into<Arc<str>>,
    ) -> Self {
        Self {
            group: group.into(),
            partition,
            partitions,
            epoch,
            member: member.into(),
        }
    }
}

impl Delivery {
    /// A first delivery of `event`, with no stream or consumer named (for testing handlers).
    pub fn new(event: StoredEvent) -> Self {
        Self {
            event,
            delivery_count: 1,
            max_deliveries: None,
            stream: Arc::from(""),
            consumer: Arc::from(""),
            lease: None,
        }
    }

    /// Sets the delivery count and the maximum.
    #[must_use]
    pub fn with_delivery_count(mut self, count: u64, max_deliveries: Option<u64>) -> Self {
        self.delivery_count = count;
        self.max_deliveries = max_deliveries;
        self
    }

    /// Sets the stream and consumer names.
    #[must_use]
    pub fn with_consumer(
        mut self,
        stream: impl Into<Arc<str>>,
        consumer: impl Into<Arc<str>>,
    ) -> Self {
        self.stream = stream.into();
        self.consumer = consumer.into();
        self
    }

    /// Has the event been delivered before (a retry)?
    pub fn is_redelivery(&self) -> bool {
        self.delivery_count > 1
    }

    /// Is this the last delivery: will an error now send the event to the dead letter?
    pub fn is_last_attempt(&self) -> bool {
        self.max_deliveries
            .is_some_and(|max| self.delivery_count >= max)
    }
}

/// Handles the events a subscriber delivers.
///
/// Implement [`EventHandler::handle`]; override [`EventHandler::handle_delivery`] instead (and
/// forward `handle` to it or leave it trivial) to see the delivery count. Delivery is at least
/// once: a handler must tolerate seeing an event again (after a crash before the acknowledgement
/// was confirmed), for example by remembering the last `stream_sequence` it applied.
///
/// ```
/// use async_trait::async_trait;
/// use cim_nats::subscriber::{EventHandler, HandlerError};
/// use cim_nats::StoredEvent;
///
/// struct Printer;
///
/// #[async_trait]
/// impl EventHandler for Printer {
///     async fn handle(&self, event: StoredEvent) -> Result<(), HandlerError> {
///         println!("{} v{}", event.event_type, event.aggregate_version);
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait EventHandler: Send + Sync {
    /// Handles one event.
    ///
    /// # Errors
    ///
    /// A [`HandlerError`]: the event is delivered again after a delay, or sent to the dead
    /// letter if the error is permanent or this was the last delivery.
    async fn handle(&self, event: StoredEvent) -> Result<(), HandlerError>;

    /// Handles one delivery; the subscriber calls this. The default calls
    /// [`EventHandler::handle`] with the event.
    ///
    /// # Errors
    ///
    /// As [`EventHandler::handle`].
    async fn handle_delivery(&self, delivery: Delivery) -> Result<(), HandlerError> {
        self.handle(delivery.event).await
    }

    /// The routing subjects (`{domain}.{entity}.{operation}`) of every event this handler
    /// reads, when it knows them (a [`TypedHandler`]: its event enum's): a subscriber refuses a
    /// subject filter that matches none of them. `None` (the default): any subject.
    fn event_subjects(&self) -> Option<&'static [&'static str]> {
        None
    }
}

#[async_trait]
impl<H: EventHandler + ?Sized> EventHandler for Arc<H> {
    async fn handle(&self, event: StoredEvent) -> Result<(), HandlerError> {
        (**self).handle(event).await
    }

    async fn handle_delivery(&self, delivery: Delivery) -> Result<(), HandlerError> {
        (**self).handle_delivery(delivery).await
    }

    fn event_subjects(&self) -> Option<&'static [&'static str]> {
        (**self).event_subjects()
    }
}

#[async_trait]
impl<H: EventHandler + ?Sized> EventHandler for Box<H> {
    async fn handle(&self, event: StoredEvent) -> Result<(), HandlerError> {
        (**self).handle(event).await
    }

    async fn handle_delivery(&self, delivery: Delivery) -> Result<(), HandlerError> {
        (**self).handle_delivery(delivery).await
    }
}

/// Why a handler could not handle an event.
///
/// Any `std::error::Error + Send + Sync + 'static` converts into it, so `?` works in handlers
/// and `Ok(())` infers in closures. It deliberately does not implement `std::error::Error`
/// itself (that is what makes the blanket conversion possible); [`HandlerError::as_error`]
/// gives the underlying error.
///
/// By default an error is *transient*: the event is delivered again after the subscriber's
/// backoff. Mark it [permanent](HandlerError::permanent) when retrying cannot help (invalid
/// data): the event then goes to the dead letter at once.
///
/// ```
/// use std::time::Duration;
/// use cim_nats::subscriber::HandlerError;
///
/// let transient = HandlerError::msg("database unavailable").retry_after(Duration::from_secs(2));
/// assert!(!transient.is_permanent());
/// let permanent = HandlerError::msg("no such customer").permanent();
/// assert!(permanent.is_permanent());
/// let from_io: HandlerError = std::io::Error::other("disk full").into();
/// assert_eq!(from_io.to_string(), "disk full");
/// ```
pub struct HandlerError {
    error: BoxError,
    permanent: bool,
    retry_after: Option<Duration>,
}

/// A plain message as an error.
struct Message<M>(M);

impl<M: fmt::Display> fmt::Display for Message<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<M: fmt::Debug> fmt::Debug for Message<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<M: fmt::Display + fmt::Debug> std::error::Error for Message<M> {}

impl HandlerError {
    /// An error with a message.
    pub fn msg<M>(message: M) -> Self
    where
        M: fmt::Display + fmt::Debug + Send + Sync + 'static,
    {
        Self::from_boxed(Box::new(Message(message)))
    }

    /// An error from a boxed error.
    pub fn from_boxed(error: BoxError) -> Self {
        Self {
            error,
            permanent: false,
            retry_after: None,
        }
    }

    /// Marks the error permanent: retrying cannot help, the event goes to the dead letter at
    /// once.
    #[must_use]
    pub fn permanent(mut self) -> Self {
        self.permanent = true;
        self
    }

    /// Asks for the next delivery after `delay` instead of the subscriber's backoff.
    #[must_use]
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    /// Is the error permanent?
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The delay asked for by [`HandlerError::retry_after`].
    pub fn retry_delay(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The underlying error.
    pub fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.error
    }

    /// The underlying error, if it is an `E`.
    pub fn downcast_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        self.error.downcast_ref::<E>()
    }

    /// Consumes the error, returning the underlying error.
    pub fn into_error(self) -> BoxError {
        self.error
    }
}

impl<E> From<E> for HandlerError
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(error: E) -> Self {
        Self::from_boxed(Box::new(error))
    }
}

/// `{}` shows the error; `{:#}` adds its chain of causes, separated by `: `.
impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.error)?;
        if f.alternate() {
            let mut source = self.error.source();
            while let Some(cause) = source {
                write!(f, ": {cause}")?;
                source = cause.source();
            }
        }
        Ok(())
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("error", &self.error)
            .field("permanent", &self.permanent)
            .field("retry_after", &self.retry_after)
            .finish()
    }
}

/// Marks the error of a `Result` as a [`HandlerError`] with a retry policy.
///
/// ```
/// use cim_nats::subscriber::{HandlerError, HandlerResultExt};
///
/// fn parse(input: &str) -> Result<u32, HandlerError> {
///     input.parse::<u32>().permanent()
/// }
/// assert!(parse("x").unwrap_err().is_permanent());
/// ```
pub trait HandlerResultExt<T> {
    /// Converts the error into a permanent [`HandlerError`].
    ///
    /// # Errors
    ///
    /// The converted error.
    fn permanent(self) -> Result<T, HandlerError>;

    /// Converts the error into a [`HandlerError`] retried after `delay`.
    ///
    /// # Errors
    ///
    /// The converted error.
    fn retry_after(self, delay: Duration) -> Result<T, HandlerError>;
}

impl<T, E: Into<HandlerError>> HandlerResultExt<T> for Result<T, E> {
    fn permanent(self) -> Result<T, HandlerError> {
        self.map_err(|e| e.into().permanent())
    }

    fn retry_after(self, delay: Duration) -> Result<T, HandlerError> {
        self.map_err(|e| e.into().retry_after(delay))
    }
}

/// A handler from a synchronous closure that takes the event by value.
///
/// The closure runs on the async runtime's thread: keep it short, or use [`AsyncFnHandler`]
/// (with `tokio::task::spawn_blocking` for blocking work).
///
/// ```
/// use cim_nats::subscriber::FnEventHandler;
/// use cim_nats::StoredEvent;
///
/// let handler = FnEventHandler::new(|event: StoredEvent| {
///     println!("Received: {} at {}", event.event_type, event.timestamp);
///     Ok(())
/// });
/// # let _ = handler;
/// ```
pub struct FnEventHandler<F> {
    f: F,
}

impl<F> FnEventHandler<F>
where
    F: Fn(StoredEvent) -> Result<(), HandlerError> + Send + Sync,
{
    /// Wraps the closure.
    pub fn new(f: F) -> Self {
        Self { f }
    }
}

#[async_trait]
impl<F> EventHandler for FnEventHandler<F>
where
    F: Fn(StoredEvent) -> Result<(), HandlerError> + Send + Sync,
{
    async fn handle(&self, event: StoredEvent) -> Result<(), HandlerError> {
        (self.f)(event)
    }
}

impl<F> fmt::Debug for FnEventHandler<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnEventHandler").finish_non_exhaustive()
    }
}

/// A handler from an async closure: `|event: StoredEvent| async move { ... }`, or with
/// [`AsyncFnHandler::with_delivery`], `|delivery: Delivery| async move { ... }`.
///
/// ```
/// use cim_nats::subscriber::{AsyncFnHandler, HandlerError};
/// use cim_nats::StoredEvent;
///
/// let handler = AsyncFnHandler::new(|event: StoredEvent| async move {
///     println!("{}", event.event_type);
///     Ok::<_, HandlerError>(())
/// });
/// # let _ = handler;
/// ```
pub struct AsyncFnHandler<F, A = StoredEvent> {
    f: F,
    _arg: PhantomData<fn(A)>,
}

impl<F, Fut> AsyncFnHandler<F, StoredEvent>
where
    F: Fn(StoredEvent) -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    /// Wraps a closure that takes the event.
    pub fn new(f: F) -> Self {
        Self {
            f,
            _arg: PhantomData,
        }
    }
}

impl<F, Fut> AsyncFnHandler<F, Delivery>
where
    F: Fn(Delivery) -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    /// Wraps a closure that takes the whole [`Delivery`] (event and delivery count).
    pub fn with_delivery(f: F) -> Self {
        Self {
            f,
            _arg: PhantomData,
        }
    }
}

#[async_trait]
impl<F, Fut> EventHandler for AsyncFnHandler<F, StoredEvent>
where
    F: Fn(StoredEvent) -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    async fn handle(&self, event: StoredEvent) -> Result<(), HandlerError> {
        (self.f)(event).await
    }
}

#[async_trait]
impl<F, Fut> EventHandler for AsyncFnHandler<F, Delivery>
where
    F: Fn(Delivery) -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    async fn handle(&self, event: StoredEvent) -> Result<(), HandlerError> {
        (self.f)(Delivery::new(event)).await
    }

    async fn handle_delivery(&self, delivery: Delivery) -> Result<(), HandlerError> {
        (self.f)(delivery).await
    }
}

impl<F, A> fmt::Debug for AsyncFnHandler<F, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncFnHandler").finish_non_exhaustive()
    }
}

/// A handler of one domain's events, decoded into its event enum `E` (upcasting old schema
/// versions) and given as an [`Envelope`] with the stored metadata.
///
/// An event `E` cannot decode (an unknown event type or version, a payload that does not fit)
/// fails with a permanent error: retrying cannot help, so it goes to the dead letter at once.
///
/// ```
/// use cim_nats::subscriber::{EventHandler, HandlerError, TypedHandler};
/// use cim_nats::{Envelope, NatsEvent};
///
/// fn printer<E: NatsEvent + std::fmt::Debug>() -> impl EventHandler {
///     TypedHandler::<E, _>::new(|envelope: Envelope<E>| async move {
///         println!("{:?} at version {}", envelope.event, envelope.version());
///         Ok::<_, HandlerError>(())
///     })
/// }
/// ```
pub struct TypedHandler<E, F> {
    f: F,
    _event: PhantomData<fn(E)>,
}

impl<E, F, Fut> TypedHandler<E, F>
where
    E: NatsEvent,
    F: Fn(Envelope<E>) -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    /// Wraps a closure that takes the decoded envelope.
    pub fn new(f: F) -> Self {
        Self {
            f,
            _event: PhantomData,
        }
    }
}

#[async_trait]
impl<E, F, Fut> EventHandler for TypedHandler<E, F>
where
    E: NatsEvent,
    F: Fn(Envelope<E>) -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    async fn handle(&self, event: StoredEvent) -> Result<(), HandlerError> {
        let envelope = event
            .into_envelope::<E>()
            .map_err(|e| HandlerError::from(e).permanent())?;
        (self.f)(envelope).await
    }

    fn event_subjects(&self) -> Option<&'static [&'static str]> {
        Some(E::SUBJECTS)
    }
}

impl<E, F> fmt::Debug for TypedHandler<E, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedHandler")
            .field("event", &std::any::type_name::<E>())
            .finish_non_exhaustive()
    }
}
