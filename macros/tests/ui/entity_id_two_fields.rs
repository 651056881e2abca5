use cim_nats::EntityId;

#[derive(EntityId)]
struct OrderId(uuid::Uuid, u32);

fn main() {}
