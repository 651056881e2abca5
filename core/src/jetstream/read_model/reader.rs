//! [`ReadModel`]: typed reads of a read model from any process, following its pointer to the
//! live bucket.

use std::marker::PhantomData;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;

use super::{
    checkpoint_key, Checkpoint, CheckpointFront, Pointer, ReadModelOptions, CHECKPOINT_PREFIX,
};
use crate::envelope::StreamSequence;
use crate::jetstream::kv::{row_id, row_key};
use crate::projection::ProjectionError;
use crate::store::{StoreError, StoreErrorKind};

/// The pointer of model `name` and its revision, if there is one.
pub(super) async fn read_pointer(
    pointers: &kv::Store,
    name: &str,
) -> Result<Option<(Pointer, u64)>, String> {
    let entry = pointers.entry(name).await.map_err(|e| e.to_string())?;
    match entry {
        Some(entry) if entry.operation == kv::Operation::Put => {
            let pointer = serde_json::from_slice::<Pointer>(&entry.value)
                .map_err(|e| format!("the pointer of {name} does not decode: {e}"))?;
            Ok(Some((pointer, entry.revision)))
        }
        _ => Ok(None),
    }
}

/// The checkpoint of partition `partition` of a model's bucket and its revision, if there is
/// one.
pub(super) async fn read_checkpoint(
    bucket: &kv::Store,
    partition: u32,
) -> Result<Option<(Checkpoint, u64)>, String> {
    let key = checkpoint_key(partition);
    let entry = bucket.entry(&key).await.map_err(|e| e.to_string())?;
    match entry {
        Some(entry) if entry.operation == kv::Operation::Put => {
            let checkpoint = serde_json::from_slice::<Checkpoint>(&entry.value)
                .map_err(|e| format!("the checkpoint {key} does not decode: {e}"))?;
            Ok(Some((checkpoint, entry.revision)))
        }
        _ => Ok(None),
    }
}

/// The sequence the model in `bucket` reflects: the smallest of its partitions' checkpoints
/// (0 while one has none).
pub(super) async fn model_sequence(bucket: &kv::Store) -> Result<u64, String> {
    Ok(model_front(bucket)
        .await?
        .map_or(0, |(_, sequence)| sequence))
}

/// How many partitions the model in `bucket` is worked as (as its partition 0's checkpoint
/// says) and the smallest of their checkpoints; `None` while one of them has none.
pub(super) async fn model_front(bucket: &kv::Store) -> Result<Option<(u32, u64)>, String> {
    let Some((first, _)) = read_checkpoint(bucket, 0).await? else {
        return Ok(None);
    };
    let mut front = CheckpointFront::default();
    let mut reached = front.observe(&first);
    for partition in 1..first.partitions {
        match read_checkpoint(bucket, partition).await? {
            Some((c, _)) => reached = front.observe(&c),
            None => return Ok(None),
        }
    }
    Ok(reached.map(|sequence| (first.partitions, sequence)))
}

/// Every checkpoint in `bucket` (the last value of each `_cim.checkpoint.*` key), whatever
/// partitioning wrote it.
pub(super) async fn read_checkpoints(
    client: &async_nats::Client,
    bucket: &kv::Store,
) -> Result<Vec<Checkpoint>, String> {
    let latest = latest_per_key(client, bucket, &format!("{CHECKPOINT_PREFIX}.>"), false).await?;
    latest
        .into_iter()
        .filter_map(|(key, value)| Some((key, value?)))
        .map(|(key, value)| {
            serde_json::from_slice::<Checkpoint>(&value)
                .map_err(|e| format!("the checkpoint {key} does not decode: {e}"))
        })
        .collect()
}

