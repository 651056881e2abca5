use cim_nats::{NatsEvent, UpcastError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn up(v: Value) -> Result<Value, UpcastError> {
    Ok(v)
}

#[derive(Serialize, Deserialize, NatsEvent)]
#[nats_event(domain = "shop", aggregate = "order")]
enum Event {
    #[nats_event(operation = "placed", version = 2, upcast(from = 1, with = up, fields = up))]
    Placed { total: u64 },
}

fn main() {}
