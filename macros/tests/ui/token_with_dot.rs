use cim_nats::NatsEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, NatsEvent)]
#[nats_event(domain = "infra.structure", aggregate = "compute")]
enum Event {
    #[nats_event(operation = "registered")]
    Registered,
}

fn main() {}
