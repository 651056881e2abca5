//! Read models kept per key in a JetStream KV bucket: a [`KeyedProjection`] says how an event
//! changes rows; the runner ([`ReadModelRunner`]) applies events, collects the rows they changed
//! and commits those rows **and** its checkpoint in one JetStream atomic batch on the bucket's
//! stream, fenced by an expectation on the checkpoint key. Any NATS client reads the model with a
//! plain KV get or watch; [`ReadModel`] is the typed reader, from any process.
//!
//! # Wire format
//!
//! - The live bucket of read model `NAME` is named by the key `NAME` of the bucket
//!   `READ_MODELS` (the pointer, JSON `{"bucket": "RM_NAME_V1", "version": 1}`); version `V` of
//!   the model lives in the bucket `RM_NAME_V{V}` (prefix [`ReadModelOptions::prefix`]), and
//!   after its `g`-th rebuild in `RM_NAME_V{V}_G{g}`, the pointer then saying `"generation": g`
//!   (absent: 0). While a rebuild is under way the pointer also holds
//!   `"rebuild": {"bucket", "generation", "target"}` ([`Pointer`], [`Rebuild`]).
//! - Row `id` of table `table` is the key `{table}.r.{id}`, or `{table}.h.x{hex of id}` when the id
//!   has characters KV keys do not allow; its value is the row as JSON. A deleted row is a KV
//!   delete (`KV-Operation: DEL`).
//! - The checkpoint of partition `p` is the key `_cim.checkpoint.{p}` ([`checkpoint_key`]): JSON
//!   `{"name", "version", "partition", "partitions", "stream", "sequence", "skipped", "writer"}`
//!   and, for a partition read from a partitioned view, `"view_sequence"` ([`Checkpoint`]),
//!   `sequence` being the last event stream sequence whose effect that partition's rows hold
//!   (and `view_sequence` the sequence in the view's stream, `{STREAM}_PARTITIONED`, up to which
//!   the partition has read: where its runner resumes). A model is worked as `partitions`
//!   partitions, each committing its own rows fenced by its own checkpoint key; a model run by
//!   one runner ([`ReadModelRunner::start`]) is one partition, key `_cim.checkpoint.0` with
//!   `"partitions": 1`; partition `p` of `n` run from the partitioned view
//!   ([`ReadModelRunner::start_partition`]) reads only the events of the aggregates of partition
//!   `p` ([`crate::jetstream::partition_of`]). The model reflects every event up to the smallest
//!   `sequence` of its `partitions` checkpoints (a missing one counts as 0):
//!   [`CheckpointFront`]. A partition without events of its own still moves its `sequence` on to
//!   the last event its view holds, so that it does not hold the model back.
//!
//! # Consistency
//!
//! One commit is one atomic batch: its rows, then its checkpoint, stored together or not at
//! all; a batch whose fence (the expected last sequence of the checkpoint key) is stale is
//! refused whole, so a second runner that lost the race writes nothing. A reader of the bucket's
//! messages in order (a KV watch, [`follow_bucket`]) has every row of a commit once it sees the
//! commit's checkpoint. A batch holds at most 1,000 messages (the server's limit): 999 rows and
//! the checkpoint. The runner commits at event boundaries, so between two batches a reader sees
//! the model as of a checkpoint; an event that changes more than 999 rows stops the runner with
//! [`ProjectionError::Apply`] (it could not be committed atomically).
//!
//! # Rebuilds
//!
//! A running runner rebuilds its model on request, without a new version (after a fix to
//! `apply` that keeps the rows' meaning, or to drop what a bug wrote): [`request_rebuild`] asks
//! on [`rebuild_subject`] (`_CIM.rebuild.{pointer bucket}.{NAME}`, served in a queue group by
//! every runner whose version is live; `cim-nats projection rebuild NAME` from the command
//! line). The runner that takes the request makes the bucket of the next generation, records
//! the rebuild in the pointer (an update expecting the pointer's revision) with its target, the
//! stream's last event now, and answers at once ([`RebuildAnswer`]: accepted, or the rebuild
//! already under way, or why not). Every runner of the model then builds its partition into the
//! new bucket from the start of the stream, beside the live bucket, which keeps serving readers
//! and keeps being updated; both runs are in the runner's one task. Once the new bucket's
//! checkpoints have all reached the target (and this runner's new bucket is as far as its live
//! one), the pointer moves to it, by an update expecting its revision as for a new version:
//! readers follow, the runner goes on in the new bucket as the live one (its
//! [`ReadModelHandle`] speaks of it), and the old bucket is deleted
//! [`ReadModelOptions::retire_after`] later. A runner started afterwards opens the generation
//! the pointer names.
//!
//! A model worked as partitions ([`ReadModelRunner::start_partition`]) is rebuilt by each
//! partition's runner, each committing its partition fenced on its own checkpoint key in the
//! new bucket; the pointer moves when every partition has reached the target. A rebuild waits
//! for a partition whose runner is not running.
//!
//! Readers never see a half-built bucket: the pointer moves only once it has caught up. A
//! runner that stops (or crashes) during a rebuild leaves it recorded in the pointer and the
//! new bucket as far as its last commit (rows and checkpoint are committed together): a runner
//! started again resumes the rebuild from that checkpoint. A rebuild that fails (an event
//! `apply` refuses, a bucket that cannot be written) is given up: the record is cleared from
//! the pointer, the new bucket deleted, and the live bucket stays, its runner going on. A new
//! version going live gives up a rebuild of the older one (its bucket is deleted).

mod commit;
mod partitioned;
mod reader;
mod rebuild;
mod supervisor;

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use lru::LruCache;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::envelope::{Envelope, StreamSequence};
use crate::event::NatsEvent;
use crate::jetstream::order::VersionOrder;
use crate::jetstream::read::decode_in_order;
use crate::jetstream::reader::{OrderedReader, Progress, ReadSpec, Start};
use crate::jetstream::store::JetStreamEventStore;
use crate::projection::{OnUnreadable, ProjectionError};
use crate::store::is_check_marker;
use crate::store::{StoreError, StoreErrorKind};
use crate::typed::decode_envelope;

pub use commit::MAX_ROWS_PER_COMMIT;
pub use reader::{follow_bucket, BucketEntry, ReadModel, RowChange};
pub use rebuild::{rebuild_subject, request_rebuild, RebuildAnswer};

use commit::Committer;
use partitioned::ViewFeed;

/// The prefix of the checkpoint keys in a read model's bucket: partition `p`'s is
/// `{CHECKPOINT_PREFIX}.{p}` ([`checkpoint_key`]).
pub const CHECKPOINT_PREFIX: &str = "_cim.checkpoint";

/// The checkpoint key of partition `partition` (`_cim.checkpoint.0` for a model run as one).
pub fn checkpoint_key(partition: u32) -> String {
    format!("{CHECKPOINT_PREFIX}.{partition}")
}

/// The partition whose checkpoint `key` is (`None` for a row's key).
pub fn checkpoint_partition(key: &str) -> Option<u32> {
    key.strip_prefix(CHECKPOINT_PREFIX)?
        .strip_prefix('.')?
        .parse()
        .ok()
}

/// The KV key of row `id` of `table` (see the module's wire format); `None` for a table name KV
/// keys cannot hold or that starts with `_`.
pub fn row_key(table: &str, id: &str) -> Option<String> {
    crate::jetstream::kv::row_key(table, id)
}

/// The table and row id of a read model's key (`None` for the checkpoint and foreign keys).
pub fn parse_row_key(key: &str) -> Option<(String, String)> {
    let (table, _) = key.split_once('.')?;
    if table.starts_with('_') {
        return None;
    }
    crate::jetstream::kv::row_id(table, key).map(|id| (table.to_owned(), id))
}

