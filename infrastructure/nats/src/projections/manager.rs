//! [`ProjectionManager`]: holds the topology read model, rebuilt on request or kept live as a
//! read model in JetStream KV.

use std::time::Duration;

use cim_domain_infrastructure::InfrastructureEvent;
use cim_nats::jetstream::{
    JetStreamEventStore, ProjectionOptions, ReadModelHandle, ReadModelOptions, ReadModelRunner,
};
use cim_nats::{
    decode_envelope, replay, EventStore, OnUnreadable, Projection, ProjectionError, ReadFrom,
    StoredEvent, StreamSequence,
};
use tokio::sync::{watch, RwLock};

use super::kv_topology::{LiveTopology, TopologyModel};
use super::topology::{Topology, TopologyProjection};

/// Holds the [`Topology`] read model and answers queries on it.
///
/// It works in one of two modes, chosen when it is made:
///
/// - **On request** ([`ProjectionManager::new`]): the topology is whatever the last
///   [`rebuild`](Self::rebuild) (from a list of stored events, as the seed does) or
///   [`rebuild_from`](Self::rebuild_from) (streaming the whole store, in bounded memory) built.
///   The state lives in this value (a `tokio::sync::RwLock`), and nothing changes between two
///   rebuilds.
/// - **Live** ([`ProjectionManager::start`]): a
///   [`ProjectionRunner`](cim_nats::jetstream::ProjectionRunner) applies every event of the
///   JetStream store as it is stored, resuming from its checkpoint (state and last sequence kept
///   together in JetStream KV, so a restart neither loses nor repeats an event).
///   [`get_topology`](Self::get_topology) reads the runner's state; use
///   [`wait_for`](Self::wait_for) with the sequence an append returned to read your own writes.
///   The runner owns the state, so `rebuild` is refused in this mode; bump
///   [`TopologyProjection`]'s version to rebuild from the start.
///
/// The seed's program:
///
/// ```no_run
/// use cim_infrastructure_nats::{
///     event_store::{JetStreamEventStore, EventStoreConfig, EventStore},
///     projections::ProjectionManager,
/// };
/// use std::sync::Arc;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = async_nats::connect("nats://localhost:4222").await?;
/// let event_store = Arc::new(
///     JetStreamEventStore::new(client.clone(), EventStoreConfig::default()).await?
/// );
///
/// let projection_manager = ProjectionManager::new();
/// let events = event_store.read_all().await?;
/// projection_manager.rebuild(events).await?;
///
/// let topology = projection_manager.get_topology().await;
/// println!("Active compute resources: {}", topology.active_compute_resources().len());
/// # Ok(()) }
/// ```
///
/// Live:
///
/// ```no_run
/// use std::time::Duration;
///
/// use cim_infrastructure_nats::event_store::{EventStoreConfig, JetStreamEventStore};
/// use cim_infrastructure_nats::projections::{ProjectionManager, ProjectionOptions};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = async_nats::connect("nats://localhost:4222").await?;
/// let store = JetStreamEventStore::new(client, EventStoreConfig::default()).await?;
/// let manager = ProjectionManager::start(&store, ProjectionOptions::default()).await?;
/// // ... append events; `sequence` is the last sequence an append returned ...
/// # let sequence = cim_nats::StreamSequence(1);
/// manager.wait_for(sequence, Duration::from_secs(5)).await?;
/// println!("{}", manager.get_topology().await.to_dot());
/// manager.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ProjectionManager {
    mode: Mode,
}

#[derive(Debug)]
enum Mode {
    /// Rebuilt on request; `applied` carries the last sequence of the current state.
    OnRequest {
        state: RwLock<TopologyProjection>,
        applied: watch::Sender<u64>,
    },
    /// Kept live: the KV read model, and the copy in memory fed by a read of its bucket.
    Live {
        handle: Box<ReadModelHandle<TopologyModel>>,
        live: Box<LiveTopology>,
    },
}

impl Default for ProjectionManager {
    fn default() -> Self {
        Self::new()
    }
}

