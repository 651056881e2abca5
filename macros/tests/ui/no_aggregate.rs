use cim_nats::NatsEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, NatsEvent)]
#[nats_event(domain = "infrastructure")]
enum Event {
    #[nats_event(aggregate = "compute", operation = "registered")]
    Registered,
    #[nats_event(operation = "removed")]
    Removed,
}

fn main() {}
