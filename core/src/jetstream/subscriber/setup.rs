//! Finding the streams of a subscriber's subjects, and creating its consumers.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use async_nats::{Client, StatusCode};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::jetstream::api::permissions::{self, Denied, Need, SUSPECT_AFTER};
use crate::jetstream::api::ApiError;
use crate::jetstream::subscriber::builder::{DeliverPolicy, Options};
use crate::jetstream::subscriber::{SubscriberError, SubscriberErrorKind};

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

/// How long after the API answered through the request inbox its reply on a new inbox may
/// still take, before the new inbox is taken as refused.
const INBOX_GRACE: Duration = Duration::from_millis(500);

const STREAM_NAMES: &str = "$JS.API.STREAM.NAMES";

fn denied_error(denied: Denied) -> SubscriberError {
    SubscriberError::with_source(
        SubscriberErrorKind::PermissionDenied {
            subject: denied.subject.clone(),
        },
        denied,
    )
}

fn jetstream_disabled() -> SubscriberError {
    SubscriberError::new(SubscriberErrorKind::JetStreamDisabled)
}

/// A JetStream API request whose reply comes to a new inbox of its own, the kind of subject a
/// consumer delivers events to: a reply proves that deliveries can arrive. A user not permitted
/// to subscribe there (or to publish the request) gets nothing back, and the server tells only
/// the client's event callback; so when no reply comes in [`SUSPECT_AFTER`], the user's
/// permissions (if the server tells them) and the same request through the client's request
/// inbox find out why, and the subscription fails with a clear error instead of waiting for
/// events that cannot come.
async fn api_request_on_new_inbox(
    client: &Client,
    subject: &str,
    body: Bytes,
) -> Result<async_nats::Message, SubscriberError> {
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| SubscriberError::with_source(SubscriberErrorKind::Connection, e))?;
    client
        .publish_with_reply(subject.to_owned(), inbox.clone(), body.clone())
        .await
        .map_err(|e| SubscriberError::with_source(SubscriberErrorKind::Connection, e))?;
    let reply = |m: Option<async_nats::Message>| match m {
        Some(m) if m.status == Some(StatusCode::NO_RESPONDERS) => Err(jetstream_disabled()),
        Some(m) => Ok(m),
        None => Err(SubscriberError::new(SubscriberErrorKind::Connection)),
    };
    let deadline = tokio::time::Instant::now() + API_TIMEOUT;
    if let Ok(m) = tokio::time::timeout(SUSPECT_AFTER, replies.next()).await {
        return reply(m);
    }
    let needs = [
        Need::Publish(subject),
        Need::Subscribe(&inbox),
        Need::ReplyInbox,
    ];
    let mut info = std::pin::pin!(permissions::user_info(client));
    let mut info_pending = true;
    let mut through_request_inbox = std::pin::pin!(client.send_request(
        subject.to_owned(),
        async_nats::Request::new()
            .payload(body)
            .timeout(Some(API_TIMEOUT)),
    ));
    let mut request_pending = true;
    let mut answered_elsewhere = None;
    loop {
        let until = answered_elsewhere.map_or(deadline, |t| deadline.min(t + INBOX_GRACE));
        tokio::select! {
            m = replies.next() => return reply(m),
            i = &mut info, if info_pending => {
                info_pending = false;
                if let Some(denied) = i.and_then(|i| i.refusal(client, &needs)) {
                    return Err(denied_error(denied));
                }
            }
            r = &mut through_request_inbox, if request_pending => {
                request_pending = false;
                let answered = match &r {
                    Ok(_) => true,
                    Err(e) => matches!(e.kind(), async_nats::RequestErrorKind::NoResponders),
                };
                if answered {
                    answered_elsewhere = Some(tokio::time::Instant::now());
                }
            }
            () = tokio::time::sleep_until(until) => {
                return Err(match answered_elsewhere {
                    Some(_) => SubscriberError::with_source(
                        SubscriberErrorKind::PermissionDenied {
                            subject: inbox.clone(),
                        },
                        format!(
                            "the JetStream API answered through the client's request inbox but \
                             not on the new inbox {inbox:?}, so the connection's user is most \
                             likely not permitted to subscribe to it; consumers deliver events \
                             to such inboxes, so no event would ever arrive (permit subscribing \
                             to _INBOX.>)"
                        ),
                    ),
                    None => SubscriberError::with_source(
                        SubscriberErrorKind::Connection,
                        permissions::no_reply(subject, Some(API_TIMEOUT)),
                    ),
                });
            }
        }
    }
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
        let reply = api_request_on_new_inbox(client, STREAM_NAMES, Bytes::from(body)).await?;
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