/// A read model kept per key: how each event changes its rows.
///
/// `apply` is called once per event, in stream order; it reads rows with [`Rows::get`] (the
/// rows as the events before this one left them) and writes with [`Rows::put`] and
/// [`Rows::delete`]. The runner commits the rows an event changed together with the checkpoint
/// after it, so each event's effect is stored exactly once, even across crashes. Bump
/// [`KeyedProjection::VERSION`] when `apply` changes meaning: the new version is built into a new
/// bucket while readers keep the old one, and they switch when it has caught up.
#[async_trait]
pub trait KeyedProjection: Send + Sync + 'static {
    /// The domain events it reads.
    type Event: NatsEvent;
    /// A row, stored as JSON.
    type Row: Serialize + DeserializeOwned + Clone + Send + Sync + 'static;
    /// Its name (letters, digits, `-` and `_`): part of its bucket's name and its pointer key.
    const NAME: &'static str;
    /// Its version; a new one is built into a bucket of its own.
    const VERSION: u32 = 1;

    /// Applies one event to the rows.
    ///
    /// # Errors
    ///
    /// A reason to stop the runner (the event is not considered applied; nothing of it is
    /// stored).
    async fn apply(
        &self,
        event: &Envelope<Self::Event>,
        rows: &mut Rows<'_, Self::Row>,
    ) -> Result<(), ProjectionError>;
}

/// A change one event made to a row: the new row, or `None` for a delete.
type Change<R> = Option<R>;

/// The rows as an event sees them: what earlier events left (committed or not), and the
/// changes it makes.
pub struct Rows<'a, R> {
    rows: &'a mut RowState<R>,
    sequence: u64,
}

impl<R> fmt::Debug for Rows<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rows")
            .field("sequence", &self.sequence)
            .field("changed", &self.rows.event.len())
            .finish_non_exhaustive()
    }
}

/// The runner's view of the rows: changes of the current event, changes not yet committed, and
/// a bounded cache of committed rows (the runner is the only writer, so the cache stays true).
struct RowState<R> {
    bucket: kv::Store,
    event: HashMap<String, Change<R>>,
    /// Changes not committed yet: the row, and its JSON (made when the event was applied, so
    /// that a row too large is found at its event).
    pending: HashMap<String, (Change<R>, Option<bytes::Bytes>)>,
    /// Changes sent in the commit on its way.
    in_flight: HashMap<String, Change<R>>,
    cache: LruCache<String, Change<R>>,
    /// Does the cache hold every row there is (the model started empty and nothing was evicted)?
    /// Then a row it lacks does not exist, and is not asked for.
    complete: bool,
    name: &'static str,
}

impl<R> RowState<R> {
    /// Keeps a committed row in the cache; an eviction ends `complete`.
    fn remember(&mut self, key: String, row: Change<R>) {
        if let Some((evicted, _)) = self.cache.push(key.clone(), row) {
            if evicted != key {
                self.complete = false;
            }
        }
    }
}

