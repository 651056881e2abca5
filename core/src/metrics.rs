//! Metrics, through the [`metrics`](https://docs.rs/metrics) facade: the framework records them
//! and the application chooses the exporter (Prometheus, OpenTelemetry, statsd...) by installing
//! a recorder; with none installed they cost a few atomic loads.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `cim_nats_append_seconds` | histogram | `stream` | time of an append (one or several aggregates), answered or failed |
//! | `cim_nats_append_conflicts_total` | counter | `stream` | appends refused because an aggregate had moved (`WrongExpectedVersion`) |
//! | `cim_nats_append_errors_total` | counter | `stream` | appends that failed otherwise (a timeout, an unreachable server, a refusal) |
//! | `cim_nats_load_seconds` | histogram | `stream` | time to read one aggregate's events |
//! | `cim_nats_handler_seconds` | histogram | `stream`, `consumer` | time a subscriber's handler took for one event |
//! | `cim_nats_handler_failures_total` | counter | `stream`, `consumer` | handlings that failed (an error or a panic) |
//! | `cim_nats_redeliveries_total` | counter | `stream`, `consumer` | events handed to a handler again (delivery count 2 or more) |
//! | `cim_nats_dead_letters_total` | counter | `stream`, `consumer` | events sent to the dead letter |
//! | `cim_nats_projection_lag_events` | gauge | `projection`, `partition` | events of its stream not yet in a read model's committed rows, at its last commit (per partition of a partitioned model; `0` for a model run as one) |
//!
//! For a consumer group, `stream` is the event stream and `consumer` the group's name.

#[cfg(feature = "jetstream")]
use std::time::Duration;

/// Time of an append.
pub const APPEND_SECONDS: &str = "cim_nats_append_seconds";
/// Appends refused by a concurrency conflict.
pub const APPEND_CONFLICTS: &str = "cim_nats_append_conflicts_total";
/// Appends that failed otherwise.
pub const APPEND_ERRORS: &str = "cim_nats_append_errors_total";
/// Time to read one aggregate.
pub const LOAD_SECONDS: &str = "cim_nats_load_seconds";
/// Time of one handling.
pub const HANDLER_SECONDS: &str = "cim_nats_handler_seconds";
/// Handlings that failed.
pub const HANDLER_FAILURES: &str = "cim_nats_handler_failures_total";
/// Events handed to a handler again.
pub const REDELIVERIES: &str = "cim_nats_redeliveries_total";
/// Events sent to the dead letter.
pub const DEAD_LETTERS: &str = "cim_nats_dead_letters_total";
/// A read model's lag behind its stream.
pub const PROJECTION_LAG: &str = "cim_nats_projection_lag_events";

#[cfg(feature = "jetstream")]
/// How an append ended, for its counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AppendEnd {
    Stored,
    Conflict,
    Failed,
}

#[cfg(feature = "jetstream")]
/// Records one append on `stream`.
pub(crate) fn append(stream: &str, took: Duration, end: AppendEnd) {
    let stream = stream.to_owned();
    metrics::histogram!(APPEND_SECONDS, "stream" => stream.clone()).record(took.as_secs_f64());
    match end {
        AppendEnd::Stored => {}
        AppendEnd::Conflict => metrics::counter!(APPEND_CONFLICTS, "stream" => stream).increment(1),
        AppendEnd::Failed => metrics::counter!(APPEND_ERRORS, "stream" => stream).increment(1),
    }
}

#[cfg(feature = "jetstream")]
/// Records one aggregate read on `stream`.
pub(crate) fn load(stream: &str, took: Duration) {
    metrics::histogram!(LOAD_SECONDS, "stream" => stream.to_owned()).record(took.as_secs_f64());
}

#[cfg(feature = "jetstream")]
/// Records one handling by `consumer` of `stream`'s event delivered `delivered` times (the
/// labels shared, not copied: this runs for every event).
pub(crate) fn handled(
    stream: &std::sync::Arc<str>,
    consumer: &std::sync::Arc<str>,
    took: Duration,
    failed: bool,
    delivered: u64,
) {
    let labels = [
        metrics::Label::new(
            "stream",
            metrics::SharedString::from(std::sync::Arc::clone(stream)),
        ),
        metrics::Label::new(
            "consumer",
            metrics::SharedString::from(std::sync::Arc::clone(consumer)),
        ),
    ];
    metrics::histogram!(HANDLER_SECONDS, labels.iter()).record(took.as_secs_f64());
    if failed {
        metrics::counter!(HANDLER_FAILURES, labels.iter()).increment(1);
    }
    if delivered >= 2 {
        metrics::counter!(REDELIVERIES, labels.iter()).increment(1);
    }
}

#[cfg(feature = "jetstream")]
/// Records one dead letter of `consumer` of `stream`.
pub(crate) fn dead_letter(stream: &std::sync::Arc<str>, consumer: &std::sync::Arc<str>) {
    metrics::counter!(
        DEAD_LETTERS,
        "stream" => metrics::SharedString::from(std::sync::Arc::clone(stream)),
        "consumer" => metrics::SharedString::from(std::sync::Arc::clone(consumer))
    )
    .increment(1);
}

#[cfg(feature = "jetstream")]
/// Records a read model's lag at a commit.
pub(crate) fn projection_lag(projection: &str, partition: u32, lag: u64) {
    metrics::gauge!(
        PROJECTION_LAG,
        "projection" => projection.to_owned(),
        "partition" => partition.to_string()
    )
    .set(lag as f64);
}
