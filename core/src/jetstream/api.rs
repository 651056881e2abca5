//! Raw JetStream API calls the store needs beyond what `async-nats` offers: publishes whose
//! errors keep their JetStream codes, batched direct gets, and stream info with a subject filter.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::{StoreError, StoreErrorKind};
use crate::jetstream::codec::RawMessage;

pub(crate) mod permissions;

use permissions::{Denied, Need};

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
        K::Other if err.to_string().contains("permission") => {
            StoreError::with_source(StoreErrorKind::PermissionDenied(subject.to_owned()), err)
        }
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
        StoreErrorKind::PermissionDenied(denied.subject.clone()),
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

/// Sends `request` to `subject` and returns the reply, waiting at most `timeout`; a slow reply
/// has the user's permissions checked meanwhile (see [`permissions`]). The request's own
/// timeout is not used: one timer serves both.
async fn send_request(
    client: &Client,
    subject: &str,
    request: async_nats::Request,
    timeout: Duration,
) -> Result<async_nats::Message, StoreError> {
    let needs = [Need::Publish(subject), Need::ReplyInbox];
    // Pinned here, so that the request's future is not moved into the guard's.
    let sent = std::pin::pin!(client.send_request(subject.to_owned(), request.timeout(None)));
    match permissions::unless_denied_within(client, &needs, timeout, sent).await {
        Ok(Some(Ok(reply))) => Ok(reply),
        Ok(Some(Err(e))) => Err(request_error(e, subject, timeout)),
        Ok(None) => Err(timed_out(subject, timeout)),
        Err(denied) => Err(denied_error(denied)),
    }
}

/// Publishes one message as a request and reads the publish acknowledgement.
pub(crate) async fn publish(
    client: &Client,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
    timeout: Duration,
) -> Result<Published, StoreError> {
    let message = async_nats::Request::new().headers(headers).payload(payload);
    let reply = send_request(client, &subject, message, timeout).await?;
    parse_ack(&reply.payload)
}

