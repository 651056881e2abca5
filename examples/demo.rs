//! The demo: one event through JetStream and back, printed as stored.
//!
//! Uses the server at `NATS_URL` if set, else starts its own nats-server (JetStream, random port,
//! temporary store) for the length of the run.

use cim_nats::jetstream::{JetStreamEventStore, StoreConfig};
use cim_nats::testing::NatsServer;
use cim_nats::{AggregateId, EventId, EventStore, ExpectedVersion, MessageIdentity, NewEvent};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (_server, url) = match std::env::var("NATS_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let server = NatsServer::start()?;
            let url = server.url();
            println!("started nats-server {} at {url}", server.binary().version);
            (Some(server), url)
        }
    };
    let client = async_nats::connect(&url).await?;
    let store = JetStreamEventStore::new(client, StoreConfig::for_domain("demo")).await?;
    println!(
        "stream {} on {:?}",
        store.stream_name(),
        store.config().subjects
    );

    let machine = AggregateId::from(uuid::Uuid::now_v7());
    let identity = MessageIdentity::new_from_user("demo");
    let event = NewEvent {
        event_id: EventId::new(),
        event_type: "MachineRegistered".into(),
        schema_version: 1,
        aggregate_type: "machine".into(),
        routing_subject: "demo.machine.registered".into(),
        payload: serde_json::to_vec(&serde_json::json!({ "hostname": "server01" }))?.into(),
        timestamp: chrono::Utc::now(),
        correlation_id: None,
        causation_id: None,
        actor: None,
    }
    .with_identity(&identity);
    let result = store
        .append(&machine, ExpectedVersion::NoStream, vec![event])
        .await?;
    println!(
        "appended at stream sequence {} (aggregate version {})",
        result.sequences[0], result.version
    );
    for stored in store.read_aggregate(&machine, 0).await? {
        println!("{stored:#?}");
    }
    Ok(())
}
