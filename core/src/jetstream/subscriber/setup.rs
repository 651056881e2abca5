//! Finding the streams of a subscriber's subjects, and creating its consumers.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use async_nats::Client;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{SubscriberError, SubscriberErrorKind};
use crate::jetstream::api::ApiError;
use crate::jetstream::subscriber::builder::{DeliverPolicy, Options};

/// How long a JetStream API request may take.
pub(crate) const API_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize)]
struct StreamNamesRequest<'a> {
    subject: &'a str,
    offset: usize,
}

#[derive(Debug, Deserialize)]
struct StreamNamesResponse {
    #[serde(default)]
    error: Option<ApiError>,
    #[serde(default)]
    total: usize,
    #[serde(default)]
    streams: Option<Vec<String>>,
}

fn server_error(e: &ApiError) -> SubscriberError {
    SubscriberError::new(SubscriberErrorKind::Server {
        code: e.err_code,
        description: e.description.clone(),
    })
}

/// The streams whose subjects overlap `subject` (`$JS.API.STREAM.NAMES` with a subject filter).
async fn streams_for(client: &Client, subject: &str) -> Result<Vec<String>, SubscriberError> {
    let mut names = Vec::new();
    loop {
        let body = serde_json::to_vec(&StreamNamesRequest {
            subject,
            offset: names.len(),
        })
        .unwrap_or_default();
        let request = async_nats::Request::new()
            .payload(Bytes::from(body))
            .timeout(Some(API_TIMEOUT));
        let reply = client
            .send_request("$JS.API.STREAM.NAMES".to_owned(), request)
            .await
            .map_err(|e| match e.kind() {
                async_nats::RequestErrorKind::NoResponders => SubscriberError::with_source(
                    SubscriberErrorKind::Server {
                        code: 0,
                        description: "JetStream is not enabled on the server".to_owned(),
                    },
                    e,
                ),
                _ => SubscriberError::with_source(SubscriberErrorKind::Connection, e),
            })?;
        let page: StreamNamesResponse = serde_json::from_slice(&reply.payload)
            .map_err(|e| SubscriberError::with_source(SubscriberErrorKind::Connection, e))?;
        if let Some(e) = page.error {
            return Err(server_error(&e));
        }
        let streams = page.streams.unwrap_or_default();
        if streams.is_empty() {
            break;
        }
        names.extend(streams);
        if names.len() >= page.total {
            break;
        }
    }
    Ok(names)
}

/// The subjects of each stream: every subject goes to every stream that captures part of it.
///
/// # Errors
///
/// [`SubscriberErrorKind::NoStream`] naming the first subject no stream captures.
pub(crate) async fn resolve_streams(
    client: &Client,
    subjects: &[String],
) -> Result<BTreeMap<String, Vec<String>>, SubscriberError> {
    let mut by_stream: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for subject in subjects {
        let streams = streams_for(client, subject).await?;
        if streams.is_empty() {
            return Err(SubscriberError::new(SubscriberErrorKind::NoStream {
                subject: subject.clone(),
            }));
        }
        for stream in streams {
            by_stream.entry(stream).or_default().push(subject.clone());
        }
    }
    Ok(by_stream)
}

fn deliver_policy(policy: DeliverPolicy) -> Result<consumer::DeliverPolicy, SubscriberError> {
    Ok(match policy {
        DeliverPolicy::New => consumer::DeliverPolicy::New,
        DeliverPolicy::All => consumer::DeliverPolicy::All,
        DeliverPolicy::FromSequence(seq) => consumer::DeliverPolicy::ByStartSequence {
            start_sequence: seq.0.max(1),
        },
        DeliverPolicy::FromTime(time) => {
            let nanos = time.timestamp_nanos_opt().ok_or_else(|| {
                SubscriberError::new(SubscriberErrorKind::InvalidConfig(format!(
                    "start time {time} is out of range"
                )))
            })?;
            let start_time = async_nats::datetime::from_nanos(i128::from(nanos)).map_err(|e| {
                SubscriberError::new(SubscriberErrorKind::InvalidConfig(format!(
                    "start time {time}: {e}"
                )))
            })?;
            consumer::DeliverPolicy::ByStartTime { start_time }
        }
    })
}

/// The pull consumer configuration for `subjects` of one stream.
fn consumer_config(
    subjects: &[String],
    options: &Options,
) -> Result<consumer::pull::Config, SubscriberError> {
    let (filter_subject, filter_subjects) = match subjects {
        [one] => (one.clone(), Vec::new()),
        many => (String::new(), many.to_vec()),
    };
    Ok(consumer::pull::Config {
        durable_name: options.durable.clone(),
        name: options.durable.clone(),
        description: options.description.clone(),
        deliver_policy: deliver_policy(options.deliver)?,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: options.ack_wait,
        max_deliver: options
            .max_deliveries
            .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)),
        filter_subject,
        filter_subjects,
        replay_policy: consumer::ReplayPolicy::Instant,
        // The server delivers no more than this many unacknowledged events: what bounds the
        // memory of the subscriber.
        max_ack_pending: i64::try_from(options.max_in_flight).unwrap_or(i64::MAX),
        inactive_threshold: if options.durable.is_some() {
            Duration::ZERO
        } else {
            options.inactive_threshold
        },
        backoff: options.redelivery_backoff.clone(),
        ..Default::default()
    })
}

/// Creates the consumer of one stream, or updates the durable one (keeping where it started:
/// the server does not allow changing it, and a durable resumes anyway).
pub(crate) async fn create_consumer(
    js: &jetstream::Context,
    stream: &str,
    subjects: &[String],
    options: &Options,
) -> Result<consumer::PullConsumer, SubscriberError> {
    use jetstream::context::ConsumerInfoErrorKind;
    let setup_error = |description: String| SubscriberErrorKind::ConsumerSetup {
        stream: stream.to_owned(),
        description,
    };
    let mut config = consumer_config(subjects, options)?;
    let handle = js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| SubscriberError::with_source(setup_error(e.to_string()), e))?;
    if let Some(durable) = &options.durable {
        match handle.consumer_info(durable).await {
            Ok(info) => {
                if info.config.deliver_subject.is_some() {
                    return Err(SubscriberError::new(setup_error(format!(
                        "durable {durable:?} exists as a push consumer"
                    ))));
                }
                config.deliver_policy = info.config.deliver_policy;
            }
            Err(e) if matches!(e.kind(), ConsumerInfoErrorKind::NotFound) => {}
            Err(e) => {
                return Err(SubscriberError::with_source(setup_error(e.to_string()), e));
            }
        }
    }
    handle
        .create_consumer(config)
        .await
        .map_err(|e| SubscriberError::with_source(setup_error(e.to_string()), e))
}

/// Deletes a consumer, ignoring one that is already gone.
pub(crate) async fn delete_consumer(js: &jetstream::Context, stream: &str, consumer: &str) {
    match tokio::time::timeout(
        API_TIMEOUT,
        js.delete_consumer_from_stream(consumer, stream),
    )
    .await
    {
        Ok(Ok(_)) => tracing::debug!(stream, consumer, "ephemeral consumer deleted"),
        Ok(Err(e)) => {
            tracing::debug!(stream, consumer, error = %e, "ephemeral consumer not deleted")
        }
        Err(_) => tracing::warn!(
            stream,
            consumer,
            "deleting the ephemeral consumer timed out"
        ),
    }
}
