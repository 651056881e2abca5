//! A three-node JetStream cluster with the store's stream on three replicas: the stream's
//! leader is killed (`SIGKILL`) in the middle of a load. Appends resume after the election,
//! nothing acknowledged is lost, a durable subscriber and a projection carry on to exact
//! counts, and the killed node, restarted, catches up (it is then made the leader and read).

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use cim_nats::jetstream::subscriber::{DeliverPolicy, EventSubscriberBuilder};
use cim_nats::jetstream::{
    JetStreamEventStore, ProjectionHandle, ProjectionOptions, ProjectionRunner, SubscriptionHandle,
};
use cim_nats::testing::{wait_until, NatsCluster};
use cim_nats::{AsyncFnHandler, Delivery, StreamSequence};
use support::reliability::{self as rs, Counter, Plan, Progress};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Deadline around elections and catching up.
const WAIT: Duration = Duration::from_secs(60);
const SUBSCRIBER: &str = "cluster-subscriber";

/// The stream's info, or `None` while no leader answers.
async fn info(js: &jetstream::Context, name: &str) -> Option<stream::Info> {
    let mut stream = js.get_stream(name).await.ok()?;
    stream.info().await.ok().cloned()
}

async fn leader(js: &jetstream::Context, name: &str) -> Option<String> {
    info(js, name).await?.cluster?.leader
}

/// Polls until the stream reports a leader that `accept`s.
async fn wait_for_leader(
    js: &jetstream::Context,
    name: &str,
    accept: impl Fn(&str) -> bool,
) -> Option<String> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some(l) = leader(js, name).await.filter(|l| accept(l)) {
            return Some(l);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// What a supervisor saw: the errors its component stopped with before it was restarted.
type Stops = Arc<Mutex<Vec<String>>>;

/// Runs a durable subscriber that records every delivery; if the subscription ends with an
/// error, records it and subscribes again (the durable consumer resumes), as a service's
/// supervisor would.
fn supervise_subscriber(
    urls: Vec<String>,
    handled: Arc<Mutex<HashMap<u64, u32>>>,
    stops: Stops,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let client = rs::cluster_connect(&urls).await;
        let subscribe = || async {
            let handled = Arc::clone(&handled);
            let deadline = Instant::now() + WAIT;
            loop {
                let handled = Arc::clone(&handled);
                let attempt = EventSubscriberBuilder::new()
                    .client(client.clone())
                    .subject(format!("{}.>", rs::DOMAIN))
                    .handler(AsyncFnHandler::with_delivery(move |delivery: Delivery| {
                        let handled = Arc::clone(&handled);
                        async move {
                            *handled
                                .lock()
                                .unwrap()
                                .entry(delivery.event.stream_sequence.0)
                                .or_default() += 1;
                            Ok(())
                        }
                    }))
                    .durable(SUBSCRIBER)
                    .deliver_policy(DeliverPolicy::All)
                    .ack_wait(Duration::from_secs(5))
                    .unlimited_deliveries()
                    .without_dead_letter()
                    .build()
                    .expect("subscriber")
                    .subscribe()
                    .await;
                match attempt {
                    Ok(handle) => return handle,
                    Err(e) if Instant::now() < deadline => {
                        eprintln!("subscribe failed, again: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => panic!("subscribe: {e}"),
                }
            }
        };
        let mut handle: SubscriptionHandle = subscribe().await;
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            if handle.is_finished() {
                let ended = handle.shutdown().await;
                stops.lock().unwrap().push(format!("{ended:?}"));
                handle = subscribe().await;
            }
        }
        handle.shutdown().await.expect("subscriber shutdown");
    })
}

