//! Hostile stored messages: whatever the headers, subject and payload, decoding never panics,
//! and a message that is not a readable event is a [`StoreErrorKind::Decode`] naming its
//! sequence. 10,000 cases per property; 1,000,000 with `CIM_NATS_SOAK=1`.

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
fn check(raw: &RawMessage, outcome: Result<StoredEvent, StoreError>) -> Result<(), TestCaseError> {
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
