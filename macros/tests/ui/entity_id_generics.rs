use cim_nats::EntityId;

#[derive(EntityId)]
struct OrderId<T>(uuid::Uuid, std::marker::PhantomData<T>);

fn main() {}
