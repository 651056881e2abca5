//! Aggregate snapshots in a JetStream KV bucket; those larger than one message in the object
//! store beside it.

use std::fmt;

use async_nats::jetstream::{self, kv, object_store};
use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::OnceCell;

use crate::jetstream::kv::{kv_key, open_bucket};
use crate::jetstream::setup::SetupError;
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::store::{StoreError, StoreErrorKind};
use crate::subject::AggregateId;

/// Room left in a message for what the server adds to a KV value's size check.
const HEADROOM: usize = 4096;

/// Aggregate snapshots in a JetStream KV bucket: one key per aggregate (history 1), its value
/// the [`Snapshot`] as JSON.
///
/// A snapshot larger than the server takes in one message (its `max_payload`, 1 MiB by default:
/// an infrastructure of a few thousand machines) is put in the object store `{bucket}_LARGE`
/// (created when first needed; the server keeps an object in chunks of 128 KiB), under the
/// aggregate's key, and the KV key holds a reference to it:
/// `{"object_store":"{bucket}_LARGE","object":"{key}","version":V,"size":BYTES}`. The object is
/// the whole snapshot, so a reader always gets one complete snapshot (the referenced one or a
/// newer one put meanwhile), and a missing or unreadable object is a missing snapshot (the
/// aggregate is then loaded from its events). An object left behind when the aggregate's
/// snapshot is small again is replaced by the next large one.
pub struct KvSnapshotStore {
    bucket: kv::Store,
    name: String,
    context: jetstream::Context,
    inline_limit: usize,
    large: OnceCell<object_store::ObjectStore>,
}

impl fmt::Debug for KvSnapshotStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvSnapshotStore")
            .field("bucket", &self.name)
            .field("inline_limit", &self.inline_limit)
            .finish()
    }
}

/// What the KV key holds for a snapshot kept in the object store.
#[derive(Debug, Serialize, Deserialize)]
struct Reference {
    object_store: String,
    object: String,
    version: u64,
    size: usize,
}

impl KvSnapshotStore {
    /// Opens the bucket `name`, creating it if needed.
    ///
    /// # Errors
    ///
    /// [`SetupError`] if the bucket cannot be opened or created.
    pub async fn new(client: async_nats::Client, name: &str) -> Result<Self, SetupError> {
        // What a snapshot may weigh to go in the key itself.
        let inline_limit = client.server_info().max_payload.saturating_sub(HEADROOM);
        let context = jetstream::new(client);
        let bucket = open_bucket(&context, name, "aggregate snapshots (cim-nats)", 1).await?;
        Ok(Self {
            bucket,
            name: name.to_owned(),
            context,
            inline_limit,
            large: OnceCell::new(),
        })
    }

    /// The object store for snapshots larger than one message: `{bucket}_LARGE`.
    pub fn large_store_name(&self) -> String {
        format!("{}_LARGE", self.name)
    }

    async fn large(&self) -> Result<&object_store::ObjectStore, StoreError> {
        self.large
            .get_or_try_init(|| async {
                let name = self.large_store_name();
                if let Ok(store) = self.context.get_object_store(&name).await {
                    return Ok(store);
                }
                let created = self
                    .context
                    .create_object_store(object_store::Config {
                        bucket: name.clone(),
                        description: Some(
                            "aggregate snapshots larger than one message (cim-nats)".to_owned(),
                        ),
                        storage: jetstream::stream::StorageType::File,
                        num_replicas: 1,
                        ..Default::default()
                    })
                    .await;
                match created {
                    Ok(store) => Ok(store),
                    // Another process may have created it meanwhile.
                    Err(e) => self
                        .context
                        .get_object_store(&name)
                        .await
                        .map_err(|_| bucket_error(&name, e)),
                }
            })
            .await
    }

    async fn load_large(&self, reference: Reference, id: &AggregateId) -> Option<Snapshot> {
        let store = match self.large().await {
            Ok(store) => store,
            Err(e) => {
                tracing::warn!(bucket = %reference.object_store, id = %id, error = %e, "large snapshot unreachable; ignored");
                return None;
            }
        };
        let read = async {
            let mut object = store
                .get(&reference.object)
                .await
                .map_err(|e| e.to_string())?;
            let mut bytes = Vec::with_capacity(reference.size);
            object
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| e.to_string())?;
            serde_json::from_slice::<Snapshot>(&bytes).map_err(|e| e.to_string())
        };
        match read.await {
            Ok(snapshot) if snapshot.aggregate_id == *id => Some(snapshot),
            Ok(snapshot) => {
                tracing::warn!(bucket = %reference.object_store, id = %id, holds = %snapshot.aggregate_id, "large snapshot of another aggregate; ignored");
                None
            }
            Err(e) => {
                tracing::warn!(bucket = %reference.object_store, object = %reference.object, id = %id, error = %e, "large snapshot missing or unreadable; ignored");
                None
            }
        }
    }
}

fn bucket_error(bucket: &str, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::with_source(
        StoreErrorKind::Bucket {
            bucket: bucket.to_owned(),
        },
        e,
    )
}

#[async_trait]
impl SnapshotStore for KvSnapshotStore {
    async fn load(
        &self,
        aggregate_type: &str,
        aggregate_id: &AggregateId,
    ) -> Result<Option<Snapshot>, StoreError> {
        let key = kv_key(aggregate_type, aggregate_id.as_str());
        let Some(value) = self
            .bucket
            .get(key)
            .await
            .map_err(|e| bucket_error(&self.name, e))?
        else {
            return Ok(None);
        };
        // A snapshot, or where it is (the snapshot's state is kept as raw JSON, which an
        // untagged enum cannot hold: the two are tried in turn).
        let inline = serde_json::from_slice::<Snapshot>(&value);
        match inline {
            Ok(s) => Ok(Some(s)),
            Err(e) => match serde_json::from_slice::<Reference>(&value) {
                Ok(reference) => Ok(self.load_large(reference, aggregate_id).await),
                Err(_) => {
                    tracing::warn!(bucket = %self.name, id = %aggregate_id, error = %e, "unreadable snapshot ignored");
                    Ok(None)
                }
            },
        }
    }

    async fn save(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        let key = kv_key(&snapshot.aggregate_type, snapshot.aggregate_id.as_str());
        let mut value = serde_json::to_vec(&snapshot)
            .map_err(|e| StoreError::with_source(StoreErrorKind::Encode, e))?;
        if value.len() > self.inline_limit {
            // The whole snapshot goes in the object store first; the key then points at it, so
            // that a reader never finds a reference to a snapshot not yet written.
            let store = self.large().await?;
            let size = value.len();
            store
                .put(key.as_str(), &mut value.as_slice())
                .await
                .map_err(|e| bucket_error(&self.large_store_name(), e))?;
            let reference = Reference {
                object_store: self.large_store_name(),
                object: key.clone(),
                version: snapshot.version,
                size,
            };
            value = serde_json::to_vec(&reference)
                .map_err(|e| StoreError::with_source(StoreErrorKind::Encode, e))?;
        }
        self.bucket
            .put(key, Bytes::from(value))
            .await
            .map_err(|e| bucket_error(&self.name, e))?;
        Ok(())
    }
}
