//! [`ProjectionRunner`]: a projection kept up to date from a JetStream stream, with its state
//! and checkpoint in one KV entry.
//!
//! The runner reads through an ordered reader (see `reader.rs`): no gap, and a stored message
//! the NATS client cannot parse is an unreadable event at its sequence, handled by
//! [`OnUnreadable`], instead of a broken connection the runner would never get past.

mod checkpoint;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::sync::{watch, RwLock, RwLockReadGuard};
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::envelope::StreamSequence;
use crate::event::NatsEvent;
use crate::jetstream::kv::{kv_key, open_bucket};
use crate::jetstream::order::VersionOrder;
use crate::jetstream::read::decode_in_order;
use crate::jetstream::reader::{OrderedReader, Progress, ReadSpec, Start};
use crate::jetstream::store::JetStreamEventStore;
use crate::projection::{OnUnreadable, Projection, ProjectionError};
use crate::store::is_check_marker;
use crate::store::{StoreError, StoreErrorKind};
use crate::typed::decode_envelope;

/// How a runner checkpoints and what it does with unreadable events.
#[derive(Debug, Clone)]
pub struct ProjectionOptions {
    /// The KV bucket of checkpoints (created if missing).
    pub bucket: String,
    /// Write the checkpoint after this many events...
    pub checkpoint_every: u64,
    /// ... or after this long with unwritten progress, whichever comes first.
    pub checkpoint_interval: Duration,
    /// Skip-and-record or stop on an event that cannot be read or decoded.
    pub on_unreadable: OnUnreadable,
}

impl Default for ProjectionOptions {
    fn default() -> Self {
        Self {
            bucket: "PROJECTIONS".to_owned(),
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_millis(200),
            on_unreadable: OnUnreadable::Stop,
        }
    }
}

/// An event a runner skipped under [`OnUnreadable::SkipAndRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// Its stream sequence.
    pub sequence: u64,
    /// Why it could not be applied.
    pub reason: String,
}

/// The most skipped events kept with a checkpoint.
const MAX_SKIPPED: usize = 1000;
/// How long a checkpoint write is retried when the server does not take it (a restart, or the
/// KV stream's leader election in a cluster) before the runner stops.
const CHECKPOINT_RETRY_FOR: Duration = Duration::from_secs(30);
/// How long one checkpoint write waits for its answer.
const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest pause between two attempts at a checkpoint write.
const CHECKPOINT_MAX_PAUSE: Duration = Duration::from_secs(2);

#[derive(Serialize)]
struct CheckpointOut<'a, P> {
    name: &'a str,
    version: u32,
    sequence: u64,
    skipped: &'a [Skipped],
    state: &'a P,
}

#[derive(Deserialize)]
struct CheckpointIn<P> {
    version: u32,
    sequence: u64,
    #[serde(default)]
    skipped: Vec<Skipped>,
    state: P,
}

struct Shared<P> {
    state: RwLock<P>,
    skipped: std::sync::Mutex<Vec<Skipped>>,
    /// Why the runner stopped, once it has.
    stopped: std::sync::Mutex<Option<Arc<ProjectionError>>>,
}

/// A running projection: query its state, wait for it to reach a sequence, stop it.
pub struct ProjectionHandle<P> {
    shared: Arc<Shared<P>>,
    applied: watch::Receiver<u64>,
    progress: watch::Receiver<Progress>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl<P> fmt::Debug for ProjectionHandle<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProjectionHandle")
            .field("applied", &*self.applied.borrow())
            .finish_non_exhaustive()
    }
}

/// Starts projections on a [`JetStreamEventStore`].
///
/// The whole state lives in one process and is checkpointed as one KV value with the
/// checkpoint, so it must fit in one message: the server's `max_payload`, 1 MiB by default. The
/// infrastructure topology, for one, is ~348 bytes of JSON per machine: ~3,000 machines fit
/// (measured). Use it for small models read in the process that keeps them; for models that
/// grow with the domain, or are read by other processes or languages, use a read model kept per
/// key ([`crate::jetstream::ReadModelRunner`]), whose commits cost what changed.
#[derive(Debug, Clone, Copy)]
pub struct ProjectionRunner;

