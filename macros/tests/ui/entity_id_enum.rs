use cim_nats::EntityId;

#[derive(EntityId)]
enum OrderId {
    A(uuid::Uuid),
}

fn main() {}
