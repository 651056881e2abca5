//! `cim-nats events`: a stream's events, filtered by subject tokens and headers, read through an
//! ordered consumer the server deletes when the tool exits.

use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use futures::StreamExt;

use crate::output::{event_json, event_row, table, EVENT_HEADER};
use crate::Error;

/// The options of `cim-nats events`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The domain (its stream is `{DOMAIN}_EVENTS`).
    #[arg(long, required_unless_present = "stream")]
    domain: Option<String>,
    /// The stream, when not `{DOMAIN}_EVENTS`.
    #[arg(long)]
    stream: Option<String>,
    /// Only this aggregate's events.
    #[arg(long)]
    aggregate: Option<String>,
    /// Only events of this entity kind (the subject's second token).
    #[arg(long)]
    entity: Option<String>,
    /// Only events of this type (`Cim-Event-Type`).
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Only events of this correlation id.
    #[arg(long)]
    correlation: Option<String>,
    /// From this stream sequence on.
    #[arg(long, conflicts_with = "since")]
    from: Option<u64>,
    /// From this time on (RFC 3339, e.g. 2026-11-30T12:00:00Z).
    #[arg(long)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// At most this many events.
    #[arg(long)]
    limit: Option<usize>,
    /// Keep reading new events as they are stored (until interrupted).
    #[arg(long)]
    follow: bool,
    /// JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(client: &async_nats::Client, args: Args) -> Result<(), Error> {
    let js = async_nats::jetstream::new(client.clone());
    let stream_name = match (&args.stream, &args.domain) {
        (Some(stream), _) => stream.clone(),
        (None, Some(domain)) => format!("{}_EVENTS", domain.to_uppercase()),
        (None, None) => return Err("--domain or --stream is needed".into()),
    };
    let mut stream = js
        .get_stream(&stream_name)
        .await
        .map_err(|e| crate::status::no_stream(&stream_name, &e))?;
    let info = stream.info().await?.clone();
    let domain = match &args.domain {
        Some(domain) => domain.clone(),
        None => info
            .config
            .subjects
            .first()
            .and_then(|s| s.split('.').next())
            .ok_or_else(|| format!("stream {stream_name} has no subjects to take a domain from"))?
            .to_owned(),
    };
    for (what, token) in [("entity", &args.entity), ("aggregate", &args.aggregate)] {
        if let Some(token) = token {
            cim_nats::subject::validate_token(token).map_err(|e| format!("--{what}: {e}"))?;
        }
    }
    // `{domain}.{entity}.{operation}.{id}`: four tokens (check markers have three).
    let filter = format!(
        "{domain}.{}.*.{}",
        args.entity.as_deref().unwrap_or("*"),
        args.aggregate.as_deref().unwrap_or("*")
    );
    let deliver_policy = match (args.from, args.since) {
        (Some(start_sequence), _) => DeliverPolicy::ByStartSequence { start_sequence },
        (None, Some(since)) => DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(
                since.timestamp_nanos_opt().unwrap_or_default(),
            ))
            .map_err(|e| format!("--since: {e}"))?,
        },
        (None, None) => DeliverPolicy::All,
    };
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: filter.clone(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("reading {stream_name} ({filter}): {e}"))?;
    let mut pending = consumer.cached_info().num_pending;
    let mut shown = 0usize;
    let mut rows = table(&EVENT_HEADER);
    let limit = args.limit.unwrap_or(usize::MAX);
    if (pending > 0 || args.follow) && limit > 0 {
        let mut messages = consumer.messages().await?;
        while let Some(message) = messages.next().await {
            let message = message?;
            let info = message.info()?;
            pending = info.pending;
            let sequence = info.stream_sequence;
            let published = chrono::DateTime::from_timestamp(
                info.published.unix_timestamp(),
                info.published.nanosecond(),
            )
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let headers = message.headers.as_ref();
            let keep = args
                .event_type
                .as_deref()
                .is_none_or(|t| crate::output::header(headers, "Cim-Event-Type") == t)
                && args
                    .correlation
                    .as_deref()
                    .is_none_or(|c| crate::output::header(headers, "Cim-Correlation-Id") == c);
            if keep {
                let event = event_json(
                    sequence,
                    &published,
                    message.subject.as_str(),
                    headers,
                    &message.payload,
                );
                shown += 1;
                if args.json {
                    println!("{event}");
                } else if args.follow {
                    println!("{}", event_row(&event).join("  "));
                } else {
                    rows.add_row(event_row(&event));
                }
            }
            if shown >= limit || (pending == 0 && !args.follow) {
                break;
            }
        }
    }
    if !args.json && !args.follow {
        if shown == 0 {
            println!("no events in {stream_name} match {filter}");
        } else {
            println!("{rows}");
        }
    }
    Ok(())
}