impl<R: Serialize + DeserializeOwned + Clone> Rows<'_, R> {
    fn key(&self, table: &str, id: &str) -> Result<String, ProjectionError> {
        row_key(table, id).ok_or_else(|| ProjectionError::Apply {
            projection: self.rows.name.to_owned(),
            sequence: self.sequence,
            reason: format!(
                "table name {table:?} is not made of letters, digits, '-', '_' and '=' (or starts \
                 with '_', which is reserved)"
            ),
        })
    }

    /// The row `id` of `table`, as the events before this one (and this one so far) left it.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Apply`] for a table name KV keys cannot hold;
    /// [`ProjectionError::Store`] if the row cannot be read.
    pub async fn get(&mut self, table: &str, id: &str) -> Result<Option<R>, ProjectionError> {
        let key = self.key(table, id)?;
        let rows = &mut *self.rows;
        if let Some(change) = rows
            .event
            .get(&key)
            .or_else(|| rows.pending.get(&key).map(|(row, _)| row))
            .or_else(|| rows.in_flight.get(&key))
        {
            return Ok(change.clone());
        }
        if let Some(row) = rows.cache.get(&key) {
            return Ok(row.clone());
        }
        if rows.complete {
            return Ok(None);
        }
        let stored = rows
            .bucket
            .get(&key)
            .await
            .map_err(|e| ProjectionError::Store {
                projection: rows.name.to_owned(),
                source: StoreError::with_source(StoreErrorKind::Connection, e),
            })?;
        let row =
            match stored {
                None => None,
                Some(bytes) => Some(serde_json::from_slice::<R>(&bytes).map_err(|e| {
                    ProjectionError::Apply {
                        projection: rows.name.to_owned(),
                        sequence: self.sequence,
                        reason: format!("row {key} does not decode: {e}"),
                    }
                })?),
            };
        rows.remember(key, row.clone());
        Ok(row)
    }

    /// Sets row `id` of `table` to `row`.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Apply`] for a table name KV keys cannot hold.
    pub fn put(&mut self, table: &str, id: &str, row: R) -> Result<(), ProjectionError> {
        let key = self.key(table, id)?;
        self.rows.event.insert(key, Some(row));
        Ok(())
    }

    /// Deletes row `id` of `table` (nothing if there is none).
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Apply`] for a table name KV keys cannot hold.
    pub fn delete(&mut self, table: &str, id: &str) -> Result<(), ProjectionError> {
        let key = self.key(table, id)?;
        self.rows.event.insert(key, None);
        Ok(())
    }

    /// The stream sequence of the event being applied.
    pub fn sequence(&self) -> StreamSequence {
        StreamSequence(self.sequence)
    }
}

/// How a read-model runner names its buckets, commits and treats unreadable events.
#[derive(Debug, Clone)]
pub struct ReadModelOptions {
    /// The prefix of the model's buckets: version `V` of model `NAME` is `{prefix}_{NAME}_V{V}`.
    pub prefix: String,
    /// The bucket of pointers to each model's live bucket (key: the model's name).
    pub pointer_bucket: String,
    /// Commit after this many events...
    pub commit_every: u64,
    /// ... or after this long with uncommitted events, whichever comes first (and at once when
    /// a caller waits for a sequence: [`ReadModelHandle::wait_for`]).
    pub commit_interval: Duration,
    /// Skip-and-record or stop on an event that cannot be read or decoded.
    pub on_unreadable: OnUnreadable,
    /// Committed rows kept in memory for `apply`'s reads.
    pub cached_rows: usize,
    /// How long the bucket of the version a new one replaced is kept after the switch, for
    /// readers still on it to follow the pointer.
    pub retire_after: Duration,
}

impl Default for ReadModelOptions {
    fn default() -> Self {
        Self {
            prefix: "RM".to_owned(),
            pointer_bucket: "READ_MODELS".to_owned(),
            commit_every: 1000,
            commit_interval: Duration::from_millis(200),
            on_unreadable: OnUnreadable::Stop,
            cached_rows: 100_000,
            retire_after: Duration::from_secs(10),
        }
    }
}

impl ReadModelOptions {
    /// The bucket of version `version` of model `name` (its first generation).
    pub fn bucket(&self, name: &str, version: u32) -> String {
        format!("{}_{name}_V{version}", self.prefix)
    }

    /// The bucket of generation `generation` of version `version` of model `name`:
    /// [`ReadModelOptions::bucket`] for generation 0, `{prefix}_{NAME}_V{V}_G{generation}` for
    /// the buckets rebuilds build.
    pub fn generation_bucket(&self, name: &str, version: u32, generation: u32) -> String {
        match generation {
            0 => self.bucket(name, version),
            g => format!("{}_G{g}", self.bucket(name, version)),
        }
    }
}

/// A partition's checkpoint, as stored under [`checkpoint_key`] (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The read model's name.
    pub name: String,
    /// Its version.
    pub version: u32,
    /// The partition this checkpoint is of.
    #[serde(default)]
    pub partition: u32,
    /// How many partitions the model is worked as.
    #[serde(default = "one")]
    pub partitions: u32,
    /// The event stream the model reads (for its lag: that stream's last sequence less
    /// `sequence`).
    #[serde(default)]
    pub stream: String,
    /// The last event stream sequence whose effect the partition's rows hold.
    pub sequence: u64,
    /// For a partition read from a partitioned view ([`ReadModelRunner::start_partition`]): the
    /// last sequence of the view's stream the partition has read up to (its runner resumes
    /// after it). Absent for a model read from the event stream, and in checkpoints written
    /// before it was recorded (a partition runner then reads its view from the beginning and
    /// skips the events up to `sequence`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view_sequence: Option<u64>,
    /// Events skipped as unreadable ([`OnUnreadable::SkipAndRecord`]): the last 1,000.
    #[serde(default)]
    pub skipped: Vec<crate::jetstream::Skipped>,
    /// The runner instance that wrote it (a runner recognises its own commit by it after a lost
    /// answer).
    #[serde(default)]
    pub writer: String,
}

fn one() -> u32 {
    1
}

/// The sequence a model reflects, from its partitions' checkpoints as they come (a KV watch
/// of `_cim.checkpoint.>`, or [`follow_bucket`]): the smallest of them, once each partition has
/// one.
#[derive(Debug, Clone, Default)]
pub struct CheckpointFront {
    partitions: u32,
    sequences: std::collections::BTreeMap<u32, u64>,
}

impl CheckpointFront {
    /// Takes a partition's checkpoint; returns the sequence the whole model now reflects, when
    /// every partition has a checkpoint.
    pub fn observe(&mut self, checkpoint: &Checkpoint) -> Option<u64> {
        if checkpoint.partitions != self.partitions {
            // Another partitioning: the checkpoints of the former one no longer count.
            self.partitions = checkpoint.partitions;
            self.sequences.clear();
        }
        self.sequences
            .insert(checkpoint.partition, checkpoint.sequence);
        self.sequence()
    }

    /// The sequence the whole model reflects: the smallest of its partitions' checkpoints;
    /// `None` while a partition has none.
    pub fn sequence(&self) -> Option<u64> {
        if self.partitions == 0 || self.sequences.len() < self.partitions as usize {
            return None;
        }
        self.sequences.values().copied().min()
    }
}

/// The pointer to a model's live bucket, stored in [`ReadModelOptions::pointer_bucket`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointer {
    /// The live bucket.
    pub bucket: String,
    /// Its model version.
    pub version: u32,
    /// Its generation ([`ReadModelOptions::generation_bucket`]): 0, absent from the JSON, for
    /// the version's first bucket (so pointers written before rebuilds existed read as
    /// generation 0); each rebuild builds the next one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u32,
    /// The rebuild of the live version under way, if one is (absent from the JSON otherwise):
    /// its runners build it beside the live bucket, and the pointer moves to it (this field
    /// cleared) once it has caught up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<Rebuild>,
}

impl Pointer {
    /// The pointer to generation `generation` of version `version` in `bucket`, no rebuild
    /// under way.
    pub fn new(bucket: impl Into<String>, version: u32, generation: u32) -> Self {
        Self {
            bucket: bucket.into(),
            version,
            generation,
            rebuild: None,
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A rebuild under way, as the pointer records it ([`Pointer::rebuild`]): the live version is
/// built again from the start of the stream into a bucket of a new generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rebuild {
    /// The bucket it builds into (`{prefix}_{NAME}_V{V}_G{generation}`).
    pub bucket: String,
    /// Its generation (the live one's plus one).
    pub generation: u32,
    /// The event stream's last sequence when it was asked for: the pointer moves to the new
    /// bucket once every partition's checkpoint there has reached it and its runner has caught
    /// up with the stream.
    pub target: u64,
}

/// How far a read model is behind its stream ([`ReadModelHandle::lag`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lag {
    /// The last stream sequence the runner read.
    pub read: StreamSequence,
    /// The sequence its rows are committed up to (what readers see).
    pub committed: StreamSequence,
    /// Events of the model's domain stored after `read`, as the server last said.
    pub pending: u64,
}

/// Starts read models on a [`JetStreamEventStore`].
#[derive(Debug, Clone, Copy)]
pub struct ReadModelRunner;

/// A running read model: its progress, waiting for a sequence, stopping it.
///
/// After a rebuild went live ([`request_rebuild`]) the handle speaks of the new bucket: its
/// runner goes on there, and [`ReadModelHandle::bucket`], [`ReadModelHandle::committed`],
/// [`ReadModelHandle::lag`] and [`ReadModelHandle::wait_for`] are of it.
pub struct ReadModelHandle<P: KeyedProjection> {
    committed: watch::Receiver<u64>,
    /// The live runner's reading progress (replaced when a rebuild goes live; read on demand,
    /// not forwarded at each event).
    progress: watch::Receiver<watch::Receiver<Progress>>,
    live: watch::Receiver<bool>,
    bucket: watch::Receiver<String>,
    rebuilding: watch::Receiver<Option<String>>,
    wanted: watch::Sender<u64>,
    stop: watch::Sender<bool>,
    stopped: Arc<std::sync::Mutex<Option<Arc<ProjectionError>>>>,
    task: JoinHandle<()>,
    /// Closed once every bucket runner's task has ended.
    alive: watch::Receiver<()>,
    _projection: std::marker::PhantomData<fn() -> P>,
}

impl<P: KeyedProjection> fmt::Debug for ReadModelHandle<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadModelHandle")
            .field("name", &P::NAME)
            .field("bucket", &*self.bucket.borrow())
            .field("committed", &*self.committed.borrow())
            .finish_non_exhaustive()
    }
}

fn setup_error(name: &str, bucket: &str, e: impl fmt::Display) -> ProjectionError {
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

/// Opens (creating it if needed) a read model's bucket and makes sure its stream takes atomic
/// batches (`kv::Config` has no such field, and async-nats's KV updates clear it).
async fn open_model_bucket(
    context: &jetstream::Context,
    name: &str,
    bucket: &str,
    replicas: usize,
) -> Result<kv::Store, ProjectionError> {
    let store = crate::jetstream::kv::open_bucket(
        context,
        bucket,
        "read model rows and checkpoint (cim-nats)",
        replicas,
    )
    .await
    .map_err(|e| setup_error(name, bucket, e))?;
    let stream_name = format!("KV_{bucket}");
    let mut stream = context
        .get_stream(&stream_name)
        .await
        .map_err(|e| setup_error(name, bucket, e))?;
    let mut config = stream
        .info()
        .await
        .map_err(|e| setup_error(name, bucket, e))?
        .config
        .clone();
    if !config.allow_atomic_publish {
        config.allow_atomic_publish = true;
        context
            .update_stream(&config)
            .await
            .map_err(|e| setup_error(name, bucket, format!("enabling atomic batches: {e}")))?;
        let info = stream
            .info()
            .await
            .map_err(|e| setup_error(name, bucket, e))?;
        if !info.config.allow_atomic_publish {
            return Err(setup_error(
                name,
                bucket,
                "the server did not enable atomic batches on the bucket's stream",
            ));
        }
    }
    Ok(store)
}

/// Is `name` a read model's name (letters, digits, `-` and `_`)?
fn check_name(name: &str) -> Result<(), ProjectionError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    {
        return Err(ProjectionError::Apply {
            projection: name.to_owned(),
            sequence: 0,
            reason: "a read model's name is made of letters, digits, '-' and '_'".to_owned(),
        });
    }
    Ok(())
}

impl ReadModelRunner {
    /// Starts read model `P`: opens (creating them if needed) the pointer bucket and the bucket
    /// the pointer names for [`KeyedProjection::VERSION`] (the version's first,
    /// [`ReadModelOptions::bucket`], when the pointer names no bucket of it), resumes from the
    /// checkpoint in that bucket (or the start of the stream), then follows new events as they
    /// are stored.
    ///
    /// When the pointer names no bucket yet, it is pointed at this one at once. When it names an
    /// older version, this one is built beside it and the pointer moves when it has caught up
    /// (readers switch then); the old bucket is then deleted.
    ///
    /// While its version is live the runner serves rebuild requests of the model
    /// ([`request_rebuild`], on [`rebuild_subject`]); when the pointer records a rebuild under
    /// way (asked of this runner, of another, or of one that stopped before it was done) the
    /// runner builds it beside the live bucket and goes on in the new bucket once it is live.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Store`] if a bucket or the consumer cannot be set up, or the model is
    /// worked as several partitions ([`ReadModelRunner::start_partition`]);
    /// [`ProjectionError::Apply`] if `P::NAME` cannot name a bucket;
    /// [`ProjectionError::Superseded`] if a newer version of the model is already live (a
    /// running runner stops with it too when a newer version goes live).
    pub async fn start<P: KeyedProjection>(
        store: &JetStreamEventStore,
        projection: P,
        options: ReadModelOptions,
    ) -> Result<ReadModelHandle<P>, ProjectionError> {
        start_from(store, projection, options, Source::Stream).await
    }
}

