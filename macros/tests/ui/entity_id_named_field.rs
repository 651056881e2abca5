use cim_nats::EntityId;

#[derive(EntityId)]
struct OrderId {
    id: uuid::Uuid,
}

fn main() {}
