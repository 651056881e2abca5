//! The seed's "Basic Event Publishing" program: register a compute resource and publish its events.
#![allow(clippy::single_component_path_imports, clippy::clone_on_copy)]
use async_nats;
use cim_domain_infrastructure::{
    ComputeResourceSpec, ComputeType, Hostname, InfrastructureAggregate, InfrastructureId,
    MessageIdentity, ResourceCapabilities, SystemArchitecture,
};
use cim_infrastructure_nats::{
    event_store::{EventStoreConfig, JetStreamEventStore},
    publisher::EventPublisher,
    EventStore,
};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Connect to NATS
    let client = async_nats::connect(
        std::env::var("NATS_URL").unwrap_or_else(|_| "nats://localhost:4222".to_owned()),
    )
    .await?;

    // Create event store
    let config = EventStoreConfig::default();
    let event_store = Arc::new(JetStreamEventStore::new(client.clone(), config).await?);

    // Create publisher
    let publisher = EventPublisher::new(client, Arc::clone(&event_store) as Arc<dyn EventStore>);

    // Create infrastructure aggregate
    let infra_id = InfrastructureId::new();
    let mut aggregate = InfrastructureAggregate::new(infra_id.clone());

    // Register a compute resource
    let identity = MessageIdentity::new_from_user("my-service");
    let spec = ComputeResourceSpec {
        id: cim_domain_infrastructure::ResourceId::new(),
        resource_type: ComputeType::Physical,
        hostname: Hostname::new("server01")?,
        system: SystemArchitecture::new("x86_64-linux")?,
        capabilities: ResourceCapabilities::default(),
    };

    let events = aggregate.handle_register_compute_resource(spec, &identity)?;

    // Publish events
    for (seq, event) in events.iter().enumerate() {
        publisher
            .publish(event, infra_id.into(), (seq + 1) as u64)
            .await?;
    }

    Ok(())
}
