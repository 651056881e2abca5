//! The seed's "Event Store Configuration" fragment in a program: a store with 3 replicas.
#![allow(clippy::single_component_path_imports, clippy::clone_on_copy)]
use cim_infrastructure_nats::event_store::EventStoreConfig;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = EventStoreConfig {
        stream_name: "INFRASTRUCTURE_EVENTS".to_string(),
        max_age: Duration::from_secs(365 * 24 * 60 * 60), // 1 year retention
        max_messages: 1_000_000,                          // Max 1M messages
        replicas: 3,                                      // 3 replicas for HA
    };

    // Build a store with it. Three replicas need a JetStream cluster of at least three servers.
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://localhost:4222".to_owned());
    let client = async_nats::connect(url.as_str()).await?;
    let cluster = client.server_info().cluster;
    match cim_infrastructure_nats::event_store::JetStreamEventStore::new(client, config).await {
        Ok(store) => {
            println!(
                "stream {} on {:?} with {} replicas (cluster {})",
                store.stream_name(),
                store.config().subjects,
                store.config().replicas,
                cluster.unwrap_or_default()
            );
            Ok(())
        }
        Err(e) if cluster.is_none() => {
            println!(
                "{url} is a single server, not a cluster: a stream with 3 replicas needs a \
                 JetStream cluster of at least 3 servers ({e})"
            );
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