/// The last message of each key of `bucket` matching `keys` (a KV key filter, wildcards
/// allowed), as `kv::Store::keys` reads the whole bucket: its key, and its value (`None` for a
/// deleted key; empty when `headers_only`).
async fn latest_per_key(
    client: &async_nats::Client,
    bucket: &kv::Store,
    keys: &str,
    headers_only: bool,
) -> Result<Vec<(String, Option<bytes::Bytes>)>, String> {
    let name = &bucket.name;
    let consumer = bucket
        .stream
        .create_consumer(jetstream::consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            description: Some("read model keys (cim-nats)".to_owned()),
            filter_subject: format!("$KV.{name}.{keys}"),
            headers_only,
            replay_policy: jetstream::consumer::ReplayPolicy::Instant,
            deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut found = Vec::new();
    if consumer.cached_info().num_pending == 0 {
        return Ok(found);
    }
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    let prefix = format!("$KV.{name}.");
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| e.to_string())?;
        let pending = message.info().map_err(|e| e.to_string())?.pending;
        let deleted = message
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .is_some_and(|op| op.as_str() != "PUT");
        if let Some(key) = message.subject.as_str().strip_prefix(&prefix) {
            found.push((key.to_owned(), (!deleted).then(|| message.payload.clone())));
        }
        if pending == 0 {
            break;
        }
    }
    Ok(found)
}

/// One message of a read model's bucket, as [`follow_bucket`] reads it.
#[derive(Debug, Clone)]
pub struct BucketEntry {
    /// The key (a checkpoint's, [`super::checkpoint_partition`], or a row's:
    /// [`super::parse_row_key`]).
    pub key: String,
    /// The value; `None` for a deleted row.
    pub value: Option<bytes::Bytes>,
    /// The message's stream sequence in the bucket.
    pub revision: u64,
}

/// Every message of read-model bucket `bucket` from its first, in order and without a gap, then
/// each new one as it is stored: with history 1, that is every row as it stands, then its
/// changes. Read through the same ordered reader as the event streams (pull-based, gap-checked,
/// resumed after a reconnection), not a push watch.
pub fn follow_bucket(
    client: async_nats::Client,
    bucket: &str,
    timeout: Duration,
) -> impl Stream<Item = Result<BucketEntry, StoreError>> + Send + 'static {
    let prefix = format!("$KV.{bucket}.");
    let reader = crate::jetstream::reader::OrderedReader::start(
        client,
        crate::jetstream::reader::ReadSpec {
            stream: format!("KV_{bucket}"),
            filter: None,
            start: crate::jetstream::reader::Start::Sequence(1),
            follow: true,
            timeout,
        },
    );
    futures::stream::unfold(reader, |mut reader| async move {
        let chunk = reader.next().await?;
        Some((chunk, reader))
    })
    .flat_map(move |chunk| {
        let prefix = prefix.clone();
        let entries: Vec<Result<BucketEntry, StoreError>> = match chunk {
            Err(e) => vec![Err(e)],
            Ok(messages) => messages
                .into_iter()
                .map(|m| {
                    let deleted = m
                        .headers
                        .get("KV-Operation")
                        .is_some_and(|op| op.as_str() != "PUT");
                    Ok(BucketEntry {
                        key: m
                            .subject
                            .strip_prefix(&prefix)
                            .unwrap_or(&m.subject)
                            .to_owned(),
                        value: (!deleted).then_some(m.payload),
                        revision: m.sequence,
                    })
                })
                .collect(),
        };
        futures::stream::iter(entries)
    })
}

/// A change to a row, as [`ReadModel::watch`] sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum RowChange<R> {
    /// The row was written.
    Put {
        /// The row's id.
        id: String,
        /// The row.
        row: R,
    },
    /// The row was deleted.
    Deleted {
        /// The row's id.
        id: String,
    },
}

/// Typed reads of read model `name` with rows of type `R`, from any process: the live bucket is
/// found through the pointer (and found again by [`ReadModel::refresh`] after a version switch).
pub struct ReadModel<R> {
    name: String,
    client: async_nats::Client,
    pointers: kv::Store,
    context: jetstream::Context,
    pointer: Pointer,
    bucket: kv::Store,
    _row: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for ReadModel<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadModel")
            .field("name", &self.name)
            .field("bucket", &self.pointer.bucket)
            .field("version", &self.pointer.version)
            .finish_non_exhaustive()
    }
}

