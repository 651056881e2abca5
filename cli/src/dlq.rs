//! `cim-nats dlq`: the dead letters of subscribers: list, show, redrive (handled again by the
//! running subscriber), discard.

use std::time::Duration;

use cim_nats::jetstream::subscriber::{
    DeadLetter, DeadLetterConfig, DeadLetters, Discarded, Redriven,
};
use serde_json::json;

use crate::output::{confirm, table};
use crate::Error;

/// What to do with dead letters.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Action {
    /// The dead letters, oldest first.
    List(Filter),
    /// One dead letter, whole: why, its headers and the event's body.
    Show {
        /// Its sequence in the dead-letter stream.
        sequence: u64,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The aggregates parked behind a dead letter (subscribers with sequenced dead letters):
    /// their later events wait, in order, until the head is redriven or discarded.
    Parked(Filter),
    /// Has the subscriber that gave up on it handle it again (it must be running); the letter
    /// leaves only when handled. The head of a parked aggregate: then the events parked behind
    /// it, in order.
    Redrive {
        /// Its sequence in the dead-letter stream.
        sequence: u64,
        /// Do not ask (needed when not on a terminal).
        #[arg(long)]
        yes: bool,
    },
    /// Deletes it without handling it. The head of a parked aggregate: by the running
    /// subscriber, which then handles the events parked behind it, in order.
    Discard {
        /// Its sequence in the dead-letter stream.
        sequence: u64,
        /// Do not ask (needed when not on a terminal).
        #[arg(long)]
        yes: bool,
    },
}

/// Whose dead letters or parked aggregates, and how to show them.
#[derive(Debug, clap::Args)]
pub(crate) struct Filter {
    /// Only those of consumers of this stream.
    #[arg(long)]
    stream: Option<String>,
    /// Only those of this consumer.
    #[arg(long)]
    consumer: Option<String>,
    /// JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

/// The dead-letter stream's options.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The dead-letter stream.
    #[arg(long, default_value = "DLQ")]
    dlq_stream: String,
    /// Its subjects' first token.
    #[arg(long, default_value = "dlq")]
    dlq_prefix: String,
    #[command(subcommand)]
    action: Action,
}

fn letter_json(letter: &DeadLetter) -> serde_json::Value {
    let headers: serde_json::Map<String, serde_json::Value> = letter
        .headers
        .iter()
        .map(|(name, values)| {
            let name: &str = name.as_ref();
            (
                name.to_owned(),
                values
                    .first()
                    .map(|v| v.as_str())
                    .unwrap_or_default()
                    .into(),
            )
        })
        .collect();
    let body = serde_json::from_slice::<serde_json::Value>(&letter.body)
        .unwrap_or_else(|_| String::from_utf8_lossy(&letter.body).into());
    json!({
        "sequence": letter.sequence,
        "stream": letter.stream,
        "consumer": letter.consumer,
        "original_sequence": letter.original_sequence,
        "original_subject": letter.original_subject,
        "reason": letter.reason,
        "error": letter.error,
        "deliveries": letter.deliveries,
        "time": letter.time,
        "headers": headers,
        "body": body,
    })
}

/// The line of a redrive or discard of a parked aggregate's head that did not release it.
fn stopped(sequence: u64, done: &str, released: u64, head: Option<u64>, error: &str) -> String {
    let waits = match head {
        Some(head) => {
            format!("the handler failed on dead letter {head} ({error}): the aggregate waits on it")
        }
        None => format!("the aggregate still waits: {error}"),
    };
    format!("dead letter {sequence}: {done}, removed; {released} parked events after it handled; {waits}")
}

