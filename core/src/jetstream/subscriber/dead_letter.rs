//! The dead letter: where an event goes when it cannot be handled.
//!
//! An event is dead-lettered after its last failed delivery, at once when its handler returns a
//! permanent error, and at once when the message is not a readable event. The consumer then
//! terminates it (it is never delivered to that consumer again) and goes on with the next
//! events.
//!
//! The dead letter is a message in its own stream (default `DLQ` on `dlq.>`, created if
//! missing), on the subject `{prefix}.{stream}.{consumer}` (default prefix `dlq`): never under
//! a domain's subjects, so no domain consumer sees it. It carries:
//!
//! - the original body;
//! - the original headers, except JetStream's own `Nats-*` headers (so no
//!   `Nats-Expected-*` check or batch header applies to the copy); the original `Nats-Msg-Id`
//!   is kept as [`ORIGINAL_MSG_ID`];
//! - [`ORIGINAL_SUBJECT`], [`ORIGINAL_STREAM`], [`ORIGINAL_SEQUENCE`], [`CONSUMER`],
//!   [`DELIVERY_COUNT`], [`ERROR`], [`REASON`] and [`TIME`].
//!
//! Its own `Nats-Msg-Id` is `dlq:{stream}:{consumer}:{sequence}`, so retrying a dead letter
//! does not store it twice.
//!
//! Dead letters are listed, inspected, discarded and handled again (redriven, by the running
//! durable subscriber that gave up on them) through [`super::DeadLetters`].
//!
//! A dead letter always fits in one message: when the copy would exceed the server's
//! `max_payload` (an event near that size, or one with huge headers), the body is left out and
//! [`BODY`] says so and where the event stays (its stream and sequence); if the headers alone
//! are still too large, the original headers longer than 1 KiB are left out too and [`HEADERS`]
//! says how many.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use bytes::Bytes;

use crate::headers as h;
use crate::jetstream::api::codes;
use crate::jetstream::config::Storage;
use crate::jetstream::subscriber::{SubscriberError, SubscriberErrorKind};
use crate::subject::{subject_matches, validate_token};

/// Header: the original event's `Nats-Msg-Id` (its event id).
pub const ORIGINAL_MSG_ID: &str = "Cim-Original-Msg-Id";
/// Header: the subject the event was stored on.
pub const ORIGINAL_SUBJECT: &str = "Cim-Original-Subject";
/// Header: the stream the event was read from.
pub const ORIGINAL_STREAM: &str = "Cim-Original-Stream";
/// Header: the event's stream sequence in that stream.
pub const ORIGINAL_SEQUENCE: &str = "Cim-Original-Sequence";
/// Header: the consumer that gave up on the event.
pub const CONSUMER: &str = "Cim-Dead-Letter-Consumer";
/// Header: how many times the event was delivered.
pub const DELIVERY_COUNT: &str = "Cim-Dead-Letter-Deliveries";
/// Header: the last error (one line, at most 4 KiB).
pub const ERROR: &str = "Cim-Dead-Letter-Error";
/// Header: why the event was dead-lettered: [`REASON_DELIVERIES_EXHAUSTED`],
/// [`REASON_PERMANENT_ERROR`], [`REASON_UNDECODABLE`], [`REASON_OUT_OF_ORDER`] or
/// [`REASON_PARKED`].
pub const REASON: &str = "Cim-Dead-Letter-Reason";
/// Header: when the event was dead-lettered, RFC 3339.
pub const TIME: &str = "Cim-Dead-Letter-Time";
/// Header, only when the body was left out to fit: its size and where the event stays.
pub const BODY: &str = "Cim-Dead-Letter-Body";
/// Header, only when original headers were left out to fit: how many, and their size.
pub const HEADERS: &str = "Cim-Dead-Letter-Headers";

/// [`REASON`]: the handler failed on every allowed delivery.
pub const REASON_DELIVERIES_EXHAUSTED: &str = "deliveries-exhausted";
/// [`REASON`]: the handler returned a permanent error.
pub const REASON_PERMANENT_ERROR: &str = "permanent-error";
/// [`REASON`]: the message is not a readable event, or a typed handler's event type cannot
/// decode it.
pub const REASON_UNDECODABLE: &str = "undecodable";
/// [`REASON`]: the event's aggregate version is not above that of the previous event of its
/// aggregate the subscriber saw (another client stored it out of order).
pub const REASON_OUT_OF_ORDER: &str = "out-of-order";
/// [`REASON`]: not handled but parked behind an earlier event of its aggregate that is in the
/// dead letter (sequenced dead letters, [`super::EventSubscriberBuilder::sequenced_dead_letters`]).
pub const REASON_PARKED: &str = "parked";

