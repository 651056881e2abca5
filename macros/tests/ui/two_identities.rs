use cim_nats::{MessageIdentity, NatsEvent};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, NatsEvent)]
#[nats_event(domain = "infrastructure", aggregate = "compute")]
enum Event {
    #[nats_event(operation = "registered")]
    Registered {
        #[nats_event(identity)]
        identity: MessageIdentity,
        #[nats_event(identity)]
        caused_by: MessageIdentity,
    },
}

fn main() {}
