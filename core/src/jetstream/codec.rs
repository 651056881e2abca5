//! Wire format: NATS headers of a [`NewEvent`], and a stored message back into a [`StoredEvent`].

use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::envelope::{StoredEvent, StreamSequence};
use crate::error::{StoreError, StoreErrorKind};
use crate::headers as h;
use crate::store::NewEvent;
use crate::subject::AggregateId;

/// The headers of an event to append, without the concurrency headers.
pub(crate) fn event_headers(
    event: &NewEvent,
    aggregate_id: &AggregateId,
    version: u64,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let mut id_buf = uuid::Uuid::encode_buffer();
    headers.insert(
        h::MSG_ID,
        &*event
            .event_id
            .as_uuid()
            .hyphenated()
            .encode_lower(&mut id_buf),
    );
    headers.insert(h::EVENT_TYPE, &*event.event_type);
    headers.insert(
        h::EVENT_VERSION,
        itoa(u64::from(event.schema_version)).as_str(),
    );
    headers.insert(h::AGGREGATE_TYPE, &*event.aggregate_type);
    headers.insert(h::AGGREGATE_ID, aggregate_id.as_str());
    headers.insert(h::AGGREGATE_VERSION, itoa(version).as_str());
    headers.insert(
        h::TIMESTAMP,
        event
            .timestamp
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            .as_str(),
    );
    headers.insert(h::CONTENT_TYPE, h::JSON);
    if let Some(id) = event.correlation_id {
        headers.insert(
            h::CORRELATION_ID,
            &*id.as_uuid().hyphenated().encode_lower(&mut id_buf),
        );
    }
    if let Some(id) = event.causation_id {
        headers.insert(
            h::CAUSATION_ID,
            &*id.as_uuid().hyphenated().encode_lower(&mut id_buf),
        );
    }
    if let Some(actor) = &event.actor {
        headers.insert(h::ACTOR, actor.as_str());
    }
    headers
}

fn itoa(n: u64) -> String {
    n.to_string()
}

/// A message as read from the stream: subject, sequence, store time, headers and payload.
#[derive(Debug, Clone)]
pub(crate) struct RawMessage {
    pub(crate) subject: String,
    pub(crate) sequence: u64,
    pub(crate) time: DateTime<Utc>,
    pub(crate) headers: HeaderMap,
    pub(crate) payload: Bytes,
}

fn decode_error(sequence: u64, reason: impl Into<String>) -> StoreError {
    StoreError::new(StoreErrorKind::Decode {
        sequence,
        reason: reason.into(),
    })
}

fn header<'a>(raw: &'a RawMessage, name: &str) -> Option<&'a str> {
    raw.headers.get(name).map(|v| v.as_str())
}

fn required<'a>(raw: &'a RawMessage, name: &str) -> Result<&'a str, StoreError> {
    header(raw, name).ok_or_else(|| {
        decode_error(
            raw.sequence,
            format!("header {name} is missing (not written by cim-nats?)"),
        )
    })
}

fn parse_uuid(raw: &RawMessage, name: &str) -> Result<Option<uuid::Uuid>, StoreError> {
    header(raw, name)
        .map(|v| {
            uuid::Uuid::parse_str(v)
                .map_err(|e| decode_error(raw.sequence, format!("header {name}: {e}")))
        })
        .transpose()
}

/// Reads a stored message as an event; every missing or malformed part is an error naming the
/// message's sequence.
pub(crate) fn decode_stored(raw: RawMessage) -> Result<StoredEvent, StoreError> {
    let seq = raw.sequence;
    let event_type = required(&raw, h::EVENT_TYPE)?.to_owned();
    let schema_version = match header(&raw, h::EVENT_VERSION) {
        Some(v) => v
            .parse::<u32>()
            .map_err(|e| decode_error(seq, format!("header {}: {e}", h::EVENT_VERSION)))?,
        None => 1,
    };
    let aggregate_version = required(&raw, h::AGGREGATE_VERSION)?
        .parse::<u64>()
        .map_err(|e| decode_error(seq, format!("header {}: {e}", h::AGGREGATE_VERSION)))?;
    let event_id = parse_uuid(&raw, h::MSG_ID)?
        .ok_or_else(|| decode_error(seq, format!("header {} is missing", h::MSG_ID)))?;
    let last_token = raw.subject.rsplit('.').next().unwrap_or_default();
    let aggregate_id = match header(&raw, h::AGGREGATE_ID) {
        Some(id) if id != last_token => {
            return Err(decode_error(
                seq,
                format!(
                    "header {} is {id:?} but the subject {:?} names another aggregate",
                    h::AGGREGATE_ID,
                    raw.subject
                ),
            ))
        }
        _ => AggregateId::new(last_token).map_err(|e| decode_error(seq, e.to_string()))?,
    };
    let aggregate_type = match header(&raw, h::AGGREGATE_TYPE) {
        Some(t) => t.to_owned(),
        None => raw.subject.split('.').nth(1).unwrap_or_default().to_owned(),
    };
    let timestamp = match header(&raw, h::TIMESTAMP) {
        Some(t) => DateTime::parse_from_rfc3339(t)
            .map_err(|e| decode_error(seq, format!("header {}: {e}", h::TIMESTAMP)))?
            .with_timezone(&Utc),
        None => raw.time,
    };
    let correlation_id = parse_uuid(&raw, h::CORRELATION_ID)?.map(Into::into);
    let causation_id = parse_uuid(&raw, h::CAUSATION_ID)?.map(Into::into);
    let actor = header(&raw, h::ACTOR).map(str::to_owned);
    Ok(StoredEvent {
        event_id: event_id.into(),
        event_type,
        schema_version,
        subject: raw.subject,
        aggregate_type,
        aggregate_id,
        aggregate_version,
        stream_sequence: StreamSequence(seq),
        timestamp,
        correlation_id,
        causation_id,
        actor,
        payload: raw.payload,
    })
}

/// A message delivered by a JetStream consumer, as it is stored (subject, stream sequence,
/// store time, headers, payload); `None` if its reply subject carries no JetStream metadata.
pub(crate) fn raw_from_delivery(message: &async_nats::jetstream::Message) -> Option<RawMessage> {
    let info = message.info().ok()?;
    let time =
        DateTime::from_timestamp(info.published.unix_timestamp(), info.published.nanosecond())
            .unwrap_or_default();
    Some(RawMessage {
        subject: message.subject.to_string(),
        sequence: info.stream_sequence,
        time,
        headers: message.headers.clone().unwrap_or_default(),
        payload: message.payload.clone(),
    })
}
