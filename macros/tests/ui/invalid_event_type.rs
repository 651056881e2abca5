use cim_nats::NatsEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, NatsEvent)]
#[nats_event(domain = "infrastructure", aggregate = "compute")]
enum Event {
    #[nats_event(operation = "registered", event_type = "Compute Registered")]
    Registered,
    #[nats_event(operation = "removed", event_type = "")]
    Removed,
}

fn main() {}
