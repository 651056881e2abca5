use cim_nats::EntityId;

#[derive(Clone, Copy, EntityId)]
struct OrderId(u64);

fn main() {}
