use cim_nats::NatsEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, NatsEvent)]
#[nats_event(domain = "infrastructure", aggregate = "compute")]
enum Event {
    #[nats_event(operation = "registered", version = 2, upcast(from = 1, using = v1_to_v2))]
    Registered,
}

fn main() {}