/// Longest error text kept in the [`ERROR`] header.
const MAX_ERROR_LEN: usize = 4096;

/// The dead-letter stream a subscriber sends events it gives up on to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterConfig {
    /// The stream's name (default `DLQ`).
    pub stream: String,
    /// The first subject token (default `dlq`): dead letters go to
    /// `{subject_prefix}.{stream}.{consumer}`, and a created stream captures
    /// `{subject_prefix}.>`.
    pub subject_prefix: String,
    /// Storage of a created stream.
    pub storage: Storage,
    /// How long a created stream keeps dead letters (`None`: until deleted).
    pub max_age: Option<Duration>,
    /// Replicas of a created stream.
    pub replicas: usize,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        Self {
            stream: "DLQ".to_owned(),
            subject_prefix: "dlq".to_owned(),
            storage: Storage::File,
            max_age: None,
            replicas: 1,
        }
    }
}

impl DeadLetterConfig {
    /// The subject of the dead letters of one consumer.
    pub fn subject_for(&self, stream: &str, consumer: &str) -> String {
        format!("{}.{stream}.{consumer}", self.subject_prefix)
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        validate_token(&self.stream).map_err(|e| format!("dead-letter stream: {e}"))?;
        validate_token(&self.subject_prefix)
            .map_err(|e| format!("dead-letter subject prefix: {e}"))?;
        if !matches!(self.replicas, 1..=5) {
            return Err(format!(
                "dead-letter replicas must be 1 to 5, not {}",
                self.replicas
            ));
        }
        Ok(())
    }

    /// Creates the dead-letter stream if it does not exist; an existing one must capture the
    /// dead-letter subjects.
    pub(crate) async fn ensure(&self, js: &jetstream::Context) -> Result<(), SubscriberError> {
        let fail = |description: String| {
            SubscriberError::new(SubscriberErrorKind::DeadLetterSetup {
                stream: self.stream.clone(),
                description,
            })
        };
        let probe = format!("{}.s.c", self.subject_prefix);
        for _ in 0..3 {
            match js.get_stream(&self.stream).await {
                Ok(mut existing) => {
                    let info = existing.info().await.map_err(|e| {
                        SubscriberError::with_source(SubscriberErrorKind::Connection, e)
                    })?;
                    if info
                        .config
                        .subjects
                        .iter()
                        .any(|s| subject_matches(s, &probe))
                    {
                        return Ok(());
                    }
                    return Err(fail(format!(
                        "the stream exists with subjects {:?}, which do not capture {}.>",
                        info.config.subjects, self.subject_prefix
                    )));
                }
                Err(e) => {
                    if !crate::jetstream::api::stream_missing(&e) {
                        return Err(SubscriberError::with_source(
                            SubscriberErrorKind::DeadLetterSetup {
                                stream: self.stream.clone(),
                                description: "could not read the stream".to_owned(),
                            },
                            e,
                        ));
                    }
                }
            }
            let config = stream::Config {
                name: self.stream.clone(),
                subjects: vec![format!("{}.>", self.subject_prefix)],
                description: Some("dead letters of cim-nats subscribers".to_owned()),
                retention: stream::RetentionPolicy::Limits,
                discard: stream::DiscardPolicy::Old,
                max_age: self.max_age.unwrap_or_default(),
                storage: match self.storage {
                    Storage::File => stream::StorageType::File,
                    Storage::Memory => stream::StorageType::Memory,
                },
                num_replicas: self.replicas,
                duplicate_window: Duration::from_secs(120),
                allow_direct: true,
                ..Default::default()
            };
            match js.create_stream(config).await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    use jetstream::context::CreateStreamErrorKind;
                    // Created meanwhile by another subscriber: read it on the next round.
                    let exists = matches!(
                        e.kind(),
                        CreateStreamErrorKind::JetStream(j) if j.error_code().0 == codes::STREAM_NAME_EXISTS
                    );
                    if !exists {
                        return Err(SubscriberError::with_source(
                            SubscriberErrorKind::DeadLetterSetup {
                                stream: self.stream.clone(),
                                description: format!("could not create the stream: {e}"),
                            },
                            e,
                        ));
                    }
                }
            }
        }
        Err(fail("the stream could not be created or read".to_owned()))
    }
}

