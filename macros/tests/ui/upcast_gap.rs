use cim_nats::NatsEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, NatsEvent)]
#[nats_event(domain = "infrastructure", aggregate = "compute")]
enum Event {
    #[nats_event(operation = "registered", version = 4, upcast(from = 1, with = up), upcast(from = 3, with = up))]
    Registered,
}

fn up(v: serde_json::Value) -> Result<serde_json::Value, cim_nats::UpcastError> {
    Ok(v)
}

fn main() {}
