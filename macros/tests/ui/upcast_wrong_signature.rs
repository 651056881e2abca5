use cim_nats::NatsEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, NatsEvent)]
#[nats_event(domain = "infrastructure", aggregate = "compute")]
enum Event {
    #[nats_event(operation = "registered", version = 2, upcast(from = 1, with = up))]
    Registered,
}

fn up(v: String) -> String {
    v
}

fn main() {}
