//! Direct gets (ADR-31): one message, or batches of them on literal subjects, straight from
//! any server holding the stream. Fast, but the client parses the headers of what comes back:
//! a reconnection meanwhile is reported ([`Answer::Reconnected`]) so that the caller can read
//! through the JSON API instead ([`super::json::msg_get`]).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;

use super::permissions::{self, Need};
use super::{guarded, no_answer, send_request, Answer, Conn};
use crate::jetstream::codec::RawMessage;
use crate::store::{StoreError, StoreErrorKind};

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
    client: &Conn,
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
    client: &Conn,
    api_subject: &str,
    requests: &[DirectGet],
    timeout: Duration,
) -> Result<(MultiPage, Answer<()>), StoreError> {
    let mut out = MultiPage::default();
    if requests.is_empty() {
        return Ok((out, Answer::Got(())));
    }
    let epoch = client.epoch();
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
    client: &Conn,
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
                if client.epoch() != epoch {
                    return Ok(Answer::Reconnected);
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(no_answer(client, subject, timeout));
                }
            }
        }
    }
}
