//! The topology as a read model kept per key in JetStream KV ([`TopologyModel`]), and the
//! in-memory copy a live [`ProjectionManager`](super::ProjectionManager) serves, fed by an ordered
//! read of the model's live bucket.
//!
//! Tables (keys `{table}.r.{id}`, values the views as JSON): `compute`
//! ([`ComputeResourceView`]), `network` ([`NetworkView`]), `connection` ([`ConnectionView`]),
//! `software` ([`SoftwareView`]), `policy` ([`PolicyView`]); any NATS client reads them with a KV
//! get or watch on the bucket the key `topology` of bucket `READ_MODELS` names.
//!
//! Each event changes the rows it names: a decommissioned machine's connections, software and
//! policies, and a removed network's policies, go with the events the domain stores just before
//! (the aggregate emits them in the same command), not by a scan of the model.

use std::sync::Arc;

use async_trait::async_trait;
use cim_domain_infrastructure::{InfrastructureEvent, ResourceStatus};
use std::time::Duration;

use cim_nats::jetstream::{
    checkpoint_partition, follow_bucket, parse_row_key, BucketEntry, Checkpoint, CheckpointFront,
    KeyedProjection, Pointer, Rows,
};
use cim_nats::{Envelope, ProjectionError, StoreError, StoreErrorKind};
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::{watch, RwLock};
use tokio::task::JoinHandle;

use super::topology::{
    ComputeResourceView, ConnectionView, NetworkView, PolicyView, SoftwareView, Topology,
};

/// The topology read model: name `topology`, version 1, one row per compute resource, network,
/// connection, software and policy.
#[derive(Debug, Clone, Copy, Default)]
pub struct TopologyModel;

fn put(
    rows: &mut Rows<'_, serde_json::Value>,
    table: &str,
    id: impl std::fmt::Display,
    view: &impl Serialize,
) -> Result<(), ProjectionError> {
    let value = serde_json::to_value(view).map_err(|e| ProjectionError::Apply {
        projection: TopologyModel::NAME.to_owned(),
        sequence: rows.sequence().0,
        reason: format!("a {table} row does not encode: {e}"),
    })?;
    rows.put(table, &id.to_string(), value)
}

#[async_trait]
impl KeyedProjection for TopologyModel {
    type Event = InfrastructureEvent;
    type Row = serde_json::Value;
    const NAME: &'static str = "topology";

    async fn apply(
        &self,
        envelope: &Envelope<InfrastructureEvent>,
        rows: &mut Rows<'_, serde_json::Value>,
    ) -> Result<(), ProjectionError> {
        use InfrastructureEvent as E;
        let event = &envelope.event;
        let infrastructure = event.infrastructure_id();
        match event {
            E::ComputeResourceRegistered { resource, .. } => put(
                rows,
                "compute",
                resource.id,
                &ComputeResourceView::registered(infrastructure, resource),
            ),
            E::ComputeResourceDecommissioned { resource_id, .. } => {
                self.change(rows, *resource_id, |view| {
                    view.status = ResourceStatus::Decommissioned;
                })
                .await
            }
            E::ComputeResourceUpdated {
                resource_id,
                capabilities,
                ..
            } => {
                self.change(rows, *resource_id, |view| {
                    view.capabilities = capabilities.clone();
                })
                .await
            }
            E::NetworkDefined { network, .. } => put(
                rows,
                "network",
                network.id,
                &NetworkView::defined(infrastructure, network),
            ),
            E::NetworkRemoved { network_id, .. } => rows.delete("network", &network_id.to_string()),
            E::ConnectionEstablished { connection, .. } => put(
                rows,
                "connection",
                connection.id,
                &ConnectionView::established(infrastructure, connection),
            ),
            E::ConnectionSevered { connection_id, .. } => {
                rows.delete("connection", &connection_id.to_string())
            }
            E::SoftwareConfigured { software, .. } => put(
                rows,
                "software",
                software.id,
                &SoftwareView::configured(infrastructure, software),
            ),
            E::SoftwareRemoved { software_id, .. } => {
                rows.delete("software", &software_id.to_string())
            }
            E::PolicySet { policy, .. } => put(
                rows,
                "policy",
                policy.id,
                &PolicyView::set(infrastructure, policy),
            ),
            E::PolicyRemoved { policy_id, .. } => rows.delete("policy", &policy_id.to_string()),
            // The hostnames' reservations: the registrations and decommissions say the same.
            E::HostnameReserved { .. } | E::HostnameReleased { .. } => Ok(()),
        }
    }
}

impl TopologyModel {
    /// Changes the row of compute resource `id`, if there is one.
    async fn change(
        &self,
        rows: &mut Rows<'_, serde_json::Value>,
        id: cim_domain_infrastructure::ResourceId,
        change: impl FnOnce(&mut ComputeResourceView),
    ) -> Result<(), ProjectionError> {
        let Some(row) = rows.get("compute", &id.to_string()).await? else {
            return Ok(());
        };
        let mut view: ComputeResourceView =
            serde_json::from_value(row).map_err(|e| ProjectionError::Apply {
                projection: Self::NAME.to_owned(),
                sequence: rows.sequence().0,
                reason: format!("compute row {id} does not decode: {e}"),
            })?;
        change(&mut view);
        put(rows, "compute", id, &view)
    }
}