pub(crate) fn deliver_policy(
    policy: DeliverPolicy,
) -> Result<consumer::DeliverPolicy, SubscriberError> {
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
pub(crate) fn consumer_config(
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
    // A request the user is not permitted is dropped, not refused: a slow one is checked
    // against the user's permissions, and a timeout names the likely cause.
    let failed = |subject: &str, e: Box<dyn std::error::Error + Send + Sync>| {
        let description = if permissions::is_timeout(e.as_ref()) {
            permissions::no_reply(subject, None)
        } else {
            e.to_string()
        };
        SubscriberError::with_source(setup_error(description), e)
    };
    let refused = |denied: Denied| {
        SubscriberError::with_source(
            SubscriberErrorKind::PermissionDenied {
                subject: denied.subject.clone(),
            },
            denied,
        )
    };
    let client = js.client();
    let mut config = consumer_config(subjects, options)?;
    let mut resumes = false;
    let handle = js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| SubscriberError::with_source(setup_error(e.to_string()), e))?;
    if let Some(durable) = &options.durable {
        let info_subject = format!("$JS.API.CONSUMER.INFO.{stream}.{durable}");
        let needs = [Need::Publish(&info_subject), Need::ReplyInbox];
        let info = permissions::unless_denied(&client, &needs, handle.consumer_info(durable))
            .await
            .map_err(refused)?;
        match info {
            Ok(info) => {
                if info.config.deliver_subject.is_some() {
                    return Err(SubscriberError::new(setup_error(format!(
                        "durable {durable:?} exists as a push consumer"
                    ))));
                }
                config.deliver_policy = info.config.deliver_policy;
                resumes = true;
            }
            Err(e) if matches!(e.kind(), ConsumerInfoErrorKind::NotFound) => {}
            Err(e) => return Err(failed(&info_subject, e.into())),
        }
    }
    let create_subject = create_subject(stream, &config);
    let needs = [Need::Publish(&create_subject), Need::ReplyInbox];
    let start = config.deliver_policy;
    let consumer = permissions::unless_denied(&client, &needs, handle.create_consumer(config))
        .await
        .map_err(refused)?
        .map_err(|e| failed(&create_subject, e.into()))?;
    let info = consumer.cached_info();
    if resumes {
        tracing::info!(
            stream,
            consumer = %info.name,
            after = info.ack_floor.stream_sequence,
            pending = info.num_pending,
            "durable consumer resumes after its last acknowledged event"
        );
    } else {
        tracing::info!(
            stream,
            consumer = %info.name,
            durable = options.durable.is_some(),
            start = ?start,
            pending = info.num_pending,
            "consumer created"
        );
    }
    Ok(consumer)
}

/// The subject `async-nats` sends a consumer's creation to.
fn create_subject(stream: &str, config: &consumer::pull::Config) -> String {
    match config.name.as_ref().or(config.durable_name.as_ref()) {
        Some(name) if !config.filter_subject.is_empty() => format!(
            "$JS.API.CONSUMER.CREATE.{stream}.{name}.{}",
            config.filter_subject
        ),
        Some(name) => format!("$JS.API.CONSUMER.CREATE.{stream}.{name}"),
        None => format!("$JS.API.CONSUMER.CREATE.{stream}"),
    }
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
