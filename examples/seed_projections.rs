//! The seed's "Read Model Projections" program: rebuild the topology from every stored event.
#![allow(clippy::single_component_path_imports, clippy::clone_on_copy)]
use cim_infrastructure_nats::{
    event_store::{EventStore, EventStoreConfig, JetStreamEventStore},
    projections::ProjectionManager,
};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = async_nats::connect(
        std::env::var("NATS_URL").unwrap_or_else(|_| "nats://localhost:4222".to_owned()),
    )
    .await?;

    // Create event store
    let config = EventStoreConfig::default();
    let event_store = Arc::new(JetStreamEventStore::new(client.clone(), config).await?);

    // Create projection manager
    let projection_manager = ProjectionManager::new();

    // Read all events and project them
    let events = event_store.read_all().await?;
    projection_manager.rebuild(events).await?;

    // Query the topology
    let topology = projection_manager.get_topology().await;

    println!(
        "Active compute resources: {}",
        topology.active_compute_resources().len()
    );
    println!("Active networks: {}", topology.active_networks().len());
    println!(
        "Active connections: {}",
        topology.active_connections().len()
    );

    Ok(())
}
