use cim_nats::{AggregateId, EntityId};

// Without #[entity_id(aggregate)], an id does not convert into an AggregateId.
#[derive(Clone, Copy, EntityId)]
struct LineId(uuid::Uuid);

fn main() {
    let _: AggregateId = LineId::new().into();
}