/// What a runner reads the model's events from.
enum Source {
    /// The event stream, the whole model as one partition ([`ReadModelRunner::start`]).
    Stream,
    /// One partition of the partitioned view ([`ReadModelRunner::start_partition`]).
    View {
        /// The view.
        view: crate::jetstream::partition::PartitionedView,
        /// The partition worked, of how many.
        lease: crate::subscriber::Lease,
    },
}

/// Starts the runner's task of read model `P`, reading `source`.
async fn start_from<P: KeyedProjection>(
    store: &JetStreamEventStore,
    projection: P,
    options: ReadModelOptions,
    source: Source,
) -> Result<ReadModelHandle<P>, ProjectionError> {
    supervisor::start(store, projection, options, source).await
}

/// What a runner builds: the bucket the pointer names for its version (or the version's first
/// one, built beside an older version), or the bucket of a rebuild under way.
#[derive(Debug, Clone)]
enum Build {
    Live,
    Rebuild(Rebuild),
}

/// What a runner sets up before it reads, alike for a whole model and for a partition: the
/// pointer (created if there is none), the bucket, the partition's checkpoint and the
/// committer fenced on it.
struct Opened {
    context: jetstream::Context,
    pointers: kv::Store,
    /// The pointer as found, when it names a bucket this one is to replace (an older version,
    /// or the live generation a rebuild replaces), with its revision.
    pointer_old: Option<(Pointer, u64)>,
    /// Does the pointer name this bucket?
    live: bool,
    bucket: kv::Store,
    bucket_name: String,
    /// The bucket's generation of the version.
    generation: u32,
    /// The partition's checkpoint, if it has one.
    checkpoint: Option<Checkpoint>,
    /// No checkpoint and no rows: the model starts empty.
    fresh: bool,
    committer: Committer,
}

impl Opened {
    /// Sets up partition `partition` of `partitions` of read model `P`, for `build`.
    async fn open<P: KeyedProjection>(
        store: &JetStreamEventStore,
        options: &ReadModelOptions,
        pointers: &kv::Store,
        (partition, partitions): (u32, u32),
        build: &Build,
    ) -> Result<Self, ProjectionError> {
        let name = P::NAME;
        check_name(name)?;
        let context = store.context().clone();
        let replicas = store.config().replicas;
        let pointer = live_pointer::<P>(pointers, &options.pointer_bucket).await?;
        let (bucket_name, generation) = match (build, &pointer) {
            (Build::Rebuild(r), _) => (r.bucket.clone(), r.generation),
            (Build::Live, Some((p, _))) if p.version == P::VERSION => {
                (p.bucket.clone(), p.generation)
            }
            (Build::Live, _) => (options.bucket(name, P::VERSION), 0),
        };
        let bucket = open_model_bucket(&context, name, &bucket_name, replicas).await?;
        let pointer = match pointer {
            Some(pointer) => Some(pointer),
            None if matches!(build, Build::Rebuild(_)) => {
                return Err(setup_error(
                    name,
                    &options.pointer_bucket,
                    "the pointer of a model being rebuilt is gone",
                ))
            }
            None => {
                let first = Pointer::new(&bucket_name, P::VERSION, 0);
                match write_pointer(pointers, name, &first, None).await {
                    Ok(_) => None,
                    // Another runner (another partition) created it first: as it is now.
                    Err(e) => Some(
                        live_pointer::<P>(pointers, &options.pointer_bucket)
                            .await?
                            .ok_or(e)?,
                    ),
                }
            }
        };
        let live = pointer
            .as_ref()
            .is_none_or(|(p, _)| p.version == P::VERSION && p.bucket == bucket_name);
        let pointer_old = pointer.filter(|_| !live);
        let found = reader::read_checkpoints(store.client(), &bucket)
            .await
            .map_err(|e| setup_error(name, &bucket_name, e))?;
        if let Some(other) = found.iter().find(|c| c.partitions != partitions) {
            let reason = if partitions == 1 {
                format!(
                    "the model is worked as {} partitions; a single runner works it as one",
                    other.partitions
                )
            } else {
                format!(
                    "the model is worked as {} partitions (checkpoint of partition {}); this \
                     runner works partition {partition} of {partitions}",
                    other.partitions, other.partition
                )
            };
            return Err(setup_error(name, &bucket_name, reason));
        }
        let checkpoint = reader::read_checkpoint(&bucket, partition)
            .await
            .map_err(|e| setup_error(name, &bucket_name, e))?;
        // A model with no checkpoint and no rows starts empty: rows it has not written do not
        // exist.
        let fresh = checkpoint.is_none()
            && bucket
                .status()
                .await
                .map_err(|e| setup_error(name, &bucket_name, e))?
                .values()
                == 0;
        let (checkpoint, revision) = match checkpoint {
            Some((c, revision)) => (Some(c), revision),
            None => (None, 0),
        };
        context
            .get_stream_no_info(store.stream_name())
            .await
            .map_err(|e| ProjectionError::Store {
                projection: name.to_owned(),
                source: StoreError::with_source(StoreErrorKind::StreamNotFound, e),
            })?;
        let committer = Committer::new(
            crate::jetstream::api::Conn::new(store.client().clone()),
            &bucket,
            (name, store.stream_name()),
            P::VERSION,
            (partition, partitions),
            revision,
            store.request_timeout(),
        )
        .await?;
        Ok(Self {
            context,
            pointers: pointers.clone(),
            pointer_old,
            live,
            bucket,
            bucket_name,
            generation,
            checkpoint,
            fresh,
            committer,
        })
    }
}