pub(crate) async fn run(
    client: &async_nats::Client,
    args: Args,
    timeout: u64,
) -> Result<(), Error> {
    let config = DeadLetterConfig {
        stream: args.dlq_stream.clone(),
        subject_prefix: args.dlq_prefix,
        ..DeadLetterConfig::default()
    };
    let letters = DeadLetters::new(client.clone(), config);
    match args.action {
        Action::List(Filter {
            stream,
            consumer,
            json,
        }) => {
            let list = letters.list(stream.as_deref(), consumer.as_deref()).await?;
            if json {
                for letter in &list {
                    println!("{}", letter_json(letter));
                }
                return Ok(());
            }
            if list.is_empty() {
                println!("no dead letters in {}", args.dlq_stream);
                return Ok(());
            }
            let mut rows = table(&[
                "seq",
                "stream",
                "consumer",
                "event seq",
                "subject",
                "reason",
                "error",
            ]);
            for l in &list {
                let mut error = l.error.clone();
                if error.len() > 60 {
                    let mut end = 60;
                    while !error.is_char_boundary(end) {
                        end -= 1;
                    }
                    error.truncate(end);
                    error.push('…');
                }
                rows.add_row(vec![
                    l.sequence.to_string(),
                    l.stream.clone(),
                    l.consumer.clone(),
                    l.original_sequence.to_string(),
                    l.original_subject.clone(),
                    l.reason.clone(),
                    error,
                ]);
            }
            println!("{rows}");
        }
        Action::Show { sequence, json } => {
            let letter = letters.get(sequence).await?.ok_or_else(|| {
                format!(
                    "no dead letter at sequence {sequence} of {}",
                    args.dlq_stream
                )
            })?;
            let value = letter_json(&letter);
            if json {
                println!("{value}");
            } else {
                println!("{}", serde_json::to_string_pretty(&value)?);
            }
        }
        Action::Parked(Filter {
            stream,
            consumer,
            json,
        }) => {
            let parked = letters
                .parked(stream.as_deref(), consumer.as_deref())
                .await?;
            if json {
                for p in &parked {
                    println!("{}", serde_json::to_value(p)?);
                }
                return Ok(());
            }
            if parked.is_empty() {
                println!("no aggregate parked behind a dead letter");
                return Ok(());
            }
            let mut rows = table(&[
                "stream",
                "consumer",
                "aggregate",
                "head",
                "last event seq",
                "since",
            ]);
            for p in &parked {
                rows.add_row(vec![
                    p.stream.clone(),
                    p.consumer.clone(),
                    p.aggregate.clone(),
                    p.head.to_string(),
                    p.last.to_string(),
                    p.since.clone(),
                ]);
            }
            println!("{rows}");
        }
        Action::Redrive { sequence, yes } => {
            confirm(&format!("redrive dead letter {sequence}"), yes)?;
            match letters
                .redrive(sequence, Duration::from_secs(timeout.max(1) * 6))
                .await?
            {
                Redriven::Handled => println!("dead letter {sequence}: handled, removed"),
                Redriven::Released { released } => println!(
                    "dead letter {sequence}: handled, removed; {released} parked events after it \
                     handled in order; the aggregate is released"
                ),
                Redriven::Stopped {
                    released,
                    head,
                    error,
                } => return Err(stopped(sequence, "handled", released, head, &error).into()),
                Redriven::Failed(e) => {
                    return Err(format!(
                        "dead letter {sequence}: the handler failed again ({e}); it stays"
                    )
                    .into())
                }
            }
        }
        Action::Discard { sequence, yes } => {
            confirm(&format!("discard dead letter {sequence}"), yes)?;
            match letters
                .discard(sequence, Duration::from_secs(timeout.max(1) * 6))
                .await?
            {
                Discarded::Deleted => println!("dead letter {sequence}: discarded"),
                Discarded::Released { released } => println!(
                    "dead letter {sequence}: discarded; {released} parked events after it \
                     handled in order; the aggregate is released"
                ),
                Discarded::Stopped {
                    released,
                    head,
                    error,
                } => return Err(stopped(sequence, "discarded", released, head, &error).into()),
                Discarded::Missing => {
                    return Err(format!(
                        "no dead letter at sequence {sequence} of {}",
                        args.dlq_stream
                    )
                    .into())
                }
            }
        }
    }
    Ok(())
}