/// The topology in memory, kept from an ordered read of the live bucket of the model (the one
/// the pointer names, followed across a version switch): what
/// [`ProjectionManager::get_topology`](super::ProjectionManager::get_topology) serves.
#[derive(Debug)]
pub(crate) struct LiveTopology {
    pub(crate) state: Arc<RwLock<Topology>>,
    /// The sequence of the events whose effect is all in `state` (the model's checkpoint, as
    /// the copy has read it).
    pub(crate) seen: watch::Receiver<u64>,
    /// The bucket `state` is a copy of.
    bucket: watch::Receiver<String>,
    task: JoinHandle<()>,
}

/// A copy of one bucket of the model, as far as it has been read.
struct Copy {
    bucket: String,
    entries: std::pin::Pin<Box<dyn futures::Stream<Item = Result<BucketEntry, StoreError>> + Send>>,
    front: CheckpointFront,
    /// The bucket's last message applied.
    applied: u64,
}

impl Copy {
    fn open(client: &async_nats::Client, bucket: &str) -> Self {
        Self {
            bucket: bucket.to_owned(),
            entries: Box::pin(follow_bucket(client.clone(), bucket, FOLLOW_TIMEOUT)),
            front: CheckpointFront::default(),
            applied: 0,
        }
    }

    /// Applies one message of the bucket to `topology`; returns the model's sequence when it
    /// was a checkpoint (every row of its commit came before it).
    fn apply(&mut self, entry: BucketEntry, topology: &mut Topology) -> Option<u64> {
        self.applied = entry.revision;
        if checkpoint_partition(&entry.key).is_some() {
            let checkpoint = entry
                .value
                .as_ref()
                .and_then(|v| serde_json::from_slice::<Checkpoint>(v).ok())?;
            return self.front.observe(&checkpoint);
        }
        if let Some((table, id)) = parse_row_key(&entry.key) {
            match &entry.value {
                Some(value) => {
                    if !topology.put_row(&table, value) {
                        tracing::warn!(key = %entry.key, "topology row not understood");
                    }
                }
                None => {
                    topology.remove_row(&table, &id);
                }
            }
        }
        None
    }
}

const FOLLOW_TIMEOUT: Duration = Duration::from_secs(5);

fn store_error(bucket: &str, e: impl std::fmt::Display) -> ProjectionError {
    ProjectionError::Store {
        projection: TopologyModel::NAME.to_owned(),
        source: StoreError::with_source(
            StoreErrorKind::Bucket {
                bucket: bucket.to_owned(),
            },
            e.to_string(),
        ),
    }
}

/// The live bucket of the model, as the pointer says (`None`: no live version yet).
fn pointed(entry: &async_nats::jetstream::kv::Entry) -> Option<Pointer> {
    (entry.operation == async_nats::jetstream::kv::Operation::Put)
        .then(|| serde_json::from_slice::<Pointer>(&entry.value).ok())
        .flatten()
}

/// Reads a new copy of `bucket` until it holds every message the bucket held when asked.
async fn build(
    client: &async_nats::Client,
    bucket: &str,
) -> Result<(Copy, Topology, Option<u64>), ProjectionError> {
    let mut stream = async_nats::jetstream::new(client.clone())
        .get_stream(format!("KV_{bucket}"))
        .await
        .map_err(|e| store_error(bucket, e))?;
    // Fresh from the server (`kv::Store::status` answers from what it read when opened).
    let last = stream
        .info()
        .await
        .map_err(|e| store_error(bucket, e))?
        .state
        .last_sequence;
    let mut copy = Copy::open(client, bucket);
    let mut topology = Topology::new();
    let mut seen = None;
    while copy.applied < last {
        match copy.entries.next().await {
            Some(Ok(entry)) => {
                if let Some(at) = copy.apply(entry, &mut topology) {
                    seen = Some(at);
                }
            }
            Some(Err(e)) => return Err(store_error(bucket, e)),
            None => return Err(store_error(bucket, "the bucket's read ended")),
        }
    }
    Ok((copy, topology, seen))
}

