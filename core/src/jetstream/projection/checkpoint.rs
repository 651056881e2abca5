//! Writing a runner's checkpoint: the projection's state and position as one KV value, put
//! only over the revision this runner wrote last (so a second runner is noticed), sent again
//! after a lost answer and recognised when it was stored.

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::Serialize;

use super::{CheckpointOut, Run, CHECKPOINT_MAX_PAUSE, CHECKPOINT_RETRY_FOR, CHECKPOINT_TIMEOUT};
use crate::jetstream::api::{self, codes, Answer, Published};
use crate::projection::{Projection, ProjectionError};
use crate::store::{StoreError, StoreErrorKind};

/// Why a checkpoint write was not taken.
enum Refused {
    /// The checkpoint is not at the revision this runner wrote last.
    Moved,
    /// The server did not take it this time (unavailable, timed out, ...): retried.
    Failed(String),
    /// The server will never take it (too large, not permitted): not retried.
    Permanent(String),
}

/// Is a refused KV write one that trying again cannot cure?
fn is_permanent(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    e.contains("maximum payload")
        || e.contains("max payload")
        || e.contains("payload too large")
        || e.contains("message size exceeds")
        || e.contains("permission")
}

impl<P> Run<P>
where
    P: Projection + Serialize,
{
    pub(super) async fn checkpoint(&mut self, sequence: u64) -> Result<(), ProjectionError> {
        let value = {
            let state = self.shared.state.read().await;
            let skipped = self
                .shared
                .skipped
                .lock()
                .map(|s| s.clone())
                .unwrap_or_default();
            serde_json::to_vec(&CheckpointOut {
                name: &self.name,
                version: P::VERSION,
                sequence,
                skipped: &skipped,
                state: &*state,
            })
            .map_err(|e| ProjectionError::Store {
                projection: self.name.clone(),
                source: StoreError::with_source(StoreErrorKind::Encode, e),
            })?
        };
        let value = Bytes::from(value);
        // The key and the headers of a KV write take a little room too.
        if value.len() + self.key.len() + 512 > self.max_value {
            return Err(ProjectionError::Store {
                projection: self.name.clone(),
                source: StoreError::with_source(
                    StoreErrorKind::PayloadTooLarge {
                        size: value.len(),
                        max: self.max_value,
                    },
                    format!(
                        "the checkpoint of projection {:?} (its whole state and position) no \
                         longer fits in one message; a state this large needs a projection \
                         that keeps its rows per key",
                        self.name
                    ),
                ),
            });
        }
        let deadline = tokio::time::Instant::now() + CHECKPOINT_RETRY_FOR;
        let mut pause = Duration::from_millis(100);
        loop {
            match self.write(value.clone()).await {
                Ok(revision) => {
                    self.revision = revision;
                    return Ok(());
                }
                Err(Refused::Moved) => {
                    // A write may have been stored though its answer was lost (a reconnection,
                    // a timeout): the checkpoint then holds exactly this value.
                    if let Some(revision) = self.stored_as(&value).await {
                        self.revision = revision;
                        return Ok(());
                    }
                    return Err(ProjectionError::Contended(self.name.clone()));
                }
                Err(Refused::Permanent(reason)) => {
                    return Err(ProjectionError::Store {
                        projection: self.name.clone(),
                        source: StoreError::with_source(
                            StoreErrorKind::Bucket {
                                bucket: self.options.bucket.clone(),
                            },
                            format!("checkpoint not written: {reason}"),
                        ),
                    });
                }
                Err(Refused::Failed(reason)) => {
                    if tokio::time::Instant::now() + pause > deadline {
                        return Err(ProjectionError::Store {
                            projection: self.name.clone(),
                            source: StoreError::with_source(
                                StoreErrorKind::Bucket {
                                    bucket: self.options.bucket.clone(),
                                },
                                format!(
                                    "checkpoint not written (retried for {CHECKPOINT_RETRY_FOR:?}): {reason}"
                                ),
                            ),
                        });
                    }
                    tracing::warn!(projection = %self.name, sequence, error = %reason, retry_in = ?pause,
                        "checkpoint not written; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(CHECKPOINT_MAX_PAUSE);
                }
            }
        }
    }

    /// One compare-and-set write of the checkpoint (a KV put expecting the revision this
    /// runner wrote last, 0 for none): if another process moved it, two runners are applying
    /// the same events, and this one stops.
    async fn write(&self, value: Bytes) -> Result<u64, Refused> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            crate::headers::EXPECTED_LAST_SUBJECT_SEQUENCE,
            self.revision.to_string().as_str(),
        );
        let sent = api::publish(
            &self.client,
            self.subject.clone(),
            headers,
            value,
            CHECKPOINT_TIMEOUT,
        )
        .await;
        match sent {
            Ok(Answer::Got(Published::Stored { seq, .. })) => Ok(seq),
            Ok(Answer::Got(Published::Refused(e))) if e.err_code == codes::WRONG_LAST_SEQUENCE => {
                Err(Refused::Moved)
            }
            Ok(Answer::Got(Published::Refused(e))) if e.err_code == codes::MESSAGE_TOO_LARGE => {
                Err(Refused::Permanent(e.description))
            }
            Ok(Answer::Got(Published::Refused(e))) => Err(Refused::Failed(format!(
                "error {}: {}",
                e.err_code, e.description
            ))),
            // Lost with a reconnection: sent again by the caller, recognised if it was stored.
            Ok(Answer::Reconnected) => Err(Refused::Failed(
                "the client reconnected before the answer came".to_owned(),
            )),
            Err(e) if is_permanent(&e.to_string()) => Err(Refused::Permanent(e.to_string())),
            Err(e) => Err(Refused::Failed(e.to_string())),
        }
    }

    /// The revision of the checkpoint if it holds exactly `value`.
    async fn stored_as(&self, value: &Bytes) -> Option<u64> {
        let entry = self.bucket.entry(&self.key).await.ok()??;
        (entry.operation == kv::Operation::Put && entry.value == *value).then_some(entry.revision)
    }
}
