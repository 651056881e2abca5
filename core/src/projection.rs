//! Read models: the [`Projection`] trait, and applying events to one.

use async_trait::async_trait;
use futures::StreamExt;

use crate::envelope::{Envelope, StreamSequence};
use crate::event::NatsEvent;
use crate::store::{EventStore, ReadFrom};
use crate::store::{StoreError, StoreErrorKind};
use crate::typed::EventStoreExt;

/// Why a projection could not apply an event, or a runner stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// The projection refused an event.
    #[error("projection {projection:?} failed at sequence {sequence}: {reason}")]
    Apply {
        /// The projection's name.
        projection: String,
        /// The event's stream sequence.
        sequence: u64,
        /// Why.
        reason: String,
    },
    /// A stored event could not be read or decoded, and the policy is to stop.
    #[error("projection {projection:?} stopped at an unreadable event: {source}")]
    Unreadable {
        /// The projection's name.
        projection: String,
        /// The store's error, naming the sequence.
        #[source]
        source: StoreError,
    },
    /// Reading events or writing the checkpoint failed.
    #[error("projection {projection:?}: {source}")]
    Store {
        /// The projection's name.
        projection: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// Another process runs the same projection (its checkpoint moved under this one).
    #[error("projection {0:?} is run by another process: its checkpoint changed underneath")]
    Contended(String),
    /// A newer version of the read model is live: this version's runner does not (or no
    /// longer) work it.
    #[error("read model {projection:?} version {version} is replaced: version {live} is live")]
    Superseded {
        /// The read model's name.
        projection: String,
        /// This runner's version.
        version: u32,
        /// The live version.
        live: u32,
    },
    /// The projection did not reach the sequence in time.
    #[error("projection {projection:?} did not reach sequence {wanted} in time (at {reached})")]
    Timeout {
        /// The projection's name.
        projection: String,
        /// The sequence waited for.
        wanted: u64,
        /// The sequence it had reached.
        reached: u64,
    },
    /// No runner of the read model is running to serve a request made of it (nothing answers
    /// on the subject its runners serve).
    #[error(
        "no runner of read model {projection} is running (nothing answers on {subject}): start \
         the service that runs it"
    )]
    NotRunning {
        /// The read model's name.
        projection: String,
        /// The subject nothing answers on.
        subject: String,
    },
    /// The runner task ended abnormally (it panicked, or was aborted).
    #[error("projection {0:?} runner ended abnormally")]
    Aborted(String),
    /// The consumer group of a partitioned read model could not be joined (another partition
    /// count, the group bucket refused).
    #[cfg(feature = "jetstream")]
    #[error("projection {projection:?}: {source}")]
    Group {
        /// The projection's name.
        projection: String,
        /// The group's error.
        #[source]
        source: crate::jetstream::group::GroupError,
    },
    /// The runner stopped with an error (its cause) while the caller waited for it.
    #[error("projection {projection:?} stopped: {cause}")]
    Stopped {
        /// The projection's name.
        projection: String,
        /// Why it stopped (the runner's shutdown returns the same error).
        #[source]
        cause: std::sync::Arc<ProjectionError>,
    },
}

#[cfg(feature = "jetstream")]
impl ProjectionError {
    /// How a runner that ended is reported to a waiter: its cause (as
    /// [`ProjectionError::Stopped`]), or [`ProjectionError::Aborted`] when it has none.
    pub(crate) fn ended(projection: &str, cause: Option<std::sync::Arc<Self>>) -> Self {
        match cause {
            Some(cause) => Self::Stopped {
                projection: projection.to_owned(),
                cause,
            },
            None => Self::Aborted(projection.to_owned()),
        }
    }

    /// A runner's shutdown: `Ok`, or the error it stopped with (itself when nothing else holds
    /// it, else wrapped in [`ProjectionError::Stopped`]).
    pub(crate) fn shutdown(
        projection: &str,
        cause: Option<std::sync::Arc<Self>>,
    ) -> Result<(), Self> {
        match cause {
            None => Ok(()),
            Some(cause) => Err(std::sync::Arc::try_unwrap(cause)
                .unwrap_or_else(|cause| Self::ended(projection, Some(cause)))),
        }
    }
}

/// What a runner does with a stored event it cannot read or decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnUnreadable {
    /// Stop the projection with [`ProjectionError::Unreadable`] (the default: nothing is
    /// skipped silently).
    #[default]
    Stop,
    /// Skip the event, and record its sequence and the reason (logged, and kept with the
    /// checkpoint).
    SkipAndRecord,
}

/// A read model built from a domain's events.
///
/// `apply` is called once per event, in stream order. A runner keeps the projection's state and
/// its checkpoint (the last applied stream sequence) in one write, so after a crash it resumes
/// exactly where its state is: each event's effect is applied once. Bump
/// [`Projection::VERSION`] when `apply` changes meaning: the runner then rebuilds from the start.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// The domain events it reads.
    type Event: NatsEvent;
    /// Its name: the key of its checkpoint (unique per read model).
    const NAME: &'static str;
    /// Its version; a change triggers a rebuild from the start.
    const VERSION: u32 = 1;

    /// Applies one event.
    ///
    /// # Errors
    ///
    /// A reason to stop the projection (the event is not considered applied).
    async fn apply(&mut self, event: &Envelope<Self::Event>) -> Result<(), ProjectionError>;

    /// Clears the read model before a rebuild. The default does nothing: runners that keep the
    /// state themselves replace it with a fresh one.
    async fn reset(&mut self) -> Result<(), ProjectionError> {
        Ok(())
    }
}

/// Applies every event of `store` from `from` on to `projection`, streaming (bounded memory),
/// and returns the last sequence applied.
///
/// # Errors
///
/// [`ProjectionError::Unreadable`] (policy `Stop`), or the projection's or the store's error.
pub async fn replay<P: Projection>(
    store: &dyn EventStore,
    projection: &mut P,
    from: ReadFrom,
    on_unreadable: OnUnreadable,
) -> Result<StreamSequence, ProjectionError> {
    let mut last = StreamSequence(0);
    let mut events = store.stream_events::<P::Event>(from);
    while let Some(item) = events.next().await {
        match item {
            Ok(envelope) => {
                projection.apply(&envelope).await?;
                last = envelope.sequence();
            }
            Err(e) => match (on_unreadable, e.kind()) {
                (OnUnreadable::SkipAndRecord, StoreErrorKind::Decode { sequence, .. }) => {
                    tracing::warn!(projection = P::NAME, sequence, error = %e, "skipping an unreadable event");
                    last = StreamSequence(*sequence);
                }
                _ => {
                    return Err(ProjectionError::Unreadable {
                        projection: P::NAME.to_owned(),
                        source: e,
                    })
                }
            },
        }
    }
    Ok(last)
}