impl ProjectionManager {
    /// A manager with an empty topology, rebuilt on request.
    pub fn new() -> Self {
        Self {
            mode: Mode::OnRequest {
                state: RwLock::new(TopologyProjection::default()),
                applied: watch::Sender::new(0),
            },
        }
    }

    /// A live manager: starts a [`ReadModelRunner`] for [`TopologyModel`] on `store` (a row per
    /// machine, network, connection, software and policy in JetStream KV, readable by any NATS
    /// client), which catches up from its checkpoint and then follows new events, and serves a
    /// copy of the topology in memory, kept from a watch of the model's bucket.
    ///
    /// `options` sets how often the model commits (`checkpoint_every`, `checkpoint_interval`)
    /// and what it does with an unreadable event; the model's buckets are named by
    /// [`ReadModelOptions`]' defaults (`RM_topology_V1`, pointer key `topology` in
    /// `READ_MODELS`), not by `options.bucket`.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Store`] if a bucket or the consumer cannot be set up.
    pub async fn start(
        store: &JetStreamEventStore,
        options: ProjectionOptions,
    ) -> Result<Self, ProjectionError> {
        let handle = ReadModelRunner::start(
            store,
            TopologyModel,
            ReadModelOptions {
                commit_every: options.checkpoint_every,
                commit_interval: options.checkpoint_interval,
                on_unreadable: options.on_unreadable,
                ..ReadModelOptions::default()
            },
        )
        .await?;
        let live = LiveTopology::start(
            store.client().clone(),
            &ReadModelOptions::default().pointer_bucket,
        )
        .await?;
        Ok(Self {
            mode: Mode::Live {
                handle: Box::new(handle),
                live: Box::new(live),
            },
        })
    }

    /// Is the topology kept live by a runner ([`ProjectionManager::start`])?
    pub fn is_live(&self) -> bool {
        matches!(self.mode, Mode::Live { .. })
    }

    /// Replaces the topology with the one built from `events`, decoded and applied in the
    /// given order (the order of the stream, as [`EventStore::read_all`] returns it).
    ///
    /// All or nothing: on error the previous topology stays.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Unreadable`] for a stored event that is not an
    /// [`InfrastructureEvent`] this version can decode; its source is a
    /// [`StoreErrorKind::Decode`](cim_nats::StoreErrorKind::Decode) naming the event's stream
    /// sequence. Nothing is skipped silently.
    ///
    /// [`ProjectionError::Apply`] if the manager is live: the runner owns the state.
    pub async fn rebuild(&self, events: Vec<StoredEvent>) -> Result<(), ProjectionError> {
        let Mode::OnRequest { state, applied } = &self.mode else {
            return Err(refused(events.first().map_or(0, |e| e.stream_sequence.0)));
        };
        let mut fresh = TopologyProjection::default();
        for event in events {
            let envelope = decode_envelope::<InfrastructureEvent>(event).map_err(|source| {
                ProjectionError::Unreadable {
                    projection: TopologyProjection::NAME.to_owned(),
                    source,
                }
            })?;
            fresh.apply(&envelope).await?;
        }
        let last = fresh.last_sequence();
        *state.write().await = fresh;
        applied.send_replace(last.0);
        Ok(())
    }

    /// Replaces the topology with the one built from every event of `store`, read as a stream
    /// (bounded memory), and returns the last sequence applied.
    ///
    /// All or nothing: on error the previous topology stays.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Unreadable`] naming the sequence of an event that cannot be read or
    /// decoded; [`ProjectionError::Apply`] if the manager is live.
    pub async fn rebuild_from(
        &self,
        store: &dyn EventStore,
    ) -> Result<StreamSequence, ProjectionError> {
        let Mode::OnRequest { state, applied } = &self.mode else {
            return Err(refused(0));
        };
        let mut fresh = TopologyProjection::default();
        replay(store, &mut fresh, ReadFrom::Start, OnUnreadable::Stop).await?;
        let last = fresh.last_sequence();
        *state.write().await = fresh;
        applied.send_replace(last.0);
        Ok(last)
    }