/// The pointer of model `P` and its revision; [`ProjectionError::Superseded`] when it names a
/// newer version.
async fn live_pointer<P: KeyedProjection>(
    pointers: &kv::Store,
    pointer_bucket: &str,
) -> Result<Option<(Pointer, u64)>, ProjectionError> {
    let pointer = reader::read_pointer(pointers, P::NAME)
        .await
        .map_err(|e| setup_error(P::NAME, pointer_bucket, e))?;
    if let Some((p, _)) = &pointer {
        if p.version > P::VERSION {
            return Err(ProjectionError::Superseded {
                projection: P::NAME.to_owned(),
                version: P::VERSION,
                live: p.version,
            });
        }
    }
    Ok(pointer)
}

/// The pointer as the runner's task last saw it, and its revision (`None` before it has seen
/// one).
type PointerSeen = Option<(Pointer, u64)>;

/// How a runner of one bucket ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// It was asked to stop.
    Stopped,
    /// The pointer moved to a newer generation of its version (a rebuild went live): its
    /// bucket is no longer the live one.
    Replaced,
}

/// The work of a runner of one bucket (the live one, or a rebuild's), polled by the runner's
/// task ([`supervisor`]), with its progress and how to stop it.
struct Lane {
    work: LaneTask,
    committed: watch::Receiver<u64>,
    progress: watch::Receiver<Progress>,
    live: watch::Receiver<bool>,
    wanted: watch::Sender<u64>,
    stop: watch::Sender<bool>,
    bucket: String,
}

/// Makes the work of what `opened` set up, reading `reader` (whose progress, in event stream
/// sequences, is `progress`): from a partitioned view when `view` is given. `floor`: for a
/// rebuild, the live runner's committed sequence, which the new bucket must have reached before
/// the pointer moves to it (so that readers do not see the model go back).
#[allow(clippy::too_many_arguments)]
fn launch<P: KeyedProjection>(
    opened: Opened,
    projection: Arc<P>,
    options: ReadModelOptions,
    (reader, progress): (OrderedReader, watch::Receiver<Progress>),
    target: u64,
    view: Option<ViewFeed>,
    pointer: watch::Receiver<PointerSeen>,
    floor: Option<watch::Receiver<u64>>,
    alive: watch::Sender<()>,
) -> Lane {
    let (start, skipped) = opened
        .checkpoint
        .map_or((0, Vec::new()), |c| (c.sequence, c.skipped));
    let bucket_name = opened.bucket_name;
    let generation = opened.generation;
    let (committed_tx, committed) = watch::channel(start);
    let (live_tx, live_rx) = watch::channel(opened.live);
    let (wanted, wanted_rx) = watch::channel(0u64);
    let (stop, stop_rx) = watch::channel(false);
    let mut pointer = pointer;
    // The pointer as it is now is looked at first.
    pointer.mark_changed();
    let run = Run {
        projection,
        rows: RowState {
            bucket: opened.bucket,
            event: HashMap::new(),
            pending: HashMap::new(),
            in_flight: HashMap::new(),
            cache: LruCache::new(
                NonZeroUsize::new(options.cached_rows.max(1)).unwrap_or(NonZeroUsize::MIN),
            ),
            complete: opened.fresh,
            name: P::NAME,
        },
        max_value: opened.committer.max_value(),
        partition: opened.committer.partition(),
        committer: Some(opened.committer),
        sending: None,
        skipped,
        options,
        committed: committed_tx,
        live: live_tx,
        pointers: opened.pointers,
        pointer,
        pointer_old: opened.pointer_old,
        generation,
        floor,
        target,
        retire: None,
        progress: progress.clone(),
        view,
        context: opened.context,
        bucket_name: bucket_name.clone(),
    };
    // A task of its own: the supervisor wakes only when it ends, not at each event it reads.
    let work = LaneTask {
        task: tokio::spawn(
            async move {
                let _alive = alive;
                let mut run = run;
                run.run(reader, stop_rx, wanted_rx, start).await
            }
            .in_current_span(),
        ),
        name: P::NAME,
    };
    Lane {
        work,
        committed,
        progress,
        live: live_rx,
        wanted,
        stop,
        bucket: bucket_name,
    }
}

/// A bucket's runner, as a task of its own, aborted when dropped: when the supervisor's task is
/// aborted (a crash), its runners stop with it.
struct LaneTask {
    task: JoinHandle<Result<Ended, ProjectionError>>,
    name: &'static str,
}

impl std::future::Future for LaneTask {
    type Output = Result<Ended, ProjectionError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let name = self.name;
        std::pin::Pin::new(&mut self.task).poll(cx).map(|joined| {
            // A runner that panicked ends as an aborted one does.
            joined.unwrap_or_else(|_| Err(ProjectionError::Aborted(name.to_owned())))
        })
    }
}

impl Drop for LaneTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes the pointer of model `name`: created when `revision` is `None`, else updated if its
/// revision is still `revision`.
async fn write_pointer(
    pointers: &kv::Store,
    name: &str,
    pointer: &Pointer,
    revision: Option<u64>,
) -> Result<u64, ProjectionError> {
    let value = serde_json::to_vec(pointer).map_err(|e| ProjectionError::Store {
        projection: name.to_owned(),
        source: StoreError::with_source(StoreErrorKind::Encode, e),
    })?;
    let written = match revision {
        None => pointers
            .create(name, value.into())
            .await
            .map_err(|e| e.to_string()),
        Some(r) => pointers
            .update(name, value.into(), r)
            .await
            .map_err(|e| e.to_string()),
    };
    written.map_err(|e| {
        ProjectionError::Contended(format!(
            "{name}: the pointer to the live bucket changed underneath ({e})"
        ))
    })
}

/// A commit on its way: the committer (given back with the outcome) and the sequence.
type Sending = std::pin::Pin<
    Box<dyn std::future::Future<Output = (Committer, Result<(), ProjectionError>)> + Send>,
>;

struct Run<P: KeyedProjection> {
    projection: Arc<P>,
    rows: RowState<P::Row>,
    /// `None` while a commit is on its way (`sending`).
    committer: Option<Committer>,
    sending: Option<(Sending, u64)>,
    /// The largest row value the bucket and the server take.
    max_value: usize,
    skipped: Vec<crate::jetstream::Skipped>,
    options: ReadModelOptions,
    committed: watch::Sender<u64>,
    live: watch::Sender<bool>,
    pointers: kv::Store,
    /// The pointer's changes, as the runner's task watches them.
    pointer: watch::Receiver<PointerSeen>,
    /// The pointer as last seen, while it names a bucket this one is to replace (with its
    /// revision: the pointer moves to this bucket by an update expecting it).
    pointer_old: Option<(Pointer, u64)>,
    /// This bucket's generation of the version.
    generation: u32,
    /// The partition it works (0 for a model run as one): the lag gauge's label.
    partition: u32,
    /// For a rebuild: the live runner's committed sequence, which this one must have reached
    /// before the pointer moves.
    floor: Option<watch::Receiver<u64>>,
    /// The stream's last sequence when the build started (the runner started, or the rebuild
    /// was asked for).
    target: u64,
    /// The replaced bucket, and when to delete it.
    retire: Option<(String, tokio::time::Instant)>,
    /// The reader's progress, in event stream sequences (for the lag in traces, and to know
    /// when it has caught up).
    progress: watch::Receiver<Progress>,
    /// For a partition read from a partitioned view: the view, and where in it the runner is.
    view: Option<ViewFeed>,
    context: jetstream::Context,
    bucket_name: String,
}

