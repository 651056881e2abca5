//! Reading 200,000 events as a stream keeps the client's memory bounded. A test binary of its
//! own, so that the process's peak RSS is this test's.

use std::future::IntoFuture;
use std::time::Instant;

use async_nats::HeaderMap;
use cim_nats::jetstream::{JetStreamEventStore, StoreConfig};
use cim_nats::testing::NatsServer;
use cim_nats::{headers, EventStore, ReadFrom};
use futures::StreamExt;

const EVENTS: u64 = 200_000;
const AGGREGATES: u64 = 1_000;

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_200k_events_keeps_memory_bounded() {
    let server = NatsServer::start().unwrap();
    let client = server.connect().await.unwrap();
    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("load"))
        .await
        .unwrap();

    // Fill the stream quickly with pipelined raw publishes in the store's wire format
    // (~500-byte payloads, versions per aggregate).
    let js = async_nats::jetstream::new(client.clone());
    let payload = bytes::Bytes::from(format!("{{\"pad\":\"{}\"}}", "x".repeat(490)));
    let started = Instant::now();
    let mut acks = futures::stream::FuturesUnordered::new();
    for i in 0..EVENTS {
        let aggregate = i % AGGREGATES;
        let version = i / AGGREGATES + 1;
        let mut h = HeaderMap::new();
        h.insert(headers::MSG_ID, uuid::Uuid::now_v7().to_string().as_str());
        h.insert(headers::EVENT_TYPE, "Loaded");
        h.insert(headers::AGGREGATE_VERSION, version.to_string().as_str());
        h.insert(headers::AGGREGATE_ID, format!("agg-{aggregate}").as_str());
        acks.push(
            js.publish_with_headers(
                format!("load.item.loaded.agg-{aggregate}"),
                h,
                payload.clone(),
            )
            .await
            .unwrap()
            .into_future(),
        );
        if acks.len() >= 1024 {
            acks.next().await.unwrap().unwrap();
        }
    }
    while let Some(ack) = acks.next().await {
        ack.unwrap();
    }
    let filled = started.elapsed();
    drop(acks);

    // Reset the peak-RSS counter, then read everything.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = status_kib("VmRSS:");
    let started = Instant::now();
    let mut count = 0u64;
    let mut last = 0u64;
    let mut stream = store.stream(ReadFrom::Start);
    while let Some(item) = stream.next().await {
        let event = item.unwrap();
        assert!(event.stream_sequence.0 > last, "in stream order");
        last = event.stream_sequence.0;
        count += 1;
    }
    let read = started.elapsed();
    let peak = status_kib("VmHWM:");
    println!(
        "filled {EVENTS} events in {filled:?}; read them in {read:?} ({:.0} events/s); \
         RSS before the read {} MiB, peak during it {} MiB",
        count as f64 / read.as_secs_f64(),
        before / 1024,
        peak / 1024
    );
    assert_eq!(count, EVENTS);
    assert!(
        peak.saturating_sub(before) < 64 * 1024,
        "reading grew RSS by {} MiB",
        peak.saturating_sub(before) / 1024
    );
}
