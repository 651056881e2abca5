//! One member process of the consumer-group tests (`tests/tests/scale_out_*.rs`): joins group
//! `GROUP` on the `bank` domain's stream, as a subscriber or a per-key read model, and runs
//! until a line `stop` arrives on its standard input (a graceful leave) or it is killed.
//!
//! `group-member URL GROUP MEMBER PARTITIONS subscriber LOG_FILE`: the handler appends one line
//! per handled event to `LOG_FILE`:
//! `{unix ns} {aggregate id} {version} {event stream sequence} {delivery count} {partition} {epoch}`.
//!
//! `group-member URL GROUP MEMBER PARTITIONS read-model -`: works the partitions of the
//! `balances` read model it holds.
//!
//! It prints `joined` once it is a member.

use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex};

#[path = "../../tests/support/balances.rs"]
mod balances;
#[path = "../../tests/support/bank.rs"]
mod bank;

use std::time::Duration;

use async_trait::async_trait;
use cim_nats::jetstream::group::GroupOptions;
use cim_nats::jetstream::subscriber::EventSubscriberBuilder;
use cim_nats::jetstream::{JetStreamEventStore, ReadModelOptions, ReadModelRunner, StoreConfig};
use cim_nats::subscriber::{Delivery, EventHandler, HandlerError};
use cim_nats::StoredEvent;

type Failure = Box<dyn std::error::Error + Send + Sync>;

/// Writes one line per handled event.
struct Logger {
    file: Mutex<std::fs::File>,
}

#[async_trait]
impl EventHandler for Logger {
    async fn handle(&self, _event: StoredEvent) -> Result<(), HandlerError> {
        Err(HandlerError::msg("handle_delivery is used"))
    }

    async fn handle_delivery(&self, delivery: Delivery) -> Result<(), HandlerError> {
        let (partition, epoch) = delivery
            .lease
            .as_ref()
            .map_or((u32::MAX, 0), |l| (l.partition, l.epoch));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let line = format!(
            "{now} {} {} {} {} {partition} {epoch}\n",
            delivery.event.aggregate_id,
            delivery.event.aggregate_version,
            delivery.event.stream_sequence.0,
            delivery.delivery_count,
        );
        let mut file = self
            .file
            .lock()
            .map_err(|_| HandlerError::msg("log poisoned"))?;
        file.write_all(line.as_bytes())
            .map_err(|e| HandlerError::msg(format!("log: {e}")))?;
        Ok(())
    }
}

/// Waits for `stop` on standard input (or its end).
async fn stopped() {
    let _ = tokio::task::spawn_blocking(|| {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            match line {
                Ok(l) if l.trim() == "stop" => return,
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
    .await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Failure> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, group, member, partitions, mode, log] = args.as_slice() else {
        return Err(
            "usage: group-member URL GROUP MEMBER PARTITIONS subscriber|read-model LOG_FILE".into(),
        );
    };
    let partitions: u32 = partitions.parse()?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let client = async_nats::connect(url).await?;
    let options = GroupOptions::default()
        .partitions(partitions)
        .member(member.clone());
    match mode.as_str() {
        "subscriber" => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)?;
            let handle = EventSubscriberBuilder::new()
                .client(client)
                .subject("bank.>")
                .durable(group.clone())
                .max_in_flight(64)
                .handler(Arc::new(Logger {
                    file: Mutex::new(file),
                }))
                .group(options)
                .build()?
                .subscribe()
                .await?;
            println!("joined");
            stopped().await;
            handle.shutdown().await?;
        }
        "read-model" => {
            let store = JetStreamEventStore::new(client, StoreConfig::for_domain("bank")).await?;
            let member = ReadModelRunner::join_group(
                &store,
                group,
                || balances::Balances,
                ReadModelOptions {
                    commit_interval: Duration::from_millis(100),
                    ..ReadModelOptions::default()
                },
                options,
            )
            .await?;
            println!("joined");
            stopped().await;
            member.shutdown().await?;
        }
        other => return Err(format!("unknown mode {other}").into()),
    }
    println!("left");
    Ok(())
}
