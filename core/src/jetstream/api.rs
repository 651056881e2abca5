//! Raw JetStream API calls the store needs beyond what `async-nats` offers: publishes whose
//! errors keep their JetStream codes, batched direct gets, and stream info with a subject filter.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::jetstream::codec::RawMessage;
use crate::store::{StoreError, StoreErrorKind};

pub(crate) mod permissions;

use permissions::{Denied, Need, Waited};

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
fn no_answer(client: &Client, subject: &str, timeout: Duration) -> StoreError {
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
async fn send_request(
    client: &Client,
    subject: &str,
    request: async_nats::Request,
    timeout: Duration,
) -> Result<Answer<async_nats::Message>, StoreError> {
    let needs = [Need::Publish(subject), Need::ReplyInbox];
    let epoch = permissions::epoch(client);
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
    client: &Client,
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
    client: &Client,
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
            StoreErrorKind::UnexpectedAnswer("malformed direct get reply".to_owned()),
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
        defect: None,
    })
}

/// Is this direct-get reply a stored message (it names its sequence), whatever its status line
/// says? A message another client stored with a status line of its own comes back with it.
fn is_stored_message(message: &async_nats::Message) -> bool {
    message
        .headers
        .as_ref()
        .is_some_and(|h| h.get("Nats-Sequence").is_some())
}

/// A stored message that came back with a status line: readable, but not an event.
fn to_raw_with_status(message: async_nats::Message) -> Result<RawMessage, StoreError> {
    let status = message.status;
    let mut raw = to_raw(message)?;
    if let Some(status) = status {
        raw.defect = Some(format!("it was stored with the status line {status}"));
    }
    Ok(raw)
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

/// One message by a single direct get, `None` if there is none. [`Answer::Reconnected`]: the
/// client reconnected meanwhile, possibly because the message is one it cannot parse; read it
/// through [`msg_get`] instead.
pub(crate) async fn direct_get(
    client: &Client,
    api_subject: &str,
    request: &DirectGet,
    timeout: Duration,
) -> Result<Answer<Option<RawMessage>>, StoreError> {
    let payload = Bytes::from(serde_json::to_vec(request).unwrap_or_default());
    let message = async_nats::Request::new().payload(payload);
    let reply = match send_request(client, api_subject, message, timeout).await? {
        Answer::Got(reply) => reply,
        Answer::Reconnected => return Ok(Answer::Reconnected),
    };
    match reply.status.map(|s| s.as_u16()) {
        None | Some(200) => to_raw(reply).map(|raw| Answer::Got(Some(raw))),
        Some(_) if is_stored_message(&reply) => {
            to_raw_with_status(reply).map(|raw| Answer::Got(Some(raw)))
        }
        Some(404) => Ok(Answer::Got(None)),
        Some(_) => Err(status_error(&reply)),
    }
}

/// A request of the JSON message-get API (`$JS.API.STREAM.MSG.GET.<stream>`).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct MsgGet<'a> {
    /// The message at this sequence, or with `next_by_subj` the first at or after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) seq: Option<u64>,
    /// The last message on this subject (wildcards allowed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_by_subj: Option<&'a str>,
    /// The first message on this subject (wildcards allowed) at or after `seq`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) next_by_subj: Option<&'a str>,
    /// With `next_by_subj`: the first such message stored at or after this time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) start_time: Option<chrono::DateTime<chrono::Utc>>,
}

/// What creating a consumer answered that the readers use.
#[derive(Debug, Deserialize)]
pub(crate) struct CreatedConsumer {
    /// Messages matching its filter from its start on.
    #[serde(default)]
    pub(crate) num_pending: u64,
}

#[derive(Debug, Deserialize)]
struct CreateConsumerResponse {
    #[serde(default)]
    error: Option<ApiError>,
    #[serde(flatten)]
    info: Option<CreatedConsumer>,
}

/// Creates a consumer through the JSON API (`$JS.API.CONSUMER.CREATE.<stream>.<name>` with a
/// full request `body`); sent again if the client reconnects meanwhile (creating a named
/// consumer with the same configuration again is idempotent).
pub(crate) async fn create_consumer(
    client: &Client,
    subject: &str,
    body: Bytes,
    timeout: Duration,
) -> Result<CreatedConsumer, StoreError> {
    let reply = request_again_on_reconnect(client, subject, body, timeout).await?;
    let response: CreateConsumerResponse = serde_json::from_slice(&reply.payload)
        .map_err(|e| impossible_answer(subject, &reply.payload, e))?;
    match (response.error, response.info) {
        (Some(e), _) => Err(server_error(&e)),
        (None, Some(info)) => Ok(info),
        (None, None) => Err(impossible_answer(
            subject,
            &reply.payload,
            std::io::Error::other("no consumer info"),
        )),
    }
}

#[derive(Debug, Deserialize)]
struct MsgGetResponse {
    #[serde(default)]
    error: Option<ApiError>,
    #[serde(default)]
    message: Option<StoredMsg>,
}

