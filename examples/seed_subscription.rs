//! The seed's "Event Subscription" program: print every compute event as it is stored.
#![allow(clippy::single_component_path_imports, clippy::clone_on_copy)]
use cim_infrastructure_nats::{
    subjects::subjects,
    subscriber::{EventSubscriberBuilder, FnEventHandler},
    StoredEvent,
};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = async_nats::connect(
        std::env::var("NATS_URL").unwrap_or_else(|_| "nats://localhost:4222".to_owned()),
    )
    .await?;

    // Create event handler
    let handler = Arc::new(FnEventHandler::new(|event: StoredEvent| {
        println!("Received: {} at {}", event.event_type, event.timestamp);
        Ok(())
    }));

    // Subscribe to all compute events
    let subscriber = EventSubscriberBuilder::new()
        .client(client)
        .subject(subjects::all_compute_events())
        .handler(handler)
        .build()?;

    let handle = subscriber.subscribe().await?;

    // Wait for events...
    handle.await?;

    Ok(())
}
