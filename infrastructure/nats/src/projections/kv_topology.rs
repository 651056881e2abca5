//! The topology as a read model kept per key in JetStream KV ([`TopologyModel`]), and the
//! in-memory copy a live [`ProjectionManager`](super::ProjectionManager) serves, fed by a watch of
//! the model's bucket.
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
use cim_nats::jetstream::{follow_bucket, parse_row_key, KeyedProjection, Rows, CHECKPOINT_KEY};
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

/// The topology in memory, kept from an ordered read of the model's bucket: what
/// [`ProjectionManager::get_topology`](super::ProjectionManager::get_topology) serves.
#[derive(Debug)]
pub(crate) struct LiveTopology {
    pub(crate) state: Arc<RwLock<Topology>>,
    /// The checkpoint whose rows are all in `state`.
    pub(crate) seen: watch::Receiver<u64>,
    /// The bucket's last message applied to `state` (its stream sequence).
    applied: watch::Receiver<u64>,
    /// Publishes `seen`; the last checkpoint applied (its rows may still come).
    seen_tx: Arc<watch::Sender<u64>>,
    latest: Arc<std::sync::atomic::AtomicU64>,
    bucket: async_nats::jetstream::kv::Store,
    task: JoinHandle<()>,
}

impl LiveTopology {
    /// Reads `bucket` (every row as it stands, then each change, in order) and returns once what
    /// it held is in memory.
    pub(crate) async fn start(
        client: async_nats::Client,
        bucket: &str,
    ) -> Result<Self, ProjectionError> {
        let fail = |e: &dyn std::fmt::Display| ProjectionError::Store {
            projection: TopologyModel::NAME.to_owned(),
            source: StoreError::with_source(
                StoreErrorKind::Bucket {
                    bucket: bucket.to_owned(),
                },
                e.to_string(),
            ),
        };
        let kv = async_nats::jetstream::new(client.clone())
            .get_key_value(bucket)
            .await
            .map_err(|e| fail(&e))?;
        let mut entries = Box::pin(follow_bucket(
            client,
            bucket,
            std::time::Duration::from_secs(5),
        ));
        let state = Arc::new(RwLock::new(Topology::new()));
        let (seen_tx, seen) = watch::channel(0u64);
        let seen_tx = Arc::new(seen_tx);
        let latest = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (task_seen, task_latest) = (Arc::clone(&seen_tx), Arc::clone(&latest));
        let (applied_tx, applied) = watch::channel(0u64);
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            // A batch stores its checkpoint first: it counts once its rows are in (at the next
            // checkpoint, or when a reader finds the copy caught up with the bucket).
            while let Some(entry) = entries.next().await {
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the topology's bucket failed");
                        break;
                    }
                };
                if entry.key == CHECKPOINT_KEY {
                    let previous = task_latest.load(std::sync::atomic::Ordering::Acquire);
                    if previous > 0 {
                        task_seen.send_replace(previous);
                    }
                    let sequence = entry
                        .value
                        .as_ref()
                        .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
                        .and_then(|c| c["sequence"].as_u64());
                    if let Some(sequence) = sequence {
                        task_latest.store(sequence, std::sync::atomic::Ordering::Release);
                    }
                } else if let Some((table, id)) = parse_row_key(&entry.key) {
                    let mut topology = shared.write().await;
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
                applied_tx.send_replace(entry.revision);
            }
        });
        let live = Self {
            state,
            seen,
            applied,
            seen_tx,
            latest,
            bucket: kv,
            task,
        };
        // The rows the bucket holds are in memory before the manager serves them.
        live.caught_up(std::time::Duration::from_secs(60)).await?;
        Ok(live)
    }

    /// Waits until every message the bucket holds now is applied to the copy in memory (the
    /// watch delivers them in order).
    pub(crate) async fn caught_up(
        &self,
        timeout: std::time::Duration,
    ) -> Result<(), ProjectionError> {
        let bucket = self.bucket.name.clone();
        // Fresh from the server (`kv::Store::status` answers from what it read when opened).
        let mut stream = self.bucket.stream.clone();
        let last = stream
            .info()
            .await
            .map_err(|e| ProjectionError::Store {
                projection: TopologyModel::NAME.to_owned(),
                source: StoreError::with_source(StoreErrorKind::Bucket { bucket }, e.to_string()),
            })?
            .state
            .last_sequence;
        let mut rx = self.applied.clone();
        let reached = tokio::time::timeout(timeout, async move {
            rx.wait_for(|applied| *applied >= last).await.map(|_| ())
        })
        .await;
        match reached {
            Ok(Ok(())) => {
                // Every message so far is in: so are the last checkpoint's rows.
                let latest = self.latest.load(std::sync::atomic::Ordering::Acquire);
                self.seen_tx.send_if_modified(|seen| {
                    let newer = latest > *seen;
                    if newer {
                        *seen = latest;
                    }
                    newer
                });
                Ok(())
            }
            Ok(Err(_)) => Err(ProjectionError::Aborted(TopologyModel::NAME.to_owned())),
            Err(_) => Err(ProjectionError::Timeout {
                projection: TopologyModel::NAME.to_owned(),
                wanted: last,
                reached: *self.applied.borrow(),
            }),
        }
    }
}

impl Drop for LiveTopology {
    fn drop(&mut self) {
        self.task.abort();
    }
}
