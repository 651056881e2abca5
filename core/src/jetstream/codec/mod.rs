//! Wire format: NATS headers of a [`NewEvent`], and a stored message back into a [`StoredEvent`].

use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::envelope::{StoredEvent, StreamSequence};
use crate::headers as h;
use crate::store::NewEvent;
use crate::store::{StoreError, StoreErrorKind};
use crate::subject::AggregateId;

mod header_block;

pub(crate) use header_block::parse_header_block;

/// The header names of the wire format as values made at compile time: inserting one costs
/// no allocation (a name made from a `&str` copies it into a buffer of its own, for every
/// event).
pub(crate) mod names {
    use async_nats::header::HeaderName;

    use crate::headers as h;

    pub(crate) const MSG_ID: HeaderName = HeaderName::from_static(h::MSG_ID);
    pub(crate) const EVENT_TYPE: HeaderName = HeaderName::from_static(h::EVENT_TYPE);
    pub(crate) const EVENT_VERSION: HeaderName = HeaderName::from_static(h::EVENT_VERSION);
    pub(crate) const AGGREGATE_TYPE: HeaderName = HeaderName::from_static(h::AGGREGATE_TYPE);
    pub(crate) const AGGREGATE_ID: HeaderName = HeaderName::from_static(h::AGGREGATE_ID);
    pub(crate) const AGGREGATE_VERSION: HeaderName = HeaderName::from_static(h::AGGREGATE_VERSION);
    pub(crate) const CORRELATION_ID: HeaderName = HeaderName::from_static(h::CORRELATION_ID);
    pub(crate) const CAUSATION_ID: HeaderName = HeaderName::from_static(h::CAUSATION_ID);
    pub(crate) const ACTOR: HeaderName = HeaderName::from_static(h::ACTOR);
    pub(crate) const TIMESTAMP: HeaderName = HeaderName::from_static(h::TIMESTAMP);
    pub(crate) const CONTENT_TYPE: HeaderName = HeaderName::from_static(h::CONTENT_TYPE);
    pub(crate) const EXPECTED_LAST_SUBJECT_SEQUENCE: HeaderName =
        HeaderName::from_static(h::EXPECTED_LAST_SUBJECT_SEQUENCE);
    pub(crate) const EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: HeaderName =
        HeaderName::from_static(h::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT);
}

/// The headers of an event to append, without the concurrency headers.
pub(crate) fn event_headers(
    event: &NewEvent,
    aggregate_id: &AggregateId,
    version: u64,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let mut id_buf = uuid::Uuid::encode_buffer();
    headers.insert(
        names::MSG_ID,
        &*event
            .event_id
            .as_uuid()
            .hyphenated()
            .encode_lower(&mut id_buf),
    );
    headers.insert(names::EVENT_TYPE, &*event.event_type);
    headers.insert(
        names::EVENT_VERSION,
        u64::from(event.schema_version).to_string(),
    );
    headers.insert(names::AGGREGATE_TYPE, &*event.entity_kind);
    headers.insert(names::AGGREGATE_ID, aggregate_id.as_str());
    headers.insert(names::AGGREGATE_VERSION, version.to_string());
    headers.insert(
        names::TIMESTAMP,
        event
            .timestamp
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    );
    headers.insert(names::CONTENT_TYPE, h::JSON);
    if let Some(id) = event.correlation_id {
        headers.insert(
            names::CORRELATION_ID,
            &*id.as_uuid().hyphenated().encode_lower(&mut id_buf),
        );
    }
    if let Some(id) = event.causation_id {
        headers.insert(
            names::CAUSATION_ID,
            &*id.as_uuid().hyphenated().encode_lower(&mut id_buf),
        );
    }
    if let Some(actor) = &event.actor {
        headers.insert(names::ACTOR, actor.as_str());
    }
    if let Some(trace) = crate::trace::for_event(&event.event_id) {
        headers.insert(h::TRACEPARENT, trace.traceparent.as_str());
        if let Some(state) = &trace.tracestate {
            headers.insert(h::TRACESTATE, state.as_str());
        }
    }
    headers
}

