use cim_nats::NatsEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, NatsEvent)]
#[nats_event(domain = "infrastructure", operation = "registered")]
enum Event {
    #[nats_event(aggregate = "compute", operation = "registered")]
    Registered,
}

fn main() {}
