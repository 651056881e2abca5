//! One commit of a read model: the changed rows and the checkpoint in one atomic batch on the
//! bucket's stream, the checkpoint last (a reader in order has the commit's rows when it sees it)
//! and fenced by the expected last sequence of its key.

use std::time::Duration;

use async_nats::jetstream::kv;
use async_nats::HeaderMap;
use bytes::Bytes;

use super::{checkpoint_key, Checkpoint};
use crate::headers as h;
use crate::jetstream::api::{self, codes, Answer, Conn, Published};
use crate::jetstream::Skipped;
use crate::projection::ProjectionError;
use crate::store::{StoreError, StoreErrorKind};

/// Most rows one commit writes: an atomic batch holds at most 1,000 messages, one of them the
/// checkpoint.
pub const MAX_ROWS_PER_COMMIT: usize = 999;

/// How long a commit whose outcome is unknown, or that the server did not take (a restart, a
/// leader election), is tried again before the runner stops.
const RETRY_FOR: Duration = Duration::from_secs(30);
/// Room left in a message for the batch and KV headers.
const HEADROOM: usize = 1024;

/// Writes a read model's commits.
pub(super) struct Committer {
    conn: Conn,
    /// `$KV.{bucket}.`
    prefix: String,
    bucket: String,
    name: &'static str,
    /// The event stream the model reads.
    stream: String,
    version: u32,
    /// The partition it commits, and of how many.
    partition: u32,
    partitions: u32,
    /// The partition's checkpoint key.
    key: String,
    /// The checkpoint key's last stream sequence (0: none yet): the fence.
    revision: u64,
    /// Who this runner is, in its checkpoints.
    writer: String,
    /// The largest row value the bucket and the server take.
    max_value: usize,
    timeout: Duration,
    store: kv::Store,
}

impl Committer {
    /// The partition it commits.
    pub(super) fn partition(&self) -> u32 {
        self.partition
    }

