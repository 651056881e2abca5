//! [`SubscriptionHandle`]: await a running subscription, or shut it down.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;

use async_nats::jetstream;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::jetstream::subscriber::setup::delete_consumer;
use crate::jetstream::subscriber::{SubscriberError, SubscriberErrorKind};

/// One consumer behind a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscribedConsumer {
    /// The stream it reads.
    pub stream: String,
    /// The consumer's name (server-assigned for an ephemeral consumer).
    pub name: String,
    /// Is it durable (kept when the subscription ends)?
    pub durable: bool,
    /// The subjects it filters on.
    pub subjects: Vec<String>,
    /// Where its dead letters go, if anywhere.
    pub dead_letter_subject: Option<String>,
}

/// Stops a subscription from anywhere, e.g. from a signal handler while another task awaits
/// the [`SubscriptionHandle`].
#[derive(Debug, Clone)]
pub struct ShutdownTrigger {
    stop: Arc<watch::Sender<bool>>,
}

impl ShutdownTrigger {
    /// Starts a graceful shutdown: the subscription stops pulling, finishes and acknowledges
    /// running handlers, and its handle's future then completes.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }

    /// Has a shutdown been asked for? A long-running handler can check it to cut its work
    /// short.
    pub fn is_shutting_down(&self) -> bool {
        *self.stop.borrow()
    }
}

/// The future of a [`SubscriptionHandle`]: completes when the subscription ends.
pub type SubscriptionFuture = Pin<Box<dyn Future<Output = Result<(), SubscriberError>> + Send>>;

/// A running subscription.
///
/// Await it (`handle.await?`) to run until it ends: after [`ShutdownTrigger::shutdown`], or
/// with an error if its consumer is deleted. [`SubscriptionHandle::shutdown`] stops it
/// gracefully. Dropping the handle (or the future awaiting it) also starts a graceful shutdown,
/// which goes on in the background; ephemeral consumers are deleted at the end of every
/// shutdown.
pub struct SubscriptionHandle {
    stop: Arc<watch::Sender<bool>>,
    task: Option<JoinHandle<Result<(), SubscriberError>>>,
    consumers: Arc<[SubscribedConsumer]>,
    groups: Vec<crate::jetstream::group::GroupObserver>,
}

impl fmt::Debug for SubscriptionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionHandle")
            .field("consumers", &self.consumers)
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl SubscriptionHandle {
    /// The consumers behind the subscription, one per stream.
    pub fn consumers(&self) -> &[SubscribedConsumer] {
        &self.consumers
    }

    /// For a member of a consumer group ([`EventSubscriberBuilder::group`]): what it holds and
    /// sees of its group, one per stream.
    ///
    /// [`EventSubscriberBuilder::group`]: crate::jetstream::subscriber::EventSubscriberBuilder::group
    pub fn group_members(&self) -> &[crate::jetstream::group::GroupObserver] {
        &self.groups
    }

    /// A trigger that stops the subscription from elsewhere.
    pub fn shutdown_trigger(&self) -> ShutdownTrigger {
        ShutdownTrigger {
            stop: Arc::clone(&self.stop),
        }
    }

    /// Has the subscription ended (shut down, or failed)?
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Shuts the subscription down gracefully: stops pulling, gives back events not yet
    /// started, lets running handlers finish (up to the shutdown timeout) and acknowledges
    /// them, deletes ephemeral consumers, then returns.
    ///
    /// # Errors
    ///
    /// [`SubscriberErrorKind::ShutdownTimedOut`] if handlers were still running at the timeout
    /// (they were stopped; their events will be delivered again), or the error the
    /// subscription had already failed with.
    pub async fn shutdown(mut self) -> Result<(), SubscriberError> {
        self.stop.send_replace(true);
        self.wait().await
    }

    async fn wait(&mut self) -> Result<(), SubscriberError> {
        match self.task.as_mut() {
            Some(task) => {
                let result = task.await;
                self.task = None;
                result
                    .map_err(|e| SubscriberError::with_source(SubscriberErrorKind::TaskFailed, e))?
            }
            None => Ok(()),
        }
    }
}

impl IntoFuture for SubscriptionHandle {
    type Output = Result<(), SubscriberError>;
    type IntoFuture = SubscriptionFuture;

    /// Runs until the subscription ends.
    fn into_future(mut self) -> Self::IntoFuture {
        Box::pin(async move { self.wait().await })
    }
}

impl Drop for SubscriptionHandle {
    fn drop(&mut self) {
        if self.task.is_some() {
            self.stop.send_replace(true);
        }
    }
}

/// One consumer ready to run.
pub(crate) type ConsumerRun =
    Pin<Box<dyn Future<Output = Result<(), SubscriberError>> + Send + 'static>>;

/// Starts the consumers and returns the handle that owns them.
pub(crate) fn start(
    js: jetstream::Context,
    runs: Vec<ConsumerRun>,
    consumers: Vec<SubscribedConsumer>,
    groups: Vec<crate::jetstream::group::GroupObserver>,
    stop: watch::Sender<bool>,
) -> SubscriptionHandle {
    let stop = Arc::new(stop);
    let consumers: Arc<[SubscribedConsumer]> = consumers.into();
    let task = tokio::spawn(supervise(
        js,
        runs,
        Arc::clone(&consumers),
        Arc::clone(&stop),
    ));
    SubscriptionHandle {
        stop,
        task: Some(task),
        consumers,
        groups,
    }
}

/// Runs every consumer; the first failure stops the others. Deletes ephemeral consumers at the
/// end.
async fn supervise(
    js: jetstream::Context,
    runs: Vec<ConsumerRun>,
    consumers: Arc<[SubscribedConsumer]>,
    stop: Arc<watch::Sender<bool>>,
) -> Result<(), SubscriberError> {
    let mut set = JoinSet::new();
    for run in runs {
        set.spawn(run);
    }
    let mut first: Option<SubscriberError> = None;
    while let Some(joined) = set.join_next().await {
        let result = joined
            .map_err(|e| SubscriberError::with_source(SubscriberErrorKind::TaskFailed, e))
            .and_then(|r| r);
        if let Err(e) = result {
            tracing::error!(error = %e, "subscription stopping");
            stop.send_replace(true);
            first.get_or_insert(e);
        }
    }
    cleanup(&js, &consumers).await;
    first.map_or(Ok(()), Err)
}

/// Deletes the ephemeral consumers.
pub(crate) async fn cleanup(js: &jetstream::Context, consumers: &[SubscribedConsumer]) {
    for c in consumers.iter().filter(|c| !c.durable) {
        delete_consumer(js, &c.stream, &c.name).await;
    }
}