impl LiveTopology {
    /// Reads the bucket the pointer `name` of `pointers` names (every row as it stands, then
    /// each change, in order), and returns once what it held is in memory; a new version going
    /// live is read into a copy of its own, served once it holds what its bucket held.
    pub(crate) async fn start(
        client: async_nats::Client,
        pointers: &str,
    ) -> Result<Self, ProjectionError> {
        let kv = async_nats::jetstream::new(client.clone())
            .get_key_value(pointers)
            .await
            .map_err(|e| store_error(pointers, e))?;
        let mut pointer_watch = kv
            .watch_with_history(TopologyModel::NAME)
            .await
            .map_err(|e| store_error(pointers, e))?;
        let first = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(entry) = pointer_watch.next().await {
                let entry = entry.map_err(|e| store_error(pointers, e))?;
                if let Some(pointer) = pointed(&entry) {
                    return Ok(pointer);
                }
            }
            Err(store_error(pointers, "the pointer's watch ended"))
        })
        .await
        .map_err(|_| store_error(pointers, "the topology has no live version"))??;
        let (copy, topology, seen) = build(&client, &first.bucket).await?;
        let state = Arc::new(RwLock::new(topology));
        let (seen_tx, seen) = watch::channel(seen.unwrap_or(0));
        let (bucket_tx, bucket) = watch::channel(first.bucket.clone());
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            let mut copy = copy;
            loop {
                tokio::select! {
                    pointer = pointer_watch.next() => {
                        let pointer = match pointer {
                            Some(Ok(entry)) => pointed(&entry),
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "watching the topology's pointer failed");
                                None
                            }
                            None => {
                                tracing::warn!("the topology's pointer watch ended");
                                break;
                            }
                        };
                        let Some(pointer) = pointer.filter(|p| p.bucket != copy.bucket) else {
                            continue;
                        };
                        // A new version is live: read its bucket aside, then serve it.
                        match build(&client, &pointer.bucket).await {
                            Ok((fresh, topology, at)) => {
                                *shared.write().await = topology;
                                copy = fresh;
                                seen_tx.send_replace(at.unwrap_or(0));
                                bucket_tx.send_replace(pointer.bucket.clone());
                                tracing::info!(bucket = %pointer.bucket, version = pointer.version,
                                    "topology: serving the new live version");
                            }
                            Err(e) => {
                                tracing::warn!(bucket = %pointer.bucket, error = %e,
                                    "reading the topology's new live version failed");
                            }
                        }
                    }
                    entry = copy.entries.next() => {
                        match entry {
                            Some(Ok(entry)) => {
                                let mut topology = shared.write().await;
                                if let Some(at) = copy.apply(entry, &mut topology) {
                                    seen_tx.send_if_modified(|seen| {
                                        let newer = at > *seen;
                                        *seen = (*seen).max(at);
                                        newer
                                    });
                                }
                            }
                            Some(Err(e)) => {
                                // A retired bucket, deleted under the copy: the pointer has
                                // moved on, and its watch brings the new one.
                                tracing::warn!(bucket = %copy.bucket, error = %e,
                                    "reading the topology's bucket failed");
                                copy.entries = Box::pin(futures::stream::pending());
                            }
                            None => copy.entries = Box::pin(futures::stream::pending()),
                        }
                    }
                }
            }
        });
        Ok(Self {
            state,
            seen,
            bucket,
            task,
        })
    }

    /// The bucket the copy in memory is of.
    pub(crate) fn bucket(&self) -> String {
        self.bucket.borrow().clone()
    }

    /// Waits until the copy in memory includes the event at `sequence`.
    pub(crate) async fn wait_for(
        &self,
        sequence: u64,
        timeout: Duration,
    ) -> Result<(), ProjectionError> {
        let mut rx = self.seen.clone();
        let reached = tokio::time::timeout(timeout, async move {
            rx.wait_for(|seen| *seen >= sequence).await.map(|_| ())
        })
        .await;
        match reached {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ProjectionError::Aborted(TopologyModel::NAME.to_owned())),
            Err(_) => Err(ProjectionError::Timeout {
                projection: TopologyModel::NAME.to_owned(),
                wanted: sequence,
                reached: *self.seen.borrow(),
            }),
        }
    }
}

/// The topology as the live read model holds it now, read from JetStream KV by any process
/// (the model's pointer in bucket `READ_MODELS`, then every row of its live bucket), and the
/// stream sequence whose effect it holds: what a tool or a read-only service shows without
/// running the model. A service that keeps it current is
/// [`ProjectionManager::start`](super::ProjectionManager::start).
///
/// # Errors
///
/// [`ProjectionError::Store`] when the buckets cannot be read or the model has no live
/// version (no service has built it).
pub async fn read_topology(
    client: &async_nats::Client,
) -> Result<(Topology, cim_nats::StreamSequence), ProjectionError> {
    let pointers = cim_nats::jetstream::ReadModelOptions::default().pointer_bucket;
    let bucket = async_nats::jetstream::new(client.clone())
        .get_key_value(&pointers)
        .await
        .map_err(|e| store_error(&pointers, e))?;
    match bucket.get(TopologyModel::NAME).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(store_error(
                &pointers,
                "no live version of the topology model (no service has built it)",
            ))
        }
        Err(e) => return Err(store_error(&pointers, e)),
    }
    let live = LiveTopology::start(client.clone(), &pointers).await?;
    let topology = live.state.read().await.clone();
    let seen = cim_nats::StreamSequence(*live.seen.borrow());
    Ok((topology, seen))
}

impl Drop for LiveTopology {
    fn drop(&mut self) {
        self.task.abort();
    }
}
