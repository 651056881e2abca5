//! Raw JetStream API calls the store needs beyond what `async-nats` offers: publishes whose
//! errors keep their JetStream codes, batched direct gets, and stream info with a subject filter.

use std::time::Duration;

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use serde::Deserialize;

use crate::store::{StoreError, StoreErrorKind};

mod direct;
mod json;
pub(crate) mod permissions;

pub(crate) use direct::{direct_batches, direct_get, DirectGet};
pub(crate) use json::{create_consumer, msg_get, stream_state, MsgGet};

use permissions::{Denied, Need, Waited};

/// A NATS client with its statistics at hand, so that every request reads the connection
/// generation (see [`permissions::epoch`]) with one atomic load, not by cloning an `Arc`
/// shared by every task. Dereferences to the client.
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    client: Client,
    stats: std::sync::Arc<async_nats::Statistics>,
}

impl Conn {
    pub(crate) fn new(client: Client) -> Self {
        let stats = client.statistics();
        Self { client, stats }
    }

    /// The client's connection generation: it grows by one with every (re)connection.
    pub(crate) fn epoch(&self) -> u64 {
        self.stats
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The client.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }
}

impl std::ops::Deref for Conn {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

/// JetStream error codes the store reacts to.
pub(crate) mod codes {
    /// Wrong last sequence (expected-sequence check failed).
    pub(crate) const WRONG_LAST_SEQUENCE: u64 = 10071;
    /// Stream not found.
    pub(crate) const STREAM_NOT_FOUND: u64 = 10059;
    /// Stream name already in use with another configuration.
    pub(crate) const STREAM_NAME_EXISTS: u64 = 10058;
    /// Subjects overlap with an existing stream.
    pub(crate) const SUBJECTS_OVERLAP: u64 = 10065;
    /// JetStream not enabled for the account.
    pub(crate) const NOT_ENABLED_FOR_ACCOUNT: u64 = 10039;
    /// JetStream not enabled.
    pub(crate) const NOT_ENABLED: u64 = 10076;
    /// Store failed (limits reached with discard new: "maximum messages exceeded", ...).
    pub(crate) const STORE_FAILED: u64 = 10077;
    /// Message larger than the stream's maximum message size.
    pub(crate) const MESSAGE_TOO_LARGE: u64 = 10054;
    /// Atomic batch: a message id in the batch is a duplicate.
    pub(crate) const BATCH_DUPLICATE_MSG_ID: u64 = 10201;
    /// Message get: no message found.
    pub(crate) const NO_MESSAGE_FOUND: u64 = 10037;
}

/// A JetStream API error as the server sends it.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ApiError {
    #[serde(default)]
    pub(crate) err_code: u64,
    #[serde(default)]
    pub(crate) description: String,
}

/// A publish acknowledgement, or the server's refusal.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct PubAckResponse {
    #[serde(default)]
    pub(crate) error: Option<ApiError>,
    #[serde(default)]
    pub(crate) seq: u64,
    #[serde(default)]
    pub(crate) duplicate: bool,
    #[serde(default)]
    pub(crate) count: Option<u64>,
}

/// The outcome of a publish: stored, or refused with a JetStream error.
#[derive(Debug)]
pub(crate) enum Published {
    Stored {
        seq: u64,
        duplicate: bool,
        count: Option<u64>,
    },
    Refused(ApiError),
}

pub(crate) fn server_error(e: &ApiError) -> StoreError {
    let kind = match e.err_code {
        codes::STREAM_NOT_FOUND => StoreErrorKind::StreamNotFound,
        codes::MESSAGE_TOO_LARGE => StoreErrorKind::Server {
            code: e.err_code,
            description: format!("{} (the stream's max_msg_size)", e.description),
        },
        codes::STORE_FAILED
            if e.description.contains("maximum") && e.description.contains("exceeded") =>
        {
            StoreErrorKind::StreamFull
        }
        _ => StoreErrorKind::Server {
            code: e.err_code,
            description: e.description.clone(),
        },
    };
    StoreError::new(kind)
}

