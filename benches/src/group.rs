//! Consumer groups: one subscriber's work shared by 3 members against the same subscriber as a
//! group of 1, and the client CPU per event of the 3 members against a plain durable
//! subscriber. The handler waits 1 ms (a call to a database or a service), each member runs at
//! most `IN_FLIGHT` handlers at once, so what 3 members add is their handlers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cim_nats::jetstream::group::GroupOptions;
use cim_nats::jetstream::subscriber::{DeliverPolicy, EventSubscriberBuilder};
use cim_nats::jetstream::{JetStreamEventStore, StoreConfig, SubscriptionHandle};
use cim_nats::{AsyncFnHandler, Delivery};

use crate::harness::{median_of_three, Row, Run};

/// Handlers a member runs at once.
const IN_FLIGHT: usize = 8;
/// What one handling waits.
const HANDLER: Duration = Duration::from_millis(1);

/// Subscribes one member (a group member when `group` is set) on a client of its own.
async fn member(
    url: &str,
    name: &str,
    group: Option<String>,
    seen: Arc<AtomicU64>,
) -> SubscriptionHandle {
    let client = async_nats::connect(url).await.expect("connect");
    let builder = EventSubscriberBuilder::new()
        .client(client)
        .subject("grp.>")
        .durable(name)
        .deliver_policy(DeliverPolicy::All)
        .max_in_flight(IN_FLIGHT)
        .handler(AsyncFnHandler::with_delivery(move |_: Delivery| {
            let seen = Arc::clone(&seen);
            async move {
                tokio::time::sleep(HANDLER).await;
                seen.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }));
    let builder = match group {
        Some(member) => builder.group(GroupOptions::default().member(member)),
        None => builder,
    };
    builder
        .build()
        .expect("subscriber")
        .subscribe()
        .await
        .expect("subscribe")
}

/// Handles `events` with `members` members of a new group (or one plain durable subscriber
/// when `members` is 0), from the start of the stream.
async fn run(url: &str, events: u64, members: usize, name: String) -> Run {
    let seen = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let mut handles = Vec::new();
    if members == 0 {
        handles.push(member(url, &name, None, Arc::clone(&seen)).await);
    }
    for m in 0..members {
        handles.push(member(url, &name, Some(format!("m{m}")), Arc::clone(&seen)).await);
    }
    while seen.load(Ordering::Relaxed) < events {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let run = Run::since(events, t);
    for h in handles {
        h.shutdown().await.expect("shutdown");
    }
    run
}

/// The consumer-group rows: 3 members against 1 (events/s), and the CPU per event of 3
/// members against a plain durable subscriber.
pub(crate) async fn group(
    client: &async_nats::Client,
    url: &str,
    events: u64,
    rows: &mut Vec<Row>,
) {
    JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("grp"))
        .await
        .expect("store");
    let filled = crate::fill(client, "grp", events / crate::PER_AGGREGATE).await;
    eprintln!("filled {events} events for the group case in {filled:?}");
    let case =
        format!("consumer group, 1 ms handler, {IN_FLIGHT} handlers per member, {events} events");
    let scale = median_of_three(
        |round| run(url, events, 3, format!("g3-{round}")),
        |round| run(url, events, 1, format!("g1-{round}")),
    )
    .await;
    let mut rate = Row::throughput(
        &format!("{case}: 3 members"),
        "events/s (median of 3)",
        scale.rate.0,
        scale.rate.1,
    );
    rate.raw_label = Some("1 member");
    rows.push(rate);
    // The group's machinery per event: one member (one connection, every partition) against
    // a plain durable subscriber; then the 3 members (3 connections) against the same.
    let cpu = median_of_three(
        |round| run(url, events, 1, format!("c1-{round}")),
        |round| run(url, events, 0, format!("single-{round}")),
    )
    .await;
    for (members, us) in [(1, cpu.cpu_us.0), (3, scale.cpu_us.0)] {
        let mut row = Row::lower(
            &format!(
                "{case}: {members} member{}",
                if members == 1 { "" } else { "s" }
            ),
            "client CPU µs per event (median of 3)",
            us,
            cpu.cpu_us.1,
        );
        row.raw_label = Some("1 plain durable subscriber");
        rows.push(row);
    }
}
