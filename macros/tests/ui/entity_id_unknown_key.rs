use cim_nats::EntityId;

#[derive(EntityId)]
#[entity_id(aggregate, domain = "shop")]
struct OrderId(uuid::Uuid);

fn main() {}