pub(crate) fn request_error(
    err: async_nats::RequestError,
    subject: &str,
    timeout: Duration,
) -> StoreError {
    use async_nats::RequestErrorKind as K;
    match err.kind() {
        K::TimedOut => timed_out(subject, timeout),
        K::NoResponders => StoreError::with_source(StoreErrorKind::StreamNotFound, err),
        K::InvalidSubject => StoreError::with_source(StoreErrorKind::InvalidSubject, err),
        K::Other if err.to_string().contains("permission") => StoreError::with_source(
            StoreErrorKind::PermissionDenied {
                subject: subject.to_owned(),
            },
            err,
        ),
        _ => StoreError::with_source(StoreErrorKind::Connection, err),
    }
}

/// No reply to a request on `subject`: [`StoreErrorKind::TimedOut`] whose message names the
/// subject and the likely cause (permissions).
pub(crate) fn timed_out(subject: &str, timeout: Duration) -> StoreError {
    StoreError::with_source(
        StoreErrorKind::TimedOut,
        permissions::no_reply(subject, Some(timeout)),
    )
}

/// [`StoreErrorKind::PermissionDenied`] naming the refused subject, the user and the rule.
pub(crate) fn denied_error(denied: Denied) -> StoreError {
    StoreError::with_source(
        StoreErrorKind::PermissionDenied {
            subject: denied.subject.clone(),
        },
        denied,
    )
}

/// Runs `request`, which needs `needs`; a slow one whose needs the user's permissions refuse
/// ends early with [`StoreErrorKind::PermissionDenied`] (see [`permissions`]).
pub(crate) async fn guarded<T>(
    client: &Client,
    needs: &[Need<'_>],
    request: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    permissions::unless_denied(client, needs, request)
        .await
        .unwrap_or_else(|denied| Err(denied_error(denied)))
}

/// A reply, or the news that the client reconnected while waiting for it.
#[derive(Debug)]
pub(crate) enum Answer<T> {
    /// The server answered.
    Got(T),
    /// The client reconnected while the request waited: the request or its reply may have been
    /// lost with the old connection. The caller sends it again, or, for a read that may itself
    /// have broken the connection (a message the client cannot parse), reads through the JSON
    /// API instead ([`msg_get`]).
    Reconnected,
}

/// A request that got no answer in time: [`StoreErrorKind::Connection`] when the client is not
/// connected (the server is down or restarting; the error says so), else
/// [`StoreErrorKind::TimedOut`] naming the subject and the likely cause.
pub(super) fn no_answer(client: &Client, subject: &str, timeout: Duration) -> StoreError {
    let state = client.connection_state();
    if state != async_nats::connection::State::Connected {
        return StoreError::with_source(
            StoreErrorKind::Connection,
            format!(
                "no reply to {subject:?} within {timeout:?}: the client is not connected to a \
                 server ({state}); it reconnects by itself"
            ),
        );
    }
    timed_out(subject, timeout)
}

/// Sends `request` to `subject` and returns the reply, waiting at most `timeout`; a slow reply
/// has the user's permissions checked meanwhile (see [`permissions`]). The request's own
/// timeout is not used: one timer serves all.
pub(super) async fn send_request(
    client: &Conn,
    subject: &str,
    request: async_nats::Request,
    timeout: Duration,
) -> Result<Answer<async_nats::Message>, StoreError> {
    let needs = [Need::Publish(subject), Need::ReplyInbox];
    let epoch = client.epoch();
    // Pinned here, so that the request's future is not moved into the guard's.
    let sent = std::pin::pin!(client.send_request(subject.to_owned(), request.timeout(None)));
    match permissions::unless_denied_within(client, &needs, timeout, epoch, sent).await {
        Ok(Waited::Done(Ok(reply))) => Ok(Answer::Got(reply)),
        Ok(Waited::Done(Err(e))) => Err(request_error(e, subject, timeout)),
        Ok(Waited::TimedOut) => Err(no_answer(client, subject, timeout)),
        Ok(Waited::Reconnected) => Ok(Answer::Reconnected),
        Err(denied) => Err(denied_error(denied)),
    }
}

/// [`send_request`] for a request that may be sent twice (a read, or a write that is
/// idempotent): sent again when the client reconnected while it waited, until `timeout`.
pub(crate) async fn request_again_on_reconnect(
    client: &Conn,
    subject: &str,
    payload: Bytes,
    timeout: Duration,
) -> Result<async_nats::Message, StoreError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(no_answer(client, subject, timeout));
        }
        let request = async_nats::Request::new().payload(payload.clone());
        match send_request(client, subject, request, left).await? {
            Answer::Got(reply) => return Ok(reply),
            Answer::Reconnected => {
                tracing::debug!(
                    subject,
                    "the client reconnected during a request; sending it again"
                );
            }
        }
    }
}