impl ProjectionRunner {
    /// Starts projection `P`: resumes from its checkpoint (state and last applied sequence,
    /// read from KV) or, if there is none or it is of another [`Projection::VERSION`], starts
    /// from a fresh `P` at the beginning of the stream; replays what it missed, then follows new
    /// events as they are stored, with no gap and nothing applied twice (one ordered consumer
    /// does both, from the sequence after the checkpoint).
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Store`] if the checkpoint bucket or the consumer cannot be set up.
    pub async fn start<P>(
        store: &JetStreamEventStore,
        options: ProjectionOptions,
    ) -> Result<ProjectionHandle<P>, ProjectionError>
    where
        P: Projection + Default + Serialize + DeserializeOwned,
    {
        let name = P::NAME.to_owned();
        let setup = |e: crate::jetstream::setup::SetupError| ProjectionError::Store {
            projection: name.clone(),
            source: StoreError::with_source(
                StoreErrorKind::Bucket {
                    bucket: options.bucket.clone(),
                },
                e,
            ),
        };
        let context = store.context().clone();
        let bucket = open_bucket(
            &context,
            &options.bucket,
            "projection checkpoints (cim-nats)",
            store.config().replicas,
        )
        .await
        .map_err(setup)?;
        let key = kv_key("projection", P::NAME);
        let entry = bucket
            .entry(key.clone())
            .await
            .map_err(|e| store_error(&name, e))?;
        let revision = entry.as_ref().map_or(0, |e| e.revision);
        let resumed = entry.as_ref().and_then(|e| {
            match serde_json::from_slice::<CheckpointIn<P>>(&e.value) {
                Ok(c) if c.version == P::VERSION => Some(c),
                Ok(c) => {
                    tracing::info!(
                        projection = P::NAME,
                        stored = c.version,
                        current = P::VERSION,
                        "projection version changed: rebuilding from the start"
                    );
                    None
                }
                Err(err) => {
                    tracing::warn!(projection = P::NAME, error = %err,
                        "checkpoint unreadable: rebuilding from the start");
                    None
                }
            }
        });
        let rebuild = entry.is_some() && resumed.is_none();
        let (state, start, skipped) = match resumed {
            Some(c) => (c.state, c.sequence, c.skipped),
            None => {
                let mut fresh = P::default();
                fresh.reset().await?;
                (fresh, 0, Vec::new())
            }
        };
        let shared = Arc::new(Shared {
            state: RwLock::new(state),
            skipped: std::sync::Mutex::new(skipped),
            stopped: std::sync::Mutex::new(None),
        });
        // The stream must exist: a runner on a missing stream fails here, not later.
        context
            .get_stream_no_info(store.stream_name())
            .await
            .map_err(|e| store_error(&name, e))?;
        let reader = OrderedReader::start(
            store.client().clone(),
            ReadSpec {
                stream: store.stream_name().to_owned(),
                filter: Some(<P::Event as NatsEvent>::DOMAIN_WILDCARD.to_owned()),
                start: Start::Sequence(start + 1),
                follow: true,
                timeout: store.request_timeout(),
            },
        );
        let progress = reader.progress();
        let max_value = store.client().server_info().max_payload;
        let (applied_tx, applied) = watch::channel(start);
        let (stop, stop_rx) = watch::channel(false);
        let run = Run {
            shared: Arc::clone(&shared),
            subject: format!("$KV.{}.{key}", options.bucket),
            client: crate::jetstream::api::Conn::new(store.client().clone()),
            bucket,
            key,
            revision,
            options,
            applied: applied_tx,
            name,
            max_value,
        };
        let task = tokio::spawn(async move {
            let mut run = run;
            if let Err(e) = run.run(reader, stop_rx, start, rebuild).await {
                tracing::error!(projection = P::NAME, error = %e, "projection runner stopped");
                if let Ok(mut stopped) = run.shared.stopped.lock() {
                    *stopped = Some(Arc::new(e));
                }
            }
            // Dropped only now, so that a waiter woken by its end finds the cause recorded.
            drop(run);
        });
        Ok(ProjectionHandle {
            shared,
            applied,
            progress,
            stop,
            task,
        })
    }
}

fn store_error(name: &str, e: impl std::error::Error + Send + Sync + 'static) -> ProjectionError {
    ProjectionError::Store {
        projection: name.to_owned(),
        source: StoreError::with_source(StoreErrorKind::Connection, e),
    }
}

struct Run<P> {
    shared: Arc<Shared<P>>,
    bucket: kv::Store,
    client: crate::jetstream::api::Conn,
    /// The checkpoint key's subject, `$KV.<bucket>.<key>`.
    subject: String,
    key: String,
    revision: u64,
    options: ProjectionOptions,
    applied: watch::Sender<u64>,
    name: String,
    /// The largest message the server takes.
    max_value: usize,
}

impl<P> Run<P>
where
    P: Projection + Serialize,
{
    async fn run(
        &mut self,
        mut reader: OrderedReader,
        mut stop: watch::Receiver<bool>,
        start: u64,
        rebuild: bool,
    ) -> Result<(), ProjectionError> {
        if rebuild {
            // Record the rebuild at once: the old checkpoint is of another version, and a crash
            // during the rebuild must start it over, not resume the old state.
            self.checkpoint(0).await?;
        }
        let mut last = start;
        let mut written = start;
        let mut order = VersionOrder::default();
        let mut tick = tokio::time::interval(self.options.checkpoint_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => {
                    if last > written {
                        self.checkpoint(last).await?;
                    }
                    return Ok(());
                }
                _ = tick.tick() => {
                    if last > written {
                        self.checkpoint(last).await?;
                        written = last;
                    }
                }
                chunk = reader.next() => {
                    let Some(chunk) = chunk else {
                        return Err(ProjectionError::Aborted(self.name.clone()));
                    };
                    let chunk = chunk.map_err(|e| ProjectionError::Store {
                        projection: self.name.clone(),
                        source: e,
                    })?;
                    for raw in chunk {
                        let sequence = raw.sequence;
                        if sequence <= last {
                            continue;
                        }
                        let span = crate::jetstream::codec::trace_span(&self.name, &raw);
                        // A check marker of an append to several aggregates is not an event.
                        let decoded = (!is_check_marker(&raw.subject)).then(|| {
                            decode_in_order(raw, &mut order).and_then(decode_envelope::<P::Event>)
                        });
                        match decoded {
                            None => {}
                            Some(Ok(envelope)) => {
                                let mut state = self.shared.state.write().await;
                                let applied = state.apply(&envelope);
                                match span {
                                    Some(span) => applied.instrument(span).await?,
                                    None => applied.await?,
                                }
                            }
                            Some(Err(e)) => match (self.options.on_unreadable, e.kind()) {
                                (OnUnreadable::SkipAndRecord, StoreErrorKind::Decode { .. }) => {
                                    // The whole error, with its cause.
                                    let reason = e.to_string();
                                    tracing::warn!(projection = %self.name, sequence, %reason,
                                        "skipping an unreadable event");
                                    if let Ok(mut skipped) = self.shared.skipped.lock() {
                                        if skipped.len() < MAX_SKIPPED {
                                            skipped.push(Skipped { sequence, reason });
                                        }
                                    }
                                }
                                _ => {
                                    if last > written {
                                        self.checkpoint(last).await?;
                                    }
                                    return Err(ProjectionError::Unreadable {
                                        projection: self.name.clone(),
                                        source: e,
                                    });
                                }
                            },
                        }
                        last = sequence;
                        let _ = self.applied.send(last);
                        if last - written >= self.options.checkpoint_every {
                            self.checkpoint(last).await?;
                            written = last;
                        }
                    }
                }
            }
        }
    }
}

impl<P> ProjectionHandle<P> {
    /// Read access to the projection's current state.
    pub async fn read(&self) -> RwLockReadGuard<'_, P> {
        self.shared.state.read().await
    }

    /// The stream sequence of the last event applied.
    pub fn applied(&self) -> StreamSequence {
        StreamSequence(*self.applied.borrow())
    }

    /// How many events of the projection's domain are stored after the last one the runner
    /// has read, as the server last said (0 when it is caught up).
    pub fn pending(&self) -> u64 {
        self.progress.borrow().pending
    }

    /// Why the runner stopped, if it stopped with an error (the same error
    /// [`ProjectionHandle::shutdown`] returns).
    pub fn error(&self) -> Option<Arc<ProjectionError>> {
        self.shared.stopped.lock().ok().and_then(|s| s.clone())
    }

    /// The events skipped under [`OnUnreadable::SkipAndRecord`].
    pub fn skipped(&self) -> Vec<Skipped> {
        self.shared
            .skipped
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Waits until the projection has applied the event at `sequence` (e.g. the sequence an
    /// append returned), so a caller can read its own writes.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Timeout`] after `timeout`; [`ProjectionError::Stopped`] with the cause
    /// if the runner stopped with an error; [`ProjectionError::Aborted`] if it ended otherwise.
    pub async fn wait_for(
        &self,
        sequence: StreamSequence,
        timeout: Duration,
    ) -> Result<(), ProjectionError>
    where
        P: Projection,
    {
        let mut rx = self.applied.clone();
        let reached = tokio::time::timeout(timeout, async move {
            rx.wait_for(|s| *s >= sequence.0).await.map(|_| ())
        })
        .await;
        match reached {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(self.ended()),
            Err(_) => Err(ProjectionError::Timeout {
                projection: P::NAME.to_owned(),
                wanted: sequence.0,
                reached: *self.applied.borrow(),
            }),
        }
    }

    /// The error of a runner that ended: its cause, or [`ProjectionError::Aborted`].
    fn ended(&self) -> ProjectionError
    where
        P: Projection,
    {
        ProjectionError::ended(P::NAME, self.error())
    }

    /// Stops the runner after the event in hand, writes a last checkpoint, and returns how it
    /// ended.
    ///
    /// # Errors
    ///
    /// The error the runner stopped with, if any (wrapped in [`ProjectionError::Stopped`] if a
    /// [`ProjectionHandle::wait_for`] error or [`ProjectionHandle::error`] still holds it).
    pub async fn shutdown(self) -> Result<(), ProjectionError>
    where
        P: Projection,
    {
        let _ = self.stop.send(true);
        if self.task.await.is_err() {
            return Err(ProjectionError::Aborted(P::NAME.to_owned()));
        }
        let cause = self.shared.stopped.lock().ok().and_then(|mut s| s.take());
        ProjectionError::shutdown(P::NAME, cause)
    }

    /// Kills the runner at once, without a last checkpoint, as a crash would, and returns once
    /// its task is gone.
    pub async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Has the runner ended (stopped with an error, or aborted)?
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}