pub(crate) fn parse_ack(payload: &[u8]) -> Result<Published, StoreError> {
    let ack: PubAckResponse = serde_json::from_slice(payload).map_err(|e| {
        StoreError::with_source(
            StoreErrorKind::Server {
                code: 0,
                description: format!(
                    "unreadable publish acknowledgement: {}",
                    String::from_utf8_lossy(payload)
                ),
            },
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

/// A direct-get request (ADR-31).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct DirectGet {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_by_subj: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) next_by_subj: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) batch: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) start_time: Option<String>,
}

fn to_raw(message: async_nats::Message) -> Result<RawMessage, StoreError> {
    let m = async_nats::jetstream::message::StreamMessage::try_from(message).map_err(|e| {
        StoreError::with_source(
            StoreErrorKind::Server {
                code: 0,
                description: "malformed direct get reply".to_owned(),
            },
            e,
        )
    })?;
    let time = chrono::DateTime::from_timestamp(m.time.unix_timestamp(), m.time.nanosecond())
        .unwrap_or_default();
    Ok(RawMessage {
        subject: m.subject.to_string(),
        sequence: m.sequence,
        time,
        headers: m.headers,
        payload: m.payload,
    })
}

fn status_error(message: &async_nats::Message) -> StoreError {
    StoreError::new(StoreErrorKind::Server {
        code: message.status.map_or(0, |s| u64::from(s.as_u16())),
        description: message
            .description
            .clone()
            .unwrap_or_else(|| "direct get failed".to_owned()),
    })
}

/// One message by a single direct get, `None` if there is none.
pub(crate) async fn direct_get(
    client: &Client,
    api_subject: &str,
    request: &DirectGet,
    timeout: Duration,
) -> Result<Option<RawMessage>, StoreError> {
    let payload = Bytes::from(serde_json::to_vec(request).unwrap_or_default());
    let message = async_nats::Request::new().payload(payload);
    let reply = send_request(client, api_subject, message, timeout).await?;
    match reply.status.map(|s| s.as_u16()) {
        None | Some(200) => to_raw(reply).map(Some),
        Some(404) => Ok(None),
        Some(_) => Err(status_error(&reply)),
    }
}

#[derive(Debug, Deserialize)]
struct StreamInfoResponse {
    #[serde(default)]
    error: Option<ApiError>,
    #[serde(default)]
    state: Option<StreamState>,
}

#[derive(Debug, Deserialize)]
struct StreamState {
    #[serde(default)]
    last_seq: u64,
    #[serde(default)]
    subjects: Option<HashMap<String, u64>>,
}

#[derive(Debug, Serialize)]
struct StreamInfoRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    subjects_filter: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<usize>,
}

/// The stream's last sequence and, with a filter, the matching subjects with their counts.
pub(crate) async fn stream_state(
    client: &Client,
    stream: &str,
    subjects_filter: Option<&str>,
    timeout: Duration,
) -> Result<(u64, HashMap<String, u64>), StoreError> {
    let subject = format!("$JS.API.STREAM.INFO.{stream}");
    let body = serde_json::to_vec(&StreamInfoRequest {
        subjects_filter,
        offset: None,
    })
    .unwrap_or_default();
    let message = async_nats::Request::new().payload(Bytes::from(body));
    let reply = send_request(client, &subject, message, timeout).await?;
    let info: StreamInfoResponse = serde_json::from_slice(&reply.payload)
        .map_err(|e| StoreError::with_source(StoreErrorKind::Connection, e))?;
    if let Some(e) = info.error {
        return Err(server_error(&e));
    }
    let state = info.state.unwrap_or(StreamState {
        last_seq: 0,
        subjects: None,
    });
    Ok((state.last_seq, state.subjects.unwrap_or_default()))
}

/// What several batched direct gets on one inbox returned: the messages, and per subject the
/// number still pending after the last message received for it.
#[derive(Debug, Default)]
pub(crate) struct MultiPage {
    pub(crate) messages: Vec<RawMessage>,
    pub(crate) pending: HashMap<String, (u64, u64)>,
}

/// Runs several batched direct gets (each on one literal subject) on one inbox, in parallel, and
/// collects the replies until every batch has ended.
pub(crate) async fn direct_batches(
    client: &Client,
    api_subject: &str,
    requests: &[DirectGet],
    timeout: Duration,
) -> Result<MultiPage, StoreError> {
    let mut out = MultiPage::default();
    if requests.is_empty() {
        return Ok(out);
    }
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| StoreError::with_source(StoreErrorKind::Connection, e))?;
    for request in requests {
        let payload = Bytes::from(serde_json::to_vec(request).unwrap_or_default());
        client
            .publish_with_reply(api_subject.to_owned(), inbox.clone(), payload)
            .await
            .map_err(|e| StoreError::with_source(StoreErrorKind::Connection, e))?;
    }
    // The first reply shows that the request went through; until it comes, a slow answer may be
    // a refused publish or inbox.
    let needs = [Need::Publish(api_subject), Need::Subscribe(&inbox)];
    let mut first = Some(
        guarded(client, &needs, async {
            next_reply(&mut sub, api_subject, timeout).await
        })
        .await?,
    );
    let mut ended = 0;
    while ended < requests.len() {
        let message = match first.take() {
            Some(m) => m,
            None => next_reply(&mut sub, api_subject, timeout).await?,
        };
        match message.status.map(|s| s.as_u16()) {
            None | Some(200) => {
                let pending = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Num-Pending"))
                    .and_then(|v| v.as_str().parse::<u64>().ok())
                    .unwrap_or(0);
                let raw = to_raw(message)?;
                out.pending
                    .insert(raw.subject.clone(), (raw.sequence, pending));
                out.messages.push(raw);
            }
            // End of one batch, or nothing on that subject.
            Some(204 | 404) => ended += 1,
            Some(_) => return Err(status_error(&message)),
        }
    }
    let _ = sub.unsubscribe().await;
    Ok(out)
}

/// The next reply on a request's inbox.
async fn next_reply(
    sub: &mut async_nats::Subscriber,
    subject: &str,
    timeout: Duration,
) -> Result<async_nats::Message, StoreError> {
    match tokio::time::timeout(timeout, sub.next()).await {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(StoreError::new(StoreErrorKind::Connection)),
        Err(_) => Err(timed_out(subject, timeout)),
    }
}