/// What the dead letter says about the event.
#[derive(Debug)]
pub(crate) struct Letter<'a> {
    pub(crate) stream: &'a str,
    pub(crate) consumer: &'a str,
    pub(crate) sequence: u64,
    pub(crate) delivered: u64,
    pub(crate) reason: &'static str,
    pub(crate) error: &'a str,
}

/// One line of at most [`MAX_ERROR_LEN`] bytes: header values cannot hold line breaks.
fn header_text(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

/// The headers of a dead letter for `original` (the delivered message's headers).
pub(crate) fn letter_headers(
    original: Option<&HeaderMap>,
    subject: &str,
    letter: &Letter<'_>,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(original) = original {
        for (name, values) in original.iter() {
            let n: &str = name.as_ref();
            if n.eq_ignore_ascii_case(h::MSG_ID) {
                for v in values {
                    headers.append(ORIGINAL_MSG_ID, v.clone());
                }
            } else if n.len() >= 5 && n[..5].eq_ignore_ascii_case("nats-") {
                // JetStream's own headers (expected sequences, batches, rollups, TTLs) must not
                // act on the copy.
            } else {
                for v in values {
                    headers.append(name.clone(), v.clone());
                }
            }
        }
    }
    headers.insert(ORIGINAL_SUBJECT, subject);
    headers.insert(ORIGINAL_STREAM, letter.stream);
    headers.insert(ORIGINAL_SEQUENCE, letter.sequence.to_string());
    headers.insert(CONSUMER, letter.consumer);
    headers.insert(DELIVERY_COUNT, letter.delivered.to_string());
    headers.insert(REASON, letter.reason);
    headers.insert(ERROR, header_text(letter.error));
    headers.insert(
        TIME,
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    );
    headers.insert(
        h::MSG_ID,
        format!(
            "dlq:{}:{}:{}",
            letter.stream, letter.consumer, letter.sequence
        ),
    );
    headers
}

