use cim_nats::EntityId;

// The derive writes Debug (and Display, Default, FromStr, serde): deriving it too conflicts.
#[derive(Debug, EntityId)]
struct OrderId(uuid::Uuid);

fn main() {}