/// Runs the counting projection; if its runner stops with an error, records it and starts it
/// again (it resumes from its checkpoint). Publishes how far it has applied.
fn supervise_projection(
    store: JetStreamEventStore,
    applied: Arc<AtomicU64>,
    stops: Stops,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<ProjectionHandle<Counter>> {
    tokio::spawn(async move {
        let options = ProjectionOptions {
            checkpoint_every: 500,
            checkpoint_interval: Duration::from_millis(200),
            ..ProjectionOptions::default()
        };
        let start = || async {
            let deadline = Instant::now() + WAIT;
            loop {
                match ProjectionRunner::start::<Counter>(&store, options.clone()).await {
                    Ok(handle) => return handle,
                    Err(e) if Instant::now() < deadline => {
                        eprintln!("projection start failed, again: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => panic!("projection: {e}"),
                }
            }
        };
        let mut handle = start().await;
        loop {
            applied.store(handle.applied().0, Ordering::Relaxed);
            tokio::select! {
                _ = stop.changed() => return handle,
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            if handle.is_finished() {
                let ended = handle.shutdown().await;
                stops.lock().unwrap().push(format!("{ended:?}"));
                handle = start().await;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_stream_leader_mid_load_loses_nothing_and_the_node_catches_up() {
    let mut cluster = NatsCluster::start(3).unwrap_or_else(|e| panic!("{e}"));
    cluster
        .wait_for_jetstream(WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let urls = cluster.urls();
    let client = rs::cluster_connect(&urls).await;
    let js = jetstream::new(client.clone());
    // Polls leadership with short requests, so an unanswered one costs little.
    let probe = jetstream::ContextBuilder::new()
        .timeout(Duration::from_millis(250))
        .build(client.clone());
    let store = rs::cluster_store(client.clone(), WAIT).await;
    let name = store.stream_name().to_owned();

    // A durable subscriber and a projection (checkpoint in a 3-replica KV bucket), each on a
    // client of its own.
    let (stop, stop_rx) = watch::channel(false);
    let handled: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let subscriber_stops = Stops::default();
    let subscriber = supervise_subscriber(
        urls.clone(),
        Arc::clone(&handled),
        Arc::clone(&subscriber_stops),
        stop_rx.clone(),
    );
    let applied = Arc::new(AtomicU64::new(0));
    let projection_stops = Stops::default();
    let projection = supervise_projection(
        rs::cluster_store(rs::cluster_connect(&urls).await, WAIT).await,
        Arc::clone(&applied),
        Arc::clone(&projection_stops),
        stop_rx,
    );

    let plan = Plan {
        domain: rs::DOMAIN.to_owned(),
        aggregates: 200,
        per_aggregate: 50,
        in_flight: 64,
        attempt_timeout: Duration::from_secs(1),
        give_up: Duration::from_secs(120),
    };
    let last = StreamSequence(plan.total());
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    let load = tokio::spawn(rs::run_load(
        store.clone(),
        plan.clone(),
        Arc::clone(&progress),
    ));

    // Mid-load: kill the stream's leader.
    let kill_at = plan.total() * 3 / 10;
    wait_until(WAIT, "the load to reach the kill point", || {
        let acked = progress.acked.load(Ordering::Relaxed);
        async move { acked >= kill_at }
    })
    .await;
    let old_leader = leader(&js, &name).await.expect("a stream leader");
    let victim = rs::server_index(&old_leader);
    let killed = Instant::now();
    tokio::task::block_in_place(|| cluster.server_mut(victim).expect("server").kill());
    let acked_at_kill = progress.acked.load(Ordering::Relaxed);
    // The election, as stream info sees it.
    let new_leader = wait_for_leader(&probe, &name, |l| l != old_leader)
        .await
        .expect("a new stream leader");
    let elected = killed.elapsed();
    let acked = load.await.expect("load");
    let elapsed = started.elapsed();
    let load_done = Instant::now();
    let pause = rs::longest_pause(&acked, killed, None);

    // Nothing acknowledged is lost or doubled.
    let stored = rs::read_stream(&client, &name).await;
    let verdict = rs::verify(&plan, &acked, &stored);

    // The subscriber and the projection carried on to exact counts.
    wait_until(WAIT, "the subscriber to handle every event", || {
        let n = handled.lock().unwrap().len() as u64;
        async move { n == last.0 }
    })
    .await;
    wait_until(WAIT, "the subscriber's acknowledgements", || {
        let js = js.clone();
        let name = name.clone();
        async move {
            let Ok(stream) = js.get_stream(&name).await else {
                return false;
            };
            stream
                .consumer_info(SUBSCRIBER)
                .await
                .is_ok_and(|i| i.ack_floor.stream_sequence == last.0 && i.num_ack_pending == 0)
        }
    })
    .await;
    let deadline = Instant::now() + 2 * WAIT;
    while applied.load(Ordering::Relaxed) < last.0 {
        if Instant::now() > deadline {
            let stream = js.get_stream(&name).await.expect("stream");
            let mut consumers = stream.consumers();
            while let Some(Ok(c)) = futures::StreamExt::next(&mut consumers).await {
                eprintln!(
                    "consumer {}: delivered {}, ack floor {}, pending {}, ack pending {}, \
                     waiting {}, on {:?}",
                    c.name,
                    c.delivered.stream_sequence,
                    c.ack_floor.stream_sequence,
                    c.num_pending,
                    c.num_ack_pending,
                    c.num_waiting,
                    c.cluster.and_then(|c| c.leader)
                );
            }
            panic!(
                "the projection is stuck at {} of {} ({:.1} s after the kill); it stopped after {:?}",
                applied.load(Ordering::Relaxed),
                last.0,
                killed.elapsed().as_secs_f64(),
                projection_stops.lock().unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let projection_done = load_done.elapsed();

    // The killed node comes back and catches up.
    let restarted = Instant::now();
    tokio::task::block_in_place(|| {
        cluster
            .server_mut(victim)
            .expect("server")
            .restart()
            .expect("restart the killed node")
    });
    wait_until(WAIT, "the restarted node to be current", || {
        let js = js.clone();
        let name = name.clone();
        let old_leader = old_leader.clone();
        async move {
            info(&js, &name)
                .await
                .and_then(|i| i.cluster)
                .is_some_and(|c| {
                    c.replicas.iter().any(|r| {
                        r.name == old_leader && r.current && !r.offline && r.lag.unwrap_or(0) == 0
                    })
                })
        }
    })
    .await;
    let caught_up = restarted.elapsed();
    // Make it the leader again and read the whole stream from it.
    let deadline = Instant::now() + WAIT;
    loop {
        let body = serde_json::json!({ "placement": { "preferred": old_leader } });
        let _ = client
            .request(
                format!("$JS.API.STREAM.LEADER.STEPDOWN.{name}"),
                serde_json::to_vec(&body).expect("json").into(),
            )
            .await;
        if wait_for_leader(&probe, &name, |_| true).await.as_deref() == Some(old_leader.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{old_leader} did not become the leader again"
        );
    }
    let mut state = None;
    while state.is_none() {
        assert!(
            Instant::now() < deadline,
            "no stream info from {old_leader}"
        );
        state = info(&js, &name).await.map(|i| i.state);
    }
    let state = state.expect("stream state");
    assert_eq!(state.last_sequence, plan.total());
    assert_eq!(state.messages, plan.total());
    rs::verify(&plan, &acked, &rs::read_stream(&client, &name).await);

    stop.send_replace(true);
    subscriber.await.expect("subscriber task");
    let projection = projection.await.expect("projection task");
    {
        let counter = projection.read().await;
        assert_eq!(counter.applied, plan.total(), "each event applied once");
        assert_eq!(counter.seen.len() as u64, plan.total());
    }
    projection.shutdown().await.expect("projection shutdown");
    let repeats: u64 = handled
        .lock()
        .unwrap()
        .values()
        .map(|n| u64::from(n - 1))
        .sum();
    println!(
        "cluster: {} appends on {} aggregates, {} in flight, 3 replicas, {:.1} s\n  \
         killed leader {old_leader} at {acked_at_kill} acknowledged; stream info named \
         {new_leader} leader after {} ms; no acknowledgement for {} ms\n  \
         acknowledged {} / present {} / doubled {} / retried {} (answered as duplicates: {})\n  \
         subscriber: {} events handled, {} repeats, restarted after {:?}\n  \
         projection: {} applied once, the last {} ms after the load, restarted after {:?}\n  \
         {old_leader} restarted: current after {} ms, leader again with last sequence {}\n  \
         errors retried: {:?}",
        plan.total(),
        plan.aggregates,
        plan.in_flight,
        elapsed.as_secs_f64(),
        elected.as_millis(),
        pause.as_millis(),
        verdict.acknowledged,
        verdict.present,
        verdict.doubled,
        verdict.retried,
        verdict.resolved_as_duplicate,
        last.0,
        repeats,
        subscriber_stops.lock().unwrap(),
        last.0,
        projection_done.as_millis(),
        projection_stops.lock().unwrap(),
        caught_up.as_millis(),
        state.last_sequence,
        progress.errors.lock().unwrap()
    );
}