/// The size of a header map on the wire.
fn headers_size(headers: &HeaderMap) -> usize {
    12 + headers
        .iter()
        .map(|(name, values)| {
            values
                .iter()
                .map(|v| AsRef::<str>::as_ref(name).len() + v.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum::<usize>()
}

/// Room kept for the subject and the protocol around a dead letter.
const MARGIN: usize = 1024;

/// The longest original header value kept when headers must be cut.
const MAX_KEPT_VALUE: usize = 1024;

/// Makes a dead letter fit in `max` bytes (the server's `max_payload`): the body left out
/// first, then the long original headers (see the module's documentation).
pub(crate) fn fit_letter(
    mut headers: HeaderMap,
    payload: &Bytes,
    letter: &Letter<'_>,
    max: usize,
) -> (HeaderMap, Bytes) {
    let limit = max.saturating_sub(MARGIN);
    if headers_size(&headers) + payload.len() <= limit {
        return (headers, payload.clone());
    }
    headers.insert(
        BODY,
        format!(
            "omitted: {} bytes, too large for a dead letter with the headers; the event stays \
             in stream {} at sequence {}",
            payload.len(),
            letter.stream,
            letter.sequence
        ),
    );
    if headers_size(&headers) <= limit {
        return (headers, Bytes::new());
    }
    let ours = [
        ORIGINAL_MSG_ID,
        ORIGINAL_SUBJECT,
        ORIGINAL_STREAM,
        ORIGINAL_SEQUENCE,
        CONSUMER,
        DELIVERY_COUNT,
        ERROR,
        REASON,
        TIME,
        BODY,
        h::MSG_ID,
    ];
    let mut kept = HeaderMap::new();
    let (mut cut, mut cut_bytes) = (0usize, 0usize);
    for (name, values) in headers.iter() {
        let own = ours
            .iter()
            .any(|o| AsRef::<str>::as_ref(name).eq_ignore_ascii_case(o));
        for value in values {
            if own || value.as_str().len() <= MAX_KEPT_VALUE {
                kept.append(name.clone(), value.clone());
            } else {
                cut += 1;
                cut_bytes += value.as_str().len();
            }
        }
    }
    kept.insert(
        HEADERS,
        format!("{cut} original header values of {cut_bytes} bytes left out to fit"),
    );
    (kept, Bytes::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter() -> Letter<'static> {
        Letter {
            stream: "BANK_EVENTS",
            consumer: "c1",
            sequence: 7,
            delivered: 1,
            reason: REASON_UNDECODABLE,
            error: "not JSON",
        }
    }

    #[test]
    fn a_letter_that_fits_is_kept_whole() {
        let headers = letter_headers(None, "bank.account.opened.a", &letter());
        let payload = Bytes::from_static(b"{}");
        let (kept, body) = fit_letter(headers.clone(), &payload, &letter(), 1 << 20);
        assert_eq!(body, payload);
        assert!(kept.get(BODY).is_none());
    }

    #[test]
    fn a_body_at_the_limit_is_left_out_and_said_where_it_stays() {
        let max = 1 << 20;
        let headers = letter_headers(None, "bank.account.opened.a", &letter());
        let payload = Bytes::from(vec![b'x'; max - 100]);
        let (kept, body) = fit_letter(headers, &payload, &letter(), max);
        assert!(body.is_empty());
        let note = kept.get(BODY).unwrap().as_str();
        assert!(note.contains(&format!("{} bytes", max - 100)), "{note}");
        assert!(note.contains("stream BANK_EVENTS at sequence 7"), "{note}");
        assert!(headers_size(&kept) < max);
    }

    #[test]
    fn huge_headers_are_cut_too() {
        let max = 1 << 20;
        let mut original = HeaderMap::new();
        for i in 0..20 {
            original.insert(format!("X-Big-{i}").as_str(), "h".repeat(60_000).as_str());
        }
        original.insert("Cim-Event-Type", "Opened");
        let headers = letter_headers(Some(&original), "bank.account.opened.a", &letter());
        let (kept, body) = fit_letter(headers, &Bytes::from_static(b"{}"), &letter(), max);
        assert!(body.is_empty());
        assert!(headers_size(&kept) + MARGIN <= max);
        assert_eq!(kept.get("Cim-Event-Type").unwrap().as_str(), "Opened");
        assert!(kept
            .get(HEADERS)
            .unwrap()
            .as_str()
            .starts_with("20 original header values"));
        assert_eq!(kept.get(ORIGINAL_SEQUENCE).unwrap().as_str(), "7");
    }

    #[test]
    fn headers_strip_jetstream_ones_and_keep_the_rest() {
        let mut original = HeaderMap::new();
        original.insert("Nats-Msg-Id", "e-1");
        original.insert("Nats-Expected-Last-Subject-Sequence", "4");
        original.insert("Nats-Expected-Last-Subject-Sequence-Subject", "d.*.*.a");
        original.insert("Cim-Event-Type", "Opened");
        let letter = Letter {
            stream: "BANK_EVENTS",
            consumer: "c1",
            sequence: 7,
            delivered: 3,
            reason: REASON_DELIVERIES_EXHAUSTED,
            error: "line one\nline two",
        };
        let headers = letter_headers(Some(&original), "bank.account.opened.a", &letter);
        assert!(headers.get("Nats-Expected-Last-Subject-Sequence").is_none());
        assert!(headers
            .get("Nats-Expected-Last-Subject-Sequence-Subject")
            .is_none());
        assert_eq!(headers.get(ORIGINAL_MSG_ID).unwrap().as_str(), "e-1");
        assert_eq!(
            headers.get("Nats-Msg-Id").unwrap().as_str(),
            "dlq:BANK_EVENTS:c1:7"
        );
        assert_eq!(headers.get("Cim-Event-Type").unwrap().as_str(), "Opened");
        assert_eq!(
            headers.get(ORIGINAL_SUBJECT).unwrap().as_str(),
            "bank.account.opened.a"
        );
        assert_eq!(headers.get(ORIGINAL_SEQUENCE).unwrap().as_str(), "7");
        assert_eq!(headers.get(DELIVERY_COUNT).unwrap().as_str(), "3");
        assert_eq!(headers.get(ERROR).unwrap().as_str(), "line one line two");
    }

    #[test]
    fn long_errors_are_cut_on_a_char_boundary() {
        let text = "é".repeat(MAX_ERROR_LEN);
        let cut = header_text(&text);
        assert!(cut.len() <= MAX_ERROR_LEN);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
