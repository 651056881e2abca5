//! The server is killed (`SIGKILL`) twice during a pipelined load of appends and restarted on
//! the same port and store; what was in flight is sent again, by the store itself when the
//! client reconnects in time, else by the writers. Afterwards every
//! acknowledged append is stored exactly once, at the sequence it was acknowledged with, and
//! every aggregate's versions are gap-free.
//!
//! 100,000 appends on 1,000 aggregates, 256 in flight (about 20 s in a debug build on two
//! cores); `RELIABILITY_CRASH_EVENTS` sets another size.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cim_nats::jetstream::{JetStreamEventStore, StoreConfig};
use cim_nats::testing::{wait_until, NatsServer};
use support::reliability::{self as rs, Plan, Progress};

const AGGREGATES: u64 = 1000;
const IN_FLIGHT: usize = 256;
/// Kill the server when this share of the load is acknowledged.
const KILL_AT: [f64; 2] = [0.3, 0.65];

fn events() -> u64 {
    std::env::var("RELIABILITY_CRASH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_kill_9_of_the_server_exactly_once() {
    rs::count_store_resends();
    let mut server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let client = server.connect().await.expect("connect");
    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain(rs::DOMAIN))
        .await
        .expect("store");
    let plan = Plan {
        domain: rs::DOMAIN.to_owned(),
        aggregates: AGGREGATES,
        per_aggregate: events() / AGGREGATES,
        in_flight: IN_FLIGHT,
        attempt_timeout: Duration::from_secs(2),
        give_up: Duration::from_secs(120),
    };
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    let load = tokio::spawn(rs::run_load(
        store.clone(),
        plan.clone(),
        Arc::clone(&progress),
    ));

    let mut outages = Vec::new();
    for share in KILL_AT {
        let at = (plan.total() as f64 * share) as u64;
        wait_until(
            Duration::from_secs(120),
            "the load to reach a kill point",
            || {
                let acked = progress.acked.load(Ordering::Relaxed);
                async move { acked >= at }
            },
        )
        .await;
        let killed = Instant::now();
        server = tokio::task::spawn_blocking(move || {
            server.kill();
            server
                .restart()
                .expect("restart on the same port and store");
            server
        })
        .await
        .expect("kill and restart");
        outages.push((at, killed, killed.elapsed()));
    }
    let acked = load.await.expect("load");
    let elapsed = started.elapsed();

    let stored = rs::read_stream(&client, store.stream_name()).await;
    let verdict = rs::verify(&plan, &acked, &stored);
    let pauses: Vec<String> = outages
        .iter()
        .enumerate()
        .map(|(i, (at, killed, down))| {
            let next = outages.get(i + 1).map(|o| o.1);
            format!(
                "killed at {at} acknowledged, restarted after {} ms, no acknowledgement for {} ms",
                down.as_millis(),
                rs::longest_pause(&acked, *killed, next).as_millis()
            )
        })
        .collect();
    println!(
        "server crash: {} appends on {} aggregates, {} in flight, {:.1} s ({:.0}/s)\n  \
         {}\n  acknowledged {} / present {} / doubled {} / retried by the writers {} / sent \
         again by the store {} (answered as duplicates: {})\n  errors retried: {:?}",
        plan.total(),
        plan.aggregates,
        plan.in_flight,
        elapsed.as_secs_f64(),
        plan.total() as f64 / elapsed.as_secs_f64(),
        pauses.join("\n  "),
        verdict.acknowledged,
        verdict.present,
        verdict.doubled,
        verdict.retried,
        rs::STORE_RESENDS.load(Ordering::Relaxed),
        verdict.resolved_as_duplicate,
        progress.errors.lock().unwrap()
    );
    assert!(
        verdict.retried + rs::STORE_RESENDS.load(Ordering::Relaxed) > 0,
        "the kills interrupted no append: they did not test anything"
    );
}
