use cim_nats::NatsEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, NatsEvent)]
#[nats_event(domain = "infrastructure", aggregate = "")]
enum Event {
    #[nats_event(operation = "registered")]
    Registered,
}

fn main() {}