/// The aggregate version a stored message says it gives its aggregate (`Cim-Aggregate-Version`):
/// what the append protocol needs of an aggregate's last message, whoever wrote it.
pub(crate) fn aggregate_version(raw: &RawMessage) -> Result<u64, StoreError> {
    raw.headers
        .get(h::AGGREGATE_VERSION)
        .and_then(|v| v.as_str().parse::<u64>().ok())
        .ok_or_else(|| {
            decode_error(
                raw.sequence,
                format!(
                    "message on {} has no valid {} header (written by another client?)",
                    raw.subject,
                    h::AGGREGATE_VERSION
                ),
            )
        })
}

/// The event id a stored message carries (`Nats-Msg-Id`), if it is a UUID.
pub(crate) fn event_id(raw: &RawMessage) -> Option<uuid::Uuid> {
    raw.headers
        .get(h::MSG_ID)
        .and_then(|v| uuid::Uuid::parse_str(v.as_str()).ok())
}

/// The aggregate a delivered message belongs to, for ordering its handling: the
/// `Cim-Aggregate-Id` header, else the subject's last token.
pub(crate) fn aggregate_key(headers: Option<&HeaderMap>, subject: &str) -> std::sync::Arc<str> {
    if let Some(id) = headers.and_then(|h| h.get(h::AGGREGATE_ID)) {
        return std::sync::Arc::from(id.as_str());
    }
    std::sync::Arc::from(subject.rsplit('.').next().unwrap_or_default())
}

/// What a delivery's reply subject says: `$JS.ACK.<stream>.<consumer>.<delivered>.<stream
/// seq>.<delivery seq>.<time ns>.<pending>`, with a domain and an account hash after `ACK` in
/// the newer form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AckInfo {
    pub(crate) delivered: u64,
    pub(crate) stream_sequence: u64,
    pub(crate) delivery_sequence: u64,
    pub(crate) time_ns: i64,
    pub(crate) pending: u64,
}

/// Parses a delivery's reply subject; `None` if it is not a JetStream delivery.
pub(crate) fn ack_info(reply: &str) -> Option<AckInfo> {
    let rest = reply.strip_prefix("$JS.ACK.")?;
    let tokens: Vec<&str> = rest.split('.').collect();
    let offset = match tokens.len() {
        7 => 0,
        n if n >= 9 => 2,
        _ => return None,
    };
    let number = |i: usize| tokens.get(offset + i)?.parse::<u64>().ok();
    Some(AckInfo {
        delivered: number(2)?,
        stream_sequence: number(3)?,
        delivery_sequence: number(4)?,
        time_ns: tokens.get(offset + 5)?.parse::<i64>().ok()?,
        pending: number(6)?,
    })
}

/// A message as read from the stream: subject, sequence, store time, headers and payload.
#[derive(Debug, Clone)]
pub(crate) struct RawMessage {
    pub(crate) subject: String,
    pub(crate) sequence: u64,
    pub(crate) time: DateTime<Utc>,
    pub(crate) headers: HeaderMap,
    pub(crate) payload: Bytes,
    /// Why the NATS client cannot parse this message's header block, if it cannot (the message
    /// was then read through the JSON API and its headers parsed leniently): it is unreadable.
    pub(crate) defect: Option<String>,
}

/// A decode error whose cause is `source` (kept, and shown after `reason`).
fn decode_error_from(
    sequence: u64,
    reason: impl Into<String>,
    source: impl std::error::Error + Send + Sync + 'static,
) -> StoreError {
    StoreError::with_source(
        StoreErrorKind::Decode {
            sequence,
            reason: reason.into(),
        },
        source,
    )
}

fn decode_error(sequence: u64, reason: impl Into<String>) -> StoreError {
    StoreError::new(StoreErrorKind::Decode {
        sequence,
        reason: reason.into(),
    })
}

/// The headers of the wire format found on a message, read in one pass over its header map
/// (looking each name up would build a header name per lookup).
#[derive(Default)]
struct Found<'a> {
    msg_id: Option<&'a str>,
    event_type: Option<&'a str>,
    event_version: Option<&'a str>,
    entity_kind: Option<&'a str>,
    aggregate_id: Option<&'a str>,
    aggregate_version: Option<&'a str>,
    correlation_id: Option<&'a str>,
    causation_id: Option<&'a str>,
    actor: Option<&'a str>,
    timestamp: Option<&'a str>,
    /// A header of the wire format that appears with different values (clients disagree on
    /// which one counts, so the message is refused).
    ambiguous: Option<&'a str>,
}

