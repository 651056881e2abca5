use cim_nats::NatsEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, NatsEvent)]
#[nats_event(domain = "infrastructure", aggregate = "compute")]
enum Event {
    #[nats_event(operation = "registered")]
    Registered {
        #[nats_event(identity)]
        actor: String,
    },
}

fn main() {}
