//! JetStream API requests answered in JSON: a message through `STREAM.MSG.GET` (its headers
//! base64-encoded, so never parsed by the client), creating a consumer, a stream's state.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{codes, request_again_on_reconnect, server_error, ApiError, Conn};
use crate::jetstream::codec::RawMessage;
use crate::store::{StoreError, StoreErrorKind};

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
    client: &Conn,
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
    client: &Conn,
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
    client: &Conn,
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