impl<P: KeyedProjection> Run<P> {
    async fn run(
        &mut self,
        mut reader: OrderedReader,
        mut stop: watch::Receiver<bool>,
        mut wanted: watch::Receiver<u64>,
        start: u64,
    ) -> Result<Ended, ProjectionError> {
        let mut last = start;
        let mut written = start;
        let mut order = VersionOrder::default();
        let progress = self.progress.clone();
        let mut tick = tokio::time::interval(self.options.commit_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => {
                    if last > written {
                        self.commit(last).await?;
                    }
                    self.finish().await?;
                    return Ok(Ended::Stopped);
                }
                (committer, result) = async {
                    match &mut self.sending {
                        Some((sending, _)) => sending.as_mut().await,
                        None => std::future::pending().await,
                    }
                }, if self.sending.is_some() => {
                    let sequence = self.sending.take().map_or(0, |(_, s)| s);
                    self.committer = Some(committer);
                    self.stored(sequence, result)?;
                    self.maybe_go_live(&progress).await?;
                }
                () = async {
                    if self.pointer.changed().await.is_err() {
                        // The runner's task is gone; it no longer polls this either.
                        std::future::pending::<()>().await;
                    }
                } => {
                    let seen = self.pointer.borrow_and_update().clone();
                    if let Some((pointer, revision)) = seen {
                        if let Some(ended) = self.pointer_moved(pointer, revision).await? {
                            return Ok(ended);
                        }
                    }
                }
                _ = wanted.changed() => {
                    let want = *wanted.borrow_and_update();
                    if want > written && last >= want {
                        self.send_commit(last).await?;
                        written = last;
                    } else if want > last {
                        if let Some(at) = self.advance_idle(last, written).await? {
                            (last, written) = (at, at);
                        }
                    }
                }
                _ = tick.tick() => {
                    if last > written {
                        self.send_commit(last).await?;
                        written = last;
                    } else if let Some(at) = self.advance_idle(last, written).await? {
                        (last, written) = (at, at);
                    }
                    self.maybe_go_live(&progress).await?;
                }
                chunk = reader.next() => {
                    let Some(chunk) = chunk else {
                        return Err(ProjectionError::Aborted(P::NAME.to_owned()));
                    };
                    let chunk = chunk.map_err(|e| ProjectionError::Store {
                        projection: P::NAME.to_owned(),
                        source: e,
                    })?;
                    for raw in chunk {
                        // A message of a partitioned view is read as the event it copies.
                        let translated = match self.view.as_mut() {
                            None => Ok(Some(raw)),
                            Some(view) => view.translate(raw, last),
                        };
                        let raw = match translated {
                            Ok(Some(raw)) => raw,
                            Ok(None) => continue,
                            Err(e) => {
                                if last > written {
                                    self.commit(last).await?;
                                }
                                return Err(ProjectionError::Unreadable {
                                    projection: P::NAME.to_owned(),
                                    source: e,
                                });
                            }
                        };
                        let sequence = raw.sequence;
                        if sequence <= last {
                            continue;
                        }
                        let span = crate::jetstream::codec::trace_span(P::NAME, &raw);
                        // A check marker of an append to several aggregates is not an event.
                        let decoded = (!is_check_marker(&raw.subject)).then(|| {
                            decode_in_order(raw, &mut order).and_then(decode_envelope::<P::Event>)
                        });
                        match decoded {
                            None => {}
                            Some(Ok(envelope)) => {
                                let mut rows = Rows { rows: &mut self.rows, sequence };
                                let applied = self.projection.apply(&envelope, &mut rows);
                                let applied = match span {
                                    Some(span) => applied.instrument(span).await,
                                    None => applied.await,
                                };
                                if let Err(e) = applied {
                                    self.rows.event.clear();
                                    if last > written {
                                        self.commit(last).await?;
                                    }
                                    return Err(e);
                                }
                                let changed = self.rows.event.len();
                                if changed > MAX_ROWS_PER_COMMIT {
                                    self.rows.event.clear();
                                    if last > written {
                                        self.commit(last).await?;
                                    }
                                    return Err(ProjectionError::Apply {
                                        projection: P::NAME.to_owned(),
                                        sequence,
                                        reason: format!(
                                            "the event changes {changed} rows; one atomic commit \
                                             holds at most {MAX_ROWS_PER_COMMIT}"
                                        ),
                                    });
                                }
                                let merged = self.rows.pending.len()
                                    + self
                                        .rows
                                        .event
                                        .keys()
                                        .filter(|k| !self.rows.pending.contains_key(*k))
                                        .count();
                                if merged > MAX_ROWS_PER_COMMIT {
                                    // Commit what the events before this one changed first.
                                    let event = std::mem::take(&mut self.rows.event);
                                    self.send_commit(last).await?;
                                    written = last;
                                    self.rows.event = event;
                                }
                                if let Err(e) = self.take_event(sequence) {
                                    // The events before it are committed; nothing of it is.
                                    if last > written {
                                        self.commit(last).await?;
                                    }
                                    return Err(e);
                                }
                            }
                            Some(Err(e)) => match (self.options.on_unreadable, e.kind()) {
                                (OnUnreadable::SkipAndRecord, StoreErrorKind::Decode { .. }) => {
                                    let reason = e.to_string();
                                    tracing::warn!(read_model = P::NAME, sequence, %reason,
                                        "skipping an unreadable event");
                                    if self.skipped.len() < 1000 {
                                        self.skipped.push(crate::jetstream::Skipped { sequence, reason });
                                    }
                                }
                                _ => {
                                    if last > written {
                                        self.commit(last).await?;
                                    }
                                    return Err(ProjectionError::Unreadable {
                                        projection: P::NAME.to_owned(),
                                        source: e,
                                    });
                                }
                            },
                        }
                        last = sequence;
                        if let Some(view) = self.view.as_mut() {
                            view.read_up_to_current();
                        }
                        let want = *wanted.borrow();
                        if last - written >= self.options.commit_every
                            || self.rows.pending.len() >= MAX_ROWS_PER_COMMIT
                            || (want > written && last >= want)
                        {
                            self.send_commit(last).await?;
                            written = last;
                        }
                    }
                    if let Some(view) = &self.view {
                        view.publish(last);
                    }
                    if progress.borrow().pending == 0 && last > written {
                        // Caught up: what is read is committed without waiting for the tick.
                        self.send_commit(last).await?;
                        written = last;
                    }
                    self.maybe_go_live(&progress).await?;
                }
            }
        }
    }

    /// Moves the changes of the event at `sequence` into the pending ones, encoded: a row too
    /// large to store stops the runner here, naming it and the event.
    fn take_event(&mut self, sequence: u64) -> Result<(), ProjectionError> {
        let max = self.max_value;
        let mut encoded = Vec::with_capacity(self.rows.event.len());
        for (key, row) in std::mem::take(&mut self.rows.event) {
            let json = match &row {
                None => None,
                Some(row) => {
                    let json = serde_json::to_vec(row).map_err(|e| ProjectionError::Apply {
                        projection: P::NAME.to_owned(),
                        sequence,
                        reason: format!("row {key} does not encode: {e}"),
                    })?;
                    if json.len() > max {
                        return Err(ProjectionError::Apply {
                            projection: P::NAME.to_owned(),
                            sequence,
                            reason: format!(
                                "row {key} is {} bytes, over the {max} the bucket {} and the \
                                 server take; nothing of this event is stored",
                                json.len(),
                                self.bucket_name
                            ),
                        });
                    }
                    Some(bytes::Bytes::from(json))
                }
            };
            encoded.push((key, (row, json)));
        }
        self.rows.pending.extend(encoded);
        Ok(())
    }

    /// Sends the pending rows with the checkpoint at `sequence` as the next commit, once the
    /// one on its way is stored; does not wait for it: the runner applies the next events
    /// meanwhile (the commit's rows stay readable to them until it is stored).
    async fn send_commit(&mut self, sequence: u64) -> Result<(), ProjectionError> {
        self.finish().await?;
        let pending = std::mem::take(&mut self.rows.pending);
        let mut encoded = Vec::with_capacity(pending.len());
        for (key, (row, json)) in pending {
            encoded.push((key.clone(), json));
            self.rows.in_flight.insert(key, row);
        }
        let Some(mut committer) = self.committer.take() else {
            unreachable!("the committer is back once the commit on its way is finished")
        };
        let skipped = self.skipped.clone();
        let view_sequence = self.view.as_ref().map(ViewFeed::read_up_to);
        let sending: Sending = Box::pin(async move {
            let result = committer
                .commit(encoded, (sequence, view_sequence), &skipped)
                .await;
            (committer, result)
        });
        self.sending = Some((sending, sequence));
        Ok(())
    }

    /// Waits for the commit on its way, if any.
    async fn finish(&mut self) -> Result<(), ProjectionError> {
        if let Some((sending, sequence)) = self.sending.take() {
            let (committer, result) = sending.await;
            self.committer = Some(committer);
            self.stored(sequence, result)?;
        }
        Ok(())
    }

    /// A commit's outcome: its rows join the cache and readers see `sequence`.
    fn stored(
        &mut self,
        sequence: u64,
        result: Result<(), ProjectionError>,
    ) -> Result<(), ProjectionError> {
        result?;
        let rows = self.rows.in_flight.len();
        for (key, row) in std::mem::take(&mut self.rows.in_flight) {
            self.rows.remember(key, row);
        }
        tracing::debug!(
            read_model = P::NAME,
            committed = sequence,
            rows,
            behind = self.progress.borrow().pending,
            "read model committed"
        );
        // The lag first: a reader woken by the commit sees the gauge of it. A rebuild's is
        // not the model's (readers see the live bucket's).
        let rebuilding = self.generation > 0 && !*self.live.borrow();
        if !rebuilding {
            let progress = *self.progress.borrow();
            crate::metrics::projection_lag(
                P::NAME,
                self.partition,
                progress.pending + progress.sequence.saturating_sub(sequence),
            );
        }
        let _ = self.committed.send(sequence);
        Ok(())
    }

    /// Commits the pending rows with the checkpoint at `sequence` and waits until it is stored.
    async fn commit(&mut self, sequence: u64) -> Result<(), ProjectionError> {
        self.send_commit(sequence).await?;
        self.finish().await
    }

    /// The pointer changed (or is looked at for the first time): a newer version live stops
    /// the runner ([`ProjectionError::Superseded`]); a newer generation of its version live
    /// ends it as [`Ended::Replaced`]; the pointer naming its bucket makes it live (another
    /// partition's runner moved it); else, while this bucket is to replace the one the pointer
    /// names, the pointer's revision is kept for the move.
    async fn pointer_moved(
        &mut self,
        pointer: Pointer,
        revision: u64,
    ) -> Result<Option<Ended>, ProjectionError> {
        if pointer.version > P::VERSION {
            // Readers moved on; what this version has not committed has no reader: finish the
            // commit on its way and stop.
            let _ = self.live.send(false);
            tracing::info!(
                read_model = P::NAME,
                version = P::VERSION,
                live = pointer.version,
                "a newer version is live: stopping"
            );
            self.finish().await?;
            return Err(ProjectionError::Superseded {
                projection: P::NAME.to_owned(),
                version: P::VERSION,
                live: pointer.version,
            });
        }
        if pointer.version == P::VERSION && pointer.bucket == self.bucket_name {
            if self.pointer_old.take().is_some() {
                // Another partition's runner moved the pointer here.
                let _ = self.live.send(true);
            }
            return Ok(None);
        }
        if pointer.version == P::VERSION && pointer.generation > self.generation {
            let _ = self.live.send(false);
            tracing::info!(read_model = P::NAME, bucket = %self.bucket_name,
                live = %pointer.bucket, "a rebuild of the model is live: this bucket is replaced");
            self.finish().await?;
            return Ok(Some(Ended::Replaced));
        }
        if let Some(old) = self.pointer_old.as_mut() {
            *old = (pointer, revision);
        }
        Ok(None)
    }

    /// Does this bucket replace the one `pointer` names (an older version, or the live
    /// generation of its version while the pointer records the rebuild into this bucket)?
    fn replaces(&self, pointer: &Pointer) -> bool {
        pointer.version < P::VERSION
            || (pointer.version == P::VERSION
                && pointer.generation < self.generation
                && pointer
                    .rebuild
                    .as_ref()
                    .is_some_and(|r| r.bucket == self.bucket_name))
    }

    /// A model built beside an older live version, or a rebuild beside the live generation,
    /// goes live once it has caught up: the pointer moves to its bucket (readers follow), and
    /// the old bucket is deleted [`ReadModelOptions::retire_after`] later.
    async fn maybe_go_live(
        &mut self,
        progress: &watch::Receiver<Progress>,
    ) -> Result<(), ProjectionError> {
        let written = *self.committed.borrow();
        if let Some((old, at)) = &self.retire {
            if tokio::time::Instant::now() >= *at {
                if let Err(e) = self.context.delete_key_value(old).await {
                    tracing::warn!(read_model = P::NAME, bucket = %old, error = %e,
                        "the replaced bucket could not be deleted");
                }
                self.retire = None;
            }
        }
        let Some((old, revision)) = self.pointer_old.as_ref() else {
            return Ok(());
        };
        if !self.replaces(old) {
            // A rebuild the pointer no longer records: the runner's task stops it.
            return Ok(());
        }
        let caught_up = written >= self.target
            && match &self.floor {
                // A rebuild: its bucket is as far as the live one readers leave (the live runner
                // reads the same events, so this holds while events keep coming).
                Some(floor) => written >= *floor.borrow(),
                // A new version: it has read and committed every event stored so far.
                None => {
                    let p = progress.borrow();
                    p.pending == 0 && p.sequence <= written
                }
            };
        if !caught_up {
            return Ok(());
        }
        if let Some(view) = &self.view {
            if !every_partition_reached::<P>(&self.rows.bucket, view.partitions(), self.target)
                .await
            {
                return Ok(());
            }
        }
        let (from, from_version, revision) = (old.bucket.clone(), old.version, *revision);
        let pointer = Pointer::new(&self.bucket_name, P::VERSION, self.generation);
        let moved = write_pointer(&self.pointers, P::NAME, &pointer, Some(revision)).await;
        if let Err(e) = moved {
            // Another partition's runner may have moved it first, or the pointer changed
            // otherwise (a rebuild recorded, a generation switched) since it was last seen.
            let now = reader::read_pointer(&self.pointers, P::NAME).await;
            match now {
                Ok(Some((p, _))) if p.version == P::VERSION && p.bucket == self.bucket_name => {
                    self.pointer_old = None;
                    let _ = self.live.send(true);
                    return Ok(());
                }
                Ok(Some((p, r))) if self.replaces(&p) => {
                    // Tried again at the next commit or tick.
                    self.pointer_old = Some((p, r));
                    return Ok(());
                }
                _ => return Err(e),
            }
        }
        if from_version == P::VERSION {
            tracing::info!(read_model = P::NAME, from = %from, to = %self.bucket_name,
                "read model rebuilt: readers switched to the new bucket");
        } else {
            tracing::info!(read_model = P::NAME, from = %from, to = %self.bucket_name,
                "read model caught up: readers switched to the new version");
        }
        self.retire = Some((
            from,
            tokio::time::Instant::now() + self.options.retire_after,
        ));
        self.pointer_old = None;
        let _ = self.live.send(true);
        Ok(())
    }
}