#[derive(Debug, Deserialize)]
struct StoredMsg {
    subject: String,
    seq: u64,
    #[serde(default)]
    hdrs: Option<String>,
    #[serde(default)]
    data: Option<String>,
    time: chrono::DateTime<chrono::Utc>,
}

/// One message through the JSON API, whose reply carries the stored headers base64-encoded in
/// a JSON body, so that the client never parses them: the safe way to read a message the client
/// may not be able to receive. Its headers are parsed leniently, and a header block the client
/// would refuse is kept as the message's [`RawMessage::defect`]. `None`: no such message. Sent
/// again if the client reconnects meanwhile (a read is idempotent).
pub(crate) async fn msg_get(
    client: &Client,
    stream: &str,
    request: &MsgGet<'_>,
    timeout: Duration,
) -> Result<Option<RawMessage>, StoreError> {
    use base64::Engine as _;
    let subject = format!("$JS.API.STREAM.MSG.GET.{stream}");
    let body = Bytes::from(serde_json::to_vec(request).unwrap_or_default());
    let reply = request_again_on_reconnect(client, &subject, body, timeout).await?;
    let response: MsgGetResponse = serde_json::from_slice(&reply.payload)
        .map_err(|e| impossible_answer(&subject, &reply.payload, e))?;
    if let Some(e) = response.error {
        return match e.err_code {
            codes::NO_MESSAGE_FOUND => Ok(None),
            _ => Err(server_error(&e)),
        };
    }
    let Some(m) = response.message else {
        return Ok(None);
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let decode = |field: Option<String>| match field {
        Some(text) => b64
            .decode(text.as_bytes())
            .map_err(|e| impossible_answer(&subject, &reply.payload, e)),
        None => Ok(Vec::new()),
    };
    let block = decode(m.hdrs)?;
    let payload = Bytes::from(decode(m.data)?);
    let (headers, defect) = crate::jetstream::codec::parse_header_block(&block);
    Ok(Some(RawMessage {
        subject: m.subject,
        sequence: m.seq,
        time: m.time,
        headers,
        payload,
        defect,
    }))
}

/// The server answered something this client cannot make sense of.
fn impossible_answer(
    subject: &str,
    payload: &[u8],
    source: impl std::error::Error + Send + Sync + 'static,
) -> StoreError {
    StoreError::with_source(
        StoreErrorKind::UnexpectedAnswer(format!(
            "unreadable answer to {subject}: {}",
            String::from_utf8_lossy(&payload[..payload.len().min(200)])
        )),
        source,
    )
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
    let reply = request_again_on_reconnect(client, &subject, Bytes::from(body), timeout).await?;
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
/// collects the replies until every batch has ended. [`Answer::Reconnected`]: the client
/// reconnected meanwhile, possibly because one of the messages is one it cannot parse; what
/// arrived before is returned with it, so the caller can go on from there through [`msg_get`].
pub(crate) async fn direct_batches(
    client: &Client,
    api_subject: &str,
    requests: &[DirectGet],
    timeout: Duration,
) -> Result<(MultiPage, Answer<()>), StoreError> {
    let mut out = MultiPage::default();
    if requests.is_empty() {
        return Ok((out, Answer::Got(())));
    }
    let epoch = permissions::epoch(client);
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
            next_reply(client, &mut sub, api_subject, timeout, epoch).await
        })
        .await?,
    );
    let mut ended = 0;
    while ended < requests.len() {
        let answer = match first.take() {
            Some(answer) => answer,
            None => next_reply(client, &mut sub, api_subject, timeout, epoch).await?,
        };
        let Answer::Got(message) = answer else {
            return Ok((out, Answer::Reconnected));
        };
        match message.status.map(|s| s.as_u16()) {
            status if status.is_none_or(|s| s == 200) || is_stored_message(&message) => {
                let pending = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Num-Pending"))
                    .and_then(|v| v.as_str().parse::<u64>().ok())
                    .unwrap_or(0);
                let raw = to_raw_with_status(message)?;
                out.pending
                    .insert(raw.subject.clone(), (raw.sequence, pending));
                out.messages.push(raw);
            }
            // End of one batch, or nothing on that subject.
            Some(204 | 404) => ended += 1,
            Some(_) | None => return Err(status_error(&message)),
        }
    }
    let _ = sub.unsubscribe().await;
    Ok((out, Answer::Got(())))
}

/// The next reply on a request's inbox; [`Answer::Reconnected`] as soon as the client has
/// reconnected since `epoch`.
async fn next_reply(
    client: &Client,
    sub: &mut async_nats::Subscriber,
    subject: &str,
    timeout: Duration,
    epoch: u64,
) -> Result<Answer<async_nats::Message>, StoreError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let wake = (tokio::time::Instant::now() + permissions::RECONNECT_POLL).min(deadline);
        match tokio::time::timeout_at(wake, sub.next()).await {
            Ok(Some(m)) => return Ok(Answer::Got(m)),
            Ok(None) => return Err(StoreError::new(StoreErrorKind::Connection)),
            Err(_) => {
                if permissions::epoch(client) != epoch {
                    return Ok(Answer::Reconnected);
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(no_answer(client, subject, timeout));
                }
            }
        }
    }
}
