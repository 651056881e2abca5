use cim_nats::NatsEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, NatsEvent)]
#[nats_event(domain = "infrastructure", aggregate = "compute")]
enum Event<T> {
    #[nats_event(operation = "registered")]
    Registered(T),
}

fn main() {}