fn error(name: &str, bucket: &str, e: impl std::fmt::Display) -> ProjectionError {
    ProjectionError::Store {
        projection: name.to_owned(),
        source: StoreError::with_source(
            StoreErrorKind::Bucket {
                bucket: bucket.to_owned(),
            },
            e.to_string(),
        ),
    }
}

impl<R: DeserializeOwned> ReadModel<R> {
    /// Opens read model `name` (its live version, as the pointer in
    /// [`ReadModelOptions::pointer_bucket`] says).
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Store`] when the pointer or the bucket cannot be read, or the model
    /// has no live version yet.
    pub async fn open(
        client: async_nats::Client,
        name: &str,
        options: &ReadModelOptions,
    ) -> Result<Self, ProjectionError> {
        let context = jetstream::new(client.clone());
        let pointers = context
            .get_key_value(&options.pointer_bucket)
            .await
            .map_err(|e| error(name, &options.pointer_bucket, e))?;
        let (pointer, bucket) = Self::follow(&context, &pointers, name).await?;
        Ok(Self {
            name: name.to_owned(),
            client,
            pointers,
            context,
            pointer,
            bucket,
            _row: PhantomData,
        })
    }

    async fn follow(
        context: &jetstream::Context,
        pointers: &kv::Store,
        name: &str,
    ) -> Result<(Pointer, kv::Store), ProjectionError> {
        let (pointer, _) = read_pointer(pointers, name)
            .await
            .map_err(|e| error(name, "pointer", e))?
            .ok_or_else(|| {
                error(
                    name,
                    "pointer",
                    format!("read model {name} has no live version"),
                )
            })?;
        let bucket = context
            .get_key_value(&pointer.bucket)
            .await
            .map_err(|e| error(name, &pointer.bucket, e))?;
        Ok((pointer, bucket))
    }

    /// Follows the pointer again (after a new version or a rebuild went live); `true` when it
    /// moved to another bucket.
    ///
    /// # Errors
    ///
    /// As [`ReadModel::open`].
    pub async fn refresh(&mut self) -> Result<bool, ProjectionError> {
        let (pointer, bucket) = Self::follow(&self.context, &self.pointers, &self.name).await?;
        let moved = pointer.bucket != self.pointer.bucket;
        self.pointer = pointer;
        self.bucket = bucket;
        Ok(moved)
    }

    /// The pointer this reader follows: the live bucket and its version.
    pub fn pointer(&self) -> &Pointer {
        &self.pointer
    }

    fn key(&self, table: &str, id: &str) -> Result<String, ProjectionError> {
        row_key(table, id).ok_or_else(|| {
            error(
                &self.name,
                &self.pointer.bucket,
                format!("{table:?} cannot be a table name"),
            )
        })
    }

    /// Row `id` of `table`, as last committed.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Store`] when it cannot be read or does not decode as `R`.
    pub async fn get(&self, table: &str, id: &str) -> Result<Option<R>, ProjectionError> {
        let key = self.key(table, id)?;
        let value = match self.bucket.get(&key).await {
            Ok(value) => value,
            Err(first) => {
                // The bucket may have been retired under this reader by a new version: read
                // through the pointer as it is now ([`ReadModel::refresh`] keeps it).
                let (pointer, bucket) =
                    Self::follow(&self.context, &self.pointers, &self.name).await?;
                if pointer.bucket == self.pointer.bucket {
                    return Err(error(&self.name, &self.pointer.bucket, first));
                }
                bucket
                    .get(&key)
                    .await
                    .map_err(|e| error(&self.name, &pointer.bucket, e))?
            }
        };
        value
            .map(|v| {
                serde_json::from_slice(&v).map_err(|e| {
                    error(
                        &self.name,
                        &self.pointer.bucket,
                        format!("row {key} does not decode: {e}"),
                    )
                })
            })
            .transpose()
    }

    /// The ids of the rows of `table`.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Store`] when the keys cannot be listed.
    pub async fn ids(&self, table: &str) -> Result<Vec<String>, ProjectionError> {
        self.key(table, "x")?;
        let latest = latest_per_key(&self.client, &self.bucket, &format!("{table}.>"), true)
            .await
            .map_err(|e| error(&self.name, &self.pointer.bucket, e))?;
        Ok(latest
            .into_iter()
            .filter(|(_, value)| value.is_some())
            .filter_map(|(key, _)| row_id(table, &key))
            .collect())
    }

    /// Changes to the rows of `table` from now on.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Store`] when the watch cannot be set up.
    pub async fn watch(
        &self,
        table: &str,
    ) -> Result<impl Stream<Item = Result<RowChange<R>, ProjectionError>> + Send, ProjectionError>
    where
        R: Send + 'static,
    {
        let filter = format!("{table}.>");
        self.key(table, "x")?;
        let watch = self
            .bucket
            .watch(filter)
            .await
            .map_err(|e| error(&self.name, &self.pointer.bucket, e))?;
        let (name, bucket, table) = (
            self.name.clone(),
            self.pointer.bucket.clone(),
            table.to_owned(),
        );
        Ok(watch.filter_map(move |entry| {
            let (name, bucket, table) = (name.clone(), bucket.clone(), table.clone());
            async move {
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(e) => return Some(Err(error(&name, &bucket, e))),
                };
                let id = row_id(&table, &entry.key)?;
                Some(match entry.operation {
                    kv::Operation::Put => serde_json::from_slice(&entry.value)
                        .map(|row| RowChange::Put { id, row })
                        .map_err(|e| error(&name, &bucket, e)),
                    _ => Ok(RowChange::Deleted { id }),
                })
            }
        }))
    }

    /// The stream sequence the rows reflect: the smallest of the partitions' checkpoints (0:
    /// nothing committed yet).
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Store`] when a checkpoint cannot be read.
    pub async fn checkpoint(&self) -> Result<StreamSequence, ProjectionError> {
        model_sequence(&self.bucket)
            .await
            .map(StreamSequence)
            .map_err(|e| error(&self.name, &self.pointer.bucket, e))
    }

    /// Waits until the rows reflect the event at `sequence` (read your own writes, from any
    /// process), watching the checkpoint keys.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Timeout`] after `timeout`; [`ProjectionError::Store`] when the
    /// checkpoints cannot be watched.
    pub async fn wait_for(
        &self,
        sequence: StreamSequence,
        timeout: Duration,
    ) -> Result<(), ProjectionError> {
        let mut watch = self
            .bucket
            .watch_with_history(format!("{CHECKPOINT_PREFIX}.>"))
            .await
            .map_err(|e| error(&self.name, &self.pointer.bucket, e))?;
        let mut reached = 0;
        let mut front = CheckpointFront::default();
        let waited = tokio::time::timeout(timeout, async {
            while let Some(entry) = watch.next().await {
                let entry = entry.map_err(|e| error(&self.name, &self.pointer.bucket, e))?;
                if let Ok(c) = serde_json::from_slice::<Checkpoint>(&entry.value) {
                    if let Some(at) = front.observe(&c) {
                        reached = at;
                        if at >= sequence.0 {
                            return Ok(());
                        }
                    }
                }
            }
            Err(error(
                &self.name,
                &self.pointer.bucket,
                "the checkpoint watch ended",
            ))
        })
        .await;
        match waited {
            Ok(result) => result,
            Err(_) => Err(ProjectionError::Timeout {
                projection: self.name.clone(),
                wanted: sequence.0,
                reached,
            }),
        }
    }
}
