//! Read models of the infrastructure: the [`Topology`] of every infrastructure on the stream,
//! kept by [`TopologyProjection`] and served by [`ProjectionManager`].
//!
//! - [`Topology`]: compute resources, networks, connections, software and policies, with
//!   queries ([`Topology::active_compute_resources`], [`Topology::resource_by_hostname`],
//!   [`Topology::resources_on_network`], [`Topology::connections_of`], ...) and drawings
//!   ([`Topology::to_dot`] for Graphviz, [`Topology::to_mermaid`]).
//! - [`TopologyProjection`]: the framework [`Projection`] (name `topology`, version 1) that
//!   applies [`InfrastructureEvent`](cim_domain_infrastructure::InfrastructureEvent)s to a
//!   topology; `Default + Serialize + Deserialize`, so a
//!   [`ProjectionRunner`] keeps it with its checkpoint in JetStream KV.
//! - [`TopologyModel`]: the same topology as a read model kept per key in JetStream KV (a row
//!   per machine, network, connection, software and policy), readable by any NATS client.
//! - [`ProjectionManager`]: rebuilds the topology from stored events on request (the seed's
//!   `rebuild(events)`), or keeps it live ([`ProjectionManager::start`]): a
//!   [`ReadModelRunner`] keeps [`TopologyModel`] in KV and
//!   the manager serves an in-memory copy fed by a watch of its bucket.
//!
//! ```no_run
//! use cim_infrastructure_nats::{
//!     event_store::{JetStreamEventStore, EventStoreConfig, EventStore},
//!     projections::ProjectionManager,
//! };
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = async_nats::connect("nats://localhost:4222").await?;
//! let store = JetStreamEventStore::new(client, EventStoreConfig::default()).await?;
//! let manager = ProjectionManager::new();
//! manager.rebuild(store.read_all().await?).await?;
//! let topology = manager.get_topology().await;
//! println!("{} networks", topology.active_networks().len());
//! # Ok(()) }
//! ```

mod export;
mod kv_topology;
mod manager;
mod topology;

pub use kv_topology::{read_topology, TopologyModel};
pub use manager::ProjectionManager;
pub use topology::{
    ComputeResourceView, ConnectionView, NetworkView, PolicyView, SoftwareView, Topology,
    TopologyProjection,
};

pub use cim_nats::jetstream::{
    ProjectionHandle, ProjectionOptions, ProjectionRunner, ReadModelHandle, ReadModelOptions,
    ReadModelRunner, Skipped,
};
pub use cim_nats::{OnUnreadable, Projection, ProjectionError};
