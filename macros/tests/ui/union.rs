use cim_nats::NatsEvent;

#[derive(NatsEvent)]
#[nats_event(domain = "infrastructure")]
union Event {
    id: u32,
}

fn main() {}