    pub(super) async fn new(
        conn: Conn,
        store: &kv::Store,
        (name, events): (&'static str, &str),
        version: u32,
        (partition, partitions): (u32, u32),
        revision: u64,
        timeout: Duration,
    ) -> Result<Self, ProjectionError> {
        let bucket = store.name.as_str();
        let server_max = conn.server_info().max_payload;
        let mut stream = store.stream.clone();
        let bucket_max = stream
            .info()
            .await
            .map(|i| i.config.max_message_size)
            .unwrap_or(-1);
        let max_value = match usize::try_from(bucket_max) {
            Ok(m) if m > 0 => m.min(server_max),
            _ => server_max,
        }
        .saturating_sub(HEADROOM);
        Ok(Self {
            prefix: format!("$KV.{bucket}."),
            bucket: bucket.to_owned(),
            conn,
            name,
            stream: events.to_owned(),
            version,
            partition,
            partitions,
            key: checkpoint_key(partition),
            revision,
            writer: uuid::Uuid::new_v4().to_string(),
            max_value,
            timeout,
            store: store.clone(),
        })
    }

    fn error(&self, source: StoreError) -> ProjectionError {
        ProjectionError::Store {
            projection: self.name.to_owned(),
            source,
        }
    }

    /// The largest row value the bucket and the server take.
    pub(super) fn max_value(&self) -> usize {
        self.max_value
    }

    /// Commits `rows` (their JSON; `None` deletes the row) with the checkpoint at `sequence`
    /// (and `view_sequence`, for a partition read from a partitioned view); tries again while
    /// the outcome is unknown.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Contended`] when the fence is stale (another runner committed);
    /// [`ProjectionError::Store`] when the server keeps refusing or cannot be reached.
    pub(super) async fn commit(
        &mut self,
        rows: Vec<(String, Option<Bytes>)>,
        (sequence, view_sequence): (u64, Option<u64>),
        skipped: &[Skipped],
    ) -> Result<(), ProjectionError> {
        let checkpoint = Checkpoint {
            name: self.name.to_owned(),
            version: self.version,
            partition: self.partition,
            partitions: self.partitions,
            stream: self.stream.clone(),
            sequence,
            view_sequence,
            skipped: skipped.to_vec(),
            writer: self.writer.clone(),
        };
        let checkpoint = serde_json::to_vec(&checkpoint)
            .map_err(|e| self.error(StoreError::with_source(StoreErrorKind::Encode, e)))?;
        let mut messages = rows;
        messages.push((self.key.clone(), Some(Bytes::from(checkpoint))));
        let deadline = tokio::time::Instant::now() + RETRY_FOR;
        let mut pause = Duration::from_millis(50);
        loop {
            match self.send(&messages).await {
                Ok(Answer::Got(Published::Stored { seq, count, .. })) => {
                    let n = messages.len() as u64;
                    if n > 1 && count != Some(n) {
                        return Err(self.error(StoreError::new(StoreErrorKind::UnexpectedAnswer(
                            format!(
                                "atomic commit of {n} messages acknowledged with count {count:?}"
                            ),
                        ))));
                    }
                    // The checkpoint is the batch's last message.
                    self.revision = seq;
                    return Ok(());
                }
                Ok(Answer::Got(Published::Refused(e)))
                    if e.err_code == codes::WRONG_LAST_SEQUENCE =>
                {
                    // Stale fence: ours, sent before and stored (its answer lost), or another
                    // runner's.
                    if let Some(revision) = self.ours_stored(sequence).await? {
                        self.revision = revision;
                        return Ok(());
                    }
                    return Err(ProjectionError::Contended(format!(
                        "{}: another runner committed to bucket {} (its checkpoint moved past \
                         this runner's)",
                        self.name, self.bucket
                    )));
                }
                Ok(Answer::Got(Published::Refused(e))) => {
                    let err = api::server_error(&e);
                    if tokio::time::Instant::now() >= deadline || !retryable(&err) {
                        return Err(self.error(err));
                    }
                    tracing::warn!(read_model = self.name, error = %err, "commit refused; trying again");
                }
                Ok(Answer::Reconnected) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(self.error(StoreError::new(StoreErrorKind::Connection)));
                    }
                }
                Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(read_model = self.name, error = %e, "commit outcome unknown; sending it again");
                }
                Err(e) => return Err(self.error(e)),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// Is the stored checkpoint this runner's commit at `sequence`? Then its revision.
    async fn ours_stored(&self, sequence: u64) -> Result<Option<u64>, ProjectionError> {
        let entry = self
            .store
            .entry(&self.key)
            .await
            .map_err(|e| self.error(StoreError::with_source(StoreErrorKind::Connection, e)))?;
        Ok(entry.and_then(|entry| {
            serde_json::from_slice::<Checkpoint>(&entry.value)
                .ok()
                .filter(|c| c.writer == self.writer && c.sequence == sequence)
                .map(|_| entry.revision)
        }))
    }

    /// One publish (the checkpoint alone) or one atomic batch, the fence on the checkpoint (the
    /// last message).
    async fn send(
        &self,
        messages: &[(String, Option<Bytes>)],
    ) -> Result<Answer<Published>, StoreError> {
        let count = messages.len();
        let messages = messages
            .iter()
            .enumerate()
            .map(|(i, (key, value))| {
                let mut headers = HeaderMap::new();
                if i + 1 == count {
                    headers.insert(
                        h::EXPECTED_LAST_SUBJECT_SEQUENCE,
                        self.revision.to_string().as_str(),
                    );
                }
                if value.is_none() {
                    headers.insert("KV-Operation", "DEL");
                }
                (
                    format!("{}{key}", self.prefix),
                    headers,
                    value.clone().unwrap_or_default(),
                )
            })
            .collect();
        api::publish_batch(&self.conn, messages, self.timeout).await
    }
}

/// A refusal worth trying again: the stream (leader) not available for the moment.
fn retryable(e: &StoreError) -> bool {
    e.is_transient() || matches!(e.kind(), StoreErrorKind::Server { code: 10008, .. })
}
