use cim_nats::NatsEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, NatsEvent)]
#[nats_event(domain = "infrastructure", aggregate = "compute", identity = "id")]
enum Event {
    #[nats_event(operation = "registered")]
    Registered { id: cim_nats::EventId },
    #[nats_event(operation = "removed")]
    Removed { event_id: cim_nats::EventId },
}

fn main() {}
