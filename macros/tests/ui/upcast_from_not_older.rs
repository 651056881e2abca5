use cim_nats::NatsEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, NatsEvent)]
#[nats_event(domain = "infrastructure", aggregate = "compute")]
enum Event {
    #[nats_event(operation = "registered", version = 2, upcast(from = 1, with = up), upcast(from = 2, with = up))]
    Registered,
    #[nats_event(operation = "removed", upcast(from = 1, with = up))]
    Removed,
}

fn up(v: serde_json::Value) -> Result<serde_json::Value, cim_nats::UpcastError> {
    Ok(v)
}

fn main() {}
