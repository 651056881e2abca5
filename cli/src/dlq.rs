//! `cim-nats dlq`: the dead letters of subscribers: list, show, redrive (handled again by the
//! running subscriber), discard.

use std::time::Duration;

use cim_nats::jetstream::subscriber::{DeadLetter, DeadLetterConfig, DeadLetters, Redriven};
use serde_json::json;

use crate::output::table;
use crate::Error;

/// What to do with dead letters.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Action {
    /// The dead letters, oldest first.
    List {
        /// Only those of consumers of this stream.
        #[arg(long)]
        stream: Option<String>,
        /// Only those of this consumer.
        #[arg(long)]
        consumer: Option<String>,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter, whole: why, its headers and the event's body.
    Show {
        /// Its sequence in the dead-letter stream.
        sequence: u64,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Has the subscriber that gave up on it handle it again (it must be running); the letter
    /// leaves only when handled.
    Redrive {
        /// Its sequence in the dead-letter stream.
        sequence: u64,
    },
    /// Deletes it without handling it.
    Discard {
        /// Its sequence in the dead-letter stream.
        sequence: u64,
    },
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
        Action::List {
            stream,
            consumer,
            json,
        } => {
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
        Action::Redrive { sequence } => {
            match letters
                .redrive(sequence, Duration::from_secs(timeout.max(1) * 6))
                .await?
            {
                Redriven::Handled => println!("dead letter {sequence}: handled, removed"),
                Redriven::Failed(e) => {
                    return Err(format!(
                        "dead letter {sequence}: the handler failed again ({e}); it stays"
                    )
                    .into())
                }
            }
        }
        Action::Discard { sequence } => {
            if letters.discard(sequence).await? {
                println!("dead letter {sequence}: discarded");
            } else {
                return Err(format!(
                    "no dead letter at sequence {sequence} of {}",
                    args.dlq_stream
                )
                .into());
            }
        }
    }
    Ok(())
}
