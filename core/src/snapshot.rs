//! Snapshots of aggregate state, so that a long aggregate loads without replaying its history.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::envelope::StreamSequence;
use crate::store::StoreError;
use crate::subject::AggregateId;

/// An aggregate's state at a version, stamped with the stream sequence of its last event and the
/// schema of its encoding.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The aggregate type ([`crate::Aggregate::TYPE`]).
    pub aggregate_type: String,
    /// The aggregate instance.
    pub aggregate_id: AggregateId,
    /// The snapshot encoding's version ([`crate::Aggregate::SNAPSHOT_VERSION`]); a snapshot of
    /// another schema is ignored.
    pub schema: u32,
    /// The aggregate version the state is at.
    pub version: u64,
    /// The stream sequence of the aggregate's event at that version.
    pub sequence: StreamSequence,
    /// The state's JSON.
    #[serde(with = "bytes_as_json")]
    pub state: Bytes,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("aggregate_type", &self.aggregate_type)
            .field("aggregate_id", &self.aggregate_id)
            .field("schema", &self.schema)
            .field("version", &self.version)
            .field("sequence", &self.sequence.0)
            .field("state_bytes", &self.state.len())
            .finish()
    }
}

mod bytes_as_json {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        let value: &serde_json::value::RawValue =
            serde_json::from_slice(b).map_err(serde::ser::Error::custom)?;
        serde::Serialize::serialize(value, s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let value = Box::<serde_json::value::RawValue>::deserialize(d)?;
        Ok(Bytes::from(value.get().to_owned()))
    }
}

/// Where snapshots are kept: JetStream KV (`cim_nats::jetstream::KvSnapshotStore`) or memory.
#[async_trait]
pub trait SnapshotStore: Send + Sync + fmt::Debug {
    /// The latest snapshot of an aggregate, if any.
    ///
    /// # Errors
    ///
    /// From the backing store; an unreadable snapshot is `Ok(None)`, not an error.
    async fn load(
        &self,
        aggregate_type: &str,
        aggregate_id: &AggregateId,
    ) -> Result<Option<Snapshot>, StoreError>;

    /// Keeps a snapshot, replacing an older one of the same aggregate.
    ///
    /// # Errors
    ///
    /// From the backing store.
    async fn save(&self, snapshot: Snapshot) -> Result<(), StoreError>;
}

/// Snapshots in memory, for tests.
#[derive(Debug, Clone, Default)]
pub struct InMemorySnapshotStore {
    snapshots: Arc<Mutex<HashMap<(String, AggregateId), Snapshot>>>,
}

impl InMemorySnapshotStore {
    /// An empty snapshot store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl SnapshotStore for InMemorySnapshotStore {
    async fn load(
        &self,
        aggregate_type: &str,
        aggregate_id: &AggregateId,
    ) -> Result<Option<Snapshot>, StoreError> {
        let map = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        Ok(map
            .get(&(aggregate_type.to_owned(), aggregate_id.clone()))
            .cloned())
    }

    async fn save(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        let mut map = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        let key = (
            snapshot.aggregate_type.clone(),
            snapshot.aggregate_id.clone(),
        );
        match map.get(&key) {
            Some(existing) if existing.sequence > snapshot.sequence => {}
            _ => {
                map.insert(key, snapshot);
            }
        }
        Ok(())
    }
}