/// Has every one of the `partitions` partitions of model `P` in `bucket` committed up to
/// `target` (a partition's runner moves the pointer only then: readers see the model as of the
/// smallest checkpoint)?
async fn every_partition_reached<P: KeyedProjection>(
    bucket: &kv::Store,
    partitions: u32,
    target: u64,
) -> bool {
    match reader::model_front(bucket).await {
        Ok(Some((n, sequence))) => n == partitions && sequence >= target,
        Ok(None) => false,
        Err(e) => {
            tracing::debug!(read_model = P::NAME, error = %e,
                "the partitions' checkpoints could not be read");
            false
        }
    }
}

impl<P: KeyedProjection> Run<P> {
    /// A partition read from a partitioned view that has nothing to apply and nothing to
    /// commit moves its checkpoint on to the last event its view holds, when no event of its
    /// own is among those it has not read ([`ViewFeed::idle_position`]); returns the new
    /// position. `None` for a model read from the event stream, or when the partition is busy.
    async fn advance_idle(
        &mut self,
        last: u64,
        written: u64,
    ) -> Result<Option<u64>, ProjectionError> {
        let Some(view) = &self.view else {
            return Ok(None);
        };
        if last != written
            || self.sending.is_some()
            || !self.rows.pending.is_empty()
            || !view.caught_up()
        {
            return Ok(None);
        }
        let (origin, at) = match view.idle_position().await {
            Ok(Some((origin, at))) if origin > written => (origin, at),
            Ok(_) => return Ok(None),
            Err(e) => {
                tracing::debug!(read_model = P::NAME, error = %e,
                    "the partitioned view's end could not be read; the checkpoint stays");
                return Ok(None);
            }
        };
        if let Some(view) = self.view.as_mut() {
            view.skip_to(at);
            view.publish(origin);
        }
        self.send_commit(origin).await?;
        Ok(Some(origin))
    }
}