impl<'a> Found<'a> {
    fn scan(headers: &'a HeaderMap) -> Self {
        let mut found = Self::default();
        for (name, values) in headers.iter() {
            let Some(value) = values.last().map(|v| v.as_str()) else {
                continue;
            };
            let slot = match name.as_ref() {
                h::MSG_ID => &mut found.msg_id,
                h::EVENT_TYPE => &mut found.event_type,
                h::EVENT_VERSION => &mut found.event_version,
                h::AGGREGATE_TYPE => &mut found.entity_kind,
                h::AGGREGATE_ID => &mut found.aggregate_id,
                h::AGGREGATE_VERSION => &mut found.aggregate_version,
                h::CORRELATION_ID => &mut found.correlation_id,
                h::CAUSATION_ID => &mut found.causation_id,
                h::ACTOR => &mut found.actor,
                h::TIMESTAMP => &mut found.timestamp,
                _ => continue,
            };
            *slot = Some(value);
            if values.iter().any(|v| v.as_str() != value) && found.ambiguous.is_none() {
                found.ambiguous = Some(name.as_ref());
            }
        }
        found
    }
}

fn required<'a>(seq: u64, value: Option<&'a str>, name: &str) -> Result<&'a str, StoreError> {
    value.ok_or_else(|| {
        decode_error(
            seq,
            format!("header {name} is missing (not written by cim-nats?)"),
        )
    })
}

fn parse_uuid(seq: u64, value: Option<&str>, name: &str) -> Result<Option<uuid::Uuid>, StoreError> {
    value
        .map(|v| {
            uuid::Uuid::parse_str(v)
                .map_err(|e| decode_error_from(seq, format!("header {name}"), e))
        })
        .transpose()
}

/// Reads a stored message as an event; every missing or malformed part is an error naming the
/// message's sequence.
pub(crate) fn decode_stored(raw: RawMessage) -> Result<StoredEvent, StoreError> {
    if let Some(defect) = &raw.defect {
        return Err(decode_error(
            raw.sequence,
            format!(
                "the NATS client cannot read this message's headers ({defect}); it was written \
                 by another client"
            ),
        ));
    }
    decode_parts(
        raw.sequence,
        raw.time,
        raw.subject,
        &raw.headers,
        raw.payload,
    )
}

/// [`decode_stored`] of a message's parts, the headers borrowed.
pub(crate) fn decode_parts(
    seq: u64,
    time: DateTime<Utc>,
    subject: String,
    headers: &HeaderMap,
    payload: Bytes,
) -> Result<StoredEvent, StoreError> {
    let found = Found::scan(headers);
    if let Some(name) = found.ambiguous {
        return Err(decode_error(
            seq,
            format!("header {name} appears several times with different values"),
        ));
    }
    let event_type = required(seq, found.event_type, h::EVENT_TYPE)?.to_owned();
    let schema_version = match found.event_version {
        Some(v) => v
            .parse::<u32>()
            .map_err(|e| decode_error_from(seq, format!("header {}", h::EVENT_VERSION), e))?,
        None => 1,
    };
    let aggregate_version = required(seq, found.aggregate_version, h::AGGREGATE_VERSION)?
        .parse::<u64>()
        .map_err(|e| decode_error_from(seq, format!("header {}", h::AGGREGATE_VERSION), e))?;
    let event_id = parse_uuid(seq, found.msg_id, h::MSG_ID)?
        .ok_or_else(|| decode_error(seq, format!("header {} is missing", h::MSG_ID)))?;
    let last_token = subject.rsplit('.').next().unwrap_or_default();
    let aggregate_id = match found.aggregate_id {
        Some(id) if id != last_token => {
            return Err(decode_error(
                seq,
                format!(
                    "header {} is {id:?} but the subject {:?} names another aggregate",
                    h::AGGREGATE_ID,
                    subject
                ),
            ))
        }
        _ => AggregateId::new(last_token)
            .map_err(|e| decode_error_from(seq, "the subject's last token", e))?,
    };
    let kind_token = subject.split('.').nth(1).unwrap_or_default();
    let entity_kind = match found.entity_kind {
        Some(t) if t != kind_token => {
            return Err(decode_error(
                seq,
                format!(
                    "header {} is {t:?} but the subject {subject:?} names another entity kind",
                    h::AGGREGATE_TYPE
                ),
            ))
        }
        _ => kind_token.to_owned(),
    };
    let timestamp = match found.timestamp {
        Some(t) => DateTime::parse_from_rfc3339(t)
            .map_err(|e| decode_error_from(seq, format!("header {}", h::TIMESTAMP), e))?
            .with_timezone(&Utc),
        None => time,
    };
    let correlation_id = parse_uuid(seq, found.correlation_id, h::CORRELATION_ID)?.map(Into::into);
    let causation_id = parse_uuid(seq, found.causation_id, h::CAUSATION_ID)?.map(Into::into);
    let actor = found.actor.map(str::to_owned);
    Ok(StoredEvent {
        event_id: event_id.into(),
        event_type,
        schema_version,
        subject,
        entity_kind,
        aggregate_id,
        aggregate_version,
        stream_sequence: StreamSequence(seq),
        timestamp,
        correlation_id,
        causation_id,
        actor,
        payload,
    })
}