    /// A copy of the current topology.
    pub async fn get_topology(&self) -> Topology {
        match &self.mode {
            Mode::OnRequest { state, .. } => state.read().await.topology().clone(),
            Mode::Live { live, .. } => live.state.read().await.clone(),
        }
    }

    /// Reads the current topology in place: `read` gets it without a copy (a topology of a
    /// million resources costs a good fraction of a second to clone). Writers wait meanwhile,
    /// so keep `read` short.
    pub async fn read_topology<R>(&self, read: impl FnOnce(&Topology) -> R) -> R {
        match &self.mode {
            Mode::OnRequest { state, .. } => read(state.read().await.topology()),
            Mode::Live { live, .. } => read(&*live.state.read().await),
        }
    }

    /// The stream sequence of the last event in the topology (0 if none).
    pub async fn last_sequence(&self) -> StreamSequence {
        match &self.mode {
            Mode::OnRequest { state, .. } => state.read().await.last_sequence(),
            Mode::Live { live, .. } => StreamSequence(*live.seen.borrow()),
        }
    }

    /// Waits until the topology includes the event at `sequence` (e.g. the last sequence an
    /// append returned), so a caller reads its own writes. On a manager rebuilt on request, a
    /// concurrent rebuild can satisfy the wait.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Timeout`] after `timeout`; [`ProjectionError::Aborted`] if the runner
    /// ended.
    pub async fn wait_for(
        &self,
        sequence: StreamSequence,
        timeout: Duration,
    ) -> Result<(), ProjectionError> {
        match &self.mode {
            Mode::Live { handle, live } => {
                let started = std::time::Instant::now();
                if handle.is_live() {
                    handle.wait_for(sequence, timeout).await?;
                }
                // Committed (by this runner, or by the live version's while this one builds);
                // now in the copy in memory.
                live.wait_for(sequence.0, timeout.saturating_sub(started.elapsed()))
                    .await
            }
            Mode::OnRequest { applied, .. } => {
                let mut rx = applied.subscribe();
                let reached = tokio::time::timeout(timeout, async move {
                    rx.wait_for(|s| *s >= sequence.0).await.map(|_| ())
                })
                .await;
                match reached {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err(ProjectionError::Aborted(
                        TopologyProjection::NAME.to_owned(),
                    )),
                    Err(_) => Err(ProjectionError::Timeout {
                        projection: TopologyProjection::NAME.to_owned(),
                        wanted: sequence.0,
                        reached: *applied.borrow(),
                    }),
                }
            }
        }
    }

    /// The read model's handle, if the manager is live: its lag, its bucket, whether it ended.
    pub fn handle(&self) -> Option<&ReadModelHandle<TopologyModel>> {
        match &self.mode {
            Mode::Live { handle, .. } => Some(&**handle),
            Mode::OnRequest { .. } => None,
        }
    }

    /// The KV bucket the topology served is a copy of, if the manager is live: the model's live
    /// version (the pointer's), which may be another than the runner's while a new version builds.
    pub fn served_bucket(&self) -> Option<String> {
        match &self.mode {
            Mode::Live { live, .. } => Some(live.bucket()),
            Mode::OnRequest { .. } => None,
        }
    }

    /// Stops a live runner after the event in hand and writes a last checkpoint; does nothing
    /// for a manager rebuilt on request.
    ///
    /// # Errors
    ///
    /// The error the runner stopped with, if any.
    pub async fn shutdown(self) -> Result<(), ProjectionError> {
        match self.mode {
            Mode::Live { handle, live } => {
                let stopped = handle.shutdown().await;
                drop(live);
                stopped
            }
            Mode::OnRequest { .. } => Ok(()),
        }
    }
}

fn refused(sequence: u64) -> ProjectionError {
    ProjectionError::Apply {
        projection: TopologyProjection::NAME.to_owned(),
        sequence,
        reason: "the topology is kept live by a projection runner (ProjectionManager::start); \
                 rebuild applies to a manager made with ProjectionManager::new"
            .to_owned(),
    }
}
