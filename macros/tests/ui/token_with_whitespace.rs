use cim_nats::NatsEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, NatsEvent)]
#[nats_event(domain = "infrastructure")]
enum Event {
    #[nats_event(aggregate = "compute node", operation = "registered")]
    Registered,
}

fn main() {}