/// Publishes one message as a request and reads the publish acknowledgement.
/// [`Answer::Reconnected`]: the outcome is unknown (the store sends the append again, which is
/// idempotent).
pub(crate) async fn publish(
    client: &Conn,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
    timeout: Duration,
) -> Result<Answer<Published>, StoreError> {
    let message = async_nats::Request::new().headers(headers).payload(payload);
    match send_request(client, &subject, message, timeout).await? {
        Answer::Got(reply) => parse_ack(&reply.payload).map(Answer::Got),
        Answer::Reconnected => Ok(Answer::Reconnected),
    }
}

/// Publishes `messages` (subject, headers, body) as one atomic batch (ADR-50): a new batch id,
/// each message's place from 1, the commit on the last, which alone is a request. The
/// messages carry their own expectations. One message is a plain [`publish`].
pub(crate) async fn publish_batch(
    client: &Conn,
    messages: Vec<(String, HeaderMap, Bytes)>,
    timeout: Duration,
) -> Result<Answer<Published>, StoreError> {
    let count = messages.len();
    let batch = (count > 1).then(|| uuid::Uuid::new_v4().simple().to_string());
    for (i, (subject, mut headers, payload)) in messages.into_iter().enumerate() {
        if let Some(batch) = &batch {
            headers.insert(crate::headers::BATCH_ID, batch.as_str());
            headers.insert(crate::headers::BATCH_SEQUENCE, (i + 1).to_string().as_str());
        }
        if i + 1 == count {
            if batch.is_some() {
                headers.insert(crate::headers::BATCH_COMMIT, "1");
            }
            return publish(client, subject, headers, payload, timeout).await;
        }
        client
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(|e| StoreError::with_source(StoreErrorKind::Connection, e))?;
    }
    Err(StoreError::new(StoreErrorKind::InvalidAppend(
        "no messages to publish".to_owned(),
    )))
}

/// Is this `get_stream` error the server saying there is no such stream?
pub(crate) fn stream_missing(e: &async_nats::jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        async_nats::jetstream::context::GetStreamErrorKind::JetStream(ref j)
            if j.error_code().0 == codes::STREAM_NOT_FOUND
    )
}

pub(crate) fn parse_ack(payload: &[u8]) -> Result<Published, StoreError> {
    let ack: PubAckResponse = serde_json::from_slice(payload).map_err(|e| {
        StoreError::with_source(
            StoreErrorKind::UnexpectedAnswer(format!(
                "unreadable publish acknowledgement: {}",
                String::from_utf8_lossy(payload)
            )),
            e,
        )
    })?;
    Ok(match ack.error {
        Some(e) => Published::Refused(e),
        None => Published::Stored {
            seq: ack.seq,
            duplicate: ack.duplicate,
            count: ack.count,
        },
    })
}
