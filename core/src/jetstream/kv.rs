//! JetStream key-value buckets: aggregate snapshots, and the keys they are stored under.

use std::fmt;

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use bytes::Bytes;

use crate::jetstream::setup::{SetupError, SetupErrorKind};
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::store::{StoreError, StoreErrorKind};
use crate::subject::AggregateId;

/// A KV key for `(kind, id)`: `{kind}.r.{id}` when both are made of KV key characters, else
/// `{kind-hex}.h.{id-hex}`, so that any aggregate id maps to one valid key and no two ids share
/// one.
pub(crate) fn kv_key(kind: &str, id: &str) -> String {
    let plain = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='))
    };
    if plain(kind) && plain(id) {
        format!("{kind}.r.{id}")
    } else {
        format!("{}.h.{}", hex(kind), hex(id))
    }
}

fn hex(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len() * 2 + 1);
    out.push('x');
    for b in s.bytes() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Opens (creating it if needed) a KV bucket with history 1 on file storage.
pub(crate) async fn open_bucket(
    context: &jetstream::Context,
    bucket: &str,
    description: &str,
    replicas: usize,
) -> Result<kv::Store, SetupError> {
    if let Ok(store) = context.get_key_value(bucket).await {
        return Ok(store);
    }
    let created = context
        .create_key_value(kv::Config {
            bucket: bucket.to_owned(),
            description: description.to_owned(),
            history: 1,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        })
        .await;
    match created {
        Ok(store) => Ok(store),
        // Another process may have created it meanwhile.
        Err(e) => context.get_key_value(bucket).await.map_err(|_| {
            SetupError::with_source(
                SetupErrorKind::Bucket {
                    bucket: bucket.to_owned(),
                },
                e,
            )
        }),
    }
}

/// Aggregate snapshots in a JetStream KV bucket (one key per aggregate, history 1).
#[derive(Clone)]
pub struct KvSnapshotStore {
    bucket: kv::Store,
    name: String,
}

impl fmt::Debug for KvSnapshotStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvSnapshotStore")
            .field("bucket", &self.name)
            .finish()
    }
}

impl KvSnapshotStore {
    /// Opens the bucket `name`, creating it if needed.
    ///
    /// # Errors
    ///
    /// [`SetupError`] if the bucket cannot be opened or created.
    pub async fn new(client: async_nats::Client, name: &str) -> Result<Self, SetupError> {
        let context = jetstream::new(client);
        let bucket = open_bucket(&context, name, "aggregate snapshots (cim-nats)", 1).await?;
        Ok(Self {
            bucket,
            name: name.to_owned(),
        })
    }
}

fn kv_error(bucket: &str, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
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
            .map_err(|e| kv_error(&self.name, e))?
        else {
            return Ok(None);
        };
        match serde_json::from_slice::<Snapshot>(&value) {
            Ok(s) => Ok(Some(s)),
            Err(e) => {
                tracing::warn!(bucket = %self.name, id = %aggregate_id, error = %e, "unreadable snapshot ignored");
                Ok(None)
            }
        }
    }

    async fn save(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        let key = kv_key(&snapshot.aggregate_type, snapshot.aggregate_id.as_str());
        let value = serde_json::to_vec(&snapshot)
            .map_err(|e| StoreError::with_source(StoreErrorKind::Encode, e))?;
        self.bucket
            .put(key, Bytes::from(value))
            .await
            .map_err(|e| kv_error(&self.name, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_valid_and_distinct() {
        assert_eq!(kv_key("account", "a-1"), "account.r.a-1");
        let odd = kv_key("account", "a:b/c");
        assert!(odd.starts_with("x6163636f756e74.h.x"), "{odd}");
        assert_ne!(kv_key("account", "x61"), kv_key("account", "a"));
        assert_ne!(kv_key("a", "b:c"), kv_key("a", "b;c"));
    }
}