/// The stream sequence and store time of a delivered message; `None` if its reply subject
/// carries no JetStream metadata.
fn delivery_position(message: &async_nats::jetstream::Message) -> Option<(u64, DateTime<Utc>)> {
    let info = message.info().ok()?;
    let time =
        DateTime::from_timestamp(info.published.unix_timestamp(), info.published.nanosecond())
            .unwrap_or_default();
    Some((info.stream_sequence, time))
}

/// A message delivered by a JetStream consumer read as an event (its headers borrowed, not
/// copied); `None` if its reply subject carries no JetStream metadata.
pub(crate) fn decode_delivery(
    message: &async_nats::jetstream::Message,
) -> Option<Result<StoredEvent, StoreError>> {
    let (sequence, time) = delivery_position(message)?;
    let empty = HeaderMap::new();
    Some(decode_parts(
        sequence,
        time,
        message.subject.to_string(),
        message.headers.as_ref().unwrap_or(&empty),
        message.payload.clone(),
    ))
}

/// The event stream's sequence and subject of a message of a partitioned view (its
/// `Nats-Stream-Source` header and its subject less `cim_p.{partition}.`).
pub(crate) fn view_origin(message: &async_nats::jetstream::Message) -> Option<(u64, String)> {
    let source = message.headers.as_ref()?.get("Nats-Stream-Source")?;
    let sequence = source.as_str().split_whitespace().nth(1)?.parse().ok()?;
    let subject = message
        .subject
        .as_str()
        .strip_prefix(crate::jetstream::PARTITION_PREFIX)?
        .strip_prefix('.')?
        .split_once('.')?
        .1
        .to_owned();
    Some((sequence, subject))
}

/// A message of a partitioned view read as the event it copies: the event stream's sequence
/// and subject; `None` if it carries no JetStream metadata or names no origin.
pub(crate) fn decode_view_delivery(
    message: &async_nats::jetstream::Message,
) -> Option<Result<StoredEvent, StoreError>> {
    let (_, time) = delivery_position(message)?;
    let (sequence, subject) = view_origin(message)?;
    let empty = HeaderMap::new();
    Some(decode_parts(
        sequence,
        time,
        subject,
        message.headers.as_ref().unwrap_or(&empty),
        message.payload.clone(),
    ))
}

#[cfg(test)]
mod proptests;

/// The span of one event's application, when the event carries a trace (`crate::trace`).
pub(crate) fn trace_span(projection: &str, raw: &RawMessage) -> Option<tracing::Span> {
    let header = |name: &str| raw.headers.get(name).map(|v| v.as_str());
    crate::trace::projection_span(
        projection,
        raw.sequence,
        header(crate::headers::TRACEPARENT),
        header(crate::headers::TRACESTATE),
    )
}

#[cfg(test)]
mod ack_subjects {
    use super::*;

    #[test]
    fn reply_subjects_are_read_in_both_forms() {
        let v1 = ack_info("$JS.ACK.ORDERS.c1.2.17.9.1700000000000000000.42").unwrap();
        assert_eq!(
            v1,
            AckInfo {
                delivered: 2,
                stream_sequence: 17,
                delivery_sequence: 9,
                time_ns: 1_700_000_000_000_000_000,
                pending: 42
            }
        );
        let v2 = ack_info("$JS.ACK.hub.ACCHASH.ORDERS.c1.1.5.5.1700000000000000000.0.tok").unwrap();
        assert_eq!(v2.stream_sequence, 5);
        assert_eq!(v2.pending, 0);
        assert!(ack_info("_INBOX.abc").is_none());
        assert!(ack_info("$JS.ACK.S.c.x.1.1.1.1").is_none());
    }
}
