//! Wire format: NATS headers of a [`NewEvent`], and a stored message back into a [`StoredEvent`].

use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::envelope::{StoredEvent, StreamSequence};
use crate::headers as h;
use crate::store::NewEvent;
use crate::store::{StoreError, StoreErrorKind};
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
    headers.insert(h::AGGREGATE_TYPE, &*event.entity_kind);
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

/// A header block as stored, parsed leniently: the headers that could be read (bytes that are
/// not UTF-8 replaced by U+FFFD, lines that are not headers left out), and why `async-nats`
/// would refuse the block, if it would.
///
/// `async-nats` (0.51) reads a delivered message's headers strictly and drops the whole
/// connection when they do not parse: bytes that are not UTF-8, a first line other than
/// `NATS/1.0[ status]`, a status that is not three digits, a non-empty line without `:`, or a
/// header name with a space, a control character or a non-ASCII byte. The server stores such
/// messages as any client sent them. This function decides the same way, so that a message read
/// through the JSON API (where headers come base64-encoded) is known to be one the client
/// cannot receive.
pub(crate) fn parse_header_block(block: &[u8]) -> (HeaderMap, Option<String>) {
    let mut headers = HeaderMap::new();
    if block.is_empty() {
        return (headers, None);
    }
    let mut defects: Vec<String> = Vec::new();
    let text = match std::str::from_utf8(block) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(e) => {
            defects.push(format!(
                "a header is not valid UTF-8 (byte {} of the header block)",
                e.valid_up_to()
            ));
            String::from_utf8_lossy(block)
        }
    };
    let mut lines = text.lines().peekable();
    match lines.next() {
        Some(first) => match first.strip_prefix("NATS/1.0") {
            Some(rest) => {
                let status = rest.trim().split(' ').next().unwrap_or_default();
                if !status.is_empty() {
                    if async_nats::StatusCode::from_bytes(status.as_bytes()).is_err() {
                        defects.push(format!("the status {status:?} is not a status code"));
                    } else {
                        defects.push(format!("it carries the status line {:?}", first.trim()));
                    }
                }
            }
            None => defects.push(format!(
                "the header block starts with {:?}, not NATS/1.0",
                first.chars().take(40).collect::<String>()
            )),
        },
        None => defects.push("the header block has no version line".to_owned()),
    }
    while let Some(line) = lines.next() {
        if line.is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            defects.push(format!(
                "the header line {:?} has no ':'",
                line.chars().take(40).collect::<String>()
            ));
            continue;
        };
        let mut value = value.trim_start().to_owned();
        while let Some(more) = lines.next_if(|l| l.starts_with(char::is_whitespace)) {
            value.push_str(more);
        }
        let value = value.trim_end();
        match name.parse::<async_nats::header::HeaderName>() {
            Ok(name) => headers.append(name, value),
            Err(_) => defects.push(format!(
                "the header name {:?} has a space, a control character or a non-ASCII byte",
                name.chars().take(40).collect::<String>()
            )),
        }
    }
    let defect = (!defects.is_empty()).then(|| defects.join("; "));
    (headers, defect)
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
fn decode_parts(
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
    let entity_kind = match found.entity_kind {
        Some(t) => t.to_owned(),
        None => subject.split('.').nth(1).unwrap_or_default().to_owned(),
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

#[cfg(test)]
mod header_block {
    use super::parse_header_block;

    #[test]
    fn a_good_block_reads_without_defect() {
        let (h, defect) =
            parse_header_block(b"NATS/1.0\r\nCim-Actor: ada\r\nX-Long: a\r\n  b\r\n\r\n");
        assert_eq!(defect, None);
        assert_eq!(h.get("Cim-Actor").unwrap().as_str(), "ada");
        assert_eq!(h.get("X-Long").unwrap().as_str(), "a  b");
        assert_eq!(parse_header_block(b"").1, None);
    }

    #[test]
    fn what_the_client_refuses_is_a_defect_and_the_rest_is_kept() {
        let (h, defect) =
            parse_header_block(b"NATS/1.0\r\nCim-Actor: \xff\xfe\r\nCim-Event-Type: X\r\n\r\n");
        assert!(defect.unwrap().contains("not valid UTF-8"));
        assert_eq!(h.get("Cim-Actor").unwrap().as_str(), "\u{fffd}\u{fffd}");
        assert_eq!(h.get("Cim-Event-Type").unwrap().as_str(), "X");

        let (h, defect) = parse_header_block(b"NATS/1.0\r\nCim Actor: bob\r\nA: 1\r\n\r\n");
        assert!(defect.unwrap().contains("\"Cim Actor\""));
        assert_eq!(h.get("A").unwrap().as_str(), "1");

        for (block, needle) in [
            (&b"NATS/1.0\r\nnocolon\r\n\r\n"[..], "has no ':'"),
            (b"HTTP/1.1\r\nX: y\r\n\r\n", "not NATS/1.0"),
            (b"NATS/1.0 abc\r\n\r\n", "not a status code"),
            (b"NATS/1.0 503\r\n\r\n", "status line"),
        ] {
            let defect = parse_header_block(block).1.unwrap();
            assert!(defect.contains(needle), "{defect}");
        }
    }
}

/// Hostile stored messages: whatever the headers, subject and payload, decoding never panics,
/// and a message that is not a readable event is a [`StoreErrorKind::Decode`] naming its
/// sequence. 10,000 cases per property; 1,000,000 with `CIM_NATS_SOAK=1`.
#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;
    use crate::subject::Subject;

    fn config() -> ProptestConfig {
        let soak = std::env::var("CIM_NATS_SOAK").is_ok_and(|v| v == "1");
        ProptestConfig {
            cases: if soak { 1_000_000 } else { 10_000 },
            // A failure prints its minimal input; no regression files in the source tree.
            failure_persistence: None,
            // Much faster than the default ChaCha in unoptimised test builds.
            rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
            ..ProptestConfig::default()
        }
    }

    const NAMES: &[&str] = &[
        h::MSG_ID,
        h::EVENT_TYPE,
        h::EVENT_VERSION,
        h::AGGREGATE_TYPE,
        h::AGGREGATE_ID,
        h::AGGREGATE_VERSION,
        h::CORRELATION_ID,
        h::CAUSATION_ID,
        h::ACTOR,
        h::TIMESTAMP,
        h::CONTENT_TYPE,
    ];

    /// A header value as another client might write it: a plausible one, a wrong type, any
    /// text, or a huge one. (`\r` and `\n` cannot be in a value on the wire.)
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => any::<u64>().prop_map(|n| n.to_string()),
            1 => any::<i64>().prop_map(|n| n.to_string()),
            1 => Just(u64::MAX.to_string() + "0"),
            2 => any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string()),
            1 => Just("2024-02-30T25:61:00Z".to_owned()),
            1 => any::<i64>().prop_map(|t| {
                DateTime::from_timestamp(t % 100_000_000_000, 0)
                    .unwrap_or_default()
                    .to_rfc3339()
            }),
            3 => "[^\r\n]{0,40}",
            1 => "[ -~]{0,8}".prop_map(|s| format!(" {s} ")),
            1 => (0usize..8_192).prop_map(|n| "9".repeat(n)),
        ]
    }

    fn header_name() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => proptest::sample::select(NAMES).prop_map(str::to_owned),
            1 => proptest::sample::select(NAMES).prop_map(str::to_lowercase),
            1 => "[!-9;-~]{1,20}",
        ]
    }

    fn headers() -> impl Strategy<Value = HeaderMap> {
        proptest::collection::vec((header_name(), value()), 0..14).prop_map(|pairs| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.append(name.as_str(), value.as_str());
            }
            headers
        })
    }

    fn subject() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "shop\\.[a-z]{1,8}\\.[a-z]{1,8}\\.[a-zA-Z0-9_-]{1,12}",
            1 => "[a-z.*> ]{0,20}",
            1 => "[^\r\n]{0,30}",
        ]
    }

    /// Up to a little more than a server's `max_payload`, made once: cases slice it.
    static HUGE: std::sync::LazyLock<Bytes> =
        std::sync::LazyLock::new(|| Bytes::from(vec![b'x'; 1_100_000]));

    fn payload() -> impl Strategy<Value = Bytes> {
        prop_oneof![
            2 => Just(Bytes::from_static(b"{}")),
            3 => proptest::collection::vec(any::<u8>(), 0..256).prop_map(Bytes::from),
            1 => (0usize..1_100_000).prop_map(|n| HUGE.slice(..n)),
        ]
    }

    fn raw(subject: String, sequence: u64, headers: HeaderMap, payload: Bytes) -> RawMessage {
        RawMessage {
            subject,
            sequence,
            time: DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
            headers,
            payload,
            defect: None,
        }
    }

    /// What must hold of any decoding outcome.
    fn check(
        raw: &RawMessage,
        outcome: Result<StoredEvent, StoreError>,
    ) -> Result<(), TestCaseError> {
        match outcome {
            Ok(event) => {
                prop_assert_eq!(event.stream_sequence, StreamSequence(raw.sequence));
                prop_assert_eq!(&event.subject, &raw.subject);
                // The aggregate id is the subject's last token, a valid one.
                prop_assert_eq!(
                    Some(event.aggregate_id.as_str()),
                    raw.subject.rsplit('.').next()
                );
                prop_assert!(crate::subject::validate_token(event.aggregate_id.as_str()).is_ok());
                // Read from the message's own headers (one of the values, if repeated).
                prop_assert!(raw
                    .headers
                    .get_all(h::EVENT_TYPE)
                    .any(|v| v.as_str() == event.event_type));
                prop_assert!(raw.headers.get_all(h::AGGREGATE_VERSION).any(|v| v
                    .as_str()
                    .parse::<u64>()
                    .ok()
                    == Some(event.aggregate_version)));
                prop_assert_eq!(&event.payload, &raw.payload);
            }
            Err(e) => {
                match e.kind() {
                    StoreErrorKind::Decode { sequence, reason } => {
                        prop_assert_eq!(*sequence, raw.sequence);
                        prop_assert!(!reason.is_empty());
                    }
                    other => prop_assert!(false, "not a decode error: {other:?}"),
                }
                let text = e.to_string();
                let needle = format!("sequence {}", raw.sequence);
                prop_assert!(text.contains(&needle), "{}", text);
            }
        }
        Ok(())
    }

    fn event(id: u128, version: u64, actor: Option<String>) -> (NewEvent, AggregateId) {
        let aggregate = AggregateId::from(uuid::Uuid::from_u128(id.rotate_left(7)));
        let event = NewEvent {
            event_id: uuid::Uuid::from_u128(id).into(),
            event_type: "Placed".into(),
            schema_version: 1 + (version % 5) as u32,
            entity_kind: "order".into(),
            routing_subject: "shop.order.placed".into(),
            payload: Bytes::from(format!("{{\"n\":{version}}}")),
            timestamp: DateTime::from_timestamp(1_700_000_000 + (version % 1_000_000) as i64, 0)
                .unwrap_or_default(),
            correlation_id: Some(uuid::Uuid::from_u128(id ^ 1).into()),
            causation_id: None,
            actor,
        };
        (event, aggregate)
    }

    proptest! {
        #![proptest_config(config())]

        /// Any headers, subject and payload: no panic; an event only if it is a consistent one;
        /// otherwise a decode error naming the sequence.
        #[test]
        fn any_message_decodes_or_names_its_sequence(
            subject in subject(),
            sequence in any::<u64>(),
            headers in headers(),
            payload in payload(),
        ) {
            let raw = raw(subject, sequence, headers, payload);
            let outcome = decode_stored(raw.clone());
            check(&raw, outcome)?;
        }

        /// A well-formed event with one header removed or replaced by anything: still no panic,
        /// and an event only if it is a consistent one.
        #[test]
        fn a_corrupted_header_is_caught(
            id in any::<u128>(),
            version in 1u64..u64::MAX,
            which in proptest::sample::select(NAMES),
            replacement in proptest::option::of(value()),
            sequence in any::<u64>(),
        ) {
            let (event, aggregate) = event(id, version, Some("ops".to_owned()));
            let mut headers = event_headers(&event, &aggregate, version);
            let mut corrupted = HeaderMap::new();
            for (name, values) in headers.iter() {
                let name_str: &str = name.as_ref();
                if !name_str.eq_ignore_ascii_case(which) {
                    for v in values {
                        corrupted.append(name.clone(), v.clone());
                    }
                }
            }
            if let Some(v) = &replacement {
                corrupted.insert(which, v.as_str());
            }
            headers = corrupted;
            let subject = Subject::for_event(&event.routing_subject, &aggregate);
            let raw = raw(subject.into_string(), sequence, headers, event.payload.clone());
            let outcome = decode_stored(raw.clone());
            check(&raw, outcome)?;
        }

        /// What the store writes, it reads back unchanged.
        #[test]
        fn written_events_read_back(
            id in any::<u128>(),
            version in 1u64..u64::MAX,
            actor in proptest::option::of("[^\r\n]{0,40}"),
            sequence in 1u64..u64::MAX,
        ) {
            let (event, aggregate) = event(id, version, actor);
            let headers = event_headers(&event, &aggregate, version);
            let subject = Subject::for_event(&event.routing_subject, &aggregate);
            let raw = raw(subject.to_string(), sequence, headers, event.payload.clone());
            let stored = decode_stored(raw).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(stored.event_id, event.event_id);
            prop_assert_eq!(&stored.event_type, "Placed");
            prop_assert_eq!(stored.schema_version, event.schema_version);
            prop_assert_eq!(stored.subject, subject.to_string());
            prop_assert_eq!(stored.aggregate_id, aggregate);
            prop_assert_eq!(stored.aggregate_version, version);
            prop_assert_eq!(stored.stream_sequence, StreamSequence(sequence));
            prop_assert_eq!(stored.timestamp, event.timestamp);
            prop_assert_eq!(stored.correlation_id, event.correlation_id);
            prop_assert_eq!(stored.causation_id, None);
            prop_assert_eq!(stored.actor, event.actor);
            prop_assert_eq!(stored.payload, event.payload);
        }
    }
}
