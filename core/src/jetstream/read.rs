//! Reading the whole stream in order with bounded memory.
//!
//! One pull consumer per read, created for it and deleted when the read ends or is dropped:
//! no acknowledgements, batches of up to 5,000 messages fetched ahead while the current ones are
//! consumed. (An aggregate load never creates a consumer; a whole-stream read is the one place
//! where a consumer is the fast path.)

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::stream::{self, Stream, StreamExt};

use crate::envelope::StoredEvent;
use crate::error::{StoreError, StoreErrorKind};
use crate::jetstream::codec::{decode_stored, raw_from_delivery_owned};
use crate::jetstream::store::JetStreamEventStore;
use crate::store::ReadFrom;

/// Messages fetched per pull request.
const BATCH: usize = 5000;

/// Deletes the read's consumer when the read is dropped before its end.
struct ConsumerGuard {
    context: jetstream::Context,
    stream: String,
    name: Option<String>,
}

impl ConsumerGuard {
    async fn delete(mut self) {
        if let Some(name) = self.name.take() {
            let _ = self
                .context
                .delete_consumer_from_stream(&name, &self.stream)
                .await;
        }
    }
}

impl Drop for ConsumerGuard {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let context = self.context.clone();
                let stream = std::mem::take(&mut self.stream);
                runtime.spawn(async move {
                    let _ = context.delete_consumer_from_stream(&name, &stream).await;
                });
            }
        }
    }
}

struct Reader {
    messages: consumer::pull::Stream,
    guard: ConsumerGuard,
}

enum State {
    Start(JetStreamEventStore, ReadFrom),
    Reading(Box<Reader>),
    Done,
}

fn connection(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::with_source(StoreErrorKind::Connection, e)
}

async fn open(store: &JetStreamEventStore, from: ReadFrom) -> Result<Option<Reader>, StoreError> {
    let deliver_policy = match from {
        ReadFrom::Start => consumer::DeliverPolicy::All,
        ReadFrom::Sequence(seq) => consumer::DeliverPolicy::ByStartSequence {
            start_sequence: seq.0.max(1),
        },
        ReadFrom::Time(t) => consumer::DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(
                t.timestamp_nanos_opt().unwrap_or(i64::MAX),
            ))
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        },
    };
    let context = store.context().clone();
    let stream = context
        .get_stream_no_info(store.stream_name())
        .await
        .map_err(connection)?;
    let name = format!("cim-read-{}", uuid::Uuid::new_v4().simple());
    let mut consumer = stream
        .create_consumer(consumer::pull::Config {
            name: Some(name.clone()),
            deliver_policy,
            ack_policy: consumer::AckPolicy::None,
            replay_policy: consumer::ReplayPolicy::Instant,
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(connection)?;
    let guard = ConsumerGuard {
        context,
        stream: store.stream_name().to_owned(),
        name: Some(name),
    };
    let pending = consumer.info().await.map_err(connection)?.num_pending;
    if pending == 0 {
        guard.delete().await;
        return Ok(None);
    }
    let messages = consumer
        .stream()
        .max_messages_per_batch(BATCH)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(connection)?;
    Ok(Some(Reader { messages, guard }))
}

/// Every event from `from` to the end of the stream (as it grows while read), in order. A
/// message that is not a readable event is an `Err` item naming its sequence; reading goes on
/// after it.
pub(crate) fn stream_all(
    store: JetStreamEventStore,
    from: ReadFrom,
) -> impl Stream<Item = Result<StoredEvent, StoreError>> + Send + 'static {
    stream::unfold(State::Start(store, from), |state| async move {
        let mut reader = match state {
            State::Done => return None,
            State::Start(store, from) => match open(&store, from).await {
                Ok(Some(reader)) => Box::new(reader),
                Ok(None) => return None,
                Err(e) => return Some((Err(e), State::Done)),
            },
            State::Reading(reader) => reader,
        };
        match reader.messages.next().await {
            None => {
                reader.guard.delete().await;
                None
            }
            Some(Err(e)) => {
                let guard = reader.guard;
                guard.delete().await;
                Some((Err(connection(e)), State::Done))
            }
            Some(Ok(message)) => {
                let pending = message.info().map(|i| i.pending).unwrap_or(1);
                let item = match raw_from_delivery_owned(message) {
                    Some(raw) => decode_stored(raw),
                    None => Err(StoreError::new(StoreErrorKind::Server {
                        code: 0,
                        description: "a delivered message without stream metadata".to_owned(),
                    })),
                };
                if pending == 0 {
                    reader.guard.delete().await;
                    Some((item, State::Done))
                } else {
                    Some((item, State::Reading(reader)))
                }
            }
        }
    })
}
