//! `cim-nats aggregate`: one aggregate's history, read through the store's own path (the
//! aggregate's literal subjects, found in the stream's subject index; no consumer), without
//! the domain's event types.

use cim_nats::jetstream::JetStreamEventStore;
use cim_nats::{AggregateId, EventStore};
use serde_json::json;

use crate::output::table;
use crate::Error;

pub(crate) async fn run(
    client: &async_nats::Client,
    domain: &str,
    id: &str,
    stream: Option<String>,
    as_json: bool,
) -> Result<(), Error> {
    let id = AggregateId::new(id).map_err(|e| format!("aggregate id: {e}"))?;
    let stream = stream.unwrap_or_else(|| format!("{}_EVENTS", domain.to_uppercase()));
    let store = JetStreamEventStore::attach(client.clone(), &stream).await?;
    let events = store.read_aggregate(&id, 0).await?;
    if as_json {
        for event in &events {
            let body = serde_json::from_slice::<serde_json::Value>(&event.payload)
                .unwrap_or_else(|_| String::from_utf8_lossy(&event.payload).into());
            println!(
                "{}",
                json!({
                    "version": event.aggregate_version,
                    "sequence": event.stream_sequence.0,
                    "event_type": event.event_type,
                    "schema_version": event.schema_version,
                    "subject": event.subject,
                    "time": event.timestamp.to_rfc3339(),
                    "event_id": event.event_id.to_string(),
                    "actor": event.actor,
                    "correlation_id": event.correlation_id.map(|c| c.to_string()),
                    "causation_id": event.causation_id.map(|c| c.to_string()),
                    "body": body,
                })
            );
        }
        return Ok(());
    }
    if events.is_empty() {
        println!("aggregate {id} has no events in {stream}");
        return Ok(());
    }
    let mut rows = table(&[
        "version",
        "seq",
        "type",
        "time",
        "actor",
        "correlation",
        "causation",
    ]);
    for event in &events {
        rows.add_row(vec![
            event.aggregate_version.to_string(),
            event.stream_sequence.0.to_string(),
            event.event_type.clone(),
            event
                .timestamp
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            event.actor.clone().unwrap_or_default(),
            event
                .correlation_id
                .map(|c| c.to_string())
                .unwrap_or_default(),
            event
                .causation_id
                .map(|c| c.to_string())
                .unwrap_or_default(),
        ]);
    }
    println!("aggregate {id} in {stream}: {} events", events.len());
    println!("{rows}");
    Ok(())
}