impl<P: KeyedProjection> ReadModelHandle<P> {
    /// The stream sequence up to which the rows are committed (what readers see).
    pub fn committed(&self) -> StreamSequence {
        StreamSequence(*self.committed.borrow())
    }

    /// Events of the model's domain stored after the last one the runner read, as the server
    /// last said (0 when caught up).
    pub fn pending(&self) -> u64 {
        self.progress.borrow().borrow().pending
    }

    /// How far the model is behind the stream: the last sequence the runner read, the sequence
    /// its rows are committed up to, and the events stored after the last one read (for the
    /// operations tooling; also in the runner's `debug` traces at each commit).
    pub fn lag(&self) -> Lag {
        let progress = *self.progress.borrow().borrow();
        Lag {
            read: StreamSequence(progress.sequence),
            committed: self.committed(),
            pending: progress.pending,
        }
    }

    /// Is this version the one readers use (the pointer names its bucket)?
    pub fn is_live(&self) -> bool {
        *self.live.borrow()
    }

    /// The bucket the runner works: the one the pointer names for its version, the version's
    /// first one while it is built beside an older version, and after a rebuild went live the
    /// rebuild's.
    pub fn bucket(&self) -> String {
        self.bucket.borrow().clone()
    }

    /// The bucket a rebuild under way builds into beside [`ReadModelHandle::bucket`], if this
    /// runner is building one.
    pub fn rebuilding(&self) -> Option<String> {
        self.rebuilding.borrow().clone()
    }

    /// Why the runner stopped, if it stopped with an error.
    pub fn error(&self) -> Option<Arc<ProjectionError>> {
        self.stopped.lock().ok().and_then(|s| s.clone())
    }

    /// Waits until the rows are committed up to `sequence` (e.g. the sequence an append
    /// returned), asking the runner to commit at once when it has read that far.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Timeout`] after `timeout`; [`ProjectionError::Stopped`] with the cause
    /// if the runner stopped with an error; [`ProjectionError::Aborted`] if it ended otherwise.
    pub async fn wait_for(
        &self,
        sequence: StreamSequence,
        timeout: Duration,
    ) -> Result<(), ProjectionError> {
        self.wanted.send_if_modified(|w| {
            let raise = *w < sequence.0;
            if raise {
                *w = sequence.0;
            }
            raise
        });
        let mut rx = self.committed.clone();
        let reached = tokio::time::timeout(timeout, async move {
            rx.wait_for(|s| *s >= sequence.0).await.map(|_| ())
        })
        .await;
        match reached {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ProjectionError::ended(P::NAME, self.error())),
            Err(_) => Err(ProjectionError::Timeout {
                projection: P::NAME.to_owned(),
                wanted: sequence.0,
                reached: *self.committed.borrow(),
            }),
        }
    }

    /// Stops the runner after the event in hand, commits what it applied, and returns how it
    /// ended.
    ///
    /// # Errors
    ///
    /// The error the runner stopped with, if any.
    pub async fn shutdown(self) -> Result<(), ProjectionError> {
        let _ = self.stop.send(true);
        if self.task.await.is_err() {
            return Err(ProjectionError::Aborted(P::NAME.to_owned()));
        }
        let cause = self.stopped.lock().ok().and_then(|mut s| s.take());
        ProjectionError::shutdown(P::NAME, cause)
    }

    /// Kills the runner at once, without committing, as a crash would, and returns once its
    /// task is gone.
    pub async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
        // Its bucket runners, tasks of their own, are aborted with it: wait until they are gone
        // too, so that nothing of this runner is committed after this returns.
        let mut alive = self.alive;
        while alive.changed().await.is_ok() {}
    }

    /// Has the runner ended?
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(partition: u32, partitions: u32, sequence: u64) -> Checkpoint {
        Checkpoint {
            name: "m".to_owned(),
            version: 1,
            partition,
            partitions,
            stream: String::new(),
            sequence,
            view_sequence: None,
            skipped: Vec::new(),
            writer: String::new(),
        }
    }

    #[test]
    fn the_model_reflects_the_smallest_checkpoint_once_every_partition_has_one() {
        let mut front = CheckpointFront::default();
        assert_eq!(front.sequence(), None);
        assert_eq!(front.observe(&checkpoint(2, 3, 40)), None);
        assert_eq!(front.observe(&checkpoint(0, 3, 10)), None);
        assert_eq!(front.observe(&checkpoint(1, 3, 25)), Some(10));
        assert_eq!(front.observe(&checkpoint(0, 3, 50)), Some(25));
        // A new partitioning starts over.
        assert_eq!(front.observe(&checkpoint(0, 1, 60)), Some(60));
    }

    #[test]
    fn checkpoint_keys_name_their_partition() {
        assert_eq!(checkpoint_key(0), "_cim.checkpoint.0");
        assert_eq!(checkpoint_partition("_cim.checkpoint.15"), Some(15));
        assert_eq!(checkpoint_partition("_cim.checkpoint"), None);
        assert_eq!(checkpoint_partition("account.r.acc-1"), None);
        assert_eq!(parse_row_key("_cim.checkpoint.0"), None);
        // A checkpoint written before partitions were recorded is partition 0 of 1.
        let old: Checkpoint =
            serde_json::from_str(r#"{"name":"m","version":1,"sequence":7}"#).unwrap();
        assert_eq!((old.partition, old.partitions), (0, 1));
    }
}
