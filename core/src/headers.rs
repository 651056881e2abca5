//! The NATS header names of the wire format, in one place.
//!
//! A stored event is a NATS message on `{domain}.{aggregate}.{operation}.{aggregate_id}` whose
//! body is the event's JSON and whose metadata travels in these headers, so any NATS client can
//! read it.

/// JetStream's dedupe header; the event id.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// The event type (e.g. `ComputeResourceRegistered`).
pub const EVENT_TYPE: &str = "Cim-Event-Type";
/// The schema version of the payload.
pub const EVENT_VERSION: &str = "Cim-Event-Version";
/// The entity kind (second subject token).
pub const AGGREGATE_TYPE: &str = "Cim-Aggregate-Type";
/// The aggregate id (last subject token).
pub const AGGREGATE_ID: &str = "Cim-Aggregate-Id";
/// The aggregate version this event gives the aggregate (1 for its first event).
pub const AGGREGATE_VERSION: &str = "Cim-Aggregate-Version";
/// Correlation id of the conversation.
pub const CORRELATION_ID: &str = "Cim-Correlation-Id";
/// Id of the message that caused this event.
pub const CAUSATION_ID: &str = "Cim-Causation-Id";
/// Who acted.
pub const ACTOR: &str = "Cim-Actor";
/// When the event happened, RFC 3339.
pub const TIMESTAMP: &str = "Cim-Timestamp";
/// Content type of the body.
pub const CONTENT_TYPE: &str = "Content-Type";
/// The content type of every stored event.
pub const JSON: &str = "application/json";

/// JetStream: the stream sequence the last message on the given subject (or the subjects matched
/// by [`EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT`]) must have.
pub const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
/// JetStream (>= 2.11): the subject filter, possibly with wildcards, the expected sequence applies
/// to.
pub const EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: &str =
    "Nats-Expected-Last-Subject-Sequence-Subject";
/// JetStream atomic batch: the batch id.
pub const BATCH_ID: &str = "Nats-Batch-Id";
/// JetStream atomic batch: the message's position in the batch, from 1.
pub const BATCH_SEQUENCE: &str = "Nats-Batch-Sequence";
/// JetStream atomic batch: set on the last message to commit the batch.
pub const BATCH_COMMIT: &str = "Nats-Batch-Commit";

/// W3C trace context of the span that appended the event (`00-{trace}-{span}-{flags}`), present
/// only when the append ran in a sampled span (feature `otel`).
pub const TRACEPARENT: &str = "traceparent";

/// W3C vendor trace state that goes with [`TRACEPARENT`], when not empty.
pub const TRACESTATE: &str = "tracestate";
