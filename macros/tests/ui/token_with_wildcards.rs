use cim_nats::NatsEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, NatsEvent)]
#[nats_event(domain = "infrastructure", aggregate = "compute")]
enum Event {
    #[nats_event(operation = "*")]
    Registered,
    #[nats_event(operation = "removed>")]
    Removed,
}

fn main() {}
