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
use cim_nats::jetstream::{parse_row_key, KeyedProjection, Rows, CHECKPOINT_KEY};
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
                &ComputeResourceView {
                    id: resource.id,
                    infrastructure,
                    hostname: resource.hostname.clone(),
                    resource_type: resource.resource_type,
                    system: resource.system,
                    capabilities: resource.capabilities.clone(),
                    status: ResourceStatus::Active,
                },
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
                &NetworkView {
                    id: network.id,
                    infrastructure,
                    name: network.name.clone(),
                    cidr: network.cidr,
                },
            ),
            E::NetworkRemoved { network_id, .. } => rows.delete("network", &network_id.to_string()),
            E::ConnectionEstablished { connection, .. } => put(
                rows,
                "connection",
                connection.id,
                &ConnectionView {
                    id: connection.id,
                    infrastructure,
                    from: connection.from,
                    to: connection.to,
                    network: connection.network,
                    kind: connection.kind,
                },
            ),
            E::ConnectionSevered { connection_id, .. } => {
                rows.delete("connection", &connection_id.to_string())
            }
            E::SoftwareConfigured { software, .. } => put(
                rows,
                "software",
                software.id,
                &SoftwareView {
                    id: software.id,
                    infrastructure,
                    resource: software.resource,
                    name: software.name.clone(),
                    version: software.version.clone(),
                    settings: software.settings.clone(),
                },
            ),
            E::SoftwareRemoved { software_id, .. } => {
                rows.delete("software", &software_id.to_string())
            }
            E::PolicySet { policy, .. } => put(
                rows,
                "policy",
                policy.id,
                &PolicyView {
                    id: policy.id,
                    infrastructure,
                    name: policy.name.clone(),
                    scope: policy.scope,
                    rule: policy.rule.clone(),
                },
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

/// The topology in memory, kept from a watch of the model's bucket: what
/// [`ProjectionManager::get_topology`](super::ProjectionManager::get_topology) serves.
#[derive(Debug)]
pub(crate) struct LiveTopology {
    pub(crate) state: Arc<RwLock<Topology>>,
    /// The checkpoint whose rows are all in `state`.
    pub(crate) seen: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl LiveTopology {
    /// Watches `bucket` (every key's last value, then changes) and returns once what it held is
    /// in memory.
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
        let kv = async_nats::jetstream::new(client)
            .get_key_value(bucket)
            .await
            .map_err(|e| fail(&e))?;
        let empty = kv.status().await.map_err(|e| fail(&e))?.values() == 0;
        let mut entries = kv.watch_with_history(">").await.map_err(|e| fail(&e))?;
        let state = Arc::new(RwLock::new(Topology::new()));
        let (seen_tx, seen) = watch::channel(0u64);
        let (ready_tx, ready) = tokio::sync::oneshot::channel::<()>();
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            let mut ready_tx = (!empty).then_some(ready_tx);
            // A batch stores its checkpoint first: it counts once its rows are in.
            let mut held: Option<u64> = None;
            while let Some(entry) = entries.next().await {
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(e) => {
                        tracing::warn!(error = %e, "topology watch failed");
                        break;
                    }
                };
                if entry.key == CHECKPOINT_KEY {
                    if let Some(sequence) = held.take() {
                        seen_tx.send_replace(sequence);
                    }
                    held = serde_json::from_slice::<serde_json::Value>(&entry.value)
                        .ok()
                        .and_then(|c| c["sequence"].as_u64());
                } else if let Some((table, id)) = parse_row_key(&entry.key) {
                    let mut topology = shared.write().await;
                    match entry.operation {
                        async_nats::jetstream::kv::Operation::Put => {
                            if !topology.put_row(&table, &entry.value) {
                                tracing::warn!(key = %entry.key, "topology row not understood");
                            }
                        }
                        _ => {
                            topology.remove_row(&table, &id);
                        }
                    }
                }
                if entry.delta == 0 {
                    if let Some(sequence) = held.take() {
                        seen_tx.send_replace(sequence);
                    }
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
        if !empty {
            // The rows the bucket held are in memory before the manager serves them.
            let _ = ready.await;
        }
        Ok(Self { state, seen, task })
    }
}

impl Drop for LiveTopology {
    fn drop(&mut self) {
        self.task.abort();
    }
}
